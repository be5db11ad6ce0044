//! The one span type. Assembly produces it, SDK spans will be decoded into it, and every sink
//! (local store, stdout, Scouter, OTLP) consumes it. It follows the OTLP data model.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::ids::{SpanId, TraceId};

/// An attribute value (the OTLP scalar kinds the agent produces).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AttributeValue {
    Bool(bool),
    Int(i64),
    Double(f64),
    String(String),
    /// An array of values (SDK spans may carry them; the agent's own attributes are scalars).
    Array(Vec<AttributeValue>),
}

impl fmt::Display for AttributeValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bool(v) => write!(f, "{v}"),
            Self::Int(v) => write!(f, "{v}"),
            Self::Double(v) => write!(f, "{v}"),
            Self::String(v) => f.write_str(v),
            Self::Array(values) => {
                let shown: Vec<String> = values.iter().map(ToString::to_string).collect();
                write!(f, "[{}]", shown.join(", "))
            }
        }
    }
}

impl From<&str> for AttributeValue {
    fn from(v: &str) -> Self {
        Self::String(v.to_owned())
    }
}
impl From<String> for AttributeValue {
    fn from(v: String) -> Self {
        Self::String(v)
    }
}
impl From<i64> for AttributeValue {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}
impl From<u16> for AttributeValue {
    fn from(v: u16) -> Self {
        Self::Int(v.into())
    }
}
impl From<u32> for AttributeValue {
    fn from(v: u32) -> Self {
        Self::Int(v.into())
    }
}
impl From<bool> for AttributeValue {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}

/// Attributes keyed by their OTel semantic-convention names, in a stable order.
pub type Attributes = BTreeMap<String, AttributeValue>;

/// OTLP span kinds; the discriminants are OTLP's integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SpanKind {
    Internal = 1,
    Server = 2,
    Client = 3,
    Producer = 4,
    Consumer = 5,
}

impl SpanKind {
    /// The name as OTLP spells it (`SERVER`), as the JSON form uses.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Internal => "INTERNAL",
            Self::Server => "SERVER",
            Self::Client => "CLIENT",
            Self::Producer => "PRODUCER",
            Self::Consumer => "CONSUMER",
        }
    }
}

/// OTLP status codes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StatusCode {
    #[default]
    Unset = 0,
    Ok = 1,
    Error = 2,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub code: StatusCode,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// What produced a span: a process on this host.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    pub attributes: Attributes,
}

impl Resource {
    /// `process.pid`, as a number or a decimal string.
    pub fn process_pid(&self) -> Option<i64> {
        match self.attributes.get("process.pid")? {
            AttributeValue::Int(pid) => Some(*pid),
            AttributeValue::String(pid) => pid.parse().ok(),
            _ => None,
        }
    }

    pub fn service_name(&self) -> &str {
        match self.attributes.get("service.name") {
            Some(AttributeValue::String(name)) => name,
            _ => "unknown_service",
        }
    }
}

/// The instrumentation that made a span (OTLP's instrumentation scope), for spans an SDK made.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Scope {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "Attributes::is_empty")]
    pub attributes: Attributes,
}

/// Something that happened during a span (an SDK's `exception` or `span.error` event).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpanEvent {
    pub name: String,
    #[serde(with = "nanos_as_string")]
    pub time_unix_nano: u64,
    #[serde(default, skip_serializing_if = "Attributes::is_empty")]
    pub attributes: Attributes,
}

/// A span another span links to (an SDK's links, kept as received).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpanLink {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trace_state: String,
    #[serde(default, skip_serializing_if = "Attributes::is_empty")]
    pub attributes: Attributes,
}

/// What a span's context says beyond its ids: W3C's sampled flag (the caller's decision,
/// inherited by every span of its trace in this process), and whether the parent lives in
/// another process (carried in a request header or a TCP option).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContextFlags {
    pub sampled: bool,
    pub remote_parent: bool,
}

impl Default for ContextFlags {
    /// A span the agent started a trace for: sampled, no parent.
    fn default() -> Self {
        Self { sampled: true, remote_parent: false }
    }
}

impl ContextFlags {
    /// From W3C trace flags (bit 0: sampled).
    pub fn from_w3c(flags: u8, remote_parent: bool) -> Self {
        Self { sampled: flags & 1 == 1, remote_parent }
    }
}

/// A finished span.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<SpanId>,
    pub name: String,
    pub kind: SpanKind,
    /// Wall-clock nanoseconds since the Unix epoch, as decimal strings in JSON (as OTLP/JSON).
    #[serde(with = "nanos_as_string")]
    pub start_time_unix_nano: u64,
    #[serde(with = "nanos_as_string")]
    pub end_time_unix_nano: u64,
    pub attributes: Attributes,
    pub status: Status,
    pub resource: Arc<Resource>,
    #[serde(default)]
    pub flags: ContextFlags,
    /// W3C `tracestate` of the span's context, as an SDK reported it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trace_state: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<SpanEvent>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<SpanLink>,
    /// The SDK instrumentation that made the span; `None` for the agent's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Arc<Scope>>,
}

impl Span {
    pub fn duration_nanos(&self) -> u64 {
        self.end_time_unix_nano.saturating_sub(self.start_time_unix_nano)
    }
}

#[cfg(test)]
impl Span {
    /// A minimal span for unit tests: `kind`, ids `span_id` in a fixed trace, 1 ns long.
    pub fn for_test(kind: SpanKind, span_id: super::SpanId) -> Self {
        Span {
            trace_id: super::TraceId([1; 16]),
            span_id,
            parent_span_id: None,
            name: "GET".into(),
            kind,
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            attributes: Default::default(),
            status: Status::default(),
            resource: Arc::new(Resource::default()),
            flags: ContextFlags::default(),
            trace_state: String::new(),
            events: Vec::new(),
            links: Vec::new(),
            scope: None,
        }
    }
}

/// Nanoseconds as decimal strings in JSON (as OTLP/JSON does), numbers accepted on input.
pub(crate) mod nanos_as_string {
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Nanos {
            Text(String),
            Number(u64),
        }
        match Nanos::deserialize(deserializer)? {
            Nanos::Text(text) => text.parse().map_err(de::Error::custom),
            Nanos::Number(n) => Ok(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_matches_the_documented_keys() {
        let mut attributes = Attributes::new();
        attributes.insert("http.request.method".into(), "GET".into());
        attributes.insert("http.response.status_code".into(), 200i64.into());
        let span = Span {
            trace_id: "0af7651916cd43dd8448eb211c80319c".parse().unwrap(),
            span_id: "b7ad6b7169203331".parse().unwrap(),
            parent_span_id: None,
            name: "GET".into(),
            kind: SpanKind::Server,
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            attributes,
            status: Status::default(),
            resource: Arc::new(Resource::default()),
            flags: ContextFlags { sampled: false, remote_parent: true },
            trace_state: String::new(),
            events: Vec::new(),
            links: Vec::new(),
            scope: None,
        };
        let json = serde_json::to_value(&span).unwrap();
        assert_eq!(json["traceId"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(json["spanId"], "b7ad6b7169203331");
        assert_eq!(json["kind"], "SERVER");
        assert_eq!(json["startTimeUnixNano"], "1");
        assert_eq!(json["attributes"]["http.response.status_code"], 200);
        assert_eq!(json["status"]["code"], "UNSET");
        assert!(json.get("parentSpanId").is_none());
        assert_eq!(json["flags"]["remoteParent"], true);
        let back: Span = serde_json::from_value(json).unwrap();
        assert_eq!(back, span);
    }
}
