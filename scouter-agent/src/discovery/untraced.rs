//! Processes the agent inspected and left alone (not Python, an unsupported version, not
//! selected), remembered with the executable they ran so that periodic rescans skip them
//! instead of re-reading their /proc/PID/maps, and a warning about one is given once. A process
//! that execs shows a new executable and is looked at again.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

#[derive(Debug, Default)]
pub struct UntracedProcesses {
    executables: HashMap<u32, Option<PathBuf>>,
}

impl UntracedProcesses {
    /// Records `pid` as left alone while running `executable`; true unless it already was,
    /// running the same one.
    pub fn remember(&mut self, pid: u32, executable: Option<PathBuf>) -> bool {
        self.executables.insert(pid, executable.clone()) != Some(executable)
    }

    /// Whether `pid` was left alone and still runs `executable` (no need to inspect it again).
    pub fn is_unchanged(&self, pid: u32, executable: &Option<PathBuf>) -> bool {
        self.executables.get(&pid) == Some(executable)
    }

    pub fn forget(&mut self, pid: u32) {
        self.executables.remove(&pid);
    }

    /// Drops the processes that no longer exist (pids are reused).
    pub fn retain_alive(&mut self, alive: &HashSet<u32>) {
        self.executables.retain(|pid, _| alive.contains(pid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exe(path: &str) -> Option<PathBuf> {
        Some(PathBuf::from(path))
    }

    #[test]
    fn remembers_once_per_executable() {
        let mut untraced = UntracedProcesses::default();
        assert!(untraced.remember(7, exe("/usr/bin/python3.7")));
        assert!(!untraced.remember(7, exe("/usr/bin/python3.7")));
        assert!(untraced.is_unchanged(7, &exe("/usr/bin/python3.7")));
        // An exec the agent missed: a different executable must be looked at again.
        assert!(!untraced.is_unchanged(7, &exe("/usr/bin/python3.11")));
        assert!(untraced.remember(7, exe("/usr/bin/python3.11")));
        assert!(!untraced.is_unchanged(8, &exe("/usr/bin/python3.11")));
    }

    #[test]
    fn forgets_traced_and_vanished_processes() {
        let mut untraced = UntracedProcesses::default();
        untraced.remember(1, exe("/bin/a"));
        untraced.remember(2, exe("/bin/b"));
        untraced.retain_alive(&HashSet::from([2]));
        assert!(!untraced.is_unchanged(1, &exe("/bin/a")));
        assert!(untraced.is_unchanged(2, &exe("/bin/b")));
        untraced.forget(2);
        assert!(!untraced.is_unchanged(2, &exe("/bin/b")));
    }
}
