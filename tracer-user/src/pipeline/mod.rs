//! The span pipeline: every finished span passes these stages, in this order, on the agent's
//! event loop (no queue between them; each stage is a plain type with an `on_span` method and
//! knows nothing of the others):
//!
//! ```text
//! span assembler ──▶ peer names ──▶ redact ──▶ metrics ──▶ recent ──▶ sample ──▶ sinks
//!                                                                  console | OTLP traces
//! ```
//!
//! `peer names` adds `service.peer.name` to CLIENT spans from the Kubernetes metadata (when
//! on), before the metrics' service graph reads it. `recent` feeds the node-local view's store
//! (`ui`), before any sampling.
//!
//! Redaction comes first so that nothing later (metric labels, sinks, the console) sees what
//! it removes. The sinks' queue is where spans may be dropped (full queue, counted); every
//! stage before it sees every span.
pub mod metrics;
pub mod recent;
pub mod redact;
pub mod sample;
pub mod scrub;

use std::sync::Arc;

use crate::export::SpanSender;
use crate::metric::MetricSource;
use crate::process::kubernetes::PeerNames;
use crate::span::Span;

pub use metrics::{MetricsArgs, MetricsOptions, SpanMetrics};
pub use recent::RecentTraces;
pub use redact::{RedactOptions, Redactor};
pub use sample::{Sampler, SamplingOptions, SamplingStats};

/// The stages, built once at start-up.
pub struct Pipeline {
    /// Does nothing when Kubernetes metadata is off.
    peers: PeerNames,
    redact: Redactor,
    /// `None` when span metrics are off.
    metrics: Option<SpanMetrics>,
    /// `None` when the node-local view is off.
    recent: Option<RecentTraces>,
    sample: Sampler,
    traces: SpanSender,
}

impl Pipeline {
    /// `traces`: the trace sink (console or OTLP, chosen by the export configuration).
    pub fn new(
        redact: RedactOptions,
        metrics: &MetricsOptions,
        sampling: SamplingOptions,
        traces: SpanSender,
    ) -> Self {
        Self {
            peers: PeerNames::default(),
            redact: Redactor::new(redact),
            metrics: metrics.enabled.then(|| SpanMetrics::new(metrics)),
            recent: None,
            sample: Sampler::new(sampling),
            traces,
        }
    }

    /// The span metrics, for the metric readers; `None` when they are off.
    pub fn metric_source(&self) -> Option<Arc<dyn MetricSource>> {
        self.metrics.as_ref().map(SpanMetrics::source)
    }

    /// Names CLIENT spans' peers from the Kubernetes metadata (it is on).
    pub fn with_peer_names(mut self, peers: PeerNames) -> Self {
        self.peers = peers;
        self
    }

    /// Adds the recent-traces stage (the node-local view is on).
    pub fn with_recent(mut self, recent: RecentTraces) -> Self {
        self.recent = Some(recent);
        self
    }

    /// Runs one finished span through every stage.
    pub fn on_span(&mut self, span: Span) {
        let mut span = self.peers.apply(span);
        self.redact.on_span(&mut span);
        // Metrics and the node-local view before sampling: they see every request, sampled
        // or not.
        if let Some(m) = &mut self.metrics {
            m.on_span(&span);
        }
        if let Some(recent) = self.recent.as_mut() {
            recent.on_span(&span);
        }
        let traces = &mut self.traces;
        self.sample.on_span(span, unix_now_ns, &mut |s| {
            traces.send(s);
        });
    }

    /// Periodic work of the stages (expiry, flushing held state); `now_unix_ns` is wall-clock
    /// time. Called about once a second.
    pub fn tick(&mut self, now_unix_ns: u64) {
        if let Some(m) = &mut self.metrics {
            m.tick(now_unix_ns);
        }
        if let Some(recent) = self.recent.as_mut() {
            recent.tick(now_unix_ns);
        }
        self.sample.tick(now_unix_ns);
    }

    /// At shutdown, before the last counters: decides what the stages still hold.
    pub fn finish(&mut self) {
        self.sample.finish();
    }

    pub fn sampling_stats(&self) -> SamplingStats {
        self.sample.stats()
    }
}

fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
