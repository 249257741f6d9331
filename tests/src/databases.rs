//! What the database tests share: finding database CLIENT spans, PostgreSQL started by the
//! test, Python client scripts, and the check that a request's queries are its children.
use std::{path::Path, process::Command, time::Duration};

use serde_json::Value;
use test_kit::run_bounded;

use crate::{Certs, Proc, Scenario, SpanJson, curl, free_port};

/// A CLIENT span of `system` (`db.system.name`) to the server on `port`.
pub fn is_db(s: &Value, system: &str, port: u16) -> bool {
    s.kind() == "SPAN_KIND_CLIENT"
        && s.attr_str("db.system.name") == system
        && s.attr_i64("server.port") == i64::from(port)
}

/// PostgreSQL in `dir` (initialised there, owned by the `postgres` user) on a free port; with
/// `certs`, also over TLS with that certificate.
pub fn start_postgres(dir: &Path, certs: Option<&Certs>) -> (Proc, u16) {
    let data = dir.join("data");
    let chown = Command::new("chown")
        .arg("postgres")
        .arg(dir)
        .status()
        .unwrap();
    assert!(chown.success());
    let as_postgres = |program: &str| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(format!("/usr/lib/postgresql/15/bin/{program}"));
        c
    };
    run_bounded(
        "initdb",
        as_postgres("initdb")
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data),
        Duration::from_secs(60),
    )
    .unwrap();
    let port = free_port();
    let mut postgres = as_postgres("postgres");
    postgres
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
        .arg("-k")
        .arg(dir);
    if let Some(certs) = certs {
        // The server reads its key only when the postgres user owns it, mode 0600.
        let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
        std::fs::copy(certs.cert(), &cert).unwrap();
        std::fs::copy(certs.key(), &key).unwrap();
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let chown = Command::new("chown")
            .arg("postgres")
            .args([&cert, &key])
            .status()
            .unwrap();
        assert!(chown.success());
        postgres.args(["-c", "ssl=on", "-c"]);
        postgres.arg(format!("ssl_cert_file={}", cert.display()));
        postgres
            .arg("-c")
            .arg(format!("ssl_key_file={}", key.display()));
    }
    let mut pg = Proc::spawn("postgres", &mut postgres).unwrap();
    pg.wait_listening(port, Duration::from_secs(30)).unwrap();
    (pg, port)
}

/// `python3 -c script args…`, its output (it must succeed within 30 s).
pub fn run_python(name: &str, script: &str, args: &[String]) -> String {
    run_bounded(
        name,
        Command::new("python3").arg("-c").arg(script).args(args),
        Duration::from_secs(30),
    )
    .unwrap()
}

/// A web request whose handler runs two queries (tests/servers/db_web_service.py with
/// `backend`, `postgres` or `mysql`, on a free port; its database, of `db.system.name`
/// `system`, listens on `db_port`): both SELECTs, with exactly `texts`, are children of the
/// request's SERVER span.
pub fn check_a_web_requests_queries(backend: &str, system: &str, db_port: u16, texts: [&str; 2]) {
    let wait = Duration::from_secs(20);
    let web_port = free_port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("servers/db_web_service.py");
    let mut web = Proc::spawn(
        "web service",
        Command::new("python3")
            .arg(script)
            .arg(backend)
            .arg(web_port.to_string())
            .arg(db_port.to_string()),
    )
    .unwrap();
    web.wait_listening(web_port, wait).unwrap();
    let sc = Scenario::ports(&[web_port, db_port]).start().unwrap();
    curl(&[&format!("http://127.0.0.1:{web_port}/report")]).unwrap();
    let is_server = |s: &Value| {
        s.kind() == "SPAN_KIND_SERVER" && s.attr_i64("server.port") == i64::from(web_port)
    };
    // SELECTs only: a client's session set-up (mysql-connector's SET NAMES) is spanned too.
    let is_query =
        |s: &Value| is_db(s, system, db_port) && s.attr_str("db.operation.name") == "SELECT";
    sc.wait_spans(1, wait, is_server);
    sc.wait_spans(2, wait, is_query);
    let done = sc.stop().unwrap();
    let log = done.summary();
    let server = done.spans_where(is_server);
    let queries = done.spans_where(is_query);
    assert_eq!(server.len(), 1, "{log}\n{server:#?}");
    assert_eq!(queries.len(), 2, "{log}\n{queries:#?}");
    assert_children_of(&server[0], &queries);
    let mut found: Vec<&str> = queries
        .iter()
        .map(|q| q.attr_str("db.query.text"))
        .collect();
    found.sort_unstable();
    assert_eq!(found, texts, "{log}");
}

/// Each query span is the serving span's child, made by its thread, inside its time.
fn assert_children_of(server: &Value, queries: &[Value]) {
    for q in queries {
        assert_eq!(q.trace_id(), server.trace_id(), "{q:#}\n{server:#}");
        assert_eq!(q.parent_id(), server.span_id(), "{q:#}\n{server:#}");
        assert_eq!(q.attr_str("tracer.parent.source"), "thread");
        assert!(q.start_ns() >= server.start_ns() && q.end_ns() <= server.end_ns());
    }
}
