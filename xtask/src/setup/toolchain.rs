//! The pinned nightly toolchain that compiles the eBPF programs, and its rust-src component.
//!
//! The pin is `scouter-ebpf/rust-toolchain.toml` (`channel = "nightly-YYYY-MM-DD"`); the
//! agent's build script reads the same file and hands the channel to aya-build, which builds
//! with `cargo +<channel> ... -Z build-std=core`. Userspace uses the default stable toolchain.
//!
//! Installing a dated nightly downloads it, unless the machine's floating `nightly` is that
//! very release: rustup records the date of the manifest it installed a channel from
//! (`lib/rustlib/multirust-channel-manifest.toml`), and when it is the pinned date the floating
//! toolchain's directory is copied as hard links under the pinned name, which is what rustup
//! would have installed, without the download. A later update of `nightly` replaces its files
//! and leaves the copy's as they were.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use super::Report;
use crate::cmd;

/// The pin file, relative to the workspace root.
pub const PIN_FILE: &str = "scouter-ebpf/rust-toolchain.toml";

pub fn ensure(report: &mut Report) -> Result<()> {
    let channel = pinned_channel()?;
    ensure_pinned(&channel, report)?;
    ensure_rust_src(&channel, report)
}

/// The pinned channel, e.g. `nightly-2026-05-20`.
pub fn pinned_channel() -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(PIN_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_channel(&text).with_context(|| format!("{} has no `channel = \"nightly-YYYY-MM-DD\"` line", path.display()))
}

fn ensure_pinned(channel: &str, report: &mut Report) -> Result<()> {
    let host = host_triple()?;
    let toolchains = rustup_home()?.join("toolchains");
    let pinned = toolchains.join(format!("{channel}-{host}"));
    if pinned.is_dir() {
        report.already(&format!("{channel} toolchain"));
        return Ok(());
    }
    let floating = toolchains.join(format!("nightly-{host}"));
    if manifest_date(&floating).is_some_and(|date| Some(date.as_str()) == channel.strip_prefix("nightly-")) {
        report
            .installing(&format!("{channel} toolchain (the installed nightly is that release: copied as hard links)"));
        return cmd::run(Command::new("cp").arg("-al").arg(&floating).arg(&pinned));
    }
    report.installing(&format!("{channel} toolchain"));
    cmd::run(Command::new("rustup").args(["toolchain", "install", channel, "--profile", "minimal"]))
}

fn ensure_rust_src(channel: &str, report: &mut Report) -> Result<()> {
    let installed =
        cmd::output(Command::new("rustup").args(["component", "list", "--toolchain", channel, "--installed"]))?;
    // rust-src is target-independent, so rustup lists it without a target triple.
    if installed.lines().any(|line| line.trim() == "rust-src") {
        report.already(&format!("rust-src for {channel}"));
        return Ok(());
    }
    report.installing(&format!("rust-src for {channel}"));
    cmd::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", channel]))
}

/// The `[toolchain] channel` of a rust-toolchain.toml, when it is a dated nightly.
fn parse_channel(text: &str) -> Option<String> {
    let table: toml::Table = text.parse().ok()?;
    let channel = table.get("toolchain")?.get("channel")?.as_str()?;
    channel.starts_with("nightly-").then(|| channel.to_owned())
}

/// The date of the manifest rustup installed `toolchain` from.
fn manifest_date(toolchain: &Path) -> Option<String> {
    let manifest = std::fs::read_to_string(toolchain.join("lib/rustlib/multirust-channel-manifest.toml")).ok()?;
    manifest
        .lines()
        .find_map(|line| line.trim().strip_prefix("date")?.trim_start().strip_prefix('=')?.trim().strip_prefix('"'))
        .and_then(|rest| rest.split('"').next())
        .map(str::to_owned)
}

fn rustup_home() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("RUSTUP_HOME") {
        return Ok(home.into());
    }
    let home = std::env::var_os("HOME").context("neither RUSTUP_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".rustup"))
}

fn host_triple() -> Result<String> {
    let verbose = cmd::output(Command::new("rustc").arg("-vV"))?;
    match verbose.lines().find_map(|line| line.strip_prefix("host:")) {
        Some(host) => Ok(host.trim().to_owned()),
        None => bail!("`rustc -vV` printed no host line:\n{verbose}"),
    }
}

/// The major version of the LLVM that the pinned rustc was built with, from `rustc -vV`.
pub fn nightly_llvm_major() -> Result<u32> {
    let channel = pinned_channel()?;
    let verbose = cmd::output(Command::new("rustc").arg(format!("+{channel}")).arg("-vV"))?;
    parse_llvm_major(&verbose)
        .ok_or_else(|| anyhow::anyhow!("`rustc +{channel} -vV` printed no `LLVM version: N.x` line:\n{verbose}"))
}

/// The pinned toolchain's sysroot (holds `lib/libLLVM.so.*`).
pub fn nightly_sysroot() -> Result<PathBuf> {
    let channel = pinned_channel()?;
    let sysroot = cmd::output(Command::new("rustc").arg(format!("+{channel}")).args(["--print", "sysroot"]))?;
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
    fn reads_the_pinned_channel() {
        let toml = "# channel = \"nightly\" in a comment\n[toolchain]\nchannel = \"nightly-2026-05-20\"\n";
        assert_eq!(parse_channel(toml).as_deref(), Some("nightly-2026-05-20"));
        assert_eq!(parse_channel("[toolchain]\nchannel = \"stable\"\n"), None);
        assert_eq!(parse_channel(""), None);
    }

    #[test]
    fn the_project_pins_a_dated_nightly() {
        let channel = pinned_channel().unwrap();
        let date = channel.strip_prefix("nightly-").unwrap();
        assert_eq!(date.len(), 10, "{channel}");
    }

    #[test]
    fn parses_llvm_major() {
        let verbose =
            "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(parse_llvm_major(verbose), Some(22));
        assert_eq!(parse_llvm_major("rustc 1.97.0\n"), None);
    }
}
