//! Privileged end-to-end: real servers and clients, the real agent, a real OTLP receiver.
//! Every request must yield exactly one SERVER and one CLIENT span with the right attributes.
use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use serde_json::Value;
use tracer_tests::*;

const WAIT: Duration = Duration::from_secs(20);

/// A SERVER span of the server process.
fn is_server(s: &Value, server: &Proc) -> bool {
    s.kind() == "SPAN_KIND_SERVER" && s.res("process.pid").as_i64() == Some(server.pid() as i64)
}

/// A CLIENT span of a request to the server's port.
fn is_client(s: &Value, port: u16) -> bool {
    s.kind() == "SPAN_KIND_CLIENT" && s.attr_i64("network.peer.port") == port as i64
}

/// Waits for `n` SERVER and `n` CLIENT spans of the exchange, then stops the scenario.
fn stop_after(sc: Scenario, server: &Proc, port: u16, n: usize) -> Outcome {
    sc.wait_spans(n, WAIT, |s| is_server(s, server));
    sc.wait_spans(n, WAIT, |s| is_client(s, port));
    sc.stop().unwrap()
}

/// curl → python server, over both OTLP transports: kind, name, attributes, status,
/// resource, and the server span inside the client span.
fn curl_to_python(protocol: &str) {
    let (server, port) = test_http_server().unwrap();
    let setup = Scenario::ports(&[port]);
    let sc = match protocol {
        "grpc" => setup,
        _ => setup.otlp_http(),
    }
    .start()
    .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    curl(&[
        &format!("{base}/users/12345?token=secret&x=1"),
        "-A",
        "tracer-test/1.0",
    ])
    .unwrap();
    curl(&["-o", "/dev/null", &format!("{base}/status/404")]).unwrap();
    curl(&["-o", "/dev/null", &format!("{base}/status/503")]).unwrap();

    let done = stop_after(sc, &server, port, 3);
    let log = done.summary();
    // After the final flush: exactly one of each (no duplicates, nothing lost).
    let servers = done.spans_where(|s| is_server(s, &server));
    let clients = done.spans_where(|s| is_client(s, port));
    assert_eq!(servers.len(), 3, "{log}\nserver spans: {servers:#?}");
    assert_eq!(clients.len(), 3, "{log}\nclient spans: {clients:#?}");
    let transport = if protocol == "grpc" { "grpc" } else { "http" };
    assert!(servers.iter().all(|s| s["transport"] == transport));

    let s = by_path(&servers, "/users/12345");
    assert_eq!(s.name(), "GET /users/{id}");
    assert_eq!(s.attr_str("http.route"), "/users/{id}");
    assert_eq!(s.attr_str("http.request.method"), "GET");
    assert_eq!(s.attr_i64("http.response.status_code"), 200);
    assert_eq!(s.attr_str("url.scheme"), "http");
    assert_eq!(s.attr_str("url.query"), "token=REDACTED&x=REDACTED");
    assert_eq!(s.attr_str("network.protocol.version"), "1.1");
    assert_eq!(s.attr_str("user_agent.original"), "tracer-test/1.0");
    assert_eq!(s.attr_str("client.address"), "127.0.0.1");
    assert_eq!(s.attr_str("network.peer.address"), "127.0.0.1");
    assert_eq!(s.attr_str("server.address"), "127.0.0.1");
    assert_eq!(s.status_code(), "STATUS_CODE_UNSET");
    assert_eq!(s.res("process.pid").as_i64(), Some(server.pid() as i64));
    assert!(
        s.res("service.name")
            .as_str()
            .unwrap()
            .starts_with("python3"),
        "{s:#}"
    );
    assert!(
        s.res("process.command_line")
            .as_str()
            .unwrap()
            .contains("http_server.py")
    );
    assert!(s.res("host.name").as_str().is_some_and(|h| !h.is_empty()));

    let c = by_path(&clients, "/users/12345");
    assert_eq!(c.name(), "GET /users/{id}");
    assert_eq!(c.res("service.name"), "curl");
    assert_eq!(c.attr_i64("network.peer.port"), port as i64);
    assert_eq!(c.attr_i64("http.response.status_code"), 200);
    assert_eq!(
        c.attr_str("url.full"),
        format!("http://127.0.0.1:{port}/users/12345?token=REDACTED&x=REDACTED")
    );
    // The server handled the request while the client waited for it: it started after the
    // client sent, and its duration is within the client's latency. (Its end may trail the
    // client's by microseconds: on loopback the client's read returns as soon as the server's
    // write has queued the bytes, before that write's own exit is recorded.)
    assert!(c.start_ns() <= s.start_ns(), "client {c:#} server {s:#}");
    assert!(
        s.end_ns() - s.start_ns() <= c.end_ns() - c.start_ns(),
        "client {c:#} server {s:#}"
    );
    assert!(
        s.end_ns() <= c.end_ns() + 1_000_000,
        "client {c:#} server {s:#}"
    );
    assert!(s.end_ns() > s.start_ns());

    // Status: 404 is an error for the client only, 503 for both.
    let s404 = by_path(&servers, "/status/404");
    let c404 = by_path(&clients, "/status/404");
    assert_eq!(s404.status_code(), "STATUS_CODE_UNSET");
    assert_eq!(c404.status_code(), "STATUS_CODE_ERROR");
    assert_eq!(c404.attr_str("error.type"), "404");
    assert_eq!(
        by_path(&servers, "/status/503").status_code(),
        "STATUS_CODE_ERROR"
    );
    assert_eq!(
        by_path(&clients, "/status/503").status_code(),
        "STATUS_CODE_ERROR"
    );
}

#[test]
fn curl_to_python_over_otlp_grpc() {
    require_root();
    curl_to_python("grpc");
}

#[test]
fn curl_to_python_over_otlp_http() {
    require_root();
    curl_to_python("http/protobuf");
}

/// Bodies: ≥ 1 MiB responses with Content-Length and chunked, close-delimited, HEAD, and
/// POST uploads (Content-Length and chunked). Sizes must be the real ones.
#[test]
fn bodies_large_chunked_and_uploads() {
    require_root();
    let (server, port) = test_http_server().unwrap();
    let sc = Scenario::port(port).unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let mib = 1 << 20;
    let dir = TempDir::new("upload");
    let upload = dir.path().join("upload.bin");
    std::fs::write(&upload, vec![7u8; 3 * mib / 2]).unwrap();
    let at = format!("@{}", upload.display());

    curl(&["-o", "/dev/null", &format!("{base}/bytes/{mib}")]).unwrap();
    curl(&["-o", "/dev/null", &format!("{base}/chunked/{mib}")]).unwrap();
    curl(&["-o", "/dev/null", &format!("{base}/close/5000")]).unwrap();
    curl(&["-o", "/dev/null", "-I", &format!("{base}/bytes/777")]).unwrap();
    let out = curl(&["--data-binary", &at, &format!("{base}/upload")]).unwrap();
    assert!(out.starts_with(&format!("{} ", 3 * mib / 2)), "{out}");
    curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &at,
        &format!("{base}/upload"),
    ])
    .unwrap();

    let done = stop_after(sc, &server, port, 6);
    let log = done.summary();
    let servers = done.spans_where(|s| is_server(s, &server));
    let clients = done.spans_where(|s| is_client(s, port));
    assert_eq!(servers.len(), 6, "{log}\n{servers:#?}");
    assert_eq!(clients.len(), 6, "{log}\n{clients:#?}");
    for spans in [&servers, &clients] {
        let one = |path: &str, method: &str| -> &Value {
            let v: Vec<&Value> = spans
                .iter()
                .filter(|s| {
                    s.attr_str("url.path") == path && s.attr_str("http.request.method") == method
                })
                .collect();
            assert_eq!(v.len(), 1, "{path} {method}: {spans:#?}");
            v[0]
        };
        let b = one(&format!("/bytes/{mib}"), "GET");
        assert_eq!(b.attr_i64("http.response.body.size"), mib as i64, "{b:#}");
        // Chunked: where reads split the framing beyond the captured prefixes the size is
        // unknown, and the span says so; it is never a wrong size.
        let c = one(&format!("/chunked/{mib}"), "GET");
        exact_or_unknown(c, "http.response.body.size", mib as i64);
        assert_eq!(c.attr_i64("http.response.status_code"), 200);
        assert_eq!(
            one("/close/5000", "GET").attr_i64("http.response.body.size"),
            5000
        );
        let head = one("/bytes/777", "HEAD");
        assert_eq!(head.attr_i64("http.response.status_code"), 200);
        let posts: Vec<&Value> = spans
            .iter()
            .filter(|s| s.attr_str("http.request.method") == "POST")
            .collect();
        assert_eq!(posts.len(), 2);
        for p in posts {
            assert_eq!(p.attr_i64("http.response.status_code"), 200);
            exact_or_unknown(p, "http.request.body.size", (3 * mib / 2) as i64);
        }
        // The Content-Length upload's size is always exact.
        assert!(
            spans
                .iter()
                .any(|s| s.attr_i64("http.request.body.size") == (3 * mib / 2) as i64),
            "{spans:#?}"
        );
    }
}

/// A size attribute is exact, or absent on a span marked incomplete.
fn exact_or_unknown(span: &Value, attr: &str, expected: i64) {
    if span.attr(attr).is_null() {
        assert_eq!(
            span.attr("tracer.incomplete"),
            &Value::Bool(true),
            "{span:#}"
        );
    } else {
        assert_eq!(span.attr_i64(attr), expected, "{span:#}");
    }
}

/// Three requests pipelined in one write on one connection from a raw socket: three server
/// spans in order, and three client spans for the raw client (this test process).
#[test]
fn pipelined_requests_on_a_raw_socket() {
    require_root();
    let (server, port) = test_http_server().unwrap();
    let sc = Scenario::port(port).unwrap();
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let reqs = "GET /p/1 HTTP/1.1\r\nHost: a\r\n\r\nGET /p/2 HTTP/1.1\r\nHost: a\r\n\r\nGET /status/201 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    sock.write_all(reqs.as_bytes()).unwrap();
    let mut resp = Vec::new();
    sock.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8_lossy(&resp);
    assert_eq!(text.matches("HTTP/1.1 ").count(), 3, "{text}");

    let done = stop_after(sc, &server, port, 3);
    let log = done.summary();
    let servers = done.spans_where(|s| is_server(s, &server));
    let clients = done.spans_where(|s| is_client(s, port));
    let paths = |spans: &[Value]| {
        let mut v: Vec<(u64, String, i64)> = spans
            .iter()
            .map(|s| {
                (
                    s.start_ns(),
                    s.attr_str("url.path").to_owned(),
                    s.attr_i64("http.response.status_code"),
                )
            })
            .collect();
        v.sort();
        v.into_iter().map(|(_, p, c)| (p, c)).collect::<Vec<_>>()
    };
    let expected = vec![
        ("/p/1".to_owned(), 200),
        ("/p/2".to_owned(), 200),
        ("/status/201".to_owned(), 201),
    ];
    assert_eq!(paths(&servers), expected, "{log}");
    assert_eq!(paths(&clients), expected, "{log}");
    assert!(
        clients
            .iter()
            .all(|c| c.res("process.pid").as_i64() == Some(std::process::id() as i64))
    );
}

/// Many concurrent keep-alive connections: every request accounted for exactly once.
#[test]
fn many_concurrent_connections() {
    require_root();
    let (server, port) = test_http_server().unwrap();
    let sc = Scenario::port(port).unwrap();
    const CONNS: usize = 32;
    const PER_CONN: usize = 10;
    let threads: Vec<_> = (0..CONNS)
        .map(|c| {
            std::thread::spawn(move || {
                let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
                let mut buf = [0u8; 4096];
                for i in 0..PER_CONN {
                    let req = format!("GET /c/{c}/{i} HTTP/1.1\r\nHost: t\r\n\r\n");
                    sock.write_all(req.as_bytes()).unwrap();
                    // Response is "ok" with Content-Length: 2: read until the body arrived.
                    let mut got = Vec::new();
                    while !got.ends_with(b"\r\n\r\nok") {
                        let n = sock.read(&mut buf).unwrap();
                        assert!(n > 0);
                        got.extend_from_slice(&buf[..n]);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let n = CONNS * PER_CONN;
    let done = stop_after(sc, &server, port, n);
    let stderr = done.summary();
    let servers = done.spans_where(|s| is_server(s, &server));
    let clients = done.spans_where(|s| is_client(s, port));
    let mut paths: Vec<&str> = servers.iter().map(|s| s.attr_str("url.path")).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(servers.len(), n, "{stderr}");
    assert_eq!(paths.len(), n, "each request exactly once");
    assert_eq!(clients.len(), n, "{stderr}");
    assert!(
        servers.iter().all(|s| s.name() == "GET /c/{id}/{id}"),
        "bounded span names"
    );
}

/// A keep-alive connection opened before the agent started: its later requests are traced
/// (the kernel finds the socket from the fd; the role comes from the traffic).
#[test]
fn connection_open_before_the_agent_started() {
    require_root();
    let (server, port) = test_http_server().unwrap();
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut exchange = |path: &str| {
        sock.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"\r\n\r\nok") {
            let n = sock.read(&mut buf).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
    };
    exchange("/before");
    let sc = Scenario::port(port).unwrap();
    exchange("/after/1");
    exchange("/after/2");
    sc.wait_spans(1, WAIT, |s| {
        s.kind() == "SPAN_KIND_SERVER" && s.attr_str("url.path") == "/after/2"
    });
    sc.wait_spans(2, WAIT, |s| is_client(s, port));
    let done = sc.stop().unwrap();
    let log = done.summary();
    let servers = done.spans_where(|s| is_server(s, &server));
    let clients = done.spans_where(|s| is_client(s, port));
    let paths = |spans: &[Value]| {
        let mut p: Vec<String> = spans
            .iter()
            .map(|s| s.attr_str("url.path").to_owned())
            .collect();
        p.sort();
        p
    };
    assert_eq!(paths(&clients), vec!["/after/1", "/after/2"], "{log}");
    // The server thread was already blocked in recv(2) for /after/1 when the programs were
    // attached: that call's arguments were never seen, so its request is lost once and counted
    // (its response has no request). Every later request is traced.
    let server_paths = paths(&servers);
    assert!(server_paths.contains(&"/after/2".to_owned()), "{log}");
    if !server_paths.contains(&"/after/1".to_owned()) {
        assert_eq!(done.counters.unmatched_responses, 1, "{log}");
    }
    assert!(
        servers
            .iter()
            .all(|s| s.attr_i64("client.port") > 0 && s.attr_str("client.address") == "127.0.0.1")
    );
}
