//! Privileged end-to-end: `traceparent` injection into outgoing plaintext HTTP/1.x requests
//! (sock_ops + sk_msg, `--inject-traceparent`). An echo server returns every request exactly as
//! it arrived, so the tests compare the bytes on the wire with the bytes the client wrote: the
//! header appears once, well formed, after the request line; nothing else changes (large
//! bodies, pipelined requests, heads split across writes, bodies that look like requests); and
//! without the option nothing changes at all. The test process itself is the traced client.
//! Then whole traces: curl → uninstrumented service → service instrumented with the
//! OpenTelemetry SDK; SDK clients (W3C, B3) → uninstrumented server; and a client in another
//! network namespace ("another node").
use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Command,
    time::Duration,
};

use serde_json::Value;
use tracer_tests::*;

const WAIT: Duration = Duration::from_secs(20);

/// A client connection that reads echo responses (buffered: pipelined responses may arrive
/// in one read).
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(port: u16) -> Self {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Self { s, buf: Vec::new() }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    fn fill(&mut self, want: usize) {
        let mut chunk = [0u8; 65536];
        while self.buf.len() < want {
            let n = self.s.read(&mut chunk).expect("echo response");
            assert!(n > 0, "connection closed mid-response");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads one echo response; returns the request bytes the server received.
    fn echo(&mut self) -> Vec<u8> {
        let head_end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let have = self.buf.len();
            self.fill(have + 1);
        };
        let text = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        let len: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no length in {text}"));
        self.fill(head_end + len);
        let body = self.buf[head_end..head_end + len].to_vec();
        self.buf.drain(..head_end + len);
        body
    }
}

/// Sends `pieces` (one write each, with a pause between) and returns the echoed requests.
fn exchange(port: u16, pieces: &[&[u8]], responses: usize) -> Vec<Vec<u8>> {
    let mut c = Conn::open(port);
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
        c.send(piece);
    }
    (0..responses).map(|_| c.echo()).collect()
}

/// Splits an echoed request into (request with the injected line removed, injected value).
fn strip_injected(echoed: &[u8]) -> (Vec<u8>, Option<String>) {
    let line_end = echoed
        .windows(2)
        .position(|w| w == b"\r\n")
        .expect("request line")
        + 2;
    let rest = &echoed[line_end..];
    const NAME: &[u8] = b"traceparent: ";
    if rest.starts_with(NAME) && rest.len() >= 70 && &rest[68..70] == b"\r\n" {
        let value = String::from_utf8(rest[NAME.len()..68].to_vec()).unwrap();
        let mut out = echoed[..line_end].to_vec();
        out.extend_from_slice(&rest[70..]);
        (out, Some(value))
    } else {
        (echoed.to_vec(), None)
    }
}

/// Segments with data the socket has sent (`tcpi_data_segs_out` of TCP_INFO, Linux 4.6+).
fn data_segments_sent(s: &TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain integers, valid when zeroed.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes; the kernel writes at most that many.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    assert!(
        len as usize >= std::mem::offset_of!(libc::tcp_info, tcpi_data_segs_out) + 4,
        "TCP_INFO of {len} bytes"
    );
    info.tcpi_data_segs_out
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| w == &needle).count()
}

/// A valid version-00 value: 00-<32 hex>-<16 hex>-01, ids not zero.
fn assert_well_formed(v: &str) -> (String, String) {
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "{v}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1].len(), 32);
    assert_eq!(parts[2].len(), 16);
    assert_eq!(parts[3], "01");
    for p in &parts[1..] {
        assert!(
            p.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
            "{v}"
        );
    }
    assert_ne!(parts[1], "0".repeat(32));
    assert_ne!(parts[2], "0".repeat(16));
    (parts[1].to_owned(), parts[2].to_owned())
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: echo\r\nUser-Agent: injection-test\r\n\r\n").into_bytes()
}

fn post(path: &str, body: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: echo\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    (head, body.to_vec())
}

#[test]
fn injected_header_is_well_formed_once_and_nothing_else_changes() {
    require_root();
    let (server, port) = echo_server().unwrap();
    // The test's own sockets are blocking: `all` lets them join the sockmap.
    let sc = Scenario::ports(&[port])
        .args(&["--inject-traceparent", "all"])
        .start()
        .unwrap();
    let receiver = sc.receiver();
    let me = std::process::id();

    // A plain GET: one header after the request line, the rest as sent.
    let sent = get("/plain");
    let echoed = exchange(port, &[&sent], 1).remove(0);
    let (without, value) = strip_injected(&echoed);
    let value = value.unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(&echoed)));
    let (trace, span) = assert_well_formed(&value);
    assert_eq!(without, sent);
    assert_eq!(count(&echoed, b"traceparent"), 1);

    // The CLIENT span is the one the header names; the server's span is its child.
    let client = receiver.one_span("SPAN_KIND_CLIENT", "/plain", me);
    assert_eq!((client.trace_id(), client.span_id()), (&*trace, &*span));
    assert_eq!(
        client.attr("tracer.traceparent.injected"),
        &Value::Bool(true)
    );
    assert_eq!(client.parent_id(), "");
    let srv = receiver.one_span("SPAN_KIND_SERVER", "/plain", server.pid());
    assert_eq!((srv.trace_id(), srv.parent_id()), (&*trace, &*span));
    assert_eq!(srv.attr_str("tracer.parent.source"), "w3c");

    // The injected request leaves as one segment, as the client wrote it: the kernel's sockmap
    // send would otherwise send the parts before and after the inserted header on their own
    // (three segments, and a partial read for the server).
    let mut c = Conn::open(port);
    c.send(&get("/one-segment"));
    let (without, value) = strip_injected(&c.echo());
    assert_eq!(without, get("/one-segment"));
    assert!(value.is_some());
    assert_eq!(data_segments_sent(&c.s), 1);
    drop(c);

    // A 1 MiB POST written at once: the body arrives byte-identical.
    let body: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let (head, body) = post("/large", &body);
    let sent = [head.clone(), body.clone()].concat();
    let echoed = exchange(port, &[&sent], 1).remove(0);
    let (without, value) = strip_injected(&echoed);
    assert!(value.is_some());
    assert!(without == sent, "large POST changed in transit");

    // Head and a request-looking body in separate writes: only the head gets the header.
    let (head, body) = post(
        "/lookalike",
        b"GET /not-a-request HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let echoed = exchange(port, &[&head, &body], 1).remove(0);
    let (without, value) = strip_injected(&echoed);
    assert!(value.is_some());
    assert_eq!(without, [head, body].concat());
    assert_eq!(count(&echoed, b"traceparent"), 1);

    // Pipelined: two requests in one write. The first gets the header, the second is untouched.
    let (a, b) = (get("/pipe-1"), get("/pipe-2"));
    let echoed = exchange(port, &[&[a.clone(), b.clone()].concat()], 2);
    let (first, v1) = strip_injected(&echoed[0]);
    assert!(v1.is_some());
    assert_eq!(first, a);
    assert_eq!(echoed[1], b, "{}", String::from_utf8_lossy(&echoed[1]));

    // Keep-alive: each request on the connection gets its own span id.
    let mut c = Conn::open(port);
    let mut ids = Vec::new();
    for path in ["/keep-1", "/keep-2"] {
        c.send(&get(path));
        let (without, value) = strip_injected(&c.echo());
        assert_eq!(without, get(path));
        ids.push(assert_well_formed(&value.unwrap()).1);
    }
    assert_ne!(ids[0], ids[1]);
    drop(c);

    // A head split across writes, and a request carrying its own context: left alone.
    let split = get("/split");
    let (p1, p2) = split.split_at(split.len() - 2);
    assert_eq!(exchange(port, &[p1, p2], 1).remove(0), split);
    let own = b"GET /own HTTP/1.1\r\nHost: echo\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n";
    assert_eq!(exchange(port, &[own], 1).remove(0), own);

    let injection = sc.stop().unwrap().counters.injection().clone();
    assert_eq!(injection.inject_done, 7, "{injection:?}");
    assert!(injection.inject_skipped_has_context >= 1, "{injection:?}");
    assert!(
        injection.inject_skipped_head_incomplete >= 1,
        "{injection:?}"
    );
    assert!(injection.inject_skipped_pipelined >= 1, "{injection:?}");
    assert_eq!(injection.inject_failed, 0, "{injection:?}");
}

#[test]
fn without_injection_requests_are_byte_identical() {
    require_root();
    let (server, port) = echo_server().unwrap();
    let sc = Scenario::ports(&[port])
        .args(&["--inject-traceparent", "off"])
        .start()
        .unwrap();
    let receiver = sc.receiver();
    let me = std::process::id();
    let plain = get("/off");
    assert_eq!(exchange(port, &[&plain], 1).remove(0), plain);
    let (head, body) = post("/off-post", &vec![b'x'; 300_000]);
    let sent = [head, body].concat();
    assert!(exchange(port, &[&sent], 1).remove(0) == sent);
    let (a, b) = (get("/off-1"), get("/off-2"));
    assert_eq!(
        exchange(port, &[&[a.clone(), b.clone()].concat()], 2),
        vec![a, b]
    );
    // Nothing crossed the wire; both ends are on this node, so the server span still finds
    // the client span by the connection's addresses.
    let client = receiver.one_span("SPAN_KIND_CLIENT", "/off", me);
    assert_eq!(client.attr("tracer.traceparent.injected"), &Value::Null);
    let srv = receiver.one_span("SPAN_KIND_SERVER", "/off", server.pid());
    assert_eq!(
        (srv.trace_id(), srv.parent_id()),
        (client.trace_id(), client.span_id())
    );
    assert_eq!(srv.attr_str("tracer.parent.source"), "address");
    let done = sc.stop().unwrap();
    let log = &done.log;
    assert!(
        log.contains("traceparent injection off (--inject-traceparent off)"),
        "{log}"
    );
    assert!(log_line(log, "final counters").contains("injection: off"));
    assert!(done.counters.injection.is_none(), "{:?}", done.counters);
}

fn sdk_script() -> std::path::PathBuf {
    workspace_root().join("tests/servers/sdk_service.py")
}

/// curl → A (uninstrumented threaded proxy) → B (instrumented with the OpenTelemetry SDK):
/// one trace, with the exact parent chain, and B's own SDK span under A's CLIENT span, which
/// proves the header crossed the wire.
#[test]
fn multi_hop_trace_through_an_sdk_instrumented_service() {
    require_root();
    let receiver = Receiver::start(&[]).unwrap();
    let b_port = free_port();
    let b = python_service(
        "sdk service",
        "sdk_service.py",
        &["server".to_owned(), b_port.to_string()],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.grpc_endpoint())],
    )
    .unwrap();
    let (a, a_port) = proxy(b_port).unwrap();
    // Default mode: curl and A's http.client (with a timeout) use non-blocking sockets.
    let sc = Scenario::ports(&[a_port, b_port])
        .with_receiver(receiver)
        .start()
        .unwrap();
    let receiver = sc.receiver();
    curl(&["-o", "/dev/null", &format!("http://127.0.0.1:{a_port}/hop")]).unwrap();

    let curl_client = receiver.wait_spans(1, WAIT, |s| {
        s.kind() == "SPAN_KIND_CLIENT"
            && s.attr_str("url.path") == "/hop"
            && s.attr_i64("network.peer.port") == a_port as i64
    });
    assert_eq!(curl_client.len(), 1, "{curl_client:#?}");
    let curl_client = &curl_client[0];
    let a_server = receiver.one_span("SPAN_KIND_SERVER", "/hop", a.pid());
    let a_client = receiver.one_span("SPAN_KIND_CLIENT", "/backend/hop", a.pid());
    let b_server = receiver.one_span("SPAN_KIND_SERVER", "/backend/hop", b.pid());
    let sdk = receiver.wait_spans(1, WAIT, |s| s.res("service.name") == "sdk-service");
    assert_eq!(sdk.len(), 1, "{sdk:#?}");
    let sdk = &sdk[0];

    let trace = curl_client.trace_id();
    for s in [&a_server, &a_client, &b_server, sdk] {
        assert_eq!(s.trace_id(), trace, "one trace: {s:#}");
    }
    assert_eq!(curl_client.parent_id(), "");
    assert_eq!(a_server.parent_id(), curl_client.span_id());
    assert_eq!(a_server.attr_str("tracer.parent.source"), "w3c");
    assert_eq!(a_client.parent_id(), a_server.span_id());
    assert_eq!(a_client.attr_str("tracer.parent.source"), "thread");
    assert_eq!(b_server.parent_id(), a_client.span_id());
    assert_eq!(b_server.attr_str("tracer.parent.source"), "w3c");
    assert_eq!(
        sdk.parent_id(),
        a_client.span_id(),
        "the SDK saw our header: {sdk:#}"
    );
    let spans = [curl_client, &a_server, &a_client, &b_server, sdk];
    let with_parent = spans.iter().filter(|s| !s.parent_id().is_empty()).count();
    // Figure for the notes: every span but the trace's root has its parent.
    println!(
        "multi-hop: {with_parent} of {} non-root spans have a parent",
        spans.len() - 1
    );
    sc.stop().unwrap();
}

/// The default mode leaves blocking sockets alone (the kernel's sockmap receive path can fail
/// a blocking recv with EAGAIN): a blocking client's request arrives byte-identical, and the
/// spans still link by address; curl (non-blocking) gets the header.
#[test]
fn default_mode_injects_only_on_non_blocking_sockets() {
    require_root();
    let (server, port) = echo_server().unwrap();
    let sc = Scenario::port(port).unwrap();
    let receiver = sc.receiver();
    let blocking = get("/blocking");
    assert_eq!(exchange(port, &[&blocking], 1).remove(0), blocking);
    let echoed = curl(&[&format!("http://127.0.0.1:{port}/nonblocking")]).unwrap();
    assert_eq!(
        echoed.matches("\r\ntraceparent: 00-").count(),
        1,
        "{echoed}"
    );
    let srv = receiver.one_span("SPAN_KIND_SERVER", "/blocking", server.pid());
    assert_eq!(srv.attr_str("tracer.parent.source"), "address");
    let srv = receiver.one_span("SPAN_KIND_SERVER", "/nonblocking", server.pid());
    assert_eq!(srv.attr_str("tracer.parent.source"), "w3c");
    let done = sc.stop().unwrap();
    assert!(
        done.log
            .contains("traceparent injection on (non-blocking client sockets)"),
        "{}",
        done.log
    );
    let injection = done.counters.injection();
    assert_eq!(injection.inject_done, 1, "{injection:?}");
}

/// An SDK-instrumented client calling an uninstrumented server: the server span continues the
/// SDK's trace, with W3C and with B3 (single and multi-header); nothing is injected on top.
#[test]
fn sdk_client_context_is_continued_by_the_server_span() {
    require_root();
    let (server, port) = test_http_server().unwrap();
    let sc = Scenario::port(port).unwrap();
    let receiver = sc.receiver();
    for (fmt, source) in [("w3c", "w3c"), ("b3", "b3"), ("b3multi", "b3")] {
        let out = Command::new("python3")
            .arg(sdk_script())
            .args(["client", &format!("http://127.0.0.1:{port}/sdk-{fmt}"), fmt])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_endpoint())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let words: Vec<&str> = text.split_whitespace().collect();
        let (trace, span) = (words[1], words[3]);
        let s = receiver.one_span("SPAN_KIND_SERVER", &format!("/sdk-{fmt}"), server.pid());
        assert_eq!((s.trace_id(), s.parent_id()), (trace, span), "{fmt}: {s:#}");
        assert_eq!(s.attr_str("tracer.parent.source"), source);
    }
    let injection = sc.stop().unwrap().counters.injection().clone();
    assert!(injection.inject_skipped_has_context >= 3, "{injection:?}");
    assert_eq!(injection.inject_done, 0, "{injection:?}");
}

/// Two "nodes" on one machine: the client runs in another network namespace and reaches the
/// server over a veth pair; the server span still continues the client's trace.
#[test]
fn trace_links_across_network_namespaces() {
    require_root();
    let ns = Node::create("i", 100);
    let (host, inside) = (ns.host().to_string(), ns.inside().to_string());
    let port = free_port();
    let server = python_service(
        "echo server",
        "echo.py",
        &[port.to_string(), host.clone()],
        &[],
    )
    .unwrap();
    let sc = Scenario::port(port).unwrap();
    let receiver = sc.receiver();
    let out = ns
        .command("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(format!("http://{host}:{port}/across"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let echoed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(echoed.matches("traceparent: 00-").count(), 1, "{echoed}");

    let client = receiver.wait_spans(1, WAIT, |s| {
        s.kind() == "SPAN_KIND_CLIENT" && s.attr_str("url.path") == "/across"
    });
    assert_eq!(client.len(), 1, "{client:#?}");
    let client = &client[0];
    assert_eq!(client.attr_str("network.peer.address"), host);
    let srv = receiver.one_span("SPAN_KIND_SERVER", "/across", server.pid());
    assert_eq!(srv.attr_str("client.address"), inside, "{srv:#}");
    assert_eq!(
        (srv.trace_id(), srv.parent_id()),
        (client.trace_id(), client.span_id())
    );
    assert_eq!(srv.attr_str("tracer.parent.source"), "w3c");
    sc.stop().unwrap();
    drop(ns);
}

/// Injection that cannot attach (a wrong `--cgroup-root`) is reported in one line; the agent
/// traces on, linking without it.
#[test]
fn unusable_cgroup_root_turns_injection_off_and_tracing_goes_on() {
    require_root();
    let (server, port) = echo_server().unwrap();
    let sc = Scenario::ports(&[port])
        .args(&["--cgroup-root", "/nonexistent/cgroup"])
        .start()
        .unwrap();
    let echoed = curl(&[&format!("http://127.0.0.1:{port}/no-root")]).unwrap();
    assert!(!echoed.contains("traceparent"), "{echoed}");
    let srv = sc
        .receiver()
        .one_span("SPAN_KIND_SERVER", "/no-root", server.pid());
    assert_eq!(srv.attr_str("tracer.parent.source"), "address");
    let done = sc.stop().unwrap();
    let log = &done.log;
    let warn = log_line(log, "traceparent injection off:");
    assert!(warn.contains("/nonexistent/cgroup"), "{log}");
    assert!(log_line(log, "final counters").contains("injection: off"));
    assert!(done.counters.injection.is_none(), "{:?}", done.counters);
}
