//! `scouter-agent check` (stub: being implemented).

pub fn run() -> anyhow::Result<()> {
    todo!()
}
