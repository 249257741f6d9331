//! Privileged end-to-end: database client spans from real servers and clients. PostgreSQL 15
//! (`initdb` + `postgres` in a temporary directory, as the `postgres` user) with `psql` and
//! Python's psycopg (text and binary results, prepared statements), in the clear and over TLS
//! (`ssl=on` with a self-signed certificate, the clients with `sslmode=require`: the spans
//! come from the plaintext the libssl probes see); Redis 7 (`redis-server` on a free port)
//! with `redis-cli` and redis-py's pipelines; and a Python web service whose request runs two
//! queries: both are children of its SERVER span.
use std::{process::Command, time::Duration};

use serde_json::Value;
use test_kit::run_bounded;
use tracer_tests::*;

const WAIT: Duration = Duration::from_secs(20);

/// libpq's connection string: `sslmode` `disable` (in the clear) or `require` (TLS).
fn conninfo(port: u16, sslmode: &str) -> String {
    format!("host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode={sslmode}")
}

/// psql's output of `sql` (one `-c` each; unaligned, tuples only).
fn psql(port: u16, sslmode: &str, sql: &[&str]) -> String {
    let mut c = Command::new("psql");
    c.args(["-At", "-d", &conninfo(port, sslmode)]);
    for s in sql {
        c.args(["-c", s]);
    }
    // The failing statement's error goes to stderr; psql goes on with the next -c.
    run_bounded("psql", &mut c, Duration::from_secs(20)).unwrap_or_default()
}

#[test]
fn postgres_statements_from_psql_and_psycopg() {
    postgres_statements("disable");
}

/// The same statements over TLS: the same spans, from the plaintext only. The syscalls carry
/// the SSLRequest, the server's `S` and then ciphertext, which is never copied or parsed.
#[test]
fn postgres_over_tls_statements_from_psql_and_psycopg() {
    postgres_statements("require");
}

/// psql and psycopg run their statements with `sslmode`: each is one span with its operation,
/// table, sanitised text and SQLSTATE; nothing else is a span, nothing is lost.
fn postgres_statements(sslmode: &str) {
    require_root();
    let tls = sslmode == "require";
    let dir = TempDir::new("db-pg");
    let certs = tls.then(|| Certs::new("db-pg-certs"));
    let (_pg, port) = start_postgres(dir.path(), certs.as_ref());
    psql(port, sslmode, &["CREATE TABLE items (id int, name text)"]);
    let sc = Scenario::ports(&[port]).start().unwrap();
    if tls {
        // The clients' libssl (libpq's), mapped by the server too: probed at the start.
        wait_attached(&sc, "libssl.so");
    }
    let out = psql(
        port,
        sslmode,
        &[
            "INSERT INTO items VALUES (1, 'secret-name')",
            "SELECT name FROM items WHERE id = 1",
            "SELECT * FROM missing_table",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ],
    );
    // The server's own view: psql's session was TLS exactly when asked.
    assert_eq!(
        out.lines().last(),
        Some(if tls { "t" } else { "f" }),
        "{out}"
    );
    // psycopg: a prepared statement run twice, a binary-result query, a failing insert.
    let out = run_python(
        "psycopg",
        r#"
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as c:
    print("ssl_in_use", c.pgconn.ssl_in_use)
    for _ in range(2):
        c.execute("SELECT name FROM items WHERE id = %s", (1,), prepare=True).fetchall()
    c.cursor(binary=True).execute("SELECT id FROM items WHERE name = %s", ("secret-name",)).fetchall()
    try:
        c.execute("INSERT INTO nope VALUES (%s)", (2,))
    except psycopg.errors.UndefinedTable:
        pass
"#,
        &[conninfo(port, sslmode)],
    );
    assert!(
        out.contains(&format!(
            "ssl_in_use {}",
            if tls { "True" } else { "False" }
        )),
        "{out}"
    );
    sc.wait_spans(8, WAIT, |s| is_db(s, "postgresql", port));
    let done = sc.stop().unwrap();
    let log = done.summary();
    let spans = done.spans_where(|s| is_db(s, "postgresql", port));
    // Exactly the statements: no span from the SSLRequest, its answer or the ciphertext.
    assert_eq!(spans.len(), 8, "{log}\n{spans:#?}");
    let c = &done.counters;
    assert_eq!(c.postgres_losses(), DbLosses::default(), "{log}");
    if tls {
        assert!(c.tls_files_attached >= 1, "{log}");
    }
    for s in &spans {
        assert_eq!(s.attr_str("db.namespace"), "postgres");
        assert_eq!(s.attr_str("server.address"), "127.0.0.1");
        // (The resource's command line is psql's own, with the literal.)
        let attributes = s["attributes"].to_string();
        assert!(
            !attributes.contains("secret-name"),
            "a literal leaked: {s:#}"
        );
        assert!(s.end_ns() > s.start_ns());
    }
    let by_text = |text: &str| -> Vec<&Value> {
        spans
            .iter()
            .filter(|s| s.attr_str("db.query.text") == text)
            .collect()
    };
    let insert = by_text("INSERT INTO items VALUES (?, ?)");
    assert_eq!(insert.len(), 1, "{spans:#?}");
    assert_eq!(insert[0].name(), "INSERT items");
    assert_eq!(insert[0].res("service.name"), "psql");
    assert_eq!(insert[0].status_code(), "STATUS_CODE_UNSET");
    let select = by_text("SELECT name FROM items WHERE id = ?");
    assert_eq!(select.len(), 1);
    assert_eq!(select[0].attr_str("db.operation.name"), "SELECT");
    assert_eq!(select[0].attr_str("db.collection.name"), "items");
    let missing = by_text("SELECT * FROM missing_table");
    assert_eq!(missing[0].status_code(), "STATUS_CODE_ERROR");
    assert_eq!(missing[0].attr_str("db.response.status_code"), "42P01");
    assert_eq!(missing[0].attr_str("error.type"), "42P01");
    // psycopg's extended protocol: the prepared statement's text comes from its Parse.
    let prepared = by_text("SELECT name FROM items WHERE id = $1");
    assert_eq!(prepared.len(), 2, "{spans:#?}");
    assert_eq!(by_text("SELECT id FROM items WHERE name = $1").len(), 1);
    let failed = by_text("INSERT INTO nope VALUES ($1)");
    assert_eq!(failed[0].attr_str("error.type"), "42P01");
    assert_eq!(failed[0].attr_str("db.namespace"), "postgres");
    for s in &spans {
        assert_eq!(s.attr_i64("network.peer.port"), i64::from(port));
        assert_eq!(s.attr_str("network.peer.address"), "127.0.0.1");
    }
}

/// Waits until the agent logged that it attached TLS probes to a file whose line contains
/// `what`.
fn wait_attached(sc: &Scenario, what: &str) {
    let found = sc.agent.wait_tls_attached(what, WAIT);
    assert!(found.is_some(), "no TLS probes on {what}:\n{}", sc.log());
}

#[test]
fn redis_commands_from_redis_cli_and_pipelines() {
    require_root();
    let dir = TempDir::new("db-redis");
    let port = free_port();
    let mut server = Proc::spawn(
        "redis-server",
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--dir"])
            .arg(dir.path()),
    )
    .unwrap();
    server
        .wait_listening(port, Duration::from_secs(10))
        .unwrap();
    let sc = Scenario::ports(&[port]).start().unwrap();
    let cli = |args: &[&str]| {
        run_bounded(
            "redis-cli",
            Command::new("redis-cli")
                .args(["-p", &port.to_string()])
                .args(args),
            Duration::from_secs(10),
        )
        .unwrap()
    };
    cli(&["SET", "user:1", "secret-value"]);
    cli(&["INCR", "user:1"]);
    cli(&["-n", "3", "GET", "user:1"]);
    // redis-py: one pipeline of 20 commands in one write, then a MULTI/EXEC transaction.
    run_python(
        "redis-py",
        r#"
import sys, redis
r = redis.Redis(port=int(sys.argv[1]))
p = r.pipeline(transaction=False)
for i in range(10):
    p.set(f"k{i}", "secret-value")
    p.get(f"k{i}")
p.execute()
with r.pipeline() as t:
    t.incr("counter"); t.incr("counter"); t.execute()
"#,
        &[port.to_string()],
    );
    // redis-cli: (COMMAND DOCS +) SET, INCR, SELECT + GET; redis-py: its handshake, 20
    // pipelined, MULTI + 2 queued + EXEC.
    sc.wait_spans(27, WAIT, |s| is_db(s, "redis", port));
    let done = sc.stop().unwrap();
    let log = done.summary();
    let spans = done.spans_where(|s| is_db(s, "redis", port));
    let ops = |op: &str| -> Vec<&Value> {
        spans
            .iter()
            .filter(|s| s.attr_str("db.operation.name") == op)
            .collect()
    };
    for s in &spans {
        let attributes = s["attributes"].to_string();
        assert!(
            !attributes.contains("secret-value"),
            "an argument leaked: {s:#}"
        );
        assert!(!attributes.contains("user:1"), "a key leaked: {s:#}");
        assert_eq!(s.attr("db.query.text"), &Value::Null);
    }
    assert_eq!(ops("SET").len(), 11, "{log}\n{spans:#?}");
    assert_eq!(ops("GET").len(), 11);
    // redis-cli's INCR of a string fails; redis-py sends INCRBY.
    let incr = ops("INCR");
    assert_eq!(incr.len(), 1, "{spans:#?}");
    assert_eq!(incr[0].status_code(), "STATUS_CODE_ERROR");
    assert_eq!(incr[0].attr_str("db.response.status_code"), "ERR");
    assert_eq!(incr[0].attr_str("error.type"), "ERR");
    assert_eq!(incr[0].res("service.name"), "redis-cli");
    assert_eq!(ops("INCRBY").len(), 2);
    // redis-cli -n 3 selects database 3 first: its GET is in namespace 3.
    let cli_get: Vec<_> = ops("GET")
        .into_iter()
        .filter(|s| s.res("service.name") == "redis-cli")
        .collect();
    assert_eq!(cli_get[0].attr_str("db.namespace"), "3");
    assert_eq!(ops("MULTI").len(), 1);
    assert_eq!(ops("EXEC").len(), 1);
    assert_eq!(ops("SET")[0].name(), "SET");
}

/// Redis over TLS (`tls-port`, the test's self-signed certificate) with `redis-cli --tls`:
/// the commands' spans come from the plaintext; the syscalls carry only TLS records.
#[test]
fn redis_over_tls_from_redis_cli() {
    require_root();
    let dir = TempDir::new("db-redis-tls");
    let certs = Certs::new("db-redis-certs");
    let port = free_port();
    let mut server = Proc::spawn(
        "redis-server",
        Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(certs.cert())
            .arg("--tls-key-file")
            .arg(certs.key())
            .args(["--tls-auth-clients", "no", "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path()),
    )
    .unwrap();
    server
        .wait_listening(port, Duration::from_secs(10))
        .unwrap();
    let sc = Scenario::ports(&[port]).start().unwrap();
    wait_attached(&sc, "libssl.so");
    let cli = |args: &[&str]| {
        run_bounded(
            "redis-cli --tls",
            Command::new("redis-cli")
                .args(["--tls", "--cacert"])
                .arg(certs.cert())
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .args(args),
            Duration::from_secs(10),
        )
        .unwrap()
    };
    cli(&["SET", "user:1", "secret-value"]);
    assert_eq!(cli(&["GET", "user:1"]).trim(), "secret-value");
    cli(&["INCR", "user:1"]);
    sc.wait_spans(3, WAIT, |s| is_db(s, "redis", port));
    let done = sc.stop().unwrap();
    let log = done.summary();
    let spans = done.spans_where(|s| is_db(s, "redis", port));
    let mut ops: Vec<&str> = spans
        .iter()
        .map(|s| s.attr_str("db.operation.name"))
        .collect();
    ops.sort_unstable();
    assert_eq!(ops, ["GET", "INCR", "SET"], "{log}\n{spans:#?}");
    for s in &spans {
        assert!(!s["attributes"].to_string().contains("secret-value"));
        assert_eq!(s.res("service.name"), "redis-cli");
    }
    let incr = spans
        .iter()
        .find(|s| s.attr_str("db.operation.name") == "INCR")
        .unwrap();
    assert_eq!(incr.attr_str("error.type"), "ERR");
    let c = &done.counters;
    assert_eq!(c.redis_losses(), DbLosses::default(), "{log}");
}

#[test]
fn a_web_requests_queries_are_children_of_its_server_span() {
    require_root();
    let dir = TempDir::new("db-web");
    let (_pg, pg_port) = start_postgres(dir.path(), None);
    check_a_web_requests_queries(
        "postgres",
        "postgresql",
        pg_port,
        ["SELECT count(*) FROM pg_class", "SELECT current_database()"],
    );
}

/// A PostgreSQL client connected before the agent started (its startup was not seen): libpq's PQexec sends a simple Query
/// (`Q`, a length matching the call, SQL text), which the kernel takes for PostgreSQL on a
/// connection whose connect it did not see. (tests/tests/mysql.rs has the MySQL case of the same kernel rule.)
#[test]
fn a_postgres_connection_open_before_the_agent_is_traced_from_its_next_query() {
    require_root();
    let dir = TempDir::new("db-early-pg");
    let (_pg, port) = start_postgres(dir.path(), None);
    let client = Proc::spawn(
        "early psycopg client",
        Command::new("python3")
            .arg("-c")
            .arg(
                r#"
import signal, sys, psycopg
c = psycopg.connect(f"host=127.0.0.1 port={sys.argv[1]} user=postgres dbname=postgres", autocommit=True)
c.pgconn.exec_(b"SELECT 1")
signal.signal(signal.SIGUSR1, lambda *a: None)
print("PAUSED", flush=True)
signal.pause()
assert c.pgconn.exec_(b"SELECT relname FROM pg_class WHERE relname = 'secret'").status == 2
assert c.pgconn.exec_(b"SELECT * FROM missing_table").status == 7
print("DONE", flush=True)
"#,
            )
            .arg(port.to_string()),
    )
    .unwrap();
    client.wait_line("PAUSED", Duration::from_secs(20)).unwrap();
    let sc = Scenario::port(port).unwrap();
    client.signal(libc::SIGUSR1);
    client.wait_line("DONE", WAIT).unwrap();
    let is_early = |s: &Value| is_db(s, "postgresql", port);
    sc.wait_spans(2, WAIT, is_early);
    let done = sc.stop().unwrap();
    let log = done.summary();
    let spans = done.spans_where(is_early);
    assert_eq!(spans.len(), 2, "{log}\n{spans:#?}");
    assert_eq!(spans[0].name(), "SELECT pg_class");
    assert_eq!(
        spans[0].attr_str("db.query.text"),
        "SELECT relname FROM pg_class WHERE relname = ?"
    );
    assert_eq!(spans[1].attr_str("db.response.status_code"), "42P01");
}
