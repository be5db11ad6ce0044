//! The operations endpoint: Prometheus metrics (`/metrics`) and health (`/healthz` for
//! liveness, `/readyz` for readiness), served on `--metrics-listen` (127.0.0.1:9464 by
//! default). It reads counters the stages keep anyway; serving never touches the event path.
//!
//! Liveness means the agent's event loop is turning (it ticks every second): a wedged agent
//! fails `/healthz` after [`STALL_LIMIT`]. Readiness means the probes are attached and the
//! first scan of running processes is done.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::export::counters::{DropReason, SinkCounters};
use crate::export::PipelineCounters;
use crate::merge::MergeCounters;

/// `/healthz` fails when the event loop has not ticked for this long.
const STALL_LIMIT: Duration = Duration::from_secs(30);

/// What the endpoint reports, updated by the agent.
pub struct AgentStatus {
    pipeline: Arc<PipelineCounters>,
    sinks: Vec<(&'static str, Arc<SinkCounters>)>,
    merge: Arc<MergeCounters>,
    pub processes_attached: AtomicU64,
    /// The kernel's drop counters by name (cumulative), as last read.
    pub kernel_drops: Mutex<Vec<(&'static str, u64)>>,
    /// Each feature and whether it works here, as found at start.
    features: Mutex<Vec<(&'static str, bool)>>,
    pub ready: AtomicBool,
    /// Unix seconds of the event loop's last tick.
    last_tick: AtomicU64,
}

impl AgentStatus {
    pub fn new(
        pipeline: Arc<PipelineCounters>,
        sinks: Vec<(&'static str, Arc<SinkCounters>)>,
        merge: Arc<MergeCounters>,
    ) -> Self {
        Self {
            pipeline,
            sinks,
            merge,
            processes_attached: AtomicU64::new(0),
            kernel_drops: Mutex::new(Vec::new()),
            features: Mutex::new(Vec::new()),
            ready: AtomicBool::new(false),
            last_tick: AtomicU64::new(unix_seconds()),
        }
    }

    /// Records which features work (once the probes are attached).
    pub fn set_features(&self, features: &crate::probes::FeatureStates) {
        let states = features.iter().map(|(feature, state)| (feature.name(), state.is_enabled())).collect();
        *self.features.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = states;
    }

    pub fn tick(&self) {
        self.last_tick.store(unix_seconds(), Ordering::Relaxed);
    }

    fn alive(&self) -> bool {
        unix_seconds().saturating_sub(self.last_tick.load(Ordering::Relaxed)) < STALL_LIMIT.as_secs()
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        metric(&mut out, "spans_produced_total", "counter", "Spans the agent finished (before sampling).");
        let _ = writeln!(out, "scouter_agent_spans_produced_total {}", load(&self.pipeline.produced));
        metric(
            &mut out,
            "spans_sampled_out_total",
            "counter",
            "Spans the global sample ratio or a caller's not-sampled flag left out.",
        );
        let _ = writeln!(out, "scouter_agent_spans_sampled_out_total {}", load(&self.pipeline.sampled_out));
        self.sink_metrics(&mut out);
        self.sdk_metrics(&mut out);
        metric(&mut out, "processes_attached", "gauge", "Python processes being traced.");
        let _ = writeln!(out, "scouter_agent_processes_attached {}", load(&self.processes_attached));
        metric(
            &mut out,
            "kernel_drops_total",
            "counter",
            "Events the eBPF programs dropped or skipped, by reason (ring_full: ring-buffer events lost).",
        );
        for (reason, count) in self.kernel_drops.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "scouter_agent_kernel_drops_total{{reason=\"{reason}\"}} {count}");
        }
        metric(
            &mut out,
            "feature_enabled",
            "gauge",
            "1 when the feature's programs run on this kernel, 0 when it is off or unavailable (see the start-up log).",
        );
        for (feature, enabled) in self.features.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "scouter_agent_feature_enabled{{feature=\"{feature}\"}} {}", u8::from(*enabled));
        }
        metric(&mut out, "up", "gauge", "1 while the event loop is turning.");
        let _ = writeln!(out, "scouter_agent_up {}", u8::from(self.alive()));
        out
    }

    fn sdk_metrics(&self, out: &mut String) {
        let m = &self.merge;
        let counters: [(&str, &str, &AtomicU64); 9] = [
            ("sdk_spans_received_total", "SDK spans the receivers accepted.", &m.received),
            ("sdk_spans_rejected_total", "SDK spans refused for invalid ids (OTLP partial success).", &m.rejected),
            (
                "sdk_spans_refused_busy_total",
                "SDK spans refused retryably while the agent was behind.",
                &m.refused_busy,
            ),
            (
                "sdk_bad_requests_total",
                "Requests to the receivers whose body was not a trace request.",
                &m.bad_requests,
            ),
            (
                "sdk_spans_unattributed_total",
                "SDK spans from no traced process the agent could tell: forwarded as sent.",
                &m.unattributed,
            ),
            (
                "sdk_twins_merged_total",
                "HTTP calls both an SDK and the agent reported, merged into one span.",
                &m.twins_merged,
            ),
            (
                "sdk_roots_unplaced_total",
                "SDK root spans of traced processes the kernel did not see made current inside an agent span (background work, a span never made current, an SDK whose context the agent cannot read): left as the SDK made them.",
                &m.unplaced_roots,
            ),
            (
                "sdk_late_twins_dropped_total",
                "Reports of a call whose other report had already left: dropped, not duplicated.",
                &m.late_twins_dropped,
            ),
            (
                "sdk_spans_duplicate_total",
                "SDK spans received again (exported both to Scouter and over OTLP, or an export retried): forwarded once.",
                &m.duplicates_dropped,
            ),
        ];
        for (name, help, counter) in counters {
            metric(out, name, "counter", help);
            let _ = writeln!(out, "scouter_agent_{name} {}", counter.load(Ordering::Relaxed));
        }
    }

    fn sink_metrics(&self, out: &mut String) {
        type Read = fn(&SinkCounters) -> u64;
        let per_sink: [(&str, &str, &str, Read); 5] = [
            ("sink_spans_exported_total", "counter", "Spans the sink accepted.", |c| {
                c.exported.load(Ordering::Relaxed)
            }),
            ("sink_spans_sampled_out_total", "counter", "Spans the sink's own sample ratio left out.", |c| {
                c.sampled_out.load(Ordering::Relaxed)
            }),
            ("sink_queue_spans", "gauge", "Spans queued or in flight for the sink.", |c| {
                c.queued.load(Ordering::Relaxed)
            }),
            ("sink_requests_total", "counter", "Requests sent to the sink (retries included).", |c| {
                c.requests.load(Ordering::Relaxed)
            }),
            ("sink_retries_total", "counter", "Failed requests that were retried.", |c| {
                c.retries.load(Ordering::Relaxed)
            }),
        ];
        for (name, kind, help, read) in per_sink {
            metric(out, name, kind, help);
            for (sink, counters) in &self.sinks {
                let _ = writeln!(out, "scouter_agent_{name}{{sink=\"{sink}\"}} {}", read(counters));
            }
        }
        metric(out, "sink_spans_dropped_total", "counter", "Spans that did not reach the sink, by reason.");
        for (sink, counters) in &self.sinks {
            for reason in DropReason::ALL {
                let _ = writeln!(
                    out,
                    "scouter_agent_sink_spans_dropped_total{{sink=\"{sink}\",reason=\"{}\"}} {}",
                    reason.label(),
                    counters.dropped(reason)
                );
            }
        }
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP scouter_agent_{name} {help}\n# TYPE scouter_agent_{name} {kind}");
}

fn unix_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Binds `listen` now (so a taken port is a start-up error) and serves on the current runtime.
pub async fn serve(listen: SocketAddr, status: Arc<AgentStatus>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening for metrics on {listen} (--metrics-listen; `off` disables it)"))?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(status);
    tracing::info!(%listen, "serving /metrics, /healthz and /readyz");
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "the metrics endpoint stopped");
        }
    });
    Ok(())
}

async fn metrics(State(status): State<Arc<AgentStatus>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], status.metrics())
}

async fn healthz(State(status): State<Arc<AgentStatus>>) -> impl IntoResponse {
    match status.alive() {
        true => (StatusCode::OK, "ok\n"),
        false => (StatusCode::SERVICE_UNAVAILABLE, "the event loop is stalled\n"),
    }
}

async fn readyz(State(status): State<Arc<AgentStatus>>) -> impl IntoResponse {
    match status.ready.load(Ordering::Relaxed) && status.alive() {
        true => (StatusCode::OK, "ready\n"),
        false => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_name_every_sink_and_reason_in_the_text_format() {
        let pipeline = Arc::new(PipelineCounters::default());
        pipeline.produced.store(10, Ordering::Relaxed);
        let sink = Arc::new(SinkCounters::default());
        sink.drop_spans(DropReason::QueueFull, 3);
        SinkCounters::add(&sink.exported, 7);
        let status = AgentStatus::new(pipeline, vec![("otlp-grpc", sink)], Arc::default());
        *status.kernel_drops.lock().unwrap() = vec![("ring_full", 2)];
        let mut features = crate::probes::FeatureStates::new(crate::probes::IoCapture::SocketTracepoints);
        features.set(crate::probes::Feature::Tls, crate::probes::FeatureState::Unavailable("refused".into()));
        status.set_features(&features);
        let text = status.metrics();
        for line in [
            "scouter_agent_spans_produced_total 10",
            "scouter_agent_sink_spans_exported_total{sink=\"otlp-grpc\"} 7",
            "scouter_agent_sink_spans_dropped_total{sink=\"otlp-grpc\",reason=\"queue_full\"} 3",
            "scouter_agent_sink_spans_dropped_total{sink=\"otlp-grpc\",reason=\"shutdown\"} 0",
            "scouter_agent_kernel_drops_total{reason=\"ring_full\"} 2",
            "scouter_agent_feature_enabled{feature=\"core\"} 1",
            "scouter_agent_feature_enabled{feature=\"tls\"} 0",
            "scouter_agent_up 1",
            "# TYPE scouter_agent_sink_queue_spans gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(status.alive());
        status.last_tick.store(0, Ordering::Relaxed);
        assert!(!status.alive());
    }
}
