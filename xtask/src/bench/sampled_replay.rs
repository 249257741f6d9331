//! Issue 14's figure: the pipeline replay with sampling at 0.1 and tail rules on against
//! sampling off (the criterion benchmark `tracer-user/benches/sampled_replay.rs`, the same
//! recording as the pipeline replay, one core). Most traces dropped must make the pipeline
//! cheaper: dropped spans are never encoded.
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Value as Json, json};

use super::criterion;
use super::report::Figure;

/// The benchmark's variants (criterion group `sampling`).
const OFF: &str = "off";
const SAMPLED: &str = "ratio_0.1_tail";

pub(super) struct SampledReplay {
    events: u64,
    /// Spans built and spans encoded per pass, sampling off / on.
    spans: (u64, u64),
    encoded: (u64, u64),
    /// Events per second, sampling off / on.
    off_per_sec: f64,
    sampled_per_sec: f64,
    pub(super) took: Duration,
}

/// Runs the benchmark (compiled before the live rounds by the caller, or now) and reads its
/// estimates back.
pub(super) fn sampled_replay() -> Result<SampledReplay> {
    let started = Instant::now();
    let run = criterion::run("sampled_replay", &["sampling"])?;
    let per_pass = |key: &str| run.printed(key);
    let events = per_pass("events per pass:")?;
    let per_sec = |name: &str| -> Result<f64> {
        Ok(events as f64 / (run.estimate_ns(&format!("sampling/{name}"))? * 1e-9))
    };
    Ok(SampledReplay {
        events,
        spans: (
            per_pass(&format!("spans per pass ({OFF}):"))?,
            per_pass(&format!("spans per pass ({SAMPLED}):"))?,
        ),
        encoded: (
            per_pass(&format!("spans encoded per pass ({OFF}):"))?,
            per_pass(&format!("spans encoded per pass ({SAMPLED}):"))?,
        ),
        off_per_sec: per_sec(OFF)?,
        sampled_per_sec: per_sec(SAMPLED)?,
        took: started.elapsed(),
    })
}

impl SampledReplay {
    pub(super) fn figures(&self) -> Vec<Figure> {
        vec![Figure::min(
            "replay sampled/unsampled",
            self.sampled_per_sec / self.off_per_sec,
            1.0,
            "",
            format!(
                "traceidratio 0.1 + keep errors + keep slower than 100 ms: {:.2} M events/s, \
                 {} of {} spans encoded per pass; sampling off: {:.2} M events/s, {} of {} \
                 ({} events per pass, one core)",
                self.sampled_per_sec / 1e6,
                self.encoded.1,
                self.spans.1,
                self.off_per_sec / 1e6,
                self.encoded.0,
                self.spans.0,
                self.events
            ),
        )]
    }

    pub(super) fn json(&self) -> Json {
        json!({
            "events_per_pass": self.events,
            "off": { "events_per_sec": self.off_per_sec, "spans_per_pass": self.spans.0, "spans_encoded_per_pass": self.encoded.0 },
            "ratio_0.1_tail": { "events_per_sec": self.sampled_per_sec, "spans_per_pass": self.spans.1, "spans_encoded_per_pass": self.encoded.1 },
        })
    }
}
