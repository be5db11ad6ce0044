//! The agent during a bench run: started on a store of its own (with whatever else the run
//! asks for, e.g. the function part's `--pid` and `--function`), stopped with SIGTERM, and
//! asked afterwards (through the store) how many spans it recorded.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use super::process::{check_interrupt, LogTail, Process};
use crate::cmd;

/// How long the agent may take to attach its probes and register running Python processes.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long after `agent ready` the agent may take to hook a process's Python calls (its
/// stack layout check may retry a few times first).
const FUNCTIONS_TIMEOUT: Duration = Duration::from_secs(30);

pub struct RunningAgent {
    process: Process,
    log: LogTail,
    store: PathBuf,
}

impl RunningAgent {
    /// Starts `binary run --store-path store EXTRA_ARGS`, its log going to `log`, and waits for
    /// its `agent ready` line.
    pub fn start(binary: &Path, store: &Path, log: &Path, extra_args: &[String]) -> Result<Self> {
        remove_store(store)?;
        let copy = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = Command::new(binary);
        command
            .arg("run")
            .arg("--store-path")
            .arg(store)
            .args(extra_args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut process = Process::spawn("the agent", &mut command)?;
        let log = LogTail::follow(process.take_stderr().context("the agent's stderr is not piped")?, copy);
        let mut agent = Self { process, log, store: store.to_path_buf() };
        agent.wait_ready()?;
        Ok(agent)
    }

    fn wait_ready(&mut self) -> Result<()> {
        if self.log.wait_for("agent ready", READY_TIMEOUT) {
            return Ok(());
        }
        check_interrupt()?;
        // Its stderr closed or the time ran out: say which.
        self.ensure_running().context("the agent stopped before logging `agent ready`")?;
        bail!("the agent did not log `agent ready` within {READY_TIMEOUT:?}; its last lines:\n{}", self.log.text())
    }

    /// Waits for the INFO line `tracing python functions pid=PID ...`: from then on the calls of
    /// process `pid` go through the agent's hook (of a `--function` run).
    pub fn wait_for_function_hook(&mut self, pid: u32) -> Result<()> {
        if self.log.wait_for_line(|line| is_function_hook(line, pid), FUNCTIONS_TIMEOUT) {
            return Ok(());
        }
        check_interrupt()?;
        self.ensure_running().context("the agent stopped before hooking the Python calls")?;
        bail!(
            "the agent did not log `tracing python functions pid={pid}` within {FUNCTIONS_TIMEOUT:?} of `agent ready`; \
             its last lines:\n{}",
            self.log.text()
        )
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn ensure_running(&mut self) -> Result<()> {
        self.process.ensure_running().with_context(|| format!("the agent's last lines:\n{}", self.log.text()))
    }

    /// Stops the agent (SIGTERM: it flushes its spans) and requires a clean exit.
    pub fn stop(self) -> Result<PathBuf> {
        self.stop_timed().map(|(store, _)| store)
    }

    /// Like [`stop`](Self::stop), also returning how long the agent took from SIGTERM to its exit.
    pub fn stop_timed(mut self) -> Result<(PathBuf, Duration)> {
        self.ensure_running()?;
        let signalled = Instant::now();
        let status = self.process.stop()?;
        let took = signalled.elapsed();
        if !status.success() {
            bail!("the agent exited with {status} after SIGTERM; its last lines:\n{}", self.log.text());
        }
        Ok((self.store.clone(), took))
    }
}

/// Whether `line` is the agent's `tracing python functions` line for process `pid` (its
/// `pid=` field exactly: pid=12 must not match pid=123).
fn is_function_hook(line: &str, pid: u32) -> bool {
    let field = format!("pid={pid}");
    line.contains("tracing python functions") && line.split_whitespace().any(|word| word == field)
}

fn remove_store(store: &Path) -> Result<()> {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let path = PathBuf::from(format!("{}{suffix}", store.display()));
        match std::fs::remove_file(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(error).with_context(|| format!("cannot remove {}", path.display()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Spans in the store by kind, e.g. "25010 SERVER, 25010 CLIENT", read with Python's sqlite3
/// (the agent is stopped by then, so this Python process is not traced).
pub fn count_spans(python: &Path, store: &Path) -> Result<String> {
    const QUERY: &str = "import sqlite3, sys\n\
        rows = sqlite3.connect(sys.argv[1]).execute('SELECT kind, count(*) FROM spans GROUP BY kind ORDER BY kind')\n\
        print(', '.join('%d %s' % (n, kind) for kind, n in rows) or 'none')";
    let out = cmd::output(Command::new(python).args(["-c", QUERY]).arg(store))?;
    Ok(out.trim().to_owned())
}

/// Spans in the store by name, most numerous first, read like [`count_spans`].
pub fn spans_per_name(python: &Path, store: &Path) -> Result<Vec<(String, u64)>> {
    const QUERY: &str = "import sqlite3, sys\n\
        rows = sqlite3.connect(sys.argv[1]).execute('SELECT name, count(*) FROM spans GROUP BY name ORDER BY 2 DESC, 1')\n\
        for name, n in rows: print('%d\\t%s' % (n, name))";
    let out = cmd::output(Command::new(python).args(["-c", QUERY]).arg(store))?;
    out.lines()
        .map(parse_count_line)
        .collect::<Result<_>>()
        .with_context(|| format!("cannot read the span counts of {}", store.display()))
}

/// "COUNT\tNAME" (a tab between them).
fn parse_count_line(line: &str) -> Result<(String, u64)> {
    let (count, name) = line.split_once('\t').with_context(|| format!("no tab in `{line}`"))?;
    let count = count.parse().with_context(|| format!("`{count}` is not a count"))?;
    Ok((name.to_owned(), count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_count_and_a_name_with_tabs_and_spaces() {
        assert_eq!(parse_count_line("42\tbench_functions:selected").unwrap(), ("bench_functions:selected".into(), 42));
        assert_eq!(parse_count_line("1\tGET /a\tb").unwrap(), ("GET /a\tb".into(), 1));
        assert!(parse_count_line("no tab").is_err());
        assert!(parse_count_line("x\tname").is_err());
    }

    #[test]
    fn the_hook_line_names_exactly_its_process() {
        let line = "2026-01-01T00:00:00Z  INFO scouter_agent::agent: tracing python functions pid=123 functions=1";
        assert!(is_function_hook(line, 123));
        assert!(!is_function_hook(line, 12));
        assert!(!is_function_hook("INFO process registered pid=123", 123));
    }

    /// A stand-in for the agent: logs what the real one logs, with the pid it was given.
    #[test]
    fn an_agent_gets_its_extra_args_and_is_waited_for() {
        let dir = std::env::temp_dir().join(format!("xtask-fake-agent-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let binary = dir.join("fake-agent");
        // $1 run, $2 --store-path, $3 STORE, $4 --pid, $5 PID
        let script = "#!/bin/sh\ntrap 'exit 0' TERM\n\
                      echo \"INFO agent ready processes=0\" >&2\n\
                      echo \"INFO tracing python functions pid=$5 functions=1\" >&2\n\
                      while :; do sleep 0.05; done\n";
        std::fs::write(&binary, script).unwrap();
        std::fs::set_permissions(&binary, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let args = ["--pid".to_owned(), "4242".to_owned()];
        let mut agent = RunningAgent::start(&binary, &dir.join("store.db"), &dir.join("agent.log"), &args).unwrap();
        agent.wait_for_function_hook(4242).unwrap();
        agent.stop().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
