//! Feeds arbitrary chunk/gap/close sequences in both directions to `Http1Conn`: no panic, memory
//! stays bounded, emitted exchanges are sane.
//!
//! The parsers are their own crate (`tracer-protocol`), so the fuzz build does not build the
//! agent or its eBPF object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_protocol::http1::{Http1Conn, Limits};
use tracer_protocol::{Chunk, Direction, headers};

const LIMITS: Limits = Limits {
    max_head_bytes: 2048,
    max_pending_requests: 8,
    max_header_value: 64,
};
/// Heads, chunk-size lines, 8 pending requests (target 2 KiB, 16 headers of <= 64 + 64 bytes).
const MEMORY_BOUND: usize = 256 * 1024;

fuzz_target!(|input: &[u8]| {
    let mut conn = Http1Conn::new(LIMITS);
    let mut out = Vec::new();
    let mut ts = 1_000u64;
    let mut p = 0;
    // Each op: [op] [len] [len bytes of data] ; op bits: 0 direction, 1-2 kind, 3-7 extra.
    while p + 2 <= input.len() {
        let (op, len) = (input[p], input[p + 1] as usize);
        p += 2;
        let dir = if op & 1 == 0 {
            Direction::Ingress
        } else {
            Direction::Egress
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
                    other_unseen: 0,
                    position: 0,
                    ctx: None,
                };
                conn.on_chunk(dir, &chunk, &mut out);
            }
            2 => conn.on_gap(dir, (len as u64) << (op >> 5)),
            _ => {
                if op >> 3 == 0 {
                    conn.on_close(ts, &mut out);
                    assert!(conn.is_idle());
                }
            }
        }
        ts += 10;
        assert!(
            conn.memory_bytes() <= MEMORY_BOUND,
            "{}",
            conn.memory_bytes()
        );
    }
    conn.on_close(ts, &mut out);
    assert!(conn.is_idle());
    for x in &out {
        assert!(x.start_ns <= x.end_ns);
        assert!(!x.request.method.is_empty());
        // The parser's documented bounds, in bytes of kept text.
        assert!(x.request.method.len() <= headers::MAX_METHOD);
        assert!(x.request.target.len() <= headers::MAX_TARGET);
        assert!(x.request.headers.len() <= headers::MAX_KEPT_HEADERS);
        let heads = x.request.headers.iter();
        let heads = heads.chain(x.response.iter().flat_map(|r| &r.headers));
        for (n, v) in heads {
            assert!(n.len() <= headers::MAX_KEPT_NAME, "{n:?}");
            assert!(v.len() <= LIMITS.max_header_value, "{v:?}");
        }
        if let Some(r) = &x.response {
            assert!((100..1000).contains(&r.status));
        }
    }
});
