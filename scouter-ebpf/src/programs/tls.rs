//! HTTPS: plaintext from uprobes on libssl, attached by the agent to the library each traced
//! process loads (every process using that file fires them; untracked ones are ignored here).
//!
//! A TLS socket's syscalls move ciphertext, so [`super::io`] stops emitting them once it knows
//! the socket is TLS (`SocketInfo::tls`), and the plaintext is emitted from here as the same
//! `DataEvent`s (flagged `data_flags::TLS`), one per `SSL_read`/`SSL_write` call, through the
//! same path ([`io::data_moved`]): the same request/response turns, the same identity rules
//! (a client request at `SSL_write` entry, a server request at `SSL_read` return), the same
//! thread bookkeeping. Userspace assembles them like plain HTTP.
//!
//! Which socket an `SSL*` uses is learnt, not read (the `SSL`'s BIO is opaque):
//! - socket BIO (blocking Python sockets: `requests`, `http.server`, gunicorn): the syscalls a
//!   libssl call makes on a followed socket name it ([`syscall_entered`]);
//! - memory BIO (asyncio's SSL transports): libssl makes no syscall; the transport reads the
//!   ciphertext from the socket and feeds it to the `SSL*` at once, so the TLS socket the
//!   thread last read outside any libssl call belongs to the thread's next libssl read or
//!   handshake ([`ciphertext_moved`] notes it, [`socket_of`] takes it). Writes need nothing new:
//!   the handshake and the reads that precede any request already named the socket.
//!
//! The `SSL*` → descriptor map is kept for later calls, which libssl may serve from its buffer
//! without any I/O. `SSL_do_handshake` is probed too, so a connection is known before its first
//! `SSL_write`: the client's request must get its identity at that call's entry.
//!
//! A socket is marked TLS ([`mark_tls`]) from its first bytes, before any libssl call names it:
//! a handshake record where a request would start (the client's ClientHello at write entry,
//! the server's at read exit, see [`is_handshake`]), or a syscall made inside a libssl call.
//! From then on only plaintext moves the socket's request/response turns and the thread's
//! "moved on" state ([`super::context::thread_moved_on`]); its ciphertext syscalls do neither,
//! so a request an asyncio callback just decrypted is still the callback's fresh request.
//!
//! Not covered: sockets a process opened before it was tracked (their `SSL*` never shows its
//! descriptor: counted as `TLS_SOCKET_UNKNOWN`), TLS libraries other than OpenSSL's libssl,
//! and OpenSSL linked into a binary without exporting `SSL_read`/`SSL_write`.
//!
//! The bytes are read from the caller's buffer when the call returns, for writes too: only the
//! return says how many were taken, and a write that fails (`SSL_ERROR_WANT_WRITE`) is retried
//! with the same bytes, which must not be emitted twice. The buffer is unchanged at return.
//!
//! Plain-HTTP `traceparent` insertion does not apply (the bytes are encrypted before the
//! kernel sees them); the client's context travels in a TCP header option instead
//! ([`super::trace_option`]).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use scouter_ebpf::{
    context_origin, counter, data_flags, tracked_flags, Direction, SocketInfo, SocketRole, SpanContext,
};

use super::{context, current_ids, head, io, python_stack, trace_option, tracked_thread};
use crate::maps::{
    count, process_flags, scratch, tls_call, BufferShape, InFlightIo, TlsCall, NO_SOCKET, TLS_CALLS, TLS_LAST_READS,
    TLS_SCRATCH, TLS_SOCKETS,
};

/// TLS record type of a handshake message.
const RECORD_HANDSHAKE: u8 = 0x16;

/// `SSL_write(ssl, buf, int num)`.
#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, Direction::Egress, false)
}

/// `SSL_write_ex(ssl, buf, size_t num, size_t *written)`.
#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, Direction::Egress, true)
}

/// `SSL_read(ssl, buf, int num)`.
#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, Direction::Ingress, false)
}

/// `SSL_read_ex(ssl, buf, size_t num, size_t *readbytes)`.
#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, Direction::Ingress, true)
}

/// `SSL_do_handshake(ssl)`: moves no plaintext, but names the socket early.
#[uprobe]
pub fn ssl_do_handshake(ctx: ProbeContext) -> u32 {
    let Some(pid_tgid) = tracked_thread() else { return 0 };
    let Some(ssl) = ctx.arg::<u64>(0) else { return 0 };
    let socket = socket_of(pid_tgid, ssl, true);
    let Some(call) = new_call(ssl, 0, Direction::Ingress, 0, socket) else { return 0 };
    call.kind = tls_call::HANDSHAKE;
    let _ = TLS_CALLS.insert(&pid_tgid, call, 0);
    0
}

#[inline(always)]
fn enter(ctx: &ProbeContext, direction: Direction, ex: bool) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(flags) = process_flags(current_ids(pid_tgid).0) else { return 0 };
    let (Some(ssl), Some(buf)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else { return 0 };
    // The plain forms take an `int`: a negative one moves nothing.
    let num = if ex { ctx.arg::<u64>(2).unwrap_or(0) } else { ctx.arg::<i32>(2).unwrap_or(0).max(0) as u64 };
    let count_ptr = if ex { ctx.arg::<u64>(3).unwrap_or(0) } else { 0 };
    let id = socket_of(pid_tgid, ssl, direction == Direction::Ingress);
    let Some(call) = new_call(ssl, buf, direction, count_ptr, id) else { return 0 };
    if direction == Direction::Egress && id != NO_SOCKET {
        if let Some(socket) = io::socket_info(pid_tgid, id) {
            let option = flags & tracked_flags::TCP_OPTION != 0;
            client_request(pid_tgid, socket, id, buf, num, option, &mut call.io.context);
        }
    }
    let _ = TLS_CALLS.insert(&pid_tgid, call, 0);
    0
}

/// This CPU's libssl call record, filled for a call starting now.
#[inline(always)]
fn new_call(ssl: u64, buf: u64, direction: Direction, count_ptr: u64, socket: u64) -> Option<&'static mut TlsCall> {
    let call = scratch(&TLS_SCRATCH)?;
    call.io.buf = buf;
    // SAFETY: helper with no preconditions.
    call.io.enter_ns = unsafe { bpf_ktime_get_ns() };
    call.io.socket = socket;
    call.io.offset = 0;
    call.io.shape = BufferShape::Plain as u8;
    call.io.direction = direction as u8;
    call.io.in_tls_call = 0;
    call.io._pad = [0; 5];
    call.io.context = SpanContext::default();
    call.ssl = ssl;
    call.count_ptr = count_ptr;
    call.kind = tls_call::DATA;
    call._pad = [0; 7];
    Some(call)
}

/// The identity of a client request starting in this `SSL_write`, written into `context`,
/// and its TCP option when `option`.
#[inline(always)]
fn client_request(
    pid_tgid: u64,
    socket: &mut SocketInfo,
    id: u64,
    buf: u64,
    num: u64,
    option: bool,
    context: &mut SpanContext,
) {
    if !io::may_start_request(socket, SocketRole::Client) || !head::starts_request(buf, num) {
        return;
    }
    io::learn_role(pid_tgid, id, socket, SocketRole::Client);
    io::client_request(pid_tgid, buf, num, false, context);
    // A request that carries its own traceparent (an SDK's) tells the server itself.
    if option && context.origin != context_origin::NONE && context.origin != context_origin::ADOPTED {
        trace_option::prepare(pid_tgid, id, context);
    }
}

/// Return of every probed call: emits the plaintext a read or write moved.
#[uretprobe]
pub fn ssl_return(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(saved) = TLS_CALLS.get_ptr(&pid_tgid) else { return 0 };
    let Some(call) = scratch(&TLS_SCRATCH) else { return 0 };
    // SAFETY: this thread's entry, copied before its removal.
    *call = unsafe { *saved };
    let _ = TLS_CALLS.remove(&pid_tgid);
    if call.kind != tls_call::DATA {
        return 0;
    }
    let ret = ctx.ret::<i32>();
    let moved = if call.count_ptr != 0 {
        if ret == 1 {
            // SAFETY: the helper validates the user pointer.
            unsafe { bpf_probe_read_user(call.count_ptr as *const u64) }.unwrap_or(0)
        } else {
            0
        }
    } else {
        ret.max(0) as u64
    };
    if moved == 0 {
        if call.io.context.origin != context_origin::NONE {
            trace_option::cancel(pid_tgid, call.io.socket);
        }
        return 0;
    }
    let socket = if call.io.socket == NO_SOCKET { None } else { io::socket_info(pid_tgid, call.io.socket) };
    // Only a followed TLS socket: a socket remembered for an `SSL*` whose address was reused
    // must not feed plaintext into a plain connection's stream.
    let Some(socket) = socket.filter(|socket| socket.tls != 0) else {
        count(counter::TLS_SOCKET_UNKNOWN);
        return 0;
    };
    let segment = (call.io.buf, moved);
    if let Some(role) = io::data_moved(pid_tgid, &mut call.io, socket, moved, segment, data_flags::TLS) {
        python_stack::capture(pid_tgid, call.io.socket, role);
    }
    0
}

/// The socket `ssl` uses in the current process, [`NO_SOCKET`] when unknown. Every libssl call
/// takes the thread's pending ciphertext read; reads and handshakes adopt it (memory BIO).
#[inline(always)]
fn socket_of(pid_tgid: u64, ssl: u64, adopt_last_read: bool) -> u64 {
    let key = context::object(pid_tgid, ssl);
    // SAFETY: copied out before removal.
    if let Some(socket) = (unsafe { TLS_LAST_READS.get(&pid_tgid) }).copied() {
        let _ = TLS_LAST_READS.remove(&pid_tgid);
        if adopt_last_read {
            let _ = TLS_SOCKETS.insert(&key, &socket, 0);
            return socket;
        }
    }
    // SAFETY: copied out.
    unsafe { TLS_SOCKETS.get(&key) }.copied().unwrap_or(NO_SOCKET)
}

/// An I/O call on followed socket `id` begins; true when the thread is inside a libssl call,
/// which makes `id` that call's socket, and a TLS one. Not inlined: its keys stay off the
/// frame of [`super::io::call_starts`], which goes on to the deepest calls.
#[inline(never)]
pub fn io_entered(pid_tgid: u64, id: u64, direction: Direction, socket: &mut SocketInfo) -> bool {
    if direction == Direction::Egress {
        trace_option::socket_write_starts(pid_tgid, id);
    }
    let Some(call) = TLS_CALLS.get_ptr_mut(&pid_tgid) else { return false };
    // SAFETY: this thread's own entry.
    let call = unsafe { &mut *call };
    call.io.socket = id;
    let key = context::object(pid_tgid, call.ssl);
    let _ = TLS_SOCKETS.insert(&key, &id, 0);
    if socket.tls == 0 {
        mark_tls(pid_tgid, id, socket);
    }
    true
}

/// Whether the bytes at `src` begin a TLS handshake record (a ClientHello, where a request
/// would start).
#[inline(always)]
pub fn is_handshake(src: u64, available: u64) -> bool {
    if available < 3 {
        return false;
    }
    // SAFETY: the helper validates the user pointer.
    let Ok(first) = (unsafe { bpf_probe_read_user(src as *const [u8; 3]) }) else { return false };
    starts_handshake(first)
}

/// Whether a record starting with these bytes is a TLS handshake: the record type, then the
/// record version, 3.1 (TLS 1.0, what ClientHellos use) to 3.4.
#[inline(always)]
pub fn starts_handshake(first: [u8; 3]) -> bool {
    first[0] == RECORD_HANDSHAKE && first[1] == 3 && first[2] <= 4
}

/// Whether an I/O call's bytes on `socket` are ciphertext: it is known to be TLS, or a server
/// reads a handshake where a request would start (a socket is marked from then on). A socket
/// a libssl call marked TLS before its role was known (a server's handshake read inside
/// `SSL_do_handshake`) learns it here, from the handshake it reads.
#[inline(always)]
pub fn carries_ciphertext(pid_tgid: u64, socket: &mut SocketInfo, call: &InFlightIo, (src, len): (u64, u64)) -> bool {
    if socket.tls != 0 && socket.role != 0 {
        return true;
    }
    if call.direction != Direction::Ingress as u8 || !io::may_start_request(socket, SocketRole::Server) {
        return socket.tls != 0;
    }
    if is_handshake(src, len) {
        io::learn_role(pid_tgid, call.socket, socket, SocketRole::Server);
        mark_tls(pid_tgid, call.socket, socket);
        return true;
    }
    socket.tls != 0
}

/// `socket` (id `id`) turns out to carry TLS: its I/O moves ciphertext from now on, and the
/// sockops program may let it carry our TCP option.
#[inline(always)]
pub fn mark_tls(pid_tgid: u64, id: u64, socket: &mut SocketInfo) {
    socket.tls = 1;
    if socket.role == SocketRole::Client as u8 {
        trace_option::client_transport(pid_tgid, id, true);
    } else if socket.role == SocketRole::Server as u8 {
        trace_option::server_transport(&socket.peer);
    }
}

/// A syscall moved ciphertext on a TLS socket: nothing is emitted, but a write ends the wait
/// of the socket's TCP option, and a read made outside libssl is what the thread's next libssl
/// call will decrypt.
#[inline(always)]
pub fn ciphertext_moved(pid_tgid: u64, call: &InFlightIo) {
    if call.direction == Direction::Egress as u8 {
        trace_option::write_done(pid_tgid, call.socket);
    } else if call.in_tls_call == 0 {
        let _ = TLS_LAST_READS.insert(&pid_tgid, &call.socket, 0);
    }
}
