//! (being written)
pub fn run(_c: crate::config::AgentConfig) -> anyhow::Result<()> { todo!() }
