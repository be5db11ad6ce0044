//! Pod metadata on spans, end to end: a traced Python server is moved into a real cgroup named
//! the way containerd names a container's (systemd driver), its pod is served by a local
//! server that speaks the API server's list/watch protocol, and the agent, pointed at it,
//! puts the pod's resource attributes on the server's spans: `container.id` from the cgroup,
//! `k8s.*` from the pod and its owners, `service.name` from the pod's
//! `app.kubernetes.io/name` label.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use scouter_e2e::agent::{log_context, Agent};
use scouter_e2e::env::require_ebpf_host;
use scouter_e2e::expect::Verdict;
use scouter_e2e::http::Request;
use scouter_e2e::python::{Interpreter, PythonServer, ServerProgram};
use scouter_e2e::store::Store;
use scouter_e2e::traffic::{self, Call};

const NODE: &str = "node-7";
const POD_UID: &str = "3f6b2c1e-8a4d-4e2b-9c71-5d0f1a2b3c4d";
/// A 64-hex container id, as containerd reports it.
const CONTAINER_ID: &str = "9a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
const V1_HIERARCHY: &str = "/sys/fs/cgroup/pids";

#[test]
fn spans_of_a_process_in_a_pod_carry_the_pods_resource_attributes() -> Result<()> {
    let (server, _cgroup, api, store, mut agent) = pod_server_under_agent(&[], Duration::ZERO)?;
    let mut verdict = Verdict::new();
    verdict.step(
        "waiting for the agent to describe the server by its pod",
        agent.wait_logged("INFO", "process described by its pod", server.pid()),
    );
    let plan = vec![vec![Call::new(Request::get("/status/200"), 200)]];
    verdict.step("calling the server", traffic::run_plan(server.port(), &plan, false));
    let pid = i64::from(server.pid());
    let found = store.poll_spans(Duration::from_secs(20), |spans| spans.iter().any(|s| s.pid() == Some(pid)));
    let log = agent.log().clone();
    verdict.step("stopping the agent", agent.stop());
    let requests = api.requests();
    if let Some(spans) = verdict.step("reading the store", found) {
        match spans.iter().find(|s| s.pid() == Some(pid)) {
            None => verdict.problem("no span of the server".to_owned()),
            Some(span) => {
                let expected = [
                    ("container.id", CONTAINER_ID),
                    ("container.runtime", "containerd"),
                    ("k8s.pod.name", "cart-7c9f8d6b5-x2k4q"),
                    ("k8s.pod.uid", POD_UID),
                    ("k8s.namespace.name", "shop"),
                    ("k8s.node.name", NODE),
                    ("k8s.container.name", "api"),
                    ("k8s.replicaset.name", "cart-7c9f8d6b5"),
                    ("k8s.deployment.name", "cart"),
                    ("service.name", "cart-api"),
                ];
                for (key, value) in expected {
                    let found = span.resource_attr(key).and_then(|v| v.as_str());
                    if found != Some(value) {
                        verdict.problem(format!("resource {key} is {found:?}, not {value:?}: {}", span.pretty()));
                    }
                }
            }
        }
    }
    let listed =
        requests.iter().any(|r| r.starts_with("GET /api/v1/pods?") && r.contains(NODE) && !r.contains("watch"));
    if !listed {
        verdict.problem(format!("the agent did not list this node's pods: {requests:?}"));
    }
    verdict.finish(&log_context("agent", &log))
}

#[test]
fn a_process_excluded_by_its_pods_namespace_waits_for_the_pod_and_is_not_traced() -> Result<()> {
    // The pod list comes late, so the agent scans the server before it knows the pod: the rule
    // cannot be decided yet.
    let config = [("scouter-agent.toml", "[[exclude]]\nnamespace = \"shop\"\n")];
    let (server, _cgroup, _api, store, mut agent) = pod_server_under_agent(&config, Duration::from_secs(3))?;
    let mut verdict = Verdict::new();
    let waiting = agent.wait_logged("INFO", "waiting for the pod's metadata to apply the process rules", server.pid());
    verdict.step("waiting for the agent to defer the decision", waiting);
    let left_out = agent.wait_logged("INFO", "not traced: left out by the process rules", server.pid());
    verdict.step("waiting for the agent to leave the server out", left_out);
    let plan = vec![vec![Call::new(Request::get("/status/200"), 200)]];
    verdict.step("calling the server", traffic::run_plan(server.port(), &plan, false));
    let log = agent.log().clone();
    verdict.step("stopping the agent", agent.stop());
    let pid = i64::from(server.pid());
    if let Some(spans) = verdict.step("reading the store", store.spans()) {
        if let Some(span) = spans.iter().find(|s| s.pid() == Some(pid)) {
            verdict.problem(format!("the excluded server was traced: {}", span.pretty()));
        }
    }
    if !log.lines_containing("tracking python process").iter().all(|line| !line.contains(&format!("pid={pid} "))) {
        verdict.problem("the agent tracked the excluded server".to_owned());
    }
    verdict.finish(&log_context("agent", &log))
}

/// A Python server in a container cgroup whose pod the fake API server lists (`list_delay`
/// after being asked), and an agent watching that server's node, given each of `files`
/// (written beside the store) as `--config`.
fn pod_server_under_agent(
    files: &[(&str, &str)],
    list_delay: Duration,
) -> Result<(PythonServer, ContainerCgroup, FakeApiServer, Store, Agent)> {
    require_ebpf_host()?;
    let python = Interpreter::pyenv("3.12.1")?;
    let server = PythonServer::start(&python, ServerProgram::KeepAlive)?;
    let cgroup = ContainerCgroup::create()?;
    cgroup.adopt(server.pid())?;
    let api = FakeApiServer::start(list_delay)?;
    let store = Store::new()?;
    let off = ["--metrics-listen", "off", "--receive-grpc", "off", "--receive-http", "off"];
    let mut args: Vec<String> = ["--kubernetes", api.url.as_str(), "--node-name", NODE].map(str::to_owned).into();
    args.extend(off.map(str::to_owned));
    for (name, text) in files {
        let path = store.path().with_file_name(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        args.extend(["--config".to_owned(), path.display().to_string()]);
    }
    let agent = Agent::start_with_args(&store, &args.iter().map(String::as_str).collect::<Vec<_>>())?;
    Ok((server, cgroup, api, store, agent))
}

/// A cgroup named as containerd's systemd driver names a burstable pod's container, in the
/// host's v1 `pids` hierarchy; removed (its process moved back out) when dropped.
struct ContainerCgroup {
    dirs: Vec<PathBuf>,
}

impl ContainerCgroup {
    fn create() -> Result<Self> {
        let pod_slice = format!("kubepods-burstable-pod{}.slice", POD_UID.replace('-', "_"));
        let scope = format!("cri-containerd-{CONTAINER_ID}.scope");
        let mut dirs = Vec::new();
        let mut path = PathBuf::from(V1_HIERARCHY);
        for part in ["kubepods.slice", "kubepods-burstable.slice", pod_slice.as_str(), scope.as_str()] {
            path.push(part);
            if !path.exists() {
                std::fs::create_dir(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
                dirs.push(path.clone());
            }
        }
        Ok(Self { dirs })
    }

    fn adopt(&self, pid: u32) -> Result<()> {
        let procs = self.dirs.last().context("no cgroup created")?.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string()).with_context(|| format!("moving {pid} into {}", procs.display()))
    }
}

impl Drop for ContainerCgroup {
    fn drop(&mut self) {
        if let Some(leaf) = self.dirs.last() {
            let members = std::fs::read_to_string(leaf.join("cgroup.procs")).unwrap_or_default();
            for pid in members.split_whitespace() {
                let _ = std::fs::write(PathBuf::from(V1_HIERARCHY).join("cgroup.procs"), pid);
            }
        }
        for dir in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Answers the API server's requests the agent makes: the node's pod list (one pod of a
/// Deployment's ReplicaSet, after `list_delay`), a watch that stays open with no events, and
/// the ReplicaSet.
struct FakeApiServer {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl FakeApiServer {
    fn start(list_delay: Duration) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopping) = (Arc::clone(&requests), Arc::clone(&stop));
        std::thread::spawn(move || {
            for connection in listener.incoming().flatten() {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                let (seen, stopping) = (Arc::clone(&seen), Arc::clone(&stopping));
                std::thread::spawn(move || answer(connection, &seen, &stopping, list_delay));
            }
        });
        Ok(Self { url, requests, stop })
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
    }
}

fn answer(connection: TcpStream, seen: &Mutex<Vec<String>>, stop: &AtomicBool, list_delay: Duration) {
    let mut reader = BufReader::new(match connection.try_clone() {
        Ok(stream) => stream,
        Err(_) => return,
    });
    let mut connection = connection;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut header = String::new();
        while reader.read_line(&mut header).unwrap_or(0) > 2 {
            header.clear();
        }
        let request = request_line.trim().trim_end_matches(" HTTP/1.1").to_owned();
        if let Ok(mut seen) = seen.lock() {
            seen.push(request.clone());
        }
        let path = request.split(' ').nth(1).unwrap_or_default();
        if path.starts_with("/api/v1/pods") && path.contains("watch") {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
            let _ = connection.write_all(head.as_bytes());
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
            return;
        }
        let (status, body) = if path.starts_with("/api/v1/pods") {
            std::thread::sleep(list_delay);
            ("200 OK", pod_list())
        } else if path == "/apis/apps/v1/namespaces/shop/replicasets/cart-7c9f8d6b5" {
            ("200 OK", replica_set())
        } else {
            (
                "404 Not Found",
                r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#.to_owned(),
            )
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if connection.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

fn pod_list() -> String {
    format!(
        r#"{{"kind":"PodList","apiVersion":"v1","metadata":{{"resourceVersion":"48211"}},"items":[{{
  "metadata":{{"name":"cart-7c9f8d6b5-x2k4q","generateName":"cart-7c9f8d6b5-","namespace":"shop","uid":"{POD_UID}",
    "resourceVersion":"48190","creationTimestamp":"2026-11-20T08:14:03Z",
    "labels":{{"app.kubernetes.io/name":"cart-api","pod-template-hash":"7c9f8d6b5"}},
    "ownerReferences":[{{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"cart-7c9f8d6b5",
      "uid":"0c8e2a7b-3d51-4f6e-8a9b-1c2d3e4f5a6b","controller":true,"blockOwnerDeletion":true}}]}},
  "spec":{{"nodeName":"{NODE}","containers":[{{"name":"api","image":"registry.example.com/cart:1.4.2"}}]}},
  "status":{{"phase":"Running","podIP":"10.244.1.17",
    "containerStatuses":[{{"name":"api","ready":true,"restartCount":0,"image":"registry.example.com/cart:1.4.2",
      "containerID":"containerd://{CONTAINER_ID}","started":true}}]}}}}]}}"#
    )
}

fn replica_set() -> String {
    r#"{"kind":"ReplicaSet","apiVersion":"apps/v1","metadata":{"name":"cart-7c9f8d6b5","namespace":"shop",
  "uid":"0c8e2a7b-3d51-4f6e-8a9b-1c2d3e4f5a6b","resourceVersion":"48001",
  "ownerReferences":[{"apiVersion":"apps/v1","kind":"Deployment","name":"cart",
    "uid":"7d6c5b4a-3928-4176-a5b4-c3d2e1f0a9b8","controller":true,"blockOwnerDeletion":true}]},
  "spec":{"replicas":2},"status":{"replicas":2}}"#
        .to_owned()
}
