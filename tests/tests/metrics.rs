//! Privileged end-to-end: span metrics and the agent's counters, scraped by a real Prometheus
//! server (Debian's `prometheus`, exemplar storage on) and pushed over OTLP to the real
//! receiver, while real services (tests/servers/red_service.py) serve known traffic: routes
//! with known latencies and errors, and a service A calling B three times per request.
use std::{process::Command, time::Duration};

use serde_json::Value;
use tracer_tests::prometheus::{Prometheus, parse_with_python, scrape};
use tracer_tests::*;

const WAIT: Duration = Duration::from_secs(30);

/// red_service.py on a free port, named `service` (OTEL_SERVICE_NAME, read by the agent from
/// the process's environment), calling `downstream` for /fanout.
fn red_service(service: &str, downstream: Option<u16>) -> (Proc, u16) {
    let port = free_port();
    let mut cmd = Command::new("python3");
    cmd.arg(workspace_root().join("tests/servers/red_service.py"))
        .arg(port.to_string())
        .env("OTEL_SERVICE_NAME", service);
    if let Some(d) = downstream {
        cmd.args(["--downstream", &d.to_string()]);
    }
    let p = Proc::spawn(service, &mut cmd).unwrap();
    p.wait_line("READY", Duration::from_secs(10)).unwrap();
    (p, port)
}

/// `n` GETs of `path` on one keep-alive connection (curl reuses it across its URLs).
fn get(port: u16, path: &str, n: usize) {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut args: Vec<&str> = Vec::new();
    for _ in 0..n {
        args.extend(["-o", "/dev/null", &url]);
    }
    curl(&args).unwrap();
}

fn is_server_of(s: &Value, ports: &[u16]) -> bool {
    s.kind() == "SPAN_KIND_SERVER"
        && ports
            .iter()
            .any(|p| s.attr_i64("server.port") == i64::from(*p))
}

/// The agent's Prometheus endpoint on a free loopback port: the arguments and the address.
fn prometheus_endpoint() -> (Vec<String>, String) {
    let port = free_port();
    (
        vec![
            "--prometheus-host".into(),
            "127.0.0.1".into(),
            "--prometheus-port".into(),
            port.to_string(),
        ],
        format!("127.0.0.1:{port}"),
    )
}

/// Known traffic through A and B, scraped by Prometheus every second: request counts per
/// route, the p95 of the slow route, the error ratio, exemplars that are traces the receiver
/// got, fan-out 3 and the A→B edge; and both page formats parse with the official parsers.
#[test]
fn red_metrics_service_graph_and_exemplars_in_prometheus() {
    let (_b, b_port) = red_service("svc-b", None);
    let (_a, a_port) = red_service("svc-a", Some(b_port));
    let (args, addr) = prometheus_endpoint();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sc = Scenario::ports(&[a_port, b_port])
        .args(&args)
        .env("OTEL_METRICS_EXPORTER", "prometheus")
        .start()
        .unwrap();
    let prom = Prometheus::start(std::slice::from_ref(&addr)).unwrap();

    get(a_port, "/fast", 20);
    get(a_port, "/slow", 10);
    get(a_port, "/fail", 10);
    get(a_port, "/fanout", 5);
    // 45 server spans of A, 15 of B.
    sc.wait_spans(60, WAIT, |s| is_server_of(s, &[a_port, b_port]));

    let a = "service_name=\"svc-a\"";
    let count = |route: &str| {
        format!("sum(http_server_request_duration_seconds_count{{{a},http_route=\"{route}\"}})")
    };
    for (route, n) in [
        ("/fast", 20.0),
        ("/slow", 10.0),
        ("/fail", 10.0),
        ("/fanout", 5.0),
    ] {
        let got = prom.wait_value(&count(route), WAIT, |v| v == n);
        assert_eq!(got, Some(n), "requests of {route}\n{}", summary(&sc.log()));
    }
    let p95 = prom
        .value(&format!(
            "histogram_quantile(0.95, sum by (le) \
             (http_server_request_duration_seconds_bucket{{{a},http_route=\"/slow\"}}))"
        ))
        .unwrap();
    assert!(
        p95 > 0.25 && p95 <= 0.5,
        "/slow sleeps 300 ms: its p95 is in the (0.25, 0.5] bucket, got {p95}"
    );
    let errors = prom
        .value(&format!(
            "sum(http_server_request_duration_seconds_count{{{a},http_response_status_code=~\"5..\"}}) \
             / sum(http_server_request_duration_seconds_count{{{a}}})"
        ))
        .unwrap();
    assert!((errors - 10.0 / 45.0).abs() < 1e-9, "error ratio {errors}");
    let fanout = prom.wait_value(
        &format!(
            "sum(tracer_server_fanout_sum{{{a},http_route=\"/fanout\"}}) \
             / sum(tracer_server_fanout_count{{{a},http_route=\"/fanout\"}})"
        ),
        WAIT,
        |v| v == 3.0,
    );
    assert_eq!(
        fanout,
        Some(3.0),
        "fan-out of /fanout\n{}",
        summary(&sc.log())
    );
    let edge = prom.wait_value(
        "sum(traces_service_graph_request_total{client=\"svc-a\",server=\"svc-b\"})",
        WAIT,
        |v| v == 15.0,
    );
    assert_eq!(edge, Some(15.0), "A→B calls: 3 per /fanout request");
    assert_eq!(
        prom.value("sum(tracer_spans_total)").map(|v| v > 0.0),
        Some(true),
        "the agent's own counters are scraped too"
    );
    let exemplars = wait_for(WAIT, || {
        let e = prom
            .exemplars(&format!(
                "http_server_request_duration_seconds_bucket{{{a}}}"
            ))
            .unwrap();
        (!e.is_empty()).then_some(e)
    })
    .expect("Prometheus stored exemplars of svc-a's request durations");

    // Both formats of the page, through the official Python parsers.
    let url = format!("http://{addr}/metrics");
    let om = parse_with_python(&scrape(&url, true).unwrap(), true).unwrap();
    let classic = parse_with_python(&scrape(&url, false).unwrap(), false).unwrap();
    for families in [&om, &classic] {
        let family = |name: &str| {
            families
                .iter()
                .find(|f| f["name"] == name)
                .unwrap_or_else(|| panic!("family {name} in {families:#?}"))
        };
        assert_eq!(
            family("http_server_request_duration_seconds")["type"],
            "histogram"
        );
        assert_eq!(family("tracer_events")["type"], "counter");
        assert_eq!(family("tracer_queue_len")["type"], "gauge");
        assert_eq!(family("traces_service_graph_request")["type"], "counter");
    }
    let with_exemplar = om
        .iter()
        .flat_map(|f| f["samples"].as_array().cloned().unwrap_or_default())
        .filter(|s| !s["exemplar"].is_null())
        .count();
    assert!(with_exemplar > 0, "OpenMetrics carries exemplars");

    let done = sc.stop().unwrap();
    let exported: std::collections::HashSet<&str> =
        done.spans.iter().map(|s| s.trace_id()).collect();
    for e in &exemplars {
        let id = e["trace_id"].as_str().unwrap_or_default();
        assert!(
            exported.contains(id),
            "exemplar trace {id} was exported to the receiver"
        );
    }
}

/// OTLP metrics to a receiver of their own (`OTEL_EXPORTER_OTLP_METRICS_*`; gRPC every
/// second, HTTP by the final export at shutdown only): the duration histogram, cumulative,
/// with exemplars of exported traces, under the service's resource; the agent's counters
/// under its own.
fn otlp_metrics(http: bool) {
    let (_svc, port) = red_service("svc-otlp", None);
    let metrics = Receiver::start(&[]).unwrap();
    let (endpoint, protocol) = if http {
        (
            format!("{}/v1/metrics", metrics.http_endpoint()),
            "http/protobuf",
        )
    } else {
        (metrics.grpc_endpoint(), "grpc")
    };
    let mut setup = Scenario::ports(&[port])
        .env("OTEL_METRICS_EXPORTER", "otlp")
        .env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", &endpoint)
        .env("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", protocol);
    if !http {
        setup = setup.env("OTEL_METRIC_EXPORT_INTERVAL", "1000");
    }
    let sc = setup.start().unwrap();
    get(port, "/slow", 3);
    sc.wait_spans(3, WAIT, |s| is_server_of(s, &[port]));
    let is_duration = |p: &Value| {
        p["name"] == "http.server.request.duration"
            && p["resource"]["service.name"] == "svc-otlp"
            && p["count"].as_u64() == Some(3)
    };
    if http {
        assert!(
            metrics.metric_points().is_empty(),
            "nothing before the first interval (60 s)"
        );
    } else {
        let periodic = metrics.wait_metric_points(WAIT, is_duration);
        assert!(
            !periodic.is_empty(),
            "periodic export\n{}",
            summary(&sc.log())
        );
    }
    let done = sc.stop().unwrap();
    // The final export ran before the agent exited.
    let points = metrics.metric_points();
    let duration = points
        .iter()
        .rev()
        .find(|p| is_duration(p))
        .unwrap_or_else(|| panic!("duration histogram of svc-otlp in {points:#?}"));
    let transport = if http { "http" } else { "grpc" };
    assert_eq!(duration["transport"], transport);
    assert_eq!(duration["type"], "histogram");
    assert_eq!(
        duration["temporality"],
        "AGGREGATION_TEMPORALITY_CUMULATIVE"
    );
    assert_eq!(duration["scope"]["name"], "tracer");
    assert!(
        duration["resource"]["host.name"]
            .as_str()
            .is_some_and(|h| !h.is_empty())
    );
    let buckets: Vec<u64> = duration["bucket_counts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(buckets.iter().sum::<u64>(), 3);
    assert_eq!(
        buckets.len(),
        duration["explicit_bounds"].as_array().unwrap().len() + 1
    );
    let traces: std::collections::HashSet<&str> = done.spans.iter().map(|s| s.trace_id()).collect();
    let exemplars = duration["exemplars"].as_array().unwrap();
    assert!(!exemplars.is_empty(), "{duration:#}");
    for e in exemplars {
        let id = e["trace_id"].as_str().unwrap_or_default();
        assert!(traces.contains(id), "exemplar trace {id} was exported");
        assert!(e["value"].as_f64().unwrap() >= 0.3, "{e}");
    }
    let spans = points
        .iter()
        .rev()
        .find(|p| p["name"] == "tracer.spans")
        .unwrap_or_else(|| panic!("the agent's tracer.spans in {points:#?}"));
    assert_eq!(spans["resource"]["service.name"], "tracer");
    assert_eq!(spans["type"], "sum");
    assert_eq!(spans["monotonic"], true);
    assert_eq!(spans["temporality"], "AGGREGATION_TEMPORALITY_CUMULATIVE");
    assert!(spans["value"].as_u64() >= Some(3), "{spans}");
}

#[test]
fn otlp_metrics_grpc() {
    otlp_metrics(false);
}

#[test]
fn otlp_metrics_http_final_export() {
    otlp_metrics(true);
}

/// A Prometheus port already taken: one clear error line, a failed exit, no panic.
#[test]
fn prometheus_port_taken_is_one_error_line() {
    require_root();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let mut cmd = Command::new(tracer_bin().unwrap());
    cmd.args(["--prometheus-host", "127.0.0.1", "--prometheus-port", &port]);
    cmd.env("TRACER_UI_LISTEN", "off");
    for (k, _) in std::env::vars() {
        if k.starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
    let mut p = Proc::spawn("tracer", &mut cmd).unwrap();
    let status = p.wait_exit(Duration::from_secs(30)).unwrap();
    let stderr = p.stderr().join("\n");
    assert!(!status.success(), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains(&format!(
            "cannot listen for Prometheus scrapes on 127.0.0.1:{port}"
        )) && errors[0].contains("in use"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `i` as a path word of letters `g`..`z`: no digit, no hex run, shorter than a token, so the
/// route heuristic keeps every one distinct.
fn word(mut i: usize) -> String {
    let mut w = String::new();
    for _ in 0..4 {
        w.push(char::from(b'g' + (i % 20) as u8));
        i /= 20;
    }
    w
}

/// 10,000 distinct unparameterisable paths: the server duration histogram holds the cap
/// (2000) series, the rest go to the overflow series (`otel_metric_overflow="true"`) and are
/// counted (`tracer_metrics_overflow_total`); the agent's memory stays bounded.
#[test]
fn cardinality_stays_at_the_cap() {
    const PATHS: usize = 10_000;
    const CAP: usize = 2000;
    let (_svc, port) = red_service("svc-many", None);
    let (args, addr) = prometheus_endpoint();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sc = Scenario::ports(&[port])
        .args(&args)
        .env("OTEL_METRICS_EXPORTER", "prometheus")
        .no_export()
        .start()
        .unwrap();
    // One keep-alive connection, one request per path.
    let paths: Vec<String> = (0..PATHS).map(|i| format!("/page/{}", word(i))).collect();
    let script = format!(
        "import http.client, sys\n\
         c = http.client.HTTPConnection('127.0.0.1', {port}, timeout=10)\n\
         for p in sys.stdin.read().split():\n    \
             c.request('GET', p); c.getresponse().read()\n"
    );
    let mut child = Command::new("python3")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(paths.join("\n").as_bytes()).unwrap();
    }
    assert!(child.wait().unwrap().success());

    let url = format!("http://{addr}/metrics");
    let sample = |page: &str, prefix: &str| -> Option<f64> {
        page.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse().ok())
    };
    let svc = "service_name=\"svc-many\"";
    // The overflow series stands for every label set beyond the cap: no identity either.
    let overflow_count =
        "http_server_request_duration_seconds_count{otel_metric_overflow=\"true\"} ";
    let page = wait_for(WAIT, || {
        let page = scrape(&url, false).ok()?;
        let overflowed = sample(
            &page,
            "tracer_metrics_overflow_total{metric=\"http.server.request.duration\"} ",
        )?;
        (overflowed >= (PATHS - CAP) as f64).then_some(page)
    })
    .unwrap_or_else(|| scrape(&url, false).unwrap());
    let series = sample(
        &page,
        "tracer_metrics_series{metric=\"http.server.request.duration\"} ",
    );
    let overflowed = sample(
        &page,
        "tracer_metrics_overflow_total{metric=\"http.server.request.duration\"} ",
    );
    let log = summary(&sc.log());
    assert_eq!(series, Some(CAP as f64), "{log}");
    assert_eq!(overflowed, Some((PATHS - CAP) as f64), "{log}");
    assert_eq!(
        sample(&page, overflow_count),
        Some((PATHS - CAP) as f64),
        "the overflow series counts the rest"
    );
    let routes = page
        .lines()
        .filter(|l| l.starts_with("http_server_request_duration_seconds_count{") && l.contains(svc))
        .count();
    assert_eq!(routes, CAP, "the cap's series of svc-many");
    // The page still parses at this size.
    parse_with_python(&page, false).unwrap();
    let rss_mib = rss_kib(sc.agent.proc.pid()) / 1024;
    assert!(rss_mib < 256, "agent RSS {rss_mib} MiB after {PATHS} paths");
    sc.stop().unwrap();
}

/// OTLP metrics to an endpoint nobody listens on: failed exports are counted
/// (`tracer_metrics_export_failed_total` on the Prometheus page) and warned about once, not
/// once per export; the agent keeps running and stops cleanly.
#[test]
fn otlp_metrics_failures_are_counted_and_warned_once() {
    let (_svc, port) = red_service("svc-dead", None);
    let (args, addr) = prometheus_endpoint();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let sc = Scenario::ports(&[port])
        .args(&args)
        .env("OTEL_METRICS_EXPORTER", "prometheus,otlp")
        .env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", &dead)
        .env("OTEL_METRIC_EXPORT_INTERVAL", "500")
        .env("OTEL_METRIC_EXPORT_TIMEOUT", "400")
        .no_export()
        .start()
        .unwrap();
    get(port, "/fast", 2);
    let url = format!("http://{addr}/metrics");
    let failed = wait_for(WAIT, || {
        let page = scrape(&url, false).ok()?;
        let n: f64 = page
            .lines()
            .find_map(|l| l.strip_prefix("tracer_metrics_export_failed_total "))?
            .trim()
            .parse()
            .ok()?;
        (n >= 3.0).then_some(n)
    });
    assert!(
        failed.is_some(),
        "failed exports counted\n{}",
        summary(&sc.log())
    );
    let done = sc.stop().unwrap();
    let warnings = done
        .log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("metric export"))
        .count();
    assert!(
        (1..=2).contains(&warnings),
        "at most one warning per 30 s (and the final export's): {}",
        done.summary()
    );
}
