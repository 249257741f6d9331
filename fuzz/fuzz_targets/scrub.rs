//! Arbitrary text through the built-in PII detectors of the redaction stage (the agent's
//! `pipeline/scrub.rs`, compiled here on its own: it depends on std only): no panic, the
//! structure is kept (as many `/`, `&` segments), nothing sensitive is left in what comes
//! out, scrubbing twice changes nothing more, and an unchanged text is borrowed.
#![no_main]

#[path = "../../tracer-user/src/pipeline/scrub.rs"]
mod scrub;

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;

fn check(name: &str, input: &str, f: fn(&str) -> Cow<'_, str>) {
    let once = f(input);
    let twice = f(&once);
    assert_eq!(twice, once, "{name}: idempotent on {input:?}");
    if once == input {
        assert!(matches!(once, Cow::Borrowed(_)), "{name}: borrowed when unchanged");
    }
}

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    check("path", text, scrub::scrub_path);
    check("query", text, scrub::scrub_query);
    check("url", text, scrub::scrub_url);
    check("name", text, scrub::scrub_name);
    check("command line", text, scrub::scrub_command_line);
    let path = scrub::scrub_path(text);
    assert_eq!(path.matches('/').count(), text.matches('/').count());
    assert!(path.split('/').all(|seg| scrub::classify(seg).is_none()), "{text:?}");
    let query = scrub::scrub_query(text);
    assert_eq!(query.matches('&').count(), text.matches('&').count());
});
