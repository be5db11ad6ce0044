//! The traced Python services: what runs them, with or without OpenTelemetry, and when they
//! are ready for load.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use super::process::{check_interrupt, Process};
use super::procfs;
use super::stub;

/// How long a service may take to answer its first request with all its workers up.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Threads per gunicorn gthread worker.
const GTHREAD_THREADS: u32 = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Flask on gunicorn (gthread workers), downstream call with requests.
    Sync,
    /// FastAPI on uvicorn (asyncio loop, h11), downstream call with httpx.AsyncClient.
    Asyncio,
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::Sync => "sync",
            Variant::Asyncio => "asyncio",
        }
    }

    /// One line on what runs, for the bench's header.
    pub fn describe(self, workers: u32) -> String {
        match self {
            Variant::Sync => format!(
                "flask on gunicorn, gthread worker processes: {workers} x {GTHREAD_THREADS} threads; requests.Session per thread"
            ),
            Variant::Asyncio if workers == 1 => {
                "fastapi on uvicorn, one process, --loop asyncio --http h11; one httpx.AsyncClient".into()
            }
            Variant::Asyncio => format!(
                "fastapi on uvicorn, {workers} workers, --loop asyncio --http h11; one httpx.AsyncClient per worker \
                 (WARNING: uvicorn's --workers leaves TCP_NODELAY off, adding ~40 ms per keep-alive request: \
                 uvicorn issue #3149)"
            ),
        }
    }

    /// How many child processes the server has once all its workers are up: uvicorn serves
    /// from its own process when it has one worker, gunicorn always forks.
    fn worker_processes(self, workers: u32) -> usize {
        match self {
            Variant::Asyncio if workers == 1 => 0,
            _ => workers as usize,
        }
    }

    /// The arguments of `python -m gunicorn|uvicorn ...` serving on `port`.
    fn server_args(self, port: u16, workers: u32, app_dir: &Path) -> Vec<String> {
        let (app_dir, workers, port) = (app_dir.display().to_string(), workers.to_string(), port.to_string());
        let args: &[&str] = match self {
            Variant::Sync => &[
                "-m",
                "gunicorn",
                "--chdir",
                &app_dir,
                "--bind",
                &format!("127.0.0.1:{port}"),
                "--workers",
                &workers,
                "--worker-class",
                "gthread",
                "--threads",
                &GTHREAD_THREADS.to_string(),
                "--graceful-timeout",
                "5",
                "--log-level",
                "warning",
                "sync_app:app",
            ],
            Variant::Asyncio => &[
                "-m",
                "uvicorn",
                "--app-dir",
                &app_dir,
                "--host",
                "127.0.0.1",
                "--port",
                &port,
                "--workers",
                &workers,
                "--loop",
                "asyncio",
                "--http",
                "h11",
                "--no-access-log",
                "--log-level",
                "warning",
                "asyncio_app:app",
            ],
        };
        args.iter().map(|arg| (*arg).to_owned()).collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The service alone.
    Bare,
    /// The service, traced by the agent.
    Agent,
    /// The service under `opentelemetry-instrument`.
    Otel,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Bare => "none",
            Mode::Agent => "agent",
            Mode::Otel => "otel",
        }
    }
}

/// Everything needed to start a service.
pub struct Launch<'a> {
    pub python: &'a Path,
    pub app_dir: &'a Path,
    pub workers: u32,
    pub downstream_url: &'a str,
    /// Where OpenTelemetry exports, for [`Mode::Otel`].
    pub otlp_endpoint: &'a str,
    pub log_dir: &'a Path,
}

pub struct Service {
    process: Process,
    addr: String,
    log: PathBuf,
    /// Requests the readiness checks made (each one served, with its downstream call).
    probes: u64,
}

impl Service {
    /// Starts `variant` (under opentelemetry-instrument for [`Mode::Otel`]) and waits until it
    /// answers through its downstream call and all its workers are up.
    pub fn start(variant: Variant, mode: Mode, launch: &Launch) -> Result<Self> {
        let port = free_port()?;
        let log = launch.log_dir.join(format!("{}-{}.log", variant.name(), mode.name()));
        let mut command = command(variant, mode, launch, port)?;
        let output = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        command.stdin(Stdio::null()).stdout(output.try_clone()?).stderr(output);
        let process = Process::spawn(&format!("the {} service", variant.name()), &mut command)?;
        let mut service = Self { process, addr: format!("127.0.0.1:{port}"), log, probes: 0 };
        service.wait_ready(variant.worker_processes(launch.workers)).with_context(|| service.log_tail())?;
        Ok(service)
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Requests served to the readiness checks.
    pub fn probes(&self) -> u64 {
        self.probes
    }

    pub fn ensure_running(&mut self) -> Result<()> {
        self.process.ensure_running().with_context(|| self.log_tail())
    }

    fn wait_ready(&mut self, workers: usize) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            check_interrupt()?;
            self.process.ensure_running()?;
            let answered = stub::get_status(&self.addr, "/", Duration::from_secs(5)).is_ok_and(|s| s == 200);
            self.probes += u64::from(answered);
            let children = procfs::process_tree(self.pid()).len() - 1;
            if answered && children >= workers {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the service did not answer 200 with {workers} worker processes within {READY_TIMEOUT:?} \
                     (answered: {answered}, child processes: {children})"
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The end of the service's log, for error messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("service log {} (last lines):\n{tail}", self.log.display())
    }
}

fn command(variant: Variant, mode: Mode, launch: &Launch, port: u16) -> Result<Command> {
    let server_args = variant.server_args(port, launch.workers, launch.app_dir);
    let mut command = match mode {
        Mode::Bare | Mode::Agent => Command::new(launch.python),
        Mode::Otel => {
            let mut command = Command::new(opentelemetry_instrument(launch.python)?);
            command.arg(launch.python);
            set_otel_env(&mut command, variant, launch.otlp_endpoint);
            command
        }
    };
    command.args(server_args).env("BENCH_DOWNSTREAM_URL", launch.downstream_url);
    Ok(command)
}

/// The `opentelemetry-instrument` launcher beside the bench interpreter.
fn opentelemetry_instrument(python: &Path) -> Result<PathBuf> {
    let launcher = python.with_file_name("opentelemetry-instrument");
    if !launcher.is_file() {
        bail!("{} is missing (is opentelemetry-distro in the bench requirements?)", launcher.display());
    }
    Ok(launcher)
}

/// Traces only (no metrics, no logs), every request sampled, exported by the SDK's default
/// BatchSpanProcessor as OTLP/HTTP protobuf to `endpoint`.
fn set_otel_env(command: &mut Command, variant: Variant, endpoint: &str) {
    command
        .env("OTEL_SERVICE_NAME", format!("bench-{}", variant.name()))
        .env("OTEL_TRACES_EXPORTER", "otlp")
        .env("OTEL_METRICS_EXPORTER", "none")
        .env("OTEL_LOGS_EXPORTER", "none")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint)
        .env("OTEL_TRACES_SAMPLER", "parentbased_always_on");
}

/// A port nothing listens on right now (the kernel's pick; free again once this returns).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}
