//! Publishing Scouter messages to Kafka, the transport the Scouter SDK uses when a service is
//! configured for Kafka instead of HTTP or gRPC.
//!
//! # The contract
//!
//! Scouter's Kafka consumer reads what the SDK's producer writes, so the agent writes the same:
//! - the record *value* is the same JSON envelope `{"request": <OTLP/JSON ExportTraceServiceRequest>}`
//!   as the HTTP body (built by `otlp::scouter_message`, not here);
//! - the record has *no key* (the consumer never reads one, and a key would pin every span of a
//!   service to one partition);
//! - batches are *gzip*-compressed, as the SDK's producer configures them;
//! - the topic is `SCOUTER_KAFKA_TOPIC`, else `KAFKA_TOPIC`, else [`DEFAULT_TOPIC`] (resolved
//!   with the rest of the configuration, in `crate::config`); brokers come from `KAFKA_BROKERS`,
//!   comma-separated `host:port` ([`brokers_from`]).
//!
//! # Connections and failures
//!
//! [`KafkaPublisher::connect`] tries once to reach the brokers so a wrong address shows in the
//! log at start-up, but it never fails because they are unreachable: the agent must start while
//! Kafka is down, and [`KafkaPublisher::publish`] (re)connects when it has no connection. Every
//! publish is bounded by the publisher's timeout, connecting included. After any failure that
//! says nothing about the record itself the connection is dropped, so the next call starts from
//! fresh metadata (brokers, leaders and partitions may have changed meanwhile).
//!
//! rskafka retries transient errors (refused connections, leader elections) internally with
//! backoff; its deadline is half the timeout so that such a failure is usually reported as what
//! it is rather than as a timeout. [`KafkaError::is_retryable`] and [`KafkaError::reason`] let the
//! caller decide between keeping a batch for later and dropping it with a counted reason.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rskafka::chrono::{DateTime, Utc};
use rskafka::client::error::{Error as ClientError, ProtocolError, RequestError};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use rskafka::{BackoffConfig, BackoffError, ConnectionError};
use tracing::{debug, info, warn};

/// The topic when neither environment variable names one (the Scouter SDK's default).
pub const DEFAULT_TOPIC: &str = "scouter_monitoring";

/// Names the agent reports to the brokers, so operators can tell its connections apart.
const CLIENT_ID: &str = "scouter-agent";

/// Brokers from a comma-separated list (`"a:9092, b:9092"`), trimmed, empty entries dropped.
pub fn brokers_from(list: &str) -> Vec<String> {
    list.split(',').map(str::trim).filter(|broker| !broker.is_empty()).map(str::to_owned).collect()
}

/// Why a publish failed; [`KafkaError::is_retryable`] says whether the record may be kept for a
/// later attempt, [`KafkaError::reason`] labels drops.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("invalid Kafka configuration: {0}")]
    Config(String),
    #[error("cannot reach the Kafka brokers: {0}")]
    Connection(#[source] ClientError),
    #[error("no answer from Kafka within {0:?}")]
    Timeout(Duration),
    #[error("Kafka topic {topic:?} does not exist (and the brokers do not create it): {source}")]
    UnknownTopic { topic: String, source: ClientError },
    #[error("the Kafka broker cannot take records right now: {0}")]
    Unavailable(#[source] ClientError),
    #[error("the record is larger than the Kafka broker accepts: {0}")]
    TooLarge(#[source] ClientError),
    #[error("the Kafka broker rejected the record: {0}")]
    Rejected(#[source] ClientError),
    #[error("unexpected answer from Kafka: {0}")]
    Protocol(#[source] ClientError),
}

impl KafkaError {
    /// Whether retrying later may succeed: the brokers or the topic may come back, a leader may
    /// be elected, and an unexpected answer (a broker restarting, stale metadata) deserves a fresh
    /// connection. A record the broker refused (too large, invalid) fails the same way again, and
    /// so does a configuration error.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Config(_) | Self::TooLarge(_) | Self::Rejected(_))
    }

    /// A short stable label for drop counters.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Config(_) => "config",
            Self::Connection(_) => "connection",
            Self::Timeout(_) => "timeout",
            Self::UnknownTopic { .. } => "unknown_topic",
            Self::Unavailable(_) => "unavailable",
            Self::TooLarge(_) => "too_large",
            Self::Rejected(_) => "rejected",
            Self::Protocol(_) => "protocol",
        }
    }

    /// Whether the connection should be rebuilt before the next publish: only a verdict on the
    /// record itself leaves it known to be healthy.
    fn drops_connection(&self) -> bool {
        !matches!(self, Self::TooLarge(_) | Self::Rejected(_))
    }

    fn from_client(error: ClientError, topic: &str) -> Self {
        match kind_of_client(&error) {
            Kind::Connection => Self::Connection(error),
            Kind::UnknownTopic => Self::UnknownTopic { topic: topic.to_owned(), source: error },
            Kind::Unavailable => Self::Unavailable(error),
            Kind::TooLarge => Self::TooLarge(error),
            Kind::Rejected => Self::Rejected(error),
            Kind::Protocol => Self::Protocol(error),
        }
    }
}

/// What an rskafka error means for the caller, before it is wrapped into a [`KafkaError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Connection,
    UnknownTopic,
    Unavailable,
    TooLarge,
    Rejected,
    Protocol,
}

fn kind_of_client(error: &ClientError) -> Kind {
    match error {
        ClientError::Connection(error) => kind_of_connection(error),
        ClientError::Request(error) => kind_of_request(error),
        ClientError::ServerError { protocol_error, .. } => kind_of_protocol(*protocol_error),
        // rskafka only gives up on errors it considers transient; what they were decides.
        ClientError::RetryFailed(BackoffError::DeadlineExceded { source, .. }) => kind_of_source(source.as_ref()),
        ClientError::InvalidResponse(_) => Kind::Protocol,
        _ => Kind::Connection,
    }
}

fn kind_of_connection(error: &ConnectionError) -> Kind {
    match error {
        ConnectionError::Metadata(error) => kind_of_request(error),
        ConnectionError::SyncVersions(_) => Kind::Protocol,
        ConnectionError::RetryFailed(BackoffError::DeadlineExceded { source, .. }) => kind_of_source(source.as_ref()),
        _ => Kind::Connection,
    }
}

fn kind_of_request(error: &RequestError) -> Kind {
    match error {
        RequestError::IO(_) | RequestError::Poisoned(_) => Kind::Connection,
        _ => Kind::Protocol,
    }
}

/// The last error rskafka saw before its retries ran out, when it is one of its own types; any
/// other (a list of per-broker connection failures) means the brokers could not be reached.
fn kind_of_source(source: &(dyn std::error::Error + Send + Sync + 'static)) -> Kind {
    if let Some(error) = source.downcast_ref::<ClientError>() {
        kind_of_client(error)
    } else if let Some(error) = source.downcast_ref::<ConnectionError>() {
        kind_of_connection(error)
    } else if let Some(error) = source.downcast_ref::<RequestError>() {
        kind_of_request(error)
    } else {
        Kind::Connection
    }
}

/// Kafka's own split of its error codes into retriable and not (`Errors.java`), with two
/// deliberate exceptions: CORRUPT_MESSAGE is final here because every attempt re-encodes the same
/// batch (TCP already guards the bytes in flight), and UNKNOWN_TOPIC_OR_PARTITION gets its own
/// label because it usually means a misconfigured topic rather than a passing state.
fn kind_of_protocol(error: ProtocolError) -> Kind {
    use ProtocolError as E;
    match error {
        E::MessageTooLarge | E::RecordListTooLarge => Kind::TooLarge,
        E::UnknownTopicOrPartition => Kind::UnknownTopic,
        E::LeaderNotAvailable
        | E::NotLeaderOrFollower
        | E::RequestTimedOut
        | E::BrokerNotAvailable
        | E::ReplicaNotAvailable
        | E::NetworkException
        | E::NotEnoughReplicas
        | E::NotEnoughReplicasAfterAppend
        | E::KafkaStorageError
        | E::FencedLeaderEpoch
        | E::UnknownLeaderEpoch
        | E::OffsetNotAvailable
        | E::PreferredLeaderNotAvailable
        | E::EligibleLeadersNotAvailable
        | E::ThrottlingQuotaExceeded => Kind::Unavailable,
        _ => Kind::Rejected,
    }
}

/// Publishes Scouter messages to one topic, one record per call, round-robin over its partitions.
pub struct KafkaPublisher {
    brokers: Vec<String>,
    topic: String,
    timeout: Duration,
    connection: Option<Connection>,
    /// Round-robin cursor; kept across reconnects so a flapping connection does not pin every
    /// record to the first partition.
    next_partition: usize,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("timeout", &self.timeout)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl KafkaPublisher {
    /// A publisher for `topic` on `brokers` (`host:port` each). Tries to connect once, within
    /// `timeout`, and logs a warning if that fails; [`publish`](Self::publish) connects later.
    /// Fails only on a configuration error: no brokers, a broker that is not `host:port`, a blank
    /// topic or a zero timeout.
    pub async fn connect(brokers: Vec<String>, topic: String, timeout: Duration) -> Result<Self, KafkaError> {
        check_config(&brokers, &topic, timeout)?;
        let mut publisher = Self { brokers, topic, timeout, connection: None, next_partition: 0 };
        match publisher.ensure_connected_within().await {
            Ok(()) => {}
            Err(error) => warn!(
                brokers = ?publisher.brokers,
                topic = %publisher.topic,
                %error,
                "Kafka is not reachable yet; connecting again on the next publish"
            ),
        }
        Ok(publisher)
    }

    /// Whether the publisher holds a connection (it may still turn out to be broken).
    pub fn is_connected(&self) -> bool {
        self.connection.is_some()
    }

    /// Publishes one record: `value` as is, no key, in a gzip-compressed batch, on the next
    /// partition in turn. Connects first if needed; the whole call is bounded by the timeout.
    pub async fn publish(&mut self, value: Vec<u8>) -> Result<(), KafkaError> {
        let timeout = self.timeout;
        let result = match tokio::time::timeout(timeout, self.publish_connected(value)).await {
            Ok(result) => result,
            Err(_) => Err(KafkaError::Timeout(timeout)),
        };
        if let Err(error) = &result {
            if error.drops_connection() && self.connection.take().is_some() {
                debug!(topic = %self.topic, %error, "dropping the Kafka connection after a failure");
            }
        }
        result
    }

    async fn publish_connected(&mut self, value: Vec<u8>) -> Result<(), KafkaError> {
        self.ensure_connected().await?;
        let connection = self.connection.as_mut().expect("connected above");
        let index = self.next_partition % connection.partitions.len();
        self.next_partition = index + 1;
        let partition = connection.partition(index, &self.topic).await?;
        partition
            .produce(vec![record(value)], Compression::Gzip)
            .await
            .map_err(|e| KafkaError::from_client(e, &self.topic))?;
        Ok(())
    }

    async fn ensure_connected_within(&mut self) -> Result<(), KafkaError> {
        match tokio::time::timeout(self.timeout, self.ensure_connected()).await {
            Ok(result) => result,
            Err(_) => Err(KafkaError::Timeout(self.timeout)),
        }
    }

    async fn ensure_connected(&mut self) -> Result<(), KafkaError> {
        if self.connection.is_none() {
            let connection = Connection::open(&self.brokers, &self.topic, self.timeout).await?;
            info!(
                brokers = ?self.brokers,
                topic = %self.topic,
                partitions = connection.partitions.len(),
                "connected to Kafka"
            );
            self.connection = Some(connection);
        }
        Ok(())
    }
}

/// The record the Scouter consumer expects: the envelope as value, nothing else.
fn record(value: Vec<u8>) -> Record {
    Record { key: None, value: Some(value), headers: Default::default(), timestamp: now() }
}

/// The current time for a record's timestamp, read from the system clock because rskafka's chrono
/// is built without its `clock` feature (no `Utc::now`).
fn now() -> DateTime<Utc> {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    DateTime::from_timestamp_millis(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)).unwrap_or_default()
}

fn check_config(brokers: &[String], topic: &str, timeout: Duration) -> Result<(), KafkaError> {
    if brokers.is_empty() {
        return Err(KafkaError::Config("no Kafka brokers given (KAFKA_BROKERS)".to_owned()));
    }
    if let Some(broker) = brokers.iter().find(|broker| !is_host_port(broker)) {
        return Err(KafkaError::Config(format!("Kafka broker {broker:?} is not host:port")));
    }
    if topic.trim().is_empty() {
        return Err(KafkaError::Config("the Kafka topic is empty".to_owned()));
    }
    if timeout.is_zero() {
        return Err(KafkaError::Config("the Kafka timeout is zero".to_owned()));
    }
    Ok(())
}

/// Caught here because rskafka would only report it as a connection failure after its retries.
fn is_host_port(broker: &str) -> bool {
    broker.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
}

/// A client for the cluster and, per partition of the topic, a producer created on first use
/// (each holds its own connection to the partition's leader).
struct Connection {
    client: Client,
    partitions: Vec<Partition>,
}

struct Partition {
    id: i32,
    client: Option<PartitionClient>,
}

impl Connection {
    async fn open(brokers: &[String], topic: &str, timeout: Duration) -> Result<Self, KafkaError> {
        let client = ClientBuilder::new(brokers.to_vec())
            .client_id(CLIENT_ID)
            .backoff_config(backoff(timeout))
            .build()
            .await
            .map_err(|e| KafkaError::from_client(e, topic))?;
        // Asking for partition 0 names the topic in a metadata request, which is what makes a
        // broker with auto-creation create it; every topic has a partition 0.
        let first = partition_client(&client, topic, 0).await?;
        let mut partitions: Vec<Partition> =
            partition_ids(&client, topic).await?.into_iter().map(|id| Partition { id, client: None }).collect();
        match partitions.iter_mut().find(|partition| partition.id == 0) {
            Some(partition) => partition.client = Some(first),
            None => partitions.insert(0, Partition { id: 0, client: Some(first) }),
        }
        Ok(Self { client, partitions })
    }

    /// The producer for the `index`th partition, created if this is its first use.
    async fn partition(&mut self, index: usize, topic: &str) -> Result<&PartitionClient, KafkaError> {
        let partition = &mut self.partitions[index];
        if partition.client.is_none() {
            partition.client = Some(partition_client(&self.client, topic, partition.id).await?);
        }
        Ok(partition.client.as_ref().expect("created above"))
    }
}

/// Retries inside rskafka end at half the timeout, leaving the other half for the request that
/// follows, so a broker that stays down is reported as a connection error, not a timeout.
fn backoff(timeout: Duration) -> BackoffConfig {
    BackoffConfig {
        init_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(1),
        base: 3.0,
        deadline: Some(timeout / 2),
    }
}

async fn partition_client(client: &Client, topic: &str, partition: i32) -> Result<PartitionClient, KafkaError> {
    // `Retry`: right after auto-creation a broker may still call the topic unknown.
    client
        .partition_client(topic, partition, UnknownTopicHandling::Retry)
        .await
        .map_err(|e| KafkaError::from_client(e, topic))
}

/// The topic's partitions from the cluster metadata, sorted; empty if the topic is not listed.
async fn partition_ids(client: &Client, topic: &str) -> Result<Vec<i32>, KafkaError> {
    let topics = client.list_topics().await.map_err(|e| KafkaError::from_client(e, topic))?;
    Ok(topics.into_iter().find(|t| t.name == topic).map(|t| t.partitions.into_iter().collect()).unwrap_or_default())
}

#[cfg(test)]
mod tests {

    use rskafka::client::error::RequestContext;

    use super::*;

    #[test]
    fn brokers_are_split_on_commas_trimmed_and_empties_dropped() {
        assert_eq!(brokers_from("a:9092,b:9092"), ["a:9092", "b:9092"]);
        assert_eq!(brokers_from(" a:9092 , ,b:9092,"), ["a:9092", "b:9092"]);
        assert_eq!(brokers_from("localhost:9092"), ["localhost:9092"]);
        assert!(brokers_from("").is_empty());
        assert!(brokers_from(" , ").is_empty());
    }

    #[test]
    fn configuration_errors_are_caught_before_connecting() {
        let second = Duration::from_secs(1);
        let ok = check_config(&["kafka:9092".to_owned(), "10.0.0.1:9093".to_owned()], "spans", second);
        assert!(ok.is_ok(), "{ok:?}");
        for (brokers, topic, timeout) in [
            (vec![], "spans", second),
            (vec!["kafka".to_owned()], "spans", second),
            (vec!["kafka:".to_owned()], "spans", second),
            (vec![":9092".to_owned()], "spans", second),
            (vec!["kafka:0".to_owned()], "spans", second),
            (vec!["kafka:9092".to_owned()], " ", second),
            (vec!["kafka:9092".to_owned()], "spans", Duration::ZERO),
        ] {
            let error = check_config(&brokers, topic, timeout).expect_err("a configuration error");
            assert_eq!((error.reason(), error.is_retryable()), ("config", false), "{brokers:?} {topic:?} {timeout:?}");
        }
    }

    fn server_error(protocol_error: ProtocolError) -> ClientError {
        ClientError::ServerError {
            protocol_error,
            error_message: None,
            request: RequestContext::Partition("spans".to_owned(), 0),
            response: None,
            is_virtual: false,
        }
    }

    fn verdict(error: ClientError) -> (&'static str, bool) {
        let error = KafkaError::from_client(error, "spans");
        (error.reason(), error.is_retryable())
    }

    #[test]
    fn broker_error_codes_are_classified_like_kafka_does() {
        assert_eq!(verdict(server_error(ProtocolError::MessageTooLarge)), ("too_large", false));
        assert_eq!(verdict(server_error(ProtocolError::RecordListTooLarge)), ("too_large", false));
        assert_eq!(verdict(server_error(ProtocolError::InvalidRecord)), ("rejected", false));
        assert_eq!(verdict(server_error(ProtocolError::CorruptMessage)), ("rejected", false));
        assert_eq!(verdict(server_error(ProtocolError::TopicAuthorizationFailed)), ("rejected", false));
        assert_eq!(verdict(server_error(ProtocolError::UnknownServerError)), ("rejected", false));
        assert_eq!(verdict(server_error(ProtocolError::LeaderNotAvailable)), ("unavailable", true));
        assert_eq!(verdict(server_error(ProtocolError::NotEnoughReplicas)), ("unavailable", true));
        assert_eq!(verdict(server_error(ProtocolError::RequestTimedOut)), ("unavailable", true));
        assert_eq!(verdict(server_error(ProtocolError::UnknownTopicOrPartition)), ("unknown_topic", true));
    }

    #[test]
    fn exhausted_retries_are_classified_by_their_last_error() {
        let retried = |source: ClientError| {
            ClientError::RetryFailed(BackoffError::DeadlineExceded {
                deadline: Duration::from_secs(1),
                source: Box::new(source),
            })
        };
        assert_eq!(verdict(retried(server_error(ProtocolError::UnknownTopicOrPartition))), ("unknown_topic", true));
        assert_eq!(verdict(retried(server_error(ProtocolError::LeaderNotAvailable))), ("unavailable", true));
        let io = RequestError::IO(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(verdict(retried(ClientError::Request(io))), ("connection", true));
        assert_eq!(verdict(ClientError::InvalidResponse("two topics".to_owned())), ("protocol", true));
    }

    #[test]
    fn only_a_verdict_on_the_record_keeps_the_connection() {
        let error = |e| KafkaError::from_client(server_error(e), "spans");
        assert!(!error(ProtocolError::InvalidRecord).drops_connection());
        assert!(!error(ProtocolError::MessageTooLarge).drops_connection());
        assert!(error(ProtocolError::NotLeaderOrFollower).drops_connection());
        assert!(KafkaError::Timeout(Duration::from_secs(1)).drops_connection());
    }

    #[tokio::test]
    async fn unreachable_brokers_do_not_fail_connect_and_make_publish_fail_retryably() {
        // Port 1 on loopback: nothing listens there, so connections are refused at once.
        let timeout = Duration::from_millis(400);
        let mut publisher = KafkaPublisher::connect(vec!["127.0.0.1:1".to_owned()], "spans".to_owned(), timeout)
            .await
            .expect("connect must not fail because the brokers are down");
        assert!(!publisher.is_connected());
        let started = std::time::Instant::now();
        let error = publisher.publish(b"{}".to_vec()).await.expect_err("nothing to publish to");
        assert!(error.is_retryable(), "{error}");
        assert!(matches!(error.reason(), "connection" | "timeout"), "{error}");
        assert!(started.elapsed() < timeout * 2, "publish took {:?}", started.elapsed());
        assert!(!publisher.is_connected());
    }
}
