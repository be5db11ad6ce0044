//! The export pipeline against the strict test backends (a Scouter-compatible server and an
//! OTLP receiver), with real traced requests:
//!
//! - Scouter over HTTP and an OTLP collector over gRPC receive the same spans, ids for ids,
//!   through a 30 s Scouter outage (OTLP keeps flowing meanwhile), token expiry, a burst of
//!   429s and an OTLP collector that hangs: every span arrives exactly once in each.
//! - Scouter over gRPC and OTLP over HTTP with sample ratios: the global ratio holds on many
//!   traces, OTLP's own lower ratio keeps a subset, and every kept trace is whole.
//! - Scouter over Kafka (a fake broker that checks the wire protocol and the contract: gzip,
//!   no key, the JSON envelope): every span once, through a broker outage.
//! - A batch of about 10 000 function spans, several times Scouter's 2 MB body limit, arrives
//!   whole in requests under the limit; the spans carry Scouter's conventions (tags,
//!   `scouter.scope`, inputs as JSON).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use scouter_e2e::agent::{log_context, Agent};
use scouter_e2e::backends::kafka::KafkaBroker;
use scouter_e2e::backends::otlp::OtlpReceiver;
use scouter_e2e::backends::scouter::{ScouterBackend, HTTP_BODY_LIMIT};
use scouter_e2e::backends::{Backend, ReceivedSpan, Reply, Transport};
use scouter_e2e::env::require_ebpf_host;
use scouter_e2e::expect::Verdict;
use scouter_e2e::http::{HttpConnection, Request};
use scouter_e2e::python::{free_port, Interpreter, PythonServer, ServerProgram};
use scouter_e2e::store::Store;

/// How long a sink may take to catch up after a fault ends (retry backoff tops out at 10 s).
const CATCH_UP: Duration = Duration::from_secs(60);

fn get(port: u16, path: &str) -> Result<()> {
    let response = HttpConnection::connect(port)?.send(&Request::get(path))?;
    ensure!(response.status == 200, "GET {path} answered {}", response.status);
    Ok(())
}

/// Sends `count` requests named `{label}-{n}`, `pause` apart.
fn send(port: u16, label: &str, count: usize, pause: Duration) -> Result<()> {
    for n in 0..count {
        get(port, &format!("/{label}/{n}"))?;
        std::thread::sleep(pause);
    }
    Ok(())
}

/// The server spans of `pid` by span id, failing on a span received twice.
fn unique_server_spans(spans: &[ReceivedSpan], pid: u32) -> Result<BTreeMap<String, ReceivedSpan>> {
    let mut unique = BTreeMap::new();
    for span in spans
        .iter()
        .filter(|s| s.kind == 2 && s.resource_attr("process.pid").and_then(|v| v.as_i64()) == Some(pid.into()))
    {
        ensure!(unique.insert(span.span_id.clone(), span.clone()).is_none(), "span {} received twice", span.span_id);
    }
    Ok(unique)
}

/// Waits until `backend` holds `count` server spans of `pid`.
fn wait_for_server_spans(backend: &dyn Backend, pid: u32, count: usize, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let have = unique_server_spans(&backend.spans(), pid)?.len();
        if have >= count {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{have} of {count} server spans after {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `path` on the agent's metrics port, which must answer 200.
fn operations(port: u16, path: &str) -> Result<String> {
    let response = HttpConnection::connect(port)?.send(&Request::get(path))?;
    ensure!(response.status == 200, "{path} answered {}", response.status);
    Ok(String::from_utf8_lossy(&response.body).into_owned())
}

fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The flags that send spans to `scouter` over HTTP, logging in with its credentials.
fn scouter_http_flags(scouter: &ScouterBackend) -> Vec<String> {
    let (username, password) = scouter.credentials();
    let flags = ["--scouter-server-uri", &scouter.http_uri(), "--scouter-username", &username];
    flags.into_iter().map(str::to_owned).chain(["--scouter-password".to_owned(), password]).collect()
}

/// `Agent::start_with_args` for owned arguments.
fn start_agent(store: &Store, args: &[String]) -> Result<Agent> {
    Agent::start_with_args(store, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn scouter_http_and_otlp_grpc_get_every_span_once_through_outage_expiry_429_and_a_hang() -> Result<()> {
    require_ebpf_host()?;
    let (scouter, otlp) = (ScouterBackend::start()?, OtlpReceiver::start()?);
    let server = PythonServer::start(&Interpreter::pyenv("3.12.1")?, ServerProgram::KeepAlive)?;
    let metrics_port = free_port()?;
    let mut args = scouter_http_flags(&scouter);
    args.extend(
        [
            "--otlp-endpoint",
            &otlp.grpc_endpoint(),
            "--otlp-timeout-ms",
            "2000",
            "--scheduled-delay-ms",
            "200",
            "--flush-timeout-secs",
            "20",
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
        ]
        .map(str::to_owned),
    );
    let store = Store::new()?;
    let mut agent = start_agent(&store, &args)?;
    let mut verdict = Verdict::new();
    let pid = server.pid();
    verdict.step("waiting for the agent to track the server", agent.wait_tracking(pid));
    let port = server.port();
    let mut expected = 0;

    verdict.step("20 requests", send(port, "steady", 20, Duration::ZERO));
    expected += 20;
    verdict.step("both sinks get the first 20", wait_for_server_spans(&scouter, pid, expected, CATCH_UP));
    verdict.step("(otlp)", wait_for_server_spans(&otlp, pid, expected, CATCH_UP));

    // A 30 s outage of the Scouter backend; OTLP must keep flowing meanwhile.
    verdict.step("taking the Scouter backend down", scouter.set_down(true));
    let outage = Instant::now();
    verdict.step("30 requests during the outage", send(port, "outage", 30, Duration::from_millis(900)));
    expected += 30;
    verdict.step(
        "OTLP keeps flowing during the outage",
        wait_for_server_spans(&otlp, pid, expected, Duration::from_secs(10)),
    );
    if unique_server_spans(&scouter.spans(), pid)?.len() != expected - 30 {
        verdict.problem("the Scouter backend received spans while it was down".to_owned());
    }
    std::thread::sleep(Duration::from_secs(30).saturating_sub(outage.elapsed()));
    verdict.step("bringing the Scouter backend back", scouter.set_down(false));
    verdict.step("Scouter catches up after the outage", wait_for_server_spans(&scouter, pid, expected, CATCH_UP));

    // Tokens expire: the agent logs in again and resends.
    let logins_before = scouter.logins().len();
    scouter.expire_tokens();
    verdict.step("10 requests after token expiry", send(port, "expired", 10, Duration::ZERO));
    expected += 10;
    verdict.step("Scouter gets them after logging in again", wait_for_server_spans(&scouter, pid, expected, CATCH_UP));
    if scouter.logins().len() <= logins_before {
        verdict.problem("no new login after the tokens expired".to_owned());
    }

    // A burst of 429s (the server's queue is full).
    scouter.reject_next(3, 429);
    verdict.step("10 requests during a 429 burst", send(port, "busy", 10, Duration::from_millis(100)));
    expected += 10;
    verdict.step("Scouter gets them after the 429s", wait_for_server_spans(&scouter, pid, expected, CATCH_UP));
    let too_many = scouter.requests().iter().filter(|r| matches!(r.reply, Reply::Http(429))).count();
    if too_many != 3 {
        verdict.problem(format!("{too_many} requests answered 429, expected the 3 injected"));
    }

    // The OTLP collector hangs: Scouter must not wait for it.
    otlp.hang(true);
    verdict.step("10 requests while OTLP hangs", send(port, "hang", 10, Duration::from_millis(100)));
    expected += 10;
    verdict.step(
        "Scouter flows while OTLP hangs",
        wait_for_server_spans(&scouter, pid, expected, Duration::from_secs(10)),
    );
    std::thread::sleep(Duration::from_secs(3));
    otlp.hang(false);
    verdict.step("OTLP catches up after hanging", wait_for_server_spans(&otlp, pid, expected, CATCH_UP));

    let text = verdict.step("reading /metrics", operations(metrics_port, "/metrics"));
    verdict.step("/healthz", operations(metrics_port, "/healthz"));
    verdict.step("/readyz", operations(metrics_port, "/readyz"));
    let log = agent.log().clone();
    verdict.step("stopping the agent", agent.stop());

    let scouter_spans = verdict.step("Scouter spans, each once", unique_server_spans(&scouter.spans(), pid));
    let otlp_spans = verdict.step("OTLP spans, each once", unique_server_spans(&otlp.spans(), pid));
    if let (Some(scouter_spans), Some(otlp_spans)) = (scouter_spans, otlp_spans) {
        if scouter_spans.len() != expected || otlp_spans.len() != expected {
            verdict.problem(format!(
                "{} Scouter and {} OTLP server spans, expected {expected} each",
                scouter_spans.len(),
                otlp_spans.len()
            ));
        }
        let scouter_ids: BTreeSet<(&str, &str)> =
            scouter_spans.values().map(|s| (s.trace_id.as_str(), s.span_id.as_str())).collect();
        let otlp_ids: BTreeSet<(&str, &str)> =
            otlp_spans.values().map(|s| (s.trace_id.as_str(), s.span_id.as_str())).collect();
        if scouter_ids != otlp_ids {
            verdict.problem(format!(
                "the sinks disagree on ids: {} only in Scouter, {} only in OTLP",
                scouter_ids.difference(&otlp_ids).count(),
                otlp_ids.difference(&scouter_ids).count()
            ));
        }
        for (id, span) in &scouter_spans {
            if otlp_spans.get(id).is_some_and(|o| {
                (o.name.as_str(), o.start_time_unix_nano, o.parent_span_id.as_deref())
                    != (span.name.as_str(), span.start_time_unix_nano, span.parent_span_id.as_deref())
            }) {
                verdict.problem(format!("span {id} differs between the sinks"));
            }
        }
    }
    if let Some(text) = text {
        for sink in ["scouter-http", "otlp-grpc"] {
            let exported = metric_value(&text, &format!("scouter_agent_sink_spans_exported_total{{sink=\"{sink}\"}}"));
            if exported.is_none_or(|n| n < expected as f64) {
                verdict.problem(format!("{sink} exported metric {exported:?}, expected at least {expected}"));
            }
        }
        let retries = metric_value(&text, "scouter_agent_sink_retries_total{sink=\"scouter-http\"}");
        if retries.is_none_or(|n| n < 1.0) {
            verdict.problem(format!("scouter-http retries metric {retries:?} after an outage"));
        }
    }
    verdict.finish(&log_context("agent", &log))
}

#[test]
fn sample_ratios_hold_per_trace_for_scouter_grpc_and_otlp_http() -> Result<()> {
    require_ebpf_host()?;
    let (scouter, otlp) = (ScouterBackend::start()?, OtlpReceiver::start()?);
    let (username, password) = scouter.credentials();
    let leaf = PythonServer::start(&Interpreter::pyenv("3.11.7")?, ServerProgram::KeepAlive)?;
    let front = PythonServer::start(
        &Interpreter::pyenv("3.12.1")?,
        ServerProgram::Stack { server: "flask", downstream: format!("http://127.0.0.1:{}", leaf.port()) },
    )?;
    let (scouter_uri, otlp_endpoint) = (scouter.grpc_uri(), otlp.http_endpoint());
    let store = Store::new()?;
    let mut agent = Agent::start_with_args(
        &store,
        &[
            "--scouter-grpc-uri",
            &scouter_uri,
            "--scouter-username",
            &username,
            "--scouter-password",
            &password,
            "--otlp-endpoint",
            &otlp_endpoint,
            "--otlp-protocol",
            "http/protobuf",
            "--otlp-compression",
            "gzip",
            "--sample-ratio",
            "0.5",
            "--otlp-sample-ratio",
            "0.25",
            "--scheduled-delay-ms",
            "200",
            "--metrics-listen",
            "off",
        ],
    )?;
    let mut verdict = Verdict::new();
    for server in [&leaf, &front] {
        verdict.step("waiting for the agent to track the services", agent.wait_tracking(server.pid()));
    }
    const TRACES: usize = 300;
    for n in 0..TRACES {
        verdict.step(&format!("request {n}"), get(front.port(), &format!("/checkout/s{n}")));
    }
    let log = agent.log().clone();
    verdict.step("stopping the agent (it flushes)", agent.stop());

    let traces = |spans: &[ReceivedSpan]| {
        let mut by_trace: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for span in spans {
            by_trace.entry(span.trace_id.clone()).or_default().push(span.kind);
        }
        by_trace
    };
    let (kept, kept_otlp) = (traces(&scouter.spans()), traces(&otlp.spans()));
    // 300 traces at p = 0.5: sd ≈ 8.7; at 0.25: sd ≈ 7.5. Bounds at about 4 sd.
    if !(115..=185).contains(&kept.len()) {
        verdict.problem(format!("Scouter kept {} of {TRACES} traces at 0.5", kept.len()));
    }
    if !(45..=105).contains(&kept_otlp.len()) {
        verdict.problem(format!("OTLP kept {} of {TRACES} traces at min(0.5, 0.25)", kept_otlp.len()));
    }
    for (sink, by_trace) in [("Scouter", &kept), ("OTLP", &kept_otlp)] {
        for (trace, kinds) in by_trace {
            let mut kinds = kinds.clone();
            kinds.sort();
            if kinds != [2, 2, 3] {
                verdict.problem(format!(
                    "{sink} trace {trace} is not whole (kinds {kinds:?}, expected two servers and a client)"
                ));
            }
        }
    }
    if let Some(stray) = kept_otlp.keys().find(|trace| !kept.contains_key(*trace)) {
        verdict.problem(format!("OTLP kept trace {stray}, which the global ratio dropped for Scouter"));
    }
    let grpc = scouter.requests().iter().all(|r| r.transport == Transport::Grpc);
    if !grpc {
        verdict.problem("the Scouter backend was not reached over gRPC".to_owned());
    }
    verdict.finish(&log_context("agent", &log)).context("sampling")
}

#[test]
fn scouter_kafka_gets_every_span_once_through_a_broker_outage() -> Result<()> {
    require_ebpf_host()?;
    let broker = KafkaBroker::start()?;
    let server = PythonServer::start(&Interpreter::pyenv("3.10.13")?, ServerProgram::KeepAlive)?;
    let bootstrap = broker.bootstrap();
    let store = Store::new()?;
    let mut agent = Agent::start_with_args(
        &store,
        &["--kafka-brokers", &bootstrap, "--scheduled-delay-ms", "200", "--metrics-listen", "off"],
    )?;
    let mut verdict = Verdict::new();
    let pid = server.pid();
    verdict.step("waiting for the agent to track the server", agent.wait_tracking(pid));
    verdict.step("20 requests", send(server.port(), "kafka", 20, Duration::ZERO));
    verdict.step("the broker gets them", wait_for_server_spans(&broker, pid, 20, CATCH_UP));
    verdict.step("taking the broker down", broker.set_down(true));
    verdict.step("10 requests while it is down", send(server.port(), "down", 10, Duration::from_millis(300)));
    std::thread::sleep(Duration::from_secs(3));
    verdict.step("bringing the broker back", broker.set_down(false));
    verdict.step("the broker gets them after the outage", wait_for_server_spans(&broker, pid, 30, CATCH_UP));
    // A caller that decided "not sampled": its trace is dropped (--honor-sampled-flag defaults
    // to true); the same request marked sampled is exported. Both trace ids are kept by any ratio.
    let (unsampled, sampled) = ("0af7651916cd43dd8448eb2100000001", "0af7651916cd43dd8448eb2100000002");
    for (trace, flags) in [(unsampled, "00"), (sampled, "01")] {
        let request = Request::get("/flagged").header("traceparent", &format!("00-{trace}-b7ad6b7169203331-{flags}"));
        let answered = HttpConnection::connect(server.port()).and_then(|mut c| c.send(&request));
        verdict.step(&format!("GET /flagged with flags {flags}"), answered);
    }
    verdict.step("the sampled caller's span arrives", wait_for_server_spans(&broker, pid, 31, CATCH_UP));
    let log = agent.log().clone();
    verdict.step("stopping the agent", agent.stop());
    if let Some(spans) = verdict.step("Kafka spans, each once", unique_server_spans(&broker.spans(), pid)) {
        if spans.len() != 31 {
            verdict.problem(format!("{} server spans on Kafka, expected 31", spans.len()));
        }
        if spans.values().any(|span| span.trace_id == unsampled) {
            verdict.problem("a span of a trace its caller marked not sampled was exported".to_owned());
        }
        if !spans.values().any(|span| span.trace_id == sampled) {
            verdict.problem("the span of a trace its caller marked sampled is missing".to_owned());
        }
    }
    for record in broker.records() {
        if !record.accepted() || record.key.is_some() || record.topic != "scouter_monitoring" {
            verdict.problem(format!(
                "record on {:?}: accepted {}, key {:?}, compression {:?}, violation {:?}",
                record.topic,
                record.accepted(),
                record.key,
                record.compression,
                record.violation
            ));
        }
    }
    verdict.finish(&log_context("agent", &log))
}

/// Calls of `fib(FIB_N)`: fib(n) calls itself twice until n < 2.
const FIB_N: u32 = 14;
const FIB_CALLS: usize = 1219;
const FIB_REQUESTS: usize = 8;

#[test]
fn a_batch_several_times_the_scouter_http_limit_arrives_whole_in_requests_under_it() -> Result<()> {
    require_ebpf_host()?;
    let scouter = ScouterBackend::start()?;
    let async_port = free_port()?;
    let server = PythonServer::start(&Interpreter::pyenv("3.12.1")?, ServerProgram::Function { async_port })?;
    let mut args = scouter_http_flags(&scouter);
    // One batch holds everything the requests make (a 20 s delay, room for 30 000 spans), so
    // only splitting can keep its requests under the limit.
    args.extend(
        [
            "--function",
            "function_service:fib(n)",
            "--tag",
            "env=e2e",
            "--tag",
            "team=checkout",
            "--max-queue-size",
            "30000",
            "--max-export-batch-size",
            "30000",
            "--scheduled-delay-ms",
            "20000",
            "--flush-timeout-secs",
            "30",
            "--metrics-listen",
            "off",
        ]
        .map(str::to_owned),
    );
    let store = Store::new()?;
    let mut agent = start_agent(&store, &args)?;
    let mut verdict = Verdict::new();
    let pid = server.pid();
    verdict.step("waiting for the agent to track the server", agent.wait_tracking(pid));
    verdict.step("waiting for fib to be traced", agent.wait_tracing_functions(pid));
    for n in 0..FIB_REQUESTS {
        verdict.step(&format!("GET /fib/{FIB_N}/split{n}"), get(server.port(), &format!("/fib/{FIB_N}/split{n}")));
    }
    let expected = FIB_CALLS * FIB_REQUESTS;
    let fib_spans = |spans: &[ReceivedSpan]| -> Result<BTreeMap<String, ReceivedSpan>> {
        let mut unique = BTreeMap::new();
        for span in spans.iter().filter(|s| s.name == "fib") {
            ensure!(
                unique.insert(span.span_id.clone(), span.clone()).is_none(),
                "span {} received twice",
                span.span_id
            );
        }
        Ok(unique)
    };
    let deadline = Instant::now() + CATCH_UP;
    while fib_spans(&scouter.spans()).map_or(true, |found| found.len() < expected) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = agent.log().clone();
    verdict.step("stopping the agent", agent.stop());

    let spans = scouter.spans();
    if let Some(found) = verdict.step("fib spans, each once", fib_spans(&spans)) {
        if found.len() != expected {
            verdict.problem(format!("{} fib spans arrived, expected {expected}", found.len()));
        }
        for span in found.values() {
            let input = span.attr_str("scouter.tracing.input").map(serde_json::from_str::<serde_json::Value>);
            if !matches!(&input, Some(Ok(value)) if value["n"].is_i64()) {
                verdict.problem(format!(
                    "fib span {}: scouter.tracing.input {input:?} is not {{\"n\": int}}",
                    span.span_id
                ));
                break;
            }
        }
    }
    let messages: Vec<_> = scouter.requests().into_iter().filter(|r| r.span_count > 0 || !r.accepted()).collect();
    let largest = messages.iter().map(|r| r.body_len).max().unwrap_or(0);
    let total: usize = messages.iter().map(|r| r.body_len).sum();
    if let Some(refused) = messages.iter().find(|r| !r.accepted() || r.body_len > HTTP_BODY_LIMIT) {
        verdict.problem(format!(
            "a request of {} bytes was refused or over the {HTTP_BODY_LIMIT}-byte limit: {:?} {}",
            refused.body_len, refused.reply, refused.message
        ));
    }
    // Splitting packs requests to the limit rather than sending a span at a time.
    if total < 2 * HTTP_BODY_LIMIT || largest < HTTP_BODY_LIMIT / 2 {
        verdict.problem(format!(
            "{} requests, {total} bytes in all, the largest {largest}: not one batch over the limit, split",
            messages.len()
        ));
    }
    check_scouter_conventions(&mut verdict, &spans, pid);
    verdict.finish(&log_context("agent", &log))
}

/// Tags on every span of `pid`, in the indexed form on its server spans only; the resource
/// names the agent in `scouter.scope`.
fn check_scouter_conventions(verdict: &mut Verdict, spans: &[ReceivedSpan], pid: u32) {
    let of_pid = spans.iter().filter(|s| s.resource_attr("process.pid").and_then(|v| v.as_i64()) == Some(pid.into()));
    let mut servers = 0;
    for span in of_pid {
        let scope = span.resource_attr("scouter.scope").and_then(|v| v.as_str());
        let tags = (span.attr_str("scouter.tracing.tag.env"), span.attr_str("scouter.tracing.tag.team"));
        let indexed = span.attr_str("baggage.scouter.tracing.tag.env");
        let is_server = span.kind == 2;
        servers += usize::from(is_server);
        let scope_ok = scope.is_some_and(|scope| scope.starts_with("scouter.agent."));
        let indexed_ok = if is_server { indexed == Some("e2e") } else { indexed.is_none() };
        if !scope_ok || tags != (Some("e2e"), Some("checkout")) || !indexed_ok {
            verdict.problem(format!(
                "span {} ({}): scouter.scope {scope:?}, tags {tags:?}, indexed tag {indexed:?}",
                span.span_id, span.name
            ));
            return;
        }
    }
    if servers != FIB_REQUESTS {
        verdict.problem(format!("{servers} server spans, expected {FIB_REQUESTS}"));
    }
}
