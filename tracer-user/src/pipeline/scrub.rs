//! The built-in PII detectors of the redaction stage: pure functions on text, each returning
//! the text borrowed when nothing in it is sensitive (no allocation on the common path).
//!
//! A path segment, query key or query value is replaced by a placeholder when it *is* (as a
//! whole) one of:
//! - an e-mail address (`local@domain.tld`, `@` also percent-encoded) → `{email}`;
//! - a payment card number: 13–19 digits (spaces or `-` between them allowed) passing the Luhn
//!   check → `{card}` (a number failing Luhn is an ordinary id and stays);
//! - a JWT (`eyJ….….…`, base64url) → `{jwt}`;
//! - a long bearer-like token: at least 32 characters of the base64/base64url alphabet with
//!   upper case, lower case and digits, and no run of more than 8 lower-case letters (words,
//!   slugs and hex ids, UUIDs included, are left alone) → `{token}`;
//! - an IPv4 or IPv6 address → `{ip}`.
//!
//! `process.command_line`: the value after a secret-looking flag (`--password x`,
//! `--token=x`, `--api-key x`, `-p`-style flags are not guessed) and the value of a
//! secret-looking `NAME=value` (`AWS_SECRET_ACCESS_KEY=…`, `DB_PASSWORD=…`) become `REDACTED`;
//! URL arguments are scrubbed as `url.full`, and an argument that is itself one of the above
//! becomes its placeholder.
//!
//! Self-contained (std only): the `scrub` fuzz target compiles this file on its own.
use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};

/// What replaces a masked command-line value.
pub const MASK: &str = "REDACTED";

/// A kind of sensitive text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pii {
    Email,
    Card,
    Jwt,
    Token,
    Ip,
}

impl Pii {
    pub fn placeholder(self) -> &'static str {
        match self {
            Self::Email => "{email}",
            Self::Card => "{card}",
            Self::Jwt => "{jwt}",
            Self::Token => "{token}",
            Self::Ip => "{ip}",
        }
    }
}

/// What `piece` (a path segment, query key or value) is, if it is sensitive. Cheap byte tests
/// decide which detector runs at all.
pub fn classify(piece: &str) -> Option<Pii> {
    let b = piece.as_bytes();
    if b.len() < 3 {
        return None;
    }
    if is_email(piece) {
        return Some(Pii::Email);
    }
    if b.len() >= 13 && b[0].is_ascii_digit() && is_card(b) {
        return Some(Pii::Card);
    }
    if b.starts_with(b"eyJ") && is_jwt(b) {
        return Some(Pii::Jwt);
    }
    if b.len() >= 32 && is_token(b) {
        return Some(Pii::Token);
    }
    if is_ip(piece) {
        return Some(Pii::Ip);
    }
    None
}

fn is_email(s: &str) -> bool {
    let (local, domain) = match s.split_once('@') {
        Some(p) => p,
        None => match s.find("%40") {
            Some(i) => (&s[..i], &s[i + 3..]),
            None => return false,
        },
    };
    let local_ok = !local.is_empty()
        && local
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._%+-".contains(&c));
    let Some((_, tld)) = domain.rsplit_once('.') else {
        return false;
    };
    local_ok
        && tld.len() >= 2
        && tld.bytes().all(|c| c.is_ascii_alphabetic())
        && domain
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'))
}

/// 13–19 digits, single spaces or dashes between groups, Luhn-valid.
fn is_card(b: &[u8]) -> bool {
    let mut digits = 0usize;
    let mut sum = 0u32;
    let mut prev_sep = true;
    // Luhn from the right: every second digit doubled.
    for &c in b.iter().rev() {
        match c {
            b'0'..=b'9' => {
                let mut d = u32::from(c - b'0');
                if digits % 2 == 1 {
                    d *= 2;
                    if d > 9 {
                        d -= 9;
                    }
                }
                sum += d;
                digits += 1;
                prev_sep = false;
            }
            b' ' | b'-' if !prev_sep => prev_sep = true,
            _ => return false,
        }
        if digits > 19 {
            return false;
        }
    }
    !prev_sep && (13..=19).contains(&digits) && sum.is_multiple_of(10)
}

fn is_base64url(part: &[u8]) -> bool {
    part.iter()
        .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
}

/// `header.payload.signature` (the signature may be empty: `alg: none`).
fn is_jwt(b: &[u8]) -> bool {
    let mut parts = b.split(|c| *c == b'.');
    let (Some(h), Some(p), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    h.len() >= 10 && !p.is_empty() && is_base64url(h) && is_base64url(p) && is_base64url(sig)
}

fn is_token(b: &[u8]) -> bool {
    let (mut upper, mut lower, mut digit) = (false, false, false);
    let mut lower_run = 0;
    for &c in b {
        match c {
            b'A'..=b'Z' => {
                upper = true;
                lower_run = 0;
            }
            b'a'..=b'z' => {
                lower = true;
                lower_run += 1;
                if lower_run > 8 {
                    return false;
                }
            }
            b'0'..=b'9' => {
                digit = true;
                lower_run = 0;
            }
            b'-' | b'_' | b'+' | b'=' | b'~' | b'.' => lower_run = 0,
            _ => return false,
        }
    }
    upper && lower && digit
}

fn is_ip(s: &str) -> bool {
    let b = s.as_bytes();
    if b.iter().all(|c| c.is_ascii_digit() || *c == b'.') {
        return b.iter().filter(|c| **c == b'.').count() == 3 && s.parse::<Ipv4Addr>().is_ok();
    }
    let inner = s
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(s);
    if inner.contains(':') {
        return inner.parse::<Ipv6Addr>().is_ok();
    }
    if inner.contains("%3A") || inner.contains("%3a") {
        return inner
            .replace("%3A", ":")
            .replace("%3a", ":")
            .parse::<Ipv6Addr>()
            .is_ok();
    }
    false
}

/// `text` split at `sep`, each piece passed through `f` (a replacement, or `None` to keep it).
fn map_pieces<'a>(
    text: &'a str,
    sep: char,
    mut f: impl FnMut(&'a str) -> Option<Cow<'a, str>>,
) -> Cow<'a, str> {
    let mut out: Option<String> = None;
    let mut at = 0;
    for (i, piece) in text.split(sep).enumerate() {
        let replaced = f(piece).filter(|r| r != piece);
        match (&mut out, replaced) {
            (None, None) => {}
            (None, Some(r)) => {
                let mut s = String::with_capacity(text.len() + 8);
                s.push_str(&text[..at]);
                s.push_str(&r);
                out = Some(s);
            }
            (Some(s), r) => {
                if i > 0 {
                    s.push(sep);
                }
                s.push_str(r.as_deref().unwrap_or(piece));
            }
        }
        at += piece.len() + sep.len_utf8();
    }
    match out {
        Some(s) => Cow::Owned(s),
        None => Cow::Borrowed(text),
    }
}

fn placeholder(piece: &str) -> Option<Cow<'_, str>> {
    classify(piece).map(|p| Cow::Borrowed(p.placeholder()))
}

/// Whether any piece of `text` can be sensitive: each detector of [`classify`] needs a digit
/// (cards, tokens, IPv4, `%40`, `%3A`), an `@`, a `:` (IPv6) or a JWT's `eyJ`. One pass over
/// the bytes spares splitting the common path or query that has none.
fn may_hold_pii(text: &str) -> bool {
    text.bytes()
        .any(|b| b.is_ascii_digit() || b == b'@' || b == b':')
        || text.contains("eyJ")
}

/// A path (`url.path`, `http.route`) with its sensitive segments replaced.
pub fn scrub_path(path: &str) -> Cow<'_, str> {
    if !may_hold_pii(path) {
        return Cow::Borrowed(path);
    }
    map_pieces(path, '/', placeholder)
}

/// A query (`a=1&b=2`) with its sensitive keys and values replaced.
pub fn scrub_query(query: &str) -> Cow<'_, str> {
    if !may_hold_pii(query) {
        return Cow::Borrowed(query);
    }
    map_pieces(query, '&', |param| {
        let scrubbed = map_pieces(param, '=', placeholder);
        match scrubbed {
            Cow::Owned(s) => Some(Cow::Owned(s)),
            Cow::Borrowed(_) => None,
        }
    })
}

/// `url.full`: its path and query scrubbed (the authority is the server: left alone).
pub fn scrub_url(url: &str) -> Cow<'_, str> {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let Some(path_at) = url[after_scheme..].find('/').map(|i| i + after_scheme) else {
        return Cow::Borrowed(url);
    };
    let (head, rest) = url.split_at(path_at);
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (rest, None),
    };
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let p = scrub_path(path);
    let q = query.map(scrub_query);
    if matches!(p, Cow::Borrowed(_)) && !matches!(q, Some(Cow::Owned(_))) {
        return Cow::Borrowed(url);
    }
    let mut out = String::with_capacity(url.len() + 8);
    out.push_str(head);
    out.push_str(&p);
    if let Some(q) = q {
        out.push('?');
        out.push_str(&q);
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    Cow::Owned(out)
}

/// A span name `METHOD /path`: its path scrubbed (other names are left alone).
pub fn scrub_name(name: &str) -> Cow<'_, str> {
    match name.split_once(' ') {
        Some((method, path)) if path.starts_with('/') => match scrub_path(path) {
            Cow::Borrowed(_) => Cow::Borrowed(name),
            Cow::Owned(p) => Cow::Owned(format!("{method} {p}")),
        },
        _ => Cow::Borrowed(name),
    }
}

/// Words of a flag or variable name that make its value a secret.
fn secret_name(name: &str) -> bool {
    let mut words = name
        .split(['-', '_', '.'])
        .filter(|w| !w.is_empty())
        .peekable();
    let mut last = "";
    while let Some(w) = words.next() {
        let lw = w.to_ascii_lowercase();
        if matches!(
            lw.as_str(),
            "password"
                | "passwd"
                | "pwd"
                | "pass"
                | "secret"
                | "token"
                | "apikey"
                | "credential"
                | "credentials"
                | "auth"
        ) {
            return true;
        }
        if words.peek().is_none() {
            last = w;
        }
    }
    last.eq_ignore_ascii_case("key")
}

/// `process.command_line` with the values of secret-looking flags and variables masked.
pub fn scrub_command_line(cmd: &str) -> Cow<'_, str> {
    let mut mask_next = false;
    map_pieces(cmd, ' ', |arg| {
        if mask_next && !arg.is_empty() {
            mask_next = false;
            return Some(Cow::Borrowed(MASK));
        }
        if let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) {
            match flag.split_once('=') {
                Some((name, value)) if !value.is_empty() && secret_name(name) => {
                    let keep = arg.len() - value.len();
                    return Some(Cow::Owned(format!("{}{MASK}", &arg[..keep])));
                }
                None if flag.len() > 1 && secret_name(flag) => mask_next = true,
                Some((_, value)) if value.contains("://") => {
                    if let Cow::Owned(u) = scrub_url(value) {
                        return Some(Cow::Owned(format!(
                            "{}={u}",
                            &arg[..arg.len() - value.len() - 1]
                        )));
                    }
                }
                _ => {}
            }
            return None;
        }
        match arg.split_once('=') {
            Some((name, value))
                if !value.is_empty()
                    && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
                    && secret_name(name) =>
            {
                Some(Cow::Owned(format!("{name}={MASK}")))
            }
            // A URL argument (`curl https://…/users/bob@example.com`), or one that is itself
            // sensitive, as in a path.
            _ if arg.contains("://") => match scrub_url(arg) {
                Cow::Owned(u) => Some(Cow::Owned(u)),
                Cow::Borrowed(_) => None,
            },
            _ => placeholder(arg),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";

    #[test]
    fn sensitive_segments_are_replaced() {
        assert_eq!(
            scrub_path("/users/bob.smith+x@example.co.uk/orders"),
            "/users/{email}/orders"
        );
        assert_eq!(scrub_path("/u/bob%40example.com"), "/u/{email}");
        assert_eq!(scrub_path("/pay/4111111111111111"), "/pay/{card}");
        assert_eq!(scrub_path("/pay/4111-1111-1111-1111/x"), "/pay/{card}/x");
        assert_eq!(scrub_path(&format!("/s/{JWT}")), "/s/{jwt}");
        assert_eq!(
            scrub_path("/k/ghp_Q8aZ3kL0pX7vN2mR5tY9wB4cE6dF1gH0jK"),
            "/k/{token}"
        );
        assert_eq!(scrub_path("/peer/10.1.2.3/ping"), "/peer/{ip}/ping");
        assert_eq!(scrub_path("/peer/2001:db8::1"), "/peer/{ip}");
        assert_eq!(scrub_path("/peer/[::1]"), "/peer/{ip}");
        assert_eq!(scrub_path("/peer/fe80%3A%3A1"), "/peer/{ip}");
    }

    #[test]
    fn the_pre_check_passes_every_sensitive_piece() {
        for piece in [
            JWT,
            "eyJhbGciOiJIUzI.eyJzdWIiOiJ.sig",
            "a@b.co",
            "a%40b.co",
            "4111111111111111",
            "10.1.2.3",
            "abc::def",
            "[::ab]",
            "fe80%3A%3A1",
            "ghp_Q8aZ3kL0pX7vN2mR5tY9wB4cE6dF1gH0jK",
        ] {
            assert!(classify(piece).is_some(), "{piece}");
            assert!(may_hold_pii(piece), "{piece}");
            assert_ne!(scrub_path(&format!("/x/{piece}")), format!("/x/{piece}"));
            assert_ne!(scrub_query(&format!("k={piece}")), format!("k={piece}"));
        }
        assert!(!may_hold_pii("/users/{id}/orders?sort=asc&page=first"));
    }

    #[test]
    fn ordinary_ids_are_left_alone() {
        for p in [
            "/pay/4111111111111112",
            "/orders/1234567890123",
            "/items/550e8400-e29b-41d4-a716-446655440000",
            "/blobs/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "/docs/ProductDescriptionForTheHomePage2024Edition",
            "/v1.2.3/a",
            "/api/get-user-profile-v2",
            "/time/12:30",
            "/",
            "",
            "/user@/x",
        ] {
            assert!(matches!(scrub_path(p), Cow::Borrowed(_)), "{p}");
        }
    }

    #[test]
    fn queries_urls_and_names() {
        assert_eq!(
            scrub_query("bob@example.com=REDACTED&page=2&to=10.0.0.1"),
            "{email}=REDACTED&page=2&to={ip}"
        );
        assert!(matches!(scrub_query("a=1&b"), Cow::Borrowed(_)));
        assert_eq!(
            scrub_url("http://10.0.0.9:8080/u/bob@example.com?x=1#frag"),
            "http://10.0.0.9:8080/u/{email}?x=1#frag"
        );
        assert!(matches!(scrub_url("http://h/p?q=1"), Cow::Borrowed(_)));
        assert!(matches!(
            scrub_url("http://bob@example.com"),
            Cow::Borrowed(_)
        ));
        assert_eq!(scrub_name("GET /pay/4111111111111111"), "GET /pay/{card}");
        assert!(matches!(
            scrub_name("demo.Greeter/SayHello"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn command_line_secrets_are_masked() {
        assert_eq!(
            scrub_command_line(
                "app --password hunter2 --port 80 --api-key=abc DB_PASSWORD=x AWS_SECRET_ACCESS_KEY=y"
            ),
            "app --password REDACTED --port 80 --api-key=REDACTED DB_PASSWORD=REDACTED AWS_SECRET_ACCESS_KEY=REDACTED"
        );
        assert_eq!(scrub_command_line("x --token=t"), "x --token=REDACTED");
        assert_eq!(
            scrub_command_line("curl -s http://h:1/u/bob@example.com bob@example.com"),
            "curl -s http://h:1/u/{email} {email}"
        );
        assert_eq!(
            scrub_command_line("app --url=http://h/u/bob@example.com"),
            "app --url=http://h/u/{email}"
        );
        for keep in [
            "python3 server.py 8080",
            "app --key-file /etc/k.pem --tokenizer bpe",
            "app --password",
            "env PATH=/bin",
        ] {
            assert!(
                matches!(scrub_command_line(keep), Cow::Borrowed(_)),
                "{keep}"
            );
        }
    }

    #[test]
    fn luhn() {
        assert!(!is_card(b"79927398713"), "11 digits: too short");
        assert!(is_card(b"5555555555554444"));
        assert!(is_card(b"378282246310005"));
        assert!(!is_card(b"5555555555554445"));
        assert!(!is_card(b"4111--1111111111111"));
        assert!(!is_card(b"41111111111111111111"));
    }
}
