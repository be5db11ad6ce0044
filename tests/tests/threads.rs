//! Threads are not processes. `ThreadingHTTPServer` starts one short-lived thread per
//! connection and never forks: every span must carry the server's process id, and the agent
//! must not report any of those threads as a new (forked) Python process — each such report is
//! a task id the agent keeps tracking after the thread is gone.

use anyhow::Result;
use scouter_e2e::agent::{log_context, Agent};
use scouter_e2e::env::require_ebpf_host;
use scouter_e2e::expect::{ServerIdentity, Verdict};
use scouter_e2e::http::Request;
use scouter_e2e::lines::has_field;
use scouter_e2e::python::{Interpreter, PythonServer, ServerProgram};
use scouter_e2e::store::Store;
use scouter_e2e::traffic::{self, Call};

/// Connections (hence handler threads) to open, one request each.
const CONNECTIONS: usize = 50;

#[test]
fn handler_threads_are_not_tracked_as_processes() -> Result<()> {
    require_ebpf_host()?;
    let store = Store::new()?;
    let mut verdict = Verdict::new();
    let mut agent = Agent::start(&store)?;
    let server = PythonServer::start(&Interpreter::pyenv("3.12.1")?, ServerProgram::KeepAlive)?;
    verdict.step("tracking the server", agent.wait_tracking(server.pid()));

    let plan: Vec<Vec<Call>> =
        (0..CONNECTIONS).map(|n| vec![Call::new(Request::get(&format!("/thread/{n}")), 200)]).collect();
    let sent = traffic::run_plan(server.port(), &plan, false)?;

    let log = agent.log().clone();
    verdict.step("stopping the agent", agent.stop());
    let parent = server.pid().to_string();
    let misreported: Vec<String> = log
        .lines_containing("tracking python process")
        .into_iter()
        .filter(|line| has_field(line, "parent", &parent))
        .collect();
    if !misreported.is_empty() {
        verdict.problem(format!(
            "the server (pid {parent}) never forks, yet {} of its handler threads were reported as \
             forked Python processes:\n    {}",
            misreported.len(),
            misreported.join("\n    ")
        ));
    }
    if let Some(spans) = verdict.step("reading the store", store.spans()) {
        verdict.expect_exchanges(&spans, &ServerIdentity::of(&server), &sent);
    }
    verdict.finish(&log_context("agent", &log))
}
