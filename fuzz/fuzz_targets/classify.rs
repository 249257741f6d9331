//! The kernel's protocol classification (`tracer_common::classify`), run on the host: for any
//! call's first bytes and length, the verdict depends only on the bytes the call really has
//! (the kernel's 8-byte head buffer may hold stale bytes past a short call), and each verdict
//! means what its documentation says: a TLS record header, the HTTP/2 preface, an HTTP/1
//! status line or a known method; a mid-stream HEADERS frame that is whole within the call;
//! a database client's first message (PostgreSQL startup or SSLRequest, a Redis command), a
//! MySQL greeting received, or a query on a connection open before tracing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_common::{
    Protocol, classify,
    classify::{classify_db, classify_db_mid_stream, is_h2_headers_frame, is_mysql_greeting},
};

/// The head bytes a call of `len` bytes really has.
fn n_of(len: usize) -> usize {
    len.min(8)
}

const METHODS: [&[u8]; 9] = [
    b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"PATC", b"OPTI", b"CONN", b"TRAC",
];

fuzz_target!(|input: &[u8]| {
    // [len] [stale] [call_len: 3 bytes] [head bytes...]
    let [len, stale, c0, c1, c2, rest @ ..] = input else {
        return;
    };
    let len = usize::from(*len % 12);
    let call_len = u64::from_le_bytes([*c0, *c1, *c2, 0, 0, 0, 0, 0]);
    let mut head = [0u8; 8];
    let n = rest.len().min(8);
    head[..n].copy_from_slice(&rest[..n]);
    // What a short call leaves in the rest of the buffer must not matter.
    let mut other = head;
    for b in other.iter_mut().skip(len) {
        *b ^= stale | 1;
    }
    let verdict = classify(&head, len);
    assert_eq!(verdict, classify(&other, len), "{head:?} len {len}");
    let seen = &head[..len.min(8)];
    match verdict {
        Protocol::Tls => assert!(seen.len() >= 3 && seen[0] == 0x16 && seen[1] == 3 && seen[2] <= 4),
        Protocol::Http2 => assert!(seen.starts_with(b"PRI ")),
        Protocol::Http1 => assert!(
            seen.starts_with(b"HTTP/1.") || METHODS.iter().any(|m| seen.starts_with(m)),
            "{seen:?}"
        ),
        Protocol::Unknown => {}
        Protocol::Other => panic!("classify never decides Other (the attempt count does)"),
        Protocol::Postgres | Protocol::Redis | Protocol::Mysql => panic!("classify never decides {verdict:?} (classify_db does)"),
    }

    // Database clients: the bytes the call has decide, and a verdict holds only for a client's
    // end (what a server receives is `Other`).
    let egress = stale & 0x80 != 0;
    let db = classify_db(&head, n_of(len), egress);
    assert_eq!(db, classify_db(&other, n_of(len), egress), "{head:?} len {len}");
    match db {
        Protocol::Postgres => {
            assert!(egress && n_of(len) == 8 && seen[0] == 0 && seen[1] == 0);
            assert!(seen[4..8] == [0, 3, 0, 0] || seen == [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
        }
        Protocol::Redis => assert!(egress && seen[0] == b'*' && seen[1..].contains(&b'$')),
        Protocol::Other => assert!(!egress),
        Protocol::Unknown => {}
        _ => panic!("classify_db decided {db:?}"),
    }
    let mid = classify_db_mid_stream(&head, n_of(len), call_len);
    assert_eq!(mid, classify_db_mid_stream(&other, n_of(len), call_len), "{head:?} len {len}");
    match mid {
        // The SQL text starts with two letters.
        Protocol::Postgres | Protocol::Mysql if !seen[5..7].iter().all(u8::is_ascii_alphabetic) => {
            panic!("{seen:?}")
        }
        Protocol::Mysql => assert!(n_of(len) == 8 && seen[3..5] == [0, 3] && call_len >= 4),
        Protocol::Postgres => assert!(n_of(len) == 8 && seen[0] == b'Q' && call_len >= 1),
        Protocol::Unknown => {}
        _ => panic!("classify_db_mid_stream decided {mid:?}"),
    }
    // A MySQL greeting received, whole (sequence 0, protocol 10) or its payload after the
    // connection's first 4 bytes.
    let (position, other_position) = (u64::from(*c0 & 7), u64::from(*c1 & 1));
    let greeting = is_mysql_greeting(&head, n_of(len), call_len, position, other_position);
    assert_eq!(greeting, is_mysql_greeting(&other, n_of(len), call_len, position, other_position));
    if greeting {
        assert!(
            seen.len() == 8 && seen[1..5] == [0, 0, 0, 10]
                || seen.len() >= 4 && seen[0] == 10 && position == 4 && other_position == 0,
            "{seen:?}"
        );
    }

    let n = len.min(8);
    let mut other = head;
    for b in other.iter_mut().skip(n) {
        *b ^= stale | 1;
    }
    let frame = is_h2_headers_frame(&head, n, call_len);
    assert_eq!(frame, is_h2_headers_frame(&other, n, call_len));
    if frame {
        // RFC 9113 4.1: length (24 bits), type HEADERS, END_HEADERS set, only HEADERS flags,
        // reserved bit clear; the frame is whole within the call and within the default
        // SETTINGS_MAX_FRAME_SIZE.
        let frame_len = u64::from(head[0]) << 16 | u64::from(head[1]) << 8 | u64::from(head[2]);
        assert!(n == 8 && head[3] == 1 && head[4] & 0x04 != 0 && head[4] & !0x2d == 0);
        assert!(head[5] & 0x80 == 0);
        assert!((1..=16_384).contains(&frame_len) && 9 + frame_len <= call_len);
    }
});
