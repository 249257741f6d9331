//! gRPC calls (HTTP/2 exchanges): the RPC semantic conventions on top of the HTTP ones —
//! `rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`, the span name
//! `{service}/{method}`, the call's status, and one `rpc.message` event per message.
use super::Clock;
use super::http::{SpanStatus, header};
use crate::protocol::{Direction, HttpExchange, http2::RpcMessage};
use crate::span::{AttrValue, Attributes, SpanEvent, SpanKind, StatusCode, truncate_value};

/// `grpc-message` is cut to this many bytes for the span's status message.
const MAX_STATUS_MESSAGE_LEN: usize = 256;

/// HTTP/2 with an `application/grpc` content type, or a `grpc-status` in the response (only
/// gRPC sends one; the content type may be unknown on a connection joined mid-way).
pub(super) fn is_grpc(ex: &HttpExchange) -> bool {
    header(&ex.request.headers, "content-type").is_some_and(|ct| ct.starts_with("application/grpc"))
        || grpc_status(ex).is_some()
}

fn grpc_status(ex: &HttpExchange) -> Option<&str> {
    ex.response
        .as_ref()
        .and_then(|r| header(&r.headers, "grpc-status"))
}

/// The `rpc.*` attributes of a gRPC call, and its status: the HTTP status is 200 even for
/// failed calls; the call's status is `grpc-status`. `path` is the request's `:path`
/// (`/{service}/{method}`). Returns the span name when the path names the method.
pub(super) fn push_call(
    attrs: &mut Attributes,
    status: &mut SpanStatus,
    ex: &HttpExchange,
    path: Option<&str>,
    kind: SpanKind,
) -> Option<String> {
    attrs.push(("rpc.system", AttrValue::fixed("grpc")));
    let mut name = None;
    if let Some((service, method)) = path
        .and_then(|p| p.strip_prefix('/'))
        .and_then(|p| p.split_once('/'))
        .filter(|(s, m)| !s.is_empty() && !m.is_empty())
    {
        attrs.push(("rpc.service", service.into()));
        attrs.push(("rpc.method", method.into()));
        name = Some(format!("{service}/{method}"));
    }
    let Some(code) = grpc_status(ex).and_then(|v| v.trim().parse::<i64>().ok()) else {
        return name;
    };
    attrs.push(("rpc.grpc.status_code", code.into()));
    // Server spans: only codes that mean the server failed; client spans: any non-OK.
    let error = match kind {
        SpanKind::Server => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
        SpanKind::Client => code != 0,
    };
    if error {
        attrs.push(("error.type", code.to_string().into()));
        status.code = StatusCode::Error;
        status.message = ex
            .response
            .as_ref()
            .and_then(|r| header(&r.headers, "grpc-message"))
            .map(|m| truncate_value(m, MAX_STATUS_MESSAGE_LEN).to_owned());
    } else if status.message.is_none() {
        // Not a failure for this kind of span: nor is it one by its HTTP status.
        status.code = StatusCode::Unset;
    }
    name
}

/// The `rpc.message` events of the call's messages, their times kept within the span's.
pub(super) fn message_events(
    messages: &[RpcMessage],
    clock: &Clock,
    start_unix_ns: u64,
    end_unix_ns: u64,
) -> Vec<SpanEvent> {
    messages
        .iter()
        .map(|m| {
            message_event(
                m,
                clock.to_unix_ns(m.at_ns).clamp(start_unix_ns, end_unix_ns),
            )
        })
        .collect()
}

/// A gRPC message as the RPC conventions' `rpc.message` event: SENT or RECEIVED by the traced
/// process, numbered per direction, its size from the length prefix (compressed or not, as
/// the prefix's flag says).
fn message_event(m: &RpcMessage, time_unix_ns: u64) -> SpanEvent {
    let kind = match m.direction {
        Direction::Egress => "SENT",
        Direction::Ingress => "RECEIVED",
    };
    let size_key = if m.compressed {
        "rpc.message.compressed_size"
    } else {
        "rpc.message.uncompressed_size"
    };
    SpanEvent {
        time_unix_ns,
        name: "rpc.message",
        attributes: vec![
            ("rpc.message.type", AttrValue::fixed(kind)),
            ("rpc.message.id", i64::from(m.id).into()),
            (size_key, i64::from(m.size).into()),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::ConnMeta;
    use crate::protocol::{RequestHead, ResponseHead};
    use crate::span::{AttrValue, Resource, Span, StatusCode};
    use crate::trace::{Clock, IdGenerator, SpanContext, SpanOptions, span_from_exchange};
    use std::sync::Arc;
    use tracer_common::Role;

    fn grpc_exchange(dir: Direction, status: &str) -> HttpExchange {
        let msg = |direction, id, size, compressed, at_ns| RpcMessage {
            direction,
            id,
            compressed,
            size,
            at_ns,
        };
        HttpExchange {
            request_direction: dir,
            request: RequestHead {
                method: "POST".into(),
                target: "/demo.Greeter/SayHello".into(),
                version: "2",
                headers: vec![
                    ("host".into(), "greeter:50051".into()),
                    ("content-type".into(), "application/grpc+proto".into()),
                ],
            },
            response: Some(ResponseHead {
                status: 200,
                version: "2",
                headers: vec![
                    ("grpc-status".into(), status.into()),
                    ("grpc-message".into(), "nope".into()),
                ],
            }),
            start_ns: 1_000,
            end_ns: 5_000,
            request_body_size: 12,
            response_body_size: 20,
            tid: 7,
            seq: 0,
            incomplete: false,
            head_position: 0,
            injected: None,
            messages: vec![
                msg(Direction::Egress, 1, 7, false, 2_000),
                msg(Direction::Ingress, 1, 15, true, 4_000),
                // Reported at a time outside the span (clock skew between calls): clamped.
                msg(Direction::Ingress, 2, 0, false, 9_000),
            ],
            messages_dropped: 3,
        }
    }

    fn build(ex: &HttpExchange) -> Span {
        let mut ids = IdGenerator::from_seed(1);
        let conn = ConnMeta {
            conn_id: 1,
            pid: 42,
            local: "10.0.0.1:40000".parse().unwrap(),
            remote: "10.0.0.2:50051".parse().unwrap(),
            role: Role::Unknown,
            tls: false,
        };
        let resource = Arc::new(Resource {
            pid: 42,
            attributes: vec![],
        });
        span_from_exchange(
            ex,
            &conn,
            resource,
            &Clock::with_offset(1_000_000),
            &SpanOptions::default(),
            SpanContext::root(&mut ids),
        )
    }

    fn attr<'a>(e: &'a SpanEvent, key: &str) -> Option<&'a AttrValue> {
        e.attributes.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    #[test]
    fn grpc_span_name_attributes_and_message_events() {
        let sp = build(&grpc_exchange(Direction::Egress, "0"));
        assert_eq!(sp.name, "demo.Greeter/SayHello");
        assert_eq!(sp.kind, SpanKind::Client);
        assert_eq!(sp.attr("rpc.system"), Some(&AttrValue::from("grpc")));
        assert_eq!(
            sp.attr("rpc.service"),
            Some(&AttrValue::from("demo.Greeter"))
        );
        assert_eq!(sp.attr("rpc.method"), Some(&AttrValue::from("SayHello")));
        assert_eq!(sp.attr("rpc.grpc.status_code"), Some(&AttrValue::Int(0)));
        assert_eq!(sp.status, StatusCode::Unset);
        assert_eq!(sp.events.len(), 3);
        assert_eq!(sp.dropped_events, 3);
        let (sent, recv) = (&sp.events[0], &sp.events[1]);
        assert!(sp.events.iter().all(|e| e.name == "rpc.message"));
        assert_eq!(attr(sent, "rpc.message.type"), Some(&"SENT".into()));
        assert_eq!(attr(sent, "rpc.message.id"), Some(&AttrValue::Int(1)));
        assert_eq!(
            attr(sent, "rpc.message.uncompressed_size"),
            Some(&AttrValue::Int(7))
        );
        assert_eq!(attr(sent, "rpc.message.compressed_size"), None);
        assert_eq!(sent.time_unix_ns, 1_000_000 + 2_000);
        assert_eq!(attr(recv, "rpc.message.type"), Some(&"RECEIVED".into()));
        assert_eq!(
            attr(recv, "rpc.message.compressed_size"),
            Some(&AttrValue::Int(15))
        );
        assert_eq!(attr(recv, "rpc.message.uncompressed_size"), None);
        assert_eq!(sp.events[2].time_unix_ns, sp.end_unix_ns);
    }

    /// A connection joined mid-way: fields that referenced unknown HPACK entries are empty.
    #[test]
    fn unknown_http2_fields_are_left_out() {
        let mut ex = grpc_exchange(Direction::Egress, "0");
        ex.incomplete = true;
        ex.request.target.clear();
        ex.request.headers.clear();
        ex.response.as_mut().unwrap().headers.clear();
        let sp = build(&ex);
        assert_eq!(sp.name, "POST");
        for key in [
            "url.path",
            "url.full",
            "http.route",
            "rpc.system",
            "rpc.method",
        ] {
            assert_eq!(sp.attr(key), None, "{key}");
        }
        assert_eq!(sp.attr("tracer.incomplete"), Some(&AttrValue::Bool(true)));
        // Unknown method too: no method attribute rather than a wrong one.
        ex.request.method.clear();
        let sp = build(&ex);
        assert_eq!(sp.name, "HTTP");
        assert_eq!(sp.attr("http.request.method"), None);
        assert_eq!(sp.attr("http.request.method_original"), None);
        // A response of unknown status (its head was lost): no status code, no error.
        let mut ex = grpc_exchange(Direction::Egress, "0");
        ex.incomplete = true;
        ex.request.headers.clear();
        ex.response = Some(ResponseHead {
            status: 0,
            version: "2",
            headers: vec![],
        });
        let sp = build(&ex);
        assert_eq!(sp.attr("http.response.status_code"), None);
        assert_eq!(sp.attr("error.type"), None);
        assert_eq!(sp.status, StatusCode::Unset);
        // The content type unknown, but `grpc-status` known: gRPC all the same.
        let mut ex = grpc_exchange(Direction::Ingress, "5");
        ex.request.headers.clear();
        let sp = build(&ex);
        assert_eq!(sp.name, "demo.Greeter/SayHello");
        assert_eq!(sp.attr("rpc.grpc.status_code"), Some(&AttrValue::Int(5)));
    }

    #[test]
    fn grpc_status_rules_per_kind() {
        for (code, server_error) in [
            ("0", false),
            ("1", false),
            ("2", true),
            ("3", false),
            ("4", true),
            ("5", false),
            ("12", true),
            ("13", true),
            ("14", true),
            ("15", true),
            ("16", false),
        ] {
            let client = build(&grpc_exchange(Direction::Egress, code));
            let server = build(&grpc_exchange(Direction::Ingress, code));
            assert_eq!(server.kind, SpanKind::Server);
            let is_err = |s: &Span| s.status == StatusCode::Error;
            assert_eq!(is_err(&client), code != "0", "client {code}");
            assert_eq!(is_err(&server), server_error, "server {code}");
            if code != "0" {
                assert_eq!(client.attr("error.type"), Some(&AttrValue::from(code)));
                assert_eq!(client.status_message.as_deref(), Some("nope"));
            }
        }
    }
}
