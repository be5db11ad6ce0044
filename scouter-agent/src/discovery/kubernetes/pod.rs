//! What the agent keeps of a pod, and the OpenTelemetry attributes it gives a process.

use std::collections::BTreeMap;

use super::api::{ContainerStatus, Pod};

/// The label recommended by Kubernetes for the application's name, OpenTelemetry's first
/// choice for `service.name` on Kubernetes.
const APP_NAME_LABEL: &str = "app.kubernetes.io/name";
/// Set by the Deployment controller on its ReplicaSets and their pods.
const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// What the agent knows about a pod on its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodMetadata {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub node_name: String,
    pub labels: BTreeMap<String, String>,
    /// Containers, init containers and ephemeral containers, with their runtime ids once
    /// created.
    pub containers: Vec<PodContainer>,
    /// The pod's direct controller, as its `ownerReferences` name it: a ReplicaSet,
    /// StatefulSet, DaemonSet or Job.
    pub controller: Option<Workload>,
    /// The owning workload, resolved: a Deployment through its ReplicaSet, a CronJob through
    /// its Job; otherwise (or when the lookup failed) the direct controller.
    pub workload: Option<Workload>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodContainer {
    pub name: String,
    /// The runtime's container id: the `<id>` of `containerID: "containerd://<id>"` (also
    /// `cri-o://`, `docker://`), the id a process's cgroup path shows.
    pub id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    Deployment,
    ReplicaSet,
    StatefulSet,
    DaemonSet,
    Job,
    CronJob,
}

impl WorkloadKind {
    /// The OpenTelemetry resource attribute naming a workload of this kind.
    pub fn attribute_key(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "k8s.deployment.name",
            WorkloadKind::ReplicaSet => "k8s.replicaset.name",
            WorkloadKind::StatefulSet => "k8s.statefulset.name",
            WorkloadKind::DaemonSet => "k8s.daemonset.name",
            WorkloadKind::Job => "k8s.job.name",
            WorkloadKind::CronJob => "k8s.cronjob.name",
        }
    }
}

impl PodMetadata {
    pub(super) fn new(pod: Pod, controller: Option<Workload>, workload: Option<Workload>) -> Self {
        let status = pod.status;
        let containers =
            [status.container_statuses, status.init_container_statuses, status.ephemeral_container_statuses]
                .into_iter()
                .flatten()
                .map(PodContainer::from)
                .collect();
        let meta = pod.metadata;
        Self {
            uid: meta.uid,
            name: meta.name,
            namespace: meta.namespace,
            node_name: pod.spec.node_name,
            labels: meta.labels,
            containers,
            controller,
            workload,
        }
    }

    /// OpenTelemetry resource attributes (semantic conventions `k8s.*`) for a process of this
    /// pod: the pod, its namespace and node, its controller and workload (a Deployment's pod
    /// names both the Deployment and the ReplicaSet, a CronJob's both the CronJob and the
    /// Job), and the container when `container_id` is one of the pod's.
    pub fn resource_attributes(&self, container_id: Option<&str>) -> Vec<(&'static str, String)> {
        let mut attributes = vec![
            ("k8s.pod.name", self.name.clone()),
            ("k8s.pod.uid", self.uid.clone()),
            ("k8s.namespace.name", self.namespace.clone()),
        ];
        if !self.node_name.is_empty() {
            attributes.push(("k8s.node.name", self.node_name.clone()));
        }
        let resolved = self.workload.as_ref().filter(|workload| Some(*workload) != self.controller.as_ref());
        for owner in self.controller.iter().chain(resolved) {
            attributes.push((owner.kind.attribute_key(), owner.name.clone()));
        }
        if let Some(container) = container_id.and_then(|id| self.container_name(id)) {
            attributes.push(("k8s.container.name", container.to_owned()));
        }
        attributes
    }

    /// The service name the pod suggests: its `app.kubernetes.io/name` label, else its
    /// workload's name.
    pub fn service_name(&self) -> Option<String> {
        if let Some(name) = self.labels.get(APP_NAME_LABEL).filter(|name| !name.is_empty()) {
            return Some(name.clone());
        }
        let workload = self.workload.as_ref()?;
        let name = match workload.kind {
            // The Deployment could not be looked up, but its ReplicaSets are named
            // `<deployment>-<pod-template-hash>`: the name without the hash is stable across
            // rollouts, as a service name should be.
            WorkloadKind::ReplicaSet => self.name_without_template_hash(&workload.name).unwrap_or(&workload.name),
            _ => &workload.name,
        };
        Some(name.to_owned())
    }

    /// The name of the container whose runtime id is `container_id`.
    pub fn container_name(&self, container_id: &str) -> Option<&str> {
        self.containers.iter().find(|c| c.id.as_deref() == Some(container_id)).map(|c| c.name.as_str())
    }

    /// The runtime ids of the pod's created containers.
    pub fn container_ids(&self) -> impl Iterator<Item = &str> {
        self.containers.iter().filter_map(|c| c.id.as_deref())
    }

    fn name_without_template_hash<'a>(&self, replica_set: &'a str) -> Option<&'a str> {
        let hash = self.labels.get(POD_TEMPLATE_HASH_LABEL)?;
        replica_set.strip_suffix(hash.as_str())?.strip_suffix('-').filter(|name| !name.is_empty())
    }
}

impl From<ContainerStatus> for PodContainer {
    fn from(status: ContainerStatus) -> Self {
        let id = status.container_id.as_deref().and_then(runtime_container_id).map(str::to_owned);
        Self { name: status.name, id }
    }
}

/// `containerd://<id>` → `<id>`; whatever the runtime, the id follows its scheme.
fn runtime_container_id(container_id: &str) -> Option<&str> {
    let (_runtime, id) = container_id.split_once("://")?;
    (!id.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP_ID: &str = "9f2c4e0c2b8a7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e";

    fn workload(kind: WorkloadKind, name: &str) -> Option<Workload> {
        Some(Workload { kind, name: name.into() })
    }

    fn checkout_pod() -> PodMetadata {
        PodMetadata {
            uid: "5d3c8a52-1f4e-4c1b-a0f7-3b7c2c9e6d10".into(),
            name: "checkout-6f7c9d8b4d-x2kqp".into(),
            namespace: "shop".into(),
            node_name: "worker-2".into(),
            labels: [("pod-template-hash".to_owned(), "6f7c9d8b4d".to_owned())].into(),
            containers: vec![
                PodContainer { name: "app".into(), id: Some(APP_ID.into()) },
                PodContainer { name: "sidecar".into(), id: None },
            ],
            controller: workload(WorkloadKind::ReplicaSet, "checkout-6f7c9d8b4d"),
            workload: workload(WorkloadKind::Deployment, "checkout"),
        }
    }

    #[test]
    fn a_deployment_pod_has_pod_namespace_node_deployment_replicaset_and_container() {
        let attributes = checkout_pod().resource_attributes(Some(APP_ID));
        let expected = [
            ("k8s.pod.name", "checkout-6f7c9d8b4d-x2kqp"),
            ("k8s.pod.uid", "5d3c8a52-1f4e-4c1b-a0f7-3b7c2c9e6d10"),
            ("k8s.namespace.name", "shop"),
            ("k8s.node.name", "worker-2"),
            ("k8s.replicaset.name", "checkout-6f7c9d8b4d"),
            ("k8s.deployment.name", "checkout"),
            ("k8s.container.name", "app"),
        ];
        assert_eq!(attributes, expected.map(|(k, v)| (k, v.to_owned())));
    }

    #[test]
    fn an_unknown_container_id_adds_no_container_name() {
        let pod = checkout_pod();
        for id in [None, Some("0000"), Some("")] {
            assert!(pod.resource_attributes(id).iter().all(|(key, _)| *key != "k8s.container.name"));
        }
    }

    #[test]
    fn a_workload_that_is_its_own_controller_is_named_once() {
        let pod = PodMetadata {
            controller: workload(WorkloadKind::StatefulSet, "postgres"),
            workload: workload(WorkloadKind::StatefulSet, "postgres"),
            ..checkout_pod()
        };
        let owners: Vec<_> =
            pod.resource_attributes(None).into_iter().filter(|(k, _)| k.ends_with("set.name")).collect();
        assert_eq!(owners, [("k8s.statefulset.name", "postgres".to_owned())]);
    }

    #[test]
    fn a_cronjob_pod_names_the_cronjob_and_its_job() {
        let pod = PodMetadata {
            controller: workload(WorkloadKind::Job, "nightly-28571520"),
            workload: workload(WorkloadKind::CronJob, "nightly"),
            ..checkout_pod()
        };
        let attributes = pod.resource_attributes(None);
        assert!(attributes.contains(&("k8s.job.name", "nightly-28571520".into())));
        assert!(attributes.contains(&("k8s.cronjob.name", "nightly".into())));
    }

    #[test]
    fn the_service_name_is_the_app_label_then_the_workload() {
        let mut pod = checkout_pod();
        assert_eq!(pod.service_name().as_deref(), Some("checkout"));
        pod.labels.insert("app.kubernetes.io/name".into(), "checkout-api".into());
        assert_eq!(pod.service_name().as_deref(), Some("checkout-api"));
        pod.labels.insert("app.kubernetes.io/name".into(), String::new());
        assert_eq!(pod.service_name().as_deref(), Some("checkout"));
        let bare = PodMetadata { labels: BTreeMap::new(), controller: None, workload: None, ..checkout_pod() };
        assert_eq!(bare.service_name(), None);
        let daemon = PodMetadata { workload: workload(WorkloadKind::DaemonSet, "node-exporter"), ..bare };
        assert_eq!(daemon.service_name().as_deref(), Some("node-exporter"));
    }

    #[test]
    fn an_unresolved_replicaset_gives_the_deployment_name_its_hash_implies() {
        let pod = PodMetadata { workload: workload(WorkloadKind::ReplicaSet, "checkout-6f7c9d8b4d"), ..checkout_pod() };
        assert_eq!(pod.service_name().as_deref(), Some("checkout"));
        let foreign = PodMetadata { workload: workload(WorkloadKind::ReplicaSet, "legacy-rs"), ..pod.clone() };
        assert_eq!(foreign.service_name().as_deref(), Some("legacy-rs"));
    }

    #[test]
    fn container_ids_lose_their_runtime_scheme() {
        for (raw, id) in [
            ("containerd://9f2c4e0c", Some("9f2c4e0c")),
            ("cri-o://ab12", Some("ab12")),
            ("docker://cd34", Some("cd34")),
            ("containerd://", None),
            ("9f2c4e0c", None),
        ] {
            assert_eq!(runtime_container_id(raw), id, "{raw}");
        }
        let waiting = ContainerStatus { name: "app".into(), container_id: None };
        assert_eq!(PodContainer::from(waiting), PodContainer { name: "app".into(), id: None });
    }
}
