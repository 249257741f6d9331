//! The agent under test: the real `tracer` binary, started with a filter (usually its ports) so
//! parallel tests do not see each other's traffic. Most tests run it through
//! [`Scenario`](crate::Scenario); these are the pieces for those that drive it by hand.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::{Proc, require_root, tracer_bin};

pub struct Agent {
    pub proc: Proc,
}

/// The agent's listening endpoints off (metrics on 9464, the node-local view on 9400), for a
/// test that starts the binary itself: parallel agents would all claim the default ports.
/// The `--prometheus-*` / `--ui-listen` flags still win over these variables.
pub fn without_endpoints(cmd: &mut Command) -> &mut Command {
    cmd.env("OTEL_METRICS_EXPORTER", "none")
        .env("TRACER_UI_LISTEN", "off")
}

impl Agent {
    /// Starts the agent and waits until its programs are attached.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        require_root();
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
        // Parallel agents would all claim the default Prometheus port and the node-local
        // view's: both are off unless the test asks for them (its env, or a flag, which wins).
        for (var, off) in [
            ("OTEL_METRICS_EXPORTER", "none"),
            ("TRACER_UI_LISTEN", "off"),
        ] {
            if !env.iter().any(|(k, _)| *k == var) {
                cmd.env(var, off);
            }
        }
        let proc = Proc::spawn("tracer", &mut cmd)?;
        proc.wait_line("tracing; stop with", Duration::from_secs(30))?;
        Ok(Self { proc })
    }

    /// SIGTERM; the agent must exit successfully (final flush included) within 20 s. Returns
    /// its stderr.
    /// Waits up to `timeout` for the agent's log line saying it attached TLS probes to a file
    /// whose line contains `what` (a path or part of it, e.g. `libssl.so`); the line, if any.
    pub fn wait_tls_attached(&self, what: &str, timeout: Duration) -> Option<String> {
        crate::wait_for(timeout, || {
            self.proc
                .stderr()
                .into_iter()
                .find(|l| l.contains("attached TLS probes to") && l.contains(what))
        })
    }

    pub fn stop(self) -> Result<String> {
        self.stop_within(Duration::from_secs(20))
    }

    /// [`Agent::stop`] with another exit deadline.
    pub fn stop_within(mut self, timeout: Duration) -> Result<String> {
        self.proc.signal(libc::SIGTERM);
        let asked = Instant::now();
        let status = self.proc.wait_exit(timeout);
        if status.as_ref().is_ok_and(|s| s.success()) {
            // The threads collecting its output may still be draining the pipe: wait for the
            // last line of a clean exit.
            let _ = self
                .proc
                .wait_line("export finished", Duration::from_secs(5));
        }
        let stderr = self.proc.stderr().join("\n");
        match status {
            Ok(s) if s.success() => Ok(stderr),
            Ok(s) => bail!("agent exited with {s}; its log:\n{}", summary(&stderr)),
            Err(e) => bail!(
                "{e:#} ({:?} after SIGTERM); its log:\n{}",
                asked.elapsed(),
                summary(&stderr)
            ),
        }
    }
}

/// The agent's last log line containing `needle` ("" when none does).
pub fn log_line(log: &str, needle: &str) -> String {
    log.lines()
        .rev()
        .find(|l| l.contains(needle))
        .unwrap_or_default()
        .to_owned()
}

/// The lines of an agent's log worth reading when a test fails: counters, warnings and errors,
/// TLS probes, detach and export.
pub fn summary(log: &str) -> String {
    log.lines()
        .filter(|l| {
            [
                "counters",
                "WARN",
                "ERROR",
                "TLS probes",
                "detached all",
                "export finished",
            ]
            .iter()
            .any(|needle| l.contains(needle))
        })
        .collect::<Vec<_>>()
        .join("\n")
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
