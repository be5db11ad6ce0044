//! An interpreter whose version the agent does not support (pyenv's 3.7.16) is reported and left
//! alone: one warning naming the process and its version, no spans for its requests. A
//! supported server in the same run keeps being traced, so "no spans" cannot come from an agent
//! that traces nothing.

use std::time::Duration;

use anyhow::{bail, Result};
use scouter_e2e::agent::Agent;
use scouter_e2e::env::require_ebpf_host;
use scouter_e2e::http::Request;
use scouter_e2e::python::{Interpreter, PythonServer, ServerProgram};
use scouter_e2e::store::Store;
use scouter_e2e::traffic::{self, Call};

const UNSUPPORTED_VERSION: &str = "3.7.16";
const REPORT_TIMEOUT: Duration = Duration::from_secs(15);

fn one_get(port: u16, path: &str) -> Result<()> {
    traffic::run_plan(port, &[vec![Call::new(Request::get(path), 200)]], false)?;
    Ok(())
}

/// Waits for the agent's warning about `pid`, which must name the unsupported version.
fn wait_for_report(agent: &Agent, pid: u32) -> Result<String> {
    let pid_field = format!("pid={pid} ");
    let line = agent
        .log()
        .wait_for(REPORT_TIMEOUT, |line| line.contains("not tracing this python process") && line.contains(&pid_field))
        .map_err(|_| anyhow::anyhow!("no 'not tracing' report for pid {pid}\n{}", agent.describe()))?;
    if !line.contains(&format!("Python {UNSUPPORTED_VERSION} is not supported")) {
        bail!("the report does not name the version: {line}");
    }
    Ok(line)
}

#[test]
fn unsupported_interpreters_are_reported_and_not_traced() -> Result<()> {
    require_ebpf_host()?;
    let old = Interpreter::pyenv(UNSUPPORTED_VERSION)?;
    let store = Store::new()?;
    let before = PythonServer::start(&old, ServerProgram::KeepAlive)?;
    let mut agent = Agent::start(&store)?;
    wait_for_report(&agent, before.pid())?;
    let after = PythonServer::start(&old, ServerProgram::KeepAlive)?;
    wait_for_report(&agent, after.pid())?;
    let supported = PythonServer::start(&Interpreter::pyenv("3.11.7")?, ServerProgram::KeepAlive)?;
    agent.wait_tracking(supported.pid())?;

    one_get(before.port(), "/old/before")?;
    one_get(after.port(), "/old/after")?;
    one_get(supported.port(), "/supported")?;
    let log = agent.stop()?;

    let spans = store.spans()?;
    let untraced = [before.pid(), after.pid()];
    let leaked: Vec<_> = spans.iter().filter(|s| s.pid().is_some_and(|p| untraced.contains(&(p as u32)))).collect();
    if !leaked.is_empty() {
        bail!(
            "spans recorded for an unsupported interpreter: {:?}",
            leaked.iter().map(|s| s.pretty()).collect::<Vec<_>>()
        );
    }
    let traced = spans.iter().filter(|s| s.pid() == Some(i64::from(supported.pid()))).count();
    if traced != 1 {
        bail!("expected 1 span from the supported server, found {traced}\n{}", log.text());
    }
    Ok(())
}
