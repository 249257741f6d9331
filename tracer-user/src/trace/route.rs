//! The route heuristic: low-cardinality `http.route` values (and span names) from raw paths.
use std::borrow::Cow;

/// [`route_of`] keeps at most this many path segments, then appends `/...`.
pub const MAX_ROUTE_SEGMENTS: usize = 8;

/// The route heuristic: replaces path segments that look like identifiers with placeholders
/// so span names and `http.route` stay low-cardinality.
///
/// Per segment (between `/`), first rule that matches:
/// - all ASCII digits → `{id}`
/// - a UUID (`8-4-4-4-12` hex digits) → `{uuid}`
/// - ≥ 8 hex digits with at least one decimal digit (hashes, hex ids, 32-hex UUIDs) → `{hash}`
/// - ≥ 16 chars of `[A-Za-z0-9_-]` with letters and digits that switch between lower case,
///   upper case and digits at least 3 times (ULIDs, nanoids, `cus_NffrFeUfNV2Hib`-style
///   tokens; not slugs like `get-user-profile-v2`) → `{id}`
///
/// Anything after `?` or `#` is ignored; at most [`MAX_ROUTE_SEGMENTS`] segments are kept and
/// `/...` marks the cut; an empty path is `/`; a path not starting with `/` gets one.
/// Borrows when nothing changes.
pub fn route_of(path: &str) -> Cow<'_, str> {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    if path.is_empty() {
        return Cow::Borrowed("/");
    }
    let (rest, mut changed) = match path.strip_prefix('/') {
        // Most paths are routes already: no copy for them.
        Some(rest) if is_route(rest) => return Cow::Borrowed(path),
        Some(rest) => (rest, false),
        None => (path, true),
    };
    let mut out = String::with_capacity(path.len() + 1);
    let mut segments = rest.split('/').enumerate().peekable();
    while let Some((i, seg)) = segments.next() {
        if i == MAX_ROUTE_SEGMENTS {
            // A trailing slash right after the last kept segment is not a cut.
            if !(seg.is_empty() && segments.peek().is_none()) {
                out.push_str("/...");
                changed = true;
                break;
            }
        }
        out.push('/');
        match placeholder(seg) {
            Some(p) => {
                out.push_str(p);
                changed = true;
            }
            None => out.push_str(seg),
        }
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(path)
    }
}

/// Whether the segments of `rest` (a path after its leading `/`) stay as they are: none is
/// replaced and there are not too many.
fn is_route(rest: &str) -> bool {
    let mut segments = rest.split('/').enumerate().peekable();
    while let Some((i, seg)) = segments.next() {
        let trailing_slash = seg.is_empty() && segments.peek().is_none();
        if (i == MAX_ROUTE_SEGMENTS && !trailing_slash) || placeholder(seg).is_some() {
            return false;
        }
    }
    true
}

fn placeholder(seg: &str) -> Option<&'static str> {
    let b = seg.as_bytes();
    if b.is_empty() {
        return None;
    }
    if b.iter().all(u8::is_ascii_digit) {
        return Some("{id}");
    }
    if is_uuid(b) {
        return Some("{uuid}");
    }
    if b.len() >= 8 && b.iter().all(u8::is_ascii_hexdigit) && b.iter().any(u8::is_ascii_digit) {
        return Some("{hash}");
    }
    if looks_like_token(b) {
        return Some("{id}");
    }
    None
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn looks_like_token(b: &[u8]) -> bool {
    if b.len() < 16
        || !b
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
    {
        return false;
    }
    if !b.iter().any(u8::is_ascii_digit) || !b.iter().any(u8::is_ascii_alphabetic) {
        return false;
    }
    let class = |c: u8| -> u8 {
        if c.is_ascii_digit() {
            0
        } else if c.is_ascii_lowercase() {
            1
        } else {
            2
        }
    };
    let mut switches = 0;
    let mut last = None;
    for &c in b.iter().filter(|c| c.is_ascii_alphanumeric()) {
        let k = class(c);
        if last.is_some_and(|l| l != k) {
            switches += 1;
        }
        last = Some(k);
    }
    switches >= 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_examples() {
        assert_eq!(
            route_of("/users/123/orders/9f8e7d6c"),
            "/users/{id}/orders/{hash}"
        );
        assert_eq!(route_of("/v1/items"), "/v1/items");
        assert_eq!(route_of("/api/v2/x"), "/api/v2/x");
        assert_eq!(route_of(""), "/");
        assert_eq!(route_of("/"), "/");
    }

    #[test]
    fn route_borrows_when_unchanged() {
        assert!(matches!(route_of("/v1/items"), Cow::Borrowed(_)));
        assert!(matches!(route_of("/a/b/"), Cow::Borrowed(_)));
        assert!(matches!(route_of("/users/1"), Cow::Owned(_)));
    }

    #[test]
    fn route_digits() {
        assert_eq!(route_of("/0"), "/{id}");
        assert_eq!(
            route_of("/orders/20240101/items/7"),
            "/orders/{id}/items/{id}"
        );
        assert_eq!(route_of("/a/12345678901234567890123"), "/a/{id}");
    }

    #[test]
    fn route_uuid() {
        assert_eq!(
            route_of("/u/123e4567-e89b-12d3-a456-426614174000"),
            "/u/{uuid}"
        );
        assert_eq!(
            route_of("/u/123E4567-E89B-12D3-A456-426614174000/x"),
            "/u/{uuid}/x"
        );
        // Wrong shape: not a UUID, but still an id-like token.
        assert_eq!(
            route_of("/u/123e4567e-89b-12d3-a456-42661417400"),
            "/u/{id}"
        );
    }

    #[test]
    fn route_hex() {
        assert_eq!(route_of("/blob/9f8e7d6c"), "/blob/{hash}");
        assert_eq!(route_of("/blob/DEADBEEF00"), "/blob/{hash}");
        assert_eq!(
            route_of("/c/da39a3ee5e6b4b0d3255bfef95601890afd80709"),
            "/c/{hash}"
        );
        assert_eq!(route_of("/u/123e4567e89b12d3a456426614174000"), "/u/{hash}");
        // Too short, or hex letters only (words like "deadbeef", "facade").
        assert_eq!(route_of("/x/9f8e7d6"), "/x/9f8e7d6");
        assert_eq!(route_of("/x/deadbeef"), "/x/deadbeef");
        assert_eq!(route_of("/x/facade"), "/x/facade");
    }

    #[test]
    fn route_tokens() {
        assert_eq!(route_of("/c/cus_NffrFeUfNV2Hib"), "/c/{id}");
        assert_eq!(route_of("/o/01ARZ3NDEKTSV4RRFFQ69G5FAV"), "/o/{id}");
        assert_eq!(route_of("/s/k3j5h2g7x9q1s4z6"), "/s/{id}");
        assert_eq!(route_of("/n/V1StGXR8_Z5jdHi6B-myT"), "/n/{id}");
        // Slugs and words stay.
        assert_eq!(
            route_of("/api/get-user-profile-v2"),
            "/api/get-user-profile-v2"
        );
        assert_eq!(
            route_of("/api/myservice2024report"),
            "/api/myservice2024report"
        );
        assert_eq!(
            route_of("/docs/getting-started-guide"),
            "/docs/getting-started-guide"
        );
        // Short mixed tokens stay.
        assert_eq!(route_of("/a/b2C3d4"), "/a/b2C3d4");
        // Other characters: not a token.
        assert_eq!(
            route_of("/f/report.2024.v3.final.pdf"),
            "/f/report.2024.v3.final.pdf"
        );
    }

    #[test]
    fn route_segment_cap() {
        assert_eq!(
            route_of("/1/2/3/4/5/6/7/8"),
            "/{id}/{id}/{id}/{id}/{id}/{id}/{id}/{id}"
        );
        assert_eq!(route_of("/a/b/c/d/e/f/g/h"), "/a/b/c/d/e/f/g/h");
        assert_eq!(route_of("/a/b/c/d/e/f/g/h/"), "/a/b/c/d/e/f/g/h/");
        assert_eq!(route_of("/a/b/c/d/e/f/g/h/i"), "/a/b/c/d/e/f/g/h/...");
        assert_eq!(route_of("/a/b/c/d/e/f/g/h/i/j/k/"), "/a/b/c/d/e/f/g/h/...");
    }

    #[test]
    fn route_odd_inputs() {
        assert_eq!(route_of("/users/1?x=2"), "/users/{id}");
        assert_eq!(route_of("/a#frag"), "/a");
        assert_eq!(route_of("?x"), "/");
        assert_eq!(route_of("relative/1"), "/relative/{id}");
        assert_eq!(route_of("//"), "//");
        assert_eq!(route_of("/a//1/"), "/a//{id}/");
        assert_eq!(route_of("/ü/ñ/12"), "/ü/ñ/{id}");
    }

    // ---- kind, name, method ----
}
