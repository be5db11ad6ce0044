//! The traces a chain A → B → C must produce (see [`crate::chain`] for running one).
//!
//! For every request `GET /chain/<id>?token=<secret>` sent to A, [`expect_traces`] requires
//! exactly one trace of five spans:
//!
//! | role | kind | parent | identified by |
//! | --- | --- | --- | --- |
//! | A SERVER | SERVER | none (root) | `server.port` = A's port, `url.path` = `/chain/<id>` |
//! | A CLIENT | CLIENT | A SERVER | a process of A, `url.full` path = `/chain/<id>` |
//! | B SERVER | SERVER | A CLIENT | `server.port` = B's port, `url.path` |
//! | B CLIENT | CLIENT | B SERVER | a process of B, `url.full` path |
//! | C SERVER | SERVER | B CLIENT | `server.port` = C's port, `url.path` |
//!
//! all with one trace id and nothing else in it, each child's `[start, end]` inside its
//! parent's (± [`NESTING_SLACK_NANOS`]), the root inside the test client's own request, name
//! `GET`, status UNSET, `http.response.status_code` 200, `url.scheme` as served, the query
//! redacted in `url.full` (`token=REDACTED`) and the secret nowhere in the span. No two requests
//! may share a trace, and spans of the chain's processes that belong to no request are reported
//! too. Problems go to a [`Verdict`]: a summary, the first [`DETAILED_REQUESTS`] failing requests
//! in detail with their spans as evidence, and a count of the rest.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::expect::{process_issues, shown, Verdict, CLOCK_SLACK_NANOS};
use crate::store::Span;
use crate::traffic::Exchange;

/// How far a child span may stick out of its parent: the spans of two processes are timed from
/// kernel events on one clock, so only conversion rounding separates them.
pub const NESTING_SLACK_NANOS: u64 = 1_000_000;
/// Failing requests described one by one; the rest are counted.
pub const DETAILED_REQUESTS: usize = 6;
/// The query every request carries; its value must never reach a span.
pub const SECRET_PREFIX: &str = "s3cr3t";

/// What the trace checks need to know of one service.
#[derive(Debug, Clone)]
pub struct ServiceIdentity {
    pub label: String,
    pub pids: Vec<u32>,
    pub port: u16,
    /// `process.runtime.version` must start with this.
    pub runtime_version: String,
}

impl ServiceIdentity {
    fn has_pid(&self, span: &Span) -> bool {
        span.pid().is_some_and(|pid| self.pids.iter().any(|p| i64::from(*p) == pid))
    }
}

/// What the trace checks need to know of a chain: its services in call order, and the scheme.
#[derive(Debug, Clone)]
pub struct ChainLayout {
    pub services: Vec<ServiceIdentity>,
    /// "http" or "https".
    pub scheme: &'static str,
}

/// One of the five spans of a request's trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Role {
    /// Index of the service in the chain.
    service: usize,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Server,
    Client,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Server => "SERVER",
            Self::Client => "CLIENT",
        }
    }
}

/// How many spans a request through `services` services makes.
pub fn spans_per_request(services: usize) -> usize {
    roles(services).len()
}

/// The roles of a request's trace for `services` services, each the parent of the next.
fn roles(services: usize) -> Vec<Role> {
    let mut roles = Vec::new();
    for service in 0..services {
        roles.push(Role { service, kind: Kind::Server });
        if service + 1 < services {
            roles.push(Role { service, kind: Kind::Client });
        }
    }
    roles
}

/// The outcome of one request sent to A.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The `<id>` of `/chain/<id>`.
    pub id: String,
    /// The exchange, or why the request failed (a wrong status or body counts as failed).
    pub result: Result<Exchange, String>,
}

impl Sent {
    pub fn path(&self) -> String {
        chain_path(&self.id)
    }
}

/// `/chain/<id>`.
pub fn chain_path(id: &str) -> String {
    format!("/chain/{id}")
}

/// The secret query value of request `id`.
pub fn secret(id: &str) -> String {
    format!("{SECRET_PREFIX}-{id}")
}

/// The path of a URL (`scheme://authority/path?query#fragment` → `/path`).
pub fn url_path(url: &str) -> Option<&str> {
    let after_scheme = url.split_once("://")?.1;
    let path_start = after_scheme.find('/')?;
    after_scheme[path_start..].split(['?', '#']).next()
}

/// What the spans say about one request.
struct RequestCheck<'a> {
    path: String,
    /// Everything wrong, one line each (empty: a correct trace).
    issues: Vec<String>,
    /// The spans found for each role, labelled, for failure messages.
    evidence: Vec<(String, &'a Span)>,
    /// The span ids found for it (so they are not reported as strays).
    span_ids: Vec<&'a str>,
    /// All roles found exactly once.
    complete: bool,
    /// The root's trace id, if all roles were found.
    trace_id: Option<&'a str>,
}

/// Finds each request's spans and checks them (see the module documentation).
pub fn expect_traces(verdict: &mut Verdict, layout: &ChainLayout, spans: &[Span], sent: &[Sent]) {
    let checks: Vec<RequestCheck> = sent.iter().map(|request| check_request(layout, spans, request)).collect();
    let failing: Vec<&RequestCheck> = checks.iter().filter(|c| !c.issues.is_empty()).collect();
    let per_request = spans_per_request(layout.services.len());
    if !failing.is_empty() {
        let complete = checks.iter().filter(|c| c.complete).count();
        let correct = checks.len() - failing.len();
        verdict.problem(format!(
            "{} of {} request(s) did not produce a correct {per_request}-span trace ({complete} have all \
             {per_request} spans, {correct} form a correct trace)",
            failing.len(),
            sent.len(),
        ));
    }
    for check in failing.iter().take(DETAILED_REQUESTS) {
        verdict.problem(format!("GET {}:\n      - {}", check.path, check.issues.join("\n      - ")));
        if !check.evidence.is_empty() {
            let mut text = format!("spans found for {}:\n", check.path);
            for (role, span) in &check.evidence {
                text.push_str(&format!("  {role}: {}\n", span.json));
            }
            verdict.add_context(text);
        }
    }
    if failing.len() > DETAILED_REQUESTS {
        verdict.problem(format!(
            "... and {} more failing request(s) not detailed here",
            failing.len() - DETAILED_REQUESTS
        ));
    }
    let mut by_trace: HashMap<&str, Vec<&str>> = HashMap::new();
    for check in &checks {
        if let Some(trace_id) = check.trace_id {
            by_trace.entry(trace_id).or_default().push(check.path.as_str());
        }
    }
    for (trace_id, paths) in by_trace.iter().filter(|(_, paths)| paths.len() > 1) {
        verdict.problem(format!("requests {paths:?} share the root trace id {trace_id}: their traces are mixed up"));
    }
    check_unique_span_ids(verdict, spans);
    let assigned: HashSet<&str> = checks.iter().flat_map(|c| c.span_ids.iter().copied()).collect();
    check_strays(verdict, layout, spans, &assigned);
}

/// Finds the spans of one request and checks each, then their links, timing and trace.
fn check_request<'a>(layout: &ChainLayout, spans: &'a [Span], request: &Sent) -> RequestCheck<'a> {
    let roles = roles(layout.services.len());
    let found: Vec<Vec<&Span>> = roles.iter().map(|role| find_role(spans, layout, *role, &request.id)).collect();
    let mut check = RequestCheck {
        path: request.path(),
        issues: Vec::new(),
        evidence: Vec::new(),
        span_ids: found.iter().flatten().map(|s| s.span_id.as_str()).collect(),
        complete: false,
        trace_id: None,
    };
    for (role, candidates) in roles.iter().zip(&found) {
        check.evidence.extend(candidates.iter().map(|span| (role_label(layout, *role), *span)));
    }
    let exchange = match &request.result {
        Ok(exchange) => exchange,
        Err(failure) => {
            check.issues.push(failure.clone());
            return check;
        }
    };
    let mut chosen: Vec<&Span> = Vec::new();
    for (role, candidates) in roles.iter().zip(&found) {
        let label = role_label(layout, *role);
        match candidates.as_slice() {
            [span] => {
                chosen.push(span);
                let issues = span_issues(span, layout, *role, &request.id);
                check.issues.extend(issues.into_iter().map(|issue| format!("{label}: {issue}")));
            }
            [] => check.issues.push(missing_role(spans, layout, *role, &request.id)),
            many => check.issues.push(format!("{label}: {} spans, expected exactly one", many.len())),
        }
    }
    if chosen.len() == roles.len() {
        check.complete = true;
        check.trace_id = Some(chosen[0].trace_id.as_str());
        check.issues.extend(link_issues(layout, &roles, &chosen));
        check.issues.extend(timing_issues(layout, &roles, &chosen, exchange));
        check.issues.extend(trace_issues(layout, &roles, &chosen, spans));
    }
    check
}

fn role_label(layout: &ChainLayout, role: Role) -> String {
    format!("{} {}", layout.services[role.service].label, role.kind.as_str())
}

/// The spans that claim to be `role` of request `id`.
fn find_role<'a>(spans: &'a [Span], layout: &ChainLayout, role: Role, id: &str) -> Vec<&'a Span> {
    let service = &layout.services[role.service];
    let path = chain_path(id);
    spans
        .iter()
        .filter(|span| match role.kind {
            Kind::Server => {
                span.kind == "SERVER"
                    && span.server_port() == Some(i64::from(service.port))
                    && span.attr_str("url.path") == Some(path.as_str())
            }
            Kind::Client => {
                span.kind == "CLIENT"
                    && service.has_pid(span)
                    && span.attr_str("url.full").and_then(url_path) == Some(path.as_str())
            }
        })
        .collect()
}

/// Why `role` of request `id` was not found, as precisely as the spans allow.
fn missing_role(spans: &[Span], layout: &ChainLayout, role: Role, id: &str) -> String {
    let service = &layout.services[role.service];
    let label = role_label(layout, role);
    let path = chain_path(id);
    match role.kind {
        Kind::Server => {
            let on_port =
                spans.iter().filter(|s| s.kind == "SERVER" && s.server_port() == Some(i64::from(service.port)));
            format!(
                "{label} missing: no SERVER span with server.port {} and url.path {path} ({} SERVER span(s) on that \
                 port in all)",
                service.port,
                on_port.count()
            )
        }
        Kind::Client => {
            let of_service: Vec<&Span> = spans.iter().filter(|s| s.kind == "CLIENT" && service.has_pid(s)).collect();
            let without_url = of_service.iter().filter(|s| s.attr_str("url.full").is_none()).count();
            format!(
                "{label} missing: no CLIENT span from {}'s processes {:?} with url.full path {path} ({} CLIENT span(s) \
                 from them in all, {without_url} without url.full)",
                service.label,
                service.pids,
                of_service.len()
            )
        }
    }
}

/// Attributes, name, status and process of one span in its role.
fn span_issues(span: &Span, layout: &ChainLayout, role: Role, id: &str) -> Vec<String> {
    let service = &layout.services[role.service];
    let path = chain_path(id);
    let mut issues = Vec::new();
    if span.name != "GET" {
        issues.push(format!("name is {:?}, expected \"GET\" (no path or id in span names)", span.name));
    }
    if span.status.code != "UNSET" {
        issues.push(format!("status.code is {:?}, expected \"UNSET\" (HTTP 200)", span.status.code));
    }
    let mut expected = vec![
        ("http.request.method", Value::from("GET")),
        ("http.response.status_code", Value::from(200)),
        ("url.scheme", Value::from(layout.scheme)),
    ];
    match role.kind {
        Kind::Server => {
            expected.push(("url.path", Value::from(path.as_str())));
            expected.push(("server.port", Value::from(service.port)));
        }
        Kind::Client => {
            let downstream = &layout.services[role.service + 1];
            let url = format!("{}://127.0.0.1:{}{path}?token=REDACTED", layout.scheme, downstream.port);
            expected.push(("url.full", Value::from(url)));
            expected.push(("server.port", Value::from(downstream.port)));
        }
    }
    for (key, want) in expected {
        if span.attr(key) != Some(&want) {
            issues.push(format!("attribute {key} is {}, expected {want}", shown(span.attr(key))));
        }
    }
    issues.extend(
        process_issues(span, &service.pids, &service.runtime_version)
            .into_iter()
            .map(|issue| format!("{issue} ({})", service.label)),
    );
    if span.json.to_string().contains(SECRET_PREFIX) {
        issues.push(format!("the secret query value {:?} appears in the span", secret(id)));
    }
    issues
}

/// One trace id, the root without a parent, every other span the child of the previous role.
fn link_issues(layout: &ChainLayout, roles: &[Role], chosen: &[&Span]) -> Vec<String> {
    let mut issues = Vec::new();
    let root = chosen[0];
    if let Some(parent) = &root.parent_span_id {
        issues.push(format!("{}: parentSpanId is {parent}, expected none (the root)", role_label(layout, roles[0])));
    }
    for (index, span) in chosen.iter().enumerate().skip(1) {
        let label = role_label(layout, roles[index]);
        let parent = chosen[index - 1];
        if span.trace_id != root.trace_id {
            issues.push(format!("{label}: traceId is {}, expected the root's {}", span.trace_id, root.trace_id));
        }
        if span.parent_span_id.as_deref() != Some(parent.span_id.as_str()) {
            issues.push(format!(
                "{label}: parentSpanId is {}, expected {}'s spanId {}",
                span.parent_span_id.as_deref().unwrap_or("none"),
                role_label(layout, roles[index - 1]),
                parent.span_id
            ));
        }
    }
    issues
}

/// Every span ends after it starts, each child lies inside its parent, and the root inside the
/// test client's own request.
fn timing_issues(layout: &ChainLayout, roles: &[Role], chosen: &[&Span], exchange: &Exchange) -> Vec<String> {
    let mut issues = Vec::new();
    for (index, span) in chosen.iter().enumerate() {
        let label = role_label(layout, roles[index]);
        let (start, end) = (span.start_time_unix_nano, span.end_time_unix_nano);
        if start > end {
            issues.push(format!("{label}: starts at {start}, after it ends at {end}"));
        }
        if index == 0 {
            let (earliest, latest) =
                (exchange.sent_at.saturating_sub(CLOCK_SLACK_NANOS), exchange.received_at + CLOCK_SLACK_NANOS);
            if start < earliest || end > latest {
                issues.push(format!(
                    "{label}: [{start}, {end}] is not within the test client's [{}, {}] (± {CLOCK_SLACK_NANOS} ns)",
                    exchange.sent_at, exchange.received_at
                ));
            }
            continue;
        }
        let parent = chosen[index - 1];
        if start + NESTING_SLACK_NANOS < parent.start_time_unix_nano
            || end > parent.end_time_unix_nano + NESTING_SLACK_NANOS
        {
            issues.push(format!(
                "{label}: [{start}, {end}] is not inside its parent {}'s [{}, {}] (± {NESTING_SLACK_NANOS} ns; \
                 starts {} ns after it, ends {} ns before it)",
                role_label(layout, roles[index - 1]),
                parent.start_time_unix_nano,
                parent.end_time_unix_nano,
                i128::from(start) - i128::from(parent.start_time_unix_nano),
                i128::from(parent.end_time_unix_nano) - i128::from(end),
            ));
        }
    }
    issues
}

/// The root's trace holds exactly the request's spans.
fn trace_issues(layout: &ChainLayout, roles: &[Role], chosen: &[&Span], spans: &[Span]) -> Vec<String> {
    let trace_id = &chosen[0].trace_id;
    let ours: HashSet<&str> = chosen.iter().map(|s| s.span_id.as_str()).collect();
    let extra: Vec<&Span> =
        spans.iter().filter(|s| &s.trace_id == trace_id && !ours.contains(s.span_id.as_str())).collect();
    if extra.is_empty() {
        return Vec::new();
    }
    let shown: Vec<String> = extra.iter().take(3).map(|s| describe_span(s)).collect();
    vec![format!(
        "the trace {trace_id} of {} holds {} span(s) besides the request's {}, e.g. {}",
        role_label(layout, roles[0]),
        extra.len(),
        chosen.len(),
        shown.join("; ")
    )]
}

fn check_unique_span_ids(verdict: &mut Verdict, spans: &[Span]) {
    let mut seen = HashSet::new();
    let duplicates: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).filter(|id| !seen.insert(*id)).collect();
    if !duplicates.is_empty() {
        verdict.problem(format!("span ids used by more than one span: {duplicates:?}"));
    }
}

/// Spans of the chain's processes (or on its ports) that belong to no request.
fn check_strays(verdict: &mut Verdict, layout: &ChainLayout, spans: &[Span], assigned: &HashSet<&str>) {
    let strays: Vec<&Span> = spans
        .iter()
        .filter(|span| !assigned.contains(span.span_id.as_str()))
        .filter(|span| {
            layout.services.iter().any(|service| {
                service.has_pid(span) || (span.kind == "SERVER" && span.server_port() == Some(i64::from(service.port)))
            })
        })
        .collect();
    if strays.is_empty() {
        return;
    }
    verdict.problem(format!(
        "{} span(s) of the chain's processes belong to no request sent (first ones: {})",
        strays.len(),
        strays.iter().take(5).map(|s| describe_span(s)).collect::<Vec<_>>().join("; ")
    ));
    let mut text = String::from("spans belonging to no request:\n");
    for span in strays.iter().take(20) {
        text.push_str(&format!("  {}\n", span.json));
    }
    verdict.add_context(text);
}

/// A one-line description of a span.
pub fn describe_span(span: &Span) -> String {
    let target = span.attr_str("url.path").or_else(|| span.attr_str("url.full")).unwrap_or("-");
    format!(
        "{} {} {target} (pid {}, server.port {}, spanId {}, parent {})",
        span.kind,
        span.name,
        span.pid().map_or("-".into(), |p| p.to_string()),
        span.server_port().map_or("-".into(), |p| p.to_string()),
        span.span_id,
        span.parent_span_id.as_deref().unwrap_or("none")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Request;
    use serde_json::json;

    fn layout() -> ChainLayout {
        let service = |label: &str, pids: Vec<u32>, port| ServiceIdentity {
            label: label.into(),
            pids,
            port,
            runtime_version: "3.12.1".into(),
        };
        ChainLayout {
            services: vec![
                service("A", vec![10], 8001),
                service("B", vec![20, 21, 22], 8002),
                service("C", vec![30], 8003),
            ],
            scheme: "http",
        }
    }

    struct Fake {
        kind: &'static str,
        pid: u32,
        port: u16,
        span_id: &'static str,
        parent: Option<&'static str>,
        start: u64,
        end: u64,
    }

    fn span(trace: &str, fake: Fake, id: &str) -> Span {
        let mut attributes = json!({"http.request.method": "GET", "http.response.status_code": 200,
            "url.scheme": "http", "server.port": fake.port});
        if fake.kind == "SERVER" {
            attributes["url.path"] = json!(chain_path(id));
        } else {
            attributes["url.full"] = json!(format!("http://127.0.0.1:{}/chain/{id}?token=REDACTED", fake.port));
        }
        let mut value = json!({
            "traceId": trace, "spanId": fake.span_id, "name": "GET", "kind": fake.kind,
            "startTimeUnixNano": fake.start.to_string(), "endTimeUnixNano": fake.end.to_string(),
            "attributes": attributes, "status": {"code": "UNSET"},
            "resource": {"attributes": {"process.pid": fake.pid, "process.runtime.version": "3.12.1"}}
        });
        if let Some(parent) = fake.parent {
            value["parentSpanId"] = json!(parent);
        }
        Span::from_json(value).unwrap()
    }

    fn good_trace(id: &str, trace: &str, ids: [&'static str; 5]) -> Vec<Span> {
        let t = 1_000_000_000_000;
        vec![
            span(
                trace,
                Fake { kind: "SERVER", pid: 10, port: 8001, span_id: ids[0], parent: None, start: t, end: t + 900 },
                id,
            ),
            span(
                trace,
                Fake {
                    kind: "CLIENT",
                    pid: 10,
                    port: 8002,
                    span_id: ids[1],
                    parent: Some(ids[0]),
                    start: t + 100,
                    end: t + 800,
                },
                id,
            ),
            span(
                trace,
                Fake {
                    kind: "SERVER",
                    pid: 21,
                    port: 8002,
                    span_id: ids[2],
                    parent: Some(ids[1]),
                    start: t + 200,
                    end: t + 700,
                },
                id,
            ),
            span(
                trace,
                Fake {
                    kind: "CLIENT",
                    pid: 22,
                    port: 8003,
                    span_id: ids[3],
                    parent: Some(ids[2]),
                    start: t + 300,
                    end: t + 600,
                },
                id,
            ),
            span(
                trace,
                Fake {
                    kind: "SERVER",
                    pid: 30,
                    port: 8003,
                    span_id: ids[4],
                    parent: Some(ids[3]),
                    start: t + 400,
                    end: t + 500,
                },
                id,
            ),
        ]
    }

    fn sent(id: &str) -> Sent {
        let exchange = Exchange {
            request: Request::get(&chain_path(id)),
            status: 200,
            protocol_version: "1.1".into(),
            sent_at: 1_000_000_000_000,
            received_at: 1_000_000_001_000,
            connection: 0,
        };
        Sent { id: id.into(), result: Ok(exchange) }
    }

    const IDS_1: [&str; 5] =
        ["a000000000000001", "a000000000000002", "a000000000000003", "a000000000000004", "a000000000000005"];
    const IDS_2: [&str; 5] =
        ["b000000000000001", "b000000000000002", "b000000000000003", "b000000000000004", "b000000000000005"];
    const TRACE_1: &str = "0af7651916cd43dd8448eb211c80319c";
    const TRACE_2: &str = "1af7651916cd43dd8448eb211c80319c";

    #[test]
    fn correct_traces_pass() {
        let mut spans = good_trace("r0", TRACE_1, IDS_1);
        spans.extend(good_trace("r1", TRACE_2, IDS_2));
        let mut verdict = Verdict::new();
        expect_traces(&mut verdict, &layout(), &spans, &[sent("r0"), sent("r1")]);
        assert!(verdict.is_clean(), "{:#}", verdict.finish("").unwrap_err());
    }

    #[test]
    fn unlinked_spans_are_reported_per_role() {
        let mut spans = good_trace("r0", TRACE_1, IDS_1);
        spans[2].parent_span_id = None;
        spans[2].trace_id = TRACE_2.into();
        let mut verdict = Verdict::new();
        expect_traces(&mut verdict, &layout(), &spans, &[sent("r0")]);
        let report = format!("{:#}", verdict.finish("").unwrap_err());
        assert!(
            report.contains("B SERVER: parentSpanId is none, expected A CLIENT's spanId a000000000000002"),
            "{report}"
        );
        assert!(report.contains("B SERVER: traceId is"), "{report}");
    }

    #[test]
    fn missing_spans_mixed_traces_and_strays_are_reported() {
        let mut spans = good_trace("r0", TRACE_1, IDS_1);
        spans.remove(3);
        spans.extend(good_trace("r1", TRACE_1, IDS_2));
        spans.extend(good_trace(
            "zz",
            TRACE_2,
            ["c000000000000001", "c000000000000002", "c000000000000003", "c000000000000004", "c000000000000005"],
        ));
        let mut verdict = Verdict::new();
        expect_traces(&mut verdict, &layout(), &spans, &[sent("r0"), sent("r1")]);
        let report = format!("{:#}", verdict.finish("").unwrap_err());
        assert!(report.contains("B CLIENT missing: no CLIENT span from B's processes [20, 21, 22]"), "{report}");
        assert!(report.contains("holds 4 span(s) besides the request's 5"), "{report}");
        assert!(report.contains("5 span(s) of the chain's processes belong to no request"), "{report}");
    }

    #[test]
    fn children_outside_their_parents_and_unredacted_queries_are_reported() {
        let mut spans = good_trace("r0", TRACE_1, IDS_1);
        spans[4].end_time_unix_nano += 5_000_000;
        spans[1].attributes.insert("url.full".into(), json!("http://127.0.0.1:8002/chain/r0?token=s3cr3t-r0"));
        spans[1].json["attributes"]["url.full"] = json!("http://127.0.0.1:8002/chain/r0?token=s3cr3t-r0");
        let mut verdict = Verdict::new();
        expect_traces(&mut verdict, &layout(), &spans, &[sent("r0")]);
        let report = format!("{:#}", verdict.finish("").unwrap_err());
        assert!(report.contains("C SERVER: [") && report.contains("is not inside its parent B CLIENT"), "{report}");
        assert!(report.contains("A CLIENT: attribute url.full is"), "{report}");
        assert!(report.contains("the secret query value"), "{report}");
    }

    #[test]
    fn url_paths() {
        assert_eq!(url_path("http://127.0.0.1:8000/chain/7?token=REDACTED"), Some("/chain/7"));
        assert_eq!(url_path("https://h/x#f"), Some("/x"));
        assert_eq!(url_path("/relative"), None);
    }
}
