//! asyncio: which task a thread is running, and which request each task works for.
//!
//! An event loop serves many requests on one thread, so "the request this thread serves" is
//! wrong there; the task is the unit. Uprobes on the `_asyncio` C module (its static symbols,
//! found by the agent) keep three facts:
//! - `task_step_impl` entry/return: the task the thread is stepping (a small stack: 3.12 eager
//!   tasks step inside another task's step);
//! - `Task.__init__`: a new task works for its creator's request: the running task's, or, when
//!   a callback creates it (uvicorn: the protocol's `data_received`), the request that callback
//!   just read;
//! - `Future.set_result` and `task_wakeup` (3.8–3.9: `TaskWakeupMethWrapper_call`): a future
//!   resolved by the callback that read a request hands that request to the task it wakes
//!   (aiohttp: the connection's handler task waits on such a future).
//! [`super::context`] asks [`running_task`] first when a client request starts.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};

use super::{context, tracked_thread};
use crate::maps::{RunningTasks, RUNNING_TASKS, TASK_NESTING};

/// `task_step_impl(task, exc)`, up to 3.11.
#[uprobe]
pub fn asyncio_task_step(ctx: ProbeContext) -> u32 {
    task_step(ctx.arg::<u64>(0))
}

/// `task_step_impl(state, task, exc)`, from 3.12 (the module state comes first).
#[uprobe]
pub fn asyncio_task_step_state_first(ctx: ProbeContext) -> u32 {
    task_step(ctx.arg::<u64>(1))
}

#[inline(always)]
fn task_step(task: Option<u64>) -> u32 {
    let Some(pid_tgid) = tracked_thread() else { return 0 };
    if let Some(task) = task {
        push_task(pid_tgid, task);
    }
    0
}

#[uretprobe]
pub fn asyncio_task_step_return(_ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if let Some(running) = RUNNING_TASKS.get_ptr_mut(&pid_tgid) {
        // SAFETY: this thread's own entry.
        let running = unsafe { &mut *running };
        running.depth = running.depth.saturating_sub(1);
    }
    0
}

/// `_asyncio_Task___init__(self, args, kwargs)`.
#[uprobe]
pub fn asyncio_task_init(ctx: ProbeContext) -> u32 {
    let Some(pid_tgid) = tracked_thread() else { return 0 };
    let Some(task) = ctx.arg::<u64>(0) else { return 0 };
    context::task_created(pid_tgid, task);
    0
}

/// `_asyncio_Future_set_result(self, ...)`.
#[uprobe]
pub fn asyncio_future_set_result(ctx: ProbeContext) -> u32 {
    let Some(pid_tgid) = tracked_thread() else { return 0 };
    let Some(future) = ctx.arg::<u64>(0) else { return 0 };
    context::future_resolved(pid_tgid, future);
    0
}

/// `task_wakeup(task, future)` (3.10+).
#[uprobe]
pub fn asyncio_task_wakeup(ctx: ProbeContext) -> u32 {
    let Some(pid_tgid) = tracked_thread() else { return 0 };
    let (Some(task), Some(future)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else { return 0 };
    context::task_woken(pid_tgid, task, future);
    0
}

/// `TaskWakeupMethWrapper_call(wrapper, args, kwargs)` (3.8–3.9, before `task_wakeup` was a
/// function of its own): the task is the wrapper's first field, the future the only argument.
#[uprobe]
pub fn asyncio_task_wakeup_wrapper(ctx: ProbeContext) -> u32 {
    let Some(pid_tgid) = tracked_thread() else { return 0 };
    let (Some(wrapper), Some(args)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else { return 0 };
    // SAFETY: reads of the process's memory; a failed read skips the event.
    let task = unsafe { bpf_probe_read_user((wrapper + OBJECT_HEAD) as *const u64) };
    // SAFETY: as above; a tuple's items follow its header and size.
    let future = unsafe { bpf_probe_read_user((args + OBJECT_HEAD + 8) as *const u64) };
    if let (Ok(task), Ok(future)) = (task, future) {
        context::task_woken(pid_tgid, task, future);
    }
    0
}

/// Size of `PyObject_HEAD` (reference count and type).
const OBJECT_HEAD: u64 = 16;

#[inline(always)]
fn push_task(pid_tgid: u64, task: u64) {
    context::thread_moved_on(pid_tgid);
    if let Some(running) = RUNNING_TASKS.get_ptr_mut(&pid_tgid) {
        // SAFETY: this thread's own entry.
        let running = unsafe { &mut *running };
        let depth = running.depth as usize;
        if depth < TASK_NESTING {
            running.tasks[depth] = task;
        }
        // Deeper nesting is counted so returns stay balanced, but not remembered.
        running.depth += 1;
        return;
    }
    let mut running = RunningTasks { tasks: [0; TASK_NESTING], depth: 1, _pad: 0 };
    running.tasks[0] = task;
    let _ = RUNNING_TASKS.insert(&pid_tgid, &running, 0);
}

/// The task the thread is stepping, if any.
#[inline(always)]
pub fn running_task(pid_tgid: u64) -> Option<u64> {
    // SAFETY: copied out.
    let running = unsafe { RUNNING_TASKS.get(&pid_tgid) }.copied()?;
    let depth = running.depth as usize;
    if depth == 0 || depth > TASK_NESTING {
        return None;
    }
    running.tasks.get(depth - 1).copied()
}
