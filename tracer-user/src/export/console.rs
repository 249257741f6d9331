//! The console exporter: one human-readable line per span on stdout, e.g.
//!
//! ```text
//! 12:00:01.234 curl[4242] CLIENT GET /x -> 200 1.234ms peer=127.0.0.1:8080 trace=<32 hex> span=<16 hex> parent=<16 hex>
//! ```
//!
//! Local start time with milliseconds, `service.name[pid]`, kind, method, `url.path`, response
//! status (`-` when none), duration (ms with µs precision), peer address, then the ids so
//! spans can be correlated across processes; ` ERROR <message>` is appended for error spans.
use std::fmt::Write as _;
use std::io::Write as _;

use crate::span::{AttrValue, Span, SpanKind, StatusCode};

fn push_attr(out: &mut String, v: Option<&AttrValue>) {
    match v {
        Some(AttrValue::Str(s)) => out.push_str(s),
        Some(AttrValue::Int(i)) => {
            let _ = write!(out, "{i}");
        }
        Some(AttrValue::Bool(b)) => {
            let _ = write!(out, "{b}");
        }
        Some(AttrValue::StrArray(a)) => out.push_str(&a.join(", ")),
        None => out.push('-'),
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
}

/// `HH:MM:SS.mmm` in the local time zone.
fn push_local_time(out: &mut String, unix_ns: u64) {
    let secs = (unix_ns / 1_000_000_000) as libc::time_t;
    let ms = (unix_ns / 1_000_000) % 1000;
    // SAFETY: localtime_r only writes to the tm we pass; a zeroed tm is a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals for the duration of the call.
    let ok = !unsafe { libc::localtime_r(&secs, &mut tm) }.is_null();
    let (h, m, s) = if ok {
        (tm.tm_hour as u64, tm.tm_min as u64, tm.tm_sec as u64)
    } else {
        let day = (unix_ns / 1_000_000_000) % 86_400;
        (day / 3600, day / 60 % 60, day % 60)
    };
    let _ = write!(out, "{h:02}:{m:02}:{s:02}.{ms:03}");
}

/// Appends one line (with `\n`) describing `s`.
pub fn format_span(out: &mut String, s: &Span) {
    push_local_time(out, s.start_unix_ns);
    let _ = write!(out, " {}[{}] ", s.resource.service_name(), s.resource.pid);
    out.push_str(match s.kind {
        SpanKind::Server => "SERVER ",
        SpanKind::Client => "CLIENT ",
    });
    match s.attr("http.request.method") {
        Some(v) => push_attr(out, Some(v)),
        None => out.push_str(&s.name),
    }
    out.push(' ');
    push_attr(out, s.attr("url.path"));
    out.push_str(" -> ");
    push_attr(out, s.attr("http.response.status_code"));
    let us = s.duration_ns() / 1000;
    let _ = write!(out, " {}.{:03}ms peer=", us / 1000, us % 1000);
    push_attr(out, s.attr("network.peer.address"));
    out.push(':');
    push_attr(out, s.attr("network.peer.port"));
    out.push_str(" trace=");
    push_hex(out, &s.trace_id);
    out.push_str(" span=");
    push_hex(out, &s.span_id);
    if let Some(p) = &s.parent_span_id {
        out.push_str(" parent=");
        push_hex(out, p);
    }
    if s.status == StatusCode::Error {
        out.push_str(" ERROR");
        if let Some(m) = &s.status_message {
            out.push(' ');
            out.push_str(m);
        }
    }
    out.push('\n');
}

/// Formats a batch into `buf` (cleared first) and writes it to stdout in one go, off the async
/// runtime's threads (a stdout pipe may block). Returns the buffer for reuse.
pub async fn write_batch(mut buf: String, batch: &[Span]) -> (String, std::io::Result<()>) {
    buf.clear();
    for s in batch {
        format_span(&mut buf, s);
    }
    match tokio::task::spawn_blocking(move || {
        let mut out = std::io::stdout().lock();
        let r = out.write_all(buf.as_bytes()).and_then(|()| out.flush());
        (buf, r)
    })
    .await
    {
        Ok(r) => r,
        Err(e) => (String::new(), Err(std::io::Error::other(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::otlp::tests::{resource, span};

    #[test]
    fn line_format() {
        let r = resource(4242, "curl");
        let s = span(&r, 1);
        let mut out = String::new();
        format_span(&mut out, &s);
        // The time depends on the machine's time zone: check the shape, then the rest.
        let (time, rest) = out.split_at(12);
        assert!(
            time.as_bytes().iter().enumerate().all(|(i, c)| match i {
                2 | 5 => *c == b':',
                8 => *c == b'.',
                _ => c.is_ascii_digit(),
            }),
            "{out}"
        );
        assert!(time.ends_with(".000"), "{out}");
        assert_eq!(
            rest,
            " curl[4242] CLIENT GET /x -> 200 1.234ms peer=127.0.0.1:8080 \
             trace=01010101010101010101010101010101 span=0101010101010101 \
             parent=abababababababab\n"
        );

        let mut s = span(&r, 2);
        s.kind = SpanKind::Server;
        s.attributes.clear();
        s.parent_span_id = None;
        s.status = StatusCode::Error;
        s.status_message = Some("no response".into());
        s.end_unix_ns = s.start_unix_ns + 999;
        out.clear();
        format_span(&mut out, &s);
        assert!(
            out[12..].starts_with(" curl[4242] SERVER GET /x - -> - 0.000ms peer=-:- trace="),
            "{out}"
        );
        assert!(
            out.ends_with("span=0202020202020202 ERROR no response\n"),
            "{out}"
        );
    }
}
