//! `cargo xtask`: the project's tasks, written in Rust so they need nothing but cargo.
//!
//! - `setup` installs what a fresh machine of the project's kind (Debian 12, x86-64, root)
//!   lacks: the nightly toolchain with `rust-src`, bpf-linker in `target/tools`, Debian
//!   packages, and pip packages for every test interpreter. Each step checks before it acts,
//!   so running it again installs nothing.
//! - `build` runs the build part of setup, then builds the release agent (its build script
//!   compiles the eBPF programs with the nightly toolchain and bpf-linker).
//! - `run` builds, then replaces itself with the agent.
//! - `test` runs the full setup, builds, then the unit tests, the kernel matrix and the
//!   end-to-end tests.
//! - `bench` measures what tracing costs a Python HTTP service: no tracing, the agent, and
//!   OpenTelemetry's zero-code instrumentation, side by side; then what one Python call costs
//!   with the agent's function spans, for a selected and an unrelated function, on every test
//!   interpreter; then what untraced neighbours (dd, redis) pay with the agent running
//!   (figures only, no assertions).
//! - `kernels` runs the kernel matrix: does the agent load, attach and trace on the running
//!   kernel and on Debian's 6.1 and 6.12 kernels (booted under QEMU)?
//!
//! Every external program runs through [`cmd`], with inherited standard streams, so that what
//! failed is always named in the error.

mod bench;
mod build;
mod cmd;
mod kernels;
mod setup;
mod test;
mod workspace;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "xtask", bin_name = "cargo xtask", about = "Scouter Agent's project tasks", version)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what this machine lacks to build and test the agent (idempotent).
    ///
    /// Checks, and installs only if missing: the nightly toolchain and its rust-src component;
    /// bpf-linker 0.13.0 in target/tools (built against the nightly toolchain's LLVM); the
    /// Debian packages the tests use (needs root); the pip packages in
    /// tests/python/requirements.txt for every Python interpreter the tests use.
    Setup(SetupArgs),
    /// Build the release agent at target/release/scouter-agent (eBPF programs included).
    ///
    /// Installs the build tools first (the nightly toolchain, bpf-linker) unless --no-setup.
    Build(BuildArgs),
    /// Build the agent, then run it as root: `cargo xtask run -- [AGENT ARGS]`.
    ///
    /// With no arguments the agent traces every Python process and writes spans to its
    /// embedded store (/var/lib/scouter-agent/traces.db). Arguments go to scouter-agent as
    /// they are, e.g. `cargo xtask run -- --stdout` or `cargo xtask run -- traces list`.
    Run(RunArgs),
    /// Run the whole test suite as root: setup, build, unit tests, the kernel matrix,
    /// end-to-end tests.
    ///
    /// The end-to-end tests load eBPF programs, so this refuses to run without root rather
    /// than let them be skipped. FILTER, if given, is passed to both cargo test runs (the
    /// kernel matrix runs in full either way).
    Test(TestArgs),
    /// Measure tracing overhead as root: no tracing vs the agent vs opentelemetry-instrument,
    /// then the per-call cost of the agent's function spans.
    ///
    /// Two Python services, each making one downstream HTTP call per request: sync (flask on
    /// gunicorn gthread workers, requests) and asyncio (fastapi on uvicorn with the asyncio
    /// loop and h11, httpx.AsyncClient). Each runs three times, started fresh: alone; traced by
    /// the agent (target/release/scouter-agent, built first); under `opentelemetry-instrument`
    /// exporting OTLP/HTTP to a local receiver that discards. wrk loads each run for a warm-up,
    /// then for the measured window. Prints requests/s, p50 and p99 latency, the service's CPU
    /// per request, and the agent's CPU (% of one core) and memory; asserts nothing.
    ///
    /// The services run in a virtual environment (target/tools/bench-venv, from pyenv's Python
    /// 3.12.1) with the packages in xtask/bench/requirements.txt, installed on first use.
    ///
    /// Then the function part (--functions-only runs it alone, --skip-functions leaves it out):
    /// on every interpreter the tests use, xtask/bench/bench_functions.py measures the ns per call
    /// of `selected` and of `unrelated` (same body) with no agent, with the agent restricted to
    /// it (`--pid`) and given `--function bench_functions:selected` (which hooks every call of
    /// the process), and again once the agent stopped; and counts the spans the agent stored.
    ///
    /// Then the neighbours part (--neighbours-only runs it alone, --skip-neighbours leaves it
    /// out): what untraced processes beside the agent pay. `dd` (read/write syscalls) and
    /// redis-server under redis-benchmark run alternately with no agent, the agent, and the
    /// agent on the syscall capture, for --rounds rounds; medians and changes, the agent's start
    /// and stop times, and its programs' run time per redis operation (BPF_ENABLE_STATS).
    ///
    /// Service and program logs, agent logs and agent stores go to target/bench/.
    Bench(bench::Options),
    /// Run the kernel matrix as root: does the agent load, attach and trace on each kernel?
    ///
    /// Kernels: the running one (natively), and Debian's newest 6.1 and 6.12 cloud kernels from
    /// this machine's package sources, fetched into target/tools/kernels (nothing is installed)
    /// and booted under QEMU (TCG) on an initramfs with busybox, the agent and Debian's
    /// python3.11. On each: `scouter-agent check --verifier` (load), then per capture variant
    /// the agent until `agent ready` (attach) and one request to `python3.11 -m http.server`
    /// that must become a SERVER span in the agent's store (smoke). Prints each kernel's check
    /// output and a table; fails if any cell failed or a kernel could not be fetched or booted.
    ///
    /// Builds target/release/scouter-agent first unless --agent is given. Consoles go to
    /// target/tools/kernels/logs/.
    Kernels(kernels::Options),
}

#[derive(Debug, Args)]
struct SetupArgs {
    /// Only what building needs (nightly toolchain, rust-src, bpf-linker); skip the test
    /// dependencies (Debian and pip packages).
    #[arg(long)]
    build_only: bool,
}

#[derive(Debug, Args)]
struct BuildArgs {
    /// Do not check or install the build tools first.
    #[arg(long)]
    no_setup: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    build: BuildArgs,
    /// Arguments for scouter-agent (put them after `--`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "AGENT ARGS")]
    agent_args: Vec<String>,
}

#[derive(Debug, Args)]
struct TestArgs {
    /// Do not check or install anything first.
    #[arg(long)]
    no_setup: bool,
    /// Run only the tests whose name contains this (passed to both cargo test runs).
    filter: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the whole context chain on one line: "what we tried: why it failed".
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> anyhow::Result<()> {
    let ws = workspace::Workspace::locate()?;
    match task {
        Task::Setup(args) => {
            let scope = if args.build_only { setup::Scope::Build } else { setup::Scope::All };
            setup::run(&ws, scope)
        }
        Task::Build(args) => build::build(&ws, !args.no_setup).map(|_| ()),
        Task::Run(args) => build::run(&ws, !args.build.no_setup, &args.agent_args),
        Task::Test(args) => test::run(&ws, !args.no_setup, args.filter.as_deref()),
        Task::Bench(options) => bench::run(&ws, &options),
        Task::Kernels(options) => kernels::run(&ws, &options),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_passes_agent_args_through() {
        let cli = Cli::try_parse_from(["xtask", "run", "--", "--stdout", "--pid", "7"]).unwrap();
        let Task::Run(args) = cli.command else { panic!("not run") };
        assert_eq!(args.agent_args, ["--stdout", "--pid", "7"]);

        let cli = Cli::try_parse_from(["xtask", "run", "traces", "list", "--json"]).unwrap();
        let Task::Run(args) = cli.command else { panic!("not run") };
        assert_eq!(args.agent_args, ["traces", "list", "--json"]);
    }
}
