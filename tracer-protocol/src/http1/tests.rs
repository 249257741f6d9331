//! Unit tests of the HTTP/1 parser, fed through its public interface.

use super::*;
use crate::headers::MAX_TARGET;

const IN: Direction = Direction::Ingress;
const EG: Direction = Direction::Egress;

/// A connection under test with a clock: each chunk takes `[t, t + 5]`, then t += 10.
struct T {
    c: Http1Conn,
    out: Vec<HttpExchange>,
    t: u64,
    /// `Chunk::other_unseen` of the next chunks.
    unseen: u64,
    /// Bytes fed per direction (the next chunk's position).
    pos: [u64; 2],
    /// `Chunk::ctx` of the next chunk.
    ctx: Option<SpanCtx>,
}

impl T {
    fn new() -> Self {
        Self::with(Limits::default())
    }
    fn with(limits: Limits) -> Self {
        Self {
            c: Http1Conn::new(limits),
            out: Vec::new(),
            t: 100,
            unseen: 0,
            pos: [0; 2],
            ctx: None,
        }
    }
    /// Feeds `data` as one chunk; returns its (ts_enter, ts_exit).
    fn feed(&mut self, dir: Direction, data: &[u8]) -> (u64, u64) {
        self.feed_total(dir, data, data.len() as u32)
    }
    fn feed_total(&mut self, dir: Direction, data: &[u8], total: u32) -> (u64, u64) {
        let (a, b) = (self.t, self.t + 5);
        self.t += 10;
        let tid = if dir == IN { 11 } else { 22 };
        let chunk = Chunk {
            data,
            total_len: total,
            ts_enter: a,
            ts_exit: b,
            tid,
            other_unseen: self.unseen,
            position: self.pos[dir.index()],
            ctx: self.ctx.take(),
        };
        self.pos[dir.index()] += u64::from(total);
        self.c.on_chunk(dir, &chunk, &mut self.out);
        (a, b)
    }
    fn bytewise(&mut self, dir: Direction, data: &[u8]) -> (u64, u64) {
        let mut last = (0, 0);
        for b in data {
            last = self.feed(dir, std::slice::from_ref(b));
        }
        last
    }
    fn close(&mut self) {
        self.t += 10;
        self.c.on_close(self.t, &mut self.out);
    }
    fn take(&mut self) -> Vec<HttpExchange> {
        std::mem::take(&mut self.out)
    }
}

fn status(x: &HttpExchange) -> u16 {
    x.response.as_ref().map_or(0, |r| r.status)
}

const GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: example\r\nUser-Agent: t/1\r\n\r\n";
const OK5: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

#[test]
fn server_exchange_fields_and_timing() {
    let mut t = T::new();
    let (_, req_exit) = t.feed(IN, GET);
    assert!(t.take().is_empty());
    t.feed(
        EG,
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhe",
    );
    let (_, end) = t.feed(EG, b"llo");
    let x = t.take();
    assert_eq!(x.len(), 1);
    let x = &x[0];
    assert_eq!(x.request_direction, IN);
    assert_eq!(x.request.method, "GET");
    assert_eq!(x.request.target, "/a");
    assert_eq!(x.request.version, "1.1");
    assert_eq!(
        x.request.headers,
        vec![
            ("host".into(), "example".into()),
            ("user-agent".into(), "t/1".into())
        ]
    );
    let r = x.response.as_ref().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.headers.len(), 2);
    assert_eq!((x.start_ns, x.end_ns), (req_exit, end));
    assert_eq!((x.request_body_size, x.response_body_size), (0, 5));
    assert_eq!(x.tid, 11);
    assert!(!x.incomplete);
    assert!(t.c.is_idle());
    assert_eq!(t.c.stats(), ParseStats::default());
}

#[test]
fn client_exchange_starts_at_write_entry() {
    let mut t = T::new();
    let (req_enter, _) = t.feed(EG, GET);
    let (_, end) = t.feed(IN, OK5);
    let x = t.take();
    assert_eq!(x.len(), 1);
    assert_eq!(x[0].request_direction, EG);
    assert_eq!((x[0].start_ns, x[0].end_ns, x[0].tid), (req_enter, end, 22));
}

#[test]
fn request_starts_are_reported_with_the_exchange_seq() {
    let mut t = T::new();
    // Two pipelined requests in one chunk: both reported, in order, with their heads.
    let req = b"GET /a HTTP/1.1\r\nHost: x\r\ntraceparent: tp\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
    let (_, exit) = t.feed(IN, req);
    let starts: Vec<_> =
        t.c.started()
            .map(|s| {
                (
                    s.seq,
                    s.tid,
                    s.start_ns,
                    s.head.map(|h| h.target.to_string()),
                )
            })
            .collect();
    assert_eq!(
        starts,
        vec![
            (0, 11, exit, Some("/a".to_owned())),
            (1, 11, exit, Some("/b".to_owned()))
        ]
    );
    let head = t.c.started().next().and_then(|s| s.head).cloned().unwrap();
    assert!(head.headers.contains(&("traceparent".into(), "tp".into())));
    // The next chunk clears them; responses report nothing.
    t.feed(EG, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(t.c.started().count(), 0);
    t.feed(EG, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let x = t.take();
    assert_eq!(x.iter().map(|x| x.seq).collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(x[0].start_ns, exit);
    // Requests the process sends (client side) are reported too, with their direction.
    let mut t = T::new();
    t.feed(EG, b"GET /c HTTP/1.1\r\n\r\n");
    let dirs: Vec<_> = t.c.started().map(|s| s.direction).collect();
    assert_eq!(dirs, vec![EG]);
    // A request over the pending limit is reported without a head (it never completes).
    let mut t = T::with(Limits {
        max_pending_requests: 1,
        ..Limits::default()
    });
    t.feed(IN, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n");
    let heads: Vec<_> = t.c.started().map(|s| s.head.is_some()).collect();
    assert_eq!(heads, vec![true, false]);
    t.c.on_gap(IN, 5);
    assert_eq!(t.c.started().count(), 0);
}

#[test]
fn keep_alive_sequence() {
    let mut t = T::new();
    for i in 0..5 {
        t.feed(
            IN,
            format!("GET /{i} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes(),
        );
        t.feed(EG, OK5);
    }
    let x = t.take();
    assert_eq!(x.len(), 5);
    for (i, x) in x.iter().enumerate() {
        assert_eq!(x.request.target, format!("/{i}"));
        assert_eq!(x.response_body_size, 5);
    }
    assert!(t.c.is_idle());
}

#[test]
fn pipelined_requests_in_one_chunk() {
    let mut t = T::new();
    t.feed(
        IN,
        b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\n\r\n",
    );
    assert!(!t.c.is_idle());
    t.feed(
        EG,
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nAHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nBBHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    );
    let x = t.take();
    let got: Vec<_> = x
        .iter()
        .map(|x| {
            (
                x.request.target.as_str(),
                status(x),
                x.request_body_size,
                x.response_body_size,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![("/1", 200, 0, 1), ("/2", 201, 3, 2), ("/3", 404, 0, 0)]
    );
    assert!(t.c.is_idle());
}

#[test]
fn response_split_byte_by_byte() {
    let mut t = T::new();
    let (_, req_exit) = t.bytewise(EG, GET);
    let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;a=b\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n";
    let (_, end) = t.bytewise(IN, resp);
    let x = t.take();
    assert_eq!(x.len(), 1);
    assert_eq!(
        (status(&x[0]), x[0].response_body_size, x[0].end_ns),
        (200, 5, end)
    );
    assert!(
        x[0].start_ns < req_exit,
        "client start is the first write's entry"
    );
    assert!(!x[0].incomplete);
    assert!(t.c.is_idle());
}

#[test]
fn chunked_response_with_extensions_and_trailers() {
    let mut t = T::new();
    t.feed(IN, GET);
    t.feed(
        EG,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
          A;name=value;other=\"q;x\"\r\n0123456789\r\n10 ; ext\r\n0123456789abcdef\r\n",
    );
    assert!(t.take().is_empty());
    t.feed(EG, b"0;last\r\nExpires: never\r\nX-Sum: 1\r\n\r\n");
    t.feed(IN, GET);
    t.feed(EG, OK5);
    let x = t.take();
    assert_eq!(x.len(), 2);
    assert_eq!((x[0].response_body_size, x[0].incomplete), (26, false));
    assert_eq!((x[1].response_body_size, x[1].incomplete), (5, false));
}

#[test]
fn expect_100_continue() {
    let mut t = T::new();
    t.feed(
        IN,
        b"PUT /up HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n",
    );
    t.feed(EG, b"HTTP/1.1 100 Continue\r\n\r\n");
    assert!(t.take().is_empty());
    t.feed(IN, b"01234");
    t.feed(IN, b"56789");
    t.feed(
        EG,
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    );
    let x = t.take();
    assert_eq!(x.len(), 1);
    assert_eq!((status(&x[0]), x[0].request_body_size), (204, 10));
    assert_eq!(t.c.stats().unmatched_responses, 0);
}

#[test]
fn head_and_no_body_statuses() {
    let mut t = T::new();
    t.feed(IN, b"HEAD /h HTTP/1.1\r\n\r\nGET /n HTTP/1.1\r\n\r\nGET /m HTTP/1.1\r\n\r\nGET /x HTTP/1.1\r\n\r\n");
    t.feed(EG, b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n");
    t.feed(EG, b"HTTP/1.1 204 No Content\r\nContent-Length: 99\r\n\r\n");
    t.feed(
        EG,
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",
    );
    t.feed(EG, OK5);
    let x = t.take();
    let got: Vec<_> = x
        .iter()
        .map(|x| (status(x), x.response_body_size))
        .collect();
    assert_eq!(got, vec![(200, 0), (204, 0), (304, 0), (200, 5)]);
    assert!(x.iter().all(|x| !x.incomplete));
}

#[test]
fn http10_close_delimited_response() {
    let mut t = T::new();
    t.feed(IN, b"GET /old HTTP/1.0\r\n\r\n");
    t.feed(
        EG,
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nabc",
    );
    t.feed(EG, b"defg");
    let (_, last) = t.feed(EG, b"hij");
    assert!(t.take().is_empty());
    assert!(!t.c.is_idle());
    t.close();
    let x = t.take();
    assert_eq!(x.len(), 1);
    assert_eq!(x[0].request.version, "1.0");
    assert_eq!(x[0].response.as_ref().unwrap().version, "1.0");
    assert_eq!(
        (x[0].response_body_size, x[0].end_ns, x[0].incomplete),
        (10, last, false)
    );
    assert_eq!(t.c.stats(), ParseStats::default());
}

#[test]
fn connection_close_with_length() {
    let mut t = T::new();
    t.feed(IN, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    t.feed(
        EG,
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(t.take().len(), 1);
    t.close();
    assert!(t.take().is_empty());
    assert_eq!(t.c.stats(), ParseStats::default());
}

#[test]
fn invalid_chunk_size_is_incomplete_not_wrong() {
    let mut t = T::new();
    t.feed(IN, GET);
    t.feed(
        EG,
        b"HTTP/1.1 502 Bad Gateway\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
    );
    t.feed(EG, b"more junk");
    assert!(t.take().is_empty());
    let (req2, _) = t.feed(IN, b"GET /next HTTP/1.1\r\n\r\n");
    let x = t.take();
    assert_eq!(x.len(), 1, "ended by the next request");
    assert_eq!((status(&x[0]), x[0].incomplete), (502, true));
    assert!(x[0].end_ns < req2);
    t.feed(EG, OK5);
    let x = t.take();
    assert_eq!(
        (x.len(), x[0].request.target.as_str(), x[0].incomplete),
        (1, "/next", false)
    );
    // Overlong and empty chunk sizes.
    for body in [&b"fffffffffffffffff\r\n"[..], b"\r\n", b"-1\r\n", b"5\n"] {
        let mut t = T::new();
        t.feed(IN, GET);
        t.feed(EG, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        t.feed(EG, body);
        t.close();
        let x = t.take();
        assert_eq!((x.len(), x[0].incomplete), (1, true), "{body:?}");
    }
}

#[test]
fn megabyte_header_line_is_dropped_and_memory_freed() {
    let mut t = T::new();
    t.feed(IN, b"GET /big HTTP/1.1\r\nX-Big: ");
    let line = vec![b'a'; 4096];
    let mut peak = 0;
    for _ in 0..256 {
        t.feed(IN, &line);
        peak = peak.max(t.c.memory_bytes());
    }
    t.feed(IN, b"\r\n\r\n");
    assert!(peak <= 20 * 1024, "peak {peak}");
    assert!(t.c.memory_bytes() < 1024, "{}", t.c.memory_bytes());
    assert_eq!(t.c.stats().dropped_messages, 1);
    // Its response has no request; the next exchange pairs normally.
    t.feed(EG, b"HTTP/1.1 431 Too Large\r\nContent-Length: 0\r\n\r\n");
    t.feed(IN, GET);
    t.feed(EG, OK5);
    let x = t.take();
    assert_eq!(x.len(), 1);
    assert_eq!((x[0].request.target.as_str(), status(&x[0])), ("/a", 200));
    assert_eq!(t.c.stats().unmatched_responses, 1);
    // One big chunk holding an overlong head.
    let mut t = T::new();
    let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
    big.resize(1 << 20, b'b');
    big.extend_from_slice(b"\r\n\r\n");
    t.feed(IN, &big);
    assert_eq!(t.c.stats().dropped_messages, 1);
    assert_eq!(t.c.memory_bytes(), 0);
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

#[test]
fn random_garbage_produces_nothing() {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..200 {
        let mut t = T::new();
        for _ in 0..50 {
            let n = (xorshift(&mut s) % 300) as usize;
            let data: Vec<u8> = (0..n).map(|_| xorshift(&mut s) as u8).collect();
            let dir = if xorshift(&mut s) & 1 == 0 { IN } else { EG };
            let total = n as u32
                + if round % 3 == 0 {
                    (xorshift(&mut s) % 100) as u32
                } else {
                    0
                };
            t.feed_total(dir, &data, total);
            if xorshift(&mut s).is_multiple_of(10) {
                t.c.on_gap(dir, xorshift(&mut s) % 5000);
            }
        }
        t.close();
        assert!(t.take().is_empty());
        assert!(t.c.memory_bytes() <= 20 * 1024);
    }
}

#[test]
fn uncaptured_tail_in_content_length_body() {
    let mut t = T::new();
    t.feed(IN, GET);
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
    let mut data = head.to_vec();
    data.extend_from_slice(&[b'x'; 1000]);
    t.feed_total(EG, &data, (head.len() + 60000) as u32);
    let (_, end) = t.feed_total(EG, &[b'y'; 4096], 40000);
    let x = t.take();
    assert_eq!(x.len(), 1);
    assert_eq!(
        (x[0].response_body_size, x[0].end_ns, x[0].incomplete),
        (100000, end, false)
    );
    // A POST upload captured partially, then the next request in a new call.
    t.feed_total(
        IN,
        b"POST /up HTTP/1.1\r\nContent-Length: 5000\r\n\r\nabc",
        5045,
    );
    t.feed(EG, OK5);
    t.feed(IN, GET);
    t.feed(EG, OK5);
    let x = t.take();
    assert_eq!(x.len(), 2);
    assert_eq!((x[0].request_body_size, x[0].incomplete), (5000, false));
    assert!(t.c.is_idle());
}

#[test]
fn uncaptured_tail_in_chunked_body_ends_at_next_request() {
    let mut t = T::new();
    t.feed(IN, GET);
    // Chunk data of 0x2000 bytes with only 100 captured: the tail covers the rest of the
    // chunk and the framing after it.
    let mut data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2000\r\n".to_vec();
    data.extend_from_slice(&[b'z'; 100]);
    let (_, e1) = t.feed_total(EG, &data, 20000);
    let (_, e2) = t.feed_total(EG, b"ff\r\n", 3000);
    assert!(t.take().is_empty());
    t.feed(IN, b"GET /second HTTP/1.1\r\n\r\n");
    let x = t.take();
    assert_eq!(x.len(), 1);
    assert_eq!(
        (status(&x[0]), x[0].incomplete, x[0].end_ns),
        (200, true, e2)
    );
    assert!(x[0].response_body_size >= 0x2000 && e2 > e1);
    t.feed(EG, OK5);
    let x = t.take();
    assert_eq!(
        (x.len(), x[0].request.target.as_str(), x[0].incomplete),
        (1, "/second", false)
    );
}

#[test]
fn chunk_per_call_with_uncaptured_data_and_crlf_stays_in_sync() {
    // As python's and many servers' chunked writers do: one call per chunk holding the size
    // line, the data and the closing CR LF, of which only a prefix is captured.
    let mut t = T::new();
    t.feed(IN, GET);
    t.feed(EG, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    for _ in 0..4 {
        let mut call = b"2000\r\n".to_vec();
        call.extend_from_slice(&[b'y'; 100]);
        // 6 bytes of size line + 0x2000 of data + 2 of CR LF; 106 captured.
        t.feed_total(EG, &call, 6 + 0x2000 + 2);
    }
    assert!(t.take().is_empty());
    let (_, end) = t.feed_total(EG, b"0\r\n\r\n", 5);
    let x = t.take();
    assert_eq!(x.len(), 1);
    assert_eq!(
        (status(&x[0]), x[0].incomplete, x[0].end_ns),
        (200, false, end)
    );
    assert_eq!(x[0].response_body_size, 4 * 0x2000);

    // A tail reaching past the CR LF into the next size line cannot be followed.
    let mut t = T::new();
    t.feed(IN, GET);
    t.feed(EG, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    t.feed_total(EG, b"10\r\n", 5 + 16 + 2 + 3);
    t.feed(IN, b"GET /next HTTP/1.1\r\n\r\n");
    let x = t.take();
    assert_eq!((x.len(), x[0].incomplete), (1, true));
}

#[test]
fn response_after_losses_on_both_sides_is_not_paired_with_an_older_request() {
    // Client: request A seen; A's response lost; request B lost (its loss is not visible
    // yet); B's response seen. It must not become A's response.
    let mut t = T::new();
    t.feed(EG, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    t.c.on_gap(IN, 40);
    t.unseen = 27; // the kernel had moved request B's bytes
    t.feed(IN, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
    assert!(t.take().is_empty(), "no wrong pairing");
    assert!(t.c.stats().unmatched_responses >= 1);
    // Without unseen requests the same response does answer A.
    let mut t = T::new();
    t.feed(EG, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    t.c.on_gap(IN, 40);
    t.feed(IN, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let x = t.take();
    assert_eq!(x.len(), 1);
    assert_eq!((x[0].request.target.as_str(), status(&x[0])), ("/a", 200));
}

#[test]
fn gap_inside_a_head() {
    let mut t = T::new();
    t.feed(IN, b"GET /lost HTTP/1.1\r\nHo");
    t.c.on_gap(IN, 50);
    t.feed(IN, b"st: x\r\n\r\n");
    assert_eq!(t.c.stats().dropped_messages, 1);
    t.feed(EG, OK5);
    assert!(t.take().is_empty());
    assert_eq!(t.c.stats().unmatched_responses, 1);
    t.feed(IN, b"GET /ok HTTP/1.1\r\n\r\n");
    t.feed(EG, OK5);
    let x = t.take();
    assert_eq!((x.len(), x[0].request.target.as_str()), (1, "/ok"));
    // A response head hit by a gap: its request stays unanswered until the next request.
    let mut t = T::new();
    t.feed(IN, b"GET /1 HTTP/1.1\r\n\r\n");
    t.feed(EG, b"HTTP/1.1 500 Oops\r\nCont");
    t.c.on_gap(EG, 30);
    t.feed(EG, b"ent-Length: 5\r\n\r\nhello");
    t.feed(IN, b"GET /2 HTTP/1.1\r\n\r\n");
    t.feed(EG, OK5);
    let x = t.take();
    assert_eq!(
        (x.len(), x[0].request.target.as_str(), status(&x[0])),
        (1, "/2", 200)
    );
    assert_eq!(t.c.stats().dropped_messages, 2);
}

#[test]
fn gap_inside_known_length_body() {
    let mut t = T::new();
    t.feed(IN, GET);
    t.feed(EG, b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n01234");
    t.c.on_gap(EG, 10);
    let (_, end) = t.feed(EG, b"01234");
    let x = t.take();
    assert_eq!(x.len(), 1);
    assert_eq!(
        (x[0].response_body_size, x[0].incomplete, x[0].end_ns),
        (20, true, end)
    );
    // A gap that ends the body exactly: handed out with the next call.
    t.feed(IN, GET);
    let (_, e) = t.feed(EG, b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n01234");
    t.c.on_gap(EG, 15);
    assert!(!t.c.is_idle());
    t.feed(IN, GET);
    let x = t.take();
    assert_eq!((x.len(), x[0].incomplete, x[0].end_ns), (1, true, e));
    // A gap running past the body: the exchange is kept, the direction resyncs.
    t.feed(EG, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab");
    t.c.on_gap(EG, 100);
    t.feed(IN, b"GET /after HTTP/1.1\r\n\r\n");
    t.feed(EG, OK5);
    let x = t.take();
    let got: Vec<_> = x
        .iter()
        .map(|x| (x.request.target.as_str(), x.incomplete))
        .collect();
    assert_eq!(got, vec![("/a", true), ("/after", false)]);
}

#[test]
fn uploads_with_bodies() {
    let mut t = T::new();
    t.feed(
        EG,
        b"POST /p HTTP/1.1\r\nContent-Length: 11\r\nContent-Type: text/plain\r\n\r\nhello",
    );
    t.feed(EG, b" world");
    t.feed(
        EG,
        b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n5\r\npedia\r\n",
    );
    t.feed(EG, b"0\r\n\r\n");
    t.feed(IN, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let x = t.take();
    let got: Vec<_> = x
        .iter()
        .map(|x| (x.request.target.as_str(), x.request_body_size, status(x)))
        .collect();
    assert_eq!(got, vec![("/p", 11, 201), ("/c", 9, 200)]);
    assert_eq!(
        x[0].request.headers,
        vec![
            ("content-length".into(), "11".into()),
            ("content-type".into(), "text/plain".into())
        ]
    );
}

#[test]
fn connect_tunnel_and_upgrade_stop_parsing() {
    let mut t = T::new();
    t.feed(
        EG,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    );
    t.feed(IN, b"HTTP/1.1 200 Connection Established\r\n\r\n");
    t.feed(EG, b"\x16\x03\x01\x02\x00GET / HTTP/1.1\r\n\r\n");
    t.feed(IN, OK5);
    let x = t.take();
    assert_eq!(
        (x.len(), x[0].request.method.as_str(), status(&x[0])),
        (1, "CONNECT", 200)
    );
    assert_eq!(t.c.upgrades(), 1);
    assert!(t.c.is_idle());
    let mut t = T::new();
    t.feed(
        IN,
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    );
    t.feed(
        EG,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
    );
    t.feed(IN, b"GET / HTTP/1.1\r\n\r\n");
    t.feed(EG, OK5);
    let x = t.take();
    assert_eq!((x.len(), status(&x[0])), (1, 101));
    assert_eq!(t.c.upgrades(), 1);
    t.close();
    assert_eq!(t.c.stats(), ParseStats::default());
    // A refused CONNECT is an ordinary exchange.
    let mut t = T::new();
    t.feed(EG, b"CONNECT x:443 HTTP/1.1\r\n\r\n");
    t.feed(IN, b"HTTP/1.1 407 Proxy Auth\r\nContent-Length: 0\r\n\r\n");
    t.feed(EG, GET);
    t.feed(IN, OK5);
    assert_eq!(t.take().len(), 2);
    assert_eq!(t.c.upgrades(), 0);
}

#[test]
fn unmatched_response_and_role_inference() {
    let mut t = T::new();
    t.feed(IN, OK5);
    assert!(t.take().is_empty());
    assert_eq!(t.c.stats().unmatched_responses, 1);
    // Ingress carries responses, so a request there is garbage.
    t.feed(IN, GET);
    assert_eq!(t.c.stats().invalid_messages, 1);
    t.feed(EG, GET);
    t.feed(IN, OK5);
    let x = t.take();
    assert_eq!((x.len(), x[0].request_direction), (1, EG));
}

#[test]
fn response_started_before_request_is_not_paired() {
    let mut t = T::new();
    t.t = 1000;
    t.feed(IN, GET);
    // Delivered late: a response whose write started before the request was read.
    let chunk = Chunk {
        data: OK5,
        total_len: OK5.len() as u32,
        ts_enter: 500,
        ts_exit: 600,
        tid: 1,
        other_unseen: 0,
        position: 0,
        ctx: None,
    };
    t.c.on_chunk(EG, &chunk, &mut t.out);
    assert!(t.take().is_empty());
    assert_eq!(t.c.stats().unmatched_responses, 1);
    t.feed(EG, OK5);
    assert_eq!(t.take().len(), 1);
}

#[test]
fn header_bounds() {
    let mut t = T::with(Limits {
        max_header_value: 8,
        ..Limits::default()
    });
    let mut req = b"GET /h HTTP/1.1\r\nHost: a-very-long-host-name\r\nCookie: secret\r\nTRACEPARENT: 00-abc\r\nX-B3-TraceId: 123\r\nx-b3-: no\r\n".to_vec();
    for i in 0..30 {
        req.extend_from_slice(format!("b3: {i}\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    t.feed(IN, &req);
    t.feed(EG, OK5);
    let x = t.take();
    let h = &x[0].request.headers;
    assert_eq!(h.len(), 16);
    assert_eq!(h[0], ("host".into(), "a-very-l".into()));
    assert_eq!(h[1], ("traceparent".into(), "00-abc".into()));
    assert_eq!(h[2], ("x-b3-traceid".into(), "123".into()));
    assert_eq!(h[3], ("b3".into(), "0".into()));
    // Many headers (beyond the stack array) still parse.
    let mut t = T::new();
    let mut req = b"GET /many HTTP/1.1\r\n".to_vec();
    for i in 0..200 {
        req.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    req.extend_from_slice(b"Host: last\r\n\r\n");
    t.feed(IN, &req);
    t.feed(EG, OK5);
    let x = t.take();
    assert_eq!(x[0].request.headers, vec![("host".into(), "last".into())]);
    // Non-UTF-8 bytes in a kept value and a long target.
    let mut t = T::new();
    let mut req = b"GET /".to_vec();
    req.extend_from_slice(&[b'p'; 5000]);
    req.extend_from_slice(b" HTTP/1.1\r\nUser-Agent: \xff\xfe\r\n\r\n");
    t.feed(IN, &req);
    t.feed(EG, OK5);
    let x = t.take();
    assert_eq!(x[0].request.target.len(), MAX_TARGET);
    assert_eq!(x[0].request.headers[0].1, "\u{fffd}\u{fffd}");
}

#[test]
fn pending_cap_keeps_pairing_right() {
    let mut t = T::with(Limits {
        max_pending_requests: 2,
        ..Limits::default()
    });
    for i in 0..5 {
        t.feed(IN, format!("GET /{i} HTTP/1.1\r\n\r\n").as_bytes());
    }
    assert_eq!(t.c.stats().dropped_messages, 3);
    for i in 0..5 {
        t.feed(
            EG,
            format!("HTTP/1.1 20{i} OK\r\nContent-Length: 0\r\n\r\n").as_bytes(),
        );
    }
    t.feed(IN, b"GET /5 HTTP/1.1\r\n\r\n");
    t.feed(EG, b"HTTP/1.1 205 OK\r\nContent-Length: 0\r\n\r\n");
    let x = t.take();
    let got: Vec<_> = x
        .iter()
        .map(|x| (x.request.target.clone(), status(x)))
        .collect();
    assert_eq!(
        got,
        vec![("/0".into(), 200), ("/1".into(), 201), ("/5".into(), 205)]
    );
    assert!(t.c.is_idle());
}

#[test]
fn close_with_unanswered_requests() {
    // Client side: emitted with no response.
    let mut t = T::new();
    let (start, _) = t.feed(EG, GET);
    t.close();
    let x = t.take();
    assert_eq!(x.len(), 1);
    assert_eq!((x[0].response.is_none(), x[0].start_ns), (true, start));
    assert!(x[0].end_ns > start);
    assert_eq!(t.c.stats().unanswered_requests, 1);
    // Server side: counted only.
    let mut t = T::new();
    t.feed(IN, GET);
    t.close();
    assert!(t.take().is_empty());
    assert_eq!(t.c.stats().unanswered_requests, 1);
    // Response cut by the close: incomplete.
    let mut t = T::new();
    t.feed(EG, GET);
    t.feed(IN, b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nabc");
    t.close();
    let x = t.take();
    assert_eq!(
        (x.len(), x[0].incomplete, x[0].response_body_size),
        (1, true, 3)
    );
    // After a response-side loss, "no response" is uncertain: nothing emitted.
    let mut t = T::new();
    t.feed(EG, GET);
    t.c.on_gap(IN, 100);
    t.close();
    assert!(t.take().is_empty());
    assert_eq!(t.c.stats().unanswered_requests, 1);
}

#[test]
fn pipelined_connection_is_abandoned_on_loss() {
    let mut t = T::new();
    t.feed(IN, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n");
    t.feed(EG, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    // The response to /2 is lost; whatever follows cannot be paired safely.
    t.c.on_gap(EG, 38);
    t.feed(IN, b"GET /3 HTTP/1.1\r\n\r\n");
    t.feed(EG, b"HTTP/1.1 203 OK\r\nContent-Length: 0\r\n\r\n");
    let x = t.take();
    assert_eq!(x.len(), 1);
    assert_eq!((x[0].request.target.as_str(), status(&x[0])), ("/1", 200));
    assert!(t.c.is_idle());
}

#[test]
fn lost_response_head_non_pipelined_recovers() {
    let mut t = T::new();
    t.feed(EG, b"GET /1 HTTP/1.1\r\n\r\n");
    t.c.on_gap(IN, 40);
    t.feed(IN, b"tail of the first response");
    t.feed(EG, b"GET /2 HTTP/1.1\r\n\r\n");
    t.feed(IN, b"HTTP/1.1 202 OK\r\nContent-Length: 0\r\n\r\n");
    let x = t.take();
    assert_eq!(x.len(), 1);
    assert_eq!((x[0].request.target.as_str(), status(&x[0])), ("/2", 202));
    assert_eq!(t.c.stats().dropped_messages, 1);
}

#[test]
fn losses_on_both_sides_do_not_mispair() {
    // /1 pending; requests lost after it, and responses lost: the next response is ambiguous.
    let mut t = T::new();
    t.feed(EG, b"GET /1 HTTP/1.1\r\n\r\n");
    t.c.on_gap(EG, 20);
    t.c.on_gap(IN, 80);
    t.feed(IN, b"HTTP/1.1 209 X\r\nContent-Length: 0\r\n\r\n");
    t.close();
    assert!(t.take().is_empty());
}

#[test]
fn resync_only_at_chunk_boundary() {
    let mut t = T::new();
    t.feed(IN, b"\x00\x01garbage GET /no HTTP/1.1\r\n\r\n");
    t.feed(IN, b"xxGET /no2 HTTP/1.1\r\n\r\n");
    t.feed(IN, b"GET /yes HTTP/1.1\r\n\r\n");
    t.feed(EG, OK5);
    let x = t.take();
    assert_eq!((x.len(), x[0].request.target.as_str()), (1, "/yes"));
    assert_eq!(t.c.stats().invalid_messages, 1);
}

#[test]
fn several_messages_and_leading_crlf() {
    let mut t = T::new();
    t.feed(IN, b"GET /1 HTTP/1.1\r\n\r\n\r\nGET /2 HTTP/1.1\r\n\r\n");
    t.feed(
        EG,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(t.take().len(), 2);
}

mod recorded;

#[test]
fn an_idle_connection_shrunk_holds_no_heap_and_parses_the_next_request() {
    let mut t = T::new();
    // A head split across chunks leaves a head buffer; pipelining grows the queue.
    t.feed(IN, &GET[..10]);
    t.feed(IN, &[&GET[10..], GET, GET].concat());
    t.feed(EG, &[OK5, OK5, OK5].concat());
    assert_eq!(t.take().len(), 3);
    assert!(t.c.is_idle());
    assert!(t.c.memory_bytes() > 0, "buffers kept for reuse");
    t.c.shrink_idle();
    assert_eq!(t.c.memory_bytes(), 0);
    // What an idle keep-alive connection still costs is the parser's fixed part (issue 19:
    // 100,000 tracked connections within the agent's budget): split heads' buffers live on
    // the heap, so the parser is 272 bytes (was 480).
    let size = size_of::<Http1Conn>();
    assert!(size <= 272, "{size} bytes");
    // The next exchanges parse as before: whole, split across chunks, byte by byte.
    for split in [GET.len(), 7, 1] {
        for part in GET.chunks(split) {
            t.feed(IN, part);
        }
        t.feed(EG, OK5);
        let x = t.take();
        assert_eq!(x.len(), 1, "split {split}");
        assert_eq!((x[0].request.target.as_str(), status(&x[0])), ("/a", 200));
        assert_eq!(x[0].response_body_size, 5);
        t.c.shrink_idle();
        assert_eq!(t.c.memory_bytes(), 0);
    }
    assert_eq!(t.c.stats(), ParseStats::default());
}

#[test]
fn shrinking_a_busy_connection_loses_nothing() {
    let mut t = T::new();
    // A request waiting for its response, and a response head cut between chunks.
    t.feed(IN, GET);
    t.c.shrink_idle();
    t.feed(EG, &OK5[..20]);
    t.c.shrink_idle();
    t.feed(EG, &OK5[20..]);
    let x = t.take();
    assert_eq!(x.len(), 1);
    assert_eq!((status(&x[0]), x[0].response_body_size), (200, 5));
    // A body in progress.
    t.feed(IN, GET);
    t.feed(EG, &OK5[..OK5.len() - 2]);
    t.c.shrink_idle();
    t.feed(EG, &OK5[OK5.len() - 2..]);
    let x = t.take();
    assert_eq!((x.len(), x[0].incomplete), (1, false));
}
