//! What one kernel's run said: the `SCOUTER-MATRIX` lines of `guest/matrix.sh`, read back from
//! its console log.
//!
//! The lines are found anywhere in a console line (a kernel message may share the serial line),
//! carriage returns dropped. A result line that never came is a result that failed: a run that
//! died half-way reports what it got through and fails the rest. Any status other than `ok`
//! reads as a failure, so a typo in the script cannot pass.

use std::collections::BTreeMap;

/// What every result line starts with (guest/matrix.sh's `MARK`).
pub const MARKER: &str = "SCOUTER-MATRIX";

/// One check's outcome, as the script reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    /// What the script added after the status, e.g. "(check exited 1)".
    pub detail: String,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Results {
    /// Whether the script started (`begin`) and got to its last line (`end`).
    pub began: bool,
    pub finished: bool,
    /// `uname -r` where it ran.
    pub kernel: Option<String>,
    /// `KEY=VALUE` words: BTF, tracefs, cgroup2, lo, CPUs.
    pub environment: Option<String>,
    pub load: Option<Verdict>,
    /// By capture variant.
    pub attach: BTreeMap<String, Verdict>,
    pub smoke: BTreeMap<String, Verdict>,
    /// Output the script framed for the report (`check`, `agent-VARIANT`, `smoke-VARIANT`).
    pub blocks: BTreeMap<String, Vec<String>>,
}

impl Results {
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Self {
        let mut results = Self::default();
        let mut open_block: Option<(String, Vec<String>)> = None;
        for line in lines {
            let line = line.trim_end_matches(['\r', '\n']);
            let Some(words) = result_words(line) else {
                if let Some((_, body)) = &mut open_block {
                    body.push(line.to_owned());
                }
                continue;
            };
            match words.as_slice() {
                ["block-begin", name, ..] => open_block = Some(((*name).to_owned(), Vec::new())),
                ["block-end", ..] => {
                    if let Some((name, body)) = open_block.take() {
                        results.blocks.insert(name, body);
                    }
                }
                _ => results.note(&words),
            }
        }
        // A block the run never closed (it died inside) is still worth showing.
        if let Some((name, body)) = open_block {
            results.blocks.insert(name, body);
        }
        results
    }

    fn note(&mut self, words: &[&str]) {
        match words {
            ["begin", ..] => self.began = true,
            ["end", ..] => self.finished = true,
            ["kernel", release @ ..] => self.kernel = Some(release.join(" ")),
            ["env", pairs @ ..] => self.environment = Some(pairs.join(" ")),
            ["load", status, detail @ ..] => self.load = Some(verdict(status, detail)),
            ["attach", variant, status, detail @ ..] => {
                self.attach.insert((*variant).to_owned(), verdict(status, detail));
            }
            ["smoke", variant, status, detail @ ..] => {
                self.smoke.insert((*variant).to_owned(), verdict(status, detail));
            }
            _ => {}
        }
    }

    pub fn block(&self, name: &str) -> Option<&[String]> {
        self.blocks.get(name).map(Vec::as_slice)
    }
}

/// The words after the marker, if `line` is a result line.
fn result_words(line: &str) -> Option<Vec<&str>> {
    let at = line.find(MARKER)?;
    let rest = &line[at + MARKER.len()..];
    // `SCOUTER-MATRIXES` is not a result line.
    if !rest.is_empty() && !rest.starts_with(' ') {
        return None;
    }
    Some(rest.split_whitespace().collect())
}

fn verdict(status: &str, detail: &[&str]) -> Verdict {
    Verdict { ok: status == "ok", detail: detail.join(" ") }
}

/// A result line worth echoing while a run goes on (not block contents or block markers), or
/// `None`.
pub fn progress(line: &str) -> Option<String> {
    let words = result_words(line.trim_end_matches(['\r', '\n']))?;
    match words.first() {
        Some(&"block-begin" | &"block-end") | None => None,
        Some(_) => Some(words.join(" ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = "\
[    2.911] Run /init as init process
SCOUTER-MATRIX begin\r
SCOUTER-MATRIX kernel 6.1.0-57-cloud-amd64\r
SCOUTER-MATRIX env btf=yes tracefs=yes cgroup2=/sys/fs/cgroup lo=up cpus=2\r
SCOUTER-MATRIX block-begin check\r
ok       BTF                  /sys/kernel/btf/vmlinux present\r
io_exit     320    35818    56515us\r
SCOUTER-MATRIX block-end check\r
SCOUTER-MATRIX load failed (check exited 1)\r
SCOUTER-MATRIX attach default ok\r
SCOUTER-MATRIX block-begin smoke-default\r
no SERVER span with url.path /smoke-default in 0 traces\r
SCOUTER-MATRIX block-end smoke-default\r
[   40.123] random: crng init done SCOUTER-MATRIX smoke default failed\r
SCOUTER-MATRIX attach syscalls weird\r
SCOUTER-MATRIX end\r
";

    #[test]
    fn parses_a_whole_run() {
        let results = Results::parse(RUN.lines());
        assert!(results.began && results.finished);
        assert_eq!(results.kernel.as_deref(), Some("6.1.0-57-cloud-amd64"));
        assert_eq!(results.environment.as_deref(), Some("btf=yes tracefs=yes cgroup2=/sys/fs/cgroup lo=up cpus=2"));
        assert_eq!(results.load, Some(Verdict { ok: false, detail: "(check exited 1)".into() }));
        assert!(results.attach["default"].ok);
        // A marker after a kernel message on the same line still counts; unknown statuses fail.
        assert!(!results.smoke["default"].ok);
        assert!(!results.attach["syscalls"].ok);
        assert_eq!(
            results.block("check").unwrap(),
            ["ok       BTF                  /sys/kernel/btf/vmlinux present", "io_exit     320    35818    56515us"]
        );
        assert_eq!(results.block("smoke-default").unwrap().len(), 1);
    }

    #[test]
    fn a_run_cut_short_keeps_what_it_said() {
        let cut: Vec<&str> = RUN.lines().take(7).collect();
        let results = Results::parse(cut);
        assert!(results.began && !results.finished);
        assert_eq!(results.load, None);
        assert!(results.attach.is_empty());
        // The block it died in.
        assert_eq!(results.block("check").unwrap().len(), 2);
    }

    #[test]
    fn ignores_look_alikes_and_echoes_only_results() {
        let results = Results::parse(["SCOUTER-MATRIXES load ok", "echo SCOUTER-MATRIX-load ok"]);
        assert_eq!(results, Results::default());
        assert_eq!(progress("SCOUTER-MATRIX attach default ok\r").as_deref(), Some("attach default ok"));
        assert_eq!(progress("SCOUTER-MATRIX block-begin check"), None);
        assert_eq!(progress("ok  BTF present"), None);
    }
}
