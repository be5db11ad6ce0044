//! Python function calls, for the functions the user selected (function spans).
//!
//! A uprobe on `_PyEval_EvalFrameDefault` sees every frame the interpreter starts running, and
//! its return probe sees the frame's end; the agent attaches both only to processes whose
//! functions are traced (on 3.11+ it also makes the interpreter call it for Python-to-Python
//! calls, which it otherwise inlines). Each frame's code object is looked up in
//! [`CODE_VERDICTS`]: ignored code costs that lookup; selected code opens a span; code not seen
//! before is reported as a tentative span while the agent decides (it drops the span if the
//! code is not selected, so a selected function's first call has a span too).
//!
//! Open calls form a per-thread stack ([`OPEN_CALLS`]): its top is the current span for
//! [`super::context`], so client requests and nested selected calls are its children. A return
//! belongs to the top call when the stack pointer is just above that call's return address;
//! returns of calls whose probe the kernel dropped (it keeps 64 per thread) are told apart the
//! same way. The first calls in a warm process are mostly of undecided code, deeper than the
//! stack holds: the outermost tentative call gives way, and its span is dropped. A generator's
//! or coroutine's span lasts from its first resume until its frame finishes
//! ([`GENERATOR_SPANS`]); each resume makes it the current span again.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, bpf_probe_read_user_buf, generated},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
    EbpfContext,
};
use scouter_ebpf::{
    call_outcome, code_identity, context_origin, counter, function_flags, generator_state, verdict, CallLayout,
    EventKind, FunctionEnteredEvent, FunctionReturnedEvent, FunctionVerdict, ARGUMENT_BYTES, CALL_NESTING,
    CO_GENERATOR_LIKE, FRAME_OWNED_BY_GENERATOR, MAX_CAPTURED_ARGUMENTS, NO_ARGUMENT, NO_OFFSET,
};

use super::context::{function_started, object};
use super::python_stack::{read_pointer, read_u64, thread_state};
use super::{current_ids, header, tracked_thread};
use crate::maps::{
    count, scratch, OpenCall, OpenCalls, ServedRequest, CALL_LAYOUTS, CALL_SCRATCH, CALL_SEARCH, CODE_VERDICTS, EVENTS,
    GENERATOR_SCRATCH, GENERATOR_SPANS, NO_OPEN_CALLS, OPEN_CALLS, PYTHON_LAYOUTS, SPAN_SCRATCH,
};

/// `_PyEval_EvalFrameDefault(frame, throwflag)` (3.8).
#[uprobe]
pub fn python_call_frame_first(ctx: ProbeContext) -> u32 {
    frame_starts(&ctx, ctx.arg::<u64>(0));
    0
}

/// `_PyEval_EvalFrameDefault(tstate, frame, throwflag)` (3.9+).
#[uprobe]
pub fn python_call_frame_second(ctx: ProbeContext) -> u32 {
    frame_starts(&ctx, ctx.arg::<u64>(1));
    0
}

#[uretprobe]
pub fn python_call_return(ctx: RetProbeContext) -> u32 {
    frame_ends(&ctx);
    0
}

/// The span the thread's innermost open call that may parent stands for, copied into `span`;
/// false when the thread is in none. The open calls are searched with `bpf_loop`, whose body
/// the verifier checks once rather than once per iteration and exit: older verifiers (6.1)
/// could not afford the unrolled search in the many programs that look for a parent. Inlined,
/// with its state in a per-CPU scratch, so the callback's frame is the only one it adds.
#[inline(always)]
pub fn innermost_call(pid_tgid: u64, span: &mut ServedRequest) -> bool {
    // SAFETY: read in place.
    let Some(open) = (unsafe { OPEN_CALLS.get(&pid_tgid) }) else { return false };
    let depth = open.depth as usize;
    if depth == 0 || depth > CALL_NESTING {
        return false;
    }
    let Some(found) = search_calls(pid_tgid, depth, innermost_current, depth) else { return false };
    *span = open.calls[found].span;
    true
}

/// Runs `callback` for indices `0..count` over the thread's open calls (`depth` deep) with
/// `bpf_loop`; the index it found, if any.
#[inline(always)]
fn search_calls(
    pid_tgid: u64,
    depth: usize,
    callback: extern "C" fn(u64, *mut c_void) -> i64,
    count: usize,
) -> Option<usize> {
    let search = scratch(&CALL_SEARCH)?;
    search.pid_tgid = pid_tgid;
    search.depth = depth as u64;
    search.found = NOT_FOUND;
    loop_over_calls(callback, count);
    let found = scratch(&CALL_SEARCH)?.found as usize;
    (found < CALL_NESTING).then_some(found)
}

/// [`CallSearch::found`] when nothing was found.
const NOT_FOUND: u64 = u64::MAX;

/// Runs `callback` for indices `0..count` with `bpf_loop`, on this CPU's [`CALL_SEARCH`].
#[inline(always)]
fn loop_over_calls(callback: extern "C" fn(u64, *mut c_void) -> i64, count: usize) {
    // SAFETY: the callback takes no context pointer (its state is in the per-CPU scratch).
    unsafe { generated::bpf_loop(count as u32, callback as *mut c_void, core::ptr::null_mut(), 0) };
}

/// `bpf_loop` callback of [`innermost_call`]: the `index`-th call from the top.
#[inline(never)]
extern "C" fn innermost_current(index: u64, _: *mut c_void) -> i64 {
    let Some(search) = scratch(&CALL_SEARCH) else { return 1 };
    let pid_tgid = search.pid_tgid;
    // SAFETY: read in place.
    let Some(open) = (unsafe { OPEN_CALLS.get(&pid_tgid) }) else { return 1 };
    if index >= search.depth {
        return 1;
    }
    // Masked: the bound the verifier needs (the nesting is a power of two).
    let at = (search.depth - 1 - index) as usize & (CALL_NESTING - 1);
    if open.calls[at].current == 0 {
        return 0;
    }
    search.found = at as u64;
    1
}

#[inline(always)]
fn frame_starts(ctx: &ProbeContext, frame: Option<u64>) {
    let Some(pid_tgid) = tracked_thread() else { return };
    let Some(frame) = frame else { return };
    let pid = current_ids(pid_tgid).0;
    // SAFETY: read in place.
    let Some(layout) = (unsafe { CALL_LAYOUTS.get(&pid) }) else { return };
    let Some(code) = read_pointer(frame + layout.frame_code as u64) else { return };
    let identity = identity_of(layout, code);
    let (chosen, tentative) = match verdict_of(pid_tgid, code, identity) {
        Some(chosen) if chosen.verdict == verdict::IGNORED => return,
        Some(chosen) => (chosen, chosen.verdict != verdict::SELECTED),
        None => (FunctionVerdict::default(), true),
    };
    let generator = is_generator(layout, code);
    if generator && !is_generators_own_frame(layout, frame) {
        // 3.11+ runs a generator function's call only to create the generator.
        return;
    }
    let entry_sp = stack_pointer(ctx);
    let tentative = tentative as u8;
    if generator {
        // SAFETY: read in place.
        if let Some(started) = unsafe { GENERATOR_SPANS.get(&object(pid_tgid, frame)) } {
            if started.code == code {
                if let Some(call) = push(pid_tgid) {
                    call.entry_sp = entry_sp;
                    call.frame = frame;
                    call.span = started.span;
                    call.generator = 1;
                    call.current = started.current;
                    call.tentative = tentative;
                    call._pad = [0; 5];
                }
                return;
            }
        }
    }
    let Some(span) = scratch(&SPAN_SCRATCH) else { return };
    function_started(pid_tgid, span);
    // Undecided code entered outside any span is most likely a server loop's frame, entered
    // before the request it is about to read: it must not make that request's work a trace of
    // its own. Selected code always parents its work.
    let current = (tentative == 0 || span.context.origin != context_origin::NEW_TRACE) as u8;
    let Some(call) = push(pid_tgid) else { return };
    call.entry_sp = entry_sp;
    call.frame = frame;
    call.span = *span;
    call.generator = generator as u8;
    call.current = current;
    call.tentative = tentative;
    call._pad = [0; 5];
    if generator {
        if let Some(started) = scratch(&GENERATOR_SCRATCH) {
            started.span = *span;
            started.code = code;
            started.current = current;
            started._pad = [0; 7];
            let _ = GENERATOR_SPANS.insert(&object(pid_tgid, frame), started, 0);
        }
    }
    let mut flags = 0;
    if tentative != 0 {
        flags |= function_flags::TENTATIVE;
    }
    if generator {
        flags |= function_flags::GENERATOR;
    }
    report_entry(pid_tgid, layout, frame, code, identity, span, flags, &chosen);
}

/// The code object's verdict; a code object not seen before (or only a freed one at its
/// address) is marked pending: the agent decides when its first entry event arrives.
#[inline(always)]
fn verdict_of(pid_tgid: u64, code: u64, identity: u64) -> Option<FunctionVerdict> {
    let key = object(pid_tgid, code);
    // SAFETY: copied out.
    if let Some(known) = unsafe { CODE_VERDICTS.get(&key) }.copied() {
        if known.identity == identity {
            return Some(known);
        }
    }
    let pending = FunctionVerdict {
        verdict: verdict::PENDING,
        arguments: [NO_ARGUMENT; MAX_CAPTURED_ARGUMENTS],
        _pad: [0; 1],
        identity,
    };
    let _ = CODE_VERDICTS.insert(&key, &pending, 0);
    None
}

/// [`code_identity`] of the code object at `code`; 0 if unreadable (never a decided one's).
#[inline(always)]
fn identity_of(layout: &CallLayout, code: u64) -> u64 {
    // SAFETY: a read of the process's memory through the helper.
    unsafe { bpf_probe_read_user((code + layout.code_identity as u64) as *const [u64; 2]) }
        .map_or(0, |[filename, name]| code_identity(filename, name))
}

#[inline(always)]
fn is_generator(layout: &CallLayout, code: u64) -> bool {
    // SAFETY: a read of the process's memory through the helper.
    unsafe { bpf_probe_read_user((code + layout.code_flags as u64) as *const u32) }
        .is_ok_and(|flags| flags & CO_GENERATOR_LIKE != 0)
}

/// Up to 3.10 a generator only ever runs in its own frame; from 3.11 its creation runs in the
/// caller's frame first, owned by the thread rather than the generator.
#[inline(always)]
fn is_generators_own_frame(layout: &CallLayout, frame: u64) -> bool {
    if layout.frame_owner == NO_OFFSET {
        return true;
    }
    // SAFETY: a read of the process's memory through the helper.
    unsafe { bpf_probe_read_user((frame + layout.frame_owner as u64) as *const u8) }
        .is_ok_and(|owner| owner == FRAME_OWNED_BY_GENERATOR)
}

#[inline(always)]
fn stack_pointer<C: EbpfContext>(ctx: &C) -> u64 {
    let regs = ctx.as_ptr() as *const aya_ebpf::bindings::pt_regs;
    // SAFETY: a probe's context is the probed thread's registers.
    unsafe { (*regs).rsp }
}

/// A new slot on top of the thread's open calls, for the caller to fill. When they are full,
/// the outermost tentative call gives way (the innermost calls are the ones that parent what
/// runs now); `None` (counted) when every open call is selected.
#[inline(never)]
fn push(pid_tgid: u64) -> Option<&'static mut OpenCall> {
    let open = match OPEN_CALLS.get_ptr_mut(&pid_tgid) {
        Some(open) => open,
        None => {
            let empty = NO_OPEN_CALLS.get_ptr(0)?;
            // SAFETY: a map value used as the initial value.
            let _ = OPEN_CALLS.insert(&pid_tgid, unsafe { &*empty }, 0);
            OPEN_CALLS.get_ptr_mut(&pid_tgid)?
        }
    };
    // SAFETY: this thread's own entry.
    let open = unsafe { &mut *open };
    if open.depth as usize >= CALL_NESTING && !evict_outermost_tentative(pid_tgid, open) {
        count(counter::CALL_TOO_DEEP);
        return None;
    }
    let depth = open.depth as usize;
    let Some(slot) = open.calls.get_mut(depth) else {
        count(counter::CALL_TOO_DEEP);
        return None;
    };
    open.depth += 1;
    Some(slot)
}

/// Removes the outermost tentative call from the full `open` calls and tells the agent its
/// span will never end; false if every call is selected.
#[inline(never)]
fn evict_outermost_tentative(pid_tgid: u64, open: &mut OpenCalls) -> bool {
    let Some(outermost) = search_calls(pid_tgid, CALL_NESTING, first_tentative, CALL_NESTING) else {
        return false;
    };
    let evicted = &open.calls[outermost];
    if evicted.generator != 0 {
        // Its later resumes must not continue a span the agent has dropped.
        let _ = GENERATOR_SPANS.remove(&object(pid_tgid, evicted.frame));
    }
    report_end(pid_tgid, &evicted.span.context.span_id, call_outcome::EVICTED, 0);
    loop_over_calls(shift_down, CALL_NESTING - 1);
    open.depth = CALL_NESTING as u32 - 1;
    count(counter::CALL_TOO_DEEP);
    true
}

/// `bpf_loop` callback of [`evict_outermost_tentative`]: is call `index` (from the bottom)
/// tentative?
#[inline(never)]
extern "C" fn first_tentative(index: u64, _: *mut c_void) -> i64 {
    let Some(search) = scratch(&CALL_SEARCH) else { return 1 };
    let pid_tgid = search.pid_tgid;
    // SAFETY: read in place.
    let Some(open) = (unsafe { OPEN_CALLS.get(&pid_tgid) }) else { return 1 };
    let at = index as usize & (CALL_NESTING - 1);
    if open.calls[at].tentative == 0 {
        return 0;
    }
    search.found = at as u64;
    1
}

/// `bpf_loop` callback of [`evict_outermost_tentative`]: call `index + 1` moves down to
/// `index`, from the evicted call's slot up.
#[inline(never)]
extern "C" fn shift_down(index: u64, _: *mut c_void) -> i64 {
    let Some(search) = scratch(&CALL_SEARCH) else { return 1 };
    if index < search.found {
        return 0;
    }
    let pid_tgid = search.pid_tgid;
    let Some(open) = OPEN_CALLS.get_ptr_mut(&pid_tgid) else { return 1 };
    // SAFETY: this thread's own entry.
    let open = unsafe { &mut *open };
    let at = index as usize & (CALL_NESTING - 1);
    let next = (index as usize + 1) & (CALL_NESTING - 1);
    if next == 0 {
        return 1;
    }
    open.calls[at] = open.calls[next];
    0
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn report_entry(
    pid_tgid: u64,
    layout: &CallLayout,
    frame: u64,
    code: u64,
    identity: u64,
    span: &ServedRequest,
    flags: u8,
    chosen: &FunctionVerdict,
) {
    let Some(event) = CALL_SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's scratch; nothing else runs here until the event is out.
    let event = unsafe { &mut *event };
    event.header = header(EventKind::FunctionEntered, pid_tgid);
    event.code = code;
    event.identity = identity;
    event.globals = read_u64(frame + layout.frame_globals as u64).unwrap_or(0);
    event.context = span.context;
    event.flags = flags;
    event.argument_count = 0;
    let locals = frame + layout.frame_localsplus as u64;
    for index in 0..MAX_CAPTURED_ARGUMENTS {
        // Until the agent has decided, the first slots are taken: it keeps the named ones.
        let slot = if flags & function_flags::TENTATIVE != 0 { index as u8 } else { chosen.arguments[index] };
        let captured = &mut event.arguments[index];
        captured.slot = slot;
        captured.len = 0;
        captured.object = 0;
        if slot == NO_ARGUMENT {
            continue;
        }
        let Some(object) = read_pointer(locals + slot as u64 * 8) else { continue };
        captured.object = object;
        // SAFETY: reads of the process's memory into this CPU's scratch; an object near the end
        // of its mapping is retried with the header and a small value only.
        captured.len = if unsafe { bpf_probe_read_user_buf(object as *const u8, &mut captured.bytes) }.is_ok() {
            ARGUMENT_BYTES as u32
        } else if unsafe { bpf_probe_read_user_buf(object as *const u8, &mut captured.bytes[..SMALL_OBJECT]) }.is_ok() {
            SMALL_OBJECT as u32
        } else {
            0
        };
        event.argument_count = index as u8 + 1;
    }
    if EVENTS.output::<FunctionEnteredEvent>(&*event, 0).is_err() {
        count(counter::RING_FULL);
    }
}

/// Bytes of an object's head and a number: what a captured argument falls back to.
const SMALL_OBJECT: usize = 32;

#[inline(always)]
fn frame_ends(ctx: &RetProbeContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(open) = OPEN_CALLS.get_ptr_mut(&pid_tgid) else { return };
    // SAFETY: this thread's own entry.
    let open = unsafe { &mut *open };
    // After `ret` the stack pointer is one slot above where the return address was.
    let return_sp = stack_pointer(ctx).wrapping_sub(8);
    let mut ended = None;
    // Calls below the top whose return was never probed are over too: a return further out
    // than the top call passes them. A popped slot stays as it was until the next push.
    for _ in 0..CALL_NESTING {
        let depth = open.depth as usize;
        if depth == 0 || depth > CALL_NESTING {
            return;
        }
        let Some(top) = open.calls.get(depth - 1) else { return };
        if top.entry_sp > return_sp {
            // A frame deeper than every open call returned (an unselected one).
            return;
        }
        open.depth -= 1;
        if top.entry_sp == return_sp {
            ended = Some(top);
            break;
        }
        count(counter::CALL_RETURN_MISSED);
    }
    let Some(call) = ended else { return };
    let pid = current_ids(pid_tgid).0;
    // SAFETY: read in place.
    let Some(layout) = (unsafe { CALL_LAYOUTS.get(&pid) }) else { return };
    if call.generator != 0 {
        if !generator_finished(layout, call.frame) {
            return;
        }
        let _ = GENERATOR_SPANS.remove(&object(pid_tgid, call.frame));
    }
    let failed = ctx.ret::<u64>() == 0;
    let (outcome, exception) =
        if failed { (call_outcome::RAISED, exception_type(pid, layout)) } else { (call_outcome::RETURNED, 0) };
    report_end(pid_tgid, &call.span.context.span_id, outcome, exception);
}

#[inline(always)]
fn report_end(pid_tgid: u64, span_id: &[u8; 8], outcome: u8, exception_type: u64) {
    let event = FunctionReturnedEvent {
        header: header(EventKind::FunctionReturned, pid_tgid),
        span_id: *span_id,
        exception_type,
        outcome,
        _pad: [0; 7],
    };
    if EVENTS.output::<FunctionReturnedEvent>(&event, 0).is_err() {
        count(counter::RING_FULL);
    }
}

/// Whether the generator running in `frame` is done (returned or raised) rather than
/// suspended at a `yield`/`await`.
#[inline(always)]
fn generator_finished(layout: &CallLayout, frame: u64) -> bool {
    let at = frame.wrapping_add(layout.generator_state as i64 as u64);
    match layout.generator_state_kind {
        generator_state::STACK_TOP => read_u64(at).is_some_and(|top| top == 0),
        // SAFETY: a read of the process's memory through the helper.
        _ => unsafe { bpf_probe_read_user(at as *const i8) }.is_ok_and(|state| state >= 0),
    }
}

/// The type of the exception the thread's state holds, or 0.
#[inline(always)]
fn exception_type(pid: u32, layout: &CallLayout) -> u64 {
    // SAFETY: copied out.
    let Some(python) = (unsafe { PYTHON_LAYOUTS.get(&pid) }).copied() else { return 0 };
    let Some(tstate) = thread_state(&python) else { return 0 };
    let Some(pending) = read_pointer(tstate + layout.tstate_exception as u64) else { return 0 };
    if layout.exception_is_object == 0 {
        return pending;
    }
    read_u64(pending + OB_TYPE).unwrap_or(0)
}

/// `PyObject.ob_type`.
const OB_TYPE: u64 = 8;
