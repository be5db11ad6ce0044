//! `--stdout`: one line per finished span, for eyes and `grep`.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::delivery::{Requests, SendError, Sink, LOCAL_DELAY};
use crate::spans::Span;

pub struct StdoutSink;

impl Sink for StdoutSink {
    type Request = Vec<Arc<Span>>;

    fn name(&self) -> &'static str {
        "stdout"
    }

    fn max_delay(&self) -> Option<Duration> {
        Some(LOCAL_DELAY)
    }

    fn requests(&self, spans: &[Arc<Span>]) -> Requests<Self::Request> {
        Requests { ready: vec![(spans.to_vec(), spans.len())], too_large: 0 }
    }

    /// A closed standard output will not reopen: its lines are dropped, not retried.
    fn send(&mut self, spans: &Self::Request, _deadline: Instant) -> Result<(), SendError> {
        let mut out = std::io::stdout().lock();
        let written: std::io::Result<()> = spans.iter().try_for_each(|span| writeln!(out, "{}", line(span)));
        written
            .and_then(|()| out.flush())
            .map_err(|error| SendError::reject(format!("writing to standard output: {error}")))
    }
}

/// `span <trace> <span> <parent|-> <KIND> <service> pid=<pid> "<name> <path>" status=<code> <ms>ms`
pub fn line(span: &Span) -> String {
    let attribute = |key: &str| span.attributes.get(key).map(|v| v.to_string());
    let target = attribute("url.path").or_else(|| attribute("url.full")).unwrap_or_default();
    let status = attribute("http.response.status_code").unwrap_or_else(|| "-".into());
    let pid = span.resource.attributes.get("process.pid").map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    let parent = span.parent_span_id.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
    format!(
        "span {} {} {} {} {} pid={} \"{} {}\" status={} {:.3}ms",
        span.trace_id,
        span.span_id,
        parent,
        span.kind.as_str(),
        span.resource.service_name(),
        pid,
        span.name,
        target,
        status,
        span.duration_nanos() as f64 / 1e6,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::{AttributeValue, Resource};
    use std::sync::Arc;

    #[test]
    fn one_line_names_ids_kind_service_request_status_and_duration() {
        let mut span = crate::spans::Span::for_test(crate::spans::SpanKind::Server, crate::spans::SpanId::random());
        span.start_time_unix_nano = 1_000_000;
        span.end_time_unix_nano = 3_500_000;
        span.attributes.insert("url.path".into(), "/items/7".into());
        span.attributes.insert("http.response.status_code".into(), AttributeValue::Int(404));
        let mut resource = Resource::default();
        resource.attributes.insert("service.name".into(), "shop".into());
        resource.attributes.insert("process.pid".into(), AttributeValue::Int(42));
        span.resource = Arc::new(resource);
        let expected =
            format!("span {} {} - SERVER shop pid=42 \"GET /items/7\" status=404 2.500ms", span.trace_id, span.span_id);
        assert_eq!(line(&span), expected);
    }
}
