//! The pipeline replay: the criterion benchmark `tracer-user/benches/pipeline.rs` replays the
//! recorded event stream through reassembly, parsing, spans and OTLP encoding, one core.
use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use serde_json::Value as Json;
use test_kit::run_bounded;

use super::recording::tracer_records;
use crate::util::{self, step};

/// What one replay measured: events and spans per pass, and the rate over the recording with
/// its pids resolved (as in a live agent) and as recorded (pids gone).
pub(super) struct Pipeline {
    pub(super) events: u64,
    pub(super) spans: u64,
    pub(super) events_per_sec: f64,
    pub(super) recorded_pids_events_per_sec: f64,
    pub(super) took: Duration,
}

/// Runs the criterion benchmark and reads its estimates (time per pass over the recording)
/// back; the events and spans per pass come from the benchmark's own output.
pub(super) fn pipeline(recording: &Path) -> Result<Pipeline> {
    let started = Instant::now();
    let root = util::workspace_root();
    let criterion = root.join("target/criterion/pipeline");
    let _ = std::fs::remove_dir_all(&criterion);
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
    Ok(Pipeline {
        events,
        spans,
        events_per_sec: events as f64 / (estimate_ns("replay")? * 1e-9),
        recorded_pids_events_per_sec: events as f64 / (estimate_ns("replay_recorded_pids")? * 1e-9),
        took: started.elapsed(),
    })
}
