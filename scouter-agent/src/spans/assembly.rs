//! Assembly: pairs requests with responses on each followed connection.
//!
//! A connection is two [`MessageStream`]s (requests one way, responses the other) and a FIFO of
//! exchanges: HTTP/1.x answers requests in order, so the oldest unanswered request owns the
//! next response, which also makes pipelining and keep-alive come out right. An exchange is
//! complete when its response's framing says so; when framing cannot say (a body until close,
//! lost sync), the last response bytes before the connection closes, the next request, or a
//! long idle period end it.
//!
//! Failures are outcomes too, reported as they were seen, never guessed: a client request still
//! unanswered when the client closes its connection (or exits) ends as `no_response`, and an
//! outgoing connection that never moved a byte before it was closed ends as a failed connect
//! ([`FailedConnect`]). A server request left unanswered produces nothing, and when the agent
//! itself stops, requests in flight are dropped rather than failed.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use scouter_ebpf::{Direction, SpanContext};

use super::http1::{self, ParseError, RequestHead, ResponseHead};
use super::stream::{MessageStream, Segment, StreamItem};
use crate::events::{DataChunk, Peer, SocketId};

/// Which side of the exchanges the traced process is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// It accepted the connection and answers requests.
    Server,
    /// It connected and sends requests.
    Client,
}

impl Role {
    fn request_direction(self) -> Direction {
        match self {
            Role::Server => Direction::Ingress,
            Role::Client => Direction::Egress,
        }
    }
}

/// A request and its final response: what an HTTP span is made from.
#[derive(Clone, Debug)]
pub struct CompletedExchange {
    pub socket: SocketId,
    pub role: Role,
    pub peer: Peer,
    /// The traced process's own port (servers: the listening port).
    pub local_port: Option<u16>,
    pub request: RequestHead,
    /// `None` when the exchange failed before a response arrived (see `error`).
    pub response: Option<ResponseHead>,
    /// Why the exchange failed without a response (an OTel `error.type` value).
    pub error: Option<&'static str>,
    pub start_time: u64,
    pub end_time: u64,
    /// The identity the kernel gave the request at its first byte (absent when the kernel did
    /// not recognise the request's start, e.g. the second of two pipelined requests).
    pub context: Option<SpanContext>,
    /// The connection is TLS (its bytes came from the libssl uprobes): `https`.
    pub tls: bool,
}

/// An outgoing connection that failed before any byte moved: refused at `connect()`, or
/// pending (non-blocking) and then closed unused.
#[derive(Clone, Debug)]
pub struct FailedConnect {
    pub socket: SocketId,
    pub peer: Peer,
    pub start_time: u64,
    pub end_time: u64,
    /// An OTel `error.type` value.
    pub error: &'static str,
}

/// Why a connection's state is being finished.
#[derive(Clone, Copy, Debug)]
enum Ending {
    /// The process closed it (or exited) at this time: unanswered client requests failed.
    Closed(u64),
    /// The agent stops or forgets the connection: nothing is known about what is in flight.
    Unobserved,
}

/// What assembly dropped or could not follow, for the agent's own metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct AssemblyStats {
    pub exchanges: u64,
    /// Bytes that were not HTTP/1.x (other protocols, TLS, random input).
    pub not_http: u64,
    /// Message boundaries lost because bytes were beyond the kernel's copy.
    pub lost_sync: u64,
    /// Requests that never got a response (connection or process gone).
    pub unanswered: u64,
    /// Responses with no request to answer.
    pub orphan_responses: u64,
}

#[derive(Debug)]
struct Exchange {
    request: RequestHead,
    context: Option<SpanContext>,
    start_time: u64,
    response: Option<ResponseHead>,
    last_response_time: u64,
}

#[derive(Debug)]
struct Connection {
    role: Role,
    peer: Peer,
    local_port: Option<u16>,
    requests: MessageStream,
    responses: MessageStream,
    exchanges: VecDeque<Exchange>,
    /// A 1xx response was parsed: its (empty) completion is not the exchange's.
    interim_pending: bool,
    last_activity: u64,
    /// The kernel's identity for the request whose head is being read (heads may span
    /// several syscalls; the identity comes with the first).
    next_context: Option<SpanContext>,
    /// Client side: `connect()` returned before the handshake finished (non-blocking).
    connect_pending: bool,
    /// Whether any byte moved either way.
    moved_bytes: bool,
    /// Its bytes are TLS plaintext.
    tls: bool,
    opened_at: u64,
}

impl Connection {
    fn new(role: Role, peer: Peer, local_port: Option<u16>, time: u64) -> Self {
        Self {
            role,
            peer,
            local_port,
            requests: MessageStream::default(),
            responses: MessageStream::default(),
            exchanges: VecDeque::new(),
            interim_pending: false,
            last_activity: time,
            next_context: None,
            connect_pending: false,
            moved_bytes: false,
            tls: false,
            opened_at: time,
        }
    }
}

#[derive(Debug, Default)]
pub struct Assembler {
    connections: HashMap<SocketId, Connection>,
    stats: AssemblyStats,
    failed_connects: Vec<FailedConnect>,
}

impl Assembler {
    pub fn stats(&self) -> AssemblyStats {
        self.stats
    }

    #[cfg(test)]
    fn open_connections(&self) -> usize {
        self.connections.len()
    }

    /// The kernel learned `socket`'s role from its first request (it follows sockets without
    /// having seen their `accept()` or `connect()`): a connection followed already in that
    /// role (its connect was seen) keeps its state and learns what it lacked.
    pub fn on_followed(&mut self, socket: SocketId, server: bool, peer: Peer, local_port: Option<u16>, time: u64) {
        let role = if server { Role::Server } else { Role::Client };
        if let Some(connection) = self.connections.get_mut(&socket).filter(|connection| connection.role == role) {
            if connection.peer == Peer::Unknown {
                connection.peer = peer;
            }
            connection.local_port = connection.local_port.or(local_port);
            return;
        }
        self.replace_connection(socket, Connection::new(role, peer, local_port, time));
    }

    pub fn on_accept(&mut self, socket: SocketId, peer: Peer, local_port: Option<u16>, time: u64) {
        self.replace_connection(socket, Connection::new(Role::Server, peer, local_port, time));
    }

    /// A connection the process opened; `pending` when `connect()` returned before the
    /// handshake finished.
    pub fn on_connect(&mut self, socket: SocketId, peer: Peer, time: u64, pending: bool) {
        let mut connection = Connection::new(Role::Client, peer, None, time);
        connection.connect_pending = pending;
        self.replace_connection(socket, connection);
    }

    /// `connect()` failed outright.
    pub fn on_connect_failed(&mut self, socket: SocketId, peer: Peer, time: u64, error: &'static str) {
        self.failed_connects.push(FailedConnect { socket, peer, start_time: time, end_time: time, error });
    }

    /// Failed connects seen since the last call.
    pub fn take_failed_connects(&mut self) -> Vec<FailedConnect> {
        std::mem::take(&mut self.failed_connects)
    }

    /// A descriptor number is reused after close; a close the agent missed must not leak the
    /// old connection's state into the new one.
    fn replace_connection(&mut self, socket: SocketId, connection: Connection) {
        if let Some(old) = self.connections.insert(socket, connection) {
            self.stats.unanswered += old.exchanges.iter().filter(|e| e.response.is_none()).count() as u64;
        }
    }

    pub fn on_data(&mut self, chunk: &DataChunk) -> Vec<CompletedExchange> {
        let Some(connection) = connection_for(&mut self.connections, chunk) else { return Vec::new() };
        connection.last_activity = chunk.time;
        connection.moved_bytes = true;
        connection.tls |= chunk.tls;
        let mut done = Vec::new();
        if chunk.direction == connection.role.request_direction() {
            let start_time = match connection.role {
                Role::Server => chunk.time,
                Role::Client => chunk.enter_time,
            };
            if chunk.context.is_some() {
                connection.next_context = chunk.context;
            }
            let segment = Segment { bytes: &chunk.bytes, total_len: chunk.total_len, time: chunk.time, start_time };
            let items = connection.requests.feed(&segment, parse_request, RequestHead::body, http1::looks_like_request);
            on_request_items(chunk.socket, connection, items, &mut self.stats, &mut done);
        } else {
            let segment =
                Segment { bytes: &chunk.bytes, total_len: chunk.total_len, time: chunk.time, start_time: chunk.time };
            let method = awaiting_method(connection);
            let items = connection.responses.feed(
                &segment,
                parse_response,
                |head: &ResponseHead| head.body(&method),
                http1::looks_like_response,
            );
            if let Some(exchange) = connection.exchanges.iter_mut().find(|e| e.response.is_some()) {
                exchange.last_response_time = chunk.time;
            }
            on_response_items(chunk.socket, connection, items, chunk.time, &mut self.stats, &mut done);
        }
        self.stats.exchanges += done.len() as u64;
        done
    }

    pub fn on_close(&mut self, socket: SocketId, time: u64) -> Vec<CompletedExchange> {
        self.end(socket, Ending::Closed(time))
    }

    fn end(&mut self, socket: SocketId, ending: Ending) -> Vec<CompletedExchange> {
        let Some(connection) = self.connections.remove(&socket) else { return Vec::new() };
        self.finish_connection(socket, connection, ending)
    }

    /// The agent is stopping: every exchange that has its response is complete as far as it
    /// will ever know.
    pub fn finish_all(&mut self) -> Vec<CompletedExchange> {
        let sockets: Vec<SocketId> = self.connections.keys().copied().collect();
        sockets.into_iter().flat_map(|socket| self.end(socket, Ending::Unobserved)).collect()
    }

    /// The process exited at `time`: its sockets closed without close() calls the agent could see.
    pub fn on_process_exit(&mut self, pid: u32, time: u64) -> Vec<CompletedExchange> {
        let sockets: Vec<SocketId> = self.connections.keys().filter(|s| s.pid == pid).copied().collect();
        sockets.into_iter().flat_map(|socket| self.on_close(socket, time)).collect()
    }

    /// Ends exchanges whose response has been quiet for `idle` (bodies without framing on
    /// connections that stay open), and forgets connections silent for `forget`.
    pub fn expire(&mut self, now: u64, idle: Duration, forget: Duration) -> Vec<CompletedExchange> {
        let mut done = Vec::new();
        let idle = idle.as_nanos() as u64;
        for (socket, connection) in self.connections.iter_mut() {
            while let Some(front) = connection.exchanges.front() {
                if front.response.is_none() || now.saturating_sub(front.last_response_time) < idle {
                    break;
                }
                let exchange = connection.exchanges.pop_front().expect("front exists");
                done.extend(complete(*socket, connection, exchange, None));
            }
        }
        let forget = forget.as_nanos() as u64;
        let stale: Vec<SocketId> = self
            .connections
            .iter()
            .filter(|(_, c)| now.saturating_sub(c.last_activity) >= forget)
            .map(|(s, _)| *s)
            .collect();
        for socket in stale {
            done.extend(self.end(socket, Ending::Unobserved));
        }
        self.stats.exchanges += done.len() as u64;
        done
    }

    fn finish_connection(
        &mut self,
        socket: SocketId,
        mut connection: Connection,
        ending: Ending,
    ) -> Vec<CompletedExchange> {
        let mut done = Vec::new();
        let closed_at = match ending {
            Ending::Closed(time) if connection.role == Role::Client => Some(time),
            _ => None,
        };
        if let Some(time) = closed_at.filter(|_| connection.connect_pending && !connection.moved_bytes) {
            let error = "connection_failed";
            let (peer, start_time) = (connection.peer, connection.opened_at);
            self.failed_connects.push(FailedConnect { socket, peer, start_time, end_time: time, error });
        }
        while let Some(exchange) = connection.exchanges.pop_front() {
            match (exchange.response.is_some(), closed_at) {
                (true, _) => done.extend(complete(socket, &connection, exchange, None)),
                (false, Some(time)) => done.push(unanswered(socket, &connection, exchange, time)),
                (false, None) => self.stats.unanswered += 1,
            }
        }
        self.stats.exchanges += done.len() as u64;
        done
    }
}

/// A connection the kernel follows but whose accept/connect the agent did not see (a lost
/// event): its role is inferred from who sends the first request.
fn connection_for<'a>(
    connections: &'a mut HashMap<SocketId, Connection>,
    chunk: &DataChunk,
) -> Option<&'a mut Connection> {
    match connections.entry(chunk.socket) {
        Entry::Occupied(known) => Some(known.into_mut()),
        Entry::Vacant(_) if !http1::looks_like_request(&chunk.bytes) => None,
        Entry::Vacant(unknown) => {
            let role = match chunk.direction {
                Direction::Ingress => Role::Server,
                Direction::Egress => Role::Client,
            };
            Some(unknown.insert(Connection::new(role, Peer::Unknown, None, chunk.time)))
        }
    }
}

fn parse_request(bytes: &[u8]) -> Result<(RequestHead, usize), ParseError> {
    http1::parse_request(bytes).map(|head| {
        let len = head.head_len;
        (head, len)
    })
}

fn parse_response(bytes: &[u8]) -> Result<(ResponseHead, usize), ParseError> {
    http1::parse_response(bytes).map(|head| {
        let len = head.head_len;
        (head, len)
    })
}

/// The method of the request the next response answers (framing depends on it: HEAD).
fn awaiting_method(connection: &Connection) -> String {
    connection.exchanges.iter().find(|e| e.response.is_none()).map(|e| e.request.method.clone()).unwrap_or_default()
}

fn on_request_items(
    socket: SocketId,
    connection: &mut Connection,
    items: Vec<StreamItem<RequestHead>>,
    stats: &mut AssemblyStats,
    done: &mut Vec<CompletedExchange>,
) {
    for item in items {
        match item {
            StreamItem::Head { head, start_time } => {
                // A new request means every earlier response has been sent in full, even those
                // whose end the framing could not tell.
                while connection.exchanges.front().is_some_and(|e| e.response.is_some()) {
                    let exchange = connection.exchanges.pop_front().expect("front exists");
                    done.extend(complete(socket, connection, exchange, None));
                }
                if connection.responses.is_until_close() {
                    connection.responses = MessageStream::default();
                }
                let context = connection.next_context.take();
                connection.exchanges.push_back(Exchange {
                    request: head,
                    context,
                    start_time,
                    response: None,
                    last_response_time: start_time,
                });
            }
            StreamItem::Complete { .. } => {}
            StreamItem::Garbage(_) => stats.not_http += 1,
            StreamItem::LostSync => stats.lost_sync += 1,
        }
    }
}

fn on_response_items(
    socket: SocketId,
    connection: &mut Connection,
    items: Vec<StreamItem<ResponseHead>>,
    time: u64,
    stats: &mut AssemblyStats,
    done: &mut Vec<CompletedExchange>,
) {
    for item in items {
        match item {
            StreamItem::Head { head, .. } if head.is_interim() => connection.interim_pending = true,
            StreamItem::Head { head, .. } => match connection.exchanges.iter_mut().find(|e| e.response.is_none()) {
                Some(exchange) => {
                    exchange.response = Some(head);
                    exchange.last_response_time = time;
                }
                None => stats.orphan_responses += 1,
            },
            StreamItem::Complete { .. } if connection.interim_pending => connection.interim_pending = false,
            StreamItem::Complete { time } => {
                if let Some(index) = connection.exchanges.iter().position(|e| e.response.is_some()) {
                    if let Some(exchange) = connection.exchanges.remove(index) {
                        done.extend(complete(socket, connection, exchange, Some(time)));
                    }
                }
            }
            StreamItem::Garbage(_) => stats.not_http += 1,
            StreamItem::LostSync => stats.lost_sync += 1,
        }
    }
}

fn complete(
    socket: SocketId,
    connection: &Connection,
    exchange: Exchange,
    end: Option<u64>,
) -> Option<CompletedExchange> {
    let response = exchange.response?;
    let end_time = end.unwrap_or(exchange.last_response_time).max(exchange.start_time);
    Some(finished(socket, connection, exchange.request, exchange.context, exchange.start_time, end_time, Ok(response)))
}

/// A client request whose connection ended at `time` before any response.
fn unanswered(socket: SocketId, connection: &Connection, exchange: Exchange, time: u64) -> CompletedExchange {
    let end_time = time.max(exchange.start_time);
    let outcome = Err("no_response");
    finished(socket, connection, exchange.request, exchange.context, exchange.start_time, end_time, outcome)
}

fn finished(
    socket: SocketId,
    connection: &Connection,
    request: RequestHead,
    context: Option<SpanContext>,
    start_time: u64,
    end_time: u64,
    outcome: Result<ResponseHead, &'static str>,
) -> CompletedExchange {
    CompletedExchange {
        socket,
        role: connection.role,
        peer: connection.peer,
        local_port: connection.local_port,
        request,
        error: outcome.as_ref().err().copied(),
        response: outcome.ok(),
        start_time,
        end_time,
        context,
        tls: connection.tls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOCKET: SocketId = SocketId { pid: 10, id: 5 };

    fn chunk(direction: Direction, bytes: &[u8], time: u64) -> DataChunk {
        DataChunk {
            socket: SOCKET,
            tid: 11,
            direction,
            enter_time: time - 1,
            time,
            total_len: bytes.len() as u64,
            bytes: bytes.to_vec(),
            context: None,
            tls: false,
        }
    }

    fn server() -> Assembler {
        let mut assembler = Assembler::default();
        let peer = Peer::Ip { addr: "127.0.0.1".parse().unwrap(), port: 40000 };
        assembler.on_accept(SOCKET, peer, Some(8000), 1);
        assembler
    }

    fn summary(done: &[CompletedExchange]) -> Vec<(String, String, u16, u64, u64)> {
        done.iter()
            .map(|e| {
                (
                    e.request.method.clone(),
                    e.request.path().to_owned(),
                    e.response.as_ref().map_or(0, |r| r.status),
                    e.start_time,
                    e.end_time,
                )
            })
            .collect()
    }

    #[test]
    fn keep_alive_gives_one_exchange_per_request() {
        let mut a = server();
        let mut done = Vec::new();
        for (i, path) in ["/a", "/b", "/c"].iter().enumerate() {
            let t = 10 * (i as u64 + 1);
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
            done.extend(a.on_data(&chunk(Direction::Ingress, request.as_bytes(), t)));
            done.extend(a.on_data(&chunk(Direction::Egress, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", t + 1)));
            done.extend(a.on_data(&chunk(Direction::Egress, b"ok", t + 2)));
        }
        assert_eq!(
            summary(&done),
            [
                ("GET".into(), "/a".into(), 200, 10, 12),
                ("GET".into(), "/b".into(), 200, 20, 22),
                ("GET".into(), "/c".into(), 200, 30, 32)
            ]
        );
        assert!(a.on_close(SOCKET, 99).is_empty());
    }

    #[test]
    fn http10_response_until_close_ends_at_last_write() {
        let mut a = server();
        assert!(a.on_data(&chunk(Direction::Ingress, b"GET / HTTP/1.0\r\n\r\n", 10)).is_empty());
        assert!(a.on_data(&chunk(Direction::Egress, b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\n", 11)).is_empty());
        assert!(a.on_data(&chunk(Direction::Egress, b"<html>", 12)).is_empty());
        let done = a.on_close(SOCKET, 99);
        assert_eq!(summary(&done), [("GET".into(), "/".into(), 200, 10, 12)]);
    }

    #[test]
    fn request_without_response_gives_nothing() {
        let mut a = server();
        assert!(a.on_data(&chunk(Direction::Ingress, b"GET / HTTP/1.1\r\n\r\n", 10)).is_empty());
        assert!(a.on_process_exit(SOCKET.pid, 99).is_empty());
        assert_eq!(a.stats().unanswered, 1);
        assert_eq!(a.open_connections(), 0);
    }

    #[test]
    fn garbage_gives_nothing_and_is_counted() {
        let mut a = server();
        assert!(a.on_data(&chunk(Direction::Ingress, &[0xde, 0xad, 0xbe, 0xef, 0x00, 0x17], 10)).is_empty());
        assert!(a
            .on_data(&chunk(Direction::Egress, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", 11))
            .is_empty());
        assert!(a.on_close(SOCKET, 99).is_empty());
        let stats = a.stats();
        assert_eq!((stats.not_http, stats.orphan_responses, stats.exchanges), (1, 1, 0));
    }

    #[test]
    fn head_request_and_interim_responses() {
        let mut a = server();
        a.on_data(&chunk(Direction::Ingress, b"HEAD /h HTTP/1.1\r\n\r\n", 10));
        let done = a.on_data(&chunk(Direction::Egress, b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", 11));
        assert_eq!(summary(&done), [("HEAD".into(), "/h".into(), 200, 10, 11)]);
        a.on_data(&chunk(
            Direction::Ingress,
            b"POST /p HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
            20,
        ));
        assert!(a.on_data(&chunk(Direction::Egress, b"HTTP/1.1 100 Continue\r\n\r\n", 21)).is_empty());
        a.on_data(&chunk(Direction::Ingress, b"hi", 22));
        let done = a.on_data(&chunk(Direction::Egress, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 23));
        assert_eq!(summary(&done), [("POST".into(), "/p".into(), 201, 20, 23)]);
    }

    #[test]
    fn pipelined_requests_are_answered_in_order() {
        let mut a = server();
        a.on_data(&chunk(Direction::Ingress, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n", 10));
        let done = a.on_data(&chunk(
            Direction::Egress,
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            11,
        ));
        assert_eq!(
            summary(&done),
            [("GET".into(), "/1".into(), 200, 10, 11), ("GET".into(), "/2".into(), 404, 10, 11)]
        );
    }

    #[test]
    fn client_role_times_from_write_entry_to_response_end() {
        let mut a = Assembler::default();
        let peer = Peer::Ip { addr: "10.0.0.1".parse().unwrap(), port: 80 };
        a.on_connect(SOCKET, peer, 1, false);
        a.on_data(&chunk(Direction::Egress, b"GET /api HTTP/1.1\r\nHost: svc\r\n\r\n", 10));
        let done = a.on_data(&chunk(Direction::Ingress, b"HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n", 15));
        assert_eq!(summary(&done), [("GET".into(), "/api".into(), 503, 9, 15)]);
        assert_eq!(done[0].role, Role::Client);
    }

    #[test]
    fn quiet_unframed_responses_expire() {
        let mut a = server();
        a.on_data(&chunk(Direction::Ingress, b"GET / HTTP/1.1\r\n\r\n", 10));
        a.on_data(&chunk(Direction::Egress, b"HTTP/1.1 200 OK\r\n\r\nstream", 11));
        assert!(a.expire(12, Duration::from_nanos(5), Duration::from_secs(60)).is_empty());
        let done = a.expire(20, Duration::from_nanos(5), Duration::from_secs(60));
        assert_eq!(summary(&done), [("GET".into(), "/".into(), 200, 10, 11)]);
        assert_eq!(a.open_connections(), 1);
    }

    #[test]
    fn a_reused_descriptor_starts_fresh() {
        let mut a = server();
        a.on_data(&chunk(Direction::Ingress, b"GET /old HTTP/1.1\r\n\r\n", 10));
        a.on_accept(SOCKET, Peer::Unknown, Some(8000), 20);
        a.on_data(&chunk(Direction::Ingress, b"GET /new HTTP/1.1\r\n\r\n", 21));
        let done = a.on_data(&chunk(Direction::Egress, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 22));
        assert_eq!(summary(&done), [("GET".into(), "/new".into(), 200, 21, 22)]);
        assert_eq!(a.stats().unanswered, 1);
    }

    fn client() -> Assembler {
        let mut a = Assembler::default();
        a.on_connect(SOCKET, Peer::Ip { addr: "127.0.0.1".parse().unwrap(), port: 80 }, 1, true);
        a
    }

    #[test]
    fn an_unanswered_client_request_fails_when_the_client_closes() {
        let mut a = client();
        assert!(a.on_data(&chunk(Direction::Egress, b"GET /slow HTTP/1.1\r\n\r\n", 10)).is_empty());
        let done = a.on_close(SOCKET, 1_000);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].error, Some("no_response"));
        assert!(done[0].response.is_none());
        assert_eq!((done[0].start_time, done[0].end_time), (9, 1_000));
        assert!(a.take_failed_connects().is_empty(), "bytes moved: the connect worked");
    }

    #[test]
    fn in_flight_requests_are_not_failed_when_the_agent_stops() {
        let mut a = client();
        assert!(a.on_data(&chunk(Direction::Egress, b"GET /slow HTTP/1.1\r\n\r\n", 10)).is_empty());
        assert!(a.finish_all().is_empty());
        assert_eq!(a.stats().unanswered, 1);
    }

    #[test]
    fn a_pending_connect_closed_unused_is_a_failed_connect() {
        let mut a = client();
        assert!(a.on_close(SOCKET, 50).is_empty());
        let failed = a.take_failed_connects();
        assert_eq!(failed.len(), 1);
        assert_eq!((failed[0].error, failed[0].start_time, failed[0].end_time), ("connection_failed", 1, 50));
    }
}
