//! Terminal views of the trace store (stub: being implemented).

use std::path::Path;

pub fn list(_store: &Path, _limit: usize, _json: bool) -> anyhow::Result<()> {
    todo!()
}

pub fn show(_store: &Path, _trace_id: &str, _json: bool) -> anyhow::Result<()> {
    todo!()
}
