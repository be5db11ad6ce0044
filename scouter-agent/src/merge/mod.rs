//! Merge: spans from in-process SDKs (the OpenTelemetry SDK, Scouter's `scouter-ml`) joined
//! with the agent's own into one trace.
//!
//! - [`receivers`]: the ports SDKs export to (OTLP gRPC/HTTP, Scouter's ingest API);
//! - [`decode`]: their requests into the agent's span model;
//! - [`peer`]: which traced process sent a request (its socket), so SDK spans carry the same
//!   resource as the agent's spans of that process;
//! - [`placement`]: SDK spans and the agent's rewritten to where the kernel put them when the
//!   SDK made a span current (nesting both ways, one trace);
//! - [`twins`]: one span per HTTP exchange when both the SDK and the agent saw it.
//!
//! The kernel adopts a `traceparent` that an SDK already put in a request instead of
//! inserting a second one, and takes its ids as the client span's own; the SDK reports a span
//! with those same ids. That pair is merged here into one span carrying both sides'
//! attributes and the SDK's parent. The kernel also follows which span an SDK (OpenTelemetry's,
//! or a measured `scouter-ml` build) made current on each thread and task: it parents the
//! agent's spans under it and says where the SDK's spans go ([`crate::events::SdkActivation`]).
//! A span received twice (an SDK exporting to two of the agent's ports) is forwarded once.

mod bounded;
pub mod decode;
pub mod peer;
mod placement;
pub mod receivers;
mod twins;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::events::SdkActivation;
use crate::spans::{Resource, Span, SpanId, TraceId};
use bounded::BoundedMap;
use placement::Placements;
use twins::Twins;

/// How long an agent span that may have an SDK twin waits for it: the SDKs' batch processors
/// export every 5 s by default.
pub const DEFAULT_TWIN_WINDOW: Duration = Duration::from_secs(10);

/// The spans of one accepted request, and the traced process whose socket sent it.
#[derive(Debug)]
pub struct SdkBatch {
    pub spans: Vec<Span>,
    pub peer_pid: Option<u32>,
}

/// What the merge stage reports in `/metrics`.
#[derive(Debug, Default)]
pub struct MergeCounters {
    /// SDK spans accepted by a receiver.
    pub received: AtomicU64,
    /// SDK spans refused because their ids were invalid.
    pub rejected: AtomicU64,
    /// SDK spans refused (retryably) because the event loop was behind.
    pub refused_busy: AtomicU64,
    /// Requests whose body was not a request at all.
    pub bad_requests: AtomicU64,
    /// SDK spans whose process the agent could not tell: forwarded with their own resource.
    pub unattributed: AtomicU64,
    /// Exchanges both sides reported, merged into one span.
    pub twins_merged: AtomicU64,
    /// Twins that arrived after the other side had left: dropped rather than duplicated.
    pub late_twins_dropped: AtomicU64,
    /// SDK root spans of traced processes that the kernel did not place under an agent span:
    /// left as the SDK made them (never given a guessed parent).
    pub unplaced_roots: AtomicU64,
    /// SDK spans received again (an SDK exporting both to Scouter and over OTLP, or retrying
    /// an export that had arrived): forwarded once.
    pub duplicates_dropped: AtomicU64,
}

/// SDK spans remembered to drop repeats: a few seconds of spans at high rates.
const REMEMBERED_SDK_SPANS: usize = 32_768;

/// The merge stage, driven by the agent's event loop.
pub struct Merger {
    twins: Twins,
    placements: Placements,
    /// The ids, as the SDK sent them, of the SDK spans already taken.
    taken: BoundedMap<(TraceId, SpanId), (), REMEMBERED_SDK_SPANS>,
    counters: Arc<MergeCounters>,
}

impl Merger {
    pub fn new(window: Duration, counters: Arc<MergeCounters>) -> Self {
        Self {
            twins: Twins::new(window, Arc::clone(&counters)),
            placements: Placements::default(),
            taken: BoundedMap::default(),
            counters,
        }
    }

    /// The spans of `batch` to export: attributed to their process (its resource, the SDK's
    /// own attributes on top), twins merged, repeats of spans already taken dropped.
    /// `process_resource` gives a traced process's resource.
    pub fn on_sdk_batch(
        &mut self,
        batch: SdkBatch,
        process_resource: impl Fn(u32) -> Option<Arc<Resource>>,
    ) -> Vec<Span> {
        let mut merged_resources: HashMap<*const Resource, Arc<Resource>> = HashMap::new();
        let mut out = Vec::with_capacity(batch.spans.len());
        for mut span in batch.spans {
            if !self.take(&span) {
                continue;
            }
            let claimed = span.resource.process_pid().and_then(|pid| u32::try_from(pid).ok());
            let process = [batch.peer_pid, claimed]
                .into_iter()
                .flatten()
                .find_map(|pid| process_resource(pid).map(|resource| (pid, resource)));
            match process {
                Some((pid, process)) => {
                    if !self.placements.place_sdk_span(pid, &mut span) && span.parent_span_id.is_none() {
                        self.counters.unplaced_roots.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    let key = Arc::as_ptr(&span.resource);
                    let resource = merged_resources
                        .entry(key)
                        .or_insert_with(|| Arc::new(with_sdk_resource(&process, &span.resource)));
                    span.resource = Arc::clone(resource);
                }
                None => {
                    self.counters.unattributed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            out.extend(self.twins.on_sdk_span(span));
        }
        out
    }

    /// Whether `span` is new; a repeat is counted.
    fn take(&mut self, span: &Span) -> bool {
        let ids = (span.trace_id, span.span_id);
        if self.taken.contains(&ids) {
            self.counters.duplicates_dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return false;
        }
        self.taken.insert(ids, ());
        true
    }

    /// The kernel placed an SDK span made current inside the agent's.
    pub fn on_sdk_activation(&mut self, activation: &SdkActivation) {
        self.placements.on_activation(activation);
    }

    /// An agent span, placed where the kernel moved its request; `Some` to export now, `None`
    /// while it waits for its SDK twin's report: a client span whose request carried the
    /// process's own trace context (`context_from_the_process`: an SDK wrote it), or a server
    /// span whose SDK SERVER span the kernel saw made current.
    pub fn on_agent_span(&mut self, mut span: Span, context_from_the_process: bool, now: Instant) -> Option<Span> {
        let pid = span.resource.process_pid().and_then(|pid| u32::try_from(pid).ok());
        let server_twin = pid.is_some_and(|pid| self.placements.place_agent_span(pid, &mut span));
        if server_twin || context_from_the_process {
            self.twins.on_agent_span(span, now)
        } else {
            Some(span)
        }
    }

    /// Agent spans whose twin did not come in time.
    pub fn expired(&mut self, now: Instant) -> Vec<Span> {
        self.twins.expired(now)
    }

    /// Everything still waiting (at shutdown).
    pub fn drain(&mut self) -> Vec<Span> {
        self.twins.drain()
    }
}

/// The process's resource as the agent describes it (host, pid, container, Kubernetes), with
/// what the SDK said about itself on top; the pid stays the agent's (the host's view).
fn with_sdk_resource(process: &Resource, sdk: &Resource) -> Resource {
    let mut attributes = process.attributes.clone();
    for (key, value) in &sdk.attributes {
        if key != "process.pid" {
            attributes.insert(key.clone(), value.clone());
        }
    }
    Resource { attributes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::{AttributeValue, SpanId, SpanKind};

    fn resource(pairs: &[(&str, AttributeValue)]) -> Arc<Resource> {
        Arc::new(Resource { attributes: pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect() })
    }

    #[test]
    fn sdk_spans_take_their_process_resource_with_the_sdk_attributes_on_top() {
        let process = resource(&[
            ("service.name", "python".into()),
            ("process.pid", 42u32.into()),
            ("host.name", "node-1".into()),
        ]);
        let sdk = resource(&[
            ("service.name", "checkout".into()),
            ("process.pid", 7u32.into()),
            ("telemetry.sdk.name", "opentelemetry".into()),
        ]);
        let mut merger = Merger::new(DEFAULT_TWIN_WINDOW, Arc::default());
        let mut span = Span::for_test(SpanKind::Internal, SpanId([1; 8]));
        span.resource = sdk;
        let mut sibling = span.clone();
        sibling.span_id = SpanId([2; 8]);
        let out = merger.on_sdk_batch(SdkBatch { spans: vec![span, sibling], peer_pid: Some(42) }, |pid| {
            (pid == 42).then(|| Arc::clone(&process))
        });
        assert_eq!(out.len(), 2);
        let attrs = &out[0].resource.attributes;
        assert_eq!(attrs.get("service.name"), Some(&"checkout".into()));
        assert_eq!(attrs.get("process.pid"), Some(&AttributeValue::Int(42)));
        assert_eq!(attrs.get("host.name"), Some(&"node-1".into()));
        assert!(Arc::ptr_eq(&out[0].resource, &out[1].resource), "one resource per batch and SDK resource");
    }

    #[test]
    fn a_claimed_pid_counts_only_for_a_traced_process_and_otherwise_the_span_is_left_as_sent() {
        let counters = Arc::new(MergeCounters::default());
        let mut merger = Merger::new(DEFAULT_TWIN_WINDOW, Arc::clone(&counters));
        let mut span = Span::for_test(SpanKind::Internal, SpanId([1; 8]));
        span.resource = resource(&[("process.pid", 9u32.into())]);
        let out = merger.on_sdk_batch(SdkBatch { spans: vec![span.clone()], peer_pid: None }, |_| None);
        assert_eq!(out, [span]);
        assert_eq!(counters.unattributed.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn a_span_received_twice_is_forwarded_once_and_counted() {
        let counters = Arc::new(MergeCounters::default());
        let mut merger = Merger::new(DEFAULT_TWIN_WINDOW, Arc::clone(&counters));
        let span = Span::for_test(SpanKind::Internal, SpanId([1; 8]));
        let mut other_trace = span.clone();
        other_trace.trace_id = crate::spans::TraceId([9; 16]);
        let batch = |spans: Vec<Span>| SdkBatch { spans, peer_pid: None };
        assert_eq!(merger.on_sdk_batch(batch(vec![span.clone()]), |_| None).len(), 1);
        // The same span over the other export, and a span of another trace with the same id.
        let out = merger.on_sdk_batch(batch(vec![span, other_trace.clone()]), |_| None);
        assert_eq!(out, [other_trace]);
        assert_eq!(counters.duplicates_dropped.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
