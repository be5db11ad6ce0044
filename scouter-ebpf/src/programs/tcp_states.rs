//! TCP state changes (`sock:inet_sock_set_state`, a BTF tracepoint: it fires on connection
//! state changes only, so the rest of the host pays nothing per byte), under every capture.
//!
//! A connect in progress (`SYN_SENT`, set inside `connect()`, in the connecting thread) is
//! where a tracked process's outgoing connection is first seen with its process: it is filed
//! under its `struct sock` address for the sockops program ([`super::inject`]), which joins it
//! to the sockhash when it is established but cannot tell the process itself on every kernel
//! (6.1's sockops programs have no `bpf_get_current_pid_tgid`), and for the TCP option
//! ([`super::trace_option`]). With the socket tracepoints capture the same changes also give
//! the connections themselves: the connect, its failure (reported from softirq, for the
//! thread that connected, with the socket's error) and the process's close.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::btf_tracepoint, programs::BtfTracePointContext};
use scouter_ebpf::{capture, tracked_flags, SocketAddress};

use super::{connection, current_ids, io, sockets, trace_option};
use crate::maps::{process_flags, CONNECTING_SOCKETS};

/// TCP states (`include/net/tcp_states.h`).
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;
const TCP_CLOSE_WAIT: i32 = 8;
const EINPROGRESS: i64 = 115;

/// `inet_sock_set_state(sk, oldstate, newstate)`.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> u32 {
    let sk = ctx.arg::<u64>(0);
    let old = ctx.arg::<u64>(1) as i32;
    let new = ctx.arg::<u64>(2) as i32;
    let connections = io::capture_mode() == capture::SOCKET_TRACEPOINTS;
    match (old, new) {
        (_, TCP_SYN_SENT) => connecting(sk, connections),
        // Refused or timed out, usually in softirq: reported for the thread that connected.
        (TCP_SYN_SENT, TCP_CLOSE) => {
            // SAFETY: copied out before removal.
            let Some(owner) = (unsafe { CONNECTING_SOCKETS.get(&sk) }).copied() else { return 0 };
            let _ = CONNECTING_SOCKETS.remove(&sk);
            if connections {
                connection::failed(owner, sk, -i64::from(sockets::error(sk)), remote(sk));
            }
        }
        // The process closes (or shuts down) its end: in its own thread.
        (TCP_ESTABLISHED | TCP_CLOSE_WAIT, _) if connections => {
            let pid_tgid = bpf_get_current_pid_tgid();
            if process_flags(current_ids(pid_tgid).0).is_some() {
                connection::closed(pid_tgid, sk);
            }
        }
        _ => {}
    }
    0
}

/// Inside `connect()` of socket `sk`, in the connecting thread: a tracked process's connection
/// is filed for the sockops program (which takes it when the connection is established) and
/// the TCP option, and followed as a client when `connections` come from here.
#[inline(always)]
fn connecting(sk: u64, connections: bool) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(flags) = process_flags(current_ids(pid_tgid).0) else { return };
    let _ = CONNECTING_SOCKETS.insert(&sk, &pid_tgid, 0);
    if flags & tracked_flags::TCP_OPTION != 0 {
        trace_option::connecting(pid_tgid, sk);
    }
    if connections {
        connection::connected(pid_tgid, sk, -EINPROGRESS, remote(sk));
    }
}

/// The socket's peer.
#[inline(always)]
fn remote(sk: u64) -> SocketAddress {
    let mut local = SocketAddress::default();
    let mut peer = SocketAddress::default();
    sockets::addresses(sk, &mut local, &mut peer);
    peer
}
