//! A pod's workload: its controller, or the controller's own controller for a ReplicaSet (its
//! Deployment) and a Job (its CronJob).

use std::collections::{HashMap, VecDeque};

use super::client::Connection;
use super::pod::{Workload, WorkloadKind};
use crate::errors::with_causes;

/// Far more than the distinct ReplicaSets and Jobs behind one node's pods; the bound only
/// keeps a long-running agent on a busy node (a CronJob every minute) from growing forever.
const CAPACITY: usize = 1024;

/// Controllers looked up so far, by (kind, namespace, name); the oldest are forgotten first.
#[derive(Debug, Default)]
pub(super) struct Owners {
    /// `None`: the object has no controller the agent reports (a bare ReplicaSet or Job).
    resolved: HashMap<OwnerKey, Option<Workload>>,
    order: VecDeque<OwnerKey>,
    /// Whether the last lookup failed, to warn once per run of failures, not per pod.
    failing: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct OwnerKey {
    kind: WorkloadKind,
    namespace: String,
    name: String,
}

impl Owners {
    /// The workload a pod of `namespace` controlled by `controller` belongs to. A failed lookup
    /// gives the controller itself, and is tried again next time.
    pub async fn workload_of(&mut self, connection: &Connection, namespace: &str, controller: &Workload) -> Workload {
        let Some(wanted) = workload_above(controller.kind) else { return controller.clone() };
        let key = OwnerKey { kind: controller.kind, namespace: namespace.to_owned(), name: controller.name.clone() };
        let parent = match self.resolved.get(&key) {
            Some(parent) => parent.clone(),
            None => match connection.controller_of(namespace, controller).await {
                Ok(parent) => {
                    self.lookup_succeeded();
                    let parent = parent.filter(|parent| parent.kind == wanted);
                    self.remember(key, parent.clone());
                    parent
                }
                Err(error) => {
                    self.lookup_failed(&key, &error);
                    None
                }
            },
        };
        parent.unwrap_or_else(|| controller.clone())
    }

    fn remember(&mut self, key: OwnerKey, parent: Option<Workload>) {
        if self.order.len() >= CAPACITY {
            if let Some(oldest) = self.order.pop_front() {
                self.resolved.remove(&oldest);
            }
        }
        self.order.push_back(key.clone());
        self.resolved.insert(key, parent);
    }

    fn lookup_succeeded(&mut self) {
        self.failing = false;
    }

    fn lookup_failed(&mut self, key: &OwnerKey, error: &super::KubernetesError) {
        let (kind, namespace, name) = (format!("{:?}", key.kind), &key.namespace, &key.name);
        let error = with_causes(error);
        if self.failing {
            tracing::debug!(kind, namespace, name, error, "cannot look up a pod's workload");
        } else {
            tracing::warn!(
                kind,
                namespace,
                name,
                error,
                "cannot look up a pod's workload (does the agent's role allow `get` on replicasets and jobs?); \
                 reporting its direct controller until a lookup succeeds"
            );
        }
        self.failing = true;
    }
}

/// The kind whose name is worth a lookup: a Deployment names a service better than the
/// ReplicaSet of one of its rollouts, and a CronJob better than one of its runs.
fn workload_above(kind: WorkloadKind) -> Option<WorkloadKind> {
    match kind {
        WorkloadKind::ReplicaSet => Some(WorkloadKind::Deployment),
        WorkloadKind::Job => Some(WorkloadKind::CronJob),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> OwnerKey {
        OwnerKey { kind: WorkloadKind::ReplicaSet, namespace: "ns".into(), name: name.into() }
    }

    #[test]
    fn the_cache_forgets_its_oldest_entries_past_its_capacity() {
        let mut owners = Owners::default();
        for i in 0..CAPACITY + 10 {
            owners.remember(key(&i.to_string()), None);
        }
        assert_eq!(owners.resolved.len(), CAPACITY);
        assert_eq!(owners.order.len(), CAPACITY);
        assert!(!owners.resolved.contains_key(&key("9")));
        assert!(owners.resolved.contains_key(&key("10")));
    }
}
