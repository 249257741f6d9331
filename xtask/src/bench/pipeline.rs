//! The pipeline replay: the criterion benchmark `tracer-user/benches/pipeline.rs` replays the
//! recorded event stream through reassembly, parsing, spans and OTLP encoding, one core, with
//! and without the span-metrics stage, and the stage alone.
use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use serde_json::Value as Json;
use test_kit::run_bounded;

use super::recording::{RECORDING, recording_decodes, tracer_records};
use super::report::{Figure, print_table};
use crate::util::{self, step};

/// What one replay measured: events and spans per pass, and the rate over the recording with
/// its pids resolved (as in a live agent) and as recorded (pids gone).
pub(super) struct Pipeline {
    pub(super) events: u64,
    pub(super) spans: u64,
    pub(super) events_per_sec: f64,
    pub(super) recorded_pids_events_per_sec: f64,
    /// `events_per_sec` with every span also through the span-metrics stage.
    pub(super) metrics_events_per_sec: f64,
    /// The span-metrics stage alone, per span.
    pub(super) metrics_us_per_span: f64,
    pub(super) took: Duration,
}

impl Pipeline {
    /// The share of replay throughput the span-metrics stage costs, in percent.
    pub(super) fn metrics_cost_percent(&self) -> f64 {
        (1.0 - self.metrics_events_per_sec / self.events_per_sec) * 100.0
    }

    /// The replay's figures: its throughput, and what the span-metrics stage costs of it.
    pub(super) fn figures(&self) -> Vec<Figure> {
        vec![
            Figure::min(
                "pipeline replay",
                self.events_per_sec / 1e6,
                1.0,
                "M events/s",
                format!(
                    "{} events, {} spans per pass, one core, span metrics off; as recorded (pids gone): {:.2} M events/s",
                    self.events,
                    self.spans,
                    self.recorded_pids_events_per_sec / 1e6
                ),
            ),
            Figure::max(
                "span metrics cost",
                self.metrics_cost_percent(),
                10.0,
                "%",
                format!(
                    "of replay throughput: {:.2} M events/s with span metrics, {:.2} without; the stage alone {:.3} µs per span",
                    self.metrics_events_per_sec / 1e6,
                    self.events_per_sec / 1e6,
                    self.metrics_us_per_span
                ),
            ),
        ]
    }

    pub(super) fn json(&self) -> Json {
        serde_json::json!({
            "events_per_pass": self.events,
            "spans_per_pass": self.spans,
            "events_per_sec": self.events_per_sec,
            "recorded_pids_events_per_sec": self.recorded_pids_events_per_sec,
            "span_metrics_events_per_sec": self.metrics_events_per_sec,
            "span_metrics_us_per_span": self.metrics_us_per_span,
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
    let root = util::workspace_root();
    let criterion = root.join("target/criterion");
    for group in ["pipeline", "span_metrics"] {
        let _ = std::fs::remove_dir_all(criterion.join(group));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "bench",
        "-p",
        "tracer-user",
        "--bench",
        "pipeline",
        "--",
        "--noplot",
    ])
    .current_dir(&root)
    .stdout(Stdio::piped());
    step(format!("$ {}", util::describe(&cmd)));
    let out = run_bounded("cargo bench", &mut cmd, Duration::from_secs(600))?;
    print!("{out}");
    let per_pass = |key: &str| -> Result<u64> {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no `{key}` line in the benchmark's output"))
    };
    let events = per_pass("events per pass:")?;
    let spans = per_pass("spans per pass:")?;
    let expected = tracer_records(&std::fs::read(recording)?);
    ensure!(
        events == expected,
        "the benchmark replayed {events} events, the recording has {expected}"
    );
    let estimate_ns = |name: &str| -> Result<f64> {
        let p = criterion.join(name).join("new/estimates.json");
        let v: Json = serde_json::from_str(
            &std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
        )?;
        // The estimate criterion prints: the slope (linear sampling), else the mean.
        v.pointer("/slope/point_estimate")
            .or_else(|| v.pointer("/mean/point_estimate"))
            .and_then(Json::as_f64)
            .with_context(|| format!("no estimate in {}", p.display()))
    };
    let per_sec = |name: &str| -> Result<f64> {
        Ok(events as f64 / (estimate_ns(&format!("pipeline/{name}"))? * 1e-9))
    };
    Ok(Pipeline {
        events,
        spans,
        events_per_sec: per_sec("replay")?,
        recorded_pids_events_per_sec: per_sec("replay_recorded_pids")?,
        metrics_events_per_sec: per_sec("replay_metrics")?,
        metrics_us_per_span: estimate_ns("span_metrics/stage")? * 1e-3 / spans.max(1) as f64,
        took: started.elapsed(),
    })
}
