//! Privileged: the agent's image in a real container runtime (podman), run as the chart runs
//! it: the chart's capabilities (not privileged), its read-only host mounts (tracefs, BTF, the
//! node's cgroup v2 root), a read-only root file system, the runtime's default seccomp
//! profile and the host's PID namespace. A Python server in another container and curl on
//! the host: the spans reach the test's OTLP receiver with the server container's
//! `container.id` and `service.name`, and the SERVER span is the child of the CLIENT span
//! whose `traceparent` the kernel injected. SIGTERM: exit 0 with every program detached. A
//! missing capability or mount: one clear line.
//!
//! The image is built once per run by `cargo xtask image --binary <the agent under test>`
//! (the layout the release image has, with the binary `TRACER_BIN` names).
mod deploy;

use std::{
    process::Command,
    sync::OnceLock,
    time::{Duration, Instant},
};

use deploy::*;
use test_kit::{Container, base_image};
use tracer_tests::*;

/// The agent's image holding the binary under test.
fn agent_image() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let tag = "localhost/tracer:under-test".to_owned();
        let bin = tracer_bin().unwrap();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args(["xtask", "image", "--binary"])
            .arg(&bin)
            .args(["--tag", &tag])
            .current_dir(workspace_root())
            .output()
            .expect("running cargo xtask image");
        assert!(
            out.status.success(),
            "cargo xtask image failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tag
    })
}

/// The chart's default manifests, with the cgroup v2 root where this node has it (the value
/// a user of a hybrid-layout node sets).
fn chart() -> Vec<serde_json::Value> {
    let root = tracer::capture::cgroup::cgroup2_mount().expect("cgroup v2 is mounted");
    parse_yaml(&template(&[&format!(
        "hostPaths.cgroupRoot={}",
        root.display()
    )]))
}

/// How the agent's container runs: the chart's security context and mounts, which a test
/// may take apart.
struct AgentRun {
    caps: Vec<String>,
    /// (host path, container path, read-only)
    mounts: Vec<(String, String, bool)>,
    /// The chart's arguments, then the test's.
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl AgentRun {
    fn from_chart() -> Self {
        let docs = chart();
        let agent = agent_container(&docs);
        assert_eq!(agent["securityContext"]["privileged"], false);
        assert_eq!(agent["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(
            agent["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let args = agent["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        Self {
            caps: capabilities(agent),
            mounts: host_mounts(&docs),
            args,
            env: vec![
                ("OTEL_TRACES_EXPORTER".into(), "none".into()),
                ("OTEL_METRICS_EXPORTER".into(), "none".into()),
            ],
        }
    }

    fn without_cap(mut self, cap: &str) -> Self {
        let before = self.caps.len();
        self.caps.retain(|c| c != cap);
        assert!(self.caps.len() < before, "the chart adds {cap}");
        self
    }

    fn without_mount(mut self, container_path: &str) -> Self {
        let before = self.mounts.len();
        self.mounts.retain(|(_, c, _)| c != container_path);
        assert!(
            self.mounts.len() < before,
            "the chart mounts {container_path}"
        );
        self
    }

    fn mount(mut self, host: &str, container: &str) -> Self {
        self.mounts.push((host.into(), container.into(), true));
        self
    }

    fn exporting_to(mut self, receiver: &Receiver) -> Self {
        self.env = vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                receiver.grpc_endpoint(),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "grpc".into()),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
            // The Prometheus endpoint stays off: on the host network port 9464 may be taken.
            ("OTEL_METRICS_EXPORTER".into(), "none".into()),
        ];
        self
    }

    fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// `podman run` in the foreground (its output is the agent's), removed on drop.
    fn start(self) -> AgentContainer {
        require_root();
        let name = format!("tracer-under-test-{}-{}", std::process::id(), free_port());
        let mut cmd = Command::new("podman");
        cmd.args(["--runtime", "runc", "run", "--rm", "--name", &name])
            .args([
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=4096:4096",
            ])
            // The test's receiver and servers are on the host's loopback.
            .args(["--network", "host", "--pid", "host", "--read-only"])
            .args(["--cap-drop", "all"]);
        for cap in &self.caps {
            cmd.arg("--cap-add").arg(cap);
        }
        for (host, inside, read_only) in &self.mounts {
            let mode = if *read_only { ":ro" } else { "" };
            cmd.arg("--volume").arg(format!("{host}:{inside}{mode}"));
        }
        for (k, v) in &self.env {
            cmd.arg("--env").arg(format!("{k}={v}"));
        }
        cmd.arg(agent_image()).args(&self.args);
        let proc = Proc::spawn("agent container", &mut cmd).unwrap();
        AgentContainer { name, proc }
    }
}

struct AgentContainer {
    name: String,
    proc: Proc,
}

impl AgentContainer {
    fn log(&self) -> String {
        self.proc.stderr().join("\n")
    }

    fn wait_tracing(&self) {
        if let Err(e) = self
            .proc
            .wait_line("tracing; stop with", Duration::from_secs(60))
        {
            panic!("{e:#}; the agent's log:\n{}", self.log());
        }
    }

    /// The agent's pid on the host.
    fn host_pid(&self) -> u32 {
        let out = podman(&["inspect", "--format", "{{.State.Pid}}", &self.name]);
        out.trim().parse().unwrap()
    }

    /// Waits for the container to exit by itself; its exit code and the agent's log.
    fn exit_code(mut self, timeout: Duration) -> (i32, String) {
        let status = self.proc.wait_exit(timeout).unwrap();
        (status.code().unwrap_or(-1), self.log())
    }

    /// SIGTERM to the container (as the kubelet sends it); the exit code and the log.
    fn terminate(mut self) -> (i32, String) {
        podman(&["kill", "--signal", "TERM", &self.name]);
        let status = self.proc.wait_exit(Duration::from_secs(30)).unwrap();
        // The last lines may still be in the pipe.
        let _ = self
            .proc
            .wait_line("export finished", Duration::from_secs(5));
        (status.code().unwrap_or(-1), self.log())
    }
}

impl Drop for AgentContainer {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "--force", "--time", "0", &self.name])
            .output();
    }
}

/// Runs podman; its stdout (panics with its stderr on failure).
fn podman(args: &[&str]) -> String {
    let out = Command::new("podman").args(args).output().expect("podman");
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn agent_image_traces_a_container_with_the_charts_security_context() {
    require_root();
    let receiver = Receiver::start(&[]).unwrap();
    let port = free_port();
    // Python's HTTP server in its own container (test-kit's image of Debian packages).
    let server = Container::python_http_server(
        &base_image().unwrap(),
        port,
        &[("OTEL_SERVICE_NAME", "shop-frontend")],
    )
    .unwrap();
    let agent = AgentRun::from_chart()
        .exporting_to(&receiver)
        .args(&["--port", &port.to_string()])
        .start();
    agent.wait_tracing();
    let log = agent.log();
    assert!(
        log.contains("traceparent injection on"),
        "the read-only cgroup root takes sock_ops: {}",
        summary(&log)
    );
    let agent_pid = agent.host_pid();
    let programs = program_ids_of(agent_pid);
    assert!(
        !programs.is_empty(),
        "the agent in its container holds its programs"
    );

    curl(&[
        "-s",
        "-o",
        "/dev/null",
        &format!("http://127.0.0.1:{port}/checkout"),
    ])
    .unwrap();
    let spans = receiver.wait_spans(2, Duration::from_secs(20), |s| {
        s.attr_str("url.path") == "/checkout"
    });
    let server_span = spans.iter().find(|s| s.kind() == "SPAN_KIND_SERVER");
    let client_span = spans.iter().find(|s| s.kind() == "SPAN_KIND_CLIENT");
    let (Some(server_span), Some(client_span)) = (server_span, client_span) else {
        panic!(
            "a SERVER and a CLIENT span for /checkout: {spans:#?}\n{}",
            summary(&agent.log())
        );
    };
    assert_eq!(server_span.res("service.name"), "shop-frontend");
    assert_eq!(server_span.res("container.id"), server.id.as_str());
    assert_eq!(client_span.attr("tracer.traceparent.injected"), true);
    assert_eq!(server_span.trace_id(), client_span.trace_id());
    assert_eq!(
        server_span.parent_id(),
        client_span.span_id(),
        "curl's CLIENT span is the parent of the server's SERVER span"
    );

    let started = Instant::now();
    let (code, log) = agent.terminate();
    assert_eq!(code, 0, "exit after SIGTERM; log:\n{}", summary(&log));
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(log.contains("detached all programs"), "{}", summary(&log));
    let loaded = loaded_program_ids();
    assert!(
        programs.iter().all(|id| !loaded.contains(id)),
        "the kernel still lists programs of the agent: {:?}",
        programs.intersection(&loaded).collect::<Vec<_>>()
    );
}

/// Starts the agent as `run` says and expects it to exit 1 with a line containing `needle`.
fn fails_with(run: AgentRun, needle: &str) {
    let (code, log) = run.start().exit_code(Duration::from_secs(60));
    assert_eq!(code, 1, "the agent must refuse to start; its log:\n{log}");
    let line = log_line(&log, needle);
    assert!(!line.is_empty(), "no line with {needle:?} in:\n{log}");
    assert!(line.contains("ERROR"), "{line}");
}

#[test]
fn without_cap_sys_admin_the_missing_capabilities_are_named() {
    fails_with(
        AgentRun::from_chart()
            .without_cap("SYS_ADMIN")
            .args(&["--port", "9"]),
        "tracer lacks CAP_BPF, CAP_PERFMON: it needs",
    );
}

#[test]
fn a_seccomp_profile_that_refuses_bpf_is_named() {
    // CAP_BPF and CAP_PERFMON instead of CAP_SYS_ADMIN: the runtime's default seccomp profile
    // allows bpf() only with CAP_SYS_ADMIN.
    let mut run = AgentRun::from_chart().without_cap("SYS_ADMIN");
    run.caps.extend(["BPF".into(), "PERFMON".into()]);
    fails_with(
        run.args(&["--port", "9"]),
        "the bpf() system call is refused (EPERM) although the capabilities are there",
    );
}

#[test]
fn without_the_tracefs_mount_the_line_says_to_mount_it() {
    fails_with(
        AgentRun::from_chart()
            .without_mount("/sys/kernel/tracing")
            .args(&["--port", "9"]),
        "tracefs is not mounted at /sys/kernel/tracing",
    );
}

#[test]
fn without_btf_the_line_says_so() {
    let empty = TempDir::new("no-btf");
    fails_with(
        AgentRun::from_chart()
            .without_mount("/sys/kernel/btf")
            .mount(&empty.path().to_string_lossy(), "/sys/kernel/btf")
            .args(&["--port", "9"]),
        "this kernel has no BTF",
    );
}

#[test]
fn without_the_cgroup_root_tracing_goes_on_without_injection() {
    let agent = AgentRun::from_chart()
        .without_mount("/host/sys/fs/cgroup")
        .args(&["--port", "9"])
        .start();
    agent.wait_tracing();
    let line = log_line(&agent.log(), "traceparent injection off");
    assert!(
        line.contains("WARN")
            && line.contains("opening the cgroup v2 root /host/sys/fs/cgroup: No such file"),
        "{}",
        agent.log()
    );
    let (code, log) = agent.terminate();
    assert_eq!(code, 0, "{}", summary(&log));
}
