//! Events sent from the kernel programs to the agent through the one ring buffer.
//!
//! Every record starts with an [`EventHeader`]; its `kind` says which struct follows.
//! A [`DataHeader`] record is followed by `captured_len` bytes of payload.

/// Largest payload prefix copied per syscall. The runtime limit (`Config::capture_limit`) may be
/// lower. A power of two so the kernel side can clamp lengths with a mask the verifier trusts.
pub const MAX_CAPTURE: usize = 4096;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Bytes read from or written to a tracked socket: a [`DataHeader`] and its payload.
    Data = 1,
    /// A tracked connection ended (close(2) of the fd, or the TCP socket reached TCP_CLOSE).
    Close = 2,
    /// A process called execve: its metadata (name, command line, environment) changed.
    Exec = 3,
    /// A process exited.
    Exit = 4,
}

impl EventKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Data,
            2 => Self::Close,
            3 => Self::Exec,
            4 => Self::Exit,
            _ => return None,
        })
    }
}

/// Which way the bytes went, seen from the traced process.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Written (sent) by the traced process.
    Egress = 0,
    /// Read (received) by the traced process.
    Ingress = 1,
}

impl Direction {
    pub fn from_u8(v: u8) -> Self {
        if v == 1 { Self::Ingress } else { Self::Egress }
    }
    pub fn index(self) -> usize {
        self as usize
    }
    pub fn opposite(self) -> Self {
        match self {
            Self::Egress => Self::Ingress,
            Self::Ingress => Self::Egress,
        }
    }
}

/// What the kernel knows of a connection's role: it accepted it (server) or connected it
/// (client). Connections that existed before the agent started are `Unknown`; userspace then
/// infers the role from which direction carries requests.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Unknown = 0,
    Client = 1,
    Server = 2,
}

impl Role {
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Client,
            2 => Self::Server,
            _ => Self::Unknown,
        }
    }
}

/// The syscall a data event came from (for debugging and the agent's own statistics).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Read = 1,
    Write = 2,
    Readv = 3,
    Writev = 4,
    Recvfrom = 5,
    Sendto = 6,
    Recvmsg = 7,
    Sendmsg = 8,
    Recvmmsg = 9,
    Sendmmsg = 10,
    /// Plaintext returned by an OpenSSL-API `SSL_read`/`SSL_read_ex` (uretprobe).
    TlsRead = 11,
    /// Plaintext passed to an OpenSSL-API `SSL_write`/`SSL_write_ex` (uretprobe).
    TlsWrite = 12,
    /// Plaintext returned by Go's `crypto/tls.(*Conn).Read`.
    GoTlsRead = 13,
    /// Plaintext passed to Go's `crypto/tls.(*Conn).Write`.
    GoTlsWrite = 14,
}

impl Source {
    pub fn direction(self) -> Direction {
        match self {
            Self::Read
            | Self::Readv
            | Self::Recvfrom
            | Self::Recvmsg
            | Self::Recvmmsg
            | Self::TlsRead
            | Self::GoTlsRead => Direction::Ingress,
            _ => Direction::Egress,
        }
    }

    /// Whether the bytes are the plaintext of a TLS connection (from the TLS library probes).
    pub fn is_tls(v: u8) -> bool {
        (Self::TlsRead as u8..=Self::GoTlsWrite as u8).contains(&v)
    }
}

/// Both ends of a TCP connection. IPv4 addresses use the first four bytes of the arrays.
/// Ports are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnAddr {
    pub family: u16,
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad: u16,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

/// First bytes of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    /// An [`EventKind`].
    pub kind: u8,
    pub _pad: [u8; 3],
    /// Thread-group id (the process id users know).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    pub _pad2: u32,
    /// CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns) when the event was emitted.
    pub ts: u64,
}

/// A socket read or write. Followed in the record by `captured_len` payload bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DataHeader {
    pub header: EventHeader,
    /// Unique for the life of the agent (the kernel hands them out; never reused).
    pub conn_id: u64,
    /// Byte position of the first byte of this call in its direction of the connection. The
    /// next call in the same direction starts at `position + total_len`; a larger position
    /// means bytes were not seen (a gap).
    pub position: u64,
    /// Bytes the kernel had seen in the opposite direction when this call ended: tells
    /// userspace whether the other side has bytes it was not (yet) given, e.g. a lost request
    /// before this response.
    pub other_position: u64,
    /// CLOCK_MONOTONIC nanoseconds at syscall entry (`header.ts` is the exit).
    pub ts_enter: u64,
    /// Bytes moved by the syscall (its return value).
    pub total_len: u32,
    /// Bytes of payload that follow this header (a prefix of the `total_len` bytes).
    pub captured_len: u32,
    pub fd: i32,
    /// A [`Direction`].
    pub direction: u8,
    /// A [`Role`].
    pub role: u8,
    /// A [`Source`].
    pub source: u8,
    /// A [`crate::Protocol`], as classified by the kernel from the connection's first bytes.
    pub protocol: u8,
    pub addr: ConnAddr,
    /// The calling task's name (NUL-padded): names the process when it is gone from /proc by
    /// the time the agent reads the event (short-lived clients such as curl).
    pub comm: [u8; 16],
    /// Ids the kernel chose for the request this call starts (see [`crate::propagation`]).
    pub ctx: crate::propagation::SpanCtx,
}

/// A tracked connection was closed. Carries the final byte positions so userspace can tell
/// whether it saw everything.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CloseEvent {
    pub header: EventHeader,
    pub conn_id: u64,
    /// Bytes seen per [`Direction`] over the life of the connection.
    pub positions: [u64; 2],
}

/// Exec or exit of a process (header only).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEvent {
    pub header: EventHeader,
}

/// Kernel-side state of a tracked connection, in the `CONNS` map keyed by the `struct sock`
/// address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnState {
    pub conn_id: u64,
    /// Inode number of the socket: tells a reused `struct sock` address (a new socket) from
    /// the socket this state was made for, even when the old one's end was missed.
    pub ino: u64,
    /// Bytes seen per [`Direction`].
    pub positions: [u64; 2],
    pub addr: ConnAddr,
    /// A [`Role`].
    pub role: u8,
    /// A [`crate::Protocol`].
    pub protocol: u8,
    /// How many data calls were looked at without deciding the protocol.
    pub classify_attempts: u8,
    /// Non-zero: a `traceparent` was injected into a request on this connection and no
    /// response byte has been read since (a later write is a body or a pipelined request).
    pub awaiting_response: u8,
    pub _pad: [u8; 4],
    /// TLS plaintext (from the TLS library probes): bytes per [`Direction`] of the plaintext
    /// stream, a different byte stream from the ciphertext counted in `positions`. A
    /// connection with `tls_protocol` other than `Unknown` reports these in its close event.
    pub tls_positions: [u64; 2],
    /// A [`crate::Protocol`] classified from the plaintext's first bytes.
    pub tls_protocol: u8,
    pub tls_classify_attempts: u8,
    pub _pad_tls: [u8; 6],
}

/// Why something was not captured. Index into the per-CPU `DROPS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropCause {
    /// The ring buffer had no room: the event was lost (userspace sees a gap).
    RingbufFull = 0,
    /// The connection table was full: a connection was not tracked.
    ConnMapFull = 1,
    /// The in-flight syscall table was full: a call was not captured.
    InflightMapFull = 2,
    /// A payload copy from user memory failed.
    CopyFailed = 3,
    /// Payload beyond the capture limit (counted in calls, not bytes): normal for bodies.
    Truncated = 4,
    /// A connection whose first bytes are not a protocol we parse: payload no longer copied.
    NotHttp = 5,
    /// A connection state left from an earlier socket at the same address was replaced (its
    /// end was missed, e.g. a TCP_CLOSE skipped while another BPF program ran on that CPU).
    StaleConn = 6,
    /// TLS plaintext whose socket was not known (no syscall seen inside the TLS library
    /// call on that thread yet, or the Go connection is not a `*net.TCPConn`).
    TlsNoSocket = 7,
}

pub const DROP_CAUSES: usize = 8;

impl DropCause {
    pub const ALL: [DropCause; DROP_CAUSES] = [
        Self::RingbufFull,
        Self::ConnMapFull,
        Self::InflightMapFull,
        Self::CopyFailed,
        Self::Truncated,
        Self::NotHttp,
        Self::StaleConn,
        Self::TlsNoSocket,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::RingbufFull => "ringbuf_full",
            Self::ConnMapFull => "conn_map_full",
            Self::InflightMapFull => "inflight_map_full",
            Self::CopyFailed => "copy_failed",
            Self::Truncated => "truncated_calls",
            Self::NotHttp => "not_http_conns",
            Self::StaleConn => "stale_conn_replaced",
            Self::TlsNoSocket => "tls_no_socket",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: #[repr(C)] and Copy, only integers and arrays of them, padding spelled out as
    // fields: every bit pattern is a valid value.
    unsafe impl aya::Pod for ConnAddr {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ConnState {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_are_stable_and_padded_explicitly() {
        assert_eq!(size_of::<EventHeader>(), 24);
        assert_eq!(size_of::<ConnAddr>(), 40);
        assert_eq!(
            size_of::<DataHeader>(),
            24 + 8 * 4 + 4 * 3 + 4 + 40 + 16 + 40
        );
        assert_eq!(size_of::<DataHeader>() % 8, 0);
        assert_eq!(size_of::<CloseEvent>(), 48);
    }

    #[test]
    fn drop_causes_index_the_whole_counter_array_once() {
        for (i, cause) in DropCause::ALL.iter().enumerate() {
            assert_eq!(*cause as usize, i, "{cause:?}");
        }
        let mut names: [&str; DROP_CAUSES] = [""; DROP_CAUSES];
        for (i, c) in DropCause::ALL.iter().enumerate() {
            names[i] = c.name();
        }
        for (i, a) in names.iter().enumerate() {
            assert!(!names[i + 1..].contains(a), "duplicate name {a}");
        }
    }

    #[test]
    fn kinds_round_trip() {
        for k in [
            EventKind::Data,
            EventKind::Close,
            EventKind::Exec,
            EventKind::Exit,
        ] {
            assert_eq!(EventKind::from_u8(k as u8), Some(k));
        }
        assert_eq!(EventKind::from_u8(0), None);
        assert_eq!(Source::Sendmmsg.direction(), Direction::Egress);
        assert_eq!(Source::Recvmsg.direction(), Direction::Ingress);
        assert_eq!(Source::TlsRead.direction(), Direction::Ingress);
        assert_eq!(Source::GoTlsWrite.direction(), Direction::Egress);
        assert!(Source::is_tls(Source::GoTlsRead as u8));
        assert!(!Source::is_tls(Source::Sendmmsg as u8));
    }
}
