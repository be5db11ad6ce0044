//! Preconditions and locations: where the agent binary is, and whether this host can run it.
//!
//! The end-to-end tests need root (to load eBPF programs) and a built agent. They never skip:
//! a missing precondition is a failure with a message saying how to fix it. The message is
//! stricter in wording under `SCOUTER_E2E_REQUIRED=1` or `CI`, but the outcome is the same.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// Environment variable naming the agent binary to test.
pub const AGENT_BIN_VAR: &str = "SCOUTER_AGENT_BIN";

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the e2e crate lives inside the workspace").to_path_buf()
}

/// The directory holding the Python programs the tests run.
pub fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python")
}

/// The agent binary: `$SCOUTER_AGENT_BIN`, else `<workspace>/target/release/scouter-agent`.
pub fn agent_binary_path() -> PathBuf {
    match std::env::var_os(AGENT_BIN_VAR) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => workspace_root().join("target/release/scouter-agent"),
    }
}

/// Checks that the agent can run here (root, binary present) and returns the binary's path.
pub fn require_ebpf_host() -> Result<PathBuf> {
    let binary = agent_binary_path();
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("the tests must run as root (the agent loads eBPF programs)".to_owned());
    }
    if !is_executable(&binary) {
        missing.push(format!(
            "no agent binary at {} (set {AGENT_BIN_VAR}, or run `cargo build --release -p scouter-agent`)",
            binary.display()
        ));
    }
    if missing.is_empty() {
        return Ok(binary);
    }
    bail!("{}:\n  - {}", precondition_headline(), missing.join("\n  - "))
}

fn precondition_headline() -> &'static str {
    if is_required() {
        "end-to-end tests are REQUIRED here (SCOUTER_E2E_REQUIRED=1 or CI is set) but cannot run"
    } else {
        "end-to-end tests need eBPF and never skip silently; they cannot run"
    }
}

/// Whether the environment declares the end-to-end tests mandatory.
fn is_required() -> bool {
    std::env::var("SCOUTER_E2E_REQUIRED").is_ok_and(|v| v == "1") || std::env::var_os("CI").is_some()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_binary_is_in_the_workspace_target_dir() {
        if std::env::var_os(AGENT_BIN_VAR).is_none() {
            assert!(agent_binary_path().ends_with("target/release/scouter-agent"));
        }
    }

    #[test]
    fn python_programs_are_shipped_with_the_crate() {
        assert!(python_dir().join("keepalive_server.py").is_file());
    }
}
