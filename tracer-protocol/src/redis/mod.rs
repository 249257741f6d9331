//! Redis RESP2 and RESP3, client side: commands (arrays of bulk strings, or inline) paired in
//! order with their replies, so pipelines pair right; error replies (`-ERR ...`, RESP3 bulk
//! errors) give the span its error code; `SELECT n` sets the namespace; out-of-band pushes
//! (RESP3 `>`) are not replies. Inside MULTI each command's reply is `+QUEUED` and EXEC's is
//! the transaction's result: each is a call of its own, as on the wire.
//!
//! Only the command's name is kept, never its arguments (keys and values are data). After
//! SUBSCRIBE or MONITOR a connection carries messages, not replies: nothing more is paired.
mod resp;
#[cfg(test)]
mod tests;

use std::{collections::VecDeque, sync::Arc};

use resp::{Resp, Value};

use crate::db::{DbExchange, DbSystem, Input, StartGaps};
use crate::{Chunk, Direction, ParseStats};

/// Commands waiting for their reply; beyond, the connection's pairing is given up.
const MAX_PENDING: usize = 1024;

struct Pending {
    command: Option<Arc<str>>,
    /// `SELECT`'s database index, applied when the reply is not an error.
    select: Option<Arc<str>>,
    /// A command after whose reply the connection no longer carries replies.
    ends_pairing: bool,
    start_ns: u64,
    tid: u32,
}

/// One connection's parser (client side).
pub struct RedisConn {
    sides: [Resp; 2],
    pending: VecDeque<Pending>,
    namespace: Arc<str>,
    /// Framing lost, or a subscriber/monitor connection: nothing more is reported.
    stopped: bool,
    gaps: StartGaps,
    stats: ParseStats,
}

impl Default for RedisConn {
    fn default() -> Self {
        Self {
            sides: [Resp::client(), Resp::default()],
            pending: VecDeque::new(),
            namespace: "0".into(),
            stopped: false,
            gaps: StartGaps::default(),
            stats: ParseStats::default(),
        }
    }
}

impl RedisConn {
    pub fn on_chunk(&mut self, dir: Direction, chunk: &Chunk<'_>, out: &mut Vec<DbExchange>) {
        self.gaps.on_chunk(dir, chunk);
        let sent = crate::db::Sent::of(chunk);
        let mut input = Input::of(chunk);
        while !self.stopped && !input.is_empty() {
            match self.sides[dir.index()].next(&mut input, sent) {
                Ok(Some(v)) => match dir {
                    Direction::Egress => self.on_command(&v),
                    Direction::Ingress => self.on_reply(&v, chunk.ts_exit, out),
                },
                Ok(None) => break,
                Err(()) => self.lose(),
            }
        }
    }

    pub fn on_gap(&mut self, dir: Direction, len: u64) {
        if !self.gaps.is_start(dir, len) {
            self.lose();
        }
    }

    pub fn on_close(&mut self) {
        self.stats.unanswered_requests += self.pending.len() as u64;
        self.pending.clear();
    }

    pub fn stats(&self) -> ParseStats {
        self.stats
    }

    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn memory_bytes(&self) -> usize {
        self.sides.iter().map(Resp::memory_bytes).sum::<usize>()
            + self.pending.capacity() * std::mem::size_of::<Pending>()
    }

    fn lose(&mut self) {
        if !self.stopped {
            self.stats.invalid_messages += 1;
            self.stats.dropped_messages += self.pending.len() as u64;
        }
        self.pending.clear();
        self.stopped = true;
    }

    fn on_command(&mut self, v: &Value) {
        if self.pending.len() >= MAX_PENDING {
            self.lose();
            return;
        }
        let name = v.words[0].as_bytes();
        let command = command_name(name);
        let is = |c: &str| command.as_deref() == Some(c);
        let select = is("SELECT")
            .then(|| v.words[1].as_bytes())
            .filter(|n| !n.is_empty() && n.iter().all(u8::is_ascii_digit))
            .and_then(|n| std::str::from_utf8(n).ok())
            .map(Into::into);
        let ends_pairing = is("SUBSCRIBE") || is("PSUBSCRIBE") || is("SSUBSCRIBE") || is("MONITOR");
        self.pending.push_back(Pending {
            command,
            select,
            ends_pairing,
            start_ns: v.sent.start_ns,
            tid: v.sent.tid,
        });
    }

    fn on_reply(&mut self, v: &Value, end_ns: u64, out: &mut Vec<DbExchange>) {
        if v.kind == b'>' {
            return;
        }
        let Some(p) = self.pending.pop_front() else {
            self.stats.unmatched_responses += 1;
            return;
        };
        let error_code = matches!(v.kind, b'-' | b'!').then(|| error_code(v.words[0].as_bytes()));
        if error_code.is_none()
            && let Some(db) = &p.select
        {
            self.namespace = db.clone();
        }
        out.push(DbExchange {
            system: DbSystem::Redis,
            operation: p.command,
            collection: None,
            namespace: Some(self.namespace.clone()),
            query_text: None,
            error_code,
            start_ns: p.start_ns,
            end_ns,
            tid: p.tid,
        });
        if p.ends_pairing {
            self.stats.dropped_messages += self.pending.len() as u64;
            self.pending.clear();
            self.stopped = true;
        }
    }
}

/// A command's name in upper case, when it is one (letters, digits, `_`, `-`, `|`).
fn command_name(name: &[u8]) -> Option<Arc<str>> {
    let ok = !name.is_empty()
        && name
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'|'));
    ok.then(|| String::from_utf8_lossy(&name.to_ascii_uppercase()).into())
}

/// The error's code: its first word (`ERR`, `WRONGTYPE`, `NOAUTH`...) when it is an upper-case
/// word, else `ERR`.
fn error_code(error: &[u8]) -> String {
    let word = error.split(|&b| b == b' ').next().unwrap_or(&[]);
    let ok = !word.is_empty() && word.iter().all(|c| c.is_ascii_uppercase() || *c == b'_');
    if ok {
        String::from_utf8_lossy(word).into_owned()
    } else {
        "ERR".to_owned()
    }
}
