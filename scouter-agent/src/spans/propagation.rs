//! Trace context carried in HTTP headers: W3C `traceparent`, and the Scouter SDK's
//! `trace_id`/`span_id`/`is_sampled` headers.

use super::http1::Fields;
use super::ids::{SpanId, TraceId};

/// A remote parent (or, on a client request, the identity its sender chose).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
}

/// Parses `version-traceid-parentid-flags` (W3C Trace Context level 1, version 00; later
/// versions are read by their first four fields, as the spec asks).
pub fn parse_traceparent(value: &str) -> Option<TraceContext> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let span_id = parts.next()?;
    let flags = parts.next()?;
    let valid_version = version.len() == 2 && version != "ff" && u8::from_str_radix(version, 16).is_ok();
    if !valid_version || (version == "00" && parts.next().is_some()) || flags.len() != 2 {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(TraceContext { trace_id: trace_id.parse().ok()?, span_id: span_id.parse().ok()?, sampled: flags & 1 == 1 })
}

/// The header value the agent writes when it propagates a context itself.
#[allow(dead_code)] // The sk_msg injection path (next milestone) is its first caller.
pub fn format_traceparent(context: &TraceContext) -> String {
    format!("00-{}-{}-{:02x}", context.trace_id, context.span_id, u8::from(context.sampled))
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
    fn round_trip() {
        let context = parse_traceparent(VALID).unwrap();
        assert!(context.sampled);
        assert_eq!(format_traceparent(&context), VALID);
    }

    #[test]
    fn rejects_invalid_values() {
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "0x-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
        assert!(parse_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00-future").is_some());
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
