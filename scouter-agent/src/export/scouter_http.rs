//! The Scouter backend over HTTP: `GET /scouter/auth/login` (headers `Username`, `Password`)
//! for a JWT, then `POST /scouter/message` with the `{"request": ...}` envelope and
//! `Authorization: Bearer <jwt>`. A 401 (the token expired, about hourly) logs in again and
//! resends at once; a refreshed token in a response's `Authorization` header replaces ours.
//! 429 and 5xx are retried by the delivery loop, 413/422 and other 4xx are refusals.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use tokio::runtime::Handle;

use super::delivery::{block_within, Requests, SendError, Sink};
use super::otlp::{encoded_requests, scouter_message};
use crate::config::ScouterConfig;
use crate::errors::with_causes;
use crate::spans::Span;

/// The server's request body limit.
const MAX_BODY_BYTES: usize = 2_000_000;

pub struct ScouterHttpSink {
    io: Handle,
    client: reqwest::Client,
    base: String,
    username: String,
    password: String,
    token: Option<String>,
    timeout: Duration,
}

impl ScouterHttpSink {
    pub fn new(io: Handle, uri: &str, config: &ScouterConfig) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder().connect_timeout(config.timeout).build()?;
        Ok(Self {
            io,
            client,
            base: uri.trim_end_matches('/').to_owned(),
            username: config.username.clone(),
            password: config.password.clone(),
            token: None,
            timeout: config.timeout,
        })
    }

    async fn login(&mut self) -> Result<String, SendError> {
        let response = self
            .client
            .get(format!("{}/scouter/auth/login", self.base))
            .header("Username", &self.username)
            .header("Password", &self.password)
            .send()
            .await
            .map_err(|e| SendError::retry(format!("login: {}", with_causes(&e))))?;
        let status = response.status();
        if !status.is_success() {
            // Wrong credentials stay wrong, but an operator may fix them server-side: retried,
            // and the retry budget bounds the cost.
            return Err(SendError::retry(format!("login refused: HTTP {status}")));
        }
        #[derive(serde::Deserialize)]
        struct Login {
            token: String,
        }
        let body = response.bytes().await.map_err(|e| SendError::retry(format!("login answer: {e}")))?;
        let login: Login = serde_json::from_slice(&body).map_err(|e| SendError::retry(format!("login answer: {e}")))?;
        tracing::debug!("logged in to the Scouter backend");
        self.token = Some(login.token.clone());
        Ok(login.token)
    }

    async fn post(&mut self, body: &[u8], token: &str) -> Result<reqwest::Response, SendError> {
        self.client
            .post(format!("{}/scouter/message", self.base))
            .header(CONTENT_TYPE, "application/json")
            .bearer_auth(token)
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| SendError::retry(with_causes(&e)))
    }

    async fn deliver(&mut self, body: &[u8]) -> Result<(), SendError> {
        let token = match self.token.clone() {
            Some(token) => token,
            None => self.login().await?,
        };
        let mut response = self.post(body, &token).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            let token = self.login().await?;
            response = self.post(body, &token).await?;
        }
        self.adopt_refreshed_token(response.headers());
        let status = response.status();
        match status {
            s if s.is_success() => Ok(()),
            StatusCode::UNAUTHORIZED => {
                self.token = None;
                Err(SendError::retry("HTTP 401 right after logging in"))
            }
            StatusCode::TOO_MANY_REQUESTS => {
                Err(SendError::Retry("HTTP 429 (the server's queue is full)".into(), retry_after(response.headers())))
            }
            s if s.is_server_error() => Err(SendError::Retry(format!("HTTP {s}"), retry_after(response.headers()))),
            s => {
                let detail = response.text().await.unwrap_or_default();
                Err(SendError::reject(format!("HTTP {s}: {}", detail.chars().take(200).collect::<String>())))
            }
        }
    }

    fn adopt_refreshed_token(&mut self, headers: &HeaderMap) {
        let refreshed =
            headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if let Some(token) = refreshed.filter(|t| !t.is_empty()) {
            self.token = Some(token.to_owned());
        }
    }
}

impl Sink for ScouterHttpSink {
    type Request = Vec<u8>;

    fn name(&self) -> &'static str {
        "scouter-http"
    }

    fn requests(&self, spans: &[Arc<Span>]) -> Requests<Vec<u8>> {
        encoded_requests(spans, MAX_BODY_BYTES, scouter_message)
    }

    fn send(&mut self, body: &Vec<u8>, deadline: Instant) -> Result<(), SendError> {
        let io = self.io.clone();
        block_within(&io, deadline, self.timeout, self.deliver(body))
    }
}

/// `Retry-After` in seconds (the form servers use for 429/503).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds.min(60)))
}
