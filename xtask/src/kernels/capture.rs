//! One kernel's run as a child process (QEMU, or the host's shell): its output goes to a log
//! file as it comes and is kept for parsing, under a hard deadline.
//!
//! The child leads a process group of its own, so a timeout ends everything it started (the
//! host run's agent and Python server, not just its shell). That also keeps the terminal's
//! Ctrl-C from reaching it, so while runs go on SIGINT, SIGTERM and SIGHUP only raise a flag
//! ([`Interrupts`]) that each wait loop turns into killing its group; the previous handlers
//! come back, and the signal is raised again, when the runs are over.
//!
//! Standard output and standard error are read by a thread each and merged line by line, bytes
//! that are not UTF-8 replaced (a serial console carries firmware escape sequences).

use std::fs::File;
use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::cmd;

/// How long output may keep coming once the child exited (from something it left running)
/// before the rest of its group is killed.
const LINGER: Duration = Duration::from_secs(5);

pub struct Captured {
    pub lines: Vec<String>,
    /// `None` when the deadline passed and the group was killed.
    pub status: Option<ExitStatus>,
    pub wall: Duration,
}

/// Runs `command` until it exits or `timeout` passes, its output copied to `log`; `progress`
/// sees every line as it comes (to echo the interesting ones). When `interrupted` says so, the
/// child's group is killed and the run fails.
pub fn run(
    command: &mut Command,
    log: &Path,
    timeout: Duration,
    interrupted: impl Fn() -> bool,
    progress: impl Fn(&str),
) -> Result<Captured> {
    let mut file = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    println!("+ {}", cmd::describe(command));
    let started = Instant::now();
    let mut child = command.spawn().with_context(|| format!("cannot start `{}`", cmd::describe(command)))?;
    let (sender, receiver) = mpsc::channel();
    read_lines(child.stdout.take(), sender.clone());
    read_lines(child.stderr.take(), sender);

    let mut lines = Vec::new();
    let mut record = |line: String| {
        // The log is for reading afterwards; losing it must not end the run.
        let _ = writeln!(file, "{line}");
        progress(&line);
        lines.push(line);
    };
    let deadline = started + timeout;
    let mut exited: Option<(ExitStatus, Instant)> = None;
    let mut streams_closed = false;
    loop {
        if streams_closed {
            std::thread::sleep(Duration::from_millis(200));
        } else {
            // A line, or 200 ms without one; either way the checks below run (a child that never
            // stops printing must not escape its deadline).
            match receiver.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => record(line),
                Err(RecvTimeoutError::Disconnected) => streams_closed = true,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
        if interrupted() {
            kill_group(&mut child);
            bail!("interrupted");
        }
        if exited.is_none() {
            let status = child.try_wait().context("cannot wait for the run's process")?;
            exited = status.map(|status| (status, Instant::now()));
        }
        let now = Instant::now();
        match exited {
            Some(_) if streams_closed => break,
            // Whatever the child left behind holds its output open: end it.
            Some((_, at)) if now >= at + LINGER => break,
            Some(_) => {}
            None if now >= deadline => break,
            None => {}
        }
    }
    kill_group(&mut child);
    // The group is gone, so the pipes close and the readers finish.
    drain(&receiver, &mut record);
    Ok(Captured { lines, status: exited.map(|(status, _)| status), wall: started.elapsed() })
}

/// Copies `stream`'s lines to `sender` from a thread of its own, until it closes.
fn read_lines(stream: Option<impl Read + Send + 'static>, sender: Sender<String>) {
    let Some(stream) = stream else { return };
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            match reader.read_until(b'\n', &mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buffer);
                    if sender.send(line.trim_end_matches(['\n', '\r']).to_owned()).is_err() {
                        break;
                    }
                }
            }
        }
    });
}

fn drain(receiver: &Receiver<String>, record: &mut impl FnMut(String)) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match receiver.recv_timeout(left) {
            Ok(line) => record(line),
            Err(_) => break,
        }
    }
}

/// SIGKILL to the child's whole group (ESRCH, nobody left, is fine), then reaps the child.
fn kill_group(child: &mut Child) {
    if let Ok(pgid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill has no memory-safety preconditions; the group is the one `run` created.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
    let _ = child.wait();
}

/// The signal that came while [`Interrupts`] was catching them, or 0.
static RAISED: AtomicI32 = AtomicI32::new(0);

extern "C" fn note_signal(signal: libc::c_int) {
    RAISED.store(signal, Ordering::SeqCst);
}

const CAUGHT: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// SIGINT, SIGTERM and SIGHUP only set a flag while this lives. When it is dropped the previous
/// handlers come back, and a signal that came meanwhile is raised again for them to handle
/// (the runs' children are gone by then), so Ctrl-C still ends `cargo xtask test`. One at a
/// time: it covers all the matrix's runs.
pub struct Interrupts {
    previous: Vec<(libc::c_int, libc::sighandler_t)>,
}

impl Interrupts {
    pub fn catch() -> Self {
        RAISED.store(0, Ordering::SeqCst);
        let handler = note_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let previous = CAUGHT.iter().map(|&signal| (signal, unsafe { libc::signal(signal, handler) })).collect();
        Self { previous }
    }

    pub fn raised(&self) -> bool {
        RAISED.load(Ordering::SeqCst) != 0
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        for &(signal, handler) in &self.previous {
            // SAFETY: puts back the disposition `catch` found.
            unsafe { libc::signal(signal, handler) };
        }
        let signal = RAISED.swap(0, Ordering::SeqCst);
        if signal != 0 {
            // SAFETY: raise has no preconditions.
            unsafe { libc::raise(signal) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log file of the test's own, in the temporary directory.
    fn log(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("xtask-capture-{}-{name}.log", std::process::id()))
    }

    #[test]
    fn keeps_both_streams_and_the_status() {
        let log = log("streams");
        let mut shell = Command::new("sh");
        shell.args(["-c", "echo one; echo two >&2; printf 'three\\r\\n'; exit 3"]);
        let captured = run(&mut shell, &log, Duration::from_secs(20), || false, |_| {}).unwrap();
        let mut lines = captured.lines.clone();
        lines.sort();
        assert_eq!(lines, ["one", "three", "two"]);
        assert_eq!(captured.status.and_then(|s| s.code()), Some(3));
        assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 3);
        std::fs::remove_file(log).unwrap();
    }

    #[test]
    fn a_timeout_kills_the_whole_group() {
        let log = log("timeout");
        let mut shell = Command::new("sh");
        shell.args(["-c", "echo started; sleep 60 & wait"]);
        let started = Instant::now();
        let captured = run(&mut shell, &log, Duration::from_secs(1), || false, |_| {}).unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(captured.status, None);
        assert_eq!(captured.lines, ["started"]);
        std::fs::remove_file(log).unwrap();
    }

    #[test]
    fn a_child_that_never_stops_printing_still_times_out() {
        let log = log("chatty");
        let mut shell = Command::new("sh");
        shell.args(["-c", "while :; do echo spam; done"]);
        let started = Instant::now();
        let captured = run(&mut shell, &log, Duration::from_secs(1), || false, |_| {}).unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(captured.status, None);
        std::fs::remove_file(log).unwrap();
    }

    #[test]
    fn an_interruption_ends_the_run() {
        let log = log("interrupted");
        let mut shell = Command::new("sh");
        shell.args(["-c", "sleep 60"]);
        let started = Instant::now();
        let error = run(&mut shell, &log, Duration::from_secs(50), || true, |_| {}).err().unwrap();
        assert_eq!(error.to_string(), "interrupted");
        assert!(started.elapsed() < Duration::from_secs(10));
        std::fs::remove_file(log).unwrap();
    }

    #[test]
    fn what_the_child_left_running_is_ended() {
        let log = log("linger");
        let mut shell = Command::new("sh");
        // The background sleep holds stdout open after the shell exits.
        shell.args(["-c", "sleep 60 & echo done"]);
        let started = Instant::now();
        let captured = run(&mut shell, &log, Duration::from_secs(50), || false, |_| {}).unwrap();
        assert!(started.elapsed() < LINGER + Duration::from_secs(5));
        assert!(captured.status.is_some_and(|s| s.success()));
        std::fs::remove_file(log).unwrap();
    }
}
