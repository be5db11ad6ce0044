//! Connections of traced processes opened and closed, whichever way socket I/O is captured:
//! a `connect()`'s result (a refused call is a failed CLIENT span; a pending one is followed
//! as a client from then on) and a socket's close (its requests are over, its id may be
//! reused).

use aya_ebpf::helpers::{bpf_probe_read_kernel, bpf_probe_read_user};
use scouter_ebpf::address_family::{INET as AF_INET, INET6 as AF_INET6};
use scouter_ebpf::{counter, CloseEvent, ConnectionEvent, EventKind, SocketAddress, SocketRole};

use super::{context, header, io};
use crate::maps::{count, EVENTS, SOCKETS};

const EINPROGRESS: i32 = 115;
/// `sizeof(struct sockaddr_in6)`, the largest address read.
const SOCKADDR_BYTES: usize = 28;

/// A `struct sockaddr` in user memory; family 0 when absent or unreadable.
#[inline(always)]
pub fn read_user_sockaddr(ptr: u64) -> SocketAddress {
    if ptr == 0 {
        return SocketAddress::default();
    }
    // SAFETY: the helper validates the user pointer.
    match unsafe { bpf_probe_read_user(ptr as *const [u8; SOCKADDR_BYTES]) } {
        Ok(raw) => sockaddr(&raw),
        Err(_) => {
            count(counter::READ_USER_FAILED);
            SocketAddress::default()
        }
    }
}

/// A `struct sockaddr` the kernel copied from the caller; family 0 when unreadable.
#[inline(always)]
pub fn read_kernel_sockaddr(ptr: u64) -> SocketAddress {
    // SAFETY: the helper validates the kernel pointer.
    match unsafe { bpf_probe_read_kernel(ptr as *const [u8; SOCKADDR_BYTES]) } {
        Ok(raw) => sockaddr(&raw),
        Err(_) => SocketAddress::default(),
    }
}

#[inline(always)]
fn sockaddr(raw: &[u8; SOCKADDR_BYTES]) -> SocketAddress {
    let mut address = SocketAddress {
        family: u16::from_le_bytes([raw[0], raw[1]]),
        port: u16::from_be_bytes([raw[2], raw[3]]),
        addr: [0; 16],
    };
    match address.family {
        AF_INET => address.addr[..4].copy_from_slice(&raw[4..8]),
        AF_INET6 => address.addr.copy_from_slice(&raw[8..24]),
        _ => {}
    }
    address
}

/// `connect()` of socket `id` to `peer` returned `ret`: a connection that is (being)
/// established is followed as the process's client side; a failure is reported, for the
/// failed call's span, and nothing is followed.
#[inline(always)]
pub fn connected(pid_tgid: u64, id: u64, ret: i64, peer: SocketAddress) {
    if !matches!(peer.family, AF_INET | AF_INET6) {
        return;
    }
    context::thread_moved_on(pid_tgid);
    if ret == 0 || ret == -(EINPROGRESS as i64) {
        io::follow(pid_tgid, id, SocketRole::Client as u8, peer);
    }
    emit(EventKind::SocketConnect, pid_tgid, id, 0, ret as i32, peer);
}

/// `connect()` of socket `id`, made by thread `owner`, failed (reported later, possibly from
/// another context): reported as `owner`'s, and the socket is no longer followed.
#[inline(always)]
pub fn failed(owner: u64, id: u64, ret: i64, peer: SocketAddress) {
    let _ = SOCKETS.remove(&io::socket_key(owner, id));
    emit(EventKind::SocketConnect, owner, id, 0, ret as i32, peer);
}

/// Socket `id` of the current (tracked) process is being closed.
#[inline(always)]
pub fn closed(pid_tgid: u64, id: u64) {
    let key = io::socket_key(pid_tgid, id);
    // SAFETY: presence check only.
    if unsafe { SOCKETS.get(&key) }.is_none() {
        return;
    }
    let _ = SOCKETS.remove(&key);
    context::connection_closed(pid_tgid, id);
    let event = CloseEvent { header: header(EventKind::SocketClose, pid_tgid), socket: id };
    if EVENTS.output::<CloseEvent>(&event, 0).is_err() {
        count(counter::RING_FULL);
    }
}

#[inline(always)]
pub fn emit(kind: EventKind, pid_tgid: u64, socket: u64, listener: u64, result: i32, peer: SocketAddress) {
    let event = ConnectionEvent { header: header(kind, pid_tgid), socket, listener, result, peer };
    if EVENTS.output::<ConnectionEvent>(&event, 0).is_err() {
        count(counter::RING_FULL);
    }
}
