//! The store's one error type. Every variant names the store's path, because the agent and the
//! viewer may well be looking at different files (`--store-path`, `SCOUTER_AGENT_STORE_PATH`).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("trace store {}: {source}", .path.display())]
    Sqlite { path: PathBuf, source: rusqlite::Error },

    #[error("cannot create the directory {} for the trace store: {source}", .directory.display())]
    CreateDirectory { directory: PathBuf, source: std::io::Error },

    #[error("no trace store at {path}: has the agent run with --store-path {path}?", path = .path.display())]
    Missing { path: PathBuf },

    #[error("cannot read the trace store {}: {source}", .path.display())]
    Unreadable { path: PathBuf, source: std::io::Error },

    #[error("{} is not a Scouter trace store (it has no Scouter schema)", .path.display())]
    NotAStore { path: PathBuf },

    #[error(
        "trace store {} has schema version {found}, newer than this scouter-agent supports \
         ({supported}): upgrade scouter-agent",
        .path.display()
    )]
    NewerSchema { path: PathBuf, found: i64, supported: i64 },

    #[error(
        "trace store {} has schema version {found}, older than this scouter-agent reads \
         ({expected}): run the agent once on it to upgrade it",
        .path.display()
    )]
    OlderSchema { path: PathBuf, found: i64, expected: i64 },

    #[error("trace store {} is open read-only: it cannot be written or pruned", .path.display())]
    ReadOnly { path: PathBuf },

    #[error("trace store {}: cannot encode span {span_id} as JSON: {source}", .path.display())]
    EncodeSpan { path: PathBuf, span_id: String, source: serde_json::Error },

    #[error("trace store {}: a stored span is not valid: {reason}", .path.display())]
    Corrupt { path: PathBuf, reason: String },
}

/// Attaches the store's path to SQLite errors, so `?` reads well at every call site.
pub(super) trait AtPath<T> {
    fn at(self, path: &Path) -> Result<T, StoreError>;
}

impl<T> AtPath<T> for rusqlite::Result<T> {
    fn at(self, path: &Path) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Sqlite { path: path.to_owned(), source })
    }
}
