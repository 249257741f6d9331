//! Feeds arbitrary chunk/gap/close sequences in both directions to `Http2Conn`: no panic, memory
//! stays bounded, emitted exchanges are sane. Besides raw bytes, ops can emit the client preface
//! and well-formed frame headers around arbitrary payloads, so the fuzzer reaches the frame,
//! HPACK and stream layers quickly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_protocol::http2::{self, Http2Conn, Limits};
use tracer_protocol::{Chunk, Direction, headers};

const LIMITS: Limits = Limits {
    max_streams: 16,
    max_header_block: 4096,
    max_header_value: 64,
};
/// Two HPACK tables of at most 64 KiB (stored with some overhead), 16 streams, frame and block
/// buffers of 4 KiB.
const MEMORY_BOUND: usize = 1024 * 1024;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// HPACK: `:method: POST`, `:scheme: http` (static), `:path: /a/b` and `content-type:
/// application/grpc` (literals without indexing, static names).
const GRPC_REQUEST_BLOCK: &[u8] = b"\x83\x86\x04\x04/a/b\x0f\x10\x10application/grpc";

fuzz_target!(|input: &[u8]| {
    let Some((&start, mut input)) = input.split_first() else {
        return;
    };
    let mut conn = Http2Conn::new(LIMITS);
    let mut out = Vec::new();
    let mut ts = 1_000u64;
    // Directions start at position 0 (seen from the start) or mid-connection.
    let mut pos = [u64::from(start & 1) * 1000, u64::from(start & 2) * 500];
    let mut buf = Vec::new();
    // Each op: [op] [len] [len bytes] ; op bits: 0 direction, 1-3 kind, 4-7 extra.
    while input.len() >= 2 {
        let (op, len) = (input[0], input[1] as usize);
        input = &input[2..];
        let data = &input[..len.min(input.len())];
        input = &input[data.len()..];
        let dir = if op & 1 == 0 {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        let extra = u32::from(op >> 4);
        buf.clear();
        let mut uncaptured = 0;
        match (op >> 1) & 7 {
            0 => buf.extend_from_slice(data),
            1 => {
                buf.extend_from_slice(data);
                uncaptured = extra * 61;
            }
            2 | 3 => {
                // A frame: [kind] [flags] [stream] payload; kind 3 ops use END_HEADERS HEADERS.
                let (kind, flags, stream, payload) = match data {
                    [k, f, s, rest @ ..] if (op >> 1) & 7 == 2 => {
                        (k % 11, *f, u32::from(*s % 9), rest)
                    }
                    [f, rest @ ..] => (1, f | 4, 1 + 2 * extra, rest),
                    _ => (4, 0, 0, data),
                };
                // Kind 3 with the top bit of `extra`: a gRPC request block first (so DATA on
                // the stream reaches the message reader), the fuzzer's bytes after it.
                let grpc: &[u8] = if (op >> 1) & 7 == 3 && extra >= 8 {
                    GRPC_REQUEST_BLOCK
                } else {
                    &[]
                };
                let l = ((grpc.len() + payload.len()) as u32).to_be_bytes();
                buf.extend_from_slice(&[l[1], l[2], l[3], kind, flags]);
                buf.extend_from_slice(&stream.to_be_bytes());
                buf.extend_from_slice(grpc);
                buf.extend_from_slice(payload);
            }
            4 => {
                buf.extend_from_slice(PREFACE);
                buf.extend_from_slice(data);
            }
            5 => {
                conn.on_gap(dir, (len as u64) << (extra % 8));
                pos[dir.index()] += (len as u64) << (extra % 8);
            }
            6 => {
                if extra == 0 {
                    conn.on_close(ts, &mut out);
                    assert!(conn.is_idle());
                } else if extra == 1 {
                    conn.on_expire(ts, &mut out);
                    assert!(conn.is_idle());
                }
            }
            _ => {
                // Split the next bytes unevenly: the first `extra` bytes, then the rest.
                let k = (extra as usize).min(data.len());
                for part in [&data[..k], &data[k..]] {
                    let chunk = Chunk {
                        data: part,
                        total_len: part.len() as u32,
                        ts_enter: ts,
                        ts_exit: ts + 3,
                        tid: 1,
                        other_unseen: 0,
                        position: pos[dir.index()],
                        ctx: None,
                    };
                    conn.on_chunk(dir, &chunk, &mut out);
                    pos[dir.index()] += part.len() as u64;
                    ts += 5;
                }
            }
        }
        if !buf.is_empty() {
            let chunk = Chunk {
                data: &buf,
                total_len: buf.len() as u32 + uncaptured,
                ts_enter: ts,
                ts_exit: ts + u64::from(extra),
                tid: 1,
                other_unseen: 0,
                position: pos[dir.index()],
                ctx: None,
            };
            conn.on_chunk(dir, &chunk, &mut out);
            pos[dir.index()] += u64::from(chunk.total_len);
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
        let h = &x.http;
        assert!(h.messages.len() <= http2::MAX_MESSAGES);
        for m in &h.messages {
            assert!(m.id >= 1);
            assert!(m.at_ns >= 1_000);
        }
        assert!(h.start_ns <= h.end_ns);
        assert!(!h.request.method.is_empty() || h.incomplete);
        // The parser's documented bounds, in bytes of kept text.
        assert!(h.request.method.len() <= headers::MAX_METHOD);
        assert!(h.request.target.len() <= headers::MAX_TARGET);
        // The kept headers, and `:authority` as `host`.
        assert!(h.request.headers.len() <= headers::MAX_KEPT_HEADERS + 1);
        let heads = h.request.headers.iter().chain(&x.trailers);
        let heads = heads.chain(h.response.iter().flat_map(|r| &r.headers));
        for (n, v) in heads {
            assert!(n.len() <= headers::MAX_KEPT_NAME, "{n:?}");
            assert!(v.len() <= LIMITS.max_header_value, "{v:?}");
        }
        if let Some(r) = &h.response {
            assert!(r.status == 0 || (100..1000).contains(&r.status));
        }
        assert!(x.stream_id != 0);
    }
});
