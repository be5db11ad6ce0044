//! The nightly toolchain and its rust-src component, through rustup.
//!
//! The eBPF crate is built with `cargo +nightly ... -Z build-std=core` (aya-build does this),
//! which needs both. The userspace crates use the default stable toolchain, which rustup
//! already provides wherever cargo runs.

use std::process::Command;

use anyhow::Result;

use super::Report;
use crate::cmd;

pub fn ensure(report: &mut Report) -> Result<()> {
    ensure_nightly(report)?;
    ensure_rust_src(report)
}

fn ensure_nightly(report: &mut Report) -> Result<()> {
    let list = cmd::output(Command::new("rustup").args(["toolchain", "list"]))?;
    if has_plain_nightly(&list) {
        report.already("nightly toolchain");
        return Ok(());
    }
    report.installing("nightly toolchain");
    cmd::run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))
}

fn ensure_rust_src(report: &mut Report) -> Result<()> {
    let installed =
        cmd::output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))?;
    // rust-src is target-independent, so rustup lists it without a target triple.
    if installed.lines().any(|line| line.trim() == "rust-src") {
        report.already("rust-src for the nightly toolchain");
        return Ok(());
    }
    report.installing("rust-src for the nightly toolchain");
    cmd::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// Whether `rustup toolchain list` shows the toolchain that `+nightly` resolves to
/// (`nightly-<host>`), not merely a dated one such as `nightly-2024-05-01-<host>`.
fn has_plain_nightly(list: &str) -> bool {
    list.lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|name| name.strip_prefix("nightly-"))
        .any(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// The major version of the LLVM that the nightly rustc was built with, from `rustc -vV`.
pub fn nightly_llvm_major() -> Result<u32> {
    let verbose = cmd::output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    parse_llvm_major(&verbose)
        .ok_or_else(|| anyhow::anyhow!("`rustc +nightly -vV` printed no `LLVM version: N.x` line:\n{verbose}"))
}

/// The nightly toolchain's sysroot (holds `lib/libLLVM.so.*`).
pub fn nightly_sysroot() -> Result<std::path::PathBuf> {
    let sysroot = cmd::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    Ok(sysroot.trim().into())
}

fn parse_llvm_major(rustc_verbose: &str) -> Option<u32> {
    let version = rustc_verbose.lines().find_map(|line| line.strip_prefix("LLVM version:"))?;
    version.trim().split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_plain_nightly_only() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\nnightly-x86_64-unknown-linux-gnu\n";
        assert!(has_plain_nightly(list));
        assert!(!has_plain_nightly(
            "stable-x86_64-unknown-linux-gnu (default)\nnightly-2024-05-01-x86_64-unknown-linux-gnu\n"
        ));
        assert!(!has_plain_nightly("no installed toolchains\n"));
    }

    #[test]
    fn parses_llvm_major() {
        let verbose =
            "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(parse_llvm_major(verbose), Some(22));
        assert_eq!(parse_llvm_major("rustc 1.97.0\n"), None);
    }
}
