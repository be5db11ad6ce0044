//! An OTLP trace receiver: the collector side of the agent's optional second export.
//!
//! - gRPC (`grpc_endpoint()`): `opentelemetry.proto.collector.trace.v1.TraceService/Export`,
//!   served by opentelemetry-proto's generated tonic server, gzip accepted.
//! - HTTP (`http_endpoint()`, `traces_url()`): `POST /v1/traces` with `Content-Type:
//!   application/x-protobuf` (decoded with prost) or `application/json` (OTLP/JSON, decoded with
//!   opentelemetry-proto's serde), optionally `Content-Encoding: gzip`. The reply uses the
//!   request's encoding: an empty `ExportTraceServiceResponse` or `{}`.
//!
//! Unlike the Scouter backend it adds no strictness of its own beyond what OTLP decoding demands:
//! it is the reference sink that spans are compared against. What it does record is every
//! request's headers (gRPC: metadata), so tests can check `OTEL_EXPORTER_OTLP_HEADERS` and
//! compression, and its payload size and reply.
//!
//! Faults as on the Scouter backend: `set_down` (connection refused), `hang`, `reject_next`.
//! Checks run hang → `reject_next` → encoding → content type → decode → record.

use std::io::Read;
use std::sync::Arc;

use anyhow::Result;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use flate2::read::GzDecoder;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::service::Routes;

use super::{
    grpc_code_for_http, hang_forever, header_list, header_str, hung, read_body, Backend, Faults, ReceivedRequest,
    ReceivedSpan, Recorder, Refusal, Reply, ServerHost, Transport,
};

/// Largest HTTP body and gRPC message accepted (the collector's default HTTP limit is larger
/// than any test batch; this only bounds memory).
pub const MESSAGE_LIMIT: usize = 16 * 1024 * 1024;

/// A running OTLP receiver; stops when dropped.
pub struct OtlpReceiver {
    host: ServerHost,
    state: Arc<OtlpState>,
}

impl OtlpReceiver {
    /// Starts the gRPC and HTTP receivers on free ports.
    pub fn start() -> Result<Self> {
        let state = Arc::new(OtlpState::default());
        let host = ServerHost::start("otlp-receiver", vec![grpc_router(state.clone()), http_router(state.clone())])?;
        Ok(Self { host, state })
    }

    /// `http://127.0.0.1:PORT` of the gRPC receiver (`OTEL_EXPORTER_OTLP_ENDPOINT` with grpc).
    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port())
    }

    /// `http://127.0.0.1:PORT` of the HTTP receiver (`OTEL_EXPORTER_OTLP_ENDPOINT` with
    /// http/protobuf or http/json; exporters append `/v1/traces`).
    pub fn http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port())
    }

    /// The full traces URL (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` with HTTP).
    pub fn traces_url(&self) -> String {
        format!("{}/v1/traces", self.http_endpoint())
    }

    pub fn grpc_port(&self) -> u16 {
        self.host.port(0)
    }

    pub fn http_port(&self) -> u16 {
        self.host.port(1)
    }
}

impl Backend for OtlpReceiver {
    fn host(&self) -> &ServerHost {
        &self.host
    }

    fn faults(&self) -> &Faults {
        &self.state.faults
    }

    fn recorder(&self) -> &Recorder {
        &self.state.recorder
    }
}

#[derive(Default)]
struct OtlpState {
    faults: Faults,
    recorder: Recorder,
}

impl OtlpState {
    /// Records the request and returns its outcome as an HTTP status (200 on success).
    fn record(
        &self,
        transport: Transport,
        headers: Vec<(String, String)>,
        body_len: usize,
        outcome: Result<ExportTraceServiceRequest, Refusal>,
    ) -> Result<(), Refusal> {
        let (status, message, spans) = match outcome {
            Ok(request) => (200, String::new(), ReceivedSpan::from_request(&request, transport)),
            Err((status, message)) => (status, message, Vec::new()),
        };
        let reply = match transport {
            Transport::Http => Reply::Http(status),
            Transport::Grpc => Reply::Grpc(grpc_code_for_http(status)),
            Transport::Kafka => unreachable!("this backend does not speak Kafka"),
        };
        let request =
            ReceivedRequest { transport, headers, body_len, reply, message: message.clone(), span_count: spans.len() };
        self.recorder.record(request, spans);
        if status == 200 {
            Ok(())
        } else {
            Err((status, message))
        }
    }

    /// A pending `reject_next` rejection, as a refusal.
    fn injected_rejection(&self) -> Result<(), Refusal> {
        match self.faults.take_rejection() {
            Some(status) => Err((status, format!("rejected by the test (reject_next, {status})"))),
            None => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// gRPC

fn grpc_router(state: Arc<OtlpState>) -> Router {
    let service = TraceServiceServer::new(GrpcTraces(state))
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(MESSAGE_LIMIT);
    Routes::new(service).into_axum_router()
}

struct GrpcTraces(Arc<OtlpState>);

#[tonic::async_trait]
impl TraceService for GrpcTraces {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let state = &self.0;
        let seen = header_list(&request.metadata().clone().into_headers());
        let request = request.into_inner();
        let body_len = request.encoded_len();
        if state.faults.hanging() {
            state.recorder.record(hung(Transport::Grpc, seen, body_len), Vec::new());
            return hang_forever().await;
        }
        let outcome = state.injected_rejection().map(|()| request);
        match state.record(Transport::Grpc, seen, body_len, outcome) {
            Ok(()) => Ok(tonic::Response::new(ExportTraceServiceResponse::default())),
            Err((status, message)) => Err(tonic::Status::new(grpc_code_for_http(status), message)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

fn http_router(state: Arc<OtlpState>) -> Router {
    Router::new().route("/v1/traces", post(http_export)).with_state(state)
}

/// The two OTLP/HTTP encodings.
#[derive(Clone, Copy)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn of(headers: &HeaderMap) -> Option<Self> {
        let mime = header_str(headers, "content-type")?.split(';').next()?.trim().to_ascii_lowercase();
        match mime.as_str() {
            "application/x-protobuf" => Some(Encoding::Protobuf),
            "application/json" => Some(Encoding::Json),
            _ => None,
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

async fn http_export(State(state): State<Arc<OtlpState>>, headers: HeaderMap, body: Body) -> Response {
    let body = read_body(body, MESSAGE_LIMIT).await;
    let body_len = body.as_ref().map(Bytes::len).unwrap_or(MESSAGE_LIMIT);
    let seen = header_list(&headers);
    if state.faults.hanging() {
        state.recorder.record(hung(Transport::Http, seen, body_len), Vec::new());
        return hang_forever().await;
    }
    let encoding = Encoding::of(&headers);
    let outcome = state.injected_rejection().and_then(|()| decode_http(&headers, encoding, body?));
    match (state.record(Transport::Http, seen, body_len, outcome), encoding) {
        (Ok(()), encoding) => {
            // Only a known content type decodes, so `encoding` is set here.
            let encoding = encoding.unwrap_or(Encoding::Protobuf);
            let body = match encoding {
                Encoding::Protobuf => ExportTraceServiceResponse::default().encode_to_vec(),
                Encoding::Json => b"{}".to_vec(),
            };
            ([(header::CONTENT_TYPE, encoding.content_type())], body).into_response()
        }
        (Err((status, message)), _) => {
            (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), message).into_response()
        }
    }
}

/// Undoes the content encoding, then decodes the request in its content type.
fn decode_http(
    headers: &HeaderMap,
    encoding: Option<Encoding>,
    body: Bytes,
) -> Result<ExportTraceServiceRequest, Refusal> {
    let body = match header_str(headers, "content-encoding").map(str::trim) {
        None | Some("") | Some("identity") => body.to_vec(),
        Some(coding) if coding.eq_ignore_ascii_case("gzip") => gunzip(&body)?,
        Some(other) => return Err((415, format!("unsupported Content-Encoding {other:?}"))),
    };
    match encoding {
        Some(Encoding::Protobuf) => ExportTraceServiceRequest::decode(body.as_slice())
            .map_err(|e| (400, format!("body is not a protobuf ExportTraceServiceRequest: {e}"))),
        Some(Encoding::Json) => serde_json::from_slice(&body)
            .map_err(|e| (400, format!("body is not an OTLP/JSON ExportTraceServiceRequest: {e}"))),
        None => Err((415, "Content-Type must be application/x-protobuf or application/json".to_owned())),
    }
}

/// Decompresses a gzip body, refusing one that inflates past [`MESSAGE_LIMIT`].
fn gunzip(body: &[u8]) -> Result<Vec<u8>, Refusal> {
    let mut inflated = Vec::new();
    GzDecoder::new(body)
        .take(MESSAGE_LIMIT as u64 + 1)
        .read_to_end(&mut inflated)
        .map_err(|e| (400, format!("body is not valid gzip: {e}")))?;
    if inflated.len() > MESSAGE_LIMIT {
        return Err((413, format!("inflated body exceeds the {MESSAGE_LIMIT} byte limit")));
    }
    Ok(inflated)
}
