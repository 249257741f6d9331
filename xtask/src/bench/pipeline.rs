//! The pipeline replay: the criterion benchmark `tracer-user/benches/pipeline.rs` replays the
//! recorded event stream through what the agent runs on it (reassembly, parsing, spans, the
//! span pipeline's stages with the default options, OTLP encoding), one core; also with spans
//! only (no stage), and each stage alone per span.
use std::{path::Path, time::Duration, time::Instant};

use anyhow::{Result, ensure};
use serde_json::Value as Json;

use super::criterion;
use super::recording::{RECORDING, recording_decodes, tracer_records};
use super::report::{Figure, print_table};
use crate::util;

/// The pipeline's stages, in the agent's order, and encoding (criterion group `stage`;
/// `encode_via_proto` is the former encoder, through opentelemetry-proto messages, for
/// comparison).
const STAGES: [&str; 6] = [
    "redact",
    "metrics",
    "recent",
    "sample",
    "encode",
    "encode_via_proto",
];

/// What one replay measured: events and spans per pass, and the rate over the recording with
/// its pids resolved (as in a live agent) and as recorded (pids gone).
pub(super) struct Pipeline {
    pub(super) events: u64,
    pub(super) spans: u64,
    /// The agent's path: assembly, every stage, encoding.
    pub(super) events_per_sec: f64,
    /// Assembly and encoding only, no stage.
    pub(super) spans_only_events_per_sec: f64,
    pub(super) recorded_pids_events_per_sec: f64,
    /// Each of [`STAGES`] alone, nanoseconds per span.
    pub(super) stage_ns_per_span: Vec<(&'static str, f64)>,
    pub(super) took: Duration,
}

impl Pipeline {
    /// The agent's CPU per span on the replayed path, in microseconds.
    pub(super) fn us_per_span(&self) -> f64 {
        self.events as f64 / self.events_per_sec / self.spans.max(1) as f64 * 1e6
    }

    /// The replay's figures: its throughput, and what it costs per span.
    pub(super) fn figures(&self) -> Vec<Figure> {
        let stages: Vec<String> = self
            .stage_ns_per_span
            .iter()
            .map(|(name, ns)| format!("{name} {ns:.0}"))
            .collect();
        vec![
            Figure::min(
                "pipeline replay",
                self.events_per_sec / 1e6,
                3.0,
                "M events/s",
                format!(
                    "{} events, {} spans per pass, one core, every stage with default options; spans only (no stage): {:.2}; as recorded (pids gone): {:.2} M events/s",
                    self.events,
                    self.spans,
                    self.spans_only_events_per_sec / 1e6,
                    self.recorded_pids_events_per_sec / 1e6
                ),
            ),
            Figure::max(
                "replay CPU per span",
                self.us_per_span(),
                2.5,
                "µs",
                format!(
                    "events to encoded spans; each stage alone, ns per span: {}",
                    stages.join(", ")
                ),
            ),
        ]
    }

    pub(super) fn json(&self) -> Json {
        let stages: serde_json::Map<String, Json> = self
            .stage_ns_per_span
            .iter()
            .map(|(name, ns)| ((*name).to_owned(), Json::from(*ns)))
            .collect();
        serde_json::json!({
            "events_per_pass": self.events,
            "spans_per_pass": self.spans,
            "events_per_sec": self.events_per_sec,
            "spans_only_events_per_sec": self.spans_only_events_per_sec,
            "recorded_pids_events_per_sec": self.recorded_pids_events_per_sec,
            "us_per_span": self.us_per_span(),
            "stage_ns_per_span": stages,
            "recording": RECORDING,
        })
    }
}

/// `cargo xtask bench --replay-only`: the criterion replay of the committed recording and its
/// figures, without the live rounds (no nginx, no agent, no root needed).
pub(super) fn replay_only() -> Result<()> {
    let recording = util::workspace_root().join(RECORDING);
    ensure!(
        recording.exists() && recording_decodes()?,
        "{RECORDING} is missing or stale: re-record it with `cargo xtask bench --record`"
    );
    let pipeline = pipeline(&recording)?;
    print_table(&pipeline.figures());
    Ok(())
}

/// Runs the criterion benchmark and reads its estimates (time per pass over the recording)
/// back; the events and spans per pass come from the benchmark's own output.
pub(super) fn pipeline(recording: &Path) -> Result<Pipeline> {
    let started = Instant::now();
    let run = criterion::run("pipeline", &["pipeline", "stage"])?;
    let events = run.printed("events per pass:")?;
    let spans = run.printed("spans per pass:")?;
    let expected = tracer_records(&std::fs::read(recording)?);
    ensure!(
        events == expected,
        "the benchmark replayed {events} events, the recording has {expected}"
    );
    let estimate_ns = |name: &str| run.estimate_ns(name);
    let per_sec = |name: &str| -> Result<f64> {
        Ok(events as f64 / (estimate_ns(&format!("pipeline/{name}"))? * 1e-9))
    };
    let mut stage_ns_per_span = Vec::new();
    for name in STAGES {
        let ns = estimate_ns(&format!("stage/{name}"))? / spans.max(1) as f64;
        stage_ns_per_span.push((name, ns));
    }
    Ok(Pipeline {
        events,
        spans,
        events_per_sec: per_sec("replay")?,
        spans_only_events_per_sec: per_sec("replay_spans_only")?,
        recorded_pids_events_per_sec: per_sec("replay_recorded_pids")?,
        stage_ns_per_span,
        took: started.elapsed(),
    })
}
