//! Privileged end-to-end: MySQL-protocol client spans from a real MariaDB 10.11 (Debian's
//! `mariadb-server`, `mariadb-install-db` into a temporary datadir, `mariadbd` on a free port
//! as the `mysql` user) and real clients: the `mariadb` CLI (libmariadb) and
//! mysql-connector-python (pure Python, server-side prepared statements: COM_STMT_PREPARE /
//! COM_STMT_EXECUTE; it reads each packet's header apart from its payload). Also a Python web
//! service whose request runs two queries (both children of its SERVER span), a connection
//! opened before the agent started (traced from its next query on), and the CLI over TLS.
use std::{path::Path, process::Command, time::Duration};

use serde_json::Value;
use test_kit::run_bounded;
use tracer_tests::*;

const WAIT: Duration = Duration::from_secs(20);

/// MariaDB in `dir` (a datadir made there, owned by the `mysql` user) on a free port, with
/// database `shop` and its table `items`; root logs in without a password.
fn start_mariadb(dir: &Path) -> (Proc, u16) {
    start_mariadb_with(dir, &[])
}

/// [`start_mariadb`] with more `mariadbd` options.
fn start_mariadb_with(dir: &Path, options: &[String]) -> (Proc, u16) {
    let data = dir.join("data");
    // Its own temporary directory: with the shared /tmp, concurrent bootstraps of the
    // other tests' servers once collided on a temporary table file (ERROR 1051).
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let chown = Command::new("chown")
        .args(["-R", "mysql"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(chown.success());
    run_bounded(
        "mariadb-install-db",
        Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=mysql",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display())),
        Duration::from_secs(60),
    )
    .unwrap();
    let port = free_port();
    let mut server = Proc::spawn(
        "mariadbd",
        Command::new("mariadbd")
            .args(["--no-defaults", "--user=mysql", "--skip-log-bin"])
            .args(["--bind-address=127.0.0.1", &format!("--port={port}")])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg(format!("--socket={}", dir.join("sock").display()))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .args(options),
    )
    .unwrap();
    server
        .wait_listening(port, Duration::from_secs(30))
        .unwrap();
    mariadb(
        port,
        None,
        "CREATE DATABASE shop; CREATE TABLE shop.items (id INT PRIMARY KEY, name VARCHAR(40))",
    )
    .unwrap();
    (server, port)
}

/// The `mariadb` CLI running `sql` (its statements one by one; it stops at a failing one).
fn mariadb(port: u16, database: Option<&str>, sql: &str) -> anyhow::Result<String> {
    let mut c = Command::new("mariadb");
    c.args(["--no-defaults", "-h", "127.0.0.1", "-u", "root"])
        .arg(format!("-P{port}"))
        .args(database)
        .args(["-e", sql]);
    run_bounded("mariadb", &mut c, Duration::from_secs(20))
}

#[test]
fn mariadb_statements_from_the_cli_and_prepared_statements() {
    require_root();
    let dir = TempDir::new("mysql-stmts");
    let (_server, port) = start_mariadb(dir.path());
    let sc = Scenario::ports(&[port]).start().unwrap();
    // The CLI stops at the failing statement: it comes last.
    let failed = mariadb(
        port,
        Some("shop"),
        "INSERT INTO items VALUES (1, 'secret-name'); \
         SELECT name FROM items WHERE id = 1; SELECT * FROM missing_table",
    );
    assert!(failed.is_err(), "{failed:?}");
    // Its session set-up (SET NAMES, autocommit), a statement prepared once and executed
    // twice, and a PREPARE that fails: no statement, no execution.
    run_python(
        "mysql-connector-python",
        r#"
import sys, mysql.connector
c = mysql.connector.connect(host="127.0.0.1", port=int(sys.argv[1]), user="root", database="shop")
cur = c.cursor(prepared=True)
for _ in range(2):
    cur.execute("SELECT name FROM items WHERE id = %s", (1,))
    assert cur.fetchall() == [("secret-name",)]
try:
    cur.execute("INSERT INTO nope VALUES (%s)", ("secret-name",))
except mysql.connector.Error as e:
    assert e.errno == 1146
c.close()
"#,
        &[port.to_string()],
    );
    sc.wait_spans(8, WAIT, |s| is_db(s, "mariadb", port));
    let done = sc.stop().unwrap();
    let log = done.summary();
    let spans = done.spans_where(|s| is_db(s, "mariadb", port));
    assert_eq!(spans.len(), 8, "{log}\n{spans:#?}");
    // No call lost: the MySQL protocol's own loss counters stay at zero. One gap is expected:
    // mysql-connector-python reads the greeting's 4-byte header in a call of its own, before
    // the kernel has classified the connection (from the payload read next), so those 4 bytes
    // are never copied; the parser starts from the payload.
    let c = &done.counters;
    let expected_gap = DbLosses {
        gaps: c.mysql_gaps,
        ..DbLosses::default()
    };
    assert_eq!(c.mysql_losses(), expected_gap, "{log}");
    for s in &spans {
        assert_eq!(s.attr_str("db.namespace"), "shop", "{s:#}");
        assert_eq!(s.attr_str("server.address"), "127.0.0.1");
        assert_eq!(s.attr_i64("network.peer.port"), i64::from(port));
        let attributes = s["attributes"].to_string();
        assert!(
            !attributes.contains("secret-name"),
            "a literal leaked: {s:#}"
        );
        assert!(s.end_ns() > s.start_ns(), "{s:#}");
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
    assert_eq!(insert[0].attr_str("db.operation.name"), "INSERT");
    assert_eq!(insert[0].res("service.name"), "mariadb");
    assert_eq!(insert[0].status_code(), "STATUS_CODE_UNSET");
    let select = by_text("SELECT name FROM items WHERE id = ?");
    // The CLI's (literal sanitised) and the prepared one's twice (`?` as sent).
    assert_eq!(select.len(), 3, "{spans:#?}");
    for s in &select {
        assert_eq!(s.name(), "SELECT items");
        assert_eq!(s.attr_str("db.collection.name"), "items");
        assert_eq!(s.status_code(), "STATUS_CODE_UNSET");
    }
    let missing = by_text("SELECT * FROM missing_table");
    assert_eq!(missing.len(), 1, "{spans:#?}");
    assert_eq!(missing[0].status_code(), "STATUS_CODE_ERROR");
    assert_eq!(missing[0].attr_str("db.response.status_code"), "1146");
    assert_eq!(missing[0].attr_str("error.type"), "1146");
    let failed = by_text("INSERT INTO nope VALUES (?)");
    assert_eq!(failed.len(), 1, "{spans:#?}");
    assert_eq!(failed[0].attr_str("db.response.status_code"), "1146");
    assert_eq!(by_text("SET NAMES ? COLLATE ?").len(), 1, "{spans:#?}");
}

/// MariaDB with TLS (`--ssl-cert`/`--ssl-key`, a certificate made by the test): the CLI asks
/// for TLS after the server's greeting (in the clear), so the conversation goes on in the
/// plaintext the libssl probes see. The same spans as in the clear, none from ciphertext.
#[test]
fn mariadb_over_tls_from_the_cli() {
    require_root();
    let dir = TempDir::new("mysql-tls");
    let certs = Certs::new("mysql-tls-certs");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::copy(certs.cert(), &cert).unwrap();
    std::fs::copy(certs.key(), &key).unwrap();
    // mariadbd runs as `mysql`.
    let chown = Command::new("chown")
        .arg("mysql")
        .args([&cert, &key])
        .status()
        .unwrap();
    assert!(chown.success());
    let (_server, port) = start_mariadb_with(
        dir.path(),
        &[
            format!("--ssl-cert={}", cert.display()),
            format!("--ssl-key={}", key.display()),
        ],
    );
    let sc = Scenario::ports(&[port]).start().unwrap();
    // The clients' libssl, mapped by the server too: probed at the start.
    let attached = sc.agent.wait_tls_attached("libssl.so", WAIT);
    assert!(attached.is_some(), "no TLS probes on libssl:\n{}", sc.log());
    let mut c = Command::new("mariadb");
    c.args(["--no-defaults", "--ssl", "-h", "127.0.0.1", "-u", "root"])
        .arg(format!("-P{port}"))
        .args(["shop", "-N", "-e"])
        .arg(
            "SHOW SESSION STATUS LIKE 'Ssl_version'; INSERT INTO items VALUES (7, 'secret-name'); \
             SELECT name FROM items WHERE id = 7; SELECT * FROM missing_table",
        );
    let out = run_bounded("mariadb --ssl", &mut c, Duration::from_secs(20));
    // The CLI stops at the failing statement (last); the session was TLS.
    let err = format!("{out:?}");
    assert!(err.contains("TLSv1"), "not a TLS session: {err}");
    assert!(err.contains("1146"), "{err}");
    // SHOW, INSERT, SELECT and the failing SELECT (with `-e` the CLI sends nothing else).
    sc.wait_spans(4, WAIT, |s| is_db(s, "mariadb", port));
    let done = sc.stop().unwrap();
    let log = done.summary();
    let spans = done.spans_where(|s| is_db(s, "mariadb", port));
    assert_eq!(spans.len(), 4, "{log}\n{spans:#?}");
    let c = &done.counters;
    assert_eq!(c.mysql_losses(), DbLosses::default(), "{log}");
    assert!(c.tls_files_attached >= 1, "{log}");
    for s in &spans {
        assert_eq!(s.attr_str("db.namespace"), "shop", "{s:#}");
        assert_eq!(s.attr_i64("network.peer.port"), i64::from(port));
        assert!(
            !s["attributes"].to_string().contains("secret-name"),
            "a literal leaked: {s:#}"
        );
        assert!(s.end_ns() > s.start_ns(), "{s:#}");
    }
    let by_text = |text: &str| {
        spans
            .iter()
            .filter(|s| s.attr_str("db.query.text") == text)
            .count()
    };
    assert_eq!(by_text("SHOW SESSION STATUS LIKE ?"), 1, "{spans:#?}");
    assert_eq!(by_text("INSERT INTO items VALUES (?, ?)"), 1, "{spans:#?}");
    assert_eq!(
        by_text("SELECT name FROM items WHERE id = ?"),
        1,
        "{spans:#?}"
    );
    let missing: Vec<_> = spans
        .iter()
        .filter(|s| s.attr_str("db.query.text") == "SELECT * FROM missing_table")
        .collect();
    assert_eq!(missing.len(), 1, "{spans:#?}");
    assert_eq!(missing[0].attr_str("db.response.status_code"), "1146");
}

#[test]
fn a_web_requests_queries_are_children_of_its_server_span() {
    require_root();
    let dir = TempDir::new("mysql-web");
    let (_server, db_port) = start_mariadb(dir.path());
    check_a_web_requests_queries(
        "mysql",
        "mariadb",
        db_port,
        ["SELECT DATABASE()", "SELECT count(*) FROM items"],
    );
}

#[test]
fn a_connection_open_before_the_agent_is_traced_from_its_next_query() {
    require_root();
    let dir = TempDir::new("mysql-early");
    let (_server, port) = start_mariadb(dir.path());
    let client = Proc::spawn(
        "early client",
        Command::new("python3")
            .arg("-c")
            .arg(
                r#"
import signal, sys, mysql.connector
c = mysql.connector.connect(host="127.0.0.1", port=int(sys.argv[1]), user="root", database="shop")
cur = c.cursor()
cur.execute("SELECT 1")
cur.fetchall()
signal.signal(signal.SIGUSR1, lambda *a: None)
print("PAUSED", flush=True)
signal.pause()
cur.execute("SELECT name FROM items WHERE id = 7")
cur.fetchall()
cur.execute("SELECT * FROM missing_table")
"#,
            )
            .arg(port.to_string()),
    )
    .unwrap();
    client.wait_line("PAUSED", Duration::from_secs(20)).unwrap();
    let sc = Scenario::port(port).unwrap();
    client.signal(libc::SIGUSR1);
    let is_early = |s: &Value| is_db(s, "mysql", port);
    sc.wait_spans(2, WAIT, is_early);
    let done = sc.stop().unwrap();
    let log = done.summary();
    let spans = done.spans_where(is_early);
    assert_eq!(spans.len(), 2, "{log}\n{spans:#?}");
    assert_eq!(spans[0].name(), "SELECT items");
    assert_eq!(
        spans[0].attr_str("db.query.text"),
        "SELECT name FROM items WHERE id = ?"
    );
    assert_eq!(spans[0].attr("db.namespace"), &Value::Null);
    assert_eq!(spans[1].attr_str("db.response.status_code"), "1146");
}
