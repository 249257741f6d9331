//! Idempotent installation of what the build, the agent and the tests need on a Debian
//! machine of this kind. Each step checks first and says what it installs.
use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::util::{self, output, step, succeeds, which};

/// Debian packages the eBPF build needs (bpf-linker links against LLVM 22, which matches the
/// nightly compiler's LLVM).
const BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
/// Real peers the end-to-end tests drive. The TLS tests (tests/tests/tls.rs) use nginx and
/// curl (libssl), `openssl` for their certificate, `node` (OpenSSL inside the binary) and Go
/// (crypto/tls; the test builds its own server and client). The HTTP/2 and gRPC tests build
/// a grpc-go peer (tests/servers/grpcpeer) from Debian's Go packages and protoc plugins, and
/// drive many streams with h2load (nghttp2-client). The container tests run podman (with runc:
/// crun refuses this machine's hybrid cgroup layout) on an image they build with mmdebstrap.
/// The metrics tests scrape the agent with a real Prometheus server. The node-local view's
/// test (tests/tests/ui.rs) opens the page in headless Chromium and Firefox and runs `tracer top` in tmux.
const TEST_PACKAGES: &[&str] = &[
    "curl",
    "iproute2",
    "openssl",
    "nginx",
    "nodejs",
    "golang-go",
    "golang-google-grpc-dev",
    "golang-github-golang-protobuf-1-5-dev",
    "protobuf-compiler",
    "protoc-gen-go",
    "protoc-gen-go-grpc",
    "nghttp2-client",
    // The image and chart tests (tests/tests/image.rs, chart.rs): podman with runc (crun
    // refuses hybrid cgroup layouts), mmdebstrap for the server container's base, unzip for
    // the helm package.
    "podman",
    "runc",
    "mmdebstrap",
    // The DNAT tests' Service rules (tests/tests/dnat.rs), and the proxy tests' port redirect.
    "iptables",
    // The proxy tests (tests/tests/proxy.rs): HAProxy in front of a Python service.
    "haproxy",
    "prometheus",
    // helm and kubectl come zipped inside an npm package (xtask/src/kube_tools.rs).
    "unzip",
    "chromium-headless-shell",
    "firefox-esr", // tests/tests/ui.rs opens the page in Firefox too (WebDriver BiDi)
    "tmux",
    // The database tests' servers and clients (tests/tests/db.rs): initdb/postgres/psql (and
    // the libpq psycopg loads), redis-server/redis-cli.
    "postgresql",
    "redis-server",
    "redis-tools",
    // tests/tests/mysql.rs: MariaDB's server (mariadbd, mariadb-install-db) and its CLI.
    "mariadb-server",
    "mariadb-client",
];
/// Python modules for the test OTLP receiver (decodes with the official OTel protobufs).
const TEST_PYTHON: &[(&str, &str)] = &[
    ("opentelemetry.proto", "opentelemetry-proto"),
    ("grpc", "grpcio"),
    // The propagation tests' instrumented services.
    ("opentelemetry.sdk.trace", "opentelemetry-sdk"),
    (
        "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
        "opentelemetry-exporter-otlp-proto-grpc",
    ),
    (
        "opentelemetry.propagators.b3",
        "opentelemetry-propagator-b3",
    ),
    ("google.protobuf", "protobuf"),
    // The proxy tests' application behind nginx: Flask served by gunicorn.
    ("flask", "flask"),
    ("gunicorn", "gunicorn"),
    // The fake Kubernetes API server validates its Pods, and the chart test the rendered
    // manifests, against the official schemas.
    ("kubernetes_validate", "kubernetes-validate"),
    // The metrics tests parse the agent's /metrics with the official Prometheus parsers.
    ("prometheus_client", "prometheus-client"),
    // The database tests' Python clients (tests/tests/db.rs).
    ("psycopg", "psycopg"),
    ("redis", "redis"),
    // tests/tests/mysql.rs: server-side prepared statements (pure Python).
    ("mysql.connector", "mysql-connector-python"),
];
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn run(test_deps: bool) -> Result<()> {
    let mut packages: Vec<&str> = BUILD_PACKAGES.to_vec();
    if test_deps {
        packages.extend_from_slice(TEST_PACKAGES);
    }
    apt_install(&packages)?;
    nightly_with_rust_src()?;
    bpf_linker()?;
    if test_deps {
        python_modules()?;
        crate::kube_tools::install()?;
    }
    tracefs()?;
    Ok(())
}

fn installed(package: &str) -> bool {
    output("dpkg-query", &["-W", "-f=${Status}", package])
        .is_some_and(|s| s.contains("install ok installed"))
}

pub fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if which("apt-get").is_none() {
        bail!(
            "missing packages {missing:?} and no apt-get: install them by hand (this is set up for Debian 12)"
        );
    }
    step(format!("installing Debian packages {}", missing.join(" ")));
    util::run(Command::new("apt-get").args(["update", "-q"]))?;
    util::run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .context("apt-get install failed: are Debian's bookworm and bookworm-security repositories reachable?")
}

fn nightly_with_rust_src() -> Result<()> {
    let toolchains = output("rustup", &["toolchain", "list"])
        .context("rustup not found: the eBPF build needs rustup with a nightly toolchain")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        step("installing the nightly Rust toolchain (the eBPF crate needs -Z build-std)");
        util::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    let components = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        step("adding rust-src to the nightly toolchain");
        util::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    let current = output("bpf-linker", &["--version"]).unwrap_or_default();
    if current.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    step(format!(
        "building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)"
    ));
    if !Path::new(LLVM_PREFIX).exists() {
        bail!("{LLVM_PREFIX} is missing although llvm-22-dev is installed");
    }
    let install = |locked: bool| {
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", LLVM_PREFIX);
        if locked {
            cmd.arg("--locked");
        }
        util::run(&mut cmd)
    };
    // --locked can fail when the published lock file no longer resolves; retry without.
    install(true)
        .or_else(|_| install(false))
        .context("building bpf-linker failed")
}

fn python() -> &'static str {
    "python3"
}

fn python_modules() -> Result<()> {
    let missing: Vec<&str> = TEST_PYTHON
        .iter()
        .filter(|(module, _)| !succeeds(python(), &["-c", &format!("import {module}")]))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(format!("installing Python packages {}", missing.join(" ")));
    util::run(
        Command::new(python())
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .args(&missing),
    )
}

fn tracefs() -> Result<()> {
    if Path::new("/sys/kernel/tracing/events").is_dir() {
        return Ok(());
    }
    step("mounting tracefs at /sys/kernel/tracing (tracepoints are attached through it)");
    util::run(Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]))
}

/// What `cargo xtask bench` drives: nginx as the server, wrk for throughput, curl for the
/// recording, and oha for latency at a fixed rate. (Debian's `hey` is not used: it reports
/// latencies in steps of 0.1 ms and its rate limit is per worker, closed loop, which cannot
/// show a 10 µs difference; oha reports full precision and corrects for coordinated omission.)
/// The gRPC benchmark (`cargo xtask bench --grpc`): the grpc-go peer's build and h2load.
pub fn grpc_bench_deps() -> Result<()> {
    apt_install(&[
        "golang-go",
        "golang-google-grpc-dev",
        "golang-github-golang-protobuf-1-5-dev",
        "protobuf-compiler",
        "protoc-gen-go",
        "protoc-gen-go-grpc",
        "nghttp2-client",
    ])
}

/// The database benchmark (`cargo xtask bench --db`): PostgreSQL 15 with pgbench (Debian ships
/// it in postgresql-15), redis-server with redis-benchmark (redis-tools).
pub fn db_bench_deps() -> Result<()> {
    apt_install(&["postgresql", "redis-server", "redis-tools"])
}

/// The side-by-side with the OpenTelemetry Python SDK (`cargo xtask bench --vs-sdk`): Flask
/// served by waitress, and the SDK's auto-instrumentation with its OTLP/gRPC exporter, in a
/// virtual environment of the bench's own (target/bench/sdk-venv): the SDK versions it
/// resolves never change the test environment's. Returns the environment's directory.
pub fn sdk_bench_deps() -> Result<std::path::PathBuf> {
    const MODULES: &str = "import flask, waitress, opentelemetry.instrumentation.flask, \
                           opentelemetry.exporter.otlp.proto.grpc.trace_exporter";
    let venv = util::workspace_root().join("target/bench/sdk-venv");
    let venv_python = venv.join("bin/python");
    if venv.join("bin/opentelemetry-instrument").is_file()
        && succeeds(&venv_python.to_string_lossy(), &["-c", MODULES])
    {
        return Ok(venv);
    }
    step(format!(
        "installing Flask, waitress and the OpenTelemetry Python SDK into {}",
        venv.display()
    ));
    util::run(Command::new(python()).args(["-m", "venv"]).arg(&venv))?;
    util::run(
        Command::new(&venv_python)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .args([
                "flask",
                "waitress",
                "opentelemetry-distro",
                "opentelemetry-instrumentation-flask",
                "opentelemetry-exporter-otlp-proto-grpc",
            ]),
    )?;
    Ok(venv)
}

pub fn bench_deps() -> Result<()> {
    // bpftool names the programs of the kernel figure; perf profiles the agent.
    apt_install(&["nginx", "wrk", "curl", "openssl", "bpftool", "linux-perf"])?;
    let oha = crate::bench::cargo_home().join("bin/oha");
    if succeeds("oha", &["--version"]) || succeeds(&oha.to_string_lossy(), &["--version"]) {
        return Ok(());
    }
    step("building oha (fixed-rate HTTP load generator) with cargo install (a few minutes, once)");
    util::run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["install", "oha", "--locked"]),
    )
    .context("cargo install oha failed")
}

/// cargo-fuzz (libFuzzer targets under fuzz/; `cargo xtask fuzz` and the test run's fuzz step).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub fn cargo_fuzz() -> Result<()> {
    nightly_with_rust_src()?;
    let current = output("cargo-fuzz", &["--version"]).unwrap_or_default();
    if current.contains(CARGO_FUZZ_VERSION) {
        return Ok(());
    }
    step(format!(
        "building cargo-fuzz {CARGO_FUZZ_VERSION} with cargo install (about a minute, once)"
    ));
    util::run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ]),
    )
    .context("cargo install cargo-fuzz failed")
}
