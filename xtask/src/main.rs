//! Project tasks: `cargo xtask setup | build | run | test | bench | kernel-test | fuzz | image`.
//!
//! Every task does its own set-up first (fast when nothing is missing), so the README's two
//! commands work on a fresh machine.
mod bench;
mod fuzz;
mod image;
mod kernel_test;
mod kube_tools;
mod setup;
mod test;
mod util;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test the tracer")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install everything the build and the agent need (idempotent): LLVM 22, rust-src for
    /// nightly, bpf-linker 0.13.0; mount tracefs.
    Setup {
        /// Also install what the end-to-end tests drive (curl, python packages, ...).
        #[arg(long)]
        test_deps: bool,
    },
    /// Build the agent (release), kernel programs included.
    Build,
    /// Build and start the agent on this node; extra arguments go to `tracer`
    /// (e.g. `cargo xtask run -- --port 8080`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test: lints, host unit tests, the privileged tests that load the real
    /// programs into the running kernel and drive real traffic, and the kernel matrix.
    Test {
        /// Skip fmt and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Skip the kernel matrix (`cargo xtask kernel-test`), which otherwise runs after the
        /// workspace tests when no filter is given.
        #[arg(long)]
        no_kernel_matrix: bool,
        /// Passed to `cargo test` as a test-name filter.
        filter: Option<String>,
    },
    /// Measure what tracing costs: throughput, latency, coverage, agent CPU/RSS (nginx + wrk +
    /// oha, traced and untraced rounds interleaved) and the event pipeline without the kernel.
    Bench(bench::Args),
    /// The kernel matrix: boot Debian's 5.10, 6.1 and 6.12 kernels under qemu with an initramfs
    /// holding the agent, run the load-and-attach, HTTP/1.x, TLS and HTTP/2 scenario in each (and
    /// natively on this kernel), report programs loaded/attached, verifier instruction counts and
    /// pass/fail (also in target/kernel-matrix/report.md).
    KernelTest(kernel_test::Args),
    /// Fuzz the parsers (libFuzzer targets in fuzz/): every target in parallel for --minutes,
    /// starting from the committed seeds and regressions; runs and coverage per target; a crash
    /// is minimised into fuzz/regressions/<target>/ and fails the task. `cargo xtask test` runs
    /// each target for 30 s.
    Fuzz(fuzz::Args),
    /// Build the agent's container image `tracer:<version>` with podman, from the release agent
    /// and the libraries `ldd` lists (no registry needed); prints its size.
    Image(image::Args),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Setup { test_deps } => {
            util::ensure_root()?;
            setup::run(test_deps)
        }
        Task::Build => {
            util::ensure_root()?;
            setup::run(false)?;
            build_agent()?;
            Ok(())
        }
        Task::Run { args } => {
            util::ensure_root()?;
            setup::run(false)?;
            let bin = build_agent()?;
            util::step(ui_url(&args));
            util::exec(&bin, &args)
        }
        Task::Test {
            no_lint,
            no_kernel_matrix,
            filter,
        } => {
            util::ensure_root()?;
            setup::run(true)?;
            test::run(!no_lint, !no_kernel_matrix, filter.as_deref())
        }
        Task::Bench(args) => {
            util::ensure_root()?;
            setup::run(false)?;
            bench::run(args)
        }
        Task::KernelTest(args) => {
            util::ensure_root()?;
            setup::run(false)?;
            kernel_test::command(args)
        }
        Task::Fuzz(args) => {
            setup::run(false)?;
            fuzz::command(args)
        }
        Task::Image(args) => {
            util::ensure_root()?;
            image::command(args)
        }
    }
}

/// Where the agent's node-local view will be (`--ui-listen`, `TRACER_UI_LISTEN`, or its
/// default); the agent logs the address it got too.
fn ui_url(args: &[String]) -> String {
    let flag = args
        .iter()
        .enumerate()
        .find_map(|(i, a)| match a.strip_prefix("--ui-listen") {
            Some("") => args.get(i + 1).cloned(),
            Some(v) => v.strip_prefix('=').map(str::to_owned),
            None => None,
        });
    let listen = flag
        .or_else(|| std::env::var("TRACER_UI_LISTEN").ok())
        .unwrap_or_else(|| "127.0.0.1:9400".to_owned());
    if listen.eq_ignore_ascii_case("off") {
        "node-local view: off (--ui-listen off)".to_owned()
    } else {
        format!(
            "node-local view: http://{listen}/ (in a terminal: target/release/tracer top --connect {listen})"
        )
    }
}

/// Builds the release agent and returns the binary's path.
fn build_agent() -> Result<PathBuf> {
    util::cargo(&[
        "build",
        "--release",
        "--package",
        "tracer-user",
        "--bin",
        "tracer",
    ])?;
    Ok(util::workspace_root().join("target/release/tracer"))
}
