//! The agent under test, as a guard around its process.
//!
//! [`Agent::start`] runs `scouter-agent run --store-path <store>` with stderr captured into a
//! [`LineLog`], and returns once the `agent ready` line appears (probes attached, running Python
//! processes registered). [`Agent::stop`] sends SIGTERM, waits, and requires exit status 0;
//! dropping an agent that was not stopped terminates it too (SIGTERM, then SIGKILL), so a failing
//! test never leaves an agent running.

use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::env::require_ebpf_host;
use crate::lines::{has_field, LineLog, WaitError};
use crate::store::Store;

/// How long the agent may take to attach its probes and scan /proc.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the agent may take to notice a newly started Python process.
pub const TRACKING_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the agent may take to flush and exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How many lines of the agent's log to show in failure messages.
pub const LOG_TAIL: usize = 150;

/// A running agent. Stop it with [`Agent::stop`] to check its exit status.
pub struct Agent {
    child: Child,
    log: LineLog,
    exited: Option<ExitStatus>,
}

impl Agent {
    /// Starts the agent on `store` and waits for `agent ready`.
    pub fn start(store: &Store) -> Result<Self> {
        Self::start_with_args(store, &[])
    }

    /// Like [`Agent::start`], with extra arguments for `run`.
    pub fn start_with_args(store: &Store, extra_args: &[&str]) -> Result<Self> {
        let binary = require_ebpf_host()?;
        let mut command = Command::new(&binary);
        command.arg("run").arg("--store-path").arg(store.path()).args(extra_args);
        if let Ok(filter) = std::env::var("SCOUTER_E2E_AGENT_LOG") {
            command.arg("--log").arg(filter);
        }
        let mut child = command
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let log = LineLog::new();
        log.follow(child.stderr.take().expect("stderr is piped"));
        let mut agent = Self { child, log, exited: None };
        agent.wait_for_line("agent ready", READY_TIMEOUT, |line| line.contains("agent ready"))?;
        Ok(agent)
    }

    /// The process id of the agent.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The agent's captured stderr.
    pub fn log(&self) -> &LineLog {
        &self.log
    }

    /// Waits for the agent to log that it tracks the Python process `pid`.
    pub fn wait_tracking(&mut self, pid: u32) -> Result<String> {
        self.wait_logged("INFO", "tracking python process", pid)
    }

    /// Waits for the agent to log that it reads the Python stacks of process `pid`.
    pub fn wait_reading_stacks(&mut self, pid: u32) -> Result<String> {
        self.wait_logged("INFO", "reading python stacks", pid)
    }

    /// Waits for the agent to log (WARN) that it will not read process `pid`'s stacks.
    pub fn wait_refusing_stacks(&mut self, pid: u32) -> Result<String> {
        self.wait_logged("WARN", "python stacks unavailable", pid)
    }

    /// Waits for the agent to log that it traces the selected functions of process `pid`.
    pub fn wait_tracing_functions(&mut self, pid: u32) -> Result<String> {
        self.wait_logged("INFO", "tracing python functions", pid)
    }

    /// Waits for the agent to log, at `level`, `message` about process `pid`.
    pub fn wait_logged(&mut self, level: &str, message: &str, pid: u32) -> Result<String> {
        let (pid_text, level) = (pid.to_string(), format!(" {level} "));
        self.wait_for_line(&format!("{message} pid={pid}"), TRACKING_TIMEOUT, |line| {
            line.contains(&level) && line.contains(message) && has_field(line, "pid", &pid_text)
        })
    }

    fn wait_for_line(&mut self, what: &str, timeout: Duration, matches: impl Fn(&str) -> bool) -> Result<String> {
        match self.log.wait_for(timeout, matches) {
            Ok(line) => Ok(line),
            Err(WaitError::Timeout) => {
                Err(anyhow!("the agent did not log `{what}` within {timeout:?}\n{}", self.describe()))
            }
            Err(WaitError::Closed) => {
                let status = self.reap(Duration::from_secs(5));
                Err(anyhow!("the agent exited ({status:?}) before logging `{what}`\n{}", self.describe()))
            }
        }
    }

    /// Fails if the agent process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.child.try_wait().context("checking the agent process")? {
            None => Ok(()),
            Some(status) => {
                self.exited = Some(status);
                self.log.wait_closed(Duration::from_secs(2));
                bail!("the agent exited unexpectedly ({status})\n{}", self.describe())
            }
        }
    }

    /// Sends SIGTERM, waits for the agent to exit, and requires exit status 0. Returns its log.
    pub fn stop(mut self) -> Result<LineLog> {
        self.ensure_running()?;
        signal(self.child.id(), libc::SIGTERM)?;
        let status = match self.reap(STOP_TIMEOUT) {
            Some(status) => status,
            None => {
                let _ = self.child.kill();
                let _ = self.reap(Duration::from_secs(5));
                bail!("the agent did not exit within {STOP_TIMEOUT:?} of SIGTERM (killed)\n{}", self.describe());
            }
        };
        self.log.wait_closed(Duration::from_secs(5));
        if !status.success() {
            bail!("the agent exited with {status} after SIGTERM (expected 0)\n{}", self.describe());
        }
        Ok(self.log.clone())
    }

    /// Waits up to `timeout` for the process to exit; returns its status if it did.
    fn reap(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = wait_with_timeout(&mut self.child, timeout);
        }
        self.exited
    }

    /// The agent's pid, status and recent log, for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "--- agent pid {} ({}) stderr, last {LOG_TAIL} lines ---\n{}\n--- end of agent stderr ---",
            self.child.id(),
            self.exited.map_or("running".to_owned(), |s| s.to_string()),
            self.log.tail(LOG_TAIL)
        )
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.exited.is_some() {
            return;
        }
        let _ = signal(self.child.id(), libc::SIGTERM);
        if self.reap(Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An agent's captured log, framed for failure messages (for use after [`Agent::stop`]), with a
/// warning if other agents run on this host.
pub fn log_context(title: &str, log: &LineLog) -> String {
    let mut text =
        format!("--- {title}: stderr, last {LOG_TAIL} lines ---\n{}\n--- end of {title} ---\n", log.tail(LOG_TAIL));
    let others = other_agents();
    if !others.is_empty() {
        text.push_str(&format!(
            "WARNING: other scouter-agent processes run on this host and trace the same Python processes \
             (their probes can add spans, or their own traceparent, to what this test sees):\n  {}\n",
            others.join("\n  ")
        ));
    }
    text
}

/// `scouter-agent run` processes on this host other than the tests' own children, as
/// "pid: command line".
pub fn other_agents() -> Vec<String> {
    let own = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = raw.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let is_agent =
            args.first().is_some_and(|a| a.ends_with("scouter-agent")) && args.get(1).is_some_and(|a| a == "run");
        let parent = std::fs::read_to_string(entry.path().join("stat")).ok().and_then(|stat| {
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_owned))
        });
        if is_agent && parent.as_deref() != Some(own.as_str()) {
            found.push(format!("{pid}: {}", args.join(" ").trim()));
        }
    }
    found
}

/// Sends `signal` to process `pid`.
pub fn signal(pid: u32, signal: libc::c_int) -> Result<()> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: kill has no memory-safety preconditions; the pid is our own child.
    if unsafe { libc::kill(pid, signal) } != 0 {
        bail!("kill({pid}, {signal}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Polls `child` until it exits or `timeout` passes.
pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}
