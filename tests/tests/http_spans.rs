//! Requirement 1: every HTTP/1.x exchange with a Python server becomes exactly one correct
//! SERVER span, whether the process started before the agent (found by the /proc scan) or after
//! it (found through exec events), under both interpreter shapes (pyenv builds with a shared
//! libpython, Debian's static python3.11).
//!
//! Each test runs one agent, one server started before it and one after it, sends the same
//! request mix to both, stops the agent (which flushes), and checks the stored spans against
//! what the client sent and received.

use anyhow::Result;
use scouter_e2e::agent::{log_context, Agent};
use scouter_e2e::env::require_ebpf_host;
use scouter_e2e::expect::{ServerIdentity, Verdict};
use scouter_e2e::python::{Interpreter, PythonServer, ServerProgram};
use scouter_e2e::store::Store;
use scouter_e2e::traffic::{self, Call};

/// One agent; `before` runs before it starts, `after` is started once it is ready. Both get
/// `plan`; `http10` says the server closes every connection after its response.
fn trace_before_and_after(
    before: (&Interpreter, ServerProgram),
    after: (&Interpreter, ServerProgram),
    plan: &[Vec<Call>],
    http10: bool,
) -> Result<()> {
    require_ebpf_host()?;
    let store = Store::new()?;
    let mut verdict = Verdict::new();

    let early = PythonServer::start(before.0, before.1)?;
    let mut agent = Agent::start(&store)?;
    let late = PythonServer::start(after.0, after.1)?;
    verdict.step("waiting for the agent to track the late server", agent.wait_tracking(late.pid()));

    let sent_early = traffic::run_plan(early.port(), plan, http10)?;
    let sent_late = traffic::run_plan(late.port(), plan, http10)?;

    let log = agent.log().clone();
    verdict.step("stopping the agent", agent.stop());
    if let Some(spans) = verdict.step("reading the store", store.spans()) {
        verdict.expect_exchanges(&spans, &ServerIdentity::of(&early), &sent_early);
        verdict.expect_exchanges(&spans, &ServerIdentity::of(&late), &sent_late);
    }
    verdict.finish(&log_context("agent", &log))
}

/// The keep-alive server under `interpreter`, before and after the agent.
fn keepalive_under(interpreter: Interpreter) -> Result<()> {
    let program = ServerProgram::KeepAlive;
    trace_before_and_after((&interpreter, program.clone()), (&interpreter, program), &traffic::keepalive_mix(), false)
}

#[test]
fn pyenv_3_8_18_servers_before_and_after_the_agent() -> Result<()> {
    keepalive_under(Interpreter::pyenv("3.8.18")?)
}

#[test]
fn pyenv_3_11_7_servers_before_and_after_the_agent() -> Result<()> {
    keepalive_under(Interpreter::pyenv("3.11.7")?)
}

#[test]
fn pyenv_3_13_0_servers_before_and_after_the_agent() -> Result<()> {
    keepalive_under(Interpreter::pyenv("3.13.0")?)
}

#[test]
fn debian_python3_11_servers_before_and_after_the_agent() -> Result<()> {
    keepalive_under(Interpreter::debian()?)
}

/// `python -m http.server` speaks HTTP/1.0 and closes after each response: spans carry
/// `network.protocol.version` "1.0". A pyenv build runs before the agent, Debian's after it.
#[test]
fn http_server_module_http10_before_and_after_the_agent() -> Result<()> {
    let (pyenv, debian) = (Interpreter::pyenv("3.13.0")?, Interpreter::debian()?);
    trace_before_and_after(
        (&pyenv, ServerProgram::HttpServerModule),
        (&debian, ServerProgram::HttpServerModule),
        &traffic::http10_mix(),
        true,
    )
}
