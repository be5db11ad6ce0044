//! The HTTP port: OTLP/HTTP `POST /v1/traces` (protobuf or JSON, optionally gzip) and
//! Scouter's HTTP ingest (`GET /scouter/auth/login`, `POST /scouter/message`,
//! `GET /scouter/healthcheck`).

use std::io::Read as _;
use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prost::Message as _;
use serde_json::json;
use tokio::net::TcpListener;

use super::{has_bearer, login_token, Intake, Refusal, MAX_MESSAGE_BYTES};
use crate::merge::decode::{self, DecodeError};

#[derive(Clone)]
struct Port {
    intake: Intake,
    local: SocketAddr,
}

pub(super) async fn serve(listener: TcpListener, intake: Intake) {
    let Ok(local) = listener.local_addr() else { return };
    let app = Router::new()
        .route("/v1/traces", post(otlp_traces))
        .route("/scouter/auth/login", get(scouter_login))
        .route("/scouter/message", post(scouter_message))
        .route("/scouter/healthcheck", get(scouter_health))
        // Room for a gzip body's worst case is not needed: the limit applies before inflating,
        // and inflating is bounded separately.
        .layer(DefaultBodyLimit::max(MAX_MESSAGE_BYTES))
        .with_state(Port { intake, local });
    let served = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await;
    if let Err(error) = served {
        tracing::error!(%local, %error, "the HTTP receiver stopped");
    }
}

/// The two encodings OTLP/HTTP allows; the answer uses the request's.
#[derive(Clone, Copy, PartialEq)]
enum Encoding {
    Protobuf,
    Json,
}

async fn otlp_traces(
    State(port): State<Port>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let encoding = match header_text(&headers, header::CONTENT_TYPE).split(';').next().map(str::trim) {
        Some("application/x-protobuf") => Encoding::Protobuf,
        Some("application/json") => Encoding::Json,
        other => {
            port.intake.count_bad_request();
            let message = format!("Content-Type {other:?}: send application/x-protobuf or application/json");
            return (StatusCode::UNSUPPORTED_MEDIA_TYPE, message).into_response();
        }
    };
    let decoded = inflated(&headers, &body).and_then(|body| match encoding {
        Encoding::Protobuf => decode::from_protobuf(&body).map_err(bad_body),
        Encoding::Json => decode::from_json(&body).map_err(bad_body),
    });
    let decoded = match decoded {
        Ok(decoded) => decoded,
        Err(message) => {
            port.intake.count_bad_request();
            return (StatusCode::BAD_REQUEST, message).into_response();
        }
    };
    let answer = decoded.export_response();
    match port.intake.ingest(decoded, Some((peer, port.local))).await {
        Ok(()) if encoding == Encoding::Protobuf => {
            ([(header::CONTENT_TYPE, "application/x-protobuf")], answer.encode_to_vec()).into_response()
        }
        Ok(()) => Json(answer).into_response(),
        Err(Refusal::Busy) => busy(StatusCode::SERVICE_UNAVAILABLE),
    }
}

async fn scouter_login() -> Response {
    Json(json!({ "token": login_token() })).into_response()
}

async fn scouter_message(
    State(port): State<Port>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !has_bearer(headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())) {
        return scouter_error(StatusCode::UNAUTHORIZED, "log in at /scouter/auth/login first".into());
    }
    let decoded = match inflated(&headers, &body).and_then(|body| decode::from_scouter_message(&body).map_err(bad_body))
    {
        Ok(decoded) => decoded,
        Err(message) => {
            port.intake.count_bad_request();
            return scouter_error(StatusCode::UNPROCESSABLE_ENTITY, message);
        }
    };
    let (count, rejected) = (decoded.spans.len(), decoded.rejected);
    match port.intake.ingest(decoded, Some((peer, port.local))).await {
        Ok(()) => Json(json!({"status": "success", "message": format!("{count} spans received, {rejected} rejected")}))
            .into_response(),
        // The Scouter SDK reads 429 as "the server's queue is full".
        Err(Refusal::Busy) => busy(StatusCode::TOO_MANY_REQUESTS),
    }
}

async fn scouter_health() -> Response {
    Json(json!({"alive": true, "version": env!("CARGO_PKG_VERSION")})).into_response()
}

fn busy(status: StatusCode) -> Response {
    let mut response = (status, "the agent is behind; retry").into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn scouter_error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({"status": "error", "message": message}))).into_response()
}

fn bad_body(error: DecodeError) -> String {
    error.to_string()
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> &str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

/// The body, inflated when it came gzip-compressed, never beyond [`MAX_MESSAGE_BYTES`].
fn inflated(headers: &HeaderMap, body: &Bytes) -> Result<Vec<u8>, String> {
    match header_text(headers, header::CONTENT_ENCODING) {
        "" | "identity" => Ok(body.to_vec()),
        "gzip" => {
            let mut inflated = Vec::new();
            let limit = MAX_MESSAGE_BYTES as u64 + 1;
            flate2::read::GzDecoder::new(&body[..])
                .take(limit)
                .read_to_end(&mut inflated)
                .map_err(|error| format!("the gzip body does not inflate: {error}"))?;
            if inflated.len() > MAX_MESSAGE_BYTES {
                return Err(format!("the body inflates beyond {MAX_MESSAGE_BYTES} bytes"));
            }
            Ok(inflated)
        }
        other => Err(format!("Content-Encoding {other:?}: send gzip or none")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, RwLock};

    use tokio::sync::mpsc;

    use super::*;
    use crate::export::otlp::export_request;
    use crate::merge::receivers::PeerAttribution;
    use crate::merge::{MergeCounters, SdkBatch};
    use crate::spans::{Span, SpanId, SpanKind};

    /// The HTTP port on a free loopback port, its batches on a channel holding `capacity`.
    async fn port(capacity: usize) -> (String, mpsc::Receiver<SdkBatch>, Arc<MergeCounters>) {
        let (batches, received) = mpsc::channel(capacity);
        let counters = Arc::new(MergeCounters::default());
        let peers = Arc::new(PeerAttribution::new(Arc::new(RwLock::new(Vec::new()))));
        let intake = Intake { batches, peers, counters: Arc::clone(&counters) };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(serve(listener, intake));
        (url, received, counters)
    }

    fn otlp_json() -> Vec<u8> {
        serde_json::to_vec(&export_request(&[Span::for_test(SpanKind::Internal, SpanId([1; 8]))])).unwrap()
    }

    #[tokio::test]
    async fn otlp_json_is_taken_and_bad_requests_are_refused_with_their_reason() {
        let (url, mut received, counters) = port(8).await;
        let client = reqwest::Client::new();
        let post = |path: &str, content_type: &str, body: Vec<u8>| {
            client.post(format!("{url}{path}")).header("content-type", content_type).body(body).send()
        };
        let taken = post("/v1/traces", "application/json", otlp_json()).await.unwrap();
        assert_eq!(taken.status(), 200);
        assert_eq!(received.recv().await.unwrap().spans.len(), 1);
        let unsupported = post("/v1/traces", "text/plain", b"x".to_vec()).await.unwrap();
        assert_eq!(unsupported.status(), 415);
        let garbage = post("/v1/traces", "application/x-protobuf", vec![0xff; 3]).await.unwrap();
        assert_eq!(garbage.status(), 400);
        assert!(garbage.text().await.unwrap().contains("protobuf"));
        let anonymous = post("/scouter/message", "application/json", b"{}".to_vec()).await.unwrap();
        assert_eq!(anonymous.status(), 401);
        let token = client.get(format!("{url}/scouter/auth/login")).send().await.unwrap();
        let token: serde_json::Value = serde_json::from_str(&token.text().await.unwrap()).unwrap();
        let drift = client
            .post(format!("{url}/scouter/message"))
            .bearer_auth(token["token"].as_str().unwrap())
            .header("content-type", "application/json")
            .body(r#"{"record": {}}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(drift.status(), 422);
        assert_eq!(counters.bad_requests.load(std::sync::atomic::Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn a_full_channel_is_a_retryable_refusal_not_a_loss() {
        let (url, _received, counters) = port(1).await;
        let client = reqwest::Client::new();
        let post = || {
            client.post(format!("{url}/v1/traces")).header("content-type", "application/json").body(otlp_json()).send()
        };
        assert_eq!(post().await.unwrap().status(), 200);
        let busy = post().await.unwrap();
        assert_eq!(busy.status(), 503);
        assert_eq!(busy.headers().get("retry-after").unwrap(), "1");
        let counted = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!((counted(&counters.received), counted(&counters.refused_busy)), (1, 1));
    }
}
