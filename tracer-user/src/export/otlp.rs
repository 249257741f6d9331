//! Span model → OTLP protobuf messages (`opentelemetry-proto` generated types).
use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value,
};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span as ProtoSpan, Status, span, status,
};

use crate::span::{AttrValue, Resource, Span, SpanKind, StatusCode};

/// Instrumentation scope name of every exported span.
pub const SCOPE_NAME: &str = "tracer";
pub const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// OTLP `SpanFlags`: the parent's is-remote bit is known / set.
const FLAG_CONTEXT_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_CONTEXT_IS_REMOTE: u32 = 0x200;

fn any_value(v: AttrValue) -> AnyValue {
    AnyValue {
        value: Some(match v {
            AttrValue::Str(s) => any_value::Value::StringValue(s.into_owned()),
            AttrValue::Int(i) => any_value::Value::IntValue(i),
            AttrValue::Bool(b) => any_value::Value::BoolValue(b),
            AttrValue::StrArray(a) => any_value::Value::ArrayValue(ArrayValue {
                values: a
                    .into_iter()
                    .map(|s| AnyValue {
                        value: Some(any_value::Value::StringValue(s)),
                    })
                    .collect(),
            }),
        }),
    }
}

fn key_value(key: String, v: AttrValue) -> KeyValue {
    KeyValue {
        key,
        value: Some(any_value(v)),
    }
}

fn proto_resource(r: &Resource) -> ProtoResource {
    ProtoResource {
        attributes: r
            .attributes
            .iter()
            .map(|(k, v)| key_value(k.clone(), v.clone()))
            .collect(),
        dropped_attributes_count: 0,
        entity_refs: Vec::new(),
    }
}

/// OTLP `Span.flags`: the W3C trace flags and whether the parent is remote.
pub(super) fn span_flags(s: &Span) -> u32 {
    let mut flags = u32::from(s.flags);
    if s.parent_span_id.is_some() {
        // A server span's parent came in the request's traceparent: remote. A client span's
        // parent is the server span we made in the same process: local.
        flags |= FLAG_CONTEXT_HAS_IS_REMOTE;
        if s.kind == SpanKind::Server {
            flags |= FLAG_CONTEXT_IS_REMOTE;
        }
    }
    flags
}

/// Converts one span, moving its strings.
pub fn proto_span(s: Span) -> ProtoSpan {
    let flags = span_flags(&s);
    ProtoSpan {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        trace_state: s.trace_state.unwrap_or_default(),
        parent_span_id: s.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        flags,
        name: s.name,
        kind: match s.kind {
            SpanKind::Server => span::SpanKind::Server,
            SpanKind::Client => span::SpanKind::Client,
        } as i32,
        start_time_unix_nano: s.start_unix_ns,
        end_time_unix_nano: s.end_unix_ns,
        attributes: s
            .attributes
            .into_iter()
            .map(|(k, v)| key_value(k.to_owned(), v))
            .collect(),
        dropped_attributes_count: 0,
        events: s
            .events
            .into_iter()
            .map(|e| span::Event {
                time_unix_nano: e.time_unix_ns,
                name: e.name.to_owned(),
                attributes: e
                    .attributes
                    .into_iter()
                    .map(|(k, v)| key_value(k.to_owned(), v))
                    .collect(),
                dropped_attributes_count: 0,
            })
            .collect(),
        dropped_events_count: s.dropped_events,
        links: Vec::new(),
        dropped_links_count: 0,
        status: match (s.status, s.status_message) {
            (StatusCode::Unset, None) => None,
            (code, message) => Some(Status {
                message: message.unwrap_or_default(),
                code: match code {
                    StatusCode::Unset => status::StatusCode::Unset,
                    StatusCode::Error => status::StatusCode::Error,
                } as i32,
            }),
        },
    }
}

/// Builds one export request from a batch (drained), grouping spans by resource (the
/// `Arc<Resource>` pointer: one per process) in order of first appearance.
pub fn export_request(batch: impl IntoIterator<Item = Span>) -> ExportTraceServiceRequest {
    let mut resource_spans: Vec<ResourceSpans> = Vec::new();
    let mut index: HashMap<*const Resource, usize> = HashMap::new();
    for s in batch {
        let key = Arc::as_ptr(&s.resource);
        let i = *index.entry(key).or_insert_with(|| {
            resource_spans.push(ResourceSpans {
                resource: Some(proto_resource(&s.resource)),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: SCOPE_NAME.to_owned(),
                        version: SCOPE_VERSION.to_owned(),
                        attributes: Vec::new(),
                        dropped_attributes_count: 0,
                    }),
                    spans: Vec::new(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            });
            resource_spans.len() - 1
        });
        resource_spans[i].scope_spans[0].spans.push(proto_span(s));
    }
    ExportTraceServiceRequest { resource_spans }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::span::SpanEvent;

    pub(crate) fn resource(pid: u32, name: &str) -> Arc<Resource> {
        Arc::new(Resource {
            pid,
            attributes: vec![
                ("service.name".into(), name.into()),
                ("process.pid".into(), AttrValue::Int(pid.into())),
            ],
        })
    }

    pub(crate) fn span(resource: &Arc<Resource>, n: u8) -> Span {
        Span {
            trace_id: [n; 16],
            span_id: [n; 8],
            parent_span_id: Some([0xab; 8]),
            trace_state: Some("k=v".into()),
            flags: 1,
            name: "GET /x".into(),
            kind: SpanKind::Client,
            start_unix_ns: 1_700_000_000_000_000_000,
            end_unix_ns: 1_700_000_000_001_234_567,
            attributes: vec![
                ("http.request.method", "GET".into()),
                ("url.path", "/x".into()),
                ("http.response.status_code", AttrValue::Int(200)),
                ("network.peer.address", "127.0.0.1".into()),
                ("network.peer.port", AttrValue::Int(8080)),
                ("tracer.test", AttrValue::Bool(true)),
            ],
            status: StatusCode::Unset,
            status_message: None,
            resource: resource.clone(),
            events: vec![SpanEvent {
                time_unix_ns: 1_700_000_000_000_500_000,
                name: "rpc.message",
                attributes: vec![("rpc.message.id", AttrValue::Int(1))],
            }],
            dropped_events: 2,
        }
    }

    fn attr<'a>(kvs: &'a [KeyValue], k: &str) -> Option<&'a any_value::Value> {
        kvs.iter()
            .find(|kv| kv.key == k)?
            .value
            .as_ref()?
            .value
            .as_ref()
    }

    #[test]
    fn converts_fields_and_types() {
        let r = resource(42, "curl");
        let mut s = span(&r, 7);
        s.kind = SpanKind::Server;
        s.status = StatusCode::Error;
        s.status_message = Some("boom".into());
        s.attributes.push((
            "http.request.header.x-tier",
            vec!["gold".to_owned(), "silver".to_owned()].into(),
        ));
        let p = proto_span(s);
        assert_eq!(p.trace_id, vec![7; 16]);
        assert_eq!(p.span_id, vec![7; 8]);
        assert_eq!(p.parent_span_id, vec![0xab; 8]);
        assert_eq!(p.trace_state, "k=v");
        assert_eq!(p.flags, 1 | 0x100 | 0x200);
        assert_eq!(p.kind, span::SpanKind::Server as i32);
        assert_eq!(p.name, "GET /x");
        assert_eq!(p.start_time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(p.end_time_unix_nano, 1_700_000_000_001_234_567);
        let st = p.status.unwrap();
        assert_eq!(st.code, status::StatusCode::Error as i32);
        assert_eq!(st.message, "boom");
        use any_value::Value::*;
        assert_eq!(
            attr(&p.attributes, "http.request.method"),
            Some(&StringValue("GET".into()))
        );
        assert_eq!(
            attr(&p.attributes, "http.response.status_code"),
            Some(&IntValue(200))
        );
        assert_eq!(
            attr(&p.attributes, "network.peer.port"),
            Some(&IntValue(8080))
        );
        assert_eq!(attr(&p.attributes, "tracer.test"), Some(&BoolValue(true)));
        let string = |s: &str| AnyValue {
            value: Some(StringValue(s.into())),
        };
        assert_eq!(
            attr(&p.attributes, "http.request.header.x-tier"),
            Some(&any_value::Value::ArrayValue(
                opentelemetry_proto::tonic::common::v1::ArrayValue {
                    values: vec![string("gold"), string("silver")]
                }
            ))
        );
        assert_eq!(p.events.len(), 1);
        assert_eq!(p.events[0].name, "rpc.message");
        assert_eq!(p.events[0].time_unix_nano, 1_700_000_000_000_500_000);
        assert_eq!(
            attr(&p.events[0].attributes, "rpc.message.id"),
            Some(&IntValue(1))
        );
        assert_eq!(p.dropped_events_count, 2);

        // Root client span: no parent, no remote bits, no status.
        let mut s = span(&r, 1);
        s.parent_span_id = None;
        s.trace_state = None;
        let p = proto_span(s);
        assert!(p.parent_span_id.is_empty());
        assert!(p.trace_state.is_empty());
        assert_eq!(p.flags, 1);
        assert_eq!(p.kind, span::SpanKind::Client as i32);
        assert!(p.status.is_none());
    }

    #[test]
    fn groups_by_resource() {
        let a = resource(1, "a");
        let b = resource(2, "b");
        let req = export_request(vec![span(&a, 1), span(&b, 2), span(&a, 3)]);
        assert_eq!(req.resource_spans.len(), 2);
        let ra = &req.resource_spans[0];
        let res = ra.resource.as_ref().unwrap();
        assert_eq!(
            attr(&res.attributes, "service.name"),
            Some(&any_value::Value::StringValue("a".into()))
        );
        assert_eq!(
            attr(&res.attributes, "process.pid"),
            Some(&any_value::Value::IntValue(1))
        );
        assert_eq!(ra.scope_spans.len(), 1);
        let scope = ra.scope_spans[0].scope.as_ref().unwrap();
        assert_eq!(scope.name, "tracer");
        assert_eq!(scope.version, env!("CARGO_PKG_VERSION"));
        let ids: Vec<u8> = ra.scope_spans[0]
            .spans
            .iter()
            .map(|s| s.span_id[0])
            .collect();
        assert_eq!(ids, vec![1, 3]);
        assert_eq!(req.resource_spans[1].scope_spans[0].spans.len(), 1);
    }
}
