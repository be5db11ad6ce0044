//! A Scouter-compatible backend: the ingest side of a Scouter 0.25.0 server, strict as the real
//! one (see `docs/scouter-contract.md` in the shared docs), over HTTP and gRPC.
//!
//! # Endpoints
//!
//! HTTP (`http_uri()`, what `SCOUTER_SERVER_URI` points at):
//! - `GET /scouter/auth/login` with headers `Username`/`Password` → `{"token": ...}`, 401 otherwise;
//! - `POST /scouter/message` with `Authorization: Bearer <token>` and `Content-Type:
//!   application/json`, body `{"request": <OTLP/JSON ExportTraceServiceRequest>}` of at most
//!   2 MiB → `{"status":"success",...}`;
//! - `GET /scouter/healthcheck` → `{"alive":true,"version":"test"}`, no auth.
//!
//! gRPC (`grpc_uri()`, what `SCOUTER_GRPC_URI` points at), package `scouter.grpc.v1` from
//! `scouter-agent/proto/scouter.proto`: `AuthService/Login` and `MessageService/InsertMessage`, whose
//! `message_record` holds the same JSON envelope; metadata `authorization: Bearer <token>`;
//! 4 MiB message limit (enforced by tonic before the handler, so such requests are not recorded).
//!
//! # Strictness
//!
//! The envelope is checked as a `serde_json::Value` *before* anything is accepted
//! ([`validate_envelope`]), because the real server's decoder refuses these forms and a lenient
//! stub would let an exporter bug through:
//! - `traceId`, `spanId` (and link ids) are lowercase hex of 32/16 characters; base64 is refused;
//!   `parentSpanId` is omitted, empty, or 16 lowercase hex characters;
//! - `startTimeUnixNano`, `endTimeUnixNano` (and event `timeUnixNano`) are JSON strings of decimal
//!   digits; numbers are refused; the two span times are required;
//! - `kind` is an integer 0–5; `"SPAN_KIND_SERVER"` is refused;
//! - `request.resourceSpans` is required.
//!
//! Then the request is decoded with opentelemetry-proto's serde (what the real server uses). A
//! violation is answered 422 (gRPC INVALID_ARGUMENT) with a message naming the field path and the
//! rule; a body that is not JSON is 400, a wrong content type 415, an oversized body 413.
//!
//! # Order of checks on ingest
//!
//! hang → token (401 / UNAUTHENTICATED) → `reject_next` → queue full (429 / RESOURCE_EXHAUSTED)
//! → content type → size → JSON → strictness rules → decode → record. Every ingest request that
//! reaches a handler is recorded with its reply ([`ScouterBackend::requests`]).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use serde_json::{json, Map, Value};
use tonic::service::Routes;

use super::{
    grpc_code_for_http, hang_forever, header_list, header_str, hung, lock, read_body, Backend, Faults, ReceivedRequest,
    ReceivedSpan, Recorder, Refusal, Reply, ServerHost, Transport,
};

/// Code generated from `scouter-agent/proto/scouter.proto` by `build.rs`: messages, servers, clients.
pub mod proto {
    tonic::include_proto!("scouter.grpc.v1");
}

use proto::auth_service_server::{AuthService, AuthServiceServer};
use proto::message_service_server::{MessageService, MessageServiceServer};
use proto::{InsertMessageRequest, InsertMessageResponse, LoginRequest, LoginResponse};

/// The credentials a new backend accepts (the Scouter server's bootstrap user).
pub const DEFAULT_USERNAME: &str = "admin";
pub const DEFAULT_PASSWORD: &str = "admin";

/// Largest `POST /scouter/message` body (axum's default limit, which the real server keeps).
pub const HTTP_BODY_LIMIT: usize = 2 * 1024 * 1024;

/// Largest gRPC message (tonic's default, which the real server keeps).
pub const GRPC_MESSAGE_LIMIT: usize = 4 * 1024 * 1024;

/// A login attempt, on either transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginAttempt {
    pub transport: Transport,
    pub username: String,
    pub accepted: bool,
}

/// A running Scouter-compatible backend; stops when dropped.
pub struct ScouterBackend {
    host: ServerHost,
    state: Arc<ScouterState>,
}

impl ScouterBackend {
    /// Starts the HTTP and gRPC servers on free ports, accepting [`DEFAULT_USERNAME`] /
    /// [`DEFAULT_PASSWORD`].
    pub fn start() -> Result<Self> {
        let state = Arc::new(ScouterState::new(DEFAULT_USERNAME, DEFAULT_PASSWORD));
        let host = ServerHost::start("scouter-backend", vec![http_router(state.clone()), grpc_router(state.clone())])?;
        Ok(Self { host, state })
    }

    /// `http://127.0.0.1:PORT`, the value for `SCOUTER_SERVER_URI`.
    pub fn http_uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port())
    }

    /// `http://127.0.0.1:PORT`, the value for `SCOUTER_GRPC_URI`.
    pub fn grpc_uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port())
    }

    pub fn http_port(&self) -> u16 {
        self.host.port(0)
    }

    pub fn grpc_port(&self) -> u16 {
        self.host.port(1)
    }

    /// The environment the Scouter SDK reads: server URIs and credentials.
    pub fn sdk_env(&self) -> Vec<(String, String)> {
        let (username, password) = self.credentials();
        [
            ("SCOUTER_SERVER_URI", self.http_uri()),
            ("SCOUTER_GRPC_URI", self.grpc_uri()),
            ("SCOUTER_USERNAME", username),
            ("SCOUTER_PASSWORD", password),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
    }

    /// Replaces the accepted credentials (tokens already issued stay valid).
    pub fn set_credentials(&self, username: &str, password: &str) {
        let mut auth = lock(&self.state.auth);
        auth.username = username.to_owned();
        auth.password = password.to_owned();
    }

    /// The accepted (username, password).
    pub fn credentials(&self) -> (String, String) {
        let auth = lock(&self.state.auth);
        (auth.username.clone(), auth.password.clone())
    }

    /// Invalidates every token issued so far: ingest answers 401 / UNAUTHENTICATED until the
    /// client logs in again (new logins work at once).
    pub fn expire_tokens(&self) {
        lock(&self.state.auth).tokens.clear();
    }

    /// While on, every ingest request is refused as the real server does when its queue is
    /// full: 429 / RESOURCE_EXHAUSTED.
    pub fn set_queue_full(&self, on: bool) {
        self.state.queue_full.store(on, Ordering::SeqCst);
    }

    /// Every login attempt, in arrival order.
    pub fn logins(&self) -> Vec<LoginAttempt> {
        lock(&self.state.auth).logins.clone()
    }
}

impl Backend for ScouterBackend {
    fn host(&self) -> &ServerHost {
        &self.host
    }

    fn faults(&self) -> &Faults {
        &self.state.faults
    }

    fn recorder(&self) -> &Recorder {
        &self.state.recorder
    }

    /// Forgets recorded spans, requests and login attempts (tokens stay valid).
    fn clear(&self) {
        self.state.recorder.clear();
        lock(&self.state.auth).logins.clear();
    }
}

/// Shared by every handler of one backend.
struct ScouterState {
    auth: Mutex<Auth>,
    faults: Faults,
    queue_full: AtomicBool,
    recorder: Recorder,
    next_token: AtomicU64,
}

struct Auth {
    username: String,
    password: String,
    /// Tokens issued and not expired.
    tokens: HashSet<String>,
    logins: Vec<LoginAttempt>,
}

impl ScouterState {
    fn new(username: &str, password: &str) -> Self {
        Self {
            auth: Mutex::new(Auth {
                username: username.to_owned(),
                password: password.to_owned(),
                tokens: HashSet::new(),
                logins: Vec::new(),
            }),
            faults: Faults::default(),
            queue_full: AtomicBool::new(false),
            recorder: Recorder::default(),
            next_token: AtomicU64::new(1),
        }
    }

    /// Checks credentials and issues a fresh opaque token, recording the attempt either way.
    fn login(&self, transport: Transport, username: &str, password: &str) -> Option<String> {
        let mut auth = lock(&self.auth);
        let accepted = username == auth.username && password == auth.password;
        auth.logins.push(LoginAttempt { transport, username: username.to_owned(), accepted });
        if !accepted {
            return None;
        }
        // Opaque to clients, unique per login so expiry can be told apart from reuse.
        let token = format!("scouter-test-token-{}", self.next_token.fetch_add(1, Ordering::SeqCst));
        auth.tokens.insert(token.clone());
        Some(token)
    }

    /// The checks before the payload is looked at: token, injected rejections, queue full.
    fn admit(&self, authorization: Option<&str>) -> Result<(), Refusal> {
        let token = authorization.and_then(|value| value.strip_prefix("Bearer ")).map(str::trim);
        match token {
            None => return Err((401, "missing bearer token".to_owned())),
            Some(token) if !lock(&self.auth).tokens.contains(token) => {
                return Err((401, "invalid or expired token".to_owned()))
            }
            Some(_) => {}
        }
        if let Some(status) = self.faults.take_rejection() {
            return Err((status, format!("rejected by the test (reject_next, {status})")));
        }
        if self.queue_full.load(Ordering::SeqCst) {
            return Err((429, "message queue is full, retry later".to_owned()));
        }
        Ok(())
    }

    /// Records the request and returns its outcome unchanged.
    fn record(
        &self,
        transport: Transport,
        headers: Vec<(String, String)>,
        body_len: usize,
        outcome: Result<Vec<ReceivedSpan>, Refusal>,
    ) -> Result<usize, Refusal> {
        let (reply_status, message, spans) = match outcome {
            Ok(spans) => (200, String::new(), spans),
            Err((status, message)) => (status, message, Vec::new()),
        };
        let reply = match transport {
            Transport::Http => Reply::Http(reply_status),
            Transport::Grpc => Reply::Grpc(grpc_code_for_http(reply_status)),
            Transport::Kafka => unreachable!("this backend does not speak Kafka"),
        };
        let span_count = spans.len();
        let request = ReceivedRequest { transport, headers, body_len, reply, message: message.clone(), span_count };
        self.recorder.record(request, spans);
        if (200..300).contains(&reply_status) {
            Ok(span_count)
        } else {
            Err((reply_status, message))
        }
    }
}

/// Parses, validates and decodes an ingest envelope into the spans it carries.
fn decode_envelope(body: &[u8], transport: Transport) -> Result<Vec<ReceivedSpan>, Refusal> {
    let envelope: Value = serde_json::from_slice(body).map_err(|e| (400, format!("body is not valid JSON: {e}")))?;
    let request = validate_envelope(&envelope).map_err(|violation| (422, violation))?;
    let decoded: ExportTraceServiceRequest = serde_json::from_value(request.clone())
        .map_err(|e| (422, format!("request does not decode as an OTLP/JSON ExportTraceServiceRequest: {e}")))?;
    Ok(ReceivedSpan::from_request(&decoded, transport))
}

// ---------------------------------------------------------------------------------------------
// Strictness rules

/// Checks the envelope against the Scouter server's strictness rules and returns the inner
/// `request`. The error names the JSON path and the rule broken.
pub fn validate_envelope(envelope: &Value) -> Result<&Value, String> {
    let request = envelope
        .as_object()
        .and_then(|object| object.get("request"))
        .ok_or("the body must be {\"request\": <ExportTraceServiceRequest>}")?;
    let fields = object(request, "request")?;
    let resource_spans = fields.get("resourceSpans").ok_or("request.resourceSpans is required")?;
    for (i, resource_spans) in array(resource_spans, "request.resourceSpans")?.iter().enumerate() {
        let path = format!("request.resourceSpans[{i}]");
        let fields = object(resource_spans, &path)?;
        for (j, scope_spans) in optional_array(fields, "scopeSpans", &path)?.iter().enumerate() {
            let path = format!("{path}.scopeSpans[{j}]");
            let fields = object(scope_spans, &path)?;
            for (k, span) in optional_array(fields, "spans", &path)?.iter().enumerate() {
                validate_span(span, &format!("{path}.spans[{k}]"))?;
            }
        }
    }
    Ok(request)
}

fn validate_span(span: &Value, path: &str) -> Result<(), String> {
    let fields = object(span, path)?;
    hex_id(fields.get("traceId"), 32, "trace ids", &format!("{path}.traceId"))?;
    hex_id(fields.get("spanId"), 16, "span ids", &format!("{path}.spanId"))?;
    match fields.get("parentSpanId") {
        // Roots may omit the parent or leave it empty.
        None => {}
        Some(Value::String(parent)) if parent.is_empty() => {}
        parent => hex_id(parent, 16, "parent span ids", &format!("{path}.parentSpanId"))?,
    }
    for name in ["startTimeUnixNano", "endTimeUnixNano"] {
        let path = format!("{path}.{name}");
        decimal_string(fields.get(name).ok_or_else(|| format!("{path} is required"))?, &path)?;
    }
    if let Some(kind) = fields.get("kind") {
        match kind.as_u64() {
            Some(0..=5) => {}
            _ => {
                return Err(format!(
                    "{path}.kind must be an integer from 0 to 5 (1 internal, 2 server, 3 client, 4 producer, \
                     5 consumer), got {kind}"
                ))
            }
        }
    }
    for (i, event) in optional_array(fields, "events", path)?.iter().enumerate() {
        let path = format!("{path}.events[{i}]");
        if let Some(time) = object(event, &path)?.get("timeUnixNano") {
            decimal_string(time, &format!("{path}.timeUnixNano"))?;
        }
    }
    for (i, link) in optional_array(fields, "links", path)?.iter().enumerate() {
        let path = format!("{path}.links[{i}]");
        let link = object(link, &path)?;
        hex_id(link.get("traceId"), 32, "trace ids", &format!("{path}.traceId"))?;
        hex_id(link.get("spanId"), 16, "span ids", &format!("{path}.spanId"))?;
    }
    // opentelemetry-proto's serde writes an absent status as `null`, which decodes fine.
    if let Some(status) = fields.get("status").filter(|status| !status.is_null()) {
        let path = format!("{path}.status");
        if let Some(code) = object(status, &path)?.get("code") {
            if !matches!(code.as_u64(), Some(0..=2)) {
                return Err(format!("{path}.code must be an integer from 0 to 2, got {code}"));
            }
        }
    }
    Ok(())
}

/// An id: present, a string, exactly `len` lowercase hex digits.
fn hex_id(value: Option<&Value>, len: usize, what: &str, path: &str) -> Result<(), String> {
    let value = value.ok_or_else(|| format!("{path} is required"))?;
    let valid = value
        .as_str()
        .is_some_and(|id| id.len() == len && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    if valid {
        Ok(())
    } else {
        Err(format!("{path}: {what} must be {len} lowercase hex characters (base64 is not accepted), got {value}"))
    }
}

/// A u64 written as a JSON string of decimal digits (OTLP/JSON's form for 64-bit integers).
fn decimal_string(value: &Value, path: &str) -> Result<(), String> {
    let valid = value.as_str().is_some_and(|digits| {
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && digits.parse::<u64>().is_ok()
    });
    if valid {
        Ok(())
    } else {
        Err(format!("{path} must be a JSON string of decimal digits (numbers are not accepted), got {value}"))
    }
}

fn object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, String> {
    value.as_object().ok_or_else(|| format!("{path} must be an object, got {value}"))
}

fn array<'a>(value: &'a Value, path: &str) -> Result<&'a [Value], String> {
    value.as_array().map(Vec::as_slice).ok_or_else(|| format!("{path} must be an array, got {value}"))
}

/// `fields[name]` as an array, or empty when absent (proto3 JSON omits empty repeated fields).
fn optional_array<'a>(fields: &'a Map<String, Value>, name: &str, path: &str) -> Result<&'a [Value], String> {
    match fields.get(name) {
        None => Ok(&[]),
        Some(value) => array(value, &format!("{path}.{name}")),
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

fn http_router(state: Arc<ScouterState>) -> Router {
    Router::new()
        .route("/scouter/auth/login", get(http_login))
        .route("/scouter/message", post(http_message))
        .route("/scouter/healthcheck", get(http_healthcheck))
        .with_state(state)
}

async fn http_healthcheck() -> Response {
    Json(json!({"alive": true, "version": "test"})).into_response()
}

async fn http_login(State(state): State<Arc<ScouterState>>, headers: HeaderMap) -> Response {
    let username = header_str(&headers, "username").unwrap_or_default();
    let password = header_str(&headers, "password").unwrap_or_default();
    match state.login(Transport::Http, username, password) {
        Some(token) => Json(json!({"token": token})).into_response(),
        None => http_error(401, "invalid credentials"),
    }
}

async fn http_message(State(state): State<Arc<ScouterState>>, headers: HeaderMap, body: Body) -> Response {
    // The body is read first (bounded) so every recorded request knows its size.
    let body = read_body(body, HTTP_BODY_LIMIT).await;
    let body_len = match &body {
        Ok(bytes) => bytes.len(),
        Err(_) => header_str(&headers, "content-length").and_then(|len| len.parse().ok()).unwrap_or(HTTP_BODY_LIMIT),
    };
    let seen = header_list(&headers);
    if state.faults.hanging() {
        state.recorder.record(hung(Transport::Http, seen, body_len), Vec::new());
        return hang_forever().await;
    }
    let outcome = state.admit(header_str(&headers, "authorization")).and_then(|()| {
        if !is_json(header_str(&headers, "content-type")) {
            return Err((415, "Content-Type must be application/json".to_owned()));
        }
        let body = body?;
        decode_envelope(&body, Transport::Http)
    });
    match state.record(Transport::Http, seen, body_len, outcome) {
        Ok(count) => Json(json!({"status": "success", "message": format!("{count} spans inserted")})).into_response(),
        Err((status, message)) => http_error(status, &message),
    }
}

fn is_json(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

fn http_error(status: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, "application/json")], json!({"status": "error", "message": message}).to_string())
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// gRPC

fn grpc_router(state: Arc<ScouterState>) -> Router {
    let auth = AuthServiceServer::new(GrpcAuth(state.clone()));
    let messages = MessageServiceServer::new(GrpcMessages(state)).max_decoding_message_size(GRPC_MESSAGE_LIMIT);
    Routes::new(auth).add_service(messages).into_axum_router()
}

struct GrpcAuth(Arc<ScouterState>);

#[tonic::async_trait]
impl AuthService for GrpcAuth {
    async fn login(
        &self,
        request: tonic::Request<LoginRequest>,
    ) -> Result<tonic::Response<LoginResponse>, tonic::Status> {
        let LoginRequest { username, password } = request.into_inner();
        match self.0.login(Transport::Grpc, &username, &password) {
            Some(token) => Ok(tonic::Response::new(LoginResponse {
                token,
                status: "success".to_owned(),
                message: "logged in".to_owned(),
            })),
            None => Err(tonic::Status::unauthenticated("invalid credentials")),
        }
    }
}

struct GrpcMessages(Arc<ScouterState>);

#[tonic::async_trait]
impl MessageService for GrpcMessages {
    async fn insert_message(
        &self,
        request: tonic::Request<InsertMessageRequest>,
    ) -> Result<tonic::Response<InsertMessageResponse>, tonic::Status> {
        let state = &self.0;
        let seen = header_list(&request.metadata().clone().into_headers());
        let authorization = request.metadata().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let record = request.into_inner().message_record;
        if state.faults.hanging() {
            state.recorder.record(hung(Transport::Grpc, seen, record.len()), Vec::new());
            return hang_forever().await;
        }
        let outcome = state.admit(authorization.as_deref()).and_then(|()| decode_envelope(&record, Transport::Grpc));
        match state.record(Transport::Grpc, seen, record.len(), outcome) {
            Ok(count) => Ok(tonic::Response::new(InsertMessageResponse {
                status: "success".to_owned(),
                message: format!("{count} spans inserted"),
            })),
            Err((status, message)) => Err(tonic::Status::new(grpc_code_for_http(status), message)),
        }
    }
}
