//! The span pipeline: every finished span passes these stages, in this order, on the agent's
//! event loop (no queue between them; each stage is a plain type with an `on_span` method and
//! knows nothing of the others):
//!
//! ```text
//! span assembler ──▶ redact ──▶ (metrics: sees every span) ──▶ recent ──▶ (sample) ──▶ sinks
//!                                                                   console | OTLP traces
//! ```
//!
//! `recent` feeds the node-local view's store (`ui`), before any sampling.
//!
//! Redaction comes first so that nothing later (metric labels, sinks, the console) sees what
//! it removes. The sinks' queue is where spans may be dropped (full queue, counted); every
//! stage before it sees every span.
pub mod recent;
pub mod redact;

use crate::export::SpanSender;
use crate::span::Span;

pub use recent::RecentTraces;
pub use redact::{RedactOptions, Redactor};

/// The stages, built once at start-up.
pub struct Pipeline {
    redact: Redactor,
    recent: Option<RecentTraces>,
    traces: SpanSender,
}

impl Pipeline {
    /// `traces`: the trace sink (console or OTLP, chosen by the export configuration).
    pub fn new(redact: RedactOptions, traces: SpanSender) -> Self {
        Self {
            redact: Redactor::new(redact),
            recent: None,
            traces,
        }
    }

    /// Adds the recent-traces stage (the node-local view is on).
    pub fn with_recent(mut self, recent: RecentTraces) -> Self {
        self.recent = Some(recent);
        self
    }

    /// Runs one finished span through every stage.
    pub fn on_span(&mut self, mut span: Span) {
        self.redact.on_span(&mut span);
        if let Some(recent) = self.recent.as_mut() {
            recent.on_span(&span);
        }
        self.traces.send(span);
    }

    /// Periodic work of the stages (expiry, flushing held state); `now_unix_ns` is wall-clock
    /// time. Called about once a second.
    pub fn tick(&mut self, now_unix_ns: u64) {
        if let Some(recent) = self.recent.as_mut() {
            recent.tick(now_unix_ns);
        }
    }
}
