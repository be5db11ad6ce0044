//! The Kubernetes manifests (`deploy/kubernetes/`) render offline with `kubectl kustomize` and
//! every object validates strictly against the Kubernetes OpenAPI schemas, with the invariants
//! the agent relies on (see `deploy/kubernetes/validate.py`, which also proves its own
//! strictness on broken copies). The environment comes from `cargo xtask setup`.

use std::process::Command;

use anyhow::{ensure, Context, Result};
use scouter_e2e::env::workspace_root;
use scouter_e2e::python::tools_dir;

#[test]
fn both_overlays_render_and_validate_against_the_kubernetes_schemas() -> Result<()> {
    let python = tools_dir().join("venvs/k8s/bin/python3");
    ensure!(python.is_file(), "{} is missing: run `cargo xtask setup`", python.display());
    let script = workspace_root().join("deploy/kubernetes/validate.py");
    let output =
        Command::new(&python).arg(&script).output().with_context(|| format!("running {}", script.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = format!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    ensure!(output.status.success(), "validate.py failed ({}):\n{report}", output.status);
    let verdict = stdout.lines().last().unwrap_or_default();
    let counts: Vec<u32> = verdict.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
    ensure!(
        verdict.starts_with("kubernetes manifests:") && counts.len() == 2 && counts[0] > 0 && counts[1] == 0,
        "unexpected verdict {verdict:?}:\n{report}"
    );
    ensure!(
        report.contains("strictness: misspelled field hostPid is refused"),
        "the strictness self-test did not run:\n{report}"
    );
    Ok(())
}
