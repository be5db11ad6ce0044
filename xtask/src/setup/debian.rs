//! Debian packages the tests use, checked with dpkg-query and installed with apt-get.
//!
//! [`PACKAGES`] is the one list of what the tests use; [`BENCH_PACKAGES`] holds what only the
//! bench adds (redis, for its neighbours part), installed only when that part runs. `apt-get
//! update` runs at most once per setup, and only when something is missing, because it is the
//! slow, network-bound part. Optional packages are conveniences (nothing fails without them),
//! so a failure to install one is a warning.
//!
//! Setup never removes a package to install one (`--no-remove`): a machine of the project's
//! kind may carry newer packages from bookworm-backports than bookworm offers (qemu-utils, for
//! one), and bookworm's qemu-system-x86 would replace them. A package marked
//! [`Package::backports_fallback`] is therefore tried from bookworm first (simulated, silently)
//! and, when that would remove something, installed from bookworm-backports, whose source is
//! added to apt's list ([`BACKPORTS_SOURCE`], Debian's own mirror and keyring) if no source names
//! it yet. Backports are pinned low by Debian, so adding the source changes no other package.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use super::Report;
use crate::cmd;
use crate::workspace;

struct Package {
    name: &'static str,
    /// Whether setup fails when the package cannot be installed.
    required: bool,
    /// Install from bookworm-backports when bookworm's version cannot be installed without
    /// removing an installed package.
    backports_fallback: bool,
}

impl Package {
    const fn required(name: &'static str) -> Self {
        Self { name, required: true, backports_fallback: false }
    }
}

const PACKAGES: &[Package] = &[
    // Debian's own interpreter: a test target of a different shape (static, non-PIE, USDT).
    // The kernel matrix also copies it into its guests.
    Package::required("python3.11"),
    // Load generator for tests that drive many requests.
    Package::required("wrk"),
    Package::required("curl"),
    // Test certificates for HTTPS servers.
    Package::required("openssl"),
    // interpreter_shapes links static-libpython interpreters and strips them (`gcc`, `strip`).
    Package::required("gcc"),
    Package::required("binutils"),
    // The kernel matrix (`cargo xtask kernels`): QEMU boots Debian's kernels (TCG) on an
    // initramfs made of busybox and cpio's archive. Machines with qemu-utils from backports
    // need qemu-system-x86 from there too.
    Package { name: "qemu-system-x86", required: true, backports_fallback: true },
    Package::required("busybox-static"),
    Package::required("cpio"),
    // Shows what is attached when a test needs debugging.
    Package { name: "bpftool", required: false, backports_fallback: false },
];

/// What only `cargo xtask bench` uses: its neighbours part runs redis-server (a service
/// nobody traces) under redis-benchmark's load, and reads its eBPF programs' run-time
/// statistics with bpftool (optional for the tests, needed there). Debian's redis-server
/// package holds the service files (the binary is redis-tools'); the bench never uses the
/// service it may start, it starts a server of its own on a free port.
const BENCH_PACKAGES: &[Package] =
    &[Package::required("redis-server"), Package::required("redis-tools"), Package::required("bpftool")];

/// The release the fallback installs from, and the deb822 source that provides it.
const BACKPORTS: &str = "bookworm-backports";
const BACKPORTS_SOURCE_PATH: &str = "/etc/apt/sources.list.d/scouter-bookworm-backports.sources";
const BACKPORTS_SOURCE: &str = "\
# Added by `cargo xtask setup` (xtask/src/setup/debian.rs): packages that must match newer ones
# already installed from backports (qemu-system-x86 beside qemu-utils).
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

/// `apt-get`, remembering whether the package lists were refreshed in this setup run.
#[derive(Default)]
pub struct Apt {
    updated: bool,
}

impl Apt {
    /// Installs `names` together from the default release; fails if any cannot be installed,
    /// or could only be installed by removing another package.
    pub fn install(&mut self, names: &[&str]) -> Result<()> {
        self.prepare(names)?;
        cmd::run(apt_get().args(["install", "-y", "--no-install-recommends", "--no-remove"]).args(names))
    }

    /// Installs `name` from bookworm when that removes nothing, else from bookworm-backports.
    fn install_with_backports_fallback(&mut self, name: &str, report: &Report) -> Result<()> {
        self.prepare(&[name])?;
        if would_install_cleanly(name) {
            return self.install(&[name]);
        }
        report.warn(&format!(
            "bookworm's {name} cannot be installed without removing a package (a newer one from \
             {BACKPORTS} is installed, e.g. qemu-utils): installing {name} from {BACKPORTS}"
        ));
        self.ensure_backports_source()?;
        cmd::run(apt_get().args(["install", "-y", "--no-install-recommends", "--no-remove", "-t", BACKPORTS]).arg(name))
    }

    /// Root check and one `apt-get update` per setup run.
    fn prepare(&mut self, names: &[&str]) -> Result<()> {
        if !workspace::is_root() {
            bail!(
                "Debian packages are missing ({}) and installing them needs root: \
                 run `sudo apt-get install {}`, or run this task as root",
                names.join(", "),
                names.join(" ")
            );
        }
        if !self.updated {
            self.update()?;
        }
        Ok(())
    }

    /// Refreshes the package lists (again, if a source was added since).
    pub fn update(&mut self) -> Result<()> {
        cmd::run(apt_get().arg("update"))?;
        self.updated = true;
        Ok(())
    }

    /// Adds the bookworm-backports source unless some source names that release already, and
    /// refreshes the lists so apt knows its packages.
    fn ensure_backports_source(&mut self) -> Result<()> {
        let policy = cmd::output(Command::new("apt-cache").arg("policy"))?;
        if knows_release(&policy, BACKPORTS) {
            return Ok(());
        }
        println!("adding the {BACKPORTS} source: {BACKPORTS_SOURCE_PATH}");
        std::fs::write(Path::new(BACKPORTS_SOURCE_PATH), BACKPORTS_SOURCE)
            .with_context(|| format!("cannot write {BACKPORTS_SOURCE_PATH}"))?;
        self.update()
    }
}

/// CI runs without a terminal or stdin: never let a package ask a question.
fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

/// Whether apt could install `name` from the default release without removing anything: a
/// simulation, silent, so the usual case prints nothing.
fn would_install_cleanly(name: &str) -> bool {
    let mut simulate = apt_get();
    simulate.args(["install", "--simulate", "--no-install-recommends", "--no-remove", name]);
    cmd::probe(&mut simulate).is_some()
}

/// Whether `apt-cache policy` lists a source of `release` (`a=` archive or `n=` codename).
fn knows_release(policy: &str, release: &str) -> bool {
    policy.lines().any(|line| {
        line.split([',', ' ']).any(|field| field == format!("a={release}") || field == format!("n={release}"))
    })
}

pub fn is_installed(name: &str) -> bool {
    // Unknown packages make dpkg-query fail; removed-but-configured ones report another status.
    cmd::probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", name]))
        .is_some_and(|status| status.trim() == "install ok installed")
}

/// Installs what is missing of [`PACKAGES`].
pub fn ensure(apt: &mut Apt, report: &mut Report) -> Result<()> {
    ensure_packages(PACKAGES, apt, report)
}

/// Installs what is missing of [`BENCH_PACKAGES`].
pub fn ensure_bench(apt: &mut Apt, report: &mut Report) -> Result<()> {
    ensure_packages(BENCH_PACKAGES, apt, report)
}

fn ensure_packages(packages: &[Package], apt: &mut Apt, report: &mut Report) -> Result<()> {
    let (present, missing): (Vec<&Package>, Vec<&Package>) = packages.iter().partition(|p| is_installed(p.name));
    for package in present {
        report.already(&format!("Debian package {}", package.name));
    }
    let required: Vec<&str> = missing.iter().filter(|p| p.required && !p.backports_fallback).map(|p| p.name).collect();
    if !required.is_empty() {
        report.installing(&format!("Debian packages {}", required.join(" ")));
        apt.install(&required)?;
    }
    for package in missing.iter().filter(|p| p.required && p.backports_fallback) {
        report.installing(&format!("Debian package {}", package.name));
        apt.install_with_backports_fallback(package.name, report)?;
    }
    for package in missing.iter().filter(|p| !p.required) {
        report.installing(&format!("Debian package {} (optional)", package.name));
        if let Err(error) = apt.install(&[package.name]) {
            report.warn(&format!("optional package {} was not installed: {error:#}", package.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_release_in_apt_cache_policy() {
        let policy = "\
Package files:
 100 /var/lib/dpkg/status
     release a=now
 500 http://deb.debian.org/debian bookworm-updates/main amd64 Packages
     release v=12-updates,o=Debian,a=oldstable-updates,n=bookworm-updates,l=Debian,c=main,b=amd64
     origin deb.debian.org
";
        assert!(knows_release(policy, "bookworm-updates"));
        assert!(!knows_release(policy, "bookworm-backports"));
        assert!(!knows_release(policy, "bookworm"));
        let with_backports = format!(
            "{policy} 100 http://deb.debian.org/debian bookworm-backports/main amd64 Packages\n     \
             release o=Debian Backports,a=stable-backports,n=bookworm-backports,l=Debian Backports,c=main\n"
        );
        assert!(knows_release(&with_backports, "bookworm-backports"));
    }
}
