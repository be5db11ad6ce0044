//! Bytes moved on the sockets of traced processes, whichever way they are captured: on the
//! kernel's socket layer ([`super::sockets`]: fentry/fexit) or at the read/write syscalls
//! ([`super::syscalls`]: tracepoints, the fallback). Both hand each call here twice: when it
//! starts ([`call_starts`], with its buffer) and when it returns ([`call_ends`], with the
//! bytes it moved). libssl's plaintext ([`super::tls`]) comes through [`data_moved`] too.
//!
//! Requests get their trace identity here, at their first byte: a client request when its
//! write starts (the sk_msg program inserting its `traceparent` runs inside the call), a server
//! request when its read returns (its bytes are in the buffer then). See [`super::context`].
//!
//! A socket's role is learned from its bytes, not from having seen its `accept()` or
//! `connect()`: the first request-shaped bytes it moves tell which end the process is (a
//! request written: client; read: server), and only then is the socket announced to userspace
//! ([`SocketFollowedEvent`]) and its bytes emitted. A socket met in the middle of an exchange
//! (response bytes first) stays silent until its next request. TLS sockets are recognised
//! here too (a handshake record where a request would start, or I/O made inside a libssl
//! call): their bytes are ciphertext, which is not emitted; their plaintext comes from libssl.

use aya_ebpf::helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user, generated};
use scouter_ebpf::{
    capture, context_origin, counter, DataEvent, Direction, EventKind, SocketAddress, SocketFollowedEvent, SocketInfo,
    SocketKey, SocketRole, SpanContext, MAX_CAPTURE,
};

use super::{context, current_ids, head, header, python_stack, sockets, tls, trace_option};
use crate::maps::{count, scratch, BufferShape, InFlightIo, EVENTS, IO_SCRATCH, SOCKETS};

/// `struct msghdr.msg_iov` offset (after `msg_name` and `msg_namelen` + padding).
const MSGHDR_IOV_OFFSET: u64 = 16;

/// Set by the agent before load: one of [`capture`].
#[unsafe(no_mangle)]
static CAPTURE: u32 = capture::SOCKET_FUNCTIONS;

/// How socket I/O is captured ([`capture`]).
#[inline(always)]
pub fn capture_mode() -> u32 {
    // SAFETY: a global the agent sets before load; read volatile so it is not folded.
    unsafe { core::ptr::read_volatile(&CAPTURE) }
}

/// Whether a socket's id is its `struct sock` address (the socket-layer captures) rather
/// than its descriptor (the syscall capture).
#[inline(always)]
pub fn ids_are_sockets() -> bool {
    capture_mode() != capture::SYSCALLS
}

/// This CPU's record of a socket call starting now on socket `id`, its buffer opaque until the
/// capture describes it.
#[inline(always)]
pub fn new_call(id: u64, direction: Direction) -> Option<&'static mut InFlightIo> {
    let call = scratch(&IO_SCRATCH)?;
    // SAFETY: helper with no preconditions.
    call.enter_ns = unsafe { bpf_ktime_get_ns() };
    call.socket = id;
    call.buf = 0;
    call.offset = 0;
    call.shape = BufferShape::Opaque as u8;
    call.direction = direction as u8;
    call.in_tls_call = 0;
    call._pad = [0; 5];
    call.context = SpanContext::default();
    Some(call)
}

/// A call that moves bytes on a followed socket starts: `call` holds its buffer and
/// direction. A client request starting in these bytes gets its identity now, before they
/// leave (with a `traceparent` line to insert when `insert` and the process allows it).
/// Not inlined, like [`call_ends`]: each capture's programs stay small frames around them.
#[inline(never)]
pub fn call_starts(pid_tgid: u64, call: &mut InFlightIo, socket: &mut SocketInfo, length: u64, insert: bool) {
    let direction = if call.direction == Direction::Egress as u8 { Direction::Egress } else { Direction::Ingress };
    call.in_tls_call = tls::io_entered(pid_tgid, call.socket, direction, socket) as u8;
    // A socket that a libssl call just marked TLS may still need its role: its handshake says.
    let known_tls = socket.tls != 0 && socket.role != 0;
    if direction != Direction::Egress || known_tls || !may_start_request(socket, SocketRole::Client) {
        return;
    }
    let Some((src, len)) = first_segment(call, length) else { return };
    if socket.tls == 0 && head::starts_request(src, len) {
        learn_role(pid_tgid, call.socket, socket, SocketRole::Client);
        client_request(pid_tgid, src, len, insert, &mut call.context);
        trace_option::client_transport(pid_tgid, call.socket, false);
    } else if tls::is_handshake(src, len) {
        learn_role(pid_tgid, call.socket, socket, SocketRole::Client);
        tls::mark_tls(pid_tgid, call.socket, socket);
    }
}

/// The call in `call` returned `ret` (bytes moved, or an error): the bytes are followed and
/// emitted, and the thread's Python stack read when it tells who works for a request.
#[inline(never)]
pub fn call_ends(pid_tgid: u64, call: &mut InFlightIo, ret: i64) {
    if call.context.origin != context_origin::NONE {
        call.context.injected = context::take_injection(pid_tgid) as u8;
    }
    if ret <= 0 {
        if call.direction == Direction::Egress as u8 {
            trace_option::write_done(pid_tgid, call.socket);
        }
        return;
    }
    let moved = ret as u64;
    let segment = moved_segment(call, moved);
    let Some(socket) = socket_info(pid_tgid, call.socket) else { return };
    if tls::carries_ciphertext(pid_tgid, socket, call, segment) {
        tls::ciphertext_moved(pid_tgid, call);
        return;
    }
    if let Some(role) = data_moved(pid_tgid, call, socket, moved, segment, 0) {
        python_stack::capture(pid_tgid, call.socket, role);
    }
}

/// Whether bytes in the request direction of a `role` socket may start a new request now
/// (a socket whose role is not known yet may start one either way).
#[inline(always)]
pub fn may_start_request(socket: &SocketInfo, role: SocketRole) -> bool {
    (socket.role == role as u8 || socket.role == 0) && socket.awaiting_request != 0
}

/// The socket's first request says which end the process is: recorded, and announced to
/// userspace (before that request's bytes) with the socket's addresses.
#[inline(always)]
pub fn learn_role(pid_tgid: u64, id: u64, socket: &mut SocketInfo, role: SocketRole) {
    if socket.role != 0 {
        return;
    }
    socket.role = role as u8;
    announce(pid_tgid, id, socket);
}

/// Emits the `SocketFollowed` event of a socket whose role was just learned.
#[inline(never)]
fn announce(pid_tgid: u64, id: u64, socket: &mut SocketInfo) {
    let Some(mut entry) = EVENTS.reserve::<SocketFollowedEvent>(0) else {
        count(counter::RING_FULL);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved, exclusively owned ring-buffer record.
    unsafe {
        (*event).header = header(EventKind::SocketFollowed, pid_tgid);
        (*event).socket = id;
        (*event).role = socket.role;
        (*event)._pad = [0; 3];
        (*event)._pad2 = [0; 4];
        clear_address(&mut (*event).local);
        clear_address(&mut (*event).peer);
        if ids_are_sockets() {
            sockets::addresses(id, &mut (*event).local, &mut (*event).peer);
            socket.peer = (*event).peer;
        } else {
            (*event).peer = socket.peer;
        }
    }
    entry.submit(0);
}

/// Zeroes an address in place (building one on the stack to copy would cost stack).
#[inline(always)]
fn clear_address(address: &mut SocketAddress) {
    address.family = 0;
    address.port = 0;
    address.addr = [0; 16];
}

/// The identity of the client request whose head starts at `src` (the caller checked the
/// method), written into `context`; `insert` asks for a `traceparent` line to insert (plain
/// HTTP only). No identity when the head cannot be copied.
#[inline(always)]
pub fn client_request(pid_tgid: u64, src: u64, len: u64, insert: bool, context: &mut SpanContext) {
    match head::load(src, len) {
        Some(scanned) => context::client_request(pid_tgid, scanned, insert, context),
        None => *context = SpanContext::default(),
    }
}

/// [`first_segment`] of bytes a call moved, `(0, 0)` (and counted) when its iovec cannot be
/// read. Not an `Option`: LLVM leaves a `None`'s payload undefined and may spill it, which the
/// verifier refuses (reading an uninitialised register).
#[inline(never)]
fn moved_segment(call: &InFlightIo, moved: u64) -> (u64, u64) {
    if call.shape == BufferShape::Opaque as u8 {
        return (0, 0);
    }
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
pub fn first_segment(call: &InFlightIo, moved: u64) -> Option<(u64, u64)> {
    let iovec = match call.shape {
        s if s == BufferShape::Plain as u8 => return Some((call.buf, moved)),
        // SAFETY: `struct iovec { void *iov_base; size_t iov_len; }`, read through the helper.
        s if s == BufferShape::IoVec as u8 => unsafe { bpf_probe_read_user(call.buf as *const [u64; 2]) }.ok()?,
        s if s == BufferShape::MsgHdr as u8 => {
            // SAFETY: the helper validates the user pointers.
            let iov = unsafe { bpf_probe_read_user((call.buf + MSGHDR_IOV_OFFSET) as *const u64) }.ok()?;
            // SAFETY: as above.
            unsafe { bpf_probe_read_user(iov as *const [u64; 2]) }.ok()?
        }
        s if s == BufferShape::KernelIoVec as u8 => {
            // SAFETY: the kernel's copy of the iovecs, read through the helper.
            let iovec = unsafe { bpf_probe_read_kernel(call.buf as *const [u64; 2]) }.ok()?;
            [iovec[0].wrapping_add(call.offset), iovec[1].saturating_sub(call.offset)]
        }
        _ => return None,
    };
    Some((iovec[0], core::cmp::min(iovec[1], moved)))
}

/// Bytes moved on a followed socket (a socket call, or a libssl call on a TLS socket): the
/// thread's turn, the socket's request/response turn and identity, and the event. `flags` are
/// [`scouter_ebpf::data_flags`]. Nothing is emitted while the socket's role is unknown.
/// Returns the role to read the thread's Python stack for ([`python_stack`]), when it is due.
#[inline(always)]
pub fn data_moved(
    pid_tgid: u64,
    call: &mut InFlightIo,
    socket: &mut SocketInfo,
    moved: u64,
    segment: (u64, u64),
    flags: u8,
) -> Option<SocketRole> {
    context::thread_moved_on(pid_tgid);
    let wants_stack = follow_exchange(socket, call, pid_tgid, segment);
    if socket.role == 0 {
        return None;
    }
    emit_data(call, pid_tgid, moved, segment, flags);
    wants_stack
}

/// The followed socket `id` of the current process.
#[inline(always)]
pub fn socket_info(pid_tgid: u64, id: u64) -> Option<&'static mut SocketInfo> {
    // SAFETY: LRU map value; a concurrent removal leaves the memory valid until RCU grace.
    SOCKETS.get_ptr_mut(&socket_key(pid_tgid, id)).map(|info| unsafe { &mut *info })
}

/// The socket map's key of socket `id` of the current process.
#[inline(always)]
pub fn socket_key(pid_tgid: u64, id: u64) -> SocketKey {
    SocketKey { pid: current_ids(pid_tgid).0, _pad: 0, id }
}

/// Follows socket `id` of the current process from now on, as `role` (0: learned from its
/// bytes), with `peer` when known; an earlier entry under the same key is replaced. Not
/// inlined: the new entry is built on this leaf's frame, not on the deep frames of the I/O
/// programs that call it.
#[inline(never)]
pub fn follow(pid_tgid: u64, id: u64, role: u8, peer: SocketAddress) {
    let info = SocketInfo { role, awaiting_request: 1, tls: 0, stack_taken: 0, _pad: [0; 4], peer, _pad2: [0; 4] };
    let _ = SOCKETS.insert(&socket_key(pid_tgid, id), &info, 0);
}

/// Keeps the socket's request/response turn, learns its role from its first request, and
/// gives a server request its identity. Returns the role to read the thread's Python stack for
/// when it says who works for a request now: a client request's first write, or the first body
/// read of a request being served (the handler reads it; the head was read by the framework).
#[inline(always)]
fn follow_exchange(
    socket: &mut SocketInfo,
    call: &mut InFlightIo,
    pid_tgid: u64,
    (src, len): (u64, u64),
) -> Option<SocketRole> {
    let egress = call.direction == Direction::Egress as u8;
    if socket.role == 0 {
        // A write starting a request was recognised when it started; a read may start one now.
        if egress || !may_start_request(socket, SocketRole::Server) || !head::starts_request(src, len) {
            return None;
        }
        learn_role(pid_tgid, call.socket, socket, SocketRole::Server);
    }
    let server = socket.role == SocketRole::Server as u8;
    match (server, egress) {
        // A request (or its body) went out: the next request waits for a response.
        (false, true) => {
            socket.awaiting_request = 0;
            return (call.context.origin != context_origin::NONE).then_some(SocketRole::Client);
        }
        // Response bytes: the connection may carry the next request after them.
        (false, false) => socket.awaiting_request = 1,
        (true, true) => {
            socket.awaiting_request = 1;
            context::server_responded(pid_tgid, call.socket);
        }
        (true, false) => {
            if socket.awaiting_request == 0 {
                let first_body_read = socket.stack_taken == 0;
                socket.stack_taken = 1;
                return first_body_read.then_some(SocketRole::Server);
            }
            socket.awaiting_request = 0;
            socket.stack_taken = 0;
            if head::starts_request(src, len) {
                if let Some(scanned) = head::load(src, len) {
                    // Over TLS the caller's context may have come in a TCP header option.
                    let client = if socket.tls != 0 { Some(&socket.peer) } else { None };
                    context::server_request(pid_tgid, call.socket, scanned, client, &mut call.context);
                }
            }
        }
    }
    None
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
        (*event).socket = call.socket;
        (*event).direction = call.direction;
        (*event).flags = flags;
        (*event)._pad = [0; 6];
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
