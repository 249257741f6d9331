//! Privileged end-to-end: trace context propagation. Incoming W3C and B3 headers make the
//! SERVER span the caller's child; a CLIENT request a thread sends while serving a request
//! becomes that SERVER span's child (`tracer.parent.source`: w3c, b3, thread, none).
use std::{process::Command, time::Duration};

use serde_json::Value;
use tracer_tests::*;

const WAIT: Duration = Duration::from_secs(20);
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER: &str = "00f067aa0ba902b7";

fn server_span(r: &Receiver, server: &Proc, path: &str) -> Value {
    let pid = server.pid() as i64;
    let spans = r.wait_spans(1, WAIT, |s| {
        s.kind() == "SPAN_KIND_SERVER"
            && s.res("process.pid").as_i64() == Some(pid)
            && s.attr_str("url.path") == path
    });
    assert_eq!(spans.len(), 1, "{path}: {spans:#?}");
    spans.into_iter().next().unwrap()
}

fn client_span(r: &Receiver, client_pid: u32, path: &str) -> Value {
    let spans = r.wait_spans(1, WAIT, |s| {
        s.kind() == "SPAN_KIND_CLIENT"
            && s.res("process.pid").as_i64() == Some(client_pid as i64)
            && s.attr_str("url.path") == path
    });
    assert_eq!(spans.len(), 1, "{path}: {spans:#?}");
    spans.into_iter().next().unwrap()
}

fn trace_id(s: &Value) -> &str {
    s["trace_id"].as_str().unwrap_or("")
}
fn span_id(s: &Value) -> &str {
    s["span_id"].as_str().unwrap_or("")
}
fn parent(s: &Value) -> &str {
    s["parent_span_id"].as_str().unwrap_or("")
}
fn flags(s: &Value) -> i64 {
    s["flags"].as_i64().unwrap_or(-1)
}

fn agent_for(receiver: &Receiver, ports: &[u16]) -> Agent {
    let ports = ports
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",");
    Agent::start(
        &["--port", &ports],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.grpc_endpoint()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .unwrap()
}

#[test]
fn incoming_w3c_context_is_adopted_and_malformed_ignored() {
    let receiver = Receiver::start(&[]).unwrap();
    let (server, port) = test_http_server().unwrap();
    let agent = agent_for(&receiver, &[port]);
    let base = format!("http://127.0.0.1:{port}");
    let h = |v: String| format!("traceparent: {v}");
    let get = |path: &str, headers: &[String]| {
        let mut args = vec!["-o".to_owned(), "/dev/null".to_owned()];
        for hd in headers {
            args.push("-H".into());
            args.push(hd.clone());
        }
        args.push(format!("{base}{path}"));
        curl(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    };
    get(
        "/sampled",
        &[
            h(format!("00-{TRACE}-{CALLER}-01")),
            "tracestate: rojo=00f067aa0ba902b7,congo=t61rcWkgMzE".into(),
        ],
    );
    get("/unsampled", &[h(format!("00-{TRACE}-{CALLER}-00"))]);
    get(
        "/upper",
        &[h(format!("00-{}-{CALLER}-01", TRACE.to_uppercase()))],
    );
    get("/zero", &[h(format!("00-{}-{CALLER}-01", "0".repeat(32)))]);
    get("/short", &[h(format!("00-{TRACE}-{}-01", &CALLER[1..]))]);
    get("/plain", &[]);

    let s = server_span(&receiver, &server, "/sampled");
    assert_eq!(trace_id(&s), TRACE, "{s:#}");
    assert_eq!(parent(&s), CALLER);
    assert_eq!(
        s["trace_state"].as_str(),
        Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
    );
    assert_eq!(flags(&s) & 0xff, 1);
    assert_eq!(s.attr_str("tracer.parent.source"), "w3c");

    let s = server_span(&receiver, &server, "/unsampled");
    assert_eq!((trace_id(&s), parent(&s)), (TRACE, CALLER));
    assert_eq!(flags(&s) & 0xff, 0);
    assert_eq!(s.attr_str("tracer.parent.source"), "w3c");

    for path in ["/upper", "/zero", "/short", "/plain"] {
        let s = server_span(&receiver, &server, path);
        assert_ne!(trace_id(&s).to_lowercase(), TRACE, "{path}: {s:#}");
        assert_eq!(trace_id(&s).len(), 32);
        assert_eq!(parent(&s), "", "{path}: {s:#}");
        assert_eq!(s["trace_state"].as_str().unwrap_or(""), "");
        assert_eq!(s.attr_str("tracer.parent.source"), "none", "{path}");
    }
    agent.stop().unwrap();
}

#[test]
fn incoming_b3_context_is_adopted() {
    let receiver = Receiver::start(&[]).unwrap();
    let (server, port) = test_http_server().unwrap();
    let agent = agent_for(&receiver, &[port]);
    let base = format!("http://127.0.0.1:{port}");
    let single = format!("b3: {TRACE}-{CALLER}-1-05e3ac9a4f6e3b90");
    curl(&["-o", "/dev/null", "-H", &single, &format!("{base}/single")]).unwrap();
    curl(&[
        "-o",
        "/dev/null",
        "-H",
        "X-B3-TraceId: a3ce929d0e0e4736",
        "-H",
        &format!("X-B3-SpanId: {CALLER}"),
        "-H",
        "X-B3-Sampled: 0",
        &format!("{base}/multi"),
    ])
    .unwrap();
    curl(&[
        "-o",
        "/dev/null",
        "-H",
        "b3: d",
        &format!("{base}/debug-only"),
    ])
    .unwrap();

    let s = server_span(&receiver, &server, "/single");
    assert_eq!((trace_id(&s), parent(&s)), (TRACE, CALLER), "{s:#}");
    assert_eq!(flags(&s) & 0xff, 1);
    assert_eq!(s.attr_str("tracer.parent.source"), "b3");

    let s = server_span(&receiver, &server, "/multi");
    assert_eq!(trace_id(&s), "0000000000000000a3ce929d0e0e4736", "{s:#}");
    assert_eq!(parent(&s), CALLER);
    assert_eq!(flags(&s) & 0xff, 0);
    assert_eq!(s.attr_str("tracer.parent.source"), "b3");

    // Sampling only: a new sampled trace, no parent.
    let s = server_span(&receiver, &server, "/debug-only");
    assert_eq!(parent(&s), "");
    assert_eq!(flags(&s) & 0xff, 1);
    assert_eq!(s.attr_str("tracer.parent.source"), "none");
    agent.stop().unwrap();
}

/// curl → proxy A (threaded; its handler thread calls B) → server B.
#[test]
fn client_sent_while_serving_is_a_child_of_the_server_span() {
    let receiver = Receiver::start(&[]).unwrap();
    let (backend, backend_port) = test_http_server().unwrap();
    let port = free_port();
    let script = workspace_root().join("tests/servers/proxy.py");
    let proxy = Proc::spawn(
        "proxy",
        Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(backend_port.to_string()),
    )
    .unwrap();
    proxy.wait_line("READY", Duration::from_secs(10)).unwrap();
    let agent = agent_for(&receiver, &[port, backend_port]);
    let base = format!("http://127.0.0.1:{port}");
    curl(&["-o", "/dev/null", &format!("{base}/plain")]).unwrap();
    let tp = format!("traceparent: 00-{TRACE}-{CALLER}-01");
    curl(&["-o", "/dev/null", "-H", &tp, &format!("{base}/traced")]).unwrap();

    for (path, incoming) in [("/plain", false), ("/traced", true)] {
        let a_server = server_span(&receiver, &proxy, path);
        let a_client = client_span(&receiver, proxy.pid(), &format!("/backend{path}"));
        let b_server = server_span(&receiver, &backend, &format!("/backend{path}"));
        if incoming {
            assert_eq!((trace_id(&a_server), parent(&a_server)), (TRACE, CALLER));
            assert_eq!(a_server.attr_str("tracer.parent.source"), "w3c");
        } else {
            // No injection by curl: A's server span is a root.
            assert_eq!(parent(&a_server), "", "{a_server:#}");
            assert_eq!(a_server.attr_str("tracer.parent.source"), "none");
        }
        // In-process: A's client span is the child of A's server span.
        assert_eq!(trace_id(&a_client), trace_id(&a_server), "{a_client:#}");
        assert_eq!(parent(&a_client), span_id(&a_server));
        assert_eq!(a_client.attr_str("tracer.parent.source"), "thread");
        assert_eq!(flags(&a_client) & 0xff, 1);
        // Nothing injects headers yet: B's server span starts its own trace.
        assert_eq!(parent(&b_server), "", "{b_server:#}");
        assert_eq!(b_server.attr_str("tracer.parent.source"), "none");
        assert_ne!(trace_id(&b_server), trace_id(&a_server));
    }
    // curl's own CLIENT spans: roots (curl sent a header for /traced: it carries its context).
    let curl_plain = receiver.wait_spans(1, WAIT, |s| {
        s.kind() == "SPAN_KIND_CLIENT"
            && s.attr_i64("network.peer.port") == port as i64
            && s.attr_str("url.path") == "/plain"
    });
    assert_eq!(curl_plain.len(), 1);
    assert_eq!(parent(&curl_plain[0]), "");
    assert_eq!(curl_plain[0].attr_str("tracer.parent.source"), "none");
    let curl_traced = receiver.wait_spans(1, WAIT, |s| {
        s.kind() == "SPAN_KIND_CLIENT"
            && s.attr_i64("network.peer.port") == port as i64
            && s.attr_str("url.path") == "/traced"
    });
    assert_eq!(curl_traced.len(), 1);
    assert_eq!(trace_id(&curl_traced[0]), TRACE);
    assert_eq!(span_id(&curl_traced[0]), CALLER);
    assert_eq!(curl_traced[0].attr_str("tracer.parent.source"), "w3c");
    agent.stop().unwrap();
    drop(proxy);
}
