//! `cargo xtask setup`: make this machine able to build and test the agent.
//!
//! Design: every step is "check, then install only what is missing", and the check is cheap
//! (a list command, a `--version`, a stamp file), so setup runs in well under a second when
//! nothing is missing. That lets `build`, `run` and `test` call it every time: a fresh machine
//! or a clean clone gets what it needs, and nobody has to remember a separate step. Nothing is
//! installed outside rustup, apt, pip and the project's own `target/tools`.
//!
//! Steps, in dependency order:
//! 1. [`toolchain`]: the nightly toolchain and its rust-src (the eBPF crate needs
//!    `-Z build-std=core`);
//! 2. [`bpf_linker`]: bpf-linker 0.13.0 built against the nightly's own LLVM library;
//! 3. [`debian`]: Debian packages the tests use (one list, in that module);
//! 4. [`python`]: pip requirements for every interpreter the tests use;
//! 5. [`python::ensure_sdk_venv`]: the virtual environment of the in-process SDK tests
//!    (OpenTelemetry's Python SDK and Scouter's `scouter-ml`, which the test interpreters do not
//!    get: `scouter-ml` needs Python 3.10 or later);
//! 6. [`python::ensure_k8s_venv`]: what validating the Kubernetes manifests offline needs
//!    (`kubectl kustomize` and the API's OpenAPI schemas, both from PyPI).
//!
//! Steps 1-2 are all that building needs ([`Scope::Build`]); 3-6 serve the tests. [`bench`]
//! takes steps 1-2, for its HTTP part step 3 (wrk is among the Debian packages) and a virtual
//! environment of its own, for its neighbours part the Debian packages only the bench uses
//! (redis); it measures function calls on every test interpreter ([`test_interpreters`]).
//! [`kernels`] takes steps 1-3 too (QEMU, busybox-static, cpio and python3.11 are among the
//! Debian packages).

mod bpf_linker;
mod debian;
mod python;
mod toolchain;

use std::path::{Path, PathBuf};

pub use self::python::test_interpreters;

use anyhow::Result;

use crate::workspace::Workspace;

/// How much of the machine to set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// What `cargo build` of the agent needs.
    Build,
    /// Build plus everything the tests use.
    All,
}

pub fn run(ws: &Workspace, scope: Scope) -> Result<()> {
    let mut report = Report::default();
    ensure(ws, scope, &mut report)?;
    report.finish();
    Ok(())
}

/// The bench's HTTP services' Python: `requirements` in a virtual environment at `path` made
/// from pyenv's Python `version`.
pub struct BenchVenv<'a> {
    pub version: &'a str,
    pub path: &'a Path,
    pub requirements: &'a Path,
}

/// What `cargo xtask bench` needs, part by part: the build tools always; for its HTTP part
/// (`venv`), the Debian packages (wrk) and the virtual environment, whose interpreter it
/// returns; for its neighbours part, the Debian packages only the bench uses (redis). The
/// tests' pip packages are left alone.
pub fn bench(ws: &Workspace, venv: Option<BenchVenv>, neighbours: bool) -> Result<Option<PathBuf>> {
    let mut report = Report::default();
    ensure(ws, Scope::Build, &mut report)?;
    let mut apt = debian::Apt::default();
    let python = match venv {
        Some(venv) => {
            debian::ensure(&mut apt, &mut report)?;
            Some(python::ensure_venv(venv.version, venv.path, venv.requirements, &mut report)?)
        }
        None => None,
    };
    if neighbours {
        debian::ensure_bench(&mut apt, &mut report)?;
    }
    report.finish();
    Ok(python)
}

/// What `cargo xtask kernels` needs: the build tools (for the agent it boots) and the Debian
/// packages (QEMU, busybox-static, cpio, python3.11).
pub fn kernels(ws: &Workspace) -> Result<()> {
    let mut report = Report::default();
    ensure(ws, Scope::Build, &mut report)?;
    debian::ensure(&mut debian::Apt::default(), &mut report)?;
    report.finish();
    Ok(())
}

fn ensure(ws: &Workspace, scope: Scope, report: &mut Report) -> Result<()> {
    toolchain::ensure(report)?;
    bpf_linker::ensure(ws, report)?;
    if scope == Scope::All {
        let mut apt = debian::Apt::default();
        debian::ensure(&mut apt, report)?;
        python::ensure(ws, &mut apt, report)?;
        python::ensure_sdk_venv(ws, report)?;
        python::ensure_k8s_venv(ws, report)?;
    }
    Ok(())
}

/// What setup found and did, printed as it goes so a slow install is never a silent pause.
#[derive(Default)]
pub struct Report {
    installed: Vec<String>,
}

impl Report {
    pub fn already(&self, thing: &str) {
        println!("ok: {thing} (already installed)");
    }

    /// Something that needs no installing at all (e.g. an empty requirements list).
    pub fn nothing_needed(&self, thing: &str) {
        println!("ok: {thing}");
    }

    pub fn installing(&mut self, thing: &str) {
        println!("installing: {thing}");
        self.installed.push(thing.to_owned());
    }

    pub fn warn(&self, message: &str) {
        eprintln!("warning: {message}");
    }

    fn finish(&self) {
        if self.installed.is_empty() {
            println!("setup: nothing needed installing");
        } else {
            println!("setup: installed {}", self.installed.join(", "));
        }
    }
}
