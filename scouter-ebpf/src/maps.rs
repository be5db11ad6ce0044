//! Maps shared by the programs, and the kernel-only records kept between syscall enter and exit.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use scouter_ebpf::{
    counter, SocketInfo, SocketKey, TrackedProcess, EVENTS_RING_BYTES, MAX_IN_FLIGHT_SYSCALLS, MAX_TRACKED_PROCESSES,
    MAX_TRACKED_SOCKETS,
};

/// Processes the agent traces, by tgid. Filled by the agent and by `sched_process_fork`.
#[map]
pub static TRACKED_PROCESSES: HashMap<u32, TrackedProcess> = HashMap::with_max_entries(MAX_TRACKED_PROCESSES, 0);

/// Sockets followed in tracked processes. LRU because a process may die without closing them.
#[map]
pub static SOCKETS: LruHashMap<SocketKey, SocketInfo> = LruHashMap::with_max_entries(MAX_TRACKED_SOCKETS, 0);

/// Events for the agent.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// Drop counters, indexed by `scouter_ebpf::counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// How a read/write syscall names its buffer.
#[derive(Clone, Copy)]
#[repr(u8)]
pub enum BufferShape {
    /// `buf` points at the bytes.
    Plain = 0,
    /// `buf` points at an array of `struct iovec` (the first one is captured).
    IoVec = 1,
    /// `buf` points at a `struct msghdr` (its first iovec is captured).
    MsgHdr = 2,
}

/// A read/write syscall on a followed socket, between enter and exit.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct InFlightIo {
    pub buf: u64,
    pub enter_ns: u64,
    pub fd: u32,
    pub shape: u8,
    pub direction: u8,
    pub _pad: [u8; 2],
}

/// An accept or connect syscall of a tracked process, between enter and exit.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct InFlightConnection {
    /// accept: the peer address buffer (filled by the kernel); connect: the address given.
    pub addr: u64,
    /// accept: the listening descriptor; connect: the connecting descriptor.
    pub fd: u32,
    pub _pad: u32,
}

/// Keyed by `pid_tgid`: a thread is in at most one syscall at a time.
#[map]
pub static IN_FLIGHT_IO: LruHashMap<u64, InFlightIo> = LruHashMap::with_max_entries(MAX_IN_FLIGHT_SYSCALLS, 0);

#[map]
pub static IN_FLIGHT_CONNECTIONS: LruHashMap<u64, InFlightConnection> =
    LruHashMap::with_max_entries(MAX_IN_FLIGHT_SYSCALLS, 0);

pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}

pub fn is_tracked(pid: u32) -> bool {
    // SAFETY: the value is only checked for presence.
    unsafe { TRACKED_PROCESSES.get(&pid).is_some() }
}
