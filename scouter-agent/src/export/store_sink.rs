//! The embedded trace store as a sink.

use super::{ExportError, Sink};
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
    fn name(&self) -> &'static str {
        "store"
    }

    fn export(&mut self, batch: &[Span]) -> Result<(), ExportError> {
        Ok(self.store.insert(batch)?)
    }

    fn housekeeping(&mut self) -> Result<(), ExportError> {
        let deleted = self.store.prune()?;
        if deleted > 0 {
            tracing::info!(deleted, "store retention deleted old spans");
        }
        Ok(())
    }
}
