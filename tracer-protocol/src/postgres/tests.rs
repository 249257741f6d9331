use super::*;
use crate::db::{DbConn, replay_capture};

fn run(capture: &str, check: impl Fn(&[DbExchange])) {
    replay_capture(DbConn::postgres, capture, check);
}

fn s(v: &Option<Arc<str>>) -> Option<&str> {
    v.as_deref()
}

/// psql 15 against PostgreSQL 15: simple queries, one failing with 42P01.
#[test]
fn psql_simple_queries() {
    run(include_str!("testdata/psql.hex"), |calls| {
        assert_eq!(calls.len(), 4, "{calls:#?}");
        for c in calls {
            assert_eq!(c.system, DbSystem::Postgresql);
            assert_eq!(s(&c.namespace), Some("postgres"));
        }
        assert_eq!(s(&calls[0].operation), Some("CREATE"));
        assert_eq!(
            s(&calls[1].query_text),
            Some("INSERT INTO items VALUES (?, ?)")
        );
        assert_eq!(s(&calls[1].collection), Some("items"));
        assert_eq!(s(&calls[2].operation), Some("SELECT"));
        assert_eq!(
            s(&calls[2].query_text),
            Some("SELECT name FROM items WHERE id = ?")
        );
        assert_eq!(calls[2].error_code, None);
        assert_eq!(s(&calls[3].collection), Some("missing_table"));
        assert_eq!(calls[3].error_code.as_deref(), Some("42P01"));
    });
}

/// psycopg 3.1: a prepared statement (Parse once, then Bind/Execute by name), binary
/// results, and an error in a Parse/Bind/Execute batch.
#[test]
fn psycopg_extended_protocol() {
    run(include_str!("testdata/psycopg.hex"), |calls| {
        assert_eq!(calls.len(), 4, "{calls:#?}");
        for c in &calls[..3] {
            assert_eq!(
                s(&c.query_text),
                Some("SELECT name FROM items WHERE id = $1")
            );
            assert_eq!(s(&c.collection), Some("items"));
            assert_eq!(c.error_code, None);
        }
        assert_eq!(s(&calls[3].operation), Some("INSERT"));
        assert_eq!(calls[3].error_code.as_deref(), Some("42P01"));
    });
}

/// A connection past its startup.
fn ready() -> PgConn {
    PgConn {
        phase: Phase::Ready,
        framers: [Framer::new(Mode::Typed), Framer::new(Mode::Typed)],
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

fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

#[test]
fn times_are_the_request_write_and_the_ready_read() {
    let mut p = ready();
    let mut out = Vec::new();
    let q = msg(b'Q', b"SELECT 1\0");
    p.on_chunk(Direction::Egress, &chunk(&q, q.len() as u32, 100), &mut out);
    let mut resp = msg(b'C', b"SELECT 1\0");
    resp.extend(msg(b'Z', b"I"));
    p.on_chunk(
        Direction::Ingress,
        &chunk(&resp, resp.len() as u32, 200),
        &mut out,
    );
    assert_eq!((out[0].start_ns, out[0].end_ns, out[0].tid), (100, 201, 1));
    assert!(p.is_idle());
}

#[test]
fn uncaptured_row_data_is_skipped_by_length() {
    let mut p = PgConn::default();
    let mut out = Vec::new();
    let q = msg(b'Q', b"SELECT big FROM t\0");
    p.on_chunk(Direction::Egress, &chunk(&q, q.len() as u32, 1), &mut out);
    // A DataRow of 10000 bytes of which the kernel captured 100, then the rest of the reply.
    let row = msg(b'D', &[7u8; 10_000]);
    p.on_chunk(
        Direction::Ingress,
        &chunk(&row[..100], row.len() as u32, 2),
        &mut out,
    );
    let mut rest = msg(b'C', b"SELECT 1\0");
    rest.extend(msg(b'Z', b"I"));
    p.on_chunk(
        Direction::Ingress,
        &chunk(&rest, rest.len() as u32, 3),
        &mut out,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(s(&out[0].collection), Some("t"));
}

#[test]
fn lost_framing_reports_nothing_more() {
    let mut p = PgConn::default();
    let mut out = Vec::new();
    let q = msg(b'Q', b"SELECT 1\0");
    p.on_chunk(Direction::Egress, &chunk(&q, q.len() as u32, 1), &mut out);
    p.on_gap(Direction::Ingress, 50);
    let mut resp = msg(b'C', b"SELECT 1\0");
    resp.extend(msg(b'Z', b"I"));
    p.on_chunk(
        Direction::Ingress,
        &chunk(&resp, resp.len() as u32, 2),
        &mut out,
    );
    p.on_chunk(Direction::Egress, &chunk(&q, q.len() as u32, 3), &mut out);
    p.on_chunk(
        Direction::Ingress,
        &chunk(&resp, resp.len() as u32, 4),
        &mut out,
    );
    assert!(out.is_empty());
    assert_eq!(p.stats().dropped_messages, 1);
    // A header cut by uncaptured bytes, an impossible length: lost too.
    let mut p = PgConn::default();
    p.on_chunk(Direction::Egress, &chunk(b"Q\0", 10, 1), &mut out);
    assert_eq!(p.phase, Phase::Lost);
    let mut p = PgConn::default();
    p.on_chunk(Direction::Egress, &chunk(b"Q\0\0\0\x02", 5, 1), &mut out);
    assert_eq!(p.phase, Phase::Lost);
}

#[test]
fn ssl_request_accepted_hands_over_to_tls() {
    let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let mut p = PgConn::default();
    let mut out = Vec::new();
    p.on_chunk(Direction::Egress, &chunk(&ssl, 8, 1), &mut out);
    p.on_chunk(Direction::Ingress, &chunk(b"S", 1, 2), &mut out);
    // Ciphertext follows: never parsed.
    p.on_chunk(
        Direction::Egress,
        &chunk(&[0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5], 10, 3),
        &mut out,
    );
    assert_eq!(p.phase, Phase::Opaque);
    assert_eq!(p.stats(), ParseStats::default());
    // Refused: the startup follows in plaintext.
    let mut p = PgConn::default();
    p.on_chunk(Direction::Egress, &chunk(&ssl, 8, 1), &mut out);
    p.on_chunk(Direction::Ingress, &chunk(b"N", 1, 2), &mut out);
    let mut startup = 0u32.to_be_bytes().to_vec();
    startup.extend(PROTOCOL_3.to_be_bytes());
    startup.extend(b"user\0app\0\0");
    let len = (startup.len() as u32).to_be_bytes();
    startup[..4].copy_from_slice(&len);
    p.on_chunk(
        Direction::Egress,
        &chunk(&startup, startup.len() as u32, 3),
        &mut out,
    );
    assert_eq!(p.phase, Phase::Authenticating);
    assert_eq!(s(&p.database), Some("app"));
}

#[test]
fn every_pending_call_is_bounded() {
    let mut p = ready();
    let mut out = Vec::new();
    let q = msg(b'Q', b"SELECT 1\0");
    for i in 0..(MAX_PENDING as u64 + 1) {
        p.on_chunk(Direction::Egress, &chunk(&q, q.len() as u32, i), &mut out);
    }
    assert_eq!(p.phase, Phase::Lost);
    for i in 0..(2 * MAX_STATEMENTS) {
        p.on_client(
            b'P',
            format!("s{i}\0SELECT 1\0").as_bytes(),
            Sent::default(),
        );
    }
    assert!(p.statements.len() <= MAX_STATEMENTS);
}
