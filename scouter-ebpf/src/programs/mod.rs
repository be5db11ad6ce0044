//! The programs, one module per concern. Shared helpers live here.

pub mod asyncio;
pub mod connection;
pub mod context;
pub mod contextvars;
pub mod head;
pub mod inject;
pub mod io;
pub mod process;
pub mod python_call;
pub mod python_objects;
pub mod python_stack;
pub mod sdk_context;
pub mod socket_tracepoints;
pub mod sockets;
pub mod syscalls;
pub mod tcp_states;
pub mod tls;
pub mod trace_option;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    programs::TracePointContext,
};
use scouter_ebpf::{EventHeader, EventKind};

use crate::maps::is_tracked;

/// Offset of the first argument in a `syscalls/sys_enter_*` record (after the common header
/// and `__syscall_nr`); arguments are 8 bytes each. Stable ABI across kernels.
const SYSCALL_ARGS_OFFSET: usize = 16;
/// Offset of `ret` in a `syscalls/sys_exit_*` record.
const SYSCALL_RET_OFFSET: usize = 16;

/// The current thread's `pid_tgid`, if its process is traced: every uprobe's first check.
#[inline(always)]
pub fn tracked_thread() -> Option<u64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    is_tracked(current_ids(pid_tgid).0).then_some(pid_tgid)
}

/// The current task as (tgid, tid).
#[inline(always)]
pub fn current_ids(pid_tgid: u64) -> (u32, u32) {
    ((pid_tgid >> 32) as u32, pid_tgid as u32)
}

#[inline(always)]
pub fn header(kind: EventKind, pid_tgid: u64) -> EventHeader {
    let (pid, tid) = current_ids(pid_tgid);
    EventHeader {
        kind: kind as u32,
        pid,
        tid,
        _pad: 0,
        // SAFETY: helper with no preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
    }
}

/// Argument `index` of a `sys_enter_*` record.
#[inline(always)]
pub fn syscall_arg(ctx: &TracePointContext, index: usize) -> u64 {
    // SAFETY: the record holds six 8-byte arguments after the header.
    unsafe { ctx.read_at::<u64>(SYSCALL_ARGS_OFFSET + index * 8) }.unwrap_or(0)
}

/// Return value of a `sys_exit_*` record.
#[inline(always)]
pub fn syscall_ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: every exit record has `long ret` at this offset.
    unsafe { ctx.read_at::<i64>(SYSCALL_RET_OFFSET) }.unwrap_or(-1)
}
