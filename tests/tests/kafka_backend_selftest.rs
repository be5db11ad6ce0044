//! Self-tests of the fake Kafka broker (`scouter_e2e::backends::kafka`): no agent, no root, no
//! eBPF.
//!
//! The broker is driven by rskafka, the agent's own Kafka client, producing what the agent would
//! (gzip, no key, the JSON envelope written out by hand below so the contract's literal form is
//! what gets checked), by a raw socket for what no well-behaved client sends (a corrupted batch),
//! and by the agent's publisher itself, compiled in from `scouter-agent/src/export/kafka.rs`
//! (the agent is a binary crate), so its partitioning, reconnects and error labels are checked
//! against a broker that speaks Kafka.

// Only the publisher is exercised here; the agent uses the rest of the module.
#[allow(dead_code)]
#[path = "../../scouter-agent/src/export/kafka.rs"]
mod publisher;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Record as BatchRecord, RecordBatchEncoder, RecordEncodeOptions, TimestampType, NO_PARTITION_LEADER_EPOCH,
    NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE,
};
use publisher::{KafkaError, KafkaPublisher};
use rskafka::chrono::DateTime;
use rskafka::client::error::{Error as ClientError, ProtocolError};
use rskafka::client::partition::{Compression as Codec, PartitionClient, UnknownTopicHandling};
use rskafka::client::ClientBuilder;
use rskafka::record::Record;
use rskafka::BackoffConfig;
use scouter_e2e::backends::kafka::{Compression, KafkaBroker, DEFAULT_TOPIC, TRANSPORT};
use scouter_e2e::backends::{AttrValue, Backend, Reply};
use serde_json::{json, Value};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const ROOT_ID: &str = "00f067aa0ba902b7";
const CHILD_ID: &str = "5fb397be34d26b51";
const WAIT: Duration = Duration::from_secs(5);
/// The publisher's timeout: long enough for a loaded machine, short enough for failure cases.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// Payloads

/// A server root and a failed client child in one trace, as the agent writes them: lowercase hex
/// ids, nanoseconds as decimal strings, integer kinds, int attributes as strings.
fn envelope() -> Value {
    json!({"request": {"resourceSpans": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "kafka-selftest"}},
        ]},
        "scopeSpans": [{
            "scope": {"name": "scouter-agent", "version": "0.1.0"},
            "spans": [
                {
                    "traceId": TRACE_ID,
                    "spanId": ROOT_ID,
                    "parentSpanId": "",
                    "name": "GET /items",
                    "kind": 2,
                    "startTimeUnixNano": "1700000000000000000",
                    "endTimeUnixNano": "1700000000250000000",
                    "attributes": [
                        {"key": "http.request.method", "value": {"stringValue": "GET"}},
                        {"key": "http.response.status_code", "value": {"intValue": "200"}},
                    ],
                    "flags": 257,
                    "status": {"code": 0},
                },
                {
                    "traceId": TRACE_ID,
                    "spanId": CHILD_ID,
                    "parentSpanId": ROOT_ID,
                    "name": "GET",
                    "kind": 3,
                    "startTimeUnixNano": "1700000000100000000",
                    "endTimeUnixNano": "1700000000200000000",
                    "events": [{"timeUnixNano": "1700000000150000000", "name": "exception"}],
                    "status": {"code": 2, "message": "boom"},
                },
            ],
        }],
    }]}})
}

fn envelope_bytes() -> Vec<u8> {
    serde_json::to_vec(&envelope()).expect("JSON serializes")
}

/// The envelope with its root span edited by `edit`.
fn edited(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut envelope = envelope();
    edit(&mut envelope["request"]["resourceSpans"][0]["scopeSpans"][0]["spans"][0]);
    serde_json::to_vec(&envelope).expect("JSON serializes")
}

// ---------------------------------------------------------------------------------------------
// Clients

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// A producer for partition 0 of `topic` that gives up on a dead broker within seconds (rskafka
/// retries forever by default).
async fn producer(bootstrap: String, topic: &str) -> Result<PartitionClient> {
    let backoff = BackoffConfig { deadline: Some(Duration::from_secs(2)), ..BackoffConfig::default() };
    let client = ClientBuilder::new(vec![bootstrap]).backoff_config(backoff).build().await?;
    Ok(client.partition_client(topic, 0, UnknownTopicHandling::Retry).await?)
}

fn record(key: Option<&[u8]>, value: Option<Vec<u8>>) -> Record {
    Record {
        key: key.map(<[u8]>::to_vec),
        value,
        headers: Default::default(),
        timestamp: DateTime::from_timestamp_millis(1_700_000_000_000).expect("in range"),
    }
}

/// Produces one record, as the agent does unless `codec`/`key` say otherwise.
fn produce(
    runtime: &tokio::runtime::Runtime,
    client: &PartitionClient,
    codec: Codec,
    key: Option<&[u8]>,
    value: Option<Vec<u8>>,
) -> Result<Vec<i64>, ClientError> {
    runtime.block_on(client.produce(vec![record(key, value)], codec))
}

fn protocol_error_of(error: &ClientError) -> Option<ProtocolError> {
    match error {
        ClientError::ServerError { protocol_error, .. } => Some(*protocol_error),
        _ => None,
    }
}

/// One record in a gzip batch, encoded by kafka-protocol rather than rskafka.
fn gzip_batch(value: &[u8]) -> Result<BytesMut> {
    let record = BatchRecord {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
        producer_id: NO_PRODUCER_ID,
        producer_epoch: NO_PRODUCER_EPOCH,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: NO_SEQUENCE,
        timestamp: 1_700_000_000_000,
        key: None,
        value: Some(Bytes::copy_from_slice(value)),
        headers: Default::default(),
    };
    let mut batch = BytesMut::new();
    let options = RecordEncodeOptions { version: 2, compression: Compression::Gzip };
    RecordBatchEncoder::encode(&mut batch, [&record], &options)?;
    Ok(batch)
}

/// Sends a Produce v7 request for partition 0 of `topic` over a fresh socket, written out by
/// hand (no Kafka library on this side), and returns the partition's error code.
fn raw_produce(port: u16, topic: &str, batch: &[u8]) -> Result<i16> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&i16::try_from(s.len()).expect("short").to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let mut request = Vec::new();
    // Header v1: API key 0 (Produce), version 7, correlation id, client id.
    request.extend_from_slice(&0_i16.to_be_bytes());
    request.extend_from_slice(&7_i16.to_be_bytes());
    request.extend_from_slice(&42_i32.to_be_bytes());
    string(&mut request, "raw-selftest");
    // Body: null transactional id, acks=-1, timeout, one topic with one partition and its batch.
    request.extend_from_slice(&(-1_i16).to_be_bytes());
    request.extend_from_slice(&(-1_i16).to_be_bytes());
    request.extend_from_slice(&5000_i32.to_be_bytes());
    request.extend_from_slice(&1_i32.to_be_bytes());
    string(&mut request, topic);
    request.extend_from_slice(&1_i32.to_be_bytes());
    request.extend_from_slice(&0_i32.to_be_bytes());
    request.extend_from_slice(&i32::try_from(batch.len())?.to_be_bytes());
    request.extend_from_slice(batch);

    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(WAIT))?;
    stream.write_all(&i32::try_from(request.len())?.to_be_bytes())?;
    stream.write_all(&request)?;
    let mut len = [0; 4];
    stream.read_exact(&mut len)?;
    let mut response = vec![0; usize::try_from(i32::from_be_bytes(len))?];
    stream.read_exact(&mut response)?;
    // Header v0 (correlation id), then responses[1]: name, partitions[1]: index, error code.
    let int = |at: usize| i32::from_be_bytes(response[at..at + 4].try_into().expect("4 bytes"));
    ensure!(int(0) == 42, "correlation id {} in {response:?}", int(0));
    ensure!(int(4) == 1, "expected one topic in {response:?}");
    let name_len = usize::try_from(i16::from_be_bytes([response[8], response[9]]))?;
    let at = 10 + name_len;
    ensure!(int(at) == 1 && int(at + 4) == 0, "expected partition 0 alone in {response:?}");
    Ok(i16::from_be_bytes([response[at + 8], response[at + 9]]))
}

// ---------------------------------------------------------------------------------------------
// The broker with rskafka

#[test]
fn spans_produced_as_the_agent_does_are_decoded() -> Result<()> {
    let broker = KafkaBroker::start()?;
    ensure!(broker.sdk_env() == [("KAFKA_BROKERS".to_owned(), broker.bootstrap())]);
    let runtime = runtime()?;
    let client = runtime.block_on(producer(broker.bootstrap(), DEFAULT_TOPIC))?;
    ensure!(broker.topics() == [DEFAULT_TOPIC], "the topic is created on demand: {:?}", broker.topics());
    let offsets = produce(&runtime, &client, Codec::Gzip, None, Some(envelope_bytes()))?;
    ensure!(offsets == [0], "offsets {offsets:?}");

    let spans = broker.wait_for_spans(2, WAIT)?;
    let root = spans.iter().find(|s| s.span_id == ROOT_ID).context("the root span")?;
    let child = spans.iter().find(|s| s.span_id == CHILD_ID).context("the child span")?;
    ensure!(root.transport == TRANSPORT && root.trace_id == TRACE_ID && child.trace_id == TRACE_ID, "{spans:#?}");
    ensure!(root.parent_span_id.is_none() && child.parent_span_id.as_deref() == Some(ROOT_ID), "{spans:#?}");
    ensure!(root.name == "GET /items" && root.kind == 2 && child.kind == 3, "{spans:#?}");
    ensure!(root.start_time_unix_nano == 1_700_000_000_000_000_000, "{root:#?}");
    ensure!(root.end_time_unix_nano == 1_700_000_000_250_000_000, "{root:#?}");
    ensure!(root.attr("http.response.status_code") == Some(&AttrValue::Int(200)), "{root:#?}");
    ensure!(root.flags == 257 && root.service_name() == Some("kafka-selftest"), "{root:#?}");
    ensure!(child.status_code == 2 && child.status_message == "boom" && child.events.len() == 1, "{child:#?}");

    let records = broker.records();
    ensure!(records.len() == 1, "{records:#?}");
    let stored = &records[0];
    ensure!(stored.accepted() && stored.topic == DEFAULT_TOPIC && stored.partition == 0, "{stored:#?}");
    ensure!(stored.offset == Some(0) && stored.compression == Compression::Gzip, "{stored:#?}");
    ensure!(stored.key.is_none() && stored.value.as_deref() == Some(&envelope_bytes()[..]), "{stored:#?}");
    let requests = broker.requests();
    ensure!(requests.len() == 1 && requests[0].reply == Reply::Kafka(0) && requests[0].span_count == 2);
    ensure!(requests[0].accepted() && requests[0].body_len > 0, "{requests:#?}");
    ensure!(broker.rejected() == 0 && broker.protocol_errors().is_empty(), "{:?}", broker.protocol_errors());
    Ok(())
}

#[test]
fn records_that_break_the_contract_are_refused_and_counted() -> Result<()> {
    let broker = KafkaBroker::start()?;
    let runtime = runtime()?;
    let client = runtime.block_on(producer(broker.bootstrap(), DEFAULT_TOPIC))?;
    let base64_ids = edited(|span| span["traceId"] = json!("S/kvNXezTaajzpKdDg5HNg=="));
    let numeric_nanos = edited(|span| span["startTimeUnixNano"] = json!(1_700_000_000_000_000_000_u64));
    let named_kind = edited(|span| span["kind"] = json!("SPAN_KIND_SERVER"));
    /// A record the agent must never send, and what the refusal must mention.
    struct Case {
        name: &'static str,
        codec: Codec,
        key: Option<&'static [u8]>,
        value: Option<Vec<u8>>,
        needle: &'static str,
    }
    let case = |name, codec, key, value, needle| Case { name, codec, key, value, needle };
    let cases = [
        case("uncompressed", Codec::NoCompression, None, Some(envelope_bytes()), "gzip"),
        case("keyed", Codec::Gzip, Some(b"kafka-selftest"), Some(envelope_bytes()), "key"),
        case("null value", Codec::Gzip, None, None, "no value"),
        case("not JSON", Codec::Gzip, None, Some(b"not json".to_vec()), "not valid JSON"),
        case("base64 ids", Codec::Gzip, None, Some(base64_ids), "lowercase hex"),
        case("numeric nanos", Codec::Gzip, None, Some(numeric_nanos), "decimal digits"),
        case("named kind", Codec::Gzip, None, Some(named_kind), "kind must be an integer"),
    ];
    for (count, Case { name: case, codec, key, value, needle }) in cases.into_iter().enumerate() {
        let result = produce(&runtime, &client, codec, key, value);
        match &result {
            Err(error) if protocol_error_of(error) == Some(ProtocolError::InvalidRecord) => {}
            other => bail!("{case}: expected INVALID_RECORD, got {other:?}"),
        }
        let last = broker.records().pop().context("the refused record is kept")?;
        ensure!(last.error_code == 87 && last.offset.is_none(), "{case}: {last:#?}");
        ensure!(last.violation.contains(needle), "{case}: the violation should mention {needle:?}: {last:#?}");
        ensure!(broker.rejected() == count + 1, "{case}: {} rejected", broker.rejected());
        let request = broker.requests().pop().context("the request is recorded")?;
        ensure!(request.reply == Reply::Kafka(87) && request.message.contains(needle), "{case}: {request:#?}");
    }
    ensure!(broker.spans().is_empty(), "refused records delivered spans: {:#?}", broker.spans());
    ensure!(broker.protocol_errors().is_empty(), "contract violations are not protocol errors");

    // Refused batches take no offsets.
    let offsets = produce(&runtime, &client, Codec::Gzip, None, Some(envelope_bytes()))?;
    ensure!(offsets == [0], "offsets {offsets:?}");
    broker.wait_for_spans(2, WAIT)?;
    Ok(())
}

#[test]
fn a_down_broker_refuses_connections_and_comes_back_on_the_same_port() -> Result<()> {
    let broker = KafkaBroker::start()?;
    let runtime = runtime()?;
    let client = runtime.block_on(producer(broker.bootstrap(), DEFAULT_TOPIC))?;
    produce(&runtime, &client, Codec::Gzip, None, Some(envelope_bytes()))?;

    broker.set_down(true)?;
    let result = produce(&runtime, &client, Codec::Gzip, None, Some(envelope_bytes()));
    ensure!(result.is_err(), "produced to a down broker: {result:?}");
    let error = runtime.block_on(producer(broker.bootstrap(), DEFAULT_TOPIC)).err().context("a new client")?;
    ensure!(format!("{error:#}").contains("onnection"), "a new client should fail to connect: {error:#}");

    broker.set_down(false)?;
    produce(&runtime, &client, Codec::Gzip, None, Some(envelope_bytes()))?;
    broker.wait_for_spans(4, WAIT)?;
    let replies: Vec<Reply> = broker.requests().iter().map(|r| r.reply).collect();
    ensure!(replies == [Reply::Kafka(0), Reply::Kafka(0)], "nothing reaches a down broker: {replies:?}");
    Ok(())
}

#[test]
fn a_corrupted_batch_is_a_protocol_error_answered_corrupt_message() -> Result<()> {
    let broker = KafkaBroker::start()?;
    let runtime = runtime()?;
    runtime.block_on(producer(broker.bootstrap(), DEFAULT_TOPIC))?;

    // A batch from another encoder, over a hand-written request, is accepted...
    let batch = gzip_batch(&envelope_bytes())?;
    ensure!(raw_produce(broker.port(), DEFAULT_TOPIC, &batch)? == 0, "{:?}", broker.protocol_errors());
    broker.wait_for_spans(2, WAIT)?;
    ensure!(broker.protocol_errors().is_empty(), "{:?}", broker.protocol_errors());

    // ...and the same batch with one flipped bit fails its checksum.
    let mut corrupted = batch.to_vec();
    *corrupted.last_mut().expect("a non-empty batch") ^= 0x01;
    ensure!(raw_produce(broker.port(), DEFAULT_TOPIC, &corrupted)? == 2, "expected CORRUPT_MESSAGE");
    let errors = broker.protocol_errors();
    ensure!(errors.len() == 1 && errors[0].contains("CRC-32C mismatch"), "{errors:?}");
    ensure!(broker.requests().last().map(|r| r.reply) == Some(Reply::Kafka(2)), "{:#?}", broker.requests());
    ensure!(broker.spans().len() == 2 && broker.records().len() == 1, "nothing of a corrupted batch is kept");

    // A topic that does not exist is refused, not a protocol error.
    ensure!(raw_produce(broker.port(), "no_such_topic", &batch)? == 3, "expected UNKNOWN_TOPIC_OR_PARTITION");
    ensure!(broker.protocol_errors().len() == 1, "{:?}", broker.protocol_errors());
    Ok(())
}

/// Sends one request frame (`api` key and `version`, header v1/v2 as `flexible` says, `body`)
/// and returns the response frame, or `None` if the broker closed the connection instead.
fn raw_request(port: u16, api: i16, version: i16, flexible: bool, body: &[u8]) -> Result<Option<Vec<u8>>> {
    let mut request = Vec::new();
    request.extend_from_slice(&api.to_be_bytes());
    request.extend_from_slice(&version.to_be_bytes());
    request.extend_from_slice(&7_i32.to_be_bytes());
    request.extend_from_slice(&(-1_i16).to_be_bytes()); // null client id
    if flexible {
        request.push(0); // no tagged fields
    }
    request.extend_from_slice(body);
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(WAIT))?;
    stream.write_all(&i32::try_from(request.len())?.to_be_bytes())?;
    stream.write_all(&request)?;
    let mut len = [0; 4];
    match stream.read_exact(&mut len) {
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        other => other?,
    }
    let mut response = vec![0; usize::try_from(i32::from_be_bytes(len))?];
    stream.read_exact(&mut response)?;
    Ok(Some(response))
}

#[test]
fn unadvertised_versions_and_apis_are_answered_as_kafka_does() -> Result<()> {
    let broker = KafkaBroker::start()?;
    // ApiVersions v9 (flexible, empty body): answered in v0, UNSUPPORTED_VERSION (35), so the
    // client can retry with a version from the ranges that follow.
    let response = raw_request(broker.port(), 18, 9, true, &[0, 0, 0])?.context("an ApiVersions answer")?;
    ensure!(response[..4] == 7_i32.to_be_bytes() && response[4..6] == 35_i16.to_be_bytes(), "{response:?}");
    ensure!(broker.protocol_errors().is_empty(), "version negotiation is not an error");

    // Fetch is not something a producer sends: recorded, and the connection is closed.
    let response = raw_request(broker.port(), 1, 4, false, &[])?;
    ensure!(response.is_none(), "expected the connection to close, got {response:?}");
    let errors = broker.protocol_errors();
    ensure!(errors.len() == 1 && errors[0].contains("Fetch"), "{errors:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The agent's publisher against the broker

fn publish(
    runtime: &tokio::runtime::Runtime,
    publisher: &mut KafkaPublisher,
    value: Vec<u8>,
) -> Result<(), KafkaError> {
    runtime.block_on(publisher.publish(value))
}

/// Asserts a publish failed with `reason` and the retryability that goes with it.
fn expect_failure(result: Result<(), KafkaError>, reasons: &[&str], retryable: bool) -> Result<()> {
    match result {
        Err(error) if reasons.contains(&error.reason()) && error.is_retryable() == retryable => Ok(()),
        Err(error) => bail!(
            "expected {reasons:?} (retryable: {retryable}), got {:?} (retryable: {}): {error}",
            error.reason(),
            error.is_retryable()
        ),
        Ok(()) => bail!("expected {reasons:?}, the publish succeeded"),
    }
}

#[test]
fn the_publisher_round_robins_over_partitions() -> Result<()> {
    let broker = KafkaBroker::start_with_partitions(3)?;
    let runtime = runtime()?;
    let mut publisher =
        runtime.block_on(KafkaPublisher::connect(vec![broker.bootstrap()], "spans".to_owned(), PUBLISH_TIMEOUT))?;
    ensure!(publisher.is_connected(), "{publisher:?}");
    for _ in 0..6 {
        publish(&runtime, &mut publisher, envelope_bytes())?;
    }
    broker.wait_for_spans(12, WAIT)?;
    let records = broker.records();
    let placed: Vec<(i32, Option<i64>)> = records.iter().map(|r| (r.partition, r.offset)).collect();
    let expected = [(0, Some(0)), (1, Some(0)), (2, Some(0)), (0, Some(1)), (1, Some(1)), (2, Some(1))];
    ensure!(placed == expected, "partitions and offsets: {placed:?}");
    ensure!(records.iter().all(|r| r.topic == "spans" && r.key.is_none() && r.compression == Compression::Gzip));
    ensure!(broker.protocol_errors().is_empty(), "{:?}", broker.protocol_errors());
    Ok(())
}

#[test]
fn the_publisher_labels_each_failure_and_recovers() -> Result<()> {
    let broker = KafkaBroker::start()?;
    let runtime = runtime()?;
    let mut publisher =
        runtime.block_on(KafkaPublisher::connect(vec![broker.bootstrap()], "spans".to_owned(), PUBLISH_TIMEOUT))?;

    // Verdicts on the record: final, and the connection stays.
    expect_failure(publish(&runtime, &mut publisher, b"not json".to_vec()), &["rejected"], false)?;
    ensure!(publisher.is_connected(), "a refused record must not drop the connection");
    broker.reject_next(1, 413);
    expect_failure(publish(&runtime, &mut publisher, envelope_bytes()), &["too_large"], false)?;
    broker.set_max_message_bytes(64);
    expect_failure(publish(&runtime, &mut publisher, envelope_bytes()), &["too_large"], false)?;
    broker.set_max_message_bytes(scouter_e2e::backends::kafka::DEFAULT_MAX_MESSAGE_BYTES);

    // A busy broker: worth retrying.
    broker.reject_next(1, 503);
    expect_failure(publish(&runtime, &mut publisher, envelope_bytes()), &["unavailable"], true)?;
    broker.reject_next(1, 429);
    expect_failure(publish(&runtime, &mut publisher, envelope_bytes()), &["unavailable"], true)?;
    let replies: Vec<Reply> = broker.requests().iter().map(|r| r.reply).collect();
    let expected = [87, 10, 10, 19, 89].map(Reply::Kafka);
    ensure!(replies == expected, "replies {replies:?}");

    // A broker that never answers: a timeout, and a fresh connection afterwards.
    broker.hang(true);
    let started = Instant::now();
    expect_failure(publish(&runtime, &mut publisher, envelope_bytes()), &["timeout"], true)?;
    ensure!(started.elapsed() < PUBLISH_TIMEOUT * 2, "the publish took {:?}", started.elapsed());
    ensure!(!publisher.is_connected(), "a timeout must drop the connection");
    broker.hang(false);
    publish(&runtime, &mut publisher, envelope_bytes())?;

    // A broker that is down: retryable, and publishing resumes once it is back.
    broker.set_down(true)?;
    expect_failure(publish(&runtime, &mut publisher, envelope_bytes()), &["connection", "timeout"], true)?;
    expect_failure(publish(&runtime, &mut publisher, envelope_bytes()), &["connection", "timeout"], true)?;
    broker.set_down(false)?;
    publish(&runtime, &mut publisher, envelope_bytes())?;
    ensure!(publisher.is_connected());
    broker.wait_for_spans(4, WAIT)?;
    ensure!(broker.protocol_errors().is_empty(), "{:?}", broker.protocol_errors());
    Ok(())
}

#[test]
fn the_publisher_reports_a_topic_the_broker_will_not_create() -> Result<()> {
    let broker = KafkaBroker::start()?;
    broker.set_auto_create_topics(false);
    let runtime = runtime()?;
    let mut publisher =
        runtime.block_on(KafkaPublisher::connect(vec![broker.bootstrap()], "missing".to_owned(), PUBLISH_TIMEOUT))?;
    ensure!(!publisher.is_connected(), "connected to a topic that does not exist");
    expect_failure(publish(&runtime, &mut publisher, envelope_bytes()), &["unknown_topic"], true)?;
    ensure!(broker.topics().is_empty(), "{:?}", broker.topics());

    broker.set_auto_create_topics(true);
    publish(&runtime, &mut publisher, envelope_bytes())?;
    ensure!(broker.topics() == ["missing"], "{:?}", broker.topics());
    Ok(())
}
