//! bpf-linker, built into the project's tools directory (`target/tools/bin/bpf-linker`).
//!
//! bpf-linker must link with an LLVM of the same major version as the rustc that emits the
//! bitcode (the nightly). Debian has no matching LLVM, but the nightly toolchain ships its own
//! `lib/libLLVM.so.<version>`, so we build bpf-linker against that: a prefix directory
//! `target/tools/llvm/lib` holds two symlinks to the library, `libLLVM.so` (what bpf-linker's
//! build script links with) and the soname file name (what the binary looks up at run time
//! through the rpath that points into the prefix). Nothing outside the project changes.
//!
//! The installed binary is trusted only if `bpf-linker --version` runs and reports the pinned
//! version: that single check also proves the library still resolves (a moved checkout or an
//! updated nightly leaves dangling links, and then we rebuild).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use super::{toolchain, Report};
use crate::cmd;
use crate::workspace::Workspace;

/// The bpf-linker release that works with aya 0.14 and LLVM 22 (see shared/docs/platform.md).
const VERSION: &str = "0.13.0";

pub fn ensure(ws: &Workspace, report: &mut Report) -> Result<()> {
    let tools = ws.tools_dir();
    let binary = tools.join("bin/bpf-linker");
    let what = format!("bpf-linker {VERSION} in {}", tools.display());
    let llvm_major = toolchain::nightly_llvm_major()?;
    let library = nightly_llvm_library(&toolchain::nightly_sysroot()?, llvm_major)?;
    let prefix = tools.join("llvm");
    let linked_to_pin = std::fs::read_link(prefix.join("lib/libLLVM.so")).is_ok_and(|target| target == library);
    if linked_to_pin && installed_version(&binary).as_deref() == Some(VERSION) {
        report.already(&what);
        return Ok(());
    }
    // The pinned toolchain moved but kept its LLVM: pointing the prefix at it is enough.
    link_llvm_prefix(&prefix, &library)?;
    if installed_version(&binary).as_deref() == Some(VERSION) {
        report.installing(&format!("{what} (now linked to the pinned toolchain's LLVM)"));
        return Ok(());
    }
    report.installing(&what);
    install(&tools, &prefix, llvm_major)
}

/// The version the binary reports, or `None` if it is missing or cannot run.
fn installed_version(binary: &Path) -> Option<String> {
    let out = cmd::probe(Command::new(binary).arg("--version"))?;
    parse_version(&out)
}

/// `bpf-linker 0.13.0` → `0.13.0`.
fn parse_version(output: &str) -> Option<String> {
    let mut words = output.split_whitespace();
    if words.next()? != "bpf-linker" {
        return None;
    }
    words.next().map(str::to_owned)
}

fn install(tools: &Path, prefix: &Path, llvm_major: u32) -> Result<()> {
    cmd::run(
        Command::new("cargo")
            .env("LLVM_PREFIX", prefix)
            .args(["install", "bpf-linker", "--version", VERSION, "--locked", "--force"])
            .args(["--no-default-features", "--features", &format!("llvm-{llvm_major}")])
            .arg("--root")
            .arg(tools),
    )
}

/// The nightly's `lib/libLLVM.so.<major>.<...>`: its file name is the library's soname.
fn nightly_llvm_library(sysroot: &Path, llvm_major: u32) -> Result<PathBuf> {
    let lib_dir = sysroot.join("lib");
    let wanted = format!("libLLVM.so.{llvm_major}.");
    let entries = std::fs::read_dir(&lib_dir).with_context(|| format!("cannot list {}", lib_dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", lib_dir.display()))?;
        if entry.file_name().to_string_lossy().starts_with(&wanted) {
            return Ok(entry.path());
        }
    }
    bail!(
        "the nightly toolchain has no {wanted}* in {}: bpf-linker cannot be built against its LLVM",
        lib_dir.display()
    )
}

/// Makes `<prefix>/lib/{libLLVM.so, <soname>}` point at `library`, replacing stale links.
fn link_llvm_prefix(prefix: &Path, library: &Path) -> Result<()> {
    let lib_dir = prefix.join("lib");
    std::fs::create_dir_all(&lib_dir).with_context(|| format!("cannot create {}", lib_dir.display()))?;
    let soname = library.file_name().context("LLVM library path has no file name")?;
    for name in [Path::new("libLLVM.so"), Path::new(soname)] {
        let link = lib_dir.join(name);
        // symlink_metadata, not exists(): a dangling link "does not exist" but still blocks.
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link).with_context(|| format!("cannot remove {}", link.display()))?;
        }
        std::os::unix::fs::symlink(library, &link)
            .with_context(|| format!("cannot link {} -> {}", link.display(), library.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_version_line() {
        assert_eq!(parse_version("bpf-linker 0.13.0\n").as_deref(), Some("0.13.0"));
        assert_eq!(parse_version("something 0.13.0\n"), None);
        assert_eq!(parse_version(""), None);
    }
}
