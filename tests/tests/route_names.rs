//! Span names follow the semantic conventions: `"{METHOD} {route}"` when a configured route
//! template matches the request's path (`http.route` on servers, `url.template` on clients),
//! `"{METHOD}"` otherwise, and the raw path never reaches a name.
//!
//! A Flask service (`stack_service.py`, whose handler calls a keep-alive server) and the
//! keep-alive server run under an agent given one template on the command line (every service)
//! and one in its configuration file (only services named like the keep-alive server).

use anyhow::Result;
use scouter_e2e::agent::{log_context, Agent};
use scouter_e2e::env::require_ebpf_host;
use scouter_e2e::expect::Verdict;
use scouter_e2e::http::{HttpConnection, Request};
use scouter_e2e::python::{Interpreter, PythonServer, ServerProgram};
use scouter_e2e::store::{Span, Store};

const CHECKOUT: &str = "/checkout/<order_id>";
const STATUS: &str = "/status/{code}";

#[test]
fn configured_route_templates_name_server_and_client_spans() -> Result<()> {
    require_ebpf_host()?;
    let store = Store::new()?;
    let mut verdict = Verdict::new();
    let leaf = PythonServer::start(&Interpreter::pyenv("3.12.1")?, ServerProgram::KeepAlive)?;
    let downstream = format!("http://127.0.0.1:{}", leaf.port());
    let front = PythonServer::start(
        &Interpreter::pyenv("3.11.7")?,
        ServerProgram::Stack { server: "flask", downstream: downstream.clone() },
    )?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, format!("[[routes]]\ntemplate = \"{STATUS}\"\nservices = [\"*keepalive*\"]\n"))?;
    let config = config.display().to_string();
    let mut agent = Agent::start_with_args(&store, &["--route", CHECKOUT, "--config", &config])?;
    for server in [&leaf, &front] {
        verdict
            .step(&format!("waiting for the agent to track {}", server.describe()), agent.wait_tracking(server.pid()));
    }

    verdict.step("GET /checkout/17 on the Flask service", get(front.port(), "/checkout/17?card=secret", 200));
    verdict.step("GET /status/204 on the keep-alive server", get(leaf.port(), "/status/204", 204));
    verdict.step("GET /orders/5 on the keep-alive server", get(leaf.port(), "/orders/5", 200));
    verdict.step("GET /status/204 on the Flask service", get(front.port(), "/status/204", 404));

    let log = agent.log().clone();
    verdict.step("stopping the agent", agent.stop());
    if let Some(spans) = verdict.step("reading the store", store.spans()) {
        let front_pid = i64::from(front.pid());
        let leaf_pid = i64::from(leaf.pid());
        let expectations = [
            ("SERVER", front_pid, "/checkout/17", Some(("http.route", CHECKOUT))),
            ("CLIENT", front_pid, "/checkout/17", Some(("url.template", CHECKOUT))),
            ("SERVER", leaf_pid, "/checkout/17", Some(("http.route", CHECKOUT))),
            ("SERVER", leaf_pid, "/status/204", Some(("http.route", STATUS))),
            ("SERVER", leaf_pid, "/orders/5", None),
            // The file's template is for the keep-alive server only.
            ("SERVER", front_pid, "/status/204", None),
        ];
        for (kind, pid, path, route) in expectations {
            let what = format!("{kind} span of GET {path} in pid {pid}");
            match span_of(&spans, kind, pid, path) {
                Some(span) => check_name(&mut verdict, &what, span, route),
                None => verdict.problem(format!("{what}: missing")),
            }
        }
        for span in &spans {
            if span.name.contains("/17") || span.name.contains("/204") || span.name.contains("/5") {
                verdict.problem(format!("a raw path in a span name: {}", span.json));
            }
        }
    }
    verdict.finish(&log_context("agent", &log))
}

fn check_name(verdict: &mut Verdict, what: &str, span: &Span, route: Option<(&str, &str)>) {
    let (expected_name, key, value) = match route {
        Some((key, template)) => (format!("GET {template}"), key, Some(template)),
        None => ("GET".to_owned(), "http.route", None),
    };
    if span.name != expected_name || span.attr_str(key) != value {
        verdict.problem(format!(
            "{what}: name {:?} and {key} {:?}, expected {expected_name:?} and {value:?}\n  {}",
            span.name,
            span.attr_str(key),
            span.json
        ));
    }
    if route.is_none() && (span.attributes.contains_key("http.route") || span.attributes.contains_key("url.template")) {
        verdict.problem(format!("{what}: a route attribute without a matching template\n  {}", span.json));
    }
}

/// The span of `kind` in process `pid` for `path`: `url.path` on servers, the path of
/// `url.full` on clients.
fn span_of<'a>(spans: &'a [Span], kind: &str, pid: i64, path: &str) -> Option<&'a Span> {
    spans.iter().find(|span| {
        let span_path = match kind {
            "SERVER" => span.attr_str("url.path").map(str::to_owned),
            _ => span.attr_str("url.full").and_then(|url| url.splitn(4, '/').nth(3).map(|p| format!("/{p}"))),
        };
        span.kind == kind && span.pid() == Some(pid) && span_path.as_deref() == Some(path)
    })
}

fn get(port: u16, path: &str, status: u16) -> Result<()> {
    let response = HttpConnection::connect(port)?.send(&Request::get(path))?;
    anyhow::ensure!(response.status == status, "GET {path} on port {port} answered {}", response.status);
    Ok(())
}
