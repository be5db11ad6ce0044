//! Trace identity, decided at a request's first byte.
//!
//! A server request adopts the caller's `traceparent` (or the Scouter SDK's `trace_id`/
//! `span_id`/`is_sampled` headers) or starts a trace, and becomes the request its thread is
//! serving. A client request's parent is the request its asyncio task works for when the thread
//! is stepping a task ([`super::asyncio`]), else the request its thread is serving; either is
//! dropped once older than the maximum transaction time. A client request that already carries
//! a `traceparent` keeps it as its own identity (never two headers). The client's
//! `traceparent` line is prepared here and inserted by [`super::inject`].
//!
//! TLS requests take the same decisions from their plaintext ([`super::tls`]); only the carrier
//! differs: no line is inserted (the bytes are encrypted), the context goes in a TCP header
//! option, and a server adopts such an option's context when the head has no `traceparent`
//! (the header wins: it is what the caller's own code sent).

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use scouter_ebpf::{
    context_origin, counter,
    traceparent::{self, TraceParent},
    SocketAddress, SocketKey, SpanContext,
};

use super::asyncio::running_task;
use super::contextvars::entered_context;
use super::head::{byte_at, bytes_at};
use super::python_call::innermost_call;
use super::sdk_context::{current_sdk_span_of, task_inherits};
use super::{current_ids, trace_option};
use crate::maps::{
    count, injection_state, scratch, HeadScratch, ObjectKey, ServedRequest, CONNECTION_REQUESTS, CONTEXT_REQUESTS,
    ENTERED_CONTEXTS, ENTERED_SCRATCH, FUTURE_CONTEXTS, NOT_FOUND, NO_SOCKET, PARENT_SCRATCH, PENDING_INJECTIONS,
    PENDING_SCRATCH, REMOTE_SCRATCH, SERVED_REQUESTS, SERVED_SCRATCH, TASK_CONTEXTS,
};

/// Set by the agent before load: how long a request being served may parent client calls.
#[no_mangle]
static MAX_TRANSACTION_NS: u64 = 5 * 60 * 1_000_000_000;

const SAMPLED: u8 = 1;

/// A server request starts on `socket`: its identity, written into `context`, is now also the
/// thread's served request. `client` (TLS connections) is the caller's address, under which a
/// context it sent in a TCP header option may wait; used when the head carries none.
/// Not inlined, like [`client_request`]: a frame of its own keeps the I/O programs' stacks
/// small (the verifier sums the frames of a call chain, not of sibling calls).
#[inline(never)]
pub fn server_request(
    pid_tgid: u64,
    socket: u64,
    head: &HeadScratch,
    client: Option<&SocketAddress>,
    context: &mut SpanContext,
) {
    *context = SpanContext::default();
    context.span_id = random_id();
    match remote_parent(head) {
        Some(remote) => {
            child_of(context, &remote.trace_id, &remote.span_id, remote.flags, context_origin::REMOTE_PARENT)
        }
        None if client.is_some_and(|client| trace_option::adopt_peer_context(client, context)) => {}
        None => start_trace(context),
    }
    if head.head_end == 0 {
        count(counter::HEAD_NOT_SCANNED);
    }
    let Some(served) = scratch(&SERVED_SCRATCH) else { return };
    served.context = *context;
    // SAFETY: helper with no preconditions.
    served.started_ns = unsafe { bpf_ktime_get_ns() };
    served.socket = socket;
    served.fresh = 1;
    served._pad = [0; 7];
    let _ = SERVED_REQUESTS.insert(&pid_tgid, &*served, 0);
    let _ = CONNECTION_REQUESTS.insert(&connection(pid_tgid, socket), served, 0);
}

/// The thread wrote on server socket `socket`: if that answers the request it is serving, the
/// service is over and later client calls of the thread are not its children.
#[inline(always)]
pub fn server_responded(pid_tgid: u64, socket: u64) {
    // SAFETY: copied out before removal.
    if unsafe { SERVED_REQUESTS.get(&pid_tgid) }.is_some_and(|served| served.socket == socket) {
        let _ = SERVED_REQUESTS.remove(&pid_tgid);
    }
}

/// A client request starts: its identity, written into `context`, and, when `inject` (plain
/// HTTP), the `traceparent` line to insert when the head is complete in this write and carries
/// none. Not inlined: its work (parent lookup, header parsing, line formatting) would
/// otherwise spill into the frame of every program that starts client requests.
#[inline(never)]
pub fn client_request(pid_tgid: u64, head: &HeadScratch, inject: bool, context: &mut SpanContext) {
    *context = SpanContext::default();
    let Some(parent) = scratch(&PARENT_SCRATCH) else { return };
    let found = find_parent(pid_tgid, parent) != parent_source::NONE;
    if let Some(own) = header_traceparent(head) {
        context.trace_id = own.trace_id;
        context.span_id = own.span_id;
        context.flags = own.flags;
        context.origin = context_origin::ADOPTED;
        // The SDK span current now may be this very call's (its instrumentation made it
        // current before sending): not its own parent; the SDK's report brings the parent.
        if found && parent.context.trace_id == own.trace_id && parent.context.span_id != own.span_id {
            context.parent_span_id = parent.context.span_id;
        }
        return;
    }
    context.span_id = random_id();
    if found {
        child_of(
            context,
            &parent.context.trace_id,
            &parent.context.span_id,
            parent.context.flags,
            context_origin::LOCAL_PARENT,
        );
    } else {
        start_trace(context);
    }
    if !inject {
        return;
    }
    // Only a head known to be complete is known to carry no traceparent further on.
    if head.head_end == 0 || head.line_end == 0 {
        count(counter::HEAD_NOT_SCANNED);
        return;
    }
    prepare_injection(pid_tgid, head.line_end, context);
}

/// Files the `traceparent` line carrying `context` for the sk_msg program to insert at
/// `offset` of the thread's write.
#[inline(never)]
fn prepare_injection(pid_tgid: u64, offset: u32, context: &SpanContext) {
    let Some(pending) = scratch(&PENDING_SCRATCH) else { return };
    pending.state = injection_state::READY;
    pending._pad = 0;
    pending.offset = offset;
    traceparent::write_line(&context.trace_id, &context.span_id, context.flags, &mut pending.line);
    let _ = PENDING_INJECTIONS.insert(&pid_tgid, pending, 0);
}

/// Makes `context` a child of the span `span_id` of trace `trace_id`; `origin` says where that
/// parent was found. Takes the parent's fields, not a context, so a parent read from a map value
/// is not copied onto the (nearly full) stack first.
#[inline(always)]
pub fn child_of(context: &mut SpanContext, trace_id: &[u8; 16], span_id: &[u8; 8], flags: u8, origin: u8) {
    context.trace_id = *trace_id;
    context.parent_span_id = *span_id;
    context.flags = flags;
    context.origin = origin;
}

/// Makes `context` the root of a new, sampled trace.
#[inline(always)]
fn start_trace(context: &mut SpanContext) {
    context.trace_id = random_id();
    context.flags = SAMPLED;
    context.origin = context_origin::NEW_TRACE;
}

/// Whether the sk_msg program inserted this thread's pending line; forgets it either way.
#[inline(always)]
pub fn take_injection(pid_tgid: u64) -> bool {
    // SAFETY: copied out before removal.
    let Some(state) = (unsafe { PENDING_INJECTIONS.get(&pid_tgid) }).map(|p| p.state) else { return false };
    let _ = PENDING_INJECTIONS.remove(&pid_tgid);
    if state != injection_state::DONE {
        count(counter::INJECTION_FAILED);
    }
    state == injection_state::DONE
}

/// A selected Python function starts (or a generator's first resume): its span, written into
/// `span`, a child of what the code works for right now, or the root of a new trace.
#[inline(always)]
pub fn function_started(pid_tgid: u64, span: &mut ServedRequest) {
    span.context = SpanContext::default();
    span.context.span_id = random_id();
    // SAFETY: helper with no preconditions.
    span.started_ns = unsafe { bpf_ktime_get_ns() };
    span.socket = NO_SOCKET;
    span.fresh = 0;
    span._pad = [0; 7];
    match current_parent(pid_tgid) {
        Some(parent) => child_of(
            &mut span.context,
            &parent.context.trace_id,
            &parent.context.span_id,
            parent.context.flags,
            context_origin::LOCAL_PARENT,
        ),
        None => start_trace(&mut span.context),
    }
}

/// Where [`find_parent`] found the parent.
pub mod parent_source {
    pub const NONE: u8 = 0;
    /// The innermost selected function the thread is in.
    pub const CALL: u8 = 1;
    /// The request of the asyncio task the thread is stepping.
    pub const TASK: u8 = 2;
    /// The request of the context the thread entered.
    pub const ENTERED: u8 = 3;
    /// The request the thread serves.
    pub const SERVED: u8 = 4;
    /// An in-process SDK's current span ([`super::super::sdk_context`]).
    pub const SDK: u8 = 5;
}

/// The span the current code works for: the innermost selected function the thread is in
/// ([`super::python_call`]), else its asyncio task's request when a task is running (even
/// none: the thread's latest request belongs to another task), else the request of the
/// context the thread entered (a pool thread running `asyncio.to_thread`'s call), else its
/// thread's; an SDK span made current later than that one is inside it and wins. Kept in this
/// CPU's parent scratch.
#[inline(always)]
fn current_parent(pid_tgid: u64) -> Option<&'static ServedRequest> {
    let parent = scratch(&PARENT_SCRATCH)?;
    (find_parent(pid_tgid, parent) != parent_source::NONE).then_some(parent)
}

/// [`current_parent`], written into `parent`; returns a [`parent_source`]. Not inlined, and
/// through memory rather than an `Option` in registers: inlined into the TLS write path, the
/// optimiser left a field of the `None` case undefined, which the verifier rejects.
#[inline(never)]
pub fn find_parent(pid_tgid: u64, parent: &mut ServedRequest) -> u8 {
    let source = find_agent_parent(pid_tgid, parent);
    if let Some(sdk) = current_sdk_span_of(pid_tgid) {
        let inside = source == parent_source::NONE || sdk.span.started_ns >= parent.started_ns;
        if inside && within_transaction(&sdk.span) {
            *parent = sdk.span;
            return parent_source::SDK;
        }
    }
    source
}

#[inline(always)]
fn find_agent_parent(pid_tgid: u64, parent: &mut ServedRequest) -> u8 {
    if innermost_call(pid_tgid, parent) {
        return parent_source::CALL;
    }
    let (found, source) = match running_task(pid_tgid) {
        // SAFETY: read in place.
        Some(task) => (unsafe { TASK_CONTEXTS.get(&object(pid_tgid, task)) }, parent_source::TASK),
        None => match entered_context(pid_tgid) {
            Some(entered) => (Some(entered), parent_source::ENTERED),
            // SAFETY: read in place.
            None => (unsafe { SERVED_REQUESTS.get(&pid_tgid) }, parent_source::SERVED),
        },
    };
    match found {
        Some(found) if within_transaction(found) => {
            *parent = *found;
            source
        }
        _ => parent_source::NONE,
    }
}

/// The served request `parent` (found through `source`) joins trace `trace_id`: every record
/// the kernel keeps of it says so, for the client calls it makes from now on.
#[inline(always)]
pub fn update_served_trace(pid_tgid: u64, source: u8, parent: &ServedRequest, trace_id: &[u8; 16]) {
    let span_id = parent.context.span_id;
    let rewrite = |served: *mut ServedRequest| {
        // SAFETY: an entry of this process; a concurrent writer only replaces it whole.
        let served = unsafe { &mut *served };
        if served.context.span_id == span_id {
            served.context.trace_id = *trace_id;
        }
    };
    if let Some(served) = SERVED_REQUESTS.get_ptr_mut(&pid_tgid) {
        rewrite(served);
    }
    if source == parent_source::TASK {
        if let Some(task) = running_task(pid_tgid) {
            if let Some(served) = TASK_CONTEXTS.get_ptr_mut(&object(pid_tgid, task)) {
                rewrite(served);
            }
        }
    }
    if let Some(served) = CONNECTION_REQUESTS.get_ptr_mut(&connection(pid_tgid, parent.socket)) {
        rewrite(served);
    }
}

#[inline(always)]
fn within_transaction(served: &ServedRequest) -> bool {
    // SAFETY: a global the agent may set before load; read volatile so it is not folded.
    let limit = unsafe { core::ptr::read_volatile(&MAX_TRANSACTION_NS) };
    // SAFETY: helper with no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    now.saturating_sub(served.started_ns) <= limit
}

/// The request a callback without a running task is handling: the one it just read.
#[inline(always)]
fn fresh_request(pid_tgid: u64) -> Option<&'static ServedRequest> {
    if running_task(pid_tgid).is_some() {
        return current_parent(pid_tgid);
    }
    // SAFETY: read in place.
    let served = unsafe { SERVED_REQUESTS.get(&pid_tgid) }?;
    (served.fresh != 0 && within_transaction(served)).then_some(served)
}

/// Another socket event, a task step or the next callback on the thread: the request read last
/// is no longer what the thread is doing right now (it may still be the one it serves).
#[inline(always)]
pub fn thread_moved_on(pid_tgid: u64) {
    if let Some(served) = SERVED_REQUESTS.get_ptr_mut(&pid_tgid) {
        // SAFETY: this thread's own entry.
        unsafe { (*served).fresh = 0 };
    }
}

/// `Task.__init__`: the new task works for its creator's request (or for none: the entry of a
/// previous task at the same address must not survive).
#[inline(always)]
pub fn task_created(pid_tgid: u64, task: u64) {
    task_inherits(pid_tgid, task);
    let key = object(pid_tgid, task);
    match fresh_request(pid_tgid).and_then(|served| latest_on_connection(pid_tgid, served)) {
        Some(served) => {
            let _ = TASK_CONTEXTS.insert(&key, served, 0);
        }
        None => {
            let _ = TASK_CONTEXTS.remove(&key);
        }
    }
}

/// `Future.set_result` in a callback that just read a request: the woken task takes it over.
#[inline(always)]
pub fn future_resolved(pid_tgid: u64, future: u64) {
    let key = object(pid_tgid, future);
    let fresh = if running_task(pid_tgid).is_some() { None } else { fresh_request(pid_tgid) };
    match fresh {
        Some(served) => {
            let _ = FUTURE_CONTEXTS.insert(&key, served, 0);
        }
        None => {
            let _ = FUTURE_CONTEXTS.remove(&key);
        }
    }
}

/// `task_wakeup(task, future)`: a task that works for no request yet and is woken by a
/// request's future works for it from now on (aiohttp's per-connection handler). A task that
/// already works for one keeps it: uvicorn wakes a request's task when the next request arrives
/// on its connection, long before it is done with its own; a connection's next request reaches
/// its handler through [`latest_on_connection`] instead.
#[inline(always)]
pub fn task_woken(pid_tgid: u64, task: u64, future: u64) {
    let key = object(pid_tgid, future);
    let Some(served) = FUTURE_CONTEXTS.get_ptr(&key) else { return };
    let task = object(pid_tgid, task);
    // SAFETY: presence check only.
    if unsafe { TASK_CONTEXTS.get(&task) }.is_none() {
        // SAFETY: the future's entry, read before it is removed below.
        let _ = TASK_CONTEXTS.insert(&task, unsafe { &*served }, 0);
    }
    let _ = FUTURE_CONTEXTS.remove(&key);
}

/// A `contextvars.Context` was copied: it carries the request the copying code works for (or
/// none: the entry of an earlier context at the same address must not survive).
#[inline(always)]
pub fn context_copied(pid_tgid: u64, copy: u64) {
    let key = object(pid_tgid, copy);
    match current_parent(pid_tgid) {
        Some(served) => {
            let _ = CONTEXT_REQUESTS.insert(&key, served, 0);
        }
        None => {
            let _ = CONTEXT_REQUESTS.remove(&key);
        }
    }
}

/// The thread entered `entered` (`Context.run`): while it stays entered, the thread works for
/// the request it was copied for, if any. An event loop runs every callback in a context, so
/// this is also where a callback that read a request has ended: another callback creating a
/// task (aiohttp's `connection_made` for the next connection) must not take that request.
#[inline(always)]
pub fn context_entered(pid_tgid: u64, entered: u64) {
    thread_moved_on(pid_tgid);
    // SAFETY: read in place.
    match unsafe { CONTEXT_REQUESTS.get(&object(pid_tgid, entered)) } {
        Some(request) => {
            let Some(record) = scratch(&ENTERED_SCRATCH) else { return };
            record.address = entered;
            record.request = *request;
            let _ = ENTERED_CONTEXTS.insert(&pid_tgid, record, 0);
        }
        // Most callbacks run in untagged contexts: a lookup is cheaper than an LRU delete.
        // SAFETY: presence check only.
        None if unsafe { ENTERED_CONTEXTS.get(&pid_tgid) }.is_some() => {
            let _ = ENTERED_CONTEXTS.remove(&pid_tgid);
        }
        None => {}
    }
}

/// `served`, unless its connection has started a newer request since: then that one (not
/// fresh), in this CPU's served scratch.
#[inline(always)]
fn latest_on_connection(pid_tgid: u64, served: &ServedRequest) -> Option<&'static ServedRequest> {
    let out = scratch(&SERVED_SCRATCH)?;
    // SAFETY: read in place.
    match unsafe { CONNECTION_REQUESTS.get(&connection(pid_tgid, served.socket)) } {
        Some(latest) if latest.started_ns > served.started_ns => {
            *out = *latest;
            out.fresh = 0;
        }
        _ => *out = *served,
    }
    Some(out)
}

/// The connection ended: its requests are over (and its descriptor may be reused).
#[inline(always)]
pub fn connection_closed(pid_tgid: u64, socket: u64) {
    let _ = CONNECTION_REQUESTS.remove(&connection(pid_tgid, socket));
}

#[inline(always)]
fn connection(pid_tgid: u64, socket: u64) -> SocketKey {
    SocketKey { pid: current_ids(pid_tgid).0, _pad: 0, id: socket }
}

/// An object (asyncio task or future, `SSL*`) of the current process.
#[inline(always)]
pub fn object(pid_tgid: u64, address: u64) -> ObjectKey {
    ObjectKey { pid: current_ids(pid_tgid).0, _pad: 0, address }
}

/// The caller's context: `traceparent` first, else the Scouter SDK's headers.
#[inline(always)]
fn remote_parent(head: &HeadScratch) -> Option<&'static TraceParent> {
    header_traceparent(head).or_else(|| scouter_headers(head))
}

/// The head's own `traceparent`, in this CPU's remote-context scratch. Not inlined: parsing
/// is register-hungry, and its spills would land in the caller's frame.
#[inline(never)]
fn header_traceparent(head: &HeadScratch) -> Option<&'static TraceParent> {
    if head.traceparent_at == NOT_FOUND {
        return None;
    }
    let out = scratch(&REMOTE_SCRATCH)?;
    let after = byte_at(head, head.traceparent_at as usize + traceparent::VALUE_LEN);
    let value = bytes_at::<{ traceparent::VALUE_LEN }>(head, head.traceparent_at)?;
    traceparent::parse_into(value, after, out).then_some(out)
}

#[inline(never)]
fn scouter_headers(head: &HeadScratch) -> Option<&'static TraceParent> {
    if head.trace_id_at == NOT_FOUND || head.span_id_at == NOT_FOUND {
        return None;
    }
    let out = scratch(&REMOTE_SCRATCH)?;
    if !traceparent::parse_hex_into(bytes_at::<32>(head, head.trace_id_at)?, &mut out.trace_id) {
        return None;
    }
    if !traceparent::parse_hex_into(bytes_at::<16>(head, head.span_id_at)?, &mut out.span_id) {
        return None;
    }
    // The SDK sends "true"/"false"; absent means sampled.
    let unsampled =
        head.is_sampled_at != NOT_FOUND && matches!(byte_at(head, head.is_sampled_at as usize), b'f' | b'F');
    out.flags = if unsampled { 0 } else { SAMPLED };
    Some(out)
}

/// A random id that is never all zero (invalid in W3C trace context).
#[inline(always)]
fn random_id<const N: usize>() -> [u8; N] {
    let mut id = [0u8; N];
    let mut k = 0;
    while k < N {
        // SAFETY: helper with no preconditions.
        let word = unsafe { bpf_get_prandom_u32() }.to_le_bytes();
        let mut j = 0;
        while j < 4 && k + j < N {
            id[k + j] = word[j];
            j += 1;
        }
        k += 4;
    }
    id[0] |= 1;
    id
}
