//! The agent under test: the real `tracer` binary, started with a port filter so parallel
//! tests do not see each other's traffic.
use std::{process::Command, time::Duration};

use anyhow::Result;

use crate::{Proc, tracer_bin};

pub struct Agent {
    pub proc: Proc,
}

impl Agent {
    /// Starts the agent and waits until its programs are attached.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let mut cmd = Command::new(tracer_bin()?);
        cmd.args(args).args(["--stats-interval", "1"]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        // The tests set exporters explicitly; nothing from the caller's environment leaks in.
        for (k, _) in std::env::vars() {
            if k.starts_with("OTEL_") && !env.iter().any(|(e, _)| *e == k) {
                cmd.env_remove(k);
            }
        }
        let proc = Proc::spawn("tracer", &mut cmd)?;
        proc.wait_line("tracing; stop with", Duration::from_secs(30))?;
        Ok(Self { proc })
    }

    /// Exporting over OTLP/gRPC to `endpoint`, tracing only `port`.
    pub fn otlp(endpoint: &str, protocol: &str, port: u16) -> Result<Self> {
        Self::start(
            &["--port", &port.to_string()],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ],
        )
    }

    /// SIGTERM, and the exit status must be success (final flush included).
    pub fn stop(mut self) -> Result<String> {
        self.proc.signal(libc::SIGTERM);
        let status = self.proc.wait_exit(Duration::from_secs(20))?;
        let stderr = self.proc.stderr().join("\n");
        anyhow::ensure!(
            status.success(),
            "agent exited with {status}; stderr:\n{stderr}"
        );
        Ok(stderr)
    }
}

/// The agent's last log line containing `needle` (e.g. `final counters`).
pub fn log_line(stderr: &str, needle: &str) -> String {
    stderr
        .lines()
        .rev()
        .find(|l| l.contains(needle))
        .unwrap_or_default()
        .to_owned()
}

/// A `name=value` counter from one of the agent's log lines (0 when absent).
pub fn counter(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.trim_end_matches([';', ',']).parse().ok())
        .unwrap_or(0)
}

/// Resident memory of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
