//! The tracepoints and perf event sources (PMUs) the agent attaches to.
//!
//! The tracepoints are taken from the probes' attachment table, so that `check` verifies
//! exactly the hooks the agent will attach.

use std::path::Path;

use super::Finding;
use crate::probes::capture::{PROCESS_TRACEPOINTS, SYSCALL_TRACEPOINTS};
use crate::probes::tracefs::{self, TracefsError};

const PMU_DIR: &str = "/sys/bus/event_source/devices";

/// The tracepoints of `category` in the attachment table, each once, in table order.
fn attached_tracepoints(category: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let attachments = PROCESS_TRACEPOINTS.iter().chain(SYSCALL_TRACEPOINTS);
    let in_category = attachments.filter(|(_, attached_category, _)| *attached_category == category);
    for name in in_category.flat_map(|(_, _, names)| names.iter()) {
        if !names.iter().any(|known| known == name) {
            names.push(name.to_string());
        }
    }
    names
}

/// `sys_enter_accept4` -> `accept4`, each syscall once.
fn syscalls_of(tracepoints: &[String]) -> Vec<&str> {
    let mut syscalls: Vec<&str> = Vec::new();
    let stripped = tracepoints
        .iter()
        .filter_map(|name| name.strip_prefix("sys_enter_").or_else(|| name.strip_prefix("sys_exit_")));
    for syscall in stripped {
        if !syscalls.contains(&syscall) {
            syscalls.push(syscall);
        }
    }
    syscalls
}

/// What looking up a category's tracepoints found.
struct Lookup {
    absent: Vec<String>,
    /// The first error other than absence (permissions, usually); one explains them all.
    unreadable: Option<TracefsError>,
}

fn look_up(root: &Path, category: &str, names: &[String]) -> Lookup {
    let mut lookup = Lookup { absent: Vec::new(), unreadable: None };
    for name in names {
        match tracefs::tracepoint_id(root, category, name) {
            Ok(_) => {}
            Err(TracefsError::NoSuchTracepoint { .. }) => lookup.absent.push(name.clone()),
            Err(e) => {
                lookup.unreadable.get_or_insert(e);
            }
        }
    }
    lookup
}

/// A blocking finding when some tracepoint cannot be attached; None when all can.
fn lookup_problem(feature: &str, names: &[String], lookup: Lookup, kernel_fix: &str) -> Option<Finding> {
    if let Some(e) = lookup.unreadable {
        return Some(
            Finding::missing(feature, e.to_string()).with_fix("run as root: tracefs is readable by root only"),
        );
    }
    if lookup.absent.is_empty() {
        return None;
    }
    let detail = format!("{} of {} absent: {}", lookup.absent.len(), names.len(), lookup.absent.join(", "));
    Some(Finding::missing(feature, detail).with_fix(kernel_fix))
}

pub fn tracefs_finding(root: &Result<std::path::PathBuf, TracefsError>) -> Finding {
    match root {
        Ok(path) => Finding::ok("tracefs", format!("mounted at {}", path.display())),
        // The error already says what failed and what to do.
        Err(e) => Finding::missing("tracefs", e.to_string()),
    }
}

pub fn syscall_tracepoints_finding(root: Option<&Path>) -> Finding {
    const FEATURE: &str = "syscall tracepoints";
    let Some(root) = root else {
        return Finding::missing(FEATURE, "cannot look: tracefs is unavailable").with_fix("see tracefs");
    };
    let names = attached_tracepoints("syscalls");
    let lookup = look_up(root, "syscalls", &names);
    syscall_tracepoints_from(&names, lookup)
}

fn syscall_tracepoints_from(names: &[String], lookup: Lookup) -> Finding {
    const FEATURE: &str = "syscall tracepoints";
    const KERNEL_FIX: &str = "use a kernel built with CONFIG_FTRACE_SYSCALLS=y";
    if let Some(problem) = lookup_problem(FEATURE, names, lookup, KERNEL_FIX) {
        return problem;
    }
    let syscalls = syscalls_of(names).join(", ");
    Finding::ok(FEATURE, format!("{} tracepoints present, of {syscalls}", names.len()))
}

/// The sched tracepoints exist, and the fields whose offsets the agent passes to its programs
/// can be found.
pub fn sched_tracepoints_finding(root: Option<&Path>) -> Finding {
    const FEATURE: &str = "sched tracepoints";
    let Some(root) = root else {
        return Finding::missing(FEATURE, "cannot look: tracefs is unavailable").with_fix("see tracefs");
    };
    let names = attached_tracepoints("sched");
    let lookup = look_up(root, "sched", &names);
    if let Some(problem) = lookup_problem(FEATURE, &names, lookup, "use a kernel built with CONFIG_TRACEPOINTS=y") {
        return problem;
    }
    let child_pid =
        tracefs::tracepoint_format(root, "sched", "sched_process_fork").map(|format| format.field_offset("child_pid"));
    let group_dead =
        tracefs::tracepoint_format(root, "sched", "sched_process_exit").map(|format| format.field_offset("group_dead"));
    match (child_pid, group_dead) {
        (Ok(child_pid), Ok(group_dead)) => sched_offsets_finding(child_pid, group_dead),
        (Err(e), _) | (_, Err(e)) => Finding::missing(FEATURE, e.to_string()),
    }
}

fn sched_offsets_finding(child_pid: Option<u32>, group_dead: Option<u32>) -> Finding {
    const FEATURE: &str = "sched tracepoints";
    let Some(child_pid) = child_pid else {
        return Finding::missing(
            FEATURE,
            "sched_process_fork has no child_pid field: forked children cannot be followed",
        )
        .with_fix("report this kernel's events/sched/sched_process_fork/format to the Scouter maintainers");
    };
    let group_dead = match group_dead {
        Some(offset) => format!("group_dead at offset {offset}"),
        // The programs then take the exit of the thread-group leader as the process's exit.
        None => "no group_dead field (older kernel): process exit is the leader thread's exit".to_owned(),
    };
    Finding::ok(FEATURE, format!("present; child_pid at offset {child_pid}, {group_dead}"))
}

fn pmu_present(name: &str) -> bool {
    Path::new(PMU_DIR).join(name).exists()
}

pub fn uprobes_finding() -> Finding {
    if pmu_present("uprobe") {
        return Finding::ok("uprobes", format!("{PMU_DIR}/uprobe present"));
    }
    Finding::warn(
        "uprobes",
        "no uprobe PMU: TLS (libssl) and Python interpreter probes are unavailable; plain-socket tracing still works",
    )
    .with_fix("use a kernel built with CONFIG_UPROBES=y and CONFIG_UPROBE_EVENTS=y")
}

/// Informational: the agent attaches no kprobes (syscall tracepoints and uprobes cover it).
pub fn kprobes_finding() -> Finding {
    if pmu_present("kprobe") {
        return Finding::ok("kprobes", "kprobe PMU present (not used by the agent)");
    }
    Finding::warn("kprobes", "no kprobe PMU (CONFIG_KPROBES off): not needed, the agent uses tracepoints")
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::*;

    #[test]
    fn checks_the_attached_tracepoints() {
        let syscalls = attached_tracepoints("syscalls");
        for name in ["sys_enter_accept4", "sys_exit_accept", "sys_enter_connect", "sys_exit_sendmsg"] {
            assert!(syscalls.iter().any(|known| known == name), "{name} not in {syscalls:?}");
        }
        let unique: std::collections::HashSet<_> = syscalls.iter().collect();
        assert_eq!(unique.len(), syscalls.len());
        assert_eq!(attached_tracepoints("sched"), ["sched_process_exec", "sched_process_fork", "sched_process_exit"]);
    }

    #[test]
    fn names_syscalls_once() {
        let names = ["sys_enter_accept", "sys_exit_accept", "sys_enter_accept4", "sys_enter_read"].map(String::from);
        assert_eq!(syscalls_of(&names), ["accept", "accept4", "read"]);
    }

    fn lookup(absent: &[String], unreadable: Option<TracefsError>) -> Lookup {
        Lookup { absent: absent.to_vec(), unreadable }
    }

    #[test]
    fn absent_syscall_tracepoints_block() {
        let names = ["sys_enter_accept", "sys_enter_accept4", "sys_exit_accept4"].map(String::from);
        let finding = syscall_tracepoints_from(&names, lookup(&names[1..], None));
        assert_eq!(finding.status, Status::Missing);
        assert_eq!(finding.detail, "2 of 3 absent: sys_enter_accept4, sys_exit_accept4");
        assert!(finding.fix.unwrap().contains("CONFIG_FTRACE_SYSCALLS"));
        let present = syscall_tracepoints_from(&names, lookup(&[], None));
        assert_eq!(present.status, Status::Ok);
        assert_eq!(present.detail, "3 tracepoints present, of accept, accept4");
    }

    /// Unprivileged users cannot read tracefs: one line saying so, not one per tracepoint.
    #[test]
    fn unreadable_tracefs_says_run_as_root() {
        let names = ["sys_enter_read".to_owned()];
        let denied = TracefsError::Read {
            path: "/sys/kernel/tracing/events/syscalls/sys_enter_read/id".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        let finding = syscall_tracepoints_from(&names, lookup(&[], Some(denied)));
        assert_eq!(finding.status, Status::Missing);
        assert!(finding.detail.starts_with("cannot read /sys/kernel/tracing/events/"), "{}", finding.detail);
        assert!(finding.fix.unwrap().contains("run as root"));
    }

    #[test]
    fn sched_offsets() {
        let modern = sched_offsets_finding(Some(20), Some(32));
        assert_eq!(modern.status, Status::Ok);
        assert!(modern.detail.contains("child_pid at offset 20, group_dead at offset 32"), "{}", modern.detail);
        let old = sched_offsets_finding(Some(44), None);
        assert_eq!(old.status, Status::Ok);
        assert!(old.detail.contains("no group_dead"));
        assert_eq!(sched_offsets_finding(None, Some(32)).status, Status::Missing);
    }
}
