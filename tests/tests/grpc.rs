//! Privileged end-to-end: HTTP/2 (h2c) and gRPC spans from real grpcio peers: a Python grpcio
//! server and client on one channel (many calls on one connection, a call failing NOT_FOUND,
//! a server-streaming call). Span names `{package.Service}/{Method}`, the RPC attributes, the
//! status rules of the semantic conventions, and same-node parents. Plain HTTP/2: curl with
//! prior knowledge against nginx h2c.
use std::{process::Command, time::Duration};

use serde_json::Value;
use tracer_tests::*;

const WAIT: Duration = Duration::from_secs(20);

fn peer() -> std::path::PathBuf {
    workspace_root().join("tests/servers/grpc_peer.py")
}

/// "type id size" (uncompressed) of a span's `rpc.message` events, each checked to lie within
/// the span.
fn message_events(s: &Value) -> Vec<String> {
    s.events()
        .into_iter()
        .map(|e| {
            assert_eq!(e["name"], "rpc.message", "{s:#}");
            let t = e["time_unix_nano"].as_u64().unwrap();
            assert!(s.start_ns() <= t && t <= s.end_ns(), "{s:#}");
            format!(
                "{} {} {}",
                e.attr_str("rpc.message.type"),
                e.attr_i64("rpc.message.id"),
                e.attr_i64("rpc.message.uncompressed_size"),
            )
        })
        .collect()
}

/// The grpcio peer's server on `port`, ready.
fn grpcio_server(port: u16) -> Proc {
    let server = Proc::spawn(
        "grpc server",
        Command::new("python3")
            .arg(peer())
            .args(["server", &port.to_string()]),
    )
    .unwrap();
    server.wait_line("READY", Duration::from_secs(20)).unwrap();
    server
}

fn spans_named(r: &Receiver, kind: &str, name: &str, n: usize) -> Vec<Value> {
    let spans = r.wait_spans(n, WAIT, |s| s.kind() == kind && s.name() == name);
    assert_eq!(spans.len(), n, "{kind} {name}: {spans:#?}");
    spans
}

#[test]
fn grpc_calls_become_rpc_spans() {
    require_root();
    let port = free_port();
    let _server = grpcio_server(port);
    let sc = Scenario::port(port).unwrap();
    let receiver = sc.receiver();
    let out = Command::new("python3")
        .arg(peer())
        .args(["client", &port.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("DONE"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    for kind in ["SPAN_KIND_CLIENT", "SPAN_KIND_SERVER"] {
        for s in spans_named(receiver, kind, "demo.Greeter/SayHello", 3) {
            assert_eq!(s.attr_str("rpc.system"), "grpc", "{s:#}");
            assert_eq!(s.attr_str("rpc.service"), "demo.Greeter");
            assert_eq!(s.attr_str("rpc.method"), "SayHello");
            // "n<i>" → "hello n<i>", as protobuf: 2 + 2 and 2 + 8 bytes.
            let want = if kind == "SPAN_KIND_CLIENT" {
                ["SENT 1 4", "RECEIVED 1 10"]
            } else {
                ["RECEIVED 1 4", "SENT 1 10"]
            };
            assert_eq!(message_events(&s), want, "{s:#}");
            assert_eq!(s.attr_i64("rpc.grpc.status_code"), 0);
            assert_eq!(s.attr_str("network.protocol.version"), "2");
            assert_eq!(s.attr_i64("server.port"), port as i64);
            assert_eq!(s.attr_i64("http.response.status_code"), 200);
            assert_ne!(s.status_code(), "STATUS_CODE_ERROR");
            assert!(s.end_ns() >= s.start_ns());
        }
        let count = spans_named(receiver, kind, "demo.Greeter/Count", 1);
        assert_eq!(
            count[0].attr_i64("rpc.grpc.status_code"),
            0,
            "{:#}",
            count[0]
        );
        // Message sizes: `rpc.message` events from the length prefixes. Count sends an empty
        // request (0 bytes) and gets 3 replies "0", "1", "2" (3 bytes each: tag, length, digit).
        let (ours, theirs) = if kind == "SPAN_KIND_CLIENT" {
            ("SENT", "RECEIVED")
        } else {
            ("RECEIVED", "SENT")
        };
        let want = [
            format!("{ours} 1 0"),
            format!("{theirs} 1 3"),
            format!("{theirs} 2 3"),
            format!("{theirs} 3 3"),
        ];
        assert_eq!(message_events(&count[0]), want, "{:#}", count[0]);
    }
    // NOT_FOUND: an error for the caller, not a server failure.
    let client = &spans_named(receiver, "SPAN_KIND_CLIENT", "demo.Greeter/Missing", 1)[0];
    assert_eq!(client.attr_i64("rpc.grpc.status_code"), 5);
    assert_eq!(client.status_code(), "STATUS_CODE_ERROR", "{client:#}");
    assert_eq!(client.attr_str("error.type"), "5");
    let srv = &spans_named(receiver, "SPAN_KIND_SERVER", "demo.Greeter/Missing", 1)[0];
    assert_eq!(srv.attr_i64("rpc.grpc.status_code"), 5);
    assert_ne!(srv.status_code(), "STATUS_CODE_ERROR", "{srv:#}");
    // Same node: each server span is the child of the call's client span.
    assert_eq!(srv.parent_id(), client.span_id(), "{srv:#}");
    assert_eq!(srv.trace_id(), client.trace_id());
    assert_eq!(srv.attr_str("tracer.parent.source"), "address");

    let counters = sc.stop().unwrap().counters;
    assert_eq!(
        counters.injection().inject_done,
        0,
        "HTTP/2 is never injected into: {counters:?}"
    );
}

/// Plain HTTP/2 (not gRPC): curl with prior knowledge against nginx h2c. The HTTP conventions
/// with `network.protocol.version=2`, both sides, linked; injection never touches the preface.
#[test]
fn plain_http2_follows_the_http_conventions() {
    require_root();
    let dir = TempDir::new("h2c");
    let port = free_port();
    let sc = Scenario::port(port).unwrap();
    let nginx = nginx(dir.path(), port, &format!("127.0.0.1:{port} http2"), "");
    let base = format!("http://127.0.0.1:{port}");
    let body = curl(&["--http2-prior-knowledge", &format!("{base}/hello")]).unwrap();
    assert_eq!(body, "ok\n");
    curl(&[
        "--http2-prior-knowledge",
        "-o",
        "/dev/null",
        &format!("{base}/missing"),
    ])
    .unwrap();

    for (path, status) in [("/hello", 200), ("/missing", 404)] {
        let pick = |kind: &'static str| {
            let s = sc.wait_spans(1, WAIT, |s| {
                s.kind() == kind && s.attr_str("url.path") == path
            });
            assert_eq!(s.len(), 1, "{kind} {path}: {s:#?}");
            s.into_iter().next().unwrap()
        };
        let (client, server) = (pick("SPAN_KIND_CLIENT"), pick("SPAN_KIND_SERVER"));
        for s in [&client, &server] {
            assert_eq!(s.attr_str("http.request.method"), "GET", "{s:#}");
            assert_eq!(s.attr_i64("http.response.status_code"), status);
            assert_eq!(s.attr_str("network.protocol.version"), "2");
            assert_eq!(s.attr("rpc.system"), &Value::Null);
        }
        assert_eq!(client.attr_str("url.full"), format!("{base}{path}"));
        // A 404 is a client error only.
        assert_eq!(client.status_code() == "STATUS_CODE_ERROR", status == 404);
        assert_ne!(server.status_code(), "STATUS_CODE_ERROR");
        assert_eq!(server.parent_id(), client.span_id(), "{server:#}");
    }
    let counters = sc.stop().unwrap().counters;
    assert_eq!(counters.injection().inject_done, 0, "{counters:?}");
    drop(nginx);
}

/// A gRPC connection open before the agent started: no preface to classify it by, and HPACK
/// tables the agent never saw. The kernel takes it for HTTP/2 from a whole HEADERS frame (on
/// connections whose accept or connect it did not see); the agent decodes what it can: header
/// fields that reference the unknown part of the tables are left out, never guessed, and the
/// spans are marked `tracer.incomplete`. New literal fields (a method not called before) are
/// decoded in full.
#[test]
fn grpc_connection_open_before_the_agent() {
    require_root();
    let port = free_port();
    let _server = grpcio_server(port);
    let client = Proc::spawn(
        "grpc session",
        Command::new("python3")
            .arg(peer())
            .args(["session", &port.to_string()]),
    )
    .unwrap();
    client.wait_line("PAUSED", Duration::from_secs(20)).unwrap();
    let sc = Scenario::port(port).unwrap();
    client.signal(libc::SIGUSR1);
    client.wait_line("DONE", WAIT).unwrap();

    for kind in ["SPAN_KIND_CLIENT", "SPAN_KIND_SERVER"] {
        let all = sc.wait_spans(4, WAIT, |s| s.kind() == kind);
        assert_eq!(all.len(), 4, "{all:#?}");
        let with_path = |p: &str| -> Vec<&Value> {
            all.iter().filter(|s| s.attr_str("url.path") == p).collect()
        };
        // Missing: its first call, so its `:path` is a new literal; its trailers-only
        // response's `grpc-status: 5` too, which tells gRPC even though the content type
        // references an entry from before the join.
        let missing = with_path("/demo.Greeter/Missing");
        assert_eq!(missing.len(), 1, "{all:#?}");
        assert_eq!(
            missing[0].name(),
            "demo.Greeter/Missing",
            "{:#}",
            missing[0]
        );
        assert_eq!(missing[0].attr_i64("rpc.grpc.status_code"), 5);
        // Count: path known, nothing that says gRPC: an HTTP/2 span, no guess.
        let count = with_path("/demo.Greeter/Count");
        assert_eq!(count.len(), 1, "{all:#?}");
        assert_eq!(count[0].attr_i64("http.response.status_code"), 200);
        // SayHello: its `:path` was indexed before the agent started: unknown, left out.
        let hello = with_path("");
        assert_eq!(hello.len(), 2, "{all:#?}");
        for s in &hello {
            assert_eq!(s.name(), "POST", "{s:#}");
            assert_eq!(s.attr("http.route"), &Value::Null, "{s:#}");
        }
        for s in &all {
            // Marked: decoded with tables the agent never fully saw.
            assert_eq!(s.attr("tracer.incomplete"), &Value::Bool(true), "{s:#}");
            assert_eq!(s.attr_str("network.protocol.version"), "2");
            assert_eq!(s.attr_str("http.request.method"), "POST");
            assert_eq!(s.attr_i64("server.port"), port as i64);
        }
        if kind == "SPAN_KIND_SERVER" {
            // Still one trace per call, linked by address.
            for s in &all {
                assert_eq!(s.attr_str("tracer.parent.source"), "address", "{s:#}");
                assert_ne!(s.parent_id(), "");
            }
        }
    }
    let counters = sc.stop().unwrap().counters;
    assert_eq!(counters.spans, 8, "{counters:?}");
}
