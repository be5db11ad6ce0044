//! `traceparent` insertion into outgoing plain-HTTP requests.
//!
//! The kernel here refuses `bpf_probe_write_user`, so the header cannot be written into the
//! process's buffer; instead an sk_msg program inserts it into the message as the kernel sends
//! it (`bpf_msg_push_data`). sk_msg programs run on sockets in a sockhash, and only sockops
//! programs may add sockets to one, so:
//! - [`follow_client_socket`] (sockops on the cgroup v2 root) adds a connection a tracked
//!   process opened to [`CLIENT_SOCKETS`] once established ([`super::tcp_states`] noted it
//!   inside the process's `connect()`). Nobody else's sockets are touched.
//! - [`insert_traceparent`] (sk_msg) inserts the line that [`super::context::client_request`]
//!   prepared for the writing thread, once, after the request line.
//!
//! The sockops program also carries TLS requests' contexts in a TCP header option
//! ([`super::trace_option`]): it lets tracked processes' outgoing TLS connections write
//! options, and tracked servers' TLS connections show it options the kernel does not know. To
//! learn which connections those are, it asks every new connection (a tracked process's
//! outgoing ones, and every accepted one on the host, whose process is unknown at that point)
//! for RTT callbacks until the first one after the connection sent data: one callback per
//! connection for everyone else, nothing else changed.

use aya_ebpf::{
    bindings::{
        sk_action::SK_PASS, BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_HDR_OPT_LEN_CB,
        BPF_SOCK_OPS_PARSE_HDR_OPT_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_RTT_CB,
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB,
    },
    helpers::{bpf_get_current_pid_tgid, bpf_get_socket_cookie, generated::bpf_msg_pull_data},
    macros::{sk_msg, sock_ops},
    programs::{SkMsgContext, SockOpsContext},
};
use scouter_ebpf::{capture, traceparent::LINE_LEN, tracked_flags, SocketRole, HEAD_SCAN};

use super::{context, current_ids, head, io, sockets, tls, trace_option};
use crate::maps::{
    injection_state, process_flags, scratch, CLIENT_SOCKETS, CONNECTING_SOCKETS, PENDING_INJECTIONS, SENT_CONTEXTS,
    SENT_SCRATCH,
};

#[sock_ops]
pub fn follow_client_socket(ctx: SockOpsContext) -> u32 {
    // SAFETY: the helper accepts the sock_ops context. Not for the per-segment callbacks.
    let cookie = || unsafe { bpf_get_socket_cookie(ctx.ops as *mut _) };
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => client_established(&ctx, cookie()),
        BPF_SOCK_OPS_RTT_CB => trace_option::transport_known(&ctx, sock_address(&ctx)),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => trace_option::watch_transport(&ctx),
        BPF_SOCK_OPS_HDR_OPT_LEN_CB => trace_option::reserve(&ctx),
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB => trace_option::write(&ctx),
        BPF_SOCK_OPS_PARSE_HDR_OPT_CB => trace_option::parse(&ctx),
        _ => {}
    }
    1
}

/// A connection is established: one a tracked process opened ([`super::tcp_states`] filed it
/// inside its `connect()`; the process is not known here on every kernel) joins the sockhash
/// when the process gets `traceparent` lines, and is watched for the TCP option.
#[inline(always)]
fn client_established(ctx: &SockOpsContext, cookie: u64) {
    let sk = sock_address(ctx);
    // SAFETY: copied out before removal.
    let Some(owner) = (unsafe { CONNECTING_SOCKETS.get(&sk) }).copied() else { return };
    let _ = CONNECTING_SOCKETS.remove(&sk);
    let flags = process_flags(current_ids(owner).0).unwrap_or(0);
    if flags & tracked_flags::INSERT_TRACEPARENT != 0 {
        let mut key = cookie;
        // SAFETY: the context is a live `bpf_sock_ops`.
        let _ = CLIENT_SOCKETS.update(&mut key, unsafe { &mut *ctx.ops }, BPF_NOEXIST as u64);
    }
    if flags & tracked_flags::TCP_OPTION != 0 {
        trace_option::watch_transport(ctx);
    }
}

/// The address of the callback's `struct sock`: the socket-layer programs' id for it.
#[inline(always)]
pub fn sock_address(ctx: &SockOpsContext) -> u64 {
    // SAFETY: reading the context's own field (the kernel rewrites it to the socket pointer).
    unsafe { (*ctx.ops).__bindgen_anon_2.sk as u64 }
}

#[sk_msg]
pub fn insert_traceparent(ctx: SkMsgContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if io::capture_mode() == capture::SOCKET_TRACEPOINTS {
        decide_request(&ctx, pid_tgid);
    }
    let Some(pending) = PENDING_INJECTIONS.get_ptr_mut(&pid_tgid) else { return SK_PASS };
    // SAFETY: map value owned by this thread's syscall (keyed by its pid_tgid).
    let pending = unsafe { &mut *pending };
    if pending.state != injection_state::READY {
        return SK_PASS;
    }
    pending.state =
        if insert(&ctx, pending.offset, &pending.line) { injection_state::DONE } else { injection_state::FAILED };
    SK_PASS
}

/// With the socket tracepoints nothing runs before a send but this program, so a request this
/// message starts gets its identity here (and its `traceparent` line, inserted below), left
/// for the send's tracepoint to take. Not inlined: the decision's frame is not the insertion's.
#[inline(never)]
fn decide_request(ctx: &SkMsgContext, pid_tgid: u64) {
    let Some(flags) = process_flags(current_ids(pid_tgid).0) else { return };
    let Some(sent) = scratch(&SENT_SCRATCH) else { return };
    // The verifier allows no arithmetic on a socket pointer: its address goes through a map
    // value (this program is privileged, so it may store it) and comes back as a number.
    // SAFETY: reading the context's own field (the kernel rewrites it to the socket pointer).
    sent.socket = unsafe { (*ctx.msg).__bindgen_anon_3.sk } as u64;
    // SAFETY: reading back the value just stored, as a number.
    let sk = unsafe { core::ptr::read_volatile(&sent.socket) };
    let Some(socket) = sockets::followed(pid_tgid, sk) else { return };
    if socket.tls != 0 || !io::may_start_request(socket, SocketRole::Client) {
        return;
    }
    let len = core::cmp::min(ctx.size(), HEAD_SCAN as u32);
    // SAFETY: the helper takes the program's own context; the head must be contiguous.
    if unsafe { bpf_msg_pull_data(ctx.msg, 0, len, 0) } != 0 {
        return;
    }
    let available = core::cmp::min(ctx.data_end().saturating_sub(ctx.data()), len as usize) as u64;
    if is_handshake(ctx) {
        // The TCP option's sockops callbacks must know the transport before the handshake's
        // ACK comes back, which on loopback is before the send's tracepoint runs.
        io::learn_role(pid_tgid, sk, socket, SocketRole::Client);
        tls::mark_tls(pid_tgid, sk, socket);
        return;
    }
    let Some(head) = head::load_request_from_kernel(ctx.data() as u64, available) else { return };
    io::learn_role(pid_tgid, sk, socket, SocketRole::Client);
    let Some(sent) = scratch(&SENT_SCRATCH) else { return };
    context::client_request(pid_tgid, head, flags & tracked_flags::INSERT_TRACEPARENT != 0, &mut sent.context);
    let _ = SENT_CONTEXTS.insert(&pid_tgid, &*sent, 0);
}

/// Whether the (pulled) message starts with a TLS handshake record.
#[inline(always)]
fn is_handshake(ctx: &SkMsgContext) -> bool {
    let data = ctx.data();
    if data + 3 > ctx.data_end() {
        return false;
    }
    let first = data as *const u8;
    // SAFETY: `data + 3 <= data_end` was checked above.
    tls::starts_handshake(unsafe { [*first, *first.add(1), *first.add(2)] })
}

/// Inserts `line` at `offset` of the message; on failure the message is left as it was.
///
/// The message's first bytes, through the inserted line and up to [`HEAD_SCAN`] bytes of the
/// head after it, are then pulled into one buffer. `bpf_msg_push_data` splits the message into
/// scatterlist elements (before, line, after), and the kernel sends each element as a segment
/// of its own (no `MSG_MORE` between them; `TCP_NODELAY` clients flush each at once): a server
/// that reads fast could get the request line alone, decide the request's identity without the
/// `traceparent`, and lose the caller. One element, one segment: the head arrives whole.
#[inline(always)]
fn insert(ctx: &SkMsgContext, offset: u32, line: &[u8; LINE_LEN]) -> bool {
    // `offset` is a request line's end in a scanned head: bounded, which the verifier needs.
    if offset == 0 || offset as usize > HEAD_SCAN || offset > ctx.size() {
        return false;
    }
    if ctx.push_data(offset, LINE_LEN as u32, 0).is_err() {
        return false;
    }
    let end = core::cmp::min(ctx.size(), offset + (LINE_LEN + HEAD_SCAN) as u32);
    // SAFETY: the helper takes the program's own context.
    let pulled = unsafe { bpf_msg_pull_data(ctx.msg, 0, end, 0) } == 0;
    let out = ctx.data() + offset as usize;
    if !pulled || out + LINE_LEN > ctx.data_end() {
        // Never send the uninitialised bytes just pushed.
        let _ = ctx.pop_data(offset, LINE_LEN as u32, 0);
        return false;
    }
    let out = out as *mut u8;
    for (k, &byte) in line.iter().enumerate() {
        // SAFETY: `data + offset + LINE_LEN <= data_end` was checked above.
        unsafe { *out.add(k) = byte };
    }
    true
}
