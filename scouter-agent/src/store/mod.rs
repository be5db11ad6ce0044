//! The embedded trace store (stub: being implemented).

use crate::config::StoreConfig;
use crate::spans::{Span, TraceId};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("trace store {path}: {source}")]
    Sqlite { path: String, source: rusqlite::Error },
}

/// One row of `traces list`.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceSummary {
    pub trace_id: TraceId,
    pub root_name: String,
    pub service_name: String,
    pub start_time_unix_nano: u64,
    pub duration_nanos: u64,
    pub span_count: u64,
}

pub struct TraceStore {
    _config: StoreConfig,
}

impl TraceStore {
    pub fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        Ok(Self { _config: config.clone() })
    }
    pub fn insert(&mut self, _spans: &[Span]) -> Result<(), StoreError> {
        todo!()
    }
    pub fn prune(&mut self) -> Result<u64, StoreError> {
        todo!()
    }
}
