//! Spans: the data model, and their assembly from socket events.
//!
//! - [`model`] and [`ids`]: the one span type every stage after this one consumes;
//! - [`http1`]: the HTTP/1.x message-head parser (the only one in the agent);
//! - [`assembly`]: per-connection state machines that pair requests with responses and emit spans.

pub mod assembly;
pub mod http1;
pub mod ids;
pub mod model;

pub use ids::{SpanId, TraceId};
pub use model::{AttributeValue, Attributes, Resource, Span, SpanKind, Status, StatusCode};
