//! Privileged: the `tracer` binary starts, attaches, and on SIGTERM detaches everything and
//! exits 0 — checked against the kernel's own list of loaded programs.
use std::{process::Command, time::Duration};

use tracer_tests::*;

#[test]
fn sigterm_detaches_everything_and_exits_zero() {
    let bin = tracer_bin().unwrap();
    let mut agent = Proc::spawn(
        "tracer",
        Command::new(&bin).args(["--port", &free_port().to_string()]),
    )
    .unwrap();
    agent
        .wait_line("tracing; stop with", Duration::from_secs(30))
        .unwrap();
    let ids = program_ids_of(agent.pid());
    assert_eq!(
        ids.len(),
        tracer::capture::TRACEPOINTS.len() + tracer::capture::tls::PROGRAMS.len(),
        "the agent holds one program per tracepoint and the TLS probes' programs: {ids:?}"
    );
    assert!(ids.is_subset(&loaded_program_ids()));
    agent
        .wait_line(
            "attached tracepoints: syscalls:sys_enter_read",
            Duration::from_secs(1),
        )
        .expect("the agent logs what it attached");

    agent.signal(libc::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(15)).unwrap();
    assert!(
        status.success(),
        "exit status {status}; stderr:\n{}",
        agent.stderr().join("\n")
    );
    let left = loaded_program_ids();
    assert!(
        ids.iter().all(|id| !left.contains(id)),
        "programs still loaded after exit"
    );
    agent
        .wait_line("detached all programs", Duration::from_secs(1))
        .unwrap();
    agent
        .wait_line("final counters", Duration::from_secs(1))
        .unwrap();
}

#[test]
fn sigint_also_stops_cleanly() {
    let bin = tracer_bin().unwrap();
    let mut agent = Proc::spawn(
        "tracer",
        Command::new(&bin).args(["--port", &free_port().to_string()]),
    )
    .unwrap();
    agent
        .wait_line("tracing; stop with", Duration::from_secs(30))
        .unwrap();
    agent.signal(libc::SIGINT);
    let status = agent.wait_exit(Duration::from_secs(15)).unwrap();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn help_explains_every_option() {
    let out = Command::new(tracer_bin().unwrap())
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "--port",
        "--pid",
        "--capture-bytes",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "SIGTERM",
    ] {
        assert!(
            help.contains(needle),
            "--help does not mention {needle}:\n{help}"
        );
    }
}

#[test]
fn without_privileges_it_says_so_in_one_line() {
    // Drop to nobody: no CAP_BPF, no root.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(tracer_bin().unwrap())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("must run as root"), "{stderr}");
    assert!(errors[0].contains("CAP_BPF"), "{stderr}");
}
