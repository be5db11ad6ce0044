//! The agent's embedded trace store, read through the agent's own CLI.
//!
//! A [`Store`] is a temporary directory holding the SQLite file the agent writes. The tests never
//! open the file themselves: [`Store::spans`] runs `traces list --json` with a large limit and
//! then `traces show TRACE_ID --json` for each trace, so the read path of the CLI is under test
//! as well. Spans are parsed into [`Span`] (strictly: times must be decimal strings, as in the
//! documented JSON shape) and keep their raw JSON for failure messages.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::env::require_ebpf_host;

/// The `--limit` passed to `traces list`: larger than any test's trace count.
pub const LIST_LIMIT: usize = 100_000;

/// A fresh, temporary store location (the directory is removed on drop).
pub struct Store {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Store {
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("scouter-e2e-").tempdir().context("creating a temp dir")?;
        let path = dir.path().join("traces.db");
        Ok(Self { _dir: dir, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `traces list --json` with a limit larger than any test produces.
    pub fn traces(&self) -> Result<Vec<TraceSummary>> {
        let limit = LIST_LIMIT.to_string();
        let json = self.cli(&["traces", "list", "--json", "--limit", &limit])?;
        let traces: Vec<TraceSummary> = parse(&json, "traces list --json")?;
        if traces.len() >= LIST_LIMIT {
            bail!("traces list returned {} traces, the limit: raise LIST_LIMIT", traces.len());
        }
        Ok(traces)
    }

    /// Every span in the store: each listed trace, shown.
    pub fn spans(&self) -> Result<Vec<Span>> {
        let mut spans = Vec::new();
        for trace in self.traces()? {
            spans.extend(self.trace_spans(&trace.trace_id)?);
        }
        Ok(spans)
    }

    /// `traces show TRACE_ID --json`.
    pub fn trace_spans(&self, trace_id: &str) -> Result<Vec<Span>> {
        let json = self.cli(&["traces", "show", trace_id, "--json"])?;
        let values: Vec<Value> = parse(&json, "traces show --json")?;
        values.into_iter().map(Span::from_json).collect()
    }

    /// Polls [`Store::spans`] until `done` accepts them or `timeout` passes; returns the last
    /// spans read either way (the caller asserts on them). Read errors are retried until the
    /// deadline, then returned.
    pub fn poll_spans(&self, timeout: Duration, done: impl Fn(&[Span]) -> bool) -> Result<Vec<Span>> {
        let deadline = Instant::now() + timeout;
        loop {
            let attempt = self.spans();
            let finished = Instant::now() >= deadline;
            match attempt {
                Ok(spans) if finished || done(&spans) => return Ok(spans),
                Err(error) if finished => return Err(error),
                _ => thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Polls `traces list` (one cheap command per attempt, unlike [`Store::spans`]) until the
    /// store holds at least `at_least` spans or `timeout` passes; returns the last count.
    pub fn poll_span_count(&self, timeout: Duration, at_least: usize) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let count = self.traces().map(|traces| traces.iter().map(|t| t.span_count as usize).sum::<usize>());
            match count {
                Ok(count) if count >= at_least || Instant::now() >= deadline => return Ok(count),
                Err(error) if Instant::now() >= deadline => return Err(error),
                _ => thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    fn cli(&self, args: &[&str]) -> Result<String> {
        let binary = require_ebpf_host()?;
        let output = Command::new(&binary)
            .args(args)
            .arg("--store-path")
            .arg(&self.path)
            .env("NO_COLOR", "1")
            .output()
            .with_context(|| format!("running {}", binary.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            bail!(
                "`scouter-agent {} --store-path {}` failed ({})\nstdout:\n{stdout}\nstderr:\n{}",
                args.join(" "),
                self.path.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(stdout)
    }
}

fn parse<T: serde::de::DeserializeOwned>(json: &str, what: &str) -> Result<T> {
    serde_json::from_str(json).with_context(|| format!("`{what}` printed unexpected JSON:\n{json}"))
}

/// One row of `traces list --json`. Only the fields the tests use are typed.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceSummary {
    pub trace_id: String,
    pub root_name: String,
    pub service_name: String,
    pub span_count: u64,
}

/// A span as printed by `traces show --json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    #[serde(default)]
    pub parent_span_id: Option<String>,
    pub name: String,
    pub kind: String,
    #[serde(deserialize_with = "decimal_string")]
    pub start_time_unix_nano: u64,
    #[serde(deserialize_with = "decimal_string")]
    pub end_time_unix_nano: u64,
    pub attributes: Map<String, Value>,
    pub status: SpanStatus,
    pub resource: Resource,
    /// The span exactly as printed, for failure messages.
    #[serde(skip)]
    pub json: Value,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SpanStatus {
    pub code: String,
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Resource {
    pub attributes: Map<String, Value>,
}

impl Span {
    /// Parses one span, keeping its JSON.
    pub fn from_json(json: Value) -> Result<Self> {
        let mut span: Span = serde_json::from_value(json.clone())
            .with_context(|| format!("a span does not have the documented shape:\n{json:#}"))?;
        span.json = json;
        Ok(span)
    }

    /// A span attribute.
    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes.get(key)
    }

    /// A resource attribute.
    pub fn resource_attr(&self, key: &str) -> Option<&Value> {
        self.resource.attributes.get(key)
    }

    /// A resource attribute as an integer (None if missing or not a JSON integer).
    pub fn resource_int(&self, key: &str) -> Option<i64> {
        self.resource_attr(key).and_then(Value::as_i64)
    }

    /// A span attribute as an integer (None if missing or not a JSON integer).
    pub fn attr_int(&self, key: &str) -> Option<i64> {
        self.attr(key).and_then(Value::as_i64)
    }

    /// A span attribute as a string (None if missing or not a JSON string).
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attr(key).and_then(Value::as_str)
    }

    /// The process id the span is attributed to.
    pub fn pid(&self) -> Option<i64> {
        self.resource_int("process.pid")
    }

    /// The server port the span records.
    pub fn server_port(&self) -> Option<i64> {
        self.attr_int("server.port")
    }

    /// The JSON, pretty-printed.
    pub fn pretty(&self) -> String {
        format!("{:#}", self.json)
    }
}

/// OTLP/JSON times: decimal strings, as the span model documents.
fn decimal_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(|_| serde::de::Error::custom(format!("not a decimal nanosecond count: {text:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn example() -> Value {
        json!({
            "traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331",
            "name": "GET", "kind": "SERVER",
            "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000000500000",
            "attributes": {"url.path": "/x", "server.port": 8000},
            "status": {"code": "UNSET"},
            "resource": {"attributes": {"process.pid": 42, "service.name": "svc"}}
        })
    }

    #[test]
    fn documented_span_json_parses() {
        let span = Span::from_json(example()).unwrap();
        assert_eq!(span.start_time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(span.pid(), Some(42));
        assert_eq!(span.server_port(), Some(8000));
        assert_eq!(span.attr_str("url.path"), Some("/x"));
        assert!(span.parent_span_id.is_none());
    }

    #[test]
    fn numeric_times_are_rejected() {
        let mut json = example();
        json["startTimeUnixNano"] = json!(1);
        assert!(Span::from_json(json).is_err());
    }
}
