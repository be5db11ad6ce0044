//! The load generator: wrk with `--latency`, and the parsing of its report.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use crate::cmd;

/// How hard wrk pushes: the same for every run of a bench.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub threads: u32,
    pub connections: u32,
}

/// What one wrk run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Requests completed (the "N requests in T" line).
    pub requests: u64,
    pub requests_per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// Socket errors (connect, read, write, timeout) plus non-2xx/3xx responses.
    pub errors: u64,
}

/// wrk's command line for `duration` of load on `url`.
pub fn command(url: &str, load: Load, duration: Duration) -> Command {
    let mut wrk = Command::new("wrk");
    wrk.arg(format!("--threads={}", load.threads))
        .arg(format!("--connections={}", load.connections))
        .arg(format!("--duration={}s", duration.as_secs().max(1)))
        .args(["--timeout=5s", "--latency", url]);
    wrk
}

/// Runs wrk and parses its report.
pub fn run(url: &str, load: Load, duration: Duration) -> Result<Report> {
    let mut wrk = command(url, load, duration);
    let text = cmd::output(&mut wrk)?;
    parse(&text).with_context(|| format!("cannot read the report of `{}`:\n{text}", cmd::describe(&wrk)))
}

/// Parses the report wrk prints with `--latency`.
pub fn parse(text: &str) -> Result<Report> {
    let mut requests = None;
    let mut requests_per_sec = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut errors = 0;
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if first == "50%" {
            p50 = Some(parse_duration(words.next().unwrap_or_default())?);
        } else if first == "99%" {
            p99 = Some(parse_duration(words.next().unwrap_or_default())?);
        } else if let Some(rate) = line.strip_prefix("Requests/sec:") {
            requests_per_sec = Some(rate.trim().parse::<f64>().with_context(|| format!("bad rate in `{line}`"))?);
        } else if words.next() == Some("requests") {
            requests = Some(first.parse::<u64>().with_context(|| format!("bad count in `{line}`"))?);
        } else if let Some(counts) = line.strip_prefix("Socket errors:") {
            errors += sum_numbers(counts)?;
        } else if let Some(count) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += sum_numbers(count)?;
        }
    }
    let missing = |what: &str| format!("no {what} in wrk's report");
    Ok(Report {
        requests: requests.with_context(|| missing("request count"))?,
        requests_per_sec: requests_per_sec.with_context(|| missing("Requests/sec"))?,
        p50: p50.with_context(|| missing("50% latency (was --latency given?)"))?,
        p99: p99.with_context(|| missing("99% latency (was --latency given?)"))?,
        errors,
    })
}

/// A duration as wrk prints it: a decimal number and one of us, ms, s, m, h.
fn parse_duration(text: &str) -> Result<Duration> {
    const UNITS: &[(&str, f64)] = &[("us", 1e-6), ("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0)];
    let (number, scale) = UNITS
        .iter()
        .find_map(|(unit, scale)| text.strip_suffix(unit).map(|number| (number, scale)))
        .with_context(|| format!("`{text}` is not a wrk duration"))?;
    let value = number.parse::<f64>().with_context(|| format!("`{text}` is not a wrk duration"))?;
    Ok(Duration::from_secs_f64(value * scale))
}

/// Sums the numbers in "connect 1, read 2, write 0, timeout 3".
fn sum_numbers(text: &str) -> Result<u64> {
    let numbers = text.split(|c: char| !c.is_ascii_digit()).filter(|word| !word.is_empty());
    numbers.map(|n| n.parse::<u64>().with_context(|| format!("bad number in `{text}`"))).sum()
}

/// Fails unless `report` shows the run served requests at all.
pub fn require_traffic(report: &Report, what: &str) -> Result<()> {
    if report.requests == 0 {
        bail!("{what}: wrk completed no request");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "\
Running 10s test @ http://127.0.0.1:40123/
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     6.29ms    2.05ms  48.71ms   88.31%
    Req/Sec     1.29k   120.56     1.53k    71.50%
  Latency Distribution
     50%    5.86ms
     75%    6.88ms
     90%    8.30ms
     99%   14.12ms
  25654 requests in 10.01s, 3.96MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   2563.47
Transfer/sec:    405.56KB
";

    #[test]
    fn parses_a_latency_report() {
        let report = parse(REPORT).unwrap();
        assert_eq!(report.requests, 25654);
        assert_eq!(report.requests_per_sec, 2563.47);
        assert_eq!(report.p50, Duration::from_micros(5860));
        assert_eq!(report.p99, Duration::from_micros(14120));
        assert_eq!(report.errors, 7);
    }

    #[test]
    fn a_report_without_errors_lines_has_no_errors() {
        let clean: String =
            REPORT.lines().filter(|l| !l.contains("errors") && !l.contains("Non-2xx")).collect::<Vec<_>>().join("\n");
        assert_eq!(parse(&clean).unwrap().errors, 0);
    }

    #[test]
    fn a_report_without_percentiles_is_refused() {
        let without: String =
            REPORT.lines().filter(|l| !l.contains('%') || l.contains("Stdev")).collect::<Vec<_>>().join("\n");
        assert!(parse(&without).unwrap_err().to_string().contains("50% latency"));
    }

    #[test]
    fn parses_every_wrk_time_unit() {
        assert_eq!(parse_duration("825.00us").unwrap(), Duration::from_micros(825));
        assert_eq!(parse_duration("1.50s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2.00m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("12").is_err());
        assert!(parse_duration("fastms").is_err());
    }
}
