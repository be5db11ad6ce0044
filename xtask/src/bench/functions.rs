//! The function part of the bench: what one Python call costs once the agent makes spans of
//! a selected function, for that function and for one nobody selected, on every interpreter
//! the tests use.
//!
//! Selecting functions (`scouter-agent run --function MODULE:QUALNAME`) makes the agent hook
//! every Python call of the process (a uprobe on `_PyEval_EvalFrameDefault`; on 3.11+ it also
//! sets `interp->eval_frame`), so the functions nobody selected pay for the hook too; this part
//! shows both costs side by side. The program (bench_functions.py, driven by
//! [`function_program`](super::function_program)) has two functions with the same body,
//! `selected` and `unrelated`. For each interpreter one process is measured three times, both
//! functions each time:
//! - bare: before any agent;
//! - agent: with the agent restricted to that process (`--pid`) and given
//!   `--function bench_functions:selected`, once it logs `tracing python functions pid=PID`;
//! - after: once the agent stopped (SIGTERM), which shows whether the process got back to
//!   its bare speed.
//!
//! Each figure is the best of [`REPEATS`] runs of N calls in a `for` loop (the loop's own cost
//! included, the same for both functions). Many short runs rather than a few long ones: the
//! fastest of them is likely to have run undisturbed even on a busy machine. N is sized per
//! figure: growing probe runs estimate the cost first, then N is chosen so one run takes about
//! [`RUN`]. A fixed N sized on the bare cost would take many times longer once the agent adds
//! microseconds per call; this way every figure takes about a third of a second whatever the
//! agent costs, and an interpreter a few seconds in all (the agent's start included).
//!
//! The program makes no HTTP calls, so every span in the agent's store is a function span;
//! the table compares their number with the calls of `selected` made while the agent ran.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};

use super::agent::{self, RunningAgent};
use super::foreign_agents;
use super::function_program::{Program, MODULE};
use super::process::check_interrupt;
use crate::setup;

/// Runs per figure; the figure is the fastest (the least disturbed by the rest of the machine).
const REPEATS: u32 = 30;
/// How long one measured run should take.
const RUN: Duration = Duration::from_millis(10);
/// The first probe run's calls; each next probe has ten times more.
const PROBE_FIRST_CALLS: u64 = 1_000;
/// A probe run this long gives an estimate good enough to size the measured runs.
const PROBE_RUN: Duration = Duration::from_millis(20);
/// Bounds of the measured runs' calls.
const MIN_CALLS: u64 = 100;
const MAX_CALLS: u64 = 20_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Function {
    /// Named by the agent's `--function`: its calls become spans.
    Selected,
    /// Same body, not selected: pays only for the hook on every call.
    Unrelated,
}

impl Function {
    fn name(self) -> &'static str {
        match self {
            Function::Selected => "selected",
            Function::Unrelated => "unrelated",
        }
    }
}

/// The agent's `--function` argument.
fn selection() -> String {
    format!("{MODULE}:{}", Function::Selected.name())
}

/// What the function part needs from the bench.
pub struct Part<'a> {
    agent: &'a Path,
    program_dir: PathBuf,
    out_dir: &'a Path,
}

/// One figure: ns per call, and how many calls it made (probes included).
#[derive(Clone, Copy, Debug)]
struct Figure {
    ns: f64,
    calls: u64,
}

/// Both functions, measured one after the other in the same state of the process.
#[derive(Clone, Copy, Debug)]
struct Pair {
    selected: Figure,
    unrelated: Figure,
}

struct Figures {
    bare: Pair,
    agent: Pair,
    after: Pair,
    /// Spans in the agent's store by name; `None` if the store could not be read.
    spans: Option<Vec<(String, u64)>>,
    /// Agents not started by the bench that ran while the agent was measured.
    foreign_agents: Vec<u32>,
}

pub struct Outcome {
    /// The interpreter: "pyenv-3.12.1", "debian-python3.11".
    pub label: String,
    result: Result<Figures>,
}

impl Outcome {
    pub fn failed(&self) -> bool {
        self.result.is_err()
    }
}

impl<'a> Part<'a> {
    /// `program_dir` holds bench_functions.py; logs and agent stores go to `out_dir`.
    pub fn new(agent: &'a Path, program_dir: PathBuf, out_dir: &'a Path) -> Self {
        Self { agent, program_dir, out_dir }
    }

    /// The bench header's lines about this part.
    pub fn describe(&self, line: &mut dyn FnMut(&str, String)) {
        let interpreters: Vec<String> = setup::test_interpreters().into_iter().map(|(label, _)| label).collect();
        line(
            "functions:",
            format!(
                "{}/{MODULE}.py on {}: ns per call of `selected` and of `unrelated` (same body), best of {REPEATS} \
                 runs of N calls in a `for` loop (loop included), N sized so a run takes ~{} ms",
                self.program_dir.display(),
                interpreters.join(", "),
                RUN.as_millis()
            ),
        );
        line(
            "fn modes:",
            format!(
                "bare; agent: `scouter-agent run --store-path target/bench/agent-functions-INTERPRETER.db \
                 --pid PID --function {}`, measured once it logs `tracing python functions pid=PID`; \
                 after: the same process once the agent stopped",
                selection()
            ),
        );
    }

    /// Measures every interpreter. A failed one is reported and the others still run; an
    /// interrupt stops everything.
    pub fn run_all(&self) -> Result<Vec<Outcome>> {
        let mut outcomes = Vec::new();
        for (label, python) in setup::test_interpreters() {
            println!("\n== functions / {label} ==");
            let result = self.run_one(&label, &python);
            check_interrupt()?;
            if let Err(error) = &result {
                eprintln!("error: functions/{label} failed: {error:#}");
            }
            outcomes.push(Outcome { label, result });
        }
        Ok(outcomes)
    }

    fn run_one(&self, label: &str, python: &Path) -> Result<Figures> {
        if !python.is_file() {
            bail!("{} does not exist (`cargo xtask setup` names what installs it)", python.display());
        }
        let log = self.out_dir.join(format!("functions-{label}.log"));
        let mut program = Program::start(python, &self.program_dir, &log)?;
        println!("Python {} (pid {})", program.version(), program.pid());
        let bare = measure_pair(&mut program)?;
        let mut foreign = foreign_agents(&[]);
        let store = self.out_dir.join(format!("agent-functions-{label}.db"));
        let agent_log = self.out_dir.join(format!("agent-functions-{label}.log"));
        let args = ["--pid".to_owned(), program.pid().to_string(), "--function".to_owned(), selection()];
        let mut running = RunningAgent::start(self.agent, &store, &agent_log, &args)?;
        running.wait_for_function_hook(program.pid())?;
        let traced = measure_pair(&mut program)?;
        foreign.extend(foreign_agents(&[running.pid()]));
        program.ensure_running()?;
        let store = running.stop()?;
        let after = measure_pair(&mut program)?;
        program.quit()?;
        foreign.sort_unstable();
        foreign.dedup();
        if !foreign.is_empty() {
            eprintln!("warning: other scouter-agent processes ran during this run ({foreign:?})");
        }
        // The agent has stopped, so the interpreter under test may read its store untraced.
        let spans = match agent::spans_per_name(python, &store) {
            Ok(spans) => Some(spans),
            Err(error) => {
                eprintln!("warning: cannot count the spans in {}: {error:#}", store.display());
                None
            }
        };
        Ok(Figures { bare, agent: traced, after, spans, foreign_agents: foreign })
    }
}

fn measure_pair(program: &mut Program) -> Result<Pair> {
    let selected = measure(program, Function::Selected)?;
    let unrelated = measure(program, Function::Unrelated)?;
    println!("  selected {:.1} ns/call, unrelated {:.1} ns/call", selected.ns, unrelated.ns);
    Ok(Pair { selected, unrelated })
}

/// Probes with ten times more calls each run until a run takes [`PROBE_RUN`], then measures
/// runs sized to take [`RUN`].
fn measure(program: &mut Program, function: Function) -> Result<Figure> {
    let mut probe_calls = PROBE_FIRST_CALLS;
    let mut calls_made = 0;
    let estimate = loop {
        let ns = program.per_call_ns(function.name(), probe_calls, 1)?;
        calls_made += probe_calls;
        if ns * probe_calls as f64 >= PROBE_RUN.as_nanos() as f64 || probe_calls >= MAX_CALLS {
            break ns;
        }
        probe_calls = (probe_calls * 10).min(MAX_CALLS);
    };
    let calls = run_calls(estimate);
    let ns = program.per_call_ns(function.name(), calls, REPEATS)?;
    Ok(Figure { ns, calls: calls_made + calls * u64::from(REPEATS) })
}

/// Calls per measured run for a cost of `ns_per_call`.
fn run_calls(ns_per_call: f64) -> u64 {
    let calls = RUN.as_nanos() as f64 / ns_per_call.max(f64::MIN_POSITIVE);
    // `as` saturates, and the clamp keeps the figure's runs inside sane bounds.
    (calls as u64).clamp(MIN_CALLS, MAX_CALLS)
}

const TABLE_HEADER: [&str; 8] = ["interpreter", "bare", "agent", "after", "bare", "agent", "after", "spans / calls"];

pub fn print_table(outcomes: &[Outcome]) {
    println!("\n== function calls: ns per call ==");
    println!("{:<18} {:^37}   {:^37}", "", "selected", "unrelated");
    println!("{}", table_row(&TABLE_HEADER.map(String::from)));
    for outcome in outcomes {
        match &outcome.result {
            Ok(figures) => println!("{}", table_row(&cells(&outcome.label, figures))),
            Err(_) => println!("{:<18} FAILED (see above)", outcome.label),
        }
    }
    println!(
        "bare: before the agent started; agent: while `scouter-agent run --pid PID --function {}` ran, its hook \
         in place (in brackets: the difference from bare); after: the same process once the agent stopped\n\
         each figure: the best of {REPEATS} runs of N calls in a `for` loop, the loop included (the same for \
         both functions)\n\
         spans / calls: spans in the agent's store (the program makes no HTTP calls: all are function spans) / \
         calls of `selected` made while the agent ran",
        selection()
    );
    if outcomes.iter().any(|o| o.result.as_ref().is_ok_and(|f| !f.foreign_agents.is_empty())) {
        println!("*: another scouter-agent (not the bench's) was running during this run");
    }
    print_span_names(outcomes);
}

fn table_row(cells: &[String; 8]) -> String {
    let [label, selected_bare, selected_agent, selected_after, unrelated_bare, unrelated_agent, unrelated_after, spans] =
        cells;
    format!(
        "{label:<18} {selected_bare:>9} {selected_agent:>18} {selected_after:>8}   \
         {unrelated_bare:>9} {unrelated_agent:>18} {unrelated_after:>8}   {spans}"
    )
}

fn cells(label: &str, figures: &Figures) -> [String; 8] {
    let Figures { bare, agent, after, .. } = figures;
    let marker = if figures.foreign_agents.is_empty() { "" } else { "*" };
    let spans = match &figures.spans {
        Some(spans) => format!("{} / {}", spans.iter().map(|(_, count)| count).sum::<u64>(), agent.selected.calls),
        None => format!("? / {}", agent.selected.calls),
    };
    [
        format!("{label}{marker}"),
        ns(bare.selected),
        versus(agent.selected, bare.selected),
        ns(after.selected),
        ns(bare.unrelated),
        versus(agent.unrelated, bare.unrelated),
        ns(after.unrelated),
        spans,
    ]
}

fn ns(figure: Figure) -> String {
    format!("{:.1}", figure.ns)
}

/// "812.3 (+737.8)".
fn versus(figure: Figure, bare: Figure) -> String {
    format!("{:.1} ({:+.1})", figure.ns, figure.ns - bare.ns)
}

/// The names of the spans each agent recorded, so a wrong name or a stray span shows.
fn print_span_names(outcomes: &[Outcome]) {
    let mut text = String::new();
    for outcome in outcomes {
        let Some(spans) = outcome.result.as_ref().ok().and_then(|figures| figures.spans.as_ref()) else { continue };
        let names: Vec<String> = spans.iter().map(|(name, count)| format!("{count} `{name}`")).collect();
        let names = if names.is_empty() { "none".to_owned() } else { names.join(", ") };
        let _ = writeln!(text, "{:<18} {names}", outcome.label);
    }
    if !text.is_empty() {
        print!("\n== spans in the agent's store, by name ==\n{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_sized_to_the_cost_within_bounds() {
        assert_eq!(run_calls(10.0), 1_000_000);
        assert_eq!(run_calls(1_000.0), 10_000);
        assert_eq!(run_calls(1e9), MIN_CALLS);
        assert_eq!(run_calls(0.0), MAX_CALLS);
    }

    /// The real program on this machine's python3, without an agent.
    #[test]
    fn the_program_measures_a_call_and_counts_the_calls_made() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench");
        let log = std::env::temp_dir().join(format!("xtask-functions-{}.log", std::process::id()));
        let mut program = Program::start(Path::new("python3"), &dir, &log).unwrap();
        let figure = measure(&mut program, Function::Unrelated).unwrap();
        assert!(figure.ns > 0.0 && figure.ns < 100_000.0, "{figure:?}");
        assert!(figure.calls >= PROBE_FIRST_CALLS + MIN_CALLS * u64::from(REPEATS), "{figure:?}");
        let error = program.per_call_ns("nonexistent", 1, 1).unwrap_err().to_string();
        assert!(error.contains("answered `error: expected"), "{error}");
        program.quit().unwrap();
        std::fs::remove_file(&log).unwrap();
    }

    #[test]
    fn a_row_shows_the_agent_beside_bare() {
        let figure = |ns, calls| Figure { ns, calls };
        let pair = |selected, unrelated| Pair { selected: figure(selected, 10), unrelated: figure(unrelated, 10) };
        let figures = Figures {
            bare: pair(50.0, 49.0),
            agent: Pair { selected: figure(850.0, 61_000), unrelated: figure(90.0, 61_000) },
            after: pair(51.0, 50.0),
            spans: Some(vec![("selected".into(), 60_990), ("other".into(), 10)]),
            foreign_agents: vec![],
        };
        let row = cells("pyenv-3.12.1", &figures);
        assert_eq!(row[2], "850.0 (+800.0)");
        assert_eq!(row[5], "90.0 (+41.0)");
        assert_eq!(row[7], "61000 / 61000");
    }
}
