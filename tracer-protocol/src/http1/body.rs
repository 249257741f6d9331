//! Body framing: bytes of a body are counted, never kept, against `Content-Length`, chunked
//! coding (extensions and trailers; sizes with `httparse::parse_chunk_size`) or the close; and
//! bytes the parser cannot see (uncaptured tails, gaps) are skipped where the framing allows.

use super::{ChunkInfo, Http1Conn, Owner, Phase};
use crate::{Direction, HttpExchange};

/// Longest chunk-size line (with extensions).
const MAX_CHUNK_LINE: usize = 4096;

/// How the body being read is delimited, and how much of it is left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Body {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

/// Where a chunked body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Chunked {
    /// Expecting a chunk-size line (buffered in `DirectionState::buf` when it spans chunks).
    Size,
    /// Inside chunk data.
    Data(u64),
    /// After chunk data: expecting CR LF (or a bare LF).
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines until an empty line.
    Trailer {
        line: usize,
        total: usize,
    },
}

impl Http1Conn {
    /// Body bytes of `data[p..]` in `dir`, framed as `body`; returns the new position.
    pub(super) fn body(
        &mut self,
        dir: Direction,
        body: Body,
        data: &[u8],
        p: usize,
        info: ChunkInfo,
        out: &mut Vec<HttpExchange>,
    ) -> usize {
        let d = dir.index();
        match body {
            Body::Length(rem) => {
                let take = rem.min((data.len() - p) as u64);
                self.add_body(d, take);
                if take == rem {
                    self.finish_message(dir, info.ts_exit, false, out);
                } else {
                    self.dirs[d].phase = Phase::Body(Body::Length(rem - take));
                }
                p + take as usize
            }
            Body::UntilClose => {
                self.add_body(d, (data.len() - p) as u64);
                data.len()
            }
            Body::Chunked(ck) => self.chunked(dir, ck, data, p, info, out),
        }
    }

    pub(super) fn add_body(&mut self, d: usize, n: u64) {
        match self.dirs[d].owner {
            Owner::Request(seq) => {
                if let Some(r) = self.req_mut(seq) {
                    r.body_size = r.body_size.saturating_add(n);
                }
            }
            Owner::Response => {
                if let Some(f) = self.paired.as_mut() {
                    f.body_size = f.body_size.saturating_add(n);
                }
            }
            Owner::Discard => {}
        }
    }

    pub(super) fn mark_incomplete(&mut self, d: usize) {
        match self.dirs[d].owner {
            Owner::Request(seq) => {
                if let Some(r) = self.req_mut(seq) {
                    r.incomplete = true;
                }
            }
            Owner::Response => {
                if let Some(f) = self.paired.as_mut() {
                    f.incomplete = true;
                }
            }
            Owner::Discard => {}
        }
    }

    /// The current message of `dir` ended (its last byte moved at `end_ns`).
    pub(super) fn finish_message(
        &mut self,
        dir: Direction,
        end_ns: u64,
        incomplete: bool,
        out: &mut Vec<HttpExchange>,
    ) {
        let d = dir.index();
        if incomplete {
            self.mark_incomplete(d);
        }
        if self.dirs[d].owner == Owner::Response
            && let Some(mut f) = self.paired.take()
        {
            f.end_ns = end_ns;
            Self::emit(f, out);
        }
        self.dirs[d].phase = Phase::Start;
        self.dirs[d].owner = Owner::Discard;
    }

    /// `n` bytes of `dir` that the parser cannot see: an uncaptured tail of the chunk `info`,
    /// or a gap (`info == None`).
    pub(super) fn skip(
        &mut self,
        dir: Direction,
        n: u64,
        info: Option<ChunkInfo>,
        out: &mut Vec<HttpExchange>,
    ) {
        let d = dir.index();
        let gap = info.is_none();
        let end_ns = info.map_or(self.dirs[d].last_exit, |m| m.ts_exit);
        match self.dirs[d].phase {
            Phase::Body(Body::Length(rem)) => {
                let take = rem.min(n);
                self.add_body(d, take);
                if gap {
                    self.mark_incomplete(d);
                }
                if take == rem {
                    self.finish_message(dir, end_ns, gap, out);
                    if n > take {
                        self.lose(dir, out);
                    }
                } else {
                    self.dirs[d].phase = Phase::Body(Body::Length(rem - take));
                }
            }
            Phase::Body(Body::Chunked(Chunked::Data(rem))) => {
                let take = rem.min(n);
                self.add_body(d, take);
                if gap {
                    self.mark_incomplete(d);
                }
                if take == rem {
                    // The CR LF closing the chunk data has a fixed size: skipping it unseen keeps
                    // sync (servers often write size line, data and CR LF in one call).
                    self.skip_data_crlf(dir, n - take, out);
                } else {
                    self.dirs[d].phase = Phase::Body(Body::Chunked(Chunked::Data(rem - take)));
                }
            }
            Phase::Body(Body::Chunked(Chunked::DataCr)) => self.skip_data_crlf(dir, n, out),
            Phase::Body(Body::Chunked(Chunked::DataLf)) => self.skip_data_crlf(dir, n + 1, out),
            Phase::Body(Body::UntilClose) => {
                self.add_body(d, n);
                if gap {
                    self.mark_incomplete(d);
                }
            }
            Phase::Head => self.drop_head(dir, out),
            Phase::Start | Phase::Body(Body::Chunked(_)) => self.lose(dir, out),
            Phase::Resync => self.pairing_loss(dir, out),
        }
    }

    /// `n` unseen bytes right after chunk data: up to 2 of them are the CR LF ending the data;
    /// more would be the next chunk-size line, which cannot be skipped blind.
    fn skip_data_crlf(&mut self, dir: Direction, n: u64, out: &mut Vec<HttpExchange>) {
        let d = dir.index();
        self.dirs[d].phase = Phase::Body(Body::Chunked(match n {
            0 => Chunked::DataCr,
            1 => Chunked::DataLf,
            2 => Chunked::Size,
            _ => return self.lose(dir, out),
        }));
    }

    /// Chunked body bytes from `data[p..]`; returns the new position.
    fn chunked(
        &mut self,
        dir: Direction,
        ck: Chunked,
        data: &[u8],
        p: usize,
        info: ChunkInfo,
        out: &mut Vec<HttpExchange>,
    ) -> usize {
        let d = dir.index();
        match ck {
            Chunked::Size => {
                let old = self.dirs[d].buf().len();
                let (line, take): (&[u8], usize) = if old == 0 {
                    (&data[p..], data.len() - p)
                } else {
                    let take = MAX_CHUNK_LINE.saturating_sub(old).min(data.len() - p);
                    self.dirs[d].buf_mut().extend_from_slice(&data[p..p + take]);
                    (self.dirs[d].buf(), take)
                };
                if !line.first().is_some_and(u8::is_ascii_hexdigit) {
                    self.lose(dir, out);
                    return data.len();
                }
                match httparse::parse_chunk_size(line) {
                    Ok(httparse::Status::Complete((n, size))) if n > old => {
                        self.dirs[d].release_buf();
                        self.dirs[d].phase = Phase::Body(Body::Chunked(if size == 0 {
                            Chunked::Trailer { line: 0, total: 0 }
                        } else {
                            Chunked::Data(size)
                        }));
                        p + (n - old)
                    }
                    Ok(httparse::Status::Partial) if line.len() < MAX_CHUNK_LINE => {
                        if old == 0 {
                            self.dirs[d].buf_mut().extend_from_slice(&data[p..]);
                        }
                        p + take
                    }
                    _ => {
                        self.lose(dir, out);
                        data.len()
                    }
                }
            }
            Chunked::Data(rem) => {
                let take = rem.min((data.len() - p) as u64);
                self.add_body(d, take);
                self.dirs[d].phase = Phase::Body(Body::Chunked(if take == rem {
                    Chunked::DataCr
                } else {
                    Chunked::Data(rem - take)
                }));
                p + take as usize
            }
            Chunked::DataCr | Chunked::DataLf => match (ck, data[p]) {
                (Chunked::DataCr, b'\r') => {
                    self.dirs[d].phase = Phase::Body(Body::Chunked(Chunked::DataLf));
                    p + 1
                }
                (_, b'\n') => {
                    self.dirs[d].phase = Phase::Body(Body::Chunked(Chunked::Size));
                    p + 1
                }
                _ => {
                    self.lose(dir, out);
                    data.len()
                }
            },
            Chunked::Trailer {
                mut line,
                mut total,
            } => {
                for (i, &c) in data[p..].iter().enumerate() {
                    total += 1;
                    if total > self.limits.head() {
                        self.lose(dir, out);
                        return data.len();
                    }
                    match c {
                        b'\n' if line == 0 => {
                            self.finish_message(dir, info.ts_exit, false, out);
                            return p + i + 1;
                        }
                        b'\n' => line = 0,
                        b'\r' => {}
                        _ => line += 1,
                    }
                }
                self.dirs[d].phase = Phase::Body(Body::Chunked(Chunked::Trailer { line, total }));
                data.len()
            }
        }
    }
}
