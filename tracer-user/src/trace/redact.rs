//! Redaction of what span building copies from requests that may carry secrets: query values
//! (tokens, e-mail addresses) and URL credentials.
//!
//! Applied while the span is built (`url.query`, `url.full`), on the request's borrowed query.
//! Everything redaction decides lives here, so it can become a stage of the span pipeline
//! without touching the semantic conventions.
use std::borrow::Cow;

/// Value that replaces each query parameter's value when redacting.
pub const REDACTED: &str = "REDACTED";
/// What `url.full` carries in place of a request target's `user:password@` (always: the
/// conventions forbid exporting credentials).
pub const REDACTED_USERINFO: &str = "REDACTED:REDACTED@";

/// Keeps each parameter's name and replaces its value with `REDACTED`: `a=1&b=2` →
/// `a=REDACTED&b=REDACTED`. Parameters without `=` are kept.
pub fn redact_query(query: &str) -> Cow<'_, str> {
    if !query.contains('=') {
        return Cow::Borrowed(query);
    }
    let mut out = String::with_capacity(query.len() + 16);
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
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
