//! `traces list`: the newest traces, found without reading the whole store.
//!
//! A trace starts when its earliest span starts, so every trace that started at or after some
//! instant `since` has a span at or after `since`. The query therefore only looks at traces with a
//! span among the newest `window` spans (found through the start index), keeping those whose first
//! span is at or after `since` (the start of the oldest span in the window). If that yields
//! `limit` traces they are the newest overall, since every trace left out started before `since`.
//! Otherwise the window grows, up to the whole store.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use super::error::{AtPath, StoreError};
use super::rows::{decode_trace_id, nanos_from_sql};
use super::TraceSummary;

/// Most traces have a handful of spans: a window of this many spans per wanted trace usually
/// answers in one pass.
const FIRST_WINDOW_SPANS_PER_TRACE: i64 = 16;
const WINDOW_GROWTH: i64 = 4;

pub(super) fn newest_traces(conn: &Connection, path: &Path, limit: usize) -> Result<Vec<TraceSummary>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut window = limit.saturating_mul(FIRST_WINDOW_SPANS_PER_TRACE);
    loop {
        let since = start_of_nth_newest_span(conn, path, window)?;
        let traces = traces_started_since(conn, path, since.unwrap_or(i64::MIN), limit)?;
        // `since` is None once the window covers the whole store: the answer is then complete.
        if traces.len() as i64 >= limit || since.is_none() {
            return traces.into_iter().map(|times| summarize(conn, path, times)).collect();
        }
        window = window.saturating_mul(WINDOW_GROWTH);
    }
}

/// A trace's extent, before its root span is looked up.
struct TraceTimes {
    trace_id: String,
    first_start: i64,
    last_end: i64,
    span_count: i64,
}

fn start_of_nth_newest_span(conn: &Connection, path: &Path, n: i64) -> Result<Option<i64>, StoreError> {
    conn.query_row(
        "SELECT start_time_unix_nano FROM spans ORDER BY start_time_unix_nano DESC LIMIT 1 OFFSET ?1",
        [n.saturating_sub(1)],
        |row| row.get(0),
    )
    .optional()
    .at(path)
}

fn traces_started_since(conn: &Connection, path: &Path, since: i64, limit: i64) -> Result<Vec<TraceTimes>, StoreError> {
    let mut statement = conn
        .prepare_cached(
            "SELECT trace_id, min(start_time_unix_nano) AS first_start,
                    max(end_time_unix_nano), count(*)
             FROM spans
             WHERE trace_id IN (SELECT trace_id FROM spans WHERE start_time_unix_nano >= ?1)
             GROUP BY trace_id
             HAVING first_start >= ?1
             ORDER BY first_start DESC, trace_id
             LIMIT ?2",
        )
        .at(path)?;
    let rows = statement
        .query_map((since, limit), |row| {
            Ok(TraceTimes {
                trace_id: row.get(0)?,
                first_start: row.get(1)?,
                last_end: row.get(2)?,
                span_count: row.get(3)?,
            })
        })
        .at(path)?;
    rows.collect::<Result<_, _>>().at(path)
}

fn summarize(conn: &Connection, path: &Path, times: TraceTimes) -> Result<TraceSummary, StoreError> {
    let (root_name, service_name) = root_span_names(conn, path, &times.trace_id)?;
    let start = nanos_from_sql(times.first_start);
    Ok(TraceSummary {
        trace_id: decode_trace_id(path, &times.trace_id)?,
        root_name,
        service_name,
        start_time_unix_nano: start,
        duration_nanos: nanos_from_sql(times.last_end).saturating_sub(start),
        span_count: u64::try_from(times.span_count).unwrap_or(0),
    })
}

/// Name and service of the trace's root: a span whose parent is not in the trace (none, or one
/// in a process the agent does not see), the earliest if several; else the earliest span.
fn root_span_names(conn: &Connection, path: &Path, trace_id: &str) -> Result<(String, String), StoreError> {
    conn.prepare_cached(
        "SELECT name, service_name FROM spans AS child
         WHERE trace_id = ?1
         ORDER BY child.parent_span_id IS NULL OR NOT EXISTS (
                      SELECT 1 FROM spans AS parent
                      WHERE parent.trace_id = child.trace_id
                        AND parent.span_id = child.parent_span_id) DESC,
                  start_time_unix_nano, span_id
         LIMIT 1",
    )
    .at(path)?
    .query_row([trace_id], |row| Ok((row.get(0)?, row.get(1)?)))
    .at(path)
}
