//! The store's schema, its versioning, and the connection settings both processes need.
//!
//! The schema version lives in SQLite's `PRAGMA user_version`: 0 means "no Scouter schema" and
//! version N means the first N entries of [`MIGRATIONS`] have been applied. A later release adds
//! a migration at the end of the list; the agent applies the missing ones when it opens the store,
//! and the read-only viewer refuses any version but its own rather than misread the rows.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use super::error::{AtPath, StoreError};

/// Each entry upgrades the schema by one version. Never edit a released entry: append one.
const MIGRATIONS: &[&str] = &[V1_SPANS];

/// The version this build writes and reads.
pub(super) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// One row per span. The columns the store queries on are copied out of the span; the span itself
/// is kept whole as JSON so that nothing is lost and the viewer prints exactly what was exported.
const V1_SPANS: &str = "
CREATE TABLE spans (
    trace_id             TEXT    NOT NULL, -- 32 lowercase hex digits
    span_id              TEXT    NOT NULL, -- 16 lowercase hex digits
    parent_span_id       TEXT,
    name                 TEXT    NOT NULL,
    kind                 TEXT    NOT NULL, -- as in the span JSON: SERVER, CLIENT, ...
    start_time_unix_nano INTEGER NOT NULL,
    end_time_unix_nano   INTEGER NOT NULL,
    service_name         TEXT    NOT NULL,
    pid                  INTEGER,          -- the resource's process.pid, when it has one
    span_json            TEXT    NOT NULL,
    PRIMARY KEY (trace_id, span_id)
);
-- Pruning deletes the oldest spans first; listing walks back from the newest.
CREATE INDEX spans_by_start ON spans (start_time_unix_nano);
-- A trace's spans in start order, and its first start, without touching the table.
CREATE INDEX spans_by_trace_start ON spans (trace_id, start_time_unix_nano);
CREATE INDEX spans_by_service_start ON spans (service_name, start_time_unix_nano);
CREATE INDEX spans_by_pid_start ON spans (pid, start_time_unix_nano) WHERE pid IS NOT NULL;
";

/// The agent writes while `traces list` reads from another process; a writer's transaction is
/// short, so waiting this long for a lock only fails when something is badly stuck.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// After a checkpoint the write-ahead log is truncated to this size, so a burst does not leave a
/// large WAL file behind for good.
const WAL_SIZE_LIMIT_BYTES: i64 = 8 * 1024 * 1024;

/// Settings for the agent's connection. Called before [`migrate`].
pub(super) fn configure_writer(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT).at(path)?;
    // Takes effect only on a database without tables, i.e. a new store, which is when it matters:
    // it lets pruning hand freed pages back to the file system (`PRAGMA incremental_vacuum`).
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL").at(path)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)).at(path)?;
    if !mode.eq_ignore_ascii_case("wal") {
        // Some file systems (network ones) cannot do WAL; the store still works, but readers and
        // the writer then block each other.
        tracing::warn!(path = %path.display(), %mode, "trace store: WAL journal mode unavailable");
    }
    // In WAL mode NORMAL cannot corrupt the database; a power loss may only drop the last spans.
    conn.pragma_update(None, "synchronous", "NORMAL").at(path)?;
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT_BYTES).at(path)?;
    Ok(())
}

/// Settings for the viewer's connection, and a check that it understands the schema.
pub(super) fn configure_reader(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT).at(path)?;
    conn.pragma_update(None, "query_only", true).at(path)?;
    match user_version(conn, path)? {
        found if found <= 0 => Err(not_a_store(path)),
        found if found > SCHEMA_VERSION => Err(newer_schema(path, found)),
        found if found < SCHEMA_VERSION => {
            Err(StoreError::OlderSchema { path: path.to_owned(), found, expected: SCHEMA_VERSION })
        }
        _ => Ok(()),
    }
}

/// Brings the schema up to [`SCHEMA_VERSION`], in one transaction so that a concurrent reader sees
/// either no schema or the whole of it.
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    // IMMEDIATE: two agents starting at once must not both apply the same migration.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).at(path)?;
    let found = user_version(&tx, path)?;
    if found > SCHEMA_VERSION {
        return Err(newer_schema(path, found));
    }
    // A negative version, or tables without a version: somebody else's database. Do not add our
    // tables to it, nor later prune it.
    let applied = usize::try_from(found).map_err(|_| not_a_store(path))?;
    if applied == 0 && has_tables(&tx, path)? {
        return Err(not_a_store(path));
    }
    for migration in &MIGRATIONS[applied..] {
        tx.execute_batch(migration).at(path)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION).at(path)?;
    tx.commit().at(path)
}

fn user_version(conn: &Connection, path: &Path) -> Result<i64, StoreError> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0)).at(path)
}

fn has_tables(conn: &Connection, path: &Path) -> Result<bool, StoreError> {
    conn.query_row("SELECT EXISTS (SELECT 1 FROM sqlite_schema)", [], |row| row.get(0)).at(path)
}

fn newer_schema(path: &Path, found: i64) -> StoreError {
    StoreError::NewerSchema { path: path.to_owned(), found, supported: SCHEMA_VERSION }
}

fn not_a_store(path: &Path) -> StoreError {
    StoreError::NotAStore { path: path.to_owned() }
}
