//! The Scouter backend over gRPC (`scouter.grpc.v1`): `AuthService/Login` for a JWT, then
//! `MessageService/InsertMessage` whose `message_record` holds the same JSON envelope the HTTP
//! transport posts, with `authorization: Bearer <jwt>` metadata. UNAUTHENTICATED logs in again
//! and resends at once; `x-refreshed-token` in the answer replaces our token.
//! RESOURCE_EXHAUSTED (the server's queue is full), UNAVAILABLE and the other transient codes
//! are retried by the delivery loop; INVALID_ARGUMENT and the like are refusals.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

use super::delivery::{block_within, Requests, SendError, Sink};
use super::otlp::{encoded_requests, scouter_message};
use crate::config::ScouterConfig;
use crate::spans::Span;

/// Generated from `proto/scouter.proto` by the build script.
pub mod proto {
    tonic::include_proto!("scouter.grpc.v1");
}

use proto::auth_service_client::AuthServiceClient;
use proto::message_service_client::MessageServiceClient;
use proto::{InsertMessageRequest, LoginRequest};

/// gRPC's default message limit, less room for the message's own framing.
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024 - 1024;

pub struct ScouterGrpcSink {
    io: Handle,
    channel: Channel,
    username: String,
    password: String,
    token: Option<String>,
    timeout: Duration,
}

impl ScouterGrpcSink {
    pub fn new(io: Handle, uri: &str, config: &ScouterConfig) -> Result<Self, tonic::transport::Error> {
        let channel = lazy_channel(&io, uri, config.timeout)?;
        Ok(Self {
            io,
            channel,
            username: config.username.clone(),
            password: config.password.clone(),
            token: None,
            timeout: config.timeout,
        })
    }

    async fn login(&mut self) -> Result<String, SendError> {
        let request = LoginRequest { username: self.username.clone(), password: self.password.clone() };
        let response = AuthServiceClient::new(self.channel.clone()).login(request).await.map_err(|status| {
            // Refused credentials are retried too: an operator may fix them server-side, and
            // the retry budget bounds the cost.
            SendError::retry(format!("login: {}", describe(&status)))
        })?;
        let token = response.into_inner().token;
        self.token = Some(token.clone());
        Ok(token)
    }

    async fn insert(
        &mut self,
        record: &[u8],
        token: &str,
    ) -> Result<tonic::Response<proto::InsertMessageResponse>, Status> {
        let mut request = Request::new(InsertMessageRequest { message_record: record.to_vec() });
        let bearer = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| Status::unauthenticated("the token is not a valid header value"))?;
        request.metadata_mut().insert("authorization", bearer);
        MessageServiceClient::new(self.channel.clone())
            .max_encoding_message_size(usize::MAX)
            .insert_message(request)
            .await
    }

    async fn deliver(&mut self, record: &[u8]) -> Result<(), SendError> {
        let token = match self.token.clone() {
            Some(token) => token,
            None => self.login().await?,
        };
        let mut answer = self.insert(record, &token).await;
        if matches!(&answer, Err(status) if status.code() == Code::Unauthenticated) {
            let token = self.login().await?;
            answer = self.insert(record, &token).await;
        }
        match answer {
            Ok(response) => {
                let refreshed = response.metadata().get("x-refreshed-token").and_then(|v| v.to_str().ok());
                if let Some(token) = refreshed.filter(|t| !t.is_empty()) {
                    self.token = Some(token.trim_start_matches("Bearer ").to_owned());
                }
                Ok(())
            }
            Err(status) => Err(classify(&status)),
        }
    }
}

impl Sink for ScouterGrpcSink {
    type Request = Vec<u8>;

    fn name(&self) -> &'static str {
        "scouter-grpc"
    }

    fn requests(&self, spans: &[Arc<Span>]) -> Requests<Vec<u8>> {
        encoded_requests(spans, MAX_MESSAGE_BYTES, scouter_message)
    }

    fn send(&mut self, record: &Vec<u8>, deadline: Instant) -> Result<(), SendError> {
        let io = self.io.clone();
        block_within(&io, deadline, self.timeout, self.deliver(record))
    }
}

/// A channel that connects on first use (and reconnects after failures), with TLS for https.
pub fn lazy_channel(io: &Handle, uri: &str, timeout: Duration) -> Result<Channel, tonic::transport::Error> {
    let mut endpoint = Endpoint::from_shared(uri.to_owned())?.connect_timeout(timeout).timeout(timeout);
    if uri.starts_with("https://") {
        endpoint = endpoint.tls_config(ClientTlsConfig::new().with_webpki_roots())?;
    }
    // connect_lazy spawns its worker on the current runtime.
    let _entered = io.enter();
    Ok(endpoint.connect_lazy())
}

/// The gRPC codes worth retrying (OTLP's list, plus UNKNOWN/INTERNAL which proxies return for
/// a backend that restarts); the rest mean the request itself is wrong.
pub fn classify(status: &Status) -> SendError {
    match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss
        | Code::Unknown
        | Code::Internal
        | Code::Unauthenticated => SendError::retry(describe(status)),
        _ => SendError::reject(describe(status)),
    }
}

fn describe(status: &Status) -> String {
    let message: String = status.message().chars().take(200).collect();
    format!("{:?}: {message}", status.code())
}
