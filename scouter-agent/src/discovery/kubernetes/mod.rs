//! Kubernetes pod metadata for the processes the agent traces on its node.
//!
//! The agent runs as a DaemonSet, one per node, and only cares about the pods scheduled on its
//! own node: a traced process is matched to its pod by the container id found in its cgroup
//! (`discovery::container`), and the pod gives the span resource its `k8s.*` attributes and,
//! often, its service name.
//!
//! # List, then watch
//!
//! [`watch_pods`] keeps a [`PodDirectory`] in step with the API server the way Kubernetes'
//! own controllers do:
//! - **List** `GET /api/v1/pods?fieldSelector=spec.nodeName=<node>`: every pod of this node, in
//!   every namespace, with the list's `resourceVersion`. The field selector makes the API server
//!   filter, so a node's agent receives its ~100 pods, not the cluster's thousands; a thousand
//!   agents each receiving every pod change would load the API server for nothing.
//! - **Watch** the same query with `watch=true&resourceVersion=<rv>`: the changes after the
//!   list, one JSON event per line (`ADDED`, `MODIFIED`, `DELETED`), nothing missed in between.
//!   The request asks the server to end the stream after `timeoutSeconds` (5 minutes), so a
//!   silently dead connection cannot hold the watcher forever; the watcher then watches again
//!   from the last `resourceVersion` it saw, without listing.
//! - **Bookmarks** (`allowWatchBookmarks=true`): the server periodically sends the current
//!   `resourceVersion` even when none of our pods changed, so a watch resumed after a quiet hour
//!   starts from a recent version instead of one the server has already forgotten.
//! - **410 Gone** (an `ERROR` event with code 410, or HTTP 410 on the watch request): the
//!   server no longer keeps history back to our `resourceVersion` (etcd compacted it), so
//!   changes may have been missed: the watcher lists again, this time a consistent read (no
//!   `resourceVersion=0`), and the directory becomes exactly the new list. Pods that vanished
//!   during the gap are reported deleted.
//! - **Connection errors** (API server restart, network, 5xx): retried with a capped
//!   exponential backoff (0.5 s to 30 s, jittered so a DaemonSet's agents do not all come back
//!   at the same instant), then a fresh list, since the watch history may be gone too.
//!   The first list and relists after errors use `resourceVersion=0`: served from the API
//!   server's watch cache, which spares etcd when every node reconnects at once.
//!
//! The service-account token is re-read from its file at every request: projected tokens are
//! rotated by the kubelet while the agent runs. The client (with the cluster CA) is rebuilt at
//! every relist for the same reason.
//!
//! # Workloads
//!
//! A pod names its direct controller in `metadata.ownerReferences` (`controller: true`): a
//! ReplicaSet, StatefulSet, DaemonSet or Job. A Deployment and a CronJob are one level up, so
//! a ReplicaSet or a Job is fetched once to read its own controller; the answers are cached by
//! (kind, namespace, name) with a bounded size, since every pod of a ReplicaSet shares it. A
//! failed lookup (403, 404, timeout) is not cached: the pod keeps its direct controller as its
//! workload and the lookup is tried again on the pod's next update. Every request has a
//! timeout, so a slow lookup delays the watch by seconds at most.
//!
//! # What is read, and the RBAC it needs
//!
//! Only pods (`get`, `list`, `watch`), ReplicaSets (`get`, apps group) and Jobs (`get`, batch
//! group); nothing is written. Of each object only the fields below are parsed, everything
//! else is ignored: pod `metadata` (name, namespace, uid, labels, ownerReferences,
//! resourceVersion), `spec.nodeName`, and the names and `containerID`s of
//! `status.{containerStatuses,initContainerStatuses,ephemeralContainerStatuses}`. Pod specs
//! (environment variables, and so secrets passed that way) are never kept.

mod api;
mod client;
mod directory;
mod owners;
mod pod;
mod watcher;

#[cfg(test)]
mod tests;

// The module's API. The agent names only part of it (it reads fields of the other types, and
// runs with the default timing), and a binary crate warns about re-exports nobody names.
#[allow(unused_imports)]
pub use self::{
    client::ApiServer,
    directory::{PodChange, PodChangeKind, PodDirectory},
    pod::{PodContainer, PodMetadata, Workload, WorkloadKind},
    watcher::{watch_pods, watch_pods_with, WatchOptions},
};

use std::path::PathBuf;

/// Why the API server could not be reached or understood.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error("not running in a Kubernetes pod: {0} is not set")]
    NotInCluster(&'static str),
    #[error("cannot read {}: {source}", path.display())]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("{} is empty", path.display())]
    EmptyFile { path: PathBuf },
    #[error("invalid API server address {address:?}: {reason}")]
    BadAddress { address: String, reason: String },
    #[error("cannot read the CA certificates in {}: {source}", path.display())]
    BadCa { path: PathBuf, source: reqwest::Error },
    #[error("cannot set up the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("request to the API server failed: {0}")]
    Request(#[from] reqwest::Error),
    #[error("the API server answered {what} with HTTP {status}: {message}")]
    Status { what: &'static str, status: u16, message: String },
    /// 410 Gone: the resource version asked for is older than the server's history.
    #[error("resource version expired: {0}")]
    Expired(String),
    #[error("the watch reported an error: {code} {reason}: {message}")]
    WatchError { code: u16, reason: String, message: String },
    #[error("cannot parse the API server's {what}: {source}")]
    Parse { what: &'static str, source: serde_json::Error },
    #[error("a watch event is larger than {limit} bytes")]
    EventTooLarge { limit: usize },
}
