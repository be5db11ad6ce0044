//! The embedded trace store: one SQLite file the agent writes finished spans into and
//! `scouter-agent traces list|show` reads from another process.
//!
//! Design:
//! - One row per span, keyed by (trace id, span id) so a re-exported span replaces its row. The
//!   columns queries need (ids, name, kind, times, service, pid) sit beside the whole span as JSON,
//!   so the viewer prints exactly what the exporter stored and new span fields need no migration.
//! - WAL journal mode and a busy timeout let the viewer read while the agent writes. The schema
//!   is versioned with `PRAGMA user_version` ([`schema`]); the agent migrates, the viewer only
//!   checks.
//! - The store is bounded by age and size ([`retention`]); pruning is the agent's job, run
//!   periodically, and returns the space to the file system.
//! - The viewer opens the file read-only ([`TraceStore::open_read_only`], [`read_only`]), so it
//!   can never create, migrate or prune a store, and works without write access to the directory.

mod error;
mod read_only;
mod retention;
mod rows;
mod schema;
mod summaries;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, TransactionBehavior};
use serde::Serialize;

pub use error::StoreError;

use crate::config::StoreConfig;
use crate::spans::{Span, TraceId};
use error::AtPath;
use retention::Retention;

/// One row of `traces list`.
///
/// In JSON (camelCase keys) `startTimeUnixNano` is a decimal string, as in the span JSON (a u64
/// of nanoseconds does not survive a JSON reader that uses doubles); `durationNanos` and
/// `spanCount` are plain numbers, small enough to be exact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceSummary {
    pub trace_id: TraceId,
    /// Name of the root span: one whose parent is not in the trace, else the earliest span.
    pub root_name: String,
    /// Service of the root span.
    pub service_name: String,
    /// Start of the trace's earliest span.
    #[serde(serialize_with = "crate::spans::model::nanos_as_string::serialize")]
    pub start_time_unix_nano: u64,
    /// From the earliest start to the latest end among the trace's spans.
    pub duration_nanos: u64,
    pub span_count: u64,
}

/// A connection to the store: read-write for the agent ([`TraceStore::open`]), read-only for the
/// viewer ([`TraceStore::open_read_only`]).
pub struct TraceStore {
    conn: Connection,
    path: PathBuf,
    /// `None` when read-only: such a store never writes or deletes anything.
    retention: Option<Retention>,
}

impl TraceStore {
    /// Opens the store for writing, creating its directory, file and schema if missing, and
    /// migrating an older schema.
    pub fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        let path = config.path.clone();
        create_parent_directory(&path)?;
        let mut conn = Connection::open(&path).at(&path)?;
        schema::configure_writer(&conn, &path)?;
        schema::migrate(&mut conn, &path)?;
        Ok(Self { conn, path, retention: Some(Retention::from(config)) })
    }

    /// Opens an existing store for reading only; a missing file is an error, not a new store.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let conn = read_only::connect(path)?;
        Ok(Self { conn, path: path.to_owned(), retention: None })
    }

    /// Stores `spans` in one transaction; a span already stored (same trace and span id) is
    /// replaced, never duplicated.
    pub fn insert<S: std::borrow::Borrow<Span>>(&mut self, spans: &[S]) -> Result<(), StoreError> {
        self.ensure_writable()?;
        if spans.is_empty() {
            return Ok(());
        }
        // IMMEDIATE takes the write lock up front, so the busy timeout applies to it instead of a
        // read transaction failing to upgrade halfway.
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).at(&self.path)?;
        rows::upsert_spans(&tx, &self.path, spans)?;
        tx.commit().at(&self.path)
    }

    /// Deletes spans that started more than `max_age` ago, then the oldest spans while the store
    /// exceeds `max_bytes`, and gives the freed space back to the file system. Returns how many
    /// spans were deleted.
    pub fn prune(&mut self) -> Result<u64, StoreError> {
        self.prune_at(now_unix_nano())
    }

    /// [`Self::prune`] as if the time were `now_unix_nano`.
    fn prune_at(&mut self, now_unix_nano: u64) -> Result<u64, StoreError> {
        let retention = self.ensure_writable()?;
        retention::prune(&self.conn, &self.path, retention, now_unix_nano)
    }

    /// The `limit` most recently started traces, newest first.
    pub fn list_traces(&self, limit: usize) -> Result<Vec<TraceSummary>, StoreError> {
        summaries::newest_traces(&self.conn, &self.path, limit)
    }

    /// The spans of one trace in start order; empty if the store has none of them.
    pub fn trace(&self, trace_id: &TraceId) -> Result<Vec<Span>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT span_json FROM spans WHERE trace_id = ?1
                 ORDER BY start_time_unix_nano, span_id",
            )
            .at(&self.path)?;
        let json_rows = statement.query_map([trace_id.to_hex()], |row| row.get::<_, String>(0)).at(&self.path)?;
        let mut spans = Vec::new();
        for json in json_rows {
            spans.push(rows::decode_span(&self.path, &json.at(&self.path)?)?);
        }
        Ok(spans)
    }

    fn ensure_writable(&self) -> Result<Retention, StoreError> {
        self.retention.ok_or_else(|| StoreError::ReadOnly { path: self.path.clone() })
    }
}

fn create_parent_directory(path: &Path) -> Result<(), StoreError> {
    match path.parent() {
        Some(directory) if !directory.as_os_str().is_empty() => std::fs::create_dir_all(directory)
            .map_err(|source| StoreError::CreateDirectory { directory: directory.to_owned(), source }),
        _ => Ok(()),
    }
}

fn now_unix_nano() -> u64 {
    // A clock before 1970 prunes nothing by age rather than everything.
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX)
}
