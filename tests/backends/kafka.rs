//! A fake Kafka broker: the ingest side of Scouter's Kafka transport, a single-node broker that
//! speaks the real wire protocol and refuses at produce time what the Scouter consumer could not
//! use.
//!
//! # Why refuse at produce time
//!
//! A real broker stores any bytes; it is Scouter's consumer that later drops a record it cannot
//! decode, silently as far as the producer knows. Here the broker applies the consumer's rules
//! when the batch arrives and answers a violation with an error code, so an exporter bug fails
//! the test that caused it instead of going missing. The rules are the Scouter contract:
//! - the record value is the JSON envelope `{"request": <OTLP/JSON ExportTraceServiceRequest>}`,
//!   checked by the same [`validate_envelope`] as the Scouter HTTP backend, then decoded with
//!   opentelemetry-proto's serde;
//! - the record has no key (null, not empty);
//! - the batch is gzip-compressed.
//!
//! A violation is answered INVALID_RECORD (87) for the whole batch, as Kafka does, naming the
//! offending records in `record_errors` (produce v8+) and recording the rule broken in
//! [`KafkaRecord::violation`] and the request's message.
//!
//! # Wire protocol
//!
//! One node (id 0) on 127.0.0.1, advertising itself in metadata, answers ApiVersions, Metadata
//! and Produce in the versions of [`SUPPORTED_APIS`] (rskafka 0.6 picks ApiVersions v3, Metadata
//! v4, Produce v7), with messages encoded and decoded by the `kafka-protocol` crate, which is
//! generated from Kafka's own schemas. Requests on one connection are answered in order. Record
//! batches (format v2, exactly one per partition as produce v3+ requires) have their CRC-32C
//! checked here before their records are decoded.
//!
//! A *protocol error* is the client breaking Kafka, not Scouter: an unknown API or version, a
//! request that does not decode, a bad batch header or checksum. Each is recorded
//! ([`KafkaBroker::protocol_errors`]) and printed; a batch error is answered CORRUPT_MESSAGE (2),
//! anything else closes the connection as a real broker does.
//!
//! Topics are created on demand by a metadata request that names them (auto-creation, on by
//! default), with the broker's partition count.
//!
//! # Order of checks on produce
//!
//! hang → `reject_next` ([`kafka_code_for_http`]) → topic and partition → batch size (Kafka's
//! default `message.max.bytes`, [`KafkaBroker::set_max_message_bytes`]) → batch framing and
//! checksum → gzip → per record: key, value. Each partition batch that reaches the broker is
//! recorded as one [`ReceivedRequest`] with its size as received (compressed) and its reply
//! ([`Reply::Kafka`]); its records, stored or not, are kept in [`KafkaBroker::records`].

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, MetadataRequest, MetadataResponse, ProduceRequest,
    ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use kafka_protocol::records::{Record, RecordBatchDecoder};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::scouter::validate_envelope;
use super::{
    hang_forever, hung, lock, Backend, Faults, PortLiveness, ReceivedRequest, ReceivedSpan, Recorder, Reply,
    ServerHost, Transport,
};

pub use kafka_protocol::records::Compression;

/// The topic the Scouter SDK uses when none is configured.
pub const DEFAULT_TOPIC: &str = "scouter_monitoring";

/// Kafka's default `message.max.bytes`: the largest record batch a topic accepts.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_048_588;

/// What spans and requests from this broker are tagged with.
pub const TRANSPORT: Transport = Transport::Kafka;

/// The APIs this broker answers, with the versions it advertises (min, max): everything
/// `kafka-protocol` encodes for these messages that still names topics rather than topic ids.
pub const SUPPORTED_APIS: [(ApiKey, i16, i16); 3] =
    [(ApiKey::ApiVersions, 0, 3), (ApiKey::Metadata, 0, 12), (ApiKey::Produce, 3, 12)];

/// The broker's node id, leader of every partition.
const NODE_ID: i32 = 0;

const CLUSTER_ID: &str = "scouter-e2e";

/// Largest request frame (Kafka's default `socket.request.max.bytes`).
const MAX_FRAME: usize = 100 * 1024 * 1024;

/// Size of a v2 record batch header, up to and including the record count.
const BATCH_HEADER_LEN: usize = 61;

/// The Kafka error code a produce is answered with where the Scouter HTTP backend would answer
/// `status`, so `reject_next` means the same on every backend: 413 is MESSAGE_TOO_LARGE, 429
/// THROTTLING_QUOTA_EXCEEDED and 503 NOT_ENOUGH_REPLICAS (both retriable, and rskafka passes them
/// straight up instead of retrying internally), 400/422 INVALID_RECORD.
pub fn kafka_code_for_http(status: u16) -> i16 {
    let error = match status {
        200..=299 => return 0,
        400 | 422 => ResponseError::InvalidRecord,
        401 | 403 => ResponseError::TopicAuthorizationFailed,
        404 => ResponseError::UnknownTopicOrPartition,
        413 => ResponseError::MessageTooLarge,
        429 => ResponseError::ThrottlingQuotaExceeded,
        502 | 503 => ResponseError::NotEnoughReplicas,
        504 => ResponseError::RequestTimedOut,
        _ => ResponseError::UnknownServerError,
    };
    error.code()
}

/// A record as it arrived in a produce request, stored or not.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaRecord {
    pub topic: String,
    pub partition: i32,
    /// Where it was stored; `None` when its batch was refused.
    pub offset: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Header names and values in arrival order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The compression of the batch it came in.
    pub compression: Compression,
    /// The error code its batch was answered with (0: stored).
    pub error_code: i16,
    /// Why it was refused: its own violation, or its batch's; empty when stored.
    pub violation: String,
}

impl KafkaRecord {
    pub fn accepted(&self) -> bool {
        self.error_code == 0
    }
}

/// A running fake Kafka broker; stops when dropped.
pub struct KafkaBroker {
    host: ServerHost,
    state: Arc<BrokerState>,
}

impl KafkaBroker {
    /// Starts a broker on a free 127.0.0.1 port whose topics have one partition.
    pub fn start() -> Result<Self> {
        Self::start_with_partitions(1)
    }

    /// Starts a broker whose topics have `partitions` partitions.
    pub fn start_with_partitions(partitions: i32) -> Result<Self> {
        ensure!(partitions >= 1, "a topic needs at least one partition, not {partitions}");
        // The host's runtime and down/up machinery, with a port that speaks Kafka.
        let mut host = ServerHost::empty("kafka-broker")?;
        let mut broker = None;
        host.add_port(|address| {
            let state = Arc::new(BrokerState::new(address.port(), partitions));
            broker = Some(Arc::clone(&state));
            Arc::new(move |stream, live| Box::pin(serve_connection(stream, Arc::clone(&state), live)))
        })
        .context("the Kafka broker's port")?;
        Ok(Self { host, state: broker.expect("add_port made the broker") })
    }

    /// `127.0.0.1:PORT`, the value for `KAFKA_BROKERS`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port())
    }

    pub fn port(&self) -> u16 {
        self.host.port(0)
    }

    /// The environment the Scouter SDK reads for Kafka: the brokers (the topic stays the default,
    /// [`DEFAULT_TOPIC`]).
    pub fn sdk_env(&self) -> Vec<(String, String)> {
        vec![("KAFKA_BROKERS".to_owned(), self.bootstrap())]
    }

    /// Partitions of every topic.
    pub fn partitions(&self) -> i32 {
        self.state.partitions
    }

    /// Whether a metadata request naming an unknown topic creates it (on at start). Off, such a
    /// topic is answered UNKNOWN_TOPIC_OR_PARTITION.
    pub fn set_auto_create_topics(&self, on: bool) {
        self.state.auto_create.store(on, Ordering::SeqCst);
    }

    /// The largest batch accepted (bytes as received, compressed); larger ones are answered
    /// MESSAGE_TOO_LARGE. Starts at [`DEFAULT_MAX_MESSAGE_BYTES`].
    pub fn set_max_message_bytes(&self, bytes: usize) {
        self.state.max_message_bytes.store(bytes, Ordering::SeqCst);
    }

    /// Topics that exist, sorted.
    pub fn topics(&self) -> Vec<String> {
        lock(&self.state.log).topics.keys().cloned().collect()
    }

    /// Every record that arrived, stored or refused, in arrival order.
    pub fn records(&self) -> Vec<KafkaRecord> {
        lock(&self.state.log).records.clone()
    }

    /// How many records were refused.
    pub fn rejected(&self) -> usize {
        lock(&self.state.log).records.iter().filter(|record| !record.accepted()).count()
    }

    /// Every protocol error seen (the client broke Kafka's wire protocol), in order.
    pub fn protocol_errors(&self) -> Vec<String> {
        lock(&self.state.log).protocol_errors.clone()
    }
}

impl Backend for KafkaBroker {
    fn host(&self) -> &ServerHost {
        &self.host
    }

    fn faults(&self) -> &Faults {
        &self.state.faults
    }

    fn recorder(&self) -> &Recorder {
        &self.state.recorder
    }

    /// Forgets recorded spans, requests, records and protocol errors (topics and their offsets
    /// stay, as on a real broker).
    fn clear(&self) {
        self.state.recorder.clear();
        let mut log = lock(&self.state.log);
        log.records.clear();
        log.protocol_errors.clear();
    }
}

/// Shared by every connection of one broker.
struct BrokerState {
    port: u16,
    partitions: i32,
    faults: Faults,
    recorder: Recorder,
    auto_create: AtomicBool,
    max_message_bytes: AtomicUsize,
    log: Mutex<Log>,
}

#[derive(Default)]
struct Log {
    /// Topic → the next offset of each of its partitions.
    topics: BTreeMap<String, Vec<i64>>,
    records: Vec<KafkaRecord>,
    protocol_errors: Vec<String>,
}

/// What to do after a request.
enum Answer {
    Send(BytesMut),
    /// Produce with acks=0 gets no response.
    Nothing,
}

impl BrokerState {
    fn new(port: u16, partitions: i32) -> Self {
        Self {
            port,
            partitions,
            faults: Faults::default(),
            recorder: Recorder::default(),
            auto_create: AtomicBool::new(true),
            max_message_bytes: AtomicUsize::new(DEFAULT_MAX_MESSAGE_BYTES),
            log: Mutex::new(Log::default()),
        }
    }

    /// Records a protocol error, loudly: the test output shows it even if nobody asks.
    fn protocol_error(&self, message: String) {
        eprintln!("kafka-broker: protocol error: {message}");
        lock(&self.log).protocol_errors.push(message);
    }

    /// The answer to one request frame; an error closes the connection.
    async fn answer(&self, mut frame: Bytes) -> Result<Answer> {
        ensure!(frame.len() >= 4, "a {}-byte request is too short for a header", frame.len());
        let key = i16::from_be_bytes([frame[0], frame[1]]);
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let api = ApiKey::try_from(key).map_err(|()| anyhow!("unknown API key {key}"))?;
        let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
            .with_context(|| format!("decoding the header of a {api:?} v{version} request"))?;
        let id = header.correlation_id;
        match api {
            ApiKey::ApiVersions => self.api_versions(id, version, frame),
            ApiKey::Metadata => {
                let request: MetadataRequest = decode_body(api, version, frame)?;
                respond(id, &self.metadata(&request, version), version)
            }
            ApiKey::Produce => {
                let request: ProduceRequest = decode_body(api, version, frame)?;
                self.produce(id, request, version).await
            }
            other => bail!("{other:?} (API key {key}) is not supported by this broker"),
        }
    }

    fn api_versions(&self, id: i32, version: i16, frame: Bytes) -> Result<Answer> {
        let api_keys = SUPPORTED_APIS
            .iter()
            .map(|&(api, min, max)| {
                ApiVersion::default().with_api_key(api as i16).with_min_version(min).with_max_version(max)
            })
            .collect();
        let response = ApiVersionsResponse::default().with_api_keys(api_keys);
        if advertised(ApiKey::ApiVersions, version).is_err() {
            // Clients probe with their newest version; Kafka answers it in v0 with
            // UNSUPPORTED_VERSION and its ranges, so the client can pick one.
            let response = response.with_error_code(ResponseError::UnsupportedVersion.code());
            return respond(id, &response, 0);
        }
        let _request: ApiVersionsRequest = decode_body(ApiKey::ApiVersions, version, frame)?;
        respond(id, &response, version)
    }

    fn metadata(&self, request: &MetadataRequest, version: i16) -> MetadataResponse {
        // Before v4 a broker with auto-creation on creates any topic a request names.
        let auto_create = self.auto_create.load(Ordering::SeqCst) && (version < 4 || request.allow_auto_topic_creation);
        let mut log = lock(&self.log);
        let names: Vec<String> = match &request.topics {
            // Every topic: null from v1 on, an empty list in v0.
            None => log.topics.keys().cloned().collect(),
            Some(topics) if topics.is_empty() && version == 0 => log.topics.keys().cloned().collect(),
            Some(topics) => topics
                .iter()
                .map(|topic| topic.name.as_ref().map(|name| name.0.to_string()).unwrap_or_default())
                .collect(),
        };
        let topics = names.into_iter().map(|name| self.topic_metadata(&mut log, name, auto_create)).collect();
        let node = MetadataResponseBroker::default()
            .with_node_id(BrokerId(NODE_ID))
            .with_host(StrBytes::from_static_str("127.0.0.1"))
            .with_port(i32::from(self.port));
        MetadataResponse::default()
            .with_brokers(vec![node])
            .with_cluster_id(Some(StrBytes::from_static_str(CLUSTER_ID)))
            .with_controller_id(BrokerId(NODE_ID))
            .with_topics(topics)
    }

    /// A topic's metadata, creating it first if allowed.
    fn topic_metadata(&self, log: &mut Log, name: String, auto_create: bool) -> MetadataResponseTopic {
        let topic = MetadataResponseTopic::default().with_name(Some(TopicName(StrBytes::from_string(name.clone()))));
        if let Entry::Vacant(unknown) = log.topics.entry(name) {
            if !valid_topic_name(unknown.key()) {
                return topic.with_error_code(ResponseError::InvalidTopicException.code());
            }
            if !auto_create {
                return topic.with_error_code(ResponseError::UnknownTopicOrPartition.code());
            }
            unknown.insert(vec![0; usize::try_from(self.partitions).expect("checked positive at start")]);
        }
        let replicas = vec![BrokerId(NODE_ID)];
        let partitions = (0..self.partitions)
            .map(|index| {
                MetadataResponsePartition::default()
                    .with_partition_index(index)
                    .with_leader_id(BrokerId(NODE_ID))
                    .with_leader_epoch(0)
                    .with_replica_nodes(replicas.clone())
                    .with_isr_nodes(replicas.clone())
            })
            .collect();
        topic.with_partitions(partitions)
    }

    async fn produce(&self, id: i32, request: ProduceRequest, version: i16) -> Result<Answer> {
        if self.faults.hanging() {
            for topic in &request.topic_data {
                for partition in &topic.partition_data {
                    let size = partition.records.as_ref().map_or(0, Bytes::len);
                    self.recorder.record(hung(TRANSPORT, Vec::new(), size), Vec::new());
                }
            }
            return hang_forever().await;
        }
        let responses = request
            .topic_data
            .into_iter()
            .map(|topic| {
                let name = topic.name.0.to_string();
                let partitions = topic
                    .partition_data
                    .into_iter()
                    .map(|data| self.append(&name, data.index, data.records.unwrap_or_default()))
                    .collect();
                TopicProduceResponse::default().with_name(topic.name).with_partition_responses(partitions)
            })
            .collect();
        if request.acks == 0 {
            return Ok(Answer::Nothing);
        }
        respond(id, &ProduceResponse::default().with_responses(responses), version)
    }

    /// Judges one partition's batch, stores it if accepted, records it either way.
    fn append(&self, topic: &str, partition: i32, batch: Bytes) -> PartitionProduceResponse {
        let verdict = self.judge(topic, partition, &batch);
        let code = verdict.error.map_or(0, |error| error.code());
        let base_offset = (code == 0).then(|| self.store(topic, partition, verdict.records.len()));
        let record_errors = verdict
            .records
            .iter()
            .enumerate()
            .filter_map(|(index, (_, violation))| {
                let violation = violation.as_ref()?;
                Some(
                    BatchIndexAndErrorMessage::default()
                        .with_batch_index(i32::try_from(index).unwrap_or(i32::MAX))
                        .with_batch_index_error_message(Some(StrBytes::from_string(violation.clone()))),
                )
            })
            .collect();
        self.log_records(topic, partition, base_offset, &verdict);
        let request = ReceivedRequest {
            transport: TRANSPORT,
            headers: Vec::new(),
            body_len: batch.len(),
            reply: Reply::Kafka(code),
            message: verdict.message.clone(),
            span_count: verdict.spans.len(),
        };
        self.recorder.record(request, verdict.spans);
        PartitionProduceResponse::default()
            .with_index(partition)
            .with_error_code(code)
            .with_base_offset(base_offset.unwrap_or(-1))
            .with_record_errors(record_errors)
            .with_error_message((code != 0).then(|| StrBytes::from_string(verdict.message)))
    }

    /// The checks of the module doc, in order.
    fn judge(&self, topic: &str, partition: i32, batch: &Bytes) -> Verdict {
        // A "rejection" with a 2xx status is no rejection: the batch is judged as usual.
        let rejection = self
            .faults
            .take_rejection()
            .and_then(|status| ResponseError::try_from_code(kafka_code_for_http(status)).map(|error| (status, error)));
        if let Some((status, error)) = rejection {
            return Verdict::refused(error, format!("rejected by the test (reject_next, {status})"));
        }
        let known = lock(&self.log)
            .topics
            .get(topic)
            .is_some_and(|offsets| usize::try_from(partition).is_ok_and(|index| index < offsets.len()));
        if !known {
            let message = format!("topic {topic:?} has no partition {partition}");
            return Verdict::refused(ResponseError::UnknownTopicOrPartition, message);
        }
        let limit = self.max_message_bytes.load(Ordering::SeqCst);
        if batch.len() > limit {
            let message = format!("the batch is {} bytes, over the {limit}-byte message.max.bytes", batch.len());
            return Verdict::refused(ResponseError::MessageTooLarge, message);
        }
        let decoded = match decode_batch(batch) {
            Ok(decoded) => decoded,
            Err(error) => {
                let message = format!("{topic}/{partition}: {error}");
                self.protocol_error(message.clone());
                return Verdict::refused(ResponseError::CorruptMessage, message);
            }
        };
        Verdict::of_batch(decoded)
    }

    /// Assigns offsets to `count` stored records and returns the first.
    fn store(&self, topic: &str, partition: i32, count: usize) -> i64 {
        let mut log = lock(&self.log);
        let next = &mut log.topics.get_mut(topic).expect("judged known")[partition as usize];
        let base = *next;
        *next += i64::try_from(count).unwrap_or(i64::MAX);
        base
    }

    fn log_records(&self, topic: &str, partition: i32, base_offset: Option<i64>, verdict: &Verdict) {
        let mut log = lock(&self.log);
        for (index, (record, violation)) in verdict.records.iter().enumerate() {
            let violation = match (violation, verdict.error) {
                (Some(own), _) => own.clone(),
                (None, Some(_)) => format!("refused with its batch: {}", verdict.message),
                (None, None) => String::new(),
            };
            log.records.push(KafkaRecord {
                topic: topic.to_owned(),
                partition,
                offset: base_offset.map(|base| base + index as i64),
                key: record.key.as_ref().map(|key| key.to_vec()),
                value: record.value.as_ref().map(|value| value.to_vec()),
                headers: record
                    .headers
                    .iter()
                    .map(|(name, value)| (name.to_string(), value.as_ref().map(|v| v.to_vec())))
                    .collect(),
                compression: verdict.compression,
                error_code: verdict.error.map_or(0, |error| error.code()),
                violation,
            });
        }
    }
}

/// What a partition's batch turned into.
struct Verdict {
    /// `None`: stored.
    error: Option<ResponseError>,
    /// The first reason for refusing, empty when stored.
    message: String,
    compression: Compression,
    /// The records as decoded (none if the batch could not be), each with its own violation.
    records: Vec<(Record, Option<String>)>,
    /// The spans of every record, when all of them were accepted.
    spans: Vec<ReceivedSpan>,
}

impl Verdict {
    fn refused(error: ResponseError, message: String) -> Self {
        Self { error: Some(error), message, compression: Compression::None, records: Vec::new(), spans: Vec::new() }
    }

    /// Applies the contract to a decoded batch: gzip, then each record's key and value.
    fn of_batch(batch: DecodedBatch) -> Self {
        let batch_violation = (batch.compression != Compression::Gzip)
            .then(|| format!("the batch is compressed with {:?}; Scouter's producers send gzip", batch.compression));
        let mut spans = Vec::new();
        let records: Vec<(Record, Option<String>)> = batch
            .records
            .into_iter()
            .map(|record| {
                let outcome = check_record(&record);
                let violation = match outcome {
                    Ok(decoded) => {
                        spans.extend(decoded);
                        None
                    }
                    Err(violation) => Some(violation),
                };
                (record, violation)
            })
            .collect();
        let first_violation = batch_violation.or_else(|| records.iter().find_map(|(_, violation)| violation.clone()));
        match first_violation {
            None => Self { error: None, message: String::new(), compression: batch.compression, records, spans },
            Some(message) => Self {
                error: Some(ResponseError::InvalidRecord),
                message,
                compression: batch.compression,
                records,
                spans: Vec::new(),
            },
        }
    }
}

/// A record's key and value against the contract; the spans of its envelope.
fn check_record(record: &Record) -> Result<Vec<ReceivedSpan>, String> {
    if let Some(key) = &record.key {
        return Err(format!("the record has a {}-byte key; Scouter's producers send none (null)", key.len()));
    }
    let value = record.value.as_ref().ok_or("the record has no value; Scouter needs the JSON envelope")?;
    decode_envelope(value)
}

/// The Scouter HTTP backend's decoding of an ingest body, applied to a record value.
fn decode_envelope(value: &[u8]) -> Result<Vec<ReceivedSpan>, String> {
    let envelope: Value = serde_json::from_slice(value).map_err(|e| format!("the value is not valid JSON: {e}"))?;
    let request = validate_envelope(&envelope)?;
    let decoded: ExportTraceServiceRequest = serde_json::from_value(request.clone())
        .map_err(|e| format!("request does not decode as an OTLP/JSON ExportTraceServiceRequest: {e}"))?;
    Ok(ReceivedSpan::from_request(&decoded, TRANSPORT))
}

struct DecodedBatch {
    compression: Compression,
    /// Empty for codecs this broker cannot decompress (it refuses them anyway).
    records: Vec<Record>,
}

/// Checks a partition's record set is one v2 batch with a correct CRC-32C, then decodes it.
fn decode_batch(bytes: &Bytes) -> Result<DecodedBatch> {
    ensure!(bytes.len() >= BATCH_HEADER_LEN, "a {}-byte record set is shorter than a v2 batch header", bytes.len());
    let stated_len = i32::from_be_bytes(bytes[8..12].try_into().expect("4 bytes"));
    ensure!(
        usize::try_from(stated_len).is_ok_and(|len| len + 12 == bytes.len()),
        "the record set is {} bytes but its first batch says {}: produce v3+ carries exactly one batch",
        bytes.len(),
        i64::from(stated_len) + 12
    );
    let magic = bytes[16] as i8;
    ensure!(magic == 2, "record batch format v{magic}; produce v3+ carries v2 batches");
    let stated_crc = u32::from_be_bytes(bytes[17..21].try_into().expect("4 bytes"));
    let actual_crc = crc32c::crc32c(&bytes[21..]);
    ensure!(
        stated_crc == actual_crc,
        "record batch CRC-32C mismatch: the batch says {stated_crc:#010x}, its bytes give {actual_crc:#010x}"
    );
    let attributes = i16::from_be_bytes([bytes[21], bytes[22]]);
    let compression = match attributes & 0x7 {
        0 => Compression::None,
        1 => Compression::Gzip,
        2 => Compression::Snappy,
        3 => Compression::Lz4,
        4 => Compression::Zstd,
        other => bail!("record batch compression {other} does not exist"),
    };
    if !matches!(compression, Compression::None | Compression::Gzip) {
        return Ok(DecodedBatch { compression, records: Vec::new() });
    }
    let records = RecordBatchDecoder::decode(&mut bytes.clone()).context("decoding the batch's records")?.records;
    Ok(DecodedBatch { compression, records })
}

/// Kafka's rule: 1 to 249 characters of ASCII letters, digits, `.`, `_` and `-`, not `.` or `..`.
fn valid_topic_name(name: &str) -> bool {
    (1..=249).contains(&name.len())
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Fails unless this broker advertised `version` of `api`.
fn advertised(api: ApiKey, version: i16) -> Result<()> {
    let (_, min, max) =
        SUPPORTED_APIS.iter().find(|(key, _, _)| *key == api).with_context(|| format!("{api:?} is not supported"))?;
    ensure!(
        (*min..=*max).contains(&version),
        "{api:?} v{version} was not advertised (this broker answers v{min}-v{max})"
    );
    Ok(())
}

/// A request body, which must be an advertised version and fill the frame exactly.
fn decode_body<T: Decodable>(api: ApiKey, version: i16, mut frame: Bytes) -> Result<T> {
    advertised(api, version)?;
    let body = T::decode(&mut frame, version).with_context(|| format!("decoding a {api:?} v{version} request"))?;
    ensure!(frame.is_empty(), "{} bytes left after a {api:?} v{version} request", frame.len());
    Ok(body)
}

/// A size-prefixed response frame: header (in the version the response type asks for), body.
fn respond<T: Encodable + HeaderVersion>(correlation_id: i32, body: &T, version: i16) -> Result<Answer> {
    let mut frame = BytesMut::new();
    frame.put_i32(0);
    ResponseHeader::default().with_correlation_id(correlation_id).encode(&mut frame, T::header_version(version))?;
    body.encode(&mut frame, version).with_context(|| format!("encoding a v{version} response"))?;
    let len = i32::try_from(frame.len() - 4).context("response too large")?;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    Ok(Answer::Send(frame))
}

/// Answers one connection's requests in order until it closes, breaks the protocol or the broker
/// goes down.
async fn serve_connection(mut stream: TcpStream, state: Arc<BrokerState>, live: PortLiveness) {
    let _ = stream.set_nodelay(true);
    while let Some(frame) = read_frame(&mut stream, &state).await {
        if !live.still_up() {
            return;
        }
        match state.answer(frame).await {
            Ok(Answer::Send(response)) => {
                if stream.write_all(&response).await.is_err() {
                    return;
                }
            }
            Ok(Answer::Nothing) => {}
            Err(error) => {
                state.protocol_error(format!("{error:#}"));
                return;
            }
        }
    }
}

/// The next request frame; `None` when the client is gone (a client may hang up mid-frame, e.g.
/// on its own timeout, which is not a protocol error) or the frame's size is impossible.
async fn read_frame(stream: &mut TcpStream, state: &BrokerState) -> Option<Bytes> {
    let len = stream.read_i32().await.ok()?;
    match usize::try_from(len) {
        Ok(len) if len <= MAX_FRAME => {
            let mut frame = vec![0; len];
            stream.read_exact(&mut frame).await.ok()?;
            Some(Bytes::from(frame))
        }
        _ => {
            state.protocol_error(format!("a request frame of {len} bytes (the limit is {MAX_FRAME})"));
            None
        }
    }
}
