//! Which sockets of tracked processes are followed: accepted ones (the process serves on them)
//! and connected ones (it calls out on them), until they are closed.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use scouter_ebpf::address_family::{INET as AF_INET, INET6 as AF_INET6, UNIX as AF_UNIX};
use scouter_ebpf::{counter, CloseEvent, ConnectionEvent, EventKind, SocketAddress, SocketInfo, SocketKey, SocketRole};

use super::{context, current_ids, header, syscall_arg, syscall_ret};
use crate::maps::{count, is_tracked, InFlightConnection, EVENTS, IN_FLIGHT_CONNECTIONS, SOCKETS};

const EINPROGRESS: i64 = 115;
/// `sizeof(struct sockaddr_in6)`, the largest address read.
const SOCKADDR_BYTES: usize = 28;

/// Reads a `struct sockaddr` from user memory; family 0 when absent or unreadable.
#[inline(always)]
fn read_sockaddr(ptr: u64) -> SocketAddress {
    let mut address = SocketAddress::default();
    if ptr == 0 {
        return address;
    }
    // SAFETY: the helper validates the user pointer.
    let Ok(raw) = (unsafe { bpf_probe_read_user(ptr as *const [u8; SOCKADDR_BYTES]) }) else {
        count(counter::READ_USER_FAILED);
        return address;
    };
    address.family = u16::from_le_bytes([raw[0], raw[1]]);
    address.port = u16::from_be_bytes([raw[2], raw[3]]);
    match address.family {
        AF_INET => address.addr[..4].copy_from_slice(&raw[4..8]),
        AF_INET6 => address.addr.copy_from_slice(&raw[8..24]),
        _ => {}
    }
    address
}

#[inline(always)]
fn remember(fd: u64, addr: u64) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (pid, _) = current_ids(pid_tgid);
    if !is_tracked(pid) {
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

#[inline(always)]
fn follow(pid: u32, fd: u32, role: SocketRole) {
    follow_peer(pid, fd, role, SocketAddress::default());
}

/// Follows a socket and remembers its peer: an accepted connection's client address is what a
/// trace context received in a TCP header option is filed under (see `super::trace_option`).
#[inline(always)]
fn follow_peer(pid: u32, fd: u32, role: SocketRole, peer: SocketAddress) {
    let info =
        SocketInfo { role: role as u8, awaiting_request: 1, tls: 0, stack_taken: 0, _pad: [0; 4], peer, _pad2: [0; 4] };
    let _ = SOCKETS.insert(&SocketKey { pid, fd }, &info, 0);
}

#[inline(always)]
fn emit_connection(kind: EventKind, pid_tgid: u64, fd: u32, listen_fd_or_ret: i32, peer: SocketAddress) {
    let event = ConnectionEvent { header: header(kind, pid_tgid), fd, listen_fd_or_ret, peer, _pad: 0 };
    if EVENTS.output::<ConnectionEvent>(&event, 0).is_err() {
        count(counter::RING_FULL);
    }
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
    let peer = read_sockaddr(call.addr);
    // Unix sockets carry HTTP too (gunicorn behind a proxy); anything else is not ours.
    if !matches!(peer.family, 0 | AF_UNIX | AF_INET | AF_INET6) {
        return 0;
    }
    let (pid, _) = current_ids(pid_tgid);
    context::thread_moved_on(pid_tgid);
    follow_peer(pid, ret as u32, SocketRole::Server, peer);
    emit_connection(EventKind::SocketAccept, pid_tgid, ret as u32, call.fd as i32, peer);
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
    let peer = read_sockaddr(call.addr);
    if !matches!(peer.family, AF_INET | AF_INET6) {
        return 0;
    }
    // Non-blocking sockets (asyncio) report EINPROGRESS and finish the handshake later. Other
    // failures (a refused connection) are reported, for the failed call's span, but the
    // socket is not followed.
    let (pid, _) = current_ids(pid_tgid);
    context::thread_moved_on(pid_tgid);
    if ret == 0 || ret == -EINPROGRESS {
        follow(pid, call.fd, SocketRole::Client);
    }
    emit_connection(EventKind::SocketConnect, pid_tgid, call.fd, ret as i32, peer);
    0
}

#[tracepoint]
pub fn close_enter(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (pid, _) = current_ids(pid_tgid);
    if !is_tracked(pid) {
        return 0;
    }
    let fd = syscall_arg(&ctx, 0) as u32;
    let key = SocketKey { pid, fd };
    // SAFETY: presence check only.
    if unsafe { SOCKETS.get(&key) }.is_none() {
        return 0;
    }
    let _ = SOCKETS.remove(&key);
    context::connection_closed(pid_tgid, fd);
    let event = CloseEvent { header: header(EventKind::SocketClose, pid_tgid), fd, _pad: 0 };
    if EVENTS.output::<CloseEvent>(&event, 0).is_err() {
        count(counter::RING_FULL);
    }
    0
}
