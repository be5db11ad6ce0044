//! Requirement 3: the embedded store survives an agent restart.
//!
//! A first agent records spans and stops; a second agent runs on the same store path (the
//! server, still running, is now a process it finds by its /proc scan) and records more. After
//! the second run, every span of the first run is still listed, unchanged, next to the new ones,
//! and `traces list` agrees with `traces show`.

use anyhow::Result;
use scouter_e2e::agent::{log_context, Agent};
use scouter_e2e::env::require_ebpf_host;
use scouter_e2e::expect::{ServerIdentity, Verdict};
use scouter_e2e::http::Request;
use scouter_e2e::python::{Interpreter, PythonServer, ServerProgram};
use scouter_e2e::store::{Span, Store};
use scouter_e2e::traffic::{self, Call};

/// Every first-run span must be in `after`, with identical JSON.
fn check_preserved(verdict: &mut Verdict, first_run: &[Span], after: &[Span]) {
    for span in first_run {
        match after.iter().find(|s| s.trace_id == span.trace_id && s.span_id == span.span_id) {
            None => verdict.problem(format!("span {} of the first run is gone after the restart", span.span_id)),
            Some(again) if again.json != span.json => verdict.problem(format!(
                "span {} changed across the restart:\n  before: {}\n  after:  {}",
                span.span_id, span.json, again.json
            )),
            Some(_) => {}
        }
    }
}

/// `traces list` must count what `traces show` returns, and name the root span.
fn check_listing(verdict: &mut Verdict, store: &Store) {
    let Some(traces) = verdict.step("traces list", store.traces()) else {
        return;
    };
    for trace in traces {
        let Some(spans) = verdict.step("traces show", store.trace_spans(&trace.trace_id)) else {
            continue;
        };
        if spans.len() as u64 != trace.span_count {
            verdict.problem(format!(
                "trace {}: list says spanCount {}, show returns {} spans",
                trace.trace_id,
                trace.span_count,
                spans.len()
            ));
        }
        if !spans.iter().any(|s| s.name == trace.root_name && s.parent_span_id.is_none()) {
            verdict.problem(format!("trace {}: rootName {:?} names no root span", trace.trace_id, trace.root_name));
        }
        if trace.service_name.is_empty() {
            verdict.problem(format!("trace {}: empty serviceName", trace.trace_id));
        }
    }
}

#[test]
fn spans_survive_an_agent_restart() -> Result<()> {
    require_ebpf_host()?;
    let store = Store::new()?;
    let mut verdict = Verdict::new();
    let server = PythonServer::start(&Interpreter::pyenv("3.11.7")?, ServerProgram::KeepAlive)?;
    let identity = ServerIdentity::of(&server);

    let first = Agent::start(&store)?;
    let mut sent = traffic::run_plan(
        server.port(),
        &[vec![Call::new(Request::get("/first-run/a"), 200), Call::new(Request::post("/first-run/b", "body"), 200)]],
        false,
    )?;
    let first_log = first.log().clone();
    verdict.step("stopping the first agent", first.stop());
    let first_spans = verdict.step("reading the store after the first run", store.spans()).unwrap_or_default();
    verdict.expect_exchanges(&first_spans, &identity, &sent);

    let second = Agent::start(&store)?;
    sent.extend(traffic::run_plan(server.port(), &[vec![Call::new(Request::get("/second-run"), 200)]], false)?);
    let second_log = second.log().clone();
    verdict.step("stopping the second agent", second.stop());

    if let Some(spans) = verdict.step("reading the store after the second run", store.spans()) {
        check_preserved(&mut verdict, &first_spans, &spans);
        verdict.expect_exchanges(&spans, &identity, &sent);
    }
    check_listing(&mut verdict, &store);
    let context = log_context("first agent", &first_log) + &log_context("second agent", &second_log);
    verdict.finish(&context)
}
