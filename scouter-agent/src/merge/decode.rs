//! SDK spans into the agent's span model: OTLP requests (protobuf, OTLP/JSON, and the Scouter
//! ingest envelope that wraps OTLP/JSON) become [`Span`]s that every sink already knows how
//! to export. A span with ids OTLP calls invalid (wrong length, all zero) is rejected and
//! counted; the rest of its request is kept, as OTLP's partial success allows.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::trace::v1 as otlp;
use serde::Deserialize;
use thiserror::Error;

use crate::spans::{
    AttributeValue, Attributes, ContextFlags, Resource, Scope, Span, SpanEvent, SpanId, SpanKind, SpanLink, Status,
    StatusCode, TraceId,
};

/// OTLP span flags: bit 0x100 says whether the parent's remoteness is known, 0x200 that it
/// is remote.
const PARENT_REMOTENESS_KNOWN: u32 = 0x100;
const PARENT_IS_REMOTE: u32 = 0x200;

/// A body that is not a request at all.
#[derive(Debug, Error)]
pub enum DecodeError {
    #[error("not an OTLP ExportTraceServiceRequest in protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("not an OTLP ExportTraceServiceRequest in OTLP/JSON: {0}")]
    Json(serde_json::Error),
    #[error("not a Scouter trace record (expected {{\"request\": <OTLP/JSON>}}): {0}")]
    ScouterEnvelope(serde_json::Error),
}

/// The spans of one request, and what was wrong with those left out.
#[derive(Debug, Default)]
pub struct Decoded {
    pub spans: Vec<Span>,
    pub rejected: usize,
    /// The first reason a span was rejected, for the sender.
    pub first_error: Option<String>,
}

impl Decoded {
    /// OTLP's answer: a partial success naming the rejected spans, if any.
    pub fn export_response(&self) -> ExportTraceServiceResponse {
        let partial_success = (self.rejected > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: self.rejected as i64,
            error_message: self.first_error.clone().unwrap_or_default(),
        });
        ExportTraceServiceResponse { partial_success }
    }
}

pub fn from_protobuf(body: &[u8]) -> Result<Decoded, DecodeError> {
    use prost::Message as _;
    Ok(from_request(ExportTraceServiceRequest::decode(body)?))
}

pub fn from_json(body: &[u8]) -> Result<Decoded, DecodeError> {
    serde_json::from_slice(body).map(from_request).map_err(DecodeError::Json)
}

/// The body of Scouter's `/scouter/message` and `InsertMessage`: `{"request": <OTLP/JSON>}`.
pub fn from_scouter_message(body: &[u8]) -> Result<Decoded, DecodeError> {
    #[derive(Deserialize)]
    struct Envelope {
        request: ExportTraceServiceRequest,
    }
    let envelope: Envelope = serde_json::from_slice(body).map_err(DecodeError::ScouterEnvelope)?;
    Ok(from_request(envelope.request))
}

pub fn from_request(request: ExportTraceServiceRequest) -> Decoded {
    let mut decoded = Decoded::default();
    for resource_spans in request.resource_spans {
        let resource = Arc::new(Resource {
            attributes: resource_spans.resource.map(|r| attributes(&r.attributes)).unwrap_or_default(),
        });
        for scope_spans in resource_spans.scope_spans {
            let scope = scope_spans.scope.map(|s| Arc::new(scope(s)));
            for span in scope_spans.spans {
                match span_of(span, &resource, &scope) {
                    Ok(span) => decoded.spans.push(span),
                    Err(reason) => {
                        decoded.rejected += 1;
                        decoded.first_error.get_or_insert(reason);
                    }
                }
            }
        }
    }
    decoded
}

fn span_of(span: otlp::Span, resource: &Arc<Resource>, scope: &Option<Arc<Scope>>) -> Result<Span, String> {
    let trace_id = id::<16>(&span.trace_id).map(TraceId).ok_or("a span's trace id is not 16 bytes, not all zero")?;
    let span_id = id::<8>(&span.span_id).map(SpanId).ok_or("a span's span id is not 8 bytes, not all zero")?;
    let parent_span_id = match span.parent_span_id.as_slice() {
        [] => None,
        bytes => Some(id::<8>(bytes).map(SpanId).ok_or("a span's parent id is not 8 bytes, not all zero")?),
    };
    let status = span.status.map(status).unwrap_or_default();
    Ok(Span {
        trace_id,
        span_id,
        parent_span_id,
        name: span.name,
        kind: kind(span.kind),
        start_time_unix_nano: span.start_time_unix_nano,
        end_time_unix_nano: span.end_time_unix_nano,
        attributes: attributes(&span.attributes),
        status,
        resource: Arc::clone(resource),
        flags: flags(span.flags),
        trace_state: span.trace_state,
        events: span.events.into_iter().map(event).collect(),
        links: span.links.into_iter().filter_map(link).collect(),
        scope: scope.clone(),
    })
}

/// An id of `N` bytes that is not all zero (OTLP's "invalid" id).
fn id<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
    let id: [u8; N] = bytes.try_into().ok()?;
    id.iter().any(|b| *b != 0).then_some(id)
}

fn kind(kind: i32) -> SpanKind {
    match otlp::span::SpanKind::try_from(kind) {
        Ok(otlp::span::SpanKind::Server) => SpanKind::Server,
        Ok(otlp::span::SpanKind::Client) => SpanKind::Client,
        Ok(otlp::span::SpanKind::Producer) => SpanKind::Producer,
        Ok(otlp::span::SpanKind::Consumer) => SpanKind::Consumer,
        // Unspecified or unknown: OTLP says to treat it as internal.
        _ => SpanKind::Internal,
    }
}

fn status(status: otlp::Status) -> Status {
    let code = match otlp::status::StatusCode::try_from(status.code) {
        Ok(otlp::status::StatusCode::Ok) => StatusCode::Ok,
        Ok(otlp::status::StatusCode::Error) => StatusCode::Error,
        _ => StatusCode::Unset,
    };
    Status { code, message: status.message }
}

/// The sampled bit, and the parent's remoteness when the SDK said it.
fn flags(flags: u32) -> ContextFlags {
    let remote = flags & PARENT_REMOTENESS_KNOWN != 0 && flags & PARENT_IS_REMOTE != 0;
    // OTLP leaves the low byte zero when the SDK did not record flags: an exported span was
    // sampled.
    let sampled = flags & 0xff == 0 || flags & 1 == 1;
    ContextFlags { sampled, remote_parent: remote }
}

fn scope(scope: InstrumentationScope) -> Scope {
    Scope { name: scope.name, version: scope.version, attributes: attributes(&scope.attributes) }
}

fn event(event: otlp::span::Event) -> SpanEvent {
    SpanEvent { name: event.name, time_unix_nano: event.time_unix_nano, attributes: attributes(&event.attributes) }
}

fn link(link: otlp::span::Link) -> Option<SpanLink> {
    Some(SpanLink {
        trace_id: TraceId(id::<16>(&link.trace_id)?),
        span_id: SpanId(id::<8>(&link.span_id)?),
        trace_state: link.trace_state,
        attributes: attributes(&link.attributes),
    })
}

/// Attributes by key; values the model has no form for (maps, bytes, empty) are dropped.
fn attributes(pairs: &[KeyValue]) -> Attributes {
    pairs.iter().filter_map(|kv| Some((kv.key.clone(), value(kv.value.as_ref()?)?))).collect()
}

fn value(any: &AnyValue) -> Option<AttributeValue> {
    Some(match any.value.as_ref()? {
        any_value::Value::StringValue(v) => AttributeValue::String(v.clone()),
        any_value::Value::BoolValue(v) => AttributeValue::Bool(*v),
        any_value::Value::IntValue(v) => AttributeValue::Int(*v),
        any_value::Value::DoubleValue(v) => AttributeValue::Double(*v),
        any_value::Value::ArrayValue(array) => AttributeValue::Array(array.values.iter().filter_map(value).collect()),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::otlp::{export_request, otlp_protobuf, scouter_message};

    fn sdk_span() -> Span {
        let mut span = Span::for_test(SpanKind::Client, SpanId([7; 8]));
        span.parent_span_id = Some(SpanId([6; 8]));
        span.attributes.insert("http.method".into(), "GET".into());
        span.attributes.insert("tags".into(), AttributeValue::Array(vec!["a".into(), "b".into()]));
        span.events.push(SpanEvent { name: "exception".into(), time_unix_nano: 5, attributes: Attributes::new() });
        span.links.push(SpanLink {
            trace_id: TraceId([3; 16]),
            span_id: SpanId([4; 8]),
            trace_state: String::new(),
            attributes: Attributes::new(),
        });
        span.trace_state = "vendor=1".into();
        span.scope =
            Some(Arc::new(Scope { name: "opentelemetry.instrumentation.requests".into(), ..Scope::default() }));
        span.flags = ContextFlags { sampled: true, remote_parent: true };
        let mut resource = Resource::default();
        resource.attributes.insert("service.name".into(), "shop".into());
        span.resource = Arc::new(resource);
        span
    }

    #[test]
    fn a_span_survives_protobuf_json_and_the_scouter_envelope_unchanged() {
        let span = sdk_span();
        let request = export_request(std::slice::from_ref(&span));
        let from_protobuf = from_protobuf(&otlp_protobuf(&request)).unwrap();
        assert_eq!(from_protobuf.spans, std::slice::from_ref(&span));
        let from_json = from_json(&serde_json::to_vec(&request).unwrap()).unwrap();
        assert_eq!(from_json.spans, std::slice::from_ref(&span));
        let from_scouter = from_scouter_message(&scouter_message(&request)).unwrap();
        assert_eq!(from_scouter.spans, [span]);
    }

    #[test]
    fn spans_with_invalid_ids_are_rejected_and_the_rest_kept() {
        let mut request = export_request(&[sdk_span(), sdk_span(), sdk_span()]);
        let spans = &mut request.resource_spans[0].scope_spans[0].spans;
        spans[0].trace_id = vec![0; 16];
        spans[1].span_id = vec![1; 4];
        let decoded = from_request(request);
        assert_eq!((decoded.spans.len(), decoded.rejected), (1, 2));
        let partial = decoded.export_response().partial_success.expect("a partial success");
        assert_eq!(partial.rejected_spans, 2);
        assert!(partial.error_message.contains("trace id"), "{}", partial.error_message);
        let whole = from_request(export_request(&[sdk_span()]));
        assert_eq!(whole.export_response().partial_success, None, "nothing rejected, nothing to say");
    }

    #[test]
    fn bodies_that_are_not_requests_are_errors() {
        assert!(matches!(from_protobuf(b"\xff\xff\xff"), Err(DecodeError::Protobuf(_))));
        assert!(matches!(from_json(b"{\"resourceSpans\": 3}"), Err(DecodeError::Json(_))));
        let drift_record = br#"{"record": {"Psi": {}}}"#;
        assert!(matches!(from_scouter_message(drift_record), Err(DecodeError::ScouterEnvelope(_))));
    }

    #[test]
    fn unrecorded_flags_mean_sampled_and_a_local_parent() {
        assert_eq!(flags(0), ContextFlags { sampled: true, remote_parent: false });
        assert_eq!(flags(0x301), ContextFlags { sampled: true, remote_parent: true });
        assert_eq!(flags(0x100), ContextFlags { sampled: true, remote_parent: false });
        assert_eq!(flags(0x102), ContextFlags { sampled: false, remote_parent: false });
    }
}
