//! The gRPC port: OTLP's `TraceService` and Scouter's `AuthService` and `MessageService` on
//! one server, so either SDK finds the agent at the same address.

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use super::otlp_grpc::TraceReceiver;
use super::scouter_grpc::{AuthReceiver, MessageReceiver};
use super::Intake;

pub(super) async fn serve(listener: TcpListener, intake: Intake) {
    let local = listener.local_addr().ok();
    let incoming = TcpIncoming::from(listener);
    let served = Server::builder()
        .add_service(TraceReceiver::service(intake.clone()))
        .add_service(AuthReceiver::service())
        .add_service(MessageReceiver::service(intake))
        .serve_with_incoming(incoming)
        .await;
    if let Err(error) = served {
        tracing::error!(?local, error = %crate::errors::with_causes(&error), "the gRPC receiver stopped");
    }
}
