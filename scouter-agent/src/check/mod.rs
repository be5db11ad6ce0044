//! `scouter-agent check`: what this host offers the agent, and what to do about what it lacks.
//!
//! Each check is a small pure function from what the host exposes (file contents, a syscall's
//! result) to a [`Finding`], so the decisions are unit-tested on samples; thin wrappers do the
//! I/O. A finding is `ok`, `warn` (an optional feature is absent: the agent runs with less) or
//! `missing` (a required feature is absent: the agent cannot run). Some checks ask the kernel
//! directly (creating a map, mounting tracefs) because that is the only reliable answer.
//!
//! [`require_privileges`] is what the agent itself runs at startup; [`cgroup2_mount`] is where the
//! sockops/sk_msg programs (trace-context injection, not built yet) will attach.

mod caps;
mod kernel;
mod lockdown;
pub mod mounts;
mod tracepoints;

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use crate::probes::verifier::{self, ProgramStats};
use crate::probes::{tracefs, Feature, FeatureState, FeatureStates, IoCapture, IoCaptureChoice, ProbeOptions, Probes};

const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// An optional feature is absent; the agent runs without it.
    Warn,
    /// A required feature is absent; the agent cannot run.
    Missing,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Missing => "missing",
        })
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub status: Status,
    pub feature: String,
    pub detail: String,
    /// What to do about it, for anything not ok.
    pub fix: Option<String>,
}

impl Finding {
    fn new(status: Status, feature: &str, detail: impl Into<String>) -> Self {
        Finding { status, feature: feature.to_owned(), detail: detail.into(), fix: None }
    }

    pub fn ok(feature: &str, detail: impl Into<String>) -> Self {
        Self::new(Status::Ok, feature, detail)
    }

    pub fn warn(feature: &str, detail: impl Into<String>) -> Self {
        Self::new(Status::Warn, feature, detail)
    }

    pub fn missing(feature: &str, detail: impl Into<String>) -> Self {
        Self::new(Status::Missing, feature, detail)
    }

    pub fn with_fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<8} {:<20} {}", self.status.to_string(), self.feature, self.detail)?;
        match &self.fix {
            Some(fix) => write!(f, " -> {fix}"),
            None => Ok(()),
        }
    }
}

/// Prints one line per host fact, then loads and attaches every program as `run` does and
/// prints one line per feature; with `verifier`, the verifier's figures for every program too.
/// Fails exactly when `run` would (privileges, or a core program the kernel refuses), or when
/// a program is over the verifier budget.
pub fn run(verifier: bool, io_capture: IoCaptureChoice) -> anyhow::Result<()> {
    for finding in inspect_host() {
        println!("{finding}");
    }
    let options = ProbeOptions { io_capture, ..ProbeOptions::default() };
    let loaded = require_privileges().and_then(|()| {
        let (probes, _events) = Probes::attach(options).context("attaching the eBPF probes")?;
        Ok((probes.capture(), probes.features().clone()))
    });
    println!();
    match &loaded {
        Ok((capture, features)) => print_features(*capture, features),
        Err(error) => println!("{:<12} {:<20} {error:#}", "unavailable", Feature::Core.name()),
    }
    let capture = loaded.as_ref().map_or(IoCapture::candidates(io_capture)[0], |(capture, _)| *capture);
    let within_budget = if verifier { print_verifier_budget(options, capture)? } else { true };
    if let Err(error) = loaded {
        return Err(error.context("scouter-agent cannot run on this host"));
    }
    anyhow::ensure!(within_budget, "a program is over the verifier budget (see the table above)");
    Ok(())
}

fn print_features(capture: IoCapture, features: &FeatureStates) {
    for (feature, state) in features.iter() {
        let (status, detail) = match state {
            FeatureState::Enabled if feature == Feature::Core => ("ok", format!("socket I/O on the {capture}")),
            FeatureState::Enabled => ("ok", String::new()),
            FeatureState::Degraded(why) => ("degraded", why.clone()),
            FeatureState::Off(why) => ("off", why.clone()),
            FeatureState::Unavailable(why) => ("unavailable", format!("{why} -> {}", feature.without())),
        };
        println!("{status:<12} {:<20} {detail}", feature.name());
    }
}

/// Prints the verifier's figures for every program; returns whether all are within budget.
fn print_verifier_budget(options: ProbeOptions, capture: IoCapture) -> anyhow::Result<bool> {
    let stats = crate::probes::verifier_stats(options, capture)
        .context("loading the programs with the verifier's statistics")?;
    println!();
    println!(
        "verifier budget: stack of the deepest call chain <= {} B (frames rounded up to 32 B), \
         instructions processed <= {}",
        verifier::STACK_BUDGET,
        verifier::INSTRUCTION_BUDGET
    );
    println!("{:<32} {:>6} {:>9} {:>9}  {:<8} deepest call chain", "program", "stack", "insns", "time", "budget");
    for program in &stats {
        println!("{}", budget_line(program));
    }
    Ok(stats.iter().all(ProgramStats::within_budget))
}

fn budget_line(program: &ProgramStats) -> String {
    if let Some(why) = &program.not_applicable {
        return format!("{:<32} {:>6} {:>9} {:>9}  {:<8} {why}", program.program, "-", "-", "-", "n/a");
    }
    let frames: Vec<String> = program.deepest.iter().map(|(name, size)| format!("{name} {size}")).collect();
    let verdict = match (&program.rejection, program.within_budget()) {
        (Some(_), _) => "REFUSED",
        (None, true) => "ok",
        (None, false) => "OVER",
    };
    let mut line = format!(
        "{:<32} {:>6} {:>9} {:>7}ms  {:<8} {}",
        program.program,
        program.combined,
        program.processed,
        program.time.as_millis(),
        verdict,
        frames.join(" > ")
    );
    if let Some(reason) = &program.rejection {
        line.push_str(&format!("\n    the verifier: {}", reason.replace('\n', "\n    ")));
    }
    line
}

/// Every check, in the order a reader would fix things: privileges, kernel, attach points.
fn inspect_host() -> Vec<Finding> {
    let mut findings = vec![user_finding(current_euid())];
    match caps::read_effective_capabilities() {
        Ok(caps) => findings.extend(caps::capability_findings(caps)),
        Err(e) => findings.push(Finding::warn("capabilities", format!("{e:#}"))),
    }

    let uname = kernel::uname_release_and_machine();
    let version = uname.as_ref().ok().and_then(|(release, _)| kernel::parse_kernel_release(release));
    findings.push(kernel::kernel_finding(&uname));
    let bpf = kernel::probe_bpf_syscall();
    // Without bpf() the ring buffer cannot be probed, and the kernel version has to do.
    let ring_buffer = bpf.is_ok().then(kernel::probe_ring_buffer);
    findings.push(kernel::bpf_syscall_finding(&bpf));
    findings.push(kernel::ring_buffer_finding(version, ring_buffer.as_ref()));
    findings.push(kernel::btf_finding(Path::new(BTF_PATH)));

    let tracefs_root = tracefs::ensure_mounted();
    findings.push(tracepoints::tracefs_finding(&tracefs_root));
    let root = tracefs_root.as_deref().ok();
    findings.push(tracepoints::syscall_tracepoints_finding(root));
    findings.push(tracepoints::sched_tracepoints_finding(root));
    findings.push(tracepoints::uprobes_finding());
    findings.push(tracepoints::kprobes_finding());

    findings.push(cgroup2_finding(cgroup2_mount().as_deref()));
    findings.push(lockdown::lockdown_finding(&lockdown::read_lockdown()));
    findings
}

/// Checked by the agent at startup, before it tries to load anything, so that a missing
/// privilege is reported as such rather than as an EPERM from deep inside aya.
pub fn require_privileges() -> anyhow::Result<()> {
    let caps = caps::read_effective_capabilities()?;
    let missing = caps.missing_required();
    if !missing.is_empty() {
        bail!("scouter-agent needs CAP_BPF and CAP_PERFMON (or root); missing: {}", missing.join(", "));
    }
    for finding in caps::capability_findings(caps).iter().filter(|f| f.status == Status::Warn) {
        tracing::warn!(capability = %finding.feature, "{}", finding.detail);
    }
    Ok(())
}

/// Where cgroup v2 is mounted, for attaching sockops/sk_msg programs; None on v1-only hosts.
pub fn cgroup2_mount() -> Option<PathBuf> {
    match mounts::read_mountinfo() {
        Ok(table) => mounts::choose_cgroup2_mount(&table),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read {}; assuming no cgroup v2 mount", mounts::MOUNTINFO_PATH);
            None
        }
    }
}

fn cgroup2_finding(mount: Option<&Path>) -> Finding {
    const FEATURE: &str = "cgroup v2";
    match mount {
        Some(path) => Finding::ok(FEATURE, format!("mounted at {} (sockops/sk_msg attach here)", path.display())),
        None => Finding::warn(FEATURE, "no cgroup2 mount: sockops/sk_msg (trace-context header injection) are off")
            .with_fix("mount -t cgroup2 none /sys/fs/cgroup/unified, or boot with systemd.unified_cgroup_hierarchy=1"),
    }
}

fn current_euid() -> u32 {
    // SAFETY: geteuid cannot fail and has no preconditions.
    unsafe { libc::geteuid() }
}

/// Informational: capabilities decide, and the capability lines say what is missing.
fn user_finding(euid: u32) -> Finding {
    if euid == 0 {
        Finding::ok("user", "root (euid 0)")
    } else {
        Finding::ok("user", format!("euid {euid}, not root: the capability lines decide"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_line_shows_figures_and_the_verifiers_reason() {
        let refused = ProgramStats {
            program: "io_enter_write".into(),
            frames: vec![448, 80],
            combined: 544,
            processed: 130_481,
            time: std::time::Duration::from_millis(923),
            rejection: Some("combined stack size of 2 calls is 528. Too large".into()),
            not_applicable: None,
            deepest: vec![("io_enter_write".into(), 448), ("find_parent".into(), 80)],
        };
        let line = budget_line(&refused);
        assert!(line.starts_with("io_enter_write"), "{line}");
        assert!(line.contains("544") && line.contains("130481") && line.contains("REFUSED"), "{line}");
        assert!(line.contains("io_enter_write 448 > find_parent 80"), "{line}");
        assert!(line.ends_with("the verifier: combined stack size of 2 calls is 528. Too large"), "{line}");
        let fine = ProgramStats { rejection: None, combined: 320, ..refused };
        assert!(budget_line(&fine).contains(" ok "));
    }

    #[test]
    fn line_shows_status_feature_detail_and_fix() {
        let line = Finding::missing("BTF", "not found").with_fix("rebuild").to_string();
        assert_eq!(line, "missing  BTF                  not found -> rebuild");
        assert_eq!(Finding::ok("kernel", "6.18").to_string(), "ok       kernel               6.18");
    }

    #[test]
    fn cgroup2_absence_is_a_warning() {
        assert_eq!(cgroup2_finding(None).status, Status::Warn);
        let found = cgroup2_finding(Some(Path::new("/sys/fs/cgroup/unified")));
        assert!(found.detail.contains("/sys/fs/cgroup/unified"));
    }
}
