//! `cargo xtask bench`: what tracing costs Python, and its neighbours, in one run on one machine,
//! in three parts.
//!
//! The HTTP part: the agent beside OpenTelemetry's zero-code instrumentation on a Python HTTP
//! service. For each service variant (sync: flask/gunicorn/requests; asyncio:
//! fastapi/uvicorn/httpx), each making one downstream HTTP call per request, and each mode (no
//! tracing, the agent, `opentelemetry-instrument`), the bench starts the service fresh, waits
//! until it answers, starts the agent if the mode wants it, puts wrk's load on it for a warm-up
//! and then for the measured window, and reads CPU time and memory from /proc around that
//! window.
//!
//! The function part ([`functions`]), after it: what one Python call costs once the agent makes
//! spans of a selected function (`--function`), for that function and for an unrelated one
//! (selecting functions hooks every call of the process), on every interpreter the tests use,
//! before, with and after the agent. `--functions-only` and `--skip-functions` run one part.
//!
//! The neighbours part ([`neighbours`]), last: what the agent costs processes it does not trace
//! (dd's read/write syscalls, redis-server's socket I/O under redis-benchmark), with no agent,
//! the agent and the agent with its old syscall capture, alternating over `--rounds` rounds; the
//! agent's start and stop times; and what its eBPF programs cost per redis request (the
//! kernel's BPF run-time statistics). `--neighbours-only` and `--skip-neighbours` as above.
//!
//! It prints figures and asserts nothing about them. Everything it starts is stopped when it
//! ends, fails or is interrupted ([`process`]); a failed run is reported and the others still run.
//!
//! Parts: [`wrk`] (load and its report), [`procfs`] (CPU and memory), [`service`] (the Python
//! services), [`agent`] (the agent, started with each part's arguments), [`stub`] (the downstream
//! service and the OTLP receiver, on threads of this process), [`otlp`] (counting exported
//! spans), [`report`] (the HTTP results table), [`functions`] and [`function_program`] (the
//! function part and the Python program it drives), [`neighbours`], [`workloads`] and
//! [`bpf_stats`] (the neighbours part, its workloads and the BPF run-time statistics, read
//! from bpftool's `--json` output).

mod agent;
mod bpf_stats;
mod function_program;
mod functions;
mod neighbours;
mod otlp;
mod process;
mod procfs;
mod report;
mod service;
mod stub;
mod workloads;
mod wrk;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::{Args, ValueEnum};

use self::agent::RunningAgent;
use self::process::check_interrupt;
use self::procfs::CpuSample;
use self::service::{Launch, Mode, Service, Variant};
use self::stub::{Role, StubServer, Totals};
use crate::build;
use crate::cmd;
use crate::setup;
use crate::workspace::{self, Workspace};

/// The pyenv interpreter the bench's virtual environment is made from.
const PYTHON_VERSION: &str = "3.12.1";
const REQUIREMENTS: &str = "xtask/bench/requirements.txt";
/// The Python programs of the services.
const APP_DIR: &str = "xtask/bench";
/// Packages whose versions the header names.
const PACKAGES: &[&str] =
    &["flask", "gunicorn", "requests", "fastapi", "uvicorn", "httpx", "opentelemetry-sdk", "opentelemetry-distro"];

#[derive(Debug, Args)]
pub struct Options {
    /// Seconds of measured load per run.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    duration: u64,
    /// Seconds of load before each measured window, not counted.
    #[arg(long, value_name = "SECS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    warmup: u64,
    /// Concurrent connections wrk keeps open (at least --threads).
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,
    /// wrk threads.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    threads: u32,
    /// Worker processes of each service. One leaves the other cores to wrk, the downstream
    /// stub and the agent; and above one, uvicorn leaves TCP_NODELAY off (uvicorn issue #3149),
    /// which adds ~40 ms to every keep-alive request of the asyncio variant.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    workers: u32,
    /// Which service variant to run.
    #[arg(long, value_enum, default_value_t = VariantChoice::All)]
    variant: VariantChoice,
    /// Leave out the opentelemetry-instrument mode.
    #[arg(long)]
    skip_otel: bool,
    /// Use target/release/scouter-agent as it is instead of building it first.
    #[arg(long)]
    no_build: bool,
    /// Benchmark this agent binary (e.g. another build) instead of building the workspace's.
    #[arg(long, value_name = "PATH", conflicts_with = "no_build")]
    agent_bin: Option<PathBuf>,
    /// Run only the function part: the cost per call of a function the agent selects
    /// (`--function`) and of one it does not, on every test interpreter; no HTTP services.
    #[arg(long, conflicts_with_all = ["skip_functions", "neighbours_only"])]
    functions_only: bool,
    /// Leave out the function part (which otherwise runs after the HTTP services).
    #[arg(long)]
    skip_functions: bool,
    /// Run only the neighbours part: what the agent costs untraced processes (dd, redis), the
    /// agent's start and stop times, and its eBPF programs' time per redis request.
    #[arg(long, conflicts_with = "skip_neighbours")]
    neighbours_only: bool,
    /// Leave out the neighbours part (which otherwise runs last).
    #[arg(long)]
    skip_neighbours: bool,
    /// Rounds of the neighbours part: each runs every workload in every mode once, and each
    /// figure is the median over the rounds.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum VariantChoice {
    /// Flask on gunicorn (gthread workers), downstream call with requests.
    Sync,
    /// FastAPI on uvicorn (asyncio loop, h11), downstream call with httpx.AsyncClient.
    Asyncio,
    /// Both.
    All,
}

impl Options {
    fn variants(&self) -> Vec<Variant> {
        match self.variant {
            VariantChoice::Sync => vec![Variant::Sync],
            VariantChoice::Asyncio => vec![Variant::Asyncio],
            VariantChoice::All => vec![Variant::Sync, Variant::Asyncio],
        }
    }

    fn modes(&self) -> Vec<Mode> {
        let mut modes = vec![Mode::Bare, Mode::Agent];
        if !self.skip_otel {
            modes.push(Mode::Otel);
        }
        modes
    }

    fn load(&self) -> wrk::Load {
        wrk::Load { threads: self.threads, connections: self.connections }
    }

    /// Whether the HTTP services part runs.
    fn runs_http(&self) -> bool {
        !self.functions_only && !self.neighbours_only
    }

    /// Whether the function part runs.
    fn runs_functions(&self) -> bool {
        !self.skip_functions && !self.neighbours_only
    }

    /// Whether the neighbours part runs.
    fn runs_neighbours(&self) -> bool {
        !self.skip_neighbours && !self.functions_only
    }
}

pub fn run(ws: &Workspace, options: &Options) -> Result<()> {
    workspace::require_root("bench", "its agent runs load eBPF programs and attach uprobes")?;
    if options.runs_http() && options.connections < options.threads {
        bail!("--connections ({}) must be at least --threads ({})", options.connections, options.threads);
    }
    let started = Instant::now();
    process::catch_interrupts();
    let python = setup_for(ws, options)?;
    let agent = match &options.agent_bin {
        Some(path) => AgentBinary::given(path)?,
        None => AgentBinary::get(ws, options.no_build)?,
    };
    check_interrupt()?;
    let out_dir = ws.target_dir().join("bench");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let http = python.map(|python| Bench::prepare(ws, options, python, &agent, &out_dir)).transpose()?;
    let function_part =
        options.runs_functions().then(|| functions::Part::new(&agent.path, ws.root().join(APP_DIR), &out_dir));
    let neighbours_part =
        options.runs_neighbours().then(|| neighbours::Part::new(&agent.path, &out_dir, options.rounds));
    let parts = Parts { http: http.as_ref(), functions: function_part.as_ref(), neighbours: neighbours_part.as_ref() };
    print_header(&agent, &out_dir, &parts)?;
    let mut failed = Vec::new();
    if let Some(bench) = &http {
        let outcomes = bench.run_all()?;
        report::print_table(&outcomes);
        report::print_traced_work(&outcomes);
        failed.extend(outcomes.iter().filter(|o| o.result.is_err()).map(Outcome::label));
    }
    if let Some(part) = &function_part {
        let outcomes = part.run_all()?;
        functions::print_table(&outcomes);
        failed.extend(outcomes.iter().filter(|o| o.failed()).map(|o| format!("functions/{}", o.label)));
    }
    if let Some(part) = &neighbours_part {
        let outcome = part.run_all()?;
        neighbours::print_tables(&outcome);
        failed.extend(outcome.failed().into_iter().map(|label| format!("neighbours/{label}")));
    }
    println!("\nbench finished in {:.0} s (setup and build included)", started.elapsed().as_secs_f64());
    if !failed.is_empty() {
        bail!("some runs failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Sets up what the chosen parts need; returns the HTTP part's interpreter when it runs. The
/// HTTP part needs wrk and its virtual environment; the function part only the build tools
/// (for the agent) and the test interpreters, used as they are; the neighbours part redis
/// (server and benchmark) and bpftool.
fn setup_for(ws: &Workspace, options: &Options) -> Result<Option<PathBuf>> {
    let (venv, requirements) = (ws.tools_dir().join("bench-venv"), ws.root().join(REQUIREMENTS));
    let http = options.runs_http().then(|| setup::BenchVenv {
        version: PYTHON_VERSION,
        path: &venv,
        requirements: &requirements,
    });
    setup::bench(ws, http, options.runs_neighbours())
}

/// The parts that run, each set up.
struct Parts<'a> {
    http: Option<&'a Bench<'a>>,
    functions: Option<&'a functions::Part<'a>>,
    neighbours: Option<&'a neighbours::Part<'a>>,
}

/// What runs where, before any figure: the machine, the agent, then each part's set-up.
fn print_header(agent: &AgentBinary, out_dir: &Path, parts: &Parts) -> Result<()> {
    let mut text = String::from("\n== cargo xtask bench ==\n");
    let mut line = |key: &str, value: String| writeln!(text, "{key:<12}{value}").unwrap();
    line("machine:", machine());
    line("agent:", format!("{} ({})", agent.path.display(), agent.provenance));
    if let Some(bench) = parts.http {
        bench.describe(&mut line)?;
    }
    if let Some(part) = parts.functions {
        part.describe(&mut line);
    }
    if let Some(part) = parts.neighbours {
        part.describe(&mut line);
    }
    line("logs:", format!("{} (service, program and redis-server logs, agent logs and stores)", out_dir.display()));
    print!("{text}");
    if parts.http.is_some() {
        println!("note: wrk, the services, the stubs and the agent all share this machine's cores");
    } else {
        println!("note: the programs measured and the agent share this machine's cores with whatever else runs on it");
    }
    let others = foreign_agents(&[]);
    if !others.is_empty() {
        println!("WARNING: other scouter-agent processes are running ({others:?}): they trace every mode");
    }
    Ok(())
}

/// The agent binary the bench runs, and where it comes from.
struct AgentBinary {
    path: PathBuf,
    provenance: String,
}

impl AgentBinary {
    /// The binary of `--agent-bin`.
    fn given(path: &Path) -> Result<Self> {
        if !path.is_file() {
            bail!("--agent-bin {}: no such file", path.display());
        }
        let path = path.canonicalize().with_context(|| format!("cannot resolve {}", path.display()))?;
        Ok(Self { provenance: format!("--agent-bin, {}", age(&path)), path })
    }

    /// Builds the agent, or falls back to the last built binary when the build fails.
    fn get(ws: &Workspace, no_build: bool) -> Result<Self> {
        let existing = ws.agent_binary();
        if no_build {
            if !existing.is_file() {
                bail!("--no-build, but {} does not exist (run `cargo xtask build`)", existing.display());
            }
            let provenance = format!("not rebuilt (--no-build); {}", age(&existing));
            return Ok(Self { path: existing, provenance });
        }
        // The bench's setup already covered the build tools.
        match build::build(ws, false) {
            Ok(path) => Ok(Self { path, provenance: "built by this run".into() }),
            Err(error) if existing.is_file() => {
                eprintln!("warning: building the agent failed, benchmarking the previous build: {error:#}");
                let provenance = format!("REBUILD FAILED ({error:#}); using the previous binary, {}", age(&existing));
                Ok(Self { path: existing, provenance })
            }
            Err(error) => Err(error),
        }
    }
}

/// "built N min ago", from the file's modification time.
fn age(path: &Path) -> String {
    let modified = std::fs::metadata(path).and_then(|meta| meta.modified());
    match modified.ok().and_then(|time| time.elapsed().ok()) {
        Some(elapsed) => format!("built {} min ago", elapsed.as_secs() / 60),
        None => "built at an unknown time".into(),
    }
}

/// Everything that stays the same across the runs of the HTTP part.
struct Bench<'a> {
    options: &'a Options,
    python: PathBuf,
    agent: &'a AgentBinary,
    app_dir: PathBuf,
    out_dir: &'a Path,
    /// Serves from threads of this process until it exits.
    downstream_url: String,
    receiver: StubServer,
    otlp_url: String,
}

/// One run's figures.
struct Measurement {
    wrk: wrk::Report,
    /// The measured window, as timed around wrk.
    wall: Duration,
    /// CPU time of the service's processes (master and workers) in the window.
    service_cpu: Duration,
    agent: Option<AgentFigures>,
    /// What the tracer recorded over the service's life, if there was a tracer.
    traced: Option<String>,
    /// Agents not started by the bench that were running during the window (they trace the
    /// service too, and take CPU).
    foreign_agents: Vec<u32>,
}

struct AgentFigures {
    cpu: Duration,
    memory: procfs::Memory,
}

struct Outcome {
    variant: Variant,
    mode: Mode,
    result: Result<Measurement>,
}

impl Outcome {
    fn label(&self) -> String {
        format!("{}/{}", self.variant.name(), self.mode.name())
    }
}

impl<'a> Bench<'a> {
    fn prepare(
        ws: &Workspace,
        options: &'a Options,
        python: PathBuf,
        agent: &'a AgentBinary,
        out_dir: &'a Path,
    ) -> Result<Self> {
        let receiver = StubServer::start(Role::OtlpReceiver)?;
        Ok(Self {
            options,
            python,
            agent,
            app_dir: ws.root().join(APP_DIR),
            out_dir,
            downstream_url: StubServer::start(Role::Downstream)?.url("/"),
            otlp_url: receiver.url("/v1/traces"),
            receiver,
        })
    }

    /// Runs every variant in every mode. A failed run is reported and the others still run;
    /// an interrupt stops everything.
    fn run_all(&self) -> Result<Vec<Outcome>> {
        let mut outcomes = Vec::new();
        for variant in self.options.variants() {
            for mode in self.options.modes() {
                println!("\n== {} / {} ==", variant.name(), mode.name());
                let result = self.run_one(variant, mode);
                check_interrupt()?;
                if let Err(error) = &result {
                    eprintln!("error: {}/{} failed: {error:#}", variant.name(), mode.name());
                }
                outcomes.push(Outcome { variant, mode, result });
            }
        }
        Ok(outcomes)
    }

    fn launch(&self) -> Launch<'_> {
        Launch {
            python: &self.python,
            app_dir: &self.app_dir,
            workers: self.options.workers,
            downstream_url: &self.downstream_url,
            otlp_endpoint: &self.otlp_url,
            log_dir: self.out_dir,
        }
    }

    fn store_path(&self, variant: Variant) -> PathBuf {
        self.out_dir.join(format!("agent-{}.db", variant.name()))
    }

    fn run_one(&self, variant: Variant, mode: Mode) -> Result<Measurement> {
        let exported_before = self.receiver.totals();
        let mut service = Service::start(variant, mode, &self.launch())?;
        // Started once the service is up, so `agent ready` means its workers are registered.
        let mut agent = match mode {
            Mode::Agent => {
                let log = self.out_dir.join(format!("agent-{}.log", variant.name()));
                Some(RunningAgent::start(&self.agent.path, &self.store_path(variant), &log, &[])?)
            }
            _ => None,
        };
        let warmup = wrk::run(&service.url(), self.options.load(), Duration::from_secs(self.options.warmup))?;
        check_interrupt()?;
        wrk::require_traffic(&warmup, "warm-up")?;
        let mut measurement = self.measure(&service, agent.as_ref())?;
        service.ensure_running()?;
        if let Some(agent) = &mut agent {
            agent.ensure_running()?;
        }
        // wrk does not count the requests still in flight when it stops: a lower bound.
        let served = service.probes() + warmup.requests + measurement.wrk.requests;
        if mode == Mode::Otel {
            self.wait_for_last_exports()?;
        }
        drop(service);
        measurement.traced = match (mode, agent) {
            (Mode::Agent, Some(running)) => {
                let store = running.stop()?;
                Some(format!(">={served} requests served; agent store: {}", agent::count_spans(&self.python, &store)?))
            }
            (Mode::Otel, _) => Some(describe_export(served, self.receiver.totals().since(exported_before))),
            _ => None,
        };
        Ok(measurement)
    }

    /// Waits until the OpenTelemetry SDK has exported what it still held when the load stopped:
    /// its BatchSpanProcessor exports at least every 5 s (OTEL_BSP_SCHEDULE_DELAY's default).
    /// Exit does not do it for every server: uvicorn re-raises SIGTERM after its graceful
    /// shutdown, so its workers die before the SDK's exit-time flush.
    fn wait_for_last_exports(&self) -> Result<()> {
        const QUIET: Duration = Duration::from_secs(6);
        const LIMIT: Duration = Duration::from_secs(30);
        let started = Instant::now();
        let (mut last, mut changed) = (self.receiver.totals(), Instant::now());
        while changed.elapsed() < QUIET && started.elapsed() < LIMIT {
            check_interrupt()?;
            std::thread::sleep(Duration::from_millis(200));
            let now = self.receiver.totals();
            if now != last {
                (last, changed) = (now, Instant::now());
            }
        }
        Ok(())
    }

    /// The measured window: wrk's load, with CPU time sampled around it.
    fn measure(&self, service: &Service, agent: Option<&RunningAgent>) -> Result<Measurement> {
        let service_pids = procfs::process_tree(service.pid());
        let agent_pids: Vec<u32> = agent.iter().map(|agent| agent.pid()).collect();
        let (service_before, agent_before) = (CpuSample::take(&service_pids), CpuSample::take(&agent_pids));
        let mut foreign_agents = foreign_agents(&agent_pids);
        let started = Instant::now();
        let report = wrk::run(&service.url(), self.options.load(), Duration::from_secs(self.options.duration))?;
        let wall = started.elapsed();
        let (service_after, agent_after) = (CpuSample::take(&service_pids), CpuSample::take(&agent_pids));
        check_interrupt()?;
        foreign_agents.extend(self::foreign_agents(&agent_pids));
        foreign_agents.sort_unstable();
        foreign_agents.dedup();
        if !foreign_agents.is_empty() {
            eprintln!(
                "warning: other scouter-agent processes ran during this run ({foreign_agents:?}): they traced it too"
            );
        }
        let agent = match agent {
            Some(agent) => {
                Some(AgentFigures { cpu: agent_after.since(&agent_before), memory: procfs::memory(agent.pid())? })
            }
            None => None,
        };
        let service_cpu = service_after.since(&service_before);
        Ok(Measurement { wrk: report, wall, service_cpu, agent, traced: None, foreign_agents })
    }

    /// The bench header's lines about this part.
    fn describe(&self, line: &mut dyn FnMut(&str, String)) -> Result<()> {
        let o = self.options;
        let load = wrk::command("URL", o.load(), Duration::from_secs(o.duration));
        line("python:", python_versions(&self.python)?);
        line(
            "load:",
            format!("{}; {} s warm-up, then {} s measured, per run", cmd::describe(&load), o.warmup, o.duration),
        );
        for variant in o.variants() {
            line(&format!("{}:", variant.name()), variant.describe(o.workers));
        }
        line(
            "downstream:",
            format!(
                "one GET per request to {}, a Rust HTTP/1.1 stub inside the bench process (keep-alive, \
                 answers `200 ok` at once); not Python, so no tracer sees it",
                self.downstream_url
            ),
        );
        line(
            "agent mode:",
            "`scouter-agent run --store-path target/bench/agent-VARIANT.db`, started once the service answers; \
              figures from /proc over the measured window"
                .into(),
        );
        if !o.skip_otel {
            line(
                "otel mode:",
                "`opentelemetry-instrument` (traces only, every request sampled, default BatchSpanProcessor), \
                 OTLP/HTTP protobuf to a stub inside the bench process that answers 200 and discards (after counting spans)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Running scouter-agent processes other than `ours`.
fn foreign_agents(ours: &[u32]) -> Vec<u32> {
    procfs::pids_named("scouter-agent").into_iter().filter(|pid| !ours.contains(pid)).collect()
}

fn describe_export(served: u64, export: Totals) -> String {
    let mut text = format!(
        ">={served} requests served; exported {} spans in {} OTLP requests ({:.1} MiB)",
        export.spans,
        export.requests,
        export.body_bytes as f64 / (1024.0 * 1024.0)
    );
    if export.undecoded > 0 {
        let _ = write!(text, ", {} requests not decoded (spans not counted)", export.undecoded);
    }
    text
}

/// "2 cores (model), Linux 6.1.0-..., 7.8 GiB RAM".
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name").and_then(|rest| rest.split_once(':')))
        .map_or("unknown CPU", |(_, model)| model.trim());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let memory_gib = memory_kib as f64 / (1024.0 * 1024.0);
    format!("{cores} cores ({model}), Linux {}, {memory_gib:.1} GiB RAM", kernel.trim())
}

/// "3.12.1 (path); flask 3.1.3, ...".
fn python_versions(python: &Path) -> Result<String> {
    let script = format!(
        "import importlib.metadata as m, platform\n\
         print(platform.python_version() + ' (' + {path:?} + '); ' + ', '.join(n + ' ' + m.version(n) for n in {names:?}))",
        path = python.display().to_string(),
        names = PACKAGES,
    );
    Ok(cmd::output(Command::new(python).args(["-c", &script]))?.trim().to_owned())
}
