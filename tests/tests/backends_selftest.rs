//! Self-tests of the test backends (`scouter_e2e::backends`): no agent, no root, no eBPF.
//!
//! Each backend is driven by plain clients (the raw HTTP/1.1 client in `scouter_e2e::http`,
//! tonic clients for gRPC) to prove that it accepts what the real servers accept, records it
//! faithfully, and refuses exactly what the Scouter contract says the real server refuses, so a
//! later exporter test that passes against these backends means something.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use scouter_e2e::backends::otlp::OtlpReceiver;
use scouter_e2e::backends::scouter::proto::auth_service_client::AuthServiceClient;
use scouter_e2e::backends::scouter::proto::message_service_client::MessageServiceClient;
use scouter_e2e::backends::scouter::proto::{InsertMessageRequest, InsertMessageResponse, LoginRequest};
use scouter_e2e::backends::scouter::{ScouterBackend, DEFAULT_PASSWORD, DEFAULT_USERNAME, HTTP_BODY_LIMIT};
use scouter_e2e::backends::{to_hex, AttrValue, Backend, ReceivedSpan, Reply, Transport};
use scouter_e2e::http::{HttpConnection, Request, Response};
use serde_json::{json, Value};
use tonic::codec::CompressionEncoding;
use tonic::Code;

const TRACE_ID: [u8; 16] =
    [0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36];
const ROOT_ID: [u8; 8] = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];
const CHILD_ID: [u8; 8] = [0x5f, 0xb3, 0x97, 0xbe, 0x34, 0xd2, 0x6b, 0x51];
const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Payloads

fn string_value(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.to_owned())) }),
    }
}

fn int_value(key: &str, value: i64) -> KeyValue {
    KeyValue { key: key.to_owned(), value: Some(AnyValue { value: Some(any_value::Value::IntValue(value)) }) }
}

/// A server root span and a failed client child in one trace, as the Scouter SDK shapes them.
fn sample_request() -> ExportTraceServiceRequest {
    let root = Span {
        trace_id: TRACE_ID.to_vec(),
        span_id: ROOT_ID.to_vec(),
        name: "GET /hello".to_owned(),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_250_000_000,
        attributes: vec![string_value("http.method", "GET"), int_value("http.status_code", 200)],
        flags: 0x101,
        ..Default::default()
    };
    let child = Span {
        trace_id: TRACE_ID.to_vec(),
        span_id: CHILD_ID.to_vec(),
        parent_span_id: ROOT_ID.to_vec(),
        name: "call downstream".to_owned(),
        kind: span::SpanKind::Client as i32,
        start_time_unix_nano: 1_700_000_000_100_000_000,
        end_time_unix_nano: 1_700_000_000_200_000_000,
        attributes: vec![string_value("scouter.tracing.tag.team", "core")],
        events: vec![span::Event {
            time_unix_nano: 1_700_000_000_150_000_000,
            name: "span.error".to_owned(),
            attributes: vec![string_value("exception.type", "ValueError")],
            dropped_attributes_count: 0,
        }],
        status: Some(Status { code: 2, message: "boom".to_owned() }),
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    string_value("service.name", "selftest"),
                    string_value("scouter.scope", "scouter.tracer.0.25.0"),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope { name: "selftest-tracer".to_owned(), ..Default::default() }),
                spans: vec![root, child],
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// The Scouter envelope, serialized by opentelemetry-proto's serde as an exporter would.
fn envelope(request: &ExportTraceServiceRequest) -> Value {
    json!({ "request": serde_json::to_value(request).expect("OTLP requests serialize") })
}

fn envelope_bytes(request: &ExportTraceServiceRequest) -> Vec<u8> {
    serde_json::to_vec(&envelope(request)).expect("JSON serializes")
}

/// The sample envelope with its first span edited by `edit`.
fn edited_envelope(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut envelope = envelope(&sample_request());
    edit(&mut envelope["request"]["resourceSpans"][0]["scopeSpans"][0]["spans"][0]);
    serde_json::to_vec(&envelope).expect("JSON serializes")
}

// ---------------------------------------------------------------------------------------------
// Clients

fn http_login(port: u16, username: &str, password: &str) -> Result<Response> {
    let request = Request::get("/scouter/auth/login").header("Username", username).header("Password", password);
    HttpConnection::connect(port)?.send(&request)
}

/// Logs in with the default credentials and returns the token.
fn http_token(backend: &ScouterBackend) -> Result<String> {
    let response = http_login(backend.http_port(), DEFAULT_USERNAME, DEFAULT_PASSWORD)?;
    ensure!(response.status == 200, "login failed: {}", body_text(&response));
    let body: Value = serde_json::from_slice(&response.body)?;
    Ok(body["token"].as_str().context("a token in the login response")?.to_owned())
}

fn post_message(port: u16, token: Option<&str>, content_type: &str, body: Vec<u8>) -> Result<Response> {
    let mut request = Request::post("/scouter/message", body).header("Content-Type", content_type);
    if let Some(token) = token {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    HttpConnection::connect(port)?.send(&request)
}

fn body_text(response: &Response) -> String {
    String::from_utf8_lossy(&response.body).into_owned()
}

/// Asserts the status and that the message names the rule (`needle`).
fn expect_refusal(response: &Response, status: u16, needle: &str) -> Result<()> {
    let body = body_text(response);
    ensure!(response.status == status, "expected {status}, got {}: {body}", response.status);
    ensure!(body.contains(needle), "the {status} message should mention {needle:?}: {body}");
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

async fn grpc_login(uri: String, username: &str, password: &str) -> Result<String, tonic::Status> {
    let mut client = AuthServiceClient::connect(uri).await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let request = LoginRequest { username: username.to_owned(), password: password.to_owned() };
    Ok(client.login(request).await?.into_inner().token)
}

async fn grpc_insert(
    uri: String,
    token: Option<&str>,
    record: Vec<u8>,
) -> Result<InsertMessageResponse, tonic::Status> {
    let mut client = MessageServiceClient::connect(uri).await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(InsertMessageRequest { message_record: record });
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ASCII"));
    }
    Ok(client.insert_message(request).await?.into_inner())
}

fn expect_code<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, needle: &str) -> Result<()> {
    match result {
        Err(status) if status.code() == code && status.message().contains(needle) => Ok(()),
        other => bail!("expected {code:?} mentioning {needle:?}, got {other:?}"),
    }
}

/// What two sinks must agree on for the same span (everything but the transport).
fn comparable(span: &ReceivedSpan) -> ReceivedSpan {
    ReceivedSpan { transport: Transport::Http, ..span.clone() }
}

/// Checks the two sample spans arrived intact.
fn check_sample_spans(spans: &[ReceivedSpan], transport: Transport) -> Result<()> {
    ensure!(spans.len() == 2, "expected the 2 sample spans, got {spans:#?}");
    let root = spans.iter().find(|s| s.span_id == to_hex(&ROOT_ID)).context("the root span")?;
    let child = spans.iter().find(|s| s.span_id == to_hex(&CHILD_ID)).context("the child span")?;
    ensure!(root.transport == transport && child.transport == transport, "wrong transport: {spans:#?}");
    ensure!(root.trace_id == to_hex(&TRACE_ID) && child.trace_id == root.trace_id, "trace ids: {spans:#?}");
    ensure!(root.parent_span_id.is_none(), "the root has a parent: {root:#?}");
    ensure!(child.parent_span_id.as_deref() == Some(root.span_id.as_str()), "the child's parent: {child:#?}");
    ensure!(root.name == "GET /hello" && root.kind == 2 && child.kind == 3, "names/kinds: {spans:#?}");
    ensure!(root.start_time_unix_nano == 1_700_000_000_000_000_000, "start time: {root:#?}");
    ensure!(root.end_time_unix_nano == 1_700_000_000_250_000_000, "end time: {root:#?}");
    ensure!(root.attr_str("http.method") == Some("GET"), "string attribute: {root:#?}");
    ensure!(root.attr("http.status_code") == Some(&AttrValue::Int(200)), "int attribute: {root:#?}");
    ensure!(root.flags == 0x101, "flags: {root:#?}");
    ensure!(root.service_name() == Some("selftest"), "resource: {root:#?}");
    ensure!(root.scope_name == "selftest-tracer", "scope: {root:#?}");
    ensure!(child.status_code == 2 && child.status_message == "boom", "status: {child:#?}");
    ensure!(child.events.len() == 1 && child.events[0].name == "span.error", "events: {child:#?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Scouter over HTTP

#[test]
fn scouter_http_accepts_a_valid_envelope_and_records_its_spans() -> Result<()> {
    let backend = ScouterBackend::start()?;
    let health = HttpConnection::connect(backend.http_port())?.send(&Request::get("/scouter/healthcheck"))?;
    ensure!(health.status == 200, "healthcheck: {}", body_text(&health));
    ensure!(serde_json::from_slice::<Value>(&health.body)? == json!({"alive": true, "version": "test"}));

    let token = http_token(&backend)?;
    let body = envelope_bytes(&sample_request());
    let response = post_message(backend.http_port(), Some(&token), "application/json", body.clone())?;
    ensure!(response.status == 200, "a valid envelope was refused: {}", body_text(&response));
    let reply: Value = serde_json::from_slice(&response.body)?;
    ensure!(reply["status"] == "success", "reply: {reply}");

    check_sample_spans(&backend.wait_for_spans(2, WAIT)?, Transport::Http)?;
    let requests = backend.requests();
    ensure!(requests.len() == 1 && requests[0].accepted(), "requests: {requests:#?}");
    ensure!(requests[0].body_len == body.len() && requests[0].span_count == 2, "request record: {requests:#?}");
    ensure!(requests[0].header("authorization") == Some(&format!("Bearer {token}")), "headers: {requests:#?}");
    ensure!(backend.logins().len() == 1 && backend.logins()[0].accepted, "logins: {:?}", backend.logins());
    Ok(())
}

#[test]
fn scouter_http_enforces_the_strictness_rules() -> Result<()> {
    let backend = ScouterBackend::start()?;
    let token = http_token(&backend)?;
    let port = backend.http_port();
    let post = |body: Vec<u8>| post_message(port, Some(&token), "application/json", body);

    // Base64 ids, as protobuf's canonical JSON mapping would write them.
    let base64_trace = post(edited_envelope(|span| span["traceId"] = json!("S/kvNXezTaajzpKdDg5HNg==")))?;
    expect_refusal(&base64_trace, 422, "traceId: trace ids must be 32 lowercase hex")?;
    let base64_span = post(edited_envelope(|span| span["spanId"] = json!("APBnqgupArc=")))?;
    expect_refusal(&base64_span, 422, "spanId: span ids must be 16 lowercase hex")?;
    let upper = post(edited_envelope(|span| span["traceId"] = json!(to_hex(&TRACE_ID).to_uppercase())))?;
    expect_refusal(&upper, 422, "lowercase hex")?;
    let parent = post(edited_envelope(|span| span["parentSpanId"] = json!("APBnqgupArc=")))?;
    expect_refusal(&parent, 422, "parentSpanId")?;

    let numeric = post(edited_envelope(|span| span["startTimeUnixNano"] = json!(1_700_000_000_000_000_000u64)))?;
    expect_refusal(&numeric, 422, "startTimeUnixNano must be a JSON string of decimal digits")?;
    let numeric_end = post(edited_envelope(|span| span["endTimeUnixNano"] = json!(1_700_000_000_250_000_000u64)))?;
    expect_refusal(&numeric_end, 422, "endTimeUnixNano must be a JSON string of decimal digits")?;

    let named_kind = post(edited_envelope(|span| span["kind"] = json!("SPAN_KIND_SERVER")))?;
    expect_refusal(&named_kind, 422, "kind must be an integer")?;
    let big_kind = post(edited_envelope(|span| span["kind"] = json!(6)))?;
    expect_refusal(&big_kind, 422, "kind must be an integer")?;

    let no_resource_spans = post(serde_json::to_vec(&json!({"request": {}}))?)?;
    expect_refusal(&no_resource_spans, 422, "resourceSpans is required")?;
    let bare_request = post(serde_json::to_vec(&serde_json::to_value(sample_request())?)?)?;
    expect_refusal(&bare_request, 422, "{\\\"request\\\"")?;
    let not_json = post(b"{\"request\": ".to_vec())?;
    expect_refusal(&not_json, 400, "not valid JSON")?;
    let wrong_type = post_message(port, Some(&token), "text/plain", envelope_bytes(&sample_request()))?;
    expect_refusal(&wrong_type, 415, "application/json")?;

    // What the contract allows: an empty parentSpanId for a root, intValue as a number.
    let allowed = post(edited_envelope(|span| {
        span["parentSpanId"] = json!("");
        span["attributes"][1]["value"] = json!({"intValue": 200});
    }))?;
    ensure!(allowed.status == 200, "an allowed form was refused: {}", body_text(&allowed));

    let spans = backend.spans();
    ensure!(spans.len() == 2, "only the allowed envelope's spans are recorded: {spans:#?}");
    ensure!(spans[0].attr("http.status_code") == Some(&AttrValue::Int(200)), "numeric intValue: {spans:#?}");
    let refused = backend.requests().iter().filter(|r| !r.accepted()).count();
    ensure!(refused == 12, "every refusal is recorded: {:#?}", backend.requests());
    Ok(())
}

#[test]
fn scouter_http_requires_a_valid_token() -> Result<()> {
    let backend = ScouterBackend::start()?;
    let port = backend.http_port();
    let body = || envelope_bytes(&sample_request());

    expect_refusal(&http_login(port, DEFAULT_USERNAME, "wrong")?, 401, "invalid credentials")?;
    expect_refusal(&post_message(port, None, "application/json", body())?, 401, "missing bearer token")?;
    expect_refusal(&post_message(port, Some("forged"), "application/json", body())?, 401, "invalid or expired")?;

    let token = http_token(&backend)?;
    ensure!(post_message(port, Some(&token), "application/json", body())?.status == 200);
    backend.expire_tokens();
    expect_refusal(&post_message(port, Some(&token), "application/json", body())?, 401, "invalid or expired")?;
    let fresh = http_token(&backend)?;
    ensure!(fresh != token, "a new login issues a new token");
    let again = post_message(port, Some(&fresh), "application/json", body())?;
    ensure!(again.status == 200, "re-login did not restore ingest: {}", body_text(&again));

    backend.set_credentials("scouter", "s3cret");
    expect_refusal(&http_login(port, DEFAULT_USERNAME, DEFAULT_PASSWORD)?, 401, "invalid credentials")?;
    ensure!(http_login(port, "scouter", "s3cret")?.status == 200);

    let logins: Vec<bool> = backend.logins().iter().map(|login| login.accepted).collect();
    ensure!(logins == [false, true, true, false, true], "logins: {:?}", backend.logins());
    ensure!(backend.spans().len() == 4, "two accepted envelopes: {:#?}", backend.spans());
    Ok(())
}

#[test]
fn scouter_http_rejections_and_body_limit() -> Result<()> {
    let backend = ScouterBackend::start()?;
    let token = http_token(&backend)?;
    let port = backend.http_port();
    let post = || post_message(port, Some(&token), "application/json", envelope_bytes(&sample_request()));

    backend.reject_next(2, 429);
    ensure!(post()?.status == 429 && post()?.status == 429, "two injected 429s");
    ensure!(post()?.status == 200, "the third request is accepted");

    backend.set_queue_full(true);
    expect_refusal(&post()?, 429, "queue is full")?;
    backend.set_queue_full(false);
    ensure!(post()?.status == 200);

    let too_big = vec![b' '; HTTP_BODY_LIMIT + 1];
    expect_refusal(&post_message(port, Some(&token), "application/json", too_big)?, 413, "limit")?;

    let replies: Vec<Reply> = backend.requests().iter().map(|r| r.reply).collect();
    let expected = [429, 429, 200, 429, 200, 413].map(Reply::Http);
    ensure!(replies == expected, "replies: {replies:?}");
    ensure!(backend.spans().len() == 4, "two accepted envelopes: {:#?}", backend.spans());
    Ok(())
}

#[test]
fn scouter_down_refuses_connections_and_hang_never_answers() -> Result<()> {
    let backend = ScouterBackend::start()?;
    let port = backend.http_port();
    let mut kept_alive = HttpConnection::connect(port)?;
    ensure!(kept_alive.send(&Request::get("/scouter/healthcheck"))?.status == 200);

    backend.set_down(true)?;
    ensure!(kept_alive.closed_by_server(Duration::from_secs(2))?, "open connections are dropped when down");
    for port in [backend.http_port(), backend.grpc_port()] {
        match TcpStream::connect(("127.0.0.1", port)) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
            other => bail!("port {port} should refuse connections while down, got {other:?}"),
        }
    }
    backend.set_down(false)?;
    let health = HttpConnection::connect(port)?.send(&Request::get("/scouter/healthcheck"))?;
    ensure!(health.status == 200, "up again on the same port");

    let token = http_token(&backend)?;
    backend.hang(true);
    let request = Request::post("/scouter/message", envelope_bytes(&sample_request()))
        .header("Content-Type", "application/json")
        .header("Authorization", &format!("Bearer {token}"));
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    stream.write_all(&request.to_bytes(port))?;
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => bail!("a hung request must get no answer, got {other:?}"),
    }
    ensure!(backend.requests().last().map(|r| r.reply) == Some(Reply::Hung), "{:#?}", backend.requests());

    let runtime = runtime()?;
    let record = envelope_bytes(&sample_request());
    let hung = runtime.block_on(async {
        tokio::time::timeout(Duration::from_millis(500), grpc_insert(backend.grpc_uri(), Some(&token), record)).await
    });
    ensure!(hung.is_err(), "a hung gRPC call must not complete: {hung:?}");
    backend.hang(false);
    let response = post_message(port, Some(&token), "application/json", envelope_bytes(&sample_request()))?;
    ensure!(response.status == 200, "answers again after hang(false)");
    ensure!(backend.spans().len() == 2, "hung requests record no spans: {:#?}", backend.spans());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Scouter over gRPC

#[test]
fn scouter_grpc_login_insert_and_refusals() -> Result<()> {
    let backend = ScouterBackend::start()?;
    let runtime = runtime()?;
    let uri = backend.grpc_uri();
    let record = || envelope_bytes(&sample_request());

    expect_code(runtime.block_on(grpc_login(uri.clone(), DEFAULT_USERNAME, "wrong")), Code::Unauthenticated, "")?;
    let token = runtime.block_on(grpc_login(uri.clone(), DEFAULT_USERNAME, DEFAULT_PASSWORD))?;

    let inserted = runtime.block_on(grpc_insert(uri.clone(), Some(&token), record()))?;
    ensure!(inserted.status == "success", "insert: {inserted:?}");
    check_sample_spans(&backend.wait_for_spans(2, WAIT)?, Transport::Grpc)?;

    expect_code(runtime.block_on(grpc_insert(uri.clone(), None, record())), Code::Unauthenticated, "missing")?;
    let named_kind = edited_envelope(|span| span["kind"] = json!("SPAN_KIND_SERVER"));
    expect_code(
        runtime.block_on(grpc_insert(uri.clone(), Some(&token), named_kind)),
        Code::InvalidArgument,
        "kind must be an integer",
    )?;
    let base64 = edited_envelope(|span| span["traceId"] = json!("S/kvNXezTaajzpKdDg5HNg=="));
    expect_code(runtime.block_on(grpc_insert(uri.clone(), Some(&token), base64)), Code::InvalidArgument, "hex")?;

    backend.reject_next(1, 429);
    expect_code(runtime.block_on(grpc_insert(uri.clone(), Some(&token), record())), Code::ResourceExhausted, "")?;
    backend.set_queue_full(true);
    expect_code(
        runtime.block_on(grpc_insert(uri.clone(), Some(&token), record())),
        Code::ResourceExhausted,
        "queue is full",
    )?;
    backend.set_queue_full(false);

    backend.expire_tokens();
    expect_code(runtime.block_on(grpc_insert(uri.clone(), Some(&token), record())), Code::Unauthenticated, "")?;
    let fresh = runtime.block_on(grpc_login(uri.clone(), DEFAULT_USERNAME, DEFAULT_PASSWORD))?;
    runtime.block_on(grpc_insert(uri.clone(), Some(&fresh), record()))?;

    // Past the 4 MiB message limit tonic refuses the message before the handler sees it.
    let huge = vec![b' '; 4 * 1024 * 1024 + 1];
    let too_big = runtime.block_on(grpc_insert(uri, Some(&fresh), huge));
    ensure!(too_big.is_err(), "a message over 4 MiB must be refused: {too_big:?}");

    let replies: Vec<Reply> = backend.requests().iter().map(|r| r.reply).collect();
    let expected = [
        Code::Ok,
        Code::Unauthenticated,
        Code::InvalidArgument,
        Code::InvalidArgument,
        Code::ResourceExhausted,
        Code::ResourceExhausted,
        Code::Unauthenticated,
        Code::Ok,
    ]
    .map(Reply::Grpc);
    ensure!(replies == expected, "replies: {replies:?}");
    ensure!(backend.spans().len() == 4, "two accepted inserts: {:#?}", backend.spans());
    ensure!(backend.logins().iter().all(|l| l.transport == Transport::Grpc) && backend.logins().len() == 3);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// OTLP

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes)?;
    Ok(encoder.finish()?)
}

fn otlp_post(receiver: &OtlpReceiver, content_type: &str, gzipped: bool, body: Vec<u8>) -> Result<Response> {
    let mut request = Request::post("/v1/traces", body).header("Content-Type", content_type);
    if gzipped {
        request = request.header("Content-Encoding", "gzip");
    }
    HttpConnection::connect(receiver.http_port())?.send(&request.header("X-Api-Key", "secret"))
}

#[test]
fn otlp_grpc_export_is_decoded_and_recorded() -> Result<()> {
    let receiver = OtlpReceiver::start()?;
    let runtime = runtime()?;
    runtime.block_on(async {
        let mut client =
            TraceServiceClient::connect(receiver.grpc_endpoint()).await?.send_compressed(CompressionEncoding::Gzip);
        let mut request = tonic::Request::new(sample_request());
        request.metadata_mut().insert("x-api-key", "secret".parse()?);
        client.export(request).await?;
        receiver.reject_next(1, 503);
        let refused = client.export(sample_request()).await;
        ensure!(matches!(&refused, Err(s) if s.code() == Code::Unavailable), "503 → UNAVAILABLE: {refused:?}");
        anyhow::Ok(())
    })?;
    check_sample_spans(&receiver.wait_for_spans(2, WAIT)?, Transport::Grpc)?;
    let requests = receiver.requests();
    ensure!(requests.len() == 2 && requests[0].accepted(), "requests: {requests:#?}");
    ensure!(requests[0].header("x-api-key") == Some("secret"), "metadata is recorded: {requests:#?}");
    ensure!(requests[0].body_len == sample_request().encoded_len(), "size: {requests:#?}");
    ensure!(requests[1].reply == Reply::Grpc(Code::Unavailable), "requests: {requests:#?}");
    Ok(())
}

#[test]
fn otlp_http_protobuf_and_json_are_decoded_and_recorded() -> Result<()> {
    let receiver = OtlpReceiver::start()?;
    let protobuf = sample_request().encode_to_vec();

    let plain = otlp_post(&receiver, "application/x-protobuf", false, protobuf.clone())?;
    ensure!(plain.status == 200, "protobuf: {}", body_text(&plain));
    ensure!(plain.header("content-type") == Some("application/x-protobuf"), "reply type: {:?}", plain.headers);
    check_sample_spans(&receiver.wait_for_spans(2, WAIT)?, Transport::Http)?;
    receiver.clear();

    let gzipped = gzip(&protobuf)?;
    let response = otlp_post(&receiver, "application/x-protobuf", true, gzipped.clone())?;
    ensure!(response.status == 200, "gzip protobuf: {}", body_text(&response));
    check_sample_spans(&receiver.wait_for_spans(2, WAIT)?, Transport::Http)?;
    let requests = receiver.requests();
    ensure!(requests[0].body_len == gzipped.len(), "the compressed size is recorded: {requests:#?}");
    ensure!(requests[0].header("content-encoding") == Some("gzip"), "headers: {requests:#?}");
    ensure!(requests[0].header("x-api-key") == Some("secret"), "headers: {requests:#?}");
    receiver.clear();

    let json_body = serde_json::to_vec(&sample_request())?;
    let response = otlp_post(&receiver, "application/json", false, json_body)?;
    ensure!(response.status == 200 && response.body == b"{}", "json: {}", body_text(&response));
    check_sample_spans(&receiver.wait_for_spans(2, WAIT)?, Transport::Http)?;

    receiver.reject_next(1, 503);
    ensure!(otlp_post(&receiver, "application/x-protobuf", false, protobuf.clone())?.status == 503);
    ensure!(otlp_post(&receiver, "text/plain", false, protobuf)?.status == 415);
    ensure!(otlp_post(&receiver, "application/x-protobuf", false, b"\xff\xff".to_vec())?.status == 400);
    ensure!(receiver.spans().len() == 2, "refused requests record no spans: {:#?}", receiver.spans());
    Ok(())
}

#[test]
fn both_sinks_record_the_same_spans() -> Result<()> {
    let scouter = ScouterBackend::start()?;
    let otlp = OtlpReceiver::start()?;
    let token = http_token(&scouter)?;
    let response =
        post_message(scouter.http_port(), Some(&token), "application/json", envelope_bytes(&sample_request()))?;
    ensure!(response.status == 200, "scouter: {}", body_text(&response));
    let response = otlp_post(&otlp, "application/x-protobuf", false, sample_request().encode_to_vec())?;
    ensure!(response.status == 200, "otlp: {}", body_text(&response));

    let mut from_scouter: Vec<ReceivedSpan> = scouter.wait_for_spans(2, WAIT)?.iter().map(comparable).collect();
    let mut from_otlp: Vec<ReceivedSpan> = otlp.wait_for_spans(2, WAIT)?.iter().map(comparable).collect();
    from_scouter.sort_by(|a, b| a.span_id.cmp(&b.span_id));
    from_otlp.sort_by(|a, b| a.span_id.cmp(&b.span_id));
    ensure!(from_scouter == from_otlp, "the sinks disagree:\n{from_scouter:#?}\n{from_otlp:#?}");
    Ok(())
}
