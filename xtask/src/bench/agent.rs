//! The traced agent of a round: started for the round's port only, its CPU time, wake-ups and
//! peak RSS read from procfs, its final counters read from its log at exit.
use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use test_kit::Proc;

use super::counters::Counters;

/// How long an agent dropped on an error path has to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

pub(super) struct Agent {
    proc: Proc,
}

impl Agent {
    /// Starts `tracer` for `port` only, exporting over OTLP/gRPC to `endpoint` (none: spans
    /// are counted and discarded), and waits until its programs are attached.
    pub(super) fn start(
        tracer: &Path,
        port: u16,
        endpoint: Option<&str>,
        record: Option<&Path>,
        extra: &[String],
    ) -> Result<Self> {
        let mut cmd = Command::new(tracer);
        cmd.args(["--port", &port.to_string(), "--stats-interval", "0"]);
        cmd.args(extra);
        if let Some(path) = record {
            cmd.arg("--record-events").arg(path);
        }
        // Nothing from the caller's environment changes what is measured.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("OTEL_") || k.starts_with("TRACER_") {
                cmd.env_remove(&*k);
            }
        }
        match endpoint {
            Some(url) => cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", url),
            None => cmd.env("OTEL_TRACES_EXPORTER", "none"),
        };
        cmd.env("NO_COLOR", "1").stdout(Stdio::null());
        // Stopped with SIGTERM on every path: it detaches and flushes what it has.
        let mut proc =
            Proc::spawn_keeping_stdout("tracer", &mut cmd)?.terminate_on_drop(STOP_GRACE);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if proc
                .stderr()
                .iter()
                .any(|l| l.contains("tracing; stop with"))
            {
                return Ok(Self { proc });
            }
            if let Some(s) = proc.try_wait() {
                bail!(
                    "the agent exited ({s}) while starting:\n{}",
                    proc.stderr_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent did not start within 60 s:\n{}",
                    proc.stderr_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(super) fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// utime + stime of the whole agent (all threads), in seconds.
    pub(super) fn cpu_seconds(&self) -> Result<f64> {
        let f = self.stat_fields()?;
        // utime is field 14 of stat(5), stime 15.
        let ticks: u64 = f[14 - 3].parse::<u64>()? + f[15 - 3].parse::<u64>()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Ok(ticks as f64 / hz)
    }

    /// Minor page faults of the agent so far (minflt, field 10 of stat(5)): fresh pages its
    /// allocator faulted in, each one zeroed by the kernel.
    pub(super) fn minor_faults(&self) -> Result<u64> {
        Ok(self.stat_fields()?[10 - 3].parse()?)
    }

    /// `/proc/PID/stat` after the command name: element 0 is field 3 of stat(5) (state).
    fn stat_fields(&self) -> Result<Vec<String>> {
        let pid = self.proc.pid();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let rest = stat.rsplit_once(')').context("malformed /proc/PID/stat")?.1;
        Ok(rest.split_whitespace().map(str::to_owned).collect())
    }

    /// Context switches (voluntary and not) of all the agent's threads so far: how often it
    /// was woken up.
    pub(super) fn ctx_switches(&self) -> u64 {
        let pid = self.proc.pid();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return 0;
        };
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
            .flat_map(|status| {
                status
                    .lines()
                    .filter(|l| l.contains("ctxt_switches:"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum()
    }

    /// Peak resident set size (VmHWM) in KiB.
    pub(super) fn peak_rss_kib(&self) -> Result<u64> {
        self.status_kib("VmHWM")
    }

    /// Resident set size now (VmRSS) in KiB.
    pub(super) fn rss_kib(&self) -> Result<u64> {
        self.status_kib("VmRSS")
    }

    /// A `/proc/PID/status` figure in KiB (`VmHWM`, `VmRSS`, ...).
    fn status_kib(&self, field: &str) -> Result<u64> {
        let pid = self.proc.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {field} in /proc/PID/status"))
    }

    /// SIGTERM (the agent flushes its spans), then its final counters.
    pub(super) fn stop(mut self) -> Result<Counters> {
        let status = self.proc.stop(libc::SIGTERM, Duration::from_secs(30))?;
        let lines = self.proc.stderr();
        ensure!(
            status.success(),
            "the agent exited with {status}:\n{}",
            self.proc.stderr_tail()
        );
        Counters::parse(&lines).with_context(|| {
            format!(
                "no final counters in the agent's log:\n{}",
                lines.join("\n")
            )
        })
    }
}
