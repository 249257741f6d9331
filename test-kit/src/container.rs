//! Real containers for the tests: podman, with an image built from Debian packages (no
//! registry is needed, or reachable on the test machine).
//!
//! [`image`] builds `tracer-test-base:<hash>` once per package list: `mmdebstrap` makes a root
//! file system tarball from Debian bookworm (cached under `target/test-images/`, so a machine
//! that built it once needs no network again), `podman import` turns it into an image. A lock
//! file serialises builds, across test threads and test binaries.
//!
//! [`Container::run`] starts one detached, with the flags this machine needs (`--runtime runc`:
//! crun refuses the hybrid cgroup layout; explicit ulimits: the session cannot raise its
//! own; `--network host`: the tests talk over the host's loopback). Dropping a [`Container`]
//! removes it (killed at once), whether the test passed or panicked; containers left by a
//! test process that was killed are removed by the next one.
use std::{
    fs::File, io::ErrorKind, os::fd::AsRawFd, path::PathBuf, process::Command, sync::Once,
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};

use crate::{net::wait_port, proc::run_bounded, workspace::workspace_root};

/// What the end-to-end tests run in containers: Python's HTTP server and curl.
pub const BASE_PACKAGES: &[&str] = &["python3", "curl"];
/// The Debian release the images are made of.
const SUITE: &str = "bookworm";
/// The apt source `mmdebstrap` installs from (override: `TRACER_TEST_DEBIAN_MIRROR`, e.g. a
/// local mirror or proxy for a machine without Internet access).
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// Image repository name; the tag is a hash of what the image is made of.
const IMAGE_NAME: &str = "tracer-test-base";
/// Label of every container started here; its value is the pid of the test process.
const OWNER_LABEL: &str = "tracer.test.owner";
/// `mmdebstrap` takes about 20 s to 2 min (download); generous for a slow mirror.
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);
/// Any single podman command (run, inspect, rm, import).
const PODMAN_TIMEOUT: Duration = Duration::from_secs(120);
/// A server in a fresh container starts in a few seconds; generous for a loaded machine.
const SERVER_TIMEOUT: Duration = Duration::from_secs(30);

/// The image with [`BASE_PACKAGES`] (built the first time, then reused).
pub fn base_image() -> Result<String> {
    image(BASE_PACKAGES)
}

/// The tag of an image with Debian's essential packages plus `packages`, built if podman does
/// not have it yet. Safe to call from several tests at once.
pub fn image(packages: &[&str]) -> Result<String> {
    let mirror = mirror();
    let key = format!("{SUITE} essential {} {mirror}", packages.join(","));
    let tag = format!("{IMAGE_NAME}:{:016x}", fnv1a(key.as_bytes()));
    if image_exists(&tag)? {
        return Ok(tag);
    }
    let dir = workspace_root().join("target/test-images");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _lock = Lock::take(dir.join(format!("{}.lock", tag.replace(':', "-"))))?;
    // Someone else may have built it while this test waited for the lock.
    if image_exists(&tag)? {
        return Ok(tag);
    }
    let tar = dir.join(format!("{}.tar", tag.replace(':', "-")));
    if !tar.is_file() {
        build_rootfs(packages, &mirror, &tar)?;
    }
    run_bounded(
        "podman import",
        Command::new("podman").arg("import").arg(&tar).arg(&tag),
        PODMAN_TIMEOUT,
    )
    .with_context(|| format!("importing {} as {tag}", tar.display()))?;
    Ok(tag)
}

fn mirror() -> String {
    std::env::var("TRACER_TEST_DEBIAN_MIRROR").unwrap_or_else(|_| DEFAULT_MIRROR.to_owned())
}

fn image_exists(tag: &str) -> Result<bool> {
    let status = Command::new("podman")
        .args(["image", "exists", tag])
        .status()
        .context("running podman (install it: `cargo xtask setup --test-deps`)")?;
    Ok(status.success())
}

/// `mmdebstrap` into a temporary file, renamed into place once complete (an interrupted build
/// leaves no tarball that looks finished).
fn build_rootfs(packages: &[&str], mirror: &str, tar: &std::path::Path) -> Result<()> {
    // mmdebstrap picks the output format from the name's extension: it must end in `.tar`.
    let partial = tar.with_extension("partial.tar");
    let _ = std::fs::remove_file(&partial);
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(["--variant=essential", "--quiet"]);
    if !packages.is_empty() {
        cmd.arg(format!("--include={}", packages.join(",")));
    }
    cmd.arg(SUITE)
        .arg(&partial)
        .arg(format!("deb {mirror} {SUITE} main"));
    run_bounded("mmdebstrap", &mut cmd, BUILD_TIMEOUT).with_context(|| {
        format!(
            "building a Debian {SUITE} root file system with {packages:?} (mmdebstrap comes with \
             `cargo xtask setup --test-deps`; without network access, point \
             TRACER_TEST_DEBIAN_MIRROR at a reachable mirror)"
        )
    })?;
    std::fs::rename(&partial, tar)
        .with_context(|| format!("moving {} into place", partial.display()))
}

/// FNV-1a: a hash that stays the same across Rust releases (the image tag must).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// An exclusive `flock` on a file, released when dropped (or when the process dies).
struct Lock(File);

impl Lock {
    fn take(path: PathBuf) -> Result<Self> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        loop {
            // SAFETY: flock(2) on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(Self(file));
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != ErrorKind::Interrupted {
                return Err(err).with_context(|| format!("locking {}", path.display()));
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: flock(2) on a descriptor we own.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// A podman container, removed (killed) when dropped.
pub struct Container {
    /// The full (64-hex) container id.
    pub id: String,
}

impl Container {
    /// Starts `cmd` detached in a container of `image`, with `env` in its environment.
    pub fn run(image: &str, env: &[(&str, &str)], cmd: &[&str]) -> Result<Self> {
        remove_leftovers();
        let mut podman = Command::new("podman");
        podman
            .args(["--runtime", "runc", "run", "--detach", "--network", "host"])
            .args([
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=4096:4096",
            ])
            .arg("--label")
            .arg(format!("{OWNER_LABEL}={}", std::process::id()));
        for (k, v) in env {
            podman.arg("--env").arg(format!("{k}={v}"));
        }
        podman.arg(image).args(cmd);
        let out = run_bounded("podman run", &mut podman, PODMAN_TIMEOUT)?;
        let id = out.lines().last().unwrap_or_default().trim().to_owned();
        ensure!(
            id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "podman run printed {out:?}, not a container id"
        );
        Ok(Self { id })
    }

    /// Python's HTTP server (`python3 -m http.server`, threaded) in a container of `image` on
    /// 127.0.0.1:`port` (host network), with `env`; returns once it accepts connections (the
    /// error otherwise carries the container's output).
    pub fn python_http_server(image: &str, port: u16, env: &[(&str, &str)]) -> Result<Self> {
        let port_arg = port.to_string();
        let server = Self::run(
            image,
            env,
            &[
                "python3",
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port_arg,
            ],
        )?;
        if let Err(e) = wait_port(port, SERVER_TIMEOUT) {
            let logs = server.logs().unwrap_or_else(|e| format!("{e:#}"));
            bail!("the container's HTTP server: {e:#}\n{logs}");
        }
        Ok(server)
    }

    /// A field of `podman inspect` (a Go template, e.g. `{{.State.Pid}}`), trimmed.
    pub fn inspect(&self, format: &str) -> Result<String> {
        let out = run_bounded(
            "podman inspect",
            Command::new("podman")
                .args(["inspect", "--type", "container", "--format", format])
                .arg(&self.id),
            PODMAN_TIMEOUT,
        )?;
        Ok(out.trim().to_owned())
    }

    /// The host pid of the container's first process (0 once it has exited).
    pub fn pid(&self) -> Result<u32> {
        let pid = self.inspect("{{.State.Pid}}")?;
        pid.parse()
            .with_context(|| format!("podman inspect gave pid {pid:?}"))
    }

    /// Waits until the container's command exits (at most `timeout`); its exit code.
    pub fn wait(&self, timeout: Duration) -> Result<i32> {
        let out = run_bounded(
            "podman wait",
            Command::new("podman").arg("wait").arg(&self.id),
            timeout,
        )?;
        let code = out.trim();
        code.parse()
            .with_context(|| format!("podman wait printed {code:?}"))
    }

    /// What the container printed so far (stdout and stderr).
    pub fn logs(&self) -> Result<String> {
        let out = Command::new("podman")
            .arg("logs")
            .arg(&self.id)
            .output()
            .context("running podman logs")?;
        if !out.status.success() {
            bail!(
                "podman logs {}: {}",
                self.id,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        remove(&[self.id.as_str()]);
    }
}

fn remove(ids: &[&str]) {
    let _ = run_bounded(
        "podman rm",
        Command::new("podman")
            .args(["rm", "--force", "--time", "0"])
            .args(ids),
        PODMAN_TIMEOUT,
    );
}

/// Once per test process: removes the containers of test processes that no longer exist (a
/// test killed before its containers were dropped).
fn remove_leftovers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(out) = run_bounded(
            "podman ps",
            Command::new("podman")
                .args(["ps", "--all", "--filter"])
                .arg(format!("label={OWNER_LABEL}"))
                .arg("--format")
                .arg(format!(
                    "{{{{.ID}}}} {{{{index .Labels \"{OWNER_LABEL}\"}}}}"
                )),
            PODMAN_TIMEOUT,
        ) else {
            return;
        };
        let stale: Vec<&str> = out
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, owner)| {
                owner
                    .trim()
                    .parse::<u32>()
                    .is_ok_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
            })
            .map(|(id, _)| id)
            .collect();
        if !stale.is_empty() {
            remove(&stale);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_hash_is_stable() {
        // FNV-1a's published test vectors: the image tag must not change between builds.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
