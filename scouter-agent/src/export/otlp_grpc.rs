//! An OTLP collector over gRPC (`TraceService/Export`), with the configured headers as
//! metadata and optional gzip. A partial success counts the spans the collector says it
//! rejected.
//!
//! Not through opentelemetry-otlp's exporter: it carries one resource per exporter, while the
//! agent exports spans of many processes (each its own resource) in one request. The wire
//! types are the same `opentelemetry-proto` ones it uses.

use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use tokio::runtime::Handle;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::Channel;

use super::delivery::{block_within, Requests, SendError, Sink};
use super::otlp::{encoded_requests, otlp_protobuf};
use super::scouter_grpc::{classify, lazy_channel};
use crate::config::OtlpConfig;
use crate::spans::Span;

/// gRPC's default message limit, which collectors keep by default.
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

pub struct OtlpGrpcSink {
    io: Handle,
    channel: Channel,
    headers: Vec<(MetadataKey<tonic::metadata::Ascii>, MetadataValue<tonic::metadata::Ascii>)>,
    gzip: bool,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum OtlpGrpcError {
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    #[error("header {0:?} is not valid gRPC metadata")]
    Header(String),
}

impl OtlpGrpcSink {
    pub fn new(io: Handle, config: &OtlpConfig) -> Result<Self, OtlpGrpcError> {
        let channel = lazy_channel(&io, &config.endpoint, config.timeout)?;
        let headers = config
            .headers
            .iter()
            .map(|(name, value)| {
                let key = MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes());
                match (key, MetadataValue::try_from(value.as_str())) {
                    (Ok(key), Ok(value)) => Ok((key, value)),
                    _ => Err(OtlpGrpcError::Header(name.clone())),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { io, channel, headers, gzip: config.gzip, timeout: config.timeout })
    }

    async fn export(&self, body: &[u8]) -> Result<(), SendError> {
        // The request was encoded to measure and cut it; decoding it back is cheap next to the
        // network and keeps one encoding path for every sink.
        let request = ExportTraceServiceRequest::decode(body).map_err(|e| SendError::reject(e.to_string()))?;
        let mut request = tonic::Request::new(request);
        for (key, value) in &self.headers {
            request.metadata_mut().insert(key.clone(), value.clone());
        }
        let mut client = TraceServiceClient::new(self.channel.clone()).max_encoding_message_size(usize::MAX);
        if self.gzip {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        let response = client.export(request).await.map_err(|status| classify(&status))?;
        if let Some(partial) = response.into_inner().partial_success.filter(|p| p.rejected_spans > 0) {
            tracing::warn!(rejected = partial.rejected_spans, message = %partial.error_message, "the collector rejected spans");
        }
        Ok(())
    }
}

impl Sink for OtlpGrpcSink {
    type Request = Vec<u8>;

    fn name(&self) -> &'static str {
        "otlp-grpc"
    }

    fn requests(&self, spans: &[Arc<Span>]) -> Requests<Vec<u8>> {
        encoded_requests(spans, MAX_MESSAGE_BYTES, otlp_protobuf)
    }

    fn send(&mut self, body: &Vec<u8>, deadline: Instant) -> Result<(), SendError> {
        let io = self.io.clone();
        block_within(&io, deadline, self.timeout, self.export(body))
    }
}
