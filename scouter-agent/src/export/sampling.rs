//! Trace sampling, decided from the trace id alone so that every span of a trace, in every
//! process and on every node, gets the same decision without coordination.
//!
//! The id's last 7 bytes (56 bits) are its random part in W3C Trace Context level 2 and are
//! what OpenTelemetry's trace-id-ratio sampler compares: a trace is kept when they fall below
//! `ratio × 2^56`. A sink's ratio compares the same bits with its own threshold, so with the
//! global ratio it keeps the traces under the lower of the two ("global applies to every sink,
//! a sink's ratio to that sink only"), and a lower ratio always keeps a subset of a higher one.

use crate::spans::{Span, TraceId};

const RANDOM_BITS: u32 = 56;

#[derive(Clone, Copy, Debug)]
pub struct Sampler {
    /// Traces whose random part is below this are kept; 2^56 keeps all.
    threshold: u64,
    /// Also drop spans whose caller decided "not sampled".
    honor_sampled_flag: bool,
}

impl Sampler {
    pub fn new(ratio: f64, honor_sampled_flag: bool) -> Self {
        let all = 1u64 << RANDOM_BITS;
        // Rounded so that 1.0 keeps every trace and 0.0 none.
        let threshold = (ratio.clamp(0.0, 1.0) * all as f64).round() as u64;
        Self { threshold, honor_sampled_flag }
    }

    /// A sink's own ratio: only the trace id counts (the caller's flag was the global
    /// sampler's to honour).
    pub fn ratio_only(ratio: f64) -> Self {
        Self::new(ratio, false)
    }

    pub fn keeps(&self, span: &Span) -> bool {
        if self.honor_sampled_flag && !span.flags.sampled {
            return false;
        }
        self.keeps_trace(&span.trace_id)
    }

    pub fn keeps_trace(&self, trace_id: &TraceId) -> bool {
        random_part(trace_id) < self.threshold
    }
}

fn random_part(trace_id: &TraceId) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[1..].copy_from_slice(&trace_id.0[9..]);
    u64::from_be_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::{ContextFlags, SpanId, SpanKind};

    #[test]
    fn the_ratio_holds_over_many_random_traces() {
        let sampler = Sampler::ratio_only(0.25);
        let kept = (0..40_000).filter(|_| sampler.keeps_trace(&TraceId::random())).count();
        // 40,000 draws of p = 0.25: the standard deviation is about 87.
        assert!((9_500..=10_500).contains(&kept), "kept {kept} of 40000 at 0.25");
    }

    #[test]
    fn decisions_depend_on_the_trace_id_only_and_nest() {
        let (quarter, half) = (Sampler::ratio_only(0.25), Sampler::ratio_only(0.5));
        for _ in 0..5_000 {
            let id = TraceId::random();
            assert_eq!(quarter.keeps_trace(&id), quarter.keeps_trace(&id));
            assert!(!quarter.keeps_trace(&id) || half.keeps_trace(&id), "a lower ratio keeps a subset");
        }
        assert!(Sampler::ratio_only(1.0).keeps_trace(&TraceId([0xff; 16])));
        assert!(!Sampler::ratio_only(0.0).keeps_trace(&TraceId([0; 16])));
    }

    #[test]
    fn the_callers_not_sampled_flag_is_honoured_when_asked() {
        let unsampled = Span {
            flags: ContextFlags { sampled: false, remote_parent: true },
            ..Span::for_test(SpanKind::Server, SpanId::random())
        };
        assert!(!Sampler::new(1.0, true).keeps(&unsampled));
        assert!(Sampler::new(1.0, false).keeps(&unsampled));
        assert!(Sampler::new(1.0, true).keeps(&Span::for_test(SpanKind::Server, SpanId::random())));
    }
}
