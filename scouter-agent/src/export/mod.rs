//! Export: every finished span leaves the agent here, through one pipeline.
//!
//! [`Pipeline::submit`] never blocks: it applies the global sampler ([`sampling`]), then offers
//! the span to each sink's own queue ([`delivery`]), where the sink's own ratio applies. Each
//! sink has its own delivery thread, which batches, splits requests to the transport's size
//! limit, and retries with backoff; a sink that is slow, hangs or is down only fills (and
//! overflows, counted) its own queue. The sinks:
//! - the Scouter backend, always when one is configured: [`scouter_http`], [`scouter_grpc`],
//!   [`scouter_kafka`] (one JSON envelope per request, [`otlp::scouter_message`]);
//! - an OTLP collector, optionally: [`otlp_grpc`], [`otlp_http`] (protobuf);
//! - the embedded store ([`store_sink`]) when no Scouter backend is configured (or asked to
//!   stay), and `--stdout` ([`stdout`]).
//!
//! Network sinks run their I/O on the pipeline's own small tokio runtime (started with the
//! first network sink; the store and stdout need none), so nothing here
//! shares a thread with the kernel-event loop. At shutdown every queue is closed and drained
//! within the flush timeout; whatever is still undelivered then is counted as dropped.

pub mod counters;
pub mod delivery;
pub mod kafka;
pub mod otlp;
mod otlp_grpc;
mod otlp_http;
pub mod sampling;
pub mod scouter_grpc;
mod scouter_http;
mod scouter_kafka;
mod stdout;
mod store_sink;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;

use crate::config::settings::OtlpProtocol;
use crate::config::{ExportConfig, OtlpConfig, ScouterConfig, ScouterTransport, StoreConfig};
use crate::spans::Span;
use counters::{DropReason, SinkCounters};
use delivery::{DeliveryPolicy, Shutdown, Sink, SinkHandle};
use sampling::Sampler;

pub use stdout::StdoutSink;
pub use store_sink::StoreSink;

/// Spans counted before any sink: what the agent produced, and what the global ratio (or a
/// caller's "not sampled") left out.
#[derive(Debug, Default)]
pub struct PipelineCounters {
    pub produced: AtomicU64,
    pub sampled_out: AtomicU64,
}

pub struct Pipeline {
    sampler: Sampler,
    sinks: Vec<SinkHandle>,
    counters: Arc<PipelineCounters>,
    shutdown: Arc<Shutdown>,
    policy: DeliveryPolicy,
    flush_timeout: std::time::Duration,
    /// Network sinks' I/O, started with the first of them; dropped last.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Pipeline {
    /// The sinks `config` asks for.
    pub fn from_config(export: &ExportConfig, store: &StoreConfig) -> anyhow::Result<Self> {
        let mut pipeline = Self::new(export);
        if export.local_store {
            pipeline.add(StoreSink::open(store).context("opening the embedded trace store")?, 1.0)?;
        }
        if export.stdout {
            pipeline.add(StdoutSink, 1.0)?;
        }
        if let Some(scouter) = &export.scouter {
            pipeline.add_scouter(scouter)?;
        }
        if let Some(otlp) = &export.otlp {
            pipeline.add_otlp(otlp)?;
        }
        Ok(pipeline)
    }

    fn new(export: &ExportConfig) -> Self {
        Self {
            sampler: Sampler::new(export.sample_ratio, export.honor_sampled_flag),
            sinks: Vec::new(),
            counters: Arc::default(),
            shutdown: Arc::default(),
            policy: DeliveryPolicy { batch: export.batch, retry_max_elapsed: export.retry_max_elapsed },
            flush_timeout: export.flush_timeout,
            runtime: None,
        }
    }

    /// The runtime network sinks do their I/O on, started on first use.
    fn io(&mut self) -> anyhow::Result<tokio::runtime::Handle> {
        if self.runtime.is_none() {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("export-io")
                .enable_all()
                .build()
                .context("starting the export runtime")?;
            self.runtime = Some(runtime);
        }
        Ok(self.runtime.as_ref().expect("started above").handle().clone())
    }

    /// Starts delivering to `sink`, which keeps `ratio` of the traces the global ratio kept.
    pub fn add<S: Sink>(&mut self, sink: S, ratio: f64) -> anyhow::Result<()> {
        let name = sink.name();
        let handle = SinkHandle::start(sink, Sampler::ratio_only(ratio), self.policy, Arc::clone(&self.shutdown))
            .with_context(|| format!("starting the {name} delivery thread"))?;
        self.sinks.push(handle);
        Ok(())
    }

    fn add_scouter(&mut self, config: &ScouterConfig) -> anyhow::Result<()> {
        let io = self.io()?;
        match &config.transport {
            ScouterTransport::Http { uri } => {
                let sink = scouter_http::ScouterHttpSink::new(io, uri, config).context("the Scouter HTTP client")?;
                tracing::info!(uri, "exporting to Scouter over HTTP");
                self.add(sink, config.sample_ratio)
            }
            ScouterTransport::Grpc { uri } => {
                let sink = scouter_grpc::ScouterGrpcSink::new(io, uri, config).context("the Scouter gRPC client")?;
                tracing::info!(uri, "exporting to Scouter over gRPC");
                self.add(sink, config.sample_ratio)
            }
            ScouterTransport::Kafka { brokers, topic } => {
                let sink = scouter_kafka::KafkaSink::new(io, brokers.clone(), topic.clone(), config.timeout);
                tracing::info!(?brokers, topic, "exporting to Scouter over Kafka");
                self.add(sink, config.sample_ratio)
            }
        }
    }

    fn add_otlp(&mut self, config: &OtlpConfig) -> anyhow::Result<()> {
        let io = self.io()?;
        tracing::info!(endpoint = config.endpoint, protocol = ?config.protocol, "exporting to an OTLP collector");
        match config.protocol {
            OtlpProtocol::Grpc => {
                let sink = otlp_grpc::OtlpGrpcSink::new(io, config).context("the OTLP gRPC client")?;
                self.add(sink, config.sample_ratio)
            }
            OtlpProtocol::HttpProtobuf => {
                let sink = otlp_http::OtlpHttpSink::new(io, config).context("the OTLP HTTP client")?;
                self.add(sink, config.sample_ratio)
            }
        }
    }

    /// Offers a span to every sink; never blocks.
    pub fn submit(&self, span: Span) {
        self.counters.produced.fetch_add(1, Ordering::Relaxed);
        if !self.sampler.keeps(&span) {
            self.counters.sampled_out.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let span = Arc::new(span);
        for sink in &self.sinks {
            sink.offer(&span);
        }
    }

    pub fn counters(&self) -> Arc<PipelineCounters> {
        Arc::clone(&self.counters)
    }

    /// Each sink's name and counters.
    pub fn sink_counters(&self) -> Vec<(&'static str, Arc<SinkCounters>)> {
        self.sinks.iter().map(|sink| (sink.name, Arc::clone(&sink.counters))).collect()
    }

    /// Delivers what was accepted, for at most the flush timeout, then stops.
    pub fn shutdown(mut self) {
        let deadline = Instant::now() + self.flush_timeout;
        self.shutdown.begin(deadline);
        for sink in &mut self.sinks {
            sink.close();
        }
        for sink in &mut self.sinks {
            if !sink.join_until(deadline) {
                tracing::warn!(sink = sink.name, "still delivering when the flush timeout ran out");
            }
            let c = &sink.counters;
            tracing::info!(
                sink = sink.name,
                exported = c.exported.load(Ordering::Relaxed),
                sampled_out = c.sampled_out.load(Ordering::Relaxed),
                dropped_queue_full = c.dropped(DropReason::QueueFull),
                dropped_too_large = c.dropped(DropReason::TooLarge),
                dropped_rejected = c.dropped(DropReason::Rejected),
                dropped_retries_exhausted = c.dropped(DropReason::RetriesExhausted),
                dropped_shutdown = c.dropped(DropReason::Shutdown),
                "sink stopped"
            );
        }
        // A thread left behind holds a handle; shutting down in the background never waits.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BatchConfig;
    use crate::spans::{SpanId, SpanKind, TraceId};
    use delivery::{Requests, SendError};
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::time::Duration;

    struct Recorder(&'static str, Arc<Mutex<Vec<TraceId>>>);

    impl Sink for Recorder {
        type Request = Vec<TraceId>;
        fn name(&self) -> &'static str {
            self.0
        }
        fn requests(&self, spans: &[Arc<Span>]) -> Requests<Vec<TraceId>> {
            Requests { ready: vec![(spans.iter().map(|s| s.trace_id).collect(), spans.len())], too_large: 0 }
        }
        fn send(&mut self, request: &Vec<TraceId>, _: Instant) -> Result<(), SendError> {
            self.1.lock().unwrap().extend(request);
            Ok(())
        }
    }

    fn export_config(ratio: f64) -> ExportConfig {
        ExportConfig {
            local_store: false,
            stdout: false,
            scouter: None,
            otlp: None,
            sample_ratio: ratio,
            honor_sampled_flag: true,
            batch: BatchConfig {
                max_queue_size: 100_000,
                scheduled_delay: Duration::from_millis(50),
                max_export_batch_size: 512,
            },
            flush_timeout: Duration::from_secs(10),
            retry_max_elapsed: Duration::from_secs(10),
        }
    }

    #[test]
    fn the_global_ratio_applies_to_every_sink_and_a_sinks_ratio_to_it_alone() {
        let mut pipeline = Pipeline::new(&export_config(0.5));
        let (all, quarter) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
        pipeline.add(Recorder("all", Arc::clone(&all)), 1.0).unwrap();
        pipeline.add(Recorder("quarter", Arc::clone(&quarter)), 0.25).unwrap();
        let traces: Vec<TraceId> = (0..20_000).map(|_| TraceId::random()).collect();
        for trace_id in &traces {
            // Two spans per trace: decisions are per trace, never per span.
            for _ in 0..2 {
                pipeline.submit(Span { trace_id: *trace_id, ..Span::for_test(SpanKind::Server, SpanId::random()) });
            }
        }
        let counters = pipeline.counters();
        pipeline.shutdown();
        let all: Vec<TraceId> = all.lock().unwrap().clone();
        let quarter: Vec<TraceId> = quarter.lock().unwrap().clone();
        let kept: HashSet<TraceId> = all.iter().copied().collect();
        let kept_quarter: HashSet<TraceId> = quarter.iter().copied().collect();
        assert_eq!(all.len(), kept.len() * 2, "both spans of every kept trace");
        assert_eq!(quarter.len(), kept_quarter.len() * 2);
        assert!((9_500..=10_500).contains(&kept.len()), "0.5 of 20000 traces: {}", kept.len());
        // min(0.5, 0.25) of the traces, and only traces the global ratio kept.
        assert!((4_700..=5_300).contains(&kept_quarter.len()), "0.25 of 20000: {}", kept_quarter.len());
        assert!(kept_quarter.is_subset(&kept));
        assert_eq!(counters.produced.load(Ordering::Relaxed), 40_000);
        assert_eq!(counters.sampled_out.load(Ordering::Relaxed) as usize, 40_000 - all.len());
    }
}
