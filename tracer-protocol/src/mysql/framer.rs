//! One direction's packets: a 3-byte little-endian payload length and a sequence number,
//! then the payload. A payload of 0xffffff bytes continues in the next packet; the framer
//! joins them into one logical packet. A payload is kept up to a bound (statement text,
//! greeting, error fields); the rest is skipped by its length, captured or not.
use crate::db::{Body, Input, Sent};

/// A physical packet of this length continues in the next one.
pub const CONTINUED: u32 = 0xff_ffff;

/// A logical packet whose kept payload is in [`Framer::body`].
#[derive(Clone, Copy, Debug)]
pub struct Packet {
    /// The sequence number of its first physical packet.
    pub seq: u8,
    /// Its first physical packet's payload length (`CONTINUED`: more followed).
    pub len: u32,
    /// The call that carried its first byte.
    pub sent: Sent,
}

pub struct Framer {
    keep: usize,
    head: [u8; 4],
    head_len: usize,
    /// The physical packet being read continues a logical one.
    continued: bool,
    /// The body of the packet being read (`Body::reading`: else its head).
    body: Body,
    first: Packet,
}

impl Framer {
    /// A framer keeping up to `keep` payload bytes of each packet.
    pub fn new(keep: usize) -> Self {
        Self {
            keep,
            head: [0; 4],
            head_len: 0,
            continued: false,
            body: Body::default(),
            first: Packet {
                seq: 0,
                len: 0,
                sent: Sent::default(),
            },
        }
    }

    /// The kept payload of the packet [`Self::next`] returned last.
    pub fn body(&self) -> &[u8] {
        self.body.kept()
    }

    pub fn memory_bytes(&self) -> usize {
        self.body.memory_bytes()
    }

    /// The next whole logical packet from `input` (`None`: `input` ended inside one). `Err`:
    /// the framing is lost (uncaptured bytes in a head).
    pub fn next(&mut self, input: &mut Input<'_>, sent: Sent) -> Result<Option<Packet>, ()> {
        loop {
            if !self.body.reading() {
                if self.head_len == 0 {
                    if input.data.is_empty() && input.uncaptured > 0 {
                        return Err(());
                    }
                    if !self.continued {
                        self.first.sent = sent;
                        self.body.restart();
                    }
                }
                let take = (4 - self.head_len).min(input.data.len());
                self.head[self.head_len..self.head_len + take].copy_from_slice(&input.data[..take]);
                self.head_len += take;
                input.data = &input.data[take..];
                if self.head_len < 4 {
                    if input.uncaptured > 0 {
                        return Err(());
                    }
                    return Ok(None);
                }
                let len = u32::from_le_bytes([self.head[0], self.head[1], self.head[2], 0]);
                if !self.continued {
                    self.first.seq = self.head[3];
                    self.first.len = len;
                }
                self.body.expect(u64::from(len));
            }
            if !self.body.read(input, self.keep) {
                return Ok(None);
            }
            self.head_len = 0;
            let physical_len = u32::from_le_bytes([self.head[0], self.head[1], self.head[2], 0]);
            if physical_len == CONTINUED {
                self.continued = true;
                continue;
            }
            self.continued = false;
            return Ok(Some(self.first));
        }
    }
}
