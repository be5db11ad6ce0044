//! Where SDK spans go relative to the agent's, as the kernel decided when the SDK made them
//! current (see `scouter-ebpf/src/programs/sdk_context.rs`).
//!
//! The kernel acts at once (the client calls it parents next already carry the right trace);
//! the spans it reported earlier, and the SDK's own spans, are rewritten here to match:
//! - [`SdkPlacement::Joined`]: the served request had started a trace of its own and joined the
//!   SDK's; the agent's spans of the old trace move to the new one;
//! - [`SdkPlacement::Moved`]: the SDK's trace moved into the agent's; the SDK's spans of that
//!   trace follow;
//! - either way an SDK root made current inside the agent's span becomes its child;
//! - a twin (the SDK's SERVER span of the request the agent serves): the agent's server span
//!   takes the SDK span's id, and its children follow, so the two reports merge in
//!   [`super::twins`].
//!
//! Everything is keyed by process as well: ids are only unique where they were made.

use crate::events::{SdkActivation, SdkPlacement};
use crate::spans::{Span, SpanId, TraceId};

use super::bounded::BoundedMap;

/// Placements remembered; the oldest are forgotten first (their spans are long exported).
const MAX_PLACEMENTS: usize = 65_536;

#[derive(Default)]
pub(super) struct Placements {
    /// (pid, the request's own trace) → the SDK trace it joined.
    joined: BoundedMap<(u32, TraceId), TraceId, MAX_PLACEMENTS>,
    /// (pid, SDK trace) → the agent's trace it moved into.
    moved: BoundedMap<(u32, TraceId), TraceId, MAX_PLACEMENTS>,
    /// (pid, SDK span) → the agent's span it was made current in: its parent if it is a root.
    adopted: BoundedMap<(u32, SpanId), SpanId, MAX_PLACEMENTS>,
    /// (pid, the request's span) → the SDK twin's id it takes.
    renamed: BoundedMap<(u32, SpanId), SpanId, MAX_PLACEMENTS>,
    /// (pid, SDK span) of the twins above.
    renamed_to: BoundedMap<(u32, SpanId), (), MAX_PLACEMENTS>,
}

impl Placements {
    pub fn on_activation(&mut self, activation: &SdkActivation) {
        let pid = activation.pid;
        let sdk_trace = TraceId(activation.sdk_trace_id);
        let agent_trace = TraceId(activation.agent_trace_id);
        let sdk_span = SpanId(activation.sdk_span_id);
        let agent_span = SpanId(activation.agent_span_id);
        match activation.placement {
            SdkPlacement::SameTrace => {}
            SdkPlacement::Joined => self.joined.insert((pid, agent_trace), sdk_trace),
            SdkPlacement::Moved => self.moved.insert((pid, sdk_trace), agent_trace),
        }
        if activation.twin {
            self.renamed.insert((pid, agent_span), sdk_span);
            self.renamed_to.insert((pid, sdk_span), ());
        } else if activation.placement != SdkPlacement::SameTrace {
            self.adopted.insert((pid, sdk_span), agent_span);
        }
    }

    /// An SDK span of process `pid`, placed as the kernel decided; false when the kernel said
    /// nothing of it or its trace.
    pub fn place_sdk_span(&self, pid: u32, span: &mut Span) -> bool {
        let moved = self.moved.get(&(pid, span.trace_id)).copied();
        if let Some(trace) = moved {
            span.trace_id = trace;
        }
        let adopted = self.adopted.get(&(pid, span.span_id)).copied();
        if let (Some(parent), None) = (adopted, span.parent_span_id) {
            span.parent_span_id = Some(parent);
            span.flags.remote_parent = false;
        }
        moved.is_some() || adopted.is_some() || self.renamed_to.contains(&(pid, span.span_id))
    }

    /// An agent span of process `pid`, placed likewise; true when it became an SDK span's
    /// twin (it waits for the SDK's report to merge with).
    pub fn place_agent_span(&self, pid: u32, span: &mut Span) -> bool {
        if let Some(trace) = self.joined.get(&(pid, span.trace_id)) {
            span.trace_id = *trace;
        }
        if let Some(parent) = span.parent_span_id.and_then(|parent| self.renamed.get(&(pid, parent))) {
            span.parent_span_id = Some(*parent);
        }
        match self.renamed.get(&(pid, span.span_id)) {
            Some(twin) => {
                span.span_id = *twin;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::SpanKind;

    const PID: u32 = 42;

    fn activation(placement: SdkPlacement, twin: bool) -> SdkActivation {
        SdkActivation {
            pid: PID,
            sdk_trace_id: [1; 16],
            sdk_span_id: [2; 8],
            agent_trace_id: [3; 16],
            agent_span_id: [4; 8],
            placement,
            twin,
        }
    }

    fn span(kind: SpanKind, trace: u8, id: u8, parent: Option<u8>) -> Span {
        let mut span = Span::for_test(kind, SpanId([id; 8]));
        span.trace_id = TraceId([trace; 16]);
        span.parent_span_id = parent.map(|parent| SpanId([parent; 8]));
        span
    }

    #[test]
    fn a_request_that_joined_the_sdk_trace_takes_its_spans_along_and_the_sdk_root_under_it() {
        let mut placements = Placements::default();
        placements.on_activation(&activation(SdkPlacement::Joined, false));
        let mut request = span(SpanKind::Server, 3, 4, None);
        assert!(!placements.place_agent_span(PID, &mut request));
        assert_eq!((request.trace_id, request.span_id), (TraceId([1; 16]), SpanId([4; 8])));
        let mut root = span(SpanKind::Internal, 1, 2, None);
        placements.place_sdk_span(PID, &mut root);
        assert_eq!(root.parent_span_id, Some(SpanId([4; 8])));
        let mut child = span(SpanKind::Internal, 1, 9, Some(2));
        placements.place_sdk_span(PID, &mut child);
        assert_eq!((child.trace_id, child.parent_span_id), (TraceId([1; 16]), Some(SpanId([2; 8]))));
        let mut elsewhere = span(SpanKind::Server, 3, 4, None);
        placements.place_agent_span(PID + 1, &mut elsewhere);
        assert_eq!(elsewhere.trace_id, TraceId([3; 16]), "ids are only unique within their process");
    }

    #[test]
    fn a_moved_sdk_trace_lands_under_the_agent_span() {
        let mut placements = Placements::default();
        placements.on_activation(&activation(SdkPlacement::Moved, false));
        let mut root = span(SpanKind::Internal, 1, 2, None);
        placements.place_sdk_span(PID, &mut root);
        assert_eq!((root.trace_id, root.parent_span_id), (TraceId([3; 16]), Some(SpanId([4; 8]))));
        let mut request = span(SpanKind::Server, 3, 4, None);
        assert!(!placements.place_agent_span(PID, &mut request));
        assert_eq!(request.trace_id, TraceId([3; 16]), "the agent's trace stays");
    }

    #[test]
    fn a_twin_renames_the_request_span_and_its_children_follow() {
        let mut placements = Placements::default();
        placements.on_activation(&activation(SdkPlacement::Joined, true));
        let mut request = span(SpanKind::Server, 3, 4, None);
        assert!(placements.place_agent_span(PID, &mut request));
        assert_eq!((request.trace_id, request.span_id), (TraceId([1; 16]), SpanId([2; 8])));
        let mut call = span(SpanKind::Client, 3, 7, Some(4));
        assert!(!placements.place_agent_span(PID, &mut call));
        assert_eq!((call.trace_id, call.parent_span_id), (TraceId([1; 16]), Some(SpanId([2; 8]))));
        let mut sdk_server = span(SpanKind::Server, 1, 2, None);
        assert!(placements.place_sdk_span(PID, &mut sdk_server), "placed: as the request's twin");
        assert_eq!(sdk_server.parent_span_id, None, "a twin is not its own child");
        let mut unknown = span(SpanKind::Internal, 5, 6, None);
        assert!(!placements.place_sdk_span(PID, &mut unknown));
        assert_eq!(unknown, span(SpanKind::Internal, 5, 6, None), "left as the SDK made it");
    }
}
