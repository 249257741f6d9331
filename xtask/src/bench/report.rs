//! From rounds to results: the figures with their targets, medians, how busy the machine was,
//! the printed table and the JSON report under target/bench/.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde_json::{Value as Json, json};

use crate::util;

pub(super) fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// How busy the machine is without us (nothing of the bench runs while this samples
/// `/proc/stat` for a second), in CPUs: other work disturbs every live figure.
pub(super) fn busy_cpus() -> f64 {
    let sample = || -> Option<(f64, f64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let v: Vec<f64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|x| x.parse().ok())
            .collect();
        let total: f64 = v.iter().sum();
        let idle = v.get(3)? + v.get(4)?;
        Some((total, total - idle))
    };
    let Some((t0, b0)) = sample() else {
        return f64::NAN;
    };
    std::thread::sleep(Duration::from_secs(1));
    let Some((t1, b1)) = sample() else {
        return f64::NAN;
    };
    if t1 <= t0 {
        return f64::NAN;
    }
    (b1 - b0) / (t1 - t0) * cpus() as f64
}

pub(super) struct Figure {
    name: &'static str,
    value: f64,
    /// `None`: a figure shown for comparison, with no target of its own.
    target: Option<f64>,
    /// True: the value must be at least `target`; false: at most.
    at_least: bool,
    unit: &'static str,
    note: String,
}

impl Figure {
    pub(super) fn min(
        name: &'static str,
        value: f64,
        target: f64,
        unit: &'static str,
        note: String,
    ) -> Self {
        Self {
            name,
            value,
            target: Some(target),
            at_least: true,
            unit,
            note,
        }
    }

    pub(super) fn max(
        name: &'static str,
        value: f64,
        target: f64,
        unit: &'static str,
        note: String,
    ) -> Self {
        Self {
            name,
            value,
            target: Some(target),
            at_least: false,
            unit,
            note,
        }
    }

    /// A figure without a target (shown for comparison).
    pub(super) fn info(name: &'static str, value: f64, unit: &'static str, note: String) -> Self {
        Self {
            name,
            value,
            target: None,
            at_least: false,
            unit,
            note,
        }
    }

    fn target_text(&self, fmt: fn(f64) -> String, at_least: &str, at_most: &str) -> String {
        match self.target {
            Some(t) => format!(
                "{} {} {}",
                if self.at_least { at_least } else { at_most },
                fmt(t),
                self.unit
            )
            .trim_end()
            .to_owned(),
            None => "-".to_owned(),
        }
    }

    fn pass(&self) -> bool {
        match self.target {
            None => true,
            Some(t) if self.at_least => self.value >= t,
            Some(t) => self.value <= t,
        }
    }

    pub(super) fn json(&self) -> Json {
        json!({
            "name": self.name, "value": self.value, "unit": self.unit,
            "target": self.target.map(|_| self.target_text(|t| t.to_string(), ">=", "<=")),
            "pass": self.target.map(|_| self.pass()), "note": self.note,
        })
    }
}

fn fmt_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.4}")
    }
}

/// How busy the machine was with other work around the live rounds (their figures are only
/// meaningful on a quiet machine).
pub(super) fn print_other_work(busy_before: f64, busy_after: f64) {
    println!(
        "\nother work on the machine before/after the live rounds: {busy_before:.2} / {busy_after:.2} of {} CPUs busy{}",
        cpus(),
        if busy_before.max(busy_after) > 0.2 {
            " — other work was running: live figures are disturbed"
        } else {
            ""
        }
    );
}

pub(super) fn print_table(figures: &[Figure]) {
    println!();
    println!(
        "{:<28} {:>16} {:>18}  {:<6}",
        "figure", "value", "target", "result"
    );
    println!("{}", "-".repeat(72));
    for f in figures {
        let value = format!("{} {}", fmt_value(f.value), f.unit);
        let target = f.target_text(fmt_value, "≥", "≤");
        let result = match (f.target, f.pass()) {
            (None, _) => "",
            (Some(_), true) => "pass",
            (Some(_), false) => "MISSED",
        };
        println!(
            "{:<28} {:>16} {:>18}  {:<6}",
            f.name,
            value.trim_end(),
            target.trim_end(),
            result
        );
        println!("    {}", f.note);
    }
}

/// The note of a coverage figure: what is counted, each round's coverage, and each round's
/// losses.
pub(super) fn coverage_note(counted: &str, coverage: &[f64], losses: &[String]) -> String {
    let rounds: Vec<String> = coverage
        .iter()
        .map(|c| format!("{:.3}%", c * 100.0))
        .collect();
    format!(
        "{counted}; per round {}; losses {}",
        rounds.join(" "),
        losses.join(" | ")
    )
}

pub(super) fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// What makes runs comparable between commits: the commit measured (and whether the work tree
/// had changes on top) and the machine it ran on.
pub(super) fn run_info() -> Json {
    let root = util::workspace_root();
    let git = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(&root)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
        c.lines().find_map(|l| {
            Some(
                l.strip_prefix("model name")?
                    .split_once(':')?
                    .1
                    .trim()
                    .to_owned(),
            )
        })
    });
    let mem_total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines().find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
    });
    let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned());
    json!({
        "commit": git(&["rev-parse", "HEAD"]),
        "commit_subject": git(&["log", "-1", "--format=%s"]),
        "work_tree_changed": git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty()),
        // Set: the agent measured was this binary, not the commit's release build.
        "tracer_bin": std::env::var("TRACER_BIN").ok(),
        "machine": {
            "hostname": read("/proc/sys/kernel/hostname"),
            "kernel": read("/proc/sys/kernel/osrelease"),
            "cpu_model": cpu_model,
            "cpus": cpus(),
            "mem_total_kib": mem_total_kib,
        },
    })
}

/// Seconds since the Unix epoch: the report's time stamp and file name.
pub(super) fn unix_time() -> Result<u64> {
    Ok(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs())
}

/// Writes `report` as `target/bench/<stem>-<now>.json` and `target/bench/<latest>.json`, then
/// says where, how long the run took (`measuring`: the live rounds and the replay), and which
/// figures missed their target.
pub(super) fn save(
    report: &Json,
    stem: &str,
    latest: &str,
    now: u64,
    total: Duration,
    measuring: Duration,
    figures: &[Figure],
) -> Result<()> {
    let out_dir = util::workspace_root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let text = serde_json::to_string_pretty(report)?;
    let path = out_dir.join(format!("{stem}-{now}.json"));
    std::fs::write(&path, &text)?;
    std::fs::write(out_dir.join(format!("{latest}.json")), &text)?;
    println!(
        "\nwritten {} (and {latest}.json); {:.0} s in all, {:.0} s of it measuring",
        path.display(),
        total.as_secs_f64(),
        measuring.as_secs_f64()
    );
    let missed: Vec<&str> = figures
        .iter()
        .filter(|f| !f.pass())
        .map(|f| f.name)
        .collect();
    if !missed.is_empty() {
        println!("MISSED: {}", missed.join(", "));
    }
    Ok(())
}
