//! Where the agent spends its CPU: `perf record -g` on the agent during one extra traced round
//! (its own round: sampling slows the agent, so no other figure comes from it), then the top
//! of `perf report`. Skipped, and said so, where `perf` is missing (`available`).
use std::{
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use serde_json::{Value as Json, json};
use test_kit::{Proc, run_bounded};

use crate::util::{self, step};

/// Symbols shown and kept in the report.
const TOP: usize = 10;

/// `perf record` attached to one process until stopped.
pub(super) struct Recording {
    proc: Proc,
    data: PathBuf,
}

/// Whether perf is installed (else: said so, and no profile).
pub(super) fn available() -> bool {
    let yes = util::succeeds("perf", &["--version"]);
    if !yes {
        step("perf is not installed: no profile of the agent");
    }
    yes
}

/// Starts sampling `pid` with call graphs into `data`.
pub(super) fn start(pid: u32, data: &Path) -> Result<Recording> {
    let mut cmd = Command::new("perf");
    cmd.args(["record", "-g", "-q", "-p", &pid.to_string(), "-o"])
        .arg(data)
        .stdout(Stdio::null());
    step(format!("$ {}", util::describe(&cmd)));
    let proc = Proc::spawn_keeping_stdout("perf record", &mut cmd)?
        .terminate_on_drop(Duration::from_secs(10));
    // perf attaches within a moment; samples from before it do not matter.
    std::thread::sleep(Duration::from_millis(300));
    Ok(Recording {
        proc,
        data: data.to_owned(),
    })
}

/// The top of a profile, and where the whole report was written.
pub(super) struct Profile {
    /// (self overhead in percent, shared object, symbol).
    top: Vec<(f64, String, String)>,
    report: PathBuf,
}

impl Recording {
    /// Stops sampling (SIGINT: perf writes its data and exits) and reads the profile back;
    /// the whole `perf report` goes to `report`.
    pub(super) fn finish(mut self, report: &Path) -> Result<Profile> {
        let status = self.proc.stop(libc::SIGINT, Duration::from_secs(60))?;
        ensure!(
            status.success() || status.signal() == Some(libc::SIGINT),
            "perf record exited with {status}:\n{}",
            self.proc.stderr_tail()
        );
        let out = run_bounded(
            "perf report",
            Command::new("perf")
                .args(["report", "--stdio", "--no-children", "-g", "none"])
                .args(["--sort", "dso,symbol", "-i"])
                .arg(&self.data),
            Duration::from_secs(300),
        )?;
        std::fs::write(report, &out).with_context(|| format!("writing {}", report.display()))?;
        let _ = std::fs::remove_file(&self.data);
        Ok(Profile {
            top: top_symbols(&out),
            report: report.to_owned(),
        })
    }
}

/// The first `TOP` entries of `perf report --stdio --sort dso,symbol`: lines such as
/// `    12.34%  tracer  [.] tracer::assemble::SpanAssembler::on_record    -      -`.
fn top_symbols(report: &str) -> Vec<(f64, String, String)> {
    report
        .lines()
        .filter_map(|l| {
            let (pct, rest) = l.trim().split_once('%')?;
            let pct: f64 = pct.parse().ok()?;
            let (dso, symbol) = rest.trim().split_once(char::is_whitespace)?;
            // perf 6.1 pads the line with empty columns (`  -  -`) after the symbol.
            let symbol = symbol.trim().split("  ").next()?;
            Some((pct, dso.to_owned(), symbol.to_owned()))
        })
        .take(TOP)
        .collect()
}

impl Profile {
    pub(super) fn print(&self) {
        println!("\nagent profile, top {TOP} (self time, perf record -g during one traced round):");
        for (pct, dso, symbol) in &self.top {
            println!("  {pct:6.2}%  {dso:<20} {symbol}");
        }
        println!("  (whole report: {})", self.report.display());
    }

    pub(super) fn json(&self) -> Json {
        json!({
            "report": self.report,
            "top": self.top.iter().map(|(pct, dso, symbol)| json!({
                "self_percent": pct, "dso": dso, "symbol": symbol,
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_top_of_a_report() {
        let report = "# Samples: 1K of event 'cpu-clock'\n#\n\
            # Overhead  Shared Object  Symbol\n\
            # ........  .............  ......\n#\n\
            \x20   25.50%  tracer         [.] tracer::assemble::SpanAssembler::on_record    -      -  \n\
            \x20    3.10%  [kernel.kallsyms]  [k] __lock_text_start\n\n";
        let top = top_symbols(report);
        assert_eq!(top.len(), 2);
        assert_eq!(top[0].0, 25.5);
        assert_eq!(top[0].1, "tracer");
        assert_eq!(top[0].2, "[.] tracer::assemble::SpanAssembler::on_record");
        assert_eq!(top[1].1, "[kernel.kallsyms]");
    }
}
