//! An OTLP collector over HTTP: `POST` of the protobuf request (`application/x-protobuf`) to
//! the traces endpoint, with the configured headers and optional gzip. Per the OTLP spec, 429,
//! 502, 503 and 504 are retryable; the agent retries every 5xx (a restarting collector behind a
//! proxy answers 500 too), and other 4xx are refusals.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flate2::write::GzEncoder;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};
use reqwest::StatusCode;
use tokio::runtime::Handle;

use super::delivery::{block_within, Requests, SendError, Sink};
use super::otlp::{encoded_requests, otlp_protobuf};
use super::scouter_http::retry_after;
use crate::config::OtlpConfig;
use crate::errors::with_causes;
use crate::spans::Span;

/// Collectors accept more, but proxies in front of them often stop at a few MiB.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

pub struct OtlpHttpSink {
    io: Handle,
    client: reqwest::Client,
    endpoint: String,
    headers: HeaderMap,
    gzip: bool,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum OtlpHttpError {
    #[error(transparent)]
    Client(#[from] reqwest::Error),
    #[error("header {0:?} is not a valid HTTP header")]
    Header(String),
}

impl OtlpHttpSink {
    pub fn new(io: Handle, config: &OtlpConfig) -> Result<Self, OtlpHttpError> {
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let header = HeaderName::from_bytes(name.as_bytes()).ok().zip(HeaderValue::from_str(value).ok());
            let (name, value) = header.ok_or_else(|| OtlpHttpError::Header(name.clone()))?;
            headers.insert(name, value);
        }
        let client = reqwest::Client::builder().connect_timeout(config.timeout).build()?;
        Ok(Self { io, client, endpoint: config.endpoint.clone(), headers, gzip: config.gzip, timeout: config.timeout })
    }

    async fn post(&self, body: &[u8]) -> Result<(), SendError> {
        let mut request = self
            .client
            .post(&self.endpoint)
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/x-protobuf");
        request = if self.gzip {
            request.header(CONTENT_ENCODING, "gzip").body(gzip(body))
        } else {
            request.body(body.to_vec())
        };
        let response = request.send().await.map_err(|e| SendError::retry(with_causes(&e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let after = retry_after(response.headers());
        match status {
            StatusCode::TOO_MANY_REQUESTS => Err(SendError::Retry("HTTP 429".into(), after)),
            s if s.is_server_error() => Err(SendError::Retry(format!("HTTP {s}"), after)),
            s => {
                let detail =
                    response.bytes().await.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
                Err(SendError::reject(format!("HTTP {s}: {}", detail.chars().take(200).collect::<String>())))
            }
        }
    }
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    encoder.write_all(body).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

impl Sink for OtlpHttpSink {
    type Request = Vec<u8>;

    fn name(&self) -> &'static str {
        "otlp-http"
    }

    fn requests(&self, spans: &[Arc<Span>]) -> Requests<Vec<u8>> {
        encoded_requests(spans, MAX_BODY_BYTES, otlp_protobuf)
    }

    fn send(&mut self, body: &Vec<u8>, deadline: Instant) -> Result<(), SendError> {
        let io = self.io.clone();
        block_within(&io, deadline, self.timeout, self.post(body))
    }
}
