//! What /proc tells about the processes under test: CPU time, memory, children.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context as _, Result};

/// The fields of /proc/PID/stat the bench uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// R, S, D, Z (zombie: exited, not yet reaped), ...
    pub state: char,
    pub ppid: u32,
    pub pgrp: u32,
    /// utime + stime, in clock ticks; for a process (thread group leader) this covers all its
    /// threads.
    pub cpu_ticks: u64,
}

/// Parses /proc/PID/stat. The command name (field 2) may hold spaces and parentheses, so the
/// fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Result<Stat> {
    let after_name = text.rfind(')').map(|end| &text[end + 1..]).context("no `)` after the command name")?;
    // Fields 3 (state) onwards: ppid is field 4, pgrp 5, utime 14, stime 15.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |number: usize| -> Result<u64> {
        let text = fields.get(number - 3).with_context(|| format!("no field {number}"))?;
        text.parse().with_context(|| format!("field {number} is `{text}`, not a number"))
    };
    let state = fields.first().and_then(|state| state.chars().next()).context("no state field")?;
    let ppid = u32::try_from(field(4)?).context("ppid out of range")?;
    let pgrp = u32::try_from(field(5)?).context("pgrp out of range")?;
    Ok(Stat { state, ppid, pgrp, cpu_ticks: field(14)? + field(15)? })
}

pub fn stat(pid: u32) -> Result<Stat> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_stat(&text).with_context(|| format!("cannot parse {path}"))
}

/// Resident memory now and at its peak (VmRSS, VmHWM), in KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    pub rss_kib: u64,
    pub peak_kib: u64,
}

/// Parses VmRSS and VmHWM out of /proc/PID/status.
pub fn parse_memory(status: &str) -> Result<Memory> {
    Ok(Memory { rss_kib: status_kib(status, "VmRSS")?, peak_kib: status_kib(status, "VmHWM")? })
}

/// The value of a `Key:   1234 kB` line.
fn status_kib(status: &str, key: &str) -> Result<u64> {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix(key).and_then(|rest| rest.strip_prefix(':')))
        .with_context(|| format!("no {key} line"))?;
    let number = line.trim().strip_suffix("kB").with_context(|| format!("{key} is not in kB: `{line}`"))?;
    number.trim().parse().with_context(|| format!("{key} is not a number: `{line}`"))
}

pub fn memory(pid: u32) -> Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_memory(&text).with_context(|| format!("cannot parse {path}"))
}

/// `root` and every process descending from it, as /proc shows them now.
pub fn process_tree(root: u32) -> Vec<u32> {
    let parents = all_parents();
    let mut tree = vec![root];
    let mut index = 0;
    while index < tree.len() {
        let parent = tree[index];
        tree.extend(parents.iter().filter(|&(_, &ppid)| ppid == parent).map(|(&pid, _)| pid));
        index += 1;
    }
    tree
}

/// Every process whose command name (/proc/PID/comm, at most 15 bytes) is `name`.
pub fn pids_named(name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim_end() == name))
        .collect()
}

/// pid -> ppid for every process.
fn all_parents() -> HashMap<u32, u32> {
    all_stats().map(|(pid, stat)| (pid, stat.ppid)).collect()
}

/// Whether process group `pgrp` has a member that has not exited. Zombies do not count: an
/// orphan's zombie lasts until init reaps it, which can take seconds.
pub fn group_has_live_members(pgrp: u32) -> bool {
    all_stats().any(|(_, stat)| stat.pgrp == pgrp && stat.state != 'Z')
}

/// Every process and its stat (those that vanish while being read are skipped).
fn all_stats() -> impl Iterator<Item = (u32, Stat)> {
    let entries = std::fs::read_dir("/proc").into_iter().flatten();
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, stat(pid).ok()?)))
}

/// CPU time of a fixed set of processes, to be compared with a later sample.
pub struct CpuSample {
    ticks: HashMap<u32, u64>,
}

impl CpuSample {
    /// Samples `pids`; processes that are gone are left out.
    pub fn take(pids: &[u32]) -> Self {
        Self { ticks: pids.iter().filter_map(|&pid| Some((pid, stat(pid).ok()?.cpu_ticks))).collect() }
    }

    /// CPU time spent since `earlier` by the processes present in both samples.
    pub fn since(&self, earlier: &CpuSample) -> Duration {
        let ticks: u64 =
            self.ticks.iter().filter_map(|(pid, &now)| Some(now.saturating_sub(*earlier.ticks.get(pid)?))).sum();
        ticks_to_duration(ticks)
    }
}

fn ticks_to_duration(ticks: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = u64::try_from(per_second).ok().filter(|&n| n > 0).unwrap_or(100);
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_a_hostile_command_name() {
        let text = "4242 (gunicorn: worker [a) b]) S 4200 4200 4200 0 -1 4194560 9 0 0 0 \
                    731 52 0 0 20 0 3 0 123456 30000000 5000 18446744073709551615\n";
        assert_eq!(parse_stat(text).unwrap(), Stat { state: 'S', ppid: 4200, pgrp: 4200, cpu_ticks: 783 });
    }

    #[test]
    fn a_truncated_stat_is_an_error() {
        assert!(parse_stat("1 (init) S 0 1").is_err());
        assert!(parse_stat("no parenthesis").is_err());
    }

    #[test]
    fn parses_rss_and_peak_from_status() {
        let status =
            "Name:\tscouter-agent\nVmPeak:\t  900000 kB\nVmHWM:\t   48212 kB\nVmRSS:\t   45100 kB\nThreads:\t7\n";
        assert_eq!(parse_memory(status).unwrap(), Memory { rss_kib: 45100, peak_kib: 48212 });
        assert!(parse_memory("Name:\tkthreadd\n").is_err());
    }

    #[test]
    fn this_process_is_in_its_own_tree() {
        let me = std::process::id();
        assert_eq!(process_tree(me)[0], me);
        assert!(stat(me).is_ok());
    }
}
