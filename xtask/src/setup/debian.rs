//! Debian packages the tests use, checked with dpkg-query and installed with apt-get.
//!
//! [`PACKAGES`] is the one list. `apt-get update` runs at most once per setup, and only when
//! something is missing, because it is the slow, network-bound part. Optional packages are
//! conveniences (nothing fails without them), so a failure to install one is a warning.

use std::process::Command;

use anyhow::{bail, Result};

use super::Report;
use crate::cmd;
use crate::workspace;

struct Package {
    name: &'static str,
    /// Whether setup fails when the package cannot be installed.
    required: bool,
}

const PACKAGES: &[Package] = &[
    // Debian's own interpreter: a test target of a different shape (static, non-PIE, USDT).
    Package { name: "python3.11", required: true },
    // Load generator for tests that drive many requests.
    Package { name: "wrk", required: true },
    Package { name: "curl", required: true },
    // Test certificates for HTTPS servers.
    Package { name: "openssl", required: true },
    // interpreter_shapes links static-libpython interpreters and strips them (`gcc`, `strip`).
    Package { name: "gcc", required: true },
    Package { name: "binutils", required: true },
    // Shows what is attached when a test needs debugging.
    Package { name: "bpftool", required: false },
];

/// `apt-get`, remembering whether the package lists were refreshed in this setup run.
#[derive(Default)]
pub struct Apt {
    updated: bool,
}

impl Apt {
    /// Installs `names` together; fails if any cannot be installed.
    pub fn install(&mut self, names: &[&str]) -> Result<()> {
        if !workspace::is_root() {
            bail!(
                "Debian packages are missing ({}) and installing them needs root: \
                 run `sudo apt-get install {}`, or run this task as root",
                names.join(", "),
                names.join(" ")
            );
        }
        if !self.updated {
            cmd::run(apt_get().arg("update"))?;
            self.updated = true;
        }
        cmd::run(apt_get().args(["install", "-y", "--no-install-recommends"]).args(names))
    }
}

/// CI runs without a terminal or stdin: never let a package ask a question.
fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

pub fn is_installed(name: &str) -> bool {
    // Unknown packages make dpkg-query fail; removed-but-configured ones report another status.
    cmd::probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", name]))
        .is_some_and(|status| status.trim() == "install ok installed")
}

pub fn ensure(apt: &mut Apt, report: &mut Report) -> Result<()> {
    let (present, missing): (Vec<&Package>, Vec<&Package>) = PACKAGES.iter().partition(|p| is_installed(p.name));
    for package in present {
        report.already(&format!("Debian package {}", package.name));
    }
    let required: Vec<&str> = missing.iter().filter(|p| p.required).map(|p| p.name).collect();
    if !required.is_empty() {
        report.installing(&format!("Debian packages {}", required.join(" ")));
        apt.install(&required)?;
    }
    for package in missing.iter().filter(|p| !p.required) {
        report.installing(&format!("Debian package {} (optional)", package.name));
        if let Err(error) = apt.install(&[package.name]) {
            report.warn(&format!("optional package {} was not installed: {error:#}", package.name));
        }
    }
    Ok(())
}
