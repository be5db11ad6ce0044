//! OTLP/gRPC `TraceService/Export`.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use super::{Intake, Refusal, MAX_MESSAGE_BYTES};
use crate::merge::decode;

pub(super) struct TraceReceiver {
    intake: Intake,
}

impl TraceReceiver {
    pub fn service(intake: Intake) -> TraceServiceServer<Self> {
        TraceServiceServer::new(Self { intake })
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
    }
}

#[tonic::async_trait]
impl TraceService for TraceReceiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let (peer, local) = (request.remote_addr(), request.local_addr());
        let decoded = decode::from_request(request.into_inner());
        let partial_success = (decoded.rejected > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: decoded.rejected as i64,
            error_message: decoded.first_error.clone().unwrap_or_default(),
        });
        let Some(local) = local else { return Err(Status::internal("no local address")) };
        match self.intake.ingest(decoded, peer, local).await {
            Ok(()) => Ok(Response::new(ExportTraceServiceResponse { partial_success })),
            Err(Refusal::Busy) => Err(Status::unavailable("the agent is behind; retry")),
        }
    }
}
