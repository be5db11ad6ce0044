//! pip packages for every Python interpreter the end-to-end tests run.
//!
//! The tests cover each supported CPython minor version (pyenv builds, with a shared
//! libpython) and Debian's own python3.11 (a static, non-PIE executable): see
//! [`interpreters`]. All of them get the packages in `tests/python/requirements.txt`.
//!
//! Asking pip whether everything is installed takes seconds per interpreter, too slow for a
//! step that runs before every build. Instead, after a successful install we write a stamp
//! under `target/tools/stamps` holding a fingerprint of the requirements file and of the
//! interpreter binary; while the fingerprint matches, the interpreter is up to date. Editing
//! the requirements or reinstalling the interpreter changes it, and pip runs again.
//!
//! An empty requirements file installs nothing anywhere, so Debian's interpreter stays as the
//! distribution ships it unless a test really needs a package.
//!
//! Other tasks with packages of their own (`cargo xtask bench`) use [`ensure_venv`]: a virtual
//! environment made from one pyenv interpreter, stamped the same way, so their packages never
//! touch (or change the versions of) what the tests install. The in-process SDK tests are one of
//! them ([`ensure_sdk_venv`]): OpenTelemetry's Python SDK and Scouter's `scouter-ml` (which needs
//! Python 3.10 or later) live in `<tools dir>/venvs/sdk`, where the tests look for them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use super::debian::Apt;
use super::Report;
use crate::cmd;
use crate::workspace::Workspace;

/// The pyenv interpreters the tests use: one per supported minor version.
const PYENV_VERSIONS: &[&str] = &["3.8.18", "3.9.18", "3.10.13", "3.11.7", "3.12.1", "3.13.0"];
/// Debian's interpreter (package python3.11, installed by the Debian step).
const DEBIAN_PYTHON: &str = "/usr/bin/python3.11";
const REQUIREMENTS: &str = "tests/python/requirements.txt";
/// The in-process SDK tests' environment: its pyenv interpreter, requirements and place under
/// the tools directory (`tests/python.rs` looks for `bin/python3` there).
const SDK_PYTHON_VERSION: &str = "3.12.1";
const SDK_REQUIREMENTS: &str = "tests/python/sdk-requirements.txt";
const SDK_VENV: &str = "venvs/sdk";
/// The manifests test's environment (`deploy/kubernetes/validate.py` runs in it).
const K8S_REQUIREMENTS: &str = "deploy/kubernetes/requirements.txt";
const K8S_VENV: &str = "venvs/k8s";

struct Interpreter {
    /// Names the interpreter in messages and its stamp file.
    label: String,
    python: PathBuf,
    /// Debian's "externally managed" interpreter: pip needs --break-system-packages.
    system: bool,
}

pub fn ensure(ws: &Workspace, apt: &mut Apt, report: &mut Report) -> Result<()> {
    let interpreters = interpreters()?;
    let requirements = Requirements::read(&ws.root().join(REQUIREMENTS))?;
    if !requirements.lists_any() {
        for interpreter in &interpreters {
            report.nothing_needed(&format!("pip requirements for {} (none listed)", interpreter.label));
        }
        return Ok(());
    }
    let stamps = ws.tools_dir().join("stamps");
    for interpreter in &interpreters {
        let stamp = stamps.join(format!("pip-{}", interpreter.label));
        ensure_installed(interpreter, &requirements, &stamp, apt, report)?;
    }
    Ok(())
}

struct Requirements {
    path: PathBuf,
    text: String,
}

impl Requirements {
    fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Self { path: path.to_path_buf(), text })
    }

    /// Whether the file names any package (blank lines and comments do not count).
    fn lists_any(&self) -> bool {
        has_requirements(&self.text)
    }
}

/// Installs `requirements` into a virtual environment at `venv` made from pyenv's Python
/// `version` (created first if missing), and returns the environment's interpreter.
///
/// The stamp lives inside the environment, so deleting the environment reinstalls everything.
pub fn ensure_venv(version: &str, venv: &Path, requirements: &Path, report: &mut Report) -> Result<PathBuf> {
    let python = venv.join("bin/python3");
    if !python.is_file() {
        let base = pyenv_interpreter(&pyenv_root(), version)?;
        report.installing(&format!("virtual environment {} (Python {version})", venv.display()));
        cmd::run(Command::new(&base.python).args(["-m", "venv"]).arg(venv))?;
    }
    let label = format!("the virtual environment {}", venv.display());
    let interpreter = Interpreter { label, python: python.clone(), system: false };
    let requirements = Requirements::read(requirements)?;
    let stamp = venv.join("scouter-requirements.stamp");
    ensure_installed(&interpreter, &requirements, &stamp, &mut Apt::default(), report)?;
    Ok(python)
}

/// The virtual environment of the in-process SDK tests (`tests/python/sdk_service.py`):
/// `<tools dir>/venvs/sdk`, from pyenv's Python 3.12.1, with `tests/python/sdk-requirements.txt`.
pub fn ensure_sdk_venv(ws: &Workspace, report: &mut Report) -> Result<PathBuf> {
    ensure_venv(SDK_PYTHON_VERSION, &ws.tools_dir().join(SDK_VENV), &ws.root().join(SDK_REQUIREMENTS), report)
}

/// The virtual environment that validates the Kubernetes manifests: `<tools dir>/venvs/k8s`,
/// with `deploy/kubernetes/requirements.txt` (kubectl for `kustomize`, the OpenAPI schemas).
pub fn ensure_k8s_venv(ws: &Workspace, report: &mut Report) -> Result<PathBuf> {
    ensure_venv(SDK_PYTHON_VERSION, &ws.tools_dir().join(K8S_VENV), &ws.root().join(K8S_REQUIREMENTS), report)
}

/// Installs the requirements into one interpreter unless its stamp says they already are.
fn ensure_installed(
    interpreter: &Interpreter,
    requirements: &Requirements,
    stamp: &Path,
    apt: &mut Apt,
    report: &mut Report,
) -> Result<()> {
    let fingerprint = fingerprint(&requirements.text, &interpreter.python)?;
    let what = format!("pip requirements for {}", interpreter.label);
    if std::fs::read_to_string(stamp).is_ok_and(|found| found == fingerprint) {
        report.already(&what);
        return Ok(());
    }
    report.installing(&what);
    pip_install(interpreter, &requirements.path, apt)?;
    write_stamp(stamp, &fingerprint)
}

/// Every interpreter the tests use; fails naming the first one that is missing.
fn interpreters() -> Result<Vec<Interpreter>> {
    let root = pyenv_root();
    let mut found =
        PYENV_VERSIONS.iter().map(|version| pyenv_interpreter(&root, version)).collect::<Result<Vec<_>>>()?;
    let python = PathBuf::from(DEBIAN_PYTHON);
    if !python.is_file() {
        bail!("{DEBIAN_PYTHON} is missing although the python3.11 package step ran");
    }
    found.push(Interpreter { label: "debian-python3.11".into(), python, system: true });
    Ok(found)
}

/// Every interpreter the tests use, as (label, path), whether installed or not: for tasks that
/// measure each one and report a missing one rather than stop (`cargo xtask bench`).
pub fn test_interpreters() -> Vec<(String, PathBuf)> {
    let root = pyenv_root();
    let pyenv = PYENV_VERSIONS
        .iter()
        .map(|version| (format!("pyenv-{version}"), root.join("versions").join(version).join("bin/python3")));
    pyenv.chain(std::iter::once(("debian-python3.11".to_owned(), PathBuf::from(DEBIAN_PYTHON)))).collect()
}

/// pyenv's interpreter of `version`; fails if it is not installed.
fn pyenv_interpreter(root: &Path, version: &str) -> Result<Interpreter> {
    let python = root.join("versions").join(version).join("bin/python3");
    if !python.is_file() {
        bail!(
            "Python {version} is missing: {} does not exist (install it with `pyenv install {version}`)",
            python.display()
        );
    }
    Ok(Interpreter { label: format!("pyenv-{version}"), python, system: false })
}

/// `pyenv root` if pyenv is on PATH, else PYENV_ROOT, else where this machine kind keeps it.
fn pyenv_root() -> PathBuf {
    if let Some(root) = cmd::probe(Command::new("pyenv").arg("root")) {
        return PathBuf::from(root.trim());
    }
    std::env::var_os("PYENV_ROOT").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root/.pyenv"))
}

fn has_requirements(requirements: &str) -> bool {
    requirements.lines().map(str::trim).any(|line| !line.is_empty() && !line.starts_with('#'))
}

fn pip_install(interpreter: &Interpreter, requirements: &Path, apt: &mut Apt) -> Result<()> {
    if interpreter.system && !has_pip(&interpreter.python) {
        // Debian ships pip for its interpreter as a separate package.
        apt.install(&["python3-pip"])?;
    }
    let mut pip = Command::new(&interpreter.python);
    pip.args(["-m", "pip", "install", "--disable-pip-version-check", "--root-user-action=ignore", "-r"])
        .arg(requirements);
    if interpreter.system {
        // PEP 668: Debian refuses pip installs into its interpreter without this.
        pip.arg("--break-system-packages");
    }
    cmd::run(&mut pip)
}

fn has_pip(python: &Path) -> bool {
    cmd::probe(Command::new(python).args(["-m", "pip", "--version"])).is_some()
}

/// Changes whenever the requirements, the interpreter's path or its binary's mtime change.
fn fingerprint(requirements: &str, python: &Path) -> Result<String> {
    let modified = std::fs::metadata(python)
        .and_then(|meta| meta.modified())
        .with_context(|| format!("cannot stat {}", python.display()))?;
    let since_epoch = modified.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let input = format!("{requirements}\0{}\0{}", python.display(), since_epoch.as_nanos());
    Ok(format!("{:016x}\n", fnv1a64(input.as_bytes())))
}

/// FNV-1a: stable across Rust releases (unlike std's DefaultHasher) and plenty to notice an
/// edit; this is change detection, not security.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

fn write_stamp(stamp: &Path, fingerprint: &str) -> Result<()> {
    if let Some(dir) = stamp.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(stamp, fingerprint).with_context(|| format!("cannot write {}", stamp.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_blank_lines_are_not_requirements() {
        assert!(!has_requirements(""));
        assert!(!has_requirements("# nothing yet\n\n   # still nothing\n"));
        assert!(has_requirements("# client tests\nrequests==2.31.0\n"));
    }

    #[test]
    fn fnv1a64_matches_the_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
