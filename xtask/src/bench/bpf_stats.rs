//! What the agent's eBPF programs cost while they run: the kernel's own run-time statistics.
//!
//! The kernel counts each program's runs (`run_cnt`) and the time spent in it (`run_time_ns`)
//! only while statistics are enabled. [`RunTimeStats`] enables them with
//! `bpf(BPF_ENABLE_STATS, BPF_STATS_RUN_TIME)`, whose file descriptor keeps them on until it is
//! closed: unlike `sysctl kernel.bpf_stats_enabled=1` nothing is left to restore, even when
//! the bench dies. Counting costs the kernel two clock reads per program run, so it is on only
//! around the run being counted.
//!
//! The counters come from `bpftool prog show --json` ([`programs`]), taken before and after the
//! run ([`runs_between`]). Which programs are the agent's: the ids in the agent's own file
//! descriptors ([`agent_program_ids`], from /proc/PID/fdinfo, where a program's or a link's
//! descriptor names its `prog_id`). bpftool's `pids` field would say the same, but Debian's
//! bpftool 7.1 is built without the skeletons that field needs.

use std::os::fd::{FromRawFd as _, OwnedFd};
use std::process::Command;

use anyhow::{Context as _, Result};

use crate::cmd;
use serde_json::Value;

/// `enum bpf_cmd` and `enum bpf_stats_type` of linux/bpf.h.
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;

/// BPF run-time statistics, enabled while this lives.
pub struct RunTimeStats {
    _fd: OwnedFd,
}

impl RunTimeStats {
    pub fn enable() -> Result<Self> {
        // `union bpf_attr`'s `enable_stats` member; the kernel zero-fills the rest of the union.
        #[repr(C)]
        struct EnableStats {
            kind: u32,
        }
        let attr = EnableStats { kind: BPF_STATS_RUN_TIME };
        let size = std::mem::size_of::<EnableStats>() as libc::c_uint;
        // SAFETY: `attr` is a valid, initialised `enable_stats` attribute of `size` bytes, which
        // the kernel only reads.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_ENABLE_STATS, &attr as *const EnableStats, size) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .context("bpf(BPF_ENABLE_STATS, BPF_STATS_RUN_TIME) failed (needs root and Linux 5.8+)");
        }
        let fd = i32::try_from(fd).context("bpf(BPF_ENABLE_STATS) returned no file descriptor")?;
        // SAFETY: the kernel just opened `fd` for this process, and nothing else owns it.
        Ok(Self { _fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }
}

/// One program's counters, as bpftool lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    pub id: u32,
    pub name: String,
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

/// Every loaded program, from `bpftool prog show --json`.
pub fn programs() -> Result<Vec<Program>> {
    let mut bpftool = Command::new("bpftool");
    bpftool.args(["prog", "show", "--json"]);
    let text = cmd::output(&mut bpftool).context("is bpftool installed (Debian package bpftool)?")?;
    parse_programs(&text).with_context(|| format!("cannot read the output of `{}`", cmd::describe(&bpftool)))
}

/// bpftool's program list: an array of objects with `id`, `name` (absent for a nameless
/// program) and, once the program has run with statistics on, `run_time_ns` and `run_cnt`.
fn parse_programs(text: &str) -> Result<Vec<Program>> {
    let value: Value = serde_json::from_str(text).context("not JSON")?;
    let items = value.as_array().context("not a JSON array")?;
    items.iter().map(program).collect()
}

fn program(item: &Value) -> Result<Program> {
    let id = item.get("id").and_then(Value::as_u64).context("a program without an `id`")?;
    let id = u32::try_from(id).with_context(|| format!("program id {id} is out of range"))?;
    let counter = |key: &str| item.get(key).and_then(Value::as_u64).unwrap_or(0);
    let name = match item.get("name").and_then(Value::as_str) {
        Some(name) => name.to_owned(),
        None => format!("(id {id}, no name)"),
    };
    Ok(Program { id, name, run_cnt: counter("run_cnt"), run_time_ns: counter("run_time_ns") })
}

/// The ids of the programs process `pid` holds a descriptor of (a program's or a link's).
pub fn agent_program_ids(pid: u32) -> Result<Vec<u32>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let entries = std::fs::read_dir(&dir).with_context(|| format!("cannot list {dir}"))?;
    // Descriptors closed while being read are skipped.
    let mut ids: Vec<u32> = entries
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
        .filter_map(|text| prog_id(&text))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// The `prog_id:` field of a descriptor's fdinfo, if it refers to a program or a link.
fn prog_id(fdinfo: &str) -> Option<u32> {
    fdinfo.lines().find_map(|line| line.strip_prefix("prog_id:")).and_then(|id| id.trim().parse().ok())
}

/// What one program did between two listings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Runs {
    pub name: String,
    pub runs: u64,
    pub ns: u64,
}

/// The programs of `ids` that ran between `before` and `after`, the costliest first. A
/// program loaded in between counts from zero.
pub fn runs_between(before: &[Program], after: &[Program], ids: &[u32]) -> Vec<Runs> {
    let mut runs: Vec<Runs> = after
        .iter()
        .filter(|program| ids.contains(&program.id))
        .map(|program| {
            let earlier = before.iter().find(|p| p.id == program.id);
            let (runs, ns) = earlier.map_or((0, 0), |p| (p.run_cnt, p.run_time_ns));
            Runs {
                name: program.name.clone(),
                runs: program.run_cnt.saturating_sub(runs),
                ns: program.run_time_ns.saturating_sub(ns),
            }
        })
        .filter(|runs| runs.runs > 0)
        .collect();
    runs.sort_by(|a, b| b.ns.cmp(&a.ns).then_with(|| a.name.cmp(&b.name)));
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from `bpftool prog show --json` (v7.1) with statistics on.
    const LISTING: &str = r#"[{"id":6626,"type":"tracing","name":"sock_sent","tag":"494fa5ee3e3c464f",
        "gpl_compatible":true,"run_time_ns":91234,"run_cnt":812,"loaded_at":1796687434,"uid":0,
        "bytes_xlated":5768,"jited":true,"bytes_jited":3175,"bytes_memlock":8192,"map_ids":[9859,9875],
        "btf_id":1246},{"id":6627,"type":"kprobe","name":"asyncio_task_init","tag":"0011223344556677",
        "gpl_compatible":true,"loaded_at":1796687434,"uid":0},{"id":12,"type":"cgroup_skb","tag":"aa"}]"#;

    #[test]
    fn reads_bpftool_listings_with_and_without_counters() {
        let programs = parse_programs(LISTING).unwrap();
        assert_eq!(
            programs,
            vec![
                Program { id: 6626, name: "sock_sent".into(), run_cnt: 812, run_time_ns: 91234 },
                Program { id: 6627, name: "asyncio_task_init".into(), run_cnt: 0, run_time_ns: 0 },
                Program { id: 12, name: "(id 12, no name)".into(), run_cnt: 0, run_time_ns: 0 },
            ]
        );
        assert!(parse_programs("[]").unwrap().is_empty());
        assert!(parse_programs(r#"{"id": 1}"#).is_err());
        assert!(parse_programs(r#"[{"name": "x"}]"#).is_err());
    }

    #[test]
    fn finds_the_program_of_a_program_or_link_descriptor() {
        let program = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nprog_type:\t26\nprog_jited:\t1\n\
                       prog_tag:\t494fa5ee3e3c464f\nmemlock:\t8192\nprog_id:\t6626\nrun_time_ns:\t0\nrun_cnt:\t0\n";
        let link = "pos:\t0\nflags:\t02000000\nmnt_id:\t15\nino:\t1057\nlink_type:\ttracing\nlink_id:\t5701\n\
                    prog_tag:\t494fa5ee3e3c464f\nprog_id:\t6627\n";
        let map = "pos:\t0\nflags:\t02000002\nmap_type:\t1\nmap_id:\t9859\n";
        assert_eq!(prog_id(program), Some(6626));
        assert_eq!(prog_id(link), Some(6627));
        assert_eq!(prog_id(map), None);
        assert_eq!(prog_id("pos:\t0\nflags:\t0100000\n"), None);
    }

    #[test]
    fn counts_only_the_given_programs_that_ran_in_between() {
        let program = |id, name: &str, run_cnt, run_time_ns| Program { id, name: name.into(), run_cnt, run_time_ns };
        let before = [program(1, "sock_sent", 100, 5_000), program(2, "sock_received", 7, 700), program(3, "x", 0, 0)];
        let after = [
            program(1, "sock_sent", 300, 25_000),
            program(2, "sock_received", 7, 700),
            program(3, "x", 10, 90_000),
            program(4, "late", 5, 50),
        ];
        let runs = runs_between(&before, &after, &[1, 2, 4]);
        assert_eq!(
            runs,
            vec![
                Runs { name: "sock_sent".into(), runs: 200, ns: 20_000 },
                Runs { name: "late".into(), runs: 5, ns: 50 }
            ]
        );
    }

    /// Needs root (skipped otherwise): statistics can be turned on and off again.
    #[test]
    fn enables_run_time_statistics_as_root() {
        if !crate::workspace::is_root() {
            return;
        }
        let stats = RunTimeStats::enable().unwrap();
        drop(stats);
    }
}
