//! Terminal views of the trace store: `scouter-agent traces list` and `scouter-agent traces show`.
//!
//! Each command opens the store read-only (the agent may be writing it at the same time), builds
//! its whole output as one string with small pure rendering functions, and prints it. The JSON
//! forms are for scripts and keep the store's shapes:
//! - `list --json`: an array of [`TraceSummary`] (ids in hex, `startTimeUnixNano` a decimal string
//!   as in the span JSON, `durationNanos` and `spanCount` numbers);
//! - `show --json`: an array of spans exactly as [`Span`] serializes, in start order.
//!
//! The text forms are for people: a table of traces, and a trace as a tree of spans with a
//! waterfall bar per span. Span names and attributes come from network traffic, so control
//! characters are escaped before they reach the terminal.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;

use anyhow::{anyhow, bail, Context as _};

use crate::spans::{AttributeValue, Span, SpanId, StatusCode, TraceId};
use crate::store::{TraceStore, TraceSummary};

/// `traces list`: the `limit` most recent traces, newest first.
pub fn list(store: &Path, limit: usize, json: bool) -> anyhow::Result<()> {
    print(&list_output(store, limit, json)?)
}

/// `traces show`: one trace, as a waterfall or as JSON.
pub fn show(store: &Path, trace_id: &str, json: bool) -> anyhow::Result<()> {
    print(&show_output(store, trace_id, json)?)
}

fn list_output(store_path: &Path, limit: usize, json: bool) -> anyhow::Result<String> {
    let store = TraceStore::open_read_only(store_path)?;
    let summaries = store.list_traces(limit)?;
    if json {
        return to_json(&summaries);
    }
    if summaries.is_empty() {
        return Ok(empty_store_message(store_path));
    }
    Ok(render_trace_table(&summaries))
}

fn show_output(store_path: &Path, trace_id: &str, json: bool) -> anyhow::Result<String> {
    let trace_id = parse_trace_id(trace_id)?;
    let store = TraceStore::open_read_only(store_path)?;
    let spans = store.trace(&trace_id)?;
    if spans.is_empty() {
        bail!(
            "trace {trace_id} is not in the trace store {}: it may have been pruned or not exported \
             yet (`scouter-agent traces list` shows the stored traces)",
            store_path.display()
        );
    }
    if json {
        return to_json(&spans);
    }
    Ok(render_trace(&trace_id, &spans))
}

/// Accepts upper case too, since ids get copied from places that print them that way.
fn parse_trace_id(text: &str) -> anyhow::Result<TraceId> {
    text.trim().to_ascii_lowercase().parse().map_err(|_| {
        anyhow!(
            "invalid trace id {text:?}: expected 32 hex digits, not all zero \
             (as in the first column of `scouter-agent traces list`)"
        )
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> anyhow::Result<String> {
    serde_json::to_string_pretty(value).context("cannot encode the output as JSON")
}

/// Writes `text` and a final newline to stdout. A closed pipe (`traces list | head`) is not an
/// error: the reader simply wanted no more.
fn print(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(error).context("cannot write to standard output")
        }
        _ => Ok(()),
    }
}

fn empty_store_message(store_path: &Path) -> String {
    format!(
        "No traces in {} yet: traced requests appear here once the agent has exported their spans.",
        store_path.display()
    )
}

// ---------------------------------------------------------------------------------------------
// The trace table.

fn render_trace_table(summaries: &[TraceSummary]) -> String {
    let rows: Vec<[String; 6]> = summaries
        .iter()
        .map(|summary| {
            [
                summary.trace_id.to_hex(),
                format_utc_timestamp(summary.start_time_unix_nano),
                format_millis(summary.duration_nanos),
                summary.span_count.to_string(),
                truncate(&printable(&summary.service_name), MAX_SERVICE_WIDTH),
                printable(&summary.root_name),
            ]
        })
        .collect();
    let header = ["TRACE ID", "START (UTC)", "DURATION", "SPANS", "SERVICE", "ROOT"].map(String::from);
    let widths: Vec<usize> = (0..header.len())
        .map(|column| rows.iter().chain([&header]).map(|row| width(&row[column])).max().unwrap_or(0))
        .collect();
    let render_row = |row: &[String; 6]| {
        format!(
            "{}  {}  {}  {}  {}  {}",
            pad_right(&row[0], widths[0]),
            pad_right(&row[1], widths[1]),
            pad_left(&row[2], widths[2]),
            pad_left(&row[3], widths[3]),
            pad_right(&row[4], widths[4]),
            row[5],
        )
    };
    std::iter::once(&header)
        .chain(&rows)
        .map(|row| render_row(row).trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------------
// One trace: a tree of spans with a waterfall.

/// Width of the waterfall bar, in terminal cells.
const BAR_WIDTH: usize = 40;
const MAX_LABEL_WIDTH: usize = 60;
const MAX_SERVICE_WIDTH: usize = 24;
/// The widest kind name, so the column lines up whatever the spans' kinds.
const KIND_WIDTH: usize = "INTERNAL".len();

/// A span's place in the tree: the glyphs drawn before its name.
#[derive(Debug)]
struct TreeRow<'a> {
    span: &'a Span,
    prefix: String,
}

fn render_trace(trace_id: &TraceId, spans: &[Span]) -> String {
    let trace_start = spans.iter().map(|span| span.start_time_unix_nano).min().unwrap_or(0);
    let trace_end = spans.iter().map(|span| span.end_time_unix_nano).max().unwrap_or(trace_start);
    let trace_duration = trace_end.saturating_sub(trace_start);
    let rows = tree_rows(spans);
    let labels: Vec<String> = rows
        .iter()
        .map(|row| truncate(&format!("{}{}", row.prefix, printable(&row.span.name)), MAX_LABEL_WIDTH))
        .collect();
    let services: Vec<String> =
        rows.iter().map(|row| truncate(&printable(row.span.resource.service_name()), MAX_SERVICE_WIDTH)).collect();
    let label_width = labels.iter().map(|label| width(label)).max().unwrap_or(0).max("SPAN".len());
    let service_width = services.iter().map(|service| width(service)).max().unwrap_or(0).max("SERVICE".len());
    let durations: Vec<String> = rows.iter().map(|row| format_duration(row.span.duration_nanos())).collect();
    let duration_width = durations.iter().map(|duration| width(duration)).max().unwrap_or(0).max("DURATION".len());

    let mut lines = vec![
        format!(
            "Trace {trace_id}  started {}  lasted {}  {} span{}",
            format_utc_timestamp(trace_start),
            format_duration(trace_duration),
            spans.len(),
            if spans.len() == 1 { "" } else { "s" },
        ),
        String::new(),
        format!(
            "{}  {}  {}  {}  {}",
            pad_right("SPAN", label_width),
            pad_right("KIND", KIND_WIDTH),
            pad_right("SERVICE", service_width),
            pad_left("DURATION", duration_width),
            format_args!("WATERFALL (0 to {})", format_duration(trace_duration)),
        ),
    ];
    for (index, row) in rows.iter().enumerate() {
        let bar = waterfall_bar(
            row.span.start_time_unix_nano.saturating_sub(trace_start),
            row.span.duration_nanos(),
            trace_duration,
            BAR_WIDTH,
        );
        let line = format!(
            "{}  {}  {}  {}  |{bar}|  {}",
            pad_right(&labels[index], label_width),
            pad_right(row.span.kind.as_str(), KIND_WIDTH),
            pad_right(&services[index], service_width),
            pad_left(&durations[index], duration_width),
            span_details(row.span),
        );
        lines.push(line.trim_end().to_owned());
    }
    lines.join("\n")
}

/// Spans in display order: each followed by its children (by start time), drawn with tree
/// glyphs. Orphans, whose parent is not in the store (another service, or pruned), are shown at
/// the top level, as are spans caught in a parent cycle (corrupt data must still be visible).
fn tree_rows(spans: &[Span]) -> Vec<TreeRow<'_>> {
    let index_of: HashMap<SpanId, usize> =
        spans.iter().enumerate().map(|(index, span)| (span.span_id, index)).collect();
    let parent_of = |index: usize| {
        spans[index].parent_span_id.and_then(|parent| index_of.get(&parent).copied()).filter(|&parent| parent != index)
    };
    let by_start = |a: &usize, b: &usize| {
        let key = |index: &usize| (spans[*index].start_time_unix_nano, spans[*index].span_id);
        key(a).cmp(&key(b))
    };
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); spans.len()];
    let mut top_level = Vec::new();
    for index in 0..spans.len() {
        match parent_of(index) {
            Some(parent) => children[parent].push(index),
            None => top_level.push(index),
        }
    }
    children.iter_mut().for_each(|siblings| siblings.sort_by(by_start));
    top_level.sort_by(by_start);

    let mut visited = vec![false; spans.len()];
    let mut rows = Vec::with_capacity(spans.len());
    for root in top_level {
        push_subtree(spans, &children, root, &mut visited, &mut rows);
    }
    // Whatever is left was only reachable from itself: a parent cycle.
    for index in 0..spans.len() {
        push_subtree(spans, &children, index, &mut visited, &mut rows);
    }
    rows
}

/// Appends `root` and its unvisited descendants, depth first. Iterative, so that a pathologically
/// deep trace cannot overflow the stack.
fn push_subtree<'a>(
    spans: &'a [Span],
    children: &[Vec<usize>],
    root: usize,
    visited: &mut [bool],
    rows: &mut Vec<TreeRow<'a>>,
) {
    // (span, glyphs before its name, glyphs its children's lines start with)
    let mut pending = vec![(root, String::new(), String::new())];
    while let Some((index, prefix, continuation)) = pending.pop() {
        if visited[index] {
            continue;
        }
        visited[index] = true;
        rows.push(TreeRow { span: &spans[index], prefix });
        let unvisited: Vec<usize> = children[index].iter().copied().filter(|&child| !visited[child]).collect();
        for (position, &child) in unvisited.iter().enumerate().rev() {
            let last = position + 1 == unvisited.len();
            let (branch, rail) = if last { ("└─ ", "   ") } else { ("├─ ", "│  ") };
            pending.push((child, format!("{continuation}{branch}"), format!("{continuation}{rail}")));
        }
    }
}

/// A fixed-width bar: the filled part's offset and length are the span's start and duration as
/// shares of the trace. Every span gets at least one cell, so instantaneous ones stay visible.
fn waterfall_bar(offset_nanos: u64, duration_nanos: u64, trace_nanos: u64, width: usize) -> String {
    if width == 0 {
        return String::new();
    }
    let (first, end) = if trace_nanos == 0 {
        (0, 1)
    } else {
        let scale = |nanos: u64, round_up: bool| {
            let scaled = u128::from(nanos.min(trace_nanos)) * width as u128;
            let cells =
                if round_up { scaled.div_ceil(u128::from(trace_nanos)) } else { scaled / u128::from(trace_nanos) };
            cells as usize
        };
        let first = scale(offset_nanos, false).min(width - 1);
        let end = scale(offset_nanos.saturating_add(duration_nanos), true).clamp(first + 1, width);
        (first, end)
    };
    format!("{}{}{}", " ".repeat(first), "█".repeat(end - first), " ".repeat(width - end))
}

/// The attributes worth a glance (method, path, response status), then the status if an error.
fn span_details(span: &Span) -> String {
    let attribute = |key: &str| span.attributes.get(key).map(AttributeValue::to_string);
    let mut parts: Vec<String> =
        [attribute("http.request.method"), attribute("url.path")].into_iter().flatten().collect();
    if let Some(status) = attribute("http.response.status_code") {
        parts.push(format!("→ {status}"));
    }
    if span.status.code == StatusCode::Error {
        parts.push(match span.status.message.as_str() {
            "" => "ERROR".to_owned(),
            message => format!("ERROR: {message}"),
        });
    }
    printable(&parts.join(" "))
}

// ---------------------------------------------------------------------------------------------
// Formatting helpers.

/// Durations in the unit that keeps them short: `850 ns`, `12.5 µs`, `3.25 ms`, `1.50 s`.
fn format_duration(nanos: u64) -> String {
    /// (nanoseconds per unit, unit, decimals shown)
    type Unit = (u64, &'static str, u32);
    const UNITS: [Unit; 4] = [(1, "ns", 0), (1_000, "µs", 1), (1_000_000, "ms", 2), (1_000_000_000, "s", 2)];
    // Rounded to the shown precision before choosing, so 999_999 ns reads `1.00 ms`, not `1000.0 µs`.
    let scaled = |(per_unit, _, decimals): Unit| {
        (u128::from(nanos) * 10u128.pow(decimals) + u128::from(per_unit) / 2) / u128::from(per_unit)
    };
    let below_a_thousand = |unit: &Unit| scaled(*unit) < 1000 * 10u128.pow(unit.2);
    let unit = UNITS.into_iter().find(below_a_thousand).unwrap_or(UNITS[UNITS.len() - 1]);
    format_fixed_point(scaled(unit), unit.2, unit.1)
}

/// The table's duration column: always milliseconds, so values compare at a glance.
fn format_millis(nanos: u64) -> String {
    format_fixed_point((u128::from(nanos) + 500) / 1_000, 3, "ms")
}

fn format_fixed_point(scaled: u128, decimals: u32, unit: &str) -> String {
    if decimals == 0 {
        return format!("{scaled} {unit}");
    }
    let precision = 10u128.pow(decimals);
    format!("{}.{:0width$} {unit}", scaled / precision, scaled % precision, width = decimals as usize)
}

/// RFC 3339 in UTC with milliseconds, e.g. `2023-11-14T22:13:20.123Z`.
fn format_utc_timestamp(unix_nano: u64) -> String {
    const NANOS_PER_DAY: u64 = 86_400 * 1_000_000_000;
    let days = unix_nano / NANOS_PER_DAY;
    let millis_of_day = (unix_nano % NANOS_PER_DAY) / 1_000_000;
    let (year, month, day) = civil_date(days);
    let seconds_of_day = millis_of_day / 1_000;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        seconds_of_day / 3_600,
        seconds_of_day / 60 % 60,
        seconds_of_day % 60,
        millis_of_day % 1_000,
    )
}

/// The Gregorian (year, month, day) of a count of days since 1970-01-01.
///
/// Counts in 400-year eras of 146 097 days from 0000-03-01: starting the year in March puts the
/// leap day last, so the month follows from the day of the year with one linear formula.
fn civil_date(days_since_epoch: u64) -> (u64, u64, u64) {
    const DAYS_FROM_0000_03_01_TO_EPOCH: u64 = 719_468;
    const DAYS_PER_ERA: u64 = 146_097;
    let days = days_since_epoch + DAYS_FROM_0000_03_01_TO_EPOCH;
    let era = days / DAYS_PER_ERA;
    let day_of_era = days % DAYS_PER_ERA;
    // Years in the era, discounting leap days (every 4 years, except centuries, except the era's).
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

/// `text` with control characters (terminal escape sequences among them) shown escaped.
fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// Characters, as a stand-in for terminal cells (exact for the text these views print).
fn width(text: &str) -> usize {
    text.chars().count()
}

fn truncate(text: &str, max_width: usize) -> String {
    if width(text) <= max_width {
        return text.to_owned();
    }
    let kept: String = text.chars().take(max_width.saturating_sub(1)).collect();
    format!("{kept}…")
}

fn pad_right(text: &str, to_width: usize) -> String {
    format!("{text}{}", " ".repeat(to_width.saturating_sub(width(text))))
}

fn pad_left(text: &str, to_width: usize) -> String {
    format!("{}{text}", " ".repeat(to_width.saturating_sub(width(text))))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::StoreConfig;
    use crate::spans::SpanKind;
    use crate::spans::{Attributes, Resource, Status};

    const T0: u64 = 1_700_000_000_123_456_789;

    fn span(name: &str, id: u64, parent: Option<u64>, start: u64, end: u64) -> Span {
        let mut resource = Resource::default();
        resource.attributes.insert("service.name".into(), "api".into());
        Span {
            trace_id: "0af7651916cd43dd8448eb211c80319c".parse().unwrap(),
            span_id: SpanId(id.to_be_bytes()),
            parent_span_id: parent.map(|parent| SpanId(parent.to_be_bytes())),
            name: name.into(),
            kind: SpanKind::Internal,
            start_time_unix_nano: T0 + start,
            end_time_unix_nano: T0 + end,
            attributes: Attributes::new(),
            status: Status::default(),
            resource: Arc::new(resource),
            flags: Default::default(),
            trace_state: String::new(),
            events: Vec::new(),
            links: Vec::new(),
            scope: None,
        }
    }

    fn tree_labels(spans: &[Span]) -> Vec<String> {
        tree_rows(spans).iter().map(|row| format!("{}{}", row.prefix, row.span.name)).collect()
    }

    #[test]
    fn children_are_drawn_under_their_parents_in_start_order() {
        let spans = [
            span("root", 1, None, 0, 100),
            span("second child", 3, Some(1), 50, 90),
            span("first child", 2, Some(1), 10, 40),
            span("grandchild", 4, Some(2), 20, 30),
        ];
        assert_eq!(tree_labels(&spans), ["root", "├─ first child", "│  └─ grandchild", "└─ second child"]);
    }

    #[test]
    fn orphans_and_parent_cycles_are_shown_at_the_top_level() {
        let spans = [
            span("root", 1, None, 0, 100),
            span("orphan", 2, Some(99), 5, 10),
            span("orphan's child", 3, Some(2), 6, 7),
            span("cycle a", 4, Some(5), 8, 9),
            span("cycle b", 5, Some(4), 8, 9),
            span("own parent", 6, Some(6), 1, 2),
        ];
        assert_eq!(tree_labels(&spans), ["root", "own parent", "orphan", "└─ orphan's child", "cycle a", "└─ cycle b"]);
    }

    #[test]
    fn bars_are_proportional_to_start_and_duration() {
        assert_eq!(waterfall_bar(0, 100, 100, 10), "██████████");
        assert_eq!(waterfall_bar(50, 50, 100, 10), "     █████");
        assert_eq!(waterfall_bar(25, 50, 100, 10), "  ██████  ");
        assert_eq!(waterfall_bar(0, 10, 100, 10), "█         ");
    }

    #[test]
    fn bars_show_instant_spans_and_stay_inside_the_trace() {
        assert_eq!(waterfall_bar(0, 0, 100, 10), "█         ");
        assert_eq!(waterfall_bar(100, 0, 100, 10), "         █");
        assert_eq!(waterfall_bar(90, 1_000, 100, 10), "         █");
        assert_eq!(waterfall_bar(0, 0, 0, 4), "█   ");
        assert_eq!(waterfall_bar(0, 5, 5, 0), "");
    }

    #[test]
    fn durations_use_the_shortest_readable_unit() {
        assert_eq!(format_duration(0), "0 ns");
        assert_eq!(format_duration(999), "999 ns");
        assert_eq!(format_duration(1_000), "1.0 µs");
        assert_eq!(format_duration(12_540), "12.5 µs");
        assert_eq!(format_duration(999_999), "1.00 ms");
        assert_eq!(format_duration(3_254_000), "3.25 ms");
        assert_eq!(format_duration(1_500_000_000), "1.50 s");
        assert_eq!(format_duration(3_600_000_000_000), "3600.00 s");
        assert_eq!(format_millis(12_345_678), "12.346 ms");
        assert_eq!(format_millis(250_000), "0.250 ms");
        assert_eq!(format_millis(0), "0.000 ms");
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        const SECOND: u64 = 1_000_000_000;
        assert_eq!(format_utc_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_utc_timestamp(T0), "2023-11-14T22:13:20.123Z");
        assert_eq!(format_utc_timestamp(951_782_400 * SECOND), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_utc_timestamp(951_868_799_999 * 1_000_000), "2000-02-29T23:59:59.999Z");
        assert_eq!(format_utc_timestamp(4_107_542_399 * SECOND), "2100-02-28T23:59:59.000Z");
        assert_eq!(format_utc_timestamp(4_107_542_400 * SECOND), "2100-03-01T00:00:00.000Z");
        assert_eq!(format_utc_timestamp(u64::MAX), "2554-07-21T23:34:33.709Z");
    }

    #[test]
    fn a_trace_renders_as_a_tree_with_bars_and_key_attributes() {
        let mut root = span("GET /users/{id}", 1, None, 0, 4_000_000);
        root.kind = SpanKind::Server;
        root.attributes.insert("http.request.method".into(), "GET".into());
        root.attributes.insert("url.path".into(), "/users/7".into());
        root.attributes.insert("http.response.status_code".into(), 500i64.into());
        root.status = Status { code: StatusCode::Error, message: "boom".into() };
        let child = span("SELECT users", 2, Some(1), 1_000_000, 3_000_000);
        let trace_id = root.trace_id;

        let text = render_trace(&trace_id, &[root, child]);

        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "Trace 0af7651916cd43dd8448eb211c80319c  started 2023-11-14T22:13:20.123Z  lasted 4.00 ms  2 spans"
        );
        assert_eq!(lines[1], "");
        assert_eq!(lines[2], "SPAN             KIND      SERVICE  DURATION  WATERFALL (0 to 4.00 ms)");
        let bar = |offset: usize, cells: usize| {
            format!("|{}{}{}|", " ".repeat(offset), "█".repeat(cells), " ".repeat(BAR_WIDTH - offset - cells))
        };
        assert_eq!(
            lines[3],
            format!("GET /users/{{id}}  SERVER    api       4.00 ms  {}  GET /users/7 → 500 ERROR: boom", bar(0, 40))
        );
        assert_eq!(lines[4], format!("└─ SELECT users  INTERNAL  api       2.00 ms  {}", bar(10, 20)));
        assert_eq!(lines.len(), 5);
    }

    #[test]
    fn the_table_aligns_columns_under_a_header() {
        let summary = |id: &str, service: &str, duration_nanos: u64, span_count: u64| TraceSummary {
            trace_id: id.parse().unwrap(),
            root_name: "GET /".into(),
            service_name: service.into(),
            start_time_unix_nano: T0,
            duration_nanos,
            span_count,
        };
        let table = render_trace_table(&[
            summary("0af7651916cd43dd8448eb211c80319c", "checkout", 12_345_678, 12),
            summary("4bf92f3577b34da6a3ce929d0e0e4736", "api", 1_500_000_000, 1),
        ]);
        assert_eq!(
            table,
            "TRACE ID                          START (UTC)                  DURATION  SPANS  SERVICE   ROOT\n\
             0af7651916cd43dd8448eb211c80319c  2023-11-14T22:13:20.123Z    12.346 ms     12  checkout  GET /\n\
             4bf92f3577b34da6a3ce929d0e0e4736  2023-11-14T22:13:20.123Z  1500.000 ms      1  api       GET /"
        );
    }

    #[test]
    fn control_characters_from_the_network_are_escaped() {
        assert_eq!(printable("GET /\u{1b}[2J\n"), "GET /\\u{1b}[2J\\n");
        assert_eq!(printable("plain µs"), "plain µs");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abcd", 4), "abcd");
    }

    #[test]
    fn trace_ids_are_checked_before_the_store_is_opened() {
        let id = parse_trace_id(" 0AF7651916CD43DD8448EB211C80319C ").unwrap();
        assert_eq!(id.to_hex(), "0af7651916cd43dd8448eb211c80319c");
        let error = show_output(Path::new("/nonexistent/traces.db"), "xyz", false).unwrap_err();
        assert!(error.to_string().contains("invalid trace id \"xyz\": expected 32 hex digits"), "{error}");
        assert!(parse_trace_id("00000000000000000000000000000000").is_err());
    }

    fn store_with(spans: &[Span]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("traces.db");
        let config = StoreConfig { path: path.clone(), max_age: std::time::Duration::MAX, max_bytes: u64::MAX };
        TraceStore::open(&config).unwrap().insert(spans).unwrap();
        (dir, path)
    }

    #[test]
    fn list_of_an_empty_store_is_a_friendly_line_or_an_empty_array() {
        let (_dir, path) = store_with(&[]);
        assert!(list_output(&path, 20, false).unwrap().starts_with("No traces in "));
        assert_eq!(list_output(&path, 20, true).unwrap(), "[]");
    }

    #[test]
    fn list_json_is_an_array_of_summaries() {
        let (_dir, path) = store_with(&[span("root", 1, None, 0, 10), span("child", 2, Some(1), 2, 30)]);
        let json: serde_json::Value = serde_json::from_str(&list_output(&path, 20, true).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!([{
                "traceId": "0af7651916cd43dd8448eb211c80319c",
                "rootName": "root",
                "serviceName": "api",
                "startTimeUnixNano": T0.to_string(),
                "durationNanos": 30,
                "spanCount": 2,
            }])
        );
        assert!(list_output(&path, 20, false).unwrap().contains("0af7651916cd43dd8448eb211c80319c"));
    }

    #[test]
    fn show_json_prints_the_spans_as_they_serialize() {
        let spans = [span("root", 1, None, 0, 10), span("child", 2, Some(1), 2, 30)];
        let (_dir, path) = store_with(&spans);
        let shown: serde_json::Value =
            serde_json::from_str(&show_output(&path, "0af7651916cd43dd8448eb211c80319c", true).unwrap()).unwrap();
        assert_eq!(shown, serde_json::to_value(&spans).unwrap());
        assert_eq!(shown[1]["parentSpanId"], "0000000000000001");
    }

    #[test]
    fn show_of_an_unknown_trace_or_store_is_an_error() {
        let (_dir, path) = store_with(&[span("root", 1, None, 0, 10)]);
        let error = show_output(&path, "4bf92f3577b34da6a3ce929d0e0e4736", false).unwrap_err();
        assert!(
            error.to_string().starts_with("trace 4bf92f3577b34da6a3ce929d0e0e4736 is not in the trace store"),
            "{error}"
        );
        let missing = path.with_file_name("absent.db");
        let error = list_output(&missing, 20, false).unwrap_err();
        assert!(error.to_string().starts_with("no trace store at "), "{error}");
    }
}
