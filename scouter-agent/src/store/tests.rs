use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::retention::used_bytes;
use super::*;
use crate::spans::{AttributeValue, Attributes, Resource, SpanId, SpanKind, Status, StatusCode};

const HOUR: Duration = Duration::from_secs(3600);
const NOW: u64 = 1_700_000_000_000_000_000;

fn config(path: &Path) -> StoreConfig {
    StoreConfig { path: path.to_owned(), max_age: 72 * HOUR, max_bytes: 512 * 1024 * 1024 }
}

fn resource(service: &str, pid: i64) -> Arc<Resource> {
    let mut attributes = Attributes::new();
    attributes.insert("service.name".into(), service.into());
    attributes.insert("process.pid".into(), pid.into());
    Arc::new(Resource { attributes })
}

fn span(trace: &TraceId, parent: Option<SpanId>, name: &str, start: u64, end: u64) -> Span {
    Span {
        trace_id: *trace,
        span_id: SpanId::random(),
        parent_span_id: parent,
        name: name.into(),
        kind: SpanKind::Server,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes: Attributes::new(),
        status: Status::default(),
        resource: resource("api", 42),
        flags: Default::default(),
        trace_state: String::new(),
        events: Vec::new(),
        links: Vec::new(),
        scope: None,
    }
}

fn open_temp() -> (tempfile::TempDir, TraceStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = TraceStore::open(&config(&dir.path().join("traces.db"))).unwrap();
    (dir, store)
}

fn stored_span_count(store: &TraceStore) -> i64 {
    store.conn.query_row("SELECT count(*) FROM spans", [], |row| row.get(0)).unwrap()
}

#[test]
fn round_trip_keeps_every_field_and_fills_the_indexed_columns() {
    let (_dir, mut store) = open_temp();
    let trace = TraceId::random();
    let mut full = span(&trace, Some(SpanId::random()), "GET /users/{id}", NOW, NOW + 1_500_000);
    full.kind = SpanKind::Client;
    full.attributes.insert("http.request.method".into(), "GET".into());
    full.attributes.insert("http.response.status_code".into(), 503i64.into());
    full.attributes.insert("retry".into(), true.into());
    full.attributes.insert("ratio".into(), AttributeValue::Double(0.25));
    full.status = Status { code: StatusCode::Error, message: "upstream timed out".into() };
    full.resource = resource("checkout", 4242);

    store.insert(std::slice::from_ref(&full)).unwrap();

    assert_eq!(store.trace(&trace).unwrap(), vec![full.clone()]);
    let columns: (String, String, Option<String>, String, i64, i64, String, Option<i64>) = store
        .conn
        .query_row(
            "SELECT trace_id, span_id, parent_span_id, kind, start_time_unix_nano,
                    end_time_unix_nano, service_name, pid FROM spans",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?)),
        )
        .unwrap();
    assert_eq!(columns.0, trace.to_hex());
    assert_eq!(columns.1, full.span_id.to_hex());
    assert_eq!(columns.2, full.parent_span_id.map(|id| id.to_hex()));
    assert_eq!(columns.3, "CLIENT");
    assert_eq!((columns.4, columns.5), (NOW as i64, NOW as i64 + 1_500_000));
    assert_eq!(columns.6, "checkout");
    assert_eq!(columns.7, Some(4242));
}

#[test]
fn a_span_without_pid_or_service_is_stored_with_defaults() {
    let (_dir, mut store) = open_temp();
    let mut bare = span(&TraceId::random(), None, "work", NOW, NOW + 1);
    bare.resource = Arc::new(Resource::default());
    store.insert(std::slice::from_ref(&bare)).unwrap();
    let (service, pid): (String, Option<i64>) =
        store.conn.query_row("SELECT service_name, pid FROM spans", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    assert_eq!((service.as_str(), pid), ("unknown_service", None));
    assert_eq!(store.trace(&bare.trace_id).unwrap(), vec![bare]);
}

#[test]
fn inserting_a_span_twice_keeps_one_row_with_the_latest_version() {
    let (_dir, mut store) = open_temp();
    let trace = TraceId::random();
    let first = span(&trace, None, "GET", NOW, NOW + 10);
    let mut again = first.clone();
    again.name = "GET /orders".into();

    store.insert(&[first.clone(), first.clone()]).unwrap();
    store.insert(std::slice::from_ref(&again)).unwrap();

    assert_eq!(store.trace(&trace).unwrap(), vec![again]);
    assert_eq!(stored_span_count(&store), 1);
    assert_eq!(store.list_traces(10).unwrap()[0].span_count, 1);
}

#[test]
fn prune_deletes_spans_older_than_max_age() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&dir.path().join("traces.db"));
    config.max_age = HOUR;
    let mut store = TraceStore::open(&config).unwrap();
    let old = span(&TraceId::random(), None, "old", NOW - 2 * HOUR.as_nanos() as u64, NOW - HOUR.as_nanos() as u64);
    let recent = span(&TraceId::random(), None, "recent", NOW - 60_000_000_000, NOW);
    store.insert(&[old.clone(), recent.clone()]).unwrap();

    assert_eq!(store.prune_at(NOW).unwrap(), 1);

    assert!(store.trace(&old.trace_id).unwrap().is_empty());
    assert_eq!(store.trace(&recent.trace_id).unwrap(), vec![recent]);
    assert_eq!(store.prune_at(NOW).unwrap(), 0);
}

#[test]
fn prune_uses_the_wall_clock() {
    let (_dir, mut store) = open_temp();
    let ancient = span(&TraceId::random(), None, "ancient", 1_000, 2_000);
    store.insert(&[ancient]).unwrap();
    assert_eq!(store.prune().unwrap(), 1);
}

#[test]
fn size_pruning_keeps_the_file_under_the_bound() {
    const MAX_BYTES: u64 = 256 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("traces.db");
    let mut config = config(&path);
    config.max_bytes = MAX_BYTES;
    let mut store = TraceStore::open(&config).unwrap();

    // Several times the bound in all, pruned between batches as the agent's housekeeping does.
    let mut newest = None;
    let mut deleted = 0;
    for batch in 0..20u64 {
        let spans: Vec<Span> = (0..200u64)
            .map(|i| {
                let start = NOW + (batch * 200 + i) * 1_000;
                let mut s = span(&TraceId::random(), None, "GET /items/{id}", start, start + 500);
                s.attributes.insert("url.path".into(), format!("/items/{i}/{}", "x".repeat(300)).into());
                s
            })
            .collect();
        newest = spans.last().cloned();
        store.insert(&spans).unwrap();
        deleted += store.prune_at(NOW).unwrap();
        assert!(used_bytes(&store.conn, &path).unwrap() <= MAX_BYTES);
    }

    assert!(deleted > 0, "the test must exceed the bound");
    let file_bytes = std::fs::metadata(&path).unwrap().len();
    assert!(file_bytes <= MAX_BYTES, "{file_bytes} bytes on disk, bound {MAX_BYTES}");
    // The oldest spans went first: the newest one is still there.
    let newest = newest.unwrap();
    assert_eq!(store.trace(&newest.trace_id).unwrap(), vec![newest]);
    assert_eq!(stored_span_count(&store) as u64, 20 * 200 - deleted);
}

#[test]
fn spans_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir.path().join("nested/dirs/traces.db"));
    let kept = span(&TraceId::random(), None, "GET", NOW, NOW + 5);
    {
        let mut store = TraceStore::open(&config).unwrap();
        store.insert(std::slice::from_ref(&kept)).unwrap();
    }

    let store = TraceStore::open(&config).unwrap();
    assert_eq!(store.trace(&kept.trace_id).unwrap(), vec![kept.clone()]);
    let reader = TraceStore::open_read_only(&config.path).unwrap();
    assert_eq!(reader.trace(&kept.trace_id).unwrap(), vec![kept]);
}

#[test]
fn new_stores_use_wal_and_incremental_vacuum() {
    let (_dir, store) = open_temp();
    let mode: String = store.conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
    let auto_vacuum: i64 = store.conn.pragma_query_value(None, "auto_vacuum", |r| r.get(0)).unwrap();
    let version: i64 = store.conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(auto_vacuum, 2, "INCREMENTAL");
    assert_eq!(version, schema::SCHEMA_VERSION);
}

#[test]
fn list_is_newest_first_with_root_summaries() {
    let (_dir, mut store) = open_temp();
    let (older, newer, orphaned) = (TraceId::random(), TraceId::random(), TraceId::random());
    let root = span(&older, None, "GET /checkout", NOW, NOW + 100);
    let mut child = span(&older, Some(root.span_id), "SELECT", NOW + 10, NOW + 150);
    child.resource = resource("db", 7);
    // Its parent lives in a process the agent does not see: the earliest such span is the root.
    let remote_child = span(&newer, Some(SpanId::random()), "GET /users", NOW + 1_000, NOW + 1_300);
    let mut local_child = span(&newer, Some(remote_child.span_id), "render", NOW + 1_100, NOW + 1_200);
    local_child.resource = resource("web", 8);
    let lonely = span(&orphaned, Some(SpanId::random()), "POST /late", NOW + 2_000, NOW + 2_001);
    store.insert(&[child, local_child, root, lonely, remote_child]).unwrap();

    let summaries = store.list_traces(10).unwrap();

    let ids: Vec<TraceId> = summaries.iter().map(|s| s.trace_id).collect();
    assert_eq!(ids, vec![orphaned, newer, older]);
    assert_eq!(
        summaries[2],
        TraceSummary {
            trace_id: older,
            root_name: "GET /checkout".into(),
            service_name: "api".into(),
            start_time_unix_nano: NOW,
            duration_nanos: 150,
            span_count: 2,
        }
    );
    assert_eq!((summaries[1].root_name.as_str(), summaries[1].duration_nanos), ("GET /users", 300));
    assert_eq!(store.list_traces(2).unwrap().len(), 2);
    assert!(store.list_traces(0).unwrap().is_empty());
}

#[test]
fn list_orders_by_trace_start_even_when_an_older_trace_has_many_recent_spans() {
    let (_dir, mut store) = open_temp();
    let (long_running, short) = (TraceId::random(), TraceId::random());
    let root = span(&long_running, None, "job", NOW, NOW + 1_000_000);
    let mut spans: Vec<Span> = (0..100)
        .map(|i| span(&long_running, Some(root.span_id), "step", NOW + 500_000 + i, NOW + 500_001 + i))
        .collect();
    spans.push(root);
    spans.push(span(&short, None, "GET", NOW + 100, NOW + 200));
    store.insert(&spans).unwrap();

    let newest = store.list_traces(1).unwrap();
    assert_eq!(newest[0].trace_id, short);
    let both: Vec<TraceId> = store.list_traces(5).unwrap().iter().map(|s| s.trace_id).collect();
    assert_eq!(both, vec![short, long_running]);
}

#[test]
fn a_trace_is_returned_in_start_order() {
    let (_dir, mut store) = open_temp();
    let trace = TraceId::random();
    let late = span(&trace, None, "late", NOW + 50, NOW + 60);
    let early = span(&trace, None, "early", NOW, NOW + 100);
    store.insert(&[late.clone(), early.clone()]).unwrap();
    store.insert(&[span(&TraceId::random(), None, "other", NOW, NOW)]).unwrap();
    assert_eq!(store.trace(&trace).unwrap(), vec![early, late]);
    assert!(store.trace(&TraceId::random()).unwrap().is_empty());
}

#[test]
fn summary_json_uses_camel_case_and_a_string_start() {
    let summary = TraceSummary {
        trace_id: "0af7651916cd43dd8448eb211c80319c".parse().unwrap(),
        root_name: "GET".into(),
        service_name: "api".into(),
        start_time_unix_nano: NOW,
        duration_nanos: 1_500,
        span_count: 3,
    };
    let json = serde_json::to_value(&summary).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "traceId": "0af7651916cd43dd8448eb211c80319c",
            "rootName": "GET",
            "serviceName": "api",
            "startTimeUnixNano": NOW.to_string(),
            "durationNanos": 1_500,
            "spanCount": 3,
        })
    );
}

#[test]
fn read_only_open_of_a_missing_file_says_how_to_create_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.db");
    let error = TraceStore::open_read_only(&path).err().unwrap();
    let shown = path.display();
    assert_eq!(error.to_string(), format!("no trace store at {shown}: has the agent run with --store-path {shown}?"));
    assert!(!path.exists(), "a read-only open must not create the file");
}

#[test]
fn the_read_only_store_reads_concurrently_but_never_writes_or_prunes() {
    let (dir, mut writer) = open_temp();
    let path = dir.path().join("traces.db");
    writer.insert(&[span(&TraceId::random(), None, "first", NOW, NOW + 1)]).unwrap();
    let mut reader = TraceStore::open_read_only(&path).unwrap();
    assert_eq!(reader.list_traces(10).unwrap().len(), 1);

    writer.insert(&[span(&TraceId::random(), None, "second", NOW + 5, NOW + 6)]).unwrap();
    assert_eq!(reader.list_traces(10).unwrap()[0].root_name, "second");

    assert!(matches!(reader.prune(), Err(StoreError::ReadOnly { .. })));
    assert!(matches!(reader.insert::<Span>(&[]), Err(StoreError::ReadOnly { .. })));
    assert_eq!(stored_span_count(&writer), 2);
}

#[test]
fn a_foreign_database_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    Connection::open(&path).unwrap().execute_batch("CREATE TABLE accounts (id INTEGER)").unwrap();

    assert!(matches!(TraceStore::open(&config(&path)), Err(StoreError::NotAStore { .. })));
    assert!(matches!(TraceStore::open_read_only(&path), Err(StoreError::NotAStore { .. })));
    let tables: i64 =
        Connection::open(&path).unwrap().query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0)).unwrap();
    assert_eq!(tables, 1);
}

#[test]
fn a_store_from_a_newer_agent_is_refused() {
    let (dir, store) = open_temp();
    store.conn.pragma_update(None, "user_version", schema::SCHEMA_VERSION + 1).unwrap();
    drop(store);
    let path = dir.path().join("traces.db");

    let error = TraceStore::open(&config(&path)).err().unwrap();
    assert!(matches!(error, StoreError::NewerSchema { .. }), "{error}");
    assert!(error.to_string().contains(&path.display().to_string()));
    assert!(matches!(TraceStore::open_read_only(&path), Err(StoreError::NewerSchema { .. })));
}
