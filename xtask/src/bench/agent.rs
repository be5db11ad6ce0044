//! The agent during a bench run: started on a store of its own, stopped with SIGTERM, and
//! asked afterwards (through the store) how many spans it recorded.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use super::process::{check_interrupt, LogTail, Process};
use crate::cmd;

/// How long the agent may take to attach its probes and register running Python processes.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub struct RunningAgent {
    process: Process,
    log: LogTail,
    store: PathBuf,
}

impl RunningAgent {
    /// Starts `binary run --store-path store`, its log going to `log`, and waits for its
    /// `agent ready` line.
    pub fn start(binary: &Path, store: &Path, log: &Path) -> Result<Self> {
        remove_store(store)?;
        let copy = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = Command::new(binary);
        command
            .arg("run")
            .arg("--store-path")
            .arg(store)
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

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn ensure_running(&mut self) -> Result<()> {
        self.process.ensure_running().with_context(|| format!("the agent's last lines:\n{}", self.log.text()))
    }

    /// Stops the agent (SIGTERM: it flushes its spans) and requires a clean exit.
    pub fn stop(mut self) -> Result<PathBuf> {
        self.ensure_running()?;
        let status = self.process.stop()?;
        if !status.success() {
            bail!("the agent exited with {status} after SIGTERM; its last lines:\n{}", self.log.text());
        }
        Ok(self.store.clone())
    }
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
