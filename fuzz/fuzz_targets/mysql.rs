//! Feeds arbitrary chunk/gap/close sequences in both directions to the MySQL / MariaDB client parser
//! (`tracer_protocol::db::DbConn`): no panic, memory stays bounded, every call it reports is
//! sane (ends after it starts, bounded text that is already sanitised).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_protocol::db::DbConn;
use tracer_protocol::sql::{MAX_QUERY_TEXT, sanitize};
use tracer_protocol::{Chunk, Direction};

/// Kept payloads (16 KiB client, 512 bytes server), 64 statements of bounded text, pending
/// commands.
const MEMORY_BOUND: usize = 2 * 1024 * 1024;

fuzz_target!(|input: &[u8]| {
    let mut conn = DbConn::mysql();
    let mut ts = 1_000u64;
    let mut p = 0;
    // Each op: [op] [len] [len bytes of data]; op bits: 0 direction, 1-2 kind, 3-7 extra.
    while p + 2 <= input.len() {
        let (op, len) = (input[p], input[p + 1] as usize);
        p += 2;
        let dir = if op & 1 == 0 {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        match (op >> 1) & 3 {
            0 | 1 => {
                let data = &input[p..(p + len).min(input.len())];
                p += data.len();
                // Sometimes more bytes moved than captured.
                let extra = if (op >> 1) & 3 == 1 {
                    u32::from(op >> 3) * 97
                } else {
                    0
                };
                let chunk = Chunk {
                    data,
                    total_len: data.len() as u32 + extra,
                    ts_enter: ts,
                    ts_exit: ts + u64::from(op >> 3),
                    tid: 1,
                    other_unseen: u64::from(op >> 4),
                    position: 0,
                    ctx: None,
                };
                conn.on_chunk(dir, &chunk);
            }
            2 => conn.on_gap(dir, (len as u64) << (op >> 5)),
            _ => {
                conn.on_close();
                assert!(conn.is_idle());
            }
        }
        ts += 10;
        for call in conn.drain() {
            assert!(call.end_ns >= call.start_ns, "{call:?}");
            if let Some(text) = &call.query_text {
                assert!(text.len() <= MAX_QUERY_TEXT);
                // Sanitising is idempotent: nothing in the text reads as a literal any more
                // except the placeholders themselves.
                assert_eq!(sanitize(text.as_bytes(), MAX_QUERY_TEXT).as_str(), &**text);
            }
        }
        assert!(conn.memory_bytes() <= MEMORY_BOUND, "{}", conn.memory_bytes());
    }
});
