//! Replays of HTTP/1 streams recorded from real peers (`tests/data/http1`, see `capture.py`
//! there): as server and client, cut at every point, byte-wise, and with a capture limit.

use super::{EG, IN, status};
use crate::http1::{Http1Conn, Limits};
use crate::{Chunk, HttpExchange};

/// Records of a `.stream` file: (client-to-server?, bytes).
fn load(name: &str) -> Vec<(bool, Vec<u8>)> {
    let path = format!(
        "{}/tests/data/http1/{name}.stream",
        env!("CARGO_MANIFEST_DIR")
    );
    let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut out = Vec::new();
    let mut p = 0;
    while p < raw.len() {
        let nl = p + raw[p..].iter().position(|&c| c == b'\n').unwrap();
        let line = std::str::from_utf8(&raw[p..nl]).unwrap();
        let (tag, n) = line.split_at(1);
        let n: usize = n.trim().parse().unwrap();
        out.push((tag == ">", raw[nl + 1..nl + 1 + n].to_vec()));
        p = nl + 1 + n + 1;
    }
    out
}

/// Comparable shape of an exchange.
type Shape = (String, String, u16, u64, u64, bool);

fn shape(x: &HttpExchange) -> Shape {
    (
        x.request.method.to_string(),
        x.request.target.to_string(),
        status(x),
        x.request_body_size,
        x.response_body_size,
        x.incomplete,
    )
}

/// Feeds records as chunks (`split`: record index → cut points), seen as server or client,
/// with a capture limit.
fn replay(
    recs: &[(bool, Vec<u8>)],
    server: bool,
    cut: Option<(usize, &[usize])>,
    capture: usize,
) -> Vec<HttpExchange> {
    let mut c = Http1Conn::new(Limits::default());
    let mut out = Vec::new();
    let mut ts = 1000u64;
    for (i, (c2s, bytes)) in recs.iter().enumerate() {
        let dir = if *c2s == server { IN } else { EG };
        let mut points = vec![0];
        if let Some((ci, cuts)) = cut
            && ci == i
        {
            points.extend(cuts.iter().copied().filter(|&k| k > 0 && k < bytes.len()));
        }
        points.push(bytes.len());
        for w in points.windows(2) {
            let piece = &bytes[w[0]..w[1]];
            let captured = &piece[..piece.len().min(capture)];
            let chunk = Chunk {
                data: captured,
                total_len: piece.len() as u32,
                ts_enter: ts,
                ts_exit: ts + 500,
                tid: 7,
                other_unseen: 0,
                position: w[0] as u64,
                ctx: None,
            };
            c.on_chunk(dir, &chunk, &mut out);
            ts += 1000;
        }
    }
    c.on_close(ts, &mut out);
    assert!(c.memory_bytes() < 64 * 1024);
    out
}

fn vector(name: &str, expected: &[(&str, &str, u16, u64, u64)]) {
    let recs = load(name);
    for server in [true, false] {
        let reference = replay(&recs, server, None, usize::MAX);
        let got: Vec<Shape> = reference.iter().map(shape).collect();
        let want: Vec<Shape> = expected
            .iter()
            .map(|&(m, t, s, q, r)| (m.into(), t.into(), s, q, r, false))
            .collect();
        assert_eq!(got, want, "{name} server={server}");
        for x in &reference {
            assert!(x.start_ns <= x.end_ns);
            assert_eq!(x.request_direction, if server { IN } else { EG });
        }
        // Every record cut at every point (bodies at a stride), and everything byte-wise.
        for (i, (_, bytes)) in recs.iter().enumerate() {
            let step = if bytes.len() > 600 { 7 } else { 1 };
            for k in (1..bytes.len()).step_by(step) {
                let got: Vec<Shape> = replay(&recs, server, Some((i, &[k])), usize::MAX)
                    .iter()
                    .map(shape)
                    .collect();
                assert_eq!(got, want, "{name} record {i} cut at {k}");
            }
            let all: Vec<usize> = (1..bytes.len()).collect();
            let got: Vec<Shape> = replay(&recs, server, Some((i, &all)), usize::MAX)
                .iter()
                .map(shape)
                .collect();
            assert_eq!(got, want, "{name} record {i} byte-wise");
        }
        // A capture limit: statuses and pairing survive; Content-Length bodies stay exact.
        let limited = replay(&recs, server, None, 1024);
        assert_eq!(limited.len(), want.len(), "{name} capture limit");
        for (x, w) in limited.iter().zip(&want) {
            assert_eq!((x.request.target.as_str(), status(x)), (w.1.as_str(), w.2));
            if !x.incomplete {
                assert_eq!((x.request_body_size, x.response_body_size), (w.3, w.4));
            }
        }
    }
}

#[test]
fn recorded_keepalive_stream() {
    vector(
        "keepalive",
        &[
            ("GET", "/a?x=1", 200, 0, 1000),
            ("HEAD", "/head", 200, 0, 0),
            ("GET", "/chunked", 200, 0, 412),
            ("GET", "/nocontent", 204, 0, 0),
            ("POST", "/post", 201, 3000, 14),
            ("POST", "/chunkedpost", 201, 3000, 14),
            ("POST", "/expect", 201, 3000, 14),
        ],
    );
    let recs = load("keepalive");
    let x = replay(&recs, true, None, usize::MAX);
    assert!(
        x[0].request
            .headers
            .iter()
            .any(|(n, v)| n == "traceparent" && v.starts_with("00-0af7"))
    );
}

#[test]
fn recorded_http10_close_stream() {
    vector("http10_close", &[("GET", "/stream", 200, 0, 1260)]);
}

#[test]
fn recorded_file_server_streams() {
    vector("files", &[("GET", "/index.txt", 200, 0, 5100)]);
    let recs = load("files_404");
    let x = replay(&recs, true, None, usize::MAX);
    assert_eq!((x.len(), status(&x[0]), x[0].incomplete), (1, 404, false));
    let len = x[0]
        .response
        .as_ref()
        .unwrap()
        .headers
        .iter()
        .find(|(n, _)| n == "content-length");
    assert_eq!(
        len.map(|(_, v)| v.parse::<u64>().unwrap()),
        Some(x[0].response_body_size)
    );
}
