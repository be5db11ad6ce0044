//! Spans: the data model, and their assembly from socket events.
//!
//! - [`model`] and [`ids`]: the one span type every stage after this one consumes;
//! - [`http1`]: the HTTP/1.x message-head parser (the only one in the agent);
//! - [`stream`]: one direction of a connection as a sequence of framed messages;
//! - [`assembly`]: per-connection state that pairs requests with responses;
//! - [`propagation`]: trace context in headers (W3C `traceparent`, Scouter's headers);
//! - [`http_span`]: the span of a completed exchange, with semantic-convention attributes;
//! - [`routes`]: configured route templates that name HTTP spans;
//! - [`code_attribution`]: the Python code a span's request was made or served by;
//! - [`function_span`]: the spans of selected Python functions' calls;
//! - [`scouter_conventions`]: what the Scouter SDK's spans say that the agent's say the same way
//!   (tags, `scouter.scope`, input truncation).

pub mod assembly;
pub mod code_attribution;
pub mod function_span;
pub mod http1;
pub mod http_span;
pub mod ids;
pub mod model;
pub mod propagation;
pub mod routes;
pub mod scouter_conventions;
pub mod stream;

pub use ids::{SpanId, TraceId};
pub use model::{
    AttributeValue, Attributes, ContextFlags, Resource, Scope, Span, SpanEvent, SpanKind, SpanLink, Status, StatusCode,
};
