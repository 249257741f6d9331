//! TLS plaintext from the TLS libraries (uprobes), fed into the same connection state and
//! events as the syscall capture, with the plaintext's own byte positions.
//!
//! OpenSSL API (`libssl`, or a binary with OpenSSL inside such as `node`): the entry of
//! `SSL_read`/`SSL_write`/`*_ex`/`SSL_do_handshake` remembers the call per thread; a socket
//! read or write made on that thread during the call ties the `SSL*` to its socket
//! ([`on_socket_syscall`]); the return emits the plaintext for that socket's connection. A call
//! satisfied from OpenSSL's own buffer (no syscall) uses the remembered `SSL*` → socket.
//!
//! Programs that give OpenSSL memory BIOs and move the ciphertext themselves (`node`: libuv
//! reads and writes the socket outside the SSL calls) make no syscall inside the call: an
//! `SSL*` whose socket is still unknown when a call returns is tied to the next socket read or
//! write of that thread (for `node`, the write of the handshake bytes the call produced).
//! `SSL_free` forgets the `SSL*`, so a reused address is never tied to an old socket.
//!
//! The plaintext is classified as the syscalls' bytes are (HTTP, and the database clients'
//! first message): PostgreSQL's SSLRequest goes out in plaintext and classifies the socket
//! `Postgres`, then the TLS handshake runs inside an OpenSSL call; its first socket syscall
//! marks the connection `Tls` ([`on_socket_syscall`]), so no ciphertext is copied, and the
//! TLS write of the startup message classifies the plaintext.
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_buf,
    },
    macros::{map, uprobe, uretprobe},
    maps::{Array, LruHashMap},
    programs::{ProbeContext, RetProbeContext},
};
use tracer_common::{
    ConnState, Direction, DropCause, Protocol, Role, Source, SpanCtx,
    classify::{MAX_CLASSIFY_ATTEMPTS, classify, classify_db, is_h2_headers_frame},
};

use crate::{
    capture::{Call, Positions, capture_len, conn_state, emit, in_port_targets, traced},
    maps::{CONNS, SCRATCH, count},
    sock::TcpSock,
};

const KIND_READ: u8 = 1;
const KIND_WRITE: u8 = 2;
const KIND_HANDSHAKE: u8 = 3;

/// An OpenSSL call in progress on a thread.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslCall {
    /// `SSL *`.
    pub ssl: u64,
    pub buf: u64,
    /// `size_t *` out-argument of `SSL_read_ex`/`SSL_write_ex` (0 for the others).
    pub len_ptr: u64,
    pub ts_enter: u64,
    pub kind: u8,
    pub _pad: [u8; 7],
}

/// The socket an `SSL *` reads and writes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslSock {
    pub sk: u64,
    pub ino: u64,
    pub fd: i32,
    pub _pad: u32,
}

/// OpenSSL calls in progress, by pid_tgid. LRU: a return never seen (thread killed in the
/// call) cannot fill it.
#[map]
pub static SSL_CALLS: LruHashMap<u64, SslCall> = LruHashMap::with_max_entries(16384, 0);

/// `SSL *` → socket, keyed by [tgid, SSL *].
#[map]
pub static SSL_SOCKS: LruHashMap<[u64; 2], SslSock> = LruHashMap::with_max_entries(65536, 0);

/// An `SSL *` whose socket is unknown, by the pid_tgid of its last call: the thread's next
/// socket syscall ties it.
#[map]
pub static SSL_PENDING: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

/// Whether an OpenSSL call has been seen since the programs loaded: until one is, socket
/// calls skip the two look-ups of [`on_socket_syscall`] (the flag is one array slot, set once).
#[map]
pub static SSL_SEEN: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
fn ssl_enter(ctx: &ProbeContext, kind: u8, ex: bool) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return;
    }
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    if ssl == 0 {
        return;
    }
    if let Some(seen) = SSL_SEEN.get_ptr_mut(0) {
        // SAFETY: the array's one slot, valid for the run. Written only while 0, so CPUs do
        // not keep taking the cache line from each other; a racing writer writes the same 1.
        unsafe {
            if *seen == 0 {
                *seen = 1;
            }
        }
    }
    let call = SslCall {
        ssl,
        buf: ctx.arg(1).unwrap_or(0),
        len_ptr: if ex { ctx.arg(3).unwrap_or(0) } else { 0 },
        // SAFETY: a helper without arguments.
        ts_enter: unsafe { bpf_ktime_get_ns() },
        kind,
        _pad: [0; 7],
    };
    // A call overwrites what a missed return left behind.
    let _ = SSL_CALLS.insert(pid_tgid, call, 0);
}

#[uprobe]
pub fn ssl_read_entry(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, KIND_READ, false);
    0
}

#[uprobe]
pub fn ssl_read_ex_entry(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, KIND_READ, true);
    0
}

#[uprobe]
pub fn ssl_write_entry(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, KIND_WRITE, false);
    0
}

#[uprobe]
pub fn ssl_write_ex_entry(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, KIND_WRITE, true);
    0
}

/// `SSL_do_handshake` (also called by `SSL_connect`/`SSL_accept`): only ties the `SSL *` to
/// its socket early, so a first `SSL_read` served from OpenSSL's buffer is not lost.
#[uprobe]
pub fn ssl_handshake_entry(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, KIND_HANDSHAKE, false);
    0
}

/// `SSL_free`: the `SSL *` is gone (its address may be reused for another connection).
#[uprobe]
pub fn ssl_free_entry(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    let _ = SSL_SOCKS.remove([pid_tgid >> 32, ssl]);
    0
}

/// Return of every probed OpenSSL function (one program attached to each).
#[uretprobe]
pub fn ssl_ret(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: this thread's entry, copied out at once (before it is removed).
    let Some(call) = (unsafe { SSL_CALLS.get(pid_tgid) }).copied() else {
        return 0;
    };
    let _ = SSL_CALLS.remove(pid_tgid);
    let key = [pid_tgid >> 32, call.ssl];
    // All four return `int`: only the low 32 bits of rax are defined.
    // SAFETY: `ctx.regs` is the probed thread's saved registers, this program's context.
    let ret = unsafe { (*ctx.regs).rax } as u32 as i32;
    // SAFETY: only whether the key exists is used here; the value is copied below.
    if unsafe { SSL_SOCKS.get(key) }.is_none() {
        // No syscall inside the call (memory BIO): the thread's next one tells.
        let _ = SSL_PENDING.insert(pid_tgid, call.ssl, 0);
        if call.kind != KIND_HANDSHAKE && ret > 0 {
            count(DropCause::TlsNoSocket);
        }
        return 0;
    }
    if call.kind == KIND_HANDSHAKE {
        return 0;
    }
    let len = if call.len_ptr != 0 {
        if ret != 1 {
            return 0;
        }
        // SAFETY: bpf_probe_read_user copies from any user address; a bad one yields an error.
        unsafe { bpf_probe_read_user(call.len_ptr as *const u64) }.unwrap_or(0)
    } else if ret > 0 {
        ret as u64
    } else {
        return 0;
    };
    if len == 0 {
        return 0;
    }
    // SAFETY: copied out at once.
    let Some(sock) = (unsafe { SSL_SOCKS.get(key) }).copied() else {
        count(DropCause::TlsNoSocket);
        return 0;
    };
    let source = if call.kind == KIND_READ {
        Source::TlsRead
    } else {
        Source::TlsWrite
    };
    plaintext_event(
        TcpSock {
            sk: sock.sk,
            ino: sock.ino,
            file: 0,
            inode: 0,
        },
        sock.fd,
        source,
        call.buf,
        len,
        call.ts_enter,
        pid_tgid,
    );
    0
}

/// Called by the syscall capture for every socket read/write entry: inside an OpenSSL call on
/// this thread, that call's `SSL *` uses this socket; outside, a pending `SSL *` of this
/// thread (see the module comment) does.
#[inline(always)]
pub fn on_socket_syscall(pid_tgid: u64, sock: &TcpSock, fd: i32) {
    // Set before the call's SSL_CALLS entry (or, at its return, SSL_PENDING's) is written.
    if SSL_SEEN.get(0).is_none_or(|seen| *seen == 0) {
        return;
    }
    // SAFETY: this thread's entries, only read at once.
    let ssl = match unsafe { SSL_CALLS.get(pid_tgid) } {
        Some(call) => {
            mark_tls(sock);
            call.ssl
        }
        // SAFETY: as above.
        None => match unsafe { SSL_PENDING.get(pid_tgid) } {
            Some(ssl) => {
                let ssl = *ssl;
                let _ = SSL_PENDING.remove(pid_tgid);
                ssl
            }
            None => return,
        },
    };
    let key = [pid_tgid >> 32, ssl];
    let value = SslSock {
        sk: sock.sk,
        ino: sock.ino,
        fd,
        _pad: 0,
    };
    let _ = SSL_SOCKS.insert(key, value, 0);
}

/// A socket read or written inside an OpenSSL call carries TLS records: its syscalls are
/// never copied from here on. What plaintext came first stays classified, e.g. PostgreSQL's
/// SSLRequest and its answer (the agent's parser then expects TLS). `Other` stays: it also
/// marks connections outside the port target set.
#[inline(always)]
fn mark_tls(sock: &TcpSock) {
    if let Some(conn) = CONNS.get_ptr_mut(sock.sk) {
        // SAFETY: a CONNS value, valid for this program run; concurrent writers only race on
        // a byte that ends up `Tls` or `Other` either way.
        unsafe {
            if (*conn).ino == sock.ino && (*conn).protocol != Protocol::Other as u8 {
                carry_into_plaintext(conn);
                (*conn).protocol = Protocol::Tls as u8;
            }
        }
    }
}

/// MySQL's TLS begins after the server's greeting and the client's SSL request, both in the
/// clear: the plaintext goes on with that conversation (its first bytes, the client's
/// handshake response, are nothing a classification could recognise), so it keeps the
/// protocol the cleartext was classified as.
///
/// # Safety
/// `conn` points to a CONNS value, valid for this program run.
#[inline(always)]
unsafe fn carry_into_plaintext(conn: *mut ConnState) {
    // SAFETY: the caller's.
    unsafe {
        if (*conn).protocol == Protocol::Mysql as u8
            && (*conn).tls_protocol == Protocol::Unknown as u8
        {
            (*conn).tls_protocol = Protocol::Mysql as u8;
        }
    }
}

/// The plaintext stream's final positions, for the close event of a connection whose
/// plaintext was captured (`None`: not a TLS connection with plaintext we parse).
#[inline(always)]
pub fn plaintext_positions(conn: &ConnState) -> Option<[u64; 2]> {
    if Protocol::from_u8(conn.tls_protocol).is_parsed() {
        Some(conn.tls_positions)
    } else {
        None
    }
}

/// Up to 8 first bytes of the plaintext at `buf`, for classification. Fewer than 8 are read
/// in pieces of 4, 2 and 1 bytes, each of a constant size: one read of `len & 7` bytes is
/// what the compiler builds with the size passing through a stack slot, whose bounds the
/// verifier of kernels before 5.11 forgets (5.10: "R2 unbounded memory access" in
/// `go_tls_write_entry`).
#[inline(always)]
fn read_head(buf: u64, len: u64, head: &mut [u8; 8]) -> usize {
    if len >= 8 {
        // SAFETY: bpf_probe_read_user copies from any user address; a bad one yields an error.
        return match unsafe { bpf_probe_read_user(buf as *const [u8; 8]) } {
            Ok(h) => {
                *head = h;
                8
            }
            Err(_) => 0,
        };
    }
    let n = (len as usize) & 7;
    let mut word = 0u64;
    let mut at = 0u64;
    if n & 4 != 0 {
        // SAFETY: as above.
        let Ok(v) = (unsafe { bpf_probe_read_user(buf as *const u32) }) else {
            return 0;
        };
        word = v as u64;
        at = 4;
    }
    if n & 2 != 0 {
        // SAFETY: as above.
        let Ok(v) = (unsafe { bpf_probe_read_user((buf + at) as *const u16) }) else {
            return 0;
        };
        word |= (v as u64) << (8 * at);
        at += 2;
    }
    if n & 1 != 0 {
        // SAFETY: as above.
        let Ok(v) = (unsafe { bpf_probe_read_user((buf + at) as *const u8) }) else {
            return 0;
        };
        word |= (v as u64) << (8 * at);
    }
    // Plaintext byte i is bit 8i of the little-endian word; the bytes past `n` stay zero.
    *head = word.to_le_bytes();
    n
}

/// Emits `len` bytes of plaintext at `buf` for the connection of `sock`.
#[inline(always)]
pub fn plaintext_event(
    sock: TcpSock,
    fd: i32,
    source: Source,
    buf: u64,
    len: u64,
    ts_enter: u64,
    pid_tgid: u64,
) {
    let Some(conn) = conn_state(sock, Role::Unknown) else {
        return;
    };
    // SAFETY: `conn` points to a CONNS value, which the kernel keeps alive for this run.
    if !in_port_targets(unsafe { &(*conn).addr }) {
        return;
    }
    let dir = source.direction() as usize & 1;
    // SAFETY: `conn` points into the CONNS map value for this program run.
    let (position, other, mut protocol) = unsafe {
        let position = (*conn).tls_positions[dir];
        (*conn).tls_positions[dir] = position + len;
        // The syscalls of this connection carry ciphertext: never copy or parse them (even if
        // its first bytes looked like HTTP, e.g. a protocol upgraded to TLS). `Other` stays:
        // it also marks connections outside the port target set.
        if (*conn).protocol != Protocol::Other as u8 {
            carry_into_plaintext(conn);
            (*conn).protocol = Protocol::Tls as u8;
        }
        (
            position,
            (*conn).tls_positions[dir ^ 1],
            Protocol::from_u8((*conn).tls_protocol),
        )
    };
    if protocol == Protocol::Unknown {
        let mut head = [0u8; 8];
        let n = read_head(buf, len, &mut head);
        protocol = classify(&head, n);
        if protocol == Protocol::Unknown {
            // A database client's first message (PostgreSQL's startup after its SSLRequest,
            // a Redis command), only as the client sends it.
            protocol = classify_db(&head, n, source.direction() == Direction::Egress);
        }
        if protocol == Protocol::Unknown
            // SAFETY: `conn` points into the CONNS map value for this program run.
            && unsafe { (*conn).role } == Role::Unknown as u8
            && is_h2_headers_frame(&head, n, len)
        {
            // A TLS session open before tracing: HTTP/2 without its preface.
            protocol = Protocol::Http2;
        }
        // SAFETY: as above.
        unsafe {
            if protocol.is_parsed() {
                (*conn).tls_protocol = protocol as u8;
            } else if protocol != Protocol::Unknown {
                (*conn).tls_protocol = Protocol::Other as u8;
                count(DropCause::NotHttp);
            } else {
                (*conn).tls_classify_attempts += 1;
                if (*conn).tls_classify_attempts >= MAX_CLASSIFY_ATTEMPTS {
                    (*conn).tls_protocol = Protocol::Other as u8;
                    count(DropCause::NotHttp);
                }
            }
        }
    }
    if !protocol.is_parsed() {
        return;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let n = capture_len(len);
    // SAFETY: this CPU's SCRATCH slot (no other program runs on this CPU meanwhile);
    // n ≤ MAX_CAPTURE < its buffer's size; the user read may fail, not fault.
    let captured = unsafe {
        if bpf_probe_read_user_buf(buf as *const u8, &mut (&mut (*scratch).data)[..n]).is_err() {
            count(DropCause::CopyFailed);
            0
        } else {
            n
        }
    };
    let call = Call::plaintext(sock.sk, sock.ino, buf, ts_enter, fd, source as u8);
    // SAFETY: this CPU's SCRATCH slot, valid for the run. No ids were injected into TLS plaintext: clear what the last
    // syscall event on this CPU left in the header.
    unsafe { (*scratch).header.ctx = SpanCtx::default() };
    emit(
        scratch,
        &call,
        conn,
        source,
        protocol,
        Positions {
            this: position,
            other,
        },
        len,
        captured,
        pid_tgid,
    );
}
