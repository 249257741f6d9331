//! Small process helpers shared by the tasks.
use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

pub use test_kit::{describe, workspace_root};

/// Prints a step the way users read it: what is being done, and why.
pub fn step(msg: impl AsRef<str>) {
    eprintln!("xtask: {}", msg.as_ref());
}

/// Runs a command, echoing it; fails with the command line when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    step(format!("$ {}", describe(cmd)));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs a command quietly and tells whether it succeeded.
pub fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Output of a command, when it succeeds.
pub fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).args(args).current_dir(workspace_root()))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Loading kernel programs and installing packages need root: re-run this task through sudo
/// (keeping PATH and the Rust environment), or say clearly that root is needed.
pub fn ensure_root() -> Result<()> {
    if is_root() {
        return Ok(());
    }
    if !succeeds("sudo", &["-n", "true"]) && which("sudo").is_none() {
        bail!("this task needs root (to install packages and load eBPF programs): run it as root");
    }
    step("not root: re-running through sudo");
    let exe = std::env::current_exe()?;
    let path = std::env::var("PATH").unwrap_or_default();
    let mut cmd = Command::new("sudo");
    cmd.arg("--preserve-env=CARGO,RUSTUP_HOME,CARGO_HOME,RUSTUP_TOOLCHAIN,CI")
        .arg("env")
        .arg(format!("PATH={path}"))
        .arg(exe)
        .args(std::env::args_os().skip(1));
    Err(cmd.exec()).context("re-running through sudo")
}

pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

/// Replaces this process with `bin args` (so signals reach the agent directly).
pub fn exec(bin: &Path, args: &[String]) -> Result<()> {
    step(format!("starting {} {}", bin.display(), args.join(" ")));
    Err(Command::new(bin).args(args).exec()).with_context(|| format!("starting {}", bin.display()))
}
