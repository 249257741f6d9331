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

fn spans_on(r: &Receiver, port: u16) -> Vec<Value> {
    r.spans()
        .into_iter()
        .filter(|s| {
            s.attr_i64("network.peer.port") == port as i64
                || s.attr_i64("server.port") == port as i64
        })
        .collect()
}

fn final_counters(stderr: &str) -> String {
    log_line(stderr, "final counters")
}

#[test]
fn garbage_oversized_and_slowloris_make_no_spans() {
    let receiver = Receiver::start(&[]).unwrap();
    let (server, port) = test_http_server().unwrap();
    let agent = Agent::otlp(&receiver.grpc_endpoint(), "grpc", port).unwrap();

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
    receiver.wait_spans(1, WAIT, |s| {
        s.kind() == "SPAN_KIND_SERVER" && s.res("process.pid").as_i64() == Some(pid)
    });
    std::thread::sleep(Duration::from_millis(500));
    let stderr = agent.stop().unwrap();
    let servers: Vec<Value> = receiver
        .spans()
        .into_iter()
        .filter(|s| s.kind() == "SPAN_KIND_SERVER" && s.res("process.pid").as_i64() == Some(pid))
        .collect();
    let paths: Vec<&str> = servers.iter().map(|s| s.attr_str("url.path")).collect();
    assert_eq!(
        paths,
        vec!["/after"],
        "only the real request makes a server span: {servers:#?}\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let counters = final_counters(&stderr);
    assert!(
        counter(&counters, "invalid_messages") + counter(&counters, "dropped_messages") > 0,
        "garbage is counted: {counters}"
    );
}

#[test]
fn invalid_chunk_sizes_never_make_a_complete_span() {
    let receiver = Receiver::start(&[]).unwrap();
    let port = raw_server(|mut s| {
        read_head(&mut s);
        let _ = s.write_all(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz-not-hex\r\nhello\r\n0\r\n\r\n",
        );
    });
    let agent = Agent::otlp(&receiver.grpc_endpoint(), "grpc", port).unwrap();
    let _ = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "3",
            &format!("http://127.0.0.1:{port}/chunks"),
        ])
        .output();
    std::thread::sleep(Duration::from_secs(1));
    agent.stop().unwrap();
    for s in spans_on(&receiver, port) {
        // Either no span, or one that says it is incomplete: never a clean 200 with a body size.
        assert_eq!(s.attr("tracer.incomplete"), &Value::Bool(true), "{s:#}");
    }
}

#[test]
fn response_without_request_makes_no_span() {
    let receiver = Receiver::start(&[]).unwrap();
    let port = raw_server(|mut s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
    });
    let agent = Agent::otlp(&receiver.grpc_endpoint(), "grpc", port).unwrap();
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
    let got = receiver.wait_spans(1, WAIT, |s| s.attr_str("url.path") == "/real");
    assert!(!got.is_empty(), "the agent traced the real request");
    std::thread::sleep(Duration::from_millis(500));
    let stderr = agent.stop().unwrap();
    let spans = spans_on(&receiver, port);
    assert!(
        spans.iter().all(|s| s.attr_str("url.path") == "/real"),
        "{spans:#?}"
    );
    assert!(
        counter(&final_counters(&stderr), "unmatched_responses") >= 1,
        "{stderr}"
    );
}

#[test]
fn reset_mid_response_is_not_a_complete_span() {
    let receiver = Receiver::start(&[]).unwrap();
    let port = raw_server(|mut s| {
        read_head(&mut s);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\npartial body");
        std::thread::sleep(Duration::from_millis(100));
        reset(s);
    });
    let agent = Agent::otlp(&receiver.grpc_endpoint(), "grpc", port).unwrap();
    let _ = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "3",
            &format!("http://127.0.0.1:{port}/reset"),
        ])
        .output();
    std::thread::sleep(Duration::from_secs(1));
    agent.stop().unwrap();
    for s in spans_on(&receiver, port) {
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
fn bad_endpoint(endpoint: &str) {
    let (_server, port) = test_http_server().unwrap();
    let agent = Agent::start(
        &["--port", &port.to_string()],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .unwrap();
    for i in 0..20 {
        curl(&["-o", "/dev/null", &format!("http://127.0.0.1:{port}/x/{i}")]).unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(agent.proc.stderr().iter().all(|l| !l.contains("panicked")));
    let start = Instant::now();
    let stderr = agent.stop().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "shutdown took {:?}",
        start.elapsed()
    );
    let counters = final_counters(&stderr);
    assert_eq!(
        counter(&counters, "spans"),
        40,
        "capture went on: {counters}"
    );
    assert!(stderr.contains("WARN"), "the failure is logged: {stderr}");
    let exported = stderr
        .lines()
        .rev()
        .find(|l| l.contains("export finished"))
        .unwrap_or_default();
    assert!(exported.contains("exported=0"), "{exported}");
    assert!(
        !exported.contains("failed=0"),
        "the loss is counted: {exported}"
    );
}

#[test]
fn dead_otlp_endpoint() {
    bad_endpoint(&format!("http://127.0.0.1:{}", free_port()));
}

#[test]
fn hanging_otlp_endpoint() {
    let receiver = Receiver::start(&["--hang"]).unwrap();
    bad_endpoint(&receiver.grpc_endpoint());
}
