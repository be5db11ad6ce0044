//! Three-service HTTP call chains, A → B → C, on real Python stacks.
//!
//! [`Chain::start`] runs `tests/python/chain_service.py` three times on free loopback ports, the
//! leaf C first so every service's downstream already listens, each under its own interpreter,
//! server ([`Server`]) and client library ([`Client`]), optionally over HTTPS ([`TlsFiles`]). It
//! waits until the agent tracks every process of every service, the forked gunicorn workers
//! included (they announce `WORKER pid=N`; the agent logs `tracking python process (forked)`).
//!
//! The test then sends requests to A, `GET /chain/<id>?token=<secret>`, one after the other
//! ([`Chain::send_sequential`]) or all at once ([`Chain::send_concurrent`]). A calls B and B calls
//! C with the same path and query; C answers `chain <id> ends at port <C's port>`, which travels
//! back up, so a correct answer proves the request went through all three.
//!
//! [`Chain::expect_traces`] then checks the spans with [`crate::traces`]: every request must
//! become exactly one linked, correctly timed five-span trace.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Barrier;
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::agent::{log_context, Agent};
use crate::env::require_ebpf_host;
use crate::expect::Verdict;
use crate::http::{HttpConnection, Request, IO_TIMEOUT};
use crate::python::{Interpreter, PythonServer, ServerProgram};
use crate::store::{Span, Store};
use crate::tls::TlsFiles;
use crate::traces::{chain_path, expect_traces, secret, spans_per_request, ChainLayout, Sent, ServiceIdentity};
use crate::traffic::{now_unix_nanos, Exchange};

/// The HTTP server a service runs (`chain_service.py --server`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// `http.server.ThreadingHTTPServer`.
    HttpServer,
    /// Flask on Werkzeug's threaded development server.
    Werkzeug,
    /// The Flask app under gunicorn, 2 sync workers.
    GunicornSync,
    /// The Flask app under gunicorn, 2 gthread workers with 4 threads each.
    GunicornGthread,
    /// FastAPI under uvicorn (asyncio loop, h11).
    Uvicorn,
    /// aiohttp's web server.
    Aiohttp,
}

impl Server {
    pub fn arg(self) -> &'static str {
        match self {
            Self::HttpServer => "http.server",
            Self::Werkzeug => "werkzeug",
            Self::GunicornSync => "gunicorn-sync",
            Self::GunicornGthread => "gunicorn-gthread",
            Self::Uvicorn => "uvicorn",
            Self::Aiohttp => "aiohttp",
        }
    }

    /// Worker processes it forks (and announces).
    pub fn workers(self) -> usize {
        match self {
            Self::GunicornSync | Self::GunicornGthread => 2,
            _ => 0,
        }
    }
}

/// The HTTP client library a service calls its downstream with (`chain_service.py --client`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    HttpClient,
    Urllib,
    Requests,
    Urllib3,
    /// httpx's sync `Client`.
    Httpx,
    /// httpx's `AsyncClient`.
    HttpxAsync,
    Aiohttp,
}

impl Client {
    pub fn arg(self) -> &'static str {
        match self {
            Self::HttpClient => "http.client",
            Self::Urllib => "urllib",
            Self::Requests => "requests",
            Self::Urllib3 => "urllib3",
            Self::Httpx => "httpx",
            Self::HttpxAsync => "httpx-async",
            Self::Aiohttp => "aiohttp",
        }
    }
}

/// How an asyncio server makes its downstream call (`chain_service.py --async-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AsyncMode {
    /// `await client.get(url)` in the handler.
    #[default]
    Direct,
    /// `await asyncio.create_task(client.get(url))`.
    CreateTask,
    /// `await asyncio.gather(client.get(url), asyncio.sleep(0))`.
    Gather,
    /// `await asyncio.to_thread(sync_client.get, url)`: a sync client on a pool thread.
    ToThread,
}

impl AsyncMode {
    pub fn arg(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::CreateTask => "create_task",
            Self::Gather => "gather",
            Self::ToThread => "to_thread",
        }
    }
}

/// Certificate paths a service uses over HTTPS.
#[derive(Debug, Clone)]
pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Everything `chain_service.py` is told besides its port.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub server: Server,
    /// Base URL of the next service; None for the leaf.
    pub downstream: Option<String>,
    pub client: Option<Client>,
    pub mode: AsyncMode,
    pub tls: Option<TlsPaths>,
}

impl ServiceConfig {
    /// The command-line arguments (without `--port`).
    pub fn arguments(&self) -> Vec<String> {
        let mut args = vec!["--server".to_owned(), self.server.arg().to_owned()];
        if let (Some(url), Some(client)) = (&self.downstream, self.client) {
            args.extend(["--downstream".into(), url.clone(), "--client".into(), client.arg().into()]);
        }
        if self.mode != AsyncMode::Direct {
            args.extend(["--async-mode".into(), self.mode.arg().into()]);
        }
        if let Some(tls) = &self.tls {
            for (flag, path) in [("--certfile", &tls.cert), ("--keyfile", &tls.key), ("--cafile", &tls.ca)] {
                args.extend([flag.to_owned(), path.display().to_string()]);
            }
        }
        args
    }

    /// A short description for messages, e.g. `chain_service.py uvicorn + httpx-async (gather)`.
    pub fn describe(&self) -> String {
        let mut text = format!("chain_service.py {}", self.server.arg());
        if let Some(client) = self.client.filter(|_| self.downstream.is_some()) {
            text.push_str(&format!(" + {}", client.arg()));
        }
        if self.mode != AsyncMode::Direct {
            text.push_str(&format!(" ({})", self.mode.arg()));
        }
        if self.tls.is_some() {
            text.push_str(" over HTTPS");
        }
        text
    }
}

/// One service of a chain as a test describes it.
#[derive(Debug, Clone)]
pub struct Hop {
    pub interpreter: Interpreter,
    pub server: Server,
    /// The client it calls its downstream with (ignored for the leaf, required otherwise).
    pub client: Option<Client>,
    pub mode: AsyncMode,
}

impl Hop {
    pub fn new(interpreter: &Interpreter, server: Server) -> Self {
        Self { interpreter: interpreter.clone(), server, client: None, mode: AsyncMode::Direct }
    }

    pub fn calling(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }

    pub fn mode(mut self, mode: AsyncMode) -> Self {
        self.mode = mode;
        self
    }
}

/// A running service of a chain.
pub struct Service {
    /// "A", "B" or "C".
    pub label: &'static str,
    pub server: PythonServer,
}

impl Service {
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// Its own pid and its workers'.
    pub fn pids(&self) -> Vec<u32> {
        self.server.pids()
    }
}

/// A running A → B → C chain; its processes are killed on drop.
pub struct Chain {
    /// A, B, C in call order.
    services: Vec<Service>,
    tls: Option<TlsFiles>,
}

impl Chain {
    /// Starts the chain `hops` (A, B, C) with `agent` running, leaf first, and waits until the
    /// agent tracks every process of every service. With `tls`, every service serves HTTPS and
    /// its client trusts only the test CA.
    pub fn start(agent: &mut Agent, hops: [Hop; 3], tls: Option<TlsFiles>) -> Result<Self> {
        let chain = Self::launch(hops, tls)?;
        chain.wait_tracked(agent)?;
        Ok(chain)
    }

    /// Starts the chain `hops` (A, B, C), leaf first, with no agent looking.
    pub fn launch(hops: [Hop; 3], tls: Option<TlsFiles>) -> Result<Self> {
        const LABELS: [&str; 3] = ["A", "B", "C"];
        let scheme = if tls.is_some() { "https" } else { "http" };
        let paths = tls.as_ref().map(|t| TlsPaths { ca: t.ca.clone(), cert: t.cert.clone(), key: t.key.clone() });
        let mut started: Vec<Service> = Vec::new();
        for (index, hop) in hops.iter().enumerate().rev() {
            let downstream = started.last().map(|next| format!("{scheme}://127.0.0.1:{}", next.port()));
            if downstream.is_some() && hop.client.is_none() {
                bail!("test bug: service {} calls a downstream service but has no client", LABELS[index]);
            }
            let config = ServiceConfig {
                server: hop.server,
                downstream,
                client: hop.client,
                mode: hop.mode,
                tls: paths.clone(),
            };
            let server = PythonServer::start(&hop.interpreter, ServerProgram::Chain(config))
                .with_context(|| format!("starting service {}", LABELS[index]))?;
            started.push(Service { label: LABELS[index], server });
        }
        started.reverse();
        Ok(Self { services: started, tls })
    }

    /// Waits until `agent` tracks every process of every service.
    pub fn wait_tracked(&self, agent: &mut Agent) -> Result<()> {
        for service in &self.services {
            for pid in service.server.pids() {
                agent.wait_tracking(pid).with_context(|| {
                    format!(
                        "service {} ({}): waiting for the agent to track pid {pid}",
                        service.label,
                        service.server.describe()
                    )
                })?;
            }
        }
        Ok(())
    }

    pub fn services(&self) -> &[Service] {
        &self.services
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// What the trace checks need to know.
    pub fn layout(&self) -> ChainLayout {
        let services = self
            .services
            .iter()
            .map(|service| ServiceIdentity {
                label: service.label.to_owned(),
                pids: service.pids(),
                port: service.port(),
                runtime_version: service.server.interpreter().version.clone(),
            })
            .collect();
        ChainLayout { services, scheme: self.scheme() }
    }

    /// One line per service, for messages.
    pub fn describe(&self) -> String {
        self.services.iter().map(|s| format!("  {}: {}\n", s.label, s.server.describe())).collect()
    }

    /// The last lines each service printed, for failure messages.
    pub fn outputs(&self) -> String {
        let mut text = String::new();
        for service in &self.services {
            let output = service.server.output();
            let lines: Vec<&str> = output.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            text.push_str(&format!("--- service {} output, last {} lines ---\n", service.label, tail.len()));
            for line in tail {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }

    /// The request ids `<prefix>0`, `<prefix>1`, ...
    pub fn ids(prefix: &str, count: usize) -> Vec<String> {
        (0..count).map(|n| format!("{prefix}{n}")).collect()
    }

    /// Sends `GET /chain/<id>?token=<secret>` to A for each id, one after the other, each on its
    /// own connection.
    pub fn send_sequential(&self, ids: &[String]) -> Vec<Sent> {
        ids.iter().map(|id| self.send(id)).collect()
    }

    /// Sends all requests at once, one thread and connection each, released together.
    pub fn send_concurrent(&self, ids: &[String]) -> Vec<Sent> {
        let barrier = Barrier::new(ids.len());
        thread::scope(|scope| {
            let handles: Vec<_> = ids
                .iter()
                .map(|id| {
                    let barrier = &barrier;
                    scope.spawn(move || {
                        barrier.wait();
                        self.send(id)
                    })
                })
                .collect();
            handles
                .into_iter()
                .zip(ids)
                .map(|(handle, id)| {
                    handle.join().unwrap_or_else(|_| Sent { id: id.clone(), result: Err("sender panicked".into()) })
                })
                .collect()
        })
    }

    /// Sends one request to A and checks the answer came from C.
    fn send(&self, id: &str) -> Sent {
        let target = format!("{}?token={}", chain_path(id), secret(id));
        let request = Request::get(&target);
        let a = &self.services[0];
        let leaf_port = self.services[self.services.len() - 1].port();
        let sent_at = now_unix_nanos();
        let answer = match &self.tls {
            None => HttpConnection::connect(a.port())
                .and_then(|mut connection| connection.send(&request))
                .map(|response| (response.status, response.version, response.body)),
            Some(tls) => curl_get(&format!("https://127.0.0.1:{}{target}", a.port()), tls),
        };
        let received_at = now_unix_nanos();
        let expected_body = format!("chain {id} ends at port {leaf_port}\n");
        let result = match answer {
            Err(error) => Err(format!("GET {target} to A failed: {error:#}")),
            Ok((status, _, body)) if status != 200 || body != expected_body.as_bytes() => Err(format!(
                "GET {target} to A answered {status} {:?}, expected 200 {expected_body:?}",
                String::from_utf8_lossy(&body)
            )),
            Ok((status, version, _)) => Ok(Exchange {
                request,
                status,
                protocol_version: version.trim_start_matches("HTTP/").to_owned(),
                sent_at,
                received_at,
                connection: 0,
            }),
        };
        Sent { id: id.to_owned(), result }
    }

    /// Checks the spans against the requests sent (see the module documentation).
    pub fn expect_traces(&self, verdict: &mut Verdict, spans: &[Span], sent: &[Sent]) {
        expect_traces(verdict, &self.layout(), spans, sent);
        if !verdict.is_clean() {
            verdict.add_context(format!("chain:\n{}", self.describe()));
            verdict.add_context(self.outputs());
        }
    }
}

/// The requests a chain test sends to A: first `sequential` ones one after the other, then
/// `concurrent` ones all at once.
#[derive(Debug, Clone, Copy)]
pub struct Traffic {
    pub sequential: usize,
    pub concurrent: usize,
}

impl Traffic {
    pub fn sequential(count: usize) -> Self {
        Self { sequential: count, concurrent: 0 }
    }

    pub fn concurrent(count: usize) -> Self {
        Self { sequential: 0, concurrent: count }
    }
}

/// How long the spans of every request may take to reach the store while the agent runs.
pub const SPANS_TIMEOUT: Duration = Duration::from_secs(5);

/// A whole chain test: a fresh store and agent, the chain `hops` (over HTTPS with `tls`), the
/// `traffic`, then the traces checked. The test waits (up to [`SPANS_TIMEOUT`]) until the store
/// holds at least five spans per request while the agent runs, then stops the agent (which must
/// exit cleanly and flushes the rest) and reads every span once.
pub fn trace_chain(hops: [Hop; 3], tls: Option<TlsFiles>, traffic: Traffic) -> Result<()> {
    require_ebpf_host()?;
    let store = Store::new()?;
    let mut verdict = Verdict::new();
    let mut agent = Agent::start(&store)?;
    let chain = Chain::start(&mut agent, hops, tls)?;
    let mut sent = chain.send_sequential(&Chain::ids("s", traffic.sequential));
    sent.extend(chain.send_concurrent(&Chain::ids("c", traffic.concurrent)));

    let expected = sent.len() * spans_per_request(chain.services.len());
    verdict.step("counting spans while the agent runs", store.poll_span_count(SPANS_TIMEOUT, expected));
    let log = agent.log().clone();
    verdict.step("stopping the agent", agent.stop());
    if let Some(spans) = verdict.step("reading the store", store.spans()) {
        chain.expect_traces(&mut verdict, &spans, &sent);
    }
    verdict.finish(&log_context("agent", &log))
}

/// A chain test on services that ran before the agent: the chain `hops` starts with no agent,
/// `warm` requests fill its clients' connection pools, then the agent starts and the traces of
/// the `traffic` that follows must be complete, as in [`trace_chain`].
pub fn trace_warm_chain(hops: [Hop; 3], tls: Option<TlsFiles>, warm: Traffic, traffic: Traffic) -> Result<()> {
    require_ebpf_host()?;
    let store = Store::new()?;
    let mut verdict = Verdict::new();
    let chain = Chain::launch(hops, tls)?;
    let mut warming = chain.send_sequential(&Chain::ids("w", warm.sequential));
    warming.extend(chain.send_concurrent(&Chain::ids("wc", warm.concurrent)));
    for failed in warming.iter().filter_map(|sent| sent.result.as_ref().err()) {
        verdict.problem(format!("warming the pools before the agent: {failed}"));
    }
    let mut agent = Agent::start(&store)?;
    chain.wait_tracked(&mut agent)?;
    let mut sent = chain.send_sequential(&Chain::ids("s", traffic.sequential));
    sent.extend(chain.send_concurrent(&Chain::ids("c", traffic.concurrent)));

    let expected = sent.len() * spans_per_request(chain.services.len());
    verdict.step("counting spans while the agent runs", store.poll_span_count(SPANS_TIMEOUT, expected));
    let log = agent.log().clone();
    verdict.step("stopping the agent", agent.stop());
    if let Some(spans) = verdict.step("reading the store", store.spans()) {
        chain.expect_traces(&mut verdict, &spans, &sent);
    }
    verdict.finish(&log_context("agent", &log))
}

/// `curl` for HTTPS requests (the test's own client is plain TCP; curl is not Python, so the
/// agent does not trace it). Returns (status, "HTTP/1.1", body).
fn curl_get(url: &str, tls: &TlsFiles) -> Result<(u16, String, Vec<u8>)> {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--http1.1", "--max-time"])
        .arg(IO_TIMEOUT.as_secs().to_string())
        .arg("--cacert")
        .arg(&tls.ca)
        .args(["--write-out", "\n%{http_code} %{http_version}", url])
        .output()
        .context("running curl (the HTTPS tests need it: `cargo xtask setup`)")?;
    if !output.status.success() {
        bail!("curl {url}: {} {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    let stdout = output.stdout;
    let split = stdout.iter().rposition(|&b| b == b'\n').context("curl printed no status")?;
    let trailer = String::from_utf8_lossy(&stdout[split + 1..]).into_owned();
    let (status, version) = trailer.split_once(' ').context("curl printed no status")?;
    let status = status.parse().with_context(|| format!("curl printed status {status:?}"))?;
    Ok((status, format!("HTTP/{version}"), stdout[..split].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_arguments() {
        let config = ServiceConfig {
            server: Server::Uvicorn,
            downstream: Some("http://127.0.0.1:9".into()),
            client: Some(Client::HttpxAsync),
            mode: AsyncMode::Gather,
            tls: None,
        };
        assert_eq!(
            config.arguments().join(" "),
            "--server uvicorn --downstream http://127.0.0.1:9 --client httpx-async --async-mode gather"
        );
        assert_eq!(config.describe(), "chain_service.py uvicorn + httpx-async (gather)");
    }
}
