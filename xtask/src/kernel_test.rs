//! `cargo xtask kernel-test [VERSIONS...]`: the kernel matrix.
//!
//! Boots Debian's own kernels (from apt) under qemu (software emulation: KVM does not work on
//! the development machine) with an initramfs of the project's own: busybox, the release
//! `tracer` binary and its libraries, `/init` (kernel-test/init.sh) and the scenario
//! (kernel-test/scenario.sh). The scenario starts the agent, checks it attached every program,
//! drives HTTP/1.x through busybox httpd and wget, then TLS (HTTP/1.1 and ALPN h2) and h2c
//! through nginx and curl, checks the SERVER and CLIENT spans and a clean SIGTERM exit. The
//! same scenario also runs natively on the host kernel. The results (programs loaded and
//! attached, the verifier's instruction counts, pass/fail, time) are printed as a table and
//! written to target/kernel-matrix/report.md.
use std::{
    fmt::Write as _,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    setup,
    util::{self, output, step, workspace_root},
};

/// Kernels run when none is named: Debian 11's own (5.10), Debian 12's own (6.1) and its
/// backport (6.12).
pub const DEFAULT_VERSIONS: &[&str] = &["5.10", "6.1", "6.12"];
/// What the command needs on the host: the emulator, a static busybox, cpio for the initramfs
/// (binutils: `strip`, to keep the initramfs small when the agent is a debug build), and the
/// TLS and HTTP/2 peers on libssl (nginx, curl; openssl makes their certificate).
const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "binutils",
    "nginx",
    "curl",
    "openssl",
];
/// The TLS and HTTP/2 peers: copied into the initramfs as /bin/<name>, with their libraries.
const PEERS: &[(&str, &str)] = &[("nginx", "/usr/sbin/nginx"), ("curl", "/usr/bin/curl")];
const INIT: &str = include_str!("../kernel-test/init.sh");
const SCENARIO: &str = include_str!("../kernel-test/scenario.sh");
/// A kernel whose VM has not powered off by then is killed and counted as failed.
const VM_TIMEOUT: Duration = Duration::from_secs(600);
const HOST_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(clap::Args)]
pub struct Args {
    /// Kernel series to boot (Debian packages linux-image-<VERSION>.*-amd64), e.g. `6.1 6.12`.
    /// Default: 5.10 6.1 6.12.
    pub versions: Vec<String>,
    /// Do not run the scenario natively on the host kernel.
    #[arg(long)]
    pub no_host: bool,
    /// Test the debug build of the agent instead of the release build (what `cargo xtask test`
    /// does: it has built it already, and start-up time is the kernel verifier's either way).
    #[arg(long)]
    pub debug: bool,
}

/// Which build of the agent goes into the VMs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Build {
    Release,
    Debug,
}

/// One kernel's outcome.
pub struct Row {
    /// `6.1`, `6.12`, `host`.
    pub label: String,
    /// How it ran: `qemu (TCG)` or `native`.
    pub how: &'static str,
    pub release: Option<String>,
    pub features: Option<String>,
    pub loaded: Option<u32>,
    pub attached: Option<u32>,
    pub insns_total: Option<u64>,
    pub insns_max: Option<String>,
    pub start_seconds: Option<String>,
    pub http: bool,
    /// TLS spans (libssl probes), and HTTP/2 spans (h2c and ALPN h2).
    pub tls: bool,
    pub http2: bool,
    /// `Ok` or why it failed.
    pub result: Result<(), String>,
    pub elapsed: Duration,
    pub log: PathBuf,
}

impl Row {
    pub fn passed(&self) -> bool {
        self.result.is_ok()
    }
}

pub fn matrix_dir() -> PathBuf {
    workspace_root().join("target/kernel-matrix")
}

/// Installs what is missing, builds the agent, runs every kernel (in parallel) and the host,
/// prints the table and writes the report. Returns the rows; the caller decides what a failure
/// means.
pub fn run(versions: &[String], host: bool, build: Build) -> Result<Vec<Row>> {
    let started = Instant::now();
    setup::apt_install(PACKAGES)?;
    let bin = match build {
        Build::Release => crate::build_agent()?,
        Build::Debug => {
            util::cargo(&["build", "--package", "tracer-user", "--bin", "tracer"])?;
            workspace_root().join("target/debug/tracer")
        }
    };
    let dir = matrix_dir();
    fs::create_dir_all(&dir)?;

    let mut rows = Vec::new();
    if host {
        rows.push(run_host(&bin, &dir));
    }
    let mut kernels = Vec::new();
    for version in versions {
        match kernel(&dir, version) {
            Ok(vmlinuz) => kernels.push((version.clone(), vmlinuz)),
            Err(e) => rows.push(Row::failed(version, "qemu (TCG)", format!("{e:#}"))),
        }
    }
    if !kernels.is_empty() {
        let initrd = initramfs(&bin, &dir)?;
        step(format!(
            "booting {} kernel(s) under qemu in parallel (software emulation; logs in {})",
            kernels.len(),
            dir.display()
        ));
        let vm_rows: Vec<Row> = std::thread::scope(|s| {
            let handles: Vec<_> = kernels
                .iter()
                .map(|(version, vmlinuz)| {
                    let (dir, initrd) = (&dir, &initrd);
                    s.spawn(move || run_vm(version, vmlinuz, initrd, dir))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("VM thread panicked"))
                .collect()
        });
        rows.extend(vm_rows);
    }
    let report = report(&rows, build);
    fs::write(dir.join("report.md"), &report)?;
    println!(
        "\nkernel matrix ({:.0} s in all):\n{report}",
        started.elapsed().as_secs_f64()
    );
    println!("written to {}", dir.join("report.md").display());
    Ok(rows)
}

/// `cargo xtask kernel-test`: fails when any kernel failed.
pub fn command(args: Args) -> Result<()> {
    let versions: Vec<String> = if args.versions.is_empty() {
        DEFAULT_VERSIONS.iter().map(|v| v.to_string()).collect()
    } else {
        args.versions
    };
    let build = if args.debug {
        Build::Debug
    } else {
        Build::Release
    };
    let rows = run(&versions, !args.no_host, build)?;
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| !r.passed())
        .map(|r| r.label.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("kernel matrix failed on: {}", failed.join(", "));
    }
    Ok(())
}

/// Kernel series of an older Debian release than the host's, and that release. The host's apt
/// does not know their packages: they are looked up and downloaded through an apt state of
/// their own (see [`Apt::release`]), and the host's apt configuration stays as it is.
const OLDER_RELEASES: &[(&str, &str)] = &[("5.10", "bullseye")];

/// The cached `vmlinuz` of Debian's newest `linux-image-<version>.*-amd64`, downloaded on first
/// use (`apt-get download`; only the kernel image is kept, under target/kernel-matrix/kernels).
fn kernel(dir: &Path, version: &str) -> Result<PathBuf> {
    let cache = dir.join("kernels");
    let apt = match OLDER_RELEASES.iter().find(|(series, _)| *series == version) {
        Some((_, release)) => Apt::release(&dir.join("apt"), release)?,
        None => Apt::host(),
    };
    let package = match resolve_package(&apt, version) {
        Some(p) => p,
        None => {
            step(format!(
                "apt does not know the {version} kernel packages yet: apt-get update{}",
                apt.describe()
            ));
            let updated = apt.update();
            match resolve_package(&apt, version) {
                Some(p) => p,
                // Offline: the newest kernel of that series downloaded before.
                None => {
                    return cached_fallback(&cache, version).map_err(|e| match updated {
                        Err(update) => e.context(update),
                        Ok(()) => e,
                    });
                }
            }
        }
    };
    let vmlinuz = cache.join(&package).join("vmlinuz");
    if vmlinuz.is_file() {
        return Ok(vmlinuz);
    }
    step(format!(
        "downloading {package} (once; only its vmlinuz is kept)"
    ));
    let download = dir.join("download");
    let _ = fs::remove_dir_all(&download);
    fs::create_dir_all(&download)?;
    apt.download(&package, &download)
        .with_context(|| format!("downloading {package}: is the Debian repository reachable?"))?;
    let deb = fs::read_dir(&download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download {package} left no .deb"))?;
    util::run(Command::new("sh").current_dir(&download).args([
        "-c",
        "dpkg-deb --fsys-tarfile \"$1\" | tar -x --wildcards './boot/vmlinuz-*'",
        "sh",
        &deb.to_string_lossy(),
    ]))?;
    let image = fs::read_dir(download.join("boot"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .next()
        .with_context(|| format!("{package} holds no /boot/vmlinuz-*"))?;
    fs::create_dir_all(vmlinuz.parent().expect("has a parent"))?;
    fs::rename(&image, &vmlinuz)?;
    fs::remove_dir_all(&download)?;
    Ok(vmlinuz)
}

/// How apt is asked about kernel packages: with the host's configuration, or with a state of
/// its own for another Debian release.
struct Apt {
    /// `-o` options pointing apt at the private state (none for the host's).
    options: Vec<String>,
    /// The other release, for messages.
    release: Option<String>,
}

impl Apt {
    fn host() -> Self {
        Self {
            options: Vec::new(),
            release: None,
        }
    }

    /// apt for Debian `release` (e.g. `bullseye`), in `root/<release>`: the host's own Debian
    /// sources with the host's release renamed (`bookworm` → `bullseye`, `bookworm-security` →
    /// `bullseye-security`; the same mirrors and keyring), its own package lists and cache.
    fn release(root: &Path, release: &str) -> Result<Self> {
        let root = root.join(release);
        let sources = root.join("sources.list");
        for d in ["sources.list.d", "lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(root.join(d))?;
        }
        let host = host_codename().context("the host's Debian release (/etc/os-release)")?;
        let lines = release_sources(&host_apt_sources(), &host, release);
        if lines.is_empty() {
            bail!(
                "apt's configuration has no source for Debian {host} (main): cannot derive one \
                 for {release}"
            );
        }
        fs::write(&sources, lines.join("\n") + "\n")?;
        let dir = |d: &str| root.join(d).to_string_lossy().into_owned();
        let options = [
            format!("Dir::Etc::SourceList={}", sources.display()),
            format!("Dir::Etc::SourceParts={}", dir("sources.list.d")),
            format!("Dir::State::Lists={}", dir("lists")),
            format!("Dir::Cache={}", dir("cache")),
            // The directories belong to root; apt's sandbox user could not write them.
            "APT::Sandbox::User=root".to_owned(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_owned(), o])
        .collect();
        Ok(Self {
            options,
            release: Some(release.to_owned()),
        })
    }

    fn describe(&self) -> String {
        self.release
            .as_ref()
            .map_or(String::new(), |r| format!(" (Debian {r}, own apt state)"))
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(&self.options);
        cmd
    }

    fn update(&self) -> Result<()> {
        util::run(self.command("apt-get").args(["update", "-q"]))
    }

    /// `apt-cache depends PACKAGE`, when apt knows it.
    fn depends(&self, package: &str) -> Option<String> {
        let out = self
            .command("apt-cache")
            .args(["depends", package])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Downloads `package`'s .deb into `dir`.
    fn download(&self, package: &str, dir: &Path) -> Result<()> {
        util::run(
            self.command("apt-get")
                // The download directory belongs to root; apt's sandbox user could not write it.
                .args(["download", "-q", "-o", "APT::Sandbox::User=root", package])
                .current_dir(dir),
        )
    }
}

/// `VERSION_CODENAME` of /etc/os-release (`bookworm`).
fn host_codename() -> Option<String> {
    fs::read_to_string("/etc/os-release")
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix("VERSION_CODENAME=")
                .map(|v| v.trim_matches('"').to_owned())
        })
}

/// The text of apt's source files: /etc/apt/sources.list and /etc/apt/sources.list.d/*.
fn host_apt_sources() -> Vec<(PathBuf, String)> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    let mut parts: Vec<PathBuf> = fs::read_dir("/etc/apt/sources.list.d")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    parts.sort();
    files.extend(parts);
    files
        .into_iter()
        .filter_map(|f| fs::read_to_string(&f).ok().map(|text| (f, text)))
        .collect()
}

/// One-line `deb` sources for Debian `release`'s main component, from the host's sources of
/// Debian `host` (one-line `.list` files and deb822 `.sources` files): every `deb` source of
/// suite `host` or `host-security` becomes the same source of `release` or `release-security`.
fn release_sources(files: &[(PathBuf, String)], host: &str, release: &str) -> Vec<String> {
    // (URI, suite, Signed-By)
    let mut found: Vec<(String, String, Option<String>)> = Vec::new();
    for (path, text) in files {
        if path.extension().is_some_and(|e| e == "sources") {
            for paragraph in text.split("\n\n") {
                let field = |name: &str| {
                    paragraph.lines().find_map(|l| {
                        let (key, value) = l.split_once(':')?;
                        key.trim()
                            .eq_ignore_ascii_case(name)
                            .then(|| value.trim().to_owned())
                    })
                };
                let (Some(types), Some(uris), Some(suites)) =
                    (field("Types"), field("URIs"), field("Suites"))
                else {
                    continue;
                };
                if !types.split_whitespace().any(|t| t == "deb") {
                    continue;
                }
                for uri in uris.split_whitespace() {
                    for suite in suites.split_whitespace() {
                        found.push((uri.to_owned(), suite.to_owned(), field("Signed-By")));
                    }
                }
            }
        } else {
            for line in text.lines().map(str::trim) {
                let Some(rest) = line.strip_prefix("deb ") else {
                    continue;
                };
                let mut rest = rest.trim_start();
                let mut signed_by = None;
                if let Some(options) = rest.strip_prefix('[') {
                    let Some((options, after)) = options.split_once(']') else {
                        continue;
                    };
                    signed_by = options
                        .split_whitespace()
                        .find_map(|o| o.strip_prefix("signed-by="))
                        .map(str::to_owned);
                    rest = after;
                }
                let mut words = rest.split_whitespace();
                if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
                    found.push((uri.to_owned(), suite.to_owned(), signed_by));
                }
            }
        }
    }
    let mut lines = Vec::new();
    for (uri, suite, signed_by) in found {
        let renamed = if suite == host {
            release.to_owned()
        } else if suite == format!("{host}-security") {
            format!("{release}-security")
        } else {
            continue;
        };
        let options = signed_by.map_or(String::new(), |k| format!("[signed-by={k}] "));
        let line = format!("deb {options}{uri} {renamed} main");
        if !lines.contains(&line) {
            lines.push(line);
        }
    }
    lines
}

/// `6.12` → `linux-image-6.12.117+deb12-amd64`, through the meta-packages apt knows
/// (`linux-image-6.12-amd64`, or `linux-image-amd64` for a release's own kernel: Debian 12's
/// 6.1, Debian 11's 5.10).
fn resolve_package(apt: &Apt, version: &str) -> Option<String> {
    let prefix = format!("linux-image-{version}.");
    [
        format!("linux-image-{version}-amd64"),
        "linux-image-amd64".to_owned(),
    ]
    .iter()
    .filter_map(|meta| apt.depends(meta))
    .flat_map(|deps| {
        deps.lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: ").map(str::to_owned))
            .collect::<Vec<_>>()
    })
    .find(|dep| dep.starts_with(&prefix) && dep.ends_with("-amd64"))
}

fn cached_fallback(cache: &Path, version: &str) -> Result<PathBuf> {
    let prefix = format!("linux-image-{version}.");
    let mut found: Vec<PathBuf> = fs::read_dir(cache)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path().join("vmlinuz"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop().with_context(|| {
        format!("no Debian kernel package linux-image-{version}.*-amd64 known to apt, none cached")
    })
}

/// Builds target/kernel-matrix/initrd.gz: busybox (with its applet links), the agent and the
/// libraries it links, /init and the scenario.
fn initramfs(bin: &Path, dir: &Path) -> Result<PathBuf> {
    let root = dir.join("initramfs");
    let _ = fs::remove_dir_all(&root);
    for d in ["bin", "dev", "proc", "sys", "tmp", "etc"] {
        fs::create_dir_all(root.join(d))?;
    }
    let busybox = Path::new("/bin/busybox");
    fs::copy(busybox, root.join("bin/busybox"))?;
    let applets = output("/bin/busybox", &["--list"]).context("busybox --list")?;
    for applet in applets.lines().map(str::trim) {
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    fs::copy(bin, root.join("bin/tracer"))?;
    // A debug build carries ~100 MB of debug info the VM does not need.
    util::run(
        Command::new("strip")
            .arg("--strip-debug")
            .arg(root.join("bin/tracer")),
    )?;
    let mut binaries = vec![bin.to_path_buf()];
    for (name, path) in PEERS {
        fs::copy(path, root.join("bin").join(name)).with_context(|| format!("copying {path}"))?;
        binaries.push(PathBuf::from(path));
    }
    for binary in &binaries {
        let ldd = output("ldd", &[&binary.to_string_lossy()])
            .with_context(|| format!("ldd on {}", binary.display()))?;
        for lib in ldd.lines().filter_map(library_path) {
            let dest = root.join(lib.trim_start_matches('/'));
            fs::create_dir_all(dest.parent().expect("has a parent"))?;
            // Follows symlinks: the file itself lands under the name the loader asks for.
            fs::copy(&lib, &dest).with_context(|| format!("copying {lib}"))?;
        }
    }
    let (cert, key) = tls_certificate(dir)?;
    fs::create_dir_all(root.join("etc/kt"))?;
    fs::copy(cert, root.join("etc/kt/cert.pem"))?;
    fs::copy(key, root.join("etc/kt/key.pem"))?;
    // nginx runs as `user root`, which it looks up.
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
    fs::write(root.join("etc/group"), "root:x:0:\n")?;
    for (name, text) in [("init", INIT), ("scenario.sh", SCENARIO)] {
        let path = root.join(name);
        fs::write(&path, text)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    }
    // The kernel opens /dev/console for init's output before anything is mounted.
    util::run(Command::new("mknod").args([
        &root.join("dev/console").to_string_lossy(),
        "c",
        "5",
        "1",
    ]))?;
    let initrd = dir.join("initrd.gz");
    util::run(Command::new("sh").current_dir(&root).args([
        "-c",
        "find . -print0 | cpio --null -o -H newc --quiet | gzip -1 > \"$1\"",
        "sh",
        &initrd.to_string_lossy(),
    ]))?;
    step(format!(
        "initramfs {} ({:.1} MB)",
        initrd.display(),
        fs::metadata(&initrd)?.len() as f64 / 1e6
    ));
    Ok(initrd)
}

/// A self-signed certificate and key for the scenario's nginx (made once, under
/// target/kernel-matrix/tls; P-256, cheap to handshake under emulation).
fn tls_certificate(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let tls = dir.join("tls");
    let (cert, key) = (tls.join("cert.pem"), tls.join("key.pem"));
    if !(cert.is_file() && key.is_file()) {
        fs::create_dir_all(&tls)?;
        util::run(
            Command::new("openssl")
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
                .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "3650"])
                .args(["-subj", "/CN=localhost", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .stderr(Stdio::null()),
        )?;
    }
    Ok((cert, key))
}

/// The file in one `ldd` line (`libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or
/// `/lib64/ld-linux-x86-64.so.2 (0x...)`); `None` for the vDSO.
fn library_path(line: &str) -> Option<String> {
    let line = line.trim();
    let path = match line.split_once("=>") {
        Some((_, rest)) => rest.trim(),
        None => line,
    };
    let path = path.split_whitespace().next()?;
    path.starts_with('/').then(|| path.to_owned())
}

/// Boots one kernel and parses its serial console.
fn run_vm(version: &str, vmlinuz: &Path, initrd: &Path, dir: &Path) -> Row {
    let log = dir.join(format!("{version}.log"));
    let qemu_log = dir.join(format!("{version}.qemu.log"));
    let _ = fs::remove_file(&log);
    let started = Instant::now();
    let outcome = (|| -> Result<bool> {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "1024"])
            .args([
                "-nodefaults",
                "-display",
                "none",
                "-nic",
                "none",
                "-no-reboot",
            ])
            .arg("-serial")
            .arg(format!("file:{}", log.display()))
            .arg("-kernel")
            .arg(vmlinuz)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", "console=ttyS0 panic=-1 quiet"])
            .stdin(Stdio::null());
        let out = fs::File::create(&qemu_log)?;
        cmd.stderr(out.try_clone()?).stdout(out);
        step(format!("[{version}] $ {}", util::describe(&cmd)));
        let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
        wait_or_kill(&mut child, VM_TIMEOUT)
    })();
    let elapsed = started.elapsed();
    let text = fs::read_to_string(&log).unwrap_or_default();
    let mut row = parse(version, "qemu (TCG)", &text, elapsed, log);
    match outcome {
        Err(e) => row.result = Err(format!("{e:#}")),
        Ok(false) => {
            row.result = Err(format!(
                "no result within {} s: VM killed",
                VM_TIMEOUT.as_secs()
            ))
        }
        Ok(true) => {}
    }
    step(format!(
        "[{version}] {} in {:.0} s",
        if row.passed() { "PASS" } else { "FAIL" },
        elapsed.as_secs_f64()
    ));
    row
}

/// The same scenario on the running kernel, natively (busybox httpd and wget from the host's
/// busybox-static).
fn run_host(bin: &Path, dir: &Path) -> Row {
    let log = dir.join("host.log");
    let scenario = dir.join("scenario.sh");
    let started = Instant::now();
    let outcome = (|| -> Result<bool> {
        fs::write(&scenario, SCENARIO)?;
        let free_port = || -> Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let port = free_port()?;
        let (cert, key) = tls_certificate(dir)?;
        let mut cmd = Command::new("sh");
        cmd.arg(&scenario)
            .env("TRACER", bin)
            .env("BUSYBOX", "/bin/busybox")
            .env("PORT", port.to_string())
            .env("TLS_PORT", free_port()?.to_string())
            .env("H2C_PORT", free_port()?.to_string())
            .env("TLS_CERT", cert)
            .env("TLS_KEY", key)
            .envs(
                PEERS
                    .iter()
                    .map(|(name, path)| (format!("{}_BIN", name.to_uppercase()), path)),
            )
            .env("WORK", dir.join("host-work"))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log)?)
            .stderr(Stdio::inherit());
        // The agent's own environment must not send spans elsewhere.
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("OTEL_")) {
            cmd.env_remove(k);
        }
        step(format!(
            "[host] running the scenario natively on port {port}"
        ));
        let mut child = cmd.spawn()?;
        wait_or_kill(&mut child, HOST_TIMEOUT)
    })();
    let text = fs::read_to_string(&log).unwrap_or_default();
    let mut row = parse("host", "native", &text, started.elapsed(), log);
    if row.release.is_none() {
        row.release = fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .map(|s| s.trim().to_owned());
    }
    match outcome {
        Err(e) => row.result = Err(format!("{e:#}")),
        Ok(false) => row.result = Err("scenario timed out".into()),
        Ok(true) => {}
    }
    step(format!(
        "[host] {}",
        if row.passed() { "PASS" } else { "FAIL" }
    ));
    row
}

/// Waits for the child; kills it after `timeout`. `Ok(true)`: it exited by itself.
fn wait_or_kill(child: &mut std::process::Child, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Row {
    fn failed(label: &str, how: &'static str, why: String) -> Self {
        Self {
            label: label.to_owned(),
            how,
            release: None,
            features: None,
            loaded: None,
            attached: None,
            insns_total: None,
            insns_max: None,
            start_seconds: None,
            http: false,
            tls: false,
            http2: false,
            result: Err(why),
            elapsed: Duration::ZERO,
            log: PathBuf::new(),
        }
    }
}

/// Reads the scenario's `KT ...` lines and the agent's log lines (`KT-LOG ...`).
fn parse(label: &str, how: &'static str, text: &str, elapsed: Duration, log: PathBuf) -> Row {
    let mut row = Row::failed(label, how, String::new());
    row.elapsed = elapsed;
    row.log = log;
    row.result = Err("no result line (crashed or killed; see the log)".into());
    for line in text.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(rest) = line.strip_prefix("KT-LOG ") {
            if let Some((_, after)) = rest.split_once("tracer::capture: verifier: ") {
                parse_verifier(after, &mut row);
            } else if let Some((_, after)) = rest.split_once("tracer::capture: kernel ")
                && let Some((release, features)) = after.split_once(": ")
            {
                row.release = Some(release.to_owned());
                row.features = Some(features.to_owned());
            }
            continue;
        }
        let Some(rest) = line.strip_prefix("KT ") else {
            continue;
        };
        let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
        match key {
            "KERNEL" => row.release = Some(value.to_owned()),
            "ATTACHED" => row.attached = value.parse().ok(),
            "START_SECONDS" => row.start_seconds = Some(value.to_owned()),
            "HTTP" => row.http = value == "PASS",
            "TLS" => row.tls = value == "PASS",
            "HTTP2" => row.http2 = value == "PASS",
            "RESULT" if value == "PASS" => row.result = Ok(()),
            "RESULT" => {
                row.result = Err(value.strip_prefix("FAIL ").unwrap_or(value).to_owned());
            }
            _ => {}
        }
    }
    row
}

/// `28 programs, 737061 instructions processed in total, largest sys_exit_recvmmsg=237661; ...`
/// or `28 programs loaded; this kernel does not report instruction counts ...`.
fn parse_verifier(text: &str, row: &mut Row) {
    let mut words = text.split_whitespace();
    row.loaded = words.next().and_then(|n| n.parse().ok());
    if let Some((_, after)) = text.split_once("programs, ") {
        row.insns_total = after.split_whitespace().next().and_then(|n| n.parse().ok());
    }
    if let Some((_, after)) = text.split_once("largest ") {
        row.insns_max = after.split(';').next().map(|m| m.trim().replace('=', " ")); // "sys_exit_recvmmsg 237661"
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or("-".into(), T::to_string)
}

/// The matrix as markdown: one row per kernel, then each kernel's feature line.
fn report(rows: &[Row], build: Build) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Agent: {} build. VMs: qemu -accel tcg -cpu max -smp 1 -m 1024, in parallel.\n",
        match build {
            Build::Release => "release",
            Build::Debug => "debug",
        }
    );
    out.push_str(
        "| kernel | release | run | programs loaded | attached | verified insns (total) | \
         largest program (insns) | agent start | HTTP/1.x spans | TLS / HTTP/2 spans | time | \
         result |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {:.0} s | {} |",
            r.label,
            opt(&r.release),
            r.how,
            opt(&r.loaded),
            opt(&r.attached),
            opt(&r.insns_total),
            opt(&r.insns_max),
            r.start_seconds
                .as_ref()
                .map_or("-".into(), |s| format!("{s} s")),
            if r.http { "ok" } else { "-" },
            if r.tls { "ok" } else { "-" },
            if r.http2 { "ok" } else { "-" },
            r.elapsed.as_secs_f64(),
            match &r.result {
                Ok(()) => "PASS".to_owned(),
                Err(why) => format!("FAIL: {}", why.replace('|', "/")),
            },
        );
    }
    out.push('\n');
    for r in rows {
        let _ = writeln!(
            out,
            "- {} features: {} (log: {})",
            r.label,
            opt(&r.features),
            if r.log.as_os_str().is_empty() {
                "-".into()
            } else {
                r.log.display().to_string()
            }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines() {
        assert_eq!(library_path("\tlinux-vdso.so.1 (0x00007f9f75a72000)"), None);
        assert_eq!(
            library_path("\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f9f74e1e000)")
                .as_deref(),
            Some("/lib/x86_64-linux-gnu/libc.so.6")
        );
        assert_eq!(
            library_path("\t/lib64/ld-linux-x86-64.so.2 (0x00007f9f75a74000)").as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
    }

    #[test]
    fn sources_of_an_older_release_from_the_hosts() {
        let deb822 = "\
Types: deb
# a comment
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://mirror.example/debian
Suites: bookworm
Components: main
";
        let one_line = "\
deb [arch=amd64 signed-by=/k.gpg] http://other.example/debian bookworm main contrib
# deb http://commented.example/debian bookworm main
deb https://vendor.example/apt vendor-bookworm main
";
        let files = [
            (
                PathBuf::from("/etc/apt/sources.list.d/debian.sources"),
                deb822.to_owned(),
            ),
            (PathBuf::from("/etc/apt/sources.list"), one_line.to_owned()),
        ];
        assert_eq!(
            release_sources(&files, "bookworm", "bullseye"),
            [
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
                 http://mirror.example/debian bullseye main",
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
                 http://mirror.example/debian-security bullseye-security main",
                "deb [signed-by=/k.gpg] http://other.example/debian bullseye main",
            ]
        );
        assert!(release_sources(&files, "trixie", "bookworm").is_empty());
    }

    #[test]
    fn parses_a_console() {
        let text = "\
KT KERNEL 6.12.117+deb12-amd64\r
KT START_SECONDS 7.5\r
KT ATTACHED 28\r
KT SPANS 4\r
KT HTTP PASS\r
KT TLS PASS\r
KT HTTP2 PASS\r
KT-LOG 2026-11-21T09:55:51Z  INFO tracer::capture: kernel 6.12.117+deb12-amd64: tracepoints yes, kprobes yes\r
KT-LOG 2026-11-21T09:55:51Z  INFO tracer::capture: verifier: 28 programs, 737061 instructions processed in total, largest sys_exit_recvmmsg=237661; sys_enter_read=314\r
KT RESULT PASS\r
";
        let row = parse(
            "6.12",
            "qemu (TCG)",
            text,
            Duration::from_secs(20),
            PathBuf::new(),
        );
        assert!(row.passed());
        assert_eq!(row.release.as_deref(), Some("6.12.117+deb12-amd64"));
        assert_eq!(
            row.features.as_deref(),
            Some("tracepoints yes, kprobes yes")
        );
        assert_eq!((row.loaded, row.attached), (Some(28), Some(28)));
        assert_eq!(row.insns_total, Some(737061));
        assert_eq!(row.insns_max.as_deref(), Some("sys_exit_recvmmsg 237661"));
        assert!(row.http && row.tls && row.http2);
        let failed = parse(
            "6.1",
            "qemu (TCG)",
            "KT RESULT FAIL spans missing\n",
            Duration::ZERO,
            PathBuf::new(),
        );
        assert_eq!(failed.result, Err("spans missing".to_owned()));
        let silent = parse("6.1", "qemu (TCG)", "", Duration::ZERO, PathBuf::new());
        assert!(!silent.passed());
    }
}
