//! Discovery: which processes on the host are Python interpreters, and which version.
//!
//! A process is inspected when the agent starts (a /proc scan) and whenever one execs (the
//! kernel reports every exec). Inspection reads only files: the executable, the libpython it
//! maps or links, and /proc metadata; it never reads the process's memory, so an unknown
//! interpreter is reported and left alone.

pub mod asyncio;
pub mod container;
pub mod file_cache;
mod interpreter;
pub mod kubernetes;
pub mod libssl;
mod loader;
pub mod native_sdk;
mod procfs;
pub mod rules;
pub mod sockets;
mod untraced;

use std::path::PathBuf;
use std::sync::Arc;

pub use interpreter::{InterpreterError, PythonVersion};
pub use procfs::{all_pids, executable, hostname};
pub use untraced::UntracedProcesses;

use crate::spans::{scouter_conventions, AttributeValue, Resource};

/// A Python process the agent traces.
#[derive(Clone, Debug)]
pub struct PythonProcess {
    pub pid: u32,
    pub executable: PathBuf,
    /// The ELF that holds the interpreter: libpython, or the executable itself when static.
    pub interpreter_binary: PathBuf,
    pub version: PythonVersion,
    pub service_name: String,
    /// Its own `OTEL_SERVICE_NAME`, and what it runs: the first and last choices for its name.
    pub own_service_name: Option<String>,
    pub program_name: String,
    /// The container it runs in and that container's pod, from its cgroup (None on the host).
    pub container: Option<container::ContainerId>,
    pub pod_uid: Option<String>,
    pub resource: Arc<Resource>,
}

impl PythonProcess {
    /// The interpreter ELF as the agent opens it (through the process's root).
    pub fn interpreter_file(&self) -> PathBuf {
        procfs::in_process_root(self.pid, &self.interpreter_binary)
    }
}

/// Why a process is not traced.
#[derive(Debug, thiserror::Error)]
pub enum Skip {
    #[error("not a Python process")]
    NotPython,
    #[error("process exited")]
    Gone,
    #[error("Python {version} is not supported (supported: 3.8 to 3.13); leaving it alone")]
    UnsupportedVersion { version: PythonVersion },
    #[error("cannot determine the Python version: {0}")]
    UnknownVersion(#[from] InterpreterError),
}

/// Inspects `pid`; `Ok` when it is a supported Python interpreter.
pub fn inspect(pid: u32) -> Result<PythonProcess, Skip> {
    let executable = procfs::executable(pid).ok_or(Skip::Gone)?;
    let maps = procfs::mapped_files(pid).unwrap_or_default();
    let candidate = interpreter::locate(pid, &executable, &maps).ok_or(Skip::NotPython)?;
    let (version, interpreter_binary) = interpreter::version_of(&candidate)?;
    if !version.is_supported() {
        return Err(Skip::UnsupportedVersion { version });
    }
    let own_service_name = procfs::own_service_name(pid);
    let program_name = procfs::program_name(pid, &executable);
    let service_name = own_service_name.clone().unwrap_or_else(|| program_name.clone());
    let cgroup = procfs::cgroup(pid).unwrap_or_default();
    let container = container::container_of(&cgroup);
    let pod_uid = container::pod_uid_of(&cgroup);
    let mut resource = resource_for(pid, &executable, &version, &service_name);
    if let Some(container) = &container {
        put_container(&mut resource, container);
    }
    let resource = Arc::new(resource);
    Ok(PythonProcess {
        pid,
        executable,
        interpreter_binary,
        version,
        service_name,
        own_service_name,
        program_name,
        container,
        pod_uid,
        resource,
    })
}

impl PythonProcess {
    /// Named and described with what is known of it beyond its own files: the service name a
    /// configuration rule gives (`rule_name`) and its pod's metadata. `service.name`, first
    /// that applies: its own `OTEL_SERVICE_NAME`, the rule, the pod's
    /// `app.kubernetes.io/name` label, its workload's name, what it runs.
    pub fn describe_with(&mut self, rule_name: Option<&str>, pod: Option<&kubernetes::PodMetadata>) {
        let pod_name = pod.and_then(kubernetes::PodMetadata::service_name);
        self.service_name = self
            .own_service_name
            .clone()
            .or_else(|| rule_name.map(str::to_owned))
            .or(pod_name)
            .unwrap_or_else(|| self.program_name.clone());
        let mut resource = (*self.resource).clone();
        resource.attributes.insert("service.name".to_owned(), self.service_name.clone().into());
        if let Some(pod) = pod {
            let container = self.container.as_ref().map(|container| container.id.as_str());
            for (key, value) in pod.resource_attributes(container) {
                resource.attributes.insert(key.to_owned(), value.into());
            }
        }
        self.resource = Arc::new(resource);
    }

    /// The same interpreter in a forked child (gunicorn workers, multiprocessing): the parent's
    /// resource with the child's pid.
    pub fn forked(&self, child: u32) -> Self {
        let mut resource = (*self.resource).clone();
        resource.attributes.insert("process.pid".to_owned(), child.into());
        Self { pid: child, resource: Arc::new(resource), ..self.clone() }
    }
}

/// Whether task `tid` is alive and leads its own process (a thread does not).
pub fn is_process(tid: u32) -> bool {
    procfs::thread_group(tid) == Some(tid)
}

fn resource_for(pid: u32, executable: &std::path::Path, version: &PythonVersion, service: &str) -> Resource {
    let mut resource = Resource::default();
    let attrs = &mut resource.attributes;
    let mut put = |k: &str, v: AttributeValue| {
        attrs.insert(k.to_owned(), v);
    };
    put("service.name", service.into());
    put("process.pid", pid.into());
    put("process.executable.path", executable.display().to_string().into());
    put("process.runtime.name", "cpython".into());
    put("process.runtime.version", version.to_string().into());
    if let Some(host) = procfs::hostname() {
        put("host.name", host.into());
    }
    put("telemetry.sdk.name", "scouter-agent".into());
    put("telemetry.sdk.language", "python".into());
    put("telemetry.sdk.version", env!("CARGO_PKG_VERSION").into());
    put(scouter_conventions::SCOPE_KEY, scouter_conventions::scope().into());
    resource
}

/// `container.id` and `container.runtime` (OpenTelemetry's container conventions).
fn put_container(resource: &mut Resource, container: &container::ContainerId) {
    let runtime = match container.runtime {
        container::Runtime::Containerd => "containerd",
        container::Runtime::CriO => "cri-o",
        container::Runtime::Docker => "docker",
    };
    resource.attributes.insert("container.id".to_owned(), container.id.clone().into());
    resource.attributes.insert("container.runtime".to_owned(), runtime.into());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process_named(own: Option<&str>) -> PythonProcess {
        let version = PythonVersion { major: 3, minor: 12, micro: 1 };
        let executable = PathBuf::from("/usr/local/bin/python3.12");
        PythonProcess {
            pid: 10,
            executable: executable.clone(),
            interpreter_binary: executable.clone(),
            version,
            service_name: own.unwrap_or("app").into(),
            own_service_name: own.map(str::to_owned),
            program_name: "app".into(),
            container: Some(container::ContainerId { id: "ab".repeat(32), runtime: container::Runtime::Containerd }),
            pod_uid: Some("uid-1".into()),
            resource: Arc::new(resource_for(10, &executable, &version, own.unwrap_or("app"))),
        }
    }

    fn pod(label: Option<&str>, workload: Option<&str>) -> kubernetes::PodMetadata {
        kubernetes::PodMetadata {
            uid: "uid-1".into(),
            name: "cart-0".into(),
            namespace: "shop".into(),
            node_name: "node-1".into(),
            labels: label
                .map(|name| [("app.kubernetes.io/name".to_owned(), name.to_owned())].into())
                .unwrap_or_default(),
            containers: vec![kubernetes::PodContainer { name: "api".into(), id: Some("ab".repeat(32)) }],
            controller: workload
                .map(|name| kubernetes::Workload { kind: kubernetes::WorkloadKind::StatefulSet, name: name.into() }),
            workload: workload
                .map(|name| kubernetes::Workload { kind: kubernetes::WorkloadKind::StatefulSet, name: name.into() }),
        }
    }

    #[test]
    fn the_service_name_follows_its_precedence_and_the_pod_describes_the_process() {
        let named = |own: Option<&str>, rule: Option<&str>, pod_meta: Option<&kubernetes::PodMetadata>| {
            let mut process = process_named(own);
            process.describe_with(rule, pod_meta);
            process
        };
        let labelled = pod(Some("cart-api"), Some("cart"));
        let unlabelled = pod(None, Some("cart"));
        assert_eq!(named(Some("own"), Some("rule"), Some(&labelled)).service_name, "own");
        assert_eq!(named(None, Some("rule"), Some(&labelled)).service_name, "rule");
        assert_eq!(named(None, None, Some(&labelled)).service_name, "cart-api");
        assert_eq!(named(None, None, Some(&unlabelled)).service_name, "cart");
        assert_eq!(named(None, None, Some(&pod(None, None))).service_name, "app");
        let described = named(None, None, Some(&labelled));
        let attribute = |key: &str| described.resource.attributes.get(key).cloned();
        assert_eq!(attribute("service.name"), Some("cart-api".into()));
        assert_eq!(attribute("k8s.pod.name"), Some("cart-0".into()));
        assert_eq!(attribute("k8s.container.name"), Some("api".into()));
        assert_eq!(attribute("k8s.statefulset.name"), Some("cart".into()));
    }

    #[test]
    fn a_forked_child_keeps_the_parents_resource_but_its_own_pid() {
        let version = PythonVersion { major: 3, minor: 11, micro: 7 };
        let executable = PathBuf::from("/usr/bin/python3.11");
        let parent = PythonProcess {
            pid: 10,
            executable: executable.clone(),
            interpreter_binary: executable.clone(),
            version,
            service_name: "shop".into(),
            own_service_name: None,
            program_name: "shop".into(),
            container: None,
            pod_uid: None,
            resource: Arc::new(resource_for(10, &executable, &version, "shop")),
        };
        let child = parent.forked(11);
        assert_eq!(child.pid, 11);
        assert_eq!(child.resource.attributes.get("process.pid"), Some(&AttributeValue::Int(11)));
        assert_eq!(parent.resource.attributes.get("process.pid"), Some(&AttributeValue::Int(10)));
        let without_pid = |r: &Resource| {
            let mut attributes = r.attributes.clone();
            attributes.remove("process.pid");
            attributes
        };
        assert_eq!(without_pid(&child.resource), without_pid(&parent.resource));
        assert_eq!(child.resource.service_name(), "shop");
    }
}
