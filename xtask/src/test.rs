//! `cargo xtask test`: the whole suite, as CI runs it.
//!
//! Stages: setup (everything, tests included), release build of the agent, unit tests of the
//! workspace, the kernel matrix ([`kernels`]: the release binary on the running kernel and on
//! Debian's 6.1 and 6.12 kernels under QEMU, a few minutes), then the end-to-end tests against
//! the release binary. The end-to-end tests load real eBPF programs and never skip: without
//! root or the agent binary they fail. This task checks for root up front (a clearer message
//! than 29 failures) and sets SCOUTER_E2E_REQUIRED=1, which makes the tests' failure message
//! say CI requires them.
//!
//! Setup and build failures stop the run (nothing after them can work). The test stages all
//! run even if one before them fails, so one CI run reports every failing test.

use std::process::Command;

use anyhow::{bail, Result};

use crate::build;
use crate::cmd;
use crate::kernels;
use crate::setup;
use crate::workspace::{self, Workspace};

const E2E_PACKAGE: &str = "scouter-e2e";

pub fn run(ws: &Workspace, with_setup: bool, filter: Option<&str>) -> Result<()> {
    workspace::require_root("test", "the end-to-end tests load eBPF programs, and they may not be skipped")?;
    let mut summary = Summary::default();

    if with_setup {
        summary.record("setup", setup::run(ws, setup::Scope::All))?;
    }
    // Setup just ran in full; the build does not need to check again.
    let agent = summary.record("build", build::build(ws, false))?;

    let mut unit = Command::new("cargo");
    unit.current_dir(ws.root()).args(["test", "--no-fail-fast", "--workspace", "--exclude", E2E_PACKAGE]).args(filter);
    let unit_result = cmd::run(&mut unit);
    summary.note("unit tests", &unit_result);

    summary.note("kernel matrix", &kernels::stage(ws, &agent));

    let mut e2e = Command::new("cargo");
    e2e.current_dir(ws.root())
        .env("SCOUTER_AGENT_BIN", &agent)
        .env("SCOUTER_E2E_REQUIRED", "1")
        // --tests: the harness has no doc tests, and an empty doc-test run would otherwise be
        // the log's last "test result" line, which reads as if nothing ran.
        .args(["test", "--no-fail-fast", "-p", E2E_PACKAGE, "--release", "--tests"])
        .args(filter)
        .args(["--", "--test-threads=1"]);
    let e2e_result = cmd::run(&mut e2e);
    summary.note("end-to-end tests", &e2e_result);

    summary.print();
    if summary.failed() {
        bail!("some test stages failed (see the summary above)");
    }
    Ok(())
}

/// Stage outcomes, printed last so the verdict is the final thing in a long CI log.
#[derive(Default)]
struct Summary {
    stages: Vec<(&'static str, bool)>,
}

impl Summary {
    fn note<T>(&mut self, stage: &'static str, result: &Result<T>) {
        if let Err(error) = result {
            eprintln!("error: {stage}: {error:#}");
        }
        self.stages.push((stage, result.is_ok()));
    }

    /// Notes the stage, and on failure prints the summary before passing the error on.
    fn record<T>(&mut self, stage: &'static str, result: Result<T>) -> Result<T> {
        self.stages.push((stage, result.is_ok()));
        if result.is_err() {
            self.print();
        }
        result
    }

    fn failed(&self) -> bool {
        self.stages.iter().any(|(_, passed)| !passed)
    }

    fn print(&self) {
        println!("\n== cargo xtask test: stages ==");
        for (stage, passed) in &self.stages {
            println!("  {:<18} {}", stage, if *passed { "passed" } else { "FAILED" });
        }
    }
}
