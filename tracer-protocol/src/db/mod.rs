//! Database client calls: the exchange type the database parsers produce ([`DbExchange`]),
//! and [`DbConn`], one connection's parser for the protocol the kernel classified.
//!
//! The parsers follow only the client side of a connection: the traced process sent the
//! requests (Egress) and read the responses (Ingress). The kernel never classifies the
//! server's end of a database connection (see `tracer_common::classify::classify_db`).
use std::sync::Arc;

use crate::{Chunk, Direction, ParseStats, mysql, postgres, redis};

/// Which database (`db.system.name`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbSystem {
    Postgresql,
    Redis,
    Mysql,
    Mariadb,
}

impl DbSystem {
    /// The semantic conventions' `db.system.name` value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Postgresql => "postgresql",
            Self::Redis => "redis",
            Self::Mysql => "mysql",
            Self::Mariadb => "mariadb",
        }
    }
}

/// One call: a statement (or an extended-protocol execution) and its result, or one Redis
/// command and its reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbExchange {
    pub system: DbSystem,
    /// `db.operation.name`: the statement's first keyword, the Redis command (upper case).
    pub operation: Option<Arc<str>>,
    /// `db.collection.name`, when the statement names one table plainly.
    pub collection: Option<Arc<str>>,
    /// `db.namespace`: the database (PostgreSQL, MySQL) or the database index (Redis).
    pub namespace: Option<Arc<str>>,
    /// `db.query.text`, sanitised (see [`crate::sql::sanitize`]); never set for Redis.
    pub query_text: Option<Arc<str>>,
    /// `db.response.status_code`: the SQLSTATE (PostgreSQL), the error code (MySQL: `1146`),
    /// or the Redis error prefix (`ERR`, `WRONGTYPE`).
    pub error_code: Option<String>,
    /// Entry of the request's first write, exit of the response's last read.
    pub start_ns: u64,
    pub end_ns: u64,
    /// The thread that sent the request.
    pub tid: u32,
}

/// A statement as the spans show it, made once per prepared statement or query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Statement {
    pub operation: Option<Arc<str>>,
    pub collection: Option<Arc<str>>,
    pub text: Option<Arc<str>>,
}

impl Statement {
    /// The sanitised statement and its summary, from the raw text the client sent.
    pub fn of_sql(raw: &[u8]) -> Self {
        let text = crate::sql::sanitize(raw, crate::sql::MAX_QUERY_TEXT);
        let summary = crate::sql::summarize(&text);
        Self {
            operation: summary.operation.map(Into::into),
            collection: summary.collection.map(Into::into),
            text: (!text.is_empty()).then(|| text.into()),
        }
    }
}

/// When a request was sent: the call that carried its first byte.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    pub start_ns: u64,
    pub tid: u32,
}

impl Sent {
    pub fn of(chunk: &Chunk<'_>) -> Self {
        Self {
            start_ns: chunk.ts_enter,
            tid: chunk.tid,
        }
    }
}

/// The bytes of one call for a parser: the captured prefix, then bytes the call moved that
/// were not captured (a parser may skip them only inside a payload of known length).
pub struct Input<'a> {
    pub data: &'a [u8],
    pub uncaptured: u64,
}

impl<'a> Input<'a> {
    pub fn of(chunk: &Chunk<'a>) -> Self {
        Self {
            data: chunk.data,
            uncaptured: u64::from(chunk.total_len).saturating_sub(chunk.data.len() as u64),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty() && self.uncaptured == 0
    }

    /// Skips up to `n` bytes (captured first); returns how many.
    pub fn skip(&mut self, n: u64) -> u64 {
        let from_data = (self.data.len() as u64).min(n);
        self.data = &self.data[from_data as usize..];
        let from_rest = self.uncaptured.min(n - from_data);
        self.uncaptured -= from_rest;
        from_data + from_rest
    }
}

/// The body of a length-prefixed message as it arrives, for the framers: kept up to a bound,
/// the rest skipped by its length, captured or not. After uncaptured bytes nothing more of
/// it is kept (no holes).
#[derive(Debug, Default)]
pub struct Body {
    /// Bytes still to come (`None`: between bodies; the framer reads a head).
    left: Option<u64>,
    kept: Vec<u8>,
    /// Bytes of this body went uncaptured.
    cut: bool,
}

impl Body {
    /// A new message starts: nothing of it is kept yet.
    pub fn restart(&mut self) {
        self.kept.clear();
        self.cut = false;
    }

    /// The head said `len` bytes of body follow.
    pub fn expect(&mut self, len: u64) {
        self.left = Some(len);
    }

    /// Between a head and the end of its body.
    pub fn reading(&self) -> bool {
        self.left.is_some()
    }

    /// Takes what `input` holds of the body, keeping at most `keep` bytes of it in all; true
    /// when the body ended (the framer reads a head next).
    pub fn read(&mut self, input: &mut Input<'_>, keep: usize) -> bool {
        let left = self.left.unwrap_or(0);
        let from_data = (input.data.len() as u64).min(left) as usize;
        let room = if self.cut {
            0
        } else {
            keep.saturating_sub(self.kept.len())
        };
        self.kept
            .extend_from_slice(&input.data[..from_data.min(room)]);
        input.data = &input.data[from_data..];
        let mut left = left - from_data as u64;
        if input.data.is_empty() && left > 0 && input.uncaptured > 0 {
            left -= input.skip(left);
            self.cut = true;
        }
        if left > 0 {
            self.left = Some(left);
            return false;
        }
        self.left = None;
        true
    }

    pub fn kept(&self) -> &[u8] {
        &self.kept
    }

    pub fn memory_bytes(&self) -> usize {
        self.kept.capacity()
    }
}

/// What an initial gap of the response direction means: the kernel's positions count from
/// when it first saw the connection, so the first event of a direction may follow bytes never
/// delivered. Responses moved before the first request was sent (counted in that request
/// call's `other_unseen`) answered earlier requests: skipping them keeps the pairing right; a
/// larger gap may hold our requests' responses.
#[derive(Clone, Copy, Debug, Default)]
pub struct StartGaps {
    /// Bytes seen per direction (whether the direction has started).
    pub seen: [bool; 2],
    /// Response bytes moved before the first request was sent.
    pub responses_before_first_request: Option<u64>,
}

impl StartGaps {
    /// Notes a chunk; call before parsing it.
    pub fn on_chunk(&mut self, dir: Direction, chunk: &Chunk<'_>) {
        if dir == Direction::Egress && self.responses_before_first_request.is_none() {
            self.responses_before_first_request = Some(chunk.other_unseen);
        }
        self.seen[dir.index()] = true;
    }

    /// Whether a gap of `len` bytes in `dir` is the harmless start of a direction.
    pub fn is_start(&mut self, dir: Direction, len: u64) -> bool {
        if self.seen[dir.index()] {
            return false;
        }
        match dir {
            Direction::Egress => true,
            Direction::Ingress => self.responses_before_first_request == Some(len),
        }
    }
}

/// One database connection's parser.
pub struct DbConn {
    parser: Parser,
    done: Vec<DbExchange>,
}

enum Parser {
    Postgres(postgres::PgConn),
    Redis(redis::RedisConn),
    Mysql(mysql::MysqlConn),
}

impl DbConn {
    pub fn postgres() -> Self {
        Self {
            parser: Parser::Postgres(postgres::PgConn::default()),
            done: Vec::new(),
        }
    }

    pub fn redis() -> Self {
        Self {
            parser: Parser::Redis(redis::RedisConn::default()),
            done: Vec::new(),
        }
    }

    pub fn mysql() -> Self {
        Self {
            parser: Parser::Mysql(mysql::MysqlConn::default()),
            done: Vec::new(),
        }
    }

    pub fn on_chunk(&mut self, dir: Direction, chunk: &Chunk<'_>) {
        match &mut self.parser {
            Parser::Postgres(p) => p.on_chunk(dir, chunk, &mut self.done),
            Parser::Redis(p) => p.on_chunk(dir, chunk, &mut self.done),
            Parser::Mysql(p) => p.on_chunk(dir, chunk, &mut self.done),
        }
    }

    /// The connection's TLS plaintext continues the conversation its cleartext began (MySQL:
    /// the greeting, then the client's SSL request); false when the protocol starts over in
    /// the plaintext instead (PostgreSQL's startup message follows its SSLRequest) or the
    /// client never asked for TLS.
    pub fn resume_over_tls(&mut self) -> bool {
        match &mut self.parser {
            Parser::Mysql(p) => p.resume_over_tls(),
            Parser::Postgres(_) | Parser::Redis(_) => false,
        }
    }

    pub fn on_gap(&mut self, dir: Direction, len: u64) {
        match &mut self.parser {
            Parser::Postgres(p) => p.on_gap(dir, len),
            Parser::Redis(p) => p.on_gap(dir, len),
            Parser::Mysql(p) => p.on_gap(dir, len),
        }
    }

    /// The connection ended: calls still waiting are counted, never reported.
    pub fn on_close(&mut self) {
        match &mut self.parser {
            Parser::Postgres(p) => p.on_close(),
            Parser::Redis(p) => p.on_close(),
            Parser::Mysql(p) => p.on_close(),
        }
    }

    /// The calls finished so far.
    pub fn drain(&mut self) -> std::vec::Drain<'_, DbExchange> {
        self.done.drain(..)
    }

    pub fn stats(&self) -> ParseStats {
        match &self.parser {
            Parser::Postgres(p) => p.stats(),
            Parser::Redis(p) => p.stats(),
            Parser::Mysql(p) => p.stats(),
        }
    }

    pub fn is_idle(&self) -> bool {
        match &self.parser {
            Parser::Postgres(p) => p.is_idle(),
            Parser::Redis(p) => p.is_idle(),
            Parser::Mysql(p) => p.is_idle(),
        }
    }

    pub fn memory_bytes(&self) -> usize {
        let own = self.done.capacity() * std::mem::size_of::<DbExchange>();
        own + match &self.parser {
            Parser::Postgres(p) => p.memory_bytes(),
            Parser::Redis(p) => p.memory_bytes(),
            Parser::Mysql(p) => p.memory_bytes(),
        }
    }
}

/// Feeds every split of `stream` (client bytes, server bytes, in the order given) into a
/// fresh connection at every byte boundary and checks each split yields `expected`
/// (test helper for the parsers' replay tests).
#[cfg(test)]
pub fn replay_split_everywhere(
    new: impl Fn() -> DbConn,
    messages: &[(Direction, &[u8])],
    check: impl Fn(&[DbExchange]),
) {
    let whole = replay(&new, messages, usize::MAX);
    check(&whole);
    let longest = messages.iter().map(|(_, m)| m.len()).max().unwrap_or(0);
    for split in 1..=longest {
        let got = replay(&new, messages, split);
        assert_eq!(got, whole, "split at {split}");
    }
}

#[cfg(test)]
fn replay(
    new: &impl Fn() -> DbConn,
    messages: &[(Direction, &[u8])],
    split: usize,
) -> Vec<DbExchange> {
    let mut conn = new();
    let mut pos = [0u64; 2];
    let mut ts = 1000;
    let mut out = Vec::new();
    for (dir, bytes) in messages {
        // A message split once at `split` (and every byte of a 1-byte split stays in order).
        let (a, b) = bytes.split_at(split.min(bytes.len()));
        for part in [a, b] {
            if part.is_empty() {
                continue;
            }
            ts += 10;
            let chunk = Chunk {
                data: part,
                total_len: part.len() as u32,
                ts_enter: ts,
                ts_exit: ts + 1,
                tid: 7,
                other_unseen: 0,
                position: pos[dir.index()],
                ctx: None,
            };
            pos[dir.index()] += part.len() as u64;
            conn.on_chunk(*dir, &chunk);
            out.extend(conn.drain().map(|mut e| {
                // Times depend on the split; the content must not.
                e.start_ns = 0;
                e.end_ns = 0;
                e
            }));
        }
    }
    out
}

/// [`replay_split_everywhere`] of a capture in [`load_capture`]'s format.
#[cfg(test)]
pub fn replay_capture(new: impl Fn() -> DbConn, capture: &str, check: impl Fn(&[DbExchange])) {
    let messages = load_capture(capture);
    let refs: Vec<(Direction, &[u8])> = messages.iter().map(|(d, b)| (*d, b.as_slice())).collect();
    replay_split_everywhere(new, &refs, check);
}

/// A capture recorded through a relay between a real client and server: one line per read,
/// `c <hex>` (client to server) or `s <hex>` (server to client), in the order they happened.
#[cfg(test)]
pub fn load_capture(text: &str) -> Vec<(Direction, Vec<u8>)> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (d, hex) = l.split_once(' ').expect("direction and hex");
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect();
            let dir = if d == "c" {
                Direction::Egress
            } else {
                Direction::Ingress
            };
            (dir, bytes)
        })
        .collect()
}
