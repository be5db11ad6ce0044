//! One span per HTTP exchange when an SDK and the agent both saw it.
//!
//! Client side:
//! An SDK's HTTP client instrumentation puts its client span's ids in the request's
//! `traceparent`; the kernel adopts that header rather than inserting another, so the agent's
//! client span has the SDK span's very ids: the twins share `(trace id, span id)`. The agent's
//! span has no parent (the kernel cannot tell which SDK span was current); the SDK's has.
//!
//! The agent finishes its span when the response is read, the SDK exports seconds later
//! (batching), so an agent client span whose request carried the process's own context waits
//! up to a window for its twin. Twins become one span: the agent's timing and attributes, the SDK's
//! parent, the SDK's attributes the agent lacks, its events and links. A twin that comes after
//! the other side already left is dropped and counted, never exported twice.
//!
//! Server side: when the SDK's SERVER span for a request the agent serves is made current, the
//! agent's server span takes its id ([`super::placement`]) and waits the same way.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::bounded::BoundedMap;
use super::MergeCounters;
use crate::spans::{Span, SpanId, SpanKind, StatusCode, TraceId};

/// Agent spans held at once; beyond it new candidates are exported without waiting.
const MAX_HELD: usize = 65_536;
/// Exported ids remembered to recognise a late twin.
const MAX_RECENT: usize = 65_536;

type Key = (TraceId, SpanId);

pub(super) struct Twins {
    window: Duration,
    held: HashMap<Key, Span>,
    /// Held keys by arrival, for expiry (a key already merged is skipped).
    arrivals: VecDeque<(Key, Instant)>,
    /// Agent spans that waited in vain and left alone.
    agent_left: Recent,
    /// SDK client spans that left with no agent twin in waiting.
    sdk_left: Recent,
    counters: Arc<MergeCounters>,
}

impl Twins {
    pub fn new(window: Duration, counters: Arc<MergeCounters>) -> Self {
        Self {
            window,
            held: HashMap::new(),
            arrivals: VecDeque::new(),
            agent_left: Recent::default(),
            sdk_left: Recent::default(),
            counters,
        }
    }

    /// An agent span an SDK will report too: `None` while it waits, `Some` to export now.
    pub fn on_agent_span(&mut self, span: Span, now: Instant) -> Option<Span> {
        let key = key(&span);
        if self.sdk_left.contains(&key) {
            self.counters.late_twins_dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self.held.len() >= MAX_HELD {
            return Some(span);
        }
        self.held.insert(key, span);
        self.arrivals.push_back((key, now));
        None
    }

    /// An SDK span: merged with its waiting twin, dropped if its twin already left, else as is.
    pub fn on_sdk_span(&mut self, span: Span) -> Option<Span> {
        let key = key(&span);
        if let Some(agent) = self.held.remove(&key) {
            self.counters.twins_merged.fetch_add(1, Ordering::Relaxed);
            return Some(merged(agent, span));
        }
        if self.agent_left.contains(&key) {
            self.counters.late_twins_dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if matches!(span.kind, SpanKind::Client | SpanKind::Server) {
            self.sdk_left.insert(key);
        }
        Some(span)
    }

    pub fn expired(&mut self, now: Instant) -> Vec<Span> {
        let mut out = Vec::new();
        while let Some((key, since)) = self.arrivals.front().copied() {
            if now.duration_since(since) < self.window {
                break;
            }
            self.arrivals.pop_front();
            if let Some(span) = self.held.remove(&key) {
                self.agent_left.insert(key);
                out.push(span);
            }
        }
        out
    }

    pub fn drain(&mut self) -> Vec<Span> {
        self.arrivals.clear();
        self.held.drain().map(|(_, span)| span).collect()
    }
}

fn key(span: &Span) -> Key {
    (span.trace_id, span.span_id)
}

/// The agent's span (measured at the socket) completed by what only the SDK knew.
fn merged(mut agent: Span, sdk: Span) -> Span {
    agent.parent_span_id = sdk.parent_span_id;
    agent.flags.remote_parent = sdk.flags.remote_parent;
    for (key, value) in sdk.attributes {
        agent.attributes.entry(key).or_insert(value);
    }
    agent.events.extend(sdk.events);
    agent.links.extend(sdk.links);
    if agent.trace_state.is_empty() {
        agent.trace_state = sdk.trace_state;
    }
    if sdk.status.code == StatusCode::Error && agent.status.code != StatusCode::Error {
        agent.status = sdk.status;
    }
    // The SDK's resource is the process's with what the SDK says of itself (its service name).
    if sdk.resource.attributes.get("process.pid") == agent.resource.attributes.get("process.pid") {
        agent.resource = sdk.resource;
    }
    agent
}

/// Keys seen recently, the oldest forgotten first.
#[derive(Default)]
struct Recent(BoundedMap<Key, (), MAX_RECENT>);

impl Recent {
    fn insert(&mut self, key: Key) {
        self.0.insert(key, ());
    }

    fn contains(&self, key: &Key) -> bool {
        self.0.contains(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::{AttributeValue, SpanEvent};

    const WINDOW: Duration = Duration::from_secs(10);

    fn twins() -> (Twins, Arc<MergeCounters>) {
        let counters = Arc::new(MergeCounters::default());
        (Twins::new(WINDOW, Arc::clone(&counters)), counters)
    }

    fn agent_client() -> Span {
        let mut span = Span::for_test(SpanKind::Client, SpanId([5; 8]));
        span.attributes.insert("url.full".into(), "http://leaf/x".into());
        span.attributes.insert("http.response.status_code".into(), 200i64.into());
        span
    }

    fn sdk_client() -> Span {
        let mut span = Span::for_test(SpanKind::Client, SpanId([5; 8]));
        span.parent_span_id = Some(SpanId([4; 8]));
        span.attributes.insert("http.response.status_code".into(), 201i64.into());
        span.attributes.insert("http.method".into(), "GET".into());
        span.events.push(SpanEvent { name: "retry".into(), time_unix_nano: 1, attributes: Default::default() });
        span
    }

    #[test]
    fn twins_become_one_span_with_the_sdk_parent_and_both_sides_attributes() {
        let (mut twins, counters) = twins();
        let now = Instant::now();
        assert!(twins.on_agent_span(agent_client(), now).is_none(), "held for its twin");
        let merged = twins.on_sdk_span(sdk_client()).expect("merged");
        assert_eq!(merged.parent_span_id, Some(SpanId([4; 8])));
        assert_eq!(merged.attributes.get("url.full"), Some(&"http://leaf/x".into()));
        assert_eq!(merged.attributes.get("http.method"), Some(&"GET".into()));
        // Both said it: the socket's measurement stands.
        assert_eq!(merged.attributes.get("http.response.status_code"), Some(&AttributeValue::Int(200)));
        assert_eq!(merged.events.len(), 1);
        assert!(twins.expired(now + WINDOW).is_empty(), "nothing left waiting");
        assert_eq!(counters.twins_merged.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_agent_span_without_a_twin_leaves_after_the_window_and_a_late_twin_is_dropped() {
        let (mut twins, counters) = twins();
        let now = Instant::now();
        assert!(twins.on_agent_span(agent_client(), now).is_none());
        assert!(twins.expired(now + WINDOW / 2).is_empty());
        assert_eq!(twins.expired(now + WINDOW), [agent_client()]);
        assert!(twins.on_sdk_span(sdk_client()).is_none(), "never twice");
        assert_eq!(counters.late_twins_dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_sdk_span_that_left_first_makes_its_late_agent_twin_a_drop() {
        let (mut twins, counters) = twins();
        let now = Instant::now();
        assert_eq!(twins.on_sdk_span(sdk_client()), Some(sdk_client()));
        assert!(twins.on_agent_span(agent_client(), now).is_none());
        assert!(twins.drain().is_empty());
        assert_eq!(counters.late_twins_dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn spans_no_agent_span_waits_for_pass_at_once() {
        let (mut twins, _) = twins();
        let internal = Span::for_test(SpanKind::Internal, SpanId([3; 8]));
        assert_eq!(twins.on_sdk_span(internal.clone()), Some(internal));
        assert_eq!(twins.on_sdk_span(sdk_client()), Some(sdk_client()));
    }
}
