//! Socket I/O at the syscalls, the fallback where fentry is not available: tracepoints on the
//! read/write, accept, connect and close families. A socket's id here is its descriptor.
//!
//! This costs every process on the host: enabling a syscall tracepoint puts every thread on
//! the slow syscall path, and every matching syscall of every process runs the enter and exit
//! programs before the tracked-process check returns. The agent uses it only when the socket
//! layer cannot be hooked ([`super::sockets`]).
//!
//! Sockets are followed from their `accept()` or `connect()` (which say the role and the
//! peer): a descriptor is not known to be a socket otherwise, so connections opened before the
//! agent started are not followed here. One enter program per (buffer shape, direction), one
//! exit program for all: the agent attaches each to every syscall of its family.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext};
use scouter_ebpf::{
    address_family::{INET as AF_INET, INET6 as AF_INET6, UNIX as AF_UNIX},
    tracked_flags, Direction, EventKind, SocketRole,
};

use super::{connection, context, current_ids, io, syscall_arg, syscall_ret};
use crate::maps::{
    is_tracked, process_flags, scratch, BufferShape, InFlightConnection, IN_FLIGHT_CONNECTIONS, IN_FLIGHT_IO,
    IO_SCRATCH,
};

#[inline(always)]
fn enter(ctx: &TracePointContext, shape: BufferShape, direction: Direction) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(flags) = process_flags(current_ids(pid_tgid).0) else { return 0 };
    let fd = syscall_arg(ctx, 0);
    let Some(socket) = io::socket_info(pid_tgid, fd) else { return 0 };
    let Some(call) = io::new_call(fd, direction) else { return 0 };
    call.buf = syscall_arg(ctx, 1);
    call.shape = shape as u8;
    // write/sendto pass the length third; writev/sendmsg pass a count or flags there, and
    // their first iovec's own length is the bound.
    let length = if shape == BufferShape::Plain { syscall_arg(ctx, 2) } else { u64::MAX };
    io::call_starts(pid_tgid, call, socket, length, flags & tracked_flags::INSERT_TRACEPARENT != 0);
    let _ = IN_FLIGHT_IO.insert(&pid_tgid, call, 0);
    0
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

/// Every read/write family syscall's return.
#[tracepoint]
pub fn io_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(saved) = IN_FLIGHT_IO.get_ptr(&pid_tgid) else { return 0 };
    let Some(call) = scratch(&IO_SCRATCH) else { return 0 };
    // SAFETY: this thread's entry, copied before its removal.
    *call = unsafe { *saved };
    let _ = IN_FLIGHT_IO.remove(&pid_tgid);
    io::call_ends(pid_tgid, call, syscall_ret(&ctx));
    0
}

#[inline(always)]
fn remember(fd: u64, addr: u64) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_tracked(current_ids(pid_tgid).0) {
        return 0;
    }
    let call = InFlightConnection { addr, fd: fd as u32, _pad: 0 };
    let _ = IN_FLIGHT_CONNECTIONS.insert(&pid_tgid, &call, 0);
    0
}

#[inline(always)]
fn take_in_flight(pid_tgid: u64) -> Option<InFlightConnection> {
    // SAFETY: the value is copied out before removal.
    let call = unsafe { IN_FLIGHT_CONNECTIONS.get(&pid_tgid) }.copied()?;
    let _ = IN_FLIGHT_CONNECTIONS.remove(&pid_tgid);
    Some(call)
}

/// `accept(fd, addr, addrlen)` and `accept4(fd, addr, addrlen, flags)`.
#[tracepoint]
pub fn accept_enter(ctx: TracePointContext) -> u32 {
    remember(syscall_arg(&ctx, 0), syscall_arg(&ctx, 1))
}

#[tracepoint]
pub fn accept_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(call) = take_in_flight(pid_tgid) else { return 0 };
    let ret = syscall_ret(&ctx);
    if ret < 0 {
        return 0;
    }
    let peer = connection::read_user_sockaddr(call.addr);
    // Unix sockets carry HTTP too (gunicorn behind a proxy); anything else is not ours.
    if !matches!(peer.family, 0 | AF_UNIX | AF_INET | AF_INET6) {
        return 0;
    }
    context::thread_moved_on(pid_tgid);
    io::follow(pid_tgid, ret as u64, SocketRole::Server as u8, peer);
    connection::emit(EventKind::SocketAccept, pid_tgid, ret as u64, call.fd as u64, 0, peer);
    0
}

/// `connect(fd, addr, addrlen)`: the address is an input, so it is read at exit from the same
/// (unchanged) user buffer.
#[tracepoint]
pub fn connect_enter(ctx: TracePointContext) -> u32 {
    remember(syscall_arg(&ctx, 0), syscall_arg(&ctx, 1))
}

#[tracepoint]
pub fn connect_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(call) = take_in_flight(pid_tgid) else { return 0 };
    let ret = syscall_ret(&ctx);
    let peer = connection::read_user_sockaddr(call.addr);
    connection::connected(pid_tgid, call.fd as u64, ret, peer);
    0
}

#[tracepoint]
pub fn close_enter(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_tracked(current_ids(pid_tgid).0) {
        return 0;
    }
    connection::closed(pid_tgid, syscall_arg(&ctx, 0));
    0
}
