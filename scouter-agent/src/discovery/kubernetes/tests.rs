//! The watcher against a fake API server: an axum server, on its own runtime so a test can kill
//! it with its connections (an API server restart), that answers pod lists, owner lookups and
//! scripted watches with JSON shaped as the real API server's, and records every request.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use reqwest::Url;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::*;

const NODE: &str = "worker-2";
const WAIT: Duration = Duration::from_secs(5);

// ----- The fake API server -----

/// What the fake answers to the next watch request; with none queued, the watch stays open.
enum WatchReply {
    /// These events, then the end of the stream, as when `timeoutSeconds` elapses.
    Events(Vec<Value>),
    /// HTTP 410 with a `Status` body: the version asked for is no longer in the history.
    Gone,
}

#[derive(Clone, Debug)]
struct Recorded {
    path: String,
    query: BTreeMap<String, String>,
    authorization: Option<String>,
}

impl Recorded {
    fn of(request: &Request) -> Self {
        let url = Url::parse(&format!("http://fake{}", request.uri())).unwrap();
        Self {
            path: url.path().to_owned(),
            query: url.query_pairs().into_owned().collect(),
            authorization: request.headers().get(header::AUTHORIZATION).map(|value| value.to_str().unwrap().to_owned()),
        }
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    fn is_pods(&self) -> bool {
        self.path == "/api/v1/pods"
    }

    fn is_watch(&self) -> bool {
        self.is_pods() && self.param("watch") == Some("true")
    }
}

struct Shared {
    list: Mutex<Value>,
    /// Owner objects by their API path.
    owners: Mutex<HashMap<String, Value>>,
    requests: Mutex<Vec<Recorded>>,
    watch_replies: tokio::sync::Mutex<mpsc::UnboundedReceiver<WatchReply>>,
}

struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    replies: mpsc::UnboundedSender<WatchReply>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeApiServer {
    /// A server whose pod list is `pods` at `resource_version`.
    fn start(resource_version: &str, pods: &[&FakePod]) -> Self {
        Self::start_on(0, resource_version, pods)
    }

    fn start_on(port: u16, resource_version: &str, pods: &[&FakePod]) -> Self {
        let listener = bind(port);
        let addr = listener.local_addr().unwrap();
        let (replies, watch_replies) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            list: Mutex::new(pod_list(resource_version, pods)),
            owners: Mutex::default(),
            requests: Mutex::default(),
            watch_replies: tokio::sync::Mutex::new(watch_replies),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let app = Router::new().fallback(answer).with_state(Arc::clone(&shared));
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, shared, replies, runtime: Some(runtime) }
    }

    fn api(&self) -> ApiServer {
        ApiServer::plain(&format!("http://{}/", self.addr))
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn set_list(&self, resource_version: &str, pods: &[&FakePod]) {
        *self.shared.list.lock().unwrap() = pod_list(resource_version, pods);
    }

    fn add_owner(&self, (path, object): (String, Value)) {
        self.shared.owners.lock().unwrap().insert(path, object);
    }

    fn reply_to_watch(&self, reply: WatchReply) {
        self.replies.send(reply).unwrap();
    }

    fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    fn lists(&self) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.is_pods() && !r.is_watch()).collect()
    }

    fn watches(&self) -> Vec<Recorded> {
        self.requests().into_iter().filter(Recorded::is_watch).collect()
    }

    fn watched_versions(&self) -> Vec<String> {
        self.watches().iter().map(|w| w.param("resourceVersion").unwrap_or_default().to_owned()).collect()
    }

    fn gets_of(&self, path: &str) -> usize {
        self.requests().iter().filter(|r| r.path == path).count()
    }
}

impl Drop for FakeApiServer {
    /// Stops the server and drops every open connection, as an API server restart does.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Binds `port` (0: any), waiting for a stopped server's socket to close when it is reused.
fn bind(port: u16) -> std::net::TcpListener {
    for _ in 0..100 {
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            listener.set_nonblocking(true).unwrap();
            return listener;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("port {port} stays taken");
}

async fn answer(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let recorded = Recorded::of(&request);
    shared.requests.lock().unwrap().push(recorded.clone());
    if recorded.is_watch() {
        return watch(&shared).await;
    }
    if recorded.is_pods() {
        let list = shared.list.lock().unwrap().clone();
        return json_response(StatusCode::OK, list);
    }
    let owner = shared.owners.lock().unwrap().get(&recorded.path).cloned();
    match owner {
        Some(object) => json_response(StatusCode::OK, object),
        None => json_response(StatusCode::NOT_FOUND, status(404, "NotFound", &format!("{} not found", recorded.path))),
    }
}

async fn watch(shared: &Shared) -> Response {
    let reply = shared.watch_replies.lock().await.recv().await;
    match reply {
        Some(WatchReply::Events(events)) => {
            let body: String = events.iter().map(|event| format!("{event}\n")).collect();
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Some(WatchReply::Gone) => {
            json_response(StatusCode::GONE, status(410, "Expired", "too old resource version: 1000 (1200)"))
        }
        None => std::future::pending::<Response>().await,
    }
}

fn json_response(code: StatusCode, body: Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

// ----- API objects, as the API server writes them -----

#[derive(Clone)]
struct FakePod {
    namespace: String,
    name: String,
    uid: String,
    resource_version: String,
    node: String,
    labels: BTreeMap<String, String>,
    owner: Option<(&'static str, &'static str, String)>,
    containers: Vec<(String, Option<String>)>,
}

impl FakePod {
    fn new(namespace: &str, name: &str, uid: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
            resource_version: "1".into(),
            node: NODE.into(),
            labels: BTreeMap::new(),
            owner: None,
            containers: Vec::new(),
        }
    }

    fn owned_by(mut self, api_version: &'static str, kind: &'static str, name: &str) -> Self {
        self.owner = Some((api_version, kind, name.into()));
        self
    }

    fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// A container, started when it has an `id`.
    fn container(mut self, name: &str, id: Option<&str>) -> Self {
        self.containers.retain(|(known, _)| known != name);
        self.containers.push((name.into(), id.map(Into::into)));
        self
    }

    fn version(mut self, resource_version: &str) -> Self {
        self.resource_version = resource_version.into();
        self
    }

    fn on_node(mut self, node: &str) -> Self {
        self.node = node.into();
        self
    }

    fn json(&self) -> Value {
        let owner_references: Vec<Value> = self
            .owner
            .iter()
            .map(|(api_version, kind, name)| {
                json!({
                    "apiVersion": api_version, "kind": kind, "name": name,
                    "uid": format!("{name}-0b6f1c77-8a7e-4b43"), "controller": true, "blockOwnerDeletion": true
                })
            })
            .collect();
        let specs: Vec<Value> = self
            .containers
            .iter()
            .map(|(name, _)| {
                let image = format!("registry.example.com/{name}:1.4.2");
                json!({"name": name, "image": image, "imagePullPolicy": "IfNotPresent", "resources": {}})
            })
            .collect();
        let statuses: Vec<Value> =
            self.containers.iter().map(|(name, id)| container_status(name, id.as_deref())).collect();
        let running = self.containers.iter().all(|(_, id)| id.is_some());
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "creationTimestamp": "2024-05-02T09:14:27Z",
                "labels": self.labels,
                "name": self.name,
                "namespace": self.namespace,
                "ownerReferences": owner_references,
                "resourceVersion": self.resource_version,
                "uid": self.uid
            },
            "spec": {
                "containers": specs,
                "dnsPolicy": "ClusterFirst",
                "nodeName": self.node,
                "restartPolicy": "Always",
                "schedulerName": "default-scheduler",
                "serviceAccountName": "default",
                "volumes": [{"name": "kube-api-access-7xq2d", "projected": {
                    "defaultMode": 420,
                    "sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]
                }}]
            },
            "status": {
                "conditions": [{
                    "lastProbeTime": null,
                    "lastTransitionTime": "2024-05-02T09:14:31Z",
                    "status": if running { "True" } else { "False" },
                    "type": "Ready"
                }],
                "containerStatuses": statuses,
                "hostIP": "10.0.3.12",
                "phase": if running { "Running" } else { "Pending" },
                "podIP": "10.244.2.17",
                "qosClass": "BestEffort",
                "startTime": "2024-05-02T09:14:27Z"
            }
        })
    }
}

fn container_status(name: &str, id: Option<&str>) -> Value {
    let image = format!("registry.example.com/{name}:1.4.2");
    match id {
        Some(id) => json!({
            "containerID": format!("containerd://{id}"), "image": image, "imageID": format!("{image}@sha256:4b1c"),
            "lastState": {}, "name": name, "ready": true, "restartCount": 0, "started": true,
            "state": {"running": {"startedAt": "2024-05-02T09:14:30Z"}}
        }),
        None => json!({
            "image": image, "imageID": "", "lastState": {}, "name": name, "ready": false, "restartCount": 0,
            "started": false, "state": {"waiting": {"reason": "ContainerCreating"}}
        }),
    }
}

/// A 64-hex container id, different for each `n`.
fn container_id(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn pod_list(resource_version: &str, pods: &[&FakePod]) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "PodList",
        "metadata": {"resourceVersion": resource_version},
        "items": pods.iter().map(|pod| pod.json()).collect::<Vec<_>>()
    })
}

fn event(kind: &str, pod: &FakePod) -> Value {
    json!({"type": kind, "object": pod.json()})
}

fn bookmark(resource_version: &str) -> Value {
    json!({"type": "BOOKMARK", "object": {
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"resourceVersion": resource_version, "creationTimestamp": null},
        "spec": {"containers": null}, "status": {}
    }})
}

fn error_event(code: u16, reason: &str, message: &str) -> Value {
    json!({"type": "ERROR", "object": status(code, reason, message)})
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    })
}

/// A ReplicaSet as `GET /apis/apps/v1/namespaces/{ns}/replicasets/{name}` returns it.
fn replica_set(namespace: &str, name: &str, deployment: Option<&str>) -> (String, Value) {
    let owners: Vec<Value> = deployment
        .iter()
        .map(|name| {
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                "uid": "6c1f", "controller": true, "blockOwnerDeletion": true
            })
        })
        .collect();
    let object = json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {
            "name": name, "namespace": namespace, "uid": "0b6f1c77", "resourceVersion": "48100",
            "ownerReferences": owners, "annotations": {"deployment.kubernetes.io/revision": "3"}
        },
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "x"}}},
        "status": {"replicas": 2, "readyReplicas": 2, "availableReplicas": 2}
    });
    (format!("/apis/apps/v1/namespaces/{namespace}/replicasets/{name}"), object)
}

/// A Job as `GET /apis/batch/v1/namespaces/{ns}/jobs/{name}` returns it.
fn job(namespace: &str, name: &str, cron_job: &str) -> (String, Value) {
    let object = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {
            "name": name, "namespace": namespace, "uid": "9a7e", "resourceVersion": "48150",
            "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "CronJob", "name": cron_job,
                "uid": "3d2c", "controller": true, "blockOwnerDeletion": true
            }]
        },
        "spec": {"completions": 1, "parallelism": 1, "backoffLimit": 6},
        "status": {"active": 1, "startTime": "2024-05-02T02:00:00Z"}
    });
    (format!("/apis/batch/v1/namespaces/{namespace}/jobs/{name}"), object)
}

// ----- The watcher under test -----

/// A running watcher, stopped when dropped.
struct Watcher {
    directory: PodDirectory,
    changes: mpsc::UnboundedReceiver<PodChange>,
    _task: AbortOnDrop,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn fast() -> WatchOptions {
    WatchOptions {
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
        watch_timeout: Duration::from_secs(60),
        list_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(2),
    }
}

fn start_watcher(api: ApiServer) -> Watcher {
    let directory = PodDirectory::default();
    let (sender, changes) = mpsc::unbounded_channel();
    let task = tokio::spawn(watch_pods_with(api, NODE.into(), directory.clone(), sender, fast()));
    Watcher { directory, changes, _task: AbortOnDrop(task) }
}

impl Watcher {
    async fn next_change(&mut self) -> PodChange {
        tokio::time::timeout(WAIT, self.changes.recv()).await.expect("no pod change within 5 s").unwrap()
    }

    /// The next `count` changes, in uid order (a list reports its pods in no set order).
    async fn next_changes(&mut self, count: usize) -> Vec<PodChange> {
        let mut changes = Vec::new();
        for _ in 0..count {
            changes.push(self.next_change().await);
        }
        changes.sort_by(|a, b| a.uid.cmp(&b.uid));
        changes
    }

    fn assert_no_change(&mut self) {
        assert_eq!(self.changes.try_recv().ok(), None);
    }

    fn pod(&self, uid: &str) -> Arc<PodMetadata> {
        self.directory.by_uid(uid).unwrap_or_else(|| panic!("pod {uid} is not in the directory"))
    }
}

async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn change(uid: &str, kind: PodChangeKind) -> PodChange {
    PodChange { uid: uid.into(), kind }
}

fn added(uid: &str) -> PodChange {
    change(uid, PodChangeKind::Added)
}

fn attributes(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|(key, value)| (*key, (*value).to_owned())).collect()
}

fn node_exporter() -> FakePod {
    FakePod::new("monitoring", "node-exporter-7xk2p", "uid-exporter")
        .owned_by("apps/v1", "DaemonSet", "node-exporter")
        .container("node-exporter", Some(&container_id(1)))
}

fn postgres() -> FakePod {
    FakePod::new("shop", "postgres-0", "uid-postgres")
        .owned_by("apps/v1", "StatefulSet", "postgres")
        .container("postgres", Some(&container_id(3)))
}

fn checkout(name: &str, uid: &str) -> FakePod {
    FakePod::new("shop", name, uid)
        .owned_by("apps/v1", "ReplicaSet", "checkout-6f7c9d8b4d")
        .label("pod-template-hash", "6f7c9d8b4d")
}

// ----- Tests -----

#[tokio::test]
async fn list_then_watch_applies_added_modified_and_deleted_pods() {
    let fake = FakeApiServer::start("1000", &[&node_exporter()]);
    fake.add_owner(replica_set("shop", "checkout-6f7c9d8b4d", Some("checkout")));
    let mut watcher = start_watcher(fake.api());

    assert_eq!(watcher.next_change().await, added("uid-exporter"));
    let exporter = watcher.pod("uid-exporter");
    assert_eq!(exporter.workload, Some(Workload { kind: WorkloadKind::DaemonSet, name: "node-exporter".into() }));
    assert_eq!(watcher.directory.by_container_id(&container_id(1)).unwrap().uid, "uid-exporter");

    let creating = checkout("checkout-6f7c9d8b4d-x2kqp", "uid-checkout").container("app", None).version("1001");
    fake.reply_to_watch(WatchReply::Events(vec![event("ADDED", &creating)]));
    assert_eq!(watcher.next_change().await, added("uid-checkout"));
    let pod = watcher.pod("uid-checkout");
    assert_eq!(
        pod.resource_attributes(None),
        attributes(&[
            ("k8s.pod.name", "checkout-6f7c9d8b4d-x2kqp"),
            ("k8s.pod.uid", "uid-checkout"),
            ("k8s.namespace.name", "shop"),
            ("k8s.node.name", NODE),
            ("k8s.replicaset.name", "checkout-6f7c9d8b4d"),
            ("k8s.deployment.name", "checkout"),
        ])
    );
    assert_eq!(pod.containers, [PodContainer { name: "app".into(), id: None }]);
    assert_eq!(pod.service_name().as_deref(), Some("checkout"));

    let app_id = container_id(2);
    let started =
        creating.container("app", Some(&app_id)).label("app.kubernetes.io/name", "checkout-api").version("1002");
    fake.reply_to_watch(WatchReply::Events(vec![event("MODIFIED", &started)]));
    assert_eq!(watcher.next_change().await, change("uid-checkout", PodChangeKind::Updated));
    let pod = watcher.directory.by_container_id(&app_id).expect("the started container is indexed");
    assert_eq!(pod.uid, "uid-checkout");
    assert!(pod.resource_attributes(Some(&app_id)).contains(&("k8s.container.name", "app".into())));
    assert_eq!(pod.service_name().as_deref(), Some("checkout-api"));

    // A status-only update (new resourceVersion, nothing the agent keeps) is not a change.
    let unchanged = started.clone().version("1003");
    fake.reply_to_watch(WatchReply::Events(vec![
        event("MODIFIED", &unchanged),
        event("DELETED", &started.version("1004")),
    ]));
    assert_eq!(watcher.next_change().await, change("uid-checkout", PodChangeKind::Deleted));
    assert!(watcher.directory.by_uid("uid-checkout").is_none());
    assert!(watcher.directory.by_container_id(&app_id).is_none());
    assert_eq!(watcher.directory.len(), 1);

    // Each watch resumed from the last event's version, without listing again.
    eventually("the fourth watch", || fake.watches().len() == 4).await;
    assert_eq!(fake.watched_versions(), ["1000", "1001", "1002", "1004"]);
    assert_eq!(fake.lists().len(), 1);
    watcher.assert_no_change();
}

/// Pods a, b listed; b is deleted while the watch history is lost; the relist drops it.
async fn relists_after(expire: impl FnOnce(&FakeApiServer, &FakePod)) {
    let survivor = postgres();
    let fake = FakeApiServer::start("2000", &[&survivor, &node_exporter()]);
    let mut watcher = start_watcher(fake.api());
    assert_eq!(watcher.next_changes(2).await, [added("uid-exporter"), added("uid-postgres")]);

    fake.set_list("2500", &[&survivor]);
    expire(&fake, &survivor);

    assert_eq!(watcher.next_change().await, change("uid-exporter", PodChangeKind::Deleted));
    assert_eq!(watcher.directory.len(), 1);
    assert_eq!(watcher.pod("uid-postgres").name, "postgres-0");
    let lists = fake.lists();
    assert_eq!(lists.len(), 2);
    assert_eq!(lists[0].param("resourceVersion"), Some("0"), "the first list reads the watch cache");
    assert_eq!(lists[1].param("resourceVersion"), None, "after a 410 the list reads etcd");
    eventually("a watch from the new list", || fake.watches().last().unwrap().param("resourceVersion") == Some("2500"))
        .await;
    watcher.assert_no_change();
}

#[tokio::test]
async fn an_expired_error_event_makes_the_watcher_list_again() {
    relists_after(|fake, survivor| {
        let expired = error_event(410, "Expired", "too old resource version: 2000 (2400)");
        fake.reply_to_watch(WatchReply::Events(vec![event("MODIFIED", &survivor.clone().version("2001")), expired]));
    })
    .await;
}

#[tokio::test]
async fn an_http_410_on_the_watch_makes_the_watcher_list_again() {
    relists_after(|fake, _| {
        fake.reply_to_watch(WatchReply::Events(vec![bookmark("2100")]));
        fake.reply_to_watch(WatchReply::Gone);
    })
    .await;
}

#[tokio::test]
async fn an_expiry_right_after_listing_is_retried_after_a_pause_from_etcd() {
    relists_after(|fake, _| fake.reply_to_watch(WatchReply::Gone)).await;
}

#[tokio::test]
async fn another_watch_error_is_retried_with_a_list_from_the_cache() {
    let fake = FakeApiServer::start("2000", &[&postgres()]);
    let mut watcher = start_watcher(fake.api());
    assert_eq!(watcher.next_change().await, added("uid-postgres"));
    fake.reply_to_watch(WatchReply::Events(vec![error_event(500, "InternalError", "etcdserver: request timed out")]));
    eventually("a second list", || fake.lists().len() == 2).await;
    assert_eq!(fake.lists()[1].param("resourceVersion"), Some("0"));
    assert_eq!(watcher.directory.len(), 1);
    watcher.assert_no_change();
}

#[tokio::test]
async fn the_watcher_reconnects_and_relists_after_an_api_server_restart() {
    let fake = FakeApiServer::start("3000", &[&postgres(), &node_exporter()]);
    let mut watcher = start_watcher(fake.api());
    assert_eq!(watcher.next_changes(2).await, [added("uid-exporter"), added("uid-postgres")]);
    eventually("the watch is open", || fake.watches().len() == 1).await;

    let port = fake.addr.port();
    drop(fake);
    // Connections are refused for a while: the watcher backs off and tries again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(watcher.directory.len(), 2, "the last known pods stay while the API server is away");

    let cron_pod = FakePod::new("batch", "nightly-28571520-abcde", "uid-nightly")
        .owned_by("batch/v1", "Job", "nightly-28571520")
        .container("report", Some(&container_id(4)));
    let fake = FakeApiServer::start_on(port, "3100", &[&postgres(), &cron_pod]);
    assert_eq!(watcher.next_changes(2).await, [change("uid-exporter", PodChangeKind::Deleted), added("uid-nightly")]);
    assert_eq!(watcher.directory.len(), 2);
    assert_eq!(watcher.directory.by_container_id(&container_id(4)).unwrap().name, "nightly-28571520-abcde");
    eventually("a watch on the new server", || fake.watched_versions() == ["3100"]).await;
    assert_eq!(fake.lists().len(), 1);
}

#[tokio::test]
async fn list_and_watch_select_this_node_and_resume_from_bookmarks() {
    let elsewhere = FakePod::new("shop", "checkout-elsewhere", "uid-elsewhere").on_node("worker-9");
    let fake = FakeApiServer::start("4000", &[&postgres(), &elsewhere]);
    let mut watcher = start_watcher(fake.api());
    assert_eq!(watcher.next_change().await, added("uid-postgres"));
    eventually("the first watch", || fake.watches().len() == 1).await;

    let list = &fake.lists()[0];
    assert_eq!(list.path, "/api/v1/pods");
    let expected: BTreeMap<String, String> = [("fieldSelector", "spec.nodeName=worker-2"), ("resourceVersion", "0")]
        .map(|(k, v)| (k.into(), v.into()))
        .into();
    assert_eq!(list.query, expected);
    let watch = &fake.watches()[0];
    let expected: BTreeMap<String, String> = [
        ("fieldSelector", "spec.nodeName=worker-2"),
        ("watch", "true"),
        ("resourceVersion", "4000"),
        ("allowWatchBookmarks", "true"),
        ("timeoutSeconds", "60"),
    ]
    .map(|(k, v)| (k.into(), v.into()))
    .into();
    assert_eq!(watch.query, expected);
    assert!(watch.authorization.is_none());

    // A pod of another node (which the selector should have kept away) is ignored.
    fake.reply_to_watch(WatchReply::Events(vec![bookmark("4321"), event("ADDED", &elsewhere.clone().version("4400"))]));
    eventually("a second watch", || fake.watches().len() == 2).await;
    fake.reply_to_watch(WatchReply::Events(vec![bookmark("4500")]));
    eventually("a third watch", || fake.watches().len() == 3).await;
    assert_eq!(fake.watched_versions(), ["4000", "4400", "4500"]);
    assert_eq!(fake.lists().len(), 1);
    assert!(watcher.directory.by_uid("uid-elsewhere").is_none());
    watcher.assert_no_change();
}

#[tokio::test]
async fn watch_pods_runs_with_the_production_timing() {
    let fake = FakeApiServer::start("7000", &[&postgres()]);
    let (sender, mut changes) = mpsc::unbounded_channel();
    let _task = AbortOnDrop(tokio::spawn(watch_pods(fake.api(), NODE.into(), PodDirectory::default(), sender)));
    assert_eq!(tokio::time::timeout(WAIT, changes.recv()).await.unwrap(), Some(added("uid-postgres")));
    eventually("the first watch", || fake.watches().len() == 1).await;
    assert_eq!(fake.watches()[0].param("timeoutSeconds"), Some("300"));
}

#[tokio::test]
async fn a_bookmark_alone_moves_the_next_watch_forward() {
    let fake = FakeApiServer::start("4000", &[]);
    let _watcher = start_watcher(fake.api());
    eventually("the first watch", || fake.watches().len() == 1).await;
    fake.reply_to_watch(WatchReply::Events(vec![bookmark("4321")]));
    eventually("a second watch", || fake.watches().len() == 2).await;
    assert_eq!(fake.watched_versions(), ["4000", "4321"]);
}

#[tokio::test]
async fn workloads_are_resolved_through_replicasets_and_jobs_and_cached() {
    let rs_path = "/apis/apps/v1/namespaces/shop/replicasets/checkout-6f7c9d8b4d";
    let job_path = "/apis/batch/v1/namespaces/batch/jobs/nightly-28571520";
    let legacy_path = "/apis/apps/v1/namespaces/shop/replicasets/legacy-5d8f7c";
    let checkout_a = checkout("checkout-6f7c9d8b4d-x2kqp", "uid-a").container("app", Some(&container_id(5)));
    let checkout_b = checkout("checkout-6f7c9d8b4d-9fjzt", "uid-b");
    let nightly =
        FakePod::new("batch", "nightly-28571520-abcde", "uid-nightly").owned_by("batch/v1", "Job", "nightly-28571520");
    let legacy =
        FakePod::new("shop", "legacy-5d8f7c-q8w2e", "uid-legacy").owned_by("apps/v1", "ReplicaSet", "legacy-5d8f7c");
    let fake =
        FakeApiServer::start("5000", &[&checkout_a, &checkout_b, &nightly, &legacy, &postgres(), &node_exporter()]);
    fake.add_owner(replica_set("shop", "checkout-6f7c9d8b4d", Some("checkout")));
    fake.add_owner(job("batch", "nightly-28571520", "nightly"));
    let mut watcher = start_watcher(fake.api());
    assert_eq!(watcher.next_changes(6).await.len(), 6);

    let deployment = |name: &str| Some(Workload { kind: WorkloadKind::Deployment, name: name.into() });
    for uid in ["uid-a", "uid-b"] {
        assert_eq!(watcher.pod(uid).workload, deployment("checkout"));
    }
    let attributes_of = |uid: &str| watcher.pod(uid).resource_attributes(Some(&container_id(5)));
    let a = attributes_of("uid-a");
    for expected in [
        ("k8s.deployment.name", "checkout"),
        ("k8s.replicaset.name", "checkout-6f7c9d8b4d"),
        ("k8s.container.name", "app"),
    ] {
        assert!(a.contains(&(expected.0, expected.1.into())), "{expected:?} in {a:?}");
    }
    let cron = attributes_of("uid-nightly");
    assert!(cron.contains(&("k8s.cronjob.name", "nightly".into())));
    assert!(cron.contains(&("k8s.job.name", "nightly-28571520".into())));
    // The ReplicaSet lookup answered 404: the pod is reported under its ReplicaSet only.
    let legacy_attributes = attributes_of("uid-legacy");
    assert!(legacy_attributes.contains(&("k8s.replicaset.name", "legacy-5d8f7c".into())));
    assert!(legacy_attributes.iter().all(|(key, _)| *key != "k8s.deployment.name"));
    assert_eq!(watcher.pod("uid-postgres").workload.as_ref().unwrap().kind, WorkloadKind::StatefulSet);

    // Two pods of one ReplicaSet, one lookup; StatefulSets and DaemonSets need none.
    assert_eq!(fake.gets_of(rs_path), 1);
    assert_eq!(fake.gets_of(job_path), 1);
    assert_eq!(fake.gets_of(legacy_path), 1);
    assert_eq!(fake.requests().iter().filter(|r| !r.is_pods()).count(), 3);

    // The failed lookup is tried again on the pod's next update; the cached ones are not.
    fake.add_owner(replica_set("shop", "legacy-5d8f7c", Some("legacy")));
    fake.reply_to_watch(WatchReply::Events(vec![
        event("MODIFIED", &checkout_a.clone().version("5001")),
        event("MODIFIED", &legacy.clone().version("5002")),
    ]));
    assert_eq!(watcher.next_change().await, change("uid-legacy", PodChangeKind::Updated));
    assert_eq!(watcher.pod("uid-legacy").workload, deployment("legacy"));
    assert_eq!(fake.gets_of(legacy_path), 2);
    assert_eq!(fake.gets_of(rs_path), 1);
    watcher.assert_no_change();
}

#[tokio::test]
async fn the_token_is_read_again_for_each_request() {
    let account = tempfile::tempdir().unwrap();
    std::fs::write(account.path().join("token"), "token-one\n").unwrap();
    std::fs::write(account.path().join("ca.crt"), super::client::tests::TEST_CA).unwrap();
    let fake = FakeApiServer::start("6000", &[&postgres()]);
    let mut watcher = start_watcher(ApiServer::with_service_account(&fake.url(), account.path()));
    assert_eq!(watcher.next_change().await, added("uid-postgres"));
    eventually("the first watch", || fake.watches().len() == 1).await;

    // The kubelet rotates the projected token.
    std::fs::write(account.path().join("token"), "token-two\n").unwrap();
    fake.reply_to_watch(WatchReply::Events(vec![]));
    fake.reply_to_watch(WatchReply::Gone);
    eventually("a second list", || fake.lists().len() == 2).await;
    let bearer = |r: &Recorded| r.authorization.clone().unwrap();
    let requests = fake.requests();
    assert_eq!(bearer(&requests[0]), "Bearer token-one");
    assert_eq!(bearer(&requests[1]), "Bearer token-one");
    assert!(requests[2..].iter().all(|r| bearer(r) == "Bearer token-two"));
}
