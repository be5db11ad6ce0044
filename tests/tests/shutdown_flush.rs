//! The agent flushes everything on SIGTERM: a request answered before the signal is sent has
//! its span in the store after the agent exits, even when the signal follows immediately
//! (events may still sit in the kernel ring buffer when SIGTERM arrives).
//!
//! A burst of keep-alive requests maximizes the events in flight at the moment of the signal;
//! the check is repeated over a few agent runs because the window is a race. A second test sends
//! SIGTERM the moment `agent ready` appears.

use anyhow::Result;
use scouter_e2e::agent::{log_context, Agent};
use scouter_e2e::env::require_ebpf_host;
use scouter_e2e::expect::{ServerIdentity, Verdict};
use scouter_e2e::http::Request;
use scouter_e2e::python::{Interpreter, PythonServer, ServerProgram};
use scouter_e2e::store::Store;
use scouter_e2e::traffic::{self, Call};

/// Agent runs per test.
const ROUNDS: usize = 3;
/// Requests per round: this many connections of this many keep-alive requests.
const CONNECTIONS: usize = 40;
const REQUESTS_PER_CONNECTION: usize = 3;

/// Unique paths, so every span can be matched to its request.
fn burst(round: usize) -> Vec<Vec<Call>> {
    (0..CONNECTIONS)
        .map(|c| {
            (0..REQUESTS_PER_CONNECTION)
                .map(|r| Call::new(Request::get(&format!("/burst/{round}/{c}/{r}")), 200))
                .collect()
        })
        .collect()
}

#[test]
fn requests_answered_right_before_sigterm_are_stored() -> Result<()> {
    require_ebpf_host()?;
    let interpreter = Interpreter::pyenv("3.11.7")?;
    let mut verdict = Verdict::new();
    let mut context = String::new();
    for round in 0..ROUNDS {
        let store = Store::new()?;
        let server = PythonServer::start(&interpreter, ServerProgram::KeepAlive)?;
        let agent = Agent::start(&store)?;
        let sent = traffic::run_plan(server.port(), &burst(round), false)?;
        let log = agent.log().clone();
        verdict.step("stopping the agent right after the burst", agent.stop());
        if let Some(spans) = verdict.step("reading the store", store.spans()) {
            let mut identity = ServerIdentity::of(&server);
            identity.label = format!("round {round}: {}", identity.label);
            verdict.expect_exchanges(&spans, &identity, &sent);
        }
        context.push_str(&log_context(&format!("agent of round {round}"), &log));
    }
    verdict.finish(&context)
}

/// Agent runs for the SIGTERM-after-ready check.
const READY_ROUNDS: usize = 5;

/// `agent ready` means the agent handles SIGTERM from then on: a signal sent the moment the line
/// appears must still give a clean exit 0 (not death by the signal's default action).
#[test]
fn sigterm_right_after_ready_exits_zero() -> Result<()> {
    require_ebpf_host()?;
    let mut verdict = Verdict::new();
    for round in 0..READY_ROUNDS {
        let store = Store::new()?;
        let agent = Agent::start(&store)?;
        verdict.step(&format!("round {round}: SIGTERM right after `agent ready`"), agent.stop());
    }
    verdict.finish("")
}
