//! Where in-process SDKs send their spans: one gRPC port (OTLP's `TraceService` and Scouter's
//! `AuthService`/`MessageService`, 127.0.0.1:4317 by default) and one HTTP port (OTLP/HTTP
//! `POST /v1/traces` in protobuf or JSON, and Scouter's `/scouter/auth/login`,
//! `/scouter/message`, `/scouter/healthcheck`, 127.0.0.1:4318 by default). So an OTel SDK
//! keeps its default endpoint, and Scouter's SDK points `SCOUTER_GRPC_URI` or
//! `SCOUTER_SERVER_URI` at the agent.
//!
//! Every accepted request becomes one [`SdkBatch`] on a bounded channel to the agent's event
//! loop, which merges the spans with its own ([`super::Merger`]). When that channel is full
//! the request is refused as retryable (HTTP 503, gRPC UNAVAILABLE) rather than accepted and
//! lost. Each batch names the process that sent it when the connection's peer socket belongs
//! to a traced process ([`super::peer`]).

mod grpc;
mod http;
mod otlp_grpc;
mod scouter_grpc;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::decode::Decoded;
use super::peer::Procfs;
use super::{MergeCounters, SdkBatch};

/// Largest request body or gRPC message accepted (the OTLP exporters' and gRPC's default).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// How long a peer address stays attributed to the process found for it.
const PEER_CACHE_TTL: Duration = Duration::from_secs(10);
const PEER_CACHE_MAX: usize = 4096;

/// Where the receivers listen (`None`: that port is off).
#[derive(Clone, Debug, PartialEq)]
pub struct ReceiverConfig {
    pub grpc: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
}

impl ReceiverConfig {
    /// Whether a connection to `addr:port` reaches one of the receivers.
    pub fn is_receiver(&self, addr: IpAddr, port: u16) -> bool {
        let reaches = |listen: &SocketAddr| {
            listen.port() == port
                && (listen.ip().is_unspecified()
                    || listen.ip() == addr.to_canonical()
                    || (listen.ip().is_loopback() && addr.to_canonical().is_loopback()))
        };
        self.grpc.iter().chain(&self.http).any(reaches)
    }
}

/// What every receiver shares: the way to the event loop, the attribution of peers to
/// processes, and the counters.
#[derive(Clone)]
pub(crate) struct Intake {
    batches: mpsc::Sender<SdkBatch>,
    peers: Arc<PeerAttribution>,
    counters: Arc<MergeCounters>,
}

/// Why a request was not taken.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The event loop is behind; the sender should retry.
    Busy,
}

impl Intake {
    /// Hands `decoded` to the event loop, naming the process behind the connection
    /// (`(peer, local)` addresses) when it is known.
    pub async fn ingest(&self, decoded: Decoded, connection: Option<(SocketAddr, SocketAddr)>) -> Result<(), Refusal> {
        self.counters.rejected.fetch_add(decoded.rejected as u64, Ordering::Relaxed);
        if decoded.spans.is_empty() {
            return Ok(());
        }
        let pid = match connection {
            Some((peer, local)) => self.peers.owner(peer, local).await,
            None => None,
        };
        let count = decoded.spans.len() as u64;
        match self.batches.try_send(SdkBatch { spans: decoded.spans, peer_pid: pid }) {
            Ok(()) => {
                self.counters.received.fetch_add(count, Ordering::Relaxed);
                Ok(())
            }
            Err(_) => {
                self.counters.refused_busy.fetch_add(count, Ordering::Relaxed);
                Err(Refusal::Busy)
            }
        }
    }

    pub fn count_bad_request(&self) {
        self.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
    }
}

/// Peer socket → pid, cached briefly: an SDK reuses its connection for many requests.
pub(crate) struct PeerAttribution {
    procfs: Procfs,
    /// The processes the agent traces, the only candidates.
    traced: Arc<RwLock<Vec<u32>>>,
    cache: Mutex<HashMap<SocketAddr, (Option<u32>, Instant)>>,
}

impl PeerAttribution {
    pub fn new(traced: Arc<RwLock<Vec<u32>>>) -> Self {
        Self { procfs: Procfs::host(), traced, cache: Mutex::new(HashMap::new()) }
    }

    async fn owner(self: &Arc<Self>, peer: SocketAddr, local: SocketAddr) -> Option<u32> {
        if let Some(pid) = self.cached(peer) {
            return pid;
        }
        let this = Arc::clone(self);
        // Reading /proc is blocking file I/O.
        let pid = tokio::task::spawn_blocking(move || {
            let candidates = this.traced.read().map(|pids| pids.clone()).unwrap_or_default();
            this.procfs.owner_of_connection(peer, local, &candidates)
        })
        .await
        .ok()
        .flatten();
        self.remember(peer, pid);
        pid
    }

    fn cached(&self, peer: SocketAddr) -> Option<Option<u32>> {
        let cache = self.cache.lock().ok()?;
        let (pid, at) = cache.get(&peer)?;
        (at.elapsed() < PEER_CACHE_TTL).then_some(*pid)
    }

    fn remember(&self, peer: SocketAddr, pid: Option<u32>) {
        let Ok(mut cache) = self.cache.lock() else { return };
        if cache.len() >= PEER_CACHE_MAX {
            cache.retain(|_, (_, at)| at.elapsed() < PEER_CACHE_TTL);
        }
        if cache.len() < PEER_CACHE_MAX {
            cache.insert(peer, (pid, Instant::now()));
        }
    }
}

/// Binds the configured ports and serves them on the current runtime. A port that cannot be
/// bound (another collector may hold 4317/4318) is reported and left out: the agent's own
/// tracing goes on.
pub(crate) async fn serve(
    config: &ReceiverConfig,
    batches: mpsc::Sender<SdkBatch>,
    traced: Arc<RwLock<Vec<u32>>>,
    counters: Arc<MergeCounters>,
) {
    let intake = Intake { batches, peers: Arc::new(PeerAttribution::new(traced)), counters };
    if let Some(listener) = bind(config.grpc, "--receive-grpc").await {
        tokio::spawn(grpc::serve(listener, intake.clone()));
        tracing::info!(addr = ?config.grpc, "receiving SDK spans over gRPC (OTLP TraceService, Scouter AuthService/MessageService)");
    }
    if let Some(listener) = bind(config.http, "--receive-http").await {
        tokio::spawn(http::serve(listener, intake));
        tracing::info!(addr = ?config.http, "receiving SDK spans over HTTP (OTLP /v1/traces, Scouter /scouter/message)");
    }
}

async fn bind(addr: Option<SocketAddr>, flag: &str) -> Option<tokio::net::TcpListener> {
    let addr = addr?;
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => Some(listener),
        Err(error) => {
            tracing::warn!(%addr, %error, "{flag}: cannot listen, SDK spans are not received there (another collector? choose another address or `off`)");
            None
        }
    }
}

/// A token for Scouter's login: the SDK needs one to send, and the agent, reachable from the
/// node only, takes any credentials (they are meant for the real backend).
fn login_token() -> String {
    format!("scouter-agent.{}", crate::spans::SpanId::random())
}

/// Whether a Scouter `Authorization` value carries a bearer token.
fn has_bearer(authorization: Option<&str>) -> bool {
    authorization.and_then(|value| value.strip_prefix("Bearer ")).is_some_and(|token| !token.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_to_a_receiver_port_are_recognised() {
        let config = ReceiverConfig {
            grpc: Some("127.0.0.1:4317".parse().unwrap()),
            http: Some("0.0.0.0:4318".parse().unwrap()),
        };
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert!(config.is_receiver(ip("127.0.0.1"), 4317));
        assert!(config.is_receiver(ip("127.0.0.2"), 4317), "all of 127/8 is this host");
        assert!(config.is_receiver(ip("::ffff:127.0.0.1"), 4317));
        assert!(!config.is_receiver(ip("10.0.0.5"), 4317), "another host's collector");
        assert!(config.is_receiver(ip("10.0.0.5"), 4318), "listening on every address");
        assert!(!config.is_receiver(ip("127.0.0.1"), 8080));
        assert!(!ReceiverConfig { grpc: None, http: None }.is_receiver(ip("127.0.0.1"), 4317));
    }
}
