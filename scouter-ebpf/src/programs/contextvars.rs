//! contextvars: requests handed to other threads inside a copied `Context`.
//!
//! `asyncio.to_thread` (and any `copy_context().run(...)` on a pool thread) copies the
//! caller's context and runs the call inside it on another thread. So a context copied while
//! code works for a request is tagged with that request (a uretprobe on
//! `PyContext_CopyCurrent`, which `contextvars.copy_context()` and `Task.__init__` call), and a
//! thread entering a tagged context (`Context.run`, a uprobe on the static `context_run`) works
//! for that request while the context stays entered. [`super::context`] asks
//! [`entered_context`] after the running task and before the thread's own request.

use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};

use super::{context, tracked_thread};
use crate::maps::{ServedRequest, ENTERED_CONTEXTS};

/// `PyContext.ctx_entered` (an int after the object header and three pointers); the same in
/// every supported version.
const CTX_ENTERED_OFFSET: u64 = 40;

/// Return of `PyContext_CopyCurrent()`: the new context.
#[uretprobe]
pub fn contextvars_copy_return(ctx: RetProbeContext) -> u32 {
    let Some(pid_tgid) = tracked_thread() else { return 0 };
    let copy = ctx.ret::<u64>();
    // NULL: the copy failed (out of memory) and raised.
    if copy != 0 {
        context::context_copied(pid_tgid, copy);
    }
    0
}

/// `context_run(self, args, nargs, kwnames)`: the thread enters `self`.
#[uprobe]
pub fn contextvars_run(ctx: ProbeContext) -> u32 {
    let Some(pid_tgid) = tracked_thread() else { return 0 };
    if let Some(entered) = ctx.arg::<u64>(0) {
        context::context_entered(pid_tgid, entered);
    }
    0
}

/// The request of the tagged context the thread entered last, while it is still entered.
#[inline(always)]
pub fn entered_context(pid_tgid: u64) -> Option<&'static ServedRequest> {
    // SAFETY: read in place; the entry is this thread's own.
    let entered = unsafe { ENTERED_CONTEXTS.get(&pid_tgid) }?;
    // SAFETY: a read of the process's memory; a freed or reused context reads as not entered
    // or fails.
    let still_entered = unsafe { bpf_probe_read_user((entered.address + CTX_ENTERED_OFFSET) as *const i32) };
    (still_entered.ok()? != 0).then_some(&entered.request)
}
