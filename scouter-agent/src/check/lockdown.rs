//! Kernel lockdown (the lockdown LSM), read from securityfs.
//!
//! In integrity mode the verifier refuses bpf_probe_write_user, which is why the agent never
//! writes user memory and injects headers through sk_msg. Confidentiality mode also refuses
//! reading kernel memory from eBPF and tracefs access.

use std::io;
use std::path::Path;

use super::{mounts, Finding};

pub const LOCKDOWN_PATH: &str = "/sys/kernel/security/lockdown";
const SECURITYFS_PATH: &str = "/sys/kernel/security";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockdownMode {
    None,
    Integrity,
    Confidentiality,
}

/// The file lists every mode and brackets the active one: `none [integrity] confidentiality`.
pub fn parse_lockdown(text: &str) -> Option<LockdownMode> {
    let active = text.split_ascii_whitespace().find_map(|word| word.strip_prefix('[')?.strip_suffix(']'))?;
    match active {
        "none" => Some(LockdownMode::None),
        "integrity" => Some(LockdownMode::Integrity),
        "confidentiality" => Some(LockdownMode::Confidentiality),
        _ => None,
    }
}

/// What reading the lockdown state found.
#[derive(Debug)]
pub enum LockdownState {
    Mode(LockdownMode),
    /// securityfs is mounted but has no lockdown file: the lockdown LSM is not built in.
    NotEnabled,
    Unreadable(String),
}

/// Reads the lockdown mode, mounting securityfs first if nobody did (it is not mounted at boot
/// on minimal guests).
pub fn read_lockdown() -> LockdownState {
    match std::fs::read_to_string(LOCKDOWN_PATH) {
        Ok(text) => state_from_text(&text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => read_after_mounting_securityfs(),
        Err(e) => LockdownState::Unreadable(format!("cannot read {LOCKDOWN_PATH}: {e}")),
    }
}

fn read_after_mounting_securityfs() -> LockdownState {
    if !securityfs_mounted() {
        if let Err(e) = mounts::mount_pseudo_fs("securityfs", Path::new(SECURITYFS_PATH)) {
            return LockdownState::Unreadable(format!(
                "securityfs is not mounted and mounting it at {SECURITYFS_PATH} failed: {e}"
            ));
        }
    }
    match std::fs::read_to_string(LOCKDOWN_PATH) {
        Ok(text) => state_from_text(&text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => LockdownState::NotEnabled,
        Err(e) => LockdownState::Unreadable(format!("cannot read {LOCKDOWN_PATH}: {e}")),
    }
}

fn securityfs_mounted() -> bool {
    mounts::read_mountinfo()
        .map(|table| mounts::mount_points_of_type(&table, "securityfs").any(|p| p == Path::new(SECURITYFS_PATH)))
        .unwrap_or(false)
}

fn state_from_text(text: &str) -> LockdownState {
    match parse_lockdown(text) {
        Some(mode) => LockdownState::Mode(mode),
        None => LockdownState::Unreadable(format!("unexpected content in {LOCKDOWN_PATH}: {:?}", text.trim())),
    }
}

pub fn lockdown_finding(state: &LockdownState) -> Finding {
    const FEATURE: &str = "lockdown";
    const NO_WRITE_USER: &str = "bpf_probe_write_user unavailable — header injection uses sk_msg instead";
    match state {
        LockdownState::Mode(LockdownMode::None) => Finding::ok(FEATURE, "none"),
        LockdownState::Mode(LockdownMode::Integrity) => Finding::ok(FEATURE, format!("integrity: {NO_WRITE_USER}")),
        LockdownState::Mode(LockdownMode::Confidentiality) => Finding::warn(
            FEATURE,
            format!("confidentiality: {NO_WRITE_USER}; reading kernel memory from eBPF is refused too"),
        )
        .with_fix("if programs fail to load, boot with lockdown=integrity"),
        LockdownState::NotEnabled => Finding::ok(FEATURE, "lockdown LSM not enabled (none)"),
        LockdownState::Unreadable(reason) => Finding::warn(FEATURE, format!("unknown: {reason}"))
            .with_fix("mount -t securityfs securityfs /sys/kernel/security as root to see it"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::*;

    #[test]
    fn integrity_is_fine() {
        let finding = lockdown_finding(&LockdownState::Mode(LockdownMode::Integrity));
        assert_eq!(finding.status, Status::Ok);
        assert_eq!(
            finding.detail,
            "integrity: bpf_probe_write_user unavailable — header injection uses sk_msg instead"
        );
        let confidentiality = lockdown_finding(&LockdownState::Mode(LockdownMode::Confidentiality));
        assert_eq!(confidentiality.status, Status::Warn);
        assert!(confidentiality.detail.starts_with("confidentiality: bpf_probe_write_user unavailable"));
        assert_eq!(lockdown_finding(&LockdownState::Unreadable("x".into())).status, Status::Warn);
    }

    #[test]
    fn finds_bracketed_mode() {
        assert_eq!(parse_lockdown("none [integrity] confidentiality\n"), Some(LockdownMode::Integrity));
        assert_eq!(parse_lockdown("[none] integrity confidentiality\n"), Some(LockdownMode::None));
        assert_eq!(parse_lockdown("none integrity [confidentiality]"), Some(LockdownMode::Confidentiality));
    }

    #[test]
    fn rejects_unbracketed_or_unknown() {
        assert_eq!(parse_lockdown("none integrity confidentiality"), None);
        assert_eq!(parse_lockdown(""), None);
        assert_eq!(parse_lockdown("none [paranoid]"), None);
    }
}
