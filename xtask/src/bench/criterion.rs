//! Runs one of tracer-user's criterion benchmarks and reads back what it printed (its own
//! `key: value` lines) and criterion's estimates.
use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};
use serde_json::Value as Json;
use test_kit::run_bounded;

use crate::util::{self, step};

/// One finished `cargo bench` run.
pub(super) struct CriterionRun {
    out: String,
    dir: PathBuf,
}

/// Runs `cargo bench --bench <bench>` after removing the old results of its criterion
/// `groups` (so a missing estimate is an error, not last run's figure). The benchmark is
/// compiled first, unbounded (an LTO build on a busy machine can take many minutes); the run
/// itself is bounded.
pub(super) fn run(bench: &str, groups: &[&str]) -> Result<CriterionRun> {
    util::cargo(&["bench", "-p", "tracer-user", "--bench", bench, "--no-run"])?;
    let root = util::workspace_root();
    let dir = root.join("target/criterion");
    for group in groups {
        let _ = std::fs::remove_dir_all(dir.join(group));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["bench", "-p", "tracer-user", "--bench", bench])
        .args(["--", "--noplot"])
        .current_dir(&root)
        .stdout(Stdio::piped());
    step(format!("$ {}", util::describe(&cmd)));
    let out = run_bounded("cargo bench", &mut cmd, Duration::from_secs(600))?;
    print!("{out}");
    Ok(CriterionRun { out, dir })
}

impl CriterionRun {
    /// The number on the benchmark's own output line `key value`.
    pub(super) fn printed(&self, key: &str) -> Result<u64> {
        self.out
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no `{key}` line in the benchmark's output"))
    }

    /// Criterion's estimate for `group/name`, in nanoseconds per iteration: the slope (linear
    /// sampling), else the mean — the figure criterion prints.
    pub(super) fn estimate_ns(&self, name: &str) -> Result<f64> {
        let p = self.dir.join(name).join("new/estimates.json");
        let v: Json = serde_json::from_str(
            &std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
        )?;
        v.pointer("/slope/point_estimate")
            .or_else(|| v.pointer("/mean/point_estimate"))
            .and_then(Json::as_f64)
            .with_context(|| format!("no estimate in {}", p.display()))
    }
}
