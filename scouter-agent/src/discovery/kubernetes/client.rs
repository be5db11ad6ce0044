//! HTTP requests to the API server: list and watch pods, get a ReplicaSet or a Job.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Certificate, Response, Url};
use serde::de::DeserializeOwned;

use super::api::{LineBuffer, OwnedObject, PodList, Status, WatchEvent};
use super::pod::{Workload, WorkloadKind};
use super::watcher::WatchOptions;
use super::KubernetesError;

/// Where Kubernetes mounts a pod's service-account credentials.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// How long after the watch's own `timeoutSeconds` the agent gives up on a silent server.
const WATCH_GRACE: Duration = Duration::from_secs(30);
/// An error response's body is only read for its message.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// Where and how to reach the API server.
#[derive(Clone, Debug)]
pub struct ApiServer {
    base_url: String,
    credentials: Option<ServiceAccount>,
}

/// Read at each use, not once: the kubelet rotates projected tokens (hourly by default) and
/// may update the CA bundle while the agent runs.
#[derive(Clone, Debug)]
struct ServiceAccount {
    token_file: PathBuf,
    ca_file: PathBuf,
}

impl ApiServer {
    /// The API server as a pod sees it: `KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT`,
    /// the mounted service-account token and cluster CA.
    pub fn in_cluster() -> Result<Self, KubernetesError> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").ok();
        let port = std::env::var("KUBERNETES_SERVICE_PORT").ok();
        Self::in_cluster_from(host.as_deref(), port.as_deref(), Path::new(SERVICE_ACCOUNT_DIR))
    }

    /// [`ApiServer::in_cluster`] with its inputs given: the service host and port (unset:
    /// `None`) and the directory holding `token` and `ca.crt`. The files are checked now, so a
    /// pod without a mounted service account fails at start-up, not at the first list.
    pub fn in_cluster_from(
        host: Option<&str>,
        port: Option<&str>,
        service_account_dir: &Path,
    ) -> Result<Self, KubernetesError> {
        let host = host.filter(|h| !h.is_empty()).ok_or(KubernetesError::NotInCluster("KUBERNETES_SERVICE_HOST"))?;
        let port = port.filter(|p| !p.is_empty()).ok_or(KubernetesError::NotInCluster("KUBERNETES_SERVICE_PORT"))?;
        // An IPv6 service address comes bare (`fd00::1`), a URL needs it in brackets.
        let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_owned() };
        let credentials = ServiceAccount {
            token_file: service_account_dir.join("token"),
            ca_file: service_account_dir.join("ca.crt"),
        };
        credentials.token()?;
        credentials.certificates()?;
        let base_url = format!("https://{host}:{port}");
        parse_base_url(&base_url)?;
        Ok(Self { base_url, credentials: Some(credentials) })
    }

    /// An API server reached without credentials, over plain HTTP or HTTPS with the system's
    /// roots: `kubectl proxy` (`http://127.0.0.1:8001`), or a test server.
    pub fn plain(base_url: &str) -> Self {
        Self { base_url: base_url.trim_end_matches('/').to_owned(), credentials: None }
    }

    /// An API server at `base_url` with the credentials of `service_account_dir`, for tests of
    /// the token's rotation over plain HTTP.
    #[cfg(test)]
    pub(super) fn with_service_account(base_url: &str, service_account_dir: &Path) -> Self {
        let credentials = ServiceAccount {
            token_file: service_account_dir.join("token"),
            ca_file: service_account_dir.join("ca.crt"),
        };
        Self { base_url: base_url.to_owned(), credentials: Some(credentials) }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// A client for one list-and-watch session, with the CA as it is now.
    pub(super) fn connect(&self, options: &WatchOptions) -> Result<Connection, KubernetesError> {
        let base = parse_base_url(&self.base_url)?;
        // The API server is reached directly (its service address, or a local proxy): an
        // HTTP(S)_PROXY meant for the pod's egress traffic does not apply to it.
        let mut builder = reqwest::Client::builder()
            .connect_timeout(options.request_timeout)
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .no_proxy();
        if let Some(credentials) = &self.credentials {
            builder = builder.tls_built_in_root_certs(false);
            for certificate in credentials.certificates()? {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder.build().map_err(KubernetesError::Client)?;
        Ok(Connection { client, base, credentials: self.credentials.clone(), options: options.clone() })
    }
}

impl ServiceAccount {
    fn token(&self) -> Result<String, KubernetesError> {
        let token = read_file(&self.token_file)?;
        let token = String::from_utf8_lossy(&token).trim().to_owned();
        if token.is_empty() {
            return Err(KubernetesError::EmptyFile { path: self.token_file.clone() });
        }
        Ok(token)
    }

    fn certificates(&self) -> Result<Vec<Certificate>, KubernetesError> {
        let pem = read_file(&self.ca_file)?;
        let certificates = Certificate::from_pem_bundle(&pem)
            .map_err(|source| KubernetesError::BadCa { path: self.ca_file.clone(), source })?;
        if certificates.is_empty() {
            return Err(KubernetesError::EmptyFile { path: self.ca_file.clone() });
        }
        Ok(certificates)
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, KubernetesError> {
    std::fs::read(path).map_err(|source| KubernetesError::ReadFile { path: path.to_owned(), source })
}

fn parse_base_url(base_url: &str) -> Result<Url, KubernetesError> {
    let bad = |reason: String| KubernetesError::BadAddress { address: base_url.to_owned(), reason };
    let url = Url::parse(base_url).map_err(|e| bad(e.to_string()))?;
    if url.cannot_be_a_base() || !matches!(url.scheme(), "http" | "https") {
        return Err(bad("not an http(s) URL".into()));
    }
    Ok(url)
}

/// Which copy of the pods a list reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ListFrom {
    /// The API server's watch cache (`resourceVersion=0`): cheap, possibly a little behind.
    Cache,
    /// etcd itself: current, needed when the cache's history was too short for us (410).
    Storage,
}

/// A client for one list-and-watch session.
pub(super) struct Connection {
    client: reqwest::Client,
    base: Url,
    credentials: Option<ServiceAccount>,
    options: WatchOptions,
}

impl Connection {
    pub async fn list_pods(&self, node: &str, from: ListFrom) -> Result<PodList, KubernetesError> {
        let mut url = self.url(&["api", "v1", "pods"]);
        url.query_pairs_mut().append_pair("fieldSelector", &node_selector(node));
        if from == ListFrom::Cache {
            url.query_pairs_mut().append_pair("resourceVersion", "0");
        }
        let response = self.send(url, self.options.list_timeout, "the pod list").await?;
        read_json(response, "pod list").await
    }

    /// Starts watching the node's pods after `resource_version`; the server ends the stream
    /// after the configured watch timeout.
    pub async fn watch_pods(&self, node: &str, resource_version: &str) -> Result<WatchStream, KubernetesError> {
        let timeout = self.options.watch_timeout;
        let mut url = self.url(&["api", "v1", "pods"]);
        url.query_pairs_mut()
            .append_pair("fieldSelector", &node_selector(node))
            .append_pair("watch", "true")
            .append_pair("resourceVersion", resource_version)
            .append_pair("allowWatchBookmarks", "true")
            .append_pair("timeoutSeconds", &timeout.as_secs().max(1).to_string());
        let response = self.send(url, timeout + WATCH_GRACE, "the pod watch").await?;
        Ok(WatchStream { response, lines: LineBuffer::default() })
    }

    /// The workload controlling `object` (a ReplicaSet or a Job), if any.
    pub async fn controller_of(&self, namespace: &str, object: &Workload) -> Result<Option<Workload>, KubernetesError> {
        let (group, resource) = match object.kind {
            WorkloadKind::ReplicaSet => (["apis", "apps", "v1"], "replicasets"),
            WorkloadKind::Job => (["apis", "batch", "v1"], "jobs"),
            _ => return Ok(None),
        };
        let path = [&group[..], &["namespaces", namespace, resource, object.name.as_str()]].concat();
        let url = self.url(&path);
        let response = self.send(url, self.options.request_timeout, "an owner lookup").await?;
        let owned: OwnedObject = read_json(response, "owner").await?;
        Ok(owned.metadata.controller())
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        // `parse_base_url` checked that the URL can be a base, so segments can be appended.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    async fn send(&self, url: Url, timeout: Duration, what: &'static str) -> Result<Response, KubernetesError> {
        let mut request = self.client.get(url).timeout(timeout).header("Accept", "application/json");
        if let Some(credentials) = &self.credentials {
            request = request.bearer_auth(credentials.token()?);
        }
        let response = request.send().await?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(error_response(response, what).await)
    }
}

fn node_selector(node: &str) -> String {
    format!("spec.nodeName={node}")
}

async fn read_json<T: DeserializeOwned>(response: Response, what: &'static str) -> Result<T, KubernetesError> {
    let body = response.bytes().await?;
    serde_json::from_slice(&body).map_err(|source| KubernetesError::Parse { what, source })
}

/// The error a non-2xx answer means; its `Status` body, when it has one, gives the message.
async fn error_response(mut response: Response, what: &'static str) -> KubernetesError {
    let status = response.status().as_u16();
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_ERROR_BODY_BYTES {
            break;
        }
    }
    let message = match serde_json::from_slice::<Status>(&body) {
        Ok(parsed) if !parsed.message.is_empty() => parsed.message,
        _ => String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_owned(),
    };
    if status == 410 {
        KubernetesError::Expired(message)
    } else {
        KubernetesError::Status { what, status, message }
    }
}

/// An open watch: its events, as they arrive.
pub(super) struct WatchStream {
    response: Response,
    lines: LineBuffer,
}

impl WatchStream {
    /// The next event, or `None` when the server ended the watch (its timeout).
    pub async fn next_event(&mut self) -> Result<Option<WatchEvent>, KubernetesError> {
        loop {
            if let Some(line) = self.lines.next_line() {
                return WatchEvent::parse(&line).map(Some);
            }
            match self.response.chunk().await? {
                Some(chunk) => self.lines.push(&chunk)?,
                None => return self.lines.rest().map(|line| WatchEvent::parse(&line)).transpose(),
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A self-signed CA made for these tests (`openssl req -x509 -newkey ec ...`).
    pub const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBkDCCATegAwIBAgIUV0hfWJDqxtmykYST2Hkl4iZd0LwwCgYIKoZIzj0EAwIw
HTEbMBkGA1UEAwwSa3ViZXJuZXRlcy10ZXN0LWNhMCAXDTI2MTEyMTIyMDQwNFoY
DzIxMjYxMDI4MjIwNDA0WjAdMRswGQYDVQQDDBJrdWJlcm5ldGVzLXRlc3QtY2Ew
WTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATYKmH3NiaDlscq70cOUK1fRamT4Cgm
Y6KjHRnk1EjZ/LBnt578YZFA9QBOh9Y38Pu6yG1JMfVK7O5b6xWnAowvo1MwUTAd
BgNVHQ4EFgQUdTyqiIfLYlE4eaR2QIpS5oge0wkwHwYDVR0jBBgwFoAUdTyqiIfL
YlE4eaR2QIpS5oge0wkwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNHADBE
AiA8FfgH1tmGfz5xCUNVB/ie9+lYUC8fOerdvsDRatBCdgIgYeXI/VB+1dtUgdnP
l7JUfPFuDQy1oflNPu+P2ZvCm1U=
-----END CERTIFICATE-----
";

    fn service_account(token: Option<&str>, ca: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        if let Some(token) = token {
            std::fs::write(dir.path().join("token"), token).unwrap();
        }
        if let Some(ca) = ca {
            std::fs::write(dir.path().join("ca.crt"), ca).unwrap();
        }
        dir
    }

    #[test]
    fn in_cluster_reads_the_service_environment_and_the_mounted_account() {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").ok();
        let port = std::env::var("KUBERNETES_SERVICE_PORT").ok();
        let expected = ApiServer::in_cluster_from(host.as_deref(), port.as_deref(), Path::new(SERVICE_ACCOUNT_DIR));
        match (ApiServer::in_cluster(), expected) {
            (Ok(api), Ok(expected)) => assert_eq!(api.base_url(), expected.base_url()),
            (Err(error), Err(expected)) => assert_eq!(error.to_string(), expected.to_string()),
            (api, expected) => panic!("in_cluster() gave {api:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn in_cluster_needs_the_service_host_and_port() {
        let dir = service_account(Some("t"), Some(TEST_CA));
        let missing = |host, port| ApiServer::in_cluster_from(host, port, dir.path()).unwrap_err();
        assert!(matches!(missing(None, Some("443")), KubernetesError::NotInCluster("KUBERNETES_SERVICE_HOST")));
        assert!(matches!(missing(Some(""), Some("443")), KubernetesError::NotInCluster("KUBERNETES_SERVICE_HOST")));
        assert!(matches!(missing(Some("10.96.0.1"), None), KubernetesError::NotInCluster("KUBERNETES_SERVICE_PORT")));
    }

    #[test]
    fn in_cluster_needs_a_token_and_a_ca() {
        let in_cluster =
            |dir: &tempfile::TempDir| ApiServer::in_cluster_from(Some("10.96.0.1"), Some("443"), dir.path());
        let no_token = service_account(None, Some(TEST_CA));
        assert!(
            matches!(in_cluster(&no_token), Err(KubernetesError::ReadFile { path, .. }) if path.ends_with("token"))
        );
        let blank_token = service_account(Some(" \n"), Some(TEST_CA));
        assert!(matches!(in_cluster(&blank_token), Err(KubernetesError::EmptyFile { .. })));
        let no_ca = service_account(Some("t"), None);
        assert!(matches!(in_cluster(&no_ca), Err(KubernetesError::ReadFile { path, .. }) if path.ends_with("ca.crt")));
        let not_pem = service_account(Some("t"), Some("not a certificate"));
        assert!(matches!(in_cluster(&not_pem), Err(KubernetesError::EmptyFile { .. })));
    }

    #[test]
    fn in_cluster_reaches_the_service_over_https_with_the_mounted_credentials() {
        let dir = service_account(Some("eyJhbGciOiJSUzI1NiJ9.payload.signature\n"), Some(TEST_CA));
        let api = ApiServer::in_cluster_from(Some("10.96.0.1"), Some("443"), dir.path()).unwrap();
        assert_eq!(api.base_url(), "https://10.96.0.1:443");
        let credentials = api.credentials.as_ref().unwrap();
        assert_eq!(credentials.token().unwrap(), "eyJhbGciOiJSUzI1NiJ9.payload.signature");
        assert!(api.connect(&WatchOptions::default()).is_ok());
        let v6 = ApiServer::in_cluster_from(Some("fd00:10:96::1"), Some("6443"), dir.path()).unwrap();
        assert_eq!(v6.base_url(), "https://[fd00:10:96::1]:6443");
    }

    #[tokio::test]
    async fn urls_keep_the_base_path_and_escape_names() {
        let api = ApiServer::plain("http://127.0.0.1:8001/k8s/clusters/c-1/");
        let connection = api.connect(&WatchOptions::default()).unwrap();
        let url = connection.url(&["apis", "apps", "v1", "namespaces", "shop", "replicasets", "a/b"]);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8001/k8s/clusters/c-1/apis/apps/v1/namespaces/shop/replicasets/a%2Fb"
        );
        assert!(ApiServer::plain("127.0.0.1:8001").connect(&WatchOptions::default()).is_err());
    }
}
