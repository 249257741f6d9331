use super::*;
use crate::span::{StatusCode, test_span};

const S: u64 = 1_000_000_000;

fn span(trace: u8, flags: u8) -> Span {
    let mut s = test_span();
    s.trace_id = [trace; 16];
    s.flags = flags;
    s
}

fn ratio_with(policies: Policies) -> SamplingOptions {
    SamplingOptions {
        head: HeadSampler::new(SamplerKind::TraceIdRatio, 0.01),
        policies,
        ..SamplingOptions::default()
    }
}

fn errors() -> Policies {
    Policies {
        keep_errors: true,
        ..Policies::default()
    }
}

struct Run {
    sampler: Sampler,
    out: Vec<Span>,
}

impl Run {
    fn new(opts: SamplingOptions) -> Self {
        Self {
            sampler: Sampler::new(opts),
            out: Vec::new(),
        }
    }
    fn push(&mut self, s: Span, now: u64) {
        let out = &mut self.out;
        self.sampler.on_span(s, || now, &mut |s| out.push(s));
    }
}

#[test]
fn always_on_exports_everything() {
    let mut r = Run::new(SamplingOptions::default());
    r.push(span(1, 0), 0);
    r.push(span(2, 1), 0);
    assert_eq!(r.out.len(), 2);
    assert_eq!(r.sampler.stats().spans_kept[0], 2);
}

#[test]
fn head_only_drops_unsampled_at_once() {
    let mut r = Run::new(ratio_with(Policies::default()));
    r.push(span(1, 0), 0);
    r.push(span(1, 0), 0);
    r.push(span(2, 1), 0);
    assert_eq!(r.out.len(), 1);
    let st = r.sampler.stats();
    assert_eq!(st.traces_dropped[DropReason::Unsampled as usize], 1);
    assert_eq!(st.spans_dropped[DropReason::Unsampled as usize], 2);
    assert_eq!((st.traces_kept[0], st.held_traces), (1, 0));
}

#[test]
fn an_error_keeps_the_whole_trace_held_and_late() {
    let mut r = Run::new(ratio_with(errors()));
    let mut child = span(1, 0);
    child.trace_state = Some("ot=th:fd70a3d70a3d71,a=b".into());
    r.push(child, 0);
    r.push(span(1, 0), 0);
    assert!(r.out.is_empty());
    assert_eq!(r.sampler.stats().held_traces, 1);
    let mut bad = span(1, 0);
    bad.status = StatusCode::Error;
    r.push(bad, 0);
    assert_eq!(r.out.len(), 3, "held spans and the matching one");
    assert!(r.out.iter().all(|s| s.flags & 1 == 1));
    assert_eq!(r.out[0].trace_state.as_deref(), Some("a=b"));
    r.push(span(1, 0), 5 * S);
    assert_eq!(r.out.len(), 4, "a late span follows the decision");
    let st = r.sampler.stats();
    assert_eq!(st.traces_kept[KeepReason::Error as usize], 1);
    assert_eq!(st.spans_kept[KeepReason::Error as usize], 4);
    assert_eq!(
        (st.late_spans_kept, st.held_traces, st.held_bytes),
        (1, 0, 0)
    );
}

#[test]
fn the_wait_ends_in_a_drop_that_late_spans_follow() {
    let mut r = Run::new(ratio_with(errors()));
    r.push(span(1, 0), 10 * S);
    r.sampler.tick(11 * S);
    assert_eq!(r.sampler.stats().held_traces, 1);
    r.sampler.tick(12 * S);
    assert_eq!(r.sampler.stats().held_traces, 0);
    let mut bad = span(1, 0);
    bad.status = StatusCode::Error;
    r.push(bad, 13 * S);
    assert!(r.out.is_empty(), "decided: the late error follows the drop");
    let st = r.sampler.stats();
    assert_eq!(st.traces_dropped[DropReason::Unsampled as usize], 1);
    assert_eq!((st.spans_dropped[0], st.late_spans_dropped), (2, 1));
}

#[test]
fn overflow_decides_the_oldest_early() {
    let mut r = Run::new(SamplingOptions {
        max_traces: 3,
        ..ratio_with(errors())
    });
    for t in 1..=5 {
        r.push(span(t, 0), 0);
    }
    let st = r.sampler.stats();
    assert_eq!(st.held_traces, 3);
    assert_eq!(st.traces_dropped[DropReason::Overflow as usize], 2);
    let mut bad = span(1, 0);
    bad.status = StatusCode::Error;
    r.push(bad, 0);
    assert!(r.out.is_empty(), "trace 1 was decided by the overflow");
    r.sampler.finish();
    let st = r.sampler.stats();
    assert_eq!((st.held_traces, st.traces_dropped[0]), (0, 3));
}

#[test]
fn the_byte_bound_holds() {
    let one = tail::span_bytes(&span(1, 0));
    let mut r = Run::new(SamplingOptions {
        max_bytes: 2 * one,
        ..ratio_with(errors())
    });
    for _ in 0..5 {
        r.push(span(1, 0), 0);
        assert!(r.sampler.stats().held_bytes as usize <= 2 * one);
    }
    assert!(r.sampler.stats().traces_dropped[DropReason::Overflow as usize] >= 1);
}

#[test]
fn the_decision_cache_is_bounded() {
    let mut r = Run::new(SamplingOptions {
        decision_cache: 2,
        ..ratio_with(Policies::default())
    });
    for t in 1..=10 {
        r.push(span(t, 1), 0);
    }
    assert!(r.sampler.decided.len() <= 2);
    assert!(r.sampler.decided_order.len() <= 2);
    assert_eq!(r.out.len(), 10);
}

#[test]
fn slow_and_attribute_policies_keep() {
    let mut r = Run::new(ratio_with(Policies {
        keep_slower_than_ns: Some(S / 2),
        keep_attributes: vec!["http.request.header.x-tier=gold".parse().unwrap()],
        ..Policies::default()
    }));
    let mut slow = span(1, 0);
    slow.end_unix_ns = slow.start_unix_ns + S;
    r.push(slow, 0);
    let mut gold = span(2, 0);
    gold.attributes = vec![("http.request.header.x-tier", vec!["gold".to_owned()].into())];
    r.push(gold, 0);
    r.push(span(3, 0), 0);
    assert_eq!(r.out.len(), 2);
    let st = r.sampler.stats();
    assert_eq!(st.traces_kept[KeepReason::Slow as usize], 1);
    assert_eq!(st.traces_kept[KeepReason::Attribute as usize], 1);
    assert_eq!(st.held_traces, 1);
}

#[test]
fn stats_are_named() {
    let names: Vec<String> = SamplingStats::default()
        .named()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(names.contains(&"kept_traces_error".to_owned()));
    assert!(names.contains(&"dropped_spans_overflow".to_owned()));
    assert_eq!(names.len(), 16);
}

/// The whole pipeline at ratio 0.25: the metrics stage counts all 2,000 requests, the trace
/// sink gets only the sampled ones (exactly those the trace ids predict).
#[tokio::test]
async fn metrics_count_every_request_the_sink_only_the_sampled() {
    use crate::metric::MetricData;
    use crate::pipeline::{MetricsOptions, Pipeline, RedactOptions};
    use clap::Parser;
    use std::sync::Arc;

    let cli = crate::cli::Cli::try_parse_from(["tracer", "--traces-exporter", "none"]).unwrap();
    let stats = Arc::new(crate::export::ExportStats::default());
    let (sender, _handle) = crate::export::spawn(&cli.export, stats.clone()).unwrap();
    let head = HeadSampler::new(SamplerKind::TraceIdRatio, 0.25);
    let mut pipeline = Pipeline::new(
        RedactOptions::default(),
        &MetricsOptions::default(),
        SamplingOptions {
            head,
            ..SamplingOptions::default()
        },
        sender,
    );
    let mut ids = crate::trace::IdGenerator::from_seed(7);
    let mut predicted = 0;
    for _ in 0..2000 {
        let mut s = test_span();
        s.trace_id = ids.trace_id();
        s.attributes = vec![
            ("http.request.method", "GET".into()),
            ("http.route", "/".into()),
            ("http.response.status_code", 200i64.into()),
        ];
        (s.flags, s.trace_state) = head.decide(&s.trace_id, None, None);
        predicted += u64::from(tracer_common::sampling::keeps(
            &s.trace_id,
            head.rule().threshold,
        ));
        pipeline.on_span(s);
    }
    pipeline.finish();
    let mut families = Vec::new();
    pipeline
        .metric_source()
        .expect("metrics on")
        .collect(&mut families);
    let counted: u64 = families
        .iter()
        .filter(|f| f.name == "http.server.request.duration")
        .flat_map(|f| match &f.data {
            MetricData::Histogram { points, .. } => points.iter().map(|p| p.count).collect(),
            _ => Vec::new(),
        })
        .sum();
    assert_eq!(counted, 2000, "metrics see every request");
    assert_eq!(stats.snapshot().spans_enqueued, predicted);
    assert!((400..600).contains(&predicted), "{predicted}");
    let st = pipeline.sampling_stats();
    assert_eq!(st.traces_kept[0], predicted);
    assert_eq!(st.traces_dropped[0], 2000 - predicted);
}
