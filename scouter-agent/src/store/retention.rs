//! Pruning: the store keeps spans for a bounded time and within a bounded size.
//!
//! Deletions run in chunks, each its own short transaction, so that a large prune never holds the
//! write lock for long (the exporter keeps inserting, and a checkpoint needs a gap between writes).
//! Deleted rows only free whole pages; `PRAGMA incremental_vacuum` then hands those pages back to
//! the file system, which is why new stores are created with `auto_vacuum = INCREMENTAL`.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use super::error::{AtPath, StoreError};
use super::rows::nanos_to_sql;
use crate::config::StoreConfig;

/// How much the store keeps: the writable store's copy of the [`StoreConfig`] limits.
#[derive(Clone, Copy, Debug)]
pub(super) struct Retention {
    pub max_age: Duration,
    pub max_bytes: u64,
}

impl From<&StoreConfig> for Retention {
    fn from(config: &StoreConfig) -> Self {
        Self { max_age: config.max_age, max_bytes: config.max_bytes }
    }
}

/// A chunk is sized to what should free enough space; the minimum only keeps a nearly met bound
/// from taking one row at a time, and stays small so a small store is not emptied by overshoot.
/// The maximum keeps each transaction, and so the write lock, short.
const MIN_CHUNK_SPANS: u64 = 16;
const MAX_CHUNK_SPANS: u64 = 20_000;

/// Once over `max_bytes`, trim to this share of it, so that a store at its bound is not trimmed
/// again by every prune.
const LOW_WATER_PERCENT: u64 = 90;

/// Deletes what `retention` no longer allows at `now_unix_nano` and returns how many spans went.
pub(super) fn prune(
    conn: &Connection,
    path: &Path,
    retention: Retention,
    now_unix_nano: u64,
) -> Result<u64, StoreError> {
    let max_age_nanos = u64::try_from(retention.max_age.as_nanos()).unwrap_or(u64::MAX);
    let cutoff = now_unix_nano.saturating_sub(max_age_nanos);
    let mut deleted = delete_started_before(conn, path, cutoff)?;
    deleted += delete_oldest_while_over(conn, path, retention.max_bytes)?;
    reclaim_free_pages(conn, path)?;
    Ok(deleted)
}

/// Bytes the rows and indexes occupy: the pages in use, not counting free ones awaiting reuse.
pub(super) fn used_bytes(conn: &Connection, path: &Path) -> Result<u64, StoreError> {
    let pragma = |name: &str| -> Result<u64, StoreError> {
        let value: i64 = conn.pragma_query_value(None, name, |row| row.get(0)).at(path)?;
        Ok(u64::try_from(value).unwrap_or(0))
    };
    let pages_in_use = pragma("page_count")?.saturating_sub(pragma("freelist_count")?);
    Ok(pages_in_use.saturating_mul(pragma("page_size")?))
}

fn delete_started_before(conn: &Connection, path: &Path, cutoff_unix_nano: u64) -> Result<u64, StoreError> {
    let mut deleted = 0;
    loop {
        let chunk = conn
            .execute(
                "DELETE FROM spans WHERE rowid IN (
                     SELECT rowid FROM spans WHERE start_time_unix_nano < ?1
                     ORDER BY start_time_unix_nano LIMIT ?2)",
                (nanos_to_sql(cutoff_unix_nano), MAX_CHUNK_SPANS),
            )
            .at(path)? as u64;
        deleted += chunk;
        if chunk < MAX_CHUNK_SPANS {
            return Ok(deleted);
        }
    }
}

fn delete_oldest_while_over(conn: &Connection, path: &Path, max_bytes: u64) -> Result<u64, StoreError> {
    if used_bytes(conn, path)? <= max_bytes {
        return Ok(0);
    }
    let target = max_bytes / 100 * LOW_WATER_PERCENT;
    let mut deleted = 0;
    loop {
        let used = used_bytes(conn, path)?;
        let spans = span_count(conn, path)?;
        // With no spans left the schema alone is over a (tiny) bound: nothing more to delete.
        if used <= target || spans == 0 {
            return Ok(deleted);
        }
        let chunk = chunk_to_free(used - target, used, spans);
        let removed = delete_oldest(conn, path, chunk)?;
        if removed == 0 {
            return Ok(deleted);
        }
        deleted += removed;
    }
}

/// How many spans to delete to free `excess` bytes, assuming spans of average size; freed space
/// lags behind deleted rows (partly filled index pages), so the caller loops until it is enough.
fn chunk_to_free(excess: u64, used: u64, spans: u64) -> u64 {
    let bytes_per_span = (used / spans.max(1)).max(1);
    excess.div_ceil(bytes_per_span).clamp(MIN_CHUNK_SPANS, MAX_CHUNK_SPANS)
}

fn delete_oldest(conn: &Connection, path: &Path, spans: u64) -> Result<u64, StoreError> {
    let deleted = conn
        .execute(
            "DELETE FROM spans WHERE rowid IN (
                 SELECT rowid FROM spans ORDER BY start_time_unix_nano LIMIT ?1)",
            [spans],
        )
        .at(path)?;
    Ok(deleted as u64)
}

fn span_count(conn: &Connection, path: &Path) -> Result<u64, StoreError> {
    let count: i64 = conn.query_row("SELECT count(*) FROM spans", [], |row| row.get(0)).at(path)?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// Gives free pages back to the file system. Without this the file never shrinks (SQLite reuses
/// free pages, so it would only stop growing).
fn reclaim_free_pages(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let free_pages: i64 = conn.pragma_query_value(None, "freelist_count", |row| row.get(0)).at(path)?;
    if free_pages == 0 {
        return Ok(());
    }
    // incremental_vacuum frees one page per result row: it must be stepped to the end.
    let mut statement = conn.prepare("PRAGMA incremental_vacuum").at(path)?;
    let mut rows = statement.query([]).at(path)?;
    while rows.next().at(path)?.is_some() {}
    // In WAL mode the truncated file only reaches the disk with a checkpoint. PASSIVE never waits
    // for a reader (`traces list`); if one is active, a later checkpoint finishes the job.
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())).at(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_sized_from_the_average_span_and_bounded() {
        assert_eq!(chunk_to_free(1_000_000, 1_000_000, 1_000), 1_000);
        assert_eq!(chunk_to_free(10, 1_000_000, 1_000), MIN_CHUNK_SPANS);
        assert_eq!(chunk_to_free(u64::MAX / 2, 1_000, 1_000), MAX_CHUNK_SPANS);
        assert_eq!(chunk_to_free(1_000_000, 1_000, 0), 1_000);
    }
}
