//! The embedded trace store as a sink: the destination when no Scouter backend is configured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::delivery::{Requests, SendError, Sink, LOCAL_DELAY};
use crate::config::StoreConfig;
use crate::spans::Span;
use crate::store::{StoreError, TraceStore};

pub struct StoreSink {
    store: TraceStore,
}

impl StoreSink {
    pub fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        let mut store = TraceStore::open(config)?;
        // Apply retention at once: the bound holds from the first minute of a restart.
        store.prune()?;
        Ok(Self { store })
    }
}

impl Sink for StoreSink {
    type Request = Vec<Arc<Span>>;

    fn name(&self) -> &'static str {
        "store"
    }

    /// One transaction per batch; the store has no size limit.
    fn max_delay(&self) -> Option<Duration> {
        Some(LOCAL_DELAY)
    }

    fn requests(&self, spans: &[Arc<Span>]) -> Requests<Self::Request> {
        Requests { ready: vec![(spans.to_vec(), spans.len())], too_large: 0 }
    }

    /// A busy or full disk may clear up, so failures are retried like a backend's.
    fn send(&mut self, spans: &Self::Request, _deadline: Instant) -> Result<(), SendError> {
        self.store.insert(spans).map_err(|error| SendError::retry(error.to_string()))
    }

    fn housekeeping(&mut self) {
        match self.store.prune() {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "store retention deleted old spans"),
            Err(error) => tracing::warn!(%error, "store retention failed"),
        }
    }
}
