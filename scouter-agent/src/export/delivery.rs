//! One sink's delivery: its own bounded queue and its own thread, so a slow, hanging or dead
//! sink only ever fills its own queue (and drops what overflows it, counted) while every other
//! sink and the kernel-event path go on.
//!
//! The thread gathers a batch (up to `max_export_batch_size` spans, or what came within
//! `scheduled_delay` of the batch's first span), asks the sink to cut it into requests within
//! its transport's size limit, and sends each request until it is accepted, refused for good,
//! or the retry budget is spent: exponential backoff with jitter (or the server's Retry-After),
//! one request at a time, so a request accepted is never sent again. At shutdown the queue is
//! closed and drained without waiting for the delay, within the flush deadline.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::counters::{DropReason, SinkCounters};
use super::sampling::Sampler;
use crate::config::BatchConfig;
use crate::spans::Span;

/// The first retry waits about this long; each next one twice as long, up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The longest a local sink (store, stdout) holds a batch.
pub const LOCAL_DELAY: Duration = Duration::from_millis(500);
/// How often a sink's housekeeping runs (the store's retention).
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(30);

/// Why one request failed, as the delivery loop must treat it.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth sending again later: the backend is down, overloaded (429, RESOURCE_EXHAUSTED),
    /// failing (5xx), or slow. `after` is the server's own Retry-After, if it gave one.
    #[error("{0}")]
    Retry(String, Option<Duration>),
    /// Will never be accepted as it is (a malformed-request answer).
    #[error("{0}")]
    Reject(String),
}

impl SendError {
    pub fn retry(detail: impl Into<String>) -> Self {
        Self::Retry(detail.into(), None)
    }

    pub fn reject(detail: impl Into<String>) -> Self {
        Self::Reject(detail.into())
    }
}

/// Runs a network sink's request on the export runtime, for at most `timeout` and never past
/// `deadline`; running out of time is a retryable failure like any other timeout.
pub fn block_within<F>(
    io: &tokio::runtime::Handle,
    deadline: Instant,
    timeout: Duration,
    request: F,
) -> Result<(), SendError>
where
    F: std::future::Future<Output = Result<(), SendError>>,
{
    let limit = deadline.saturating_duration_since(Instant::now()).min(timeout);
    io.block_on(async {
        tokio::time::timeout(limit, request)
            .await
            .unwrap_or_else(|_| Err(SendError::retry(format!("no answer within {} ms", limit.as_millis()))))
    })
}

/// Requests that carry a batch, each within the transport's limit, in batch order.
pub struct Requests<R> {
    /// Each request with the number of spans it carries.
    pub ready: Vec<(R, usize)>,
    /// Spans too large for any request on their own.
    pub too_large: usize,
}

/// A destination for spans.
pub trait Sink: Send + 'static {
    /// One encoded request.
    type Request: Send;

    /// The name in logs and metrics (`scouter-http`, `otlp-grpc`, `store`, ...).
    fn name(&self) -> &'static str;

    /// The requests that carry `spans`.
    fn requests(&self, spans: &[Arc<Span>]) -> Requests<Self::Request>;

    /// Sends one request, giving up at `deadline`.
    fn send(&mut self, request: &Self::Request, deadline: Instant) -> Result<(), SendError>;

    /// Periodic upkeep (the store's retention).
    fn housekeeping(&mut self) {}

    /// A local sink (a request costs nothing) waits at most this long before writing, so
    /// `traces list` shows a request within a second rather than after `scheduled_delay`.
    fn max_delay(&self) -> Option<Duration> {
        None
    }
}

/// The flush deadline, set once shutdown starts.
#[derive(Default)]
pub struct Shutdown(Mutex<Option<Instant>>);

impl Shutdown {
    pub fn begin(&self, deadline: Instant) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(deadline);
    }

    fn deadline(&self) -> Option<Instant> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The pipeline's end of one sink: its queue, its counters and its thread.
pub struct SinkHandle {
    pub name: &'static str,
    queue: Option<SyncSender<Arc<Span>>>,
    sampler: Sampler,
    pub counters: Arc<SinkCounters>,
    thread: Option<JoinHandle<()>>,
}

/// How delivery behaves, the same for every sink.
#[derive(Clone, Copy, Debug)]
pub struct DeliveryPolicy {
    pub batch: BatchConfig,
    pub retry_max_elapsed: Duration,
}

impl SinkHandle {
    /// Starts `sink`'s delivery thread; `sampler` is the sink's own ratio.
    pub fn start<S: Sink>(
        sink: S,
        sampler: Sampler,
        policy: DeliveryPolicy,
        shutdown: Arc<Shutdown>,
    ) -> std::io::Result<Self> {
        let name = sink.name();
        let (queue, receiver) = mpsc::sync_channel(policy.batch.max_queue_size);
        let counters = Arc::new(SinkCounters::default());
        let delivery = Delivery { sink, receiver, counters: Arc::clone(&counters), policy, shutdown };
        let thread = std::thread::Builder::new().name(format!("export-{name}")).spawn(move || delivery.run())?;
        Ok(Self { name, queue: Some(queue), sampler, counters, thread: Some(thread) })
    }

    /// Queues `span` unless this sink's ratio leaves it out; never blocks.
    pub fn offer(&self, span: &Arc<Span>) {
        if !self.sampler.keeps_trace(&span.trace_id) {
            SinkCounters::add(&self.counters.sampled_out, 1);
            return;
        }
        let Some(queue) = &self.queue else { return };
        SinkCounters::add(&self.counters.queued, 1);
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = queue.try_send(Arc::clone(span)) {
            SinkCounters::sub(&self.counters.queued, 1);
            self.counters.drop_spans(DropReason::QueueFull, 1);
        }
    }

    /// Closes the queue: the thread delivers what is left, then ends.
    pub fn close(&mut self) {
        self.queue = None;
    }

    /// Waits for the thread until `deadline`; whether it finished. A thread still busy then
    /// (a request hanging past the flush timeout) is left behind, and the spans it still holds
    /// are counted as dropped at shutdown.
    pub fn join_until(&mut self, deadline: Instant) -> bool {
        while self.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            if Instant::now() >= deadline {
                let held = self.counters.queued.swap(0, Ordering::Relaxed);
                self.counters.drop_spans(DropReason::Shutdown, held as usize);
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(sink = self.name, "the delivery thread panicked");
            }
        }
        true
    }
}

struct Delivery<S: Sink> {
    sink: S,
    receiver: Receiver<Arc<Span>>,
    counters: Arc<SinkCounters>,
    policy: DeliveryPolicy,
    shutdown: Arc<Shutdown>,
}

/// What became of one request.
enum Outcome {
    Sent,
    Dropped(DropReason),
}

impl<S: Sink> Delivery<S> {
    fn run(mut self) {
        let mut last_housekeeping = Instant::now();
        let mut batch = Vec::with_capacity(self.policy.batch.max_export_batch_size);
        loop {
            let closed = self.fill(&mut batch);
            if !batch.is_empty() {
                self.deliver(&batch);
                SinkCounters::sub(&self.counters.queued, batch.len());
                batch.clear();
            }
            if last_housekeeping.elapsed() >= HOUSEKEEPING_INTERVAL {
                last_housekeeping = Instant::now();
                self.sink.housekeeping();
            }
            if closed {
                return;
            }
        }
    }

    /// Gathers a batch: until it is full, `scheduled_delay` after its first span, or the
    /// queue closes (then without waiting). True once the queue is closed and empty.
    fn fill(&self, batch: &mut Vec<Arc<Span>>) -> bool {
        let limit = self.policy.batch.max_export_batch_size;
        let mut deadline: Option<Instant> = None;
        while batch.len() < limit {
            let received = match deadline {
                // An empty batch waits for its first span, waking now and then for housekeeping.
                None => self.receiver.recv_timeout(HOUSEKEEPING_INTERVAL),
                Some(at) => self.receiver.recv_timeout(at.saturating_duration_since(Instant::now())),
            };
            match received {
                Ok(span) => {
                    batch.push(span);
                    deadline.get_or_insert_with(|| Instant::now() + self.delay());
                }
                Err(RecvTimeoutError::Timeout) => return false,
                Err(RecvTimeoutError::Disconnected) => return true,
            }
        }
        false
    }

    fn delay(&self) -> Duration {
        let configured = self.policy.batch.scheduled_delay;
        self.sink.max_delay().map_or(configured, |max| configured.min(max))
    }

    fn deliver(&mut self, batch: &[Arc<Span>]) {
        let requests = self.sink.requests(batch);
        if requests.too_large > 0 {
            tracing::warn!(
                sink = self.sink.name(),
                spans = requests.too_large,
                "spans too large for one request dropped"
            );
            self.counters.drop_spans(DropReason::TooLarge, requests.too_large);
        }
        for (request, spans) in &requests.ready {
            match self.send_with_retries(request) {
                Outcome::Sent => SinkCounters::add(&self.counters.exported, *spans),
                Outcome::Dropped(reason) => self.counters.drop_spans(reason, *spans),
            }
        }
    }

    fn send_with_retries(&mut self, request: &S::Request) -> Outcome {
        let started = Instant::now();
        let mut backoff = INITIAL_BACKOFF;
        let mut failures = 0u32;
        loop {
            let flush_deadline = self.shutdown.deadline();
            if flush_deadline.is_some_and(|at| Instant::now() >= at) {
                return Outcome::Dropped(DropReason::Shutdown);
            }
            let give_up = started + self.policy.retry_max_elapsed;
            let attempt_deadline = flush_deadline.map_or(give_up, |at| at.min(give_up)).max(Instant::now());
            SinkCounters::add(&self.counters.requests, 1);
            let (detail, after) = match self.sink.send(request, attempt_deadline) {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(sink = self.sink.name(), failures, "delivered again after failures");
                    }
                    return Outcome::Sent;
                }
                Err(SendError::Reject(detail)) => {
                    tracing::warn!(sink = self.sink.name(), %detail, "request refused; its spans are dropped");
                    return Outcome::Dropped(DropReason::Rejected);
                }
                Err(SendError::Retry(detail, after)) => (detail, after),
            };
            failures += 1;
            SinkCounters::add(&self.counters.retries, 1);
            let wait = after.unwrap_or_else(|| jittered(backoff));
            backoff = (backoff * 2).min(MAX_BACKOFF);
            // Once a streak is long, every failure is no longer news.
            if failures == 1 || failures.is_power_of_two() {
                tracing::warn!(sink = self.sink.name(), %detail, failures, retry_in_ms = wait.as_millis() as u64, "delivery failed; will retry");
            }
            if Instant::now() + wait > give_up {
                tracing::warn!(sink = self.sink.name(), failures, "retries exhausted; the request's spans are dropped");
                return Outcome::Dropped(DropReason::RetriesExhausted);
            }
            self.pause(wait);
        }
    }

    /// Sleeps `wait`, cut short by the flush deadline.
    fn pause(&self, wait: Duration) {
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if self.shutdown.deadline().is_some_and(|at| Instant::now() >= at) {
                return;
            }
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
        }
    }
}

/// Between half and all of `backoff`, so sinks that failed together do not retry in step.
fn jittered(backoff: Duration) -> Duration {
    use rand::Rng as _;
    backoff.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::{SpanId, SpanKind};
    use std::collections::VecDeque;
    use std::sync::atomic::AtomicBool;

    /// Records what it is sent; answers from a script (then Ok), or hangs while `hang` is set.
    struct Scripted {
        sent: Arc<Mutex<Vec<Vec<String>>>>,
        script: VecDeque<Result<(), SendError>>,
        hang: Arc<AtomicBool>,
        max_per_request: usize,
    }

    impl Sink for Scripted {
        type Request = Vec<String>;
        fn name(&self) -> &'static str {
            "scripted"
        }
        fn requests(&self, spans: &[Arc<Span>]) -> Requests<Vec<String>> {
            let names: Vec<String> = spans.iter().filter(|s| s.name != "huge").map(|s| s.name.clone()).collect();
            let ready = names.chunks(self.max_per_request).map(|c| (c.to_vec(), c.len())).collect();
            Requests { ready, too_large: spans.len() - names.len() }
        }
        fn send(&mut self, request: &Vec<String>, deadline: Instant) -> Result<(), SendError> {
            while self.hang.load(Ordering::Relaxed) {
                if Instant::now() >= deadline {
                    return Err(SendError::retry("timed out"));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let answer = self.script.pop_front().unwrap_or(Ok(()));
            if answer.is_ok() {
                self.sent.lock().unwrap().push(request.clone());
            }
            answer
        }
    }

    fn policy(queue: usize, batch: usize, retry_secs: u64) -> DeliveryPolicy {
        DeliveryPolicy {
            batch: BatchConfig {
                max_queue_size: queue,
                scheduled_delay: Duration::from_millis(20),
                max_export_batch_size: batch,
            },
            retry_max_elapsed: Duration::from_secs(retry_secs),
        }
    }

    fn span(name: &str) -> Arc<Span> {
        Arc::new(Span { name: name.into(), ..Span::for_test(SpanKind::Server, SpanId::random()) })
    }

    type Sent = Arc<Mutex<Vec<Vec<String>>>>;

    fn scripted(script: Vec<Result<(), SendError>>) -> (Scripted, Sent, Arc<AtomicBool>) {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let hang = Arc::new(AtomicBool::new(false));
        let sink =
            Scripted { sent: Arc::clone(&sent), script: script.into(), hang: Arc::clone(&hang), max_per_request: 3 };
        (sink, sent, hang)
    }

    fn finish(mut handle: SinkHandle, shutdown: &Shutdown, flush: Duration) -> bool {
        let deadline = Instant::now() + flush;
        shutdown.begin(deadline);
        handle.close();
        handle.join_until(deadline + Duration::from_secs(1))
    }

    #[test]
    fn batches_are_cut_into_requests_and_each_is_sent_once_after_retries() {
        let script = vec![
            Err(SendError::retry("503")),
            Err(SendError::Retry("429".into(), Some(Duration::from_millis(1)))),
            Ok(()),
        ];
        let (sink, sent, _) = scripted(script);
        let shutdown = Arc::new(Shutdown::default());
        let handle =
            SinkHandle::start(sink, Sampler::ratio_only(1.0), policy(100, 7, 30), Arc::clone(&shutdown)).unwrap();
        for i in 0..7 {
            handle.offer(&span(&i.to_string()));
        }
        handle.offer(&span("huge"));
        let counters = Arc::clone(&handle.counters);
        assert!(finish(handle, &shutdown, Duration::from_secs(10)));
        let sent = sent.lock().unwrap().clone();
        let all: Vec<String> = sent.concat();
        assert_eq!(all, ["0", "1", "2", "3", "4", "5", "6"], "every span once, in order: {sent:?}");
        assert!(sent.iter().all(|request| request.len() <= 3));
        assert_eq!(counters.exported.load(Ordering::Relaxed), 7);
        assert_eq!(counters.dropped(DropReason::TooLarge), 1);
        assert_eq!(counters.retries.load(Ordering::Relaxed), 2);
        assert_eq!(counters.queued.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn refused_requests_and_exhausted_retries_are_counted_not_retried_forever() {
        let script =
            vec![Err(SendError::reject("422 bad body")), Err(SendError::retry("down")), Err(SendError::retry("down"))];
        let (sink, sent, _) = scripted(script);
        let shutdown = Arc::new(Shutdown::default());
        let mut policy = policy(100, 3, 0);
        policy.retry_max_elapsed = Duration::from_millis(300);
        let handle = SinkHandle::start(sink, Sampler::ratio_only(1.0), policy, Arc::clone(&shutdown)).unwrap();
        for i in 0..6 {
            handle.offer(&span(&i.to_string()));
        }
        let counters = Arc::clone(&handle.counters);
        assert!(finish(handle, &shutdown, Duration::from_secs(10)));
        assert_eq!(counters.dropped(DropReason::Rejected), 3);
        assert_eq!(counters.dropped(DropReason::RetriesExhausted), 3, "the 500 ms backoff outlasts a 300 ms budget");
        assert!(sent.lock().unwrap().is_empty());
    }

    #[test]
    fn a_hanging_sink_fills_only_its_own_queue_and_shutdown_is_bounded() {
        let (sink, _, hang) = scripted(vec![]);
        hang.store(true, Ordering::Relaxed);
        let shutdown = Arc::new(Shutdown::default());
        let handle =
            SinkHandle::start(sink, Sampler::ratio_only(1.0), policy(10, 5, 300), Arc::clone(&shutdown)).unwrap();
        let started = Instant::now();
        for i in 0..100 {
            handle.offer(&span(&i.to_string()));
        }
        assert!(started.elapsed() < Duration::from_millis(500), "offering never waits for the sink");
        let counters = Arc::clone(&handle.counters);
        std::thread::sleep(Duration::from_millis(100));
        let stopping = Instant::now();
        assert!(!finish(handle, &shutdown, Duration::from_millis(300)), "the request still hangs");
        assert!(stopping.elapsed() < Duration::from_secs(3), "shutdown waits for the flush timeout only");
        let queue_full = counters.dropped(DropReason::QueueFull);
        let shutdown_drops = counters.dropped(DropReason::Shutdown);
        assert!(queue_full >= 80, "queue of 10 plus one batch of 5: {queue_full}");
        assert_eq!(queue_full + shutdown_drops + counters.exported.load(Ordering::Relaxed), 100);
    }

    #[test]
    fn a_sinks_ratio_leaves_traces_out_before_they_queue() {
        let (sink, sent, _) = scripted(vec![]);
        let shutdown = Arc::new(Shutdown::default());
        let handle =
            SinkHandle::start(sink, Sampler::ratio_only(0.0), policy(10, 5, 1), Arc::clone(&shutdown)).unwrap();
        handle.offer(&span("a"));
        let counters = Arc::clone(&handle.counters);
        assert!(finish(handle, &shutdown, Duration::from_secs(1)));
        assert_eq!(counters.sampled_out.load(Ordering::Relaxed), 1);
        assert!(sent.lock().unwrap().is_empty());
    }
}
