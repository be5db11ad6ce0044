//! The running kernel's row: the guests' script, run natively.
//!
//! `guest/matrix.sh` runs under busybox's shell on the host, as root, with the same agent and
//! the same `/usr/bin/python3.11`, in a scratch directory of its own (removed afterwards). The
//! environment is cleared so that no `SCOUTER_AGENT_*` variable of the caller changes what the
//! agent does. The host differs from a guest in being shared: other Python processes run
//! (the agent traces them too, which the smoke check tolerates: it looks for its own span), and
//! port 8000 may be taken, so the smoke server gets a free port.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result};

use super::capture::{self, Captured, Interrupts};
use super::{BUSYBOX, PYTHON};

/// How long the agent may take to log `agent ready` on the host (it takes a second or two).
const READY_SECS: u64 = 60;

/// Runs the checks on the host, the console going to `log`.
pub fn run(
    agent: &Path,
    log: &Path,
    timeout: Duration,
    interrupts: &Interrupts,
    progress: impl Fn(&str),
) -> Result<Captured> {
    let scratch = Scratch::create()?;
    super::write_matrix_files(&scratch.0)?;
    let work = scratch.0.join("work");
    std::fs::create_dir(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let mut shell = Command::new(BUSYBOX);
    shell
        .arg("sh")
        .arg(scratch.0.join("matrix.sh"))
        .current_dir(&work)
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("AGENT", agent)
        .env("PYTHON", PYTHON)
        .env("BUSYBOX", BUSYBOX)
        .env("MATRIX_DIR", &scratch.0)
        .env("WORK", &work)
        .env("PORT", free_port()?.to_string())
        .env("READY_SECS", READY_SECS.to_string());
    capture::run(&mut shell, log, timeout, || interrupts.raised(), progress)
}

/// A port nothing listens on right now.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free TCP port")?;
    Ok(listener.local_addr().context("cannot find a free TCP port")?.port())
}

/// A directory of this run's own in the temporary directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn create() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("scouter-kernels-host-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.0) {
            eprintln!("warning: cannot remove {}: {error}", self.0.display());
        }
    }
}
