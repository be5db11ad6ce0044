//! Failed client calls are spans too: a traced Python client whose call fails gets a CLIENT
//! span with status ERROR and an `error.type` attribute, whether the connection was refused (no
//! request ever left, so the span comes from the failed connect) or the server accepted the
//! request and never answered until the client gave up (timeout, then close).
//!
//! The calls are made by `client_calls.py` with real libraries: requests, aiohttp and
//! http.client against closed ports, urllib3 and httpx's AsyncClient against a server (a plain
//! Rust listener, not traced) that accepts connections and never responds.

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use scouter_e2e::agent::{log_context, Agent};
use scouter_e2e::env::require_ebpf_host;
use scouter_e2e::expect::Verdict;
use scouter_e2e::python::{free_port, Interpreter, PythonClient};
use scouter_e2e::store::{Span, Store};
use scouter_e2e::traces::{describe_span, url_path};
use serde_json::{json, Value};

/// How long the timing-out calls wait for a response.
const CLIENT_TIMEOUT_SECS: f64 = 1.0;

/// A TCP server that accepts connections, reads whatever arrives, and never answers.
struct SilentServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SilentServer {
    fn start() -> Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                if let Ok((stream, _)) = listener.accept() {
                    let _ = stream.set_nonblocking(true);
                    held.push(stream);
                }
                for stream in &mut held {
                    let _ = stream.read(&mut [0u8; 4096]);
                }
                thread::sleep(Duration::from_millis(10));
            }
        });
        Ok(Self { port, stop, thread: Some(thread) })
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One call the client makes and how it must fail.
struct Call {
    client: &'static str,
    port: u16,
    path: String,
    /// Refused calls never send a request: their span is found by port alone.
    refused: bool,
}

impl Call {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}{}", self.port, self.path)
    }

    fn describe(&self) -> String {
        let how = if self.refused { "refused connection" } else { "timeout" };
        format!("{} GET {} ({how})", self.client, self.url())
    }
}

/// Every expected CLIENT span: ERROR, a non-empty `error.type`, and for timeouts the request's
/// method and URL and no response status.
fn check_spans(verdict: &mut Verdict, spans: &[Span], calls: &[Call], outcomes: &[String], pid: u32) {
    let of_client: Vec<&Span> =
        spans.iter().filter(|s| s.kind == "CLIENT" && s.pid() == Some(i64::from(pid))).collect();
    let mut matched = Vec::new();
    for (call, outcome) in calls.iter().zip(outcomes) {
        let found: Vec<&Span> = of_client
            .iter()
            .copied()
            .filter(|s| {
                s.server_port() == Some(i64::from(call.port))
                    && (call.refused || s.attr_str("url.full").and_then(url_path) == Some(call.path.as_str()))
            })
            .collect();
        let [span] = found.as_slice() else {
            verdict.problem(format!(
                "{}: expected one CLIENT span (server.port {}{}), found {} (the client saw: {outcome})",
                call.describe(),
                call.port,
                if call.refused { String::new() } else { format!(", url.full path {}", call.path) },
                found.len()
            ));
            continue;
        };
        matched.push(span.span_id.as_str());
        let mut issues = Vec::new();
        if span.status.code != "ERROR" {
            issues.push(format!("status.code is {:?}, expected \"ERROR\"", span.status.code));
        }
        match span.attr("error.type") {
            Some(Value::String(kind)) if !kind.is_empty() => {}
            other => issues.push(format!("attribute error.type is {}, expected a non-empty string", shown(other))),
        }
        if !call.refused {
            if span.name != "GET" {
                issues.push(format!("name is {:?}, expected \"GET\"", span.name));
            }
            if span.attr_str("http.request.method") != Some("GET") {
                issues.push(format!(
                    "http.request.method is {}, expected \"GET\"",
                    shown(span.attr("http.request.method"))
                ));
            }
            if let Some(status) = span.attr("http.response.status_code") {
                issues.push(format!("http.response.status_code is {status}, but no response was ever sent"));
            }
        }
        if !issues.is_empty() {
            verdict.problem(format!("{}: CLIENT span {}: {}", call.describe(), span.span_id, issues.join("; ")));
        }
    }
    for span in of_client.iter().filter(|s| !matched.contains(&s.span_id.as_str())) {
        verdict.problem(format!("a CLIENT span of the client matches no call it made: {}", describe_span(span)));
    }
    if !verdict.is_clean() {
        let mut text = format!("CLIENT spans of the client (pid {pid}):\n");
        for span in &of_client {
            text.push_str(&format!("  {}\n", span.json));
        }
        verdict.add_context(text);
    }
}

fn shown(value: Option<&Value>) -> String {
    value.map_or("missing".to_owned(), Value::to_string)
}

#[test]
fn refused_and_timed_out_calls_become_error_client_spans() -> Result<()> {
    require_ebpf_host()?;
    let store = Store::new()?;
    let mut verdict = Verdict::new();
    let silent = SilentServer::start()?;
    let refused = |client| -> Result<Call> {
        Ok(Call { client, port: free_port()?, path: format!("/refused/{client}"), refused: true })
    };
    let timeout =
        |client: &'static str| Call { client, port: silent.port, path: format!("/timeout/{client}"), refused: false };
    let calls = vec![
        refused("requests")?,
        refused("aiohttp")?,
        refused("http.client")?,
        timeout("urllib3"),
        timeout("httpx-async"),
    ];

    let mut agent = Agent::start(&store)?;
    let mut client = PythonClient::start(&Interpreter::pyenv("3.11.7")?, "client_calls.py", &[])?;
    agent.wait_tracking(client.pid())?;
    let plan = json!({ "calls": calls.iter().map(|c| json!({
        "client": c.client, "url": c.url(), "timeout": CLIENT_TIMEOUT_SECS,
    })).collect::<Vec<_>>() });
    let lines = client.run(&plan.to_string(), Duration::from_secs(60))?;
    let mut outcomes = Vec::new();
    for (call, line) in calls.iter().zip(&lines) {
        let result: Value = serde_json::from_str(line).with_context(|| format!("client_calls.py printed {line:?}"))?;
        match result["error"].as_str() {
            Some(error) => outcomes.push(error.to_owned()),
            None => bail!("test setup: {} did not fail: {result}", call.describe()),
        }
    }
    if outcomes.len() != calls.len() {
        bail!("client_calls.py reported {} of {} calls:\n{}", outcomes.len(), calls.len(), client.output());
    }

    let log = agent.log().clone();
    verdict.step("stopping the agent", agent.stop());
    if let Some(spans) = verdict.step("reading the store", store.spans()) {
        check_spans(&mut verdict, &spans, &calls, &outcomes, client.pid());
    }
    drop(silent);
    verdict.finish(&log_context("agent", &log))
}
