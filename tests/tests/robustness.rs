//! Requirement 2: hostile input and dying processes neither produce spans nor break the agent.
//!
//! One agent sees, in order: a normal request (whose span must reach the store while the agent
//! runs), 4 KiB of pseudo-random bytes on a fresh connection and after a valid request on a
//! keep-alive connection, a truncated request head left hanging, a server that exits while a
//! request is in flight, and finally a brand-new server that must be traced correctly. The agent
//! must stay up throughout and exit 0 on SIGTERM.

use std::time::Duration;

use anyhow::{bail, Result};
use scouter_e2e::agent::{log_context, Agent};
use scouter_e2e::env::require_ebpf_host;
use scouter_e2e::expect::{ServerIdentity, Verdict};
use scouter_e2e::http::{HttpConnection, Request};
use scouter_e2e::python::{Interpreter, PythonServer, ServerProgram};
use scouter_e2e::store::Store;
use scouter_e2e::traffic::{self, Call, Exchange};

/// How long a finished span may take to appear in the store while the agent runs.
const LIVE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Size of the random payloads.
const GARBAGE_LEN: usize = 4096;

/// Requests on one connection, as a one-connection plan.
fn one_connection(calls: Vec<Call>) -> Vec<Vec<Call>> {
    vec![calls]
}

/// 4 KiB of random bytes on a new connection; whatever the server answers is discarded.
/// Write errors are ignored: the server may reset the connection while bytes are still arriving.
fn send_random_bytes(port: u16, seed: u64) -> Result<()> {
    let mut connection = HttpConnection::connect(port)?;
    let _ = connection.write_raw(&traffic::pseudo_random_bytes(GARBAGE_LEN, seed));
    let _ = connection.shutdown_write();
    connection.drain(Duration::from_secs(5));
    Ok(())
}

/// A valid keep-alive request, then random bytes on the same connection. Returns the exchange
/// of the valid request, which must still get its span.
fn valid_then_random(port: u16, seed: u64) -> Result<Exchange> {
    let mut connection = HttpConnection::connect(port)?;
    let exchange = traffic::exchange(&mut connection, &Call::new(Request::get("/valid-then-random"), 200), 0)?;
    let _ = connection.write_raw(&traffic::pseudo_random_bytes(GARBAGE_LEN, seed));
    let _ = connection.shutdown_write();
    connection.drain(Duration::from_secs(5));
    Ok(exchange)
}

/// A request head cut off in the middle of a header line; the connection stays open (the
/// server waits for the rest) until the returned connection is dropped.
fn hang_truncated_head(port: u16) -> Result<HttpConnection> {
    let mut connection = HttpConnection::connect(port)?;
    connection.write_raw(b"GET /truncated-head HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Partial: abc")?;
    Ok(connection)
}

/// Sends a request to a server that exits while handling it; the client must see no response.
fn request_in_flight_at_exit(server: &mut PythonServer) -> Result<()> {
    let outcome = HttpConnection::connect(server.port())?.send(&Request::post("/in-flight", "payload"));
    if let Ok(response) = outcome {
        bail!("the exiting server answered {} (test program bug)", response.status);
    }
    server.wait_exit(Duration::from_secs(10))?;
    Ok(())
}

#[test]
fn hostile_input_and_dying_servers_do_not_break_the_agent() -> Result<()> {
    require_ebpf_host()?;
    let store = Store::new()?;
    let mut verdict = Verdict::new();
    let mut agent = Agent::start(&store)?;

    let target = PythonServer::start(&Interpreter::pyenv("3.11.7")?, ServerProgram::KeepAlive)?;
    let target_id = ServerIdentity::of(&target);
    verdict.step("tracking the target server", agent.wait_tracking(target.pid()));
    let mut sent =
        traffic::run_plan(target.port(), &one_connection(vec![Call::new(Request::get("/baseline"), 200)]), false)?;

    let live = store.poll_spans(LIVE_FLUSH_TIMEOUT, |spans| spans.iter().any(|s| target_id.claims(s)));
    if let Some(spans) = verdict.step("reading the store while the agent runs", live) {
        if !spans.iter().any(|s| target_id.claims(s)) {
            verdict.problem(format!(
                "the span of GET /baseline was not in the store {LIVE_FLUSH_TIMEOUT:?} after the response \
                 (the agent should flush within about a second)"
            ));
        }
    }

    send_random_bytes(target.port(), 0x5eed_0001)?;
    sent.push(valid_then_random(target.port(), 0x5eed_0002)?);
    let truncated = hang_truncated_head(target.port())?;
    verdict.step("agent alive after random bytes and a truncated head", agent.ensure_running());
    sent.extend(traffic::run_plan(
        target.port(),
        &one_connection(vec![
            Call::new(Request::get("/after-garbage/1"), 200),
            Call::new(Request::post("/after-garbage/2", "still parsed"), 200),
        ]),
        false,
    )?);

    let mut doomed = PythonServer::start(&Interpreter::debian()?, ServerProgram::ExitBeforeResponse)?;
    verdict.step("tracking the server that will exit", agent.wait_tracking(doomed.pid()));
    request_in_flight_at_exit(&mut doomed)?;
    verdict.step("agent alive after a server exited with a request in flight", agent.ensure_running());

    let fresh = PythonServer::start(&Interpreter::pyenv("3.12.1")?, ServerProgram::KeepAlive)?;
    verdict.step("tracking the fresh server", agent.wait_tracking(fresh.pid()));
    let fresh_sent =
        traffic::run_plan(fresh.port(), &one_connection(vec![Call::new(Request::get("/fresh"), 200)]), false)?;
    sent.extend(traffic::run_plan(
        target.port(),
        &one_connection(vec![Call::new(Request::get("/at-the-end"), 200)]),
        false,
    )?);

    let log = agent.log().clone();
    verdict.step("stopping the agent (exit status 0 after SIGTERM)", agent.stop());
    drop(truncated);

    if let Some(spans) = verdict.step("reading the store", store.spans()) {
        verdict.expect_exchanges(&spans, &target_id, &sent);
        verdict.expect_no_span_with_path(&spans, &target_id, "/truncated-head", "its head never completed");
        verdict.expect_no_spans(&spans, &ServerIdentity::of(&doomed), "it exited before responding");
        verdict.expect_exchanges(&spans, &ServerIdentity::of(&fresh), &fresh_sent);
    }
    verdict.finish(&log_context("agent", &log))
}
