//! Trace identity, decided at a request's first byte.
//!
//! A server request adopts the caller's `traceparent` (or the Scouter SDK's `trace_id`/
//! `span_id`/`is_sampled` headers) or starts a trace, and becomes the request its thread is
//! serving. A client request made by a thread that is serving one is its child; one that
//! already carries a `traceparent` keeps it as its own identity (never two headers). The
//! client's `traceparent` line is prepared here and inserted by [`super::inject`].

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use scouter_ebpf::{context_origin, counter, traceparent, SpanContext};

use super::head::{byte_at, bytes_at};
use crate::maps::{
    count, injection_state, HeadScratch, PendingInjection, ServedRequest, NOT_FOUND, PENDING_INJECTIONS,
    SERVED_REQUESTS,
};

/// Set by the agent before load: how long a request being served may parent client calls.
#[no_mangle]
static MAX_TRANSACTION_NS: u64 = 5 * 60 * 1_000_000_000;

const SAMPLED: u8 = 1;

/// A server request starts on `fd`: its identity, now also the thread's served request.
#[inline(always)]
pub fn server_request(pid_tgid: u64, fd: u32, head: &HeadScratch) -> SpanContext {
    let mut context = SpanContext { span_id: random_id(), ..SpanContext::default() };
    match remote_parent(head) {
        Some(remote) => {
            context.trace_id = remote.trace_id;
            context.parent_span_id = remote.span_id;
            context.flags = remote.flags;
            context.origin = context_origin::REMOTE_PARENT;
        }
        None => {
            context.trace_id = random_id();
            context.flags = SAMPLED;
            context.origin = context_origin::NEW_TRACE;
        }
    }
    if head.head_end == 0 {
        count(counter::HEAD_NOT_SCANNED);
    }
    // SAFETY: helper with no preconditions.
    let served = ServedRequest { context, started_ns: unsafe { bpf_ktime_get_ns() }, fd, _pad: 0 };
    let _ = SERVED_REQUESTS.insert(&pid_tgid, &served, 0);
    context
}

/// The thread wrote on server socket `fd`: if that answers the request it is serving, the
/// service is over and later client calls of the thread are not its children.
#[inline(always)]
pub fn server_responded(pid_tgid: u64, fd: u32) {
    // SAFETY: copied out before removal.
    if unsafe { SERVED_REQUESTS.get(&pid_tgid) }.is_some_and(|served| served.fd == fd) {
        let _ = SERVED_REQUESTS.remove(&pid_tgid);
    }
}

/// A client request starts: its identity, and the `traceparent` line to insert when the head
/// is complete in this write and carries none.
#[inline(always)]
pub fn client_request(pid_tgid: u64, head: &HeadScratch) -> SpanContext {
    let parent = served_request(pid_tgid);
    let mut context = SpanContext::default();
    if let Some(own) = header_traceparent(head) {
        context.trace_id = own.trace_id;
        context.span_id = own.span_id;
        context.flags = own.flags;
        context.origin = context_origin::ADOPTED;
        if let Some(parent) = parent.filter(|p| p.trace_id == own.trace_id) {
            context.parent_span_id = parent.span_id;
        }
        return context;
    }
    context.span_id = random_id();
    match parent {
        Some(parent) => {
            context.trace_id = parent.trace_id;
            context.parent_span_id = parent.span_id;
            context.flags = parent.flags;
            context.origin = context_origin::LOCAL_PARENT;
        }
        None => {
            context.trace_id = random_id();
            context.flags = SAMPLED;
            context.origin = context_origin::NEW_TRACE;
        }
    }
    // Only a head known to be complete is known to carry no traceparent further on.
    if head.head_end == 0 || head.line_end == 0 {
        count(counter::HEAD_NOT_SCANNED);
        return context;
    }
    let mut pending =
        PendingInjection { line: [0; traceparent::LINE_LEN], state: injection_state::READY, _pad: 0, offset: head.line_end };
    traceparent::write_line(&context.trace_id, &context.span_id, context.flags, &mut pending.line);
    let _ = PENDING_INJECTIONS.insert(&pid_tgid, &pending, 0);
    context
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

/// The context of the request this thread is serving, unless older than the transaction limit.
#[inline(always)]
fn served_request(pid_tgid: u64) -> Option<SpanContext> {
    // SAFETY: copied out.
    let served = unsafe { SERVED_REQUESTS.get(&pid_tgid) }.copied()?;
    // SAFETY: a global the agent may set before load; read volatile so it is not folded.
    let limit = unsafe { core::ptr::read_volatile(&MAX_TRANSACTION_NS) };
    // SAFETY: helper with no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    (now.saturating_sub(served.started_ns) <= limit).then_some(served.context)
}

/// The caller's context: `traceparent` first, else the Scouter SDK's headers.
#[inline(always)]
fn remote_parent(head: &HeadScratch) -> Option<traceparent::TraceParent> {
    header_traceparent(head).or_else(|| scouter_headers(head))
}

#[inline(always)]
fn header_traceparent(head: &HeadScratch) -> Option<traceparent::TraceParent> {
    if head.traceparent_at == NOT_FOUND {
        return None;
    }
    let value = bytes_at::<{ traceparent::VALUE_LEN }>(head, head.traceparent_at)?;
    traceparent::parse(&value, byte_at(head, head.traceparent_at as usize + traceparent::VALUE_LEN))
}

#[inline(always)]
fn scouter_headers(head: &HeadScratch) -> Option<traceparent::TraceParent> {
    if head.trace_id_at == NOT_FOUND || head.span_id_at == NOT_FOUND {
        return None;
    }
    let trace_id = traceparent::parse_hex::<16, 32>(&bytes_at::<32>(head, head.trace_id_at)?)?;
    let span_id = traceparent::parse_hex::<8, 16>(&bytes_at::<16>(head, head.span_id_at)?)?;
    // The SDK sends "true"/"false"; absent means sampled.
    let unsampled = head.is_sampled_at != NOT_FOUND && matches!(byte_at(head, head.is_sampled_at as usize), b'f' | b'F');
    Some(traceparent::TraceParent { trace_id, span_id, flags: if unsampled { 0 } else { SAMPLED } })
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
