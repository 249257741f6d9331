//! The stage on recorded spans and span trees: what a reader collects.
use std::sync::Arc;

use super::*;
use crate::metric::{HistogramPoint, MetricData, MetricFamily, NumberPoint};
use crate::span::{AttrValue, Resource, SpanKind, StatusCode, test_span};

const T0: u64 = 1_700_000_000_000_000_000;
const MS: u64 = 1_000_000;

fn resource(service: &str) -> Arc<Resource> {
    Arc::new(Resource {
        pid: 1,
        attributes: vec![("service.name".into(), service.into())],
    })
}

/// A span of `service` from `start_ms` to `end_ms` after T0, id `id`, parent `parent`.
fn span(service: &Arc<Resource>, kind: SpanKind, id: u8, parent: Option<u8>) -> Span {
    let mut s = test_span();
    s.kind = kind;
    s.span_id = [id; 8];
    s.parent_span_id = parent.map(|p| [p; 8]);
    s.resource = service.clone();
    s
}

fn at(mut s: Span, start_ms: u64, end_ms: u64) -> Span {
    s.start_unix_ns = T0 + start_ms * MS;
    s.end_unix_ns = T0 + end_ms * MS;
    s
}

fn with(mut s: Span, attrs: &[(&'static str, AttrValue)]) -> Span {
    s.attributes.extend(attrs.iter().cloned());
    s
}

fn http_server(service: &Arc<Resource>, id: u8, route: &str, status: i64) -> Span {
    with(
        span(service, SpanKind::Server, id, None),
        &[
            ("http.request.method", "GET".into()),
            ("url.scheme", "http".into()),
            ("url.path", route.into()),
            ("http.route", route.into()),
            ("network.protocol.version", "1.1".into()),
            ("http.response.status_code", status.into()),
            ("tracer.parent.source", "none".into()),
        ],
    )
}

fn http_client(service: &Arc<Resource>, id: u8, parent: Option<u8>, route: &str) -> Span {
    with(
        span(service, SpanKind::Client, id, parent),
        &[
            ("http.request.method", "GET".into()),
            ("url.scheme", "http".into()),
            ("http.route", route.into()),
            ("server.address", "backend".into()),
            ("server.port", 8080.into()),
            ("network.protocol.version", "1.1".into()),
            ("http.response.status_code", 200.into()),
            ("tracer.parent.source", "thread".into()),
        ],
    )
}

fn failed(mut s: Span, status: i64) -> Span {
    s.status = StatusCode::Error;
    for (k, v) in &mut s.attributes {
        if *k == "http.response.status_code" {
            *v = status.into();
        }
    }
    s.attributes.push(("error.type", status.to_string().into()));
    s
}

fn stage() -> SpanMetrics {
    SpanMetrics::new(&MetricsOptions::default())
}

fn collect(m: &SpanMetrics) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    m.source().collect(&mut out);
    out
}

fn family<'a>(families: &'a [MetricFamily], name: &str) -> &'a MetricFamily {
    families
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no family {name}"))
}

fn histograms<'a>(families: &'a [MetricFamily], name: &str) -> &'a [HistogramPoint] {
    match &family(families, name).data {
        MetricData::Histogram { points, .. } => points,
        other => panic!("{name} is not a histogram: {other:?}"),
    }
}

fn counters<'a>(families: &'a [MetricFamily], name: &str) -> &'a [NumberPoint] {
    match &family(families, name).data {
        MetricData::Counter(points) => points,
        other => panic!("{name} is not a counter: {other:?}"),
    }
}

fn label<'a>(labels: &'a [(&'static str, String)], key: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.as_str())
}

/// The point whose labels include every `(key, value)` of `want`.
fn point<'a, P>(
    points: &'a [P],
    labels: impl Fn(&P) -> &[(&'static str, String)],
    want: &[(&str, &str)],
) -> &'a P {
    let found: Vec<_> = points
        .iter()
        .filter(|p| want.iter().all(|(k, v)| label(labels(p), k) == Some(*v)))
        .collect();
    assert_eq!(found.len(), 1, "points matching {want:?}");
    found[0]
}

fn hist<'a>(points: &'a [HistogramPoint], want: &[(&str, &str)]) -> &'a HistogramPoint {
    point(points, |p| &p.labels, want)
}

fn count(points: &[NumberPoint], want: &[(&str, &str)]) -> u64 {
    point(points, |p| &p.labels, want).value
}

#[test]
fn http_server_durations_by_route_and_status_with_exact_bucket_bounds() {
    let svc = resource("shop");
    let mut m = stage();
    // Exactly on a bound (5 ms, 10 ms) counts in that bound's bucket; just above in the next.
    for (id, ms, status) in [(1, 5, 200), (2, 10, 200), (3, 11, 200), (4, 2_000, 500)] {
        let mut s = at(http_server(&svc, id, "/cart", status), 0, ms);
        if status == 500 {
            s = failed(s, 500);
        }
        m.on_span(&s);
    }
    m.on_span(&at(http_server(&svc, 5, "/items/{id}", 200), 0, 20_000));
    let f = collect(&m);
    assert_eq!(family(&f, "http.server.request.duration").unit, "s");
    let points = histograms(&f, "http.server.request.duration");
    assert_eq!(points.len(), 3);
    let ok = hist(
        points,
        &[
            ("http.route", "/cart"),
            ("http.response.status_code", "200"),
        ],
    );
    assert_eq!(ok.identity, vec![("service.name", "shop".to_owned())]);
    assert_eq!(ok.count, 3);
    assert!((ok.sum - 0.026).abs() < 1e-9, "{}", ok.sum);
    let mut want = vec![0; 15];
    want[0] = 1; // ≤ 0.005
    want[1] = 1; // (0.005, 0.01]
    want[2] = 1; // (0.01, 0.025]
    assert_eq!(ok.bucket_counts, want);
    assert_eq!(label(&ok.labels, "http.request.method"), Some("GET"));
    assert_eq!(label(&ok.labels, "url.scheme"), Some("http"));
    assert_eq!(label(&ok.labels, "network.protocol.version"), Some("1.1"));
    assert_eq!(label(&ok.labels, "error.type"), None);
    assert_eq!(label(&ok.labels, "url.path"), None);
    let err = hist(points, &[("http.response.status_code", "500")]);
    assert_eq!(label(&err.labels, "error.type"), Some("500"));
    assert_eq!(err.bucket_counts[10], 1); // (1, 2.5]
    let slow = hist(points, &[("http.route", "/items/{id}")]);
    assert_eq!(slow.bucket_counts[14], 1); // above 10 s
    // Exemplars: one per bucket, the span that landed there.
    assert_eq!(ok.exemplars.len(), 3);
    let ex = ok.exemplars.iter().find(|e| e.value == 0.01).unwrap();
    assert_eq!(ex.span_id, [2; 8]);
    assert_eq!(ex.trace_id, [1; 16]);
    assert_eq!(ex.time_unix_ns, T0 + 10 * MS);
    // Nothing leaked into the client or RPC histograms.
    assert!(histograms(&f, "http.client.request.duration").is_empty());
    assert!(histograms(&f, "rpc.server.call.duration").is_empty());
}

#[test]
fn the_latest_span_of_a_bucket_is_its_exemplar() {
    let svc = resource("shop");
    let mut m = stage();
    m.on_span(&at(http_server(&svc, 1, "/", 200), 0, 1));
    m.on_span(&at(http_server(&svc, 2, "/", 200), 0, 2));
    let f = collect(&m);
    let p = &histograms(&f, "http.server.request.duration")[0];
    assert_eq!(p.exemplars.len(), 1);
    assert_eq!(p.exemplars[0].span_id, [2; 8]);
    assert!((p.exemplars[0].value - 0.002).abs() < 1e-12);
}

#[test]
fn http_client_durations_carry_the_server_address_and_port() {
    let svc = resource("shop");
    let mut m = stage();
    m.on_span(&at(http_client(&svc, 2, None, "/stock"), 0, 30));
    let f = collect(&m);
    let p = &histograms(&f, "http.client.request.duration")[0];
    assert_eq!(p.count, 1);
    assert_eq!(label(&p.labels, "server.address"), Some("backend"));
    assert_eq!(label(&p.labels, "server.port"), Some("8080"));
    assert_eq!(label(&p.labels, "http.route"), Some("/stock"));
    assert!(histograms(&f, "http.server.request.duration").is_empty());
}

#[test]
fn grpc_calls_count_in_the_rpc_histograms_only() {
    let svc = resource("greeter");
    let mut m = stage();
    let rpc = |kind, id, code: i64| {
        let mut s = with(
            at(span(&svc, kind, id, None), 0, 3),
            &[
                ("http.request.method", "POST".into()),
                ("http.route", "/demo.Greeter/SayHello".into()),
                ("http.response.status_code", 200.into()),
                ("server.address", "greeter".into()),
                ("server.port", 50051.into()),
                ("rpc.system", "grpc".into()),
                ("rpc.service", "demo.Greeter".into()),
                ("rpc.method", "SayHello".into()),
                ("rpc.grpc.status_code", code.into()),
            ],
        );
        if code != 0 {
            s.status = StatusCode::Error;
            s.attributes.push(("error.type", code.to_string().into()));
        }
        s
    };
    m.on_span(&rpc(SpanKind::Server, 1, 0));
    m.on_span(&rpc(SpanKind::Client, 2, 14));
    let f = collect(&m);
    assert!(histograms(&f, "http.server.request.duration").is_empty());
    assert!(histograms(&f, "http.client.request.duration").is_empty());
    let server = &histograms(&f, "rpc.server.call.duration")[0];
    assert_eq!(label(&server.labels, "rpc.system"), Some("grpc"));
    assert_eq!(label(&server.labels, "rpc.service"), Some("demo.Greeter"));
    assert_eq!(label(&server.labels, "rpc.method"), Some("SayHello"));
    assert_eq!(label(&server.labels, "rpc.grpc.status_code"), Some("0"));
    assert_eq!(label(&server.labels, "server.address"), None);
    let client = &histograms(&f, "rpc.client.call.duration")[0];
    assert_eq!(label(&client.labels, "rpc.grpc.status_code"), Some("14"));
    assert_eq!(label(&client.labels, "error.type"), Some("14"));
    assert_eq!(label(&client.labels, "server.port"), Some("50051"));
    assert_eq!(family(&f, "rpc.client.call.duration").unit, "s");
}

#[test]
fn identity_comes_from_the_resource() {
    let svc = Arc::new(Resource {
        pid: 7,
        attributes: vec![
            ("service.name".into(), "cart".into()),
            ("k8s.pod.name".into(), "cart-7d9".into()),
            ("host.name".into(), "node1".into()),
            ("k8s.namespace.name".into(), "prod".into()),
            ("service.namespace".into(), "shop".into()),
        ],
    });
    let mut m = stage();
    m.on_span(&at(http_server(&svc, 1, "/", 200), 0, 1));
    m.on_span(&at(http_server(&resource("other"), 2, "/", 200), 0, 1));
    let f = collect(&m);
    let points = histograms(&f, "http.server.request.duration");
    assert_eq!(points.len(), 2);
    let p = points
        .iter()
        .find(|p| label(&p.identity, "service.name") == Some("cart"))
        .unwrap();
    assert_eq!(
        p.identity,
        vec![
            ("service.name", "cart".to_owned()),
            ("service.namespace", "shop".to_owned()),
            ("k8s.namespace.name", "prod".to_owned()),
            ("k8s.pod.name", "cart-7d9".to_owned()),
        ]
    );
}

// ---- service graph ----

/// A CLIENT span of `a` (id 2, under a's server span 1) and the SERVER span of `b` it called
/// (id 3, parent 2, linked by address), 10 ms and 8 ms long.
fn call_pair(a: &Arc<Resource>, b: &Arc<Resource>) -> (Span, Span) {
    let client = at(http_client(a, 2, Some(1), "/stock"), 0, 10);
    let mut server = at(http_server(b, 3, "/stock", 200), 1, 9);
    server.parent_span_id = Some([2; 8]);
    server
        .attributes
        .retain(|(k, _)| *k != "tracer.parent.source");
    server
        .attributes
        .push(("tracer.parent.source", "address".into()));
    (client, server)
}

fn edge_counts(f: &[MetricFamily], client: &str, server: &str) -> (u64, u64) {
    let want = [("client", client), ("server", server)];
    let failed = counters(f, "traces_service_graph_request_failed_total");
    let failed = if failed.is_empty() {
        0
    } else {
        count(failed, &want)
    };
    (
        count(counters(f, "traces_service_graph_request_total"), &want),
        failed,
    )
}

#[test]
fn service_graph_pairs_client_and_server_in_either_order() {
    let (a, b) = (resource("frontend"), resource("stock"));
    for server_first in [true, false] {
        let mut m = stage();
        let (client, server) = call_pair(&a, &b);
        if server_first {
            m.on_span(&server);
            m.on_span(&client);
        } else {
            m.on_span(&client);
            m.on_span(&server);
        }
        let f = collect(&m);
        assert_eq!(
            edge_counts(&f, "frontend", "stock"),
            (1, 0),
            "{server_first}"
        );
        let want = [("client", "frontend"), ("server", "stock")];
        let s = hist(
            histograms(&f, "traces_service_graph_request_server_seconds"),
            &want,
        );
        let c = hist(
            histograms(&f, "traces_service_graph_request_client_seconds"),
            &want,
        );
        assert!((s.sum - 0.008).abs() < 1e-9);
        assert!((c.sum - 0.010).abs() < 1e-9);
        assert_eq!(s.exemplars[0].span_id, [3; 8]);
        assert_eq!(c.exemplars[0].span_id, [2; 8]);
        // The point names the two services in its labels, not in an identity.
        assert!(s.identity.is_empty());
        // Paired: nothing is left waiting to count again later.
        m.tick(T0 + 10_000 * MS);
        assert_eq!(edge_counts(&collect(&m), "frontend", "stock"), (1, 0));
    }
}

#[test]
fn service_graph_counts_a_failure_on_either_side() {
    let (a, b) = (resource("frontend"), resource("stock"));
    let mut m = stage();
    let (client, server) = call_pair(&a, &b);
    m.on_span(&failed(server, 503));
    m.on_span(&client);
    let (mut client, server) = call_pair(&a, &b);
    client.trace_id = [2; 16];
    let mut server = server;
    server.trace_id = [2; 16];
    m.on_span(&server);
    m.on_span(&failed(client, 504));
    let (client, mut server) = call_pair(&a, &b);
    let mut client = client;
    client.trace_id = [3; 16];
    server.trace_id = [3; 16];
    m.on_span(&server);
    m.on_span(&client);
    assert_eq!(edge_counts(&collect(&m), "frontend", "stock"), (3, 2));
}

#[test]
fn an_unpaired_client_counts_with_its_peer_after_the_wait() {
    let a = resource("frontend");
    let mut m = stage();
    let plain = at(http_client(&a, 2, Some(1), "/stock"), 0, 10);
    let mut named = at(http_client(&a, 4, Some(1), "/stock"), 0, 10);
    named.trace_id = [9; 16];
    named
        .attributes
        .push(("service.peer.name", "inventory".into()));
    m.on_span(&plain);
    m.on_span(&named);
    m.tick(T0 + 1_000 * MS);
    assert!(counters(&collect(&m), "traces_service_graph_request_total").is_empty());
    m.tick(T0 + 2_500 * MS);
    let f = collect(&m);
    assert_eq!(edge_counts(&f, "frontend", "backend"), (1, 0));
    assert_eq!(edge_counts(&f, "frontend", "inventory"), (1, 0));
    // Only the client's side was seen.
    assert!(histograms(&f, "traces_service_graph_request_server_seconds").is_empty());
    assert_eq!(
        histograms(&f, "traces_service_graph_request_client_seconds").len(),
        2
    );
}

#[test]
fn a_server_whose_client_is_elsewhere_expires_counted() {
    let b = resource("stock");
    let mut m = stage();
    let mut server = at(http_server(&b, 3, "/stock", 200), 0, 9);
    server.parent_span_id = Some([2; 8]);
    server
        .attributes
        .retain(|(k, _)| *k != "tracer.parent.source");
    server
        .attributes
        .push(("tracer.parent.source", "w3c".into()));
    m.on_span(&server);
    // A root server span (no parent) never waits.
    m.on_span(&at(http_server(&b, 5, "/stock", 200), 0, 9));
    m.tick(T0 + 3_000 * MS);
    let f = collect(&m);
    assert!(counters(&f, "traces_service_graph_request_total").is_empty());
    let unmatched = counters(&f, "tracer.metrics.unmatched");
    assert_eq!(
        count(
            unmatched,
            &[("table", "service_graph"), ("reason", "expired")]
        ),
        1
    );
}

// ---- fan-out, self time, retries ----

fn server_span(svc: &Arc<Resource>, start_ms: u64, end_ms: u64) -> Span {
    at(http_server(svc, 1, "/checkout", 200), start_ms, end_ms)
}

fn child(svc: &Arc<Resource>, id: u8, route: &str, start_ms: u64, end_ms: u64) -> Span {
    at(http_client(svc, id, Some(1), route), start_ms, end_ms)
}

fn tree_point<'a>(f: &'a [MetricFamily], name: &str) -> &'a HistogramPoint {
    hist(histograms(f, name), &[("http.route", "/checkout")])
}

#[test]
fn fanout_and_self_time_with_overlapping_nested_and_overhanging_children() {
    let svc = resource("shop");
    let mut m = stage();
    // Server 0..100 ms. Children: 10..30 and 20..50 overlap (→ 10..50), 25..28 nested in
    // them, 60..70, 90..120 overhangs the server's end (→ 90..100), one before it started
    // (→ nothing). Union 40 + 10 + 10 = 60 ms: self time 40 ms; fan-out 6.
    for (id, (a, b)) in [(10, 30), (20, 50), (25, 28), (60, 70), (90, 120), (0, 0)]
        .into_iter()
        .enumerate()
    {
        m.on_span(&child(&svc, 10 + id as u8, "/x", a, b));
    }
    m.on_span(&server_span(&svc, 0, 100));
    let f = collect(&m);
    let fanout = tree_point(&f, "tracer.server.fanout");
    assert_eq!((fanout.count, fanout.sum), (1, 6.0));
    assert_eq!(fanout.exemplars[0].span_id, [1; 8]);
    assert_eq!(family(&f, "tracer.server.fanout").unit, "{call}");
    let self_time = tree_point(&f, "tracer.server.self_time");
    assert!((self_time.sum - 0.040).abs() < 1e-9, "{}", self_time.sum);
    assert_eq!(family(&f, "tracer.server.self_time").unit, "s");
    assert_eq!(fanout.identity, vec![("service.name", "shop".to_owned())]);
}

#[test]
fn a_server_without_children_has_fanout_zero_and_all_self_time() {
    let svc = resource("shop");
    let mut m = stage();
    // A child of another server span, and one of another trace, are not this one's.
    m.on_span(&at(http_client(&svc, 7, Some(9), "/x"), 0, 10));
    let mut other_trace = child(&svc, 8, "/x", 0, 10);
    other_trace.trace_id = [5; 16];
    m.on_span(&other_trace);
    m.on_span(&server_span(&svc, 0, 30));
    let f = collect(&m);
    let fanout = tree_point(&f, "tracer.server.fanout");
    assert_eq!((fanout.sum, fanout.bucket_counts[0]), (0.0, 1)); // bucket ≤ 0
    assert!((tree_point(&f, "tracer.server.self_time").sum - 0.030).abs() < 1e-9);
}

#[test]
fn retries_repeat_a_failed_call_after_it_ended() {
    let svc = resource("shop");
    let mut m = stage();
    let no_response = |mut s: Span| {
        s.status = StatusCode::Error;
        s.attributes
            .retain(|(k, _)| *k != "http.response.status_code");
        s.attributes.push(("error.type", "no_response".into()));
        s
    };
    // /pay fails (no response), fails again (503), then succeeds: two retries.
    m.on_span(&no_response(child(&svc, 2, "/pay", 0, 10)));
    m.on_span(&failed(child(&svc, 3, "/pay", 10, 20), 503));
    m.on_span(&child(&svc, 4, "/pay", 25, 30));
    // Overlapping a failed call (started before it ended): a parallel call, not a retry.
    m.on_span(&child(&svc, 5, "/pay", 5, 12));
    // Same route, other peer: not a retry.
    let mut other_peer = child(&svc, 6, "/pay", 40, 45);
    for (k, v) in &mut other_peer.attributes {
        if *k == "server.port" {
            *v = 9090.into();
        }
    }
    m.on_span(&other_peer);
    // After a successful call: not a retry.
    m.on_span(&child(&svc, 7, "/stock", 0, 5));
    m.on_span(&child(&svc, 8, "/stock", 6, 9));
    m.on_span(&server_span(&svc, 0, 50));
    // The same /pay under another server span: nothing failed there.
    m.on_span(&at(http_client(&svc, 20, Some(21), "/pay"), 0, 5));
    m.on_span(&at(http_server(&svc, 21, "/checkout", 200), 0, 6));
    let f = collect(&m);
    let retries = counters(&f, "tracer.client.retries");
    assert_eq!(retries.len(), 1, "{retries:?}");
    let r = &retries[0];
    assert_eq!(r.value, 2);
    assert_eq!(r.identity, vec![("service.name", "shop".to_owned())]);
    assert_eq!(
        r.labels,
        vec![
            ("http.request.method", "GET".to_owned()),
            ("http.route", "/pay".to_owned()),
            ("server.address", "backend".to_owned()),
            ("server.port", "8080".to_owned()),
        ]
    );
    assert_eq!(tree_point(&f, "tracer.server.fanout").sum, 7.0 + 1.0);
}

#[test]
fn children_after_their_parent_are_not_counted_and_expire() {
    let svc = resource("shop");
    let mut m = stage();
    m.on_span(&server_span(&svc, 0, 10));
    m.on_span(&child(&svc, 2, "/x", 5, 20));
    m.tick(T0 + 30_000 * MS);
    let f = collect(&m);
    assert_eq!(tree_point(&f, "tracer.server.fanout").sum, 0.0);
    let unmatched = counters(&f, "tracer.metrics.unmatched");
    assert_eq!(
        count(unmatched, &[("table", "children"), ("reason", "expired")]),
        0
    );
    m.tick(T0 + 61_000 * MS);
    let f = collect(&m);
    let unmatched = counters(&f, "tracer.metrics.unmatched");
    assert_eq!(
        count(unmatched, &[("table", "children"), ("reason", "expired")]),
        1
    );
}

// ---- cardinality ----

#[test]
fn ten_thousand_routes_stay_at_the_cap_with_an_overflow_series() {
    let svc = resource("shop");
    let mut m = stage();
    for i in 0..10_000u32 {
        let route = format!("/report-{i}-final");
        let mut s = at(http_server(&svc, 1, &route, 200), 0, 1);
        s.span_id = i.to_le_bytes().repeat(2).try_into().unwrap();
        m.on_span(&s);
    }
    let f = collect(&m);
    for name in [
        "http.server.request.duration",
        "tracer.server.fanout",
        "tracer.server.self_time",
    ] {
        let points = histograms(&f, name);
        assert_eq!(points.len(), 2001, "{name}");
        let overflow = points.last().unwrap();
        assert_eq!(
            overflow.labels,
            vec![("otel.metric.overflow", "true".to_owned())]
        );
        assert!(overflow.identity.is_empty());
        assert_eq!(overflow.count, 8000);
        assert_eq!(points.iter().map(|p| p.count).sum::<u64>(), 10_000);
        assert_eq!(
            count(counters(&f, "tracer.metrics.overflow"), &[("metric", name)]),
            8000
        );
    }
    let series = match &family(&f, "tracer.metrics.series").data {
        MetricData::Gauge(points) => points,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        count(series, &[("metric", "http.server.request.duration")]),
        2000
    );
}

#[test]
fn idle_series_expire_on_tick() {
    let svc = resource("shop");
    let mut m = SpanMetrics::new(&MetricsOptions {
        series_idle_ns: 10_000 * MS,
        ..MetricsOptions::default()
    });
    m.on_span(&at(http_server(&svc, 1, "/old", 200), 0, 1));
    m.tick(T0 + 5_000 * MS);
    m.on_span(&at(http_server(&svc, 2, "/new", 200), 5_000, 5_001));
    m.tick(T0 + 10_500 * MS);
    let f = collect(&m);
    let points = histograms(&f, "http.server.request.duration");
    assert_eq!(points.len(), 1);
    assert_eq!(label(&points[0].labels, "http.route"), Some("/new"));
    m.tick(T0 + 16_000 * MS);
    assert!(histograms(&collect(&m), "http.server.request.duration").is_empty());
}

/// `--metrics-dimension`s: the RED histograms get one more label per dimension, from the
/// span's attribute (a string array as one value), bounded by the series cap.
#[test]
fn dimensions_label_the_red_histograms_within_the_cap() {
    use super::red::Red;

    let dims = [
        "http.request.header.x-tier".to_owned(),
        "app.beta".to_owned(),
    ];
    let mut red = Red::with_dimensions(DEFAULT_DURATION_BOUNDS.into(), 4, &dims);
    let svc = resource("svc");
    let tier = |values: &[&str]| -> AttrValue {
        values
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .into()
    };
    let spans = [
        with(
            http_server(&svc, 1, "/a", 200),
            &[("http.request.header.x-tier", tier(&["gold"]))],
        ),
        with(
            http_server(&svc, 2, "/a", 200),
            &[("http.request.header.x-tier", "gold".into())],
        ),
        with(
            http_server(&svc, 3, "/a", 200),
            &[
                ("http.request.header.x-tier", tier(&["gold", "silver"])),
                ("app.beta", true.into()),
            ],
        ),
        http_server(&svc, 4, "/a", 200),
        with(
            http_client(&svc, 5, None, "/b"),
            &[("http.request.header.x-tier", tier(&["free"]))],
        ),
        with(
            http_server(&svc, 6, "/a", 200),
            &[("http.request.header.x-tier", tier(&["new"]))],
        ),
        with(
            http_server(&svc, 7, "/a", 200),
            &[("http.request.header.x-tier", tier(&[]))],
        ),
        // Beyond the cap (4 series): the overflow series.
        with(
            http_server(&svc, 8, "/a", 200),
            &[("http.request.header.x-tier", tier(&["more"]))],
        ),
    ];
    for s in &spans {
        let identity = identity_of(&s.resource);
        red.record(s, &red::SpanAttrs::of(s), &identity, T0);
    }
    let mut families = Vec::new();
    red.collect(T0, &mut families);
    let server = histograms(&families, "http.server.request.duration");
    let tier_of =
        |p: &HistogramPoint| label(&p.labels, "http.request.header.x-tier").map(str::to_owned);
    let gold = hist(server, &[("http.request.header.x-tier", "gold")]);
    assert_eq!(gold.count, 2, "a one-element array is its element");
    assert_eq!(label(&gold.labels, "http.route"), Some("/a"));
    assert_eq!(label(&gold.labels, "app.beta"), None, "absent: no label");
    let both = hist(server, &[("http.request.header.x-tier", "gold,silver")]);
    assert_eq!(label(&both.labels, "app.beta"), Some("true"));
    let none: Vec<_> = server
        .iter()
        .filter(|p| tier_of(p).is_none() && label(&p.labels, "http.route").is_some())
        .collect();
    assert_eq!(none.len(), 1, "no header, no label: {server:?}");
    assert_eq!(none[0].count, 2, "an empty array is no value");
    let client = histograms(&families, "http.client.request.duration");
    assert_eq!(
        client[0].labels.last(),
        Some(&("http.request.header.x-tier", "free".to_owned())),
        "the dimensions come after the conventions' labels"
    );
    let overflow = hist(server, &[("otel.metric.overflow", "true")]);
    assert_eq!(overflow.count, 1);
    let (name, series, overflowed) = red.stats().next().unwrap();
    assert_eq!(
        (name, series, overflowed),
        ("http.server.request.duration", 4, 1)
    );
    // Prometheus: `.` and `-` become `_`.
    let page =
        crate::export::prometheus::encode(&families, crate::export::prometheus::Format::Classic);
    assert!(
        page.contains("http_request_header_x_tier=\"gold,silver\""),
        "{page}"
    );
}

/// The stage labels with `--metrics-dimension`s what redaction left of them: it runs first.
#[test]
fn the_stage_labels_with_dimensions_after_redaction() {
    use crate::pipeline::{RedactOptions, Redactor, redact::Patterns};

    let mut redact = Redactor::new(RedactOptions {
        patterns: Patterns::new(&["acct-[0-9]+".into()]).unwrap(),
        ..RedactOptions::default()
    });
    let mut m = SpanMetrics::new(&MetricsOptions {
        dimensions: vec!["http.request.header.x-account".into()],
        ..MetricsOptions::default()
    });
    let svc = resource("svc");
    let mut s = with(
        http_server(&svc, 1, "/a", 200),
        &[(
            "http.request.header.x-account",
            vec!["acct-42".to_owned()].into(),
        )],
    );
    redact.on_span(&mut s);
    m.on_span(&s);
    let families = collect(&m);
    let server = histograms(&families, "http.server.request.duration");
    assert_eq!(
        hist(server, &[("http.request.header.x-account", "REDACTED")]).count,
        1
    );
}
