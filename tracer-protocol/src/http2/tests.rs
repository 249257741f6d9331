//! Connection-level tests: hand-built frame sequences and byte streams captured from real
//! peers on loopback (testdata/): curl 7.88 against nginx 1.22 with h2c (`nginx*.c2s/.s2c`) and
//! grpcio 1.85 client and server (`grpc.c2s/.s2c`, from `grpc_pair.py`): one file per
//! direction of one connection, recorded by `capture_proxy.py`; and `grpc-more.log` (from
//! `grpc_more.py`), every recv of both directions in arrival order, recorded by
//! `capture_proxy_log.py`.

use super::frame::*;
use super::*;

const C2S: Direction = Direction::Egress;
const S2C: Direction = Direction::Ingress;

fn chunk(data: &[u8], position: u64, ts: u64) -> Chunk<'_> {
    Chunk {
        data,
        total_len: data.len() as u32,
        ts_enter: ts,
        ts_exit: ts + 5,
        tid: 7,
        other_unseen: 0,
        position,
        ctx: None,
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let l = (payload.len() as u32).to_be_bytes();
    let mut f = vec![l[1], l[2], l[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK literal without indexing, new name, raw strings.
fn lit(name: &str, value: &str) -> Vec<u8> {
    assert!(name.len() < 127 && value.len() < 127);
    let mut b = vec![0x00, name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    b.push(value.len() as u8);
    b.extend_from_slice(value.as_bytes());
    b
}

/// HPACK literal with incremental indexing, new name.
fn lit_indexed(name: &str, value: &str) -> Vec<u8> {
    let mut b = lit(name, value);
    b[0] = 0x40;
    b
}

fn request_block(path: &str) -> Vec<u8> {
    // :method POST (3), :scheme http (6), :path, :authority.
    let mut b = vec![0x83, 0x86];
    b.extend(lit(":path", path));
    b.extend(lit(":authority", "svc:50051"));
    b.extend(lit("content-type", "application/grpc"));
    b.extend(lit("cookie", "secret"));
    b
}

fn settings() -> Vec<u8> {
    frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100])
}

/// Feeds `bytes` of `dir` as chunks of the given sizes (the rest as one chunk).
struct Feeder {
    conn: Http2Conn,
    pos: [u64; 2],
    ts: u64,
    out: Vec<H2Exchange>,
}

impl Feeder {
    fn new() -> Self {
        Self::with(Limits::default())
    }
    fn with(limits: Limits) -> Self {
        Self {
            conn: Http2Conn::new(limits),
            pos: [0; 2],
            ts: 1000,
            out: Vec::new(),
        }
    }
    fn feed(&mut self, dir: Direction, bytes: &[u8]) {
        self.feed_split(dir, bytes, &[]);
    }
    fn feed_split(&mut self, dir: Direction, bytes: &[u8], sizes: &[usize]) {
        let mut p = 0;
        let mut sizes = sizes.iter();
        while p < bytes.len() {
            let n = sizes
                .next()
                .copied()
                .unwrap_or(bytes.len() - p)
                .min(bytes.len() - p);
            let c = chunk(&bytes[p..p + n], self.pos[dir.index()], self.ts);
            self.conn.on_chunk(dir, &c, &mut self.out);
            self.pos[dir.index()] += n as u64;
            self.ts += 10;
            p += n;
        }
    }
    fn bytewise(&mut self, dir: Direction, bytes: &[u8]) {
        self.feed_split(dir, bytes, &vec![1; bytes.len()]);
    }
    fn close(&mut self) {
        self.conn.on_close(self.ts, &mut self.out);
    }
}

fn client_preface() -> Vec<u8> {
    let mut b = PREFACE.to_vec();
    b.extend(settings());
    b
}

fn header(x: &H2Exchange, name: &str) -> Option<String> {
    x.http
        .request
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.to_string())
}

fn read(name: &str) -> Vec<u8> {
    let path = format!("{}/src/http2/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A small deterministic generator for split points.
fn splits(seed: u64, len: usize) -> Vec<usize> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut v = Vec::new();
    let mut total = 0;
    while total < len {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51afd7ed558ccd);
        let n = 1 + (x % 40) as usize;
        v.push(n);
        total += n;
    }
    v
}

/// Offsets and headers of the frames in a direction's bytes (after the preface, if any).
fn frames_of(bytes: &[u8]) -> Vec<(usize, FrameHeader)> {
    let mut p = if bytes.starts_with(PREFACE) {
        PREFACE.len()
    } else {
        0
    };
    let mut v = Vec::new();
    while p + HEADER_LEN <= bytes.len() {
        let h = FrameHeader::parse(bytes[p..p + HEADER_LEN].try_into().unwrap());
        v.push((p, h));
        p += HEADER_LEN + h.len as usize;
    }
    v
}

/// What matters of an exchange, for comparisons across ways of feeding the same bytes.
fn summary(x: &H2Exchange) -> String {
    format!(
        "{} {} {} {:?} body {}/{} grpc {:?} incomplete {} unknown {} headers {:?} trailers {:?} \
         messages {:?}",
        x.stream_id,
        x.http.request.method,
        x.http.request.target,
        x.http.response.as_ref().map(|r| r.status),
        x.http.request_body_size,
        x.http.response_body_size,
        x.grpc_status(),
        x.http.incomplete,
        x.unknown_fields,
        x.http.request.headers,
        x.trailers,
        x.http
            .messages
            .iter()
            .map(|m| (m.direction, m.id, m.size, m.compressed))
            .collect::<Vec<_>>(),
    )
}

fn run_capture(
    name: &str,
    client: Direction,
    c2s_splits: &[usize],
    s2c_splits: &[usize],
) -> Feeder {
    let mut f = Feeder::new();
    f.feed_split(client, &read(&format!("{name}.c2s")), c2s_splits);
    f.feed_split(client.opposite(), &read(&format!("{name}.s2c")), s2c_splits);
    f.close();
    f
}

#[test]
fn grpc_capture_unary_trailers_only_and_streaming() {
    let f = run_capture("grpc", C2S, &[], &[]);
    let x = &f.out;
    assert_eq!(x.len(), 4, "{x:#?}");
    let want = [
        (1, "/demo.Echo/Unary", 10, 15, "0"),
        (3, "/demo.Echo/Unary", 10, 15, "0"),
        (5, "/demo.Echo/Fail", 6, 0, "5"),
        (7, "/demo.Echo/Stream", 6, 30, "0"),
    ];
    for (x, (id, path, req, resp, grpc)) in x.iter().zip(want) {
        assert_eq!(x.stream_id, id);
        assert_eq!(x.http.request.method, "POST");
        assert_eq!(x.http.request.target, path);
        assert_eq!(x.http.request.version, "2");
        assert_eq!(x.http.request_direction, C2S);
        assert_eq!(x.scheme.as_deref(), Some("http"));
        assert_eq!(header(x, "host").as_deref(), Some("127.0.0.1:19002"));
        assert_eq!(
            header(x, "content-type").as_deref(),
            Some("application/grpc")
        );
        assert!(header(x, "grpc-timeout").is_some());
        assert_eq!(x.http.response.as_ref().map(|r| r.status), Some(200));
        assert_eq!(
            (x.http.request_body_size, x.http.response_body_size),
            (req, resp)
        );
        assert_eq!(x.grpc_status(), Some(grpc));
        assert!(!x.http.incomplete);
        assert_eq!(x.unknown_fields, 0);
        // Client side: start at the entry of the write.
        assert_eq!(x.http.start_ns, 1000);
    }
    // Trailers-only: grpc-status and grpc-message came with :status, no trailers block.
    assert!(x[2].trailers.is_empty());
    let fail = &x[2].http.response.as_ref().unwrap().headers;
    assert!(fail.contains(&("grpc-message".into(), "no such thing".into())));
    assert_eq!(x[3].trailers[0], ("grpc-status".into(), "0".into()));
    // The gRPC messages, from their length prefixes: "ping1" → "pong:ping1", "x" → none,
    // "s" → "item0".."item2"; ids count per direction; sent at the write's entry.
    let messages = |x: &H2Exchange| {
        x.http
            .messages
            .iter()
            .map(|m| (m.direction, m.id, m.size, m.compressed))
            .collect::<Vec<_>>()
    };
    let (sent, received) = (C2S, C2S.opposite());
    assert_eq!(
        messages(&x[0]),
        [(sent, 1, 5, false), (received, 1, 10, false)]
    );
    assert_eq!(messages(&x[2]), [(sent, 1, 1, false)]);
    assert_eq!(
        messages(&x[3]),
        [
            (sent, 1, 1, false),
            (received, 1, 5, false),
            (received, 2, 5, false),
            (received, 3, 5, false)
        ]
    );
    assert!(x[0].http.messages[0].at_ns >= x[0].http.start_ns);
    assert!(x.iter().all(|x| x.http.messages_dropped == 0));
    assert_eq!(f.conn.stats(), ParseStats::default());
    assert_eq!(f.conn.h2_stats(), H2Stats::default());
}

#[test]
fn captures_split_anywhere_decode_the_same() {
    for name in ["grpc", "nginx", "nginx-post"] {
        let whole: Vec<String> = run_capture(name, C2S, &[], &[])
            .out
            .iter()
            .map(summary)
            .collect();
        assert!(!whole.is_empty());
        let (c, s) = (read(&format!("{name}.c2s")), read(&format!("{name}.s2c")));
        for seed in 0..20 {
            let f = run_capture(
                name,
                C2S,
                &splits(seed, c.len()),
                &splits(seed + 100, s.len()),
            );
            let got: Vec<String> = f.out.iter().map(summary).collect();
            assert_eq!(got, whole, "{name} seed {seed}");
        }
        let f = run_capture(name, C2S, &vec![1; c.len()], &vec![1; s.len()]);
        assert_eq!(
            f.out.iter().map(summary).collect::<Vec<_>>(),
            whole,
            "{name} bytewise"
        );
    }
}

#[test]
fn started_reports_request_heads_as_parsed() {
    let mut f = Feeder::new();
    let mut c2s = client_preface();
    c2s.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &request_block("/a"),
    ));
    c2s.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        3,
        &request_block("/b"),
    ));
    f.feed(S2C, &c2s);
    let started: Vec<(u64, Direction, Option<String>)> = f
        .conn
        .started()
        .map(|s| (s.seq, s.direction, s.head.map(|h| h.target.to_string())))
        .collect();
    assert_eq!(
        started,
        [(0, S2C, Some("/a".into())), (1, S2C, Some("/b".into()))]
    );
    f.conn.on_gap(C2S, 0);
    assert_eq!(f.conn.started().count(), 0);
}

#[test]
fn server_side_capture() {
    // The traced process is the server: it reads the requests.
    let f = run_capture("grpc", S2C, &[], &[]);
    assert_eq!(f.out.len(), 4);
    for x in &f.out {
        assert_eq!(x.http.request_direction, S2C);
        // Server side: start at the exit of the read.
        assert_eq!(x.http.start_ns, 1005);
        assert!(x.http.end_ns >= x.http.start_ns);
    }
}

#[test]
fn nginx_captures() {
    let f = run_capture("nginx", C2S, &[], &[]);
    assert_eq!(f.out.len(), 1);
    let x = &f.out[0];
    assert_eq!(
        (
            x.http.request.method.as_str(),
            x.http.request.target.as_str()
        ),
        ("GET", "/index.html")
    );
    assert_eq!(
        header(x, "traceparent").as_deref(),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert_eq!(header(x, "user-agent").as_deref(), Some("curl/7.88.1"));
    assert_eq!(x.http.response.as_ref().unwrap().status, 200);
    assert_eq!(x.http.response_body_size, 17);
    assert_eq!(x.grpc_status(), None);

    let f = run_capture("nginx-post", C2S, &[], &[]);
    let x = &f.out[0];
    assert_eq!(
        (
            x.http.request.method.as_str(),
            x.http.request.target.as_str()
        ),
        ("POST", "/echo")
    );
    assert_eq!(x.http.response.as_ref().unwrap().status, 201);
    assert_eq!(
        (x.http.request_body_size, x.http.response_body_size),
        (14, 8)
    );
    assert!(!x.http.incomplete);
}

/// Feeds each direction from the given frame index on, as if tracing started there.
fn join_mid_way(c2s_from: usize, s2c_from: usize, misalign: usize) -> Feeder {
    let (c, s) = (read("grpc.c2s"), read("grpc.s2c"));
    let mut f = Feeder::new();
    for (dir, bytes, from) in [(C2S, &c, c2s_from), (S2C, &s, s2c_from)] {
        let frames = frames_of(bytes);
        let start = frames[from].0 + misalign;
        f.pos[dir.index()] = start as u64;
        // One chunk per frame (as written by the peer), the first possibly misaligned.
        let mut sizes: Vec<usize> = frames[from..].windows(2).map(|w| w[1].0 - w[0].0).collect();
        if let Some(first) = sizes.first_mut() {
            *first -= misalign;
        }
        f.feed_split(dir, &bytes[start..], &sizes);
    }
    f.close();
    f
}

#[test]
fn mid_connection_start_never_guesses() {
    let truth: HashMap<u32, H2Exchange> = run_capture("grpc", C2S, &[], &[])
        .out
        .into_iter()
        .map(|x| (x.stream_id, x))
        .collect();
    let c = frames_of(&read("grpc.c2s"));
    let s = frames_of(&read("grpc.s2c"));
    let mut saw_unknown = false;
    let mut emitted = 0;
    for cf in 0..c.len() {
        for sf in [0, s.len() / 3, s.len() / 2] {
            for misalign in [0, 1, 5] {
                let f = join_mid_way(cf, sf, misalign);
                for x in &f.out {
                    emitted += 1;
                    let t = &truth[&x.stream_id];
                    // Whatever is known is right; unknown is empty and flagged.
                    let known = |got: &str, want: &str| got.is_empty() || got == want;
                    assert!(
                        known(&x.http.request.method, &t.http.request.method),
                        "{x:?}"
                    );
                    assert!(
                        known(&x.http.request.target, &t.http.request.target),
                        "{x:?}"
                    );
                    for h in &x.http.request.headers {
                        assert!(t.http.request.headers.contains(h), "{h:?} in {x:?}");
                    }
                    if let (Some(r), Some(tr)) = (&x.http.response, &t.http.response) {
                        assert!(r.status == 0 || r.status == tr.status);
                        for h in &r.headers {
                            assert!(tr.headers.contains(h), "{h:?}");
                        }
                    }
                    // (A trailers-only response whose `:status` is unknown reads as trailers.)
                    let resp = t.http.response.as_ref().unwrap();
                    for h in &x.trailers {
                        assert!(t.trailers.contains(h) || resp.headers.contains(h), "{h:?}");
                    }
                    if x.unknown_fields > 0 || x.http.request.target.is_empty() {
                        saw_unknown = true;
                        assert!(x.http.incomplete);
                    }
                }
            }
        }
    }
    assert!(saw_unknown && emitted > 0);
    // Joined at stream 3's HEADERS in both directions (aligned): streams 3.. are decoded, and
    // what grpc-c indexed during stream 1 is unknown.
    let c3 = c
        .iter()
        .position(|(_, h)| h.kind == HEADERS && h.stream == 3)
        .unwrap();
    let s3 = s
        .iter()
        .position(|(_, h)| h.kind == HEADERS && h.stream == 3)
        .unwrap();
    let f = join_mid_way(c3, s3, 0);
    let ids: Vec<u32> = f.out.iter().map(|x| x.stream_id).collect();
    assert_eq!(ids, [3, 5, 7]);
    assert!(f.out.iter().all(|x| x.http.request.method == "POST"));
    assert!(f.out[0].unknown_fields > 0 && f.out[0].http.incomplete);
    assert!(f.conn.h2_stats().unknown_fields > 0);
}

#[test]
fn padded_priority_headers_continuation_and_padded_data() {
    let mut f = Feeder::new();
    let block = request_block("/svc/Method");
    let (a, b) = block.split_at(7);
    // HEADERS with PADDED (3 bytes) and PRIORITY, then a CONTINUATION with the rest.
    let mut payload = vec![3, 0x80, 0, 0, 1, 200];
    payload.extend_from_slice(a);
    payload.extend_from_slice(&[0, 0, 0]);
    let mut c2s = client_preface();
    c2s.extend(frame(HEADERS, PADDED | PRIORITY_FLAG, 1, &payload));
    c2s.extend(frame(CONTINUATION, END_HEADERS, 1, b));
    // Padded DATA: 1 pad-length byte + 4 body + 2 padding.
    c2s.extend(frame(DATA, PADDED | END_STREAM, 1, &[2, 1, 2, 3, 4, 0, 0]));
    // An unknown frame type is skipped.
    c2s.extend(frame(0x42, 0xff, 0, b"whatever"));
    f.bytewise(C2S, &c2s);
    let mut s2c = settings();
    // :status 200 (8), then DATA, then trailers.
    s2c.extend(frame(HEADERS, END_HEADERS, 1, &[0x88]));
    s2c.extend(frame(DATA, 0, 1, b"hello"));
    s2c.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &lit("grpc-status", "0"),
    ));
    f.bytewise(S2C, &s2c);
    assert_eq!(f.out.len(), 1);
    let x = &f.out[0];
    assert_eq!(x.http.request.target, "/svc/Method");
    assert_eq!(header(x, "cookie"), None, "not kept");
    assert_eq!(
        (x.http.request_body_size, x.http.response_body_size),
        (4, 5)
    );
    assert_eq!(x.grpc_status(), Some("0"));
    assert!(!x.http.incomplete);
    assert_eq!(f.conn.h2_stats(), H2Stats::default());
    assert!(f.conn.is_idle());
}

#[test]
fn rst_stream_goaway_and_close() {
    let mut f = Feeder::new();
    let mut c2s = client_preface();
    for id in [1, 3, 5, 7] {
        c2s.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            id,
            &request_block("/a"),
        ));
    }
    f.feed(C2S, &c2s);
    // Stream 1 reset by the server; stream 3 gets an interim 100 then a response without end.
    let mut s2c = settings();
    s2c.extend(frame(RST_STREAM, 0, 1, &[0, 0, 0, 8]));
    s2c.extend(frame(HEADERS, END_HEADERS, 3, &lit(":status", "100")));
    s2c.extend(frame(HEADERS, END_HEADERS, 3, &lit(":status", "503")));
    // GOAWAY: streams above 3 were not processed.
    s2c.extend(frame(GOAWAY, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 0]));
    f.feed(S2C, &s2c);
    let ended: Vec<(u32, bool, Option<u16>)> = f
        .out
        .iter()
        .map(|x| {
            (
                x.stream_id,
                x.http.incomplete,
                x.http.response.as_ref().map(|r| r.status),
            )
        })
        .collect();
    assert_eq!(ended, [(1, true, None), (5, true, None), (7, true, None)]);
    assert_eq!(f.conn.h2_stats().streams_reset, 3);
    f.close();
    let last = f.out.last().unwrap();
    assert_eq!((last.stream_id, last.http.incomplete), (3, true));
    assert_eq!(last.http.response.as_ref().unwrap().status, 503);
    assert_eq!(last.http.end_ns, f.ts);
    assert_eq!(f.conn.stats().unanswered_requests, 3);
    assert!(f.conn.is_idle());
}

#[test]
fn expire_counts_unanswered_without_emitting() {
    let mut f = Feeder::new();
    let mut c2s = client_preface();
    c2s.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &request_block("/a"),
    ));
    f.feed(C2S, &c2s);
    f.conn.on_expire(5000, &mut f.out);
    assert!(f.out.is_empty());
    assert_eq!(f.conn.stats().unanswered_requests, 1);
}

#[test]
fn oversized_block_is_skipped_and_poisons_the_table() {
    let limits = Limits {
        max_header_block: 64,
        ..Limits::default()
    };
    let mut f = Feeder::with(limits);
    let mut c2s = client_preface();
    // Stream 1: a block that inserts "x-b3-traceid" into the table, but is too large.
    let mut big = request_block("/a");
    big.extend(lit_indexed("x-b3-traceid", "abc"));
    assert!(big.len() > 64);
    c2s.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &big));
    // Stream 3 refers to it (index 62): unknown, never guessed.
    let mut small = vec![0x83, 0x86];
    small.extend(lit(":path", "/b"));
    small.push(0x80 | 62);
    c2s.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &small));
    f.feed(C2S, &c2s);
    let mut s2c = settings();
    s2c.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &[0x88]));
    f.feed(S2C, &s2c);
    assert_eq!(f.out.len(), 1);
    let x = &f.out[0];
    assert_eq!((x.stream_id, x.http.request.target.as_str()), (3, "/b"));
    assert_eq!(x.unknown_fields, 1);
    assert!(x.http.incomplete);
    assert_eq!(header(x, "x-b3-traceid"), None);
    let h2 = f.conn.h2_stats();
    assert_eq!(
        (h2.frames.oversized_frames, h2.frames.dropped_blocks),
        (1, 1)
    );
    assert_eq!(f.conn.stats().dropped_messages, 1);
}

#[test]
fn gaps_inside_data_are_skipped_elsewhere_resync_at_a_later_chunk() {
    let mut f = Feeder::new();
    let mut c2s = client_preface();
    c2s.extend(frame(HEADERS, END_HEADERS, 1, &request_block("/a")));
    let data = frame(DATA, END_STREAM, 1, &[7; 100]);
    c2s.extend_from_slice(&data[..20]);
    f.feed(C2S, &c2s);
    // 50 payload bytes lost, the rest seen: the frame's end is still known.
    f.conn.on_gap(C2S, 50);
    f.pos[0] += 50;
    f.feed(C2S, &data[70..]);
    // An uncaptured tail inside the response's DATA is skipped too.
    let mut s2c = settings();
    s2c.extend(frame(HEADERS, END_HEADERS, 1, &[0x88]));
    f.feed(S2C, &s2c);
    let resp = frame(DATA, END_STREAM, 1, &[1; 300]);
    let mut c = chunk(&resp[..40], f.pos[1], f.ts);
    c.total_len = resp.len() as u32;
    f.conn.on_chunk(S2C, &c, &mut f.out);
    assert_eq!(f.out.len(), 1);
    let x = &f.out[0];
    assert_eq!(
        (x.http.request_body_size, x.http.response_body_size),
        (100, 300)
    );
    assert!(x.http.incomplete, "request body bytes were not seen");
    assert_eq!(f.conn.h2_stats().frames.skipped_gaps, 1);

    // A gap between frames: the direction resumes at the next chunk that starts with
    // plausible frames, its HPACK table forgotten; the stream open across it is incomplete.
    let mut f = Feeder::new();
    let mut c2s = client_preface();
    c2s.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &request_block("/a"),
    ));
    f.feed(C2S, &c2s);
    f.feed(S2C, &settings());
    f.conn.on_gap(S2C, 10);
    f.pos[1] += 10;
    f.feed(S2C, &frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0x88]));
    assert_eq!(f.out.len(), 1);
    let x = &f.out[0].http;
    assert!(x.incomplete);
    assert_eq!(x.response.as_ref().map(|r| r.status), Some(200));
    assert_eq!(f.conn.h2_stats().frames.desyncs, 1);

    // A call longer than the capture whose uncaptured tail holds a response head (h2load's
    // reads of many queued responses): that stream's response is unknown, never "no
    // response"; the next call starts at a frame boundary and is decoded.
    let mut f = Feeder::new();
    let mut c2s = client_preface();
    for id in [1, 3, 5, 7] {
        c2s.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            id,
            &request_block("/a"),
        ));
    }
    f.feed(C2S, &c2s);
    let mut s2c = settings();
    s2c.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0x88]));
    let seen = s2c.len();
    s2c.extend(frame(HEADERS, END_HEADERS, 3, &[0x88]));
    // Stream 7's whole response is in the tail too, and nothing of it comes later.
    s2c.extend(frame(HEADERS, END_HEADERS | END_STREAM, 7, &[0x88]));
    let mut c = chunk(&s2c[..seen + 4], f.pos[1], f.ts);
    c.total_len = s2c.len() as u32;
    let lost_at = c.ts_exit;
    f.conn.on_chunk(S2C, &c, &mut f.out);
    f.ts += 1_000;
    f.pos[1] += s2c.len() as u64;
    // Stream 3's DATA and stream 5's whole response come in the next call.
    let mut next = frame(DATA, END_STREAM, 3, b"ok");
    next.extend(frame(HEADERS, END_HEADERS | END_STREAM, 5, &[0x8d]));
    f.feed(S2C, &next);
    f.close();
    let by_id = |id| f.out.iter().find(|x| x.stream_id == id).unwrap();
    assert_eq!(f.out.len(), 4);
    assert_eq!(by_id(1).http.response.as_ref().unwrap().status, 200);
    assert!(!by_id(1).http.incomplete);
    let lost = &by_id(3).http;
    assert_eq!(lost.response.as_ref().map(|r| r.status), Some(0), "unknown");
    assert!(lost.incomplete);
    assert_eq!(by_id(5).http.response.as_ref().unwrap().status, 404);
    // Open at close: it ends at the call whose tail may have held its end, not at the close.
    let gone = &by_id(7).http;
    assert_eq!(gone.response.as_ref().map(|r| r.status), Some(0));
    assert_eq!(gone.end_ns, lost_at);
    assert_eq!(f.conn.stats().unanswered_requests, 0);
    assert_eq!(f.conn.h2_stats().frames.desyncs, 1);

    // A gap before anything of a direction was seen (a server's SETTINGS written before the
    // kernel recognised the client preface): the direction joins at the next chunk start.
    let mut f = Feeder::new();
    let mut c2s = client_preface();
    c2s.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &request_block("/a"),
    ));
    f.feed(C2S, &c2s);
    f.conn.on_gap(S2C, 27);
    f.pos[1] += 27;
    f.feed(S2C, &frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0x88]));
    assert_eq!(f.out.len(), 1);
    let resp = f.out[0].http.response.as_ref().expect("response");
    assert_eq!(resp.status, 200);
    assert_eq!(f.conn.h2_stats().frames.desyncs, 0);
}

#[test]
fn not_http2_is_counted_not_parsed() {
    let mut f = Feeder::new();
    f.feed(C2S, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    f.feed(S2C, b"HTTP/1.1 200 OK\r\n\r\n");
    f.close();
    assert!(f.out.is_empty());
    assert_eq!(f.conn.h2_stats().frames.invalid, 2);
}

#[test]
fn memory_stays_bounded_with_thousands_of_streams() {
    let mut f = Feeder::new();
    f.feed(C2S, &client_preface());
    f.feed(S2C, &settings());
    let mut peak = 0;
    for round in 0..5u32 {
        // 2000 requests in flight (1000 tracked), each inserting a fresh table entry.
        for i in 0..2000u32 {
            let id = 1 + 2 * (round * 2000 + i);
            let mut b = request_block(&format!("/svc/M{i}"));
            b.extend(lit_indexed(
                "traceparent",
                &format!("00-{id:032x}-{i:016x}-01"),
            ));
            f.feed(C2S, &frame(HEADERS, END_HEADERS | END_STREAM, id, &b));
            peak = peak.max(f.conn.memory_bytes());
        }
        for i in 0..2000u32 {
            let id = 1 + 2 * (round * 2000 + i);
            f.feed(S2C, &frame(HEADERS, END_HEADERS | END_STREAM, id, &[0x88]));
        }
    }
    assert_eq!(f.out.len(), 5 * 1000);
    assert_eq!(f.conn.h2_stats().streams_over_limit, 5 * 1000);
    assert!(f.conn.is_idle());
    // 1000 streams of a few hundred bytes, the 4 KiB tables, buffers.
    assert!(peak < 1024 * 1024, "peak {peak}");
    assert!(f.conn.memory_bytes() < peak);
}

#[test]
fn a_gap_ending_the_last_data_frame_completes_the_exchange() {
    let mut f = Feeder::new();
    let mut c2s = client_preface();
    c2s.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &request_block("/a"),
    ));
    f.feed(C2S, &c2s);
    let mut s2c = settings();
    s2c.extend(frame(HEADERS, END_HEADERS, 1, &[0x88]));
    let data = frame(DATA, END_STREAM, 1, &[0; 64]);
    s2c.extend_from_slice(&data[..30]);
    f.feed(S2C, &s2c);
    let last_exit = f.ts - 5;
    f.conn.on_gap(S2C, (data.len() - 30) as u64);
    assert!(f.out.is_empty() && !f.conn.is_idle());
    f.close();
    assert_eq!(f.out.len(), 1);
    let x = &f.out[0];
    assert_eq!(x.http.response_body_size, 64);
    assert_eq!(x.http.end_ns, last_exit);
    assert!(x.http.incomplete);
}

#[test]
fn position_zero_without_the_preface_is_not_a_known_table() {
    // A connection open before tracing: the kernel's positions start at 0 anyway. The client's
    // first captured write is a HEADERS frame referring to an entry indexed before (index 62).
    let mut block = vec![0x83, 0x86, 0x80 | 62];
    block.extend(lit(":authority", "svc"));
    let mut f = Feeder::new();
    f.feed(C2S, &frame(HEADERS, END_HEADERS | END_STREAM, 9, &block));
    f.feed(
        S2C,
        &frame(HEADERS, END_HEADERS | END_STREAM, 9, &[0x88, 0x80 | 70]),
    );
    assert_eq!(f.out.len(), 1);
    let x = &f.out[0];
    assert_eq!(x.http.request.method, "POST");
    assert_eq!(x.http.request.target, "", "unknown, not guessed");
    assert_eq!(x.unknown_fields, 2);
    assert!(x.http.incomplete);
    assert_eq!(x.http.response.as_ref().unwrap().status, 200);
    assert_eq!(f.conn.h2_stats().frames.dropped_blocks, 0);

    // The server direction seen from position 0 before the client's preface: its table is
    // settled as known only once the preface was seen.
    let mut f = Feeder::new();
    f.feed(S2C, &settings());
    let mut c2s = client_preface();
    c2s.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &request_block("/x"),
    ));
    f.feed(C2S, &c2s);
    // The response indexes a field; the trailers refer to it (index 62).
    let mut head = vec![0x88];
    head.extend(lit_indexed("grpc-status", "0"));
    let mut s2c = frame(HEADERS, END_HEADERS, 1, &head);
    s2c.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0x80 | 62]));
    f.feed(S2C, &s2c);
    let x = &f.out[0];
    assert_eq!(x.unknown_fields, 0);
    assert!(!x.http.incomplete);
    assert_eq!(x.trailers, [("grpc-status".into(), "0".into())]);
}

/// Replays a capture recorded by `capture_proxy_log.py` (every recv, in arrival order) with
/// `client` as the client side's direction.
fn replay(name: &str, client: Direction) -> Feeder {
    let log = read(name);
    let mut f = Feeder::new();
    let mut p = 0;
    while p + 5 <= log.len() {
        let len = u32::from_be_bytes(log[p + 1..p + 5].try_into().unwrap()) as usize;
        let dir = if log[p] == 0 {
            client
        } else {
            client.opposite()
        };
        f.feed(dir, &log[p + 5..p + 5 + len]);
        p += 5 + len;
    }
    assert_eq!(p, log.len());
    f
}

/// Stream id, path, status, body sizes, grpc-status, incomplete.
type Row<'a> = (u32, &'a str, Option<u16>, u64, u64, Option<&'a str>, bool);

#[test]
fn replayed_grpc_streaming_and_deadline_in_arrival_order() {
    // grpcio client and server through a logging proxy, replayed with the real recv
    // boundaries and order: unary, client streaming, bidi, a call cancelled by its deadline
    // (client RST_STREAM; the server's late answer is unmatched), unary again.
    for client in [C2S, S2C] {
        let mut f = replay("grpc-more.log", client);
        f.close();
        let got: Vec<Row<'_>> = f
            .out
            .iter()
            .map(|x| {
                (
                    x.stream_id,
                    x.http.request.target.as_str(),
                    x.http.response.as_ref().map(|r| r.status),
                    x.http.request_body_size,
                    x.http.response_body_size,
                    x.grpc_status(),
                    x.http.incomplete,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (1, "/demo.More/Unary", Some(200), 6, 11, Some("0"), false),
                (3, "/demo.More/Collect", Some(200), 21, 13, Some("0"), false),
                (5, "/demo.More/Bidi", Some(200), 14, 14, Some("0"), false),
                (7, "/demo.More/Slow", None, 6, 0, None, true),
                (9, "/demo.More/Unary", Some(200), 6, 11, Some("0"), false),
            ]
        );
        for x in &f.out {
            assert_eq!(x.http.request_direction, client);
            assert!(x.http.start_ns < x.http.end_ns);
            assert!(header(x, "grpc-timeout").is_some());
        }
        let seqs: Vec<u64> = f.out.iter().map(|x| x.http.seq).collect();
        assert_eq!(seqs, [0, 1, 2, 3, 4]);
        assert_eq!(f.conn.stats().unmatched_responses, 1);
        assert_eq!(f.conn.h2_stats().streams_reset, 1);
    }
}
