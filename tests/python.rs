//! Python interpreters and the test servers run under them.
//!
//! [`Interpreter`] finds an interpreter (a pyenv build under `$(pyenv root)/versions/X`, or
//! Debian's `/usr/bin/python3.11`) and asks it for its exact version, which the spans'
//! `process.runtime.version` must start with. A missing interpreter is an error, never a skip.
//!
//! [`PythonServer`] runs one of the [`ServerProgram`]s on a free port picked in Rust (bind port 0,
//! read it, close), waits until the port accepts connections, and kills the process on drop. Its
//! stdout/stderr are captured (which also keeps request logs out of the test output) and shown if
//! it fails to start. A program that forks workers (gunicorn) announces each as `WORKER pid=N`;
//! the server waits for all of them, reports them in [`PythonServer::pids`], and kills them too.
//!
//! [`PythonClient`] runs a one-shot traced client program: it announces `READY pid=N` and waits
//! for its input on stdin, so the test can wait for the agent to track it before it sends anything.
//!
//! The in-process SDK tests run `sdk_service.py` ([`ServerProgram::Sdk`], configured by an
//! [`SdkService`]) under [`Interpreter::sdk_venv`], the virtual environment `cargo xtask setup`
//! fills with OpenTelemetry's Python SDK and Scouter's `scouter-ml` (`tests/python/sdk-requirements.txt`).

use std::collections::HashSet;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::agent::wait_with_timeout;
use crate::chain::ServiceConfig;
use crate::env::{python_dir, workspace_root};
use crate::lines::LineLog;

/// How long a test server may take to start listening.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);

/// The pyenv versions the project supports.
pub const PYENV_VERSIONS: [&str; 6] = ["3.8.18", "3.9.18", "3.10.13", "3.11.7", "3.12.1", "3.13.0"];

/// Debian's own interpreter: static, non-PIE, no libpython, with USDT probes.
pub const DEBIAN_PYTHON: &str = "/usr/bin/python3.11";

/// The SDK tests' virtual environment, under the tools directory ([`tools_dir`]); `cargo xtask
/// setup` makes it from pyenv's [`SDK_PYTHON_VERSION`] (keep both in step with
/// `xtask/src/setup/python.rs`).
pub const SDK_VENV: &str = "venvs/sdk";

/// The pyenv version the SDK tests' virtual environment is made from.
pub const SDK_PYTHON_VERSION: &str = "3.12.1";

/// The project-local tools directory, by xtask's rule: `$SCOUTER_TOOLS_DIR` (relative to the
/// workspace root unless absolute), else `<workspace>/target/tools`.
pub fn tools_dir() -> PathBuf {
    match std::env::var_os("SCOUTER_TOOLS_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target/tools"),
    }
}

/// A Python interpreter on this host.
#[derive(Debug, Clone)]
pub struct Interpreter {
    /// A short name for messages ("pyenv 3.8.18", "debian python3.11").
    pub label: String,
    /// The path the tests run.
    pub path: PathBuf,
    /// `platform.python_version()`, e.g. "3.11.2".
    pub version: String,
}

impl Interpreter {
    /// `$(pyenv root)/versions/VERSION/bin/python3`, which must report exactly `version`.
    pub fn pyenv(version: &str) -> Result<Self> {
        let path = pyenv_root().join("versions").join(version).join("bin/python3");
        let interpreter = Self::at(&format!("pyenv {version}"), &path)?;
        if interpreter.version != version {
            bail!("{} reports version {}, expected {version}", path.display(), interpreter.version);
        }
        Ok(interpreter)
    }

    /// Debian's `/usr/bin/python3.11`.
    pub fn debian() -> Result<Self> {
        Self::at("debian python3.11", Path::new(DEBIAN_PYTHON))
    }

    /// Every test interpreter: pyenv's [`PYENV_VERSIONS`], then Debian's python3.11.
    pub fn every() -> Result<Vec<Self>> {
        let mut all = PYENV_VERSIONS.iter().map(|version| Self::pyenv(version)).collect::<Result<Vec<_>>>()?;
        all.push(Self::debian()?);
        Ok(all)
    }

    /// The SDK tests' interpreter: `<tools dir>/venvs/sdk/bin/python3` (pyenv 3.12.1 with
    /// OpenTelemetry's Python SDK and `scouter-ml`), checked to import both SDKs.
    pub fn sdk_venv() -> Result<Self> {
        let venv = tools_dir().join(SDK_VENV);
        let path = venv.join("bin/python3");
        if !path.is_file() {
            bail!(
                "the SDK tests' virtual environment is missing: no {} (run `cargo xtask setup`, which makes it \
                 from pyenv {SDK_PYTHON_VERSION} with tests/python/sdk-requirements.txt)",
                path.display()
            );
        }
        let interpreter = Self::at(&format!("sdk venv (pyenv {SDK_PYTHON_VERSION})"), &path)?;
        let output = Command::new(&path)
            .args(["-c", "import flask, requests, opentelemetry.sdk.trace, scouter.tracing"])
            .output()
            .with_context(|| format!("running {}", path.display()))?;
        if !output.status.success() {
            bail!(
                "the SDK tests' virtual environment {} lacks its packages (run `cargo xtask setup`):\n{}",
                venv.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(interpreter)
    }

    /// The interpreter at `path`, with its version asked from it.
    pub fn at(label: &str, path: &Path) -> Result<Self> {
        if !path.is_file() {
            bail!("interpreter {label} not found at {} (run `cargo xtask setup`)", path.display());
        }
        let version = query_version(path)?;
        Ok(Self { label: label.to_owned(), path: path.to_owned(), version })
    }

    /// The resolved executable (what /proc/PID/exe points to).
    pub fn canonical_path(&self) -> PathBuf {
        std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone())
    }
}

/// `pyenv root`, else `$PYENV_ROOT`, else `/root/.pyenv`.
pub fn pyenv_root() -> PathBuf {
    let from_command = Command::new("pyenv")
        .arg("root")
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .filter(|root| !root.is_empty());
    from_command
        .or_else(|| std::env::var("PYENV_ROOT").ok().filter(|root| !root.is_empty()))
        .map_or_else(|| PathBuf::from("/root/.pyenv"), PathBuf::from)
}

fn query_version(path: &Path) -> Result<String> {
    let output = Command::new(path)
        .args(["-c", "import platform; print(platform.python_version())"])
        .output()
        .with_context(|| format!("running {}", path.display()))?;
    if !output.status.success() {
        bail!("{} failed to report its version: {}", path.display(), String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The programs the tests serve.
#[derive(Debug, Clone)]
pub enum ServerProgram {
    /// `keepalive_server.py`: HTTP/1.1 with keep-alive; `/status/NNN`; POST answers the length.
    KeepAlive,
    /// `python -m http.server` serving `tests/python/www`: HTTP/1.0, one response per connection.
    HttpServerModule,
    /// `sdk_context_shapes.py`: OpenTelemetry's context objects in the SDK's shape, made current
    /// around a call to the echo server on `leaf_port` (no SDK needed: it runs on every
    /// interpreter).
    SdkContextShapes { leaf_port: u16 },
    /// `exit_before_response.py`: reads one request, then `os._exit(3)` without responding.
    ExitBeforeResponse,
    /// `echo_server.py`: answers every request with the raw bytes it received (head and body).
    Echo,
    /// `chain_service.py`: one service of an HTTP call chain (see [`crate::chain`]).
    Chain(ServiceConfig),
    /// `stack_service.py --server <server>`: a handler that calls `downstream` itself.
    Stack { server: &'static str, downstream: String },
    /// `function_service.py`, imported as the module `function_service` (through `-c`, so its
    /// functions do not belong to `__main__`): Flask on the port, FastAPI on `async_port`.
    Function { async_port: u16 },
    /// `sdk_service.py --mode MODE`: Flask with an in-process SDK exporting its own spans (run it
    /// under [`Interpreter::sdk_venv`]); its configuration goes in the environment.
    Sdk(SdkService),
}

/// Which SDK `sdk_service.py` runs (its `--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdkMode {
    /// OpenTelemetry's SDK with the Flask and requests instrumentations: per `/work/<tag>` a
    /// SERVER span `GET /work/<tag>`, the INTERNAL span `work <tag>` and a CLIENT span `GET`,
    /// which puts `traceparent` on the downstream request.
    OtelAuto,
    /// OpenTelemetry's SDK, no instrumentation: only `work <tag>`, and no `traceparent` downstream
    /// unless [`SdkService::propagate`].
    OtelManual,
    /// Scouter's SDK (`scouter-ml`): `handle_work` (a `@tracer.span` function) and its child
    /// `work <tag>`, both INTERNAL, sent over Scouter's transport ([`ScouterTransport`]).
    Scouter,
    /// No SDK: a plain leaf (or a front to compare with).
    Plain,
}

impl SdkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OtelAuto => "otel-auto",
            Self::OtelManual => "otel-manual",
            Self::Scouter => "scouter",
            Self::Plain => "plain",
        }
    }
}

/// Where an SDK's OTLP exporter sends (in scouter mode: the optional exporter beside the transport).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Otlp {
    /// OTLP/gRPC in plaintext to an endpoint such as `http://127.0.0.1:4317`.
    Grpc(String),
    /// OTLP/HTTP protobuf to the full traces URL, such as `http://127.0.0.1:4318/v1/traces`.
    HttpProtobuf(String),
    /// OTLP/HTTP JSON to the full traces URL (scouter mode only: OTel's Python SDK has no JSON
    /// exporter).
    HttpJson(String),
}

/// How Scouter's SDK reaches Scouter: `HttpConfig()` or `GrpcConfig()`, which read the URI from
/// `SCOUTER_SERVER_URI` / `SCOUTER_GRPC_URI`. The SDK logs in when it starts (HTTP:
/// `GET /scouter/auth/login`; gRPC: `AuthService/Login`) and fails to start if that fails, so the
/// receiver must be up first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScouterTransport {
    /// `SCOUTER_SERVER_URI`, e.g. `http://127.0.0.1:4318`.
    Http(String),
    /// `SCOUTER_GRPC_URI`, e.g. `http://127.0.0.1:4317`.
    Grpc(String),
}

/// The configuration of one `sdk_service.py` ([`ServerProgram::Sdk`]), built with the methods
/// below and passed to the program as environment variables (documented in `sdk_service.py`).
///
/// Every mode serves `GET /work/<tag>` (one downstream call to `<downstream>/leaf/<tag>` inside
/// the span `work <tag>`, answered with the downstream's status and body), `GET /leaf/<tag>`
/// (JSON `{"tag", "port", "pid", "headers": [[name, value], ...]}`: every header as received,
/// repeats kept; see [`leaf_headers`]) and `GET /flush` (flushes the SDK; 200 "flushed" once done).
#[derive(Debug, Clone)]
pub struct SdkService {
    pub mode: SdkMode,
    /// `OTEL_SERVICE_NAME`; the program defaults to `sdk-<mode>`.
    pub service_name: Option<String>,
    /// `DOWNSTREAM_URL`: the base URL `/work/<tag>` calls (`<url>/leaf/<tag>`).
    pub downstream: Option<String>,
    /// The OTLP exporter; `None` exports no OTLP (in otel modes: only to the console, if asked).
    pub otlp: Option<Otlp>,
    /// Scouter's transport (scouter mode).
    pub scouter: Option<ScouterTransport>,
    /// `SDK_CONSOLE=1`: also print each span on stdout (otel modes: `SPAN {json}` lines).
    pub console: bool,
    /// `SDK_PROPAGATE=1`: otel-manual injects `traceparent` by hand; scouter adds the headers of
    /// `get_tracing_headers_from_current_span()` (`trace_id`, `span_id`, `is_sampled`: not W3C).
    pub propagate: bool,
    /// `SDK_SCHEDULE_DELAY_MS`: the batch processor's export delay.
    pub schedule_delay_ms: u32,
    /// `SDK_RESOURCE_PID=1`: `process.pid` in the SDK's resource (OTel: an int; Scouter: a string,
    /// through `OTEL_RESOURCE_ATTRIBUTES`). Neither SDK puts it there by default.
    pub resource_pid: bool,
    /// `SDK_SERVER=gthread` with `SDK_THREADS`: gunicorn, one gthread worker of this many threads
    /// (announced as a worker: its pid is the one that serves and exports).
    pub gthread: Option<u32>,
    /// `SDK_SERVER=asyncio`: an asyncio streams server (otel modes; `/work` and `/flush` only).
    pub asyncio: bool,
    /// More environment variables (e.g. `SCOUTER_USERNAME`, `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`),
    /// set last, so they win.
    pub env: Vec<(String, String)>,
}

impl SdkService {
    pub fn new(mode: SdkMode) -> Self {
        Self {
            mode,
            service_name: None,
            downstream: None,
            otlp: None,
            scouter: None,
            console: false,
            propagate: false,
            schedule_delay_ms: 200,
            resource_pid: false,
            gthread: None,
            asyncio: false,
            env: Vec::new(),
        }
    }

    /// otel-auto exporting to `otlp`.
    pub fn otel_auto(otlp: Otlp) -> Self {
        Self::new(SdkMode::OtelAuto).otlp(otlp)
    }

    /// otel-manual exporting to `otlp`.
    pub fn otel_manual(otlp: Otlp) -> Self {
        Self::new(SdkMode::OtelManual).otlp(otlp)
    }

    /// scouter mode over `transport`.
    pub fn scouter(transport: ScouterTransport) -> Self {
        Self { scouter: Some(transport), ..Self::new(SdkMode::Scouter) }
    }

    /// A leaf with no SDK.
    pub fn plain() -> Self {
        Self::new(SdkMode::Plain)
    }

    pub fn service_name(mut self, name: &str) -> Self {
        self.service_name = Some(name.to_owned());
        self
    }

    /// The base URL of the downstream, e.g. `http://127.0.0.1:PORT` ([`PythonServer::base_url`]).
    pub fn downstream(mut self, url: &str) -> Self {
        self.downstream = Some(url.to_owned());
        self
    }

    pub fn otlp(mut self, otlp: Otlp) -> Self {
        self.otlp = Some(otlp);
        self
    }

    /// Scouter's login: `SCOUTER_USERNAME` / `SCOUTER_PASSWORD` (the SDK's default is admin/admin).
    pub fn credentials(self, username: &str, password: &str) -> Self {
        self.env("SCOUTER_USERNAME", username).env("SCOUTER_PASSWORD", password)
    }

    pub fn console(mut self) -> Self {
        self.console = true;
        self
    }

    pub fn propagate(mut self) -> Self {
        self.propagate = true;
        self
    }

    pub fn resource_pid(mut self) -> Self {
        self.resource_pid = true;
        self
    }

    /// Serves with gunicorn's gthread worker of `threads` threads.
    pub fn gthread(mut self, threads: u32) -> Self {
        self.gthread = Some(threads);
        self
    }

    /// Serves on one asyncio event loop, every connection a task.
    pub fn asyncio(mut self) -> Self {
        self.asyncio = true;
        self
    }

    pub fn schedule_delay_ms(mut self, delay: u32) -> Self {
        self.schedule_delay_ms = delay;
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Adds several variables, e.g. `ScouterBackend::sdk_env()`.
    pub fn envs(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        self.env.extend(vars);
        self
    }

    /// A short name for messages.
    pub fn describe(&self) -> String {
        let name = self.service_name.as_deref().map(|name| format!(" {name}")).unwrap_or_default();
        format!("sdk_service.py --mode {}{name}", self.mode.as_str())
    }

    /// The variables `sdk_service.py` reads, in the order set.
    pub fn environment(&self) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = Vec::new();
        let mut set = |name: &str, value: &str| vars.push((name.to_owned(), value.to_owned()));
        if let Some(name) = &self.service_name {
            set("OTEL_SERVICE_NAME", name);
        }
        if let Some(url) = &self.downstream {
            set("DOWNSTREAM_URL", url);
        }
        match &self.otlp {
            None => set("OTEL_TRACES_EXPORTER", "none"),
            Some(otlp) => {
                let (protocol, endpoint) = match otlp {
                    Otlp::Grpc(endpoint) => ("grpc", endpoint),
                    Otlp::HttpProtobuf(url) => ("http/protobuf", url),
                    Otlp::HttpJson(url) => ("http/json", url),
                };
                set("OTEL_TRACES_EXPORTER", "otlp");
                set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", protocol);
                set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint);
            }
        }
        match &self.scouter {
            None => {}
            Some(ScouterTransport::Http(uri)) => {
                set("SCOUTER_TRANSPORT", "http");
                set("SCOUTER_SERVER_URI", uri);
            }
            Some(ScouterTransport::Grpc(uri)) => {
                set("SCOUTER_TRANSPORT", "grpc");
                set("SCOUTER_GRPC_URI", uri);
            }
        }
        if self.console {
            set("SDK_CONSOLE", "1");
        }
        if self.propagate {
            set("SDK_PROPAGATE", "1");
        }
        if self.resource_pid {
            set("SDK_RESOURCE_PID", "1");
        }
        set("SDK_SCHEDULE_DELAY_MS", &self.schedule_delay_ms.to_string());
        if self.asyncio {
            set("SDK_SERVER", "asyncio");
        }
        if let Some(threads) = self.gthread {
            set("SDK_SERVER", "gthread");
            set("SDK_THREADS", &threads.to_string());
        }
        vars.extend(self.env.iter().cloned());
        vars
    }
}

/// Whether an inherited variable could change what `sdk_service.py` or its SDKs do; such variables
/// are removed from its environment, so only its [`SdkService`] configures it.
fn configures_sdk(name: &str) -> bool {
    name.starts_with("OTEL_")
        || name.starts_with("SDK_")
        || name == "DOWNSTREAM_URL"
        || name == "LEAF_DELAY_MS"
        || matches!(
            name,
            "SCOUTER_TRANSPORT"
                | "SCOUTER_SERVER_URI"
                | "SCOUTER_GRPC_URI"
                | "SCOUTER_USERNAME"
                | "SCOUTER_PASSWORD"
                | "SCOUTER_AUTH_TOKEN"
        )
}

/// The headers a `/leaf/<tag>` answer lists, as (name, value) pairs in the order received.
pub fn leaf_headers(body: &[u8]) -> Result<Vec<(String, String)>> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .with_context(|| format!("a /leaf answer is not JSON: {:?}", String::from_utf8_lossy(body)))?;
    let headers = value.get("headers").and_then(|headers| headers.as_array()).context("no \"headers\" list")?;
    headers
        .iter()
        .map(|pair| match pair.as_array().map(Vec::as_slice) {
            Some([name, value]) => match (name.as_str(), value.as_str()) {
                (Some(name), Some(value)) => Ok((name.to_owned(), value.to_owned())),
                _ => bail!("a header pair is not two strings: {pair}"),
            },
            _ => bail!("a header is not a [name, value] pair: {pair}"),
        })
        .collect()
}

impl ServerProgram {
    fn arguments(&self, port: u16) -> Vec<String> {
        let dir = python_dir();
        let script = |name: &str| dir.join(name).display().to_string();
        match self {
            Self::KeepAlive => vec![script("keepalive_server.py"), port.to_string()],
            Self::ExitBeforeResponse => vec![script("exit_before_response.py"), port.to_string()],
            Self::Echo => vec![script("echo_server.py"), port.to_string()],
            Self::Chain(config) => {
                let mut arguments = vec![script("chain_service.py"), "--port".into(), port.to_string()];
                arguments.extend(config.arguments());
                arguments
            }
            Self::Stack { server, downstream } => vec![
                script("stack_service.py"),
                "--server".into(),
                (*server).into(),
                "--port".into(),
                port.to_string(),
                "--downstream".into(),
                downstream.clone(),
            ],
            Self::Function { async_port } => vec![
                "-c".into(),
                "import sys; sys.path.insert(0, sys.argv[1]); import function_service; \
                 sys.exit(function_service.main(sys.argv[2:]))"
                    .into(),
                dir.canonicalize().unwrap_or_else(|_| dir.clone()).display().to_string(),
                "--port".into(),
                port.to_string(),
                "--async-port".into(),
                async_port.to_string(),
            ],
            Self::Sdk(config) => vec![
                script("sdk_service.py"),
                "--mode".into(),
                config.mode.as_str().into(),
                "--port".into(),
                port.to_string(),
            ],
            Self::SdkContextShapes { leaf_port } => {
                vec![script("sdk_context_shapes.py"), port.to_string(), leaf_port.to_string()]
            }
            Self::HttpServerModule => vec![
                "-m".into(),
                "http.server".into(),
                port.to_string(),
                "--bind".into(),
                "127.0.0.1".into(),
                "--directory".into(),
                dir.join("www").display().to_string(),
            ],
        }
    }

    /// Worker processes the program forks and announces (`WORKER pid=N` on stdout).
    fn workers(&self) -> usize {
        match self {
            Self::Chain(config) => config.server.workers(),
            Self::Sdk(config) => usize::from(config.gthread.is_some()),
            _ => 0,
        }
    }

    /// Environment variables the program gets (besides the inherited ones).
    fn environment(&self) -> Vec<(String, String)> {
        match self {
            Self::Sdk(config) => config.environment(),
            _ => Vec::new(),
        }
    }

    /// Whether the program prints `READY pid=N` once set up (the server waits for it).
    fn announces_ready(&self) -> bool {
        matches!(self, Self::Sdk(_) | Self::SdkContextShapes { .. })
    }

    /// A short name for messages.
    pub fn name(&self) -> String {
        match self {
            Self::Chain(config) => config.describe(),
            Self::Sdk(config) => config.describe(),
            other => format!("{other:?}"),
        }
    }
}

/// A running test server; killed on drop.
pub struct PythonServer {
    child: Child,
    port: u16,
    interpreter: Interpreter,
    program: ServerProgram,
    output: LineLog,
    /// Pids of the worker processes it forked (gunicorn), in the order they announced.
    workers: Vec<u32>,
    exited: Option<ExitStatus>,
}

impl PythonServer {
    /// Starts `program` under `interpreter` on a free port and waits until it accepts connections.
    pub fn start(interpreter: &Interpreter, program: ServerProgram) -> Result<Self> {
        let port = free_port()?;
        let mut command = Command::new(&interpreter.path);
        if matches!(program, ServerProgram::Sdk(_)) {
            for (name, _) in std::env::vars_os() {
                if name.to_str().is_some_and(configures_sdk) {
                    command.env_remove(&name);
                }
            }
        }
        let mut child = command
            .args(program.arguments(port))
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .envs(program.environment())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} ({})", interpreter.path.display(), interpreter.label))?;
        let output = LineLog::new();
        output.follow(child.stdout.take().expect("stdout is piped"));
        output.follow(child.stderr.take().expect("stderr is piped"));
        let mut server =
            Self { child, port, interpreter: interpreter.clone(), program, output, workers: Vec::new(), exited: None };
        server.wait_listening()?;
        server.wait_ready()?;
        server.wait_workers()?;
        Ok(server)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn interpreter(&self) -> &Interpreter {
        &self.interpreter
    }

    /// Every process of the server: its own pid, then its workers'.
    pub fn pids(&self) -> Vec<u32> {
        std::iter::once(self.pid()).chain(self.workers.iter().copied()).collect()
    }

    /// A one-line description for messages.
    pub fn describe(&self) -> String {
        let workers = if self.workers.is_empty() { String::new() } else { format!(", workers {:?}", self.workers) };
        format!(
            "{} under {} (pid {}{workers}, port {})",
            self.program.name(),
            self.interpreter.label,
            self.pid(),
            self.port
        )
    }

    /// The server's captured output.
    pub fn output(&self) -> String {
        self.output.text()
    }

    /// Polls until a TCP connection to the port succeeds. The probe connection sends nothing.
    fn wait_listening(&mut self) -> Result<()> {
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            if TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                self.exited = Some(status);
                self.output.wait_closed(Duration::from_secs(2));
                bail!("{} exited ({status}) before listening:\n{}", self.describe(), self.output());
            }
            if Instant::now() >= deadline {
                bail!("{} did not listen within {LISTEN_TIMEOUT:?}:\n{}", self.describe(), self.output());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// For programs that announce it, waits for their own `READY pid=N` line.
    fn wait_ready(&mut self) -> Result<()> {
        if !self.program.announces_ready() {
            return Ok(());
        }
        let pid = self.pid();
        let ready = self.output.wait_for(LISTEN_TIMEOUT, |line| announced_pid(line, "READY") == Some(pid));
        if ready.is_err() {
            bail!("{} did not print READY within {LISTEN_TIMEOUT:?}:\n{}", self.describe(), self.output());
        }
        Ok(())
    }

    /// Waits until every worker the program forks has announced itself (`WORKER pid=N`).
    fn wait_workers(&mut self) -> Result<()> {
        let expected = self.program.workers();
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        while self.workers.len() < expected {
            let known = self.workers.clone();
            let found = self.output.wait_for(deadline.saturating_duration_since(Instant::now()), |line| {
                announced_pid(line, "WORKER").is_some_and(|pid| !known.contains(&pid))
            });
            match found {
                Ok(line) => self.workers.extend(announced_pid(&line, "WORKER")),
                Err(_) => bail!(
                    "{} announced {} of its {expected} workers within {LISTEN_TIMEOUT:?}:\n{}",
                    self.describe(),
                    self.workers.len(),
                    self.output()
                ),
            }
        }
        Ok(())
    }

    /// Sends SIGTERM and waits for the exit; `sdk_service.py` shuts its SDK down first (exporting
    /// what it still holds), prints `STOPPED pid=N` and exits 0.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if self.exited.is_none() {
            crate::agent::signal(self.pid(), libc::SIGTERM)?;
        }
        self.wait_exit(timeout)
    }

    /// Waits for the server to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if self.exited.is_none() {
            self.exited = wait_with_timeout(&mut self.child, timeout);
        }
        self.exited.ok_or_else(|| anyhow!("{} still runs after {timeout:?}", self.describe()))
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        // Workers first: killed alone, a gunicorn master leaves them running until they notice.
        for &worker in &self.workers {
            let _ = crate::agent::signal(worker, libc::SIGKILL);
        }
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The pid in a program's announcement line, `TAG pid=N ...` (e.g. `WORKER pid=42`).
pub fn announced_pid(line: &str, tag: &str) -> Option<u32> {
    let fields = line.strip_prefix(tag)?.strip_prefix(' ')?;
    fields.split_whitespace().find_map(|field| field.strip_prefix("pid="))?.parse().ok()
}

/// A traced one-shot Python program (`raw_client.py`, `client_calls.py`).
///
/// The program prints `READY pid=N` and then waits for one line on stdin, so the test can wait
/// for the agent to track it before it does anything; it prints its results on stdout, then
/// `DONE`, and exits. Killed on drop if still running.
pub struct PythonClient {
    child: Child,
    script: String,
    interpreter: Interpreter,
    stdin: Option<ChildStdin>,
    stdout: LineLog,
    stderr: LineLog,
    exited: Option<ExitStatus>,
}

impl PythonClient {
    /// Starts `tests/python/SCRIPT ARGS...` under `interpreter` and waits for its `READY` line.
    pub fn start(interpreter: &Interpreter, script: &str, args: &[String]) -> Result<Self> {
        let mut child = Command::new(&interpreter.path)
            .arg(python_dir().join(script))
            .args(args)
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {script} under {}", interpreter.label))?;
        let (stdout, stderr) = (LineLog::new(), LineLog::new());
        stdout.follow(child.stdout.take().expect("stdout is piped"));
        stderr.follow(child.stderr.take().expect("stderr is piped"));
        let stdin = child.stdin.take();
        let client = Self {
            child,
            script: script.to_owned(),
            interpreter: interpreter.clone(),
            stdin,
            stdout,
            stderr,
            exited: None,
        };
        let ready = client.stdout.wait_for(LISTEN_TIMEOUT, |line| announced_pid(line, "READY").is_some());
        if ready.is_err() {
            bail!("{} did not print READY within {LISTEN_TIMEOUT:?}\n{}", client.describe(), client.output());
        }
        Ok(client)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn interpreter(&self) -> &Interpreter {
        &self.interpreter
    }

    /// A one-line description for messages.
    pub fn describe(&self) -> String {
        format!("{} under {} (pid {})", self.script, self.interpreter.label, self.pid())
    }

    /// Its stdout and stderr so far, for messages.
    pub fn output(&self) -> String {
        format!("--- stdout ---\n{}\n--- stderr ---\n{}\n--- end ---", self.stdout.text(), self.stderr.text())
    }

    /// Sends `input` as one line, waits for `DONE` and a successful exit, and returns the lines
    /// printed between `READY` and `DONE`.
    pub fn run(&mut self, input: &str, timeout: Duration) -> Result<Vec<String>> {
        let mut stdin = self.stdin.take().context("the input was already sent")?;
        stdin.write_all(format!("{input}\n").as_bytes()).with_context(|| format!("writing to {}", self.describe()))?;
        drop(stdin);
        self.exited = wait_with_timeout(&mut self.child, timeout);
        match self.exited {
            None => bail!("{} did not finish within {timeout:?}\n{}", self.describe(), self.output()),
            Some(status) if !status.success() => bail!("{} exited with {status}\n{}", self.describe(), self.output()),
            Some(_) => {}
        }
        self.stdout.wait_closed(Duration::from_secs(5));
        let text = self.stdout.text();
        let lines: Vec<&str> = text.lines().collect();
        let Some(done) = lines.iter().position(|line| *line == "DONE") else {
            bail!("{} exited without printing DONE\n{}", self.describe(), self.output());
        };
        Ok(lines[..done]
            .iter()
            .filter(|line| announced_pid(line, "READY").is_none())
            .map(|l| (*l).to_owned())
            .collect())
    }
}

impl Drop for PythonClient {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Ports already handed out in this process, so two servers of one test never share a port
/// (the store would then mix their spans) even if the kernel recycles one.
static GIVEN_PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A TCP port on 127.0.0.1 that was free a moment ago and was not handed out before.
pub fn free_port() -> Result<u16> {
    let mut given = GIVEN_PORTS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for _ in 0..100 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port();
        if given.insert(port) {
            return Ok(port);
        }
    }
    bail!("no fresh free port after 100 attempts")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{HttpConnection, Request};

    #[test]
    fn every_supported_interpreter_is_installed() {
        for version in PYENV_VERSIONS {
            Interpreter::pyenv(version).unwrap();
        }
        assert!(Interpreter::debian().unwrap().version.starts_with("3.11."));
    }

    #[test]
    fn free_ports_are_never_repeated() {
        let ports: HashSet<u16> = (0..20).map(|_| free_port().unwrap()).collect();
        assert_eq!(ports.len(), 20);
    }

    #[test]
    fn keepalive_server_serves_several_requests_on_one_connection() {
        let server = PythonServer::start(&Interpreter::pyenv("3.8.18").unwrap(), ServerProgram::KeepAlive).unwrap();
        let mut connection = HttpConnection::connect(server.port()).unwrap();
        let ok = connection.send(&Request::get("/a?b=c")).unwrap();
        assert_eq!(
            (ok.version.as_str(), ok.status, ok.body.as_slice()),
            ("HTTP/1.1", 200, &b"hello from /a?b=c\n"[..])
        );
        let echo = connection.send(&Request::post("/echo", vec![b'x'; 3000])).unwrap();
        assert_eq!((echo.status, echo.body.as_slice()), (200, &b"received 3000 bytes\n"[..]));
        assert_eq!(connection.send(&Request::get("/status/500")).unwrap().status, 500);
        assert_eq!(connection.send(&Request::post("/status/503", "x")).unwrap().status, 503);
        assert!(!connection.closed_by_server(Duration::from_millis(100)).unwrap());
    }

    #[test]
    fn http_server_module_answers_http10_and_closes() {
        let server = PythonServer::start(&Interpreter::debian().unwrap(), ServerProgram::HttpServerModule).unwrap();
        let mut connection = HttpConnection::connect(server.port()).unwrap();
        let response = connection.send(&Request::get("/hello.txt").version("HTTP/1.0")).unwrap();
        assert_eq!((response.version.as_str(), response.status), ("HTTP/1.0", 200));
        assert_eq!(response.body, b"hello from the static directory\n");
        assert!(connection.closed_by_server(Duration::from_secs(5)).unwrap());
        let head = HttpConnection::connect(server.port())
            .unwrap()
            .send(&Request::new("HEAD", "/hello.txt").version("HTTP/1.0"))
            .unwrap();
        assert!(head.body.is_empty() && head.status == 200);
        let post = Request::new("POST", "/hello.txt").version("HTTP/1.0");
        assert_eq!(HttpConnection::connect(server.port()).unwrap().send(&post).unwrap().status, 501);
    }

    #[test]
    fn exit_server_dies_without_responding() {
        let mut server =
            PythonServer::start(&Interpreter::pyenv("3.13.0").unwrap(), ServerProgram::ExitBeforeResponse).unwrap();
        let mut connection = HttpConnection::connect(server.port()).unwrap();
        assert!(connection.send(&Request::post("/in-flight", "payload")).is_err());
        assert_eq!(server.wait_exit(Duration::from_secs(10)).unwrap().code(), Some(3));
    }

    /// One GET on a fresh connection.
    fn get(port: u16, path: &str) -> crate::http::Response {
        HttpConnection::connect(port).unwrap().send(&Request::get(path)).unwrap()
    }

    fn traceparents(headers: &[(String, String)]) -> Vec<String> {
        headers.iter().filter(|(name, _)| name.eq_ignore_ascii_case("traceparent")).map(|(_, v)| v.clone()).collect()
    }

    use crate::backends::AttrValue;

    fn sdk_server(python: &Interpreter, config: SdkService) -> PythonServer {
        PythonServer::start(python, ServerProgram::Sdk(config)).unwrap()
    }

    #[test]
    fn sdk_leaf_lists_repeated_headers_separately() {
        let leaf = sdk_server(&Interpreter::sdk_venv().unwrap(), SdkService::plain());
        let request = Request::get("/leaf/dup").header("traceparent", "00-a-b-01").header("traceparent", "00-c-d-01");
        let response = HttpConnection::connect(leaf.port()).unwrap().send(&request).unwrap();
        assert_eq!(response.status, 200, "{}", leaf.output());
        assert_eq!(traceparents(&leaf_headers(&response.body).unwrap()), ["00-a-b-01", "00-c-d-01"]);
    }

    #[test]
    fn sdk_otel_auto_exports_a_linked_trace_and_sends_one_traceparent() {
        use crate::backends::otlp::OtlpReceiver;
        use crate::backends::Backend;
        let python = Interpreter::sdk_venv().unwrap();
        let receiver = OtlpReceiver::start().unwrap();
        let leaf = sdk_server(&python, SdkService::plain());
        let config = SdkService::otel_auto(Otlp::Grpc(receiver.grpc_endpoint()))
            .service_name("sdk-front")
            .downstream(&leaf.base_url());
        let mut front = sdk_server(&python, config);
        let work = get(front.port(), "/work/t1");
        assert_eq!(work.status, 200, "{}", front.output());
        let sent = traceparents(&leaf_headers(&work.body).unwrap());
        assert_eq!(sent.len(), 1, "the leaf got {sent:?}");
        assert_eq!(get(front.port(), "/flush").status, 200, "{}", front.output());

        let spans = receiver.recorder().wait_for_spans(3, Duration::from_secs(10)).unwrap();
        let find = |name: &str, kind: i32| {
            spans.iter().find(|s| s.name == name && s.kind == kind).unwrap_or_else(|| panic!("no {name}: {spans:#?}"))
        };
        let (server, work, client) = (find("GET /work/<tag>", 2), find("work t1", 1), find("GET", 3));
        assert_eq!(spans.len(), 3, "{spans:#?}");
        assert!(spans.iter().all(|s| s.trace_id == server.trace_id && s.service_name() == Some("sdk-front")));
        assert_eq!(
            (work.parent_span_id.as_deref(), client.parent_span_id.as_deref()),
            (Some(&*server.span_id), Some(&*work.span_id))
        );
        let fields: Vec<&str> = sent[0].split('-').collect();
        assert_eq!((fields[1], fields[2]), (&*client.trace_id, &*client.span_id), "traceparent {}", sent[0]);
        assert!(front.terminate(Duration::from_secs(10)).unwrap().success(), "{}", front.output());
    }

    #[test]
    fn sdk_otel_manual_exports_its_span_over_http_and_sends_no_traceparent() {
        use crate::backends::otlp::OtlpReceiver;
        use crate::backends::Backend;
        let python = Interpreter::sdk_venv().unwrap();
        let receiver = OtlpReceiver::start().unwrap();
        let leaf = sdk_server(&python, SdkService::plain());
        let config = SdkService::otel_manual(Otlp::HttpProtobuf(receiver.traces_url())).downstream(&leaf.base_url());
        let mut front = sdk_server(&python, config.schedule_delay_ms(60_000).resource_pid());
        let work = get(front.port(), "/work/m1");
        assert_eq!(work.status, 200, "{}", front.output());
        assert_eq!(traceparents(&leaf_headers(&work.body).unwrap()), Vec::<String>::new());
        // No flush: the span leaves on SIGTERM, long before the 60 s export delay.
        assert!(front.terminate(Duration::from_secs(10)).unwrap().success(), "{}", front.output());
        let spans = receiver.recorder().wait_for_spans(1, Duration::from_secs(5)).unwrap();
        assert_eq!(spans.iter().map(|s| (s.name.as_str(), s.kind)).collect::<Vec<_>>(), [("work m1", 1)]);
        assert_eq!(spans[0].service_name(), Some("sdk-otel-manual"));
        assert_eq!(spans[0].resource_attr("process.pid").and_then(AttrValue::as_i64), Some(i64::from(front.pid())));
    }

    #[test]
    fn sdk_scouter_exports_over_both_transports() {
        use crate::backends::scouter::ScouterBackend;
        use crate::backends::{Backend, Transport};
        let python = Interpreter::sdk_venv().unwrap();
        let leaf = sdk_server(&python, SdkService::plain());
        for transport in [Transport::Http, Transport::Grpc] {
            let backend = ScouterBackend::start().unwrap();
            backend.set_credentials("sdk-user", "sdk-secret");
            let to = match transport {
                Transport::Http => ScouterTransport::Http(backend.http_uri()),
                _ => ScouterTransport::Grpc(backend.grpc_uri()),
            };
            let config = SdkService::scouter(to)
                .credentials("sdk-user", "sdk-secret")
                .service_name("sdk-scouter")
                .downstream(&leaf.base_url())
                .resource_pid();
            let front = sdk_server(&python, config);
            let work = get(front.port(), "/work/s1");
            assert_eq!(work.status, 200, "{}", front.output());
            assert_eq!(traceparents(&leaf_headers(&work.body).unwrap()), Vec::<String>::new());
            assert_eq!(get(front.port(), "/flush").status, 200, "{}", front.output());
            let spans = backend.recorder().wait_for_spans(2, Duration::from_secs(10)).unwrap();
            let find = |name: &str| spans.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("{spans:#?}"));
            let (handler, work) = (find("handle_work"), find("work s1"));
            assert_eq!(spans.len(), 2, "{spans:#?}");
            assert_eq!(work.parent_span_id.as_deref(), Some(&*handler.span_id));
            assert_eq!(handler.parent_span_id, None);
            assert!(spans.iter().all(|s| s.transport == transport && s.service_name() == Some("sdk-scouter")));
            let pid = front.pid().to_string();
            assert!(spans.iter().all(|s| s.resource_attr("process.pid").and_then(AttrValue::as_str) == Some(&*pid)));
            assert!(backend.logins().iter().all(|login| login.accepted && login.username == "sdk-user"));
        }
    }
}
