//! Span building for HTTP exchanges, attribute by attribute.
use super::*;
use crate::protocol::ResponseHead;
use crate::span::AttrValue;
use crate::trace::IdGenerator;
use crate::trace::context::{FLAG_SAMPLED, ParentSource, RemoteContext};
use tracer_common::Role;

fn conn() -> ConnMeta {
    ConnMeta {
        conn_id: 1,
        pid: 42,
        local: "10.0.0.1:8080".parse().unwrap(),
        remote: "10.0.0.2:40000".parse().unwrap(),
        role: Role::Unknown,
        tls: false,
    }
}

fn resource() -> Arc<Resource> {
    Arc::new(Resource {
        pid: 42,
        attributes: vec![("service.name".into(), "svc".into())],
    })
}

fn exchange(dir: Direction, method: &str, target: &str, status: Option<u16>) -> HttpExchange {
    HttpExchange {
        request_direction: dir,
        request: RequestHead {
            method: method.into(),
            target: target.into(),
            version: "1.1",
            headers: vec![],
        },
        response: status.map(|status| ResponseHead {
            status,
            version: "1.1",
            headers: vec![],
        }),
        start_ns: 1_000,
        end_ns: 5_000,
        request_body_size: 0,
        response_body_size: 0,
        tid: 7,
        seq: 0,
        incomplete: false,
        head_position: 0,
        injected: None,
        messages: Vec::new(),
        messages_dropped: 0,
    }
}

fn with_host(mut ex: HttpExchange, host: &str) -> HttpExchange {
    ex.request.headers.push(("host".into(), host.into()));
    ex
}

fn build(ex: &HttpExchange) -> Span {
    build_opts(ex, &SpanOptions::default())
}

fn build_opts(ex: &HttpExchange, opts: &SpanOptions) -> Span {
    let mut ids = IdGenerator::from_seed(1);
    span_from_exchange(
        ex,
        &conn(),
        resource(),
        &Clock::with_offset(1_000_000),
        opts,
        SpanContext::root(&mut ids),
    )
}

fn s(span: &Span, key: &str) -> Option<String> {
    match span.attr(key) {
        Some(AttrValue::Str(v)) => Some(v.to_string()),
        None => None,
        other => panic!("{key} is not a string: {other:?}"),
    }
}

fn i(span: &Span, key: &str) -> Option<i64> {
    match span.attr(key) {
        Some(AttrValue::Int(v)) => Some(*v),
        None => None,
        other => panic!("{key} is not an int: {other:?}"),
    }
}

const SERVER: Direction = Direction::Ingress;
const CLIENT: Direction = Direction::Egress;

// ---- route heuristic ----

#[test]
fn kind_from_direction() {
    assert_eq!(
        build(&exchange(SERVER, "GET", "/", Some(200))).kind,
        SpanKind::Server
    );
    assert_eq!(
        build(&exchange(CLIENT, "GET", "/", Some(200))).kind,
        SpanKind::Client
    );
}

#[test]
fn name_is_method_and_route() {
    let sp = build(&exchange(SERVER, "GET", "/users/123?x=1", Some(200)));
    assert_eq!(sp.name, "GET /users/{id}");
    assert_eq!(s(&sp, "http.route").as_deref(), Some("/users/{id}"));
    let sp = build(&exchange(CLIENT, "POST", "/v1/items", Some(201)));
    assert_eq!(sp.name, "POST /v1/items");
    assert_eq!(s(&sp, "http.route").as_deref(), Some("/v1/items"));
    assert_eq!(s(&sp, "http.request.method").as_deref(), Some("POST"));
    assert_eq!(sp.attr("http.request.method_original"), None);
}

#[test]
fn unknown_method() {
    for m in ["PURGE", "get", "PROPFIND"] {
        let sp = build(&exchange(SERVER, m, "/a/1", Some(200)));
        assert_eq!(sp.name, "HTTP /a/{id}");
        assert_eq!(s(&sp, "http.request.method").as_deref(), Some("_OTHER"));
        assert_eq!(s(&sp, "http.request.method_original").as_deref(), Some(m));
    }
    let long = "X".repeat(200);
    let sp = build(&exchange(SERVER, &long, "/", Some(200)));
    assert_eq!(
        s(&sp, "http.request.method_original").unwrap().len(),
        MAX_METHOD_LEN
    );
}

#[test]
fn known_methods() {
    for m in [
        "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE",
    ] {
        assert_eq!(known_method(m), Some(m));
    }
    assert_eq!(known_method("get"), None);
}

// ---- url.* ----

#[test]
fn path_and_query_as_sent() {
    let sp = build(&exchange(
        SERVER,
        "GET",
        "/search?q=secret&page=2&flag&&empty=",
        Some(200),
    ));
    assert_eq!(s(&sp, "url.path").as_deref(), Some("/search"));
    assert_eq!(
        s(&sp, "url.query").as_deref(),
        Some("q=secret&page=2&flag&&empty=")
    );
    assert_eq!(s(&sp, "url.scheme").as_deref(), Some("http"));
}

#[test]
fn client_query_in_url_full() {
    let sp = build(&exchange(CLIENT, "GET", "/search?q=secret", Some(200)));
    assert_eq!(s(&sp, "url.query").as_deref(), Some("q=secret"));
    assert_eq!(
        s(&sp, "url.full").as_deref(),
        Some("http://10.0.0.2:40000/search?q=secret")
    );
}

#[test]
fn no_or_empty_query() {
    let sp = build(&exchange(SERVER, "GET", "/a", Some(200)));
    assert_eq!(sp.attr("url.query"), None);
    let sp = build(&exchange(SERVER, "GET", "/a?", Some(200)));
    assert_eq!(sp.attr("url.query"), None);
    assert_eq!(s(&sp, "url.path").as_deref(), Some("/a"));
    let sp = build(&exchange(SERVER, "GET", "/a?b#c", Some(200)));
    assert_eq!(s(&sp, "url.query").as_deref(), Some("b"));
}

#[test]
fn scheme_from_options() {
    let opts = SpanOptions {
        scheme: "https",
        ..SpanOptions::default()
    };
    let sp = build_opts(
        &with_host(exchange(CLIENT, "GET", "/x", Some(200)), "api.example.com"),
        &opts,
    );
    assert_eq!(s(&sp, "url.scheme").as_deref(), Some("https"));
    assert_eq!(i(&sp, "server.port"), Some(443));
    assert_eq!(
        s(&sp, "url.full").as_deref(),
        Some("https://api.example.com/x")
    );
}

#[test]
fn tls_plaintext_is_https() {
    let mut ids = IdGenerator::from_seed(1);
    let ex = with_host(exchange(CLIENT, "GET", "/x", Some(200)), "api.example.com");
    let sp = span_from_exchange(
        &ex,
        &ConnMeta {
            tls: true,
            ..conn()
        },
        resource(),
        &Clock::with_offset(1_000_000),
        &SpanOptions::default(),
        SpanContext::root(&mut ids),
    );
    assert_eq!(s(&sp, "url.scheme").as_deref(), Some("https"));
    assert_eq!(i(&sp, "server.port"), Some(443));
    assert_eq!(
        s(&sp, "url.full").as_deref(),
        Some("https://api.example.com/x")
    );
}

#[test]
fn url_full_client_only() {
    let ex = with_host(
        exchange(CLIENT, "GET", "/p/1?a=b", Some(200)),
        "example.com:8080",
    );
    let sp = build(&ex);
    assert_eq!(
        s(&sp, "url.full").as_deref(),
        Some("http://example.com:8080/p/1?a=b")
    );
    let ex = with_host(exchange(CLIENT, "GET", "/", Some(200)), "example.com");
    assert_eq!(
        s(&build(&ex), "url.full").as_deref(),
        Some("http://example.com/")
    );
    let ex = with_host(exchange(CLIENT, "GET", "/", Some(200)), "example.com:80");
    assert_eq!(
        s(&build(&ex), "url.full").as_deref(),
        Some("http://example.com/")
    );
    let ex = with_host(exchange(CLIENT, "GET", "/", Some(200)), "[::1]:9000");
    assert_eq!(
        s(&build(&ex), "url.full").as_deref(),
        Some("http://[::1]:9000/")
    );
    let ex = with_host(exchange(SERVER, "GET", "/", Some(200)), "example.com");
    assert_eq!(build(&ex).attr("url.full"), None);
}

#[test]
fn absolute_form_target() {
    let ex = with_host(
        exchange(
            CLIENT,
            "GET",
            "http://origin.example:8081/p/42?k=v#f",
            Some(200),
        ),
        "ignored.example",
    );
    let sp = build(&ex);
    assert_eq!(s(&sp, "url.path").as_deref(), Some("/p/42"));
    assert_eq!(s(&sp, "url.query").as_deref(), Some("k=v"));
    assert_eq!(s(&sp, "server.address").as_deref(), Some("origin.example"));
    assert_eq!(i(&sp, "server.port"), Some(8081));
    assert_eq!(
        s(&sp, "url.full").as_deref(),
        Some("http://origin.example:8081/p/42?k=v")
    );
    assert_eq!(sp.name, "GET /p/{id}");
    // The proxy is the peer.
    assert_eq!(s(&sp, "network.peer.address").as_deref(), Some("10.0.0.2"));
    assert_eq!(i(&sp, "network.peer.port"), Some(40000));

    let sp = build(&exchange(
        CLIENT,
        "GET",
        "HTTP://user:pw@origin.example",
        Some(200),
    ));
    assert_eq!(s(&sp, "url.path").as_deref(), Some("/"));
    assert_eq!(s(&sp, "url.scheme").as_deref(), Some("http"));
    assert_eq!(s(&sp, "server.address").as_deref(), Some("origin.example"));
    assert_eq!(i(&sp, "server.port"), Some(80));
    assert_eq!(
        s(&sp, "url.full").as_deref(),
        Some("http://REDACTED:REDACTED@origin.example/")
    );

    let sp = build(&exchange(SERVER, "GET", "http://h.example?x=1", Some(200)));
    assert_eq!(s(&sp, "url.path").as_deref(), Some("/"));
    assert_eq!(s(&sp, "url.query").as_deref(), Some("x=1"));
    assert_eq!(s(&sp, "server.address").as_deref(), Some("h.example"));
}

#[test]
fn connect_and_asterisk() {
    let sp = build(&exchange(
        CLIENT,
        "CONNECT",
        "secure.example:443",
        Some(200),
    ));
    assert_eq!(sp.name, "CONNECT");
    assert_eq!(sp.attr("url.path"), None);
    assert_eq!(sp.attr("url.full"), None);
    assert_eq!(sp.attr("http.route"), None);
    assert_eq!(s(&sp, "server.address").as_deref(), Some("secure.example"));
    assert_eq!(i(&sp, "server.port"), Some(443));

    let sp = build(&exchange(SERVER, "OPTIONS", "*", Some(200)));
    assert_eq!(sp.name, "OPTIONS");
    assert_eq!(sp.attr("url.path"), None);
}

#[test]
fn garbage_target_does_not_panic() {
    for t in [
        "",
        "://",
        "a://",
        "http://",
        "http://[::1",
        "?",
        "#",
        "é://x",
        "http://h:99999/x",
        "[",
        "\u{0}",
    ] {
        let sp = build(&exchange(CLIENT, "GET", t, Some(200)));
        assert!(sp.name.starts_with("GET"), "{t}");
        let sp = build(&with_host(exchange(SERVER, "GET", t, None), t));
        assert!(sp.name.starts_with("GET"), "{t}");
    }
    let sp = build(&exchange(CLIENT, "GET", "http://h:99999/x", Some(200)));
    assert_eq!(s(&sp, "server.address").as_deref(), Some("h"));
    assert_eq!(i(&sp, "server.port"), Some(80));
}

// ---- server / client / network ----

#[test]
fn client_server_address() {
    // Host with port.
    let sp = build(&with_host(
        exchange(CLIENT, "GET", "/", Some(200)),
        "api.example.com:8443",
    ));
    assert_eq!(s(&sp, "server.address").as_deref(), Some("api.example.com"));
    assert_eq!(i(&sp, "server.port"), Some(8443));
    // Host without port: the scheme's default.
    let sp = build(&with_host(
        exchange(CLIENT, "GET", "/", Some(200)),
        "api.example.com",
    ));
    assert_eq!(s(&sp, "server.address").as_deref(), Some("api.example.com"));
    assert_eq!(i(&sp, "server.port"), Some(80));
    // IPv6 Host.
    let sp = build(&with_host(
        exchange(CLIENT, "GET", "/", Some(200)),
        "[2001:db8::1]:81",
    ));
    assert_eq!(s(&sp, "server.address").as_deref(), Some("2001:db8::1"));
    assert_eq!(i(&sp, "server.port"), Some(81));
    // No Host: the remote end.
    let sp = build(&exchange(CLIENT, "GET", "/", Some(200)));
    assert_eq!(s(&sp, "server.address").as_deref(), Some("10.0.0.2"));
    assert_eq!(i(&sp, "server.port"), Some(40000));
    // Empty Host: as if absent.
    let sp = build(&with_host(exchange(CLIENT, "GET", "/", Some(200)), ""));
    assert_eq!(s(&sp, "server.address").as_deref(), Some("10.0.0.2"));
    // No client.* on CLIENT spans.
    assert_eq!(sp.attr("client.address"), None);
    assert_eq!(sp.attr("client.port"), None);
}

#[test]
fn server_addresses() {
    let sp = build(&with_host(
        exchange(SERVER, "GET", "/", Some(200)),
        "shop.example:8080",
    ));
    assert_eq!(s(&sp, "server.address").as_deref(), Some("shop.example"));
    assert_eq!(i(&sp, "server.port"), Some(8080));
    let sp = build(&exchange(SERVER, "GET", "/", Some(200)));
    assert_eq!(s(&sp, "server.address").as_deref(), Some("10.0.0.1"));
    assert_eq!(i(&sp, "server.port"), Some(8080));
    assert_eq!(s(&sp, "client.address").as_deref(), Some("10.0.0.2"));
    assert_eq!(i(&sp, "client.port"), Some(40000));
    assert_eq!(s(&sp, "network.peer.address").as_deref(), Some("10.0.0.2"));
    assert_eq!(i(&sp, "network.peer.port"), Some(40000));
}

#[test]
fn ipv6_connection() {
    let mut c = conn();
    c.remote = "[2001:db8::2]:5555".parse().unwrap();
    let ex = exchange(CLIENT, "GET", "/x", Some(200));
    let sp = span_from_exchange(
        &ex,
        &c,
        resource(),
        &Clock::with_offset(0),
        &SpanOptions::default(),
        SpanContext::root(&mut IdGenerator::from_seed(3)),
    );
    assert_eq!(s(&sp, "server.address").as_deref(), Some("2001:db8::2"));
    assert_eq!(
        s(&sp, "network.peer.address").as_deref(),
        Some("2001:db8::2")
    );
    assert_eq!(
        s(&sp, "url.full").as_deref(),
        Some("http://[2001:db8::2]:5555/x")
    );
}

#[test]
fn protocol_version_and_user_agent() {
    let mut ex = exchange(SERVER, "GET", "/", Some(200));
    ex.request.version = "1.0";
    ex.request
        .headers
        .push(("user-agent".into(), "curl/8.5.0".into()));
    let sp = build(&ex);
    assert_eq!(s(&sp, "network.protocol.version").as_deref(), Some("1.0"));
    assert_eq!(s(&sp, "user_agent.original").as_deref(), Some("curl/8.5.0"));
    ex.request.version = "";
    ex.request.headers.clear();
    let sp = build(&ex);
    assert_eq!(sp.attr("network.protocol.version"), None);
    assert_eq!(sp.attr("user_agent.original"), None);
    assert_eq!(
        s(
            &build(&exchange(SERVER, "GET", "/", None)),
            "network.protocol.version"
        )
        .as_deref(),
        Some("1.1")
    );
}

#[test]
fn body_sizes() {
    let mut ex = exchange(CLIENT, "POST", "/", Some(200));
    let sp = build(&ex);
    assert_eq!(sp.attr("http.request.body.size"), None);
    assert_eq!(sp.attr("http.response.body.size"), None);
    ex.request_body_size = 12;
    ex.response_body_size = 3456;
    let sp = build(&ex);
    assert_eq!(i(&sp, "http.request.body.size"), Some(12));
    assert_eq!(i(&sp, "http.response.body.size"), Some(3456));
    // A declared empty body.
    ex.request_body_size = 0;
    ex.request
        .headers
        .push(("content-length".into(), "0".into()));
    ex.response_body_size = 0;
    ex.response
        .as_mut()
        .unwrap()
        .headers
        .push(("transfer-encoding".into(), "chunked".into()));
    let sp = build(&ex);
    assert_eq!(i(&sp, "http.request.body.size"), Some(0));
    assert_eq!(i(&sp, "http.response.body.size"), Some(0));
    // No response: no response size even if counted.
    ex.response = None;
    ex.response_body_size = 10;
    assert_eq!(build(&ex).attr("http.response.body.size"), None);
    // Incomplete exchange: sizes are not known exactly, so none is reported.
    let mut ex = exchange(CLIENT, "POST", "/", Some(200));
    ex.request_body_size = 12;
    ex.response_body_size = 3456;
    ex.incomplete = true;
    let sp = build(&ex);
    assert_eq!(sp.attr("http.request.body.size"), None);
    assert_eq!(sp.attr("http.response.body.size"), None);
    ex.incomplete = false;
    ex.request_body_size = u64::MAX;
    assert_eq!(i(&build(&ex), "http.request.body.size"), Some(i64::MAX));
}

// ---- status ----

#[test]
fn status_code_and_status() {
    let cases = [
        (SERVER, 200, StatusCode::Unset),
        (SERVER, 404, StatusCode::Unset),
        (SERVER, 500, StatusCode::Error),
        (SERVER, 503, StatusCode::Error),
        (CLIENT, 200, StatusCode::Unset),
        (CLIENT, 302, StatusCode::Unset),
        (CLIENT, 404, StatusCode::Error),
        (CLIENT, 500, StatusCode::Error),
    ];
    for (dir, code, status) in cases {
        let sp = build(&exchange(dir, "GET", "/", Some(code)));
        assert_eq!(i(&sp, "http.response.status_code"), Some(i64::from(code)));
        assert_eq!(sp.status, status, "{dir:?} {code}");
        assert_eq!(sp.status_message, None);
        let expected = (status == StatusCode::Error).then(|| code.to_string());
        assert_eq!(s(&sp, "error.type"), expected, "{dir:?} {code}");
    }
}

#[test]
fn no_response() {
    for dir in [SERVER, CLIENT] {
        let sp = build(&exchange(dir, "GET", "/", None));
        assert_eq!(sp.status, StatusCode::Error);
        assert_eq!(sp.status_message.as_deref(), Some("no response"));
        assert_eq!(sp.attr("http.response.status_code"), None);
        assert_eq!(s(&sp, "error.type").as_deref(), Some("no_response"));
    }
}

#[test]
fn incomplete_flag() {
    let mut ex = exchange(SERVER, "GET", "/", Some(200));
    assert_eq!(build(&ex).attr("tracer.incomplete"), None);
    ex.incomplete = true;
    assert_eq!(
        build(&ex).attr("tracer.incomplete"),
        Some(&AttrValue::Bool(true))
    );
}

// ---- times, ids, context ----

#[test]
fn times() {
    let mut ex = exchange(SERVER, "GET", "/", Some(200));
    let sp = build(&ex);
    assert_eq!(sp.start_unix_ns, 1_001_000);
    assert_eq!(sp.end_unix_ns, 1_005_000);
    ex.end_ns = 10;
    let sp = build(&ex);
    assert_eq!(sp.end_unix_ns, sp.start_unix_ns);
}

#[test]
fn ids_and_context() {
    let ex = exchange(SERVER, "GET", "/", Some(200));
    let mut ids = IdGenerator::from_seed(5);
    let root = SpanContext::root(&mut ids);
    let a = span_from_exchange(
        &ex,
        &conn(),
        resource(),
        &Clock::with_offset(0),
        &SpanOptions::default(),
        root.clone(),
    );
    assert_eq!((a.trace_id, a.span_id), (root.trace_id, root.span_id));
    assert_ne!(a.trace_id, [0; 16]);
    assert_ne!(a.span_id, [0; 8]);
    assert_eq!(a.parent_span_id, None);
    assert_eq!(a.trace_state, None);
    assert_eq!(a.flags, FLAG_SAMPLED);
    assert_eq!(s(&a, "tracer.parent.source").as_deref(), Some("none"));
    assert_eq!(a.resource.service_name(), "svc");
    assert_ne!(SpanContext::root(&mut ids).trace_id, root.trace_id);

    let remote = RemoteContext {
        trace_id: [7; 16],
        span_id: [8; 8],
        flags: 0,
        trace_state: Some("k=v".into()),
        source: ParentSource::W3c,
    };
    let b = span_from_exchange(
        &ex,
        &conn(),
        resource(),
        &Clock::with_offset(0),
        &SpanOptions::default(),
        SpanContext::child_of_remote(remote, [9; 8]),
    );
    assert_eq!(b.trace_id, [7; 16]);
    assert_eq!(b.span_id, [9; 8]);
    assert_eq!(b.parent_span_id, Some([8; 8]));
    assert_eq!(b.flags, 0);
    assert_eq!(b.trace_state.as_deref(), Some("k=v"));
    assert_eq!(s(&b, "tracer.parent.source").as_deref(), Some("w3c"));
}

// ---- captured headers ----

#[test]
fn captured_headers_are_string_arrays_one_element_per_line() {
    let opts = SpanOptions::default().with_headers(&["X-Tier".into()], &["x-release".into()]);
    let mut ex = exchange(SERVER, "GET", "/", Some(200));
    ex.request.headers.extend([
        ("X-TIER".into(), "gold".into()),
        ("x-other".into(), "no".into()),
        ("x-tier".into(), "silver, bronze".into()),
    ]);
    ex.response
        .as_mut()
        .unwrap()
        .headers
        .push(("X-Release".into(), "v2".into()));
    let sp = build_opts(&ex, &opts);
    assert_eq!(
        sp.attr("http.request.header.x-tier"),
        Some(&AttrValue::StrArray(vec![
            "gold".into(),
            "silver, bronze".into()
        ]))
    );
    assert_eq!(
        sp.attr("http.response.header.x-release"),
        Some(&AttrValue::StrArray(vec!["v2".into()]))
    );
    assert_eq!(sp.attr(HEADER_VALUES_CUT), None, "nothing cut");
    // Absent headers add nothing.
    let sp = build_opts(&exchange(SERVER, "GET", "/", Some(200)), &opts);
    assert_eq!(sp.attr("http.request.header.x-tier"), None);
}

#[test]
fn captured_header_values_are_bounded_and_the_cut_counted() {
    let opts = SpanOptions::default().with_headers(&["x-many".into(), "x-long".into()], &[]);
    let mut ex = exchange(SERVER, "GET", "/", Some(200));
    for i in 0..MAX_HEADER_VALUES + 4 {
        ex.request
            .headers
            .push(("x-many".into(), format!("v{i}").into()));
    }
    let long = "é".repeat(MAX_HEADER_VALUE_LEN);
    ex.request
        .headers
        .push(("x-long".into(), long.as_str().into()));
    ex.request.headers.push(("x-long".into(), "after".into()));
    let sp = build_opts(&ex, &opts);
    let many = sp.attr("http.request.header.x-many").unwrap().strs();
    assert_eq!(many.len(), MAX_HEADER_VALUES);
    assert_eq!(
        many[MAX_HEADER_VALUES - 1],
        format!("v{}", MAX_HEADER_VALUES - 1)
    );
    let long_kept = sp.attr("http.request.header.x-long").unwrap().strs();
    assert_eq!(long_kept.len(), 1, "the budget is spent by the first line");
    assert_eq!(
        long_kept[0].len(),
        MAX_HEADER_VALUE_LEN,
        "cut at a char boundary"
    );
    assert!(long.starts_with(long_kept[0]));
    // 4 lines left out, one cut short, one left out.
    assert_eq!(sp.attr(HEADER_VALUES_CUT), Some(&AttrValue::Int(6)));
}
