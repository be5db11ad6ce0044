//! Which processes are traced: exec (the agent decides), fork (children of tracked processes are
//! tracked at once, before their first syscall), exit (forget them).

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext};
use scouter_ebpf::{counter, EventKind, ProcessEvent};

use super::{current_ids, header};
use crate::maps::{count, EVENTS, TRACKED_PROCESSES};

/// Set by the agent from the tracepoint's format file; the layout changed across kernels.
#[unsafe(no_mangle)]
static FORK_CHILD_PID_OFFSET: u32 = 20;
/// `u32::MAX` when the kernel's `sched_process_exit` has no `group_dead` field.
#[unsafe(no_mangle)]
static EXIT_GROUP_DEAD_OFFSET: u32 = 32;

#[inline(always)]
fn emit(kind: EventKind, pid_tgid: u64, child_pid: u32) {
    let event = ProcessEvent { header: header(kind, pid_tgid), child_pid, _pad: 0 };
    if EVENTS.output::<ProcessEvent>(&event, 0).is_err() {
        count(counter::RING_FULL);
    }
}

/// Every exec on the host: the agent inspects the new image and decides whether to track it.
#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    emit(EventKind::ProcessExec, bpf_get_current_pid_tgid(), 0);
    0
}

#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (parent, _) = current_ids(pid_tgid);
    // SAFETY: presence check and copy of a plain value.
    let Some(tracked) = (unsafe { TRACKED_PROCESSES.get(&parent) }).copied() else {
        return 0;
    };
    // SAFETY: read-only global set at load time.
    let offset = unsafe { core::ptr::read_volatile(&FORK_CHILD_PID_OFFSET) } as usize;
    // SAFETY: the agent derived the offset from this tracepoint's format.
    let Ok(child) = (unsafe { ctx.read_at::<i32>(offset) }) else {
        return 0;
    };
    let child = child as u32;
    // Threads are forks too; the agent removes those it finds to be threads.
    if TRACKED_PROCESSES.insert(&child, &tracked, 0).is_err() {
        count(counter::TRACKED_MAP_FULL);
    }
    emit(EventKind::ProcessFork, pid_tgid, child);
    0
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (pid, tid) = current_ids(pid_tgid);
    // SAFETY: read-only global set at load time.
    let offset = unsafe { core::ptr::read_volatile(&EXIT_GROUP_DEAD_OFFSET) };
    let group_dead = if offset == u32::MAX {
        pid == tid
    } else {
        // SAFETY: the agent derived the offset from this tracepoint's format.
        unsafe { ctx.read_at::<u8>(offset as usize) }.unwrap_or(0) != 0
    };
    // SAFETY: presence check only.
    if !group_dead || unsafe { TRACKED_PROCESSES.get(&pid) }.is_none() {
        return 0;
    }
    let _ = TRACKED_PROCESSES.remove(&pid);
    emit(EventKind::ProcessExit, pid_tgid, 0);
    0
}
