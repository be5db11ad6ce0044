//! The Scouter backend over Kafka: each request is one record on the Scouter topic holding the
//! same JSON envelope the HTTP transport posts ([`super::kafka`] speaks the protocol).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

use super::delivery::{Requests, SendError, Sink};
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
        let limit = deadline.saturating_duration_since(Instant::now()).min(self.timeout);
        let io = self.io.clone();
        let published = io.block_on(async { tokio::time::timeout(limit, self.publish(record)).await });
        match published {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) if error.is_retryable() => Err(SendError::retry(format!("{}: {error}", error.reason()))),
            Ok(Err(error)) => Err(SendError::reject(format!("{}: {error}", error.reason()))),
            Err(_) => Err(SendError::retry(format!("no answer within {} ms", limit.as_millis()))),
        }
    }
}
