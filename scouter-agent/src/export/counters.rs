//! What happened to spans, per sink: the numbers behind the metrics endpoint and the shutdown
//! summary. Every span a sink was offered ends in exactly one of: exported, sampled out, or
//! dropped for one [`DropReason`]; while it waits it is counted in the queue depth.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a span did not reach a sink. The labels are the metrics' `reason` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The sink's queue was full (the sink is slower than the spans come, or down).
    QueueFull,
    /// The span alone encodes over the transport's request limit.
    TooLarge,
    /// The backend refused the request for good (a malformed-request answer).
    Rejected,
    /// The request kept failing for longer than the retry budget.
    RetriesExhausted,
    /// Still queued or in flight when the flush timeout ran out at shutdown.
    Shutdown,
}

impl DropReason {
    pub const ALL: [DropReason; 5] =
        [Self::QueueFull, Self::TooLarge, Self::Rejected, Self::RetriesExhausted, Self::Shutdown];

    pub fn label(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::TooLarge => "too_large",
            Self::Rejected => "rejected",
            Self::RetriesExhausted => "retries_exhausted",
            Self::Shutdown => "shutdown",
        }
    }
}

/// One sink's counters, shared by the pipeline (which queues) and the sink's delivery thread.
#[derive(Debug, Default)]
pub struct SinkCounters {
    /// Spans waiting in the queue or in the batch being delivered.
    pub queued: AtomicU64,
    pub exported: AtomicU64,
    /// Spans this sink's own sample ratio left out.
    pub sampled_out: AtomicU64,
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
}

impl SinkCounters {
    pub fn drop_spans(&self, reason: DropReason, spans: usize) {
        self.dropped[reason as usize].fetch_add(spans as u64, Ordering::Relaxed);
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn sub(counter: &AtomicU64, n: usize) {
        counter.fetch_sub(n as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_has_its_own_counter_and_label() {
        let counters = SinkCounters::default();
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            counters.drop_spans(*reason, i + 1);
            assert_eq!(counters.dropped(*reason), i as u64 + 1);
        }
        let labels: Vec<_> = DropReason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels, ["queue_full", "too_large", "rejected", "retries_exhausted", "shutdown"]);
    }
}
