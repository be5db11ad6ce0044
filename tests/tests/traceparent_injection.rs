//! `traceparent` injection on the wire: the agent adds exactly one
//! `traceparent: 00-<trace id>-<span id>-<flags>` line right after the request line of every
//! HTTP request a traced Python process sends, and changes nothing else.
//!
//! A traced client (`raw_client.py`) writes requests to `echo_server.py`, which answers each
//! with the raw bytes it received; the test compares them with what the client wrote
//! ([`scouter_e2e::injection::compare`]). The requests come in every shape a client library
//! produces: one write, head and body in separate writes, a vectored `sendmsg`, a large body, a
//! body that itself looks like an HTTP request with a traceparent, keep-alive, a request that
//! already carries a `traceparent` (kept as it is, no second one added), and the hard cases
//! where the agent may also leave the request alone but must not damage it: a request line
//! split over writes, a head written a few bytes at a time, two requests pipelined in one write.
//!
//! The context in each inserted line must be the CLIENT span the agent recorded for that request
//! (same trace id and span id), and the echo server's SERVER span its child.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use scouter_e2e::agent::{log_context, Agent};
use scouter_e2e::env::require_ebpf_host;
use scouter_e2e::expect::Verdict;
use scouter_e2e::http::Request;
use scouter_e2e::injection::{compare, escape, from_hex, to_hex, traceparent_headers, Delivery, Traceparent};
use scouter_e2e::python::{Interpreter, PythonClient, PythonServer, ServerProgram};
use scouter_e2e::store::{Span, Store};
use scouter_e2e::traces::url_path;
use scouter_e2e::traffic::pseudo_random_bytes;
use serde_json::{json, Value};

/// What the agent must do with one request.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    /// Insert exactly one traceparent line.
    Inject,
    /// Insert one, or leave the request unchanged; never damage it.
    InjectOrLeave,
    /// The request carries this context already: leave it byte for byte.
    Keep(Traceparent),
    /// Propagation is off (`--no-propagate`): leave it byte for byte.
    Untouched,
}

/// One connection's worth of requests and how they are written.
struct Case {
    name: &'static str,
    /// Each request sent on the connection, in order: its path, bytes, and expectation.
    requests: Vec<(String, Vec<u8>, Expect)>,
    /// The steps for `raw_client.py`.
    steps: Vec<Value>,
}

fn write(bytes: &[u8]) -> Value {
    json!({ "write": to_hex(bytes) })
}

fn read(count: usize) -> Value {
    json!({ "read": count })
}

fn pause(ms: u64) -> Value {
    json!({ "pause_ms": ms })
}

fn head_and_body(bytes: &[u8]) -> (&[u8], &[u8]) {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete head") + 4;
    bytes.split_at(end)
}

/// The context a request carries in the `carried` cases (each its own: a CLIENT span that adopts
/// it is identified by it).
fn carried_context(n: u8) -> Traceparent {
    Traceparent::parse(&format!("00-4bf92f3577b34da6a3ce929d0e0e47{n:02x}-00f067aa0ba902{n:02x}-01")).unwrap()
}

fn cases(port: u16) -> Vec<Case> {
    let get = |path: &str| {
        let request = Request::get(path).header("User-Agent", "raw-client/1.0").header("Accept", "*/*");
        (request.path().to_owned(), request.to_bytes(port))
    };
    let post = |path: &str, body: Vec<u8>| {
        let request = Request::post(path, body).header("Content-Type", "application/octet-stream");
        (request.path().to_owned(), request.to_bytes(port))
    };
    let one = |name, (path, bytes): (String, Vec<u8>), expect, steps| Case {
        name,
        requests: vec![(path, bytes, expect)],
        steps,
    };
    let mut cases = Vec::new();

    let (path, single) = get("/inject/single?user=alice&session=42");
    cases.push(one("single write", (path, single.clone()), Expect::Inject, vec![write(&single), read(1)]));

    let (path, bytes) = post("/inject/head-then-body", br#"{"items": [1, 2, 3], "note": "a JSON body"}"#.repeat(8));
    let (head, body) = head_and_body(&bytes);
    let steps = vec![write(head), pause(5), write(body), read(1)];
    cases.push(one("head, then body in a second write", (path, bytes.clone()), Expect::Inject, steps));

    let mut tricky = b"GET /inside/the/body HTTP/1.1\r\ntraceparent: 00-11111111111111111111111111111111-2222222222222222-01\r\n\r\n".to_vec();
    tricky.extend((0..=255u8).chain(*b"\r\n\r\n"));
    let (path, bytes) = post("/inject/body-looks-like-http", tricky);
    cases.push(one(
        "a body that looks like a request",
        (path, bytes.clone()),
        Expect::Inject,
        vec![write(&bytes), read(1)],
    ));

    let (path, bytes) = post("/inject/sendmsg", pseudo_random_bytes(1000, 11));
    let (head, body) = head_and_body(&bytes);
    let steps = vec![json!({ "sendmsg": [to_hex(head), to_hex(body)] }), read(1)];
    cases.push(one("head and body as buffers of one sendmsg", (path, bytes.clone()), Expect::Inject, steps));

    let (path, bytes) = post("/inject/large-body", pseudo_random_bytes(100_000, 12));
    cases.push(one("a 100 kB body in one write", (path, bytes.clone()), Expect::Inject, vec![write(&bytes), read(1)]));

    let (first_path, first) = get("/inject/keep-alive/1");
    let (second_path, second) = post("/inject/keep-alive/2", b"second request".to_vec());
    cases.push(Case {
        name: "two requests on one keep-alive connection",
        steps: vec![write(&first), read(1), write(&second), read(1)],
        requests: vec![(first_path, first, Expect::Inject), (second_path, second, Expect::Inject)],
    });

    for (n, name, header) in
        [(1, "an existing traceparent", "traceparent"), (2, "an existing TraceParent", "TraceParent")]
    {
        let carried = carried_context(n);
        let request = Request::get(&format!("/inject/carried/{header}"))
            .header(header, &carried.value())
            .header("tracestate", "vendor=opaque");
        let bytes = request.to_bytes(port);
        let steps = vec![write(&bytes), read(1)];
        cases.push(one(name, (request.path().to_owned(), bytes), Expect::Keep(carried.clone()), steps));
    }

    let (path, bytes) = get("/inject/request-line-alone");
    let line_end = bytes.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    let steps = vec![write(&bytes[..line_end]), pause(5), write(&bytes[line_end..]), read(1)];
    cases.push(one("the request line alone, then the headers", (path, bytes.clone()), Expect::InjectOrLeave, steps));

    let (path, bytes) = post("/inject/fragmented", b"fragmented body".to_vec());
    let mut steps: Vec<Value> = bytes.chunks(3).flat_map(|chunk| [write(chunk), pause(1)]).collect();
    steps.push(read(1));
    cases.push(one("a request written 3 bytes at a time", (path, bytes.clone()), Expect::InjectOrLeave, steps));

    let (first_path, first) = get("/inject/pipelined/1");
    let (second_path, second) = post("/inject/pipelined/2", b"pipelined body".to_vec());
    cases.push(Case {
        name: "two requests pipelined in one write",
        steps: vec![write(&[first.as_slice(), second.as_slice()].concat()), read(2)],
        requests: vec![(first_path, first, Expect::InjectOrLeave), (second_path, second, Expect::InjectOrLeave)],
    });
    cases
}

/// What the echo server showed for one request.
struct Seen {
    path: String,
    expect: Expect,
    delivery: Delivery,
}

/// Runs the cases through `raw_client.py` and compares every echoed request with what was
/// written. Returns what was seen of each request that arrived undamaged.
fn run_cases(verdict: &mut Verdict, client: &mut PythonClient, port: u16, cases: &[Case]) -> Result<Vec<Seen>> {
    let plan = json!({
        "port": port,
        "cases": cases.iter().map(|c| json!({ "name": c.name, "steps": c.steps })).collect::<Vec<_>>(),
    });
    let lines = client.run(&plan.to_string(), Duration::from_secs(60))?;
    if lines.len() != cases.len() {
        bail!("raw_client.py reported {} cases, expected {}:\n{}", lines.len(), cases.len(), client.output());
    }
    let mut seen = Vec::new();
    for (case, line) in cases.iter().zip(&lines) {
        let result: Value = serde_json::from_str(line).with_context(|| format!("raw_client.py printed {line:?}"))?;
        if let Some(error) = result["error"].as_str() {
            verdict.problem(format!("{}: the client failed: {error}", case.name));
        }
        let responses = result["responses"].as_array().cloned().unwrap_or_default();
        if responses.len() != case.requests.len() && result["error"].is_null() {
            verdict.problem(format!(
                "{}: {} response(s) for {} request(s)",
                case.name,
                responses.len(),
                case.requests.len()
            ));
        }
        for ((path, written, expect), response) in case.requests.iter().zip(&responses) {
            let what = format!("{} ({path})", case.name);
            if response["status"] != 200 {
                verdict.problem(format!("{what}: the echo server answered {}", response["status"]));
                continue;
            }
            let received = from_hex(response["body"].as_str().unwrap_or_default()).context("echoed body")?;
            match compare(written, &received) {
                Err(damage) => verdict.problem(format!("{what}: the request was damaged on the way: {damage}")),
                Ok(delivery) => {
                    check_delivery(verdict, &what, expect, &delivery, &received);
                    seen.push(Seen { path: path.clone(), expect: expect.clone(), delivery });
                }
            }
        }
    }
    Ok(seen)
}

fn check_delivery(verdict: &mut Verdict, what: &str, expect: &Expect, delivery: &Delivery, received: &[u8]) {
    match (expect, delivery) {
        (Expect::Inject, Delivery::Unchanged) => verdict.problem(format!(
            "{what}: no traceparent line was inserted; the server received the request unchanged: {}",
            escape(&received[..received.len().min(160)])
        )),
        (Expect::Keep(context), _) => {
            if let Delivery::Injected(added) = delivery {
                verdict.problem(format!(
                    "{what}: the request already carried traceparent {context}, yet {added} was inserted as well"
                ));
            }
            let headers = traceparent_headers(received);
            if headers != [context.value()] {
                verdict.problem(format!(
                    "{what}: the server received traceparent header(s) {headers:?}, expected only {context}"
                ));
            }
        }
        (Expect::Untouched, Delivery::Injected(added)) => {
            verdict.problem(format!("{what}: propagation is off, yet {added} was inserted"))
        }
        (Expect::InjectOrLeave, Delivery::Unchanged) => {
            eprintln!("note: {what}: left unchanged (allowed for this shape of write)");
        }
        _ => {}
    }
}

/// The CLIENT span of each request must carry the injected context, and the echo server's
/// SERVER span must be its child.
fn check_spans(verdict: &mut Verdict, spans: &[Span], seen: &[Seen], client_pid: u32, echo_port: u16) {
    for request in seen {
        let path = request.path.as_str();
        let clients: Vec<&Span> = spans
            .iter()
            .filter(|s| {
                s.kind == "CLIENT"
                    && s.pid() == Some(i64::from(client_pid))
                    && s.attr_str("url.full").and_then(url_path) == Some(path)
            })
            .collect();
        let servers: Vec<&Span> = spans
            .iter()
            .filter(|s| {
                s.kind == "SERVER"
                    && s.server_port() == Some(i64::from(echo_port))
                    && s.attr_str("url.path") == Some(path)
            })
            .collect();
        let [client] = clients.as_slice() else {
            verdict.problem(format!(
                "{path}: expected one CLIENT span of the client (pid {client_pid}), found {} (and {} SERVER span(s) \
                 of the echo server)",
                clients.len(),
                servers.len()
            ));
            continue;
        };
        // The context the request reached the server with, if any.
        let context = match (&request.delivery, &request.expect) {
            (Delivery::Injected(context), _) => context.clone(),
            (Delivery::Unchanged, Expect::Keep(context)) => {
                if client.trace_id != context.trace_id {
                    verdict.problem(format!(
                        "{path}: the CLIENT span's traceId is {}, expected the carried {}",
                        client.trace_id, context.trace_id
                    ));
                }
                context.clone()
            }
            (Delivery::Unchanged, _) => continue,
        };
        if let Delivery::Injected(injected) = &request.delivery {
            if (client.trace_id.as_str(), client.span_id.as_str())
                != (injected.trace_id.as_str(), injected.span_id.as_str())
            {
                verdict.problem(format!(
                    "{path}: inserted traceparent {injected} names another span than the request's CLIENT span \
                     (traceId {}, spanId {})",
                    client.trace_id, client.span_id
                ));
            }
        }
        match servers.as_slice() {
            [server] => {
                if server.trace_id != context.trace_id
                    || server.parent_span_id.as_deref() != Some(context.span_id.as_str())
                {
                    verdict.problem(format!(
                        "{path}: the echo server's SERVER span has traceId {} and parent {}, expected {} and {} \
                         (from the traceparent it received)",
                        server.trace_id,
                        server.parent_span_id.as_deref().unwrap_or("none"),
                        context.trace_id,
                        context.span_id
                    ));
                }
            }
            other => {
                verdict.problem(format!("{path}: expected one SERVER span of the echo server, found {}", other.len()))
            }
        }
    }
}

#[test]
fn traceparent_is_inserted_once_after_the_request_line_and_nothing_else_changes() -> Result<()> {
    require_ebpf_host()?;
    let store = Store::new()?;
    let mut verdict = Verdict::new();
    let mut agent = Agent::start(&store)?;
    let echo = PythonServer::start(&Interpreter::debian()?, ServerProgram::Echo)?;
    agent.wait_tracking(echo.pid())?;
    let mut client = PythonClient::start(&Interpreter::pyenv("3.12.1")?, "raw_client.py", &[])?;
    agent.wait_tracking(client.pid())?;

    let cases = cases(echo.port());
    let seen = run_cases(&mut verdict, &mut client, echo.port(), &cases)?;

    let log = agent.log().clone();
    verdict.step("stopping the agent", agent.stop());
    if let Some(spans) = verdict.step("reading the store", store.spans()) {
        check_spans(&mut verdict, &spans, &seen, client.pid(), echo.port());
        if !verdict.is_clean() {
            let mut text =
                format!("spans of the client (pid {}) and the echo server (port {}):\n", client.pid(), echo.port());
            for span in spans
                .iter()
                .filter(|s| s.pid() == Some(i64::from(client.pid())) || s.server_port() == Some(i64::from(echo.port())))
            {
                text.push_str(&format!("  {}\n", span.json));
            }
            verdict.add_context(text);
        }
    }
    verdict.finish(&log_context("agent", &log))
}

/// `--no-propagate`: the same requests reach the server byte for byte as written, and each still
/// gets its CLIENT span.
#[test]
fn no_propagate_leaves_every_request_as_written() -> Result<()> {
    require_ebpf_host()?;
    let store = Store::new()?;
    let mut verdict = Verdict::new();
    let mut agent = Agent::start_with_args(&store, &["--no-propagate"])?;
    let echo = PythonServer::start(&Interpreter::debian()?, ServerProgram::Echo)?;
    agent.wait_tracking(echo.pid())?;
    let mut client = PythonClient::start(&Interpreter::pyenv("3.12.1")?, "raw_client.py", &[])?;
    agent.wait_tracking(client.pid())?;

    // The cases where insertion is due, now expected untouched.
    let mut cases: Vec<Case> =
        cases(echo.port()).into_iter().filter(|c| c.requests.iter().all(|(_, _, e)| *e == Expect::Inject)).collect();
    for case in &mut cases {
        for request in &mut case.requests {
            request.2 = Expect::Untouched;
        }
    }
    if cases.is_empty() {
        bail!("no case expects insertion: the test would check nothing");
    }
    let seen = run_cases(&mut verdict, &mut client, echo.port(), &cases)?;

    let log = agent.log().clone();
    if log.lines_containing("propagation=off").is_empty() {
        verdict.problem("the agent did not log `propagation=off` at start-up");
    }
    verdict.step("stopping the agent", agent.stop());
    if let Some(spans) = verdict.step("reading the store", store.spans()) {
        for request in &seen {
            let found = spans.iter().any(|s| {
                s.kind == "CLIENT"
                    && s.pid() == Some(i64::from(client.pid()))
                    && s.attr_str("url.full").and_then(url_path) == Some(request.path.as_str())
            });
            if !found {
                verdict.problem(format!("{}: no CLIENT span with propagation off", request.path));
            }
        }
    }
    verdict.finish(&log_context("agent", &log))
}
