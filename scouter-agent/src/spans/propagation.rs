//! Trace context carried in HTTP headers: W3C `traceparent`, and the Scouter SDK's
//! `trace_id`/`span_id`/`is_sampled` headers.

use scouter_ebpf::traceparent;

use super::http1::Fields;
use super::ids::{SpanId, TraceId};

/// A remote parent (or, on a client request, the identity its sender chose).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
}

/// Parses `version-traceid-parentid-flags` with the rules the kernel applies too (the parser
/// lives in the shared ABI crate).
pub fn parse_traceparent(value: &str) -> Option<TraceContext> {
    let parsed = traceparent::parse_slice(value.trim().as_bytes())?;
    Some(TraceContext {
        trace_id: TraceId(parsed.trace_id),
        span_id: SpanId(parsed.span_id),
        sampled: parsed.sampled(),
    })
}

/// The context a message carries: `traceparent` first, else the Scouter SDK's headers.
pub fn extract(fields: &Fields) -> Option<TraceContext> {
    if let Some(context) = fields.traceparent.as_deref().and_then(parse_traceparent) {
        return Some(context);
    }
    let trace_id = fields.scouter_trace_id.as_deref()?.trim().parse().ok()?;
    let span_id = fields.scouter_span_id.as_deref()?.trim().parse().ok()?;
    let sampled = fields.scouter_is_sampled.as_deref().is_none_or(|s| s.trim().eq_ignore_ascii_case("true"));
    Some(TraceContext { trace_id, span_id, sampled })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn parses_header_values_with_surrounding_space() {
        let context = parse_traceparent(&format!(" {VALID} ")).unwrap();
        assert!(context.sampled);
        assert_eq!(context.trace_id.to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(context.span_id.to_string(), "b7ad6b7169203331");
        assert_eq!(parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x"), None);
    }

    #[test]
    fn scouter_headers_are_a_fallback() {
        let fields = Fields {
            scouter_trace_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
            scouter_span_id: Some("b7ad6b7169203331".into()),
            scouter_is_sampled: Some("false".into()),
            ..Fields::default()
        };
        let context = extract(&fields).unwrap();
        assert!(!context.sampled);
        let both = Fields { traceparent: Some(VALID.into()), ..fields };
        assert!(extract(&both).unwrap().sampled);
    }
}
