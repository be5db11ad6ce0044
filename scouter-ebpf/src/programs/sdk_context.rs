//! In-process SDKs: which SDK span is current on each thread or asyncio task.
//!
//! OpenTelemetry's Python SDK keeps the current context in a `ContextVar` named
//! `current_context`: `attach` sets it (`ContextVar.set` → `PyContextVar_Set`) and `detach`
//! resets it (`PyContextVar_Reset`). Uprobes on both read the activated context in place: the
//! span under its `current-span-…` key, that span's `_context` (a `SpanContext` tuple whose
//! first items are the trace and span ids as ints) and its `_kind`. Thread- and task-exact by
//! construction: the probe runs on the thread that activates, inside the task that does.
//! Scouter's SDK (`scouter-ml`) keeps its current span in `ContextVar("_otel_current_span")`
//! as a native object (pyo3 over the OpenTelemetry Rust SDK): its ids are read through the
//! [`NativeSpanLayout`] userspace found for the build the process maps, and not at all (only
//! counted) when the build is not known.
//!
//! Each thread (or task) keeps a small stack of the SDK spans made current on it
//! ([`SDK_SPANS`]); a reset pops back to the context it restores. [`super::context`] asks
//! [`current_sdk_span`] when it looks for a parent: the SDK's span wins over the agent's when
//! it was made current later (it is inside it). When an SDK span is made current while the
//! agent's span is in another trace, the kernel settles it at once, so the `traceparent` sent
//! downstream is already right ([`sdk_relation`]):
//! - a served request that started its own trace joins the SDK's (the SDK began a trace without
//!   knowing of the request; nothing has left the process in the request's trace yet);
//! - otherwise the SDK span's trace is moved into the agent's, and code under it is parented in
//!   the agent's trace.
//!
//! Either way userspace is told ([`SdkSpanEvent`]) and rewrites the spans to match. An SDK
//! SERVER span made current first in a served request is that request's twin: the request's
//! span takes its id, so the two reports merge into one span.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user},
    macros::map,
    macros::uprobe,
    maps::PerCpuArray,
    programs::ProbeContext,
};
use scouter_ebpf::{
    context_origin, counter, sdk_relation, EventHeader, EventKind, NativeSpanLayout, ObjectLayout, SdkSpanEvent,
    SpanContext, SDK_NESTING,
};

use super::asyncio::running_task;
use super::context::{find_parent, parent_source, update_served_trace};
use super::python_objects::{attribute, dict_item, int_u128, is_dict, string_starts_with, tuple_item, Key};
use super::python_stack::{read_pointer, read_u64};
use super::{current_ids, header, tracked_thread};
use crate::maps::{
    count, scratch, ExecutionUnit, SdkSpan, ServedRequest, EVENTS, NATIVE_SPAN_LAYOUTS, NO_SOCKET, OBJECT_LAYOUTS,
    PARENT_SCRATCH, SDK_SCRATCH, SDK_SPANS,
};

/// `PyContextVar.var_name`, the same in every supported version.
const VAR_NAME: u64 = 16;
/// `PyContextToken.tok_oldval`: what a reset restores (NULL: no value).
const TOKEN_OLD_VALUE: u64 = 32;

/// OpenTelemetry's context variable, by name (with the string's terminating NUL: exact).
const OTEL_CONTEXT_VAR: Key = Key::new(*b"current_context\0", 16);
/// Scouter's SDK's context variable, `_otel_current_span` (its first 16 characters): it holds
/// the current span as a native object, read with the process's [`NativeSpanLayout`].
const SCOUTER_CONTEXT_VAR: Key = Key::new(*b"_otel_current_sp", 16);
/// The context key of the current span: `current-span-` and a uuid.
const OTEL_SPAN_KEY: Key = Key::new(*b"current-span-\0\0\0", 13);
const SPAN_CONTEXT: Key = Key::new(*b"_context\0\0\0\0\0\0\0\0", 9);
const SPAN_KIND: Key = Key::new(*b"_kind\0\0\0\0\0\0\0\0\0\0\0", 6);
/// An enum member's value.
const ENUM_VALUE: Key = Key::new(*b"_value_\0\0\0\0\0\0\0\0\0", 8);
/// `SpanKind.SERVER`.
const SERVER_KIND: u64 = 1;

const SAMPLED: u8 = 1;

/// `PyContextVar_Set(var, value)`.
#[uprobe]
pub fn sdk_context_set(ctx: ProbeContext) -> u32 {
    let Some(pid_tgid) = tracked_thread() else { return 0 };
    let (Some(var), Some(value)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else { return 0 };
    // SAFETY: read in place.
    let Some(layout) = (unsafe { OBJECT_LAYOUTS.get(&current_ids(pid_tgid).0) }) else { return 0 };
    let Some(span) = scratch(&ACTIVATED_SCRATCH) else { return 0 };
    match sdk_of(layout, var) {
        Sdk::OpenTelemetry => {
            let read = otel_span(layout, value, span);
            activated(pid_tgid, value, read);
        }
        Sdk::Scouter => match native_layout(pid_tgid) {
            Some(native) => {
                let read = native_span(native, value, span);
                activated(pid_tgid, value, read);
            }
            None => activated(pid_tgid, value, Read::Opaque),
        },
        Sdk::None => {}
    }
    0
}

/// `PyContextVar_Reset(var, token)`.
#[uprobe]
pub fn sdk_context_reset(ctx: ProbeContext) -> u32 {
    let Some(pid_tgid) = tracked_thread() else { return 0 };
    let (Some(var), Some(token)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else { return 0 };
    // SAFETY: read in place.
    let Some(layout) = (unsafe { OBJECT_LAYOUTS.get(&current_ids(pid_tgid).0) }) else { return 0 };
    if matches!(sdk_of(layout, var), Sdk::OpenTelemetry | Sdk::Scouter) {
        // NULL when the variable had no value before: every span the kernel knows is over.
        if let Some(restored) = read_u64(token + TOKEN_OLD_VALUE) {
            reset_to(pid_tgid, restored);
        }
    }
    0
}

/// The SDKs whose context variable the kernel knows.
enum Sdk {
    OpenTelemetry,
    Scouter,
    None,
}

#[inline(always)]
fn sdk_of(layout: &ObjectLayout, var: u64) -> Sdk {
    let Some(name) = read_pointer(var + VAR_NAME) else { return Sdk::None };
    if string_starts_with(layout, name, &OTEL_CONTEXT_VAR) {
        Sdk::OpenTelemetry
    } else if string_starts_with(layout, name, &SCOUTER_CONTEXT_VAR) {
        Sdk::Scouter
    } else {
        Sdk::None
    }
}

/// The process's native SDK layout, when userspace knows its build. The first time a process
/// asks, an empty entry is left and userspace is told to look.
#[inline(always)]
fn native_layout(pid_tgid: u64) -> Option<&'static NativeSpanLayout> {
    let pid = current_ids(pid_tgid).0;
    // SAFETY: read in place; userspace writes whole entries.
    if let Some(layout) = unsafe { NATIVE_SPAN_LAYOUTS.get(&pid) } {
        return (layout.span_vtable != 0).then_some(layout);
    }
    // Only the insert that creates the entry asks, so userspace hears of a process once.
    if NATIVE_SPAN_LAYOUTS.insert(&pid, &NativeSpanLayout::default(), BPF_NOEXIST as u64).is_ok() {
        let event = header(EventKind::NativeSpanSeen, pid_tgid);
        if EVENTS.output::<EventHeader>(&event, 0).is_err() {
            count(counter::RING_FULL);
        }
    }
    None
}

/// The ids of the span an SDK made current, as read from its objects.
#[repr(C, align(8))]
pub struct ActivatedSpan {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    server: bool,
}

/// The span being activated (too large for the stack next to the object reads).
#[map]
static ACTIVATED_SCRATCH: PerCpuArray<ActivatedSpan> = PerCpuArray::with_max_entries(1, 0);

/// The record of the context being activated, before it joins its unit's stack.
#[map]
static ENTRY_SCRATCH: PerCpuArray<SdkSpan> = PerCpuArray::with_max_entries(1, 0);

/// What reading the span an SDK made current gave.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    /// Its ids are in this CPU's [`ActivatedSpan`] scratch.
    Span,
    /// No span (or the invalid one): a context without a span.
    NoSpan,
    /// Memory that is not laid out as expected.
    Unreadable,
    /// A native span whose build's layout is not known yet.
    Opaque,
}

/// The span an OpenTelemetry `Context` holds, read into `out`. Not inlined: the object walk
/// is long, and its spills would otherwise land in the probe's own frame.
#[inline(never)]
fn otel_span(layout: &ObjectLayout, context: u64, out: &mut ActivatedSpan) -> Read {
    if !is_dict(context) {
        return Read::Unreadable;
    }
    let Some(span) = dict_item(layout, context, &OTEL_SPAN_KEY) else { return Read::NoSpan };
    let Some(span_context) = attribute(layout, span, &SPAN_CONTEXT) else { return Read::Unreadable };
    let Some(trace) = tuple_item(span_context, 0).and_then(|id| int_u128(layout, id)) else { return Read::Unreadable };
    let Some(span_id) = tuple_item(span_context, 1).and_then(|id| int_u128(layout, id)) else {
        return Read::Unreadable;
    };
    if (trace.0 | trace.1) == 0 || span_id.1 == 0 {
        // The invalid span (all zero ids): no span.
        return Read::NoSpan;
    }
    out.trace_id[..8].copy_from_slice(&trace.0.to_be_bytes());
    out.trace_id[8..].copy_from_slice(&trace.1.to_be_bytes());
    out.span_id = span_id.1.to_be_bytes();
    out.server = attribute(layout, span, &SPAN_KIND)
        .and_then(|kind| attribute(layout, kind, &ENUM_VALUE))
        .and_then(|value| int_u128(layout, value))
        .is_some_and(|value| value == (0, SERVER_KIND));
    Read::Span
}

/// The span a native SDK's span object holds, read into `out` as `native` says; only from a
/// span of the type the layout describes (its trait object's vtable), so a span of another
/// type, or an object that is not a span, reads as unreadable rather than as ids.
#[inline(never)]
fn native_span(native: &NativeSpanLayout, object: u64, out: &mut ActivatedSpan) -> Read {
    let Some(state) = read_pointer(object + native.state as u64) else { return Read::Unreadable };
    if read_u64(state + native.span_vtable_at as u64) != Some(native.span_vtable) {
        return Read::Unreadable;
    }
    let Some(span) = read_pointer(state + native.span as u64) else { return Read::Unreadable };
    // Little-endian integers in memory; ids travel big-endian (as their hex reads).
    // SAFETY: reads of the process's memory through the helper.
    let Ok(trace) = (unsafe { bpf_probe_read_user((span + native.trace_id as u64) as *const [u64; 2]) }) else {
        return Read::Unreadable;
    };
    // SAFETY: as above.
    let Ok(id) = (unsafe { bpf_probe_read_user((span + native.span_id as u64) as *const u64) }) else {
        return Read::Unreadable;
    };
    if (trace[0] | trace[1]) == 0 || id == 0 {
        return Read::NoSpan;
    }
    out.trace_id[..8].copy_from_slice(&trace[1].swap_bytes().to_le_bytes());
    out.trace_id[8..].copy_from_slice(&trace[0].swap_bytes().to_le_bytes());
    out.span_id = id.swap_bytes().to_le_bytes();
    // The span's kind lies in data whose layout is not known: never taken for the request's own.
    out.server = false;
    Read::Span
}

/// The SDK made `object` current on this thread (or task); `read` says what its span is (in
/// this CPU's [`ACTIVATED_SCRATCH`] when read). A span the kernel cannot read (opaque), and the
/// SDK spans made current under it, stay as the SDK made them.
#[inline(always)]
fn activated(pid_tgid: u64, object: u64, read: Read) {
    let unit = current_unit(pid_tgid);
    let Some(entry) = scratch(&ENTRY_SCRATCH) else { return };
    unplaced(object, entry);
    if read == Read::Opaque || under_opaque(&unit) {
        count(counter::SDK_CONTEXT_OPAQUE);
        entry.opaque = 1;
    } else if read == Read::Span {
        if let Some(span) = scratch(&ACTIVATED_SCRATCH) {
            settle(pid_tgid, &unit, span, entry);
        }
    } else if read == Read::Unreadable {
        count(counter::SDK_CONTEXT_UNREADABLE);
    }
    push(&unit, entry);
}

/// `entry` becomes the record of `object` made current now, not (yet) placed in any trace.
#[inline(always)]
fn unplaced(object: u64, entry: &mut SdkSpan) {
    entry.span.context = SpanContext::default();
    // SAFETY: helper with no preconditions.
    entry.span.started_ns = unsafe { bpf_ktime_get_ns() };
    entry.span.socket = NO_SOCKET;
    entry.span.fresh = 0;
    entry.span._pad = [0; 7];
    entry.sdk_trace_id = [0; 16];
    entry.context_object = object;
    entry.opaque = 0;
    entry._pad = [0; 7];
}

/// Whether a span the kernel could not read is current on `unit`, under whatever is innermost.
#[inline(always)]
fn under_opaque(unit: &ExecutionUnit) -> bool {
    // SAFETY: read in place.
    let Some(stack) = (unsafe { SDK_SPANS.get(unit) }) else { return false };
    let depth = stack.depth as usize;
    let mut index = 0;
    while index < SDK_NESTING {
        if index < depth && stack.spans[index].opaque != 0 {
            return true;
        }
        index += 1;
    }
    false
}

/// Where the SDK span goes relative to the agent's current span; fills `entry` and tells
/// userspace when spans must be rewritten. Not inlined: a frame of its own, apart from the
/// object reads'.
#[inline(never)]
fn settle(pid_tgid: u64, unit: &ExecutionUnit, span: &ActivatedSpan, entry: &mut SdkSpan) {
    entry.sdk_trace_id = span.trace_id;
    entry.span.context.trace_id = span.trace_id;
    entry.span.context.span_id = span.span_id;
    entry.span.context.flags = SAMPLED;
    entry.span.context.origin = context_origin::LOCAL_PARENT;
    let Some(parent) = scratch(&PARENT_SCRATCH) else { return };
    let source = find_parent(pid_tgid, parent);
    if source == parent_source::NONE {
        return;
    }
    entry.span.context.flags = parent.context.flags;
    let enclosing = current_sdk_span(unit);
    // Inside another SDK span of the same SDK trace: wherever that one went, this one follows.
    if source == parent_source::SDK {
        if let Some(outer) = enclosing {
            if outer.sdk_trace_id == span.trace_id {
                entry.span.context.trace_id = outer.span.context.trace_id;
                return;
            }
        }
    }
    // The first SDK span of a request the thread (or task) serves.
    let request_level = (source == parent_source::SERVED || source == parent_source::TASK) && enclosing.is_none();
    let twin = if request_level && span.server { sdk_relation::TWIN } else { 0 };
    let relation = if parent.context.trace_id == span.trace_id {
        twin
    } else if request_level && parent.context.origin == context_origin::NEW_TRACE {
        update_served_trace(pid_tgid, source, parent, &span.trace_id);
        sdk_relation::JOINED | twin
    } else {
        entry.span.context.trace_id = parent.context.trace_id;
        sdk_relation::MOVED
    };
    if relation != 0 {
        report(pid_tgid, span, parent, relation);
    }
}

#[inline(always)]
fn report(pid_tgid: u64, span: &ActivatedSpan, parent: &ServedRequest, relation: u8) {
    let Some(mut entry) = EVENTS.reserve::<SdkSpanEvent>(0) else {
        count(counter::RING_FULL);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved, exclusively owned ring-buffer record.
    unsafe {
        (*event).header = header(EventKind::SdkSpanActivated, pid_tgid);
        (*event).sdk_trace_id = span.trace_id;
        (*event).sdk_span_id = span.span_id;
        (*event).agent_trace_id = parent.context.trace_id;
        (*event).agent_span_id = parent.context.span_id;
        (*event).relation = relation;
        (*event)._pad = [0; 7];
    }
    entry.submit(0);
}

/// The task the thread is running, else the thread.
#[inline(always)]
fn current_unit(pid_tgid: u64) -> ExecutionUnit {
    let (pid, tid) = current_ids(pid_tgid);
    match running_task(pid_tgid) {
        Some(task) => ExecutionUnit { pid, tid: 0, task },
        None => ExecutionUnit { pid, tid, task: 0 },
    }
}

#[inline(always)]
fn push(unit: &ExecutionUnit, entry: &SdkSpan) {
    if let Some(stack) = SDK_SPANS.get_ptr_mut(unit) {
        // SAFETY: this thread's (or running task's) own entry.
        let stack = unsafe { &mut *stack };
        let mut depth = stack.depth as usize;
        if depth >= SDK_NESTING {
            count(counter::SDK_TOO_DEEP);
            depth = SDK_NESTING - 1;
        }
        stack.spans[depth] = *entry;
        stack.depth = depth as u32 + 1;
        return;
    }
    let Some(scratch) = SDK_SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: per-CPU scratch, no concurrent user on this CPU.
    let scratch = unsafe { &mut *scratch };
    scratch.spans[0] = *entry;
    scratch.depth = 1;
    let _ = SDK_SPANS.insert(unit, &*scratch, 0);
}

/// A reset made `restored` current again: the spans made current after it are over.
#[inline(always)]
fn reset_to(pid_tgid: u64, restored: u64) {
    let unit = current_unit(pid_tgid);
    let Some(stack) = SDK_SPANS.get_ptr_mut(&unit) else { return };
    // SAFETY: this thread's (or running task's) own entry.
    let stack = unsafe { &mut *stack };
    let depth = stack.depth as usize;
    for index in 0..SDK_NESTING {
        // From the second innermost outwards.
        if index + 1 >= depth {
            break;
        }
        let at = (depth - 2 - index) & (SDK_NESTING - 1);
        if stack.spans[at].context_object == restored {
            stack.depth = at as u32 + 1;
            return;
        }
    }
    // Restored to a context made current before the agent looked (or to none): nothing
    // the kernel knows is current any more.
    stack.depth = 0;
}

/// The innermost SDK span current on `unit`, if it holds a span (a context without one, or a
/// span the kernel could not read, leaves the agent's parents in charge).
#[inline(always)]
pub fn current_sdk_span(unit: &ExecutionUnit) -> Option<&'static SdkSpan> {
    innermost(unit).filter(|top| top.span.context.span_id != [0; 8])
}

/// The innermost entry of `unit`'s stack.
#[inline(always)]
fn innermost(unit: &ExecutionUnit) -> Option<&'static SdkSpan> {
    // SAFETY: read in place.
    let stack = unsafe { SDK_SPANS.get(unit) }?;
    let depth = stack.depth as usize;
    if depth == 0 || depth > SDK_NESTING {
        return None;
    }
    Some(&stack.spans[(depth - 1) & (SDK_NESTING - 1)])
}

/// The innermost SDK span current where the thread runs now.
#[inline(always)]
pub fn current_sdk_span_of(pid_tgid: u64) -> Option<&'static SdkSpan> {
    current_sdk_span(&current_unit(pid_tgid))
}

/// A new task runs in a copy of its creator's context: the SDK span current there is current
/// in the task too (and so is a span the kernel could not read, which keeps the task's SDK
/// spans as made).
#[inline(always)]
pub fn task_inherits(pid_tgid: u64, task: u64) {
    let (pid, _) = current_ids(pid_tgid);
    let child = ExecutionUnit { pid, tid: 0, task };
    match innermost(&current_unit(pid_tgid)) {
        Some(span) if span.span.context.span_id != [0; 8] || span.opaque != 0 => {
            let span = *span;
            push_fresh(&child, &span);
        }
        _ => {
            let _ = SDK_SPANS.remove(&child);
        }
    }
}

/// `unit`'s stack, replaced by `entry` alone.
#[inline(always)]
fn push_fresh(unit: &ExecutionUnit, entry: &SdkSpan) {
    if let Some(stack) = SDK_SPANS.get_ptr_mut(unit) {
        // SAFETY: the new task's entry; no other thread runs it yet.
        let stack = unsafe { &mut *stack };
        stack.spans[0] = *entry;
        stack.depth = 1;
        return;
    }
    push(unit, entry);
}
