//! What the tracer keeps of a decoded header block: pseudo-headers and a bounded list of
//! headers (the policy HTTP/1 shares, in `headers.rs`), with a count of fields the decoder
//! could not resolve (unknown table entries).

use super::hpack::Field;
use crate::headers::{
    MAX_KEPT_HEADERS, MAX_METHOD, MAX_TARGET, Version, is_token, kept_header, lossy,
};
use crate::{HeaderList, HeaderValue};

/// A decoded header block, reduced to what the tracer uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Block {
    pub method: Option<HeaderValue>,
    pub path: Option<HeaderValue>,
    pub scheme: Option<HeaderValue>,
    pub authority: Option<HeaderValue>,
    /// `:status`; `Some(0)` when present but not a 3-digit number from 100.
    pub status: Option<u16>,
    pub headers: HeaderList,
    /// Fields whose name could not be resolved (references to the unknown part of the table):
    /// any of them may have been a pseudo-header or a kept header. A `:method` that is not a
    /// token counts here too.
    pub unknown: u32,
}

impl Block {
    /// Adds one decoded field.
    pub fn add(&mut self, (name, value): Field<'_>, max_value: usize) {
        let (Some(name), Some(value)) = (name, value) else {
            self.unknown += 1;
            return;
        };
        match name {
            // RFC 9113 8.3.1: a method is a token. Anything else (an empty value, say) is kept
            // as a field that could not be used: the request is incomplete, never named "".
            b":method" if value.is_empty() || !value.iter().all(|&b| is_token(b)) => {
                self.unknown += 1;
            }
            b":method" => self.method = Some(lossy(value, MAX_METHOD)),
            b":path" => self.path = Some(lossy(value, MAX_TARGET)),
            b":scheme" => self.scheme = Some(lossy(value, MAX_METHOD)),
            b":authority" => self.authority = Some(lossy(value, max_value)),
            b":status" => {
                let s = std::str::from_utf8(value).ok().filter(|s| s.len() == 3);
                let n = s
                    .and_then(|s| s.parse().ok())
                    .filter(|n| (100..1000).contains(n));
                self.status = Some(n.unwrap_or(0));
            }
            _ if self.headers.len() < MAX_KEPT_HEADERS => {
                if let Some(name) = kept_header(name, Version::Http2) {
                    self.headers.push((name, lossy(value, max_value)));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Block;

    #[test]
    fn a_method_that_is_not_a_token_is_not_kept() {
        for bad in [&b""[..], b"GE T", b"G\xbaT"] {
            let mut b = Block::default();
            b.add((Some(b":method"), Some(bad)), 64);
            assert_eq!((b.method, b.unknown), (None, 1), "{bad:?}");
        }
        let mut b = Block::default();
        b.add((Some(b":method"), Some(b"PATCH")), 64);
        assert_eq!((b.method.as_deref(), b.unknown), (Some("PATCH"), 0));
    }
}
