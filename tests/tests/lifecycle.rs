//! Privileged: the `tracer` binary starts, attaches, and on SIGTERM detaches everything and
//! exits 0 — checked against the kernel's own list of loaded programs.
use std::{process::Command, time::Duration};

use tracer_tests::*;

/// The agent with its defaults (no exporter, no metrics or view endpoint), once it traces.
fn started_agent() -> Proc {
    let agent = Proc::spawn(
        "tracer",
        without_endpoints(&mut Command::new(tracer_bin().unwrap()))
            .args(["--port", &free_port().to_string()]),
    )
    .unwrap();
    agent
        .wait_line("tracing; stop with", Duration::from_secs(30))
        .unwrap();
    agent
}

#[test]
fn sigterm_detaches_everything_and_exits_zero() {
    require_root();
    let mut agent = started_agent();
    let ids = program_ids_of(agent.pid());
    assert_eq!(
        ids.len(),
        tracer::capture::TRACEPOINTS.len() + 5 + 2 + tracer::capture::tls::PROGRAMS.len(),
        "the agent holds one program per tracepoint, the 5 tail-called context programs, \
         sock_ops and sk_msg (injection is on by default) and the TLS probes' programs: {ids:?}"
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
    // Beside it, the same counters for machines.
    Counters::final_in(&agent.stderr().join("\n")).unwrap();
}

#[test]
fn sigint_also_stops_cleanly() {
    require_root();
    let mut agent = started_agent();
    agent.signal(libc::SIGINT);
    let status = agent.wait_exit(Duration::from_secs(15)).unwrap();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn low_cpu_priority_puts_every_agent_thread_in_batch_at_nice_10() {
    require_root();
    let mut agent = Proc::spawn(
        "tracer",
        without_endpoints(&mut Command::new(tracer_bin().unwrap())).args([
            "--port",
            &free_port().to_string(),
            "--cpu-priority",
            "low",
        ]),
    )
    .unwrap();
    agent
        .wait_line("tracing; stop with", Duration::from_secs(30))
        .unwrap();
    // What `ps -L -o cls,ni` shows: /proc/PID/task/TID/stat's nice (field 19) and policy
    // (field 41; SCHED_BATCH = 3), counted after the command name's closing parenthesis.
    let tasks = std::fs::read_dir(format!("/proc/{}/task", agent.pid())).unwrap();
    let mut threads = 0;
    for task in tasks {
        let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap();
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let (nice, policy) = (fields[19 - 3], fields[41 - 3]);
        assert_eq!((nice, policy), ("10", "3"), "{stat}");
        threads += 1;
    }
    assert!(threads > 1, "the agent runs more than one thread");
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(15)).unwrap().success());
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
        "--cpu-priority",
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
    require_root();
    // Drop to nobody: no CAP_BPF, no root.
    let out = without_endpoints(&mut Command::new("setpriv"))
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

/// The kernel's build configuration (`/proc/config.gz`), empty when the kernel does not export it.
fn kernel_config() -> String {
    Command::new("zcat")
        .arg("/proc/config.gz")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

#[test]
fn start_up_reports_kernel_features_in_one_line_and_keeps_tracepoints() {
    require_root();
    let mut agent = started_agent();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let prefix = format!("kernel {}: ", release.trim());
    let stderr = agent.stderr();
    let lines: Vec<&String> = stderr.iter().filter(|l| l.contains(&prefix)).collect();
    assert_eq!(lines.len(), 1, "one feature line:\n{}", stderr.join("\n"));
    let features = lines[0].split_once(&prefix).unwrap().1;
    // This machine (see /work/shared/docs/platform.md): kprobes are compiled out
    // (CONFIG_KPROBES is not set) and loading a tracing (fentry) program fails with EPERM;
    // everything else the agent can use is there.
    let kprobes = kernel_config().lines().any(|l| l == "CONFIG_KPROBES=y");
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    assert_eq!(
        features,
        format!(
            "tracepoints yes, uprobes yes, kprobes {}, fentry no, ringbuf yes, btf yes, \
             sock_ops yes, sk_msg yes",
            yes_no(kprobes)
        )
    );
    // Whatever else the kernel has, the agent attaches its tracepoints.
    agent
        .wait_line("programs=28", Duration::from_secs(1))
        .unwrap();
    let verifier = agent
        .wait_line("verifier: 35 programs, ", Duration::from_secs(1))
        .expect("the agent reports the verifier's instruction counts (kernel ≥ 5.16)");
    assert!(
        verifier.contains("sys_enter_read=") && verifier.contains("sched_process_exit="),
        "{verifier}"
    );
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(15)).unwrap().success());
}
