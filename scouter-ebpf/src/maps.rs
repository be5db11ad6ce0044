//! Maps shared by the programs, and the kernel-only records kept between syscall enter and exit.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf, SockHash},
};
use scouter_ebpf::{
    counter, trace_option, traceparent, CallLayout, FunctionEnteredEvent, FunctionVerdict, NativeSpanLayout,
    ObjectLayout, PythonLayout, SocketAddress, SocketInfo, SocketKey, SpanContext, StackEvent, TrackedProcess,
    CALL_NESTING, EVENTS_RING_BYTES, HEAD_SCAN, MAX_IN_FLIGHT_SYSCALLS, MAX_TRACKED_PROCESSES, MAX_TRACKED_SOCKETS,
    SDK_NESTING,
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

/// How an I/O call names its buffer.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BufferShape {
    /// `buf` points at the bytes.
    Plain = 0,
    /// `buf` points at an array of `struct iovec` in user memory (the first one is captured).
    IoVec = 1,
    /// `buf` points at a `struct msghdr` in user memory (its first iovec is captured).
    MsgHdr = 2,
    /// `buf` points at an array of `struct iovec` the kernel copied (its first is captured,
    /// from `offset` on): a socket-layer call's iterator.
    KernelIoVec = 3,
    /// No user buffer (pages or kernel memory, e.g. `sendfile`): only the length is known.
    Opaque = 4,
}

/// An I/O call on a followed socket, between its entry and its return.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct InFlightIo {
    pub buf: u64,
    pub enter_ns: u64,
    /// The socket ([`SocketKey::id`]).
    pub socket: u64,
    /// Bytes of the first segment to skip ([`BufferShape::KernelIoVec`]).
    pub offset: u64,
    pub shape: u8,
    pub direction: u8,
    /// 1 when the syscall was made inside a libssl call (its bytes are that call's ciphertext).
    pub in_tls_call: u8,
    pub _pad: [u8; 5],
    /// Set at enter when a client request starts (its ids must exist before the bytes leave).
    pub context: SpanContext,
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

/// How to read each process's Python stack, by tgid; written by the agent once it has checked
/// the layout against the running process. Processes without an entry get no stacks.
#[map]
pub static PYTHON_LAYOUTS: HashMap<u32, PythonLayout> = HashMap::with_max_entries(MAX_TRACKED_PROCESSES, 0);

/// A stack being walked (one per CPU): the walk runs under `bpf_loop`, one frame per call,
/// so its verification cost does not grow with the depth.
#[repr(C)]
pub struct StackScratch {
    pub layout: PythonLayout,
    pub _pad: u32,
    /// The next frame to read; 0 once the walk is over.
    pub frame: u64,
    pub event: StackEvent,
}

#[map]
pub static STACK_SCRATCH: PerCpuArray<StackScratch> = PerCpuArray::with_max_entries(1, 0);

pub fn is_tracked(pid: u32) -> bool {
    // SAFETY: the value is only checked for presence.
    unsafe { TRACKED_PROCESSES.get(&pid).is_some() }
}

/// The [`scouter_ebpf::tracked_flags`] of `pid`, if it is tracked.
#[inline(always)]
pub fn process_flags(pid: u32) -> Option<u32> {
    // SAFETY: read in place.
    unsafe { TRACKED_PROCESSES.get(&pid) }.map(|tracked| tracked.flags)
}

/// Where a request head is copied to be scanned (one per CPU: programs do not migrate while
/// they run). Positions are written here rather than kept in registers so the verifier sees
/// one loop state, not one per combination of headers found.
#[repr(C)]
pub struct HeadScratch {
    pub bytes: [u8; HEAD_SCAN],
    /// Bytes of `bytes` holding the head's start.
    pub len: u32,
    /// Just past the request line's `\n`; 0 when not seen.
    pub line_end: u32,
    /// Just past the blank line ending the head; 0 when not seen.
    pub head_end: u32,
    /// Value offsets of the context headers, [`NOT_FOUND`] when absent.
    pub traceparent_at: u32,
    pub trace_id_at: u32,
    pub span_id_at: u32,
    pub is_sampled_at: u32,
}

pub const NOT_FOUND: u32 = u32::MAX;

#[map]
pub static HEAD_SCRATCH: PerCpuArray<HeadScratch> = PerCpuArray::with_max_entries(1, 0);

/// The request a thread is serving: what its client calls are children of.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct ServedRequest {
    pub context: SpanContext,
    pub started_ns: u64,
    /// The server socket it arrived on ([`SocketKey::id`]); its response ends the thread's
    /// service.
    pub socket: u64,
    /// 1 while the request's read is the thread's latest socket event and no other callback or
    /// task step has started since: an event loop still runs the callback that read it, so a
    /// task created or a future resolved now is the request's doing.
    pub fresh: u8,
    pub _pad: [u8; 7],
}

/// Keyed by `pid_tgid`.
#[map]
pub static SERVED_REQUESTS: LruHashMap<u64, ServedRequest> = LruHashMap::with_max_entries(MAX_IN_FLIGHT_SYSCALLS, 0);

/// The latest request started on each server socket. A task working for an earlier request
/// on the same connection that creates a task has handed the connection over (uvicorn starts
/// a keep-alive connection's next request from the task that finishes the previous one).
#[map]
pub static CONNECTION_REQUESTS: LruHashMap<SocketKey, ServedRequest> =
    LruHashMap::with_max_entries(MAX_TRACKED_SOCKETS, 0);

/// Values of [`PendingInjection::state`].
pub mod injection_state {
    /// The line waits for the sk_msg program.
    pub const READY: u8 = 1;
    /// Inserted.
    pub const DONE: u8 = 2;
    /// The sk_msg program ran and could not insert it.
    pub const FAILED: u8 = 3;
}

/// A `traceparent` line the current write must carry, set by the syscall enter program and
/// consumed by the sk_msg program that runs inside the same syscall on the same thread.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct PendingInjection {
    pub line: [u8; traceparent::LINE_LEN],
    pub state: u8,
    pub _pad: u8,
    /// Where the line goes: just after the request line.
    pub offset: u32,
}

/// Keyed by `pid_tgid`.
#[map]
pub static PENDING_INJECTIONS: LruHashMap<u64, PendingInjection> =
    LruHashMap::with_max_entries(MAX_IN_FLIGHT_SYSCALLS, 0);

/// Connections tracked processes are opening, by `struct sock` address, with the thread that
/// connects: between `connect()` (where the process is known) and the established callback
/// (where the socket can join the sockhash) or the connection's failure.
#[map]
pub static CONNECTING_SOCKETS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(MAX_IN_FLIGHT_SYSCALLS, 0);

/// Outgoing TCP connections of tracked processes, by socket cookie: the sk_msg program runs on
/// these and on nothing else.
#[map]
pub static CLIENT_SOCKETS: SockHash<u64> = SockHash::with_max_entries(MAX_TRACKED_SOCKETS, 0);

// Objects are keyed by `ObjectKey` (process and address). A task's entry is rewritten by
// every `Task.__init__` at that address, which is what makes address reuse harmless: the init
// is the generation change.
pub use scouter_ebpf::ObjectKey;

/// The request each asyncio task works for.
#[map]
pub static TASK_CONTEXTS: LruHashMap<ObjectKey, ServedRequest> = LruHashMap::with_max_entries(MAX_TRACKED_SOCKETS, 0);

/// Futures resolved by a request's callback (an aiohttp handler's waiter): the task they wake
/// works for that request from then on.
#[map]
pub static FUTURE_CONTEXTS: LruHashMap<ObjectKey, ServedRequest> =
    LruHashMap::with_max_entries(MAX_IN_FLIGHT_SYSCALLS, 0);

/// The request a `contextvars.Context` was copied for (`PyContext_CopyCurrent` while code
/// worked for it). Rewritten or removed by every copy at that address, like [`TASK_CONTEXTS`].
#[map]
pub static CONTEXT_REQUESTS: LruHashMap<ObjectKey, ServedRequest> =
    LruHashMap::with_max_entries(MAX_TRACKED_SOCKETS, 0);

/// A request's context a thread entered with `Context.run` (a pool thread running
/// `asyncio.to_thread`'s call). Only valid while the context says it is entered: there is no
/// probe on the return of `run`, which runs for every event-loop callback.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct EnteredContext {
    pub address: u64,
    pub request: ServedRequest,
}

/// Keyed by `pid_tgid`.
#[map]
pub static ENTERED_CONTEXTS: LruHashMap<u64, EnteredContext> = LruHashMap::with_max_entries(MAX_IN_FLIGHT_SYSCALLS, 0);

/// Depth of task steps remembered per thread (3.12 eager tasks step inside another's step).
pub const TASK_NESTING: usize = 4;

/// The asyncio tasks a thread is stepping, innermost last.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct RunningTasks {
    pub tasks: [u64; TASK_NESTING],
    pub depth: u32,
    pub _pad: u32,
}

/// Keyed by `pid_tgid`.
#[map]
pub static RUNNING_TASKS: LruHashMap<u64, RunningTasks> = LruHashMap::with_max_entries(MAX_IN_FLIGHT_SYSCALLS, 0);

/// No socket known yet (a libssl call whose socket is still unknown).
pub const NO_SOCKET: u64 = u64::MAX;

/// Values of [`TlsCall::kind`].
pub mod tls_call {
    /// `SSL_read`/`SSL_read_ex` or `SSL_write`/`SSL_write_ex`: plaintext moves.
    pub const DATA: u8 = 1;
    /// `SSL_do_handshake`: no plaintext, but its I/O tells the socket.
    pub const HANDSHAKE: u8 = 2;
}

/// A libssl call of a thread, between entry and return.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct TlsCall {
    /// The plaintext transfer as if it were an I/O call on the TLS socket: user buffer, entry
    /// time, socket ([`NO_SOCKET`] until known), direction, and the request's identity.
    pub io: InFlightIo,
    /// The `SSL*`.
    pub ssl: u64,
    /// `SSL_read_ex`/`SSL_write_ex`: where the byte count is written; 0 for the plain forms,
    /// which return it.
    pub count_ptr: u64,
    /// One of [`tls_call`].
    pub kind: u8,
    pub _pad: [u8; 7],
}

/// Keyed by `pid_tgid`: libssl does not call these functions from each other, so a thread is
/// in at most one of them.
#[map]
pub static TLS_CALLS: LruHashMap<u64, TlsCall> = LruHashMap::with_max_entries(MAX_IN_FLIGHT_SYSCALLS, 0);

/// The socket of each `SSL*` of a process (key: pid and the `SSL*`), learnt from the socket
/// I/O a libssl call makes, or for memory-BIO connections (asyncio) from the ciphertext read
/// that just preceded the call. Overwritten by every new piece of evidence, so an `SSL*`
/// address reused for another connection is remapped at its handshake.
#[map]
pub static TLS_SOCKETS: LruHashMap<ObjectKey, u64> = LruHashMap::with_max_entries(MAX_TRACKED_SOCKETS, 0);

/// Keyed by `pid_tgid`: the TLS socket a thread last read ciphertext from outside any libssl
/// call (an asyncio transport feeding a memory BIO). Taken by the thread's next libssl call.
#[map]
pub static TLS_LAST_READS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(MAX_IN_FLIGHT_SYSCALLS, 0);

/// Values of [`PendingTraceOption::state`].
pub mod trace_option_state {
    /// Waits for the socket's next data segment.
    pub const READY: u8 = 1;
    /// Written into a segment.
    pub const SENT: u8 = 2;
}

/// The TCP header option a TLS client request's first segment must carry, set at `SSL_write`
/// entry and written by the sockops program while the thread sends that socket's ciphertext
/// (inside the call for socket BIOs, right after it for memory BIOs).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct PendingTraceOption {
    pub option: [u8; trace_option::LEN],
    pub state: u8,
    pub _pad: [u8; 3],
    /// The TLS socket the option is for: another socket's write drops it.
    pub socket: u64,
    pub created_ns: u64,
}

/// Keyed by socket (its `struct sock` address) on the socket layer, by `pid_tgid` with syscall
/// capture (see `trace_option`).
#[map]
pub static PENDING_TRACE_OPTIONS: LruHashMap<u64, PendingTraceOption> =
    LruHashMap::with_max_entries(MAX_IN_FLIGHT_SYSCALLS, 0);

/// A TLS request's option being prepared (in `SSL_write`, a tracing program).
#[map]
pub static OPTION_SCRATCH: PerCpuArray<PendingTraceOption> = PerCpuArray::with_max_entries(1, 0);

/// The `struct sock` address of each connection a process with the TCP option opens, by its
/// socket id: noted inside `connect()` (the id is the descriptor the syscall tracepoint left in
/// [`IN_FLIGHT_CONNECTIONS`], or the socket itself on the socket layer), taken when the first
/// bytes tell whether the connection is TLS.
#[map]
pub static CLIENT_SOCKS: LruHashMap<SocketKey, u64> = LruHashMap::with_max_entries(MAX_TRACKED_SOCKETS, 0);

/// Values of [`CLIENT_TRANSPORTS`].
pub mod transport {
    pub const TLS: u8 = 1;
    pub const PLAIN: u8 = 2;
}

/// What tracked processes' outgoing connections carry, by `struct sock` address, until the
/// sockops program acts on it.
#[map]
pub static CLIENT_TRANSPORTS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(MAX_IN_FLIGHT_SYSCALLS, 0);

/// Clients of tracked servers whose connection turned out to be TLS, by the client's address,
/// until the sockops program lets the connection parse header options.
#[map]
pub static TLS_SERVER_PEERS: LruHashMap<SocketAddress, u8> = LruHashMap::with_max_entries(MAX_IN_FLIGHT_SYSCALLS, 0);

/// Contexts received in TCP header options on this host's passive connections, by the
/// client's address; taken by the server request that starts on the connection.
#[map]
pub static PEER_CONTEXTS: LruHashMap<SocketAddress, traceparent::TraceParent> =
    LruHashMap::with_max_entries(MAX_IN_FLIGHT_SYSCALLS, 0);

/// How to read calls in processes whose functions are traced, by tgid (the agent writes it
/// when it hooks a process and removes it when it lets go).
#[map]
pub static CALL_LAYOUTS: HashMap<u32, CallLayout> = HashMap::with_max_entries(MAX_TRACKED_PROCESSES, 0);

/// The agent's verdict on each code object seen entering the interpreter.
#[map]
pub static CODE_VERDICTS: LruHashMap<ObjectKey, FunctionVerdict> = LruHashMap::with_max_entries(MAX_CODE_VERDICTS, 0);

/// Code objects remembered per host. A process's code objects number in the thousands to tens
/// of thousands; one forgotten is only asked about again.
const MAX_CODE_VERDICTS: u32 = 262_144;

/// A selected call the thread is in, innermost last.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct OpenCall {
    /// The stack pointer at entry (pointing at the return address): the return, found by the
    /// stack pointer just above it, is this call's and no other's.
    pub entry_sp: u64,
    /// The frame it runs: a generator's span outlives this call.
    pub frame: u64,
    /// Its span, as the parent of what the call does (client requests, nested calls).
    pub span: ServedRequest,
    pub generator: u8,
    /// 0 for a call that must not parent what it does: one of code not decided about yet that
    /// started outside any span (a server loop's frame, entered before the request it reads).
    pub current: u8,
    /// 1 for a call of code not decided about yet: the first to give way when the thread's
    /// open calls are full.
    pub tentative: u8,
    pub _pad: [u8; 5],
}

/// A generator or coroutine started and not finished: its span, continued by every resume.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct GeneratorSpan {
    pub span: ServedRequest,
    /// Its code object: a frame address reused by another generator starts a new span.
    pub code: u64,
    pub current: u8,
    pub _pad: [u8; 7],
}

#[derive(Clone, Copy)]
#[repr(C)]
pub struct OpenCalls {
    pub depth: u32,
    pub _pad: u32,
    pub calls: [OpenCall; CALL_NESTING],
}

/// Keyed by `pid_tgid`.
#[map]
pub static OPEN_CALLS: LruHashMap<u64, OpenCalls> = LruHashMap::with_max_entries(MAX_CALLING_THREADS, 0);

/// Threads that may be inside selected calls at once.
const MAX_CALLING_THREADS: u32 = 4_096;

/// Always zero: the value a thread's [`OPEN_CALLS`] entry starts from (too large for the
/// stack).
#[map]
pub static NO_OPEN_CALLS: PerCpuArray<OpenCalls> = PerCpuArray::with_max_entries(1, 0);

/// The span of each generator or coroutine started and not finished, by its frame: every
/// resume continues it.
#[map]
pub static GENERATOR_SPANS: LruHashMap<ObjectKey, GeneratorSpan> = LruHashMap::with_max_entries(MAX_TRACKED_SOCKETS, 0);

/// The entry event under construction (too large for the stack).
#[map]
pub static CALL_SCRATCH: PerCpuArray<FunctionEnteredEvent> = PerCpuArray::with_max_entries(1, 0);

/// How to read each traced process's Python objects (in-process SDKs' trace context), by tgid.
#[map]
pub static OBJECT_LAYOUTS: HashMap<u32, ObjectLayout> = HashMap::with_max_entries(MAX_TRACKED_PROCESSES, 0);

/// Where each traced process's native SDK keeps its current span's ids, by tgid. The kernel
/// inserts an empty entry when it first sees such a span (so userspace is asked once);
/// userspace fills it when it knows the build.
#[map]
pub static NATIVE_SPAN_LAYOUTS: HashMap<u32, NativeSpanLayout> = HashMap::with_max_entries(MAX_TRACKED_PROCESSES, 0);

/// What an SDK's span is made current for: an asyncio task (each runs in a context of its
/// own) or, outside tasks, a thread.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct ExecutionUnit {
    pub pid: u32,
    /// The thread, when no task is running; else 0.
    pub tid: u32,
    /// The task's address, or 0.
    pub task: u64,
}

/// An SDK span current on a thread or task, as the kernel parents code under it.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct SdkSpan {
    /// The SDK's span id in the trace the kernel put it in (its own, the served request's it
    /// moved to, ...), and when it was made current. All-zero span id: the SDK made a context
    /// without a span current (the agent's own parents apply under it).
    pub span: ServedRequest,
    /// The trace the SDK gave it.
    pub sdk_trace_id: [u8; 16],
    /// The `Context` whose activation made it current: a reset back to an outer one pops it.
    pub context_object: u64,
    /// 1: a native SDK's span the kernel could not read (its build's layout was not known yet).
    /// Spans made current under it are left as the SDK made them too: placing them alone would
    /// split the SDK's trace around it.
    pub opaque: u8,
    pub _pad: [u8; 7],
}

/// The SDK spans current on a unit, innermost last.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct SdkSpans {
    pub spans: [SdkSpan; SDK_NESTING],
    pub depth: u32,
    pub _pad: u32,
}

#[map]
pub static SDK_SPANS: LruHashMap<ExecutionUnit, SdkSpans> = LruHashMap::with_max_entries(MAX_TRACKED_SOCKETS, 0);

/// A unit's first SDK span is written here before it is inserted (the record is too large
/// for the stack next to the reads that find the span).
#[map]
pub static SDK_SCRATCH: PerCpuArray<SdkSpans> = PerCpuArray::with_max_entries(1, 0);

// Working memory of the tracing programs (tracepoints, uprobes, fentry/fexit): values too
// large for their 512-byte stack, one of each per CPU. Tracing programs do not nest on a CPU
// (the kernel skips a program that would run inside another), and no sockops or sk_msg
// program (which may run in softirq, inside a tracing one) touches these. Each is owned by one
// step of a program's work at a time: the step that takes it fills it before reading it.

/// The I/O a program is handling: copied here from [`IN_FLIGHT_IO`] or built for it.
#[map]
pub static IO_SCRATCH: PerCpuArray<InFlightIo> = PerCpuArray::with_max_entries(1, 0);

/// A libssl call being handled, copied here from [`TLS_CALLS`] or built for it.
#[map]
pub static TLS_SCRATCH: PerCpuArray<TlsCall> = PerCpuArray::with_max_entries(1, 0);

/// The parent a new span is given (see `programs::context::find_parent`).
#[map]
pub static PARENT_SCRATCH: PerCpuArray<ServedRequest> = PerCpuArray::with_max_entries(1, 0);

/// A served request being recorded, or a task's or context's request being passed on.
#[map]
pub static SERVED_SCRATCH: PerCpuArray<ServedRequest> = PerCpuArray::with_max_entries(1, 0);

/// A search of a thread's open calls by `bpf_loop` callbacks (see `python_call`): the thread,
/// how deep its stack is, and the index found (the first index to overwrite, for a shift).
#[repr(C)]
pub struct CallSearch {
    pub pid_tgid: u64,
    pub depth: u64,
    pub found: u64,
}

#[map]
pub static CALL_SEARCH: PerCpuArray<CallSearch> = PerCpuArray::with_max_entries(1, 0);

/// A function span being started.
#[map]
pub static SPAN_SCRATCH: PerCpuArray<ServedRequest> = PerCpuArray::with_max_entries(1, 0);

/// A generator's span being recorded.
#[map]
pub static GENERATOR_SCRATCH: PerCpuArray<GeneratorSpan> = PerCpuArray::with_max_entries(1, 0);

/// The identity the sk_msg program gave a request a thread is sending (socket tracepoints:
/// nothing else runs before the bytes leave), for the send's tracepoint to take.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct SentContext {
    pub socket: u64,
    pub context: SpanContext,
}

/// Keyed by `pid_tgid`.
#[map]
pub static SENT_CONTEXTS: LruHashMap<u64, SentContext> = LruHashMap::with_max_entries(MAX_IN_FLIGHT_SYSCALLS, 0);

/// A [`SentContext`] being decided.
#[map]
pub static SENT_SCRATCH: PerCpuArray<SentContext> = PerCpuArray::with_max_entries(1, 0);

/// A context a thread entered, being recorded.
#[map]
pub static ENTERED_SCRATCH: PerCpuArray<EnteredContext> = PerCpuArray::with_max_entries(1, 0);

/// A `traceparent` line being prepared for the sk_msg program.
#[map]
pub static PENDING_SCRATCH: PerCpuArray<PendingInjection> = PerCpuArray::with_max_entries(1, 0);

/// A caller's context, read from a request head.
#[map]
pub static REMOTE_SCRATCH: PerCpuArray<traceparent::TraceParent> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's instance of a scratch value.
#[inline(always)]
pub fn scratch<T>(map: &'static PerCpuArray<T>) -> Option<&'static mut T> {
    // SAFETY: a per-CPU slot, owned by the running program (see above).
    map.get_ptr_mut(0).map(|slot| unsafe { &mut *slot })
}
