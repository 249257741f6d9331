//! Tail policies: what keeps a trace the head sampler did not sample, seen on this node's
//! spans of it (errors, slow spans, attribute values).
use crate::span::{AttrValue, Span, StatusCode};

/// Why a trace is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepReason {
    /// The head sampler sampled it.
    Head = 0,
    /// A span of it has status Error (`--sampling-keep-errors`).
    Error = 1,
    /// A span of it is slower than `--sampling-keep-slower-than`.
    Slow = 2,
    /// A span of it has an attribute value of `--sampling-keep-attribute`.
    Attribute = 3,
}

impl KeepReason {
    pub const ALL: [Self; 4] = [Self::Head, Self::Error, Self::Slow, Self::Attribute];
    pub fn name(self) -> &'static str {
        match self {
            Self::Head => "head",
            Self::Error => "error",
            Self::Slow => "slow",
            Self::Attribute => "attribute",
        }
    }
}

/// Why a trace is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Unsampled, and no policy matched within the decision wait (or tail policies are off).
    Unsampled = 0,
    /// Unsampled, and the hold buffer was full before the wait ended: decided early.
    Overflow = 1,
}

impl DropReason {
    pub const ALL: [Self; 2] = [Self::Unsampled, Self::Overflow];
    pub fn name(self) -> &'static str {
        match self {
            Self::Unsampled => "unsampled",
            Self::Overflow => "overflow",
        }
    }
}

/// `--sampling-keep-attribute KEY=VALUE`: the value compared as the attribute's text: a string
/// attribute equal to it; a string array (a captured header) when any element equals it, or,
/// for an element that is a comma-separated list (one header line may carry several values),
/// any of its items; an integer or boolean attribute by its value.
#[derive(Clone, Debug, PartialEq)]
pub struct AttributeMatch {
    pub key: String,
    pub value: String,
    int: Option<i64>,
    boolean: Option<bool>,
}

impl std::str::FromStr for AttributeMatch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (key, value) = s
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| format!("`{s}`: expected KEY=VALUE"))?;
        Ok(Self {
            key: key.to_owned(),
            value: value.to_owned(),
            int: value.parse().ok(),
            boolean: value.parse().ok(),
        })
    }
}

impl AttributeMatch {
    fn matches(&self, v: &AttrValue) -> bool {
        match v {
            AttrValue::Str(s) => *s == self.value,
            AttrValue::StrArray(a) => a
                .iter()
                .any(|e| *e == self.value || e.split(',').any(|item| item.trim() == self.value)),
            AttrValue::Int(i) => self.int == Some(*i),
            AttrValue::Bool(b) => self.boolean == Some(*b),
        }
    }
}

/// The tail policies.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policies {
    pub keep_errors: bool,
    pub keep_slower_than_ns: Option<u64>,
    pub keep_attributes: Vec<AttributeMatch>,
}

impl Policies {
    pub fn any(&self) -> bool {
        self.keep_errors || self.keep_slower_than_ns.is_some() || !self.keep_attributes.is_empty()
    }

    /// The first policy `span` matches.
    pub fn matches(&self, span: &Span) -> Option<KeepReason> {
        if self.keep_errors && span.status == StatusCode::Error {
            return Some(KeepReason::Error);
        }
        if self
            .keep_slower_than_ns
            .is_some_and(|t| span.duration_ns() > t)
        {
            return Some(KeepReason::Slow);
        }
        let attr = self.keep_attributes.iter().any(|m| {
            span.attributes
                .iter()
                .any(|(k, v)| *k == m.key && m.matches(v))
        });
        attr.then_some(KeepReason::Attribute)
    }
}

/// What a held span costs in memory, roughly: its struct, its strings and attribute slots.
pub fn span_bytes(span: &Span) -> usize {
    let strings: usize = span.attributes.iter().map(|(_, v)| v.heap_bytes()).sum();
    std::mem::size_of::<Span>()
        + span.name.len()
        + span.trace_state.as_ref().map_or(0, String::len)
        + span.status_message.as_ref().map_or(0, String::len)
        + span.attributes.len() * std::mem::size_of::<(&str, AttrValue)>()
        + strings
        + span.events.len() * std::mem::size_of::<crate::span::SpanEvent>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::test_span;

    #[test]
    fn policies_match_errors_slow_spans_and_attributes() {
        let p = Policies {
            keep_errors: true,
            keep_slower_than_ns: Some(500_000_000),
            keep_attributes: vec![
                "http.request.header.x-tier=gold".parse().unwrap(),
                "http.response.status_code=418".parse().unwrap(),
            ],
        };
        let mut s = test_span();
        assert_eq!(p.matches(&s), None);
        s.status = StatusCode::Error;
        assert_eq!(p.matches(&s), Some(KeepReason::Error));
        s.status = StatusCode::Unset;
        s.end_unix_ns = s.start_unix_ns + 500_000_001;
        assert_eq!(p.matches(&s), Some(KeepReason::Slow));
        s.end_unix_ns = s.start_unix_ns + 500_000_000;
        assert_eq!(p.matches(&s), None, "slower than, not as slow as");
        let header = |values: &[&str]| -> AttrValue {
            values
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .into()
        };
        for (values, kept) in [
            (&["silver", "gold"][..], true),
            (&["gold"], true),
            (&["silver,gold"], true),
            (&["silver, gold"], true),
            (&["golden"], false),
            (&["silver", "xgold"], false),
            (&[], false),
        ] {
            s.attributes = vec![("http.request.header.x-tier", header(values))];
            let want = kept.then_some(KeepReason::Attribute);
            assert_eq!(p.matches(&s), want, "{values:?}");
        }
        // A plain string: the whole value.
        s.attributes = vec![("http.request.header.x-tier", "gold".into())];
        assert_eq!(p.matches(&s), Some(KeepReason::Attribute));
        s.attributes = vec![("http.request.header.x-tier", "silver, gold".into())];
        assert_eq!(p.matches(&s), None);
        s.attributes = vec![("http.response.status_code", 418i64.into())];
        assert_eq!(p.matches(&s), Some(KeepReason::Attribute));
        assert!("=x".parse::<AttributeMatch>().is_err());
        assert!("novalue".parse::<AttributeMatch>().is_err());
    }
}
