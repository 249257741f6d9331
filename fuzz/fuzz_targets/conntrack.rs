//! Arbitrary netlink replies through the conntrack (ctnetlink) reply parser (the agent's
//! `conn/nat.rs`, compiled here on its own): the first 4 input bytes are the request's sequence
//! number, the rest the kernel's reply. No panic; an entry it returns is consistent (both tuples
//! of one address family), its server view is accepted, and a request for its reply tuple can
//! be built.
#![no_main]

#[path = "../../tracer-user/src/conn/nat.rs"]
#[allow(dead_code)]
mod nat;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((seq, reply)) = data.split_first_chunk::<4>() else {
        return;
    };
    if let Ok(Some(entry)) = nat::parse_reply(reply, u32::from_le_bytes(*seq)) {
        let v4 = entry.orig.src.is_ipv4();
        for a in [entry.orig.src, entry.orig.dst, entry.reply.src, entry.reply.dst] {
            assert_eq!(a.is_ipv4(), v4, "{entry:?}");
        }
        assert!(nat::client_view_of(&entry, entry.reply).is_ok(), "{entry:?}");
        let mut buf = [0u8; nat::MAX_REQUEST];
        assert!(nat::get_request(1, entry.reply, &mut buf).is_some(), "{entry:?}");
    }
});
