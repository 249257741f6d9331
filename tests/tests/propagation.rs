//! Privileged end-to-end: trace context propagation without injection. Incoming W3C and B3
//! headers make the SERVER span the caller's child; a CLIENT request a thread sends while
//! serving a request becomes that SERVER span's child; a request whose sender is on this node
//! (and traced) makes the SERVER span the child of the sender's CLIENT span
//! (`tracer.parent.source`: w3c, b3, thread, address, none).
use std::time::Duration;

use serde_json::Value;
use tracer_tests::*;

const WAIT: Duration = Duration::from_secs(20);
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER: &str = "00f067aa0ba902b7";

/// curl's CLIENT span for `path` to `port`.
fn curl_span(r: &Receiver, port: u16, path: &str) -> Value {
    let spans = r.wait_spans(1, WAIT, |s| {
        s.kind() == "SPAN_KIND_CLIENT"
            && s.attr_i64("network.peer.port") == port as i64
            && s.attr_str("url.path") == path
    });
    assert_eq!(spans.len(), 1, "curl {path}: {spans:#?}");
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

/// Injection off: these tests are about what the agent links without touching requests.
const NO_INJECTION: &[&str] = &["--inject-traceparent", "off"];

#[test]
fn incoming_w3c_context_is_adopted_and_malformed_ignored() {
    require_root();
    let (server, port) = test_http_server().unwrap();
    let sc = Scenario::ports(&[port]).args(NO_INJECTION).start().unwrap();
    let receiver = sc.receiver();
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

    let s = receiver.one_span("SPAN_KIND_SERVER", "/sampled", server.pid());
    assert_eq!(trace_id(&s), TRACE, "{s:#}");
    assert_eq!(parent(&s), CALLER);
    assert_eq!(
        s["trace_state"].as_str(),
        Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
    );
    assert_eq!(flags(&s) & 0xff, 1);
    assert_eq!(s.attr_str("tracer.parent.source"), "w3c");

    let s = receiver.one_span("SPAN_KIND_SERVER", "/unsampled", server.pid());
    assert_eq!((trace_id(&s), parent(&s)), (TRACE, CALLER));
    assert_eq!(flags(&s) & 0xff, 0);
    assert_eq!(s.attr_str("tracer.parent.source"), "w3c");

    // Malformed context is ignored as a whole: the span joins curl's own (new) trace, found
    // on this node by the connection's addresses, never the header's trace.
    for path in ["/upper", "/zero", "/short", "/plain"] {
        let s = receiver.one_span("SPAN_KIND_SERVER", path, server.pid());
        let c = curl_span(receiver, port, path);
        assert_ne!(trace_id(&s).to_lowercase(), TRACE, "{path}: {s:#}");
        assert_eq!(trace_id(&s).len(), 32);
        assert_eq!(
            (trace_id(&s), parent(&s)),
            (trace_id(&c), span_id(&c)),
            "{path}: {s:#}"
        );
        assert_eq!(s["trace_state"].as_str().unwrap_or(""), "");
        assert_eq!(s.attr_str("tracer.parent.source"), "address", "{path}");
    }
    sc.stop().unwrap();
}

#[test]
fn incoming_b3_context_is_adopted() {
    require_root();
    let (server, port) = test_http_server().unwrap();
    let sc = Scenario::ports(&[port]).args(NO_INJECTION).start().unwrap();
    let receiver = sc.receiver();
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

    let s = receiver.one_span("SPAN_KIND_SERVER", "/single", server.pid());
    assert_eq!((trace_id(&s), parent(&s)), (TRACE, CALLER), "{s:#}");
    assert_eq!(flags(&s) & 0xff, 1);
    assert_eq!(s.attr_str("tracer.parent.source"), "b3");

    let s = receiver.one_span("SPAN_KIND_SERVER", "/multi", server.pid());
    assert_eq!(trace_id(&s), "0000000000000000a3ce929d0e0e4736", "{s:#}");
    assert_eq!(parent(&s), CALLER);
    assert_eq!(flags(&s) & 0xff, 0);
    assert_eq!(s.attr_str("tracer.parent.source"), "b3");

    // Sampling only: no caller span in the header; curl's CLIENT span (same node) is the parent.
    let s = receiver.one_span("SPAN_KIND_SERVER", "/debug-only", server.pid());
    let c = curl_span(receiver, port, "/debug-only");
    assert_eq!(parent(&s), span_id(&c));
    assert_eq!(flags(&s) & 0xff, 1);
    assert_eq!(s.attr_str("tracer.parent.source"), "address");
    sc.stop().unwrap();
}

/// curl → proxy A (threaded; its handler thread calls B) → server B.
#[test]
fn client_sent_while_serving_is_a_child_of_the_server_span() {
    require_root();
    let (backend, backend_port) = test_http_server().unwrap();
    let (proxy, port) = proxy(backend_port).unwrap();
    let sc = Scenario::ports(&[port, backend_port])
        .args(NO_INJECTION)
        .start()
        .unwrap();
    let receiver = sc.receiver();
    let base = format!("http://127.0.0.1:{port}");
    curl(&["-o", "/dev/null", &format!("{base}/plain")]).unwrap();
    let tp = format!("traceparent: 00-{TRACE}-{CALLER}-01");
    curl(&["-o", "/dev/null", "-H", &tp, &format!("{base}/traced")]).unwrap();

    for (path, incoming) in [("/plain", false), ("/traced", true)] {
        let a_server = receiver.one_span("SPAN_KIND_SERVER", path, proxy.pid());
        let a_client =
            receiver.one_span("SPAN_KIND_CLIENT", &format!("/backend{path}"), proxy.pid());
        let b_server = receiver.one_span(
            "SPAN_KIND_SERVER",
            &format!("/backend{path}"),
            backend.pid(),
        );
        if incoming {
            assert_eq!((trace_id(&a_server), parent(&a_server)), (TRACE, CALLER));
            assert_eq!(a_server.attr_str("tracer.parent.source"), "w3c");
        } else {
            // No header: curl's CLIENT span on this node is the parent.
            let c = curl_span(receiver, port, path);
            assert_eq!(parent(&a_server), span_id(&c), "{a_server:#}");
            assert_eq!(trace_id(&a_server), trace_id(&c));
            assert_eq!(a_server.attr_str("tracer.parent.source"), "address");
        }
        // In-process: A's client span is the child of A's server span.
        assert_eq!(trace_id(&a_client), trace_id(&a_server), "{a_client:#}");
        assert_eq!(parent(&a_client), span_id(&a_server));
        assert_eq!(a_client.attr_str("tracer.parent.source"), "thread");
        assert_eq!(flags(&a_client) & 0xff, 1);
        // No header crosses the wire (no injection): B's server span finds A's CLIENT span
        // on this node by the connection's addresses.
        assert_eq!(parent(&b_server), span_id(&a_client), "{b_server:#}");
        assert_eq!(trace_id(&b_server), trace_id(&a_server));
        assert_eq!(b_server.attr_str("tracer.parent.source"), "address");
    }
    // curl's own CLIENT spans: roots (curl sent a header for /traced: it carries its context).
    let curl_plain = curl_span(receiver, port, "/plain");
    assert_eq!(parent(&curl_plain), "");
    assert_eq!(curl_plain.attr_str("tracer.parent.source"), "none");
    let curl_traced = curl_span(receiver, port, "/traced");
    assert_eq!(trace_id(&curl_traced), TRACE);
    assert_eq!(span_id(&curl_traced), CALLER);
    assert_eq!(curl_traced.attr_str("tracer.parent.source"), "w3c");
    sc.stop().unwrap();
    drop(proxy);
}
