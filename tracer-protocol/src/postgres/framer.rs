//! One direction's messages: a type byte (none for the startup message, only that byte for
//! the answer to an SSLRequest) and a 4-byte big-endian length that counts itself. A body is
//! kept up to [`MAX_KEPT_BODY`] bytes (statement text, error fields); the rest is skipped by
//! its length, captured or not.
use crate::db::{Input, Sent};

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
    /// Body bytes still to come of the message being read (`None`: reading a head).
    body_left: Option<u64>,
    body: Vec<u8>,
    /// Bytes of this body went uncaptured: what follows them is not kept (no holes).
    cut: bool,
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
            body_left: None,
            body: Vec::new(),
            cut: false,
            first: Sent::default(),
        }
    }

    /// The kept body of the message [`Self::next`] returned last.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    pub fn memory_bytes(&self) -> usize {
        self.body.capacity()
    }

    /// The next whole message from `input` (`None`: `input` ended inside one). `Err`: the
    /// framing is lost (uncaptured bytes in a head, an impossible length).
    pub fn next(&mut self, input: &mut Input<'_>, sent: Sent) -> Result<Option<Message>, ()> {
        let head_size = match self.mode {
            Mode::Typed => 5,
            Mode::Untyped => 4,
            Mode::Byte => 1,
        };
        if self.body_left.is_none() {
            if self.head_len == 0 {
                if input.data.is_empty() && input.uncaptured > 0 {
                    return Err(());
                }
                self.first = sent;
                self.body.clear();
                self.cut = false;
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
            self.body_left = Some(u64::from(len - 4));
        }
        let left = self.body_left.unwrap_or(0);
        let from_data = (input.data.len() as u64).min(left) as usize;
        let room = if self.cut {
            0
        } else {
            MAX_KEPT_BODY.saturating_sub(self.body.len())
        };
        let keep = from_data.min(room);
        self.body.extend_from_slice(&input.data[..keep]);
        input.data = &input.data[from_data..];
        let mut left = left - from_data as u64;
        if input.data.is_empty() && left > 0 && input.uncaptured > 0 {
            left -= input.skip(left);
            self.cut = true;
        }
        if left > 0 {
            self.body_left = Some(left);
            return Ok(None);
        }
        self.body_left = None;
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
