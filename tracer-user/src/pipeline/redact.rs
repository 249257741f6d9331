//! The redaction stage: what must not leave the agent is removed from each finished span
//! before any later stage (metrics labels, samplers, sinks) sees it.
//!
//! Today: query values. `url.query` keeps each parameter's name and replaces its value with
//! `REDACTED` (queries often carry tokens and e-mail addresses), and the query part of
//! `url.full` likewise. Span building copies the query as the request sent it; credentials in
//! a request target are never copied at all (`trace::http`), that is not a policy.
use std::borrow::Cow;

use crate::span::{AttrValue, Span};

/// Value that replaces each query parameter's value when redacting.
pub const REDACTED: &str = "REDACTED";

/// What the redaction stage does (agent configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedactOptions {
    /// Replace each query parameter's value with `REDACTED` in `url.query` and `url.full`.
    pub query_values: bool,
}

impl Default for RedactOptions {
    fn default() -> Self {
        Self { query_values: true }
    }
}

/// The stage. Allocates only for a span whose query has a value to replace.
#[derive(Debug, Default)]
pub struct Redactor {
    options: RedactOptions,
}

impl Redactor {
    pub fn new(options: RedactOptions) -> Self {
        Self { options }
    }

    pub fn on_span(&mut self, span: &mut Span) {
        if !self.options.query_values {
            return;
        }
        for (key, value) in span.attributes.iter_mut() {
            let AttrValue::Str(s) = value else { continue };
            let redacted = match *key {
                "url.query" => redact_query(s),
                "url.full" => redact_url_query(s),
                _ => continue,
            };
            if let Cow::Owned(r) = redacted {
                *s = r;
            }
        }
    }
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
        })
        .on_span(&mut span);
        assert_eq!(span.attr("url.query"), Some(&"q=secret".into()));
    }
}
