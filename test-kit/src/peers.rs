//! Ready-made peers: Python's HTTP server and curl.
use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context, Result, bail};

use crate::proc::Proc;

/// `python3 -m http.server` (threaded) on `port`, serving `dir`.
pub fn python_http_server(port: u16, dir: &Path) -> Result<Proc> {
    let mut p = Proc::spawn(
        "python http.server",
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(dir),
    )?;
    p.wait_listening(port, Duration::from_secs(10))?;
    Ok(p)
}

/// Runs curl to completion; returns its stdout.
pub fn curl(args: &[&str]) -> Result<String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .context("running curl (is it installed? `cargo xtask setup --test-deps`)")?;
    if !out.status.success() {
        bail!(
            "curl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
