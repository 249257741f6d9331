//! The `ot` member of W3C `tracestate` (OpenTelemetry's): reading and setting its `th`
//! (sampling threshold) sub-key, keeping every other member and sub-key.
//!
//! Self-contained (std and `tracer_common` only): the `sampling_threshold` fuzz target
//! compiles this file on its own.
use tracer_common::sampling::{TH_DIGITS, encode_threshold, parse_threshold};

/// W3C: at most 32 list members; beyond, the rightmost are dropped.
const MAX_MEMBERS: usize = 32;

fn members(tracestate: &str) -> impl Iterator<Item = &str> {
    tracestate
        .split(',')
        .map(|m| m.trim_matches([' ', '\t']))
        .filter(|m| !m.is_empty())
}

/// Sub-keys (`key:value`) of the `ot` members, `th` left out.
fn ot_subkeys_but_th(tracestate: &str) -> impl Iterator<Item = &str> {
    members(tracestate)
        .filter_map(|m| m.strip_prefix("ot="))
        .flat_map(|v| v.split(';'))
        .filter(|sub| !sub.is_empty() && !sub.starts_with("th:"))
}

fn others(tracestate: &str) -> impl Iterator<Item = &str> {
    members(tracestate).filter(|m| !m.starts_with("ot="))
}

/// `tracestate` whose `ot` member carries `th:<threshold>`: the member comes first (W3C: a
/// modified member moves to the left), its other sub-keys (`rv`, ...) are kept, and so are the
/// other members (at most 32 in all).
pub fn with_threshold(tracestate: Option<&str>, threshold: u64) -> String {
    let mut th = [0u8; TH_DIGITS];
    let n = encode_threshold(threshold, &mut th);
    let ts = tracestate.unwrap_or("");
    let mut out = String::with_capacity(8 + n + ts.len());
    out.push_str("ot=th:");
    // Hex digits only: always UTF-8.
    out.push_str(std::str::from_utf8(&th[..n]).unwrap_or("0"));
    for sub in ot_subkeys_but_th(ts) {
        out.push(';');
        out.push_str(sub);
    }
    for m in others(ts).take(MAX_MEMBERS - 1) {
        out.push(',');
        out.push_str(m);
    }
    out
}

/// `tracestate` without the `ot` member's `th` (a span kept for another reason than its
/// probability: its weight is unknown); `None` when nothing is left.
pub fn without_threshold(tracestate: &str) -> Option<String> {
    let mut out = String::with_capacity(tracestate.len());
    for (i, sub) in ot_subkeys_but_th(tracestate).enumerate() {
        out.push_str(if i == 0 { "ot=" } else { ";" });
        out.push_str(sub);
    }
    for m in others(tracestate) {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(m);
    }
    (!out.is_empty()).then_some(out)
}

/// The threshold in the `ot` member's `th`, when there is a valid one.
pub fn threshold_in(tracestate: &str) -> Option<u64> {
    members(tracestate)
        .filter_map(|m| m.strip_prefix("ot="))
        .flat_map(|v| v.split(';'))
        .find_map(|sub| sub.strip_prefix("th:"))
        .and_then(|th| parse_threshold(th.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_th_first_and_keeps_the_rest() {
        assert_eq!(with_threshold(None, 0xc0_0000_0000_0000), "ot=th:c");
        assert_eq!(with_threshold(Some(""), 0), "ot=th:0");
        assert_eq!(
            with_threshold(
                Some("rojo=00f067aa0ba902b7, ot=rv:abcdef01234567;th:8 ,congo=t61"),
                0xc0_0000_0000_0000
            ),
            "ot=th:c;rv:abcdef01234567,rojo=00f067aa0ba902b7,congo=t61"
        );
        assert_eq!(threshold_in(&with_threshold(Some("ot=th:zz"), 1)), Some(1));
    }

    #[test]
    fn at_most_32_members() {
        let many: Vec<String> = (0..40).map(|i| format!("k{i}=v")).collect();
        let out = with_threshold(Some(&many.join(",")), 0);
        assert_eq!(out.split(',').count(), 32);
        assert!(out.starts_with("ot=th:0,k0=v,"));
    }

    #[test]
    fn removing_th() {
        assert_eq!(without_threshold("ot=th:c"), None);
        assert_eq!(
            without_threshold("ot=th:c;rv:01,a=b").as_deref(),
            Some("ot=rv:01,a=b")
        );
        assert_eq!(without_threshold("a=b,ot=th:8").as_deref(), Some("a=b"));
    }

    #[test]
    fn reading_th() {
        assert_eq!(threshold_in("a=b,ot=rv:1;th:8"), Some(0x80_0000_0000_0000));
        assert_eq!(threshold_in("a=b"), None);
        assert_eq!(threshold_in("ot=th:"), None);
    }
}
