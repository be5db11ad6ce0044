//! A batch of agent spans as OTLP: the one translation every network sink shares.
//!
//! [`export_request`] builds the protobuf message once; [`otlp_protobuf`] (OTLP gRPC/HTTP) and
//! [`scouter_message`] (Scouter's `{"request": ...}` JSON, every Scouter transport) only encode
//! it, so a span looks the same in every backend. opentelemetry-proto's serde output already
//! meets the Scouter server's strict rules (hex ids, string nanos, integer kind); the tests pin
//! that. [`split_to_fit`] cuts a batch into requests under a transport's size limit.

use std::borrow::Borrow;
use std::ops::Range;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource as OtlpResource;
use opentelemetry_proto::tonic::trace::v1::{self as otlp, ResourceSpans, ScopeSpans};
use prost::Message as _;
use serde::Serialize;

use super::delivery::Requests;
use crate::spans::{
    AttributeValue, Attributes, ContextFlags, Resource, Scope, Span, SpanEvent, SpanKind, SpanLink, StatusCode,
};

/// The instrumentation scope of every span the agent makes.
const SCOPE_NAME: &str = "scouter-agent";

/// OTLP span flags: W3C's in the low byte, then "whether the parent is remote is known"
/// (0x100) and "the parent is remote" (0x200), as the Scouter SDK sets them.
const W3C_SAMPLED: u32 = 0x01;
const PARENT_REMOTENESS_KNOWN: u32 = 0x100;
const PARENT_IS_REMOTE: u32 = 0x200;

fn span_flags(flags: ContextFlags) -> u32 {
    let sampled = if flags.sampled { W3C_SAMPLED } else { 0 };
    let remote = if flags.remote_parent { PARENT_IS_REMOTE } else { 0 };
    sampled | PARENT_REMOTENESS_KNOWN | remote
}

/// The OTLP request for `batch`: one `ResourceSpans` per distinct resource (in order of first
/// appearance), each with one scope, spans in batch order.
pub fn export_request<S: Borrow<Span>>(batch: &[S]) -> ExportTraceServiceRequest {
    let resource_spans = group_by_resource(batch)
        .into_iter()
        .map(|(resource, spans)| ResourceSpans {
            resource: Some(otlp_resource(resource)),
            scope_spans: group_by_scope(&spans)
                .into_iter()
                .map(|(scope, spans)| ScopeSpans {
                    scope: Some(otlp_scope(scope)),
                    spans: spans.into_iter().map(otlp_span).collect(),
                    schema_url: String::new(),
                })
                .collect(),
            schema_url: String::new(),
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

/// The Scouter ingest body, `{"request": <OTLP/JSON>}`, as every Scouter transport sends it.
pub fn scouter_message(request: &ExportTraceServiceRequest) -> Vec<u8> {
    #[derive(Serialize)]
    struct Envelope<'a> {
        request: &'a ExportTraceServiceRequest,
    }
    // Serialising these types into a Vec cannot fail: every map key is a string and the
    // crate's custom serializers only emit strings and numbers.
    serde_json::to_vec(&Envelope { request }).expect("an OTLP request always serialises to JSON")
}

/// The request in protobuf, for OTLP/HTTP (`application/x-protobuf`).
pub fn otlp_protobuf(request: &ExportTraceServiceRequest) -> Vec<u8> {
    request.encode_to_vec()
}

/// Part of a batch, as [`split_to_fit`] cut it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chunk {
    /// These spans (indices into the batch) encode within the limit together.
    Fits(Range<usize>),
    /// This span alone encodes over the limit: no request can carry it, count it as dropped.
    TooLarge(usize),
}

/// Cuts `batch` into consecutive chunks whose `encoded_len` is at most `max_bytes`, each as
/// long as the limit allows, covering every span once and in order. `encoded_len` measures a
/// whole request body (envelope included), so the limit can be the transport's own.
pub fn split_to_fit<S>(batch: &[S], max_bytes: usize, encoded_len: impl Fn(&[S]) -> usize) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    let mut start = 0;
    while start < batch.len() {
        match longest_fitting_end(batch, start, max_bytes, &encoded_len) {
            Some(end) => {
                chunks.push(Chunk::Fits(start..end));
                start = end;
            }
            None => {
                chunks.push(Chunk::TooLarge(start));
                start += 1;
            }
        }
    }
    chunks
}

/// The requests that carry `spans` for a transport whose bodies (as `encode` makes them from
/// an OTLP request) may not exceed `max_bytes`.
pub fn encoded_requests(
    spans: &[Arc<Span>],
    max_bytes: usize,
    encode: impl Fn(&ExportTraceServiceRequest) -> Vec<u8>,
) -> Requests<Vec<u8>> {
    let mut requests = Requests { ready: Vec::new(), too_large: 0 };
    for chunk in split_to_fit(spans, max_bytes, |part| encode(&export_request(part)).len()) {
        match chunk {
            Chunk::Fits(range) => {
                let count = range.len();
                requests.ready.push((encode(&export_request(&spans[range])), count));
            }
            Chunk::TooLarge(_) => requests.too_large += 1,
        }
    }
    requests
}

/// The largest `end` with `batch[start..end]` within the limit, or None when even the one span
/// at `start` is over it. The whole rest is tried first because a batch usually fits; otherwise
/// a binary search (a request never shrinks as spans are added) keeps encodes logarithmic.
fn longest_fitting_end<S>(
    batch: &[S],
    start: usize,
    max_bytes: usize,
    encoded_len: &impl Fn(&[S]) -> usize,
) -> Option<usize> {
    let fits = |end: usize| encoded_len(&batch[start..end]) <= max_bytes;
    if fits(batch.len()) {
        return Some(batch.len());
    }
    if !fits(start + 1) {
        return None;
    }
    // Invariant: `low` fits, `high` does not.
    let (mut low, mut high) = (start + 1, batch.len());
    while high - low > 1 {
        let middle = low + (high - low) / 2;
        if fits(middle) {
            low = middle;
        } else {
            high = middle;
        }
    }
    Some(low)
}

/// Spans by resource. Resources are compared by pointer first (spans of one process share
/// their `Arc`) and by content second, so equal resources built apart still merge. A batch
/// holds few distinct resources, so a linear search beats hashing (attributes hold floats).
fn group_by_resource<S: Borrow<Span>>(batch: &[S]) -> Vec<(&Resource, Vec<&Span>)> {
    let mut groups: Vec<(&Arc<Resource>, Vec<&Span>)> = Vec::new();
    for span in batch {
        let span = span.borrow();
        let same = |resource: &Arc<Resource>| Arc::ptr_eq(resource, &span.resource) || **resource == *span.resource;
        match groups.iter_mut().find(|(resource, _)| same(resource)) {
            Some((_, spans)) => spans.push(span),
            None => groups.push((&span.resource, vec![span])),
        }
    }
    groups.into_iter().map(|(resource, spans)| (resource.as_ref(), spans)).collect()
}

/// One resource's spans by instrumentation scope (`None`: the agent's own), in order of first
/// appearance.
fn group_by_scope<'a>(spans: &[&'a Span]) -> Vec<(Option<&'a Scope>, Vec<&'a Span>)> {
    let mut groups: Vec<(Option<&Scope>, Vec<&Span>)> = Vec::new();
    for span in spans {
        let scope = span.scope.as_deref();
        match groups.iter_mut().find(|(existing, _)| *existing == scope) {
            Some((_, spans)) => spans.push(span),
            None => groups.push((scope, vec![span])),
        }
    }
    groups
}

fn otlp_scope(scope: Option<&Scope>) -> InstrumentationScope {
    match scope {
        Some(scope) => InstrumentationScope {
            name: scope.name.clone(),
            version: scope.version.clone(),
            attributes: key_values(&scope.attributes),
            ..Default::default()
        },
        None => InstrumentationScope {
            name: SCOPE_NAME.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        },
    }
}

fn otlp_resource(resource: &Resource) -> OtlpResource {
    OtlpResource { attributes: key_values(&resource.attributes), ..Default::default() }
}

fn otlp_span(span: &Span) -> otlp::Span {
    otlp::Span {
        trace_id: span.trace_id.0.to_vec(),
        span_id: span.span_id.0.to_vec(),
        // OTLP marks a root by an empty parent id.
        parent_span_id: span.parent_span_id.map(|id| id.0.to_vec()).unwrap_or_default(),
        flags: span_flags(span.flags),
        name: span.name.clone(),
        kind: otlp_kind(span.kind) as i32,
        start_time_unix_nano: span.start_time_unix_nano,
        end_time_unix_nano: span.end_time_unix_nano,
        attributes: key_values(&span.attributes),
        status: Some(otlp::Status {
            code: otlp_status_code(span.status.code) as i32,
            message: span.status.message.clone(),
        }),
        trace_state: span.trace_state.clone(),
        events: span.events.iter().map(otlp_event).collect(),
        links: span.links.iter().map(otlp_link).collect(),
        ..Default::default()
    }
}

fn otlp_event(event: &SpanEvent) -> otlp::span::Event {
    otlp::span::Event {
        time_unix_nano: event.time_unix_nano,
        name: event.name.clone(),
        attributes: key_values(&event.attributes),
        dropped_attributes_count: 0,
    }
}

fn otlp_link(link: &SpanLink) -> otlp::span::Link {
    otlp::span::Link {
        trace_id: link.trace_id.0.to_vec(),
        span_id: link.span_id.0.to_vec(),
        trace_state: link.trace_state.clone(),
        attributes: key_values(&link.attributes),
        ..Default::default()
    }
}

fn otlp_kind(kind: SpanKind) -> otlp::span::SpanKind {
    match kind {
        SpanKind::Internal => otlp::span::SpanKind::Internal,
        SpanKind::Server => otlp::span::SpanKind::Server,
        SpanKind::Client => otlp::span::SpanKind::Client,
        SpanKind::Producer => otlp::span::SpanKind::Producer,
        SpanKind::Consumer => otlp::span::SpanKind::Consumer,
    }
}

fn otlp_status_code(code: StatusCode) -> otlp::status::StatusCode {
    match code {
        StatusCode::Unset => otlp::status::StatusCode::Unset,
        StatusCode::Ok => otlp::status::StatusCode::Ok,
        StatusCode::Error => otlp::status::StatusCode::Error,
    }
}

fn key_values(attributes: &Attributes) -> Vec<KeyValue> {
    attributes
        .iter()
        .map(|(key, value)| KeyValue { key: key.clone(), value: Some(AnyValue { value: Some(any_value(value)) }) })
        .collect()
}

fn any_value(value: &AttributeValue) -> any_value::Value {
    match value {
        AttributeValue::Bool(v) => any_value::Value::BoolValue(*v),
        AttributeValue::Int(v) => any_value::Value::IntValue(*v),
        // serde_json writes NaN and infinities as `null`, which OTLP/JSON readers (this
        // crate's own deserializer included) refuse, failing the whole batch; a Python float
        // argument can be either. Text keeps the value readable and the batch valid, the same
        // in every backend.
        AttributeValue::Double(v) if !v.is_finite() => any_value::Value::StringValue(v.to_string()),
        AttributeValue::Double(v) => any_value::Value::DoubleValue(*v),
        AttributeValue::String(v) => any_value::Value::StringValue(v.clone()),
        AttributeValue::Array(values) => any_value::Value::ArrayValue(ArrayValue {
            values: values.iter().map(|v| AnyValue { value: Some(any_value(v)) }).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::{SpanId, Status};
    use serde_json::{json, Value};

    fn resource(service: &str) -> Arc<Resource> {
        let mut attributes = Attributes::new();
        attributes.insert("service.name".into(), service.into());
        attributes.insert("process.pid".into(), 42i64.into());
        Arc::new(Resource { attributes })
    }

    fn span(name: &str, resource: &Arc<Resource>) -> Span {
        Span { name: name.into(), resource: Arc::clone(resource), ..Span::for_test(SpanKind::Server, SpanId::random()) }
    }

    /// The `request` of the Scouter message for `batch`, parsed back.
    fn scouter_json(batch: &[Span]) -> Value {
        let message: Value = serde_json::from_slice(&scouter_message(&export_request(batch))).unwrap();
        let object = message.as_object().unwrap();
        assert_eq!(object.keys().collect::<Vec<_>>(), ["request"], "the envelope has one key");
        message["request"].clone()
    }

    /// The first span of the first resource, in OTLP/JSON.
    fn first_json_span(request: &Value) -> &Value {
        &request["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    }

    fn names(spans: &[otlp::Span]) -> Vec<&str> {
        spans.iter().map(|span| span.name.as_str()).collect()
    }

    #[test]
    fn spans_are_grouped_by_resource_pointer_or_content() {
        let api = resource("api");
        let api_built_apart = resource("api");
        let worker = resource("worker");
        let batch = [span("a", &api), span("b", &worker), span("c", &api_built_apart), span("d", &api)];

        let request = export_request(&batch);

        assert_eq!(request.resource_spans.len(), 2);
        let service_names: Vec<_> = request
            .resource_spans
            .iter()
            .map(|group| {
                let attributes = &group.resource.as_ref().unwrap().attributes;
                let name = attributes.iter().find(|kv| kv.key == "service.name").unwrap();
                name.value.clone().unwrap().value.unwrap()
            })
            .collect();
        assert_eq!(
            service_names,
            [any_value::Value::StringValue("api".into()), any_value::Value::StringValue("worker".into())]
        );
        for group in &request.resource_spans {
            assert_eq!(group.scope_spans.len(), 1, "one scope per resource");
            let scope = group.scope_spans[0].scope.as_ref().unwrap();
            assert_eq!(scope.name, "scouter-agent");
            assert_eq!(scope.version, env!("CARGO_PKG_VERSION"));
        }
        assert_eq!(names(&request.resource_spans[0].scope_spans[0].spans), ["a", "c", "d"]);
        assert_eq!(names(&request.resource_spans[1].scope_spans[0].spans), ["b"]);
    }

    #[test]
    fn scouter_json_ids_are_lowercase_hex() {
        let mut root = Span::for_test(SpanKind::Server, "b7ad6b7169203331".parse().unwrap());
        root.trace_id = "0af7651916cd43dd8448eb211c80319c".parse().unwrap();
        let child =
            Span { span_id: "00f067aa0ba902b7".parse().unwrap(), parent_span_id: Some(root.span_id), ..root.clone() };

        let request = scouter_json(&[root, child]);

        let spans = &request["resourceSpans"][0]["scopeSpans"][0]["spans"];
        assert_eq!(spans[0]["traceId"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(spans[0]["spanId"], "b7ad6b7169203331");
        assert_eq!(spans[1]["spanId"], "00f067aa0ba902b7");
        assert_eq!(spans[1]["parentSpanId"], "b7ad6b7169203331");
    }

    #[test]
    fn scouter_json_timestamps_are_exact_decimal_strings() {
        // Above 2^53, where a JSON number read as a double would lose digits.
        let start = 1_700_000_000_123_456_789;
        let end = u64::MAX;
        let span = Span {
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            ..Span::for_test(SpanKind::Client, SpanId::random())
        };

        let request = scouter_json(&[span]);

        let json_span = first_json_span(&request);
        assert_eq!(json_span["startTimeUnixNano"], Value::String("1700000000123456789".into()));
        assert_eq!(json_span["endTimeUnixNano"], Value::String("18446744073709551615".into()));
    }

    #[test]
    fn scouter_json_kind_is_the_otlp_integer() {
        let kinds = [
            (SpanKind::Internal, 1),
            (SpanKind::Server, 2),
            (SpanKind::Client, 3),
            (SpanKind::Producer, 4),
            (SpanKind::Consumer, 5),
        ];
        for (kind, number) in kinds {
            let request = scouter_json(&[Span::for_test(kind, SpanId::random())]);
            assert_eq!(first_json_span(&request)["kind"], json!(number), "{kind:?}");
        }
    }

    #[test]
    fn scouter_json_attributes_use_otlp_value_keys() {
        let mut span = Span::for_test(SpanKind::Server, SpanId::random());
        span.attributes.insert("b".into(), true.into());
        span.attributes.insert("i".into(), AttributeValue::Int(-7));
        span.attributes.insert("d".into(), AttributeValue::Double(0.25));
        span.attributes.insert("s".into(), "text".into());

        let request = scouter_json(&[span]);

        let attributes = &first_json_span(&request)["attributes"];
        let value_of = |key: &str| {
            let pair = attributes.as_array().unwrap().iter().find(|kv| kv["key"] == key).unwrap();
            pair["value"].clone()
        };
        assert_eq!(value_of("b"), json!({"boolValue": true}));
        // The server accepts intValue as a string or a number; the crate writes a string.
        assert_eq!(value_of("i"), json!({"intValue": "-7"}));
        assert_eq!(value_of("d"), json!({"doubleValue": 0.25}));
        assert_eq!(value_of("s"), json!({"stringValue": "text"}));
    }

    #[test]
    fn non_finite_doubles_become_text_instead_of_json_null() {
        let mut span = Span::for_test(SpanKind::Internal, SpanId::random());
        span.attributes.insert("nan".into(), AttributeValue::Double(f64::NAN));
        span.attributes.insert("inf".into(), AttributeValue::Double(f64::NEG_INFINITY));

        let message = String::from_utf8(scouter_message(&export_request(&[span]))).unwrap();

        assert!(!message.contains("null"), "{message}");
        assert!(message.contains(r#"{"stringValue":"NaN"}"#), "{message}");
        assert!(message.contains(r#"{"stringValue":"-inf"}"#), "{message}");
    }

    #[test]
    fn scouter_json_reads_back_as_the_same_request() {
        let mut span = Span::for_test(SpanKind::Server, SpanId::random());
        span.parent_span_id = Some(SpanId::random());
        span.attributes.insert("i".into(), AttributeValue::Int(i64::MIN));
        span.attributes.insert("d".into(), AttributeValue::Double(f64::INFINITY));
        span.status = Status { code: StatusCode::Error, message: "boom".into() };
        let request = export_request(&[span]);

        let message: Value = serde_json::from_slice(&scouter_message(&request)).unwrap();
        let read_back: ExportTraceServiceRequest = serde_json::from_value(message["request"].clone()).unwrap();

        assert_eq!(read_back, request);
    }

    #[test]
    fn every_attribute_type_survives_a_protobuf_round_trip() {
        let mut resource = Resource::default();
        resource.attributes.insert("service.name".into(), "api".into());
        resource.attributes.insert("process.pid".into(), 4242i64.into());
        let mut span = Span::for_test(SpanKind::Server, SpanId::random());
        span.resource = Arc::new(resource);
        span.attributes.insert("bool".into(), false.into());
        span.attributes.insert("int.min".into(), AttributeValue::Int(i64::MIN));
        span.attributes.insert("int.max".into(), AttributeValue::Int(i64::MAX));
        span.attributes.insert("double".into(), AttributeValue::Double(-1.5e300));
        span.attributes.insert("string".into(), "héllo".into());
        let request = export_request(std::slice::from_ref(&span));

        let decoded = ExportTraceServiceRequest::decode(otlp_protobuf(&request).as_slice()).unwrap();

        assert_eq!(decoded, request);
        let group = &decoded.resource_spans[0];
        assert_eq!(group.resource.as_ref().unwrap().attributes, key_values(&span.resource.attributes));
        let decoded_span = &group.scope_spans[0].spans[0];
        let values: Vec<_> = decoded_span
            .attributes
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.clone().unwrap().value.unwrap()))
            .collect();
        assert_eq!(
            values,
            [
                ("bool", any_value::Value::BoolValue(false)),
                ("double", any_value::Value::DoubleValue(-1.5e300)),
                ("int.max", any_value::Value::IntValue(i64::MAX)),
                ("int.min", any_value::Value::IntValue(i64::MIN)),
                ("string", any_value::Value::StringValue("héllo".into())),
            ]
        );
        assert_eq!(decoded_span.trace_id, span.trace_id.0);
        assert_eq!(decoded_span.span_id, span.span_id.0);
        assert_eq!(decoded_span.start_time_unix_nano, span.start_time_unix_nano);
        assert_eq!(decoded_span.flags, 0x101, "sampled, parent local");
    }

    #[test]
    fn span_flags_say_sampled_and_where_the_parent_lives() {
        let flags = |sampled, remote_parent| span_flags(ContextFlags { sampled, remote_parent });
        assert_eq!(flags(true, false), 0x101);
        assert_eq!(flags(true, true), 0x301);
        assert_eq!(flags(false, true), 0x300);
    }

    #[test]
    fn error_status_keeps_its_code_and_message() {
        let span = Span {
            status: Status { code: StatusCode::Error, message: "upstream timed out".into() },
            ..Span::for_test(SpanKind::Client, SpanId::random())
        };

        let request = export_request(std::slice::from_ref(&span));
        let json = scouter_json(&[span]);

        let status = request.resource_spans[0].scope_spans[0].spans[0].status.clone().unwrap();
        assert_eq!(status.code, otlp::status::StatusCode::Error as i32);
        assert_eq!(status.message, "upstream timed out");
        assert_eq!(first_json_span(&json)["status"], json!({"code": 2, "message": "upstream timed out"}));
    }

    #[test]
    fn a_root_span_has_no_parent_id() {
        let root = Span::for_test(SpanKind::Server, SpanId::random());
        assert_eq!(root.parent_span_id, None);

        let request = export_request(std::slice::from_ref(&root));
        let json = scouter_json(&[root]);

        assert!(request.resource_spans[0].scope_spans[0].spans[0].parent_span_id.is_empty());
        let parent = first_json_span(&json).get("parentSpanId");
        assert!(parent.is_none() || parent == Some(&json!("")), "{parent:?}");
    }

    fn protobuf_len(spans: &[Span]) -> usize {
        otlp_protobuf(&export_request(spans)).len()
    }

    fn ranges_and_too_large(chunks: &[Chunk]) -> (Vec<Range<usize>>, Vec<usize>) {
        let mut ranges = Vec::new();
        let mut too_large = Vec::new();
        for chunk in chunks {
            match chunk {
                Chunk::Fits(range) => ranges.push(range.clone()),
                Chunk::TooLarge(index) => too_large.push(*index),
            }
        }
        (ranges, too_large)
    }

    #[test]
    fn splitting_respects_the_limit_and_keeps_every_span_once_in_order() {
        let resource = resource("api");
        let mut batch: Vec<Span> = (0..40).map(|i| span(&"x".repeat(10 + 7 * i), &resource)).collect();
        batch[17].name = "y".repeat(5_000);
        let max_bytes = 1_000;
        assert!(protobuf_len(&batch[17..18]) > max_bytes);

        let chunks = split_to_fit(&batch, max_bytes, protobuf_len);

        let covered: Vec<usize> = chunks
            .iter()
            .flat_map(|chunk| match chunk {
                Chunk::Fits(range) => range.clone().collect::<Vec<_>>(),
                Chunk::TooLarge(index) => vec![*index],
            })
            .collect();
        assert_eq!(covered, (0..batch.len()).collect::<Vec<_>>(), "every span once, in order");
        let (ranges, too_large) = ranges_and_too_large(&chunks);
        assert_eq!(too_large, [17]);
        assert!(ranges.len() > 2, "the batch really was split: {ranges:?}");
        for range in &ranges {
            assert!(!range.is_empty());
            assert!(protobuf_len(&batch[range.clone()]) <= max_bytes, "{range:?}");
            // Each chunk is as long as it can be: one more span would not fit.
            if range.end < batch.len() {
                assert!(protobuf_len(&batch[range.start..range.end + 1]) > max_bytes, "{range:?}");
            }
        }
    }

    #[test]
    fn a_batch_within_the_limit_stays_whole() {
        let resource = resource("api");
        let batch: Vec<Span> = (0..5).map(|i| span(&i.to_string(), &resource)).collect();

        assert_eq!(split_to_fit(&batch, 2_000_000, protobuf_len), [Chunk::Fits(0..5)]);
        assert_eq!(split_to_fit(&[], 2_000_000, protobuf_len), []);
    }

    #[test]
    fn splitting_by_the_scouter_message_size() {
        let resource = resource("api");
        let batch: Vec<Span> = (0..30).map(|i| span(&format!("span {i}"), &resource)).collect();
        let scouter_len = |spans: &[Span]| scouter_message(&export_request(spans)).len();
        let max_bytes = scouter_len(&batch) / 3;

        let (ranges, too_large) = ranges_and_too_large(&split_to_fit(&batch, max_bytes, scouter_len));

        assert!(too_large.is_empty());
        assert!(ranges.len() >= 3, "{ranges:?}");
        assert!(ranges.iter().all(|range| scouter_len(&batch[range.clone()]) <= max_bytes));
        assert_eq!(ranges.first().unwrap().start, 0);
        assert_eq!(ranges.last().unwrap().end, batch.len());
        assert!(ranges.windows(2).all(|pair| pair[0].end == pair[1].start));
    }
}
