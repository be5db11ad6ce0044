//! Where things are: the workspace root, its target directory and the project-local tools
//! directory, plus the one fact about the caller every task cares about (are we root?).
//!
//! The root comes from xtask's own manifest directory, fixed at compile time, so tasks work
//! from any current directory.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

pub struct Workspace {
    root: PathBuf,
}

impl Workspace {
    pub fn locate() -> Result<Self> {
        let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root =
            manifest_dir.parent().with_context(|| format!("{} has no parent directory", manifest_dir.display()))?;
        Ok(Self { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Cargo's target directory, honouring CARGO_TARGET_DIR like cargo itself does.
    pub fn target_dir(&self) -> PathBuf {
        match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => self.root.join(dir),
            None => self.root.join("target"),
        }
    }

    /// Project-local tools (bpf-linker and its LLVM prefix, setup stamps). The agent's build
    /// script looks in the same place, with the same override, so the two must agree.
    pub fn tools_dir(&self) -> PathBuf {
        match std::env::var_os("SCOUTER_TOOLS_DIR") {
            Some(dir) => self.root.join(dir),
            None => self.root.join("target/tools"),
        }
    }

    pub fn agent_binary(&self) -> PathBuf {
        self.target_dir().join("release/scouter-agent")
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Fails with `why` and a hint when not running as root.
pub fn require_root(task: &str, why: &str) -> Result<()> {
    if is_root() {
        return Ok(());
    }
    bail!(
        "`cargo xtask {task}` must run as root: {why}.\n\
         Run it again with sudo, keeping your environment so cargo and rustup are found:\n    \
         sudo -E env \"PATH=$PATH\" cargo xtask {task}"
    )
}
