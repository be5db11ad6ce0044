//! Python stack attribution: client spans name the application frame that made the call, and
//! server spans the handler the framework called, read from the thread's Python stack in the
//! kernel at the call's first write (`code.function.name` qualified, `code.file.path`,
//! `code.line.number`).
//!
//! Every interpreter the agent supports serves a Flask view (Werkzeug's threads, `requests`)
//! and a FastAPI handler (uvicorn's event loop, `httpx.AsyncClient`), both methods of a class,
//! each calling the downstream service on a marked line of `stack_service.py`. The Flask
//! services run and serve requests before the agent starts (warm processes, specialised
//! bytecode on 3.11+, found by the /proc scan); the FastAPI ones start after it (found through
//! exec, checked while their interpreter is still starting).
//!
//! The Flask services also take uploads whose body arrives after the head: the handler reads it
//! itself, and that read alone names the server span (no downstream call is made).

use std::fs;
use std::time::Duration;

use anyhow::{Context, Result};
use scouter_e2e::agent::{log_context, Agent};
use scouter_e2e::env::{python_dir, require_ebpf_host};
use scouter_e2e::expect::Verdict;
use scouter_e2e::http::{HttpConnection, Request};
use scouter_e2e::python::{Interpreter, PythonServer, ServerProgram};
use scouter_e2e::store::{Span, Store};

const REQUESTS_PER_SERVICE: usize = 3;
const WARM_UP_REQUESTS: usize = 30;
/// How long the body of an upload follows its head.
const BODY_PAUSE: Duration = Duration::from_millis(100);

/// What the spans of one service must say.
struct Expected {
    function: &'static str,
    file: String,
    line: i64,
}

impl Expected {
    /// The spans of a request to `site`: "flask" or "fastapi" (a checkout), "upload".
    fn of(site: &str) -> Result<Self> {
        let path = python_dir().join("stack_service.py");
        let source = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let marker = format!("# CALL-SITE {site}");
        let line = source
            .lines()
            .position(|line| line.ends_with(&marker))
            .with_context(|| format!("no line marked {marker:?} in {}", path.display()))?;
        let function = match site {
            "flask" => "Shop.checkout",
            "upload" => "Shop.upload",
            _ => "Shop.checkout_async",
        };
        Ok(Self { function, file: path.canonicalize()?.display().to_string(), line: line as i64 + 1 })
    }

    fn check(&self, verdict: &mut Verdict, what: &str, span: &Span) {
        let function = span.attr_str("code.function.name");
        let file = span.attr_str("code.file.path");
        let line = span.attr_int("code.line.number");
        if function != Some(self.function) || file != Some(self.file.as_str()) || line != Some(self.line) {
            verdict.problem(format!(
                "{what}: code.function.name {function:?}, code.file.path {file:?}, code.line.number {line:?}; \
                 expected {:?}, {:?}, {}\n  {}",
                self.function, self.file, self.line, span.json
            ));
        }
    }
}

struct Service {
    label: String,
    server: &'static str,
    process: PythonServer,
}

fn get(port: u16, path: &str) -> Result<()> {
    let response = HttpConnection::connect(port)?.send(&Request::get(path))?;
    anyhow::ensure!(response.status == 200, "GET {path} on port {port} answered {}", response.status);
    Ok(())
}

/// The `kind` span of process `pid` for a request to `path` (a server's `url.path`, or the end of
/// a client's `url.full`).
fn span_of<'a>(spans: &'a [Span], kind: &str, pid: i64, path: &str) -> Option<&'a Span> {
    spans.iter().find(|span| {
        span.kind == kind
            && span.resource_int("process.pid") == Some(pid)
            && (span.attr_str("url.path") == Some(path)
                || span.attr_str("url.full").is_some_and(|url| url.ends_with(path)))
    })
}

fn upload(port: u16, path: &str) -> Result<()> {
    let request = Request::post(path, b"order lines".to_vec());
    let response = HttpConnection::connect(port)?.send_body_separately(&request, BODY_PAUSE)?;
    anyhow::ensure!(response.status == 200, "POST {path} on port {port} answered {}", response.status);
    Ok(())
}

fn start(interpreter: &Interpreter, server: &'static str, downstream: &str) -> Result<Service> {
    let program = ServerProgram::Stack { server, downstream: downstream.to_owned() };
    let process = PythonServer::start(interpreter, program)?;
    Ok(Service { label: format!("{server} on {}", interpreter.label), server, process })
}

#[test]
fn client_and_server_spans_name_the_handler_on_every_interpreter() -> Result<()> {
    require_ebpf_host()?;
    let store = Store::new()?;
    let mut verdict = Verdict::new();
    let leaf = PythonServer::start(&Interpreter::pyenv("3.12.1")?, ServerProgram::KeepAlive)?;
    let downstream = format!("http://127.0.0.1:{}", leaf.port());

    let mut services = Vec::new();
    for interpreter in Interpreter::every()? {
        let service = start(&interpreter, "flask", &downstream)?;
        for n in 0..WARM_UP_REQUESTS {
            get(service.process.port(), &format!("/checkout/warm-{n}"))?;
        }
        services.push(service);
    }
    let mut agent = Agent::start(&store)?;
    for interpreter in Interpreter::every()? {
        services.push(start(&interpreter, "fastapi", &downstream)?);
    }
    for service in &services {
        let pid = service.process.pid();
        verdict.step(&format!("waiting for the agent to track {}", service.label), agent.wait_tracking(pid));
        verdict
            .step(&format!("waiting for the agent to read {}'s stacks", service.label), agent.wait_reading_stacks(pid));
    }
    let mut sent = Vec::new();
    let mut uploaded = Vec::new();
    for (index, service) in services.iter().enumerate() {
        let port = service.process.port();
        for n in 0..REQUESTS_PER_SERVICE {
            let id = format!("s{index}-{n}");
            let checkout = get(port, &format!("/checkout/{id}"));
            if verdict.step(&format!("GET /checkout/{id} on {}", service.label), checkout).is_some() {
                sent.push((index, id));
            }
            if service.server != "flask" {
                continue;
            }
            let path = format!("/upload/s{index}-{n}");
            if verdict.step(&format!("POST {path} on {}", service.label), upload(port, &path)).is_some() {
                uploaded.push((index, path));
            }
        }
    }

    let log = agent.log().clone();
    verdict.step("stopping the agent", agent.stop());
    if let Some(spans) = verdict.step("reading the store", store.spans()) {
        for (index, id) in &sent {
            let service = &services[*index];
            let expected = Expected::of(service.server)?;
            let pid = i64::from(service.process.pid());
            let path = format!("/checkout/{id}");
            for kind in ["SERVER", "CLIENT"] {
                let what = format!("{} {kind} span of GET {path}", service.label);
                match span_of(&spans, kind, pid, &path) {
                    Some(span) => expected.check(&mut verdict, &what, span),
                    None => verdict.problem(format!("{what}: missing")),
                }
            }
        }
        let expected = Expected::of("upload")?;
        for (index, path) in &uploaded {
            let service = &services[*index];
            let pid = i64::from(service.process.pid());
            let what = format!("{} SERVER span of POST {path}", service.label);
            match span_of(&spans, "SERVER", pid, path) {
                Some(span) => expected.check(&mut verdict, &what, span),
                None => verdict.problem(format!("{what}: missing")),
            }
        }
    }
    verdict.finish(&log_context("agent", &log))
}
