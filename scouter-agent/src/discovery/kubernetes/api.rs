//! The API server's JSON, reduced to the fields the agent uses; everything else is ignored, so
//! newer API versions and extra fields parse as well.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::pod::{Workload, WorkloadKind};
use super::KubernetesError;

/// A watch event is one JSON document per line; a pod is a few kilobytes, so a line this long
/// means the stream is not what we think it is.
const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Pod {
    pub metadata: ObjectMeta,
    pub spec: PodSpec,
    pub status: PodStatus,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct ObjectMeta {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub resource_version: String,
    pub labels: BTreeMap<String, String>,
    pub owner_references: Vec<OwnerReference>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct OwnerReference {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub controller: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct PodSpec {
    pub node_name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct PodStatus {
    pub container_statuses: Vec<ContainerStatus>,
    pub init_container_statuses: Vec<ContainerStatus>,
    pub ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct ContainerStatus {
    pub name: String,
    /// `<runtime>://<id>`, absent until the container is created.
    #[serde(rename = "containerID")]
    pub container_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct PodList {
    pub metadata: ListMeta,
    pub items: Vec<Pod>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct ListMeta {
    pub resource_version: String,
}

/// A ReplicaSet or a Job, for its own controller.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct OwnedObject {
    pub metadata: ObjectMeta,
}

/// The API server's error object (`kind: Status`), in error responses and `ERROR` events.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Status {
    pub code: u16,
    pub reason: String,
    pub message: String,
}

/// One line of a watch stream: `{"type": "ADDED", "object": {...}}`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", content = "object", rename_all = "UPPERCASE")]
pub(super) enum WatchEvent {
    Added(Pod),
    Modified(Pod),
    Deleted(Pod),
    /// Only `metadata.resourceVersion` is meaningful.
    Bookmark(Pod),
    Error(Status),
}

impl WatchEvent {
    pub fn parse(line: &[u8]) -> Result<Self, KubernetesError> {
        serde_json::from_slice(line).map_err(|source| KubernetesError::Parse { what: "watch event", source })
    }
}

impl Status {
    /// 410 Gone is the one error a watcher recovers from by listing again.
    pub fn into_error(self) -> KubernetesError {
        if self.code == 410 {
            KubernetesError::Expired(self.message)
        } else {
            KubernetesError::WatchError { code: self.code, reason: self.reason, message: self.message }
        }
    }
}

impl ObjectMeta {
    /// The workload controlling this object, when it is one the agent reports.
    pub fn controller(&self) -> Option<Workload> {
        self.owner_references.iter().find(|owner| owner.controller == Some(true)).and_then(OwnerReference::workload)
    }
}

impl OwnerReference {
    fn workload(&self) -> Option<Workload> {
        // The group matters: a custom resource may well be called `Job` too.
        let group = self.api_version.split_once('/').map_or("", |(group, _)| group);
        let kind = match (group, self.kind.as_str()) {
            ("apps", "Deployment") => WorkloadKind::Deployment,
            ("apps", "ReplicaSet") => WorkloadKind::ReplicaSet,
            ("apps", "StatefulSet") => WorkloadKind::StatefulSet,
            ("apps", "DaemonSet") => WorkloadKind::DaemonSet,
            ("batch", "Job") => WorkloadKind::Job,
            ("batch", "CronJob") => WorkloadKind::CronJob,
            _ => return None,
        };
        Some(Workload { kind, name: self.name.clone() })
    }
}

/// Splits a watch response body, which arrives in arbitrary chunks, into its lines (the API
/// server ends every event with a newline).
#[derive(Debug, Default)]
pub(super) struct LineBuffer {
    pending: Vec<u8>,
}

impl LineBuffer {
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), KubernetesError> {
        self.pending.extend_from_slice(chunk);
        if self.pending.len() > MAX_EVENT_BYTES && !self.pending.contains(&b'\n') {
            return Err(KubernetesError::EventTooLarge { limit: MAX_EVENT_BYTES });
        }
        Ok(())
    }

    /// The next complete, non-blank line.
    pub fn next_line(&mut self) -> Option<Vec<u8>> {
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            if !is_blank(&line) {
                return Some(line);
            }
        }
        None
    }

    /// What is left when the stream ends: a last event without its newline, if any.
    pub fn rest(&mut self) -> Option<Vec<u8>> {
        let rest = std::mem::take(&mut self.pending);
        (!is_blank(&rest)).then_some(rest)
    }
}

fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod as `kubectl get pod -o json` shows it (managedFields trimmed).
    const DEPLOYMENT_POD: &str = r#"{
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "creationTimestamp": "2024-05-02T09:14:27Z",
            "generateName": "checkout-6f7c9d8b4d-",
            "labels": {"app.kubernetes.io/name": "checkout", "pod-template-hash": "6f7c9d8b4d"},
            "name": "checkout-6f7c9d8b4d-x2kqp",
            "namespace": "shop",
            "ownerReferences": [{
                "apiVersion": "apps/v1",
                "blockOwnerDeletion": true,
                "controller": true,
                "kind": "ReplicaSet",
                "name": "checkout-6f7c9d8b4d",
                "uid": "0b6f1c77-8a7e-4b43-9a4c-2d0c7f6c9e51"
            }],
            "resourceVersion": "48211",
            "uid": "5d3c8a52-1f4e-4c1b-a0f7-3b7c2c9e6d10"
        },
        "spec": {
            "containers": [{
                "env": [{"name": "DB_PASSWORD", "value": "hunter2"}],
                "image": "registry.example.com/checkout:1.4.2",
                "name": "app"
            }],
            "initContainers": [{"image": "busybox:1.36", "name": "migrate"}],
            "nodeName": "worker-2",
            "serviceAccountName": "default"
        },
        "status": {
            "conditions": [
                {"lastProbeTime": null, "lastTransitionTime": "2024-05-02T09:14:31Z", "status": "True", "type": "Ready"}
            ],
            "containerStatuses": [{
                "containerID": "containerd://9f2c4e0c2b8a7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e",
                "image": "registry.example.com/checkout:1.4.2",
                "imageID": "registry.example.com/checkout@sha256:4b1c",
                "lastState": {},
                "name": "app",
                "ready": true,
                "restartCount": 0,
                "started": true,
                "state": {"running": {"startedAt": "2024-05-02T09:14:30Z"}}
            }],
            "initContainerStatuses": [{
                "containerID": "containerd://1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b",
                "name": "migrate",
                "ready": true,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}
            }],
            "hostIP": "10.0.3.12",
            "phase": "Running",
            "podIP": "10.244.2.17",
            "qosClass": "Burstable",
            "startTime": "2024-05-02T09:14:27Z"
        }
    }"#;

    #[test]
    fn a_pod_parses_to_the_fields_the_agent_uses() {
        let pod: Pod = serde_json::from_str(DEPLOYMENT_POD).unwrap();
        assert_eq!(pod.metadata.name, "checkout-6f7c9d8b4d-x2kqp");
        assert_eq!(pod.metadata.namespace, "shop");
        assert_eq!(pod.metadata.uid, "5d3c8a52-1f4e-4c1b-a0f7-3b7c2c9e6d10");
        assert_eq!(pod.metadata.resource_version, "48211");
        assert_eq!(pod.metadata.labels["app.kubernetes.io/name"], "checkout");
        assert_eq!(pod.spec.node_name, "worker-2");
        assert_eq!(pod.status.container_statuses[0].name, "app");
        assert_eq!(pod.status.init_container_statuses[0].name, "migrate");
        assert_eq!(
            pod.metadata.controller(),
            Some(Workload { kind: WorkloadKind::ReplicaSet, name: "checkout-6f7c9d8b4d".into() })
        );
    }

    #[test]
    fn only_a_controller_of_a_known_group_and_kind_is_a_workload() {
        let meta = |owners: &str| -> ObjectMeta {
            serde_json::from_str(&format!(r#"{{"ownerReferences": {owners}}}"#)).unwrap()
        };
        let not_controller = meta(r#"[{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "a"}]"#);
        assert_eq!(not_controller.controller(), None);
        let custom_job = meta(r#"[{"apiVersion": "example.com/v1", "kind": "Job", "name": "a", "controller": true}]"#);
        assert_eq!(custom_job.controller(), None);
        let static_pod = meta(r#"[{"apiVersion": "v1", "kind": "Node", "name": "worker-2", "controller": true}]"#);
        assert_eq!(static_pod.controller(), None);
        let cron = meta(
            r#"[{"apiVersion": "v1", "kind": "ConfigMap", "name": "x"},
                {"apiVersion": "batch/v1", "kind": "CronJob", "name": "nightly", "controller": true}]"#,
        );
        assert_eq!(cron.controller(), Some(Workload { kind: WorkloadKind::CronJob, name: "nightly".into() }));
    }

    #[test]
    fn watch_events_of_every_type_parse() {
        let added = format!(r#"{{"type":"ADDED","object":{DEPLOYMENT_POD}}}"#);
        let WatchEvent::Added(pod) = WatchEvent::parse(added.as_bytes()).unwrap() else { panic!("not ADDED") };
        assert_eq!(pod.metadata.name, "checkout-6f7c9d8b4d-x2kqp");
        // Lines as the API server sends them; a bookmark is a pod that is only a resourceVersion.
        let bookmark = concat!(
            r#"{"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"48377","#,
            r#""creationTimestamp":null,"annotations":{"k8s.io/initial-events-end":"true"}},"#,
            r#""spec":{"containers":null},"status":{}}}"#
        );
        let WatchEvent::Bookmark(pod) = WatchEvent::parse(bookmark.as_bytes()).unwrap() else { panic!("not BOOKMARK") };
        assert_eq!(pod.metadata.resource_version, "48377");
        let expired = concat!(
            r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","#,
            r#""message":"too old resource version: 48211 (48900)","reason":"Expired","code":410}}"#
        );
        let WatchEvent::Error(status) = WatchEvent::parse(expired.as_bytes()).unwrap() else { panic!("not ERROR") };
        assert!(matches!(status.into_error(), KubernetesError::Expired(m) if m.contains("too old")));
        let internal = concat!(
            r#"{"type":"ERROR","object":{"kind":"Status","status":"Failure","message":"etcd timeout","#,
            r#""reason":"InternalError","code":500}}"#
        );
        let WatchEvent::Error(status) = WatchEvent::parse(internal.as_bytes()).unwrap() else { panic!("not ERROR") };
        assert!(matches!(status.into_error(), KubernetesError::WatchError { code: 500, .. }));
        assert!(WatchEvent::parse(b"{\"type\":\"UNKNOWN\",\"object\":{}}").is_err());
        assert!(WatchEvent::parse(b"<html>").is_err());
    }

    #[test]
    fn lines_are_reassembled_from_arbitrary_chunks() {
        let mut lines = LineBuffer::default();
        lines.push(b"{\"a\":").unwrap();
        assert_eq!(lines.next_line(), None);
        lines.push(b"1}\n\n{\"b\"").unwrap();
        assert_eq!(lines.next_line().as_deref(), Some(&b"{\"a\":1}\n"[..]));
        assert_eq!(lines.next_line(), None);
        lines.push(b":2}\n{\"c\":3}").unwrap();
        assert_eq!(lines.next_line().as_deref(), Some(&b"{\"b\":2}\n"[..]));
        assert_eq!(lines.next_line(), None);
        assert_eq!(lines.rest().as_deref(), Some(&b"{\"c\":3}"[..]));
        assert_eq!(lines.rest(), None);
    }

    #[test]
    fn a_line_without_end_is_refused_past_the_limit() {
        let mut lines = LineBuffer::default();
        let chunk = vec![b'x'; 1024 * 1024];
        let result = (0..=16).try_for_each(|_| lines.push(&chunk));
        assert!(matches!(result, Err(KubernetesError::EventTooLarge { .. })));
    }
}
