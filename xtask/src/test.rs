//! `cargo xtask test`: lints, then every test of the workspace and the kernel matrix, with one
//! summary line.
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Result, bail};

use crate::{
    fuzz, kernel_test,
    util::{cargo, describe, step, workspace_root},
};

pub fn run(lint: bool, kernel_matrix: bool, filter: Option<&str>) -> Result<()> {
    if lint {
        cargo(&["fmt", "--all", "--check"])?;
        // The kernel crate builds only for its BPF target: linted separately below.
        cargo(&[
            "clippy",
            "--workspace",
            "--exclude",
            "tracer-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])?;
        clippy_ebpf()?;
    }
    // The end-to-end tests start the real agent binary.
    cargo(&["build", "--package", "tracer-user", "--bin", "tracer"])?;
    // The kernel crate has no host tests (it builds only for its BPF target).
    let mut args = vec![
        "test",
        "--workspace",
        "--exclude",
        "tracer-ebpf",
        "--no-fail-fast",
    ];
    if let Some(f) = filter {
        args.push(f);
    }
    let (mut passed, mut failed, ignored, ok) = cargo_test(&args)?;
    // The kernel matrix (its VMs run in parallel: about 70 s once the kernels are cached): each kernel counts as one
    // test. Not run for a filtered run, nor with --no-kernel-matrix.
    if kernel_matrix && filter.is_none() {
        let versions: Vec<String> = kernel_test::DEFAULT_VERSIONS
            .iter()
            .map(|v| v.to_string())
            .collect();
        // The debug agent built above: a release build would add minutes to a clean run.
        match kernel_test::run(&versions, true, kernel_test::Build::Debug) {
            Ok(rows) => {
                for row in rows {
                    let verdict = match &row.result {
                        Ok(()) => "ok".to_owned(),
                        Err(why) => format!("FAILED ({why})"),
                    };
                    println!("test kernel-matrix::{} ... {verdict}", row.label);
                    if row.passed() {
                        passed += 1;
                    } else {
                        failed += 1;
                    }
                }
            }
            Err(e) => {
                println!("test kernel-matrix ... FAILED (could not run: {e:#})");
                failed += 1;
            }
        }
    }
    // Every fuzz target: its committed inputs, then a short fuzzing budget (not for a
    // filtered run). Each target counts as one test.
    if filter.is_none() {
        let run = fuzz::targets()
            .and_then(|t| fuzz::run(&t, fuzz::TEST_BUDGET, 2, fuzz::Corpus::Scratch));
        match run {
            Ok(outcomes) => {
                fuzz::print_table(&outcomes);
                for o in &outcomes {
                    match &o.failure {
                        None => {
                            println!("test fuzz::{} ... ok ({} runs)", o.target, o.runs);
                            passed += 1;
                        }
                        Some(why) => {
                            println!("test fuzz::{} ... FAILED ({why})", o.target);
                            failed += 1;
                        }
                    }
                }
            }
            Err(e) => {
                println!("test fuzz ... FAILED (could not run: {e:#})");
                failed += 1;
            }
        }
    }
    // One plain closing line, whatever the number of test binaries.
    println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    if failed > 0 {
        bail!("{failed} test(s) failed");
    }
    if !ok {
        bail!("cargo test failed (a test binary did not build or crashed; see above)");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    if ignored > 0 {
        bail!("{ignored} test(s) were skipped: every test must run here");
    }
    Ok(())
}

/// Clippy on the kernel crate, for its own target.
fn clippy_ebpf() -> Result<()> {
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "clippy",
        "--package",
        "tracer-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--release",
        "--",
        "-D",
        "warnings",
    ])
    .current_dir(workspace_root())
    .env_remove("RUSTUP_TOOLCHAIN")
    .env_remove("CARGO");
    crate::util::run(&mut cmd)
}

/// Runs cargo test, streaming its output, and sums the `test result:` lines.
fn cargo_test(args: &[&str]) -> Result<(u64, u64, u64, bool)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(args)
        .current_dir(workspace_root())
        .env("TRACER_BIN", workspace_root().join("target/debug/tracer"))
        .stdout(Stdio::piped());
    step(format!("$ {}", describe(&cmd)));
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let (mut passed, mut failed, mut ignored) = (0, 0, 0);
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(['.', ';']) {
                let mut words = part.split_whitespace();
                if let (Some(n), Some(what)) = (words.next(), words.next()) {
                    let n: u64 = n.parse().unwrap_or(0);
                    match what {
                        "passed" => passed += n,
                        "failed" => failed += n,
                        "ignored" => ignored += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let ok = child.wait()?.success();
    Ok((passed, failed, ignored, ok))
}
