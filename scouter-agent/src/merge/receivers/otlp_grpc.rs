//! OTLP/gRPC `TraceService/Export`.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
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
        let connection = request.remote_addr().zip(request.local_addr());
        let decoded = decode::from_request(request.into_inner());
        let answer = decoded.export_response();
        match self.intake.ingest(decoded, connection).await {
            Ok(()) => Ok(Response::new(answer)),
            Err(Refusal::Busy) => Err(Status::unavailable("the agent is behind; retry")),
        }
    }
}
