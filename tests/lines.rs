//! Capturing a child process's output line by line, so a test can wait for a given line.
//!
//! A background thread per pipe appends lines (ANSI escapes stripped, invalid UTF-8 replaced) to
//! a shared [`LineLog`]; waiters block on a condition variable with a deadline. When every pipe
//! reaches end of file the log is marked closed, which tells a waiter that the process is gone
//! and the line will never come.

use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Why [`LineLog::wait_for`] returned without a matching line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitError {
    /// The deadline passed.
    Timeout,
    /// Every pipe was closed (the process exited) before a line matched.
    Closed,
}

#[derive(Default)]
struct State {
    lines: Vec<String>,
    open_pipes: usize,
}

/// Lines captured from a child's pipes; cheap to clone, shared with the reader threads.
#[derive(Clone, Default)]
pub struct LineLog {
    shared: Arc<(Mutex<State>, Condvar)>,
}

impl LineLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a thread that copies `pipe` into this log until end of file.
    pub fn follow(&self, pipe: impl Read + Send + 'static) {
        self.state().open_pipes += 1;
        let log = self.clone();
        thread::spawn(move || log.copy_lines(pipe));
    }

    fn copy_lines(&self, pipe: impl Read) {
        let mut reader = BufReader::new(pipe);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => break,
                Ok(_) => self.push(strip_ansi(&String::from_utf8_lossy(&raw)).trim_end().to_owned()),
            }
        }
        self.state().open_pipes -= 1;
        self.shared.1.notify_all();
    }

    fn push(&self, line: String) {
        self.state().lines.push(line);
        self.shared.1.notify_all();
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until a line (already captured or future) satisfies `matches`, and returns it.
    pub fn wait_for(&self, timeout: Duration, matches: impl Fn(&str) -> bool) -> Result<String, WaitError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state();
        loop {
            if let Some(line) = state.lines.iter().find(|line| matches(line)) {
                return Ok(line.clone());
            }
            if state.open_pipes == 0 {
                return Err(WaitError::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitError::Timeout);
            }
            state =
                self.shared.1.wait_timeout(state, deadline - now).unwrap_or_else(|poisoned| poisoned.into_inner()).0;
        }
    }

    /// Waits until every pipe is closed (or the timeout passes); returns whether they are.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.state();
        while state.open_pipes > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state =
                self.shared.1.wait_timeout(state, deadline - now).unwrap_or_else(|poisoned| poisoned.into_inner()).0;
        }
        true
    }

    /// Every captured line, joined.
    pub fn text(&self) -> String {
        self.state().lines.join("\n")
    }

    /// The last `count` lines, joined (with a note when earlier lines were left out).
    pub fn tail(&self, count: usize) -> String {
        let state = self.state();
        let skip = state.lines.len().saturating_sub(count);
        let mut text = if skip > 0 { format!("[... {skip} earlier lines ...]\n") } else { String::new() };
        text.push_str(&state.lines[skip..].join("\n"));
        text
    }

    /// The captured lines that contain `needle`.
    pub fn lines_containing(&self, needle: &str) -> Vec<String> {
        self.state().lines.iter().filter(|line| line.contains(needle)).cloned().collect()
    }
}

/// Removes ANSI escape sequences (CSI `ESC [ ... final`), which tracing adds when colouring.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            // Parameters and intermediates, up to the final byte in '@'..='~'.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

/// Whether `line` carries the field `key=value` exactly (`pid=12` matches neither `pid=123` nor
/// `ppid=12`). Values may be quoted.
pub fn has_field(line: &str, key: &str, value: &str) -> bool {
    let pattern = format!("{key}=");
    line.match_indices(&pattern).any(|(at, _)| {
        let boundary_before =
            line[..at].chars().next_back().is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '.'));
        let rest = line[at + pattern.len()..].trim_start_matches('"');
        let token: String =
            rest.chars().take_while(|c| !c.is_whitespace() && *c != '"' && *c != ',' && *c != '}').collect();
        boundary_before && token == value
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_sequences_are_removed() {
        let coloured = "\u{1b}[2m2024\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[3mpid\u{1b}[0m\u{1b}[2m=\u{1b}[0m42";
        assert_eq!(strip_ansi(coloured), "2024  INFO pid=42");
    }

    #[test]
    fn fields_match_exactly() {
        let line = "INFO scouter_agent::discovery: tracking python process pid=123 ppid=12 exe=\"/x\"";
        assert!(has_field(line, "pid", "123"));
        assert!(!has_field(line, "pid", "12"));
        assert!(!has_field(line, "pid", "1"));
        assert!(has_field(line, "ppid", "12"));
        assert!(has_field("x pid=\"77\"", "pid", "77"));
    }

    #[test]
    fn waiting_sees_lines_from_a_pipe_and_its_end() {
        let log = LineLog::new();
        log.follow(std::io::Cursor::new(b"one\nagent ready\nthree".to_vec()));
        assert_eq!(log.wait_for(Duration::from_secs(5), |l| l.contains("ready")), Ok("agent ready".into()));
        assert_eq!(log.wait_for(Duration::from_secs(5), |l| l == "never"), Err(WaitError::Closed));
        assert_eq!(log.tail(1), "[... 2 earlier lines ...]\nthree");
    }
}
