//! `cargo xtask fuzz`: the parsers' libFuzzer targets (`fuzz/`), run as a habit, not an event.
//!
//! Every target has two committed input folders: `fuzz/seeds/<target>` (a small, minimised
//! corpus) and `fuzz/regressions/<target>` (inputs that once failed, kept forever). A run
//!
//! 1. replays both folders (every input once), then
//! 2. fuzzes for a fixed budget, starting from them, and
//! 3. on a crash, minimises the input into `fuzz/regressions/<target>/` and fails.
//!
//! `cargo xtask test` does this for every target with a short budget (`TEST_BUDGET`), two at a
//! time, so a regression cannot land; `cargo xtask fuzz [--minutes N] [TARGET…]` is for long runs
//! (their corpus grows in `fuzz/corpus/<target>`, ignored by git; `--merge-seeds` turns it and
//! the seeds into a small covering set of seeds). The targets are built once, optimised, with debug assertions
//! (overflow checks) and without a sanitizer: the parsers are safe Rust, so AddressSanitizer
//! would only slow the search down.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::util::{self, step, workspace_root};

/// Fuzzing time per target in `cargo xtask test`.
pub const TEST_BUDGET: Duration = Duration::from_secs(30);
/// One input that runs longer than this is a hang (a finding like a crash).
const INPUT_TIMEOUT_SECS: u32 = 10;
/// A target whose memory grows past this fails (unbounded memory is a finding too).
const RSS_LIMIT_MB: u32 = 2048;

#[derive(clap::Args)]
pub struct Args {
    /// Minutes of fuzzing per target.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=24 * 60))]
    minutes: u64,
    /// Targets run at the same time (default: one per core).
    #[arg(long)]
    jobs: Option<usize>,
    /// After fuzzing, replace each target's committed seeds (`fuzz/seeds/<target>`) by a small
    /// set of inputs covering what the seeds and the grown corpus cover (commit the result).
    #[arg(long)]
    merge_seeds: bool,
    /// Targets to run (default: every `[[bin]]` of fuzz/Cargo.toml).
    targets: Vec<String>,
}

/// What one target's run found.
pub struct Outcome {
    pub target: String,
    /// Inputs executed while fuzzing (the replay not included).
    pub runs: u64,
    /// Coverage at the end: edges (`cov`) and features (`ft`) as libFuzzer counts them.
    pub cov: u64,
    pub features: u64,
    pub elapsed: Duration,
    /// The failure, with the minimised input's path where there is one.
    pub failure: Option<String>,
}

impl Outcome {
    /// Nothing run yet, nothing found.
    fn new(target: &str) -> Self {
        Self {
            target: target.to_owned(),
            runs: 0,
            cov: 0,
            features: 0,
            elapsed: Duration::ZERO,
            failure: None,
        }
    }
}

pub fn command(args: Args) -> Result<()> {
    let all = targets()?;
    let chosen = if args.targets.is_empty() {
        all
    } else {
        for t in &args.targets {
            if !all.contains(t) {
                bail!("no fuzz target `{t}` (targets: {})", all.join(", "));
            }
        }
        args.targets.clone()
    };
    let jobs = args.jobs.unwrap_or_else(cores).max(1);
    let budget = Duration::from_secs(args.minutes * 60);
    let outcomes = run(&chosen, budget, jobs, Corpus::Kept)?;
    print_table(&outcomes);
    if args.merge_seeds {
        let bin_dir = bin_dir();
        for t in &chosen {
            merge_seeds(&bin_dir, t)?;
        }
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.failure.is_some())
        .map(|o| o.target.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("fuzz target(s) failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Where a run's grown corpus lives.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Corpus {
    /// `fuzz/corpus/<target>`, kept between long runs.
    Kept,
    /// A fresh folder under `target/`, so a test run depends only on committed inputs.
    Scratch,
}

/// Builds the targets, then runs `targets` for `budget` each, `jobs` at a time.
pub fn run(
    targets: &[String],
    budget: Duration,
    jobs: usize,
    corpus: Corpus,
) -> Result<Vec<Outcome>> {
    build()?;
    let bin_dir = bin_dir();
    let queue = Mutex::new(targets.to_vec());
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.min(targets.len()) {
            s.spawn(|| {
                loop {
                    let Some(t) = queue.lock().expect("queue").pop() else {
                        break;
                    };
                    let outcome =
                        fuzz_one(&bin_dir, &t, budget, corpus).unwrap_or_else(|e| Outcome {
                            failure: Some(format!("could not run: {e:#}")),
                            ..Outcome::new(&t)
                        });
                    results.lock().expect("results").push(outcome);
                }
            });
        }
    });
    let mut out = results.into_inner().expect("results");
    out.sort_by(|a, b| a.target.cmp(&b.target));
    Ok(out)
}

/// The targets, as fuzz/Cargo.toml names its `[[bin]]` sections.
pub fn targets() -> Result<Vec<String>> {
    let manifest = fuzz_dir().join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin && let Some(v) = line.strip_prefix("name") {
            let v = v
                .trim_start()
                .trim_start_matches('=')
                .trim()
                .trim_matches('"');
            names.push(v.to_owned());
        }
    }
    if names.is_empty() {
        bail!("{} names no [[bin]] target", manifest.display());
    }
    Ok(names)
}

pub fn print_table(outcomes: &[Outcome]) {
    println!(
        "{:<14} {:>12} {:>10} {:>8} {:>8}  result",
        "fuzz target", "runs", "runs/s", "cov", "ft"
    );
    for o in outcomes {
        let rate = o.runs as f64 / o.elapsed.as_secs_f64().max(1e-3);
        println!(
            "{:<14} {:>12} {:>10.0} {:>8} {:>8}  {}",
            o.target,
            o.runs,
            rate,
            o.cov,
            o.features,
            o.failure.as_deref().unwrap_or("ok")
        );
    }
}

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

fn bin_dir() -> PathBuf {
    fuzz_dir().join("target/x86_64-unknown-linux-gnu/release")
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Installs cargo-fuzz if needed and builds every target once.
fn build() -> Result<()> {
    crate::setup::cargo_fuzz()?;
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "fuzz",
        "build",
        "--release",
        "--debug-assertions",
        "--sanitizer",
        "none",
    ])
    .current_dir(workspace_root())
    .env_remove("RUSTUP_TOOLCHAIN")
    .env_remove("CARGO");
    util::run(&mut cmd)
}

/// The committed input folders of `target` that exist.
fn committed_inputs(target: &str) -> Vec<PathBuf> {
    ["seeds", "regressions"]
        .iter()
        .map(|d| fuzz_dir().join(d).join(target))
        .filter(|p| p.is_dir())
        .collect()
}

fn fuzz_one(bin_dir: &Path, target: &str, budget: Duration, corpus: Corpus) -> Result<Outcome> {
    let bin = bin_dir.join(target);
    let inputs = committed_inputs(target);
    let started = Instant::now();
    let artifacts = workspace_root().join("target/fuzz-artifacts").join(target);
    std::fs::create_dir_all(&artifacts)?;
    let libfuzzer_opts = [
        format!("-timeout={INPUT_TIMEOUT_SECS}"),
        format!("-rss_limit_mb={RSS_LIMIT_MB}"),
        format!("-artifact_prefix={}/", artifacts.display()),
        "-print_final_stats=1".to_owned(),
    ];
    let mut outcome = Outcome::new(target);

    // 1. Every committed input once, file by file, so a failure names its input.
    let files = committed_files(&inputs)?;
    if !files.is_empty() {
        let log = libfuzzer(&bin, &libfuzzer_opts, &[], &files)?;
        if !log.success {
            let input = log
                .last_running()
                .map_or_else(|| "?".to_owned(), |p| p.display().to_string());
            outcome.failure = Some(format!("committed input {input} fails: {}", log.reason()));
            outcome.elapsed = started.elapsed();
            return Ok(outcome);
        }
    }

    // 2. Fuzz from them.
    let grown = match corpus {
        Corpus::Kept => fuzz_dir().join("corpus").join(target),
        Corpus::Scratch => {
            let d = workspace_root().join("target/fuzz-corpus").join(target);
            let _ = std::fs::remove_dir_all(&d);
            d
        }
    };
    std::fs::create_dir_all(&grown)?;
    let mut dirs = vec![grown];
    dirs.extend(inputs);
    let budget_opt = format!("-max_total_time={}", budget.as_secs().max(1));
    let log = libfuzzer(&bin, &libfuzzer_opts, &[budget_opt], &dirs)?;
    outcome.elapsed = started.elapsed();
    outcome.runs = log.stat("stat::number_of_executed_units").unwrap_or(0);
    (outcome.cov, outcome.features) = log.coverage();
    if !log.success {
        outcome.failure = Some(failure(&bin, target, &log));
    }
    Ok(outcome)
}

/// The files of the committed input folders, in a stable order.
fn committed_files(dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for dir in dirs {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// What one libFuzzer process printed.
struct Log {
    success: bool,
    text: String,
}

impl Log {
    fn stat(&self, name: &str) -> Option<u64> {
        self.text.lines().rev().find_map(|l| {
            l.strip_prefix(name)?
                .trim_start_matches(':')
                .trim()
                .parse()
                .ok()
        })
    }

    /// `cov:` and `ft:` of the last status line.
    fn coverage(&self) -> (u64, u64) {
        let field = |line: &str, key: &str| -> Option<u64> {
            let mut words = line.split_whitespace();
            words.find(|w| *w == key)?;
            words.next()?.parse().ok()
        };
        self.text
            .lines()
            .rev()
            .find_map(|l| Some((field(l, "cov:")?, field(l, "ft:")?)))
            .unwrap_or((0, 0))
    }

    /// The input being replayed when the process stopped.
    fn last_running(&self) -> Option<PathBuf> {
        self.text
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("Running: "))
            .map(|p| PathBuf::from(p.trim()))
    }

    /// The input libFuzzer wrote when it stopped on a finding.
    fn artifact(&self) -> Option<PathBuf> {
        self.text.lines().find_map(|l| {
            let rest = l.split("Test unit written to ").nth(1)?;
            Some(PathBuf::from(rest.trim()))
        })
    }

    /// The first line that says what went wrong (a panic message, or libFuzzer's verdict).
    fn reason(&self) -> String {
        let lines: Vec<&str> = self.text.lines().collect();
        let panic = lines.iter().position(|l| l.contains("panicked at"));
        match panic {
            Some(i) => lines[i..]
                .iter()
                .take(2)
                .copied()
                .collect::<Vec<_>>()
                .join(" "),
            None => lines
                .iter()
                .find(|l| l.contains("ERROR: libFuzzer") || l.contains("==ERROR"))
                .map_or_else(|| "failed".to_owned(), |l| l.trim().to_owned()),
        }
    }
}

fn libfuzzer(bin: &Path, opts: &[String], extra: &[String], dirs: &[PathBuf]) -> Result<Log> {
    let out = Command::new(bin)
        .args(opts)
        .args(extra)
        .args(dirs)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    Ok(Log {
        success: out.status.success(),
        text,
    })
}

/// Minimises the input a fuzzing run stopped on into the regression folder and describes the
/// failure.
fn failure(bin: &Path, target: &str, log: &Log) -> String {
    let what = "crashed";
    let reason = log.reason();
    let Some(artifact) = log.artifact() else {
        return format!("{what}: {reason}");
    };
    let regressions = fuzz_dir().join("regressions").join(target);
    let name = artifact
        .file_name()
        .map_or_else(|| "crash".into(), |n| n.to_string_lossy().into_owned());
    let kept = regressions.join(&name);
    let minimised = std::fs::create_dir_all(&regressions).is_ok()
        && Command::new(bin)
            .arg("-minimize_crash=1")
            .arg("-max_total_time=60")
            .arg(format!("-exact_artifact_path={}", kept.display()))
            .arg(&artifact)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
        && kept.is_file();
    if !minimised {
        let _ = std::fs::copy(&artifact, &kept);
    }
    step(format!(
        "fuzz target {target} {what}: {reason}\n  input kept as {} (commit it with the fix)",
        kept.display()
    ));
    format!("{what}: {reason} (input: {})", kept.display())
}

/// Seeds a fuzzing run adds are at most this long, so the committed seeds stay small.
const MAX_SEED_BYTES: u64 = 1024;
/// Seeds made from real captured streams (`fuzz/seeds/from_captures.py`) are always kept.
const CAPTURE_PREFIX: &str = "capture-";

/// Folds the grown corpus of `target` into its committed seeds: libFuzzer's set-cover merge
/// picks a small set of inputs that covers what the seeds and the corpus cover together; the
/// seeds become that set's inputs of at most `MAX_SEED_BYTES`, plus the captured streams.
fn merge_seeds(bin_dir: &Path, target: &str) -> Result<()> {
    let seeds = fuzz_dir().join("seeds").join(target);
    let grown = fuzz_dir().join("corpus").join(target);
    let merged = workspace_root().join("target/fuzz-merge").join(target);
    let _ = std::fs::remove_dir_all(&merged);
    std::fs::create_dir_all(&merged)?;
    std::fs::create_dir_all(&seeds)?;
    let mut cmd = Command::new(bin_dir.join(target));
    cmd.arg("-set_cover_merge=1").arg(&merged).arg(&seeds);
    if grown.is_dir() {
        cmd.arg(&grown);
    }
    util::run(cmd.stdout(Stdio::null()).stderr(Stdio::null()))?;
    for entry in std::fs::read_dir(&seeds)? {
        let entry = entry?;
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(CAPTURE_PREFIX)
        {
            std::fs::remove_file(entry.path())?;
        }
    }
    let mut added = 0;
    for entry in std::fs::read_dir(&merged)? {
        let entry = entry?;
        if entry.metadata()?.len() <= MAX_SEED_BYTES {
            std::fs::copy(entry.path(), seeds.join(entry.file_name()))?;
            added += 1;
        }
    }
    step(format!(
        "{target}: {added} fuzzed seed inputs (besides the captured streams) in {}",
        seeds.display()
    ));
    Ok(())
}
