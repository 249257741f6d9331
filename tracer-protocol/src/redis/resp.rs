//! One direction's RESP2/RESP3 values, incrementally: lines, bulk payloads skipped by their
//! length (captured or not), aggregates (arrays, maps, sets, pushes, attributes) counted down
//! to the end of each top-level value. Of a value it keeps only what the pairing needs: its
//! type, and the first bytes of its first two elements (a command's name and, for SELECT, its
//! argument) or of an error.
use crate::db::{Input, Sent};

/// A line longer than this is kept only up to it (its end is still found).
const MAX_LINE: usize = 32;
/// Aggregates nested deeper than this are not followed (framing given up).
const MAX_DEPTH: usize = 32;
/// Bytes kept of a word (command name, argument, error code).
pub const MAX_WORD: usize = 32;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Word {
    bytes: [u8; MAX_WORD],
    len: u8,
}

impl Word {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    fn push(&mut self, b: &[u8]) {
        let at = usize::from(self.len);
        let n = b.len().min(MAX_WORD - at);
        self.bytes[at..at + n].copy_from_slice(&b[..n]);
        self.len += n as u8;
    }

    fn of(b: &[u8]) -> Self {
        let mut w = Self::default();
        w.push(b);
        w
    }
}

/// A whole top-level value.
#[derive(Clone, Copy, Debug, Default)]
pub struct Value {
    /// Its type byte (`*`, `+`, `-`, `$`, `>`...); 0 for an inline command.
    pub kind: u8,
    /// The first two elements of an array (or the words of an inline command); the first
    /// word of an error.
    pub words: [Word; 2],
    /// The call that carried its first byte.
    pub sent: Sent,
}

#[derive(Clone, Copy, Debug)]
struct Aggregate {
    left: u64,
    attribute: bool,
}

#[derive(Default)]
pub struct Resp {
    line: [u8; MAX_LINE],
    line_len: usize,
    /// Bytes of a bulk payload (and its CRLF) still to come.
    bulk_left: Option<u64>,
    /// Payload bytes of the current bulk still to keep in `capture`.
    keep_left: usize,
    capture: Option<usize>,
    stack: Vec<Aggregate>,
    value: Value,
    /// Elements of the top-level array done so far.
    top_elements: u32,
    /// Whether the current top-level value has begun.
    started: bool,
    /// Whether this side may send inline commands (the client).
    inline_commands: bool,
}

impl Resp {
    pub fn client() -> Self {
        Self {
            inline_commands: true,
            ..Self::default()
        }
    }

    pub fn memory_bytes(&self) -> usize {
        self.stack.capacity() * std::mem::size_of::<Aggregate>()
    }

    /// The next whole top-level value in `input` (`None`: `input` ended inside one). `Err`:
    /// framing lost (bytes not captured outside a bulk payload, a malformed line).
    pub fn next(&mut self, input: &mut Input<'_>, sent: Sent) -> Result<Option<Value>, ()> {
        loop {
            if !self.started {
                if input.data.is_empty() {
                    return if input.uncaptured > 0 {
                        Err(())
                    } else {
                        Ok(None)
                    };
                }
                self.started = true;
                self.value = Value {
                    sent,
                    ..Value::default()
                };
                self.top_elements = 0;
            }
            if let Some(left) = self.bulk_left {
                let from_data = (input.data.len() as u64).min(left) as usize;
                if let Some(slot) = self.capture {
                    let n = from_data.min(self.keep_left);
                    self.value.words[slot].push(&input.data[..n]);
                    self.keep_left -= n;
                }
                input.data = &input.data[from_data..];
                let mut left = left - from_data as u64;
                if left > 0 && input.data.is_empty() && input.uncaptured > 0 {
                    left -= input.skip(left);
                    // What follows the uncaptured bytes is not the word's next part.
                    self.keep_left = 0;
                }
                if left > 0 {
                    self.bulk_left = Some(left);
                    return Ok(None);
                }
                self.bulk_left = None;
                self.capture = None;
                if let Some(v) = self.element_done() {
                    return Ok(Some(v));
                }
                continue;
            }
            // A line: up to its '\n'.
            if input.data.is_empty() {
                return if input.uncaptured > 0 {
                    Err(())
                } else {
                    Ok(None)
                };
            }
            match input.data.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    self.keep_line(&input.data[..end]);
                    input.data = &input.data[end + 1..];
                    if let Some(v) = self.on_line()? {
                        return Ok(Some(v));
                    }
                }
                None => {
                    self.keep_line(input.data);
                    input.data = &[];
                    if input.uncaptured > 0 {
                        return Err(());
                    }
                    return Ok(None);
                }
            }
        }
    }

    fn keep_line(&mut self, b: &[u8]) {
        let n = b.len().min(MAX_LINE - self.line_len);
        self.line[self.line_len..self.line_len + n].copy_from_slice(&b[..n]);
        self.line_len += n;
    }

    fn on_line(&mut self) -> Result<Option<Value>, ()> {
        let mut len = self.line_len;
        if len > 0 && self.line[len - 1] == b'\r' {
            len -= 1;
        }
        self.line_len = 0;
        let line = self.line;
        let line = &line[..len];
        let Some((&kind, rest)) = line.split_first() else {
            // An empty line between inline commands.
            if self.stack.is_empty() && self.inline_commands {
                self.started = false;
                return Ok(None);
            }
            return Err(());
        };
        let top = self.stack.is_empty();
        if top && self.value.kind == 0 && kind != b'|' {
            self.value.kind = kind;
        }
        match kind {
            b'*' | b'%' | b'~' | b'>' | b'|' => {
                let n = number(rest)?;
                if n <= 0 {
                    return Ok(self.element_done());
                }
                if self.stack.len() >= MAX_DEPTH {
                    return Err(());
                }
                let per = if matches!(kind, b'%' | b'|') { 2 } else { 1 };
                self.stack.push(Aggregate {
                    left: (n as u64).saturating_mul(per),
                    attribute: kind == b'|',
                });
                Ok(None)
            }
            b'$' | b'!' | b'=' => {
                let n = number(rest)?;
                if n < 0 {
                    return Ok(self.element_done());
                }
                self.bulk_left = Some(n as u64 + 2);
                // Keep a command's first two elements, or a top-level bulk error.
                self.capture = match (self.stack.len(), self.top_elements) {
                    (1, i @ 0..=1) => Some(i as usize),
                    (0, _) if kind == b'!' => Some(0),
                    _ => None,
                };
                self.keep_left = (n as usize).min(MAX_WORD);
                Ok(None)
            }
            b'-' => {
                if top {
                    let code = rest.split(|&b| b == b' ').next().unwrap_or(&[]);
                    self.value.words[0] = Word::of(code);
                }
                Ok(self.element_done())
            }
            b'+' | b':' | b'_' | b',' | b'#' | b'(' => Ok(self.element_done()),
            _ if top && self.inline_commands => {
                // An inline command (`PING`, telnet style): its words.
                self.value.kind = 0;
                let mut words = line.split(|&b| b == b' ').filter(|w| !w.is_empty());
                self.value.words = [
                    Word::of(words.next().unwrap_or(&[])),
                    Word::of(words.next().unwrap_or(&[])),
                ];
                Ok(self.element_done())
            }
            _ => Err(()),
        }
    }

    /// An element ended: counts it down through its aggregates; a whole top-level value is
    /// returned.
    fn element_done(&mut self) -> Option<Value> {
        loop {
            let depth = self.stack.len();
            let Some(top) = self.stack.last_mut() else {
                self.started = false;
                return Some(self.value);
            };
            top.left -= 1;
            if depth == 1 {
                self.top_elements += 1;
            }
            if top.left > 0 {
                return None;
            }
            let attribute = top.attribute;
            self.stack.pop();
            if attribute {
                // Attributes precede the value they describe: not an element themselves.
                if self.stack.is_empty() {
                    self.value.kind = 0;
                }
                return None;
            }
        }
    }
}

fn number(b: &[u8]) -> Result<i64, ()> {
    let s = std::str::from_utf8(b).map_err(|_| ())?;
    let n: i64 = s.parse().map_err(|_| ())?;
    // RESP lengths are at most 512 MB by default; anything near i64 is not a length.
    if n > 1 << 40 { Err(()) } else { Ok(n) }
}
