use super::*;
use crate::db::{DbConn, load_capture, replay_capture};

fn run(capture: &str, check: impl Fn(&[DbExchange])) {
    replay_capture(DbConn::mysql, capture, check);
}

fn s(v: &Option<Arc<str>>) -> Option<&str> {
    v.as_deref()
}

/// The `mariadb` CLI (libmariadb, EOF packets) against MariaDB 10.11, connecting with
/// database `shop`: DDL, an INSERT, a SELECT, `USE mysql` (SELECT DATABASE() then
/// COM_INIT_DB), and a SELECT of a missing table (1146).
#[test]
fn mariadb_cli_queries() {
    run(include_str!("testdata/mariadb_cli.hex"), |calls| {
        let ops: Vec<_> = calls.iter().map(|c| s(&c.operation)).collect();
        assert_eq!(
            ops,
            [
                Some("DROP"),
                Some("CREATE"),
                Some("INSERT"),
                Some("SELECT"),
                Some("SELECT"),
                Some("SELECT")
            ],
            "{calls:#?}"
        );
        for c in calls {
            assert_eq!(c.system, DbSystem::Mariadb);
        }
        assert_eq!(s(&calls[2].collection), Some("items"));
        assert_eq!(
            s(&calls[2].query_text),
            Some("INSERT INTO items VALUES (?, ?), (?, ?)")
        );
        assert_eq!(
            s(&calls[3].query_text),
            Some("SELECT name FROM items WHERE id = ?")
        );
        assert_eq!(s(&calls[3].namespace), Some("shop"));
        assert!(calls[..5].iter().all(|c| c.error_code.is_none()));
        // After COM_INIT_DB.
        assert_eq!(s(&calls[5].namespace), Some("mysql"));
        assert_eq!(s(&calls[5].collection), Some("missing_table"));
        assert_eq!(calls[5].error_code.as_deref(), Some("1146"));
    });
}

/// mysql-connector-python 26.10 (pure Python) with a prepared cursor: two SETs, a ping, a
/// statement prepared once (COM_STMT_RESET before each COM_STMT_EXECUTE), executed three
/// times, then a PREPARE that fails (1146).
#[test]
fn connector_python_prepared_statements() {
    run(include_str!("testdata/connector_python.hex"), |calls| {
        assert_eq!(calls.len(), 6, "{calls:#?}");
        assert_eq!(s(&calls[0].operation), Some("SET"));
        for c in &calls[2..5] {
            assert_eq!(
                s(&c.query_text),
                Some("SELECT name FROM items WHERE id = ?")
            );
            assert_eq!(s(&c.collection), Some("items"));
            assert_eq!(s(&c.namespace), Some("shop"));
            assert_eq!(c.system, DbSystem::Mariadb);
            assert_eq!(c.error_code, None);
        }
        assert_eq!(s(&calls[5].operation), Some("INSERT"));
        assert_eq!(calls[5].error_code.as_deref(), Some("1146"));
    });
}

/// A connection past its handshake.
fn ready() -> MysqlConn {
    MysqlConn {
        phase: Phase::Ready,
        ..Default::default()
    }
}

fn chunk(data: &[u8], total_len: u32, ts: u64) -> Chunk<'_> {
    Chunk {
        data,
        total_len,
        ts_enter: ts,
        ts_exit: ts + 1,
        tid: 1,
        other_unseen: 0,
        position: 0,
        ctx: None,
    }
}

fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = (payload.len() as u32).to_le_bytes()[..3].to_vec();
    p.push(seq);
    p.extend_from_slice(payload);
    p
}

fn query(sql: &str) -> Vec<u8> {
    let mut payload = vec![COM_QUERY];
    payload.extend_from_slice(sql.as_bytes());
    packet(0, &payload)
}

const OK: &[u8] = &[0, 0, 0, 2, 0, 0, 0];

fn feed(p: &mut MysqlConn, dir: Direction, bytes: &[u8], ts: u64, out: &mut Vec<DbExchange>) {
    p.on_chunk(dir, &chunk(bytes, bytes.len() as u32, ts), out);
}

#[test]
fn times_are_the_command_write_and_the_reply_read() {
    let mut p = ready();
    let mut out = Vec::new();
    feed(&mut p, Direction::Egress, &query("DO 1"), 100, &mut out);
    feed(&mut p, Direction::Ingress, &packet(1, OK), 200, &mut out);
    assert_eq!((out[0].start_ns, out[0].end_ns, out[0].tid), (100, 201, 1));
    assert_eq!(out[0].system, DbSystem::Mysql);
    assert!(p.is_idle());
}

/// A result set under CLIENT_DEPRECATE_EOF (MySQL 8 clients): definitions, rows, one OK with
/// a 0xfe header; a row of 20 MB (three packets, mostly uncaptured) skipped by length.
#[test]
fn big_rows_are_skipped_by_length() {
    let mut p = ready();
    let mut out = Vec::new();
    feed(
        &mut p,
        Direction::Egress,
        &query("SELECT big FROM t"),
        1,
        &mut out,
    );
    let mut reply = packet(1, &[1]);
    reply.extend(packet(2, b"\x03def\x00\x01t\x01t\x03big\x03big"));
    feed(&mut p, Direction::Ingress, &reply, 2, &mut out);
    // A row of 0xffffff + 0xffffff + 10 bytes whose text starts with 0xfe (a long string),
    // in three packets; each call captured its first 100 bytes at most. Only the first
    // packet's length tells the row from a terminator.
    let mut first = vec![0xff, 0xff, 0xff, 3];
    first.extend([0xfe; 96]);
    feed_partial(&mut p, &first, 4 + 0xff_ffff, 3, &mut out);
    let mut second = vec![0xff, 0xff, 0xff, 4];
    second.extend([0xfe; 96]);
    feed_partial(&mut p, &second, 4 + 0xff_ffff, 4, &mut out);
    assert!(out.is_empty());
    let mut rest = packet(5, &[0xfe; 10]);
    rest.extend(packet(6, &[0xfe, 0, 0, 2, 0, 0, 0]));
    feed(&mut p, Direction::Ingress, &rest, 5, &mut out);
    assert_eq!(out.len(), 1, "{:?}", p.phase);
    assert_eq!(s(&out[0].collection), Some("t"));
    assert!(p.is_idle());
}

fn feed_partial(p: &mut MysqlConn, data: &[u8], total: u32, ts: u64, out: &mut Vec<DbExchange>) {
    p.on_chunk(Direction::Ingress, &chunk(data, total, ts), out);
}

#[test]
fn more_results_belong_to_the_same_call() {
    let mut p = ready();
    let mut out = Vec::new();
    feed(
        &mut p,
        Direction::Egress,
        &query("CALL report()"),
        1,
        &mut out,
    );
    // A result set whose EOF-terminated rows say more results follow, then the final OK.
    let mut reply = packet(1, &[1]);
    reply.extend(packet(2, b"\x03def\x00\x00\x00\x01n\x01n"));
    reply.extend(packet(3, &[0xfe, 0, 0, 0x0a, 0]));
    reply.extend(packet(4, b"\x011"));
    reply.extend(packet(5, &[0xfe, 0, 0, 0x0a, 0]));
    feed(&mut p, Direction::Ingress, &reply, 2, &mut out);
    assert!(out.is_empty());
    feed(&mut p, Direction::Ingress, &packet(6, OK), 3, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(s(&out[0].operation), Some("CALL"));
}

#[test]
fn lost_framing_reports_nothing_more() {
    let mut p = ready();
    let mut out = Vec::new();
    feed(&mut p, Direction::Egress, &query("DO 1"), 1, &mut out);
    p.on_gap(Direction::Ingress, 50);
    feed(&mut p, Direction::Ingress, &packet(1, OK), 2, &mut out);
    feed(&mut p, Direction::Egress, &query("DO 1"), 3, &mut out);
    feed(&mut p, Direction::Ingress, &packet(1, OK), 4, &mut out);
    assert!(out.is_empty());
    assert_eq!(p.stats().dropped_messages, 1);
    // A head cut by uncaptured bytes, a command with the wrong sequence, an unknown command.
    let mut p = ready();
    p.on_chunk(Direction::Egress, &chunk(&[5, 0], 10, 1), &mut out);
    assert_eq!(p.phase, Phase::Lost);
    let mut p = ready();
    feed(
        &mut p,
        Direction::Egress,
        &packet(3, b"\x03DO 1"),
        1,
        &mut out,
    );
    assert_eq!(p.phase, Phase::Lost);
    let mut p = ready();
    feed(
        &mut p,
        Direction::Egress,
        &packet(0, b"\x12binlog"),
        1,
        &mut out,
    );
    assert_eq!(p.phase, Phase::Lost);
}

/// The greeting, the client's SSL request: the syscalls then carry ciphertext, never parsed;
/// the conversation resumes on the TLS plaintext.
#[test]
fn ssl_request_hands_over_to_tls() {
    let capture = load_capture(include_str!("testdata/mariadb_cli.hex"));
    let mut p = MysqlConn::default();
    let mut out = Vec::new();
    feed(&mut p, Direction::Ingress, &capture[0].1, 1, &mut out);
    assert_eq!(p.phase, Phase::Response);
    assert_eq!(p.system, DbSystem::Mariadb);
    let mut ssl = (CLIENT_SSL | CLIENT_PROTOCOL_41).to_le_bytes().to_vec();
    ssl.resize(32, 0);
    feed(&mut p, Direction::Egress, &packet(1, &ssl), 2, &mut out);
    assert_eq!(p.phase, Phase::TlsRequested);
    feed(
        &mut p,
        Direction::Egress,
        &[0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5],
        3,
        &mut out,
    );
    assert_eq!(p.stats(), ParseStats::default());
    assert!(out.is_empty());

    // The TLS plaintext (a stream of its own): the handshake response (sequence 2), the
    // server's OK, then commands as in the clear.
    assert!(p.resume_over_tls());
    assert!(!p.resume_over_tls());
    let mut response = (CLIENT_SSL | CLIENT_PROTOCOL_41 | CLIENT_CONNECT_WITH_DB)
        .to_le_bytes()
        .to_vec();
    response.resize(32, 0);
    response.extend_from_slice(b"shop_user\0\0shop\0");
    feed(
        &mut p,
        Direction::Egress,
        &packet(2, &response),
        4,
        &mut out,
    );
    feed(&mut p, Direction::Ingress, &packet(3, OK), 5, &mut out);
    assert_eq!(p.phase, Phase::Ready);
    feed(&mut p, Direction::Egress, &query("SELECT 1"), 6, &mut out);
    feed(&mut p, Direction::Ingress, &packet(1, OK), 7, &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].system, DbSystem::Mariadb);
    assert_eq!(s(&out[0].operation), Some("SELECT"));
    assert_eq!(s(&out[0].namespace), Some("shop"));
    assert_eq!(p.stats(), ParseStats::default());
}

/// A client that reads each packet's header apart (mysql-connector-python): the kernel
/// recognises the greeting from its payload's call, the header is a gap of 4.
#[test]
fn greeting_without_its_header() {
    let capture = load_capture(include_str!("testdata/connector_python.hex"));
    let mut p = MysqlConn::default();
    let mut out = Vec::new();
    p.on_gap(Direction::Ingress, 4);
    feed(&mut p, Direction::Ingress, &capture[0].1[4..], 1, &mut out);
    for (i, (dir, bytes)) in capture.iter().enumerate().skip(1) {
        feed(&mut p, *dir, bytes, 2 + i as u64, &mut out);
    }
    assert_eq!(out.len(), 6);
    assert_eq!(out[2].system, DbSystem::Mariadb);
    assert_eq!(s(&out[2].namespace), Some("shop"));
}

/// Open before tracing: the first bytes seen are a command.
#[test]
fn mid_stream_connections_start_at_a_command() {
    let mut p = MysqlConn::default();
    let mut out = Vec::new();
    feed(&mut p, Direction::Egress, &query("SELECT 1"), 1, &mut out);
    feed(&mut p, Direction::Ingress, &packet(1, OK), 2, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].system, DbSystem::Mysql);
    assert_eq!(out[0].namespace, None);
}

#[test]
fn every_remembered_statement_is_bounded() {
    let mut p = ready();
    let mut out = Vec::new();
    for i in 0..(MAX_PENDING as u64 + 1) {
        feed(&mut p, Direction::Egress, &query("DO 1"), i, &mut out);
    }
    assert_eq!(p.phase, Phase::Lost);
    let mut p = ready();
    for id in 0..(2 * MAX_STATEMENTS as u32) {
        feed(
            &mut p,
            Direction::Egress,
            &packet(0, b"\x16SELECT 1"),
            1,
            &mut out,
        );
        let mut ok = vec![0];
        ok.extend(id.to_le_bytes());
        ok.extend([0; 7]);
        feed(&mut p, Direction::Ingress, &packet(1, &ok), 2, &mut out);
    }
    assert_eq!(p.statements.len(), MAX_STATEMENTS);
    assert!(p.is_idle());
}
