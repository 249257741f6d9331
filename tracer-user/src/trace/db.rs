//! Turning a [`DbExchange`] into a CLIENT span, following the OpenTelemetry semantic
//! conventions for database client spans (stable since semantic conventions 1.33; written
//! against 1.37): `db.system.name`, `db.namespace`, `db.operation.name`,
//! `db.collection.name`, `db.query.text` (sanitised: literals are `?`, bounded; Redis
//! arguments are never kept), `db.response.status_code` and `error.type` for errors (the
//! SQLSTATE for PostgreSQL, the error code for MySQL / MariaDB, e.g. `1146`),
//! `server.address`, `server.port`, `network.peer.*`.
//!
//! The name is `{db.operation.name} {db.collection.name}`, the operation alone, or the
//! system's name when the statement named neither. A failed call has status Error, with the
//! SQLSTATE / MySQL error code / Redis error prefix as its `error.type` (no message: error
//! texts quote data).
use std::sync::Arc;

use super::address::ip_text;
use super::{Clock, ParentResolver, SpanContext};
use crate::conn::ConnMeta;
use crate::protocol::DbExchange;
use crate::span::{AttrValue, Attributes, Resource, Span, SpanKind, StatusCode};

/// The trace context of a call: with no outgoing headers to read, the child of the SERVER
/// span its thread is serving.
pub fn db_context(parents: &mut ParentResolver, conn: &ConnMeta, call: &DbExchange) -> SpanContext {
    parents.client_context(conn, call.tid, call.start_ns)
}

/// Builds the span of one call, in the trace context `ctx`.
pub fn span_from_db(
    call: &DbExchange,
    conn: &ConnMeta,
    resource: Arc<Resource>,
    clock: &Clock,
    ctx: SpanContext,
) -> Span {
    let mut attrs: Attributes = Vec::with_capacity(12);
    attrs.push(("db.system.name", AttrValue::fixed(call.system.name())));
    if let Some(ns) = &call.namespace {
        attrs.push(("db.namespace", ns.as_ref().into()));
    }
    if let Some(op) = &call.operation {
        attrs.push(("db.operation.name", op.as_ref().into()));
    }
    if let Some(c) = &call.collection {
        attrs.push(("db.collection.name", c.as_ref().into()));
    }
    if let Some(q) = &call.query_text {
        attrs.push(("db.query.text", q.as_ref().into()));
    }
    let status = match &call.error_code {
        Some(code) => {
            attrs.push(("db.response.status_code", code.as_str().into()));
            attrs.push(("error.type", code.as_str().into()));
            StatusCode::Error
        }
        None => StatusCode::Unset,
    };
    let server = conn.remote;
    let address = ip_text(server.ip());
    attrs.push(("server.address", address.clone().into()));
    attrs.push(("server.port", i64::from(server.port()).into()));
    attrs.push(("network.peer.address", address.into()));
    attrs.push(("network.peer.port", i64::from(server.port()).into()));
    attrs.push((
        "tracer.parent.source",
        AttrValue::fixed(ctx.source.as_str()),
    ));

    let name = match (&call.operation, &call.collection) {
        (Some(op), Some(c)) => format!("{op} {c}"),
        (Some(op), None) => op.to_string(),
        (None, _) => call.system.name().to_owned(),
    };
    let start_unix_ns = clock.to_unix_ns(call.start_ns);
    let end_unix_ns = clock.to_unix_ns(call.end_ns).max(start_unix_ns);
    Span {
        trace_id: ctx.trace_id,
        span_id: ctx.span_id,
        parent_span_id: ctx.parent_span_id,
        trace_state: ctx.trace_state,
        flags: ctx.flags,
        name,
        kind: SpanKind::Client,
        start_unix_ns,
        end_unix_ns,
        attributes: attrs,
        status,
        status_message: None,
        resource,
        events: Vec::new(),
        dropped_events: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::db::DbSystem;
    use crate::span::AttrValue;
    use tracer_common::Role;

    fn conn() -> ConnMeta {
        ConnMeta {
            conn_id: 1,
            pid: 2,
            local: "127.0.0.1:40000".parse().unwrap(),
            remote: "127.0.0.1:5432".parse().unwrap(),
            role: Role::Client,
            tls: false,
        }
    }

    fn call() -> DbExchange {
        DbExchange {
            system: DbSystem::Postgresql,
            operation: Some("SELECT".into()),
            collection: Some("items".into()),
            namespace: Some("shop".into()),
            query_text: Some("SELECT name FROM items WHERE id = ?".into()),
            error_code: None,
            start_ns: 1_000,
            end_ns: 3_000,
            tid: 9,
        }
    }

    fn build(call: &DbExchange) -> Span {
        let mut parents = ParentResolver::new(16);
        let ctx = db_context(&mut parents, &conn(), call);
        span_from_db(
            call,
            &conn(),
            Arc::new(Resource {
                pid: 2,
                attributes: vec![],
            }),
            &Clock::with_offset(0),
            ctx,
        )
    }

    #[test]
    fn statement_spans_follow_the_conventions() {
        let span = build(&call());
        assert_eq!(span.name, "SELECT items");
        assert_eq!(span.kind, SpanKind::Client);
        assert_eq!(span.duration_ns(), 2_000);
        let s = |k| match span.attr(k) {
            Some(AttrValue::Str(v)) => v.clone(),
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(s("db.system.name"), "postgresql");
        assert_eq!(s("db.namespace"), "shop");
        assert_eq!(s("db.operation.name"), "SELECT");
        assert_eq!(s("db.query.text"), "SELECT name FROM items WHERE id = ?");
        assert_eq!(s("server.address"), "127.0.0.1");
        assert_eq!(span.attr("server.port"), Some(&AttrValue::Int(5432)));
        assert_eq!(span.status, StatusCode::Unset);
        assert_eq!(span.attr("error.type"), None);
    }

    #[test]
    fn errors_and_unnamed_statements() {
        let mut c = call();
        c.error_code = Some("42P01".into());
        c.collection = None;
        let span = build(&c);
        assert_eq!(span.name, "SELECT");
        assert_eq!(span.status, StatusCode::Error);
        assert_eq!(
            span.attr("error.type"),
            Some(&AttrValue::Str("42P01".into()))
        );
        assert_eq!(
            span.attr("db.response.status_code"),
            Some(&AttrValue::Str("42P01".into()))
        );
        c.operation = None;
        c.system = DbSystem::Redis;
        assert_eq!(build(&c).name, "redis");
    }

    #[test]
    fn mariadb_errors_carry_the_error_code() {
        let mut c = call();
        c.system = DbSystem::Mariadb;
        c.error_code = Some("1146".into());
        let span = build(&c);
        assert_eq!(span.name, "SELECT items");
        assert_eq!(
            span.attr("db.system.name"),
            Some(&AttrValue::Str("mariadb".into()))
        );
        assert_eq!(
            span.attr("db.response.status_code"),
            Some(&AttrValue::Str("1146".into()))
        );
        assert_eq!(span.status, StatusCode::Error);
        c.system = DbSystem::Mysql;
        c.operation = None;
        assert_eq!(build(&c).name, "mysql");
    }
}
