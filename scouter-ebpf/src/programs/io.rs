//! Bytes moved on followed sockets. One enter program per (buffer shape, direction), one exit
//! program for all: the agent attaches each to every syscall of its family.
//!
//! Requests get their trace identity here, at their first byte: a client request at the write's
//! entry (the sk_msg program inserting its `traceparent` runs inside the syscall), a server
//! request at the read's exit (when its bytes are in the buffer). See [`super::context`].
//!
//! TLS sockets are recognised here too (a handshake record where a request would start, or a
//! syscall made inside a libssl call): their syscalls move ciphertext, which is not emitted;
//! [`super::tls`] emits their plaintext through the same [`data_moved`] path instead.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, generated},
    macros::tracepoint,
    programs::TracePointContext,
};
use scouter_ebpf::{
    context_origin, counter, tracked_flags, DataEvent, Direction, EventKind, SocketInfo, SocketKey, SocketRole,
    SpanContext, MAX_CAPTURE,
};

use super::{context, current_ids, head, header, python_stack, syscall_arg, syscall_ret, tls, trace_option};
use crate::maps::{count, process_flags, scratch, BufferShape, InFlightIo, EVENTS, IN_FLIGHT_IO, IO_SCRATCH, SOCKETS};

/// `struct msghdr.msg_iov` offset (after `msg_name` and `msg_namelen` + padding).
const MSGHDR_IOV_OFFSET: u64 = 16;

#[inline(always)]
fn enter(ctx: &TracePointContext, shape: BufferShape, direction: Direction) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (pid, _) = current_ids(pid_tgid);
    let Some(flags) = process_flags(pid) else { return 0 };
    let fd = syscall_arg(ctx, 0) as u32;
    let Some(socket) = socket_info(pid_tgid, fd) else { return 0 };
    let Some(call) = scratch(&IO_SCRATCH) else { return 0 };
    call.buf = syscall_arg(ctx, 1);
    // SAFETY: helper with no preconditions.
    call.enter_ns = unsafe { bpf_ktime_get_ns() };
    call.fd = fd;
    call.shape = shape as u8;
    call.direction = direction as u8;
    call.in_tls_call = tls::syscall_entered(pid_tgid, fd, direction, socket) as u8;
    call._pad = 0;
    call.context = SpanContext::default();
    if direction == Direction::Egress && socket.tls == 0 && starts_request(socket, SocketRole::Client) {
        // write/sendto pass the length third; writev/sendmsg pass a count or flags there, and
        // their first iovec's own length is the bound.
        let length = if shape == BufferShape::Plain { syscall_arg(ctx, 2) } else { u64::MAX };
        if let Some((src, len)) = first_segment(call, length) {
            if head::starts_request(src, len) {
                let inject = flags & tracked_flags::INSERT_TRACEPARENT != 0;
                client_request(pid_tgid, src, len, inject, &mut call.context);
                trace_option::client_transport(pid_tgid, fd, false);
            } else if tls::is_handshake(src, len) {
                tls::mark_tls(pid_tgid, fd, socket);
            }
        }
    }
    let _ = IN_FLIGHT_IO.insert(&pid_tgid, call, 0);
    0
}

/// Whether bytes in the request direction of a `role` socket may start a new request now.
#[inline(always)]
pub fn starts_request(socket: &SocketInfo, role: SocketRole) -> bool {
    socket.role == role as u8 && socket.awaiting_request != 0
}

/// The identity of the client request whose head starts at `src` (the caller checked the
/// method), written into `context`; `inject` asks for a `traceparent` line to insert (plain
/// HTTP only). No identity when the head cannot be copied.
#[inline(always)]
pub fn client_request(pid_tgid: u64, src: u64, len: u64, inject: bool, context: &mut SpanContext) {
    match head::load(src, len) {
        Some(scanned) => context::client_request(pid_tgid, scanned, inject, context),
        None => *context = SpanContext::default(),
    }
}

/// `read`, `recvfrom`.
#[tracepoint]
pub fn io_enter_read(ctx: TracePointContext) -> u32 {
    enter(&ctx, BufferShape::Plain, Direction::Ingress)
}

/// `readv`.
#[tracepoint]
pub fn io_enter_readv(ctx: TracePointContext) -> u32 {
    enter(&ctx, BufferShape::IoVec, Direction::Ingress)
}

/// `recvmsg`.
#[tracepoint]
pub fn io_enter_recvmsg(ctx: TracePointContext) -> u32 {
    enter(&ctx, BufferShape::MsgHdr, Direction::Ingress)
}

/// `write`, `sendto`.
#[tracepoint]
pub fn io_enter_write(ctx: TracePointContext) -> u32 {
    enter(&ctx, BufferShape::Plain, Direction::Egress)
}

/// `writev`.
#[tracepoint]
pub fn io_enter_writev(ctx: TracePointContext) -> u32 {
    enter(&ctx, BufferShape::IoVec, Direction::Egress)
}

/// `sendmsg`.
#[tracepoint]
pub fn io_enter_sendmsg(ctx: TracePointContext) -> u32 {
    enter(&ctx, BufferShape::MsgHdr, Direction::Egress)
}

/// [`first_segment`] of bytes a syscall moved, `(0, 0)` (and counted) when its iovec cannot be
/// read. Not an `Option`: LLVM leaves a `None`'s payload undefined and may spill it, which the
/// verifier refuses (reading an uninitialised register).
#[inline(always)]
fn moved_segment(call: &InFlightIo, moved: u64) -> (u64, u64) {
    match first_segment(call, moved) {
        Some(segment) => segment,
        None => {
            count(counter::READ_USER_FAILED);
            (0, 0)
        }
    }
}

/// The user buffer holding the first bytes moved, and how many of them it holds (at most
/// `moved`).
#[inline(always)]
fn first_segment(call: &InFlightIo, moved: u64) -> Option<(u64, u64)> {
    let iovec_ptr = match call.shape {
        s if s == BufferShape::Plain as u8 => return Some((call.buf, moved)),
        s if s == BufferShape::IoVec as u8 => call.buf,
        _ => {
            // SAFETY: the helper validates the user pointer.
            unsafe { bpf_probe_read_user((call.buf + MSGHDR_IOV_OFFSET) as *const u64) }.ok()?
        }
    };
    // SAFETY: `struct iovec { void *iov_base; size_t iov_len; }`, read through the helper.
    let iovec = unsafe { bpf_probe_read_user(iovec_ptr as *const [u64; 2]) }.ok()?;
    Some((iovec[0], core::cmp::min(iovec[1], moved)))
}

#[tracepoint]
pub fn io_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(saved) = IN_FLIGHT_IO.get_ptr(&pid_tgid) else { return 0 };
    let Some(call) = scratch(&IO_SCRATCH) else { return 0 };
    // SAFETY: this thread's entry, copied before its removal.
    *call = unsafe { *saved };
    let _ = IN_FLIGHT_IO.remove(&pid_tgid);
    let ret = syscall_ret(&ctx);
    if call.context.origin != context_origin::NONE {
        call.context.injected = context::take_injection(pid_tgid) as u8;
    }
    if ret <= 0 {
        if call.direction == Direction::Egress as u8 {
            trace_option::write_done(pid_tgid, call.fd);
        }
        return 0;
    }
    let moved = ret as u64;
    let segment = moved_segment(call, moved);
    let mut socket = socket_info(pid_tgid, call.fd);
    if let Some(socket) = socket.as_deref_mut() {
        if tls::carries_ciphertext(pid_tgid, socket, call, segment) {
            tls::ciphertext_moved(pid_tgid, call);
            return 0;
        }
    }
    // The stack, if wanted, is read by the program attached after this one.
    let _ = data_moved(pid_tgid, call, socket, moved, segment, 0);
    0
}

/// Bytes moved on a followed socket (a syscall, or a libssl call on a TLS socket): the
/// thread's turn, the socket's request/response turn and identity, and the event. `flags` are
/// [`scouter_ebpf::data_flags`]. Returns whether the caller should capture the thread's Python
/// stack ([`python_stack`]) after the event.
#[inline(always)]
pub fn data_moved(
    pid_tgid: u64,
    call: &mut InFlightIo,
    socket: Option<&mut SocketInfo>,
    moved: u64,
    segment: (u64, u64),
    flags: u8,
) -> bool {
    context::thread_moved_on(pid_tgid);
    let wants_stack = match socket {
        Some(socket) => follow_exchange(socket, call, pid_tgid, segment),
        None => false,
    };
    emit_data(call, pid_tgid, moved, segment, flags);
    wants_stack
}

#[inline(always)]
pub fn socket_info(pid_tgid: u64, fd: u32) -> Option<&'static mut SocketInfo> {
    let (pid, _) = current_ids(pid_tgid);
    // SAFETY: LRU map value; a concurrent removal leaves the memory valid until RCU grace.
    SOCKETS.get_ptr_mut(&SocketKey { pid, fd }).map(|info| unsafe { &mut *info })
}

/// Keeps the socket's request/response turn, and gives a server request its identity.
/// Returns whether the thread's Python stack says who works for a request now: a client
/// request's first write, or the first body read of a request being served (the handler reads
/// it; the head was read by the framework).
#[inline(always)]
fn follow_exchange(socket: &mut SocketInfo, call: &mut InFlightIo, pid_tgid: u64, segment: (u64, u64)) -> bool {
    let server = socket.role == SocketRole::Server as u8;
    let egress = call.direction == Direction::Egress as u8;
    match (server, egress) {
        // A request (or its body) went out: the next request waits for a response.
        (false, true) => {
            socket.awaiting_request = 0;
            return call.context.origin != context_origin::NONE
                && python_stack::wanted(pid_tgid, call.fd, SocketRole::Client as u8);
        }
        // Response bytes: the connection may carry the next request after them.
        (false, false) => socket.awaiting_request = 1,
        (true, true) => {
            socket.awaiting_request = 1;
            context::server_responded(pid_tgid, call.fd);
        }
        (true, false) => {
            if socket.awaiting_request == 0 {
                let first_body_read = socket.stack_taken == 0;
                socket.stack_taken = 1;
                return first_body_read && python_stack::wanted(pid_tgid, call.fd, SocketRole::Server as u8);
            }
            socket.awaiting_request = 0;
            socket.stack_taken = 0;
            let (src, len) = segment;
            if head::starts_request(src, len) {
                if let Some(scanned) = head::load(src, len) {
                    // Over TLS the caller's context may have come in a TCP header option.
                    let client = if socket.tls != 0 { Some(&socket.peer) } else { None };
                    context::server_request(pid_tgid, call.fd, scanned, client, &mut call.context);
                }
            }
        }
    }
    false
}

#[inline(always)]
fn emit_data(call: &InFlightIo, pid_tgid: u64, moved: u64, (src, available): (u64, u64), flags: u8) {
    let Some(mut entry) = EVENTS.reserve::<DataEvent>(0) else {
        count(counter::RING_FULL);
        return;
    };
    let event = entry.as_mut_ptr();
    let captured = copy_payload(event, src, available);
    // SAFETY: `event` points at a reserved, exclusively owned ring-buffer record.
    unsafe {
        (*event).header = header(EventKind::SocketData, pid_tgid);
        (*event).fd = call.fd;
        (*event).direction = call.direction;
        (*event).flags = flags;
        (*event)._pad = [0; 2];
        (*event).total_len = moved;
        (*event).enter_ns = call.enter_ns;
        (*event).captured_len = captured;
        (*event)._pad2 = 0;
        (*event).context = call.context;
    }
    entry.submit(0);
}

/// Copies up to `MAX_CAPTURE` bytes of payload into the record; returns how many.
#[inline(always)]
fn copy_payload(event: *mut DataEvent, src: u64, available: u64) -> u32 {
    let mut len = available as usize;
    if len > MAX_CAPTURE {
        len = MAX_CAPTURE;
    }
    if len == 0 {
        return 0;
    }
    // SAFETY: `len` is bounded by the destination's size; the helper validates `src`.
    let rc =
        unsafe { generated::bpf_probe_read_user((*event).data.as_mut_ptr() as *mut _, len as u32, src as *const _) };
    if rc != 0 {
        count(counter::READ_USER_FAILED);
        return 0;
    }
    len as u32
}
