//! Privileged: bad input on the wire and a bad OTLP endpoint. Expected: no panic, no wrong
//! span, bounded memory, counted drops, a clean exit.
use std::{
    io::Write,
    net::TcpStream,
    time::{Duration, Instant},
};

use serde_json::Value;
use tracer_tests::*;

const WAIT: Duration = Duration::from_secs(20);

/// A tiny xorshift: deterministic "random" bytes without a dependency.
fn garbage(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

fn is_on(s: &Value, port: u16) -> bool {
    s.attr_i64("network.peer.port") == port as i64 || s.attr_i64("server.port") == port as i64
}

#[test]
fn garbage_oversized_and_slowloris_make_no_spans() {
    require_root();
    let (server, port) = test_http_server().unwrap();
    let sc = Scenario::port(port).unwrap();

    // Binary garbage.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&garbage(64 << 10, 7)).unwrap();
    drop(s);
    // Garbage that starts like HTTP.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut bad = b"GET /garbage HTTP/1.1\r\n\x00\x01\x02".to_vec();
    bad.extend(garbage(8192, 9));
    s.write_all(&bad).unwrap();
    drop(s);
    // A 1 MiB header line.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut big = b"GET /big HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 1 << 20));
    big.extend_from_slice(b"\r\n\r\n");
    let _ = s.write_all(&big);
    drop(s);
    // Slowloris: a head sent a byte at a time, never finished.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let start = Instant::now();
    for b in b"GET /slow HTTP/1.1\r\nHost: a\r\nX-A: b".iter() {
        let _ = s.write_all(&[*b]);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    drop(s);
    // And then a normal request still works.
    curl(&["-o", "/dev/null", &format!("http://127.0.0.1:{port}/after")]).unwrap();

    let pid = server.pid() as i64;
    let of_server =
        |s: &Value| s.kind() == "SPAN_KIND_SERVER" && s.res("process.pid").as_i64() == Some(pid);
    sc.wait_spans(1, WAIT, of_server);
    std::thread::sleep(Duration::from_millis(500));
    let done = sc.stop().unwrap();
    let servers = done.spans_where(of_server);
    let paths: Vec<&str> = servers.iter().map(|s| s.attr_str("url.path")).collect();
    assert_eq!(
        paths,
        vec!["/after"],
        "only the real request makes a server span: {servers:#?}\n{}",
        done.log
    );
    assert!(!done.log.contains("panicked"), "{}", done.log);
    let c = &done.counters;
    assert!(
        c.invalid_messages + c.dropped_messages > 0,
        "garbage is counted: {c:?}"
    );
}

#[test]
fn invalid_chunk_sizes_never_make_a_complete_span() {
    require_root();
    let port = raw_server(|mut s| {
        read_head(&mut s);
        let _ = s.write_all(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz-not-hex\r\nhello\r\n0\r\n\r\n",
        );
    });
    let sc = Scenario::port(port).unwrap();
    let _ = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "3",
            &format!("http://127.0.0.1:{port}/chunks"),
        ])
        .output();
    std::thread::sleep(Duration::from_secs(1));
    let done = sc.stop().unwrap();
    for s in done.spans_where(|s| is_on(s, port)) {
        // Either no span, or one that says it is incomplete: never a clean 200 with a body size.
        assert_eq!(s.attr("tracer.incomplete"), &Value::Bool(true), "{s:#}");
    }
}

#[test]
fn response_without_request_makes_no_span() {
    require_root();
    let port = raw_server(|mut s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
    });
    let sc = Scenario::port(port).unwrap();
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 64];
    let _ = std::io::Read::read(&mut c, &mut buf);
    drop(c);
    // A real exchange afterwards proves the agent was tracing.
    curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "--max-time",
        "3",
        &format!("http://127.0.0.1:{port}/real"),
    ])
    .ok();
    let got = sc.wait_spans(1, WAIT, |s| s.attr_str("url.path") == "/real");
    assert!(!got.is_empty(), "the agent traced the real request");
    std::thread::sleep(Duration::from_millis(500));
    let done = sc.stop().unwrap();
    let spans = done.spans_where(|s| is_on(s, port));
    assert!(
        spans.iter().all(|s| s.attr_str("url.path") == "/real"),
        "{spans:#?}"
    );
    assert!(done.counters.unmatched_responses >= 1, "{}", done.summary());
}

#[test]
fn reset_mid_response_is_not_a_complete_span() {
    require_root();
    let port = raw_server(|mut s| {
        read_head(&mut s);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\npartial body");
        std::thread::sleep(Duration::from_millis(100));
        reset(s);
    });
    let sc = Scenario::port(port).unwrap();
    let _ = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "3",
            &format!("http://127.0.0.1:{port}/reset"),
        ])
        .output();
    std::thread::sleep(Duration::from_secs(1));
    let done = sc.stop().unwrap();
    for s in done.spans_where(|s| is_on(s, port)) {
        let complete_ok = s.attr_i64("http.response.status_code") == 200
            && s.attr("tracer.incomplete") != &Value::Bool(true);
        assert!(
            !complete_ok,
            "a reset response must not look complete: {s:#}"
        );
    }
}

/// A dead endpoint (nothing listens) and a hanging one (accepts, never answers): the agent
/// keeps capturing, says what failed, and exits 0 within its export timeout.
fn bad_endpoint(export: impl FnOnce(Setup) -> Setup) {
    let (_server, port) = test_http_server().unwrap();
    let setup = Scenario::ports(&[port]).env("OTEL_EXPORTER_OTLP_TIMEOUT", "1000");
    let sc = export(setup).start().unwrap();
    for i in 0..20 {
        curl(&["-o", "/dev/null", &format!("http://127.0.0.1:{port}/x/{i}")]).unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(!sc.log().contains("panicked"));
    let start = Instant::now();
    let done = sc.stop().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "shutdown took {:?}",
        start.elapsed()
    );
    assert_eq!(
        done.counters.spans,
        40,
        "capture went on: {}",
        done.summary()
    );
    assert!(
        done.log.contains("WARN"),
        "the failure is logged: {}",
        done.log
    );
    assert!(done.spans.is_empty(), "{:#?}", done.spans);
    let exported = ExportTotals::from_log(&done.log).unwrap();
    assert_eq!(exported.exported, 0, "{exported:?}");
    assert!(exported.failed > 0, "the loss is counted: {exported:?}");
}

#[test]
fn dead_otlp_endpoint() {
    require_root();
    bad_endpoint(|s| s.export_to(&format!("http://127.0.0.1:{}", free_port())));
}

#[test]
fn hanging_otlp_endpoint() {
    require_root();
    bad_endpoint(|s| s.receiver_args(&["--hang"]));
}
