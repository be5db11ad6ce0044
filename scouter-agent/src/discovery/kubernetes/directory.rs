//! The pods of this node, as last seen from the API server.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::pod::PodMetadata;

/// The pods on this node, shared between the watcher (the only writer) and the agent; cheap to
/// clone.
#[derive(Clone, Debug, Default)]
pub struct PodDirectory {
    pods: Arc<RwLock<Pods>>,
}

/// A pod appeared, changed or went away; sent by the watcher after the directory is updated,
/// so the agent can re-decorate that pod's processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodChange {
    pub uid: String,
    pub kind: PodChangeKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodChangeKind {
    Added,
    Updated,
    Deleted,
}

#[derive(Debug, Default)]
struct Pods {
    by_uid: HashMap<String, Arc<PodMetadata>>,
    by_container_id: HashMap<String, Arc<PodMetadata>>,
}

impl PodDirectory {
    pub fn by_uid(&self, uid: &str) -> Option<Arc<PodMetadata>> {
        self.read().by_uid.get(uid).cloned()
    }

    /// The pod running the container whose runtime id (64 hex digits, as in the process's
    /// cgroup path) is `id`.
    pub fn by_container_id(&self, id: &str) -> Option<Arc<PodMetadata>> {
        self.read().by_container_id.get(id).cloned()
    }

    pub fn len(&self) -> usize {
        self.read().by_uid.len()
    }

    /// Adds or replaces a pod; `None` when nothing the agent keeps changed.
    pub(super) fn upsert(&self, pod: PodMetadata) -> Option<PodChange> {
        self.write().upsert(pod)
    }

    pub(super) fn remove(&self, uid: &str) -> Option<PodChange> {
        self.write().remove(uid).then(|| PodChange { uid: uid.to_owned(), kind: PodChangeKind::Deleted })
    }

    /// Makes the directory exactly `pods` (a fresh list), and says what changed.
    pub(super) fn replace_all(&self, pods: Vec<PodMetadata>) -> Vec<PodChange> {
        let mut current = self.write();
        let listed: HashSet<&str> = pods.iter().map(|pod| pod.uid.as_str()).collect();
        let gone: Vec<String> = current.by_uid.keys().filter(|uid| !listed.contains(uid.as_str())).cloned().collect();
        let mut changes = Vec::new();
        for uid in gone {
            current.remove(&uid);
            changes.push(PodChange { uid, kind: PodChangeKind::Deleted });
        }
        changes.extend(pods.into_iter().filter_map(|pod| current.upsert(pod)));
        changes
    }

    // A panic elsewhere while holding the lock leaves whole entries (each write replaces an
    // Arc), so the data stays usable.
    fn read(&self) -> RwLockReadGuard<'_, Pods> {
        self.pods.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Pods> {
        self.pods.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Pods {
    fn upsert(&mut self, pod: PodMetadata) -> Option<PodChange> {
        let kind = match self.by_uid.get(&pod.uid) {
            Some(known) if **known == pod => return None,
            Some(_) => PodChangeKind::Updated,
            None => PodChangeKind::Added,
        };
        self.remove(&pod.uid);
        let pod = Arc::new(pod);
        for id in pod.container_ids() {
            self.by_container_id.insert(id.to_owned(), Arc::clone(&pod));
        }
        let uid = pod.uid.clone();
        self.by_uid.insert(uid.clone(), pod);
        Some(PodChange { uid, kind })
    }

    fn remove(&mut self, uid: &str) -> bool {
        let Some(pod) = self.by_uid.remove(uid) else { return false };
        for id in pod.container_ids() {
            self.by_container_id.remove(id);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::kubernetes::pod::PodContainer;

    fn pod(uid: &str, container_ids: &[&str]) -> PodMetadata {
        PodMetadata {
            uid: uid.into(),
            name: format!("pod-{uid}"),
            namespace: "default".into(),
            node_name: "worker-1".into(),
            labels: Default::default(),
            containers: container_ids
                .iter()
                .enumerate()
                .map(|(i, id)| PodContainer { name: format!("c{i}"), id: Some((*id).into()) })
                .collect(),
            controller: None,
            workload: None,
        }
    }

    fn change(uid: &str, kind: PodChangeKind) -> Option<PodChange> {
        Some(PodChange { uid: uid.into(), kind })
    }

    #[test]
    fn pods_are_found_by_uid_and_container_id_until_removed() {
        let directory = PodDirectory::default();
        assert_eq!(directory.len(), 0);
        assert_eq!(directory.upsert(pod("a", &["c1", "c2"])), change("a", PodChangeKind::Added));
        assert_eq!(directory.by_uid("a").unwrap().name, "pod-a");
        assert_eq!(directory.by_container_id("c2").unwrap().uid, "a");
        assert_eq!(directory.remove("a"), change("a", PodChangeKind::Deleted));
        assert_eq!(directory.remove("a"), None);
        assert!(directory.by_uid("a").is_none());
        assert!(directory.by_container_id("c1").is_none());
        assert_eq!(directory.len(), 0);
    }

    #[test]
    fn an_update_replaces_the_container_index_and_an_identical_one_is_no_change() {
        let directory = PodDirectory::default();
        directory.upsert(pod("a", &["old"]));
        assert_eq!(directory.upsert(pod("a", &["old"])), None);
        assert_eq!(directory.upsert(pod("a", &["new"])), change("a", PodChangeKind::Updated));
        assert!(directory.by_container_id("old").is_none());
        assert_eq!(directory.by_container_id("new").unwrap().uid, "a");
    }

    #[test]
    fn replacing_everything_reports_the_differences() {
        let directory = PodDirectory::default();
        directory.upsert(pod("kept", &["k"]));
        directory.upsert(pod("changed", &["c"]));
        directory.upsert(pod("gone", &["g"]));
        let mut changes = directory.replace_all(vec![pod("kept", &["k"]), pod("changed", &["c2"]), pod("new", &[])]);
        changes.sort_by(|a, b| a.uid.cmp(&b.uid));
        let expected =
            [("changed", PodChangeKind::Updated), ("gone", PodChangeKind::Deleted), ("new", PodChangeKind::Added)]
                .map(|(uid, kind)| PodChange { uid: uid.into(), kind });
        assert_eq!(changes, expected);
        assert_eq!(directory.len(), 3);
        assert!(directory.by_container_id("g").is_none());
        assert!(directory.by_container_id("c").is_none());
        assert_eq!(directory.by_container_id("c2").unwrap().uid, "changed");
    }
}
