//! Privileged end-to-end with real containers: podman runs Python's HTTP server in one
//! container and curl in another (an image built from Debian packages, see
//! `test_kit::container`), the agent on the host traces both. Each span carries the
//! `container.id` podman reports for its container, and a `service.name` from the container's
//! own environment (or its executable); a host process has no `container.id`.
use std::time::Duration;

use serde_json::Value;
use test_kit::{Container, base_image};
use tracer_tests::*;

const WAIT: Duration = Duration::from_secs(30);

fn is_server(s: &Value, pid: u32) -> bool {
    s.kind() == "SPAN_KIND_SERVER" && s.res("process.pid").as_i64() == Some(i64::from(pid))
}

fn is_client(s: &Value, port: u16) -> bool {
    s.kind() == "SPAN_KIND_CLIENT" && s.attr_i64("network.peer.port") == i64::from(port)
}

#[test]
fn spans_of_containers_carry_their_container_id_and_service_name() {
    require_root();
    let image = base_image().unwrap();
    let port = free_port();
    let server = Container::python_http_server(
        &image,
        port,
        &[
            ("OTEL_SERVICE_NAME", "shop-frontend"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=not-this-one,deployment.environment=e2e,container.id=forged",
            ),
        ],
    )
    .unwrap();
    let server_pid = server.pid().unwrap();
    let server_id = server.inspect("{{.Id}}").unwrap();
    assert_eq!(server_id, server.id);

    let sc = Scenario::ports(&[port]).start().unwrap();
    // curl in a container without OTEL_SERVICE_NAME, then curl on the host. The container's
    // curl makes two requests half a second apart: the agent reads a process's /proc entry
    // when it handles the process's first traced call, and a client that exits within
    // milliseconds may be gone by then on a loaded machine (it is then named after its task
    // name, without container.id).
    let base = format!("http://127.0.0.1:{port}");
    let client = Container::run(
        &image,
        &[],
        &[
            "curl",
            "-sS",
            "--rate",
            "2/s",
            "-w",
            "%{http_code}\n",
            "-o",
            "/dev/null",
            &format!("{base}/etc/debian_version"),
            "-o",
            "/dev/null",
            &format!("{base}/etc/issue"),
        ],
    )
    .unwrap();
    assert_eq!(client.wait(WAIT).unwrap(), 0, "{}", client.logs().unwrap());
    assert_eq!(client.logs().unwrap(), "200\n200\n");
    let client_id = client.inspect("{{.Id}}").unwrap();
    curl(&["-o", "/dev/null", &format!("{base}/etc/os-release")]).unwrap();

    sc.wait_spans(3, WAIT, |s| is_server(s, server_pid));
    sc.wait_spans(3, WAIT, |s| is_client(s, port));
    let done = sc.stop().unwrap();
    let log = done.summary();
    let servers = done.spans_where(|s| is_server(s, server_pid));
    let clients = done.spans_where(|s| is_client(s, port));
    assert_eq!(servers.len(), 3, "{log}\nserver spans: {servers:#?}");
    assert_eq!(clients.len(), 3, "{log}\nclient spans: {clients:#?}");

    // The server in its container: its id, and the name from the container's environment.
    for s in &servers {
        assert_eq!(s.res("container.id"), server_id.as_str(), "{s:#}");
        // OTEL_SERVICE_NAME wins over OTEL_RESOURCE_ATTRIBUTES, whose other entries are kept
        // (but never over the observed container.id).
        assert_eq!(s.res("service.name"), "shop-frontend", "{s:#}");
        assert_eq!(s.res("deployment.environment"), "e2e", "{s:#}");
        // The executable as the container sees it.
        assert_eq!(
            s.res("process.executable.path"),
            "/usr/bin/python3.11",
            "{s:#}"
        );
        assert_eq!(s.attr_i64("http.response.status_code"), 200, "{s:#}");
    }
    for path in ["/etc/debian_version", "/etc/issue", "/etc/os-release"] {
        by_path(&servers, path);
    }

    // curl in its container: the curl container's id, named after its executable.
    assert_ne!(client_id, server_id);
    for path in ["/etc/debian_version", "/etc/issue"] {
        let c = by_path(&clients, path);
        assert_eq!(c.res("container.id"), client_id.as_str(), "{c:#}");
        assert_eq!(c.res("service.name"), "curl", "{c:#}");
        assert_eq!(c.res("process.executable.path"), "/usr/bin/curl", "{c:#}");
        assert_eq!(c.attr_i64("http.response.status_code"), 200, "{c:#}");
    }

    // curl on the host: no container.
    let h = by_path(&clients, "/etc/os-release");
    assert!(h.res("container.id").is_null(), "{h:#}");
    assert_eq!(h.res("service.name"), "curl", "{h:#}");
    assert_eq!(h.attr_i64("http.response.status_code"), 200, "{h:#}");
}
