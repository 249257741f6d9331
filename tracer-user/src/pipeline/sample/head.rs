//! Head sampling: the decision taken when a trace context is created, from the trace id alone
//! (consistent, `tracer_common::sampling`), the same in the kernel (the flags of the
//! `traceparent` it injects) and in the agent (the flags of the contexts it builds). Spans
//! carry it in their flags; the sampling stage drops the unsampled ones (unless a tail policy
//! keeps their trace).
use tracer_common::sampling::{HeadRule, NEVER, threshold_for_probability};

use super::tracestate::with_threshold;

/// `OTEL_TRACES_SAMPLER`: the OpenTelemetry SDK's sampler names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum SamplerKind {
    /// Every span is exported; an upstream sampled flag is passed on unchanged, new traces
    /// are sampled.
    #[default]
    AlwaysOn,
    /// Nothing is exported (but the tail policies), new and continued traces are unsampled.
    AlwaysOff,
    /// The ratio of traces whose trace id passes the threshold test, whatever upstream decided.
    #[value(name = "traceidratio")]
    TraceIdRatio,
    /// Follow the upstream sampled flag; new traces are sampled.
    ParentbasedAlwaysOn,
    /// Follow the upstream sampled flag; new traces are unsampled.
    ParentbasedAlwaysOff,
    /// Follow the upstream sampled flag; new traces by the ratio.
    #[value(name = "parentbased_traceidratio")]
    ParentbasedTraceIdRatio,
}

/// The head sampler: its rule, and what it records in `tracestate`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeadSampler {
    pub kind: SamplerKind,
    /// The ratio of the ratio kinds (1 for the others).
    pub ratio: f64,
    rule: HeadRule,
}

impl Default for HeadSampler {
    fn default() -> Self {
        Self::new(SamplerKind::AlwaysOn, 1.0)
    }
}

impl HeadSampler {
    /// `ratio` (clamped to [0, 1]) is used by the ratio kinds only.
    pub fn new(kind: SamplerKind, ratio: f64) -> Self {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        use SamplerKind::*;
        let threshold = match kind {
            AlwaysOn | ParentbasedAlwaysOn => 0,
            AlwaysOff | ParentbasedAlwaysOff => NEVER,
            TraceIdRatio | ParentbasedTraceIdRatio => threshold_for_probability(ratio),
        };
        let follow_parent = !matches!(kind, AlwaysOff | TraceIdRatio);
        Self {
            kind,
            ratio: if is_ratio(kind) { ratio } else { 1.0 },
            rule: HeadRule {
                threshold,
                follow_parent,
            },
        }
    }

    /// The rule the kernel applies too.
    pub fn rule(&self) -> HeadRule {
        self.rule
    }

    /// `always_on` exports every span, sampled flag or not (the agent records everything).
    pub fn exports_unsampled(&self) -> bool {
        self.kind == SamplerKind::AlwaysOn
    }

    /// Whether the sampler can drop a trace at all (head sampling "below 100 %").
    pub fn can_drop(&self) -> bool {
        !self.exports_unsampled() && (self.rule.follow_parent || self.rule.threshold > 0)
    }

    /// Flags and `tracestate` of a context in `trace_id` continuing a context with
    /// `parent_flags` (`None`: a new trace) and `trace_state`. When the ratio decided a sampled
    /// trace, `tracestate` records its threshold (`ot=th:…`); a followed parent's is kept.
    pub fn decide(
        &self,
        trace_id: &[u8; 16],
        parent_flags: Option<u8>,
        trace_state: Option<String>,
    ) -> (u8, Option<String>) {
        let flags = self.rule.flags(trace_id, parent_flags);
        let decided_here = parent_flags.is_none() || !self.rule.follow_parent;
        if flags & 1 == 1 && decided_here && is_ratio(self.kind) {
            let ts = with_threshold(trace_state.as_deref(), self.rule.threshold);
            return (flags, Some(ts));
        }
        (flags, trace_state)
    }
}

fn is_ratio(kind: SamplerKind) -> bool {
    matches!(
        kind,
        SamplerKind::TraceIdRatio | SamplerKind::ParentbasedTraceIdRatio
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::sampling::keeps;

    fn id(r: u64) -> [u8; 16] {
        let mut id = [7u8; 16];
        id[8..].copy_from_slice(&r.to_be_bytes());
        id
    }

    #[test]
    fn ratio_roots_record_their_threshold() {
        let h = HeadSampler::new(SamplerKind::TraceIdRatio, 0.25);
        let (f, ts) = h.decide(&id(u64::MAX), None, None);
        assert_eq!((f, ts.as_deref()), (1, Some("ot=th:c")));
        let (f, ts) = h.decide(&id(1), None, None);
        assert_eq!((f, ts), (0, None));
        // Not parent-based: the ratio overrides the parent and records itself.
        let (f, ts) = h.decide(&id(u64::MAX), Some(0), Some("ot=th:8;rv:00,a=b".into()));
        assert_eq!((f, ts.as_deref()), (1, Some("ot=th:c;rv:00,a=b")));
    }

    #[test]
    fn parent_based_keeps_the_parents_decision_and_state() {
        let h = HeadSampler::new(SamplerKind::ParentbasedTraceIdRatio, 0.25);
        let (f, ts) = h.decide(&id(u64::MAX), Some(0), Some("a=b".into()));
        assert_eq!((f, ts.as_deref()), (0, Some("a=b")));
        let (f, ts) = h.decide(&id(1), Some(1), None);
        assert_eq!((f, ts), (1, None));
    }

    #[test]
    fn always_on_passes_upstream_flags_on() {
        let h = HeadSampler::default();
        assert_eq!(h.decide(&id(1), Some(0), None), (0, None));
        assert_eq!(h.decide(&id(1), None, None), (1, None));
        assert!(h.exports_unsampled());
        let off = HeadSampler::new(SamplerKind::AlwaysOff, 1.0);
        assert_eq!(off.decide(&id(u64::MAX), Some(1), None), (0, None));
    }

    /// The agent's decision is the kernel's: the same function of the same configuration (the
    /// kernel reads `Config::head_rule`), checked on many ids.
    #[test]
    fn agent_and_kernel_agree() {
        let h = HeadSampler::new(SamplerKind::ParentbasedTraceIdRatio, 0.1);
        let config = tracer_common::Config {
            sampling_threshold: h.rule().threshold,
            sampling_follow_parent: u8::from(h.rule().follow_parent),
            ..Default::default()
        };
        let mut x = 99u64;
        let mut kept = 0;
        for _ in 0..100_000 {
            x = tracer_common::propagation::mix64(x);
            let mut t = [0u8; 16];
            t[..8].copy_from_slice(&x.to_be_bytes());
            t[8..].copy_from_slice(&tracer_common::propagation::mix64(x ^ 1).to_be_bytes());
            let (agent, _) = h.decide(&t, None, None);
            assert_eq!(agent, config.head_rule().flags(&t, None));
            assert_eq!(agent == 1, keeps(&t, h.rule().threshold));
            kept += usize::from(agent);
        }
        assert!((9_000..11_000).contains(&kept), "{kept}");
    }

    /// The agent's contexts carry the decision: a SERVER span of a new trace (its trace id
    /// derived as the kernel derives it) is sampled exactly when the kernel's rule says so, and
    /// one continuing an unsampled caller stays unsampled under a parent-based sampler.
    #[test]
    fn the_parent_resolver_decides_as_the_kernel() {
        use crate::protocol::RequestHead;
        use crate::trace::{IdGenerator, ParentResolver};
        let h = HeadSampler::new(SamplerKind::ParentbasedTraceIdRatio, 0.25);
        let parents =
            ParentResolver::with_ids(16, 42, IdGenerator::from_seed(1)).with_head_sampler(h);
        let plain = RequestHead::default();
        let mut sampled = 0;
        for position in 0..2000 {
            let ctx = parents.server_context(7, position * 100, &plain);
            let (kernel_trace, _) = tracer_common::propagation::server_ids(42, 7, position * 100);
            assert_eq!(ctx.trace_id, kernel_trace);
            assert_eq!(ctx.flags, h.rule().flags(&kernel_trace, None));
            if ctx.flags == 1 {
                sampled += 1;
                assert_eq!(ctx.trace_state.as_deref(), Some("ot=th:c"));
            }
        }
        assert!((400..600).contains(&sampled), "{sampled}");
        let mut unsampled = RequestHead::default();
        unsampled.headers.push((
            "traceparent".into(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".into(),
        ));
        assert_eq!(parents.server_context(7, 0, &unsampled).flags, 0);
    }
}
