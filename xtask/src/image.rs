//! `cargo xtask image`: the agent's container image, built without any registry.
//!
//! The image holds the release agent and the shared libraries `ldd` lists for it (glibc,
//! libgcc_s, libm and the loader), nothing else: the layout `deploy/Containerfile` produces
//! in its `FROM scratch` stage. Here the files come from this machine's Debian packages and
//! the image is made with `podman import`, so no base image is pulled.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::util::{self, output, step, workspace_root};

/// Where the agent sits in the image (the chart and the Containerfile use the same path).
pub const AGENT_PATH: &str = "usr/local/bin/tracer";

#[derive(clap::Args)]
pub struct Args {
    /// Put this agent binary in the image instead of building the release agent (the tests
    /// use it to ship the binary under test).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Image name and tag (default `tracer:<the agent's version>`).
    #[arg(long)]
    tag: Option<String>,
}

pub fn command(args: Args) -> Result<()> {
    let binary = match args.binary {
        Some(b) => b,
        None => {
            crate::setup::run(false)?;
            crate::build_agent()?
        }
    };
    let tag = match args.tag {
        Some(t) => t,
        None => format!("tracer:{}", agent_version(&binary)?),
    };
    let size = build(&binary, &tag)?;
    println!("{tag} {:.1} MiB", size as f64 / (1024.0 * 1024.0));
    Ok(())
}

/// `tracer 0.1.0` → `0.1.0`: the tag follows the binary it ships.
fn agent_version(binary: &Path) -> Result<String> {
    let out = output(&binary.to_string_lossy(), &["--version"])
        .with_context(|| format!("running {} --version", binary.display()))?;
    out.split_whitespace()
        .nth(1)
        .map(str::to_owned)
        .with_context(|| format!("no version in {out:?}"))
}

/// Builds the image `tag` holding `binary`; returns its size in bytes.
fn build(binary: &Path, tag: &str) -> Result<u64> {
    if util::which("podman").is_none() {
        bail!("podman is missing: `cargo xtask setup --test-deps` installs it (Debian package)");
    }
    let work = workspace_root().join("target/image");
    let rootfs = work.join("rootfs");
    if rootfs.exists() {
        std::fs::remove_dir_all(&rootfs)?;
    }
    let agent = rootfs.join(AGENT_PATH);
    copy_file(binary, &agent)?;
    for lib in shared_libraries(binary)? {
        let inside = rootfs.join(lib.strip_prefix("/").unwrap_or(&lib));
        copy_file(&lib, &inside)?;
    }
    // Mount points the runtime fills; /tmp for anything that wants one.
    for dir in ["proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(rootfs.join(dir))?;
    }
    let tar = work.join("rootfs.tar");
    util::run(
        Command::new("tar")
            .args(["--owner=0", "--group=0", "--numeric-owner", "-C"])
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
    )?;
    let previous = image_id(tag);
    step(format!("importing {} as {tag}", tar.display()));
    util::run(
        Command::new("podman")
            .args(["import", "--quiet"])
            .args(["--change", &format!(r#"ENTRYPOINT ["/{AGENT_PATH}"]"#)])
            .args(["--change", "LABEL org.opencontainers.image.title=tracer"])
            .arg(&tar)
            .arg(tag),
    )?;
    // The image the tag named before is left untagged: remove it (unless a container uses it).
    if let Some(old) = previous.filter(|old| Some(old) != image_id(tag).as_ref()) {
        let _ = output("podman", &["rmi", &old]);
    }
    let size = output(
        "podman",
        &["image", "inspect", "--format", "{{.Size}}", tag],
    )
    .context("podman image inspect")?;
    size.trim()
        .parse()
        .with_context(|| format!("image size {size:?}"))
}

fn image_id(tag: &str) -> Option<String> {
    output("podman", &["image", "inspect", "--format", "{{.Id}}", tag]).map(|s| s.trim().to_owned())
}

/// The shared libraries the dynamic loader resolves for `binary` (and the loader itself),
/// as `ldd` prints them.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = output("ldd", &[&binary.to_string_lossy()])
        .with_context(|| format!("ldd {} failed", binary.display()))?;
    // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`;
    // the vDSO has no file.
    let libs: Vec<PathBuf> = out
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect();
    if libs.is_empty() {
        bail!("ldd lists no libraries for {}:\n{out}", binary.display());
    }
    Ok(libs)
}

/// Copies `from` (following symlinks: the image holds the files themselves) to `to`.
fn copy_file(from: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}
