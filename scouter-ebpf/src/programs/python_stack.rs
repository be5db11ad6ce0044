//! Python stacks, read from the interpreter's memory at the I/O events that tell which code
//! works for a request: a client request's first write, and the first body read of a request
//! being served. Read here, in the kernel, because by the time userspace sees the event the
//! thread's stack has moved on.
//!
//! The walk: the thread pointer (`task_struct.thread.fsbase`, offset from the kernel's BTF) →
//! glibc's thread-specific slot of CPython's `autoTSSkey` → `PyThreadState` → current frame
//! (through `_PyCFrame` on 3.11/3.12) → `previous`/`f_back` links. Each frame is kept as its
//! code object's address and instruction position; userspace turns those into names, files and
//! lines ([`PythonLayout`] says where the fields are for the process's version). Only processes
//! whose layout the agent has checked have an entry in [`PYTHON_LAYOUTS`].
//!
//! The I/O programs call [`capture`] after emitting the event the stack belongs to: a
//! subprogram of its own (its frame is not theirs), run only for tracked threads whose
//! process's layout the agent has checked.

use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_user, generated};
use scouter_ebpf::{
    counter, EventKind, PythonLayout, SocketRole, StackEvent, FRAME_OWNED_BY_CSTACK, MAX_FRAMES, NO_OFFSET,
};

use super::{current_ids, header};
use crate::maps::{count, EVENTS, PYTHON_LAYOUTS, STACK_SCRATCH};

/// Set by the agent before load; `u32::MAX` leaves stacks unread.
#[no_mangle]
static TASK_FSBASE_OFFSET: u32 = u32::MAX;

/// Reads the current thread's Python stack for the bytes it just moved on `socket` (in the
/// `role` the socket has there) and emits it, when the process's stacks are read at all.
#[inline(never)]
pub fn capture(pid_tgid: u64, socket: u64, role: SocketRole) {
    // SAFETY: copied out.
    let Some(layout) = (unsafe { PYTHON_LAYOUTS.get(&current_ids(pid_tgid).0) }).copied() else { return };
    let Some(frame) = current_frame(&layout) else {
        count(counter::STACK_UNREADABLE);
        return;
    };
    let Some(scratch) = STACK_SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's scratch; nothing else runs here until the event is out.
    let scratch = unsafe { &mut *scratch };
    scratch.layout = layout;
    scratch.frame = frame;
    scratch.event.header = header(EventKind::PythonStack, pid_tgid);
    scratch.event.socket = socket;
    scratch.event.role = role as u8;
    scratch.event._pad = [0; 5];
    scratch.event.depth = 0;
    // SAFETY: the callback only touches the per-CPU scratch.
    unsafe { generated::bpf_loop(MAX_FRAMES as u32 * 2, walk_one as *mut c_void, core::ptr::null_mut(), 0) };
    if EVENTS.output::<StackEvent>(&scratch.event, 0).is_err() {
        count(counter::RING_FULL);
    }
}

/// `bpf_loop` callback: reads the scratch's next frame; returns 1 when the walk is over.
/// Shim frames take an iteration without filling a slot, hence twice as many iterations as
/// slots at most.
#[inline(never)]
extern "C" fn walk_one(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(scratch) = STACK_SCRATCH.get_ptr_mut(0) else { return 1 };
    // SAFETY: this CPU's scratch, owned by the running capture.
    let scratch = unsafe { &mut *scratch };
    let frame = scratch.frame;
    let layout = scratch.layout;
    if frame == 0 {
        return 1;
    }
    if !is_shim(&layout, frame) {
        let depth = scratch.event.depth as usize;
        let Some(code) = read_pointer(frame + layout.frame_code as u64) else { return 1 };
        let Some(slot) = scratch.event.frames.get_mut(depth) else { return 1 };
        slot.code = code;
        slot.instruction = instruction(&layout, frame);
        scratch.event.depth += 1;
    }
    match read_u64(frame + layout.frame_previous as u64) {
        Some(previous) => {
            scratch.frame = previous;
            0
        }
        None => 1,
    }
}

/// The thread's innermost frame, if the thread has a Python thread state with one.
#[inline(always)]
fn current_frame(layout: &PythonLayout) -> Option<u64> {
    let tstate = thread_state(layout)?;
    let mut frame = read_pointer(tstate + layout.tstate_frame as u64)?;
    if layout.cframe_frame != NO_OFFSET {
        frame = read_pointer(frame + layout.cframe_frame as u64)?;
    }
    Some(frame)
}

/// The current thread's `PyThreadState`, through its thread pointer and glibc's
/// thread-specific slot of `autoTSSkey`.
#[inline(always)]
pub fn thread_state(layout: &PythonLayout) -> Option<u64> {
    // SAFETY: a global the agent may set before load; read volatile so it is not folded.
    let fsbase_offset = unsafe { core::ptr::read_volatile(&TASK_FSBASE_OFFSET) };
    if fsbase_offset == u32::MAX {
        return None;
    }
    // SAFETY: the helper returns the current task; reading through it uses the checked helper.
    let task = unsafe { bpf_get_current_task() };
    // SAFETY: a kernel read through the helper at an offset taken from the kernel's BTF.
    let thread_pointer = unsafe { bpf_probe_read_kernel((task + fsbase_offset as u64) as *const u64) }.ok()?;
    read_pointer(thread_pointer + layout.tstate_slot as u64)
}

/// 3.12+ marks where C entered the interpreter with a frame that has no code of its own.
#[inline(always)]
fn is_shim(layout: &PythonLayout, frame: u64) -> bool {
    if layout.frame_owner == NO_OFFSET {
        return false;
    }
    // SAFETY: a read of the process's memory through the helper.
    unsafe { bpf_probe_read_user((frame + layout.frame_owner as u64) as *const u8) }
        .is_ok_and(|owner| owner == FRAME_OWNED_BY_CSTACK)
}

#[inline(always)]
fn instruction(layout: &PythonLayout, frame: u64) -> u64 {
    let at = frame + layout.frame_instruction as u64;
    if layout.instruction_is_pointer != 0 {
        return read_u64(at).unwrap_or(0);
    }
    // SAFETY: a read of the process's memory through the helper.
    unsafe { bpf_probe_read_user(at as *const i32) }.map(|lasti| lasti as u32 as u64).unwrap_or(0)
}

/// A non-null pointer read from the process.
#[inline(always)]
pub fn read_pointer(at: u64) -> Option<u64> {
    read_u64(at).filter(|value| *value != 0)
}

#[inline(always)]
pub fn read_u64(at: u64) -> Option<u64> {
    // SAFETY: a read of the process's memory through the helper; failures are returned.
    unsafe { bpf_probe_read_user(at as *const u64) }.ok()
}
