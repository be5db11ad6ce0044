//! The neighbours part's workloads: processes nobody asked the agent to trace, one heavy on
//! plain syscalls, one on socket I/O.
//!
//! - dd copies /dev/zero to /dev/null in 64-byte blocks: one read and one write syscall per
//!   block, nothing else, so it shows what the agent adds to every read/write on the host
//!   (nothing with socket capture, a tracepoint program per syscall with `--io-capture=syscalls`).
//!   Its figure comes from dd's own report (records and seconds, with LC_ALL=C), so the
//!   process's start and exit are left out.
//! - redis-server under redis-benchmark: loopback TCP, every request a socket read and write on
//!   both sides, which the agent's socket programs see (and must pass over: neither is Python).
//!   The server runs for the whole part on a free port, persistence off; redis-benchmark's
//!   `--csv` report gives each test's requests per second.
//!
//! dd and redis-benchmark run to completion in the bench's process group, like wrk, so a
//! Ctrl-C reaches them too; redis-server is a [`Process`] and stops with the bench.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use super::process::{check_interrupt, Process};
use super::service::free_port;
use crate::cmd;

/// dd's blocks: each one read and one write syscall.
pub const DD_COUNT: u64 = 1_000_000;
const DD_BLOCK_BYTES: u32 = 64;
/// redis-benchmark's connections and requests per test (SET, then GET): a run of both takes a
/// few seconds on a 2-core machine.
const REDIS_CLIENTS: u32 = 20;
pub const REDIS_REQUESTS: u64 = 100_000;
/// The requests of one redis-benchmark run: both tests.
pub const REDIS_OPERATIONS: u64 = 2 * REDIS_REQUESTS;
/// How long redis-server may take to answer PING.
const REDIS_READY_TIMEOUT: Duration = Duration::from_secs(15);

/// dd's command line.
pub fn dd_command() -> Command {
    let mut dd = Command::new("dd");
    dd.args(["if=/dev/zero", "of=/dev/null", &format!("bs={DD_BLOCK_BYTES}"), &format!("count={DD_COUNT}")])
        .env("LC_ALL", "C");
    dd
}

/// Runs dd; read and write syscalls per second.
pub fn run_dd() -> Result<f64> {
    let mut dd = dd_command();
    let out = dd.stdin(Stdio::null()).output().with_context(|| format!("cannot start `{}`", cmd::describe(&dd)))?;
    let report = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("`{}` failed ({}): {}", cmd::describe(&dd), out.status, report.trim());
    }
    let copy =
        parse_dd(&report).with_context(|| format!("cannot read the report of `{}`:\n{report}", cmd::describe(&dd)))?;
    Ok(copy.syscalls as f64 / copy.seconds)
}

/// What dd reported.
#[derive(Clone, Copy, Debug, PartialEq)]
struct DdCopy {
    /// Records in plus records out (full and partial): a read or a write syscall each.
    syscalls: u64,
    seconds: f64,
}

/// dd's report on stderr (C locale):
/// `1000000+0 records in`, `1000000+0 records out`,
/// `64000000 bytes (64 MB, 61 MiB) copied, 0.352 s, 182 MB/s`.
fn parse_dd(text: &str) -> Result<DdCopy> {
    let records = |direction: &str| -> Result<u64> {
        let line = text
            .lines()
            .find_map(|line| line.trim().strip_suffix(direction))
            .with_context(|| format!("no `{direction}` line"))?;
        let (full, partial) = line.trim().split_once('+').with_context(|| format!("`{line}` is not FULL+PARTIAL"))?;
        let count = |n: &str| n.parse::<u64>().with_context(|| format!("`{line}` is not FULL+PARTIAL"));
        Ok(count(full)? + count(partial)?)
    };
    let seconds = text
        .lines()
        .find_map(|line| line.split_once(" copied, "))
        .and_then(|(_, rest)| rest.split_once(" s"))
        .context("no `copied, SECONDS s` line")?
        .0;
    let seconds: f64 = seconds.trim().parse().with_context(|| format!("`{seconds}` is not a number of seconds"))?;
    if seconds <= 0.0 {
        bail!("dd reports {seconds} s");
    }
    Ok(DdCopy { syscalls: records("records in")? + records("records out")?, seconds })
}

/// redis-server on 127.0.0.1 and a free port, without persistence, stopped when dropped.
pub struct RedisServer {
    _process: Process,
    port: u16,
}

impl RedisServer {
    /// Starts the server, its output going to `log`, and waits until it answers PING.
    pub fn start(log: &Path, dir: &Path) -> Result<Self> {
        let port = free_port()?;
        let output = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = Command::new("redis-server");
        command
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output);
        let mut process = Process::spawn("redis-server", &mut command)?;
        wait_for_pong(&mut process, port).with_context(|| format!("redis-server's log: {}", log.display()))?;
        Ok(Self { _process: process, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

fn wait_for_pong(process: &mut Process, port: u16) -> Result<()> {
    let deadline = Instant::now() + REDIS_READY_TIMEOUT;
    while !answers_ping(port) {
        check_interrupt()?;
        process.ensure_running()?;
        if Instant::now() >= deadline {
            bail!("redis-server did not answer PING on port {port} within {REDIS_READY_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Whether a server on `port` answers `PING` with `+PONG`.
fn answers_ping(port: u16) -> bool {
    let timeout = Duration::from_secs(1);
    let Ok(mut stream) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout) else { return false };
    let _ = stream.set_read_timeout(Some(timeout));
    let mut reply = String::new();
    stream.write_all(b"PING\r\n").is_ok()
        && BufReader::new(stream).read_line(&mut reply).is_ok()
        && reply.trim_end() == "+PONG"
}

/// redis-benchmark's command line against `port`.
pub fn benchmark_command(port: &str) -> Command {
    let mut benchmark = Command::new("redis-benchmark");
    benchmark.args(["-h", "127.0.0.1", "-p", port, "-c", &REDIS_CLIENTS.to_string(), "-t", "set,get"]);
    benchmark.args(["-n", &REDIS_REQUESTS.to_string(), "--csv"]);
    benchmark
}

/// Requests per second of each redis-benchmark test.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RedisRates {
    pub set: f64,
    pub get: f64,
}

impl RedisRates {
    /// Both tests' mean.
    pub fn mean(&self) -> f64 {
        (self.set + self.get) / 2.0
    }
}

/// Runs redis-benchmark against the server.
pub fn run_benchmark(server: &RedisServer) -> Result<RedisRates> {
    let mut benchmark = benchmark_command(&server.port().to_string());
    let text = cmd::output(&mut benchmark)?;
    parse_benchmark_csv(&text)
        .with_context(|| format!("cannot read the report of `{}`:\n{text}", cmd::describe(&benchmark)))
}

/// redis-benchmark's `--csv` report: a header row naming the columns (`"test","rps",...`),
/// then a row per test. Without a header (older versions) the rate is the second column.
/// Anything else (a progress line ending in `\r`) is passed over.
fn parse_benchmark_csv(text: &str) -> Result<RedisRates> {
    let mut rate_column = 1;
    let (mut set, mut get) = (None, None);
    for line in text.split(['\n', '\r']) {
        let fields: Vec<&str> = line.split(',').map(|field| field.trim().trim_matches('"')).collect();
        if fields.first() == Some(&"test") {
            rate_column = fields.iter().position(|&name| name == "rps").context("the CSV header has no `rps`")?;
            continue;
        }
        let rate = || -> Result<f64> {
            let text = fields.get(rate_column).with_context(|| format!("no requests per second in `{line}`"))?;
            text.parse().with_context(|| format!("`{text}` is not a number of requests per second"))
        };
        match fields[0] {
            "SET" => set = Some(rate()?),
            "GET" => get = Some(rate()?),
            _ => {}
        }
    }
    Ok(RedisRates { set: set.context("no SET row")?, get: get.context("no GET row")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_dd_records_and_seconds() {
        let report = "1000000+0 records in\n1000000+0 records out\n\
                      64000000 bytes (64 MB, 61 MiB) copied, 0.352871 s, 181 MB/s\n";
        assert_eq!(parse_dd(report).unwrap(), DdCopy { syscalls: 2_000_000, seconds: 0.352871 });
        let partial = "999+1 records in\n999+1 records out\n64000 bytes (64 kB, 62 KiB) copied, 6.5e-05 s, 985 MB/s\n";
        assert_eq!(parse_dd(partial).unwrap(), DdCopy { syscalls: 2000, seconds: 6.5e-05 });
    }

    #[test]
    fn refuses_a_dd_report_without_records_or_time() {
        assert!(parse_dd("1000000+0 records in\n1000000+0 records out\n").is_err());
        assert!(parse_dd("64000000 bytes (64 MB, 61 MiB) copied, 0.3 s, 181 MB/s\n").is_err());
        assert!(parse_dd("x+0 records in\n1+0 records out\n64 bytes copied, 0.3 s, 1 MB/s\n").is_err());
        assert!(parse_dd("1+0 records in\n1+0 records out\n64 bytes copied, 0 s, 1 MB/s\n").is_err());
    }

    #[test]
    fn reads_redis_benchmark_csv_with_a_header() {
        let report = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\
                      \"p99_latency_ms\",\"max_latency_ms\"\n\
                      \"SET\",\"81566.07\",\"0.150\",\"0.040\",\"0.143\",\"0.231\",\"0.327\",\"2.119\"\n\
                      \"GET\",\"84033.61\",\"0.139\",\"0.032\",\"0.135\",\"0.199\",\"0.263\",\"1.031\"\n";
        let rates = parse_benchmark_csv(report).unwrap();
        assert_eq!(rates, RedisRates { set: 81566.07, get: 84033.61 });
        assert!((rates.mean() - 82799.84).abs() < 1e-6);
    }

    #[test]
    fn reads_redis_benchmark_csv_without_a_header_and_skips_progress() {
        let report = "SET: rps=80000.0 (overall: 79000.0) avg_msec=0.150\r\"SET\",\"79840.00\"\n\
                      \"GET\",\"83000.50\"\n";
        assert_eq!(parse_benchmark_csv(report).unwrap(), RedisRates { set: 79840.0, get: 83000.5 });
        assert!(parse_benchmark_csv("\"SET\",\"1.0\"\n").unwrap_err().to_string().contains("no GET row"));
        assert!(parse_benchmark_csv("\"SET\",\"fast\"\n\"GET\",\"1\"\n").is_err());
        assert!(parse_benchmark_csv("\"test\",\"avg\"\n").is_err());
    }
}
