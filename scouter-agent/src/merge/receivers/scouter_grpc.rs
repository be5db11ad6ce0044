//! Scouter's gRPC ingest, as its SDK calls it: `AuthService/Login`, then
//! `MessageService/InsertMessage` with `authorization: Bearer <token>` and the JSON envelope
//! in `message_record`.

use tonic::{Request, Response, Status};

use super::{has_bearer, login_token, Intake, Refusal, MAX_MESSAGE_BYTES};
use crate::export::scouter_grpc::proto::auth_service_server::{AuthService, AuthServiceServer};
use crate::export::scouter_grpc::proto::message_service_server::{MessageService, MessageServiceServer};
use crate::export::scouter_grpc::proto::{InsertMessageRequest, InsertMessageResponse, LoginRequest, LoginResponse};
use crate::merge::decode;

pub(super) struct AuthReceiver;

impl AuthReceiver {
    pub fn service() -> AuthServiceServer<Self> {
        AuthServiceServer::new(Self)
    }
}

#[tonic::async_trait]
impl AuthService for AuthReceiver {
    async fn login(&self, _request: Request<LoginRequest>) -> Result<Response<LoginResponse>, Status> {
        Ok(Response::new(LoginResponse {
            token: login_token(),
            status: "success".into(),
            message: "logged in to the scouter-agent".into(),
        }))
    }
}

pub(super) struct MessageReceiver {
    intake: Intake,
}

impl MessageReceiver {
    pub fn service(intake: Intake) -> MessageServiceServer<Self> {
        MessageServiceServer::new(Self { intake }).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }
}

#[tonic::async_trait]
impl MessageService for MessageReceiver {
    async fn insert_message(
        &self,
        request: Request<InsertMessageRequest>,
    ) -> Result<Response<InsertMessageResponse>, Status> {
        let authorization = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        if !has_bearer(authorization) {
            return Err(Status::unauthenticated("log in with AuthService/Login first"));
        }
        let connection = request.remote_addr().zip(request.local_addr());
        let decoded = match decode::from_scouter_message(&request.into_inner().message_record) {
            Ok(decoded) => decoded,
            Err(error) => {
                self.intake.count_bad_request();
                return Err(Status::invalid_argument(error.to_string()));
            }
        };
        let (count, rejected) = (decoded.spans.len(), decoded.rejected);
        match self.intake.ingest(decoded, connection).await {
            Ok(()) => Ok(Response::new(InsertMessageResponse {
                status: "success".into(),
                message: format!("{count} spans received, {rejected} rejected"),
            })),
            Err(Refusal::Busy) => Err(Status::resource_exhausted("the agent is behind; retry")),
        }
    }
}
