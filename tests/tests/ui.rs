//! Privileged end-to-end: the node-local view of a running agent while real traffic flows
//! (curl → a Python frontend → a Python backend, and an error request), read as a user reads
//! it: the page in headless Chromium (its DOM after the scripts ran, screenshots, and its live
//! list driven over the DevTools protocol by tests/src/browser_live.py), the same page in
//! Firefox (driven over WebDriver BiDi by tests/src/firefox_page.py) and `tracer top` in a
//! real terminal (tmux). Nothing is faked.
use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use tracer_tests::*;

const REQUESTS: u64 = 5;
const WAIT: Duration = Duration::from_secs(30);
const CHROMIUM: &str = "chromium-headless-shell";

/// Where the test leaves what a person should look at (screenshots, the terminal capture).
fn artifacts() -> PathBuf {
    let dir = workspace_root().join("target/ui-test");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn api(ui: &str, path: &str) -> Value {
    let body = curl(&[&format!("http://{ui}{path}")]).unwrap();
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// The page at `fragment` after its scripts ran (Chromium's virtual time lets the fetches and
/// the rendering finish), as HTML. Its virtual time stands still while a request is open, so
/// the page is opened with its live stream off (`live=off`); the stream is read with curl.
fn dom(ui: &str, fragment: &str) -> String {
    let out = Command::new("timeout")
        .args(["60", CHROMIUM, "--no-sandbox", "--disable-gpu"])
        .args(["--virtual-time-budget=8000", "--dump-dom"])
        .arg(format!("http://{ui}/{fragment}"))
        .output()
        .expect("running chromium-headless-shell (cargo xtask setup --test-deps)");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn screenshot(ui: &str, fragment: &str, name: &str) -> PathBuf {
    let path = artifacts().join(name);
    let out = Command::new("timeout")
        .args([
            "60",
            CHROMIUM,
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .args(["--virtual-time-budget=8000", "--window-size=1480,1250"])
        .arg(format!("--screenshot={}", path.display()))
        .arg(format!("http://{ui}/{fragment}"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && path.exists(),
        "chromium screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("screenshot: {}", path.display());
    path
}

/// The start tags in `html` that open with `<{tag} ` and carry `needle`.
fn tags<'a>(html: &'a str, tag: &str, needle: &str) -> Vec<&'a str> {
    html.split(&format!("<{tag} "))
        .skip(1)
        .map(|t| &t[..t.find('>').unwrap_or(t.len())])
        .filter(|t| t.contains(needle))
        .collect()
}

fn attr<'a>(tag: &'a str, name: &str) -> &'a str {
    let key = format!("{name}=\"");
    tag.find(&key)
        .map(|i| {
            let rest = &tag[i + key.len()..];
            &rest[..rest.find('"').unwrap_or(rest.len())]
        })
        .unwrap_or("")
}

/// Every byte but ASCII letters and digits as %XX (a URL fragment's parameter value).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The page at `fragment` in Firefox (tests/src/firefox_page.py: firefox-esr headless, driven
/// over WebDriver BiDi, a throwaway profile) once the JavaScript condition `ready` holds: its
/// HTML, and the screenshot it wrote to the artifacts as `name`.
fn firefox(ui: &str, fragment: &str, ready: &str, name: &str) -> (String, PathBuf) {
    let path = artifacts().join(name);
    let _ = std::fs::remove_file(&path);
    let started = Instant::now();
    let out = Command::new("timeout")
        .arg("90")
        .arg("python3")
        .arg(workspace_root().join("tests/src/firefox_page.py"))
        .arg(format!("http://{ui}/{fragment}"))
        .arg(ready)
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && path.exists(),
        "Firefox (firefox-esr: cargo xtask setup --test-deps) did not show the page: {stderr}\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    println!(
        "{stderr}Firefox showed the page in {:.1} s; screenshot: {}",
        started.elapsed().as_secs_f64(),
        path.display()
    );
    (String::from_utf8_lossy(&out.stdout).into_owned(), path)
}

/// The route of `service`'s `kind` spans of the chain (`/api/orders`) in the API's `routes`.
fn route(routes: &Value, service: &str, kind: &str) -> Value {
    routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            r["service"] == service
                && r["kind"] == kind
                && r["route"].as_str().unwrap().contains("/api/orders")
        })
        .cloned()
        .unwrap_or_else(|| panic!("no {service} {kind} route in {routes:#}"))
}

/// The page (`html`, as `browser` drew it) shows the traffic as the API has it: a row per route
/// with the counts sent, the failing routes and the `error_spans` failed requests marked, every
/// span in the live list, and the frontend → backend edge on the map.
fn assert_dashboard(browser: &str, html: &str, routes: &Value, error_spans: usize) {
    for r in [
        route(routes, "frontend", "server"),
        route(routes, "frontend", "client"),
        route(routes, "backend", "server"),
    ] {
        let rows: Vec<&str> = tags(html, "tr", "class=\"route")
            .into_iter()
            .filter(|t| {
                attr(t, "data-service") == r["service"]
                    && attr(t, "data-kind") == r["kind"]
                    && attr(t, "data-route") == r["route"]
            })
            .collect();
        assert_eq!(rows.len(), 1, "{browser}: {r}: {html}");
        assert_eq!(
            attr(rows[0], "data-count"),
            REQUESTS.to_string(),
            "{browser}: {}",
            rows[0]
        );
        assert_eq!(attr(rows[0], "data-errors"), "0", "{browser}: {}", rows[0]);
    }
    // Every route with an error (the backend's 503, and curl's side of it) is marked, as is
    // every failed request in the live list.
    let error_route = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["service"] == "backend" && r["errors"].as_u64() == Some(1))
        .unwrap_or_else(|| panic!("no failing backend route: {routes:#}"));
    let marked: Vec<&str> = tags(html, "tr", "class=\"route clickable error\"");
    let failing = routes
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["errors"].as_u64() > Some(0))
        .count();
    assert_eq!(marked.len(), failing, "{browser}: {html}");
    assert!(
        marked.iter().any(|t| attr(t, "data-service") == "backend"
            && attr(t, "data-route") == error_route["route"]),
        "{browser}: {marked:#?}"
    );
    let live_errors = tags(html, "tr", "data-error=\"true\"");
    assert_eq!(
        live_errors.len(),
        error_spans,
        "{browser}: the live list marks the failed requests: {html}"
    );
    // Every span so far: 4 per chained request, curl's and the backend's for the 503.
    let live = tags(html, "tr", "class=\"request");
    assert_eq!(
        live.len() as u64,
        4 * REQUESTS + 2,
        "{browser}: live requests: {html}"
    );
    // The service map from this node's span pairs: frontend → backend.
    assert_eq!(
        tags(
            html,
            "g",
            "data-client=\"frontend\" data-server=\"backend\""
        )
        .len(),
        1,
        "{browser}: {html}"
    );
}

/// The trace view (`html`, as `browser` drew it) of one chained request: curl's client span,
/// the frontend's server span, its client span and the backend's server span, nested in that
/// order (each the child of the row above), all on the critical path, with how each parent
/// was found.
fn assert_trace(browser: &str, html: &str) {
    let spans = tags(html, "div", "class=\"wf-row span-row");
    let got: Vec<(&str, &str, &str, &str)> = spans
        .iter()
        .map(|t| {
            (
                attr(t, "data-service"),
                attr(t, "data-kind"),
                attr(t, "data-depth"),
                attr(t, "data-critical"),
            )
        })
        .collect();
    assert_eq!(got.len(), 4, "{browser}: {spans:#?}");
    assert_eq!(
        got[1..],
        [
            ("frontend", "server", "1", "true"),
            ("frontend", "client", "2", "true"),
            ("backend", "server", "3", "true"),
        ],
        "{browser}: {spans:#?}"
    );
    assert_eq!(
        (got[0].1, got[0].2, got[0].3),
        ("client", "0", "true"),
        "{browser}: curl's span: {spans:#?}"
    );
    for pair in spans.windows(2) {
        assert_eq!(
            attr(pair[1], "data-parent-id"),
            attr(pair[0], "data-span-id"),
            "{browser}: {pair:#?}"
        );
    }
    assert!(
        html.contains("data-parent-source=\""),
        "{browser}: the parent source is shown"
    );
}

#[test]
fn the_page_and_tracer_top_show_routes_traces_and_errors() {
    require_root();
    let backend_port = free_port();
    let backend = python_service(
        "backend",
        "http_server.py",
        &[backend_port.to_string()],
        &[("OTEL_SERVICE_NAME", "backend")],
    )
    .unwrap();
    let frontend_port = free_port();
    let frontend = python_service(
        "frontend",
        "proxy.py",
        &[frontend_port.to_string(), backend_port.to_string()],
        &[("OTEL_SERVICE_NAME", "frontend")],
    )
    .unwrap();
    let ui = format!("127.0.0.1:{}", free_port());
    let sc = Scenario::ports(&[frontend_port, backend_port])
        .args(&["--inject-traceparent", "off", "--ui-listen", &ui])
        .no_export()
        .start()
        .unwrap();
    assert!(
        sc.log().contains(&format!("node-local view: http://{ui}/")),
        "{}",
        sc.log()
    );

    for _ in 0..REQUESTS {
        curl(&[
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{frontend_port}/api/orders"),
        ])
        .unwrap();
    }
    curl(&[
        "-o",
        "/dev/null",
        &format!("http://127.0.0.1:{backend_port}/status/503"),
    ])
    .unwrap();

    // The routes as the API has them once every span arrived: four of the chain, one error.
    let started = Instant::now();
    let routes = loop {
        let routes = api(&ui, "/api/routes");
        let rows = routes.as_array().unwrap();
        let chain: u64 = rows
            .iter()
            .filter(|r| r["route"].as_str().unwrap_or("").contains("/api/orders"))
            .map(|r| r["count"].as_u64().unwrap())
            .sum();
        let errors: u64 = rows.iter().map(|r| r["errors"].as_u64().unwrap()).sum();
        if chain == 4 * REQUESTS && errors >= 1 {
            break routes;
        }
        assert!(started.elapsed() < WAIT, "routes: {routes:#}\n{}", sc.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    let error_spans = api(&ui, "/api/spans?status=error")
        .as_array()
        .unwrap()
        .len();
    assert!(error_spans > 0);

    // One request's trace: curl → frontend → frontend's call → backend, nested, all critical.
    let traces = api(
        &ui,
        "/api/traces?service=frontend&kind=server&order=slowest&limit=1",
    );
    let trace_id = traces[0]["trace_id"].as_str().unwrap().to_owned();

    // Firefox, while Chromium works: the trace's page with its live stream on, read once it
    // has drawn the routes, the live list, the map and the waterfall, and its header counts
    // the page's own stream among the agent's live clients.
    let ready = format!(
        "document.querySelectorAll('tr.route').length >= {n_routes} \
         && document.querySelectorAll('tr.request').length >= {live} \
         && document.querySelector('g[data-client=\"frontend\"][data-server=\"backend\"]') \
         && document.querySelectorAll('div.span-row').length >= 4 \
         && /[1-9][0-9]* live clients/.test(document.getElementById('stats').textContent)",
        n_routes = routes.as_array().unwrap().len(),
        live = 4 * REQUESTS + 2,
    );
    let in_firefox = {
        let (ui, fragment) = (ui.clone(), format!("#trace={trace_id}"));
        std::thread::spawn(move || firefox(&ui, &fragment, &ready, "ui-firefox.png"))
    };

    // Headless Chromium: the page as loaded (its DOM after the scripts ran).
    let html = dom(&ui, "#live=off");
    assert_dashboard("chromium", &html, &routes, error_spans);
    let html = dom(&ui, &format!("#live=off&trace={trace_id}"));
    assert_trace("chromium", &html);
    // A route's row opens its slowest stored traces: all five, slowest first.
    let frontend_in = route(&routes, "frontend", "server");
    let key = serde_json::json!([
        frontend_in["service"],
        frontend_in["kind"],
        frontend_in["route"]
    ]);
    let html = dom(
        &ui,
        &format!("#live=off&route={}", percent_encode(&key.to_string())),
    );
    let listed = tags(&html, "tr", "class=\"clickable\" data-trace-id=");
    assert_eq!(listed.len() as u64, REQUESTS, "{html}");
    let shot = screenshot(&ui, &format!("#live=off&trace={trace_id}"), "ui.png");
    screenshot(&ui, "#live=off", "ui-dashboard.png");
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);

    // Firefox's page: the same checks.
    let (html, shot) = in_firefox
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    assert_dashboard("firefox", &html, &routes, error_spans);
    assert_trace("firefox", &html);
    assert!(html.contains("live clients") && !html.contains("<b>0</b> live clients"));
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);

    // tracer top in a real terminal, against the same agent.
    let session = format!("tracer-ui-test-{}", std::process::id());
    let top = format!("{} top --connect {ui}", tracer_bin().unwrap().display());
    let status = Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-x",
            "160",
            "-y",
            "48",
            "-s",
            &session,
            &top,
        ])
        .status()
        .expect("tmux (cargo xtask setup --test-deps)");
    assert!(status.success());
    let capture = || {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &session])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let started = Instant::now();
    let screen = loop {
        let screen = capture();
        if screen.contains("Trace ") && screen.contains('█') && screen.contains("/api/orders") {
            break screen;
        }
        if started.elapsed() > WAIT {
            let _ = Command::new("tmux")
                .args(["kill-session", "-t", &session])
                .status();
            panic!("tracer top shows no routes and waterfall:\n{screen}");
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    std::fs::write(artifacts().join("top.txt"), &screen).unwrap();
    println!("tracer top:\n{screen}");
    assert!(screen.contains("Routes by p99"), "{screen}");
    assert!(screen.contains("q: quit"), "{screen}");
    let _ = Command::new("tmux")
        .args(["send-keys", "-t", &session, "q"])
        .status();
    let started = Instant::now();
    while Command::new("tmux")
        .args(["has-session", "-t", &session])
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(started.elapsed() < Duration::from_secs(5), "q did not quit");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The live stream: a request made while a client listens arrives as an event.
    let stream = Proc::spawn(
        "curl (live stream)",
        Command::new("curl").args([
            "-sN",
            "--max-time",
            "20",
            &format!("http://{ui}/api/stream"),
        ]),
    )
    .unwrap();
    let started = Instant::now();
    while api(&ui, "/api/stats")["live_clients"].as_u64() == Some(0) {
        assert!(started.elapsed() < WAIT, "the stream never subscribed");
        std::thread::sleep(Duration::from_millis(100));
    }
    curl(&[
        "-o",
        "/dev/null",
        &format!("http://127.0.0.1:{frontend_port}/api/live"),
    ])
    .unwrap();
    stream.wait_line("/api/live", WAIT).unwrap();
    assert!(
        stream.stdout().iter().any(|l| l == "event: span"),
        "{:?}",
        stream.stdout()
    );
    drop(stream);

    // The page's own live list, in a browser driven over the DevTools protocol: a request
    // appears while the page is open; while paused it waits, and shows on resuming.
    let out = Command::new("timeout")
        .arg("90")
        .arg("python3")
        .arg(workspace_root().join("tests/src/browser_live.py"))
        .arg(format!("http://{ui}/"))
        .arg(format!("http://127.0.0.1:{frontend_port}/api/seen-live"))
        .arg(format!(
            "http://127.0.0.1:{frontend_port}/api/seen-after-pause"
        ))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("LIVE OK"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{said}");

    sc.stop().unwrap();
    drop((frontend, backend));
}

#[test]
fn a_taken_or_remote_address_is_one_clear_error() {
    require_root();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for (args, expected) in [
        (vec!["--ui-listen", addr.as_str()], "Address already in use"),
        (vec!["--ui-listen", "0.0.0.0:0"], "--ui-allow-remote"),
        (
            vec!["--ui-listen", "nonsense"],
            "not an IP address with a port",
        ),
    ] {
        let out = Command::new(tracer_bin().unwrap())
            .args(&args)
            // Only the view's address is under test (the metrics port binds first).
            .env("OTEL_METRICS_EXPORTER", "none")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
        assert!(errors[0].contains(expected), "{args:?}: {stderr}");
    }
    // `tracer top` with no agent there says so and fails, without taking the terminal.
    let out = Command::new(tracer_bin().unwrap())
        .args(["top", "--connect", &addr])
        .output()
        .unwrap();
    drop(taken);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach the tracer agent's view"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
