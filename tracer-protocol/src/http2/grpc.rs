//! gRPC messages in a stream's DATA payload: each is a 5-byte prefix (compressed flag, 4-byte
//! big-endian length) and the message. Only prefixes are read; message bytes are skipped by
//! count, so a gap inside a message costs nothing. A gap that may cover a prefix stops the
//! reading for that direction: the messages seen up to there are exact, and none is ever
//! guessed after it.

use crate::Direction;

/// Messages kept per stream (both directions); more are counted in
/// [`HttpExchange::messages_dropped`](crate::HttpExchange::messages_dropped).
pub const MAX_MESSAGES: usize = 32;

/// One gRPC message seen in a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RpcMessage {
    /// `Egress`: sent by the traced process; `Ingress`: received.
    pub direction: Direction,
    /// 1, 2, ... per direction.
    pub id: u32,
    /// The prefix's compressed flag: `size` is then the compressed size.
    pub compressed: bool,
    /// The message's length from its prefix.
    pub size: u32,
    /// Monotonic time of the call that carried the prefix's last byte.
    pub at_ns: u64,
}

/// One direction's reading position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Reader {
    prefix: [u8; 5],
    have: u8,
    /// Message bytes still to skip before the next prefix.
    body_left: u32,
    /// Messages read (the next id is this + 1).
    count: u32,
    lost: bool,
}

/// The gRPC messages of one stream, both directions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageLog {
    readers: [Reader; 2],
    pub messages: Vec<RpcMessage>,
    /// Messages read but not kept (over [`MAX_MESSAGES`]).
    pub dropped: u32,
}

impl MessageLog {
    /// Payload bytes of `dir`, in order.
    pub fn feed(&mut self, dir: Direction, mut data: &[u8], at_ns: u64) {
        let r = &mut self.readers[dir.index()];
        while !r.lost && !data.is_empty() {
            if r.body_left > 0 {
                let n = data.len().min(r.body_left as usize);
                r.body_left -= n as u32;
                data = &data[n..];
                continue;
            }
            let n = data.len().min(5 - usize::from(r.have));
            r.prefix[usize::from(r.have)..usize::from(r.have) + n].copy_from_slice(&data[..n]);
            r.have += n as u8;
            data = &data[n..];
            if r.have < 5 {
                continue;
            }
            r.have = 0;
            if r.prefix[0] > 1 {
                // Not a gRPC prefix (flags other than "compressed" are not defined).
                r.lost = true;
                break;
            }
            let size = u32::from_be_bytes(r.prefix[1..].try_into().expect("4 bytes"));
            r.body_left = size;
            r.count += 1;
            let m = RpcMessage {
                direction: dir,
                id: r.count,
                compressed: r.prefix[0] == 1,
                size,
                at_ns,
            };
            if self.messages.len() < MAX_MESSAGES {
                self.messages.push(m);
            } else {
                self.dropped += 1;
            }
        }
    }

    /// `len` payload bytes of `dir` were not seen (`None`: how many is unknown).
    pub fn gap(&mut self, dir: Direction, len: Option<u64>) {
        let r = &mut self.readers[dir.index()];
        match len {
            Some(n) if r.have == 0 && n <= u64::from(r.body_left) => r.body_left -= n as u32,
            _ => r.lost = true,
        }
    }

    pub fn heap_bytes(&self) -> usize {
        self.messages.capacity() * std::mem::size_of::<RpcMessage>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Direction::{Egress, Ingress};

    fn msg(flag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![flag];
        v.extend_from_slice(&(body.len() as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn sizes(log: &MessageLog, dir: Direction) -> Vec<(u32, u32, bool)> {
        log.messages
            .iter()
            .filter(|m| m.direction == dir)
            .map(|m| (m.id, m.size, m.compressed))
            .collect()
    }

    #[test]
    fn messages_across_any_split() {
        let mut stream = msg(0, b"\x0a\x05world");
        stream.extend(msg(1, &[7; 300]));
        stream.extend(msg(0, b""));
        for cut in 0..stream.len() {
            let mut log = MessageLog::default();
            log.feed(Egress, &stream[..cut], 1);
            log.feed(Egress, &stream[cut..], 2);
            assert_eq!(
                sizes(&log, Egress),
                vec![(1, 7, false), (2, 300, true), (3, 0, false)],
                "cut {cut}"
            );
        }
    }

    #[test]
    fn directions_count_separately() {
        let mut log = MessageLog::default();
        log.feed(Ingress, &msg(0, b"ab"), 5);
        log.feed(Egress, &msg(0, b"abc"), 6);
        log.feed(Egress, &msg(0, b"abcd"), 7);
        assert_eq!(sizes(&log, Ingress), vec![(1, 2, false)]);
        assert_eq!(sizes(&log, Egress), vec![(1, 3, false), (2, 4, false)]);
        assert_eq!(log.messages[0].at_ns, 5);
    }

    #[test]
    fn gaps_inside_a_message_are_skipped_others_stop_reading() {
        let big = msg(0, &[1; 10_000]);
        let mut log = MessageLog::default();
        log.feed(Egress, &big[..4096], 1);
        log.gap(Egress, Some((big.len() - 4096) as u64));
        log.feed(Egress, &msg(0, b"x"), 2);
        assert_eq!(sizes(&log, Egress), vec![(1, 10_000, false), (2, 1, false)]);
        // A gap longer than the message left may hide a prefix.
        log.gap(Egress, Some(2));
        log.feed(Egress, &msg(0, b"y"), 3);
        assert_eq!(sizes(&log, Egress).len(), 2);
        // Unknown length, or a gap inside a prefix.
        let mut log = MessageLog::default();
        log.feed(Ingress, &[0, 0], 1);
        log.gap(Ingress, Some(1));
        log.feed(Ingress, &msg(0, b"z"), 1);
        assert!(log.messages.is_empty());
        let mut log = MessageLog::default();
        log.gap(Ingress, None);
        log.feed(Ingress, &msg(0, b"z"), 1);
        assert!(log.messages.is_empty());
    }

    #[test]
    fn bounded_and_counted() {
        let mut log = MessageLog::default();
        let one = msg(0, b"m");
        for _ in 0..(MAX_MESSAGES + 10) {
            log.feed(Ingress, &one, 1);
        }
        assert_eq!(log.messages.len(), MAX_MESSAGES);
        assert_eq!(log.dropped, 10);
        assert_eq!(log.messages.last().unwrap().id, MAX_MESSAGES as u32);
    }

    #[test]
    fn not_grpc_framing_stops_reading() {
        let mut log = MessageLog::default();
        log.feed(Egress, b"GET / HTTP/1.1\r\n", 1);
        log.feed(Egress, &msg(0, b"z"), 1);
        assert!(log.messages.is_empty());
    }
}
