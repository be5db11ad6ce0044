//! `cargo xtask build` and `cargo xtask run`.
//!
//! The agent is one cargo build: its build script compiles the eBPF programs (nightly +
//! bpf-linker from the tools directory) and embeds the object. So building only needs the
//! build part of setup, and `run` needs nothing more than a build and root.

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::cmd;
use crate::setup;
use crate::workspace::{self, Workspace};

/// Builds the release agent and returns its path.
pub fn build(ws: &Workspace, with_setup: bool) -> Result<PathBuf> {
    if with_setup {
        setup::run(ws, setup::Scope::Build)?;
    }
    // The default (stable) toolchain builds userspace; aya-build picks the nightly itself.
    cmd::run(Command::new("cargo").current_dir(ws.root()).args(["build", "--release", "-p", "scouter-agent"]))?;
    let binary = ws.agent_binary();
    if !binary.is_file() {
        bail!("cargo build succeeded but {} does not exist", binary.display());
    }
    println!("built: {}", binary.display());
    Ok(binary)
}

/// Builds, then replaces this process with the agent so it gets signals (Ctrl-C) directly.
pub fn run(ws: &Workspace, with_setup: bool, agent_args: &[String]) -> Result<()> {
    // Checked before building: a minutes-long build that ends in "permission denied" wastes time.
    workspace::require_root("run", "the agent loads eBPF programs and attaches uprobes")?;
    let binary = build(ws, with_setup)?;
    let mut agent = Command::new(&binary);
    agent.args(agent_args);
    println!("+ {}", cmd::describe(&agent));
    let error = agent.exec();
    Err(error).with_context(|| format!("cannot execute {}", binary.display()))
}
