//! The view's HTTP server on a real socket: what a browser or `tracer top` gets.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::{Duration, Instant},
};

use super::*;
use crate::span::{SpanKind, test_span};

fn server(limits: StoreLimits) -> (UiServer, Arc<RecentStore>) {
    let store = Arc::new(RecentStore::new(limits, test_span().start_unix_ns));
    let args = UiArgs {
        ui_listen: Some("127.0.0.1:0".into()),
        ui_allow_remote: false,
        ui_max_spans: limits.max_spans,
        ui_max_bytes: limits.max_bytes,
        ui_max_new_traces: limits.max_new_traces_per_sec,
    };
    let ui = start(&args, store.clone(), Vec::new()).unwrap().unwrap();
    (ui, store)
}

/// One HTTP/1.1 GET; the status code and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

#[test]
fn malformed_queries_get_400_with_the_reason() {
    let (ui, _) = server(StoreLimits::default());
    for (path, reason) in [
        ("/api/traces?min_duration_ms=abc", "min_duration_ms"),
        ("/api/traces?limit=0", "limit"),
        ("/api/traces?limit=100000", "limit"),
        ("/api/spans?status=broken", "status"),
        ("/api/spans?kind=producer", "kind"),
        ("/api/spans?since=20&until=10", "since is after until"),
        ("/api/spans?colour=red", "unknown parameter \\\"colour\\\""),
        ("/api/routes?window=7m", "window"),
        ("/api/traces/xyz", "32 hexadecimal digits"),
    ] {
        let (status, body) = get(ui.addr, path);
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.starts_with("{\"error\":"), "{path}: {body}");
        assert!(body.contains(reason), "{path}: {body}");
    }
    let (status, body) = get(ui.addr, "/api/traces/0123456789abcdef0123456789abcdef");
    assert_eq!(status, 404, "{body}");
    assert_eq!(get(ui.addr, "/nothing").0, 404);
    let (status, page) = get(ui.addr, "/");
    assert_eq!(status, 200);
    assert!(page.contains("<script src=\"/app.js\">"), "{page}");
    assert_eq!(get(ui.addr, "/app.js").0, 200);
}

#[test]
fn a_trace_is_served_in_tree_order_with_its_critical_path() {
    let (ui, store) = server(StoreLimits::default());
    // Now, so that the windows ending now hold these spans.
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        - 200_000_000;
    // Arrival order is the kernel's: the innermost span finishes first.
    for (id, parent, kind, svc, start, end) in [
        (3u8, Some(2u8), SpanKind::Server, "backend", 20, 80),
        (2, Some(1), SpanKind::Client, "proxy", 15, 85),
        (1, None, SpanKind::Server, "proxy", 0, 100),
    ] {
        let mut s = test_span();
        s.span_id = [id; 8];
        s.parent_span_id = parent.map(|p| [p; 8]);
        s.kind = kind;
        s.start_unix_ns = t0 + start * 1_000_000;
        s.end_unix_ns = t0 + end * 1_000_000;
        s.resource = Arc::new(crate::span::Resource {
            pid: 7,
            attributes: vec![("service.name".into(), svc.into())],
        });
        s.attributes
            .push(("tracer.parent.source", "address".into()));
        store.insert_span(&s);
    }
    let (status, body) = get(ui.addr, &format!("/api/traces/{}", "01".repeat(16)));
    assert_eq!(status, 200, "{body}");
    let t: serde_json::Value = serde_json::from_str(&body).unwrap();
    let spans = t["spans"].as_array().unwrap();
    let order: Vec<(&str, u64, bool)> = spans
        .iter()
        .map(|s| {
            (
                s["span_id"].as_str().unwrap(),
                s["depth"].as_u64().unwrap(),
                s["critical"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            ("0101010101010101", 0, true),
            ("0202020202020202", 1, true),
            ("0303030303030303", 2, true)
        ]
    );
    assert_eq!(t["duration_ms"], 100.0);
    assert_eq!(spans[2]["parent_source"], "address");
    assert_eq!(
        spans[2]["critical_sections"],
        serde_json::json!([[20.0, 80.0]])
    );

    // The same spans per service, and the proxy → backend edge they make.
    let (status, body) = get(ui.addr, "/api/services");
    assert_eq!(status, 200, "{body}");
    let services: serde_json::Value = serde_json::from_str(&body).unwrap();
    let row = |name: &str| {
        let s = services
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["service"] == name)
            .unwrap_or_else(|| panic!("{name}: {services}"));
        (
            s["routes"].clone(),
            s["server_requests"].clone(),
            s["client_requests"].clone(),
        )
    };
    // Two rows for the proxy: its server route and its client route.
    assert_eq!(row("proxy"), (2.into(), 1.into(), 1.into()));
    assert_eq!(row("backend"), (1.into(), 1.into(), 0.into()));
    let (_, body) = get(ui.addr, "/api/service-map");
    let map: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(map["source"], "spans", "{map}");
    assert_eq!(map["edges"][0]["client"], "proxy", "{map}");
    assert_eq!(map["edges"][0]["server"], "backend", "{map}");
    assert_eq!(map["edges"][0]["count"], 1, "{map}");
}

#[test]
fn a_live_client_that_does_not_read_is_dropped_and_the_writer_never_waits() {
    let (ui, store) = server(StoreLimits {
        max_spans: 1000,
        // Every span to the live feed.
        max_new_traces_per_sec: 0,
        ..StoreLimits::default()
    });
    let mut conn = TcpStream::connect(ui.addr).unwrap();
    write!(conn, "GET /api/stream HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut head = [0u8; 64];
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = conn.read(&mut head).unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &head[..n]);
    // Subscribed once the handler ran; then never read again.
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.stats().live_clients == 0 {
        assert!(Instant::now() < deadline, "never subscribed");
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    let mut s = test_span();
    s.attributes.push(("url.path", "/x".repeat(200).into()));
    // Far more than the queue and the socket buffers hold.
    for i in 0..200_000u32 {
        s.trace_id[..4].copy_from_slice(&i.to_le_bytes());
        store.insert_span(&s);
        if store.stats().live_clients_dropped > 0 {
            break;
        }
    }
    let st = store.stats();
    assert_eq!(st.live_clients_dropped, 1, "{st:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
    drop(conn);
    ui.stop();
}
