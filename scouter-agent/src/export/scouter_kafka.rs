//! The Scouter backend over Kafka: each request is one record on the Scouter topic holding the
//! same JSON envelope the HTTP transport posts ([`super::kafka`] speaks the protocol).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

use super::delivery::{block_within, Requests, SendError, Sink};
use super::kafka::{KafkaError, KafkaPublisher};
use super::otlp::{encoded_requests, scouter_message};
use crate::spans::Span;

/// Kafka's default `message.max.bytes` (about 1 MB), measured before compression so a record
/// fits whatever the compression ratio.
const MAX_RECORD_BYTES: usize = 1_000_000;

pub struct KafkaSink {
    io: Handle,
    brokers: Vec<String>,
    topic: String,
    timeout: Duration,
    /// Made on the first send, so the agent starts while Kafka is down.
    publisher: Option<KafkaPublisher>,
}

impl KafkaSink {
    pub fn new(io: Handle, brokers: Vec<String>, topic: String, timeout: Duration) -> Self {
        Self { io, brokers, topic, timeout, publisher: None }
    }

    async fn publish(&mut self, record: &[u8]) -> Result<(), KafkaError> {
        if self.publisher.is_none() {
            self.publisher =
                Some(KafkaPublisher::connect(self.brokers.clone(), self.topic.clone(), self.timeout).await?);
        }
        self.publisher.as_mut().expect("made above").publish(record.to_vec()).await
    }
}

impl Sink for KafkaSink {
    type Request = Vec<u8>;

    fn name(&self) -> &'static str {
        "scouter-kafka"
    }

    fn requests(&self, spans: &[Arc<Span>]) -> Requests<Vec<u8>> {
        encoded_requests(spans, MAX_RECORD_BYTES, scouter_message)
    }

    fn send(&mut self, record: &Vec<u8>, deadline: Instant) -> Result<(), SendError> {
        let io = self.io.clone();
        block_within(&io, deadline, self.timeout, async {
            self.publish(record).await.map_err(|error| match error.is_retryable() {
                true => SendError::retry(format!("{}: {error}", error.reason())),
                false => SendError::reject(format!("{}: {error}", error.reason())),
            })
        })
    }
}
