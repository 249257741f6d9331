//! NAT resolution through the kernel's connection tracking (ctnetlink): how the client of a
//! connection addressed it before a DNAT/SNAT rule rewrote it (kube-proxy's Service virtual
//! IPs, masquerading). A SERVER end sees `client → pod:targetPort`; the client dialled
//! `client → serviceIP:port`, possibly from another address than the one the server sees. The
//! conntrack entry holds both: its *reply* tuple is what the server sees (reversed), its
//! *original* tuple what the client used. One `IPCTNL_MSG_CT_GET` by reply tuple answers it.
//!
//! The protocol is small and fixed (one request of at most 96 bytes, one reply), so it is
//! built and parsed here over a raw `NETLINK_NETFILTER` socket rather than through a netlink
//! crate: `netlink-packet-netfilter` has no conntrack messages. Every length is checked; a
//! reply that does not parse is an error, never a guessed address. The kernel answers a GET
//! synchronously (inside `send`), so a lookup costs one round trip of two syscalls; a receive
//! timeout still bounds it. The kernel requires CAP_NET_ADMIN for every ctnetlink message.
//!
//! Lookups use the conntrack table of the agent's own network namespace: the host's, where
//! kube-proxy's rules (iptables, nftables or IPVS with conntrack) are applied.
use std::{
    fmt,
    io::{self, ErrorKind},
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLA_HDRLEN: usize = 4;
const NLM_F_REQUEST: u16 = 0x1;
const NLMSG_ERROR: u16 = 0x2;
const NLMSG_DONE: u16 = 0x3;
const NLA_F_NESTED: u16 = 0x8000;
/// The attribute type without the nested / byte-order flags.
const NLA_TYPE_MASK: u16 = 0x3fff;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const IPPROTO_TCP: u8 = 6;
/// The largest request (IPv6): headers 20 + tuple 76.
pub const MAX_REQUEST: usize = 96;
/// Replies are a few hundred bytes; a longer one is refused as garbled.
const RECV_BUF: usize = 4096;
/// Stale replies (of requests that timed out) skipped before giving up.
const MAX_STALE: usize = 4;

/// One direction of a TCP connection as conntrack keys it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

impl Tuple {
    fn reversed(self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
        }
    }
}

/// A conntrack entry's two tuples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// As the connection's initiator sent its first packet.
    pub orig: Tuple,
    /// As the answers travel (after NAT: from the real destination to the real source).
    pub reply: Tuple,
}

/// Why a lookup gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatError {
    /// The kernel tracks no such connection.
    NotFound,
    /// The kernel refused the request (errno), e.g. EPERM without CAP_NET_ADMIN.
    Kernel(i32),
    /// The reply ended before a length said it would.
    Truncated,
    /// The reply is not the answer to the request.
    Garbled(&'static str),
    /// No reply within the timeout.
    Timeout,
    /// The socket failed.
    Io(ErrorKind),
}

impl fmt::Display for NatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound => write!(f, "no such conntrack entry"),
            Self::Kernel(e) => write!(f, "{}", io::Error::from_raw_os_error(*e)),
            Self::Truncated => write!(f, "truncated conntrack reply"),
            Self::Garbled(what) => write!(f, "garbled conntrack reply: {what}"),
            Self::Timeout => write!(f, "no conntrack reply in time"),
            Self::Io(kind) => write!(f, "conntrack socket: {kind}"),
        }
    }
}

impl std::error::Error for NatError {}

/// Where a connection's addresses came from before NAT, as its SERVER end sees it.
pub trait NatLookup: Send {
    /// For the connection a server sees as `remote → local`: the (client address, address
    /// the client dialled) when NAT rewrote either, `Ok(None)` when the addresses are the
    /// client's own (also when conntrack does not track the connection: then nothing NAT-ed it).
    fn client_view(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<Option<(SocketAddr, SocketAddr)>, NatError>;
}

/// Builds the GET of the entry whose reply tuple is `reply` into `buf`; returns its length.
/// `None` for mixed address families.
pub fn get_request(seq: u32, reply: Tuple, buf: &mut [u8; MAX_REQUEST]) -> Option<usize> {
    let family = match (reply.src.ip(), reply.dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => libc::AF_INET as u8,
        (IpAddr::V6(_), IpAddr::V6(_)) => libc::AF_INET6 as u8,
        _ => return None,
    };
    let mut w = Writer { buf, len: 0 };
    w.bytes(&[0; NLMSG_HDRLEN]);
    w.bytes(&[family, 0, 0, 0]); // nfgenmsg: family, NFNETLINK_V0, res_id 0
    let tuple = w.nest_start(CTA_TUPLE_REPLY);
    let ip = w.nest_start(CTA_TUPLE_IP);
    match (reply.src.ip(), reply.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            w.attr(CTA_IP_V4_SRC, &s.octets());
            w.attr(CTA_IP_V4_DST, &d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            w.attr(CTA_IP_V6_SRC, &s.octets());
            w.attr(CTA_IP_V6_DST, &d.octets());
        }
        _ => return None,
    }
    w.nest_end(ip);
    let proto = w.nest_start(CTA_TUPLE_PROTO);
    w.attr(CTA_PROTO_NUM, &[IPPROTO_TCP]);
    w.attr(CTA_PROTO_SRC_PORT, &reply.src.port().to_be_bytes());
    w.attr(CTA_PROTO_DST_PORT, &reply.dst.port().to_be_bytes());
    w.nest_end(proto);
    w.nest_end(tuple);
    let len = w.len;
    let kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET;
    buf[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
    buf[4..6].copy_from_slice(&kind.to_ne_bytes());
    buf[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    buf[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0: the kernel fills in the socket's port id.
    Some(len)
}

/// Appends attributes to a fixed buffer (the request's size is bounded by construction).
struct Writer<'a> {
    buf: &'a mut [u8; MAX_REQUEST],
    len: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, b: &[u8]) {
        self.buf[self.len..self.len + b.len()].copy_from_slice(b);
        self.len += b.len();
    }
    fn header(&mut self, at: usize, len: usize, kind: u16) {
        self.buf[at..at + 2].copy_from_slice(&(len as u16).to_ne_bytes());
        self.buf[at + 2..at + 4].copy_from_slice(&kind.to_ne_bytes());
    }
    fn attr(&mut self, kind: u16, value: &[u8]) {
        let at = self.len;
        self.bytes(&[0; NLA_HDRLEN]);
        self.bytes(value);
        self.header(at, NLA_HDRLEN + value.len(), kind);
        let padded = align4(self.len);
        self.buf[self.len..padded].fill(0);
        self.len = padded;
    }
    fn nest_start(&mut self, kind: u16) -> (usize, u16) {
        let at = self.len;
        self.bytes(&[0; NLA_HDRLEN]);
        (at, kind)
    }
    fn nest_end(&mut self, (at, kind): (usize, u16)) {
        self.header(at, self.len - at, kind | NLA_F_NESTED);
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The conntrack entry in the reply to request `seq`. `Ok(None)`: this message answers
/// another request (a stale reply to skip).
pub fn parse_reply(msg: &[u8], seq: u32) -> Result<Option<Entry>, NatError> {
    let header = msg.get(..NLMSG_HDRLEN).ok_or(NatError::Truncated)?;
    let len = u32::from_ne_bytes(header[0..4].try_into().unwrap_or_default()) as usize;
    let kind = u16::from_ne_bytes([header[4], header[5]]);
    let got_seq = u32::from_ne_bytes(header[8..12].try_into().unwrap_or_default());
    if len < NLMSG_HDRLEN {
        return Err(NatError::Garbled("message length below its header"));
    }
    let body = msg.get(NLMSG_HDRLEN..len).ok_or(NatError::Truncated)?;
    if got_seq != seq {
        return Ok(None);
    }
    match kind {
        NLMSG_ERROR => {
            let errno = body.get(..4).ok_or(NatError::Truncated)?;
            // The kernel sends -errno; i32::MIN has no negation (found by fuzzing).
            let errno = i32::from_ne_bytes(errno.try_into().unwrap_or_default())
                .checked_neg()
                .ok_or(NatError::Garbled("error code out of range"))?;
            Err(match errno {
                libc::ENOENT => NatError::NotFound,
                0 => NatError::Garbled("an acknowledgement instead of an entry"),
                e => NatError::Kernel(e),
            })
        }
        NLMSG_DONE => Err(NatError::NotFound),
        k if k == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW => {
            let attrs = body.get(NFGENMSG_LEN..).ok_or(NatError::Truncated)?;
            let (mut orig, mut reply) = (None, None);
            for attr in Attrs(attrs) {
                let (kind, value) = attr?;
                match kind {
                    CTA_TUPLE_ORIG => orig = Some(parse_tuple(value)?),
                    CTA_TUPLE_REPLY => reply = Some(parse_tuple(value)?),
                    _ => {}
                }
            }
            match (orig, reply) {
                // One connection, one address family (fuzzing found a reply mixing them).
                (Some(orig), Some(reply)) if orig.src.is_ipv4() == reply.src.is_ipv4() => {
                    Ok(Some(Entry { orig, reply }))
                }
                (Some(_), Some(_)) => Err(NatError::Garbled("tuples of two address families")),
                _ => Err(NatError::Garbled("an entry without both tuples")),
            }
        }
        _ => Err(NatError::Garbled("unexpected message type")),
    }
}

/// The attributes of a netlink attribute stream: (type without flags, value).
struct Attrs<'a>(&'a [u8]);

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8]), NatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let Some(h) = self.0.get(..NLA_HDRLEN) else {
            self.0 = &[];
            return Some(Err(NatError::Truncated));
        };
        let len = u16::from_ne_bytes([h[0], h[1]]) as usize;
        let kind = u16::from_ne_bytes([h[2], h[3]]) & NLA_TYPE_MASK;
        let value = if len < NLA_HDRLEN {
            None
        } else {
            self.0.get(NLA_HDRLEN..len)
        };
        let Some(value) = value else {
            self.0 = &[];
            return Some(Err(if len < NLA_HDRLEN {
                NatError::Garbled("attribute length below its header")
            } else {
                NatError::Truncated
            }));
        };
        // The last attribute's padding may be left out.
        self.0 = self.0.get(align4(len)..).unwrap_or(&[]);
        Some(Ok((kind, value)))
    }
}

fn parse_tuple(b: &[u8]) -> Result<Tuple, NatError> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, None, None);
    for attr in Attrs(b) {
        let (kind, value) = attr?;
        match kind {
            CTA_TUPLE_IP => {
                for attr in Attrs(value) {
                    let (kind, v) = attr?;
                    let ip =
                        match kind {
                            CTA_IP_V4_SRC | CTA_IP_V4_DST => <[u8; 4]>::try_from(v)
                                .map(IpAddr::from)
                                .map_err(|_| NatError::Garbled("IPv4 address length"))?,
                            CTA_IP_V6_SRC | CTA_IP_V6_DST => <[u8; 16]>::try_from(v)
                                .map(IpAddr::from)
                                .map_err(|_| NatError::Garbled("IPv6 address length"))?,
                            _ => continue,
                        };
                    if matches!(kind, CTA_IP_V4_SRC | CTA_IP_V6_SRC) {
                        src = Some(ip);
                    } else {
                        dst = Some(ip);
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for attr in Attrs(value) {
                    let (kind, v) = attr?;
                    let port = || {
                        <[u8; 2]>::try_from(v)
                            .map(u16::from_be_bytes)
                            .map_err(|_| NatError::Garbled("port length"))
                    };
                    match kind {
                        CTA_PROTO_NUM => proto = v.first().copied(),
                        CTA_PROTO_SRC_PORT => sport = Some(port()?),
                        CTA_PROTO_DST_PORT => dport = Some(port()?),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if proto != Some(IPPROTO_TCP) {
        return Err(NatError::Garbled("not a TCP tuple"));
    }
    match (src, dst, sport, dport) {
        (Some(s), Some(d), Some(sp), Some(dp)) if s.is_ipv4() == d.is_ipv4() => Ok(Tuple {
            src: SocketAddr::new(s, sp),
            dst: SocketAddr::new(d, dp),
        }),
        _ => Err(NatError::Garbled("incomplete tuple")),
    }
}

/// What the server's end of `entry` says about its client: the (client, dialled) addresses
/// when NAT rewrote them, `None` when it did not. `server_view` is the tuple of the packets the
/// server sends (server → client): it must be the entry's reply tuple.
pub fn client_view_of(
    entry: &Entry,
    server_view: Tuple,
) -> Result<Option<(SocketAddr, SocketAddr)>, NatError> {
    if entry.reply != server_view {
        return Err(NatError::Garbled("an entry for another connection"));
    }
    if entry.orig == server_view.reversed() {
        return Ok(None);
    }
    Ok(Some((entry.orig.src, entry.orig.dst)))
}

/// A ctnetlink socket of the agent's network namespace.
pub struct Conntrack {
    fd: OwnedFd,
    seq: u32,
    buf: Box<[u8; RECV_BUF]>,
}

impl Conntrack {
    /// Opens the socket and checks with one lookup that the kernel answers (conntrack
    /// netlink present, CAP_NET_ADMIN held). `timeout` bounds every later lookup.
    pub fn open(timeout: Duration) -> Result<Self, NatError> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(NatError::Io(io::Error::last_os_error().kind()));
        }
        // SAFETY: `fd` is a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros().max(1) as libc::suseconds_t,
        };
        // SAFETY: `tv` is a valid timeval for the length given.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(NatError::Io(io::Error::last_os_error().kind()));
        }
        let mut ct = Self {
            fd,
            seq: 0,
            buf: Box::new([0; RECV_BUF]),
        };
        // A tuple no connection has: "not found" proves the kernel answers.
        let probe = SocketAddr::from(([127, 0, 0, 1], 0));
        match ct.lookup(Tuple {
            src: probe,
            dst: probe,
        }) {
            Ok(_) | Err(NatError::NotFound) => Ok(ct),
            Err(e) => Err(e),
        }
    }

    /// The entry whose reply tuple is `reply`.
    pub fn lookup(&mut self, reply: Tuple) -> Result<Entry, NatError> {
        self.seq = self.seq.wrapping_add(1);
        let mut req = [0u8; MAX_REQUEST];
        let len = get_request(self.seq, reply, &mut req)
            .ok_or(NatError::Garbled("mixed address families"))?;
        // SAFETY: `req[..len]` is initialised memory of the length given.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), req.as_ptr().cast(), len, 0) };
        if sent != len as isize {
            return Err(NatError::Io(io::Error::last_os_error().kind()));
        }
        for _ in 0..MAX_STALE {
            // SAFETY: the buffer is valid for its length; MSG_TRUNC reports a longer message.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    RECV_BUF,
                    libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return Err(match e.kind() {
                    ErrorKind::WouldBlock | ErrorKind::TimedOut => NatError::Timeout,
                    kind => NatError::Io(kind),
                });
            }
            let n = n as usize;
            if n > RECV_BUF {
                return Err(NatError::Garbled("reply longer than expected"));
            }
            if let Some(entry) = parse_reply(&self.buf[..n], self.seq)? {
                return Ok(entry);
            }
        }
        Err(NatError::Garbled("only replies to other requests"))
    }
}

impl NatLookup for Conntrack {
    fn client_view(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<Option<(SocketAddr, SocketAddr)>, NatError> {
        let server_view = Tuple {
            src: local,
            dst: remote,
        };
        match self.lookup(server_view) {
            Ok(entry) => client_view_of(&entry, server_view),
            // NAT works on conntrack entries: an untracked connection was not rewritten.
            Err(NatError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from this kernel (6.18) in a network namespace with
    /// `iptables -t nat -A OUTPUT -d 10.96.0.10 -p tcp --dport 80 -j DNAT --to-destination
    /// 10.244.0.2:8080` after `curl --local-port 41000 http://10.96.0.10/`: the request (seq 2)
    /// for the reply tuple 10.244.0.2:8080 → 10.244.0.2:41000 and the kernel's answer.
    const V4_REQUEST: &str = "48000000010101000200000000000000020000003400028014000180080001000af40002080002000af400021c0002800500010006000000060002001f90000006000300a0280000";
    const V4_REPLY: &str = "d40000000001020002000000b4370000020000003400018014000180080001000af40002080002000a60000a1c000280050001000600000006000200a028000006000300005000003400028014000180080001000af40002080002000af400021c0002800500010006000000060002001f90000006000300a028000008000300000001ae080008000000000008000c00bb7857f408000b00000000020800070000000077300004802c0001800500010007000000050002000a000000050003000a00000006000400270000000600050023000000";
    /// The same with ip6tables: [fd00:96::10]:80 DNAT to [fd00:244::2]:8080, local port 41001.
    const V6_REQUEST: &str = "600000000101010002000000000000000a0000004c0002802c00018014000300fd00024400000000000000000000000214000400fd0002440000000000000000000000021c0002800500010006000000060002001f90000006000300a0290000";
    const V6_REPLY: &str = "040100000001020002000000c13700000a0000004c0001802c00018014000300fd00024400000000000000000000000214000400fd0000960000000000000000000000101c000280050001000600000006000200a029000006000300005000004c0002802c00018014000300fd00024400000000000000000000000214000400fd0002440000000000000000000000021c0002800500010006000000060002001f90000006000300a029000008000300000001ae080008000000000008000c003348ec6708000b00000000020800070000000077300004802c0001800500010007000000050002000a000000050003000a00000006000400270000000600050023000000";
    /// The kernel's answer to the IPv4 request before any connection existed: ENOENT.
    const NOT_FOUND_REPLY: &str = "5c0000000200000002000000f2350000feffffff48000000010101000200000000000000020000003400028014000180080001000af40002080002000af400021c0002800500010006000000060002001f90000006000300a0280000";

    fn bytes(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    fn tuple(src: &str, dst: &str) -> Tuple {
        Tuple {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
        }
    }

    fn v4_server() -> Tuple {
        tuple("10.244.0.2:8080", "10.244.0.2:41000")
    }
    fn v6_server() -> Tuple {
        tuple("[fd00:244::2]:8080", "[fd00:244::2]:41001")
    }

    #[test]
    fn requests_are_byte_identical_to_the_ones_the_kernel_answered() {
        for (server, want) in [(v4_server(), V4_REQUEST), (v6_server(), V6_REQUEST)] {
            let mut buf = [0u8; MAX_REQUEST];
            let n = get_request(2, server, &mut buf).unwrap();
            assert_eq!(&buf[..n], &bytes(want)[..], "{server:?}");
        }
        let mixed = tuple("10.0.0.1:1", "[::1]:2");
        assert_eq!(get_request(1, mixed, &mut [0; MAX_REQUEST]), None);
    }

    #[test]
    fn kernel_replies_give_the_address_the_client_dialled() {
        let e = parse_reply(&bytes(V4_REPLY), 2).unwrap().unwrap();
        assert_eq!(e.orig, tuple("10.244.0.2:41000", "10.96.0.10:80"));
        assert_eq!(e.reply, v4_server());
        assert_eq!(
            client_view_of(&e, v4_server()).unwrap(),
            Some((e.orig.src, e.orig.dst))
        );
        let e = parse_reply(&bytes(V6_REPLY), 2).unwrap().unwrap();
        assert_eq!(e.orig, tuple("[fd00:244::2]:41001", "[fd00:96::10]:80"));
        assert_eq!(
            client_view_of(&e, v6_server())
                .unwrap()
                .map(|v| v.1.to_string()),
            Some("[fd00:96::10]:80".to_owned())
        );
    }

    #[test]
    fn no_nat_no_entry_and_other_answers() {
        // Not translated: the client's own addresses.
        let server = v4_server();
        let plain = Entry {
            orig: server.reversed(),
            reply: server,
        };
        assert_eq!(client_view_of(&plain, server), Ok(None));
        // The answer to another connection is refused, never used.
        let e = parse_reply(&bytes(V4_REPLY), 2).unwrap().unwrap();
        assert!(matches!(
            client_view_of(&e, tuple("10.244.0.2:8080", "10.244.0.2:41002")),
            Err(NatError::Garbled(_))
        ));
        assert_eq!(
            parse_reply(&bytes(NOT_FOUND_REPLY), 2),
            Err(NatError::NotFound)
        );
        // A reply to an earlier request (its sequence number) is skipped.
        assert_eq!(parse_reply(&bytes(V4_REPLY), 3), Ok(None));
        let mut eperm = bytes(NOT_FOUND_REPLY);
        eperm[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert_eq!(parse_reply(&eperm, 2), Err(NatError::Kernel(libc::EPERM)));
    }

    #[test]
    fn truncated_or_garbled_replies_are_clean_errors() {
        for reply in [V4_REPLY, V6_REPLY] {
            let full = bytes(reply);
            for n in 0..full.len() {
                assert_eq!(parse_reply(&full[..n], 2), Err(NatError::Truncated), "{n}");
            }
            // Every single-byte corruption parses or fails, never panics.
            for i in 0..full.len() {
                for v in [0x00, 0x01, 0x03, 0x7f, 0xff] {
                    let mut b = full.clone();
                    b[i] = v;
                    let _ = parse_reply(&b, 2);
                }
            }
        }
        let mut b = bytes(V4_REPLY);
        b[0..4].copy_from_slice(&8u32.to_ne_bytes());
        assert!(matches!(parse_reply(&b, 2), Err(NatError::Garbled(_))));
        // The first tuple's length (offset 20) below an attribute header.
        let mut b = bytes(V4_REPLY);
        b[20..22].copy_from_slice(&2u16.to_ne_bytes());
        assert!(matches!(parse_reply(&b, 2), Err(NatError::Garbled(_))));
        // UDP instead of TCP in the original tuple (CTA_PROTO_NUM's value at offset 52).
        let mut b = bytes(V4_REPLY);
        assert_eq!(b[52], IPPROTO_TCP);
        b[52] = 17;
        assert_eq!(
            parse_reply(&b, 2),
            Err(NatError::Garbled("not a TCP tuple"))
        );
        // An unexpected message type.
        let mut b = bytes(V4_REPLY);
        b[4] = 9;
        assert!(matches!(parse_reply(&b, 2), Err(NatError::Garbled(_))));
    }
}
