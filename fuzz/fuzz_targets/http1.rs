//! Feeds arbitrary chunk/gap/close sequences in both directions to `Http1Conn`: no panic, memory
//! stays bounded, emitted exchanges are sane.
//!
//! The parsers are their own crate (`tracer-protocol`), so the fuzz build does not build the
//! agent or its eBPF object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_fuzz::{Op, Ops};
use tracer_protocol::http1::{Http1Conn, Limits};
use tracer_protocol::{Direction, headers};

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
    let mut ops = Ops::new(input, Direction::Ingress);
    for op in ops.by_ref() {
        match op {
            Op::Chunk { dir, mut chunk } => {
                chunk.other_unseen = 0;
                conn.on_chunk(dir, &chunk, &mut out);
            }
            Op::Gap { dir, bytes } => conn.on_gap(dir, bytes),
            Op::Close { extra, ts } => {
                if extra == 0 {
                    conn.on_close(ts, &mut out);
                    assert!(conn.is_idle());
                }
            }
        }
        assert!(
            conn.memory_bytes() <= MEMORY_BOUND,
            "{}",
            conn.memory_bytes()
        );
    }
    let ts = ops.now();
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
