//! Addresses as attribute text. Every span carries two or three of them: IPv4 is written
//! digit by digit into a string of the right capacity, which costs a fraction of `Display`'s
//! formatting machinery; IPv6 (rare on the hot path) still goes through `Display`.
use std::net::IpAddr;

/// `ip` as the conventions' `*.address` attributes carry it (`127.0.0.1`, `::1`).
pub fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut out = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_octet(&mut out, octet);
            }
            out
        }
        IpAddr::V6(v6) => v6.to_string(),
    }
}

fn push_octet(out: &mut String, octet: u8) {
    if octet >= 100 {
        out.push(char::from(b'0' + octet / 100));
    }
    if octet >= 10 {
        out.push(char::from(b'0' + octet / 10 % 10));
    }
    out.push(char::from(b'0' + octet % 10));
}

#[cfg(test)]
mod tests {
    use super::ip_text;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    #[test]
    fn addresses_read_as_display_writes_them() {
        for v4 in [
            [0, 0, 0, 0],
            [127, 0, 0, 1],
            [10, 9, 99, 100],
            [255, 255, 255, 255],
            [192, 168, 1, 20],
        ] {
            let ip = IpAddr::V4(Ipv4Addr::from(v4));
            assert_eq!(ip_text(ip), ip.to_string());
        }
        // Every octet value, in each position.
        for o in 0..=255u8 {
            let ip = IpAddr::V4(Ipv4Addr::new(o, 1, o, o));
            assert_eq!(ip_text(ip), ip.to_string());
        }
        for v6 in [Ipv6Addr::LOCALHOST, "fd00::a:1".parse().unwrap()] {
            assert_eq!(ip_text(IpAddr::V6(v6)), v6.to_string());
        }
    }
}
