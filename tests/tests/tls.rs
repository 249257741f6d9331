//! Privileged end-to-end over TLS: real servers and clients whose TLS library is probed
//! (libssl, OpenSSL inside `node`, Go's crypto/tls), the real agent, a real OTLP receiver.
//!
//! Every request must yield one SERVER and one CLIENT span built from the plaintext, with
//! `url.scheme=https`, and no span may ever come from the ciphertext the syscalls carry (all
//! traffic on a test's port is TLS, so every span the receiver got must be an https one, and
//! there must be exactly as many as requests).
//!
//! Servers are started after the agent (found from their exec) except the Python server of
//! `python_ssl_server_and_client`, which runs before the agent starts (found by the start-up
//! scan).
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use test_kit::run_bounded;
use tracer_tests::*;

const WAIT: Duration = Duration::from_secs(20);

/// Waits until the agent logged that it attached TLS probes to a file whose line contains
/// `what` (a path or part of it).
fn wait_attached(agent: &Agent, what: &str) {
    let found = agent.wait_tls_attached(what, WAIT);
    assert!(
        found.is_some(),
        "the agent did not attach TLS probes to {what}; stderr:\n{}",
        agent.proc.stderr().join("\n")
    );
}

fn spans_where(r: &Receiver, n: usize, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    r.wait_spans(n, WAIT, pred)
}

fn is_server_of(s: &Value, service: &str) -> bool {
    s.kind() == "SPAN_KIND_SERVER" && s.res("service.name").as_str() == Some(service)
}

fn is_client_of(s: &Value, service: &str, port: u16) -> bool {
    s.kind() == "SPAN_KIND_CLIENT"
        && s.res("service.name").as_str() == Some(service)
        && s.attr_i64("network.peer.port") == port as i64
}

/// What a user checks on a request seen from both ends over TLS: name, kind, scheme, path,
/// status, peer, the server span as the client span's child, and durations.
fn check_exchange(server: &Value, client: &Value, path: &str, status: i64, port: u16) {
    check_named(server, client, path, &format!("GET {path}"), status, port)
}

/// [`check_exchange`] for each `(path, status)`.
fn check_exchanges(servers: &[Value], clients: &[Value], expected: &[(&str, i64)], port: u16) {
    for &(path, status) in expected {
        check_exchange(
            by_path(servers, path),
            by_path(clients, path),
            path,
            status,
            port,
        );
    }
}

/// The SERVER and CLIENT spans the agent exported, exactly `n_servers` and `n_clients`.
fn both_ends(
    done: &Outcome,
    (is_server, n_servers): (impl Fn(&Value) -> bool, usize),
    (is_client, n_clients): (impl Fn(&Value) -> bool, usize),
) -> (Vec<Value>, Vec<Value>) {
    let log = done.summary();
    let servers = done.spans_where(is_server);
    let clients = done.spans_where(is_client);
    assert_eq!(servers.len(), n_servers, "{log}\n{servers:#?}");
    assert_eq!(clients.len(), n_clients, "{log}\n{clients:#?}");
    (servers, clients)
}

/// A client program run to its end (bounded); its stdout.
fn run_client(cmd: &mut Command) -> String {
    run_bounded("client", cmd, Duration::from_secs(30)).unwrap()
}

fn check_named(server: &Value, client: &Value, path: &str, name: &str, status: i64, port: u16) {
    for s in [server, client] {
        assert_eq!(s.name(), name, "{s:#}");
        assert_eq!(s.attr_str("url.scheme"), "https", "{s:#}");
        assert_eq!(s.attr_str("http.request.method"), "GET", "{s:#}");
        assert_eq!(s.attr_i64("http.response.status_code"), status, "{s:#}");
        assert_eq!(s.attr_str("network.protocol.version"), "1.1", "{s:#}");
        let d = s.end_ns().saturating_sub(s.start_ns());
        assert!(d > 0 && d < 10_000_000_000, "duration {d} ns: {s:#}");
    }
    assert_eq!(server.attr_str("url.path"), path);
    // Both ends on this node: the server span becomes the client span's child, linked by the
    // connection's addresses and the plaintext byte position of the request, when the client's
    // request event is read before the server's exchange ends (the SSL_write return probe can
    // trail the server's whole exchange). Never a wrong parent.
    if server.attr_str("tracer.parent.source") == "address" {
        assert_eq!(
            server["trace_id"], client["trace_id"],
            "{server:#}\n{client:#}"
        );
        assert_eq!(
            server["parent_span_id"], client["span_id"],
            "{server:#}\n{client:#}"
        );
    } else {
        assert_eq!(
            server.attr_str("tracer.parent.source"),
            "none",
            "{server:#}"
        );
        assert_eq!(server["parent_span_id"], "", "{server:#}");
    }
    assert_eq!(
        client.attr_str("url.full"),
        format!("https://127.0.0.1:{port}{path}")
    );
    assert_eq!(client.attr_i64("network.peer.port"), port as i64);
    assert_eq!(server.attr_str("network.peer.address"), "127.0.0.1");
    let (client_status, server_status) = match status {
        200..=399 => ("STATUS_CODE_UNSET", "STATUS_CODE_UNSET"),
        400..=499 => ("STATUS_CODE_ERROR", "STATUS_CODE_UNSET"),
        _ => ("STATUS_CODE_ERROR", "STATUS_CODE_ERROR"),
    };
    assert_eq!(client.status_code(), client_status, "{client:#}");
    assert_eq!(server.status_code(), server_status, "{server:#}");
    // The server handled the request while the client waited for it. Its end may trail the
    // client's: on loopback the client's read can return as soon as the server's write has
    // queued the bytes, before the server's SSL_write return probe runs (later still when the
    // machine is busy and the server thread is preempted in between: once 5 ms was exceeded
    // at a load average of 17 on this 2-core machine); see http1.rs.
    const TRAIL_NS: u64 = 25_000_000;
    assert!(
        client.start_ns() <= server.start_ns(),
        "client {client:#} server {server:#}"
    );
    assert!(
        server.end_ns() - server.start_ns() <= client.end_ns() - client.start_ns() + TRAIL_NS,
        "client {client:#} server {server:#}"
    );
    assert!(
        server.end_ns() <= client.end_ns() + TRAIL_NS,
        "client {client:#} server {server:#}"
    );
}

/// No span from ciphertext: every span the agent exported (it traces only this test's port,
/// which carries TLS only) is an https request of the test, and there are exactly `n`.
fn assert_only_plaintext_spans(all: &[Value], n: usize, log: &str) {
    for s in all {
        assert_eq!(s.attr_str("url.scheme"), "https", "{log}\n{s:#}");
        assert_eq!(s.attr_str("http.request.method"), "GET", "{log}\n{s:#}");
        assert!(s.attr_str("url.path").starts_with('/'), "{log}\n{s:#}");
    }
    assert_eq!(all.len(), n, "{log}\nspans: {all:#?}");
}

/// A private nginx serving HTTPS (HTTP/1.1) on `port`: `/missing` is 404, the rest 200.
fn nginx_tls(dir: &Path, port: u16, certs: &Certs) -> Proc {
    let certificate = format!(
        "ssl_certificate {};\n        ssl_certificate_key {};",
        certs.cert().display(),
        certs.key().display()
    );
    nginx(dir, port, &format!("127.0.0.1:{port} ssl"), &certificate)
}

/// curl (libssl) → nginx (libssl), nginx started after the agent; two requests on one
/// keep-alive connection and one on another.
#[test]
fn curl_to_nginx() {
    require_root();
    let certs = Certs::new("tls-nginx");
    let port = free_port();
    let sc = Scenario::port(port).unwrap();
    let nginx = nginx_tls(certs.dir.path(), port, &certs);
    wait_attached(&sc.agent, "libssl.so");
    let base = format!("https://127.0.0.1:{port}");
    curl(&[
        "-k",
        "--http1.1",
        "-o",
        "/dev/null",
        &format!("{base}/tls/first"),
        "-o",
        "/dev/null",
        &format!("{base}/missing"),
    ])
    .unwrap();
    curl(&[
        "-k",
        "--http1.1",
        "-o",
        "/dev/null",
        &format!("{base}/tls/second"),
    ])
    .unwrap();

    spans_where(sc.receiver(), 3, |s| is_server_of(s, "nginx"));
    spans_where(sc.receiver(), 3, |s| is_client_of(s, "curl", port));
    let done = sc.stop().unwrap();
    let log = done.summary();
    drop(nginx);
    let (servers, clients) = both_ends(
        &done,
        (|s: &Value| is_server_of(s, "nginx"), 3),
        (|s: &Value| is_client_of(s, "curl", port), 3),
    );
    check_exchanges(
        &servers,
        &clients,
        &[("/tls/first", 200), ("/missing", 404), ("/tls/second", 200)],
        port,
    );
    assert_only_plaintext_spans(&done.spans, 6, &log);
    assert!(done.counters.tls_files_attached >= 1, "{log}");
    assert_eq!(done.counters.tls_attach_failed, 0, "{log}");
}

/// Python's ssl module (libssl) on both ends; the server runs before the agent starts.
#[test]
fn python_ssl_server_and_client() {
    require_root();
    let certs = Certs::new("tls-python");
    let port = free_port();
    let script = workspace_root().join("tests/servers/http_server.py");
    let server = Proc::spawn(
        "python https server",
        Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(certs.cert())
            .arg(certs.key()),
    )
    .unwrap();
    server.wait_line("READY", Duration::from_secs(10)).unwrap();
    let sc = Scenario::port(port).unwrap();
    wait_attached(&sc.agent, "libssl.so");
    let client = format!(
        r#"
import http.client, ssl
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
c = http.client.HTTPSConnection("127.0.0.1", {port}, context=ctx)
for path in ["/tls/py", "/status/404"]:
    c.request("GET", path)
    r = c.getresponse()
    r.read()
    print(r.status)
c.close()
"#
    );
    run_client(Command::new("python3").args(["-c", &client]));
    let is_server = |s: &Value| {
        s.kind() == "SPAN_KIND_SERVER" && s.res("process.pid").as_i64() == Some(server.pid() as i64)
    };
    let is_client = |s: &Value| {
        s.kind() == "SPAN_KIND_CLIENT"
            && s.res("process.pid").as_i64() != Some(server.pid() as i64)
            && s.attr_i64("network.peer.port") == port as i64
    };
    spans_where(sc.receiver(), 2, is_server);
    spans_where(sc.receiver(), 2, is_client);
    let done = sc.stop().unwrap();
    let log = done.summary();
    let (servers, clients) = both_ends(&done, (is_server, 2), (is_client, 2));
    assert!(
        clients.iter().all(|c| c
            .res("service.name")
            .as_str()
            .unwrap_or("")
            .starts_with("python3")),
        "{clients:#?}"
    );
    check_exchanges(&servers, &clients, &[("/tls/py", 200)], port);
    check_named(
        by_path(&servers, "/status/404"),
        by_path(&clients, "/status/404"),
        "/status/404",
        "GET /status/{id}",
        404,
        port,
    );
    assert_only_plaintext_spans(&done.spans, 4, &log);
}

/// node (OpenSSL inside the node binary, no libssl) as https server and client, both
/// started after the agent.
#[test]
fn node_https_server_and_client() {
    require_root();
    let certs = Certs::new("tls-node");
    let port = free_port();
    let sc = Scenario::port(port).unwrap();
    let server_js = format!(
        r#"
const https = require("https"), fs = require("fs");
https.createServer({{ key: fs.readFileSync({key:?}), cert: fs.readFileSync({cert:?}) }}, (req, res) => {{
  res.writeHead(req.url === "/missing" ? 404 : 200, {{ "content-type": "text/plain" }});
  res.end("hello " + req.url);
}}).listen({port}, "127.0.0.1", () => console.log("READY"));
"#,
        key = certs.key().display().to_string(),
        cert = certs.cert().display().to_string(),
    );
    let server = Proc::spawn(
        "node https server",
        Command::new("node").args(["-e", &server_js]),
    )
    .expect("starting node (install it: `cargo xtask setup --test-deps`)");
    server.wait_line("READY", Duration::from_secs(20)).unwrap();
    wait_attached(&sc.agent, "node [OpenSSL API");
    let client_js = format!(
        r#"
const https = require("https");
const agent = new https.Agent({{ keepAlive: true, maxSockets: 1 }});
function get(path) {{
  return new Promise((ok, fail) => https.get({{ host: "127.0.0.1", port: {port}, path, agent, rejectUnauthorized: false }},
    (res) => {{ res.resume(); res.on("end", () => {{ console.log(res.statusCode); ok(); }}); }}).on("error", fail));
}}
get("/tls/node").then(() => get("/missing")).then(() => agent.destroy());
"#
    );
    run_client(Command::new("node").args(["-e", &client_js]));
    let is_server = |s: &Value| {
        s.kind() == "SPAN_KIND_SERVER" && s.res("process.pid").as_i64() == Some(server.pid() as i64)
    };
    spans_where(sc.receiver(), 2, is_server);
    spans_where(sc.receiver(), 2, |s| is_client_of(s, "node", port));
    let done = sc.stop().unwrap();
    let log = done.summary();
    let (servers, clients) = both_ends(
        &done,
        (is_server, 2),
        (|s: &Value| is_client_of(s, "node", port), 2),
    );
    check_exchanges(
        &servers,
        &clients,
        &[("/tls/node", 200), ("/missing", 404)],
        port,
    );
    assert_only_plaintext_spans(&done.spans, 4, &log);
}

/// The Go test app (tests/servers/tlsapp.go), built once per test run for every test that
/// uses it: as is, and stripped (`-s -w`).
struct GoApps {
    app: PathBuf,
    stripped: PathBuf,
}

/// Builds the Go apps the first time a test asks, in this build's target/tmp. Once: a Go build
/// is seconds of both cores (the standard library, on a fresh checkout), and a build running
/// beside `a_burst_while_go_binaries_are_probed_loses_nothing` would starve the agent of CPU
/// and fail that test for a reason it does not test.
fn go_apps() -> &'static GoApps {
    static APPS: std::sync::OnceLock<GoApps> = std::sync::OnceLock::new();
    APPS.get_or_init(|| {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tlsapp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        GoApps {
            app: go_build(&dir, "tlsapp", &[]),
            stripped: go_build(&dir, "tlsapp-stripped", &["-ldflags=-s -w"]),
        }
    })
}

/// Builds tests/servers/tlsapp.go with the Go toolchain into `dir` (GOPATH there; the build
/// cache in this build's target/tmp, so that later runs do not build the standard library
/// again).
fn go_build(dir: &Path, out: &str, extra: &[&str]) -> PathBuf {
    let src = workspace_root().join("tests/servers/tlsapp.go");
    let bin = dir.join(out);
    let res = Command::new("go")
        .arg("build")
        .args(extra)
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .env(
            "GOCACHE",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-cache"),
        )
        .env("GOPATH", dir.join("gopath"))
        .env("GO111MODULE", "off")
        .output()
        .expect("running go (install it: `cargo xtask setup --test-deps`)");
    assert!(
        res.status.success(),
        "go build failed: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    bin
}

/// Go crypto/tls server and client (the same binary), built by the test and started after
/// the agent. A stripped build is reported as not traceable, with the reason.
#[test]
fn go_https_server_and_client() {
    require_root();
    let certs = Certs::new("tls-go");
    let GoApps { app, stripped } = go_apps();
    let port = free_port();
    let sc = Scenario::port(port).unwrap();
    let server = Proc::spawn(
        "go https server",
        Command::new(app)
            .arg("server")
            .arg(format!("127.0.0.1:{port}"))
            .arg(certs.cert())
            .arg(certs.key()),
    )
    .unwrap();
    server.wait_line("READY", Duration::from_secs(10)).unwrap();
    // This file's own line: the agent also attaches to the other tests' Go servers.
    wait_attached(&sc.agent, &format!("{} [Go", app.display()));
    let base = format!("https://127.0.0.1:{port}");
    let out = run_client(Command::new(app).args([
        "client",
        &format!("{base}/tls/go"),
        &format!("{base}/missing"),
    ]));
    assert_eq!(out, "200\n404\n");

    let server_pid = server.pid() as i64;
    let is_server = |s: &Value| {
        s.kind() == "SPAN_KIND_SERVER" && s.res("process.pid").as_i64() == Some(server_pid)
    };
    spans_where(sc.receiver(), 2, is_server);
    spans_where(sc.receiver(), 2, |s| is_client_of(s, "tlsapp", port));

    // A stripped Go binary: its request reaches the traced server, its own side is reported
    // as not traceable.
    run_client(Command::new(stripped).args(["client", &format!("{base}/tls/stripped")]));
    spans_where(sc.receiver(), 3, is_server);
    // That client may exit before the agent looks at it: a stripped server stays up until the
    // agent has reported it (it serves nothing in this test).
    let stripped_server = Proc::spawn(
        "stripped go https server",
        Command::new(stripped)
            .arg("server")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg(certs.cert())
            .arg(certs.key()),
    )
    .unwrap();
    stripped_server
        .wait_line("READY", Duration::from_secs(10))
        .unwrap();
    let stripped_reported = wait_for(WAIT, || {
        sc.agent
            .proc
            .stderr()
            .into_iter()
            .find(|l| l.contains("tlsapp-stripped") && l.contains("cannot be traced"))
    });

    // The server was the binary's last process: its probes are released when it exits.
    let mut server = server;
    server.signal(libc::SIGTERM);
    server.wait_exit(Duration::from_secs(10)).unwrap();
    let detached = wait_for(WAIT, || {
        sc.agent
            .proc
            .stderr()
            .into_iter()
            .find(|l| l.contains("detached TLS probes from") && l.contains("/tlsapp ["))
    });

    let done = sc.stop().unwrap();
    let log = done.summary();
    let line = stripped_reported.unwrap_or_else(|| panic!("stripped binary not reported:\n{log}"));
    assert!(line.contains("stripped"), "{line}");
    assert!(done.counters.tls_unsupported >= 1, "{log}");
    assert!(
        detached.is_some(),
        "no detach after the last process exited:\n{log}"
    );
    assert!(done.counters.tls_detached >= 1, "{log}");

    let (servers, clients) = both_ends(
        &done,
        (is_server, 3),
        (|s: &Value| is_client_of(s, "tlsapp", port), 2),
    );
    check_exchanges(
        &servers,
        &clients,
        &[("/tls/go", 200), ("/missing", 404)],
        port,
    );
    // Go's Write is captured at its entry, before the bytes leave: the same-node link from
    // server to client span is then certain.
    for path in ["/tls/go", "/missing"] {
        let (s, c) = (by_path(&servers, path), by_path(&clients, path));
        assert_eq!(s.attr_str("tracer.parent.source"), "address", "{s:#}");
        assert_eq!(s["parent_span_id"], c["span_id"]);
    }
    let s = by_path(&servers, "/tls/stripped");
    assert_eq!(s.attr_str("url.scheme"), "https");
    assert_eq!(s.attr_i64("http.response.status_code"), 200);
    assert_only_plaintext_spans(&done.spans, 5, &log);
}

/// Plaintext HTTP/1.1 requests on one keep-alive connection, each to its own path
/// (`/burst/N`), half a millisecond apart (at most ~1,000 a second here: a steady rate the
/// debug agent keeps up with on a loaded 2-core machine, unlike a client at full speed), until
/// SIGTERM; prints STARTED first and the count of requests at the end.
const BURST_CLIENT: &str = r#"
import http.client, signal, sys, time
port = int(sys.argv[1])
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
c = http.client.HTTPConnection("127.0.0.1", port)
n = 0
print("STARTED", flush=True)
while not stop and n < 100000:
    c.request("GET", f"/burst/{n}")
    r = c.getresponse()
    r.read()
    assert r.status == 200, r.status
    n += 1
    time.sleep(0.0005)
c.close()
print(n, flush=True)
"#;

/// The stall bug: looking for TLS code in a large Go binary (ELF parsing, disassembly: hundreds
/// of milliseconds, and attaching: up to half a second per file measured on a busy machine)
/// must not stop the agent from draining the ring buffer. A small ring (256 KiB: ~1.2 KB of
/// events per request, so ~0.2 s of this test's traffic, less than probing one file takes:
/// 0.3–0.7 s here) receives a steady burst of plaintext requests (both ends traced) while four
/// copies of a Go binary (four files, each analysed anew) start; every request must still
/// become its two spans, with nothing dropped.
#[test]
fn a_burst_while_go_binaries_are_probed_loses_nothing() {
    require_root();
    let certs = Certs::new("tls-burst");
    let app = &go_apps().app;
    let copies: Vec<PathBuf> = (0..4)
        .map(|i| {
            let copy = certs.dir.path().join(format!("tlsapp-burst{i}"));
            std::fs::copy(app, &copy).unwrap();
            copy
        })
        .collect();
    let port = free_port();
    let nginx = nginx(certs.dir.path(), port, &format!("127.0.0.1:{port}"), "");
    let sc = Scenario::ports(&[port])
        .args(&["--ring-buffer-bytes", "262144"])
        // Spans leave as fast as they come: no export drop hides a missing span.
        .env("OTEL_BSP_MAX_QUEUE_SIZE", "100000")
        .start()
        .unwrap();
    let mut client = Proc::spawn(
        "burst client",
        Command::new("python3").args(["-c", BURST_CLIENT, &port.to_string()]),
    )
    .unwrap();
    client.wait_line("STARTED", WAIT).unwrap();
    // Let the burst run steadily first.
    std::thread::sleep(Duration::from_millis(500));
    let servers: Vec<Proc> = copies
        .iter()
        .map(|bin| {
            let server = Proc::spawn(
                "go https server",
                Command::new(bin)
                    .arg("server")
                    .arg(format!("127.0.0.1:{}", free_port()))
                    .arg(certs.cert())
                    .arg(certs.key()),
            )
            .unwrap();
            server.wait_line("READY", WAIT).unwrap();
            server
        })
        .collect();
    for i in 0..copies.len() {
        wait_attached(&sc.agent, &format!("/tlsapp-burst{i} [Go"));
    }
    // The burst goes on a little after the last attach, then ends.
    std::thread::sleep(Duration::from_millis(300));
    client.signal(libc::SIGTERM);
    client.wait_exit(WAIT).unwrap();
    let requests: usize = client
        .stdout()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("the client printed no count: {:?}", client.stdout()));
    let is_burst = |s: &Value| s.attr_str("url.path").starts_with("/burst/");
    spans_where(sc.receiver(), 2 * requests, is_burst);
    let done = sc.stop().unwrap();
    let log = done.summary();
    drop((servers, nginx));
    assert!(
        requests > 500,
        "too few requests to mean anything: {requests}\n{log}"
    );
    assert_eq!(done.counters.kernel_drops.ringbuf_full, 0, "{log}");
    assert_eq!(done.counters.gaps, 0, "{log}");
    let spans = done.spans_where(is_burst);
    assert_eq!(spans.len(), 2 * requests, "{log}");
    // Each request once from each end, complete.
    let mut seen = std::collections::HashMap::<(String, String), usize>::new();
    for s in &spans {
        assert_eq!(s.attr_i64("http.response.status_code"), 200, "{s:#}");
        assert_eq!(s.attr_str("http.request.method"), "GET", "{s:#}");
        assert!(s.end_ns() > s.start_ns(), "{s:#}");
        *seen
            .entry((s.kind().to_owned(), s.attr_str("url.path").to_owned()))
            .or_default() += 1;
    }
    for n in 0..requests {
        let path = format!("/burst/{n}");
        for kind in ["SPAN_KIND_SERVER", "SPAN_KIND_CLIENT"] {
            assert_eq!(
                seen.get(&(kind.to_owned(), path.clone())),
                Some(&1),
                "{kind} {path}\n{log}"
            );
        }
    }
    assert!(
        done.counters.tls_files_attached >= copies.len() as u64,
        "{log}"
    );
    assert_eq!(done.counters.tls_attach_failed, 0, "{log}");
}
