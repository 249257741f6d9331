//! The span pipeline: every finished span passes these stages, in this order, on the agent's
//! event loop (no queue between them; each stage is a plain type with an `on_span` method and
//! knows nothing of the others):
//!
//! ```text
//! span assembler ──▶ redact ──▶ (metrics: sees every span) ──▶ (sample) ──▶ sinks
//!                                                                         console | OTLP traces
//! ```
//!
//! Redaction comes first so that nothing later (metric labels, sinks, the console) sees what
//! it removes. The sinks' queue is where spans may be dropped (full queue, counted); every
//! stage before it sees every span.
pub mod metrics;
pub mod redact;

use std::sync::Arc;

use crate::export::SpanSender;
use crate::metric::MetricSource;
use crate::span::Span;

pub use metrics::{MetricsArgs, MetricsOptions, SpanMetrics};
pub use redact::{RedactOptions, Redactor};

/// The stages, built once at start-up.
pub struct Pipeline {
    redact: Redactor,
    /// `None` when span metrics are off.
    metrics: Option<SpanMetrics>,
    traces: SpanSender,
}

impl Pipeline {
    /// `traces`: the trace sink (console or OTLP, chosen by the export configuration).
    pub fn new(redact: RedactOptions, metrics: &MetricsOptions, traces: SpanSender) -> Self {
        Self {
            redact: Redactor::new(redact),
            metrics: metrics.enabled.then(|| SpanMetrics::new(metrics)),
            traces,
        }
    }

    /// The span metrics, for the metric readers; `None` when they are off.
    pub fn metric_source(&self) -> Option<Arc<dyn MetricSource>> {
        self.metrics.as_ref().map(SpanMetrics::source)
    }

    /// Runs one finished span through every stage.
    pub fn on_span(&mut self, mut span: Span) {
        self.redact.on_span(&mut span);
        if let Some(m) = &mut self.metrics {
            m.on_span(&span);
        }
        self.traces.send(span);
    }

    /// Periodic work of the stages (expiry, flushing held state); `now_unix_ns` is wall-clock
    /// time. Called about once a second.
    pub fn tick(&mut self, now_unix_ns: u64) {
        if let Some(m) = &mut self.metrics {
            m.tick(now_unix_ns);
        }
    }
}
