//! Bytes moved on followed sockets. One enter program per (buffer shape, direction), one exit
//! program for all: the agent attaches each to every syscall of its family.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, generated},
    macros::tracepoint,
    programs::TracePointContext,
};
use scouter_ebpf::{counter, DataEvent, Direction, EventKind, SocketKey, MAX_CAPTURE};

use super::{current_ids, header, syscall_arg, syscall_ret};
use crate::maps::{count, is_tracked, BufferShape, InFlightIo, EVENTS, IN_FLIGHT_IO, SOCKETS};

/// `struct msghdr.msg_iov` offset (after `msg_name` and `msg_namelen` + padding).
const MSGHDR_IOV_OFFSET: u64 = 16;

#[inline(always)]
fn enter(ctx: &TracePointContext, shape: BufferShape, direction: Direction) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (pid, _) = current_ids(pid_tgid);
    if !is_tracked(pid) {
        return 0;
    }
    let fd = syscall_arg(ctx, 0) as u32;
    // SAFETY: presence check only.
    if unsafe { SOCKETS.get(&SocketKey { pid, fd }) }.is_none() {
        return 0;
    }
    let call = InFlightIo {
        buf: syscall_arg(ctx, 1),
        // SAFETY: helper with no preconditions.
        enter_ns: unsafe { bpf_ktime_get_ns() },
        fd,
        shape: shape as u8,
        direction: direction as u8,
        _pad: [0; 2],
    };
    let _ = IN_FLIGHT_IO.insert(&pid_tgid, &call, 0);
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

/// The user buffer holding the first bytes moved, and how many of them it holds.
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
    // SAFETY: copied out before removal.
    let Some(call) = (unsafe { IN_FLIGHT_IO.get(&pid_tgid) }).copied() else { return 0 };
    let _ = IN_FLIGHT_IO.remove(&pid_tgid);
    let ret = syscall_ret(&ctx);
    if ret <= 0 {
        return 0;
    }
    emit_data(&call, pid_tgid, ret as u64);
    0
}

#[inline(always)]
fn emit_data(call: &InFlightIo, pid_tgid: u64, moved: u64) {
    let Some(mut entry) = EVENTS.reserve::<DataEvent>(0) else {
        count(counter::RING_FULL);
        return;
    };
    let event = entry.as_mut_ptr();
    let captured = match first_segment(call, moved) {
        Some((src, available)) => copy_payload(event, src, available),
        None => {
            count(counter::READ_USER_FAILED);
            0
        }
    };
    // SAFETY: `event` points at a reserved, exclusively owned ring-buffer record.
    unsafe {
        (*event).header = header(EventKind::SocketData, pid_tgid);
        (*event).fd = call.fd;
        (*event).direction = call.direction;
        (*event)._pad = [0; 3];
        (*event).total_len = moved;
        (*event).enter_ns = call.enter_ns;
        (*event).captured_len = captured;
        (*event)._pad2 = 0;
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
