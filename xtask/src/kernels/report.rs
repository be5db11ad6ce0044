//! The matrix's report: each kernel's `check --verifier` output (and, for a failed run, what
//! explains it), then one table, a row per kernel, so the verdict is the last thing printed.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use super::results::{Results, Verdict};

/// Console lines shown for a run that failed without saying why in its own output.
const TAIL_LINES: usize = 40;

/// One kernel's run, whatever became of it.
#[derive(Debug, Default)]
pub struct Row {
    /// The kernel's name in the table: its release, and where it came from.
    pub kernel: String,
    pub results: Results,
    /// What went wrong around the checks (fetching, booting, a timeout), if anything.
    pub problem: Option<String>,
    /// The run's console output, for the tail of a failed run.
    pub console: Vec<String>,
    pub wall: Option<Duration>,
    pub log: Option<PathBuf>,
}

impl Row {
    /// A kernel that never ran: `problem` says why.
    pub fn not_run(kernel: String, problem: String) -> Self {
        Self { kernel, problem: Some(problem), ..Self::default() }
    }

    /// Load, then attach per variant, then smoke per variant.
    fn cells(&self, variants: &[&str]) -> Vec<Cell> {
        let results = &self.results;
        let mut cells = vec![Cell::of(results.load.as_ref())];
        cells.extend(variants.iter().map(|v| Cell::of(results.attach.get(*v))));
        cells.extend(variants.iter().map(|v| Cell::of(results.smoke.get(*v))));
        cells
    }

    pub fn failed(&self, variants: &[&str]) -> bool {
        self.problem.is_some() || !self.results.finished || self.cells(variants).iter().any(|c| *c != Cell::Ok)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cell {
    Ok,
    Failed,
    /// The run never reported it (it died or timed out first).
    Missing,
}

impl Cell {
    fn of(verdict: Option<&Verdict>) -> Self {
        match verdict {
            Some(Verdict { ok: true, .. }) => Self::Ok,
            Some(_) => Self::Failed,
            None => Self::Missing,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "FAILED",
            Self::Missing => "FAILED (no result)",
        }
    }
}

/// Each kernel's details, then the table.
pub fn print(rows: &[Row], variants: &[&str]) {
    for row in rows {
        print!("{}", details(row, variants));
    }
    println!("\n== kernel matrix ==");
    print!("{}", table(rows, variants));
}

/// The check output of one kernel, and for a failed run the output that says why.
fn details(row: &Row, variants: &[&str]) -> String {
    let mut text = String::new();
    let results = &row.results;
    let _ = writeln!(text, "\n== {}: scouter-agent check --verifier ==", row.kernel);
    if let Some(environment) = &results.environment {
        let _ = writeln!(text, "(environment: {environment})");
    }
    match results.block("check") {
        Some(lines) => lines.iter().for_each(|line| push_line(&mut text, line)),
        None => text.push_str("(no output: the run did not get that far)\n"),
    }
    if !row.failed(variants) {
        return text;
    }
    if let Some(problem) = &row.problem {
        let _ = writeln!(text, "-- problem: {problem}");
    }
    for variant in variants {
        let failed =
            |verdicts: &std::collections::BTreeMap<String, Verdict>| !verdicts.get(*variant).is_some_and(|v| v.ok);
        if !failed(&results.attach) && !failed(&results.smoke) {
            continue;
        }
        for block in [format!("agent-{variant}"), format!("smoke-{variant}")] {
            if let Some(lines) = results.block(&block) {
                let _ = writeln!(text, "-- {block}:");
                lines.iter().for_each(|line| push_line(&mut text, line));
            }
        }
    }
    if !results.finished && !row.console.is_empty() {
        let skip = row.console.len().saturating_sub(TAIL_LINES);
        let _ = writeln!(text, "-- the last {} console lines:", row.console.len() - skip);
        row.console[skip..].iter().for_each(|line| push_line(&mut text, line));
    }
    if let Some(log) = &row.log {
        let _ = writeln!(text, "-- whole log: {}", log.display());
    }
    text
}

fn push_line(text: &mut String, line: &str) {
    let _ = writeln!(text, "  {}", line.trim_end_matches('\r'));
}

/// kernel | load | attach VARIANT... | smoke VARIANT... | time, columns as wide as their cells.
fn table(rows: &[Row], variants: &[&str]) -> String {
    let mut header = vec!["kernel".to_owned(), "load".to_owned()];
    header.extend(variants.iter().map(|v| format!("attach {v}")));
    header.extend(variants.iter().map(|v| format!("smoke {v}")));
    header.push("time".to_owned());
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let mut cells = vec![row.kernel.clone()];
            cells.extend(row.cells(variants).iter().map(|c| c.text().to_owned()));
            cells.push(row.wall.map_or_else(|| "-".to_owned(), |wall| format!("{:.0} s", wall.as_secs_f64())));
            cells
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| std::iter::once(&header).chain(&body).map(|cells| cells[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for cells in std::iter::once(&header).chain(&body) {
        let line: Vec<String> = cells.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        let _ = writeln!(text, "{}", line.join("  ").trim_end());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished_row(kernel: &str, lines: &str) -> Row {
        let results = Results::parse(lines.lines());
        Row { kernel: kernel.into(), results, wall: Some(Duration::from_secs(42)), ..Row::default() }
    }

    const GOOD: &str = "\
SCOUTER-MATRIX begin
SCOUTER-MATRIX block-begin check
ok  BTF  present
SCOUTER-MATRIX block-end check
SCOUTER-MATRIX load ok
SCOUTER-MATRIX attach default ok
SCOUTER-MATRIX smoke default ok
SCOUTER-MATRIX attach syscalls ok
SCOUTER-MATRIX smoke syscalls failed
SCOUTER-MATRIX block-begin smoke-syscalls
no SERVER span with url.path /smoke-syscalls
SCOUTER-MATRIX block-end smoke-syscalls
SCOUTER-MATRIX end
";

    #[test]
    fn renders_one_column_per_check_and_variant() {
        let rows = [
            finished_row("6.18.44 (host)", GOOD),
            Row::not_run("6.12 (Debian)".into(), "apt-get download failed".into()),
        ];
        let table = table(&rows, &["default", "syscalls"]);
        let expected = "\
kernel          load                attach default      attach syscalls     smoke default       smoke syscalls      time
6.18.44 (host)  ok                  ok                  ok                  ok                  FAILED              42 s
6.12 (Debian)   FAILED (no result)  FAILED (no result)  FAILED (no result)  FAILED (no result)  FAILED (no result)  -
";
        assert_eq!(table, expected);
    }

    #[test]
    fn a_row_fails_on_any_cell_a_problem_or_an_unfinished_run() {
        let good = finished_row("k", GOOD);
        assert!(!good.failed(&["default"]));
        assert!(good.failed(&["default", "syscalls"]));
        // A variant the run never reported.
        assert!(good.failed(&["default", "other"]));
        let unfinished = finished_row("k", &GOOD.replace("SCOUTER-MATRIX end\n", ""));
        assert!(unfinished.failed(&["default"]));
        let timed_out = Row { problem: Some("timed out".into()), ..finished_row("k", GOOD) };
        assert!(timed_out.failed(&["default"]));
    }

    #[test]
    fn details_explain_a_failure_and_stay_short_otherwise() {
        let good = details(&finished_row("k", GOOD), &["default"]);
        assert!(good.contains("  ok  BTF  present"), "{good}");
        assert!(!good.contains("smoke-syscalls"), "{good}");
        let bad = details(&finished_row("k", GOOD), &["default", "syscalls"]);
        assert!(bad.contains("-- smoke-syscalls:\n  no SERVER span"), "{bad}");

        let console: Vec<String> = (0..100).map(|i| format!("line {i}")).collect();
        let cut = Row { console, problem: Some("timed out after 600 s".into()), ..Row::default() };
        let text = details(&cut, &["default"]);
        assert!(text.contains("-- problem: timed out after 600 s"));
        assert!(text.contains("the last 40 console lines:\n  line 60\n"), "{text}");
        assert!(!text.contains("line 59\n"));
    }
}
