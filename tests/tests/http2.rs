//! Privileged end-to-end HTTP/2 with real peers: nginx over TLS with ALPN h2 and curl (libssl
//! probes), and h2load driving many concurrent streams over few connections against nginx h2c.
//! Each test traces only its own port; the agent, its OTLP receiver and the peers are real.
//!
//! What a user checks: one SERVER and one CLIENT span per request, named `GET /path`, with the
//! HTTP conventions and `network.protocol.version=2` (`url.scheme=https` over TLS), the right
//! status, the server span as the client span's child, sane timing, exact counts; and, where
//! the agent cannot follow the bytes (a call larger than the kernel's capture limit), losses
//! that are counted and never turn into a wrong status code, a panic or unbounded memory.
use std::{collections::HashSet, path::Path, process::Command, time::Duration};

use serde_json::Value;
use tracer_tests::*;

const WAIT: Duration = Duration::from_secs(20);

/// The scenario of every test here: tracing `port`. h2load finishes thousands of requests in a
/// few ms: the default export queue (2048) would drop spans (counted as export_queue_full)
/// before the first export.
fn scenario(port: u16) -> Scenario {
    Scenario::ports(&[port])
        .env("OTEL_BSP_MAX_QUEUE_SIZE", "20000")
        .start()
        .unwrap()
}

fn of(s: &Value, service: &str, kind: &str) -> bool {
    s.kind() == kind && s.res("service.name").as_str() == Some(service)
}

/// Waits for `n` spans matching `pred`, then a little longer (more must not come).
fn exactly(r: &Receiver, n: usize, pred: impl Fn(&Value) -> bool + Copy) -> Vec<Value> {
    r.wait_spans(n, WAIT, pred);
    std::thread::sleep(Duration::from_millis(300));
    r.spans().into_iter().filter(|s| pred(s)).collect()
}

fn has_status(s: &Value) -> bool {
    !s.attr("http.response.status_code").is_null()
}

fn duration_ns(s: &Value) -> u64 {
    s.end_ns().saturating_sub(s.start_ns())
}

// ---------------------------------------------------------------------------------------------
// nginx over TLS with ALPN h2, curl --http2 (both on libssl)

/// curl → nginx over TLS, HTTP/2 negotiated by ALPN: two requests on one connection (a 200 and
/// a 404) and one on another. Three SERVER (nginx) and three CLIENT (curl) spans, HTTP
/// conventions with version 2 and `https`, nothing from the ciphertext.
#[test]
fn h2_over_tls_curl_to_nginx() {
    require_root();
    let certs = Certs::new("h2-tls");
    let port = free_port();
    let sc = scenario(port);
    let certificate = format!(
        "ssl_certificate {};\n        ssl_certificate_key {};",
        certs.cert().display(),
        certs.key().display()
    );
    let nginx = nginx(
        certs.dir.path(),
        port,
        &format!("127.0.0.1:{port} ssl http2"),
        &certificate,
    );
    let attached = wait_for(WAIT, || {
        sc.agent
            .proc
            .stderr()
            .into_iter()
            .find(|l| l.contains("attached TLS probes to") && l.contains("libssl.so"))
    });
    assert!(attached.is_some(), "{}", sc.log());
    let base = format!("https://127.0.0.1:{port}");
    // `%{http_version}` proves ALPN chose h2 (curl would fall back to 1.1 silently).
    let curl_h2 = |paths: &[&str]| {
        let mut args = vec!["-k", "--http2", "-w", "%{http_version} %{http_code}\n"];
        let urls: Vec<String> = paths.iter().map(|p| format!("{base}{p}")).collect();
        for url in &urls {
            args.extend(["-o", "/dev/null", url]);
        }
        curl(&args).unwrap()
    };
    // Two requests on one connection, then one on another.
    assert_eq!(curl_h2(&["/h2/first", "/missing"]), "2 200\n2 404\n");
    assert_eq!(curl_h2(&["/h2/second"]), "2 200\n");

    let servers = exactly(sc.receiver(), 3, |s| of(s, "nginx", "SPAN_KIND_SERVER"));
    let clients = exactly(sc.receiver(), 3, |s| of(s, "curl", "SPAN_KIND_CLIENT"));
    let done = sc.stop().unwrap();
    drop(nginx);
    let counters = &done.counters;
    assert_eq!(servers.len(), 3, "{counters:?}\n{servers:#?}");
    assert_eq!(clients.len(), 3, "{counters:?}\n{clients:#?}");
    // Nothing else: no span from the ciphertext the syscalls carried, no duplicates.
    let all = &done.spans;
    assert_eq!(all.len(), 6, "{counters:?}\n{all:#?}");

    let mut linked = 0;
    for (path, status) in [("/h2/first", 200), ("/missing", 404), ("/h2/second", 200)] {
        let (server, client) = (by_path(&servers, path), by_path(&clients, path));
        for s in [server, client] {
            assert_eq!(s.name(), format!("GET {path}"), "{s:#}");
            assert_eq!(s.attr_str("http.request.method"), "GET", "{s:#}");
            assert_eq!(s.attr_i64("http.response.status_code"), status, "{s:#}");
            assert_eq!(s.attr_str("network.protocol.version"), "2", "{s:#}");
            assert_eq!(s.attr_str("url.scheme"), "https", "{s:#}");
            assert_eq!(s.attr("rpc.system"), &Value::Null, "{s:#}");
            assert_eq!(s.attr("tracer.incomplete"), &Value::Null, "{s:#}");
            let d = duration_ns(s);
            assert!(d > 0 && d < 5_000_000_000, "duration {d} ns: {s:#}");
        }
        assert_eq!(client.attr_str("url.full"), format!("{base}{path}"));
        assert_eq!(client.attr_i64("network.peer.port"), port as i64);
        assert_eq!(client.attr_i64("server.port"), port as i64, "{client:#}");
        assert_eq!(server.attr_str("network.peer.address"), "127.0.0.1");
        // A 404 is the caller's error only.
        let want_client = if status >= 400 {
            "STATUS_CODE_ERROR"
        } else {
            "STATUS_CODE_UNSET"
        };
        assert_eq!(client.status_code(), want_client, "{client:#}");
        assert_eq!(server.status_code(), "STATUS_CODE_UNSET", "{server:#}");
        // Same node: the server span is the client span's child, by the connection's
        // addresses and the request's plaintext position, when the client's request event is
        // read before the server's exchange completes. Over TLS the client's SSL_write return
        // probe often trails the whole server exchange on this 2-CPU box (the woken server
        // preempts the client on its way back to user space): then no parent, never a wrong
        // one (see tls.rs).
        match server.attr_str("tracer.parent.source") {
            "address" => {
                linked += 1;
                assert_eq!(
                    server.trace_id(),
                    client.trace_id(),
                    "{server:#}\n{client:#}"
                );
                assert_eq!(
                    server.parent_id(),
                    client.span_id(),
                    "{server:#}\n{client:#}"
                );
            }
            other => {
                assert_eq!(other, "none", "{server:#}");
                assert_eq!(server.parent_id(), "", "{server:#}");
            }
        }
        // The server handled the request while the client waited (its end may trail the
        // client's by the server's SSL_write return probe, as in tls.rs).
        const TRAIL_NS: u64 = 5_000_000;
        assert!(
            client.start_ns() <= server.start_ns(),
            "client {client:#} server {server:#}"
        );
        assert!(
            server.end_ns() <= client.end_ns() + TRAIL_NS,
            "client {client:#} server {server:#}"
        );
    }
    eprintln!("h2 over TLS: {linked}/3 server spans linked to their client span");
    assert!(counters.tls_files_attached >= 1, "{counters:?}");
    assert_eq!(counters.h2_desyncs, 0, "{counters:?}");
    assert_eq!(counters.h2_invalid, 0, "{counters:?}");
    assert_eq!(counters.dropped_messages, 0, "{counters:?}");
    assert_eq!(counters.unmatched_responses, 0, "{counters:?}");
    assert_eq!(counters.unanswered_requests, 0, "{counters:?}");
    assert_eq!(counters.injection().inject_done, 0, "{counters:?}");
}

// ---------------------------------------------------------------------------------------------
// h2load: many concurrent streams over few connections, nginx h2c

/// h2load's summary: requests that succeeded (2xx..3xx and no error) and 2xx answers.
struct H2load {
    succeeded: u64,
    ok_2xx: u64,
}

fn h2load(args: &[&str]) -> H2load {
    let out = Command::new("h2load")
        .args(args)
        .output()
        .expect("running h2load (nghttp2-client; `cargo xtask setup --test-deps`)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "h2load {args:?}: {text}");
    let field = |line: &str, after: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| {
                l.split(',')
                    .find(|p| p.trim().ends_with(after))
                    .and_then(|p| p.split_whitespace().rev().nth(1)?.parse().ok())
            })
            .unwrap_or_else(|| panic!("no `{after}` in h2load's `{line}` line:\n{text}"))
    };
    H2load {
        succeeded: field("requests:", "succeeded"),
        ok_2xx: text
            .lines()
            .find_map(|l| l.strip_prefix("status codes:"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no status codes in h2load's output:\n{text}")),
    }
}

/// nginx h2c on a fresh port; `extra` goes in its server block. Keep-alive connections carry
/// up to 100000 requests (nginx's default of 1000 would end h2load's connections early).
fn nginx_h2c(dir: &Path, port: u16, extra: &str) -> Proc {
    nginx(
        dir,
        port,
        &format!("127.0.0.1:{port} http2"),
        &format!("keepalive_requests 100000;\n        {extra}"),
    )
}

const N: usize = 2000;

/// h2load -n 2000 -c 2 -m 32 (16 batches of 32 streams on each connection, at most 32 open at
/// once): every request is one SERVER span (nginx) and one CLIENT span (h2load), status 200,
/// each server span the child of its own client span, and not one loss in the counters.
#[test]
fn h2load_concurrent_streams_every_request_is_a_span() {
    require_root();
    let dir = TempDir::new("h2load");
    let port = free_port();
    let sc = scenario(port);
    let nginx = nginx_h2c(dir.path(), port, "");
    let run = h2load(&[
        "-n",
        &N.to_string(),
        "-c",
        "2",
        "-m",
        "32",
        &format!("http://127.0.0.1:{port}/hello"),
    ]);
    assert_eq!((run.succeeded, run.ok_2xx), (N as u64, N as u64));

    let servers = exactly(sc.receiver(), N, |s| of(s, "nginx", "SPAN_KIND_SERVER"));
    let clients = exactly(sc.receiver(), N, |s| of(s, "h2load", "SPAN_KIND_CLIENT"));
    let done = sc.stop().unwrap();
    drop(nginx);
    let counters = &done.counters;
    assert_eq!(servers.len(), N, "{counters:?}");
    assert_eq!(clients.len(), N, "{counters:?}");
    assert_eq!(done.spans.len(), 2 * N, "{counters:?}");
    for s in servers.iter().chain(&clients) {
        assert_eq!(s.name(), "GET /hello", "{s:#}");
        assert_eq!(s.attr_i64("http.response.status_code"), 200, "{s:#}");
        assert_eq!(s.attr_str("network.protocol.version"), "2", "{s:#}");
        assert_eq!(s.attr_str("url.scheme"), "http", "{s:#}");
        assert_eq!(s.status_code(), "STATUS_CODE_UNSET", "{s:#}");
        assert_eq!(s.attr("tracer.incomplete"), &Value::Null, "{s:#}");
        assert!(duration_ns(s) < 5_000_000_000, "{s:#}");
    }
    // Each server span hangs under its own client span: 2000 distinct parents, all of them
    // h2load's client spans (plain text: the client's write event always precedes).
    let client_ids: HashSet<&str> = clients.iter().map(|s| s.span_id()).collect();
    let parents: HashSet<&str> = servers.iter().map(|s| s.parent_id()).collect();
    assert_eq!(client_ids.len(), N);
    assert_eq!(parents, client_ids, "{counters:?}");
    for s in &servers {
        assert_eq!(s.attr_str("tracer.parent.source"), "address", "{s:#}");
    }
    assert_eq!(counters.address_linked, N as u64, "{counters:?}");
    let c = counters;
    for (zero, value) in [
        ("h2_desyncs", c.h2_desyncs),
        ("h2_invalid", c.h2_invalid),
        ("h2_dropped_blocks", c.h2_dropped_blocks),
        ("h2_streams_over_limit", c.h2_streams_over_limit),
        ("h2_streams_reset", c.h2_streams_reset),
        ("h2_unknown_fields", c.h2_unknown_fields),
        ("gaps", c.gaps),
        ("dropped_messages", c.dropped_messages),
        ("unmatched_responses", c.unmatched_responses),
        ("unanswered_requests", c.unanswered_requests),
        ("export_queue_full", c.export_queue_full),
        ("ringbuf_full", c.kernel_drops.ringbuf_full),
    ] {
        assert_eq!(value, 0, "{zero}: {c:?}");
    }
}

/// Calls past the 4096 bytes captured per call that end outside a DATA payload: the direction
/// loses its frame boundaries (`h2_desyncs`) and resumes at the next call that starts with
/// plausible frames, its HPACK table forgotten. Every request is one span on each side; none
/// is an error (the peer answered every one); a span whose response head was in the lost bytes
/// has no status (unknown, never `no response`) and is flagged `tracer.incomplete`; every other
/// span has the status sent. Returns the number of spans with their status.
fn check_losses_counted(
    servers: &[Value],
    clients: &[Value],
    counters: &Counters,
    n: usize,
    status: i64,
) -> usize {
    assert_eq!((servers.len(), clients.len()), (n, n), "{counters:?}");
    for s in servers.iter().chain(clients) {
        assert_ne!(s.status_code(), "STATUS_CODE_ERROR", "{s:#}");
        assert_eq!(s.attr("error.type"), &Value::Null, "{s:#}");
        if has_status(s) {
            assert_eq!(s.attr_i64("http.response.status_code"), status, "{s:#}");
        } else {
            assert_eq!(s.attr("tracer.incomplete"), &Value::Bool(true), "{s:#}");
        }
        assert_eq!(s.attr_str("network.protocol.version"), "2", "{s:#}");
    }
    assert_eq!(counters.unanswered_requests, 0, "{counters:?}");
    let complete = servers
        .iter()
        .chain(clients)
        .filter(|s| has_status(s))
        .count();
    if complete < 2 * n {
        // Explained: a direction lost its frames, at a call past the capture limit.
        assert!(counters.h2_desyncs >= 1, "{counters:?}");
        assert!(counters.kernel_drops.truncated_calls >= 1, "{counters:?}");
    }
    complete
}

/// h2load -n 2000 -c 2 -m 100: up to 100 responses (~42 bytes each) wait in h2load's socket, so
/// its reads exceed the 4096 captured bytes and the response direction of its connections loses
/// sync for the rest of such a read; the next read starts at a frame boundary and is decoded.
/// The server side, whose reads carry the small HPACK-indexed requests, stays exact.
#[test]
fn h2load_reads_past_the_capture_limit_resync() {
    require_root();
    let dir = TempDir::new("h2load-m100");
    let port = free_port();
    let sc = scenario(port);
    let rss_before = rss_kib(sc.agent.proc.pid());
    let nginx = nginx_h2c(dir.path(), port, "");
    let url = format!("http://127.0.0.1:{port}/hello");
    let run = h2load(&["-n", &N.to_string(), "-c", "2", "-m", "100", &url]);
    assert_eq!((run.succeeded, run.ok_2xx), (N as u64, N as u64));
    let servers = exactly(sc.receiver(), N, |s| of(s, "nginx", "SPAN_KIND_SERVER"));
    let clients = exactly(sc.receiver(), N, |s| of(s, "h2load", "SPAN_KIND_CLIENT"));
    let rss_after = rss_kib(sc.agent.proc.pid());
    let done = sc.stop().unwrap();
    drop(nginx);
    let counters = &done.counters;
    for s in &servers {
        assert_eq!(s.attr_i64("http.response.status_code"), 200, "{s:#}");
        assert_eq!(s.attr("tracer.incomplete"), &Value::Null, "{s:#}");
        assert_eq!(s.attr_str("tracer.parent.source"), "address", "{s:#}");
    }
    let complete = check_losses_counted(&servers, &clients, counters, N, 200);
    // Only the responses inside the uncaptured tails are unknown: most keep their 200.
    let unknown = 2 * N - complete;
    assert!(
        unknown * 2 < N,
        "{unknown} of {N} client spans without status: {counters:?}"
    );
    assert_eq!(counters.h2_streams_over_limit, 0, "{counters:?}");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "agent RSS {rss_before} → {rss_after} KiB"
    );
    eprintln!("h2load -m 100: {unknown}/{N} client spans of unknown status; {counters:?}");
}

/// Response header blocks of ~78 KiB (20 headers of 4000 bytes: over the parser's 64 KiB block
/// bound and far over the 4096 bytes captured per call), alternating with small responses on
/// one connection. Never a panic, bounded memory, every loss counted, no wrong status.
#[test]
fn huge_header_blocks_are_counted_never_a_panic() {
    require_root();
    let dir = TempDir::new("h2-bighead");
    let port = free_port();
    let sc = scenario(port);
    let rss_before = rss_kib(sc.agent.proc.pid());
    // Characters HPACK's Huffman code does not shrink much, so the block stays large.
    let mut x: u32 = 12345;
    let alphabet = b"!#%&*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut headers = String::new();
    for i in 0..20 {
        let value: String = (0..4000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                alphabet[(x >> 16) as usize % alphabet.len()] as char
            })
            .collect();
        headers.push_str(&format!("add_header x-big-{i} \"{value}\";\n"));
    }
    let nginx = nginx_h2c(
        dir.path(),
        port,
        &format!("location /bighead {{ {headers} return 200 \"big\\n\"; }}"),
    );
    let n = 20;
    let run = h2load(&[
        "-n",
        &n.to_string(),
        "-c",
        "1",
        "-m",
        "1",
        &format!("http://127.0.0.1:{port}/bighead"),
        &format!("http://127.0.0.1:{port}/hello"),
    ]);
    assert_eq!((run.succeeded, run.ok_2xx), (n, n));
    // At most one span per request and side (those without a response end at the close).
    let servers = exactly(sc.receiver(), n as usize, |s| {
        of(s, "nginx", "SPAN_KIND_SERVER")
    });
    let clients = exactly(sc.receiver(), n as usize, |s| {
        of(s, "h2load", "SPAN_KIND_CLIENT")
    });
    let rss_after = rss_kib(sc.agent.proc.pid());
    let done = sc.stop().unwrap();
    drop(nginx);
    let counters = &done.counters;
    for s in servers.iter().chain(&clients) {
        let path = s.attr_str("url.path");
        assert!(path == "/bighead" || path == "/hello", "{s:#}");
    }
    let complete = check_losses_counted(&servers, &clients, counters, n as usize, 200);
    assert!(
        rss_after < rss_before + 64 * 1024,
        "agent RSS {rss_before} → {rss_after} KiB"
    );
    eprintln!(
        "huge header blocks: {complete} of {} spans with their status; {counters:?}",
        2 * n
    );
}
