use super::*;
use crate::db::{DbConn, replay_capture};

fn run(capture: &str, check: impl Fn(&[DbExchange])) {
    replay_capture(DbConn::redis, capture, check);
}

fn ops(calls: &[DbExchange]) -> Vec<(&str, Option<&str>, &str)> {
    calls
        .iter()
        .map(|c| {
            (
                c.operation.as_deref().unwrap_or("-"),
                c.error_code.as_deref(),
                c.namespace.as_deref().unwrap_or("-"),
            )
        })
        .collect()
}

/// redis-cli 7.0 against redis-server 7.0 (its first exchange, COMMAND DOCS with a 170 kB
/// reply, left out of the file): an error, SELECT, a null reply, MULTI/EXEC.
#[test]
fn redis_cli_session() {
    run(include_str!("testdata/redis-cli.hex"), |calls| {
        assert_eq!(
            ops(calls),
            [
                ("SET", None, "0"),
                ("GET", None, "0"),
                ("INCR", Some("ERR"), "0"),
                ("SELECT", None, "2"),
                ("GET", None, "2"),
                ("MULTI", None, "2"),
                ("SET", None, "2"),
                ("INCR", None, "2"),
                ("EXEC", None, "2"),
                ("HGETALL", None, "2"),
            ]
        );
        for c in calls {
            assert_eq!(c.query_text, None, "arguments are never kept");
        }
    });
}

/// redis-py 8.1 speaking RESP3 (HELLO 3, a map reply), errors of its handshake, a pipeline
/// of seven commands in one write (a 5000-byte value) and a MULTI/EXEC pipeline.
#[test]
fn redis_py_pipelines() {
    run(include_str!("testdata/redis-py.hex"), |calls| {
        let names: Vec<_> = ops(calls)
            .into_iter()
            .map(|(op, err, _)| (op, err))
            .collect();
        assert_eq!(
            names,
            [
                ("HELLO", None),
                ("CLIENT", Some("ERR")),
                ("CLIENT", Some("ERR")),
                ("CLIENT", Some("ERR")),
                ("SET", None),
                ("GET", None),
                ("INCRBY", Some("ERR")),
                ("LPUSH", None),
                ("LRANGE", None),
                ("HSET", None),
                ("HGETALL", None),
                ("MULTI", None),
                ("SET", None),
                ("INCRBY", None),
                ("EXEC", None),
            ]
        );
    });
}

fn whole(data: &[u8]) -> Chunk<'_> {
    chunk(data, data.len() as u32)
}

fn chunk(data: &[u8], total_len: u32) -> Chunk<'_> {
    Chunk {
        data,
        total_len,
        ts_enter: 1,
        ts_exit: 2,
        tid: 1,
        other_unseen: 0,
        position: 0,
        ctx: None,
    }
}

#[test]
fn uncaptured_bulk_payloads_are_skipped() {
    let mut r = RedisConn::default();
    let mut out = Vec::new();
    let value = "v".repeat(10_000);
    let cmd = format!(
        "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10000\r\n{value}\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    );
    // The kernel captured the first 4096 bytes of the write; GET's bytes were not captured.
    r.on_chunk(
        Direction::Egress,
        &chunk(&cmd.as_bytes()[..4096], cmd.len() as u32),
        &mut out,
    );
    assert!(r.stopped, "GET's head was not captured: framing lost");
    let mut r = RedisConn::default();
    let set = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10000\r\n{value}\r\n");
    r.on_chunk(
        Direction::Egress,
        &chunk(&set.as_bytes()[..4096], set.len() as u32),
        &mut out,
    );
    r.on_chunk(Direction::Egress, &whole(b"*1\r\n$4\r\nPING\r\n"), &mut out);
    let reply = format!("+OK\r\n$10000\r\n{value}\r\n");
    r.on_chunk(
        Direction::Ingress,
        &chunk(&reply.as_bytes()[..100], reply.len() as u32),
        &mut out,
    );
    assert_eq!(ops(&out), [("SET", None, "0"), ("PING", None, "0")]);
}

#[test]
fn resp3_attributes_pushes_and_bulk_errors() {
    let mut r = RedisConn::default();
    let mut out = Vec::new();
    r.on_chunk(
        Direction::Egress,
        &whole(b"*1\r\n$4\r\nPING\r\nPING\r\n*1\r\n$3\r\nGET\r\n"),
        &mut out,
    );
    let replies = b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.5\r\n+PONG\r\n+PONG\r\n!21\r\nSYNTAX invalid syntax\r\n";
    r.on_chunk(
        Direction::Ingress,
        &chunk(replies, replies.len() as u32),
        &mut out,
    );
    assert_eq!(
        ops(&out),
        [
            ("PING", None, "0"),
            ("PING", None, "0"),
            ("GET", Some("SYNTAX"), "0")
        ]
    );
}

#[test]
fn subscribers_and_losses_stop_pairing() {
    let mut r = RedisConn::default();
    let mut out = Vec::new();
    r.on_chunk(
        Direction::Egress,
        &whole(b"*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\nc\r\n"),
        &mut out,
    );
    r.on_chunk(
        Direction::Ingress,
        &whole(b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n"),
        &mut out,
    );
    r.on_chunk(
        Direction::Ingress,
        &whole(b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n"),
        &mut out,
    );
    assert_eq!(ops(&out), [("SUBSCRIBE", None, "0")]);
    assert_eq!(r.stats().unmatched_responses, 0);

    let mut r = RedisConn::default();
    let mut out = Vec::new();
    r.on_chunk(Direction::Egress, &whole(b"*1\r\n$4\r\nPING\r\n"), &mut out);
    r.on_gap(Direction::Egress, 3);
    r.on_chunk(Direction::Ingress, &whole(b"+PONG\r\n"), &mut out);
    assert!(out.is_empty());
    assert_eq!(r.stats().dropped_messages, 1);
    // Garbage where a value starts, deep nesting: lost, never a panic.
    let mut r = RedisConn::default();
    r.on_chunk(Direction::Ingress, &whole(b"?what\r\n"), &mut out);
    assert!(r.stopped);
    let mut r = RedisConn::default();
    let deep = "*1\r\n".repeat(100);
    r.on_chunk(
        Direction::Ingress,
        &chunk(deep.as_bytes(), deep.len() as u32),
        &mut out,
    );
    assert!(r.stopped);
}

#[test]
fn a_gap_before_the_first_reply_that_preceded_the_first_command_is_harmless() {
    let mut r = RedisConn::default();
    let mut out = Vec::new();
    let mut c = whole(b"*1\r\n$4\r\nPING\r\n");
    c.other_unseen = 40;
    r.on_chunk(Direction::Egress, &c, &mut out);
    r.on_gap(Direction::Ingress, 40);
    r.on_chunk(Direction::Ingress, &whole(b"+PONG\r\n"), &mut out);
    assert_eq!(ops(&out), [("PING", None, "0")]);
}
