//! Privileged end-to-end: the built-in PII scrubbing (on by default) and the redaction
//! options. Requests whose paths and query keys carry e-mail addresses, card numbers, JWTs and
//! IP addresses reach a real server; neither the OTLP receiver nor the console ever sees them,
//! while a Luhn-invalid number and ordinary ids stay as they were.
use std::{process::Command, time::Duration};

use serde_json::Value;
use tracer_tests::*;

const WAIT: Duration = Duration::from_secs(20);
const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";

/// (request path, secret it carries).
fn sensitive() -> Vec<(String, &'static str)> {
    vec![
        (
            "/users/bob.smith@example.com/orders".into(),
            "bob.smith@example.com",
        ),
        ("/pay/4111111111111111".into(), "4111111111111111"),
        (format!("/session/{JWT}"), JWT),
        ("/peer/10.20.30.40/ping".into(), "10.20.30.40"),
        ("/peer/2001:db8::17".into(), "2001:db8::17"),
        ("/search?alice@example.org=1".into(), "alice@example.org"),
    ]
}

/// Paths that must arrive unchanged.
const ORDINARY: &[&str] = &[
    "/pay/4111111111111112",
    "/orders/98765",
    "/items/550e8400-e29b-41d4-a716-446655440000",
];

fn server_with_secret_argument() -> (Proc, u16) {
    let port = free_port();
    let p = Proc::spawn(
        "http server",
        Command::new("python3")
            .arg(workspace_root().join("tests/servers/http_server.py"))
            .arg(port.to_string())
            .arg("--password=hunter2"),
    )
    .unwrap();
    p.wait_line("READY", Duration::from_secs(10)).unwrap();
    (p, port)
}

fn send_all(port: u16) {
    for (path, _) in sensitive() {
        curl(&[
            "-s",
            "-o",
            "/dev/null",
            "--path-as-is",
            &format!("http://127.0.0.1:{port}{path}"),
        ])
        .unwrap();
    }
    for path in ORDINARY {
        curl(&[
            "-s",
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{port}{path}"),
        ])
        .unwrap();
    }
}

#[test]
fn pii_never_reaches_the_otlp_receiver() {
    require_root();
    let (server, port) = server_with_secret_argument();
    let sc = Scenario::ports(&[port]).start().unwrap();
    send_all(port);
    let n = 2 * (sensitive().len() + ORDINARY.len());
    let got = sc.receiver().wait_spans(n, WAIT, |_| true);
    assert_eq!(
        got.len(),
        n,
        "curl's and the server's span of every request"
    );
    let out = sc.stop().unwrap();
    let text: Vec<String> = out.spans.iter().map(Value::to_string).collect();
    let all = text.join("\n");
    for (path, secret) in sensitive() {
        let leaks: Vec<&String> = text.iter().filter(|t| t.contains(secret)).collect();
        assert!(
            leaks.is_empty(),
            "{path}: `{secret}` was exported: {leaks:#?}"
        );
    }
    assert!(
        !all.contains("hunter2"),
        "the command line's secret was exported"
    );
    for placeholder in [
        "/users/{email}/orders",
        "/pay/{card}",
        "/session/{jwt}",
        "/peer/{ip}/ping",
    ] {
        let server_span = out
            .spans
            .iter()
            .find(|s| s.kind() == "SPAN_KIND_SERVER" && s.attr_str("url.path") == placeholder);
        let server_span = server_span.unwrap_or_else(|| panic!("{placeholder}: {all}"));
        assert!(!server_span.name().contains('@'), "{server_span:#}");
        assert_eq!(
            server_span
                .res("process.command_line")
                .as_str()
                .map(|c| c.ends_with("--password=REDACTED")),
            Some(true),
            "{server_span:#}"
        );
    }
    let search = out
        .spans
        .iter()
        .find(|s| s.kind() == "SPAN_KIND_CLIENT" && s.attr_str("url.path") == "/search")
        .expect("the search request");
    assert_eq!(search.attr_str("url.query"), "{email}=REDACTED");
    assert!(
        search
            .attr_str("url.full")
            .ends_with("/search?{email}=REDACTED")
    );
    // No over-redaction.
    for path in ORDINARY {
        let spans: Vec<&Value> = out
            .spans
            .iter()
            .filter(|s| s.attr_str("url.path") == *path)
            .collect();
        assert_eq!(spans.len(), 2, "{path} left alone: {all}");
    }
    drop(server);
}

#[test]
fn pii_never_reaches_the_console_and_options_extend_or_disable_it() {
    require_root();
    let (_server, port) = server_with_secret_argument();
    // The console exporter (no endpoint), plus a pattern and a dropped attribute.
    let agent = Agent::start(
        &[
            "--port",
            &port.to_string(),
            "--redact-pattern",
            "orders/9876[0-9]",
            "--redact-attribute",
            "user_agent.original",
        ],
        &[],
    )
    .unwrap();
    send_all(port);
    let lines = wait_for(WAIT, || {
        let out = agent.proc.stdout();
        (out.iter().filter(|l| l.contains(" SERVER ")).count()
            >= sensitive().len() + ORDINARY.len())
        .then_some(out)
    })
    .expect("a console line per request");
    agent.stop().unwrap();
    let all = lines.join("\n");
    for (path, secret) in sensitive() {
        assert!(
            !all.contains(secret),
            "{path}: `{secret}` on the console:\n{all}"
        );
    }
    assert!(all.contains("/users/{email}/orders"), "{all}");
    assert!(all.contains("/pay/4111111111111112"), "{all}");
    assert!(
        all.contains("/REDACTED") && !all.contains("orders/98765"),
        "{all}"
    );

    // --no-default-redaction: the built-ins are off (the test's own data, nothing real);
    // a pattern still masks each element of a captured header sent on two lines.
    let sc = Scenario::ports(&[port])
        .args(&[
            "--no-default-redaction",
            "--redact-attribute",
            "user_agent.original",
            "--capture-request-header",
            "x-account",
            "--redact-pattern",
            "acct-[0-9]+",
        ])
        .start()
        .unwrap();
    curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-H",
        "X-Account: acct-42",
        "-H",
        "X-Account: team-blue",
        &format!("http://127.0.0.1:{port}/pay/4111111111111111"),
    ])
    .unwrap();
    let spans = sc.receiver().wait_spans(2, WAIT, |s| {
        s.attr_str("url.path") == "/pay/4111111111111111"
    });
    assert_eq!(spans.len(), 2, "{spans:#?}");
    for s in &spans {
        assert_eq!(s.attr("user_agent.original"), &Value::Null, "{s:#}");
        assert_eq!(
            s.attr("http.request.header.x-account"),
            &serde_json::json!(["REDACTED", "team-blue"]),
            "{s:#}"
        );
    }
    sc.stop().unwrap();
}
