//! Arbitrary `/proc/PID/cgroup` text through the container / pod parser (the agent's
//! `process/container.rs`, compiled here on its own: it depends on std only): no panic, and what
//! it returns has the shapes it documents — a container id of 64 lowercase hex digits, a pod
//! UID of 32 lowercase hex digits or a `-`-separated UUID — and each occurs in the input.
#![no_main]

#[path = "../../tracer-user/src/process/container.rs"]
#[allow(dead_code)]
mod container;

use libfuzzer_sys::fuzz_target;

fn lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fuzz_target!(|data: &[u8]| {
    let info = container::parse_cgroup(data);
    if let Some(id) = &info.id {
        assert!(id.len() == 64 && lower_hex(id), "{id:?}");
        assert!(data.windows(64).any(|w| w == id.as_bytes()), "{id:?} not in the input");
    }
    if let Some(uid) = &info.pod_uid {
        let uuid = uid.len() == 36
            && uid.char_indices().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => c == '-',
                _ => lower_hex(&c.to_string()),
            });
        assert!(uuid || (uid.len() == 32 && lower_hex(uid)), "{uid:?}");
        // In the input as written, with `-` or the systemd driver's `_`.
        let systemd = uid.replace('-', "_");
        let found = |needle: &[u8]| data.windows(needle.len()).any(|w| w == needle);
        assert!(found(uid.as_bytes()) || found(systemd.as_bytes()), "{uid:?} not in the input");
    }
});
