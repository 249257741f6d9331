//! The pipeline benchmark's input: a real event stream recorded with the agent's
//! `--record-events` while a private nginx serves varied HTTP/1 traffic.
use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use test_kit::{TempDir, run_bounded};

use super::{agent::Agent, load::oha_bin, nginx::Nginx, settle};
use crate::util::{self, step};

/// Where the pipeline benchmark's recorded event stream lives (commit-friendly size).
pub(super) const RECORDING: &str = "tracer-user/benches/data/events.bin";
const RECORDING_MAX_BYTES: u64 = 2 << 20;

/// Whether the recorded stream still decodes into spans with this build (the benchmark's
/// check-only mode).
pub(super) fn recording_decodes() -> Result<bool> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["bench", "-q", "-p", "tracer-user", "--bench", "pipeline"])
        .env("PIPELINE_CHECK_ONLY", "1")
        .current_dir(util::workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("running the pipeline benchmark's check")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if stdout.contains("stale recording") {
        return Ok(false);
    }
    ensure!(
        out.status.success(),
        "the pipeline benchmark's check failed ({}):\n{stdout}",
        out.status
    );
    Ok(true)
}

/// Records in a `--record-events` file (u32 little-endian length, then the bytes).
pub(super) fn tracer_records(bytes: &[u8]) -> u64 {
    let (mut n, mut rest) = (0, bytes);
    while rest.len() >= 4 {
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if rest.len() < 4 + len {
            break;
        }
        n += 1;
        rest = &rest[4 + len..];
    }
    n
}

/// Records a real event stream for the pipeline benchmark: the agent with `--record-events`
/// while keep-alive GETs (oha), uploads, large downloads, 404s and HTTP/1.0 requests (curl)
/// hit a private nginx. Kept under 2 MiB (cut at a record boundary if ever larger).
pub(super) fn record(tracer: &Path, out: &Path) -> Result<()> {
    step(format!(
        "recording a live event stream into {}",
        out.display()
    ));
    let dir = TempDir::create("bench-record")?;
    let nginx = Nginx::start(&dir, true, false)?;
    let base = format!("http://127.0.0.1:{}", nginx.port);
    let raw = dir.path().join("events.bin");
    let body = dir.path().join("body");
    std::fs::write(&body, "k=v&".repeat(2048))?;
    let agent = Agent::start(tracer, nginx.port, None, Some(&raw), &[])?;
    run_bounded(
        "oha",
        Command::new(oha_bin()).args(["--no-tui", "-n", "1500", "-c", "4", &format!("{base}/")]),
        Duration::from_secs(60),
    )?;
    for i in 0..10 {
        let mut curl = Command::new("curl");
        curl.args(["-s", "-o", "/dev/null", "--max-time", "5"])
            .arg(format!("{base}/api/items/{i}?token=secret&page={i}"))
            .args(["-X", "POST", "--data-binary"])
            .arg(format!("@{}", body.display()))
            .arg(format!("{base}/upload"))
            .arg(format!("{base}/big"))
            .arg(format!("{base}/missing/{i}"));
        run_bounded("curl", &mut curl, Duration::from_secs(30))?;
        run_bounded(
            "curl",
            Command::new("curl").args([
                "-s",
                "-0",
                "-o",
                "/dev/null",
                "--max-time",
                "5",
                &format!("{base}/old"),
            ]),
            Duration::from_secs(30),
        )?;
    }
    settle();
    let counters = agent.stop()?;
    step(format!(
        "recorded; agent losses: {}",
        counters.losses_text()
    ));
    let mut bytes = std::fs::read(&raw)?;
    if bytes.len() as u64 > RECORDING_MAX_BYTES {
        let mut end = 0;
        while end + 4 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[end..end + 4].try_into()?) as usize;
            if (end + 4 + len) as u64 > RECORDING_MAX_BYTES {
                break;
            }
            end += 4 + len;
        }
        step(format!("recording cut from {} to {end} bytes", bytes.len()));
        bytes.truncate(end);
    }
    ensure!(
        tracer_records(&bytes) > 1000,
        "the recording has too few events"
    );
    std::fs::create_dir_all(out.parent().expect("a file path"))?;
    std::fs::write(out, &bytes)?;
    step(format!(
        "{} events, {} bytes in {}",
        tracer_records(&bytes),
        bytes.len(),
        out.display()
    ));
    drop(nginx);
    Ok(())
}
