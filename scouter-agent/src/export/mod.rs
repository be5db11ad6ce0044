//! Export: finished spans leave the agent here.
//!
//! Producers hand spans to an [`Exporter`] through a bounded queue and never wait: when the
//! queue is full the span is dropped and counted, so a slow sink can never stall the kernel
//! event path. One writer thread drains the queue in batches into every [`Sink`]; on shutdown
//! it drains what was accepted before returning.

mod otlp;
mod stdout;
mod store_sink;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::config::AgentConfig;
use crate::spans::Span;

pub use stdout::StdoutSink;
pub use store_sink::StoreSink;

/// Spans queued for export before new ones are dropped (the SDK's `max_queue_size` default).
const MAX_QUEUE: usize = 2048;
/// Spans written per batch.
const MAX_BATCH: usize = 512;
/// How long a span may wait in the queue before its batch is written.
const FLUSH_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("writing to standard output: {0}")]
    Stdout(#[from] std::io::Error),
}

/// A destination for finished spans.
pub trait Sink: Send {
    fn name(&self) -> &'static str;
    fn export(&mut self, batch: &[Span]) -> Result<(), ExportError>;
    /// Periodic upkeep (e.g. the store's retention).
    fn housekeeping(&mut self) -> Result<(), ExportError> {
        Ok(())
    }
}

/// Counters of what happened to spans, shared with the agent.
#[derive(Debug, Default)]
pub struct ExportCounters {
    pub accepted: AtomicU64,
    pub exported: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub failed: AtomicU64,
}

pub struct Exporter {
    queue: Option<SyncSender<Span>>,
    writer: Option<JoinHandle<()>>,
    counters: Arc<ExportCounters>,
}

impl Exporter {
    /// The sinks `config` asks for: the embedded store always (no other backend exists yet),
    /// plus stdout with `--stdout`.
    pub fn from_config(config: &AgentConfig) -> anyhow::Result<Self> {
        let mut sinks: Vec<Box<dyn Sink>> =
            vec![Box::new(StoreSink::open(&config.store).context("opening the embedded trace store")?)];
        if config.stdout {
            sinks.push(Box::new(StdoutSink));
        }
        Self::start(sinks, config.housekeeping_interval).context("starting the span writer thread")
    }

    pub fn start(sinks: Vec<Box<dyn Sink>>, housekeeping_interval: Duration) -> std::io::Result<Self> {
        let (queue, receiver) = mpsc::sync_channel(MAX_QUEUE);
        let counters = Arc::new(ExportCounters::default());
        let writer_counters = Arc::clone(&counters);
        let writer = std::thread::Builder::new()
            .name("span-writer".into())
            .spawn(move || write_loop(receiver, sinks, &writer_counters, housekeeping_interval))?;
        Ok(Self { queue: Some(queue), writer: Some(writer), counters })
    }

    /// Queues a span; never blocks.
    pub fn submit(&self, span: Span) {
        let Some(queue) = &self.queue else { return };
        match queue.try_send(span) {
            Ok(()) => {
                self.counters.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn counters(&self) -> &ExportCounters {
        &self.counters
    }

    /// Writes everything accepted so far, then stops the writer.
    pub fn shutdown(mut self) {
        self.queue = None;
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!("the span writer thread panicked; some spans may be lost");
            }
        }
    }
}

fn write_loop(
    receiver: mpsc::Receiver<Span>,
    mut sinks: Vec<Box<dyn Sink>>,
    counters: &ExportCounters,
    housekeeping_interval: Duration,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut last_housekeeping = Instant::now();
    loop {
        let disconnected = fill_batch(&receiver, &mut batch);
        if !batch.is_empty() {
            export_batch(&mut sinks, &batch, counters);
            batch.clear();
        }
        if last_housekeeping.elapsed() >= housekeeping_interval {
            last_housekeeping = Instant::now();
            for sink in &mut sinks {
                if let Err(error) = sink.housekeeping() {
                    tracing::warn!(sink = sink.name(), %error, "housekeeping failed");
                }
            }
        }
        if disconnected {
            return;
        }
    }
}

/// Collects up to a batch, waiting at most one flush interval; true once the queue is closed
/// and empty.
fn fill_batch(receiver: &mpsc::Receiver<Span>, batch: &mut Vec<Span>) -> bool {
    let deadline = Instant::now() + FLUSH_INTERVAL;
    while batch.len() < MAX_BATCH {
        let wait = deadline.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(wait) {
            Ok(span) => batch.push(span),
            Err(RecvTimeoutError::Timeout) => return false,
            Err(RecvTimeoutError::Disconnected) => return true,
        }
    }
    false
}

fn export_batch(sinks: &mut [Box<dyn Sink>], batch: &[Span], counters: &ExportCounters) {
    for sink in sinks.iter_mut() {
        match sink.export(batch) {
            Ok(()) => {
                counters.exported.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            Err(error) => {
                counters.failed.fetch_add(batch.len() as u64, Ordering::Relaxed);
                tracing::warn!(sink = sink.name(), spans = batch.len(), %error, "export failed; batch dropped");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Recorder(Arc<Mutex<Vec<String>>>);

    impl Sink for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        fn export(&mut self, batch: &[Span]) -> Result<(), ExportError> {
            self.0.lock().unwrap().extend(batch.iter().map(|s| s.name.clone()));
            Ok(())
        }
    }

    pub(crate) fn span(name: &str) -> Span {
        use crate::spans::{SpanId, SpanKind};
        Span { name: name.into(), ..Span::for_test(SpanKind::Server, SpanId::random()) }
    }

    #[test]
    fn shutdown_writes_everything_accepted() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let exporter = Exporter::start(vec![Box::new(Recorder(Arc::clone(&seen)))], Duration::from_secs(60)).unwrap();
        for i in 0..1000 {
            exporter.submit(span(&i.to_string()));
        }
        let accepted = exporter.counters().accepted.load(Ordering::Relaxed);
        let dropped = exporter.counters().dropped_queue_full.load(Ordering::Relaxed);
        assert_eq!(accepted + dropped, 1000);
        exporter.shutdown();
        assert_eq!(seen.lock().unwrap().len() as u64, accepted);
    }
}
