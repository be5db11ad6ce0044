//! Spans of in-process SDKs (the OpenTelemetry Python SDK, Scouter's `scouter-ml`, both from
//! PyPI, in `target/tools/venvs/sdk`) sent to the agent's receivers, and merged with the
//! agent's own on their way to the strict test backends:
//!
//! - OTel with the flask and requests instrumentations exporting over OTLP/gRPC: exactly one
//!   `traceparent` reaches the downstream service (the SDK's, adopted by the kernel), and the
//!   call it names is one CLIENT span in each sink (the agent's and the SDK's reports merged:
//!   attributes of both, the SDK's parent), under the SDK's manual span; the downstream's
//!   server span is its child; the SDK spans carry their process's resource.
//! - Scouter's SDK over its HTTP and gRPC transports and OTel over OTLP/HTTP, pointed at the
//!   agent: every span forwarded once, attributed to its process, the SDK's own resource
//!   attributes kept; the SDKs' own export requests never become spans.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use scouter_e2e::agent::{log_context, Agent};
use scouter_e2e::backends::otlp::OtlpReceiver;
use scouter_e2e::backends::scouter::ScouterBackend;
use scouter_e2e::backends::{Backend, ReceivedSpan};
use scouter_e2e::env::{python_dir, require_ebpf_host, workspace_root};
use scouter_e2e::expect::Verdict;
use scouter_e2e::http::{HttpConnection, Request};
use scouter_e2e::lines::LineLog;
use scouter_e2e::python::{
    free_port, leaf_headers, Interpreter, Otlp, PythonServer, ScouterTransport, SdkService, ServerProgram,
};
use scouter_e2e::store::Store;

const REQUESTS: usize = 10;
/// Long enough for an SDK batch (200 ms here) and the agent's twin window (5 s here).
const ARRIVAL: Duration = Duration::from_secs(40);

fn get(port: u16, path: &str) -> Result<Vec<u8>> {
    let response = HttpConnection::connect(port)?.send(&Request::get(path))?;
    ensure!(
        response.status == 200,
        "GET {path} answered {}: {}",
        response.status,
        String::from_utf8_lossy(&response.body)
    );
    Ok(response.body)
}

/// The agent's receivers on free ports, and where it sends spans.
struct Receivers {
    grpc: u16,
    http: u16,
}

impl Receivers {
    fn new() -> Result<Self> {
        Ok(Self { grpc: free_port()?, http: free_port()? })
    }

    fn flags(&self) -> Vec<String> {
        let listen = |port: u16| format!("127.0.0.1:{port}");
        ["--receive-grpc".into(), listen(self.grpc), "--receive-http".into(), listen(self.http)].into()
    }

    fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }

    fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }
}

fn start_agent(store: &Store, scouter: &ScouterBackend, receivers: &Receivers, extra: &[String]) -> Result<Agent> {
    let (username, password) = scouter.credentials();
    let mut args: Vec<String> = [
        "--scouter-server-uri",
        &scouter.http_uri(),
        "--scouter-username",
        &username,
        "--scouter-password",
        &password,
        "--scheduled-delay-ms",
        "200",
        "--sdk-twin-window-ms",
        "5000",
    ]
    .map(str::to_owned)
    .into();
    args.extend(receivers.flags());
    args.extend_from_slice(extra);
    Agent::start_with_args(store, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// An agent (on an eBPF host) exporting to a Scouter test backend, receiving SDK spans on
/// ports of its own, serving no metrics; its store lives as long as the returned `Store`.
fn agent_exporting_to_scouter() -> Result<(ScouterBackend, Receivers, Store, Agent)> {
    require_ebpf_host()?;
    let scouter = ScouterBackend::start()?;
    let receivers = Receivers::new()?;
    let store = Store::new()?;
    let agent = start_agent(&store, &scouter, &receivers, &["--metrics-listen".into(), "off".into()])?;
    Ok((scouter, receivers, store, agent))
}

fn pid_of(span: &ReceivedSpan) -> Option<i64> {
    span.resource_attr("process.pid").and_then(|v| v.as_i64())
}

/// Waits until `found` says the backend has what is expected.
fn wait_until(backend: &dyn Backend, what: &str, found: impl Fn(&[ReceivedSpan]) -> bool) -> Result<()> {
    let deadline = Instant::now() + ARRIVAL;
    while !found(&backend.spans()) {
        ensure!(Instant::now() < deadline, "{what}: not there after {ARRIVAL:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

#[test]
fn otel_sdk_and_agent_spans_form_one_trace_with_one_traceparent_and_one_client_span_per_call() -> Result<()> {
    require_ebpf_host()?;
    let (scouter, otlp) = (ScouterBackend::start()?, OtlpReceiver::start()?);
    let receivers = Receivers::new()?;
    let metrics = free_port()?;
    let store = Store::new()?;
    let extra =
        ["--otlp-endpoint".into(), otlp.grpc_endpoint(), "--metrics-listen".into(), format!("127.0.0.1:{metrics}")];
    let mut agent = start_agent(&store, &scouter, &receivers, &extra)?;
    let python = Interpreter::sdk_venv()?;
    let leaf = PythonServer::start(&python, ServerProgram::Sdk(SdkService::plain().service_name("leaf")))?;
    let front = PythonServer::start(
        &python,
        ServerProgram::Sdk(
            SdkService::otel_auto(Otlp::Grpc(receivers.grpc_url())).service_name("front").downstream(&leaf.base_url()),
        ),
    )?;
    let mut verdict = Verdict::new();
    for server in [&leaf, &front] {
        verdict.step("waiting for the agent to track the services", agent.wait_tracking(server.pid()));
    }

    // The traceparent each call carried downstream: (trace id, span id).
    let mut calls = Vec::new();
    for n in 0..REQUESTS {
        let Some(body) = verdict.step(&format!("GET /work/o{n}"), get(front.port(), &format!("/work/o{n}"))) else {
            continue;
        };
        if let Some((trace, span)) = downstream_context(&mut verdict, n, &body) {
            calls.push((n, trace, span));
        }
    }
    verdict.step("GET /flush", get(front.port(), "/flush"));
    let all_arrived = |spans: &[ReceivedSpan]| {
        calls.iter().all(|(n, trace, _)| {
            spans.iter().any(|s| &s.trace_id == trace && s.kind == 3)
                && spans.iter().any(|s| &s.trace_id == trace && s.name == format!("work o{n}"))
        })
    };
    verdict.step("the calls' spans reach Scouter", wait_until(&scouter, "Scouter", all_arrived));
    verdict.step("the calls' spans reach OTLP", wait_until(&otlp, "OTLP", all_arrived));
    let metrics_text = HttpConnection::connect(metrics)
        .and_then(|mut c| c.send(&Request::get("/metrics")))
        .map(|r| String::from_utf8_lossy(&r.body).into_owned());
    let log = agent.log().clone();
    verdict.step("stopping the agent", agent.stop());

    for (sink, spans) in [("Scouter", scouter.spans()), ("OTLP", otlp.spans())] {
        for (n, trace, call_id) in &calls {
            check_call(&mut verdict, sink, &spans, *n, trace, call_id, (front.pid(), leaf.pid()));
        }
    }
    if let Some(text) = verdict.step("reading /metrics before stopping", metrics_text) {
        let merged = text
            .lines()
            .find_map(|line| line.strip_prefix("scouter_agent_sdk_twins_merged_total ")?.trim().parse::<u64>().ok());
        if merged.is_none_or(|merged| merged < calls.len() as u64) {
            verdict.problem(format!("sdk_twins_merged_total {merged:?}, expected at least {}", calls.len()));
        }
    }
    verdict.finish(&log_context("agent", &log))
}

/// One call's spans in one sink: one CLIENT span with the id the downstream received, carrying
/// the agent's and the SDK's attributes, under the SDK's `work` span (itself in the front's
/// process resource); the leaf's server span under it.
fn check_call(
    verdict: &mut Verdict,
    sink: &str,
    spans: &[ReceivedSpan],
    n: usize,
    trace: &str,
    call_id: &str,
    (front, leaf): (u32, u32),
) {
    let in_trace: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == trace).collect();
    let mut by_id: BTreeMap<&str, Vec<&ReceivedSpan>> = BTreeMap::new();
    for span in &in_trace {
        by_id.entry(span.span_id.as_str()).or_default().push(span);
    }
    let shown =
        || in_trace.iter().map(|s| format!("{} {} kind {}", s.span_id, s.name, s.kind)).collect::<Vec<_>>().join("; ");
    let clients: Vec<&&ReceivedSpan> = in_trace.iter().filter(|s| s.kind == 3).collect();
    let (Some(client), 1) = (clients.first(), clients.len()) else {
        verdict.problem(format!(
            "{sink}, call {n}: {} CLIENT spans in trace {trace}, expected 1: {}",
            clients.len(),
            shown()
        ));
        return;
    };
    if let Some((id, twice)) = by_id.iter().find(|(_, spans)| spans.len() > 1) {
        verdict.problem(format!("{sink}, call {n}: span {id} arrived {} times", twice.len()));
    }
    if client.span_id != call_id {
        verdict
            .problem(format!("{sink}, call {n}: the CLIENT span is {}, the downstream got {call_id}", client.span_id));
    }
    let has = |key: &str| client.attr(key).is_some();
    if !(has("url.full") && has("server.port")) || !(has("http.method") || has("http.request.method")) {
        verdict.problem(format!(
            "{sink}, call {n}: the CLIENT span lacks the agent's url.full/server.port: {:?}",
            client.attributes
        ));
    }
    if !has("http.url") && !has("http.status_code") {
        verdict.problem(format!(
            "{sink}, call {n}: the CLIENT span lacks the SDK's attributes (http.url/http.status_code): {:?}",
            client.attributes
        ));
    }
    let work = in_trace.iter().find(|s| s.name == format!("work o{n}"));
    match work {
        Some(work) if client.parent_span_id.as_deref() == Some(work.span_id.as_str()) => {
            if pid_of(work) != Some(front.into()) || work.resource_attr("host.name").is_none() {
                verdict.problem(format!(
                    "{sink}, call {n}: the SDK span's resource is not its process's (pid {:?}, host.name {:?})",
                    pid_of(work),
                    work.resource_attr("host.name")
                ));
            }
        }
        _ => verdict.problem(format!(
            "{sink}, call {n}: the CLIENT span's parent {:?} is not the SDK span `work o{n}`: {}",
            client.parent_span_id,
            shown()
        )),
    }
    // The front's server exchange: one SERVER span (the agent's and the SDK's flask span
    // merged), the SDK's `work` span under it.
    let front_servers: Vec<&&ReceivedSpan> =
        in_trace.iter().filter(|s| s.kind == 2 && pid_of(s) == Some(front.into())).collect();
    match front_servers.as_slice() {
        [server] => {
            if work.is_some_and(|work| work.parent_span_id.as_deref() != Some(server.span_id.as_str())) {
                verdict.problem(format!(
                    "{sink}, call {n}: `work o{n}` is not under the front's SERVER span: {}",
                    shown()
                ));
            }
            let has = |key: &str| server.attr(key).is_some();
            if !has("url.path") || !has("http.target") {
                verdict.problem(format!(
                    "{sink}, call {n}: the front's SERVER span lacks the agent's url.path or the SDK's http.target: {:?}",
                    server.attributes
                ));
            }
        }
        servers => verdict.problem(format!(
            "{sink}, call {n}: {} SERVER spans of the front in the trace, expected 1: {}",
            servers.len(),
            shown()
        )),
    }
    let leaf_server = in_trace.iter().find(|s| s.kind == 2 && pid_of(s) == Some(leaf.into()));
    if leaf_server.is_none_or(|s| s.parent_span_id.as_deref() != Some(call_id)) {
        verdict.problem(format!("{sink}, call {n}: no leaf server span under the call: {}", shown()));
    }
}

#[test]
fn scouter_sdk_over_http_and_grpc_and_otel_over_otlp_http_are_forwarded_with_their_process() -> Result<()> {
    let (scouter, receivers, _store, mut agent) = agent_exporting_to_scouter()?;
    let python = Interpreter::sdk_venv()?;
    let leaf = PythonServer::start(&python, ServerProgram::Sdk(SdkService::plain().service_name("leaf")))?;
    let downstream = leaf.base_url();
    // The SDK logs in at start: the agent's receivers are up by now.
    let services = [
        ("scouter-http", SdkService::scouter(ScouterTransport::Http(receivers.http_url())), "handle_work"),
        ("scouter-grpc", SdkService::scouter(ScouterTransport::Grpc(receivers.grpc_url())), "handle_work"),
        (
            "otel-http",
            SdkService::otel_manual(Otlp::HttpProtobuf(format!("{}/v1/traces", receivers.http_url()))),
            "work",
        ),
    ];
    let mut started = Vec::new();
    for (name, service, span) in services {
        let service = service.service_name(name).credentials("sdk-user", "sdk-secret").downstream(&downstream);
        started.push((name, PythonServer::start(&python, ServerProgram::Sdk(service))?, span));
    }
    let mut verdict = Verdict::new();
    for (_, server, _) in &started {
        verdict.step("waiting for the agent to track the services", agent.wait_tracking(server.pid()));
    }
    for (name, server, _) in &started {
        for n in 0..REQUESTS {
            verdict.step(&format!("{name}: GET /work/{name}{n}"), get(server.port(), &format!("/work/{name}{n}")));
        }
        verdict.step(&format!("{name}: GET /flush"), get(server.port(), "/flush"));
    }
    for (name, server, _) in &started {
        let pid = i64::from(server.pid());
        let works = |spans: &[ReceivedSpan]| {
            spans.iter().filter(|s| pid_of(s) == Some(pid) && s.name.starts_with("work ")).count() >= REQUESTS
        };
        verdict.step(&format!("{name}'s SDK spans reach Scouter"), wait_until(&scouter, name, works));
    }
    let log = agent.log().clone();
    verdict.step("stopping the agent", agent.stop());

    let spans = scouter.spans();
    for (name, server, named) in &started {
        let pid = i64::from(server.pid());
        let mine: Vec<&ReceivedSpan> = spans.iter().filter(|s| pid_of(s) == Some(pid)).collect();
        let sdk: Vec<&&ReceivedSpan> = mine.iter().filter(|s| s.scope_name != "scouter-agent").collect();
        let mut ids: Vec<&str> = sdk.iter().map(|s| s.span_id.as_str()).collect();
        ids.sort();
        ids.dedup();
        if ids.len() != sdk.len() {
            verdict.problem(format!("{name}: an SDK span arrived twice"));
        }
        for n in 0..REQUESTS {
            let work = sdk.iter().find(|s| s.name == format!("work {name}{n}"));
            let outer =
                sdk.iter().find(|s| s.name.starts_with(named) && work.is_some_and(|w| w.trace_id == s.trace_id));
            if work.is_none() || outer.is_none() {
                verdict.problem(format!("{name}: call {n} lacks `work {name}{n}` or `{named}` among its SDK spans"));
            }
        }
        for span in &sdk {
            let service = span.resource_attr("service.name").and_then(|v| v.as_str());
            if service != Some(name) || span.resource_attr("host.name").is_none() {
                verdict.problem(format!(
                    "{name}: SDK span {} has service.name {service:?}, host.name {:?}: not the SDK's name on its process's resource",
                    span.name,
                    span.resource_attr("host.name")
                ));
                break;
            }
        }
        if name.starts_with("scouter") {
            let scope = sdk.first().and_then(|s| s.resource_attr("scouter.scope")).and_then(|v| v.as_str());
            if !scope.is_some_and(|scope| scope.starts_with("scouter.tracer.")) {
                verdict.problem(format!("{name}: the SDK's scouter.scope was not kept: {scope:?}"));
            }
        }
        let receiver_port = |s: &&&ReceivedSpan| {
            s.attr_str("url.full").is_some_and(|url| {
                url.contains(&format!(":{}/", receivers.http)) || url.contains(&format!(":{}/", receivers.grpc))
            })
        };
        if let Some(export) = mine.iter().find(receiver_port) {
            verdict.problem(format!(
                "{name}: an SDK's export to the agent became a span: {:?}",
                export.attr_str("url.full")
            ));
        }
    }
    verdict.finish(&log_context("agent", &log)).context("SDKs exporting to the agent")
}

/// Requests sent at once in the concurrency tests.
const CONCURRENT: usize = 50;
/// How long the leaf waits before answering, so the concurrent calls overlap in the front.
const LEAF_DELAY_MS: &str = "300";

/// `/work/c<n>` for every n at once, each on a connection of its own; the traceparent each call
/// carried downstream, by n.
fn concurrent_calls(verdict: &mut Verdict, port: u16) -> BTreeMap<usize, (String, String)> {
    let answers: Vec<(usize, Result<Vec<u8>>)> = std::thread::scope(|scope| {
        let clients: Vec<_> =
            (0..CONCURRENT).map(|n| scope.spawn(move || (n, get(port, &format!("/work/c{n}"))))).collect();
        clients.into_iter().map(|client| client.join().expect("a client thread panicked")).collect()
    });
    let mut calls = BTreeMap::new();
    for (n, answer) in answers {
        let Some(body) = verdict.step(&format!("GET /work/c{n}"), answer) else { continue };
        if let Some(context) = downstream_context(verdict, n, &body) {
            calls.insert(n, context);
        }
    }
    calls
}

/// The (trace id, span id) of the one `traceparent` call `n` carried downstream, from the leaf's
/// answer `body`; a problem when there is none, more than one, or a malformed one.
fn downstream_context(verdict: &mut Verdict, n: usize, body: &[u8]) -> Option<(String, String)> {
    let headers = verdict.step("reading the leaf's headers", leaf_headers(body)).unwrap_or_default();
    let parents: Vec<&str> =
        headers.iter().filter(|(name, _)| name.eq_ignore_ascii_case("traceparent")).map(|(_, v)| v.as_str()).collect();
    match parents.as_slice() {
        [one] => match one.split('-').collect::<Vec<_>>().as_slice() {
            ["00", trace, span, _] => Some((trace.to_string(), span.to_string())),
            _ => {
                verdict.problem(format!("call {n}: malformed traceparent {one:?}"));
                None
            }
        },
        many => {
            verdict.problem(format!("call {n}: the leaf got {} traceparent headers: {many:?}", many.len()));
            None
        }
    }
}

/// The request tag (`c<n>`) a span names in its name or URL, if any.
fn tag_of(span: &ReceivedSpan) -> Option<String> {
    let text = [span.attr("url.full"), span.attr("url.path")]
        .into_iter()
        .flatten()
        .filter_map(|value| value.as_str())
        .chain([span.name.as_str()])
        .find_map(|text| text.rsplit(['/', ' ']).next().filter(|last| last.starts_with('c')).map(str::to_owned));
    text.filter(|tag| tag[1..].chars().all(|c| c.is_ascii_digit()) && tag.len() > 1)
}

/// One concurrent request's trace: the front's SERVER span (the agent's), the SDK's `work c<n>`
/// under it (through the SDK spans named in `between`, outermost first), one CLIENT span (the
/// agent's) under that with the id the leaf received, the leaf's SERVER span under the call,
/// and no span of another request.
fn check_nesting(
    verdict: &mut Verdict,
    spans: &[ReceivedSpan],
    n: usize,
    (trace, call_id): (&str, &str),
    (front, leaf): (u32, u32),
    between: &[&str],
) {
    let tag = format!("c{n}");
    let in_trace: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == trace).collect();
    let shown = || {
        in_trace
            .iter()
            .map(|s| format!("{} {} kind {} parent {:?}", s.span_id, s.name, s.kind, s.parent_span_id))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let of = |pid: u32, kind: i32| -> Vec<&&ReceivedSpan> {
        in_trace.iter().filter(|s| s.kind == kind && pid_of(s) == Some(pid.into())).collect()
    };
    if let Some(other) = in_trace.iter().find(|s| tag_of(s).is_some_and(|t| t != tag)) {
        verdict.problem(format!("call {n}: span {} of another request in its trace: {}", other.name, shown()));
    }
    let mut ids: Vec<&str> = in_trace.iter().map(|s| s.span_id.as_str()).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|pair| pair[0] == pair[1]) {
        verdict.problem(format!("call {n}: a span arrived twice: {}", shown()));
    }
    let (servers, clients, leaves) = (of(front, 2), of(front, 3), of(leaf, 2));
    let work = in_trace.iter().find(|s| s.name == format!("work {tag}"));
    let ([server], [client], [leaf_server], Some(work)) =
        (servers.as_slice(), clients.as_slice(), leaves.as_slice(), work)
    else {
        verdict.problem(format!(
            "call {n}: expected one front SERVER ({}), one front CLIENT ({}), one leaf SERVER ({}) and `work {tag}` in trace {trace}: {}",
            servers.len(),
            clients.len(),
            leaves.len(),
            shown()
        ));
        return;
    };
    let parent_is =
        |span: &ReceivedSpan, parent: &ReceivedSpan| span.parent_span_id.as_deref() == Some(&parent.span_id);
    if tag_of(server).as_deref() != Some(tag.as_str()) {
        verdict.problem(format!("call {n}: the front SERVER span is another request's: {}", shown()));
    }
    let mut inner: &ReceivedSpan = work;
    for name in between.iter().rev() {
        let parent = in_trace.iter().find(|s| inner.parent_span_id.as_deref() == Some(&s.span_id));
        match parent {
            Some(parent) if parent.name == *name => inner = parent,
            _ => {
                verdict.problem(format!("call {n}: `{}` is not under a `{name}` SDK span: {}", inner.name, shown()));
                return;
            }
        }
    }
    if !parent_is(inner, server) {
        verdict.problem(format!("call {n}: `{}` is not under its request's SERVER span: {}", inner.name, shown()));
    }
    if !parent_is(client, work) || client.span_id != call_id {
        verdict.problem(format!(
            "call {n}: the CLIENT span (downstream got {call_id}) is not the one under `work {tag}`: {}",
            shown()
        ));
    }
    if !parent_is(leaf_server, client) {
        verdict.problem(format!("call {n}: the leaf's SERVER span is not under the call: {}", shown()));
    }
}

/// The gunicorn worker that serves (and exports) for a gthread front.
fn gthread_worker(front: &PythonServer) -> Result<u32> {
    front.pids().last().copied().context("gunicorn's worker")
}

#[test]
fn otel_manual_spans_on_gthread_workers_nest_both_ways_under_50_concurrent_requests() -> Result<()> {
    // Fewer threads than requests: threads go on to other requests with the SDK's context reset.
    nest_under_concurrency(FrontSdk::OtelManual, |front| front.gthread(16), gthread_worker)
}

#[test]
fn otel_manual_spans_in_asyncio_tasks_nest_both_ways_under_50_concurrent_requests() -> Result<()> {
    // One thread, fifty tasks in their SDK spans at once.
    nest_under_concurrency(FrontSdk::OtelManual, SdkService::asyncio, |front| Ok(front.pid()))
}

#[test]
fn scouter_sdk_spans_on_gthread_workers_nest_both_ways_under_50_concurrent_requests() -> Result<()> {
    nest_under_concurrency(FrontSdk::Scouter, |front| front.gthread(16), gthread_worker)
}

/// The SDK of the front in the concurrency tests.
#[derive(Clone, Copy)]
enum FrontSdk {
    /// OpenTelemetry's SDK, manual spans (`work c<n>`), exported over OTLP/HTTP.
    OtelManual,
    /// Scouter's SDK: a decorated function (`handle_work`) and `start_as_current_span`
    /// (`work c<n>`) inside it, exported over Scouter's HTTP transport and OTLP/HTTP. Its current span is a
    /// native object: the kernel reads it once the agent knows the process's build.
    Scouter,
}

impl FrontSdk {
    fn service(self, receivers: &Receivers) -> SdkService {
        match self {
            Self::OtelManual => {
                SdkService::otel_manual(Otlp::HttpProtobuf(format!("{}/v1/traces", receivers.http_url())))
            }
            // Both of its exports at once: the agent gets every span twice and forwards it once.
            Self::Scouter => SdkService::scouter(ScouterTransport::Http(receivers.http_url()))
                .credentials("sdk-user", "sdk-secret")
                .otlp(Otlp::HttpProtobuf(format!("{}/v1/traces", receivers.http_url()))),
        }
    }

    /// The SDK spans between the request's SERVER span and `work c<n>`, outermost first.
    fn between(self) -> &'static [&'static str] {
        match self {
            Self::OtelManual => &[],
            Self::Scouter => &["handle_work"],
        }
    }

    fn native(self) -> bool {
        matches!(self, Self::Scouter)
    }
}

/// 50 concurrent requests to a front with `sdk` (exporting to the agent), served as `serve`
/// says, each calling a slow leaf inside its SDK spans; `serving_pid` is the front's process
/// that serves (and exports). Every request's trace must nest both ways.
///
/// A native SDK's first span in a process cannot be read (the agent learns the process's build
/// from it): a first request comes before the burst, and its SDK spans must be left as made.
fn nest_under_concurrency(
    sdk: FrontSdk,
    serve: impl FnOnce(SdkService) -> SdkService,
    serving_pid: impl FnOnce(&PythonServer) -> Result<u32>,
) -> Result<()> {
    let (scouter, receivers, _store, mut agent) = agent_exporting_to_scouter()?;
    let python = Interpreter::sdk_venv()?;
    let leaf = SdkService::plain().service_name("leaf").env("LEAF_DELAY_MS", LEAF_DELAY_MS);
    let leaf = PythonServer::start(&python, ServerProgram::Sdk(leaf))?;
    let front = sdk.service(&receivers).service_name("front").downstream(&leaf.base_url());
    let front = PythonServer::start(&python, ServerProgram::Sdk(serve(front)))?;
    let serving = serving_pid(&front)?;
    let mut verdict = Verdict::new();
    for pid in [leaf.pid(), serving] {
        verdict.step("waiting for the agent to track the services", agent.wait_tracking(pid));
    }
    if sdk.native() {
        verdict.step("GET /work/first", get(front.port(), "/work/first"));
        let learnt = agent.wait_logged("INFO", "nesting a native SDK's spans", serving);
        verdict.step("waiting for the agent to read the SDK's build", learnt);
    }
    let calls = concurrent_calls(&mut verdict, front.port());
    verdict.step("GET /flush", get(front.port(), "/flush"));
    let all_arrived = |spans: &[ReceivedSpan]| {
        calls.iter().all(|(n, (trace, _))| {
            let in_trace = || spans.iter().filter(|s| &s.trace_id == trace);
            in_trace().any(|s| s.name == format!("work c{n}")) && in_trace().filter(|s| s.kind == 2).count() >= 2
        })
    };
    verdict.step("the calls' spans reach Scouter", wait_until(&scouter, "Scouter", all_arrived));
    let log = agent.log().clone();
    verdict.step("stopping the agent", agent.stop());
    if calls.len() != CONCURRENT {
        verdict.problem(format!("{} of {CONCURRENT} calls reached the leaf", calls.len()));
    }
    let spans = scouter.spans();
    for (n, (trace, call_id)) in &calls {
        check_nesting(&mut verdict, &spans, *n, (trace, call_id), (serving, leaf.pid()), sdk.between());
    }
    if sdk.native() {
        check_left_as_made(&mut verdict, &spans, serving, &log);
    }
    verdict.finish(&log_context("agent", &log))
}

/// The first request's SDK spans, made before the agent knew the SDK's build: in the SDK's own
/// trace, `work first` under `handle_work`, and no span of the agent's there; the kernel
/// counted them as opaque.
fn check_left_as_made(verdict: &mut Verdict, spans: &[ReceivedSpan], front: u32, log: &LineLog) {
    let Some(work) = spans.iter().find(|s| s.name == "work first") else {
        verdict.problem("the first request's `work first` SDK span did not arrive".to_owned());
        return;
    };
    let in_trace: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == work.trace_id).collect();
    let outer = in_trace.iter().find(|s| work.parent_span_id.as_deref() == Some(&s.span_id));
    if !outer.is_some_and(|outer| outer.name == "handle_work" && outer.parent_span_id.is_none()) {
        verdict.problem(format!("`work first` is not under a root `handle_work` in its own trace: {in_trace:?}"));
    }
    if let Some(agent_span) =
        in_trace.iter().find(|s| s.scope_name == "scouter-agent" && pid_of(s) == Some(front.into()))
    {
        verdict.problem(format!("the agent placed a span in the unread SDK trace: {}", agent_span.name));
    }
    let opaque = log.lines_containing("sdk_context_opaque=").iter().any(|line| !line.contains("sdk_context_opaque=0"));
    if !opaque {
        verdict.problem("the kernel did not count the unread SDK spans (sdk_context_opaque)".to_owned());
    }
}

#[test]
fn the_kernel_reads_otel_context_objects_on_every_interpreter() -> Result<()> {
    require_ebpf_host()?;
    let store = Store::new()?;
    let mut agent =
        Agent::start_with_args(&store, &["--receive-grpc", "off", "--receive-http", "off", "--metrics-listen", "off"])?;
    let mut verdict = Verdict::new();
    // (interpreter, the span made current, the traceparent its call carried).
    let mut calls = Vec::new();
    let leaf = PythonServer::start(&Interpreter::pyenv("3.12.1")?, ServerProgram::Echo)?;
    for python in Interpreter::every()? {
        let server = PythonServer::start(&python, ServerProgram::SdkContextShapes { leaf_port: leaf.port() })?;
        verdict.step("waiting for the agent to track the program", agent.wait_tracking(server.pid()));
        for _ in 0..2 {
            let Some(body) = verdict.step(&format!("{}: GET /", python.label), get(server.port(), "/")) else {
                continue;
            };
            let text = String::from_utf8_lossy(&body).trim().to_owned();
            match text.split(' ').collect::<Vec<_>>().as_slice() {
                ["MATCH", traceparent, trace, span] => {
                    calls.push((python.label.clone(), trace.to_string(), span.to_string(), traceparent.to_string()))
                }
                _ => verdict.problem(format!(
                    "{}: the call made inside the SDK's span did not carry its trace: {text}",
                    python.label
                )),
            }
        }
    }
    let spans = store.poll_spans(ARRIVAL, |spans| {
        calls.iter().all(|(_, trace, _, _)| spans.iter().any(|s| &s.trace_id == trace && s.kind == "CLIENT"))
    });
    let log = agent.log().clone();
    verdict.step("stopping the agent", agent.stop());
    if let Some(spans) = verdict.step("the calls' spans reach the store", spans) {
        for (label, trace, span, traceparent) in &calls {
            let client = spans.iter().find(|s| &s.trace_id == trace && s.kind == "CLIENT");
            match client {
                Some(client) if client.parent_span_id.as_deref() == Some(span.as_str()) => {
                    if !traceparent.contains(&client.span_id) {
                        verdict.problem(format!("{label}: the leaf got {traceparent}, the call is {}", client.span_id));
                    }
                }
                other => verdict.problem(format!(
                    "{label}: the call is not a child of the SDK span {span}: {:?}",
                    other.map(|s| s.pretty())
                )),
            }
        }
    }
    if calls.len() != 2 * 7 {
        verdict.problem(format!("{} of 14 calls carried the SDK span's trace", calls.len()));
    }
    verdict.finish(&log_context("agent", &log))
}

#[test]
fn the_agents_table_of_native_sdk_builds_holds_the_layout_measured_on_the_installed_scouter_ml() -> Result<()> {
    // The kernel reads scouter-ml's spans with offsets known per build: measured here in a live
    // span's memory, they must be the agent's entry for this build, word for word.
    let python = Interpreter::sdk_venv()?;
    let output = std::process::Command::new(&python.path)
        .arg(python_dir().join("native_span_layout.py"))
        .output()
        .context("running native_span_layout.py")?;
    let measured = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "native_span_layout.py failed ({}): {measured}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let table_file = workspace_root().join("scouter-agent/src/discovery/native_sdk.rs");
    let table = std::fs::read_to_string(&table_file).with_context(|| format!("reading {}", table_file.display()))?;
    let words = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    ensure!(
        words(&table).contains(&words(&measured)),
        "{} lacks the entry measured on the installed scouter-ml; add:\n{measured}",
        table_file.display()
    );
    Ok(())
}
