//! The redaction stage: what must not leave the agent is removed from each finished span
//! before any later stage (metrics labels, samplers, sinks, the console) sees it.
//!
//! - Query values: `url.query` keeps each parameter's name and replaces its value with
//!   `REDACTED` (queries often carry tokens and e-mail addresses), and the query part of
//!   `url.full` likewise (`--keep-query-values` turns it off). Span building copies the query
//!   as the request sent it; credentials in a request target are never copied at all
//!   (`trace::http`), that is not a policy.
//! - Built-in PII scrubbing (on by default, `--no-default-redaction` turns it off):
//!   e-mail addresses, card numbers, JWTs and tokens, IP addresses in `url.path`, `url.full`,
//!   `url.query` (keys, and values when kept), `http.route` and span names; secrets in the
//!   resource's `process.command_line` (see [`super::scrub`]).
//! - `--redact-attribute KEY` drops an attribute (span or resource); `--redact-pattern REGEX`
//!   replaces every match in string attribute values and span names with `REDACTED`.
//!
//! Allocates only for a span that has something to replace: scrubbing is byte tests first,
//! and a resource (shared by a process's spans) is scrubbed once, then reused.
use std::borrow::Cow;
use std::sync::{Arc, Weak};

use hashbrown::HashMap;

use super::scrub::{scrub_command_line, scrub_name, scrub_path, scrub_query, scrub_url};
use crate::span::{AttrValue, Resource, Span};

/// Value that replaces each query parameter's value when redacting.
pub const REDACTED: &str = "REDACTED";

/// `--redact-pattern`s, compiled into one alternation.
#[derive(Clone, Debug)]
pub struct Patterns(regex::Regex);

impl Patterns {
    /// `None` without patterns; an error names the pattern that does not compile.
    pub fn new(patterns: &[String]) -> Result<Option<Self>, String> {
        if patterns.is_empty() {
            return Ok(None);
        }
        for p in patterns {
            regex::Regex::new(p).map_err(|e| format!("--redact-pattern `{p}`: {e}"))?;
        }
        let joined: Vec<String> = patterns.iter().map(|p| format!("(?:{p})")).collect();
        regex::Regex::new(&joined.join("|"))
            .map(|r| Some(Self(r)))
            .map_err(|e| format!("--redact-pattern: {e}"))
    }

    fn mask<'a>(&self, s: &'a str) -> Cow<'a, str> {
        self.0.replace_all(s, REDACTED)
    }
}

impl PartialEq for Patterns {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}
impl Eq for Patterns {}

/// What the redaction stage does (agent configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedactOptions {
    /// Replace each query parameter's value with `REDACTED` in `url.query` and `url.full`.
    pub query_values: bool,
    /// The built-in PII scrubbing.
    pub builtin: bool,
    /// Attributes dropped (span and resource).
    pub drop_attributes: Vec<String>,
    pub patterns: Option<Patterns>,
}

impl Default for RedactOptions {
    fn default() -> Self {
        Self {
            query_values: true,
            builtin: true,
            drop_attributes: Vec::new(),
            patterns: None,
        }
    }
}

/// Resources seen, by address: the original (to tell a reused address) and the scrubbed
/// copy (`None`: nothing to change). Cleared when it grows past this.
const MAX_RESOURCES: usize = 4096;

/// The stage.
#[derive(Debug, Default)]
pub struct Redactor {
    options: RedactOptions,
    resources: HashMap<usize, (Weak<Resource>, Option<Arc<Resource>>)>,
}

impl Redactor {
    pub fn new(options: RedactOptions) -> Self {
        Self {
            options,
            resources: HashMap::new(),
        }
    }

    pub fn on_span(&mut self, span: &mut Span) {
        let o = &self.options;
        if !o.drop_attributes.is_empty() {
            span.attributes
                .retain(|(k, _)| !o.drop_attributes.iter().any(|d| d == k));
        }
        let redacted = |key: &str, s: &str| {
            let mut changed = redact_attribute(o, key, s);
            if let Some(p) = &o.patterns
                && let Cow::Owned(m) = p.mask(changed.as_deref().unwrap_or(s))
            {
                changed = Some(m);
            }
            changed
        };
        for (key, value) in span.attributes.iter_mut() {
            match value {
                AttrValue::Str(s) => {
                    if let Some(c) = redacted(key, s) {
                        *s = Cow::Owned(c);
                    }
                }
                // A string array (a captured header) element by element.
                AttrValue::StrArray(a) => {
                    for s in a {
                        if let Some(c) = redacted(key, s) {
                            *s = c;
                        }
                    }
                }
                AttrValue::Int(_) | AttrValue::Bool(_) => {}
            }
        }
        if o.builtin
            && let Cow::Owned(n) = scrub_name(&span.name)
        {
            span.name = n;
        }
        if let Some(p) = &o.patterns
            && let Cow::Owned(n) = p.mask(&span.name)
        {
            span.name = n;
        }
        if o.builtin || !o.drop_attributes.is_empty() || o.patterns.is_some() {
            self.redact_resource(span);
        }
    }

    /// The span's resource, scrubbed once per resource.
    fn redact_resource(&mut self, span: &mut Span) {
        let key = Arc::as_ptr(&span.resource) as usize;
        if let Some((orig, scrubbed)) = self.resources.get(&key)
            && orig
                .upgrade()
                .is_some_and(|o| Arc::ptr_eq(&o, &span.resource))
        {
            if let Some(s) = scrubbed {
                span.resource = s.clone();
            }
            return;
        }
        if self.resources.len() >= MAX_RESOURCES {
            self.resources.clear();
        }
        let scrubbed = scrub_resource(&self.options, &span.resource).map(Arc::new);
        self.resources
            .insert(key, (Arc::downgrade(&span.resource), scrubbed.clone()));
        if let Some(s) = scrubbed {
            span.resource = s;
        }
    }
}

/// The new value of span attribute `key`, when redaction changes it.
fn redact_attribute(o: &RedactOptions, key: &str, s: &str) -> Option<String> {
    let mut v: Cow<'_, str> = Cow::Borrowed(s);
    if o.query_values {
        let r = match key {
            "url.query" => redact_query(&v),
            "url.full" => redact_url_query(&v),
            _ => Cow::Borrowed(&*v),
        };
        if let Cow::Owned(r) = r {
            v = Cow::Owned(r);
        }
    }
    if o.builtin {
        let r = match key {
            "url.path" | "http.route" => scrub_path(&v),
            "url.query" => scrub_query(&v),
            "url.full" => scrub_url(&v),
            _ => Cow::Borrowed(&*v),
        };
        if let Cow::Owned(r) = r {
            v = Cow::Owned(r);
        }
    }
    match v {
        Cow::Owned(v) => Some(v),
        Cow::Borrowed(_) => None,
    }
}

/// A copy of `r` with its attributes redacted, or `None` when nothing changes.
fn scrub_resource(o: &RedactOptions, r: &Resource) -> Option<Resource> {
    let mut changed = false;
    let mut attributes = Vec::with_capacity(r.attributes.len());
    for (k, v) in &r.attributes {
        if o.drop_attributes.iter().any(|d| d == k) {
            changed = true;
            continue;
        }
        let mut v = v.clone();
        if let AttrValue::Str(s) = &mut v {
            if o.builtin
                && k == "process.command_line"
                && let Cow::Owned(m) = scrub_command_line(s)
            {
                *s = Cow::Owned(m);
                changed = true;
            }
            if let Some(p) = &o.patterns
                && let Cow::Owned(m) = p.mask(s)
            {
                *s = Cow::Owned(m);
                changed = true;
            }
        }
        attributes.push((k.clone(), v));
    }
    changed.then_some(Resource {
        pid: r.pid,
        attributes,
    })
}

/// Keeps each parameter's name and replaces its value with `REDACTED`: `a=1&b=2` →
/// `a=REDACTED&b=REDACTED`. Parameters without `=` are kept.
pub fn redact_query(query: &str) -> Cow<'_, str> {
    if !query.contains('=') {
        return Cow::Borrowed(query);
    }
    let mut out = String::with_capacity(query.len() + 16);
    push_redacted_query(&mut out, query);
    Cow::Owned(out)
}

/// `url.full` with its query (after the first `?`; a path cannot hold one) redacted.
fn redact_url_query(url: &str) -> Cow<'_, str> {
    match url.split_once('?') {
        Some((base, query)) if query.contains('=') => {
            let mut out = String::with_capacity(url.len() + 16);
            out.push_str(base);
            out.push('?');
            push_redacted_query(&mut out, query);
            Cow::Owned(out)
        }
        _ => Cow::Borrowed(url),
    }
}

fn push_redacted_query(out: &mut String, query: &str) {
    for (i, part) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match part.split_once('=') {
            Some((name, _)) => {
                out.push_str(name);
                out.push('=');
                out.push_str(REDACTED);
            }
            None => out.push_str(part),
        }
    }
}

/// Headers that carry credentials or sessions: never captured unless
/// `--allow-sensitive-header` names them.
pub const SENSITIVE_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

// Options of what spans carry: captured headers and redaction (flattened into `Cli`). A `//`
// comment: clap would turn a doc comment into the command's `about`.
#[derive(clap::Args, Clone, Debug, Default)]
#[command(next_help_heading = "Span data: headers and redaction")]
pub struct SpanDataArgs {
    /// Add the request header NAME to each HTTP span as `http.request.header.<name>` (lower
    /// case; a string array, one element per line). Repeatable. `Authorization`,
    /// `Proxy-Authorization`, `Cookie` and `Set-Cookie` need --allow-sensitive-header too.
    #[arg(long, value_name = "NAME")]
    pub capture_request_header: Vec<String>,

    /// As --capture-request-header, for response headers (`http.response.header.<name>`).
    #[arg(long, value_name = "NAME")]
    pub capture_response_header: Vec<String>,

    /// Allow capturing this sensitive header (its value is exported as sent). Repeatable.
    #[arg(long, value_name = "NAME")]
    pub allow_sensitive_header: Vec<String>,

    /// Turn off the built-in PII scrubbing (e-mail addresses, card numbers, JWTs and tokens,
    /// IP addresses in paths, routes, span names and query keys; secrets in
    /// `process.command_line`).
    #[arg(long, env = "TRACER_NO_DEFAULT_REDACTION")]
    pub no_default_redaction: bool,

    /// Drop this attribute (span or resource) from every span. Repeatable.
    #[arg(long, value_name = "KEY")]
    pub redact_attribute: Vec<String>,

    /// Replace every match of REGEX (Rust `regex` syntax) in string attribute values and span
    /// names with REDACTED. Repeatable.
    #[arg(long, value_name = "REGEX")]
    pub redact_pattern: Vec<String>,
}

impl SpanDataArgs {
    /// The redaction stage's options (`query_values`: see `--keep-query-values`).
    pub fn redact_options(&self, query_values: bool) -> Result<RedactOptions, String> {
        Ok(RedactOptions {
            query_values,
            builtin: !self.no_default_redaction,
            drop_attributes: self.redact_attribute.clone(),
            patterns: Patterns::new(&self.redact_pattern)?,
        })
    }

    /// The headers to capture, lower case: (request, response). Sensitive ones not allowed
    /// explicitly are left out, each named in the returned warnings.
    pub fn captured_headers(&self) -> (Vec<String>, Vec<String>, Vec<String>) {
        let allowed = |h: &str| {
            self.allow_sensitive_header
                .iter()
                .any(|a| a.eq_ignore_ascii_case(h))
        };
        let mut warnings = Vec::new();
        let mut pick = |names: &[String]| -> Vec<String> {
            let mut out: Vec<String> = Vec::new();
            for n in names {
                let n = n.trim().to_ascii_lowercase();
                if n.is_empty() || out.contains(&n) {
                    continue;
                }
                if SENSITIVE_HEADERS.contains(&n.as_str()) && !allowed(&n) {
                    warnings.push(format!(
                        "header `{n}` is not captured: it carries credentials (--allow-sensitive-header {n} captures it)"
                    ));
                    continue;
                }
                out.push(n);
            }
            out
        };
        let request = pick(&self.capture_request_header);
        let response = pick(&self.capture_response_header);
        (request, response, warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::test_span;

    #[test]
    fn values_replaced_names_kept() {
        assert_eq!(
            redact_query("q=secret&page=2&flag&&empty="),
            "q=REDACTED&page=REDACTED&flag&&empty=REDACTED"
        );
        assert_eq!(redact_query("k=v=w"), "k=REDACTED");
    }

    #[test]
    fn borrows_without_values() {
        assert!(matches!(redact_query("flag&other"), Cow::Borrowed(_)));
        assert!(matches!(redact_query(""), Cow::Borrowed(_)));
        assert!(matches!(
            redact_url_query("http://h/p?flag"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn stage_redacts_query_and_url_full() {
        let mut span = test_span();
        span.attributes = vec![
            ("url.path", "/search".into()),
            ("url.query", "q=secret&flag".into()),
            (
                "url.full",
                "http://REDACTED:REDACTED@h.example:8080/search?q=secret&flag".into(),
            ),
        ];
        Redactor::default().on_span(&mut span);
        assert_eq!(span.attr("url.path"), Some(&"/search".into()));
        assert_eq!(span.attr("url.query"), Some(&"q=REDACTED&flag".into()));
        assert_eq!(
            span.attr("url.full"),
            Some(&"http://REDACTED:REDACTED@h.example:8080/search?q=REDACTED&flag".into())
        );
    }

    #[test]
    fn stage_off_keeps_values() {
        let mut span = test_span();
        span.attributes = vec![("url.query", "q=secret".into())];
        Redactor::new(RedactOptions {
            query_values: false,
            ..RedactOptions::default()
        })
        .on_span(&mut span);
        assert_eq!(span.attr("url.query"), Some(&"q=secret".into()));
    }

    #[test]
    fn pii_is_scrubbed_everywhere_it_is_looked_for() {
        let mut span = test_span();
        span.name = "GET /users/bob@example.com".into();
        span.attributes = vec![
            (
                "url.path",
                "/users/bob@example.com/cards/4111111111111111".into(),
            ),
            ("http.route", "/users/bob@example.com".into()),
            ("url.query", "10.0.0.1=x".into()),
            ("url.full", "http://h:80/users/bob@example.com?a=1".into()),
            ("user_agent.original", "bob@example.com".into()),
        ];
        Redactor::default().on_span(&mut span);
        assert_eq!(span.name, "GET /users/{email}");
        assert_eq!(
            span.attr("url.path"),
            Some(&"/users/{email}/cards/{card}".into())
        );
        assert_eq!(span.attr("http.route"), Some(&"/users/{email}".into()));
        assert_eq!(span.attr("url.query"), Some(&"{ip}=REDACTED".into()));
        assert_eq!(
            span.attr("url.full"),
            Some(&"http://h:80/users/{email}?a=REDACTED".into())
        );
        // Only the attributes the built-ins look at.
        assert_eq!(
            span.attr("user_agent.original"),
            Some(&"bob@example.com".into())
        );
    }

    #[test]
    fn attributes_dropped_patterns_masked_resources_scrubbed_once() {
        let opts = SpanDataArgs {
            redact_attribute: vec!["user_agent.original".into(), "host.name".into()],
            redact_pattern: vec!["acct-[0-9]+".into()],
            ..SpanDataArgs::default()
        }
        .redact_options(true)
        .unwrap();
        let mut r = Redactor::new(opts);
        let resource = Arc::new(Resource {
            pid: 1,
            attributes: vec![
                ("service.name".into(), "svc".into()),
                ("host.name".into(), "n1".into()),
                (
                    "process.command_line".into(),
                    "app --password hunter2".into(),
                ),
            ],
        });
        let mut a = test_span();
        a.resource = resource.clone();
        a.attributes = vec![
            ("user_agent.original", "curl".into()),
            ("url.path", "/x/acct-42".into()),
        ];
        let mut b = a.clone();
        r.on_span(&mut a);
        r.on_span(&mut b);
        assert_eq!(a.attributes, vec![("url.path", "/x/REDACTED".into())]);
        assert!(
            Arc::ptr_eq(&a.resource, &b.resource),
            "scrubbed once, shared"
        );
        assert_eq!(
            a.resource.attributes,
            vec![
                ("service.name".into(), "svc".into()),
                (
                    "process.command_line".into(),
                    "app --password REDACTED".into()
                ),
            ]
        );
        assert!(Patterns::new(&["(".into()]).is_err());
    }

    #[test]
    fn nothing_allocated_when_nothing_matches() {
        let mut span = test_span();
        span.attributes = vec![("url.path", "/orders/1234567890123".into())];
        let before = span.clone();
        let resource = span.resource.clone();
        Redactor::default().on_span(&mut span);
        assert_eq!(span, before);
        assert!(Arc::ptr_eq(&span.resource, &resource));
    }

    #[test]
    fn sensitive_headers_need_their_own_permission() {
        let args = SpanDataArgs {
            capture_request_header: vec!["X-Tier".into(), "Authorization".into(), "cookie".into()],
            capture_response_header: vec!["Set-Cookie".into(), "x-release".into()],
            allow_sensitive_header: vec!["COOKIE".into()],
            ..SpanDataArgs::default()
        };
        let (req, resp, warnings) = args.captured_headers();
        assert_eq!(req, vec!["x-tier", "cookie"]);
        assert_eq!(resp, vec!["x-release"]);
        assert_eq!(warnings.len(), 2);
    }
}
