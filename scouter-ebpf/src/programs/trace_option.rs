//! Trace context across TLS hops, in a TCP header option (format: `scouter_ebpf::trace_option`).
//!
//! Sender (a tracked process's outgoing TLS connection): at `SSL_write` entry of a request
//! start, [`prepare`] files the option under its socket (the `struct sock` the sockops program
//! sees; with syscall capture, where socket ids are descriptors, under the writing thread,
//! which needs a kernel whose sockops programs can ask for it: not 6.1). The ciphertext
//! goes out in that thread's next write on the socket: inside the call for a socket BIO, right
//! after it for a memory BIO (asyncio writes the BIO's output to the transport at once). The
//! sockops program runs while the kernel builds that write's segments, in the same thread:
//! `HDR_OPT_LEN_CB` reserves the room ([`reserve`]; also when the kernel computes the MSS, so
//! segments are sized for it), and `WRITE_HDR_OPT_CB` stores the option into the first data
//! segment ([`write`]). The option is forgotten once the write returns ([`write_done`]), when
//! the thread writes to another socket first ([`socket_write_starts`]), or after
//! [`MAX_PENDING_NS`]: a segment sent later, from softirq, has no thread to take it from, and
//! the server then starts a new trace. Pure ACKs never carry it (nothing is reserved for them).
//!
//! Receiver (a tracked server's TLS connection, `PARSE_UNKNOWN_HDR_OPT_CB_FLAG`): the kernel
//! calls the program only for segments carrying an option it does not know. [`parse`] files the
//! context under the client's address, and the server request that starts on the connection
//! takes it ([`adopt_peer_context`]) when its head has no `traceparent` (see
//! [`super::context::server_request`]).
//!
//! Only TLS connections get the header-option flags. They change the timing of both ends (two
//! callbacks per sent segment, a slower receive path), and on plain connections that was
//! enough for a fast server to read a request head cut short (measured: the `traceparent`
//! tests failed about half the time with the flags on every connection). So
//! [`watch_transport`] asks for RTT callbacks on every new connection (a tracked process's
//! outgoing ones, every accepted one), the syscall programs report what the first bytes were
//! ([`client_transport`], [`server_transport`]: a handshake record or a request line), and the
//! first RTT callback after that ([`transport_known`]: an ACK of data the socket sent, which
//! for a TLS connection comes with the handshake, before any request) turns the RTT callbacks
//! off and, for TLS, turns header writing (client) or parsing (server) on. A connection that
//! sent data nobody reported is not ours and is left alone from then on.
//!
//! When only one end runs the agent: a client-only agent sends the option and the server's TCP
//! ignores it (unknown option kinds are skipped; Linux just notes it saw one), so the server
//! answers as usual; a server-only agent receives no option and starts a new trace, as for any
//! uninstrumented caller.
//!
//! Limits: the receiver's key is the client's (address, port) only, since the server side
//! learns its own port nowhere in the kernel; two connections from the same client address and
//! port to two ports of this host at once could swap contexts. A segment carrying SACK blocks or
//! other options may have no room left (counted as `TRACE_OPTION_FAILED`). A middlebox that
//! strips unknown options (some firewalls and load balancers do) loses the context.

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG, BPF_SOCK_OPS_RTT_CB_FLAG, BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG,
    },
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{bpf_load_hdr_opt, bpf_reserve_hdr_opt, bpf_store_hdr_opt},
    },
    programs::SockOpsContext,
};
use scouter_ebpf::address_family::{INET as AF_INET, INET6 as AF_INET6};
use scouter_ebpf::{context_origin, counter, trace_option, traceparent::TraceParent, SocketAddress, SpanContext};

use super::{context, inject, io};
use crate::maps::{
    count, scratch, trace_option_state, transport, PendingTraceOption, CLIENT_SOCKS, CLIENT_TRANSPORTS,
    IN_FLIGHT_CONNECTIONS, OPTION_SCRATCH, PEER_CONTEXTS, PENDING_TRACE_OPTIONS, TLS_SERVER_PEERS,
};

/// `args[0]` of `HDR_OPT_LEN_CB` when the kernel computes the MSS (uapi
/// `BPF_WRITE_HDR_TCP_CURRENT_MSS`; aya's bindings hide it in an unnamed enum module).
const WRITE_HDR_TCP_CURRENT_MSS: u32 = 1;

/// How long a prepared option waits for its segment.
const MAX_PENDING_NS: u64 = 1_000_000_000;

/// Set by the agent before load: 1 when sockops programs may ask which thread runs them
/// (`bpf_get_current_pid_tgid`; 6.1's may not).
#[unsafe(no_mangle)]
static SOCKOPS_THREADS: u32 = 0;

/// The key a pending option is filed under: its socket on the socket layer (the sockops
/// program always sees the socket, not on every kernel the thread); the writing thread when
/// socket ids are descriptors.
#[inline(always)]
fn pending_key(pid_tgid: u64, socket: u64) -> u64 {
    if io::ids_are_sockets() {
        socket
    } else {
        pid_tgid
    }
}

/// The key of the option the segment the sockops program is building may carry, if this
/// kernel lets it find one.
#[inline(always)]
fn segment_key(ctx: &SockOpsContext) -> Option<u64> {
    if io::ids_are_sockets() {
        return Some(inject::sock_address(ctx));
    }
    // SAFETY: a global the agent sets before load; read volatile so it is not folded (the
    // verifier knows it, and leaves the helper call unvisited where the kernel lacks it).
    if unsafe { core::ptr::read_volatile(&SOCKOPS_THREADS) } != 0 {
        return Some(bpf_get_current_pid_tgid());
    }
    None
}

/// A TLS client request starts on `socket`: its first data segment must carry `context`. Runs
/// in tracing programs only (`SSL_write` entry), so it may build the record in their scratch.
#[inline(always)]
pub fn prepare(pid_tgid: u64, socket: u64, context: &SpanContext) {
    let Some(pending) = scratch(&OPTION_SCRATCH) else { return };
    trace_option::encode_into(&context.trace_id, &context.span_id, context.flags & 1 == 1, &mut pending.option);
    pending.socket = socket;
    pending.state = trace_option_state::READY;
    pending._pad = [0; 3];
    // SAFETY: helper with no preconditions.
    pending.created_ns = unsafe { bpf_ktime_get_ns() };
    let _ = PENDING_TRACE_OPTIONS.insert(&pending_key(pid_tgid, socket), &*pending, 0);
}

/// The request was not written after all (the call failed): its option must not ride on
/// bytes written later.
#[inline(always)]
pub fn cancel(pid_tgid: u64, socket: u64) {
    let key = pending_key(pid_tgid, socket);
    // SAFETY: copied out.
    if unsafe { PENDING_TRACE_OPTIONS.get(&key) }.is_some_and(|p| p.state == trace_option_state::READY) {
        let _ = PENDING_TRACE_OPTIONS.remove(&key);
    }
}

/// A write on followed socket `socket` begins: an option the thread has due on another socket
/// is dropped (it would otherwise ride on this one's segments). Options filed by socket cannot.
#[inline(always)]
pub fn socket_write_starts(pid_tgid: u64, socket: u64) {
    if io::ids_are_sockets() {
        return;
    }
    // SAFETY: copied out.
    if unsafe { PENDING_TRACE_OPTIONS.get(&pid_tgid) }.is_some_and(|p| p.socket != socket) {
        let _ = PENDING_TRACE_OPTIONS.remove(&pid_tgid);
    }
}

/// A write on `socket` returned: its segments are built, so the option went with them or will
/// not go at all.
#[inline(always)]
pub fn write_done(pid_tgid: u64, socket: u64) {
    let key = pending_key(pid_tgid, socket);
    let Some(pending) = PENDING_TRACE_OPTIONS.get_ptr(&key) else { return };
    // SAFETY: read in place (not copied: this runs on the I/O programs' deep frames).
    let (owner, state) = unsafe { ((*pending).socket, (*pending).state) };
    if owner != socket {
        return;
    }
    if state == trace_option_state::READY {
        count(counter::TRACE_OPTION_UNSENT);
    }
    let _ = PENDING_TRACE_OPTIONS.remove(&key);
}

/// Makes `context` a child of the context the client at `peer` sent in a TCP option, if it
/// sent one (once: the entry is taken). The fields are copied straight from the map value, to
/// keep another context off the (full) stack of the programs calling this.
#[inline(always)]
pub fn adopt_peer_context(peer: &SocketAddress, context: &mut SpanContext) -> bool {
    if peer.family == 0 {
        return false;
    }
    let Some(remote) = PEER_CONTEXTS.get_ptr(peer) else { return false };
    // SAFETY: LRU map value, read before its removal below.
    let remote = unsafe { &*remote };
    context::child_of(context, &remote.trace_id, &remote.span_id, remote.flags, context_origin::REMOTE_PARENT);
    let _ = PEER_CONTEXTS.remove(peer);
    true
}

/// A tracked process's `connect()` of socket `sk` is in progress (in its thread): the socket,
/// filed under its id (`sk` itself on the socket layer; the descriptor being connected with
/// syscall tracepoints).
#[inline(always)]
pub fn connecting(pid_tgid: u64, sk: u64) {
    let id = if io::ids_are_sockets() {
        sk
    } else {
        // SAFETY: read in place.
        let Some(call) = (unsafe { IN_FLIGHT_CONNECTIONS.get(&pid_tgid) }) else { return };
        call.fd as u64
    };
    let _ = CLIENT_SOCKS.insert(&io::socket_key(pid_tgid, id), &sk, 0);
}

/// The first bytes a tracked process wrote on its connection `socket` were a TLS handshake
/// (`tls`) or a plain request; once per connection (the socket's entry is taken). Not inlined:
/// its key stays off the frame of the I/O programs' deep paths.
#[inline(never)]
pub fn client_transport(pid_tgid: u64, socket: u64, tls: bool) {
    let key = io::socket_key(pid_tgid, socket);
    // SAFETY: copied out before removal.
    let Some(sk) = (unsafe { CLIENT_SOCKS.get(&key) }).copied() else { return };
    let _ = CLIENT_SOCKS.remove(&key);
    let _ = CLIENT_TRANSPORTS.insert(&sk, if tls { &transport::TLS } else { &transport::PLAIN }, 0);
}

/// A tracked server read a TLS handshake from the client at `peer`.
#[inline(always)]
pub fn server_transport(peer: &SocketAddress) {
    if peer.family != 0 {
        let _ = TLS_SERVER_PEERS.insert(peer, &transport::TLS, 0);
    }
}

/// `ACTIVE_ESTABLISHED_CB` of a tracked process's connection, `PASSIVE_ESTABLISHED_CB` of any:
/// call back on RTT samples until its transport is known.
#[inline(always)]
pub fn watch_transport(ctx: &SockOpsContext) {
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_RTT_CB_FLAG) as i32);
}

/// `RTT_CB`: once the connection's transport is known, stop the RTT callbacks, and let a TLS
/// connection write (client) or parse (server) our option.
#[inline(always)]
pub fn transport_known(ctx: &SockOpsContext, sk: u64) {
    let mut flags = ctx.cb_flags() & !BPF_SOCK_OPS_RTT_CB_FLAG;
    // SAFETY: copied out before removal.
    if let Some(kind) = (unsafe { CLIENT_TRANSPORTS.get(&sk) }).copied() {
        let _ = CLIENT_TRANSPORTS.remove(&sk);
        if kind == transport::TLS {
            flags |= BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG;
        }
    } else {
        let peer = remote_address(ctx);
        // SAFETY: presence check only.
        if unsafe { TLS_SERVER_PEERS.get(&peer) }.is_some() {
            let _ = TLS_SERVER_PEERS.remove(&peer);
            flags |= BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG;
        } else if data_segments_out(ctx) == 0 {
            // An RTT sample of the handshake: nothing was sent yet, so nothing is known.
            return;
        }
    }
    let _ = ctx.set_cb_flags(flags as i32);
}

#[inline(always)]
fn data_segments_out(ctx: &SockOpsContext) -> u32 {
    // SAFETY: reading the context's own field.
    unsafe { (*ctx.ops).data_segs_out }
}

/// The option the segment being built may carry, when one waits and is fresh.
#[inline(always)]
fn ready(ctx: &SockOpsContext) -> Option<*mut PendingTraceOption> {
    let pending = PENDING_TRACE_OPTIONS.get_ptr_mut(&segment_key(ctx)?)?;
    // SAFETY: the writing thread's (or socket's) own entry.
    let (state, created) = unsafe { ((*pending).state, (*pending).created_ns) };
    // SAFETY: helper with no preconditions.
    let age = unsafe { bpf_ktime_get_ns() }.saturating_sub(created);
    (state == trace_option_state::READY && age <= MAX_PENDING_NS).then_some(pending)
}

/// `HDR_OPT_LEN_CB`: room for the option in a data segment, or in the MSS computation (no
/// segment: the kernel sizes the segments it is about to build).
#[inline(always)]
pub fn reserve(ctx: &SockOpsContext) {
    let Some(_) = ready(ctx) else { return };
    let sizing_mss = ctx.arg(0) == WRITE_HDR_TCP_CURRENT_MSS;
    // SAFETY: reading the context's own field.
    let payload = unsafe { (*ctx.ops).skb_len };
    if !sizing_mss && payload == 0 {
        return;
    }
    // SAFETY: the helper takes the program's own context.
    let rc = unsafe { bpf_reserve_hdr_opt(ctx.ops, trace_option::LEN as u32, 0) };
    if rc != 0 && !sizing_mss {
        count(counter::TRACE_OPTION_FAILED);
    }
}

/// `WRITE_HDR_OPT_CB`: the option into the segment whose room [`reserve`] took.
#[inline(always)]
pub fn write(ctx: &SockOpsContext) {
    let Some(pending) = ready(ctx) else { return };
    // SAFETY: map value; the helper copies `LEN` bytes from it.
    let rc = unsafe { bpf_store_hdr_opt(ctx.ops, (*pending).option.as_ptr() as *const _, trace_option::LEN as u32, 0) };
    if rc == 0 {
        // SAFETY: this thread's own entry.
        unsafe { (*pending).state = trace_option_state::SENT };
    } else {
        count(counter::TRACE_OPTION_FAILED);
    }
}

/// `PARSE_HDR_OPT_CB`: a received segment has an option the kernel does not know; if it is
/// ours, file its context under the client's address.
#[inline(always)]
pub fn parse(ctx: &SockOpsContext) {
    let Some(context) = load(ctx, true).or_else(|| load(ctx, false)) else { return };
    let peer = remote_address(ctx);
    if peer.family != 0 {
        let _ = PEER_CONTEXTS.insert(&peer, &context, 0);
    }
}

#[inline(always)]
fn load(ctx: &SockOpsContext, sampled: bool) -> Option<TraceParent> {
    let mut found = trace_option::search_key(sampled);
    // SAFETY: the helper writes at most `LEN` bytes into the stack buffer.
    let rc = unsafe { bpf_load_hdr_opt(ctx.ops, found.as_mut_ptr() as *mut _, trace_option::LEN as u32, 0) };
    if rc != trace_option::LEN as i64 {
        return None;
    }
    trace_option::decode(&found)
}

/// The connection's remote end, as `accept()` reports it to the server process.
#[inline(always)]
fn remote_address(ctx: &SockOpsContext) -> SocketAddress {
    let mut address = SocketAddress::default();
    // `remote_port` holds the port in network byte order in the upper half.
    address.port = u32::from_be(ctx.remote_port()) as u16;
    match ctx.family() as u16 {
        AF_INET => {
            address.family = AF_INET;
            address.addr[..4].copy_from_slice(&ctx.remote_ip4().to_ne_bytes());
        }
        AF_INET6 => {
            address.family = AF_INET6;
            let mut k = 0;
            while k < 4 {
                // One 4-byte load each: the context only allows word-sized reads here.
                // SAFETY: reading the context's own field.
                let word = unsafe { core::ptr::read_volatile(&(*ctx.ops).remote_ip6[k]) };
                address.addr[k * 4..k * 4 + 4].copy_from_slice(&word.to_ne_bytes());
                k += 1;
            }
        }
        _ => {}
    }
    address
}
