//! Child processes that never outlive the bench, and Ctrl-C that lets the guards run.
//!
//! Every service and the agent run in a process group of their own, so stopping one reaches
//! its workers too, and a Ctrl-C in the terminal reaches only the bench (and wrk), which then
//! stops its children through their guards rather than dying with them half-started.

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader, Read, Write};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use super::procfs;
use crate::cmd;

/// How long a process may take to exit after SIGTERM before it and its group are killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running child process (and its process group), stopped when dropped.
pub struct Process {
    name: String,
    child: Child,
    exited: Option<ExitStatus>,
}

impl Process {
    /// Starts `command` as the leader of a new process group.
    pub fn spawn(name: &str, command: &mut Command) -> Result<Self> {
        println!("+ {}", cmd::describe(command));
        let child = command.process_group(0).spawn().with_context(|| format!("cannot start {name}"))?;
        Ok(Self { name: name.to_owned(), child, exited: None })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.child.stderr.take()
    }

    pub fn take_stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.child.stdin.take()
    }

    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// Fails if the process has exited (giving it a moment, in case it is exiting right now).
    pub fn ensure_running(&mut self) -> Result<()> {
        let status = self.wait_until(Instant::now() + Duration::from_millis(200))?;
        if let Some(status) = status {
            self.exited = Some(status);
            bail!("{} exited unexpectedly ({status})", self.name);
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit by itself; its exit status if it did.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self.wait_until(Instant::now() + timeout)?;
        }
        Ok(self.exited)
    }

    /// SIGTERM to the group, then SIGKILL to whatever is left of it after [`STOP_TIMEOUT`].
    /// Returns the leader's exit status.
    ///
    /// Workers may outlive their leader for a moment (e.g. an OpenTelemetry SDK flushing its
    /// last spans at exit), so the group gets the same time to empty before anything is killed.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        signal_group(self.pid(), libc::SIGTERM);
        let status = self.wait_until(deadline)?;
        while group_exists(self.pid()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if status.is_none() || group_exists(self.pid()) {
            eprintln!("warning: {} did not exit within {STOP_TIMEOUT:?} of SIGTERM: killing it", self.name);
            signal_group(self.pid(), libc::SIGKILL);
        }
        let status = match status {
            Some(status) => status,
            None => self.child.wait().with_context(|| format!("cannot wait for {}", self.name))?,
        };
        self.exited = Some(status);
        Ok(status)
    }

    fn wait_until(&mut self, deadline: Instant) -> Result<Option<ExitStatus>> {
        loop {
            if let Some(status) = self.child.try_wait().with_context(|| format!("cannot wait for {}", self.name))? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            eprintln!("warning: cannot stop {}: {error:#}", self.name);
        }
    }
}

/// Sends `signal` to the process group led by `leader`.
fn signal_group(leader: u32, signal: libc::c_int) {
    if let Ok(pgid) = libc::pid_t::try_from(leader) {
        // SAFETY: kill has no memory-safety preconditions; the group is one this module created.
        // ESRCH (nobody left in the group) is fine.
        unsafe { libc::kill(-pgid, signal) };
    }
}

/// Whether any process of the group led by `leader` is still running.
fn group_exists(leader: u32) -> bool {
    procfs::group_has_live_members(leader)
}

/// The last lines a child printed, read by a background thread, with a way to wait for one.
#[derive(Clone, Default)]
pub struct LogTail {
    shared: Arc<(Mutex<TailState>, Condvar)>,
}

#[derive(Default)]
struct TailState {
    lines: VecDeque<String>,
    closed: bool,
}

const TAIL_LINES: usize = 60;

impl LogTail {
    /// Follows `stream` until it closes, copying every line to `copy`.
    pub fn follow(stream: impl Read + Send + 'static, mut copy: impl Write + Send + 'static) -> Self {
        let tail = Self::default();
        let writer = tail.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                // The copy is for reading afterwards; losing it must not stop the bench.
                let _ = writeln!(copy, "{line}");
                writer.push(line);
            }
            let (state, changed) = &*writer.shared;
            state.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
            changed.notify_all();
        });
        tail
    }

    fn push(&self, line: String) {
        let (state, changed) = &*self.shared;
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        if state.lines.len() == TAIL_LINES {
            state.lines.pop_front();
        }
        state.lines.push_back(line);
        changed.notify_all();
    }

    /// Waits for a line containing `text`; false on timeout or when the stream closed first.
    /// Only lines still in the tail count, which is enough for a line awaited from the start.
    pub fn wait_for(&self, text: &str, timeout: Duration) -> bool {
        self.wait_for_line(|line| line.contains(text), timeout)
    }

    /// Like [`wait_for`](Self::wait_for), for the first line `matches` accepts.
    pub fn wait_for_line(&self, matches: impl Fn(&str) -> bool, timeout: Duration) -> bool {
        let (state, changed) = &*self.shared;
        let deadline = Instant::now() + timeout;
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if state.lines.iter().any(|line| matches(line)) {
                return true;
            }
            let now = Instant::now();
            if state.closed || now >= deadline || interrupted() {
                return false;
            }
            // Short waits, so Ctrl-C is noticed.
            let wait = (deadline - now).min(Duration::from_millis(200));
            state = changed.wait_timeout(state, wait).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    pub fn text(&self) -> String {
        let state = self.shared.0.lock().unwrap_or_else(|e| e.into_inner());
        state.lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn note_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// From now on SIGINT, SIGTERM and SIGHUP only set a flag ([`interrupted`], [`check_interrupt`]),
/// so the bench unwinds through its guards instead of leaving services and the agent running.
pub fn catch_interrupts() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, note_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub fn check_interrupt() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopping_a_process_ends_its_whole_group() {
        let mut shell = Command::new("sh");
        shell.args(["-c", "sleep 60 & sleep 60"]);
        let mut process = Process::spawn("a shell", &mut shell).unwrap();
        let leader = process.pid();
        std::thread::sleep(Duration::from_millis(100));
        process.ensure_running().unwrap();
        process.stop().unwrap();
        assert!(!group_exists(leader));
    }

    #[test]
    fn a_log_tail_finds_a_line_or_sees_the_stream_close() {
        let tail = LogTail::follow(&b"starting\nagent ready processes=3\n"[..], std::io::sink());
        assert!(tail.wait_for("agent ready", Duration::from_secs(10)));
        let tail = LogTail::follow(&b"error: no luck\n"[..], std::io::sink());
        assert!(!tail.wait_for("agent ready", Duration::from_secs(10)));
        assert_eq!(tail.text(), "error: no luck");
    }
}
