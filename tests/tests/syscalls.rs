//! Privileged: every capture path of the kernel side with a real peer: vectored I/O
//! (readv/writev/recvmsg/sendmsg), IPv6, and process metadata from the environment.
use std::{process::Command, time::Duration};

use serde_json::Value;
use tracer_tests::*;

const WAIT: Duration = Duration::from_secs(20);

fn vectored(family: &str) {
    let port = free_port();
    let script = workspace_root().join("tests/servers/vectored.py");
    let server = Proc::spawn(
        "vectored server",
        Command::new("python3")
            .arg(&script)
            .args(["server", &port.to_string(), family]),
    )
    .unwrap();
    server.wait_line("READY", WAIT).unwrap();
    let sc = Scenario::port(port).unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .args(["client", &port.to_string(), family, "3"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("OK"),
        "{out:?}"
    );
    let spans = sc.wait_spans(6, WAIT, |s| {
        s.attr_i64("network.peer.port") == port as i64
            || s.res("process.pid").as_i64() == Some(server.pid() as i64)
    });
    sc.stop().unwrap();
    let (servers, clients): (Vec<&Value>, Vec<&Value>) =
        spans.iter().partition(|s| s.kind() == "SPAN_KIND_SERVER");
    assert_eq!((servers.len(), clients.len()), (3, 3), "{spans:#?}");
    let loopback = if family == "6" { "::1" } else { "127.0.0.1" };
    for s in &spans {
        let code: i64 = s
            .attr_str("url.path")
            .trim_start_matches("/status/")
            .parse()
            .unwrap();
        assert_eq!(s.attr_i64("http.response.status_code"), code, "{s:#}");
        assert_eq!(s.attr_str("user_agent.original"), "vectored");
        assert_eq!(
            s.attr_i64("http.response.body.size"),
            format!("vectored /status/{code}").len() as i64
        );
        assert_eq!(s.attr_str("network.peer.address"), loopback, "{s:#}");
    }
    assert!(
        servers
            .iter()
            .all(|s| s.attr_str("client.address") == loopback)
    );
}

#[test]
fn readv_writev_recvmsg_sendmsg_ipv4() {
    require_root();
    vectored("4");
}

#[test]
fn readv_writev_recvmsg_sendmsg_ipv6() {
    require_root();
    vectored("6");
}

#[test]
fn service_name_and_resource_attributes_from_the_process_environment() {
    require_root();
    let port = free_port();
    let script = workspace_root().join("tests/servers/http_server.py");
    let server = Proc::spawn(
        "checkout server",
        Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .env("OTEL_SERVICE_NAME", "checkout")
            .env(
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=test,team=payments%20core",
            ),
    )
    .unwrap();
    server.wait_line("READY", WAIT).unwrap();
    let sc = Scenario::ports(&[port])
        // The agent's own resource attributes apply to every process it traces.
        .env("OTEL_RESOURCE_ATTRIBUTES", "k8s.node.name=node-1")
        .start()
        .unwrap();
    curl(&["-o", "/dev/null", &format!("http://127.0.0.1:{port}/cart")]).unwrap();
    let pid = server.pid() as i64;
    let spans = sc.wait_spans(1, WAIT, |s| s.res("process.pid").as_i64() == Some(pid));
    let client = sc.wait_spans(1, WAIT, |s| {
        s.kind() == "SPAN_KIND_CLIENT" && s.attr_i64("network.peer.port") == port as i64
    });
    sc.stop().unwrap();
    let s = &spans[0];
    assert_eq!(s.res("service.name"), "checkout");
    assert_eq!(s.res("deployment.environment"), "test");
    assert_eq!(s.res("team"), "payments core");
    assert_eq!(s.res("k8s.node.name"), "node-1");
    assert!(
        s.res("process.executable.name")
            .as_str()
            .unwrap()
            .starts_with("python3")
    );
    assert_eq!(client[0].res("service.name"), "curl");
    assert_eq!(client[0].res("k8s.node.name"), "node-1");
}

#[test]
fn sendmmsg_and_recvmmsg() {
    require_root();
    let dir = TempDir::new("mmsg");
    let bin = dir.path().join("mmsg_client");
    let cc = Command::new("cc")
        .arg(workspace_root().join("tests/servers/mmsg_client.c"))
        .arg("-o")
        .arg(&bin)
        .output()
        .expect("a C compiler (cc) builds the mmsg client");
    assert!(cc.status.success(), "{cc:?}");
    let port = free_port();
    let script = workspace_root().join("tests/servers/vectored.py");
    let server = Proc::spawn(
        "vectored server",
        Command::new("python3")
            .arg(&script)
            .args(["server", &port.to_string(), "4"]),
    )
    .unwrap();
    server.wait_line("READY", WAIT).unwrap();
    let sc = Scenario::port(port).unwrap();
    let out = Command::new(&bin).arg(port.to_string()).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("OK"),
        "{out:?}"
    );
    let clients = sc.wait_spans(2, WAIT, |s| {
        s.kind() == "SPAN_KIND_CLIENT" && s.attr_i64("network.peer.port") == port as i64
    });
    sc.stop().unwrap();
    let mut got: Vec<(String, i64)> = clients
        .iter()
        .map(|s| {
            (
                s.attr_str("url.path").to_owned(),
                s.attr_i64("http.response.status_code"),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![("/status/201".into(), 201), ("/status/202".into(), 202)],
        "{clients:#?}"
    );
    assert!(
        clients
            .iter()
            .all(|s| s.res("service.name") == "mmsg_client")
    );
}

/// A pre-fork server: the parent closes its copy of the connection while the child still
/// serves it. The connection must live on (only the last close ends it).
#[test]
fn connection_closed_by_the_parent_lives_on_in_the_forked_child() {
    require_root();
    let port = free_port();
    let server = Proc::spawn(
        "forking server",
        Command::new("python3")
            .arg(workspace_root().join("tests/servers/forking.py"))
            .arg(port.to_string()),
    )
    .unwrap();
    server.wait_line("READY", WAIT).unwrap();
    let sc = Scenario::port(port).unwrap();
    for i in 0..3 {
        let body = curl(&[&format!("http://127.0.0.1:{port}/fork/{i}")]).unwrap();
        assert_eq!(body, "forked");
    }
    let servers = sc.wait_spans(3, WAIT, |s| {
        s.kind() == "SPAN_KIND_SERVER" && s.attr_str("url.path").starts_with("/fork/")
    });
    let done = sc.stop().unwrap();
    let log = done.summary();
    assert_eq!(servers.len(), 3, "{log}\n{servers:#?}");
    assert!(
        servers
            .iter()
            .all(|s| s.attr_i64("http.response.status_code") == 200)
    );
    assert_eq!(done.counters.unmatched_responses, 0, "{log}");
}
