//! The neighbours part of the bench: what the agent costs the processes it does not trace.
//!
//! The agent's socket programs run for every process on the node, Python or not, and decide
//! inside the kernel to pass over those it does not trace; the project's target is that such
//! neighbours run at most 1% slower with the agent than without. Two untraced workloads
//! ([`workloads`](super::workloads)) stand in for them: dd (plain read/write syscalls) and
//! redis-server under redis-benchmark (loopback socket I/O). Each runs in three modes:
//! - none: no agent;
//! - agent: the agent with its default I/O capture;
//! - agent syscalls: the agent with `--io-capture=syscalls`, the old capture, whose tracepoints
//!   run a program on every read/write syscall of the host, to show what the socket capture
//!   saves.
//!
//! Machines drift (other load, CPU frequency, caches), so the modes alternate within each
//! round (none, agent, agent syscalls, for dd, then for redis) and each figure is the median
//! over the rounds, compared with none's median. The agent starts before each measured run
//! and stops after it, which also gives its start time (spawn to `agent ready`) and stop time
//! (SIGTERM to exit), medians per mode; every run, none included, waits [`SETTLE`] before its
//! workload so the agent's start-up work is over.
//!
//! Last, one more redis run per agent mode with the kernel's BPF run-time statistics on
//! ([`bpf_stats`](super::bpf_stats)): what each of the agent's programs ran and cost, and their
//! total per redis operation, the cost of one socket operation of an untraced process.
//!
//! It prints figures and asserts nothing about them; a failed run is reported and the others
//! still run.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::agent::RunningAgent;
use super::bpf_stats::{self, RunTimeStats, Runs};
use super::foreign_agents;
use super::process::check_interrupt;
use super::workloads::{self, RedisServer};
use crate::cmd;

/// Pause between `agent ready` (or, without an agent, the run's start) and the workload.
const SETTLE: Duration = Duration::from_secs(1);
/// The project's targets for the agent's start and stop, printed beside the figures.
const START_TARGET: Duration = Duration::from_secs(2);
const STOP_TARGET: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    Dd,
    Redis,
}

const WORKLOADS: [Workload; 2] = [Workload::Dd, Workload::Redis];

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Dd => "dd",
            Workload::Redis => "redis",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Workload::Dd => "syscalls/s",
            Workload::Redis => "ops/s",
        }
    }

    fn run(self, redis: Option<&RedisServer>) -> Result<Reading> {
        match self {
            Workload::Dd => Ok(Reading { value: workloads::run_dd()?, parts: vec![] }),
            Workload::Redis => {
                let rates = workloads::run_benchmark(redis.context("redis-server is not running (see above)")?)?;
                Ok(Reading { value: rates.mean(), parts: vec![("SET", rates.set), ("GET", rates.get)] })
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    None,
    Agent,
    AgentSyscalls,
}

const MODES: [Mode; 3] = [Mode::None, Mode::Agent, Mode::AgentSyscalls];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Agent => "agent",
            Mode::AgentSyscalls => "agent syscalls",
        }
    }

    /// The agent's arguments besides `run --store-path`; `None` without an agent.
    fn agent_args(self) -> Option<Vec<String>> {
        match self {
            Mode::None => None,
            Mode::Agent => Some(vec![]),
            Mode::AgentSyscalls => Some(vec!["--io-capture=syscalls".into()]),
        }
    }

    /// For file names: "agent", "agent-syscalls".
    fn slug(self) -> String {
        self.name().replace(' ', "-")
    }
}

/// One run's figure: the workload's rate, and its parts (redis-benchmark's tests).
#[derive(Clone, Debug, PartialEq)]
struct Reading {
    value: f64,
    parts: Vec<(&'static str, f64)>,
}

/// One run: the reading and, with an agent, how long it took to start and to stop.
struct Run {
    reading: Reading,
    agent_start: Option<Duration>,
    agent_stop: Option<Duration>,
    foreign_agents: bool,
}

/// Every run of one workload in one mode, over the rounds.
struct Cell {
    workload: Workload,
    mode: Mode,
    readings: Vec<Reading>,
    failures: u32,
    /// Whether another scouter-agent (not the bench's) ran during any of its runs.
    foreign_agents: bool,
}

impl Cell {
    /// "dd/agent syscalls".
    fn label(&self) -> String {
        format!("{}/{}", self.workload.name(), self.mode.name())
    }
}

/// The agent's start times (spawn to `agent ready`) and stop times (SIGTERM to exit) in one
/// mode, over all its runs.
struct AgentTimes {
    mode: Mode,
    starts: Vec<Duration>,
    stops: Vec<Duration>,
}

/// What one agent mode's programs did during one redis run.
struct ProgramCosts {
    programs: Vec<Runs>,
    operations: u64,
}

pub struct Outcome {
    rounds: u32,
    cells: Vec<Cell>,
    agent_times: Vec<AgentTimes>,
    costs: Vec<(Mode, Result<ProgramCosts>)>,
}

impl Outcome {
    /// "dd/agent (1 of 5 runs)" for each cell with failed runs, "redis/agent (program
    /// statistics)" for a failed statistics run.
    pub fn failed(&self) -> Vec<String> {
        let runs = self.cells.iter().filter(|cell| cell.failures > 0);
        let runs = runs.map(|cell| format!("{} ({} of {} runs)", cell.label(), cell.failures, self.rounds));
        let costs = self.costs.iter().filter(|(_, costs)| costs.is_err());
        runs.chain(costs.map(|(mode, _)| format!("redis/{} (program statistics)", mode.name()))).collect()
    }
}

/// What the neighbours part needs from the bench.
pub struct Part<'a> {
    agent: &'a Path,
    out_dir: &'a Path,
    rounds: u32,
}

impl<'a> Part<'a> {
    /// Logs and agent stores go to `out_dir`.
    pub fn new(agent: &'a Path, out_dir: &'a Path, rounds: u32) -> Self {
        Self { agent, out_dir, rounds }
    }

    /// The bench header's lines about this part.
    pub fn describe(&self, line: &mut dyn FnMut(&str, String)) {
        line(
            "neighbours:",
            format!(
                "`{}` (read+write syscalls/s from dd's report); redis-server (127.0.0.1, a free port, --save '' \
                 --appendonly no) under `{}` (ops/s: mean of SET and GET); neither is traced",
                cmd::describe(&workloads::dd_command()),
                cmd::describe(&workloads::benchmark_command("PORT")),
            ),
        );
        line(
            "nb modes:",
            format!(
                "none; agent: `scouter-agent run --store-path {out}/agent-neighbours-agent.db` (default \
                 --io-capture); agent syscalls: the same with --io-capture=syscalls; the agent started before and \
                 stopped after each run, the workload started {settle} s after `agent ready`; modes alternate \
                 within each of {rounds} rounds; then one redis run per agent mode with BPF run-time statistics",
                out = self.out_dir.display(),
                settle = SETTLE.as_secs_f64(),
                rounds = self.rounds,
            ),
        );
    }

    /// Runs every round, then the statistics runs. A failed run is reported and the others
    /// still run; an interrupt stops everything.
    pub fn run_all(&self) -> Result<Outcome> {
        println!("\n== neighbours: redis-server ==");
        let redis = match RedisServer::start(&self.out_dir.join("redis-server.log"), self.out_dir) {
            Ok(server) => Some(server),
            Err(error) => {
                eprintln!("error: redis-server did not start, the redis runs fail: {error:#}");
                None
            }
        };
        check_interrupt()?;
        let mut cells = cells();
        let mut agent_times: Vec<AgentTimes> =
            agent_modes().map(|mode| AgentTimes { mode, starts: vec![], stops: vec![] }).collect();
        for round in 1..=self.rounds {
            for cell in &mut cells {
                println!("\n== neighbours / round {round} of {} / {} ==", self.rounds, cell.label());
                let result = self.run_one(cell.workload, cell.mode, redis.as_ref());
                check_interrupt()?;
                record(cell, &mut agent_times, result);
            }
        }
        let costs = agent_modes().map(|mode| self.program_costs(mode, redis.as_ref())).collect::<Result<_>>()?;
        Ok(Outcome { rounds: self.rounds, cells, agent_times, costs })
    }

    /// The agent of `mode`, started and timed (spawn to `agent ready`); `None` without one.
    fn start_agent(&self, mode: Mode) -> Result<Option<(RunningAgent, Duration)>> {
        let Some(args) = mode.agent_args() else { return Ok(None) };
        let store = self.out_dir.join(format!("agent-neighbours-{}.db", mode.slug()));
        let log = self.out_dir.join(format!("agent-neighbours-{}.log", mode.slug()));
        let started = Instant::now();
        let agent = RunningAgent::start(self.agent, &store, &log, &args)?;
        Ok(Some((agent, started.elapsed())))
    }

    fn run_one(&self, workload: Workload, mode: Mode, redis: Option<&RedisServer>) -> Result<Run> {
        let agent = self.start_agent(mode)?;
        let ours: Vec<u32> = agent.iter().map(|(agent, _)| agent.pid()).collect();
        let mut foreign = foreign_agents(&ours);
        settle()?;
        let reading = workload.run(redis)?;
        foreign.extend(foreign_agents(&ours));
        if !foreign.is_empty() {
            eprintln!("warning: other scouter-agent processes ran during this run ({foreign:?})");
        }
        let (agent_start, agent_stop) = match agent {
            Some((agent, start)) => (Some(start), Some(agent.stop_timed()?.1)),
            None => (None, None),
        };
        Ok(Run { reading, agent_start, agent_stop, foreign_agents: !foreign.is_empty() })
    }

    /// The statistics run of `mode`; its failure is reported, an interrupt is the error.
    fn program_costs(&self, mode: Mode, redis: Option<&RedisServer>) -> Result<(Mode, Result<ProgramCosts>)> {
        println!("\n== neighbours / BPF program statistics / redis/{} ==", mode.name());
        let result = self.count_programs(mode, redis);
        check_interrupt()?;
        if let Err(error) = &result {
            eprintln!("error: neighbours/redis/{} (program statistics) failed: {error:#}", mode.name());
        }
        Ok((mode, result))
    }

    /// One redis run with BPF run-time statistics on: what the agent's programs did.
    fn count_programs(&self, mode: Mode, redis: Option<&RedisServer>) -> Result<ProgramCosts> {
        let (agent, _) = self.start_agent(mode)?.context("statistics need an agent")?;
        settle()?;
        let ids = bpf_stats::agent_program_ids(agent.pid())?;
        let stats = RunTimeStats::enable()?;
        let before = bpf_stats::programs()?;
        Workload::Redis.run(redis)?;
        let after = bpf_stats::programs()?;
        drop(stats);
        agent.stop()?;
        Ok(ProgramCosts {
            programs: bpf_stats::runs_between(&before, &after, &ids),
            operations: workloads::REDIS_OPERATIONS,
        })
    }
}

/// Adds a run's figures, or its failure, to its cell and its mode's agent times.
fn record(cell: &mut Cell, agent_times: &mut [AgentTimes], result: Result<Run>) {
    let run = match result {
        Ok(run) => run,
        Err(error) => {
            eprintln!("error: neighbours/{} failed: {error:#}", cell.label());
            cell.failures += 1;
            return;
        }
    };
    println!("  {:.0} {}", run.reading.value, cell.workload.unit());
    if let Some(times) = agent_times.iter_mut().find(|times| times.mode == cell.mode) {
        times.starts.extend(run.agent_start);
        times.stops.extend(run.agent_stop);
    }
    cell.foreign_agents |= run.foreign_agents;
    cell.readings.push(run.reading);
}

fn agent_modes() -> impl Iterator<Item = Mode> {
    MODES.into_iter().filter(|mode| mode.agent_args().is_some())
}

/// Every workload in every mode, in the order of a round.
fn cells() -> Vec<Cell> {
    let cell = |workload, mode| Cell { workload, mode, readings: vec![], failures: 0, foreign_agents: false };
    WORKLOADS.into_iter().flat_map(|workload| MODES.map(|mode| cell(workload, mode))).collect()
}

fn settle() -> Result<()> {
    std::thread::sleep(SETTLE);
    check_interrupt()
}

/// The median; `None` for no values.
fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.into_iter().collect();
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    match values.len() {
        0 => None,
        n if n % 2 == 1 => Some(values[middle]),
        _ => Some((values[middle - 1] + values[middle]) / 2.0),
    }
}

/// "+0.4%": `value` compared with `base`.
fn change(value: f64, base: f64) -> String {
    format!("{:+.1}%", (value / base - 1.0) * 100.0)
}

pub fn print_tables(outcome: &Outcome) {
    print_figures(outcome);
    print_agent_times(&outcome.agent_times);
    print_costs(&outcome.costs);
}

const TABLE_HEADER: [&str; 9] =
    ["workload", "mode", "median", "unit", "vs none", "min", "max", "runs", "medians per test"];

fn print_figures(outcome: &Outcome) {
    println!("\n== neighbours: untraced processes beside the agent, median of {} rounds ==", outcome.rounds);
    println!("{}", table_row(&TABLE_HEADER.map(String::from)));
    for cell in &outcome.cells {
        let none = outcome.cells.iter().find(|c| c.workload == cell.workload && c.mode == Mode::None);
        match cells_of(cell, none) {
            Some(cells) => println!("{}", table_row(&cells)),
            None => println!("{:<8} {:<15} FAILED (see above)", cell.workload.name(), cell.mode.name()),
        }
    }
    println!(
        "dd: (records in + records out) / dd's own time; redis: requests per second of redis-benchmark's SET and \
         GET, their mean\n\
         vs none: the median's change from none's median (the target: no worse than -1.0%); min, max: the \
         spread over the rounds; runs: runs with a figure (of {})",
        outcome.rounds
    );
    if outcome.cells.iter().any(|cell| cell.foreign_agents) {
        println!("*: another scouter-agent (not the bench's) was running during some of these runs");
    }
}

fn table_row(cells: &[String; 9]) -> String {
    let [workload, mode, median, unit, versus, min, max, runs, parts] = cells;
    format!("{workload:<8} {mode:<15} {median:>9} {unit:<10} {versus:>8} {min:>9} {max:>9} {runs:>4}   {parts}")
}

/// A cell's row, compared with `none`'s median; `None` when no run gave a figure.
fn cells_of(cell: &Cell, none: Option<&Cell>) -> Option<[String; 9]> {
    let values = || cell.readings.iter().map(|reading| reading.value);
    let middle = median(values())?;
    let versus = match none.and_then(|none| median(none.readings.iter().map(|r| r.value))) {
        Some(base) if cell.mode != Mode::None => change(middle, base),
        _ => "-".into(),
    };
    let (min, max) = (values().fold(f64::INFINITY, f64::min), values().fold(0.0, f64::max));
    let marker = if cell.foreign_agents { "*" } else { "" };
    Some([
        cell.workload.name().into(),
        format!("{}{marker}", cell.mode.name()),
        format!("{middle:.0}"),
        cell.workload.unit().into(),
        versus,
        format!("{min:.0}"),
        format!("{max:.0}"),
        cell.readings.len().to_string(),
        part_medians(&cell.readings),
    ])
}

/// "SET 81566, GET 84034": each part's median.
fn part_medians(readings: &[Reading]) -> String {
    let Some(first) = readings.first() else { return String::new() };
    let names = first.parts.iter().map(|(name, _)| *name);
    let medians = names.filter_map(|name| {
        let values = readings.iter().filter_map(|r| r.parts.iter().find(|(n, _)| *n == name).map(|(_, v)| *v));
        Some(format!("{name} {:.0}", median(values)?))
    });
    medians.collect::<Vec<_>>().join(", ")
}

fn print_agent_times(times: &[AgentTimes]) {
    println!("\n== the agent's start and stop, median over its runs ==");
    println!("{:<15} {:>30} {:>24} {:>5}", "mode", "start (spawn -> `agent ready`)", "stop (SIGTERM -> exit)", "runs");
    for AgentTimes { mode, starts, stops } in times {
        let seconds = |durations: &[Duration]| {
            median(durations.iter().map(Duration::as_secs_f64)).map_or("-".into(), |s| format!("{s:.2} s"))
        };
        println!(
            "{:<15} {:>30} {:>24} {:>5}",
            mode.name(),
            seconds(starts),
            seconds(stops),
            starts.len().max(stops.len())
        );
    }
    println!(
        "targets: start <= {} s, stop <= {} s (printed, not checked)",
        START_TARGET.as_secs_f64(),
        STOP_TARGET.as_secs_f64()
    );
}

fn print_costs(costs: &[(Mode, Result<ProgramCosts>)]) {
    println!("\n== the agent's BPF programs during one redis-benchmark run (BPF_ENABLE_STATS run time) ==");
    println!("{:<15} {:<32} {:>10} {:>12} {:>8}", "mode", "program", "runs", "total ns", "ns/run");
    for (mode, costs) in costs {
        match costs {
            Ok(costs) => print!("{}", cost_rows(mode.name(), costs)),
            Err(_) => println!("{:<15} FAILED (see above)", mode.name()),
        }
    }
    println!(
        "every program of the agent's that ran during the run, whichever process set it off (socket I/O: sock_*, \
         io_*, inet*, unix_*, accept/connect/close; sched_*: processes started or ended meanwhile); run time as the \
         kernel counts it, its own clock reads included\n\
         per operation: all their time / the run's {} redis requests (each a send and a receive on both the \
         client's and the server's socket)",
        workloads::REDIS_OPERATIONS
    );
}

fn cost_rows(mode: &str, costs: &ProgramCosts) -> String {
    let mut text = String::new();
    for (index, program) in costs.programs.iter().enumerate() {
        let label = if index == 0 { mode } else { "" };
        let per_run = program.ns as f64 / program.runs as f64;
        let _ =
            writeln!(text, "{label:<15} {:<32} {:>10} {:>12} {per_run:>8.1}", program.name, program.runs, program.ns);
    }
    let total: u64 = costs.programs.iter().map(|program| program.ns).sum();
    let label = if costs.programs.is_empty() { mode } else { "" };
    let per_operation = total as f64 / costs.operations as f64;
    let _ = writeln!(
        text,
        "{label:<15} {:<32} {:>10} {total:>12}   = {per_operation:.1} ns per redis operation",
        "all",
        costs.programs.iter().map(|program| program.runs).sum::<u64>()
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_even_and_no_values() {
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median([7.5]), Some(7.5));
        assert_eq!(median([]), None);
    }

    #[test]
    fn a_change_is_signed_and_in_percent() {
        assert_eq!(change(99.0, 100.0), "-1.0%");
        assert_eq!(change(100.4, 100.0), "+0.4%");
    }

    #[test]
    fn the_modes_alternate_within_a_round() {
        let order: Vec<String> = cells().iter().map(Cell::label).collect();
        assert_eq!(
            order,
            ["dd/none", "dd/agent", "dd/agent syscalls", "redis/none", "redis/agent", "redis/agent syscalls"]
        );
        assert_eq!(Mode::AgentSyscalls.agent_args(), Some(vec!["--io-capture=syscalls".to_owned()]));
        assert_eq!(Mode::AgentSyscalls.slug(), "agent-syscalls");
    }

    #[test]
    fn a_row_compares_the_median_with_none() {
        let reading = |value: f64| Reading { value, parts: vec![("SET", value - 10.0), ("GET", value + 10.0)] };
        let cell = |mode, values: &[f64]| Cell {
            workload: Workload::Redis,
            mode,
            readings: values.iter().map(|&v| reading(v)).collect(),
            failures: 0,
            foreign_agents: false,
        };
        let none = cell(Mode::None, &[100.0, 102.0, 98.0]);
        let agent = cell(Mode::Agent, &[99.0, 97.0, 103.0]);
        let row = cells_of(&agent, Some(&none)).unwrap();
        assert_eq!(row[2], "99");
        assert_eq!(row[4], "-1.0%");
        assert_eq!((row[5].as_str(), row[6].as_str(), row[7].as_str()), ("97", "103", "3"));
        assert_eq!(row[8], "SET 89, GET 109");
        assert_eq!(cells_of(&none, Some(&none)).unwrap()[4], "-");
        assert!(cells_of(&cell(Mode::Agent, &[]), Some(&none)).is_none());
    }

    #[test]
    fn program_costs_add_up_per_operation() {
        let costs = ProgramCosts {
            programs: vec![
                Runs { name: "sock_sent".into(), runs: 400, ns: 40_000 },
                Runs { name: "sock_received".into(), runs: 400, ns: 20_000 },
            ],
            operations: 200,
        };
        let text = cost_rows("agent", &costs);
        assert!(text.lines().next().unwrap().starts_with("agent"), "{text}");
        assert!(text.contains("100.0"), "{text}");
        assert!(text.lines().last().unwrap().ends_with("= 300.0 ns per redis operation"), "{text}");
    }
}
