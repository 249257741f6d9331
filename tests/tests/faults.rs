//! Privileged fault tests: the agent under faults keeps its promises: counted losses, never a
//! wrong span, bounded memory, recovery. They assert behaviour, not speed.
use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use tracer_tests::*;

const WAIT: Duration = Duration::from_secs(30);

/// `n` keep-alive requests on one connection; each path is `/status/<code>` so a span's
/// status can be checked against its own path.
fn requests(port: u16, paths: &[String]) {
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 4096];
    for path in paths {
        sock.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .unwrap();
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n\r\n") {
            let n = sock.read(&mut buf).unwrap();
            assert!(n > 0, "server closed");
            got.extend_from_slice(&buf[..n]);
        }
    }
}

#[test]
fn endpoint_down_at_start_then_up() {
    require_root();
    let (server, port) = test_http_server().unwrap();
    let grpc_port = free_port();
    let endpoint = format!("http://127.0.0.1:{grpc_port}");
    let sc = Scenario::ports(&[port])
        .export_to(&endpoint)
        .env("OTEL_EXPORTER_OTLP_TIMEOUT", "1000")
        .start()
        .unwrap();
    // Traffic while the endpoint is down.
    for i in 0..50 {
        requests(port, &[format!("/status/200?down={i}")]);
    }
    let rss_down = rss_kib(sc.agent.proc.pid());
    std::thread::sleep(Duration::from_secs(20));
    let receiver = Receiver::start(&["--grpc-port", &grpc_port.to_string()]).unwrap();
    for i in 0..20 {
        requests(port, &[format!("/status/201?up={i}")]);
    }
    let pid = server.pid() as i64;
    let after = receiver.wait_spans(20, WAIT, |s| {
        s.kind() == "SPAN_KIND_SERVER"
            && s.res("process.pid").as_i64() == Some(pid)
            && s.attr_i64("http.response.status_code") == 201
    });
    assert_eq!(after.len(), 20, "spans made after recovery arrive");
    assert!(
        rss_kib(sc.agent.proc.pid()) < rss_down + 32 * 1024,
        "memory stays bounded"
    );
    let done = sc.stop().unwrap();
    let finished = ExportTotals::from_log(&done.log).unwrap();
    // 100 spans were made while the endpoint was down (50 requests, both ends): each one is
    // either delivered late (retried) or counted as failed.
    let early = receiver
        .spans()
        .iter()
        .filter(|s| s.attr_str("url.query").starts_with("down="))
        .count() as u64;
    assert_eq!(
        early + finished.failed,
        100,
        "{finished:?}; delivered late: {early}"
    );
}

#[test]
fn ring_buffer_overflow_counts_drops_and_makes_no_wrong_span() {
    require_root();
    let (server, port) = test_http_server().unwrap();
    let sc = Scenario::ports(&[port])
        // One page: a burst overflows it.
        .args(&["--ring-buffer-bytes", "4096"])
        .start()
        .unwrap();
    let codes = [200, 201, 202, 203, 204, 404, 500];
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let paths: Vec<String> = (0..40)
                .map(|i| format!("/status/{}", codes[(t + i) % codes.len()]))
                .collect();
            std::thread::spawn(move || requests(port, &paths))
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    std::thread::sleep(Duration::from_secs(1));
    // Capture resumes after the burst.
    requests(port, &["/status/299".to_owned()]);
    let pid = server.pid() as i64;
    let resumed = sc.wait_spans(1, WAIT, |s| {
        s.kind() == "SPAN_KIND_SERVER" && s.attr_str("url.path") == "/status/299"
    });
    assert_eq!(resumed.len(), 1, "capture resumes after the overflow");
    let done = sc.stop().unwrap();
    let counters = &done.counters;
    let spans = done.spans_where(|s| {
        s.res("process.pid").as_i64() == Some(pid) || s.attr_i64("network.peer.port") == port as i64
    });
    for s in &spans {
        // Every span pairs a request with its own response: the status is in the path.
        let path = s.attr_str("url.path");
        let code: i64 = path.trim_start_matches("/status/").parse().unwrap();
        assert_eq!(
            s.attr_i64("http.response.status_code"),
            code,
            "wrong pairing: {s:#}"
        );
    }
    let sent = 16 * 40 * 2 + 2;
    assert!(
        counters.kernel_drops.ringbuf_full > 0,
        "the burst overflowed the ring: {counters:?}"
    );
    assert!(spans.len() < sent, "{counters:?}");
    assert!(counters.gaps > 0, "losses are seen as gaps: {counters:?}");
}

#[test]
fn thousands_of_short_and_half_open_connections_expire() {
    require_root();
    let (_server, port) = test_http_server().unwrap();
    let sc = Scenario::ports(&[port])
        .args(&["--idle-timeout", "2", "--stalled-timeout", "3"])
        .no_export()
        .start()
        .unwrap();
    let baseline = rss_kib(sc.agent.proc.pid());
    // 2000 short connections, one request each.
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..250 {
                    requests(port, &[format!("/status/200?t={t}&i={i}")]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // 200 half-open connections: a request head never finished, left open.
    let half_open: Vec<TcpStream> = (0..200)
        .map(|i| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(format!("GET /half/{i} HTTP/1.1\r\nHost: t\r\n").as_bytes())
                .unwrap();
            s
        })
        .collect();
    // The table forgets them all while they are still open.
    let periodic = || Counters::last_periodic(&sc.agent.proc.stderr()).map(Result::unwrap);
    let drained = wait_for(Duration::from_secs(20), || {
        periodic().filter(|c| c.conns_opened >= 4000 && c.conns_open == 0)
    });
    let c = periodic().expect("periodic stats every second");
    assert!(drained.is_some(), "connection state expires: {c:?}");
    assert!(c.conns_expired >= 200, "{c:?}");
    assert!(c.spans >= 4000, "{c:?}");
    let rss = rss_kib(sc.agent.proc.pid());
    assert!(
        rss < baseline + 48 * 1024,
        "memory returns near baseline: {baseline} KiB -> {rss} KiB"
    );
    drop(half_open);
    sc.stop().unwrap();
}

#[test]
fn restart_after_sigkill_is_clean() {
    require_root();
    let (server, port) = test_http_server().unwrap();
    let mut first = Agent::start(&["--port", &port.to_string()], &[]).unwrap();
    let pid = first.proc.pid();
    let ids = program_ids_of(pid);
    // One per tracepoint, the 5 tail-called context programs, sock_ops and sk_msg (injection
    // is on by default), and the TLS probes' programs (loaded at start, attached per file).
    assert_eq!(
        ids.len(),
        tracer::capture::TRACEPOINTS.len() + 5 + 2 + tracer::capture::tls::PROGRAMS.len()
    );
    first.proc.signal(libc::SIGKILL);
    first.proc.wait_exit(Duration::from_secs(5)).unwrap();
    // The kernel unloads a dead agent's programs (nothing is pinned).
    let gone = wait_for(Duration::from_secs(10), || {
        let loaded = loaded_program_ids();
        ids.is_disjoint(&loaded).then_some(())
    });
    assert!(gone.is_some(), "programs of the killed agent are unloaded");

    let second = Agent::start(&["--port", &port.to_string()], &[]).unwrap();
    let start = Instant::now();
    curl(&[
        "-o",
        "/dev/null",
        &format!("http://127.0.0.1:{port}/status/200"),
    ])
    .unwrap();
    let line = wait_for(Duration::from_secs(10), || {
        second
            .proc
            .stdout()
            .into_iter()
            .find(|l| l.contains("SERVER GET /status/200"))
    });
    assert!(
        line.is_some_and(|l| l.contains(&format!("[{}]", server.pid()))),
        "traces after restart"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    second.stop().unwrap();
}
