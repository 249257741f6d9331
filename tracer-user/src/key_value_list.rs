//! The `key1=value1,key2=value2` lists of the OpenTelemetry SDK environment variables
//! (`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`): the W3C Baggage format without
//! its `;` properties, as the OTel spec defines both. One parser for every such list:
//!
//! - Entries are separated by `,`; whitespace around an entry, its key and its value is
//!   trimmed; empty entries are skipped.
//! - An entry is `key=value`; the first `=` separates, the value may contain more.
//! - Keys and values are percent-decoded: the OTel spec says `,` and `=` inside them MUST be
//!   encoded, and any other character MAY be. A `%` that does not start a `%XX` escape is an
//!   error (W3C Baggage: `%` itself MUST be encoded). Decoded bytes that are not UTF-8
//!   become U+FFFD, as W3C Baggage requires.
//! - Errors are per entry (no `=`, an empty key, a malformed escape); what one costs is the
//!   caller's policy: `OTEL_RESOURCE_ATTRIBUTES` is discarded whole, as the OTel resource
//!   spec says; a bad header entry is skipped with a warning, as the SDKs do.
use std::fmt;

/// Why an entry is not a valid `key=value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryError {
    MissingEquals,
    EmptyKey,
    /// A `%` not followed by two hex digits.
    MalformedEscape,
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::MissingEquals => "expected key=value",
            Self::EmptyKey => "empty key",
            Self::MalformedEscape => "malformed %-escape",
        })
    }
}

/// An entry that could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidEntry<'a> {
    /// The entry when it has no `=`, else its key as written: never a value, which may be a
    /// secret (an API key in a header).
    pub text: &'a str,
    pub error: EntryError,
}

/// The decoded entries of `list`, in order (a repeated key appears as often as it is written).
pub fn entries(list: &str) -> impl Iterator<Item = Result<(String, String), InvalidEntry<'_>>> {
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(entry)
}

fn entry(text: &str) -> Result<(String, String), InvalidEntry<'_>> {
    let (key, value) = text.split_once('=').ok_or(InvalidEntry {
        text,
        error: EntryError::MissingEquals,
    })?;
    let key = key.trim();
    let invalid = |error| InvalidEntry { text: key, error };
    if key.is_empty() {
        return Err(invalid(EntryError::EmptyKey));
    }
    let decoded_key = percent_decode(key).ok_or_else(|| invalid(EntryError::MalformedEscape))?;
    let value = percent_decode(value.trim()).ok_or_else(|| invalid(EntryError::MalformedEscape))?;
    Ok((decoded_key, value))
}

/// `%XX` escapes decoded; `None` for a `%` without two hex digits after it. Bytes that do not
/// form UTF-8 become U+FFFD.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let bytes = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let high = hex(*bytes.get(i + 1)?)?;
            let low = hex(*bytes.get(i + 2)?)?;
            out.push(high << 4 | low);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(list: &str) -> Vec<Result<(String, String), InvalidEntry<'_>>> {
        entries(list).collect()
    }

    fn ok(k: &str, v: &str) -> Result<(String, String), InvalidEntry<'static>> {
        Ok((k.to_owned(), v.to_owned()))
    }

    #[test]
    fn entries_trimmed_and_decoded() {
        assert_eq!(
            parse(" a = 1 ,, b=x%20y%2Cz%3Dw ,c=v=w,%41uth=%E2%9C%93, d= ,"),
            vec![
                ok("a", "1"),
                ok("b", "x y,z=w"),
                ok("c", "v=w"),
                ok("Auth", "✓"),
                ok("d", ""),
            ]
        );
        assert_eq!(parse(""), vec![]);
        assert_eq!(parse(" , "), vec![]);
        // `+` is not a space (that is form encoding, not percent-encoding).
        assert_eq!(parse("k=a+b"), vec![ok("k", "a+b")]);
        // A repeated key is reported each time.
        assert_eq!(parse("k=1,k=2"), vec![ok("k", "1"), ok("k", "2")]);
    }

    #[test]
    fn invalid_entries() {
        let err = |text, error| Err(InvalidEntry { text, error });
        assert_eq!(
            parse("novalue,=v, =v,k=%,k=%4,k=%zz,%g=1,a=ok"),
            vec![
                err("novalue", EntryError::MissingEquals),
                err("", EntryError::EmptyKey),
                err("", EntryError::EmptyKey),
                err("k", EntryError::MalformedEscape),
                err("k", EntryError::MalformedEscape),
                err("k", EntryError::MalformedEscape),
                err("%g", EntryError::MalformedEscape),
                ok("a", "ok"),
            ]
        );
    }

    #[test]
    fn invalid_utf8_becomes_replacement_characters() {
        assert_eq!(parse("k=a%ffb"), vec![ok("k", "a\u{fffd}b")]);
        assert_eq!(parse("k=%C3"), vec![ok("k", "\u{fffd}")]);
    }
}
