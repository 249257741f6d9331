//! Connection tracking: one entry per connection the kernel reported, with per-direction
//! reassembly by byte position feeding the protocol parsers.

pub mod db_losses;
pub mod nat;
pub mod table;

pub use table::{ConnTable, Finished, TableLimits, TableStats};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tracer_common::{AF_INET, AF_INET6, ConnAddr, Role};

/// What is known of a connection, for span attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnMeta {
    pub conn_id: u64,
    /// The traced process.
    pub pid: u32,
    /// The traced process's end.
    pub local: SocketAddr,
    /// The peer.
    pub remote: SocketAddr,
    pub role: Role,
    /// The bytes are a TLS connection's plaintext (from the TLS library probes).
    pub tls: bool,
}

/// Converts the kernel's address pair to socket addresses. `None` for a family we do not
/// know (never expected for TCP).
pub fn socket_addrs(addr: &ConnAddr) -> Option<(SocketAddr, SocketAddr)> {
    let ip = |bytes: &[u8; 16]| -> Option<IpAddr> {
        match addr.family {
            AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
                bytes[0], bytes[1], bytes[2], bytes[3],
            ))),
            AF_INET6 => {
                let v6 = Ipv6Addr::from(*bytes);
                // Dual-stack sockets report IPv4 peers as ::ffff:a.b.c.d; users expect a.b.c.d.
                Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
            }
            _ => None,
        }
    };
    Some((
        SocketAddr::new(ip(&addr.local_addr)?, addr.local_port),
        SocketAddr::new(ip(&addr.remote_addr)?, addr.remote_port),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_and_mapped_v6() {
        let mut a = ConnAddr {
            family: AF_INET,
            local_port: 8080,
            remote_port: 40000,
            ..Default::default()
        };
        a.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        a.remote_addr[..4].copy_from_slice(&[10, 1, 2, 3]);
        let (l, r) = socket_addrs(&a).unwrap();
        assert_eq!(l.to_string(), "127.0.0.1:8080");
        assert_eq!(r.to_string(), "10.1.2.3:40000");

        a.family = AF_INET6;
        a.local_addr = Ipv6Addr::LOCALHOST.octets();
        a.remote_addr = Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped().octets();
        let (l, r) = socket_addrs(&a).unwrap();
        assert_eq!(l.to_string(), "[::1]:8080");
        assert_eq!(r.to_string(), "192.0.2.1:40000");
    }
}
