//! Test backends for the agent's exporters: a strict Scouter-compatible server
//! ([`scouter::ScouterBackend`]), an OTLP receiver ([`otlp::OtlpReceiver`]) and a fake Kafka
//! broker for Scouter's Kafka transport ([`kafka::KafkaBroker`]).
//!
//! # Why they exist
//!
//! A real Scouter server needs PostgreSQL with extensions and a long build, and a real collector
//! would hide what exactly arrived. These backends run inside the test process, decode every
//! request the way the real servers do, refuse what the real servers refuse, and record what they
//! accepted as [`ReceivedSpan`]s, one shared type, so a test can compare the spans that reached
//! both sinks by their ids.
//!
//! # How they run
//!
//! Each backend owns a small multi-threaded tokio runtime (its worker threads are the background
//! threads) started by its constructor, and listens on 127.0.0.1 on free ports. Everything a test
//! calls is synchronous: controls flip shared flags under a mutex, accessors copy out what was
//! recorded, [`Recorder::wait_for_spans`] blocks on a condition variable. Call them from plain test
//! threads, not from inside a tokio runtime (`set_down` blocks on the backend's runtime).
//!
//! Each port runs its own accept loop ([`ServerHost`]) instead of `axum::serve` or tonic's server so
//! that `set_down(true)` can really close the listening socket (new connections are *refused*, like
//! a stopped server) and drop open connections, and `set_down(false)` can bind the same port again.
//! Connections are served by hyper's auto builder, which speaks HTTP/1.1 and HTTP/2 (gRPC) alike,
//! in front of an [`axum::Router`] (tonic services are mounted through [`tonic::service::Routes`]).
//!
//! # Faults
//!
//! The same controls mean the same thing on every backend and transport (the [`Backend`] trait,
//! over [`Faults`]):
//! *down* refuses connections, *hang* accepts an ingest request and never answers it,
//! *reject_next(n, status)* answers the next `n` ingest requests with an HTTP status (mapped to a
//! gRPC code by [`grpc_code_for_http`] on gRPC). Every ingest request that reaches a handler is
//! recorded as a [`ReceivedRequest`] with the reply it got, rejected or not, so retry behaviour can
//! be asserted from the request log.

pub mod kafka;
pub mod otlp;
pub mod scouter;

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axum::body::{Body, Bytes};
use axum::http::HeaderMap;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

/// How long dropping a backend waits for its runtime to stop (hung handlers are simply dropped).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// Which transport a span or request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Http,
    Grpc,
    Kafka,
}

/// An attribute value, decoded from an OTLP `AnyValue`.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    String(String),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(Vec<u8>),
    Array(Vec<AttrValue>),
    KvList(Vec<(String, AttrValue)>),
    /// An `AnyValue` without a value.
    Empty,
}

impl AttrValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::String(value) => Some(value),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            AttrValue::Int(value) => Some(*value),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            AttrValue::Bool(value) => Some(*value),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            AttrValue::Double(value) => Some(*value),
            _ => None,
        }
    }

    fn from_proto(value: Option<&AnyValue>) -> Self {
        match value.and_then(|value| value.value.as_ref()) {
            None => AttrValue::Empty,
            Some(any_value::Value::StringValue(value)) => AttrValue::String(value.clone()),
            Some(any_value::Value::BoolValue(value)) => AttrValue::Bool(*value),
            Some(any_value::Value::IntValue(value)) => AttrValue::Int(*value),
            Some(any_value::Value::DoubleValue(value)) => AttrValue::Double(*value),
            Some(any_value::Value::BytesValue(value)) => AttrValue::Bytes(value.clone()),
            Some(any_value::Value::ArrayValue(array)) => {
                AttrValue::Array(array.values.iter().map(|value| AttrValue::from_proto(Some(value))).collect())
            }
            Some(any_value::Value::KvlistValue(list)) => AttrValue::KvList(attributes_from_proto(&list.values)),
        }
    }
}

/// Key/value pairs in the order they arrived; duplicates are kept (a duplicate key is a bug the
/// tests should be able to see, a map would hide it).
pub type Attributes = Vec<(String, AttrValue)>;

fn attributes_from_proto(attributes: &[KeyValue]) -> Attributes {
    attributes.iter().map(|kv| (kv.key.clone(), AttrValue::from_proto(kv.value.as_ref()))).collect()
}

fn find<'a>(attributes: &'a Attributes, key: &str) -> Option<&'a AttrValue> {
    attributes.iter().find(|(name, _)| name == key).map(|(_, value)| value)
}

/// A span event.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedEvent {
    pub name: String,
    pub time_unix_nano: u64,
    pub attributes: Attributes,
}

/// A span as a backend accepted it, with its resource and scope. Ids are lowercase hex.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// The transport of the request that carried it.
    pub transport: Transport,
    pub trace_id: String,
    pub span_id: String,
    /// `None` for roots (empty or omitted `parentSpanId`).
    pub parent_span_id: Option<String>,
    pub name: String,
    /// OTLP kind: 0 unspecified, 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    pub attributes: Attributes,
    pub resource: Attributes,
    pub scope_name: String,
    pub scope_version: String,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
    pub events: Vec<ReceivedEvent>,
    pub flags: u32,
    pub trace_state: String,
    /// The span exactly as decoded, for fields not copied above (links, dropped counts).
    pub proto: Span,
}

impl ReceivedSpan {
    /// The first attribute named `key`.
    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        find(&self.attributes, key)
    }

    /// The first attribute named `key`, if it is a string.
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attr(key).and_then(AttrValue::as_str)
    }

    /// The first resource attribute named `key`.
    pub fn resource_attr(&self, key: &str) -> Option<&AttrValue> {
        find(&self.resource, key)
    }

    /// `service.name` of the span's resource.
    pub fn service_name(&self) -> Option<&str> {
        self.resource_attr("service.name").and_then(AttrValue::as_str)
    }

    /// Every span of an export request, flattened with its resource and scope.
    pub fn from_request(request: &ExportTraceServiceRequest, transport: Transport) -> Vec<ReceivedSpan> {
        let mut spans = Vec::new();
        for resource_spans in &request.resource_spans {
            let resource =
                resource_spans.resource.as_ref().map(|r| attributes_from_proto(&r.attributes)).unwrap_or_default();
            for scope_spans in &resource_spans.scope_spans {
                let (scope_name, scope_version) = scope_spans
                    .scope
                    .as_ref()
                    .map(|scope| (scope.name.clone(), scope.version.clone()))
                    .unwrap_or_default();
                for span in &scope_spans.spans {
                    spans.push(ReceivedSpan::from_proto(span, transport, &resource, &scope_name, &scope_version));
                }
            }
        }
        spans
    }

    fn from_proto(span: &Span, transport: Transport, resource: &Attributes, scope: &str, version: &str) -> Self {
        let status = span.status.clone().unwrap_or_default();
        ReceivedSpan {
            transport,
            trace_id: to_hex(&span.trace_id),
            span_id: to_hex(&span.span_id),
            parent_span_id: (!span.parent_span_id.is_empty()).then(|| to_hex(&span.parent_span_id)),
            name: span.name.clone(),
            kind: span.kind,
            start_time_unix_nano: span.start_time_unix_nano,
            end_time_unix_nano: span.end_time_unix_nano,
            attributes: attributes_from_proto(&span.attributes),
            resource: resource.clone(),
            scope_name: scope.to_owned(),
            scope_version: version.to_owned(),
            status_code: status.code,
            status_message: status.message,
            events: span
                .events
                .iter()
                .map(|event| ReceivedEvent {
                    name: event.name.clone(),
                    time_unix_nano: event.time_unix_nano,
                    attributes: attributes_from_proto(&event.attributes),
                })
                .collect(),
            flags: span.flags,
            trace_state: span.trace_state.clone(),
            proto: span.clone(),
        }
    }
}

/// Lowercase hex, the form ids take in OTLP/JSON and in the agent's own output.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// What a backend answered to an ingest request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Http(u16),
    Grpc(tonic::Code),
    /// A Kafka error code (0: stored).
    Kafka(i16),
    /// Accepted and never answered ([`Faults::set_hang`]).
    Hung,
}

/// One ingest request (Scouter `POST /scouter/message` or `InsertMessage`, OTLP `Export` or
/// `POST /v1/traces`) as it reached the handler, and what it was answered.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    pub transport: Transport,
    /// Header (gRPC: metadata) names lowercased, values lossily decoded, in arrival order.
    pub headers: Vec<(String, String)>,
    /// Payload size as received: the HTTP body (compressed, if it was), the gRPC message's
    /// `message_record` (Scouter) or encoded length (OTLP).
    pub body_len: usize,
    pub reply: Reply,
    /// The error message sent back, empty on success.
    pub message: String,
    /// Spans recorded from this request (0 unless accepted).
    pub span_count: usize,
}

impl ReceivedRequest {
    /// Whether the request was accepted (HTTP 2xx or gRPC OK).
    pub fn accepted(&self) -> bool {
        match self.reply {
            Reply::Http(status) => (200..300).contains(&status),
            Reply::Grpc(code) => code == tonic::Code::Ok,
            Reply::Kafka(code) => code == 0,
            Reply::Hung => false,
        }
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Why an ingest request was refused: the HTTP status (gRPC: its mapped code) and a message.
pub(crate) type Refusal = (u16, String);

/// A request body, or the refusal for one over `limit` (413) or cut off (400).
pub(crate) async fn read_body(body: Body, limit: usize) -> std::result::Result<Bytes, Refusal> {
    axum::body::to_bytes(body, limit).await.map_err(|error| {
        if error.into_inner().is::<http_body_util::LengthLimitError>() {
            (413, format!("body exceeds the {limit} byte limit"))
        } else {
            (400, "body could not be read".to_owned())
        }
    })
}

/// A header's value, if present and visible ASCII.
pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// The record of a request parked by [`Faults::set_hang`].
pub(crate) fn hung(transport: Transport, headers: Vec<(String, String)>, body_len: usize) -> ReceivedRequest {
    ReceivedRequest { transport, headers, body_len, reply: Reply::Hung, message: String::new(), span_count: 0 }
}

/// Headers as recorded in [`ReceivedRequest::headers`].
pub(crate) fn header_list(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect()
}

/// The gRPC code a backend answers where its HTTP side would answer `status`: 429 is
/// RESOURCE_EXHAUSTED because that is how Scouter says "queue full" on both transports; the rest
/// follows the usual HTTP/gRPC correspondence.
pub fn grpc_code_for_http(status: u16) -> tonic::Code {
    use tonic::Code;
    match status {
        200..=299 => Code::Ok,
        400 | 413 | 422 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 => Code::Aborted,
        429 => Code::ResourceExhausted,
        501 => Code::Unimplemented,
        502 | 503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        _ => Code::Internal,
    }
}

/// What every test backend shares: its ports, its fault injection and what it recorded. The
/// controls are written once here; a backend implements the three accessors and adds its own
/// (credentials, a full queue).
pub trait Backend {
    fn host(&self) -> &ServerHost;
    fn faults(&self) -> &Faults;
    fn recorder(&self) -> &Recorder;

    /// `true`: every port stops listening and open connections are dropped (connection
    /// refused); `false`: they listen again on the same ports.
    fn set_down(&self, down: bool) -> Result<()> {
        self.host().set_down(down)
    }

    /// While on, ingest requests are accepted and never answered.
    fn hang(&self, on: bool) {
        self.faults().set_hang(on);
    }

    /// Answers the next `count` ingest requests with HTTP `status`, on gRPC with
    /// [`grpc_code_for_http`]`(status)` (429 → RESOURCE_EXHAUSTED, 503 → UNAVAILABLE).
    fn reject_next(&self, count: usize, status: u16) {
        self.faults().reject_next(count, status);
    }

    /// Every span accepted so far, in arrival order.
    fn spans(&self) -> Vec<ReceivedSpan> {
        self.recorder().spans()
    }

    /// Every ingest request that reached a handler, accepted or not, in arrival order.
    fn requests(&self) -> Vec<ReceivedRequest> {
        self.recorder().requests()
    }

    /// Blocks until at least `count` spans were accepted; fails after `timeout`.
    fn wait_for_spans(&self, count: usize, timeout: Duration) -> Result<Vec<ReceivedSpan>> {
        self.recorder().wait_for_spans(count, timeout)
    }

    /// Forgets recorded spans and requests.
    fn clear(&self) {
        self.recorder().clear();
    }
}

/// Fault injection shared by a backend's transports.
#[derive(Debug, Default)]
pub struct Faults {
    hang: AtomicBool,
    /// (requests still to reject, HTTP status to answer them with).
    rejections: Mutex<(usize, u16)>,
}

impl Faults {
    /// While on, ingest requests are accepted and never answered (turning it off does not
    /// release requests already hung: they stay unanswered until their connection closes).
    pub fn set_hang(&self, on: bool) {
        self.hang.store(on, Ordering::SeqCst);
    }

    pub fn hanging(&self) -> bool {
        self.hang.load(Ordering::SeqCst)
    }

    /// Answers the next `count` ingest requests with `status` (gRPC: [`grpc_code_for_http`]),
    /// replacing any rejections still pending.
    pub fn reject_next(&self, count: usize, status: u16) {
        *lock(&self.rejections) = (count, status);
    }

    /// Consumes one pending rejection, if any.
    pub fn take_rejection(&self) -> Option<u16> {
        let mut rejections = lock(&self.rejections);
        let (count, status) = &mut *rejections;
        if *count == 0 {
            return None;
        }
        *count -= 1;
        Some(*status)
    }
}

/// Parks the current request forever: the connection stays open and nothing is sent. Generic
/// over the output so a handler can `return hang_forever().await` whatever it returns.
pub(crate) async fn hang_forever<T>() -> T {
    std::future::pending().await
}

/// Accepted spans and ingest requests, with a condition variable for waiting on spans.
#[derive(Debug, Default)]
pub struct Recorder {
    recorded: Mutex<Recorded>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Recorded {
    spans: Vec<ReceivedSpan>,
    requests: Vec<ReceivedRequest>,
}

impl Recorder {
    /// Records a request and the spans it delivered (empty unless it was accepted).
    pub fn record(&self, request: ReceivedRequest, spans: Vec<ReceivedSpan>) {
        let mut recorded = lock(&self.recorded);
        recorded.requests.push(request);
        recorded.spans.extend(spans);
        self.changed.notify_all();
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        lock(&self.recorded).spans.clone()
    }

    pub fn requests(&self) -> Vec<ReceivedRequest> {
        lock(&self.recorded).requests.clone()
    }

    /// Forgets everything recorded so far.
    pub fn clear(&self) {
        let mut recorded = lock(&self.recorded);
        recorded.spans.clear();
        recorded.requests.clear();
    }

    /// Blocks until at least `count` spans were recorded and returns them all; after `timeout`,
    /// fails with what did arrive.
    pub fn wait_for_spans(&self, count: usize, timeout: Duration) -> Result<Vec<ReceivedSpan>> {
        let deadline = Instant::now() + timeout;
        let mut recorded = lock(&self.recorded);
        while recorded.spans.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let accepted = recorded.requests.iter().filter(|r| r.accepted()).count();
                bail!(
                    "waited {timeout:?} for {count} spans, got {} from {} requests ({accepted} accepted): {:#?}",
                    recorded.spans.len(),
                    recorded.requests.len(),
                    recorded.spans.iter().map(|s| (&s.name, &s.trace_id, &s.span_id)).collect::<Vec<_>>()
                );
            }
            recorded = self.changed.wait_timeout(recorded, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        Ok(recorded.spans.clone())
    }
}

/// Locks a mutex, ignoring poisoning: a panicking handler must not wedge the whole backend.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A backend's runtime and listening ports.
pub struct ServerHost {
    runtime: Option<Runtime>,
    ports: Vec<PortHandle>,
}

struct PortHandle {
    address: SocketAddr,
    commands: mpsc::UnboundedSender<PortCommand>,
}

enum PortCommand {
    Down(oneshot::Sender<()>),
    Up(oneshot::Sender<io::Result<()>>),
}

/// How a port answers one accepted connection. `live` says whether the port is still up since
/// the connection was accepted.
pub(crate) type ConnectionServer =
    Arc<dyn Fn(TcpStream, PortLiveness) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Whether the port a connection came in on has gone down since. Aborting a connection's task
/// is not immediate: a poll already running finishes, and could answer a request sent after
/// `set_down(true)` returned; a server that answers on its own (not through hyper) checks this
/// before each answer.
#[derive(Clone)]
pub(crate) struct PortLiveness {
    downs: Arc<AtomicU64>,
    accepted_after: u64,
}

impl PortLiveness {
    pub(crate) fn still_up(&self) -> bool {
        self.downs.load(Ordering::SeqCst) == self.accepted_after
    }
}

impl ServerHost {
    /// Starts a runtime named `name` and serves each router on its own free 127.0.0.1 port.
    pub fn start(name: &str, routers: Vec<axum::Router>) -> Result<Self> {
        let mut host = Self::empty(name)?;
        for router in routers {
            host.add_port(|_| router_server(router))?;
        }
        Ok(host)
    }

    /// A runtime named `name` without ports yet.
    pub(crate) fn empty(name: &str) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(name)
            .enable_all()
            .build()
            .with_context(|| format!("starting the {name} runtime"))?;
        Ok(Self { runtime: Some(runtime), ports: Vec::new() })
    }

    /// Listens on a free 127.0.0.1 port and serves its connections with what `server` makes
    /// for the bound address; down/up apply to it like to every port.
    pub(crate) fn add_port(&mut self, server: impl FnOnce(SocketAddr) -> ConnectionServer) -> Result<SocketAddr> {
        let runtime = self.runtime.as_ref().expect("the runtime lives until drop");
        let listener = runtime.block_on(bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))).context("binding a port")?;
        let address = listener.local_addr()?;
        let (commands, receiver) = mpsc::unbounded_channel();
        runtime.spawn(run_port(listener, address, server(address), receiver));
        self.ports.push(PortHandle { address, commands });
        Ok(address)
    }

    /// The port of the `index`th router given to [`ServerHost::start`].
    pub fn port(&self, index: usize) -> u16 {
        self.ports[index].address.port()
    }

    /// `true`: closes every listening socket and drops open connections, so clients get
    /// "connection refused" (or a reset). `false`: listens on the same ports again. Both take
    /// effect before this returns.
    pub fn set_down(&self, down: bool) -> Result<()> {
        let runtime = self.runtime.as_ref().expect("the runtime lives until drop");
        for port in &self.ports {
            runtime.block_on(async {
                if down {
                    let (done, ack) = oneshot::channel();
                    port.commands.send(PortCommand::Down(done)).ok().context("port task ended")?;
                    ack.await.context("port task ended")
                } else {
                    let (done, ack) = oneshot::channel();
                    port.commands.send(PortCommand::Up(done)).ok().context("port task ended")?;
                    ack.await
                        .context("port task ended")?
                        .with_context(|| format!("listening on {} again", port.address))
                }
            })?;
        }
        Ok(())
    }
}

impl Drop for ServerHost {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(SHUTDOWN_TIMEOUT);
        }
    }
}

/// A listener with SO_REUSEADDR, so the port can be bound again after `set_down(true)` while old
/// connections sit in TIME_WAIT.
async fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(1024)
}

/// One port's accept loop: serves connections while a listener exists, obeys down/up commands.
async fn run_port(
    listener: TcpListener,
    address: SocketAddr,
    server: ConnectionServer,
    mut commands: mpsc::UnboundedReceiver<PortCommand>,
) {
    let mut listener = Some(listener);
    let mut connections = JoinSet::new();
    let downs = Arc::new(AtomicU64::new(0));
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                // The backend is gone; the runtime is shutting down.
                None => return,
                Some(PortCommand::Down(done)) => {
                    listener = None;
                    downs.fetch_add(1, Ordering::SeqCst);
                    connections.abort_all();
                    let _ = done.send(());
                }
                Some(PortCommand::Up(done)) => {
                    let result = match listener {
                        Some(_) => Ok(()),
                        None => bind(address).await.map(|bound| listener = Some(bound)),
                    };
                    let _ = done.send(result);
                }
            },
            accepted = accept(listener.as_ref()) => match accepted {
                Ok(stream) => {
                    let live = PortLiveness { downs: Arc::clone(&downs), accepted_after: downs.load(Ordering::SeqCst) };
                    connections.spawn(server(stream, live));
                }
                // Out of descriptors or a connection reset before accept: keep listening.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// The next connection, or never while the port is down.
async fn accept(listener: Option<&TcpListener>) -> io::Result<TcpStream> {
    match listener {
        Some(listener) => listener.accept().await.map(|(stream, _)| stream),
        None => std::future::pending().await,
    }
}

/// Serves each connection with `router`.
fn router_server(router: axum::Router) -> ConnectionServer {
    Arc::new(move |stream, _live| Box::pin(serve_connection(stream, router.clone())))
}

/// Serves one connection, HTTP/1.1 or HTTP/2 (gRPC clients speak HTTP/2 with prior knowledge,
/// which the auto builder recognises by the connection preface). Aborting the task on down is
/// enough here: hyper answers within the task's polls.
async fn serve_connection(stream: TcpStream, router: axum::Router) {
    let _ = stream.set_nodelay(true);
    let service = TowerToHyperService::new(router);
    let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
}
