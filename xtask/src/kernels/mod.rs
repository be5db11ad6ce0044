//! `cargo xtask kernels`: the kernel matrix. Does the agent load, attach and trace on the
//! kernels users run, not only on this machine's?
//!
//! Verifier rules change between kernels (stack rounding, bounds tracking, complexity limits),
//! and an eBPF object that loads here can be refused elsewhere, so the matrix boots the kernels
//! of this machine's Debian sources and runs the same checks on each, plus the running kernel:
//! - `host`: the running kernel, natively ([`host`]);
//! - `6.1`, `6.12`: Debian's cloud kernels ([`KERNEL_LINES`]), fetched into
//!   `<tools>/kernels/` ([`fetch`]) and booted under QEMU with TCG ([`qemu`]) on an initramfs of
//!   busybox, the agent and Debian's python3.11 ([`initramfs`]).
//!
//! On each, `guest/matrix.sh` runs `scouter-agent check --verifier` ("load": its exit status,
//! its output kept for the report), then for each capture variant ([`CAPTURE_VARIANTS`]) starts
//! the agent ("attach": it logs `agent ready`), serves one request with `python3.11 -m
//! http.server` and looks for its SERVER span in the agent's store ("smoke"). It reports
//! through `SCOUTER-MATRIX` lines on its console, which [`results`] reads back from the run's
//! log (`<tools>/kernels/logs/`); [`capture`] runs QEMU or the host's shell under a hard
//! timeout. [`report`] prints every kernel's check output, then one table, and the task fails
//! when any cell did, or a kernel could not be fetched or booted: nothing is skipped.
//!
//! Kernels run one after the other, the host first (see [`guest_rows`] for why not side by
//! side).

mod capture;
mod fetch;
mod host;
mod initramfs;
mod qemu;
mod report;
mod results;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Args;

use self::fetch::Line;
use self::report::Row;
use self::results::Results;
use crate::build;
use crate::setup;
use crate::workspace::{self, Workspace};

/// The capture variants: a name (one word) and the agent's extra arguments (no blanks in any).
/// Each gets its own attach and smoke columns. `default` is the socket layer (fentry/fexit, or
/// the socket tracepoints where the kernel refuses fentry); `syscalls` forces the fallback.
pub const CAPTURE_VARIANTS: &[(&str, &[&str])] = &[("default", &[]), ("syscalls", &["--io-capture=syscalls"])];

/// Debian's kernel lines, from this machine's package sources.
const KERNEL_LINES: &[Line] = &[
    Line { name: "6.1", metapackage: "linux-image-cloud-amd64", prefix: "linux-image-6.1." },
    Line { name: "6.12", metapackage: "linux-image-6.12-cloud-amd64", prefix: "linux-image-6.12." },
];
/// What `--kernel` calls the running kernel.
const HOST: &str = "host";

/// How long one kernel's run may take before it is killed and fails, by default: this for the
/// boot and `check --verifier`, plus [`VARIANT_TIMEOUT_SECS`] per capture variant. Under TCG a
/// run whose programs load takes about a minute (boot 5-10 s, check 15-30 s, 20 s a variant);
/// a kernel that refuses programs takes longest (6.1 in December 2026: check 140-200 s, a
/// failed attach 50-100 s), as the verifier explores each refused program to its limit of a
/// million instructions, and aya retries with bigger logs. A busy machine stretches all of it.
const CHECK_TIMEOUT_SECS: u64 = 360;
const VARIANT_TIMEOUT_SECS: u64 = 120;
/// How long the guests' agent may take to log `agent ready` (under TCG).
const GUEST_READY_SECS: u64 = 120;

/// Debian's interpreter and busybox, used on the host and copied into the guests.
const PYTHON: &str = "/usr/bin/python3.11";
const BUSYBOX: &str = "/bin/busybox";

const MATRIX_SCRIPT: &str = include_str!("guest/matrix.sh");
const SMOKE_CHECK: &str = include_str!("guest/smoke_check.py");

#[derive(Debug, Args)]
pub struct Options {
    /// Run only this kernel (repeatable): `host` (the running kernel, natively), `6.1` or `6.12`
    /// (Debian's newest cloud kernel of that line, under QEMU). Default: all of them.
    #[arg(long = "kernel", value_name = "KERNEL", value_parser = parse_kernel)]
    kernels: Vec<String>,
    /// Test this agent binary instead of building target/release/scouter-agent first.
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
    /// Do not check or install anything first.
    #[arg(long)]
    no_setup: bool,
    /// Seconds one kernel's run may take before it is killed (and fails). Default: 360, plus
    /// 120 per capture variant.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    timeout: Option<u64>,
}

fn parse_kernel(name: &str) -> Result<String, String> {
    let known: Vec<&str> = std::iter::once(HOST).chain(KERNEL_LINES.iter().map(|line| line.name)).collect();
    if known.contains(&name) {
        Ok(name.to_owned())
    } else {
        Err(format!("not one of {}", known.join(", ")))
    }
}

/// `cargo xtask kernels`.
pub fn run(ws: &Workspace, options: &Options) -> Result<()> {
    workspace::require_root("kernels", "the host's row runs the agent, which loads eBPF programs")?;
    if !options.no_setup {
        setup::kernels(ws)?;
    }
    let agent = match &options.agent {
        Some(agent) => agent.clone(),
        // Setup just ran (or was declined); the build does not need to check again.
        None => build::build(ws, false)?,
    };
    let selected = |name: &str| options.kernels.is_empty() || options.kernels.iter().any(|k| k == name);
    let lines: Vec<&Line> = KERNEL_LINES.iter().filter(|line| selected(line.name)).collect();
    let timeout = options.timeout.map_or_else(default_timeout, Duration::from_secs);
    matrix(ws, &agent, selected(HOST), &lines, timeout)
}

/// The "kernel matrix" stage of `cargo xtask test`: every kernel, `agent` as built.
pub fn stage(ws: &Workspace, agent: &Path) -> Result<()> {
    let lines: Vec<&Line> = KERNEL_LINES.iter().collect();
    matrix(ws, agent, true, &lines, default_timeout())
}

fn default_timeout() -> Duration {
    Duration::from_secs(CHECK_TIMEOUT_SECS + VARIANT_TIMEOUT_SECS * CAPTURE_VARIANTS.len() as u64)
}

/// Runs the chosen kernels, prints the report, fails if any row did.
fn matrix(ws: &Workspace, agent: &Path, with_host: bool, lines: &[&Line], timeout: Duration) -> Result<()> {
    let started = Instant::now();
    let agent = agent.canonicalize().with_context(|| format!("no agent binary at {}", agent.display()))?;
    let cache = ws.tools_dir().join("kernels");
    let logs = cache.join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    println!("\n== kernel matrix: {} ==", agent.display());

    // Everything that can fail before a kernel runs, first: its output then stays together.
    let guests = prepare_guests(&cache, &agent, lines);
    let interrupts = capture::Interrupts::catch();
    let mut rows = Vec::new();
    if with_host {
        rows.push(host_row(&agent, &logs, timeout, &interrupts));
    }
    rows.extend(guest_rows(guests, &logs, timeout, &interrupts));
    drop(interrupts);

    let variants = variant_names();
    report::print(&rows, &variants);
    println!("kernel matrix: {:.0} s in all; consoles in {}", started.elapsed().as_secs_f64(), logs.display());
    let failed: Vec<&str> = rows.iter().filter(|row| row.failed(&variants)).map(|row| row.kernel.as_str()).collect();
    if !failed.is_empty() {
        bail!("the kernel matrix failed on {} (see the table above)", failed.join(", "));
    }
    Ok(())
}

/// For each line, its kernel and the initramfs to boot it on, or its name and why it cannot run.
fn prepare_guests(
    cache: &Path,
    agent: &Path,
    lines: &[&Line],
) -> Vec<Result<(fetch::Kernel, PathBuf), (String, String)>> {
    if lines.is_empty() {
        return Vec::new();
    }
    let initramfs = qemu::ensure_available()
        .and_then(|()| initramfs::build(&cache.join("initramfs"), agent, GUEST_READY_SECS))
        .map_err(|error| format!("cannot build the initramfs: {error:#}"));
    lines
        .iter()
        .map(|line| {
            let kernel = fetch::fetch(cache, line).map_err(|error| {
                (format!("{} (Debian {})", line.name, line.metapackage), format!("cannot fetch the kernel: {error:#}"))
            })?;
            let initramfs = initramfs.clone().map_err(|problem| (kernel.label(), problem))?;
            Ok((kernel, initramfs))
        })
        .collect()
}

fn host_row(agent: &Path, logs: &Path, timeout: Duration, interrupts: &capture::Interrupts) -> Row {
    println!("\n-- host: the running kernel, natively");
    let log = logs.join("host.log");
    let started = Instant::now();
    let captured = host::run(agent, &log, timeout, interrupts, |line| echo(HOST, started, line));
    let mut row = row_of(captured, log, timeout, "the host's run");
    let release = row.results.kernel.clone().unwrap_or_else(|| "the running kernel".to_owned());
    row.kernel = format!("{release} (host)");
    row
}

/// The guests' rows, one run after the other: under TCG a guest keeps both of the machine's
/// cores busy (two guests side by side took longer than one after the other: 6.12's run went
/// from 116 s to 203 s, and 6.1's timed out).
fn guest_rows(
    guests: Vec<Result<(fetch::Kernel, PathBuf), (String, String)>>,
    logs: &Path,
    timeout: Duration,
    interrupts: &capture::Interrupts,
) -> Vec<Row> {
    guests
        .into_iter()
        .map(|guest| match guest {
            Ok((kernel, initramfs)) => guest_row(&kernel, &initramfs, logs, timeout, interrupts),
            Err((kernel, problem)) => Row::not_run(kernel, problem),
        })
        .collect()
}

fn guest_row(
    kernel: &fetch::Kernel,
    initramfs: &Path,
    logs: &Path,
    timeout: Duration,
    interrupts: &capture::Interrupts,
) -> Row {
    println!("\n-- {}: booting {} under QEMU (TCG)", kernel.label(), kernel.package);
    let log = logs.join(format!("{}.log", kernel.release));
    let mut qemu = qemu::command(&kernel.vmlinuz, initramfs);
    let started = Instant::now();
    let captured =
        capture::run(&mut qemu, &log, timeout, || interrupts.raised(), |line| echo(&kernel.release, started, line));
    let mut row = row_of(captured, log, timeout, "QEMU");
    row.kernel = kernel.label();
    // A harness mistake (booting the wrong image) must not pass for the kernel's result.
    if let Some(booted) = row.results.kernel.as_deref().filter(|booted| *booted != kernel.release) {
        row.problem.get_or_insert(format!("the guest runs {booted}, not {}", kernel.release));
    }
    row
}

/// A row from a run's console; `what` names what ran, for the problem.
fn row_of(captured: Result<capture::Captured>, log: PathBuf, timeout: Duration, what: &str) -> Row {
    let captured = match captured {
        Ok(captured) => captured,
        Err(error) => return Row { problem: Some(format!("{error:#}")), log: Some(log), ..Row::default() },
    };
    let results = Results::parse(captured.lines.iter().map(String::as_str));
    let problem = match captured.status {
        None => Some(format!("timed out: {what} was killed after {} s", timeout.as_secs())),
        Some(status) if !results.finished => Some(format!("{what} ended ({status}) before the checks finished")),
        Some(status) if !status.success() => Some(format!("{what} failed ({status}) after the checks")),
        Some(_) => None,
    };
    Row { results, problem, console: captured.lines, wall: Some(captured.wall), log: Some(log), ..Row::default() }
}

/// Echoes a run's result lines as they come, with the time since it started, so a long run
/// shows progress (and where its time goes).
fn echo(kernel: &str, started: Instant, line: &str) {
    if let Some(progress) = results::progress(line) {
        println!("  [{kernel} +{:.0} s] {progress}", started.elapsed().as_secs_f64());
    }
}

fn variant_names() -> Vec<&'static str> {
    CAPTURE_VARIANTS.iter().map(|(name, _)| *name).collect()
}

/// `variants` of guest/matrix.sh: a variant a line, its name then its arguments.
fn variants_file() -> String {
    CAPTURE_VARIANTS
        .iter()
        .map(|(name, args)| format!("{}\n", [*name].iter().chain(*args).copied().collect::<Vec<_>>().join(" ")))
        .collect()
}

/// The matrix's files, as the script expects them in its MATRIX_DIR.
fn write_matrix_files(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, contents, mode) in [
        ("matrix.sh", MATRIX_SCRIPT, 0o755),
        ("smoke_check.py", SMOKE_CHECK, 0o644),
        ("variants", &variants_file(), 0o644),
    ] {
        let path = dir.join(name);
        fs::write(&path, contents).with_context(|| format!("cannot write {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the permissions of {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_are_words_the_script_can_split() {
        for (name, args) in CAPTURE_VARIANTS {
            assert!(!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)), "{name}");
            assert!(args.iter().all(|arg| !arg.is_empty() && !arg.contains(char::is_whitespace)), "{args:?}");
        }
        let file = variants_file();
        assert_eq!(file.lines().count(), CAPTURE_VARIANTS.len());
        assert!(file.starts_with("default\n"));
    }

    #[test]
    fn kernels_are_chosen_by_name() {
        assert_eq!(parse_kernel("6.12").as_deref(), Ok("6.12"));
        assert_eq!(parse_kernel("host").as_deref(), Ok("host"));
        assert_eq!(parse_kernel("5.10"), Err("not one of host, 6.1, 6.12".to_owned()));
    }

    #[test]
    fn the_script_and_the_parser_agree_on_the_marker() {
        assert!(MATRIX_SCRIPT.contains(&format!("MARK={}", results::MARKER)));
        for word in ["begin", "end", "kernel", "env", "load", "attach", "smoke", "block-begin", "block-end"] {
            assert!(MATRIX_SCRIPT.contains(&format!("mark {word}")), "matrix.sh never says `{word}`");
        }
    }
}
