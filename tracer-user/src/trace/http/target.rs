//! The request target (`/p?q`, `http://h/p`, `h:443`, `*`) and `host[:port]` authorities, in
//! the pieces the `url.*` and `server.*` attributes need.

/// The parts of a request target.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Target<'a> {
    /// Absolute-form only.
    pub(super) scheme: Option<&'a str>,
    /// Absolute-form (userinfo removed) or CONNECT's authority-form.
    pub(super) authority: Option<&'a str>,
    /// Absolute-form carried `user:pass@`.
    pub(super) userinfo: bool,
    /// `None` for authority-form and `*`.
    pub(super) path: Option<&'a str>,
    pub(super) query: Option<&'a str>,
}

pub(super) fn parse_target<'a>(method: &str, target: &'a str) -> Target<'a> {
    // "*": no path. "": not known (an HTTP/2 `:path` that referenced an HPACK entry from
    // before the agent joined the connection): no path rather than a wrong one.
    if target == "*" || target.is_empty() {
        return Target::default();
    }
    if method == "CONNECT" && !target.starts_with('/') {
        return Target {
            authority: Some(target),
            ..Default::default()
        };
    }
    if !target.starts_with('/')
        && let Some((scheme, rest)) = target.split_once("://")
        && is_scheme(scheme)
    {
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path_query) = rest.split_at(end);
        let (userinfo, authority) = match authority.rsplit_once('@') {
            Some((_, host)) => (true, host),
            None => (false, authority),
        };
        let (path, query) = split_path_query(path_query);
        return Target {
            scheme: Some(scheme),
            authority: Some(authority),
            userinfo,
            path: Some(if path.is_empty() { "/" } else { path }),
            query,
        };
    }
    let (path, query) = split_path_query(target);
    Target {
        path: Some(path),
        query,
        ..Default::default()
    }
}

fn is_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|c| c.is_ascii_alphabetic())
        && bytes.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
}

/// Splits `path?query#fragment` (fragments are never sent, but are dropped if present).
fn split_path_query(s: &str) -> (&str, Option<&str>) {
    let s = s.split('#').next().unwrap_or_default();
    match s.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (s, None),
    }
}

/// `host[:port]` or `[v6][:port]` → host (without brackets) and port (when valid).
pub(super) fn split_host_port(authority: &str) -> (&str, Option<u16>) {
    let authority = authority.trim();
    if let Some(rest) = authority.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, after)) => (host, after.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (rest, None),
        };
    }
    match authority.rsplit_once(':') {
        // A bare IPv6 address (invalid in Host, but seen) has several colons: all host.
        Some((host, port)) if !host.contains(':') && port.bytes().all(|c| c.is_ascii_digit()) => {
            (host, port.parse().ok())
        }
        _ => (authority, None),
    }
}

pub(super) fn default_port(scheme: &str) -> u16 {
    if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        80
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_host_port_cases() {
        assert_eq!(split_host_port("h"), ("h", None));
        assert_eq!(split_host_port("h:1"), ("h", Some(1)));
        assert_eq!(split_host_port("h:"), ("h", None));
        assert_eq!(split_host_port("h:x"), ("h:x", None));
        assert_eq!(split_host_port("[::1]"), ("::1", None));
        assert_eq!(split_host_port("[::1]:8"), ("::1", Some(8)));
        assert_eq!(split_host_port("::1"), ("::1", None));
        assert_eq!(split_host_port(" h:2 "), ("h", Some(2)));
    }
}
