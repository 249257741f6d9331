//! One direction's messages: a type byte (none for the startup message, only that byte for
//! the answer to an SSLRequest) and a 4-byte big-endian length that counts itself. A body is
//! kept up to [`MAX_KEPT_BODY`] bytes (statement text, error fields); the rest is skipped by
//! its length, captured or not.
use crate::db::{Body, Input, Sent};

/// Longest body prefix kept (a longer statement is cut; its sanitised text is bounded anyway).
pub const MAX_KEPT_BODY: usize = 16 * 1024;
/// The protocol's own limit on a message (PostgreSQL refuses larger ones).
const MAX_MESSAGE: u32 = 1 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Type byte and length.
    Typed,
    /// Length only (the startup message, SSLRequest).
    Untyped,
    /// A single byte and nothing else (the server's answer to an SSLRequest).
    Byte,
}

/// A message whose body is in [`Framer::body`].
#[derive(Clone, Copy, Debug)]
pub struct Message {
    /// The type byte (0 for untyped messages).
    pub kind: u8,
    /// The call that carried the message's first byte.
    pub sent: Sent,
}

pub struct Framer {
    mode: Mode,
    head: [u8; 5],
    head_len: usize,
    /// The body of the message being read (`Body::reading`: else its head).
    body: Body,
    first: Sent,
}

impl Default for Framer {
    fn default() -> Self {
        Self::new(Mode::Typed)
    }
}

impl Framer {
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            head: [0; 5],
            head_len: 0,
            body: Body::default(),
            first: Sent::default(),
        }
    }

    /// The kept body of the message [`Self::next`] returned last.
    pub fn body(&self) -> &[u8] {
        self.body.kept()
    }

    pub fn memory_bytes(&self) -> usize {
        self.body.memory_bytes()
    }

    /// The next whole message from `input` (`None`: `input` ended inside one). `Err`: the
    /// framing is lost (uncaptured bytes in a head, an impossible length).
    pub fn next(&mut self, input: &mut Input<'_>, sent: Sent) -> Result<Option<Message>, ()> {
        let head_size = match self.mode {
            Mode::Typed => 5,
            Mode::Untyped => 4,
            Mode::Byte => 1,
        };
        if !self.body.reading() {
            if self.head_len == 0 {
                if input.data.is_empty() && input.uncaptured > 0 {
                    return Err(());
                }
                self.first = sent;
                self.body.restart();
            }
            let take = (head_size - self.head_len).min(input.data.len());
            self.head[self.head_len..self.head_len + take].copy_from_slice(&input.data[..take]);
            self.head_len += take;
            input.data = &input.data[take..];
            if self.head_len < head_size {
                if input.uncaptured > 0 {
                    return Err(());
                }
                return Ok(None);
            }
            let len = match self.mode {
                Mode::Typed => {
                    u32::from_be_bytes([self.head[1], self.head[2], self.head[3], self.head[4]])
                }
                Mode::Untyped => {
                    u32::from_be_bytes([self.head[0], self.head[1], self.head[2], self.head[3]])
                }
                Mode::Byte => 4,
            };
            if !(4..=MAX_MESSAGE).contains(&len) {
                return Err(());
            }
            self.body.expect(u64::from(len - 4));
        }
        if !self.body.read(input, MAX_KEPT_BODY) {
            return Ok(None);
        }
        self.head_len = 0;
        let kind = match self.mode {
            Mode::Typed | Mode::Byte => self.head[0],
            Mode::Untyped => 0,
        };
        Ok(Some(Message {
            kind,
            sent: self.first,
        }))
    }
}
