//! Privileged end-to-end: head sampling (consistent, from the trace id; the decision travels in
//! the flags of the `traceparent` the kernel injects) and the node-local tail policies.
//! Predictions are computed here from the trace ids (rightmost 56 bits against the threshold
//! (1 − p)·2^56), independently of the agent's code.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::TcpStream,
    sync::Mutex,
    time::Duration,
};

use serde_json::Value;
use tracer_tests::*;

const WAIT: Duration = Duration::from_secs(20);

/// R ≥ T for probability `p`, from the hex trace id.
fn predicted(trace_hex: &str, p: f64) -> bool {
    let r = u64::from_str_radix(&trace_hex[18..32], 16).unwrap();
    let t = (1u64 << 56) - (p * (1u64 << 56) as f64).round() as u64;
    r >= t
}

/// A trace id (hex) whose rightmost 56 bits are `r`, with `tag` in front.
fn trace_with(tag: u64, r: u64) -> String {
    format!("{tag:016x}{:02x}{r:014x}", 0x5a)
}

/// One keep-alive connection to the echo server; returns the request bytes it echoed.
struct Echo {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Echo {
    fn get(&mut self, path: &str, tier: &str) -> String {
        let req = format!("GET {path} HTTP/1.1\r\nHost: echo\r\nX-Tier: {tier}\r\n\r\n");
        self.s.write_all(req.as_bytes()).unwrap();
        let mut chunk = [0u8; 16384];
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap();
                if self.buf.len() >= end + 4 + len {
                    let body =
                        String::from_utf8_lossy(&self.buf[end + 4..end + 4 + len]).into_owned();
                    self.buf.drain(..end + 4 + len);
                    return body;
                }
            }
            let n = self.s.read(&mut chunk).unwrap();
            assert!(n > 0, "echo closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// `(trace id, flags)` of the `traceparent` in an echoed request.
fn injected(echoed: &str) -> Option<(String, String)> {
    let v = echoed
        .lines()
        .find_map(|l| l.strip_prefix("traceparent: "))?;
    let parts: Vec<&str> = v.trim().split('-').collect();
    Some((parts[1].to_owned(), parts[3].to_owned()))
}

#[test]
fn ratio_sampling_keeps_the_traces_their_ids_predict() {
    require_root();
    const N: usize = 2000;
    const P: f64 = 0.25;
    let (_echo, port) = echo_server().unwrap();
    let metrics_port = free_port();
    let sc = Scenario::ports(&[port])
        .args(&["--inject-traceparent", "all"])
        .args(&["--prometheus-host", "127.0.0.1"])
        .args(&["--prometheus-port", &metrics_port.to_string()])
        .args(&["--capture-request-header", "x-tier"])
        .env("TRACER_METRICS_DIMENSIONS", "http.request.header.x-tier")
        .env("OTEL_METRICS_EXPORTER", "prometheus")
        .env("OTEL_TRACES_SAMPLER", "traceidratio")
        .env("OTEL_TRACES_SAMPLER_ARG", "0.25")
        .start()
        .unwrap();
    let mut c = Echo {
        s: TcpStream::connect(("127.0.0.1", port)).unwrap(),
        buf: Vec::new(),
    };
    c.s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The injected header can leave as a segment of its own: without this, Nagle holds the
    // rest until the server's delayed ACK (40 ms a request).
    c.s.set_nodelay(true).unwrap();
    let mut decided: BTreeMap<String, bool> = BTreeMap::new();
    for i in 0..N {
        let tier = if i % 4 == 0 { "gold" } else { "free" };
        let echoed = c.get(&format!("/r/{i}"), tier);
        let (trace, flags) =
            injected(&echoed).unwrap_or_else(|| panic!("no traceparent: {echoed}"));
        // The decision travels: the kernel's flags are the prediction from the trace id.
        let want = if predicted(&trace, P) { "01" } else { "00" };
        assert_eq!(flags, want, "trace {trace}");
        decided.insert(trace, flags == "01");
    }
    assert_eq!(decided.len(), N, "a new trace per request");
    let kept: BTreeSet<&String> = decided
        .iter()
        .filter(|(_, k)| **k)
        .map(|(t, _)| t)
        .collect();
    // Binomial(2000, 0.25): mean 500, sd 19.4; ±5 sd.
    assert!((403..=597).contains(&kept.len()), "kept {}", kept.len());

    // Both spans of every kept trace (the test's CLIENT span, the echo server's SERVER span).
    let spans = sc.receiver().wait_spans(2 * kept.len(), WAIT, |_| true);
    // The RED histograms count every request, sampled or not: scraped from the agent.
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let counts = || -> Option<(f64, f64, f64)> {
        let page = tracer_tests::prometheus::scrape(&url, false).ok()?;
        let families = tracer_tests::prometheus::parse_with_python(&page, false).ok()?;
        let server = "http_server_request_duration_seconds";
        Some((
            red_count(&families, server, None),
            red_count(&families, "http_client_request_duration_seconds", None),
            // --metrics-dimension http.request.header.x-tier: a label of its own.
            red_count(&families, server, Some("gold")),
        ))
    };
    let want = N as f64;
    let counted = wait_for(WAIT, || counts().filter(|c| c.0 >= want && c.1 >= want))
        .or_else(counts)
        .unwrap_or_else(|| panic!("no metrics page at {url}"));
    let out = sc.stop().unwrap();
    assert_eq!(
        counted,
        (want, want, want / 4.0),
        "server, client and gold-tier server request counts of /r/* (the exported traces: {})",
        kept.len()
    );
    let exported: BTreeSet<&str> = out.spans.iter().map(|s| s.trace_id()).collect();
    assert_eq!(
        exported,
        kept.iter().map(|t| t.as_str()).collect::<BTreeSet<_>>(),
        "the exported traces are those the trace ids predict"
    );
    assert_eq!(out.spans.len(), 2 * kept.len(), "{} spans", spans.len());
    for s in &out.spans {
        assert_eq!(s.trace_flags(), 1, "{s:#}");
        assert_eq!(s["trace_state"].as_str(), Some("ot=th:c"), "{s:#}");
    }
    let st = &out.counters.sampling;
    assert_eq!(st.kept_traces_head as usize, kept.len(), "{st:?}");
    assert_eq!(st.kept_spans_head as usize, 2 * kept.len(), "{st:?}");
    assert_eq!(
        st.dropped_traces_unsampled as usize,
        N - kept.len(),
        "{st:?}"
    );
    assert_eq!(
        st.dropped_spans_unsampled as usize,
        2 * (N - kept.len()),
        "{st:?}"
    );
    assert_eq!((st.held_traces, st.held_bytes), (0, 0));
    println!(
        "traceidratio 0.25: kept {} of {N} traces ({:.1} %), as predicted; the RED histograms \
         counted all {N} server and client requests, {} of the gold tier",
        kept.len(),
        100.0 * kept.len() as f64 / N as f64,
        N / 4
    );
}

/// The `_count` of histogram `family` summed over its series of the echo server: a SERVER
/// series by its route (`/r/…`), a CLIENT one by its server address (the `Host` sent: `echo`);
/// with `tier`, only the series of that `x-tier` header.
fn red_count(families: &[Value], family: &str, tier: Option<&str>) -> f64 {
    families
        .iter()
        .filter(|f| f["name"] == family)
        .flat_map(|f| f["samples"].as_array().cloned().unwrap_or_default())
        .filter(|s| {
            let l = &s["labels"];
            s["name"] == format!("{family}_count")
                && if family.starts_with("http_server") {
                    l["http_route"]
                        .as_str()
                        .is_some_and(|r| r.starts_with("/r/"))
                } else {
                    l["server_address"] == "echo"
                }
                && tier.is_none_or(|t| l["http_request_header_x_tier"] == t)
        })
        .map(|s| s["value"].as_f64().unwrap_or(0.0))
        .sum()
}

/// Request heads the in-test backend received.
static HEADS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn recording_backend(mut s: TcpStream) {
    let head = read_head(&mut s);
    HEADS
        .lock()
        .unwrap()
        .push(String::from_utf8_lossy(&head).into_owned());
    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
}

/// curl (with an incoming context) → A (uninstrumented proxy) → the in-test backend, and
/// curl → A2 → B, instrumented with the OpenTelemetry SDK (its default parent-based sampler).
#[test]
fn parent_based_follows_an_unsampled_caller_downstream() {
    require_root();
    let receiver = Receiver::start(&[]).unwrap();
    let b_port = free_port();
    let endpoint = receiver.grpc_endpoint();
    let b = python_service(
        "sdk service",
        "sdk_service.py",
        &["server".into(), b_port.to_string()],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_TRACES_SAMPLER", "parentbased_always_on"),
        ],
    )
    .unwrap();
    let backend = raw_server(recording_backend);
    let (_a, a_port) = proxy(backend).unwrap();
    let (_a2, a2_port) = proxy(b_port).unwrap();
    let sc = Scenario::ports(&[a_port, a2_port, backend, b_port])
        .with_receiver(receiver)
        .args(&[
            "--traces-sampler",
            "parentbased_traceidratio",
            "--traces-sampler-arg",
            "0.25",
        ])
        .start()
        .unwrap();
    let unsampled = trace_with(1, 0xff_ffff_ffff_ffff);
    let unsampled_b = trace_with(2, 0xff_ffff_ffff_ffff);
    let sampled = trace_with(3, 1);
    let tp = |t: &str, f: &str| format!("traceparent: 00-{t}-00f067aa0ba902b7-{f}");
    for (port, trace, flags, path) in [
        (a_port, &unsampled, "00", "/no"),
        (a2_port, &unsampled_b, "00", "/no"),
        (a_port, &sampled, "01", "/yes"),
        (a2_port, &sampled, "01", "/yes"),
    ] {
        curl(&[
            "-o",
            "/dev/null",
            "-H",
            &tp(trace, flags),
            &format!("http://127.0.0.1:{port}{path}"),
        ])
        .unwrap();
    }
    // The sampled control arrives whole: the agent's spans, and the SDK's.
    let receiver = sc.receiver();
    let sdk = receiver.wait_spans(1, WAIT, |s| {
        s.res("service.name") == "sdk-service" && s.trace_id() == sampled
    });
    assert_eq!(sdk.len(), 1, "the SDK records the sampled trace");
    let agent_spans = receiver.wait_spans(6, WAIT, |s| s.trace_id() == sampled);
    assert!(agent_spans.len() >= 6, "{agent_spans:#?}");
    std::thread::sleep(Duration::from_secs(3));
    let out = sc.stop().unwrap();

    let heads = HEADS.lock().unwrap().clone();
    let downstream = |path: &str| -> (String, String) {
        let head = heads
            .iter()
            .find(|h| h.starts_with(&format!("GET /backend{path} ")))
            .unwrap_or_else(|| panic!("backend got {path}: {heads:?}"));
        injected(head).unwrap_or_else(|| panic!("no traceparent: {head}"))
    };
    assert_eq!(downstream("/no"), (unsampled.clone(), "00".to_owned()));
    assert_eq!(downstream("/yes"), (sampled.clone(), "01".to_owned()));
    for s in &out.spans {
        assert!(
            s.trace_id() != unsampled && s.trace_id() != unsampled_b,
            "nothing of the unsampled traces is exported: {s:#}"
        );
    }
    let sdk_all: Vec<&Value> = out
        .spans
        .iter()
        .filter(|s| s.res("service.name") == "sdk-service")
        .collect();
    assert_eq!(
        sdk_all.len(),
        1,
        "the SDK recorded nothing else: {sdk_all:#?}"
    );
    // The sampled trace: curl, A's server and client, the backend; curl, A2's, B's (agent).
    assert_eq!(
        out.spans
            .iter()
            .filter(|s| s.trace_id() == sampled && s.res("service.name") != "sdk-service")
            .count(),
        8
    );
    drop(b);
}

fn failing_backend(mut s: TcpStream) {
    read_head(&mut s);
    let _ = s.write_all(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
}

fn slow_backend(mut s: TcpStream) {
    read_head(&mut s);
    std::thread::sleep(Duration::from_millis(500));
    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nslow");
}

/// At ratio 0.01, curl → proxy → backend traces: each with a 5xx (an in-test backend answers
/// 503), and each slower than the
/// threshold, is kept with all four of its spans; fast ones are kept only as the ratio says.
/// Then a late span of a dropped trace and of a kept one, and a header-attribute policy (on a
/// header sent on two lines: a two-element array).
#[test]
fn tail_policies_keep_error_and_slow_traces_whole() {
    require_root();
    let (server, server_port) = test_http_server().unwrap();
    let failing = raw_server(failing_backend);
    let (_p1, p1_port) = proxy(failing).unwrap();
    let slow = raw_server(slow_backend);
    let (_p2, p2_port) = proxy(slow).unwrap();
    let (_p3, p3_port) = proxy(server_port).unwrap();
    let sc = Scenario::ports(&[p1_port, p2_port, p3_port, server_port, failing, slow])
        .args(&[
            "--traces-sampler",
            "traceidratio",
            "--traces-sampler-arg",
            "0.01",
            "--sampling-keep-slower-than",
            "300ms",
            "--sampling-decision-wait",
            "1s",
            "--capture-request-header",
            "X-Tier",
            "--capture-request-header",
            "authorization",
            "--capture-response-header",
            "content-type",
            "--sampling-keep-attribute",
            "http.request.header.x-tier=gold",
        ])
        .start()
        .unwrap();
    let get = |url: String, headers: &[&str]| {
        let mut args = vec!["-s", "-o", "/dev/null"];
        for h in headers {
            args.extend(["-H", h]);
        }
        args.push(&url);
        curl(&args).unwrap();
    };
    for i in 0..5 {
        get(format!("http://127.0.0.1:{p1_port}/fail?e={i}"), &[]);
    }
    for i in 0..3 {
        get(format!("http://127.0.0.1:{p2_port}/slow?s={i}"), &[]);
    }
    for i in 0..20 {
        get(format!("http://127.0.0.1:{p3_port}/fast?f={i}"), &[]);
    }
    // Late spans: a dropped trace (decided at the wait's end) gets an error after it; a kept
    // one (an error) gets a plain request after it. Both follow their decision.
    let dropped = trace_with(9, 5);
    let kept = trace_with(10, 5);
    let tp = |t: &str| format!("traceparent: 00-{t}-00f067aa0ba902b7-01");
    let direct = format!("http://127.0.0.1:{server_port}");
    get(format!("{direct}/late-first"), &[&tp(&dropped)]);
    get(format!("{direct}/status/500"), &[&tp(&kept)]);
    std::thread::sleep(Duration::from_millis(3000));
    get(format!("{direct}/status/500"), &[&tp(&dropped)]);
    get(format!("{direct}/late-second"), &[&tp(&kept)]);
    // A header value the attribute policy keeps; a sensitive header not allowed.
    let gold = trace_with(11, 5);
    get(
        format!("{direct}/tier"),
        &[
            &tp(&gold),
            "X-Tier: free",
            "X-Tier: gold",
            "Authorization: Bearer s3cr3t",
        ],
    );
    sc.receiver().wait_spans(2, WAIT, |s| s.trace_id() == gold);
    std::thread::sleep(Duration::from_secs(2));
    let out = sc.stop().unwrap();

    let mut traces: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for s in &out.spans {
        traces.entry(s.trace_id()).or_default().push(s);
    }
    let whole = |pred: &dyn Fn(&Value) -> bool, want: usize, what: &str| {
        let ids: BTreeSet<&str> = out
            .spans
            .iter()
            .filter(|s| pred(s))
            .map(|s| s.trace_id())
            .collect();
        assert_eq!(ids.len(), want, "{what}: {ids:?}");
        for id in &ids {
            let spans = &traces[id];
            assert_eq!(spans.len(), 4, "{what} trace {id} whole: {spans:#?}");
            assert!(spans.iter().all(|s| s.trace_flags() == 1));
        }
        // Those the head ratio kept anyway (1 % each) count as head, not as the policy's.
        ids.iter().filter(|id| predicted(id, 0.01)).count() as u64
    };
    let server_pid = server.pid() as i64;
    let errors_by_head = whole(
        &|s| s.kind() == "SPAN_KIND_SERVER" && s.attr_i64("http.response.status_code") == 503,
        5,
        "5xx",
    );
    let slow_by_head = whole(
        &|s| s.kind() == "SPAN_KIND_SERVER" && s.attr_str("url.path") == "/slow",
        3,
        "slow",
    );
    // Fast traces: only those the ratio keeps (about none at 0.01), consistently.
    for s in out
        .spans
        .iter()
        .filter(|s| s.attr_str("url.path") == "/backend/fast")
    {
        assert!(predicted(s.trace_id(), 0.01), "{s:#}");
    }
    let late_dropped: Vec<_> = out
        .spans
        .iter()
        .filter(|s| s.trace_id() == dropped)
        .collect();
    assert!(late_dropped.is_empty(), "{late_dropped:#?}");
    let late_kept: Vec<_> = out
        .spans
        .iter()
        .filter(|s| s.trace_id() == kept && s.res("process.pid").as_i64() == Some(server_pid))
        .map(|s| s.attr_str("url.path"))
        .collect();
    assert_eq!(late_kept.len(), 2, "{late_kept:?}");
    let tier: Vec<&&Value> = traces[gold.as_str()]
        .iter()
        .filter(|s| s.kind() == "SPAN_KIND_SERVER")
        .collect();
    assert_eq!(tier.len(), 1);
    // A string array, one element per header line; the policy matched its second element.
    assert_eq!(
        tier[0].attr("http.request.header.x-tier"),
        &serde_json::json!(["free", "gold"])
    );
    assert_eq!(
        tier[0].attr("http.request.header.authorization"),
        &Value::Null
    );
    let content_type = tier[0].attr("http.response.header.content-type");
    assert!(
        content_type.as_array().is_some_and(
            |a| a.len() == 1 && a[0].as_str().is_some_and(|v| v.starts_with("text/plain"))
        ),
        "{content_type}"
    );
    assert!(out.log.contains("header `authorization` is not captured"));

    let st = &out.counters.sampling;
    assert_eq!(st.kept_traces_error, 6 - errors_by_head, "{st:?}");
    assert_eq!(st.kept_traces_slow, 3 - slow_by_head, "{st:?}");
    assert_eq!(st.kept_traces_attribute, 1, "{st:?}");
    // The late spans: the dropped trace's second request (curl's span and the server's), the
    // kept one's (both, and the spans of each kept trace that came after its match).
    assert_eq!(st.late_spans_dropped, 2, "{st:?}");
    assert!(st.late_spans_kept >= 2, "{st:?}");
    assert_eq!((st.held_traces, st.held_bytes), (0, 0));
}

/// A full hold buffer decides its oldest traces early, counted; nothing held is kept past it.
#[test]
fn a_full_hold_buffer_decides_early_and_counts() {
    require_root();
    let (_server, port) = test_http_server().unwrap();
    let sc = Scenario::ports(&[port])
        .args(&[
            "--traces-sampler",
            "traceidratio",
            "--traces-sampler-arg",
            "0.01",
            "--sampling-max-traces",
            "4",
            "--sampling-decision-wait",
            "60s",
        ])
        .start()
        .unwrap();
    for i in 0..12u64 {
        let tp = format!(
            "traceparent: 00-{}-00f067aa0ba902b7-01",
            trace_with(100 + i, 7)
        );
        curl(&[
            "-s",
            "-o",
            "/dev/null",
            "-H",
            &tp,
            &format!("http://127.0.0.1:{port}/o/{i}"),
        ])
        .unwrap();
    }
    // Both spans of the last request are in.
    let seen = wait_for(WAIT, || {
        let lines = sc.agent.proc.stderr();
        let c = Counters::last_periodic(&lines)?.ok()?;
        (c.sampling.dropped_spans_overflow + 2 * c.sampling.held_traces >= 24).then_some(c)
    })
    .expect("periodic counters with every span");
    assert_eq!(seen.sampling.held_traces, 4, "{:?}", seen.sampling);
    let out = sc.stop().unwrap();
    assert!(out.spans.is_empty(), "{:#?}", out.spans);
    let st = &out.counters.sampling;
    assert_eq!(st.dropped_traces_overflow, 8, "{st:?}");
    assert_eq!(st.dropped_spans_overflow, 16, "{st:?}");
    assert_eq!(st.dropped_traces_unsampled, 4, "{st:?}");
    assert_eq!(st.held_traces, 0);
}
