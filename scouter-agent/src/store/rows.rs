//! How a span maps onto a row of the `spans` table, and back.

use std::borrow::Borrow;
use std::path::Path;

use rusqlite::{params, Transaction};

use super::error::{AtPath, StoreError};
use crate::spans::{Span, TraceId};

/// A span exported twice (same trace and span id) keeps one row holding its latest version: the
/// exporter may retry a batch, and a span re-sent with more detail should win.
const UPSERT_SPAN: &str = "
INSERT INTO spans (trace_id, span_id, parent_span_id, name, kind, start_time_unix_nano,
                   end_time_unix_nano, service_name, pid, span_json)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
ON CONFLICT (trace_id, span_id) DO UPDATE SET
    parent_span_id       = excluded.parent_span_id,
    name                 = excluded.name,
    kind                 = excluded.kind,
    start_time_unix_nano = excluded.start_time_unix_nano,
    end_time_unix_nano   = excluded.end_time_unix_nano,
    service_name         = excluded.service_name,
    pid                  = excluded.pid,
    span_json            = excluded.span_json";

pub(super) fn upsert_spans<S: Borrow<Span>>(tx: &Transaction<'_>, path: &Path, spans: &[S]) -> Result<(), StoreError> {
    let mut statement = tx.prepare_cached(UPSERT_SPAN).at(path)?;
    for span in spans {
        let span = span.borrow();
        let json = serde_json::to_string(span).map_err(|source| StoreError::EncodeSpan {
            path: path.to_owned(),
            span_id: span.span_id.to_hex(),
            source,
        })?;
        statement
            .execute(params![
                span.trace_id.to_hex(),
                span.span_id.to_hex(),
                span.parent_span_id.map(|id| id.to_hex()),
                span.name,
                span.kind.as_str(),
                nanos_to_sql(span.start_time_unix_nano),
                nanos_to_sql(span.end_time_unix_nano),
                span.resource.service_name(),
                span.resource.process_pid(),
                json,
            ])
            .at(path)?;
    }
    Ok(())
}

pub(super) fn decode_span(path: &Path, json: &str) -> Result<Span, StoreError> {
    serde_json::from_str(json).map_err(|error| corrupt(path, format!("span JSON: {error}")))
}

pub(super) fn decode_trace_id(path: &Path, hex: &str) -> Result<TraceId, StoreError> {
    hex.parse().map_err(|error| corrupt(path, format!("{error}")))
}

/// SQLite integers are signed; nanoseconds since the epoch fit until the year 2262, so clamping
/// only affects nonsense timestamps (which the JSON still holds exactly).
pub(super) fn nanos_to_sql(nanos: u64) -> i64 {
    i64::try_from(nanos).unwrap_or(i64::MAX)
}

pub(super) fn nanos_from_sql(nanos: i64) -> u64 {
    u64::try_from(nanos).unwrap_or(0)
}

fn corrupt(path: &Path, reason: String) -> StoreError {
    StoreError::Corrupt { path: path.to_owned(), reason }
}
