//! What the stream-parser targets share: the op stream a fuzz input is read as, and the
//! database client targets' whole body.
//!
//! An input is a sequence of `[op] [len] [len bytes of data]` records. Op bits: 0 the direction,
//! 1-2 the kind (0 a chunk, 1 a chunk that moved more bytes than it captured, 2 a gap, 3 a
//! close), 3-7 extra (timing, the bytes not captured, the gap's scale, other-direction bytes).
use tracer_protocol::db::DbConn;
use tracer_protocol::sql::{MAX_QUERY_TEXT, sanitize};
use tracer_protocol::{Chunk, Direction};

/// One record of the input.
pub enum Op<'a> {
    Chunk {
        dir: Direction,
        chunk: Chunk<'a>,
    },
    Gap {
        dir: Direction,
        bytes: u64,
    },
    /// The op byte's extra bits (3-7), for targets that close only sometimes; the record's time.
    Close {
        extra: u8,
        ts: u64,
    },
}

/// The records of an input, each 10 ns after the previous one.
pub struct Ops<'a> {
    input: &'a [u8],
    p: usize,
    ts: u64,
    /// The direction of ops whose bit 0 is clear (the other one when it is set).
    even: Direction,
}

impl<'a> Ops<'a> {
    pub fn new(input: &'a [u8], even: Direction) -> Self {
        Self {
            input,
            p: 0,
            ts: 1_000,
            even,
        }
    }

    /// The time after the last record read.
    pub fn now(&self) -> u64 {
        self.ts
    }
}

impl<'a> Iterator for Ops<'a> {
    type Item = Op<'a>;

    fn next(&mut self) -> Option<Op<'a>> {
        let input = self.input;
        if self.p + 2 > input.len() {
            return None;
        }
        let (op, len) = (input[self.p], input[self.p + 1] as usize);
        self.p += 2;
        let dir = match (op & 1 == 0, self.even) {
            (true, d) => d,
            (false, Direction::Egress) => Direction::Ingress,
            (false, Direction::Ingress) => Direction::Egress,
        };
        let ts = self.ts;
        self.ts += 10;
        Some(match (op >> 1) & 3 {
            kind @ (0 | 1) => {
                let data = &input[self.p..(self.p + len).min(input.len())];
                self.p += data.len();
                // Sometimes more bytes moved than captured.
                let extra = if kind == 1 {
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
                Op::Chunk { dir, chunk }
            }
            2 => Op::Gap {
                dir,
                bytes: (len as u64) << (op >> 5),
            },
            _ => Op::Close { extra: op >> 3, ts },
        })
    }
}

/// Everything a database client parser keeps (bodies or payloads of at most 16 KiB per
/// direction, bounded statement tables, pending calls) stays under this.
pub const DB_MEMORY_BOUND: usize = 2 * 1024 * 1024;

/// Feeds the op stream to a database client parser (requests are Egress): no panic, memory
/// stays bounded, every call it reports is sane (ends after it starts, bounded text that is
/// already sanitised), and a closed connection is idle.
pub fn drive_db(mut conn: DbConn, input: &[u8]) {
    for op in Ops::new(input, Direction::Egress) {
        match op {
            Op::Chunk { dir, chunk } => conn.on_chunk(dir, &chunk),
            Op::Gap { dir, bytes } => conn.on_gap(dir, bytes),
            Op::Close { .. } => {
                conn.on_close();
                assert!(conn.is_idle());
            }
        }
        for call in conn.drain() {
            assert!(call.end_ns >= call.start_ns, "{call:?}");
            if let Some(text) = &call.query_text {
                assert!(text.len() <= MAX_QUERY_TEXT);
                // Sanitising is idempotent: nothing in the text reads as a literal any more
                // except the placeholders themselves.
                assert_eq!(sanitize(text.as_bytes(), MAX_QUERY_TEXT).as_str(), &**text);
            }
        }
        assert!(
            conn.memory_bytes() <= DB_MEMORY_BOUND,
            "{}",
            conn.memory_bytes()
        );
    }
}
