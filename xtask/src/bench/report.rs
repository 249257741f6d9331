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
    target: f64,
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
            target,
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
            target,
            at_least: false,
            unit,
            note,
        }
    }

    fn pass(&self) -> bool {
        if self.at_least {
            self.value >= self.target
        } else {
            self.value <= self.target
        }
    }

    pub(super) fn json(&self) -> Json {
        json!({
            "name": self.name, "value": self.value, "unit": self.unit,
            "target": format!("{} {} {}", if self.at_least { ">=" } else { "<=" }, self.target, self.unit).trim_end().to_owned(),
            "pass": self.pass(), "note": self.note,
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
        let target = format!(
            "{} {} {}",
            if f.at_least { "≥" } else { "≤" },
            fmt_value(f.target),
            f.unit
        );
        let result = if f.pass() { "pass" } else { "MISSED" };
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
