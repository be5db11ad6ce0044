//! Checking stored spans against the exchanges a test recorded.
//!
//! A [`Verdict`] collects every problem instead of stopping at the first, so one run of a test
//! reports all mismatches of all its servers; [`Verdict::finish`] then fails with the numbered
//! problems, the relevant spans (one JSON line each) and the agent's log.
//!
//! A server's spans are those attributed to its pid *or* its port: a span with the right port but
//! a wrong pid (or the reverse) is then reported as wrong instead of silently missing.

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::{bail, Result};
use serde_json::Value;

use crate::python::PythonServer;
use crate::store::Span;
use crate::traffic::Exchange;

/// Tolerance between the client's clock readings and the span times (different clocks and
/// conversion from kernel time; a wrong epoch would be off by far more).
pub const CLOCK_SLACK_NANOS: u64 = 1_000_000_000;

/// What every span of one server must say about its process.
#[derive(Debug, Clone)]
pub struct ServerIdentity {
    pub label: String,
    pub pid: u32,
    pub port: u16,
    /// `process.runtime.version` must start with this.
    pub runtime_version: String,
    /// Acceptable `process.executable.path` values (as run, and resolved).
    pub executables: Vec<PathBuf>,
}

impl ServerIdentity {
    pub fn of(server: &PythonServer) -> Self {
        let interpreter = server.interpreter();
        Self {
            label: server.describe(),
            pid: server.pid(),
            port: server.port(),
            runtime_version: interpreter.version.clone(),
            executables: vec![interpreter.path.clone(), interpreter.canonical_path()],
        }
    }

    /// Whether a span is attributed to this server (by pid or by port).
    pub fn claims(&self, span: &Span) -> bool {
        span.pid() == Some(i64::from(self.pid)) || span.server_port() == Some(i64::from(self.port))
    }
}

/// Collected problems and the evidence that goes with them.
#[derive(Default)]
pub struct Verdict {
    problems: Vec<String>,
    evidence: Vec<String>,
}

impl Verdict {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn problem(&mut self, message: impl Into<String>) {
        self.problems.push(message.into());
    }

    /// Records the outcome of a step that may fail without ending the test.
    pub fn step<T>(&mut self, what: &str, result: Result<T>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.problem(format!("{what}: {error:#}"));
                None
            }
        }
    }

    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// Exactly one correct span per exchange for `server`, and no other span.
    pub fn expect_exchanges(&mut self, spans: &[Span], server: &ServerIdentity, exchanges: &[Exchange]) {
        let before = self.problems.len();
        let claimed: Vec<&Span> = spans.iter().filter(|span| server.claims(span)).collect();
        if claimed.len() != exchanges.len() {
            self.problem(format!(
                "{}: expected exactly {} SERVER span(s), found {}",
                server.label,
                exchanges.len(),
                claimed.len()
            ));
        }
        if claimed.is_empty() {
            self.add_evidence(server, exchanges, &claimed);
            return;
        }
        let matched = self.match_exchanges(&claimed, server, exchanges);
        self.check_unmatched(&claimed, &matched, server);
        self.check_order(&matched, server);
        self.check_unique_ids(&claimed, server);
        if self.problems.len() > before {
            self.add_evidence(server, exchanges, &claimed);
        }
    }

    /// No span at all for `server` (why: what the test did to it).
    pub fn expect_no_spans(&mut self, spans: &[Span], server: &ServerIdentity, why: &str) {
        let claimed: Vec<&Span> = spans.iter().filter(|span| server.claims(span)).collect();
        if !claimed.is_empty() {
            self.problem(format!("{}: expected no span ({why}), found {}", server.label, claimed.len()));
            self.add_evidence(server, &[], &claimed);
        }
    }

    /// No span of `server` with this `url.path` (what was sent there must not become a span).
    pub fn expect_no_span_with_path(&mut self, spans: &[Span], server: &ServerIdentity, path: &str, why: &str) {
        let found: Vec<&Span> =
            spans.iter().filter(|s| server.claims(s) && s.attr_str("url.path") == Some(path)).collect();
        if !found.is_empty() {
            self.problem(format!("{}: expected no span for {path} ({why}), found {}", server.label, found.len()));
            self.add_evidence(server, &[], &found);
        }
    }

    /// For each exchange, the one span with its method and path (checked in detail).
    fn match_exchanges<'a>(
        &mut self,
        claimed: &[&'a Span],
        server: &ServerIdentity,
        exchanges: &'a [Exchange],
    ) -> Vec<(&'a Span, &'a Exchange)> {
        let mut matched = Vec::new();
        for exchange in exchanges {
            let candidates: Vec<&Span> = claimed
                .iter()
                .copied()
                .filter(|s| {
                    s.attr_str("http.request.method") == Some(exchange.request.method.as_str())
                        && s.attr_str("url.path") == Some(exchange.request.path())
                })
                .collect();
            match candidates.as_slice() {
                [span] => {
                    for issue in span_issues(span, server, exchange) {
                        self.problem(format!("{}: span for {}: {issue}", server.label, exchange.describe()));
                    }
                    matched.push((*span, exchange));
                }
                [] => self.problem(format!("{}: no span for {}", server.label, exchange.describe())),
                many => self.problem(format!("{}: {} spans for {}", server.label, many.len(), exchange.describe())),
            }
        }
        matched
    }

    fn check_unmatched(&mut self, claimed: &[&Span], matched: &[(&Span, &Exchange)], server: &ServerIdentity) {
        let matched_ids: HashSet<&str> = matched.iter().map(|(s, _)| s.span_id.as_str()).collect();
        for span in claimed.iter().filter(|s| !matched_ids.contains(s.span_id.as_str())) {
            self.problem(format!("{}: span matches no request sent: {}", server.label, summary(span)));
        }
    }

    /// Requests were sent one after the other, so their spans must start in the same order.
    fn check_order(&mut self, matched: &[(&Span, &Exchange)], server: &ServerIdentity) {
        for pair in matched.windows(2) {
            let ((earlier, first), (later, second)) = (pair[0], pair[1]);
            if earlier.start_time_unix_nano >= later.start_time_unix_nano {
                self.problem(format!(
                    "{}: span of {} starts at {}, not before the span of the later {} ({})",
                    server.label,
                    first.describe(),
                    earlier.start_time_unix_nano,
                    second.describe(),
                    later.start_time_unix_nano
                ));
            }
        }
    }

    fn check_unique_ids(&mut self, claimed: &[&Span], server: &ServerIdentity) {
        let ids: HashSet<(&str, &str)> = claimed.iter().map(|s| (s.trace_id.as_str(), s.span_id.as_str())).collect();
        if ids.len() != claimed.len() {
            self.problem(format!("{}: duplicate (traceId, spanId) among its spans", server.label));
        }
    }

    fn add_evidence(&mut self, server: &ServerIdentity, exchanges: &[Exchange], spans: &[&Span]) {
        let mut text = format!("{}:\n  sent:\n", server.label);
        for exchange in exchanges {
            text.push_str(&format!("    {}\n", exchange.describe()));
        }
        text.push_str(&format!("  spans attributed to it ({}):\n", spans.len()));
        for span in spans {
            text.push_str(&format!("    {}\n", span.json));
        }
        self.evidence.push(text);
    }

    /// Adds free-form evidence (e.g. all spans of the store) shown on failure.
    pub fn add_context(&mut self, text: impl Into<String>) {
        self.evidence.push(text.into());
    }

    /// Fails with every problem, the evidence, and `context` (typically the agent's log).
    pub fn finish(self, context: &str) -> Result<()> {
        if self.problems.is_empty() {
            return Ok(());
        }
        let mut report = format!("{} problem(s):\n", self.problems.len());
        for (n, problem) in self.problems.iter().enumerate() {
            report.push_str(&format!("{:>3}. {problem}\n", n + 1));
        }
        report.push_str("\n=== evidence ===\n");
        for evidence in &self.evidence {
            report.push_str(evidence);
            report.push('\n');
        }
        report.push_str(context);
        bail!(report)
    }
}

/// A short description of a span for messages.
pub fn summary(span: &Span) -> String {
    let get = |key: &str| span.attr(key).map_or("-".to_owned(), Value::to_string);
    format!(
        "{} {} -> {} (pid {:?}, port {:?}, spanId {})",
        get("http.request.method"),
        get("url.path"),
        get("http.response.status_code"),
        span.pid(),
        span.server_port(),
        span.span_id
    )
}

/// Everything wrong with `span` as the span of `exchange` on `server`.
pub fn span_issues(span: &Span, server: &ServerIdentity, exchange: &Exchange) -> Vec<String> {
    let mut issues = Vec::new();
    issues.extend(identity_issues(span));
    issues.extend(attribute_issues(span, server, exchange));
    issues.extend(timing_issues(span, exchange));
    issues.extend(status_issues(span, exchange.status));
    issues.extend(resource_issues(span, server));
    issues
}

fn identity_issues(span: &Span) -> Vec<String> {
    let mut issues = Vec::new();
    if !is_hex_id(&span.trace_id, 32) {
        issues.push(format!("traceId {:?} is not 32 lowercase hex digits, non-zero", span.trace_id));
    }
    if !is_hex_id(&span.span_id, 16) {
        issues.push(format!("spanId {:?} is not 16 lowercase hex digits, non-zero", span.span_id));
    }
    if span.kind != "SERVER" {
        issues.push(format!("kind is {:?}, expected \"SERVER\"", span.kind));
    }
    issues
}

fn attribute_issues(span: &Span, server: &ServerIdentity, exchange: &Exchange) -> Vec<String> {
    let method = exchange.request.method.as_str();
    let mut issues = Vec::new();
    if span.name != method && !span.name.starts_with(&format!("{method} ")) {
        issues.push(format!("name is {:?}, expected {method:?} or \"{method} <route>\"", span.name));
    }
    let expected = [
        ("http.request.method", Value::from(method)),
        ("url.path", Value::from(exchange.request.path())),
        ("http.response.status_code", Value::from(exchange.status)),
        ("server.port", Value::from(server.port)),
        ("client.address", Value::from("127.0.0.1")),
        ("network.protocol.version", Value::from(exchange.protocol_version.as_str())),
    ];
    for (key, want) in expected {
        if span.attr(key) != Some(&want) {
            issues.push(format!("attribute {key} is {}, expected {want}", shown(span.attr(key))));
        }
    }
    issues
}

fn timing_issues(span: &Span, exchange: &Exchange) -> Vec<String> {
    let (start, end) = (span.start_time_unix_nano, span.end_time_unix_nano);
    let mut issues = Vec::new();
    if start >= end {
        issues.push(format!("startTimeUnixNano {start} is not before endTimeUnixNano {end}"));
    }
    let earliest = exchange.sent_at.saturating_sub(CLOCK_SLACK_NANOS);
    let latest = exchange.received_at + CLOCK_SLACK_NANOS;
    if start < earliest || end > latest {
        issues.push(format!(
            "span [{start}, {end}] is not within the client's [{}, {}] (± {CLOCK_SLACK_NANOS} ns)",
            exchange.sent_at, exchange.received_at
        ));
    }
    issues
}

/// OTel server spans: ERROR for 5xx, UNSET otherwise (4xx is the client's error).
fn status_issues(span: &Span, status: u16) -> Vec<String> {
    let expected = if status >= 500 { "ERROR" } else { "UNSET" };
    if span.status.code == expected {
        return Vec::new();
    }
    vec![format!("status.code is {:?}, expected {expected:?} for HTTP {status}", span.status.code)]
}

fn resource_issues(span: &Span, server: &ServerIdentity) -> Vec<String> {
    let mut issues = process_issues(span, &[server.pid], &server.runtime_version);
    let service = span.resource_attr("service.name").and_then(Value::as_str);
    if service.is_none_or(str::is_empty) {
        issues.push(format!(
            "resource service.name is {}, expected a non-empty string",
            shown(span.resource_attr("service.name"))
        ));
    }
    let executable = span.resource_attr("process.executable.path").and_then(Value::as_str);
    if !executable.is_some_and(|path| server.executables.iter().any(|e| e.as_os_str() == path)) {
        issues.push(format!(
            "resource process.executable.path is {}, expected one of {:?}",
            shown(span.resource_attr("process.executable.path")),
            server.executables
        ));
    }
    issues
}

fn is_hex_id(id: &str, digits: usize) -> bool {
    id.len() == digits
        && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && id.bytes().any(|b| b != b'0')
}

/// A span's process must be one of `pids`, running a Python whose version starts with `runtime`.
pub fn process_issues(span: &Span, pids: &[u32], runtime: &str) -> Vec<String> {
    let mut issues = Vec::new();
    if !span.pid().is_some_and(|pid| pids.iter().any(|p| i64::from(*p) == pid)) {
        issues.push(format!(
            "resource process.pid is {}, expected one of {pids:?}",
            shown(span.resource_attr("process.pid"))
        ));
    }
    let version = span.resource_attr("process.runtime.version").and_then(Value::as_str);
    if !version.is_some_and(|v| v.starts_with(runtime)) {
        issues.push(format!(
            "resource process.runtime.version is {}, expected it to start with {runtime:?}",
            shown(span.resource_attr("process.runtime.version"))
        ));
    }
    issues
}

/// A JSON value for a failure message, or "missing".
pub fn shown(value: Option<&Value>) -> String {
    value.map_or("missing".to_owned(), Value::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Request;
    use serde_json::json;

    fn server() -> ServerIdentity {
        ServerIdentity {
            label: "test server".into(),
            pid: 42,
            port: 8000,
            runtime_version: "3.11.2".into(),
            executables: vec![PathBuf::from("/usr/bin/python3.11")],
        }
    }

    fn exchange(status: u16) -> Exchange {
        Exchange {
            request: Request::get("/x?y=1"),
            status,
            protocol_version: "1.1".into(),
            sent_at: 1_000_000_000_000,
            received_at: 1_000_100_000_000,
            connection: 0,
        }
    }

    fn span(status: u16, code: &str) -> Span {
        Span::from_json(json!({
            "traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331",
            "name": "GET", "kind": "SERVER",
            "startTimeUnixNano": "1000000000001", "endTimeUnixNano": "1000000000002",
            "attributes": {"http.request.method": "GET", "url.path": "/x", "http.response.status_code": status,
                "server.port": 8000, "client.address": "127.0.0.1", "network.protocol.version": "1.1"},
            "status": {"code": code},
            "resource": {"attributes": {"process.pid": 42, "service.name": "svc",
                "process.executable.path": "/usr/bin/python3.11", "process.runtime.version": "3.11.2"}}
        }))
        .unwrap()
    }

    #[test]
    fn a_correct_span_has_no_issues() {
        assert_eq!(span_issues(&span(200, "UNSET"), &server(), &exchange(200)), Vec::<String>::new());
        assert_eq!(span_issues(&span(503, "ERROR"), &server(), &exchange(503)), Vec::<String>::new());
    }

    #[test]
    fn wrong_status_code_and_status_are_reported() {
        let issues = span_issues(&span(200, "UNSET"), &server(), &exchange(500));
        assert_eq!(issues.len(), 2, "{issues:?}");
    }

    #[test]
    fn counts_and_unmatched_spans_are_reported() {
        let mut verdict = Verdict::new();
        let spans = vec![span(200, "UNSET"), span(200, "UNSET")];
        verdict.expect_exchanges(&spans, &server(), &[exchange(200)]);
        assert!(!verdict.is_clean());
        let mut verdict = Verdict::new();
        verdict.expect_exchanges(&spans[..1], &server(), &[exchange(200)]);
        assert!(verdict.is_clean());
    }
}
