//! One direction's byte stream cut into frames: the connection preface, frame reassembly across
//! chunks, header blocks (HEADERS/PUSH_PROMISE + CONTINUATION) decoded with the direction's HPACK
//! decoder, and the few frames the stream layer needs, as [`Event`]s.

use super::block::Block;
use super::frame::{self, FrameHeader, HEADER_LEN, PREFACE};
use super::hpack::Decoder;

/// Where a frame's first byte was (the chunk that carried it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameOrigin {
    pub ts_enter: u64,
    pub ts_exit: u64,
    pub tid: u32,
    /// Byte position in the direction.
    pub position: u64,
}

impl FrameOrigin {
    fn at(self, offset: usize) -> Self {
        Self {
            position: self.position + offset as u64,
            ..self
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A complete header block of a stream; `block` is `None` when it could not be decoded
    /// (too large, malformed): the decoder's table is then unknown.
    Headers {
        stream: u32,
        end_stream: bool,
        block: Option<Block>,
        /// The chunk with the HEADERS frame's first byte.
        first: FrameOrigin,
    },
    /// Content bytes of the current DATA frame (padding excluded): `data[start..end]` of
    /// the chunk just fed. Comes before the frame's [`Event::Data`].
    Payload {
        stream: u32,
        start: usize,
        end: usize,
    },
    /// Content bytes of the current DATA frame that were not seen (`None`: an unknown number,
    /// when a gap hid the pad length).
    PayloadGap {
        stream: u32,
        len: Option<u64>,
    },
    /// A DATA frame's body bytes (padding excluded).
    Data {
        stream: u32,
        len: u64,
        end_stream: bool,
    },
    Rst {
        stream: u32,
    },
    /// Settings the sender of this direction announced (they apply to the other direction).
    Settings {
        header_table_size: Option<u32>,
        max_frame_size: Option<u32>,
    },
    GoAway {
        last_stream: u32,
    },
    /// Frame boundaries were lost; decoding resumes at a later chunk start. What the lost
    /// bytes carried (frames of any open stream) is unknown.
    Desync,
}

/// Counters kept by the framers of a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameStats {
    /// Bytes that were not HTTP/2 where it was expected (bad preface, malformed frames).
    pub invalid: u64,
    /// Header blocks not decoded (too large, malformed, cut by a gap).
    pub dropped_blocks: u64,
    /// Frames longer than the buffering bound, skipped.
    pub oversized_frames: u64,
    /// Times a direction lost sync (a gap or an uncaptured tail outside a frame payload); it
    /// resumes at a later chunk that starts with plausible frames.
    pub desyncs: u64,
    /// Gaps skipped inside a DATA (or ignored) frame payload of known length.
    pub skipped_gaps: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sync {
    /// Nothing seen yet.
    Start,
    /// Matching the client preface; the number of bytes matched.
    Preface(usize),
    Frames,
    /// Joined mid-connection: waiting for a chunk that starts with plausible frames.
    Hunt,
    /// Lost sync: nothing more is decoded in this direction.
    Lost,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// The payload is collected in `buf` (header blocks, settings, ...).
    Buffer,
    /// DATA: only counted.
    Data,
    /// Not needed, or too large to buffer.
    Skip,
}

/// The frame being read: its header, and how much of its payload is still to come.
#[derive(Debug)]
struct CurrentFrame {
    h: FrameHeader,
    remaining: u32,
    mode: Mode,
    oversized: bool,
    first: FrameOrigin,
    /// DATA's pad length (first payload byte) when PADDED.
    pad: Option<u8>,
    /// DATA content bytes still to come; `None` until a PADDED frame's pad length is seen.
    content: Option<u32>,
}

#[derive(Debug)]
struct PendingBlock {
    stream: u32,
    end_stream: bool,
    first: FrameOrigin,
    /// Not decodable (too large, malformed): dropped at END_HEADERS.
    skip: bool,
    push: bool,
}

/// Buffers grown beyond this are freed after use.
const KEEP_BUF: usize = 16 * 1024;

#[derive(Debug)]
pub struct Framer {
    sync: Sync,
    hdr: [u8; HEADER_LEN],
    hdr_len: usize,
    hdr_origin: FrameOrigin,
    current: Option<CurrentFrame>,
    buf: Vec<u8>,
    block: Vec<u8>,
    pending: Option<PendingBlock>,
    pub decoder: Decoder,
    /// Largest frame this direction may carry (the receiver's SETTINGS_MAX_FRAME_SIZE), used
    /// to judge plausibility only.
    pub max_frame: u32,
    max_block: usize,
    max_value: usize,
    /// The client preface was seen: this direction carries requests, from its start.
    pub saw_preface: bool,
    /// Set by the connection before each feed: the other direction began with the preface.
    pub peer_saw_preface: bool,
    /// The first chunk was at position 0 and began with a plausible frame. Positions count
    /// from the kernel's first sight of the connection, so this alone does not prove the
    /// connection's start (it may have been open before tracing): the table is taken as known
    /// only if the peer's preface was seen too (checked at the first header block).
    started_at_zero: bool,
    /// Whether the decoder's table has been settled as known or unknown.
    table_settled: bool,
}

impl Framer {
    pub fn new(max_block: usize, max_value: usize) -> Self {
        Self {
            sync: Sync::Start,
            hdr: [0; HEADER_LEN],
            hdr_len: 0,
            hdr_origin: FrameOrigin::default(),
            current: None,
            buf: Vec::new(),
            block: Vec::new(),
            pending: None,
            decoder: Decoder::new(max_value),
            max_frame: frame::DEFAULT_MAX_FRAME,
            max_block,
            max_value,
            saw_preface: false,
            peer_saw_preface: false,
            started_at_zero: false,
            table_settled: false,
        }
    }

    pub fn lost(&self) -> bool {
        self.sync == Sync::Lost
    }

    /// At a frame boundary with no header block open.
    pub fn is_idle(&self) -> bool {
        self.hdr_len == 0 && self.current.is_none() && self.pending.is_none()
    }

    pub fn memory_bytes(&self) -> usize {
        self.buf.capacity() + self.block.capacity() + self.decoder.memory_bytes()
    }

    /// Feeds one chunk: `data` is its captured prefix of `total_len` bytes.
    pub fn feed(
        &mut self,
        data: &[u8],
        total_len: u32,
        origin: FrameOrigin,
        ev: &mut Vec<Event>,
        st: &mut FrameStats,
    ) {
        let mut p = 0usize;
        while p < data.len() {
            match self.sync {
                Sync::Lost => return,
                Sync::Start => {
                    let n = data.len().min(PREFACE.len());
                    let first_plausible = match data.get(..HEADER_LEN) {
                        Some(h) => FrameHeader::parse(h.try_into().expect("9 bytes"))
                            .plausible(self.max_frame),
                        None => true,
                    };
                    if origin.position == 0 && data[..n] == PREFACE[..n] {
                        self.saw_preface = true;
                        self.table_settled = true;
                        self.sync = Sync::Preface(0);
                    } else if origin.position == 0 && first_plausible {
                        // A frame boundary (the server's first SETTINGS on a new connection);
                        // the table's state is settled at the first header block.
                        self.started_at_zero = true;
                        self.sync = Sync::Frames;
                    } else {
                        if origin.position == 0 {
                            st.invalid += 1;
                        }
                        // Joined mid-connection: the HPACK table is unknown.
                        self.sync = Sync::Hunt;
                        self.table_settled = true;
                        self.decoder = Decoder::new_unknown(self.max_value);
                    }
                }
                Sync::Preface(n) => {
                    let take = (PREFACE.len() - n).min(data.len() - p);
                    if data[p..p + take] != PREFACE[n..n + take] {
                        st.invalid += 1;
                        self.lose(ev);
                        return;
                    }
                    p += take;
                    self.sync = if n + take == PREFACE.len() {
                        Sync::Frames
                    } else {
                        Sync::Preface(n + take)
                    };
                }
                Sync::Hunt => {
                    if p == 0 && frame::plausible_start(data, total_len as usize, self.max_frame) {
                        self.sync = Sync::Frames;
                    } else {
                        break;
                    }
                }
                Sync::Frames => p = self.frames(data, p, origin, ev, st),
            }
        }
        let uncaptured = (total_len as usize).saturating_sub(data.len());
        if uncaptured > 0 {
            self.skip(uncaptured as u64, origin, ev, st);
        }
    }

    /// `len` bytes of this direction were lost. Returns the stream whose DATA payload they were
    /// in when they could be skipped.
    pub fn gap(
        &mut self,
        len: u64,
        origin: FrameOrigin,
        ev: &mut Vec<Event>,
        st: &mut FrameStats,
    ) -> Option<u32> {
        if len == 0 {
            return None;
        }
        let stream = self.current.as_ref().map(|c| c.h.stream);
        self.skip(len, origin, ev, st);
        if self.sync == Sync::Frames {
            st.skipped_gaps += 1;
            return stream;
        }
        None
    }

    /// Bytes not seen: harmless inside a payload that is only counted or skipped; anywhere
    /// else the frame boundaries are lost for good (no reliable way to find one again).
    fn skip(&mut self, len: u64, origin: FrameOrigin, ev: &mut Vec<Event>, st: &mut FrameStats) {
        match self.sync {
            Sync::Lost => {}
            // Mid-connection start: wait for the next chunk start anyway.
            Sync::Hunt => {}
            Sync::Frames => match &mut self.current {
                Some(c) if c.mode != Mode::Buffer && u64::from(c.remaining) >= len => {
                    if c.h.kind == frame::DATA && c.h.flags & frame::PADDED != 0 && c.pad.is_none()
                    {
                        // The pad length was not seen: count the payload whole.
                        c.pad = Some(0);
                        c.h.flags &= !frame::PADDED;
                        c.content = Some(0);
                        ev.push(Event::PayloadGap {
                            stream: c.h.stream,
                            len: None,
                        });
                    } else if c.h.kind == frame::DATA
                        && let Some(left) = &mut c.content
                    {
                        let n = u64::from(*left).min(len);
                        if n > 0 {
                            *left -= n as u32;
                            ev.push(Event::PayloadGap {
                                stream: c.h.stream,
                                len: Some(n),
                            });
                        }
                    }
                    c.remaining -= len as u32;
                    if c.remaining == 0 {
                        self.end_frame(origin, ev, st);
                    }
                }
                _ => {
                    st.desyncs += 1;
                    self.resync(ev);
                }
            },
            // Nothing of this direction seen yet: its first bytes were moved before the kernel
            // knew the protocol (a server's SETTINGS sent before the client preface arrived).
            // Join at the next chunk start, with the table's older part unknown (never
            // guessed; usually empty at that point).
            Sync::Start => {
                self.sync = Sync::Hunt;
                self.table_settled = true;
                self.decoder = Decoder::new_unknown(self.max_value);
            }
            Sync::Preface(_) => {
                st.desyncs += 1;
                self.lose(ev);
            }
        }
    }

    /// Frame boundaries lost inside the stream (bytes not seen outside a payload: a gap, or a
    /// call longer than the capture). Decoding resumes at the next chunk that starts with
    /// plausible frames, as when joining a connection: the HPACK table is forgotten (blocks in
    /// the lost bytes may have changed it), so references to older entries become unknown.
    fn resync(&mut self, ev: &mut Vec<Event>) {
        self.lose(ev);
        self.sync = Sync::Hunt;
        self.table_settled = true;
        ev.push(Event::Desync);
    }

    fn lose(&mut self, ev: &mut Vec<Event>) {
        self.sync = Sync::Lost;
        self.decoder.poison();
        self.current = None;
        self.hdr_len = 0;
        if let Some(pb) = self.pending.take()
            && !pb.push
        {
            ev.push(Event::Headers {
                stream: pb.stream,
                end_stream: false,
                block: None,
                first: pb.first,
            });
        }
        self.buf = Vec::new();
        self.block = Vec::new();
    }

    fn frames(
        &mut self,
        data: &[u8],
        mut p: usize,
        origin: FrameOrigin,
        ev: &mut Vec<Event>,
        st: &mut FrameStats,
    ) -> usize {
        let Some(cur) = &mut self.current else {
            if self.hdr_len == 0 {
                self.hdr_origin = origin.at(p);
            }
            let take = (HEADER_LEN - self.hdr_len).min(data.len() - p);
            self.hdr[self.hdr_len..self.hdr_len + take].copy_from_slice(&data[p..p + take]);
            self.hdr_len += take;
            p += take;
            if self.hdr_len == HEADER_LEN {
                self.hdr_len = 0;
                let h = FrameHeader::parse(&self.hdr);
                self.start_frame(h, ev, st);
                if h.len == 0 {
                    self.end_frame(origin, ev, st);
                }
            }
            return p;
        };
        let take = (cur.remaining as usize).min(data.len() - p);
        match cur.mode {
            Mode::Buffer => self.buf.extend_from_slice(&data[p..p + take]),
            Mode::Data => {
                let (mut q, end) = (p, p + take);
                if cur.content.is_none() && take > 0 {
                    // PADDED: the first payload byte is the pad length.
                    cur.pad = Some(data[q]);
                    cur.content = Some(cur.h.len.saturating_sub(1 + u32::from(data[q])));
                    q += 1;
                }
                if let Some(left) = &mut cur.content {
                    let n = (*left as usize).min(end - q);
                    if n > 0 {
                        *left -= n as u32;
                        ev.push(Event::Payload {
                            stream: cur.h.stream,
                            start: q,
                            end: q + n,
                        });
                    }
                }
            }
            Mode::Skip => {}
        }
        cur.remaining -= take as u32;
        p += take;
        if cur.remaining == 0 {
            self.end_frame(origin, ev, st);
        }
        p
    }

    fn start_frame(&mut self, h: FrameHeader, ev: &mut Vec<Event>, st: &mut FrameStats) {
        if self.pending.is_some() && h.kind != frame::CONTINUATION {
            // A header block must continue with CONTINUATION frames only.
            st.invalid += 1;
            self.drop_block(ev, st);
        }
        let buffered = matches!(
            h.kind,
            frame::HEADERS
                | frame::PUSH_PROMISE
                | frame::CONTINUATION
                | frame::SETTINGS
                | frame::RST_STREAM
                | frame::GOAWAY
        );
        let oversized = buffered && h.len as usize > self.max_block;
        if oversized {
            st.oversized_frames += 1;
        }
        let mode = if h.kind == frame::DATA {
            Mode::Data
        } else if buffered && !oversized {
            Mode::Buffer
        } else {
            Mode::Skip
        };
        self.buf.clear();
        self.current = Some(CurrentFrame {
            h,
            remaining: h.len,
            mode,
            oversized,
            first: self.hdr_origin,
            pad: None,
            content: (h.flags & frame::PADDED == 0).then_some(h.len),
        });
    }

    fn end_frame(&mut self, _origin: FrameOrigin, ev: &mut Vec<Event>, st: &mut FrameStats) {
        let Some(cur) = self.current.take() else {
            return;
        };
        let h = cur.h;
        let end_stream = h.flags & frame::END_STREAM != 0;
        match h.kind {
            frame::DATA => {
                let pad = if h.flags & frame::PADDED != 0 {
                    1 + u64::from(cur.pad.unwrap_or(0))
                } else {
                    0
                };
                ev.push(Event::Data {
                    stream: h.stream,
                    len: u64::from(h.len).saturating_sub(pad),
                    end_stream,
                });
            }
            frame::HEADERS | frame::PUSH_PROMISE => {
                let mut pb = PendingBlock {
                    stream: h.stream,
                    end_stream: h.kind == frame::HEADERS && end_stream,
                    first: cur.first,
                    skip: cur.oversized,
                    push: h.kind == frame::PUSH_PROMISE,
                };
                self.block.clear();
                if !pb.skip {
                    match frame::block_fragment(h.kind, h.flags, &self.buf) {
                        Some(f) => self.block.extend_from_slice(f),
                        None => {
                            st.invalid += 1;
                            pb.skip = true;
                        }
                    }
                }
                self.pending = Some(pb);
                if h.flags & frame::END_HEADERS != 0 {
                    self.finish_block(ev, st);
                }
            }
            frame::CONTINUATION => match &mut self.pending {
                Some(pb) if pb.stream == h.stream => {
                    if cur.oversized || self.block.len() + self.buf.len() > self.max_block {
                        pb.skip = true;
                    }
                    if pb.skip {
                        self.block.clear();
                    } else {
                        self.block.extend_from_slice(&self.buf);
                    }
                    if h.flags & frame::END_HEADERS != 0 {
                        self.finish_block(ev, st);
                    }
                }
                Some(_) => {
                    st.invalid += 1;
                    self.drop_block(ev, st);
                }
                None => {
                    // The block it continues was not seen (or dropped): its insertions are
                    // missing from the table.
                    st.invalid += 1;
                    self.decoder.poison();
                }
            },
            frame::RST_STREAM if self.buf.len() == 4 => ev.push(Event::Rst { stream: h.stream }),
            frame::SETTINGS if h.flags & frame::ACK == 0 && !cur.oversized => {
                let (mut header_table_size, mut max_frame_size) = (None, None);
                for s in self.buf.chunks_exact(6) {
                    let v = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
                    match u16::from_be_bytes([s[0], s[1]]) {
                        frame::SETTINGS_HEADER_TABLE_SIZE => header_table_size = Some(v),
                        frame::SETTINGS_MAX_FRAME_SIZE => max_frame_size = Some(v),
                        _ => {}
                    }
                }
                ev.push(Event::Settings {
                    header_table_size,
                    max_frame_size,
                });
            }
            frame::GOAWAY if self.buf.len() >= 8 => {
                let b = &self.buf;
                ev.push(Event::GoAway {
                    last_stream: u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff,
                });
            }
            _ => {}
        }
        if self.buf.capacity() > KEEP_BUF {
            self.buf = Vec::new();
        }
    }

    /// A header block ended before END_HEADERS: its insertions are lost.
    fn drop_block(&mut self, ev: &mut Vec<Event>, st: &mut FrameStats) {
        if let Some(pb) = &mut self.pending {
            pb.skip = true;
            pb.end_stream = false;
        }
        self.finish_block(ev, st);
    }

    fn finish_block(&mut self, ev: &mut Vec<Event>, st: &mut FrameStats) {
        let Some(pb) = self.pending.take() else {
            return;
        };
        let block = if pb.skip {
            self.decoder.poison();
            st.dropped_blocks += 1;
            None
        } else {
            if !self.table_settled {
                self.table_settled = true;
                if !(self.started_at_zero && self.peer_saw_preface) {
                    self.decoder.poison();
                }
            }
            let mut b = Block::default();
            let max_value = self.max_value;
            match self.decoder.decode(&self.block, |f| b.add(f, max_value)) {
                Ok(()) => Some(b),
                Err(_) => {
                    st.dropped_blocks += 1;
                    None
                }
            }
        };
        if !pb.push {
            ev.push(Event::Headers {
                stream: pb.stream,
                end_stream: pb.end_stream,
                block,
                first: pb.first,
            });
        }
        self.block.clear();
        if self.block.capacity() > KEEP_BUF {
            self.block = Vec::new();
        }
    }
}
