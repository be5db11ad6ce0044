//! The function part's Python program (xtask/bench/bench_functions.py), driven over its stdin
//! and stdout: one request line, one reply line.
//!
//! It runs imported (`python -B -s -c 'import bench_functions; bench_functions.main()'` with
//! PYTHONPATH on its directory), so the agent sees its functions in module `bench_functions`,
//! not `__main__`. Its replies are read by a thread into a channel, so every wait has a
//! deadline, notices Ctrl-C, and tells a slow program from one that died (whose stderr, kept in
//! a log file, then explains why).

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use super::process::{check_interrupt, Process};

/// The module the agent's `--function` names.
pub const MODULE: &str = "bench_functions";
/// How long the program may take to start and warm its functions up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one request may take; requests are sized to well under a second.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Program {
    process: Process,
    stdin: ChildStdin,
    replies: Receiver<String>,
    log: PathBuf,
    version: String,
}

impl Program {
    /// Starts the program of `dir` on `python`, its stderr going to `log`, and waits until it
    /// has warmed up.
    pub fn start(python: &Path, dir: &Path, log: &Path) -> Result<Self> {
        let stderr = std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = Command::new(python);
        command
            .args(["-B", "-s", "-c", &format!("import {MODULE}; {MODULE}.main()")])
            .env("PYTHONPATH", dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut process = Process::spawn(&format!("{MODULE} on {}", python.display()), &mut command)?;
        let stdin = process.take_stdin().context("the program's stdin is not piped")?;
        let stdout = process.take_stdout().context("the program's stdout is not piped")?;
        let (sender, replies) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut program = Self { process, stdin, replies, log: log.to_path_buf(), version: String::new() };
        let ready = program.reply(READY_TIMEOUT).context("the program did not start")?;
        match ready.strip_prefix("ready ") {
            Some(version) => program.version = version.trim().to_owned(),
            None => bail!("the program's first line is `{ready}`, not `ready VERSION`"),
        }
        Ok(program)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The interpreter's version, as the program printed it.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The best ns per call of `repeats` runs of `calls` calls of `function`.
    pub fn per_call_ns(&mut self, function: &str, calls: u64, repeats: u32) -> Result<f64> {
        let request = format!("{function} {calls} {repeats}");
        writeln!(self.stdin, "{request}")
            .and_then(|()| self.stdin.flush())
            .with_context(|| format!("cannot send `{request}` to the program"))
            .with_context(|| self.log_tail())?;
        let reply = self.reply(REPLY_TIMEOUT).with_context(|| format!("no answer to `{request}`"))?;
        match reply.parse::<f64>() {
            Ok(ns) if ns.is_finite() && ns >= 0.0 => Ok(ns),
            // Its own errors start with `error:`, and say what was wrong.
            _ => bail!("the program answered `{reply}` to `{request}`, not nanoseconds per call"),
        }
    }

    pub fn ensure_running(&mut self) -> Result<()> {
        self.process.ensure_running().with_context(|| self.log_tail())
    }

    /// Asks the program to exit and requires a clean exit.
    pub fn quit(mut self) -> Result<()> {
        // A write error means it is gone already, which the exit status tells better.
        let _ = writeln!(self.stdin, "quit").and_then(|()| self.stdin.flush());
        let Some(status) = self.process.wait_for_exit(QUIT_TIMEOUT)? else {
            bail!("the program did not exit within {QUIT_TIMEOUT:?} of `quit`; {}", self.log_tail());
        };
        if !status.success() {
            bail!("the program exited with {status} after `quit`; {}", self.log_tail());
        }
        Ok(())
    }

    /// The next line of the program's stdout.
    fn reply(&mut self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            check_interrupt()?;
            let now = Instant::now();
            if now >= deadline {
                bail!("the program did not answer within {timeout:?}; {}", self.log_tail());
            }
            // Short waits, so Ctrl-C is noticed.
            match self.replies.recv_timeout((deadline - now).min(Duration::from_millis(200))) {
                Ok(line) => return Ok(line),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.ensure_running()?;
                    bail!("the program closed its stdout; {}", self.log_tail());
                }
            }
        }
    }

    /// The end of the program's stderr, for error messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("program log {} (last lines):\n{tail}", self.log.display())
    }
}
