//! What the tracer keeps of a decoded header block: pseudo-headers and a bounded list of
//! headers, with a count of fields the decoder could not resolve (unknown table entries).

use crate::HeaderList;
use super::hpack::Field;

/// Headers kept per block.
pub const MAX_KEPT_HEADERS: usize = 16;
/// `:path` values are truncated to this many bytes.
const MAX_PATH: usize = 2048;
/// Longest `:method` kept.
const MAX_METHOD: usize = 24;
/// Longest header name kept (only `x-b3-*` names vary).
const MAX_KEPT_NAME: usize = 64;

fn kept_name(name: &[u8]) -> bool {
    const KEPT: [&[u8]; 10] = [
        b"user-agent",
        b"content-length",
        b"content-type",
        b"traceparent",
        b"tracestate",
        b"b3",
        b"grpc-timeout",
        b"grpc-status",
        b"grpc-message",
        b"grpc-encoding",
    ];
    // HTTP/2 field names are lower case on the wire (RFC 9113 8.2.1).
    KEPT.contains(&name)
        || (name.len() > 5 && name.len() <= MAX_KEPT_NAME && name.starts_with(b"x-b3-"))
}

fn lossy(b: &[u8], max: usize) -> String {
    String::from_utf8_lossy(&b[..b.len().min(max)]).into_owned()
}

/// A decoded header block, reduced to what the tracer uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Block {
    pub method: Option<String>,
    pub path: Option<String>,
    pub scheme: Option<String>,
    pub authority: Option<String>,
    /// `:status`; `Some(0)` when present but not a 3-digit number from 100.
    pub status: Option<u16>,
    pub headers: HeaderList,
    /// Fields whose name could not be resolved (references to the unknown part of the table):
    /// any of them may have been a pseudo-header or a kept header.
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
            b":method" => self.method = Some(lossy(value, MAX_METHOD)),
            b":path" => self.path = Some(lossy(value, MAX_PATH)),
            b":scheme" => self.scheme = Some(lossy(value, MAX_METHOD)),
            b":authority" => self.authority = Some(lossy(value, max_value)),
            b":status" => {
                let s = std::str::from_utf8(value).ok().filter(|s| s.len() == 3);
                let n = s
                    .and_then(|s| s.parse().ok())
                    .filter(|n| (100..1000).contains(n));
                self.status = Some(n.unwrap_or(0));
            }
            _ if self.headers.len() < MAX_KEPT_HEADERS && kept_name(name) => {
                self.headers
                    .push((lossy(name, MAX_KEPT_NAME), lossy(value, max_value)));
            }
            _ => {}
        }
    }
}
