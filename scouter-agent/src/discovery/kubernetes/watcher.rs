//! The list-then-watch loop that keeps a [`PodDirectory`] current.

use std::convert::Infallible;
use std::time::Duration;

use rand::Rng as _;
use tokio::sync::mpsc::UnboundedSender;

use super::api::{Pod, WatchEvent};
use super::client::{ApiServer, Connection, ListFrom};
use super::directory::{PodChange, PodDirectory};
use super::owners::Owners;
use super::pod::PodMetadata;
use super::KubernetesError;
use crate::errors::with_causes;

/// Timing of the watcher; the default suits production, tests shorten it.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    /// The first retry delay after a failure; it doubles at each further failure.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// How long the API server keeps one watch open (`timeoutSeconds`) before the watcher
    /// reopens it.
    pub watch_timeout: Duration,
    /// For a pod list, which can be slow on a large cluster when read from etcd.
    pub list_timeout: Duration,
    /// For connecting and for owner lookups.
    pub request_timeout: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            watch_timeout: Duration::from_secs(300),
            list_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Keeps `directory` equal to the pods on `node_name` until the task is dropped or aborted,
/// and sends a [`PodChange`] on `changed` after each change. Never returns: failures are
/// logged and retried.
pub async fn watch_pods(
    api: ApiServer,
    node_name: String,
    directory: PodDirectory,
    changed: UnboundedSender<PodChange>,
) {
    watch_pods_with(api, node_name, directory, changed, WatchOptions::default()).await
}

/// [`watch_pods`] with its timing given.
pub async fn watch_pods_with(
    api: ApiServer,
    node_name: String,
    directory: PodDirectory,
    changed: UnboundedSender<PodChange>,
    options: WatchOptions,
) {
    let streak = FailureStreak::new(&options);
    let mut watcher = Watcher {
        api,
        node: node_name,
        directory,
        changed,
        options,
        owners: Owners::default(),
        streak,
        listed_once: false,
        progressed: false,
    };
    watcher.run().await
}

struct Watcher {
    api: ApiServer,
    node: String,
    directory: PodDirectory,
    changed: UnboundedSender<PodChange>,
    options: WatchOptions,
    owners: Owners,
    streak: FailureStreak,
    listed_once: bool,
    /// Whether the current session's watch delivered an event: a 410 after progress is the
    /// normal end of a long watch, one right after listing would loop without a pause.
    progressed: bool,
}

impl Watcher {
    async fn run(&mut self) {
        let mut from = ListFrom::Cache;
        loop {
            let Err(error) = self.session(from).await;
            let expired = matches!(error, KubernetesError::Expired(_));
            // After a 410 the watch cache may lag behind what we already saw: read etcd.
            from = if expired { ListFrom::Storage } else { ListFrom::Cache };
            if expired && self.progressed {
                tracing::debug!(error = %error, "pod watch expired; listing again");
                continue;
            }
            let delay = self.streak.failed(&error);
            tokio::time::sleep(delay).await;
        }
    }

    /// Lists the node's pods, then watches them until something goes wrong.
    async fn session(&mut self, from: ListFrom) -> Result<Infallible, KubernetesError> {
        self.progressed = false;
        let connection = self.api.connect(&self.options)?;
        let mut resource_version = self.relist(&connection, from).await?;
        loop {
            let mut stream = connection.watch_pods(&self.node, &resource_version).await?;
            let mut events = 0_usize;
            while let Some(event) = stream.next_event().await? {
                self.apply(&connection, event, &mut resource_version).await?;
                self.made_progress();
                events += 1;
            }
            // The server closed the watch, normally at its timeout: resume where we are, no list
            // needed. One that closes at once with nothing in it (a proxy cutting it short)
            // would otherwise be reopened in a tight loop.
            if events == 0 {
                tokio::time::sleep(self.options.min_backoff).await;
            }
        }
    }

    /// Replaces the directory with a fresh list; the list's version to watch from.
    async fn relist(&mut self, connection: &Connection, from: ListFrom) -> Result<String, KubernetesError> {
        let list = connection.list_pods(&self.node, from).await?;
        let on_this_node: Vec<Pod> = list.items.into_iter().filter(|pod| pod.spec.node_name == self.node).collect();
        let mut pods = Vec::with_capacity(on_this_node.len());
        for pod in on_this_node {
            pods.push(self.describe(connection, pod).await);
        }
        for change in self.directory.replace_all(pods) {
            self.notify(change);
        }
        let pods = self.directory.len();
        if !self.listed_once {
            tracing::info!(node = %self.node, pods, "listed this node's pods from the Kubernetes API server");
            self.listed_once = true;
        } else {
            tracing::debug!(pods, ?from, "listed this node's pods again");
        }
        Ok(list.metadata.resource_version)
    }

    async fn apply(
        &mut self,
        connection: &Connection,
        event: WatchEvent,
        resource_version: &mut String,
    ) -> Result<(), KubernetesError> {
        let (pod, deleted) = match event {
            WatchEvent::Added(pod) | WatchEvent::Modified(pod) => (pod, false),
            WatchEvent::Deleted(pod) => (pod, true),
            WatchEvent::Bookmark(pod) => {
                advance(resource_version, pod.metadata.resource_version);
                return Ok(());
            }
            WatchEvent::Error(status) => return Err(status.into_error()),
        };
        advance(resource_version, pod.metadata.resource_version.clone());
        let change = if deleted {
            self.directory.remove(&pod.metadata.uid)
        } else if pod.spec.node_name == self.node {
            let pod = self.describe(connection, pod).await;
            self.directory.upsert(pod)
        } else {
            None
        };
        if let Some(change) = change {
            self.notify(change);
        }
        Ok(())
    }

    async fn describe(&mut self, connection: &Connection, pod: Pod) -> PodMetadata {
        let controller = pod.metadata.controller();
        let workload = match &controller {
            Some(controller) => Some(self.owners.workload_of(connection, &pod.metadata.namespace, controller).await),
            None => None,
        };
        PodMetadata::new(pod, controller, workload)
    }

    fn notify(&self, change: PodChange) {
        // The agent may have stopped listening; the directory is still worth keeping current.
        let _ = self.changed.send(change);
    }

    fn made_progress(&mut self) {
        self.progressed = true;
        self.streak.ended();
    }
}

/// The version to resume a watch from: the latest seen (a bookmark's may come alone).
fn advance(resource_version: &mut String, seen: String) {
    if !seen.is_empty() {
        *resource_version = seen;
    }
}

/// Consecutive failures: the retry delay grows with them, and only the first is a warning.
struct FailureStreak {
    failures: u32,
    min: Duration,
    max: Duration,
    next: Duration,
}

impl FailureStreak {
    fn new(options: &WatchOptions) -> Self {
        let min = options.min_backoff;
        Self { failures: 0, min, max: options.max_backoff.max(min), next: min }
    }

    /// Records a failure; how long to wait before trying again.
    fn failed(&mut self, error: &KubernetesError) -> Duration {
        let error = with_causes(error);
        if self.failures == 0 {
            tracing::warn!(error, "cannot watch this node's pods on the Kubernetes API server; retrying");
        } else {
            tracing::debug!(error, failures = self.failures + 1, "pod watch still failing");
        }
        self.failures += 1;
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        jittered(delay)
    }

    /// The watch works again.
    fn ended(&mut self) {
        if self.failures > 0 {
            tracing::info!(failures = self.failures, "watching this node's pods again");
        }
        self.failures = 0;
        self.next = self.min;
    }
}

/// Somewhere in the upper half of `delay`: when the API server comes back, every node's agent
/// would otherwise reconnect in the same instant.
fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}
