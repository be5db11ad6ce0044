//! The ABI shared by Scouter's eBPF programs and the agent.
//!
//! Every type that crosses the kernel/user boundary (ring-buffer events and map keys/values) is
//! defined here, once, as `#[repr(C)]` plain data. The kernel side (`src/main.rs`, built for
//! `bpfel-unknown-none`) writes them; the agent reads them with `read_unaligned` after checking
//! [`EventHeader::kind`]. Layouts use explicit padding so both sides agree byte for byte; the
//! `layout` tests pin the sizes.
#![no_std]

/// Bytes of socket payload copied into one [`DataEvent`]. Enough for an HTTP/1.x request or
/// response head in the common case; the syscall's full byte count travels in
/// [`DataEvent::total_len`] so message framing stays exact even when the copy is cut.
pub const MAX_CAPTURE: usize = 4096;

/// Bytes of a request head the kernel copies and scans when a request starts, to find trace
/// context headers and the end of the request line. A head longer than this is followed by
/// userspace as usual but gets no kernel-side context (and nothing is inserted into it).
pub const HEAD_SCAN: usize = 2048;

/// Capacity of the map of tracked processes (one entry per process, not per thread).
pub const MAX_TRACKED_PROCESSES: u32 = 16_384;
/// Capacity of the LRU map of sockets the agent follows.
pub const MAX_TRACKED_SOCKETS: u32 = 65_536;
/// Capacity of the per-thread maps holding a syscall's arguments between enter and exit.
pub const MAX_IN_FLIGHT_SYSCALLS: u32 = 16_384;
/// Size of the events ring buffer in bytes (power of two, multiple of the page size).
pub const EVENTS_RING_BYTES: u32 = 32 * 1024 * 1024;

/// Names of the maps, as the agent looks them up in the loaded object.
pub mod map_names {
    pub const TRACKED_PROCESSES: &str = "TRACKED_PROCESSES";
    pub const EVENTS: &str = "EVENTS";
    pub const COUNTERS: &str = "COUNTERS";
    /// Sockhash of tracked processes' outgoing TCP connections, the sk_msg program's scope.
    pub const CLIENT_SOCKETS: &str = "CLIENT_SOCKETS";
    /// How to read each traced process's Python stack ([`PythonLayout`]), by tgid.
    pub const PYTHON_LAYOUTS: &str = "PYTHON_LAYOUTS";
    /// How to read each function-traced process's Python calls ([`CallLayout`]), by tgid.
    pub const CALL_LAYOUTS: &str = "CALL_LAYOUTS";
    /// Whether each code object seen entering the interpreter is selected ([`FunctionVerdict`]),
    /// by [`ObjectKey`].
    pub const CODE_VERDICTS: &str = "CODE_VERDICTS";
    /// How to read each traced process's Python objects ([`ObjectLayout`]), by tgid: the
    /// in-process SDKs' trace context is read with it.
    pub const OBJECT_LAYOUTS: &str = "OBJECT_LAYOUTS";
    /// Where each traced process's native SDK keeps its current span's ids
    /// ([`NativeSpanLayout`]), by tgid.
    pub const NATIVE_SPAN_LAYOUTS: &str = "NATIVE_SPAN_LAYOUTS";
}

/// Names of the globals the agent sets before load (`EbpfLoader::set_global`).
pub mod global_names {
    /// Offset of `child_pid` in the `sched_process_fork` tracepoint record (varies by kernel).
    pub const FORK_CHILD_PID_OFFSET: &str = "FORK_CHILD_PID_OFFSET";
    /// Offset of `group_dead` in `sched_process_exit`, or `u32::MAX` when the kernel lacks it.
    pub const EXIT_GROUP_DEAD_OFFSET: &str = "EXIT_GROUP_DEAD_OFFSET";
    /// Nanoseconds after which a request being served is too old to parent a client call.
    pub const MAX_TRANSACTION_NS: &str = "MAX_TRANSACTION_NS";
    /// Offset of `thread.fsbase` in the kernel's `task_struct` (from its BTF), or `u32::MAX`:
    /// Python stacks are then not read.
    pub const TASK_FSBASE_OFFSET: &str = "TASK_FSBASE_OFFSET";
    /// One of [`capture`](super::capture): what a socket id is, and which programs run.
    pub const CAPTURE: &str = "CAPTURE";
    /// The [`KernelLayout`](super::KernelLayout) the socket-layer programs read with.
    pub const KERNEL_LAYOUT: &str = "KERNEL_LAYOUT";
    /// 1 when sockops programs may call `bpf_get_current_pid_tgid` on this kernel (6.1's may
    /// not), else 0.
    pub const SOCKOPS_THREADS: &str = "SOCKOPS_THREADS";
}

/// Discriminant in [`EventHeader::kind`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    ProcessExec = 1,
    ProcessExit = 2,
    ProcessFork = 3,
    SocketAccept = 4,
    SocketConnect = 5,
    SocketData = 6,
    SocketClose = 7,
    PythonStack = 8,
    FunctionEntered = 9,
    FunctionReturned = 10,
    SdkSpanActivated = 11,
    /// A traced process made a span of a native SDK current and the kernel has no
    /// [`NativeSpanLayout`] for it: userspace looks for one (once per process). Header only.
    NativeSpanSeen = 12,
    /// The kernel learned a socket's role from its bytes ([`SocketFollowedEvent`]): its
    /// first request went out (client) or came in (server). Precedes that request's data.
    SocketFollowed = 13,
}

impl EventKind {
    pub fn from_u32(value: u32) -> Option<Self> {
        Some(match value {
            1 => Self::ProcessExec,
            2 => Self::ProcessExit,
            3 => Self::ProcessFork,
            4 => Self::SocketAccept,
            5 => Self::SocketConnect,
            6 => Self::SocketData,
            7 => Self::SocketClose,
            8 => Self::PythonStack,
            9 => Self::FunctionEntered,
            10 => Self::FunctionReturned,
            11 => Self::SdkSpanActivated,
            12 => Self::NativeSpanSeen,
            13 => Self::SocketFollowed,
            _ => return None,
        })
    }
}

/// First field of every event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    /// An [`EventKind`] as `u32`.
    pub kind: u32,
    /// Process id (tgid) of the task that caused the event.
    pub pid: u32,
    /// Thread id of that task.
    pub tid: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the event happened.
    pub timestamp_ns: u64,
}

/// `ProcessExec`, `ProcessExit`, `ProcessFork`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEvent {
    pub header: EventHeader,
    /// For `ProcessFork`: the new task's id (a process, or a thread the agent must untrack).
    pub child_pid: u32,
    pub _pad: u32,
}

/// Values of [`SocketAddress::family`] (Linux `AF_*`); 0 means unknown.
pub mod address_family {
    pub const UNIX: u16 = 1;
    pub const INET: u16 = 2;
    pub const INET6: u16 = 10;
}

/// A socket address as the kernel gave it, family-tagged.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketAddress {
    /// One of [`address_family`], or 0 when unknown.
    pub family: u16,
    /// Port in host byte order.
    pub port: u16,
    /// IPv4 in the first four bytes, or the IPv6 address, in network byte order.
    pub addr: [u8; 16],
}

/// `SocketAccept` (server side, syscall capture only) and `SocketConnect` (client side).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectionEvent {
    pub header: EventHeader,
    /// The connection ([`SocketKey::id`]).
    pub socket: u64,
    /// For accept: the listening socket's descriptor (its local port is the server's port).
    pub listener: u64,
    /// For connect: `connect()`'s result (0, `-EINPROGRESS`, or a failure such as
    /// `-ECONNREFUSED`: then the socket is not followed).
    pub result: i32,
    /// The peer: the client for accept, the server for connect.
    pub peer: SocketAddress,
}

/// `SocketFollowed`: a socket of a traced process whose role the kernel just learned from
/// its bytes, with both ends' addresses as the socket holds them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SocketFollowedEvent {
    pub header: EventHeader,
    pub socket: u64,
    /// A [`SocketRole`] as `u8`.
    pub role: u8,
    pub _pad: [u8; 3],
    /// The process's end (a server's listening port); family 0 when unknown.
    pub local: SocketAddress,
    /// The other end (family [`address_family::UNIX`] for a unix socket, 0 when unknown).
    pub peer: SocketAddress,
    pub _pad2: [u8; 4],
}

/// Direction of a [`DataEvent`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Bytes the process read from the socket.
    Ingress = 0,
    /// Bytes the process wrote to the socket.
    Egress = 1,
}

/// `SocketData`: one successful read- or write-family syscall on a followed socket.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DataEvent {
    pub header: EventHeader,
    /// The socket ([`SocketKey::id`]).
    pub socket: u64,
    /// A [`Direction`] as `u8`.
    pub direction: u8,
    /// [`data_flags`] bits.
    pub flags: u8,
    pub _pad: [u8; 6],
    /// Bytes the syscall moved (its return value); may exceed `captured_len`.
    pub total_len: u64,
    /// When the syscall was entered; `header.timestamp_ns` is when it returned.
    pub enter_ns: u64,
    /// Bytes of `data` that hold payload.
    pub captured_len: u32,
    pub _pad2: u32,
    /// The trace identity the kernel gave the request these bytes start, when they start one
    /// (`origin` is [`context_origin::NONE`] otherwise).
    pub context: SpanContext,
    pub data: [u8; MAX_CAPTURE],
}

/// Bits of [`DataEvent::flags`].
pub mod data_flags {
    /// The bytes are the plaintext of a TLS connection, read from the process's buffer by the
    /// libssl uprobes (`SSL_read`/`SSL_write` and their `_ex` forms) rather than at the
    /// syscall, which only carries ciphertext. Same framing rules: one event per call.
    pub const TLS: u8 = 1;
}

/// Values of [`SpanContext::origin`]: where a request's identity came from.
pub mod context_origin {
    /// No identity: the bytes do not start a request the kernel recognised.
    pub const NONE: u8 = 0;
    /// A new trace: no caller context and no request being served.
    pub const NEW_TRACE: u8 = 1;
    /// Server request carrying a `traceparent` (or Scouter headers): the parent is remote.
    pub const REMOTE_PARENT: u8 = 2;
    /// Client request made while serving a request: the parent is that server span.
    pub const LOCAL_PARENT: u8 = 3;
    /// Client request that already carried a `traceparent`: its ids are the span's own.
    pub const ADOPTED: u8 = 4;
}

/// A span's identity, decided in the kernel at the first byte of its request because the
/// `traceparent` sent downstream must carry it before userspace sees any byte. Aligned to 8
/// (every struct holding it places it there anyway) so the kernel side copies and compares its
/// ids a word at a time rather than a byte at a time, in registers it does not have.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// All zero for a root span.
    pub parent_span_id: [u8; 8],
    /// W3C trace flags (bit 0: sampled).
    pub flags: u8,
    /// One of [`context_origin`].
    pub origin: u8,
    /// Client requests: 1 when the sk_msg program inserted a `traceparent` carrying this
    /// context into the bytes sent. Always 0 over TLS, where the context travels in a TCP
    /// header option instead ([`trace_option`]), whose delivery the sender cannot know.
    pub injected: u8,
    pub _pad: [u8; 5],
}

/// `SocketClose`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CloseEvent {
    pub header: EventHeader,
    pub socket: u64,
}

/// Key of the kernel's socket map: a socket of a process. What `id` is depends on how the
/// agent captures socket I/O ([`capture`]): the kernel's `struct sock` address on the socket
/// layer, the descriptor with syscall tracepoints. Events carry the same id, and userspace
/// treats it as opaque.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SocketKey {
    pub pid: u32,
    pub _pad: u32,
    pub id: u64,
}

/// How the kernel sees socket I/O (global [`global_names::CAPTURE`]).
pub mod capture {
    /// fentry/fexit on the kernel's socket functions: only socket I/O runs a program.
    pub const SOCKET_FUNCTIONS: u32 = 1;
    /// The socket layer's own tracepoints (`sock:sock_send_length`, `sock:sock_recv_length`),
    /// where fentry is not available: only socket I/O runs a program, after the call.
    pub const SOCKET_TRACEPOINTS: u32 = 2;
    /// Tracepoints on the read/write syscall families: every such syscall on the host runs
    /// the programs. The last resort.
    pub const SYSCALLS: u32 = 3;
}

/// Where the socket-layer programs find what they read in the kernel's structures, from the
/// running kernel's BTF (the programs have no CO-RE). Offsets in bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLayout {
    /// `struct socket`: `sk`, `type`.
    pub socket_sk: u16,
    pub socket_type: u16,
    /// `struct msghdr.msg_iter`.
    pub msghdr_iter: u16,
    /// `struct iov_iter`: `iter_type` (a byte), `iov_offset`, `count`, and the union holding
    /// the user buffer (`ubuf`) or the iovec array (`__iov`, `iov` before 6.4).
    pub iter_type: u16,
    pub iter_offset: u16,
    pub iter_count: u16,
    pub iter_pointer: u16,
    /// `iter_type` values of a user buffer and of an iovec array (the enum was reordered).
    pub iter_ubuf: u8,
    pub iter_iovec: u8,
    /// `struct sock_common`: family, local port (host order), peer port (network order),
    /// IPv4 addresses, IPv6 addresses.
    pub skc_family: u16,
    pub skc_num: u16,
    pub skc_dport: u16,
    pub skc_daddr: u16,
    pub skc_rcv_saddr: u16,
    pub skc_v6_daddr: u16,
    pub skc_v6_rcv_saddr: u16,
    /// `struct file.private_data` (a socket file's `struct socket`).
    pub file_private_data: u16,
    /// `struct sock`: `sk_type` (`SOCK_STREAM`...), `sk_err` (a failed connect's error).
    pub sk_type: u16,
    pub sk_err: u16,
}

/// Role of a followed socket.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketRole {
    /// Accepted: the process serves requests on it.
    Server = 1,
    /// Connected: the process sends requests on it.
    Client = 2,
}

/// Value of the kernel's socket map (kernel-only: the agent never reads or writes it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SocketInfo {
    /// A [`SocketRole`] as `u8`, or 0 until the socket's bytes tell it: the first request-shaped
    /// bytes it moves say which end the process is (written: client; read: server). Nothing is
    /// emitted for a socket whose role is unknown.
    pub role: u8,
    /// 1 while the next bytes in the request direction may start a new request: set when the
    /// socket is followed and whenever bytes move in the response direction, cleared when a
    /// request starts. Keeps request bodies that happen to start like a method from minting ids.
    /// On a TLS socket only plaintext (libssl) calls move it, never the ciphertext syscalls.
    pub awaiting_request: u8,
    /// 1 once the socket is known to carry TLS: its first bytes in the request direction were
    /// a TLS handshake record, or a libssl call made a syscall on it. Its syscalls' bytes
    /// (ciphertext) are then not emitted; its plaintext comes from the libssl uprobes.
    pub tls: u8,
    /// 1 once a Python stack was taken for the request being served (the first body read
    /// inside it); at most one per request.
    pub stack_taken: u8,
    pub _pad: [u8; 4],
    /// Server sockets: the client's address (as `accept()` returned it, or as the socket holds
    /// it), under which the kernel files a trace context received in a TCP header option
    /// ([`trace_option`]).
    pub peer: SocketAddress,
    pub _pad2: [u8; 4],
}

/// Value of the tracked-process map; written by the agent (and by the fork program for children
/// of tracked processes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TrackedProcess {
    /// [`tracked_flags`] bits: what the kernel does for the process.
    pub flags: u32,
    pub _pad: u32,
}

/// Bits of [`TrackedProcess::flags`]. A fork child inherits its parent's.
pub mod tracked_flags {
    /// Follow its sockets (every tracked process).
    pub const SOCKETS: u32 = 1;
    /// Insert `traceparent` into its outgoing plain-HTTP requests (header insertion works here).
    pub const INSERT_TRACEPARENT: u32 = 2;
    /// Carry its TLS requests' context in a TCP header option (the option works here).
    pub const TCP_OPTION: u32 = 4;
}

/// Indices into the per-CPU `COUNTERS` array: things the kernel side had to drop.
pub mod counter {
    /// An event could not be reserved in the ring buffer (userspace too slow).
    pub const RING_FULL: u32 = 0;
    /// Reading user memory failed (payload or socket address).
    pub const READ_USER_FAILED: u32 = 1;
    /// A fork child could not be added to the tracked map (map full).
    pub const TRACKED_MAP_FULL: u32 = 2;
    /// A `traceparent` was due on an outgoing request but could not be inserted.
    pub const INJECTION_FAILED: u32 = 3;
    /// A request head was longer than [`HEAD_SCAN`](super::HEAD_SCAN) (or split across
    /// writes): no kernel-side context, nothing inserted.
    pub const HEAD_NOT_SCANNED: u32 = 4;
    /// Plaintext of a libssl call dropped because its socket was not known: the `SSL*` was
    /// never seen doing I/O on a followed TLS socket (e.g. a connection opened before the
    /// process was tracked).
    pub const TLS_SOCKET_UNKNOWN: u32 = 5;
    /// A trace context due in a TCP header option did not fit the segment's option space.
    pub const TRACE_OPTION_FAILED: u32 = 6;
    /// A Python stack was due but the thread's state could not be read (a thread Python does
    /// not know, or memory that moved).
    pub const STACK_UNREADABLE: u32 = 7;
    /// A call that found its thread's [`CALL_NESTING`](super::CALL_NESTING) open calls all
    /// selected (no span), or a tentative one pushed off them by deeper calls (its span, if
    /// its code turns out selected, is dropped).
    pub const CALL_TOO_DEEP: u32 = 8;
    /// A selected call whose return was never seen (the kernel keeps return probes for the
    /// innermost 64 native frames of a thread only): its span is dropped.
    pub const CALL_RETURN_MISSED: u32 = 9;
    /// An in-process SDK activated a trace context whose span the kernel could not read (an
    /// object laid out unlike the SDK's, or memory that moved): code under it keeps the
    /// agent's parents.
    pub const SDK_CONTEXT_UNREADABLE: u32 = 10;
    /// SDK spans nested deeper than [`SDK_NESTING`](super::SDK_NESTING) on one thread or task:
    /// the innermost is remembered in place of its parent.
    pub const SDK_TOO_DEEP: u32 = 11;
    /// Scouter's SDK (`scouter-ml`) made a span current: its span is a Rust object the kernel
    /// does not read, so code under it keeps the agent's parents and its spans stay as made.
    pub const SDK_CONTEXT_OPAQUE: u32 = 12;
    /// A request whose head left by a call with no readable buffer (`sendfile`, `splice`):
    /// no CLIENT span, though with the socket tracepoints capture its `traceparent` was
    /// inserted (the next service's span then names a parent that is not exported).
    pub const CLIENT_HEAD_UNREAD: u32 = 13;
    /// A TLS request's trace context was due in a TCP header option but its write went out
    /// without it: the connection was opened before the agent (the sockops program lets a
    /// connection carry options only from its handshake on), or the segment was built from
    /// softirq. The server starts a trace of its own.
    pub const TRACE_OPTION_UNSENT: u32 = 14;
    pub const COUNT: u32 = 15;
    /// Each counter's name in logs and metrics, by index.
    pub const NAMES: [&str; COUNT as usize] = [
        "ring_full",
        "read_failed",
        "map_full",
        "injection_failed",
        "head_not_scanned",
        "tls_socket_unknown",
        "trace_option_failed",
        "stack_unreadable",
        "call_too_deep",
        "call_return_missed",
        "sdk_context_unreadable",
        "sdk_too_deep",
        "sdk_context_opaque",
        "client_head_unread",
        "trace_option_unsent",
    ];
}

/// No such field in this interpreter version.
pub const NO_OFFSET: u16 = u16::MAX;

/// How the kernel finds and walks a process's Python frames; written by the agent once it has
/// checked the layout against the running process. Offsets are in bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PythonLayout {
    /// Where the thread's `PyThreadState *` is, from the thread pointer (FS base): glibc's
    /// `pthread_getspecific` slot of CPython's `autoTSSkey`.
    pub tstate_slot: u32,
    /// `PyThreadState` → current frame, or → `_PyCFrame` (3.11, 3.12).
    pub tstate_frame: u16,
    /// `_PyCFrame` → current frame, or [`NO_OFFSET`] when `tstate_frame` leads to the frame.
    pub cframe_frame: u16,
    pub frame_code: u16,
    pub frame_previous: u16,
    /// `f_lasti` (≤3.10, an `int`) or `prev_instr`/`instr_ptr` (3.11+, a pointer).
    pub frame_instruction: u16,
    /// `owner` (3.12+, to skip the C stack's shim frames), or [`NO_OFFSET`].
    pub frame_owner: u16,
    /// 1 when `frame_instruction` is a pointer.
    pub instruction_is_pointer: u8,
    pub _pad: [u8; 3],
}

/// `owner` of a 3.12+ frame that only marks an entry from C: it has no Python code of its own.
pub const FRAME_OWNED_BY_CSTACK: u8 = 3;

/// Frames captured per stack, innermost first. Deeper stacks are cut (the outermost frames are
/// the thread's bootstrap and the server loop; an application handler is rarely that deep).
pub const MAX_FRAMES: usize = 48;

/// One Python frame as read at an I/O event: resolved to a name, file and line in userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameRef {
    /// The code object's address.
    pub code: u64,
    /// The frame's instruction: `f_lasti` (≤3.10) or the instruction pointer (3.11+).
    pub instruction: u64,
}

/// `PythonStack`: the Python stack of the thread that just moved bytes on `socket` (a client
/// request it started, or a body it read while serving a request). Follows that data event.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StackEvent {
    pub header: EventHeader,
    pub socket: u64,
    /// Frames filled in `frames`.
    pub depth: u16,
    /// The socket's [`SocketRole`] as `u8`: a client request's write, or a server's body read.
    pub role: u8,
    pub _pad: [u8; 5],
    pub frames: [FrameRef; MAX_FRAMES],
}

/// An object of a process (asyncio task or future, `SSL*`, code object, frame), by address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    pub pid: u32,
    pub _pad: u32,
    pub address: u64,
}

/// How the kernel reads a Python call in a process whose functions are traced: which code
/// object a frame runs, its arguments, whether a generator finished, and the exception a
/// failed call left. Offsets in bytes; [`NO_OFFSET`] where a version has no such field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallLayout {
    pub frame_code: u16,
    pub frame_globals: u16,
    /// The first local slot; arguments come first.
    pub frame_localsplus: u16,
    /// `owner` (3.11+): a generator's own frame, as opposed to the one its creation runs in.
    pub frame_owner: u16,
    pub code_flags: u16,
    /// The thread state's pending exception: its type (up to 3.11) or the exception object
    /// itself (3.12+, see `exception_is_object`).
    pub tstate_exception: u16,
    /// Where, from the frame, the state that tells a finished generator is; negative on 3.11+
    /// (the generator object precedes its embedded frame).
    pub generator_state: i16,
    /// A [`generator_state`] kind.
    pub generator_state_kind: u8,
    pub exception_is_object: u8,
    /// `co_filename`, followed by `co_name`: the pair of pointers that tells a code object
    /// from an earlier one freed at the same address ([`FunctionVerdict::identity`]).
    pub code_identity: u16,
    pub _pad: [u8; 2],
}

/// How a finished generator's frame is told from a suspended one after the interpreter
/// returns from it.
pub mod generator_state {
    /// A signed byte (`f_state` on 3.10, `gi_frame_state` on 3.11+) at or above 0: a frame
    /// left without being suspended (suspended states are negative; 3.11 still says
    /// "executing", 0, when the frame returns, and marks it completed only after).
    pub const STATE_BYTE: u8 = 1;
    /// A pointer (`f_stacktop` on 3.8/3.9) that only a `yield` leaves set.
    pub const STACK_TOP: u8 = 2;
}

/// `co_flags` of code that runs as a generator, coroutine or async generator.
pub const CO_GENERATOR_LIKE: u32 = 0x20 | 0x80 | 0x200;
/// `_PyInterpreterFrame.owner` of a generator's embedded frame (3.11+).
pub const FRAME_OWNED_BY_GENERATOR: u8 = 1;

/// Arguments captured per call, at most.
pub const MAX_CAPTURED_ARGUMENTS: usize = 6;
/// Bytes copied from the start of each captured argument object: enough for a small int or
/// float and the first few dozen characters of a string.
pub const ARGUMENT_BYTES: usize = 120;
/// An unused argument slot in a [`FunctionVerdict`].
pub const NO_ARGUMENT: u8 = u8::MAX;
/// Calls open at once on one thread (selected ones, and tentative ones of code not decided
/// about yet), at most. A power of two.
pub const CALL_NESTING: usize = 32;

/// The agent's decision about one code object.
pub mod verdict {
    /// Not decided yet: the kernel reports its calls as tentative spans until it is.
    pub const PENDING: u8 = 0;
    pub const SELECTED: u8 = 1;
    pub const IGNORED: u8 = 2;
}

/// Value of [`map_names::CODE_VERDICTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FunctionVerdict {
    /// A [`verdict`] constant.
    pub verdict: u8,
    /// Local slots whose values are captured at entry, [`NO_ARGUMENT`] for none.
    pub arguments: [u8; MAX_CAPTURED_ARGUMENTS],
    pub _pad: [u8; 1],
    /// The code object's [`code_identity`] when decided: code objects are freed (a module's
    /// body, once run) and their addresses reused, and a verdict must not outlive its code.
    pub identity: u64,
}

/// Mixes a code object's `co_filename` and `co_name` pointers into one value (never 0 for a
/// live code object); a new code object at a freed one's address differs in at least one.
pub const fn code_identity(filename: u64, name: u64) -> u64 {
    filename ^ name.rotate_left(29) | 1
}

/// One argument as the kernel copied it: the object's address and its first bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CapturedArgument {
    pub object: u64,
    /// Bytes of `bytes` that were read (0: none could be).
    pub len: u32,
    /// The local slot it came from.
    pub slot: u8,
    pub _pad: [u8; 3],
    pub bytes: [u8; ARGUMENT_BYTES],
}

pub mod function_flags {
    /// The code object's verdict was pending: the agent keeps the span only if it selects it.
    pub const TENTATIVE: u8 = 1;
    /// A generator or coroutine: the span lasts until its frame finishes, across resumes.
    pub const GENERATOR: u8 = 2;
}

/// `FunctionEntered`: a selected (or not yet decided) function started.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FunctionEnteredEvent {
    pub header: EventHeader,
    pub code: u64,
    /// [`code_identity`] of the code object, to decide with.
    pub identity: u64,
    /// The frame's globals: the module's dict, whose `__name__` names the module.
    pub globals: u64,
    pub context: SpanContext,
    /// [`function_flags`].
    pub flags: u8,
    pub argument_count: u8,
    pub _pad: [u8; 6],
    pub arguments: [CapturedArgument; MAX_CAPTURED_ARGUMENTS],
}

/// `FunctionReturned`: the call (or the generator) that started the span `span_id` is over.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FunctionReturnedEvent {
    pub header: EventHeader,
    pub span_id: [u8; 8],
    /// The type of the exception that left the function, when `failed`; 0 if unreadable.
    pub exception_type: u64,
    /// One of [`call_outcome`].
    pub outcome: u8,
    pub _pad: [u8; 7],
}

/// How a call reported by `FunctionEntered` ended ([`FunctionReturnedEvent::outcome`]).
pub mod call_outcome {
    pub const RETURNED: u8 = 0;
    /// An exception left the function.
    pub const RAISED: u8 = 1;
    /// Never to be seen: a tentative call pushed off its thread's open calls by deeper ones
    /// (the first calls of a warm process fill them with undecided code). Its span is dropped
    /// like one of code not selected.
    pub const EVICTED: u8 = 2;
}

pub mod trace_option;
pub mod traceparent;

/// How the kernel reads the CPython objects behind an in-process SDK's trace context (dicts,
/// instance attributes, strings, ints), per minor version. Offsets in bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObjectLayout {
    /// `sizeof(PyASCIIObject)`: a compact ASCII string's characters follow it.
    pub ascii_data: u16,
    /// `PyHeapTypeObject.ht_cached_keys`: the keys a class's instances share.
    pub heap_type_cached_keys: u16,
    /// One of [`instance_dict`]: where an instance keeps its attributes.
    pub instance_dict: u8,
    /// 1 for 3.11+ dict keys (sizes as powers of two, two-pointer entries for string keys).
    pub compact_dict_keys: u8,
    /// 1 when an int's size is `lv_tag` (digit count shifted left by 3, 3.12+) rather than
    /// `ob_size`.
    pub long_tagged_size: u8,
    pub _pad: u8,
}

/// Where an instance of a Python class keeps its attributes.
pub mod instance_dict {
    /// 3.8–3.10: a dict at the type's `tp_dictoffset`, split (values apart from the shared
    /// keys) or combined.
    pub const AT_DICT_OFFSET: u8 = 1;
    /// 3.11: a values array 32 bytes before the object (shared keys), else a dict 24 before.
    pub const VALUES_BEFORE: u8 = 2;
    /// 3.12: one word 24 bytes before the object: values (tagged with bit 0) or a dict.
    pub const TAGGED_BEFORE: u8 = 3;
    /// 3.13: values inline after the object (`tp_basicsize`) while valid, else a dict 24
    /// bytes before.
    pub const INLINE_AFTER: u8 = 4;
}

/// Where a native (compiled) SDK keeps the ids of the span it makes current, for the one build
/// of it a process maps. Scouter's SDK (`scouter-ml`) keeps its current span as a pyo3 object
/// that points at shared state, which holds the OpenTelemetry Rust SDK's span as a trait
/// object. Rust lays such structs out as each build's compiler chose, so the offsets are known
/// per build, never guessed (the agent's `discovery::native_sdk`). Offsets in bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NativeSpanLayout {
    /// Address, in the process, of the vtable of the span type the offsets describe: ids are
    /// read only from a span whose trait object points at it. 0: no known layout, and the
    /// process's activations are counted as opaque.
    pub span_vtable: u64,
    /// In the Python object: the pointer to the span's shared state.
    pub state: u16,
    /// In the shared state: the span's data pointer.
    pub span: u16,
    /// In the shared state: the span's vtable pointer.
    pub span_vtable_at: u16,
    /// In the span: the trace id, a little-endian `u128`.
    pub trace_id: u16,
    /// In the span: the span id, a little-endian `u64`.
    pub span_id: u16,
    pub _pad: [u16; 3],
}

/// SDK spans remembered per thread or asyncio task, innermost last.
pub const SDK_NESTING: usize = 4;

/// How an SDK span activated inside the agent's current span relates to it, decided in the
/// kernel (which acts on it at once) and carried to userspace (which rewrites spans to match).
pub mod sdk_relation {
    /// The served request had started a trace of its own: it joins the SDK span's trace
    /// instead (its spans move there); the SDK span, a root, becomes its child.
    pub const JOINED: u8 = 1;
    /// The SDK span is in another trace than the agent's span, which it cannot leave (the
    /// caller's trace, or a span already made in it): the SDK's trace moves into the
    /// agent's, its root under the agent's span.
    pub const MOVED: u8 = 2;
    /// Flag: the SDK span is the served request's own SERVER span (the SDK instruments the
    /// same exchange); the request's span takes the SDK span's id and they merge.
    pub const TWIN: u8 = 4;
}

/// `SdkSpanActivated`: an in-process SDK made a span current while the agent's span was, and
/// the two were not already in one trace (or the SDK's is the request's twin).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SdkSpanEvent {
    pub header: EventHeader,
    pub sdk_trace_id: [u8; 16],
    pub sdk_span_id: [u8; 8],
    /// The agent's span current before: the served request, a function span, or an
    /// enclosing SDK span (with the trace the kernel gave it).
    pub agent_trace_id: [u8; 16],
    pub agent_span_id: [u8; 8],
    /// [`sdk_relation`] bits.
    pub relation: u8,
    pub _pad: [u8; 7],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` data with explicit padding and no pointers.
    unsafe impl aya::Pod for super::SocketKey {}
    unsafe impl aya::Pod for super::SocketInfo {}
    unsafe impl aya::Pod for super::TrackedProcess {}
    unsafe impl aya::Pod for super::PythonLayout {}
    unsafe impl aya::Pod for super::CallLayout {}
    unsafe impl aya::Pod for super::ObjectKey {}
    unsafe impl aya::Pod for super::FunctionVerdict {}
    unsafe impl aya::Pod for super::ObjectLayout {}
    unsafe impl aya::Pod for super::NativeSpanLayout {}
    unsafe impl aya::Pod for super::KernelLayout {}
}

#[cfg(test)]
mod layout {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn sizes_are_pinned() {
        assert_eq!(size_of::<EventHeader>(), 24);
        assert_eq!(size_of::<ProcessEvent>(), 32);
        assert_eq!(size_of::<SocketAddress>(), 20);
        assert_eq!(size_of::<ConnectionEvent>(), 24 + 8 + 8 + 4 + 20);
        assert_eq!(size_of::<SocketFollowedEvent>(), 24 + 8 + 4 + 20 + 20 + 4);
        assert_eq!(size_of::<SpanContext>(), 40);
        assert_eq!(size_of::<DataEvent>(), 24 + 8 + 8 + 8 + 8 + 8 + 40 + MAX_CAPTURE);
        assert_eq!(size_of::<CloseEvent>(), 32);
        assert_eq!(size_of::<SocketKey>(), 16);
        assert_eq!(size_of::<KernelLayout>(), 36);
        assert_eq!(size_of::<SocketInfo>(), 32);
        assert_eq!(size_of::<TrackedProcess>(), 8);
        assert_eq!(size_of::<PythonLayout>(), 20);
        assert_eq!(size_of::<StackEvent>(), 24 + 16 + 16 * MAX_FRAMES);
        assert_eq!(size_of::<ObjectKey>(), 16);
        assert_eq!(size_of::<CallLayout>(), 20);
        assert_eq!(size_of::<FunctionVerdict>(), 16);
        assert_eq!(size_of::<CapturedArgument>(), 16 + ARGUMENT_BYTES);
        assert_eq!(
            size_of::<FunctionEnteredEvent>(),
            24 + 24 + 40 + 8 + MAX_CAPTURED_ARGUMENTS * (16 + ARGUMENT_BYTES)
        );
        assert_eq!(size_of::<FunctionReturnedEvent>(), 24 + 8 + 8 + 8);
        assert_eq!(size_of::<ObjectLayout>(), 8);
        assert_eq!(size_of::<NativeSpanLayout>(), 24);
        assert_eq!(size_of::<SdkSpanEvent>(), 24 + 16 + 8 + 16 + 8 + 8);
    }

    #[test]
    fn event_kinds_round_trip() {
        for k in 1..=13 {
            assert_eq!(EventKind::from_u32(k).map(|k| k as u32), Some(k));
        }
        assert!(EventKind::from_u32(0).is_none());
        assert!(EventKind::from_u32(14).is_none());
    }
}
