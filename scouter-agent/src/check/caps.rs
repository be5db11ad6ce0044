//! Effective capabilities, from `CapEff` in /proc/self/status.
//!
//! The decision is made on capabilities, not on the user id: root in a container often runs
//! with a reduced capability set, and a non-root service can be granted exactly what it needs.
//! CAP_SYS_ADMIN is the kernel's catch-all: it stands in for CAP_BPF and CAP_PERFMON (and is
//! the only way on kernels before 5.8) and for CAP_NET_ADMIN in bpf().

use super::Finding;

/// A Linux capability, by bit number (linux/capability.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    pub bit: u32,
}

pub const CAP_DAC_READ_SEARCH: Capability = Capability { name: "CAP_DAC_READ_SEARCH", bit: 2 };
pub const CAP_NET_ADMIN: Capability = Capability { name: "CAP_NET_ADMIN", bit: 12 };
pub const CAP_SYS_PTRACE: Capability = Capability { name: "CAP_SYS_PTRACE", bit: 19 };
pub const CAP_SYS_ADMIN: Capability = Capability { name: "CAP_SYS_ADMIN", bit: 21 };
pub const CAP_PERFMON: Capability = Capability { name: "CAP_PERFMON", bit: 38 };
pub const CAP_BPF: Capability = Capability { name: "CAP_BPF", bit: 39 };

/// What the agent does with a capability, and whether it can run at all without it.
#[derive(Debug, Clone, Copy)]
pub struct CapabilityUse {
    pub capability: Capability,
    pub needed_for: &'static str,
    pub required: bool,
    /// Another capability the kernel accepts in its place.
    pub substitute: Option<Capability>,
}

pub const CAPABILITY_USES: [CapabilityUse; 6] = [
    CapabilityUse {
        capability: CAP_BPF,
        needed_for: "loading eBPF programs and creating maps",
        required: true,
        substitute: Some(CAP_SYS_ADMIN),
    },
    CapabilityUse {
        capability: CAP_PERFMON,
        needed_for: "attaching tracepoints and uprobes (perf_event_open) and reading process memory from eBPF",
        required: true,
        substitute: Some(CAP_SYS_ADMIN),
    },
    CapabilityUse {
        capability: CAP_SYS_ADMIN,
        needed_for: "mounting tracefs/securityfs when they are not mounted",
        required: false,
        substitute: None,
    },
    CapabilityUse {
        capability: CAP_SYS_PTRACE,
        needed_for: "reading /proc/<pid>/maps and exe of other users' Python processes (discovery, uprobes)",
        required: false,
        substitute: None,
    },
    CapabilityUse {
        capability: CAP_DAC_READ_SEARCH,
        needed_for: "reading interpreters and libraries of other users and containers through /proc/<pid>/root",
        required: false,
        substitute: None,
    },
    CapabilityUse {
        capability: CAP_NET_ADMIN,
        needed_for: "attaching sockops/sk_msg programs to the cgroup (trace-context header injection)",
        required: false,
        substitute: Some(CAP_SYS_ADMIN),
    },
];

/// A set of capabilities as the kernel prints it: a 64-bit mask in hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapabilitySet(pub u64);

impl CapabilitySet {
    pub fn has(self, capability: Capability) -> bool {
        self.0 & (1u64 << capability.bit) != 0
    }

    /// Whether the kernel grants what `usage` needs, directly or through its substitute.
    pub fn grants(self, usage: &CapabilityUse) -> bool {
        self.has(usage.capability) || usage.substitute.is_some_and(|substitute| self.has(substitute))
    }

    /// The required capabilities the kernel would refuse, by name.
    pub fn missing_required(self) -> Vec<&'static str> {
        CAPABILITY_USES
            .iter()
            .filter(|usage| usage.required && !self.grants(usage))
            .map(|usage| usage.capability.name)
            .collect()
    }
}

/// Finds `CapEff:` in the text of /proc/<pid>/status.
pub fn parse_effective_capabilities(status: &str) -> Option<CapabilitySet> {
    let hex = status.lines().find_map(|line| line.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok().map(CapabilitySet)
}

/// One finding per capability the agent uses, saying what it is for.
pub fn capability_findings(caps: CapabilitySet) -> Vec<Finding> {
    CAPABILITY_USES.iter().map(|usage| capability_finding(caps, usage)).collect()
}

fn capability_finding(caps: CapabilitySet, usage: &CapabilityUse) -> Finding {
    let name = usage.capability.name;
    if caps.has(usage.capability) {
        return Finding::ok(name, format!("for {}", usage.needed_for));
    }
    if let Some(substitute) = usage.substitute.filter(|substitute| caps.has(*substitute)) {
        return Finding::ok(name, format!("granted through {}: for {}", substitute.name, usage.needed_for));
    }
    let grant = format!(
        "run as root, or grant {name} (setcap, systemd AmbientCapabilities=, or securityContext.capabilities.add: [{}] in Kubernetes)",
        name.trim_start_matches("CAP_")
    );
    if usage.required {
        let fix = format!("{grant}; kernels before 5.8 have no {name} and need CAP_SYS_ADMIN");
        Finding::missing(name, format!("needed for {}", usage.needed_for)).with_fix(fix)
    } else {
        Finding::warn(name, format!("without it, no {}", usage.needed_for)).with_fix(grant)
    }
}

pub fn read_effective_capabilities() -> anyhow::Result<CapabilitySet> {
    use anyhow::Context as _;
    let status = std::fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    parse_effective_capabilities(&status).context("no readable CapEff line in /proc/self/status")
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::*;

    fn status(cap_eff: &str) -> String {
        format!("Name:\tscouter-agent\nUid:\t0\t0\t0\t0\nCapPrm:\t000001ffffffffff\nCapEff:\t{cap_eff}\nCapBnd:\t000001ffffffffff\n")
    }

    #[test]
    fn full_root_set() {
        let caps = parse_effective_capabilities(&status("000001ffffffffff")).unwrap();
        assert!(CAPABILITY_USES.iter().all(|usage| caps.has(usage.capability)));
        assert!(caps.missing_required().is_empty());
    }

    /// This machine's root: everything but CAP_SYS_RESOURCE (bit 24).
    #[test]
    fn root_without_sys_resource() {
        let caps = parse_effective_capabilities(&status("000001fffeffffff")).unwrap();
        assert!(!caps.has(Capability { name: "CAP_SYS_RESOURCE", bit: 24 }));
        assert!(caps.has(CAP_BPF) && caps.has(CAP_PERFMON) && caps.has(CAP_SYS_ADMIN));
    }

    #[test]
    fn unprivileged_user_misses_bpf_and_perfmon() {
        let caps = parse_effective_capabilities(&status("0000000000000000")).unwrap();
        assert_eq!(caps.missing_required(), ["CAP_BPF", "CAP_PERFMON"]);
    }

    #[test]
    fn bpf_and_perfmon_alone_are_enough_to_run() {
        let caps = CapabilitySet((1 << 39) | (1 << 38));
        assert!(caps.missing_required().is_empty());
        assert!(!caps.has(CAP_SYS_PTRACE));
    }

    #[test]
    fn sys_admin_stands_in_for_bpf_perfmon_and_net_admin() {
        let caps = CapabilitySet(1 << 21);
        assert!(caps.missing_required().is_empty());
        let net_admin = CAPABILITY_USES.iter().find(|u| u.capability == CAP_NET_ADMIN).unwrap();
        assert!(caps.grants(net_admin) && !caps.has(CAP_NET_ADMIN));
    }

    #[test]
    fn only_perfmon_missing() {
        let caps = CapabilitySet(1 << 39);
        assert_eq!(caps.missing_required(), ["CAP_PERFMON"]);
    }

    #[test]
    fn findings_name_what_each_capability_is_for() {
        let findings = capability_findings(CapabilitySet(1 << 21));
        let by_name = |name: &str| findings.iter().find(|f| f.feature == name).unwrap();
        assert_eq!(by_name("CAP_BPF").status, Status::Ok);
        assert!(by_name("CAP_BPF").detail.contains("through CAP_SYS_ADMIN"));
        assert_eq!(by_name("CAP_NET_ADMIN").status, Status::Ok);
        let ptrace = by_name("CAP_SYS_PTRACE");
        assert_eq!(ptrace.status, Status::Warn);
        assert!(ptrace.detail.contains("/proc/<pid>/maps"));
        assert!(ptrace.fix.as_deref().unwrap().contains("[SYS_PTRACE]"));

        let findings = capability_findings(CapabilitySet(0));
        let perfmon = findings.iter().find(|f| f.feature == "CAP_PERFMON").unwrap();
        assert_eq!(perfmon.status, Status::Missing);
        assert!(perfmon.detail.contains("perf_event_open"));
    }

    #[test]
    fn rejects_missing_or_malformed_cap_eff() {
        assert_eq!(parse_effective_capabilities("Name:\tx\nCapPrm:\t0\n"), None);
        assert_eq!(parse_effective_capabilities(&status("not-hex")), None);
    }
}
