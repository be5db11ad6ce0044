//! Socket I/O on the kernel's socket layer: fentry/fexit programs (BTF trampolines) on the
//! protocol operations every way of sending and receiving ends in, so nothing else runs a
//! program: file and pipe I/O never reach these functions, and another process's socket call
//! costs one trampoline and a tracked-process lookup.
//!
//! - `inet_sendmsg`/`inet6_sendmsg`/`unix_stream_sendmsg` and their `recvmsg` twins: `write`,
//!   `send`, `sendto`, `sendmsg`, `writev` (and `read`, `recv`, ... for the twins) over TCP v4,
//!   v6 and unix stream sockets all go through the socket's `proto_ops`. These run before the
//!   protocol's own function (where a sockhash member's sk_msg program runs), so a client
//!   request's identity is decided before its bytes are handed to TCP, as at the syscall.
//! - `inet_sendpage` (kernels before 6.5): `sendfile` and `splice` to a socket. Later kernels
//!   send pages through `inet_sendmsg`. Pages are not user memory: only their length counts.
//! - `inet_stream_connect` returns: a connection's result (failures are spans), and
//!   `sock_close` entry: a socket's last close.
//!
//! A socket's id is its `struct sock` address. Sockets are followed from their first request
//! whatever the process did before (see [`super::io`]), so sockets opened before the agent
//! started are followed like new ones.
//!
//! The programs read the kernel's structures at offsets userspace took from the kernel's BTF
//! ([`KernelLayout`], a read-only global the verifier sees as constants).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel, generated},
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};
use scouter_ebpf::{
    address_family::{INET as AF_INET, INET6 as AF_INET6, UNIX as AF_UNIX},
    tracked_flags, Direction, KernelLayout, SocketAddress, SocketInfo,
};

use super::{connection, current_ids, io};
use crate::maps::{process_flags, scratch, BufferShape, InFlightIo, IN_FLIGHT_IO, IO_SCRATCH};

/// Set by the agent before load, from the running kernel's BTF.
#[unsafe(no_mangle)]
static KERNEL_LAYOUT: KernelLayout = KernelLayout {
    socket_sk: 0,
    socket_type: 0,
    msghdr_iter: 0,
    iter_type: 0,
    iter_offset: 0,
    iter_count: 0,
    iter_pointer: 0,
    iter_ubuf: 0,
    iter_iovec: 0,
    skc_family: 0,
    skc_num: 0,
    skc_dport: 0,
    skc_daddr: 0,
    skc_rcv_saddr: 0,
    skc_v6_daddr: 0,
    skc_v6_rcv_saddr: 0,
    file_private_data: 0,
    sk_type: 0,
    sk_err: 0,
};

/// `SOCK_STREAM`: the only sockets HTTP/1 is followed on.
const SOCK_STREAM: u16 = 1;
/// Bytes of `struct iov_iter` read at once: every field the programs use lies in them.
const ITER_BYTES: usize = 40;

/// A layout offset (a constant to the verifier: the global is read-only and frozen).
macro_rules! layout {
    ($field:ident) => {{
        // SAFETY: a global the agent sets before load; read volatile so it is not folded.
        #[allow(unused_unsafe)]
        let value = unsafe { core::ptr::read_volatile(&KERNEL_LAYOUT.$field) };
        value as u64
    }};
}

/// `proto_ops.sendmsg(sock, msg, size)` entry.
#[inline(always)]
fn send_starts(ctx: &FEntryContext) -> u32 {
    starts(ctx.arg::<u64>(0), ctx.arg::<u64>(1), Direction::Egress)
}

/// `proto_ops.recvmsg(sock, msg, size, flags)` entry: where the bytes will land.
#[inline(always)]
fn receive_starts(ctx: &FEntryContext) -> u32 {
    starts(ctx.arg::<u64>(0), ctx.arg::<u64>(1), Direction::Ingress)
}

/// A socket call of the current thread returned `ret`.
#[inline(always)]
fn returns(ret: u64) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(saved) = IN_FLIGHT_IO.get_ptr(&pid_tgid) else { return 0 };
    let Some(call) = scratch(&IO_SCRATCH) else { return 0 };
    // SAFETY: this thread's entry, copied before its removal.
    *call = unsafe { *saved };
    let _ = IN_FLIGHT_IO.remove(&pid_tgid);
    // The functions return an `int`.
    io::call_ends(pid_tgid, call, ret as i32 as i64);
    0
}

#[inline(always)]
fn starts(sock: u64, msg: u64, direction: Direction) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(flags) = process_flags(current_ids(pid_tgid).0) else { return 0 };
    let Some(sk) = stream_sock(sock) else { return 0 };
    let Some(socket) = followed(pid_tgid, sk) else { return 0 };
    let Some(call) = io::new_call(sk, direction) else { return 0 };
    let length = read_iterator(msg, call);
    io::call_starts(pid_tgid, call, socket, length, flags & tracked_flags::INSERT_TRACEPARENT != 0);
    let _ = IN_FLIGHT_IO.insert(&pid_tgid, call, 0);
    0
}

/// The `struct sock` of a stream socket (`sock` is its `struct socket`), `None` for other
/// sockets.
#[inline(always)]
fn stream_sock(sock: u64) -> Option<u64> {
    // SAFETY: kernel reads through the helper, at offsets from the kernel's BTF.
    let kind = unsafe { bpf_probe_read_kernel((sock + layout!(socket_type)) as *const u16) }.ok()?;
    if kind != SOCK_STREAM {
        return None;
    }
    // SAFETY: as above.
    unsafe { bpf_probe_read_kernel((sock + layout!(socket_sk)) as *const u64) }.ok().filter(|sk| *sk != 0)
}

/// Whether `sk` is a stream socket's.
#[inline(always)]
pub fn is_stream(sk: u64) -> bool {
    // SAFETY: a kernel read through the helper, at an offset from the kernel's BTF.
    unsafe { bpf_probe_read_kernel((sk + layout!(sk_type)) as *const u16) }.is_ok_and(|kind| kind == SOCK_STREAM)
}

/// The error a socket holds (`sk_err`: a failed connect's `ECONNREFUSED`, `ETIMEDOUT`...).
#[inline(always)]
pub fn error(sk: u64) -> i32 {
    // SAFETY: a kernel read through the helper, at an offset from the kernel's BTF.
    unsafe { bpf_probe_read_kernel((sk + layout!(sk_err)) as *const i32) }.unwrap_or(0)
}

/// The process's entry for stream socket `sk`, made on its first call (role unknown: its
/// bytes will tell). Not inlined: its key stays off the entry programs' frames, which go on to
/// the deepest calls.
#[inline(never)]
pub fn followed(pid_tgid: u64, sk: u64) -> Option<&'static mut SocketInfo> {
    if let Some(socket) = io::socket_info(pid_tgid, sk) {
        return Some(socket);
    }
    io::follow(pid_tgid, sk, 0, SocketAddress::default());
    io::socket_info(pid_tgid, sk)
}

/// Fills `call`'s buffer from the message's iterator; returns the bytes it offers. A user
/// buffer (`ITER_UBUF`) is read where the iterator stands; an iovec array (`ITER_IOVEC`, the
/// kernel's copy) from its first segment; anything else (pages, kernel memory) is opaque.
/// Not inlined: the iterator's copy stays off the frame of the entry programs, which go on to
/// the deepest calls.
#[inline(never)]
fn read_iterator(msg: u64, call: &mut InFlightIo) -> u64 {
    call.buf = 0;
    call.offset = 0;
    call.shape = BufferShape::Opaque as u8;
    let iterator = msg + layout!(msghdr_iter);
    // SAFETY: a kernel read through the helper.
    let Ok(words) = (unsafe { bpf_probe_read_kernel(iterator as *const [u64; ITER_BYTES / 8]) }) else { return 0 };
    let word = |offset: u64| words[(offset as usize / 8) % (ITER_BYTES / 8)];
    let kind = (word(layout!(iter_type)) >> (8 * (layout!(iter_type) % 8))) as u8;
    let offset = word(layout!(iter_offset));
    let count = word(layout!(iter_count));
    let pointer = word(layout!(iter_pointer));
    if kind == layout!(iter_ubuf) as u8 {
        call.buf = pointer.wrapping_add(offset);
        call.shape = BufferShape::Plain as u8;
    } else if kind == layout!(iter_iovec) as u8 {
        call.buf = pointer;
        call.offset = offset;
        call.shape = BufferShape::KernelIoVec as u8;
    }
    count
}

/// Both ends of socket `sk`, as the socket holds them, written into `local` and `peer`
/// (which start zeroed; the addresses are read straight into them, not through the stack).
#[inline(always)]
pub fn addresses(sk: u64, local: &mut SocketAddress, peer: &mut SocketAddress) {
    // SAFETY: kernel reads through the helper, at offsets from the kernel's BTF.
    let family = unsafe { bpf_probe_read_kernel((sk + layout!(skc_family)) as *const u16) }.unwrap_or(0);
    local.family = family;
    peer.family = family;
    if family == AF_UNIX {
        return;
    }
    // SAFETY: as above.
    local.port = unsafe { bpf_probe_read_kernel((sk + layout!(skc_num)) as *const u16) }.unwrap_or(0);
    // SAFETY: as above.
    peer.port = u16::from_be(unsafe { bpf_probe_read_kernel((sk + layout!(skc_dport)) as *const u16) }.unwrap_or(0));
    let (local_at, peer_at, len) = match family {
        AF_INET => (layout!(skc_rcv_saddr), layout!(skc_daddr), 4),
        AF_INET6 => (layout!(skc_v6_rcv_saddr), layout!(skc_v6_daddr), 16),
        _ => return,
    };
    // SAFETY: kernel reads through the helper into the destinations' address bytes; `len` is
    // 4 or 16, at most their size. A failed read leaves them zeroed (the helper clears them).
    unsafe {
        generated::bpf_probe_read_kernel(local.addr.as_mut_ptr() as *mut _, len, (sk + local_at) as *const _);
        generated::bpf_probe_read_kernel(peer.addr.as_mut_ptr() as *mut _, len, (sk + peer_at) as *const _);
    }
}

#[fentry(function = "inet_sendmsg")]
pub fn inet_sendmsg_entry(ctx: FEntryContext) -> u32 {
    send_starts(&ctx)
}

#[fexit(function = "inet_sendmsg")]
pub fn inet_sendmsg_exit(ctx: FExitContext) -> u32 {
    returns(ctx.arg::<u64>(3))
}

#[fentry(function = "inet6_sendmsg")]
pub fn inet6_sendmsg_entry(ctx: FEntryContext) -> u32 {
    send_starts(&ctx)
}

#[fexit(function = "inet6_sendmsg")]
pub fn inet6_sendmsg_exit(ctx: FExitContext) -> u32 {
    returns(ctx.arg::<u64>(3))
}

#[fentry(function = "unix_stream_sendmsg")]
pub fn unix_stream_sendmsg_entry(ctx: FEntryContext) -> u32 {
    send_starts(&ctx)
}

#[fexit(function = "unix_stream_sendmsg")]
pub fn unix_stream_sendmsg_exit(ctx: FExitContext) -> u32 {
    returns(ctx.arg::<u64>(3))
}

#[fentry(function = "inet_recvmsg")]
pub fn inet_recvmsg_entry(ctx: FEntryContext) -> u32 {
    receive_starts(&ctx)
}

#[fexit(function = "inet_recvmsg")]
pub fn inet_recvmsg_exit(ctx: FExitContext) -> u32 {
    returns(ctx.arg::<u64>(4))
}

#[fentry(function = "inet6_recvmsg")]
pub fn inet6_recvmsg_entry(ctx: FEntryContext) -> u32 {
    receive_starts(&ctx)
}

#[fexit(function = "inet6_recvmsg")]
pub fn inet6_recvmsg_exit(ctx: FExitContext) -> u32 {
    returns(ctx.arg::<u64>(4))
}

#[fentry(function = "unix_stream_recvmsg")]
pub fn unix_stream_recvmsg_entry(ctx: FEntryContext) -> u32 {
    receive_starts(&ctx)
}

#[fexit(function = "unix_stream_recvmsg")]
pub fn unix_stream_recvmsg_exit(ctx: FExitContext) -> u32 {
    returns(ctx.arg::<u64>(4))
}

/// `inet_sendpage(sock, page, offset, size, flags)` (before 6.5): the size is all there is.
#[fentry(function = "inet_sendpage")]
pub fn inet_sendpage_entry(ctx: FEntryContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if process_flags(current_ids(pid_tgid).0).is_none() {
        return 0;
    }
    let Some(sk) = stream_sock(ctx.arg::<u64>(0)) else { return 0 };
    let Some(socket) = io::socket_info(pid_tgid, sk) else { return 0 };
    let Some(call) = io::new_call(sk, Direction::Egress) else { return 0 };
    io::call_starts(pid_tgid, call, socket, 0, false);
    let _ = IN_FLIGHT_IO.insert(&pid_tgid, call, 0);
    0
}

#[fexit(function = "inet_sendpage")]
pub fn inet_sendpage_exit(ctx: FExitContext) -> u32 {
    returns(ctx.arg::<u64>(5))
}

/// `inet_stream_connect(sock, uaddr, addr_len, flags)` returned: `uaddr` is the kernel's copy.
#[fexit(function = "inet_stream_connect")]
pub fn inet_stream_connect_exit(ctx: FExitContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if process_flags(current_ids(pid_tgid).0).is_none() {
        return 0;
    }
    let Some(sk) = stream_sock(ctx.arg::<u64>(0)) else { return 0 };
    let peer = connection::read_kernel_sockaddr(ctx.arg::<u64>(1));
    connection::connected(pid_tgid, sk, ctx.arg::<u64>(4) as i32 as i64, peer);
    0
}

/// `sock_close(inode, file)`: the socket file's last reference is going.
#[fentry(function = "sock_close")]
pub fn sock_close_entry(ctx: FEntryContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if process_flags(current_ids(pid_tgid).0).is_none() {
        return 0;
    }
    let file = ctx.arg::<u64>(1);
    // SAFETY: kernel reads through the helper, at offsets from the kernel's BTF.
    let Ok(sock) = (unsafe { bpf_probe_read_kernel((file + layout!(file_private_data)) as *const u64) }) else {
        return 0;
    };
    // SAFETY: as above.
    let Ok(sk) = (unsafe { bpf_probe_read_kernel((sock + layout!(socket_sk)) as *const u64) }) else { return 0 };
    connection::closed(pid_tgid, sk);
    0
}
