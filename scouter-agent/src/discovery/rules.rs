//! Which Python processes the agent traces, and what it calls them: the configuration's
//! `[[include]]`, `[[exclude]]` and `[[service_names]]` tables, each a [`ProcessMatch`].
//!
//! A process is traced when it matches an include rule (or there are none) and no exclude
//! rule. A rule about the pod (namespace, label, container name) cannot be decided before the
//! agent knows the process's pod: the answer is then [`Verdict::Unknown`] and the agent waits
//! for the pod's metadata rather than guess (tracing a process the user excluded, or leaving
//! out one they included, would both be wrong). A process outside any container has no pod:
//! pod rules simply do not match it.

use std::collections::BTreeMap;
use std::path::Path;

use crate::frames::selection::Glob;

/// What a process is, as far as rules ask.
#[derive(Clone, Copy, Debug)]
pub struct ProcessFacts<'a> {
    pub executable: &'a Path,
    /// The TCP ports it listens on.
    pub ports: &'a [u16],
    pub pod: PodFacts<'a>,
}

/// The process's pod, as far as it is known.
#[derive(Clone, Copy, Debug, Default)]
pub enum PodFacts<'a> {
    /// Not in a Kubernetes pod (or no pod metadata is watched).
    #[default]
    None,
    /// In a pod whose metadata has not arrived yet.
    Pending,
    Known {
        namespace: &'a str,
        labels: &'a BTreeMap<String, String>,
        /// The process's container's name, when the pod lists its id.
        container: Option<&'a str>,
    },
}

/// One rule: every condition given must hold.
#[derive(Clone, Debug, Default)]
pub struct ProcessMatch {
    pub namespace: Option<String>,
    /// A label key, and the value it must have (any value when `None`).
    pub pod_label: Option<(String, Option<String>)>,
    pub container: Option<String>,
    pub executable: Option<Glob>,
    pub port: Option<u16>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Yes,
    No,
    /// Depends on the pod's metadata, not known yet.
    Unknown,
}

impl ProcessMatch {
    /// `key=value` or `key`, as the configuration writes a label condition.
    pub fn parse_label(text: &str) -> (String, Option<String>) {
        match text.split_once('=') {
            Some((key, value)) => (key.trim().to_owned(), Some(value.trim().to_owned())),
            None => (text.trim().to_owned(), None),
        }
    }

    pub fn matches(&self, facts: &ProcessFacts<'_>) -> Verdict {
        let executable = self.executable.as_ref().is_none_or(|glob| glob.matches(&facts.executable.to_string_lossy()));
        let port = self.port.is_none_or(|port| facts.ports.contains(&port));
        if !executable || !port {
            return Verdict::No;
        }
        if !self.asks_about_the_pod() {
            return Verdict::Yes;
        }
        match facts.pod {
            PodFacts::None => Verdict::No,
            PodFacts::Pending => Verdict::Unknown,
            PodFacts::Known { namespace, labels, container } => {
                let namespace_ok = self.namespace.as_deref().is_none_or(|wanted| wanted == namespace);
                let label_ok = self.pod_label.as_ref().is_none_or(|(key, value)| match (labels.get(key), value) {
                    (Some(found), Some(wanted)) => found == wanted,
                    (found, None) => found.is_some(),
                    (None, Some(_)) => false,
                });
                let container_ok = self.container.as_deref().is_none_or(|wanted| container == Some(wanted));
                if namespace_ok && label_ok && container_ok {
                    Verdict::Yes
                } else {
                    Verdict::No
                }
            }
        }
    }

    fn asks_about_the_pod(&self) -> bool {
        self.namespace.is_some() || self.pod_label.is_some() || self.container.is_some()
    }
}

/// The configuration's process rules.
#[derive(Clone, Debug, Default)]
pub struct ProcessRules {
    pub include: Vec<ProcessMatch>,
    pub exclude: Vec<ProcessMatch>,
    /// The first matching rule names the service (after the process's own `OTEL_SERVICE_NAME`).
    pub service_names: Vec<(ProcessMatch, String)>,
}

impl ProcessRules {
    /// Whether to trace a process: included (no include rules: every process) and not
    /// excluded; `Unknown` while that depends on its pod's metadata.
    pub fn selects(&self, facts: &ProcessFacts<'_>) -> Verdict {
        let included = if self.include.is_empty() { Verdict::Yes } else { any(&self.include, facts) };
        let excluded = any(&self.exclude, facts);
        match (included, excluded) {
            (Verdict::No, _) | (_, Verdict::Yes) => Verdict::No,
            (Verdict::Yes, Verdict::No) => Verdict::Yes,
            _ => Verdict::Unknown,
        }
    }

    /// The service name the first matching rule gives; `Err(())` while a rule before the first
    /// match cannot be decided yet.
    pub fn service_name(&self, facts: &ProcessFacts<'_>) -> Result<Option<&str>, ()> {
        for (rule, name) in &self.service_names {
            match rule.matches(facts) {
                Verdict::Yes => return Ok(Some(name)),
                Verdict::No => continue,
                Verdict::Unknown => return Err(()),
            }
        }
        Ok(None)
    }

    /// Whether any rule needs the listening ports (reading them costs a walk of the process's
    /// file descriptors).
    pub fn ask_ports(&self) -> bool {
        let mut rules = self.include.iter().chain(&self.exclude).chain(self.service_names.iter().map(|(rule, _)| rule));
        rules.any(|rule| rule.port.is_some())
    }
}

/// `Yes` if a rule matches, `Unknown` if none does but one may, else `No`.
fn any(rules: &[ProcessMatch], facts: &ProcessFacts<'_>) -> Verdict {
    let mut verdict = Verdict::No;
    for rule in rules {
        match rule.matches(facts) {
            Verdict::Yes => return Verdict::Yes,
            Verdict::Unknown => verdict = Verdict::Unknown,
            Verdict::No => {}
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn rule(namespace: Option<&str>, label: Option<&str>) -> ProcessMatch {
        ProcessMatch {
            namespace: namespace.map(str::to_owned),
            pod_label: label.map(ProcessMatch::parse_label),
            ..ProcessMatch::default()
        }
    }

    #[test]
    fn every_condition_given_must_hold() {
        let shop = labels(&[("app", "cart"), ("tier", "web")]);
        let facts = ProcessFacts {
            executable: Path::new("/usr/local/bin/python3.12"),
            ports: &[8080],
            pod: PodFacts::Known { namespace: "shop", labels: &shop, container: Some("api") },
        };
        assert_eq!(rule(Some("shop"), Some("app=cart")).matches(&facts), Verdict::Yes);
        assert_eq!(rule(Some("shop"), Some("app=web")).matches(&facts), Verdict::No);
        assert_eq!(rule(None, Some("tier")).matches(&facts), Verdict::Yes, "a bare key matches any value");
        assert_eq!(rule(Some("kube-system"), None).matches(&facts), Verdict::No);
        let by_host = ProcessMatch {
            executable: Some(Glob::new("/usr/local/bin/python3*")),
            port: Some(8080),
            container: Some("api".into()),
            ..ProcessMatch::default()
        };
        assert_eq!(by_host.matches(&facts), Verdict::Yes);
        let other_port = ProcessMatch { port: Some(9000), ..ProcessMatch::default() };
        assert_eq!(other_port.matches(&facts), Verdict::No);
    }

    #[test]
    fn pod_rules_wait_for_the_pod_and_never_match_a_host_process() {
        let namespaced = rule(Some("shop"), None);
        let pending = ProcessFacts { executable: Path::new("/usr/bin/python3"), ports: &[], pod: PodFacts::Pending };
        assert_eq!(namespaced.matches(&pending), Verdict::Unknown);
        let host = ProcessFacts { pod: PodFacts::None, ..pending };
        assert_eq!(namespaced.matches(&host), Verdict::No);
        let by_path = ProcessMatch { executable: Some(Glob::new("/opt/*")), ..ProcessMatch::default() };
        assert_eq!(by_path.matches(&pending), Verdict::No, "decided without the pod");
    }

    #[test]
    fn include_then_exclude_and_unknown_until_the_pod_is_known() {
        let rules = ProcessRules {
            include: vec![rule(Some("shop"), None)],
            exclude: vec![rule(None, Some("scouter.io/trace=false"))],
            service_names: Vec::new(),
        };
        let quiet = labels(&[("scouter.io/trace", "false")]);
        let plain = labels(&[]);
        let facts = |pod| ProcessFacts { executable: Path::new("/usr/bin/python3"), ports: &[], pod };
        let known = |namespace, labels| PodFacts::Known { namespace, labels, container: None };
        assert_eq!(rules.selects(&facts(known("shop", &plain))), Verdict::Yes);
        assert_eq!(rules.selects(&facts(known("shop", &quiet))), Verdict::No);
        assert_eq!(rules.selects(&facts(known("web", &plain))), Verdict::No);
        assert_eq!(rules.selects(&facts(PodFacts::Pending)), Verdict::Unknown);
        assert_eq!(rules.selects(&facts(PodFacts::None)), Verdict::No, "only pods in shop are included");
        assert_eq!(ProcessRules::default().selects(&facts(PodFacts::Pending)), Verdict::Yes, "no rules: all");
    }

    #[test]
    fn the_first_matching_rule_names_the_service() {
        let rules = ProcessRules {
            service_names: vec![
                (ProcessMatch { port: Some(9000), ..ProcessMatch::default() }, "admin".into()),
                (rule(Some("shop"), None), "shop".into()),
            ],
            ..ProcessRules::default()
        };
        let plain = labels(&[]);
        let in_shop = ProcessFacts {
            executable: Path::new("/usr/bin/python3"),
            ports: &[8080],
            pod: PodFacts::Known { namespace: "shop", labels: &plain, container: None },
        };
        assert_eq!(rules.service_name(&in_shop), Ok(Some("shop")));
        assert_eq!(rules.service_name(&ProcessFacts { ports: &[9000], ..in_shop }), Ok(Some("admin")));
        assert_eq!(rules.service_name(&ProcessFacts { pod: PodFacts::Pending, ..in_shop }), Err(()));
        assert_eq!(rules.service_name(&ProcessFacts { pod: PodFacts::None, ..in_shop }), Ok(None));
        assert!(rules.ask_ports());
    }
}
