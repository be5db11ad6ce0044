//! Socket I/O from the socket layer's own tracepoints, where fentry is not available but
//! they are (6.4+): `sock:sock_send_length` and `sock:sock_recv_length` fire once per socket
//! send or receive, after it, with its socket and result, and for nothing else (file and pipe
//! I/O never reach them). Attached as BTF tracepoints (raw, no perf buffer).
//!
//! They carry no buffer, but they run in the calling thread, inside its syscall: the user
//! registers the kernel saved at syscall entry say which syscall it is and where its buffer
//! is (`bpf_task_pt_regs`), as the syscall tracepoints would have. A call made some other way
//! (io_uring) is counted by length only.
//!
//! Nothing runs before a send here, so a client request's identity is decided when the send
//! returns, except where a `traceparent` is inserted: the sk_msg program, which runs inside the
//! send before the bytes are handed to TCP, decides it then and leaves it for the thread
//! ([`super::inject`]). Connections come from `sock:inet_sock_set_state` ([`super::tcp_states`]).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_probe_read_kernel, bpf_task_pt_regs},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use scouter_ebpf::{counter, Direction};

use super::{current_ids, io, sockets};
use crate::maps::{count, process_flags, BufferShape, InFlightIo, SENT_CONTEXTS};

/// `MSG_PEEK`: the bytes stay in the socket; the next receive reads them again.
const MSG_PEEK: i32 = 2;
/// x86-64 syscall numbers of the calls whose buffer is read.
mod syscall {
    pub const READ: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const READV: u64 = 19;
    pub const WRITEV: u64 = 20;
    pub const SENDTO: u64 = 44;
    pub const RECVFROM: u64 = 45;
    pub const SENDMSG: u64 = 46;
    pub const RECVMSG: u64 = 47;
}
/// Offset of `dx` in the x86-64 `struct pt_regs`; `si`, `di` and `orig_ax` follow it.
const PT_REGS_DX: u64 = 96;

/// `sock_send_length(sk, ret, flags)`.
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_sent(ctx: BtfTracePointContext) -> u32 {
    moved(&ctx, Direction::Egress)
}

/// `sock_recv_length(sk, ret, flags)`.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_received(ctx: BtfTracePointContext) -> u32 {
    moved(&ctx, Direction::Ingress)
}

#[inline(always)]
fn moved(ctx: &BtfTracePointContext, direction: Direction) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if process_flags(current_ids(pid_tgid).0).is_none() {
        return 0;
    }
    let sk = ctx.arg::<u64>(0);
    let ret = ctx.arg::<u64>(1) as i32;
    let flags = ctx.arg::<u64>(2) as i32;
    if direction == Direction::Ingress && flags & MSG_PEEK != 0 {
        return 0;
    }
    let Some(call) = io::new_call(sk, direction) else { return 0 };
    let decided = direction == Direction::Egress && taken_from_sk_msg(pid_tgid, call);
    if !sockets::is_stream(sk) {
        return 0;
    }
    let Some(socket) = sockets::followed(pid_tgid, sk) else { return 0 };
    let length = syscall_buffer(call);
    if decided && call.shape == BufferShape::Opaque as u8 {
        count(counter::CLIENT_HEAD_UNREAD);
    }
    if !decided {
        // Nothing was inserted: a request these bytes start gets its identity now.
        io::call_starts(pid_tgid, call, socket, length, false);
    }
    io::call_ends(pid_tgid, call, ret as i64);
    0
}

/// The identity the sk_msg program gave the request this send started, if it did (then it
/// also inserted its `traceparent`, and learned the socket's role).
#[inline(never)]
fn taken_from_sk_msg(pid_tgid: u64, call: &mut InFlightIo) -> bool {
    let Some(sent) = SENT_CONTEXTS.get_ptr(&pid_tgid) else { return false };
    // SAFETY: this thread's own entry, read before its removal.
    let sent = unsafe { &*sent };
    let ours = sent.socket == call.socket;
    if ours {
        call.context = sent.context;
    }
    let _ = SENT_CONTEXTS.remove(&pid_tgid);
    ours
}

/// Fills `call`'s buffer from the syscall the thread is in, as its saved registers say;
/// returns the length it was given (0: unknown).
#[inline(never)]
fn syscall_buffer(call: &mut InFlightIo) -> u64 {
    call.buf = 0;
    call.offset = 0;
    call.shape = BufferShape::Opaque as u8;
    // SAFETY: the helpers take the current task, a trusted pointer.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    // SAFETY: a kernel read through the helper: dx, si, di, orig_ax.
    let Ok([dx, si, _di, number]) = (unsafe { bpf_probe_read_kernel((regs + PT_REGS_DX) as *const [u64; 4]) }) else {
        return 0;
    };
    let shape = match number {
        syscall::READ | syscall::WRITE | syscall::SENDTO | syscall::RECVFROM => BufferShape::Plain,
        syscall::READV | syscall::WRITEV => BufferShape::IoVec,
        syscall::SENDMSG | syscall::RECVMSG => BufferShape::MsgHdr,
        _ => return 0,
    };
    call.buf = si;
    call.shape = shape as u8;
    if shape == BufferShape::Plain {
        dx
    } else {
        u64::MAX
    }
}
