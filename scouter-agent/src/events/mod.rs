//! Kernel events: decoded from the ring buffer's raw records into typed values, with kernel
//! monotonic timestamps turned into wall-clock time.
//!
//! Decoding checks the kind and the record's length before reading it, so a short or unknown
//! record is counted and dropped, never misread.

mod clock;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ptr;

use scouter_ebpf::{
    call_outcome, context_origin, data_flags, function_flags, sdk_relation, CloseEvent, ConnectionEvent, DataEvent,
    Direction, EventHeader, EventKind, FrameRef, FunctionEnteredEvent, FunctionReturnedEvent, ProcessEvent,
    SdkSpanEvent, SocketAddress, SocketFollowedEvent, SocketRole, SpanContext, StackEvent, ARGUMENT_BYTES, MAX_CAPTURE,
    MAX_CAPTURED_ARGUMENTS, MAX_FRAMES,
};

pub use clock::WallClock;

/// A socket of a process: the unit connection state is kept per. `id` is opaque (the
/// kernel's socket address on the socket-layer capture, the descriptor on the syscall one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId {
    pub pid: u32,
    pub id: u64,
}

/// A peer as userspace reasons about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Ip { addr: IpAddr, port: u16 },
    Unix,
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelEvent {
    ProcessExec {
        pid: u32,
    },
    ProcessExit {
        pid: u32,
    },
    ProcessFork {
        parent: u32,
        child: u32,
    },
    /// The syscall capture saw `accept()`: `listener` is the listening descriptor.
    Accepted {
        socket: SocketId,
        listener: u64,
        peer: Peer,
        time: u64,
    },
    /// The kernel learned the socket's role from its first request, and reads its ends'
    /// addresses (unknown on the syscall capture: `Peer::Unknown`, no local port).
    Followed {
        socket: SocketId,
        server: bool,
        peer: Peer,
        local_port: Option<u16>,
        time: u64,
    },
    /// `result` is `connect()`'s return value: 0, `-EINPROGRESS` (the handshake goes on), or a
    /// failure (the socket is not followed).
    Connected {
        socket: SocketId,
        peer: Peer,
        time: u64,
        result: i32,
    },
    Data(DataChunk),
    /// The Python stack of the thread that just started a client request on `socket`
    /// (`server` false) or read the body of the request it serves there (`server` true).
    Stack {
        socket: SocketId,
        server: bool,
        /// Innermost first.
        frames: Vec<FrameRef>,
    },
    Closed {
        socket: SocketId,
        time: u64,
    },
    FunctionEntered(FunctionEntry),
    /// The call or generator of span `span_id` is over.
    FunctionReturned {
        pid: u32,
        span_id: [u8; 8],
        time: u64,
        outcome: CallOutcome,
    },
    SdkSpanActivated(SdkActivation),
    /// The process made a native SDK's span current and the kernel has no layout for it yet.
    NativeSpanSeen {
        pid: u32,
    },
}

/// An in-process SDK made a span current while the agent's span was, and the kernel placed it
/// (see `scouter-ebpf/src/programs/sdk_context.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SdkActivation {
    pub pid: u32,
    pub sdk_trace_id: [u8; 16],
    pub sdk_span_id: [u8; 8],
    /// The agent's span that was current (a served request, a function span, or an enclosing
    /// SDK span in the trace the kernel gave it).
    pub agent_trace_id: [u8; 16],
    pub agent_span_id: [u8; 8],
    pub placement: SdkPlacement,
    /// The SDK span is the served request's own SERVER span.
    pub twin: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SdkPlacement {
    /// Already in the agent's trace.
    SameTrace,
    /// The served request joined the SDK span's trace.
    Joined,
    /// The SDK span's trace moved into the agent's.
    Moved,
}

/// How a call the kernel reported ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    Returned,
    /// An exception left it: the exception's type object (0 if unreadable).
    Raised {
        exception_type: u64,
    },
    /// A tentative call the kernel stopped following (its thread's open calls were full):
    /// its end will never be seen.
    Evicted,
}

/// A selected (or not yet decided) Python function started running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionEntry {
    pub pid: u32,
    pub tid: u32,
    pub time: u64,
    pub code: u64,
    /// Tells this code object from an earlier one at the same address.
    pub identity: u64,
    pub globals: u64,
    pub context: SpanContext,
    /// The agent had not decided about the code object: the span is kept only if selected.
    pub tentative: bool,
    pub generator: bool,
    pub arguments: Vec<RawArgument>,
}

/// An argument object as the kernel copied it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawArgument {
    pub slot: u8,
    pub object: u64,
    /// The object's first bytes (as many as could be read).
    pub bytes: Vec<u8>,
}

/// Bytes one syscall moved on a followed socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataChunk {
    pub socket: SocketId,
    pub tid: u32,
    pub direction: Direction,
    /// Wall-clock ns when the syscall was entered and when it returned.
    pub enter_time: u64,
    pub time: u64,
    /// Bytes the syscall moved; `bytes` holds at most the first `MAX_CAPTURE` of them.
    pub total_len: u64,
    pub bytes: Vec<u8>,
    /// The identity the kernel gave the request these bytes start, if they start one.
    pub context: Option<SpanContext>,
    /// The bytes are a TLS connection's plaintext (from the libssl uprobes).
    pub tls: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than an event header")]
    TooShort(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("{kind:?} record of {len} bytes, expected at least {expected}")]
    Truncated { kind: EventKind, len: usize, expected: usize },
    #[error("data record claims {0} captured bytes")]
    BadCaptureLength(u32),
    #[error("stack record claims {0} frames")]
    BadStackDepth(u16),
    #[error("function record claims {0} arguments")]
    BadArgumentCount(u8),
    #[error("function end record with unknown outcome {0}")]
    UnknownCallOutcome(u8),
    #[error("SDK span record with unknown relation {0}")]
    UnknownSdkRelation(u8),
}

/// Decodes one ring-buffer record.
pub fn decode(record: &[u8], clock: &WallClock) -> Result<KernelEvent, DecodeError> {
    let header: EventHeader = read_record(record, None)?;
    let kind = EventKind::from_u32(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
    let socket = |id: u64| SocketId { pid: header.pid, id };
    let time = clock.to_unix_nanos(header.timestamp_ns);
    Ok(match kind {
        EventKind::ProcessExec => KernelEvent::ProcessExec { pid: header.pid },
        EventKind::ProcessExit => KernelEvent::ProcessExit { pid: header.pid },
        EventKind::ProcessFork => {
            let event: ProcessEvent = read_record(record, Some(kind))?;
            KernelEvent::ProcessFork { parent: header.pid, child: event.child_pid }
        }
        EventKind::SocketAccept => {
            let event: ConnectionEvent = read_record(record, Some(kind))?;
            KernelEvent::Accepted {
                socket: socket(event.socket),
                listener: event.listener,
                peer: peer(&event.peer),
                time,
            }
        }
        EventKind::SocketConnect => {
            let event: ConnectionEvent = read_record(record, Some(kind))?;
            KernelEvent::Connected { socket: socket(event.socket), peer: peer(&event.peer), time, result: event.result }
        }
        EventKind::SocketFollowed => {
            let event: SocketFollowedEvent = read_record(record, Some(kind))?;
            let local_port = matches!(peer(&event.local), Peer::Ip { .. }).then_some(event.local.port);
            KernelEvent::Followed {
                socket: socket(event.socket),
                server: event.role == SocketRole::Server as u8,
                peer: peer(&event.peer),
                local_port,
                time,
            }
        }
        EventKind::SocketData => decode_data(record, &header, clock)?,
        EventKind::SocketClose => {
            let event: CloseEvent = read_record(record, Some(kind))?;
            KernelEvent::Closed { socket: socket(event.socket), time }
        }
        EventKind::PythonStack => {
            let event: StackEvent = read_record(record, Some(kind))?;
            let depth = event.depth as usize;
            if depth > MAX_FRAMES {
                return Err(DecodeError::BadStackDepth(event.depth));
            }
            KernelEvent::Stack {
                socket: socket(event.socket),
                server: event.role == SocketRole::Server as u8,
                frames: event.frames[..depth].to_vec(),
            }
        }
        EventKind::FunctionEntered => decode_function_entry(record, &header, clock)?,
        EventKind::FunctionReturned => {
            let event: FunctionReturnedEvent = read_record(record, Some(kind))?;
            KernelEvent::FunctionReturned {
                pid: header.pid,
                span_id: event.span_id,
                time,
                outcome: match event.outcome {
                    call_outcome::RETURNED => CallOutcome::Returned,
                    call_outcome::RAISED => CallOutcome::Raised { exception_type: event.exception_type },
                    call_outcome::EVICTED => CallOutcome::Evicted,
                    other => return Err(DecodeError::UnknownCallOutcome(other)),
                },
            }
        }
        EventKind::SdkSpanActivated => {
            let event: SdkSpanEvent = read_record(record, Some(kind))?;
            KernelEvent::SdkSpanActivated(sdk_activation(header.pid, &event)?)
        }
        EventKind::NativeSpanSeen => KernelEvent::NativeSpanSeen { pid: header.pid },
    })
}

fn sdk_activation(pid: u32, event: &SdkSpanEvent) -> Result<SdkActivation, DecodeError> {
    let twin = event.relation & sdk_relation::TWIN != 0;
    let placement = match event.relation & !sdk_relation::TWIN {
        0 if twin => SdkPlacement::SameTrace,
        sdk_relation::JOINED => SdkPlacement::Joined,
        sdk_relation::MOVED => SdkPlacement::Moved,
        _ => return Err(DecodeError::UnknownSdkRelation(event.relation)),
    };
    Ok(SdkActivation {
        pid,
        sdk_trace_id: event.sdk_trace_id,
        sdk_span_id: event.sdk_span_id,
        agent_trace_id: event.agent_trace_id,
        agent_span_id: event.agent_span_id,
        placement,
        twin,
    })
}

fn decode_function_entry(record: &[u8], header: &EventHeader, clock: &WallClock) -> Result<KernelEvent, DecodeError> {
    let event: FunctionEnteredEvent = read_record(record, Some(EventKind::FunctionEntered))?;
    let count = event.argument_count as usize;
    if count > MAX_CAPTURED_ARGUMENTS {
        return Err(DecodeError::BadArgumentCount(event.argument_count));
    }
    let arguments = event.arguments[..count]
        .iter()
        .filter(|argument| argument.object != 0)
        .map(|argument| RawArgument {
            slot: argument.slot,
            object: argument.object,
            bytes: argument.bytes[..(argument.len as usize).min(ARGUMENT_BYTES)].to_vec(),
        })
        .collect();
    Ok(KernelEvent::FunctionEntered(FunctionEntry {
        pid: header.pid,
        tid: header.tid,
        time: clock.to_unix_nanos(header.timestamp_ns),
        code: event.code,
        identity: event.identity,
        globals: event.globals,
        context: event.context,
        tentative: event.flags & function_flags::TENTATIVE != 0,
        generator: event.flags & function_flags::GENERATOR != 0,
        arguments,
    }))
}

fn decode_data(record: &[u8], header: &EventHeader, clock: &WallClock) -> Result<KernelEvent, DecodeError> {
    let event: DataEvent = read_record(record, Some(EventKind::SocketData))?;
    let captured = event.captured_len as usize;
    if captured > MAX_CAPTURE || captured as u64 > event.total_len {
        return Err(DecodeError::BadCaptureLength(event.captured_len));
    }
    let direction = if event.direction == Direction::Egress as u8 { Direction::Egress } else { Direction::Ingress };
    Ok(KernelEvent::Data(DataChunk {
        socket: SocketId { pid: header.pid, id: event.socket },
        tid: header.tid,
        direction,
        enter_time: clock.to_unix_nanos(event.enter_ns),
        time: clock.to_unix_nanos(header.timestamp_ns),
        total_len: event.total_len,
        bytes: event.data[..captured].to_vec(),
        context: (event.context.origin != context_origin::NONE).then_some(event.context),
        tls: event.flags & data_flags::TLS != 0,
    }))
}

/// Copies a `#[repr(C)]` record out of the buffer after checking its length.
fn read_record<T: Copy>(record: &[u8], kind: Option<EventKind>) -> Result<T, DecodeError> {
    let expected = std::mem::size_of::<T>();
    if record.len() < expected {
        return Err(match kind {
            None => DecodeError::TooShort(record.len()),
            Some(kind) => DecodeError::Truncated { kind, len: record.len(), expected },
        });
    }
    // SAFETY: length checked above; T is plain data valid for any bit pattern (ABI types only).
    Ok(unsafe { ptr::read_unaligned(record.as_ptr().cast::<T>()) })
}

fn peer(address: &SocketAddress) -> Peer {
    use scouter_ebpf::address_family::{INET as AF_INET, INET6 as AF_INET6, UNIX as AF_UNIX};
    match address.family {
        AF_INET => {
            let [a, b, c, d, ..] = address.addr;
            Peer::Ip { addr: IpAddr::V4(Ipv4Addr::new(a, b, c, d)), port: address.port }
        }
        AF_INET6 => {
            let v6 = Ipv6Addr::from(address.addr);
            // Dual-stack listeners see IPv4 clients as ::ffff:a.b.c.d; report them as IPv4.
            let addr = v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4);
            Peer::Ip { addr, port: address.port }
        }
        AF_UNIX => Peer::Unix,
        _ => Peer::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(value: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain-data value for the test.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>()) }.to_vec()
    }

    fn header(kind: EventKind) -> EventHeader {
        EventHeader { kind: kind as u32, pid: 42, tid: 43, _pad: 0, timestamp_ns: 1_000 }
    }

    #[test]
    fn decodes_accept_with_mapped_ipv4_peer() {
        let mut addr = [0u8; 16];
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12..].copy_from_slice(&[127, 0, 0, 1]);
        let event = ConnectionEvent {
            header: header(EventKind::SocketAccept),
            socket: 7,
            listener: 3,
            result: 0,
            peer: SocketAddress { family: 10, port: 5555, addr },
        };
        let clock = WallClock::with_offset(10);
        let decoded = decode(&bytes_of(&event), &clock).unwrap();
        assert_eq!(
            decoded,
            KernelEvent::Accepted {
                socket: SocketId { pid: 42, id: 7 },
                listener: 3,
                peer: Peer::Ip { addr: "127.0.0.1".parse().unwrap(), port: 5555 },
                time: 1_010,
            }
        );
    }

    #[test]
    fn decodes_a_socket_whose_role_the_kernel_learned() {
        let mut local = SocketAddress { family: 2, port: 8080, addr: [0; 16] };
        local.addr[..4].copy_from_slice(&[10, 0, 0, 1]);
        let mut peer_address = SocketAddress { family: 2, port: 40000, addr: [0; 16] };
        peer_address.addr[..4].copy_from_slice(&[10, 0, 0, 2]);
        let event = SocketFollowedEvent {
            header: header(EventKind::SocketFollowed),
            socket: 0xffff_8880_0000_1000,
            role: SocketRole::Server as u8,
            _pad: [0; 3],
            local,
            peer: peer_address,
            _pad2: [0; 4],
        };
        let decoded = decode(&bytes_of(&event), &WallClock::with_offset(0)).unwrap();
        assert_eq!(
            decoded,
            KernelEvent::Followed {
                socket: SocketId { pid: 42, id: 0xffff_8880_0000_1000 },
                server: true,
                peer: Peer::Ip { addr: "10.0.0.2".parse().unwrap(), port: 40000 },
                local_port: Some(8080),
                time: 1_000,
            }
        );
    }

    #[test]
    fn decodes_data_and_checks_capture_length() {
        let mut event = DataEvent {
            header: header(EventKind::SocketData),
            socket: 5,
            direction: Direction::Egress as u8,
            flags: 0,
            _pad: [0; 6],
            total_len: 10_000,
            enter_ns: 900,
            captured_len: 4,
            _pad2: 0,
            context: SpanContext::default(),
            data: [0; MAX_CAPTURE],
        };
        event.data[..4].copy_from_slice(b"HTTP");
        let clock = WallClock::with_offset(0);
        let KernelEvent::Data(chunk) = decode(&bytes_of(&event), &clock).unwrap() else { panic!() };
        assert_eq!(chunk.bytes, b"HTTP");
        assert_eq!(chunk.context, None, "origin NONE means no identity");
        event.context = SpanContext { span_id: [7; 8], origin: context_origin::NEW_TRACE, ..SpanContext::default() };
        let KernelEvent::Data(chunk) = decode(&bytes_of(&event), &clock).unwrap() else { panic!() };
        assert_eq!(chunk.context.map(|c| c.span_id), Some([7; 8]));
        assert_eq!(chunk.direction, Direction::Egress);
        assert!((chunk.bytes.len() as u64) < chunk.total_len);
        assert_eq!((chunk.enter_time, chunk.time), (900, 1_000));
        assert!(!chunk.tls);
        event.flags = data_flags::TLS;
        let KernelEvent::Data(chunk) = decode(&bytes_of(&event), &clock).unwrap() else { panic!() };
        assert!(chunk.tls);
        event.captured_len = MAX_CAPTURE as u32 + 1;
        assert!(matches!(decode(&bytes_of(&event), &clock), Err(DecodeError::BadCaptureLength(_))));
    }

    #[test]
    fn decodes_how_a_call_ended() {
        let clock = WallClock::with_offset(0);
        let ended = |outcome: u8| {
            let event = FunctionReturnedEvent {
                header: header(EventKind::FunctionReturned),
                span_id: [7; 8],
                exception_type: 0x5000,
                outcome,
                _pad: [0; 7],
            };
            decode(&bytes_of(&event), &clock)
        };
        let outcome_of = |outcome: u8| match ended(outcome) {
            Ok(KernelEvent::FunctionReturned { pid: 42, span_id, outcome, .. }) if span_id == [7; 8] => Some(outcome),
            _ => None,
        };
        assert_eq!(outcome_of(call_outcome::RETURNED), Some(CallOutcome::Returned));
        assert_eq!(outcome_of(call_outcome::RAISED), Some(CallOutcome::Raised { exception_type: 0x5000 }));
        assert_eq!(outcome_of(call_outcome::EVICTED), Some(CallOutcome::Evicted));
        assert_eq!(ended(9), Err(DecodeError::UnknownCallOutcome(9)));
    }

    #[test]
    fn decodes_a_request_for_a_native_sdk_layout() {
        let event = header(EventKind::NativeSpanSeen);
        let decoded = decode(&bytes_of(&event), &WallClock::with_offset(0));
        assert!(matches!(decoded, Ok(KernelEvent::NativeSpanSeen { pid: 42 })), "{decoded:?}");
    }

    #[test]
    fn decodes_where_the_kernel_placed_an_sdk_span() {
        let clock = WallClock::with_offset(0);
        let placed = |relation: u8| {
            let event = SdkSpanEvent {
                header: header(EventKind::SdkSpanActivated),
                sdk_trace_id: [1; 16],
                sdk_span_id: [2; 8],
                agent_trace_id: [3; 16],
                agent_span_id: [4; 8],
                relation,
                _pad: [0; 7],
            };
            match decode(&bytes_of(&event), &clock) {
                Ok(KernelEvent::SdkSpanActivated(activation)) => {
                    assert_eq!(
                        (activation.pid, activation.sdk_span_id, activation.agent_span_id),
                        (42, [2; 8], [4; 8])
                    );
                    Ok((activation.placement, activation.twin))
                }
                Ok(other) => panic!("{other:?}"),
                Err(error) => Err(error),
            }
        };
        assert_eq!(placed(sdk_relation::JOINED), Ok((SdkPlacement::Joined, false)));
        assert_eq!(placed(sdk_relation::JOINED | sdk_relation::TWIN), Ok((SdkPlacement::Joined, true)));
        assert_eq!(placed(sdk_relation::MOVED), Ok((SdkPlacement::Moved, false)));
        assert_eq!(placed(sdk_relation::TWIN), Ok((SdkPlacement::SameTrace, true)));
        assert_eq!(placed(0), Err(DecodeError::UnknownSdkRelation(0)));
        assert_eq!(placed(sdk_relation::JOINED | sdk_relation::MOVED), Err(DecodeError::UnknownSdkRelation(3)));
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let clock = WallClock::with_offset(0);
        assert_eq!(decode(&[1, 2, 3], &clock), Err(DecodeError::TooShort(3)));
        let unknown = EventHeader { kind: 99, ..header(EventKind::ProcessExec) };
        assert_eq!(decode(&bytes_of(&unknown), &clock), Err(DecodeError::UnknownKind(99)));
        let fork_header_only = header(EventKind::ProcessFork);
        assert!(matches!(decode(&bytes_of(&fork_header_only), &clock), Err(DecodeError::Truncated { .. })));
    }
}
