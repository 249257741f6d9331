//! Go `crypto/tls`: plaintext of `(*Conn).Read` and `(*Conn).Write` (Go ≥ 1.17, register ABI).
//!
//! `Read`: the entry uprobe remembers the call per goroutine (a goroutine may move between
//! threads while it blocks); the agent places the "return" uprobes on the function's RET
//! instructions, because uretprobes rewrite the return address and corrupt Go's stack
//! handling. `Write` is captured at its entry (see [`go_tls_write_entry`]). Register ABI on amd64: arguments in RAX (receiver), RBX, RCX...; results in RAX,
//! RBX...; R14 holds the current goroutine (`g`).
//!
//! The socket comes from the `*tls.Conn` itself: `Conn.conn` (a `net.Conn` interface, first
//! field) holds a `*net.TCPConn`, whose first word is its `*net.netFD`, whose `pfd.Sysfd` is
//! at offset 16 (after `fdMutex`). These layouts have been stable since Go 1.9; the fd is then
//! checked to be a TCP socket of the calling process, so another `net.Conn` type yields no
//! event (counted), never a wrong connection.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{map, uprobe},
    maps::LruHashMap,
    programs::ProbeContext,
};
use tracer_common::{DropCause, Source};

use crate::{
    capture::traced,
    maps::{count, offsets},
    sock::{TcpSock, tcp_sock_of_fd},
    tls::plaintext_event,
};

/// Offset of the interface data word of `tls.Conn.conn`.
const TLS_CONN_CONN_DATA: u64 = 8;
/// Offset of `poll.FD.Sysfd` in `net.netFD`.
const NETFD_SYSFD: u64 = 16;

/// A `Read` in progress on a goroutine.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoCall {
    /// `*tls.Conn`.
    pub conn: u64,
    pub buf: u64,
    pub ts_enter: u64,
}

/// Calls in progress by [tgid, g].
#[map]
pub static GO_CALLS: LruHashMap<[u64; 2], GoCall> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
fn go_enter(ctx: &ProbeContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return;
    }
    // SAFETY: `ctx.regs` is the probed thread's saved registers, this program's context.
    let (conn, buf, g) = unsafe { ((*ctx.regs).rax, (*ctx.regs).rbx, (*ctx.regs).r14) };
    let call = GoCall {
        conn,
        buf,
        // SAFETY: a helper without arguments.
        ts_enter: unsafe { bpf_ktime_get_ns() },
    };
    let _ = GO_CALLS.insert([pid_tgid >> 32, g], call, 0);
}

/// The socket of a `*tls.Conn` (see the module comment), with its fd.
#[inline(always)]
fn go_conn_sock(conn: u64) -> Option<(TcpSock, i32)> {
    // SAFETY: user memory read through bpf_probe_read_user; garbage yields an error or an fd
    // that tcp_sock_of_fd rejects.
    let sysfd = unsafe {
        bpf_probe_read_user((conn + TLS_CONN_CONN_DATA) as *const u64)
            .and_then(|tcp_conn| bpf_probe_read_user(tcp_conn as *const u64))
            .and_then(|netfd| bpf_probe_read_user((netfd + NETFD_SYSFD) as *const i64))
    };
    let fd = sysfd.ok().filter(|fd| *fd >= 0 && *fd < i32::MAX as i64)? as i32;
    tcp_sock_of_fd(fd, &offsets()).map(|s| (s, fd))
}

#[uprobe]
pub fn go_tls_read_entry(ctx: ProbeContext) -> u32 {
    go_enter(&ctx);
    0
}

/// Attached to each RET of `crypto/tls.(*Conn).Read`: the bytes read are known only there.
#[uprobe]
pub fn go_tls_read_ret(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: `ctx.regs` is the probed thread's saved registers, this program's context.
    let (n, g) = unsafe { ((*ctx.regs).rax as i64, (*ctx.regs).r14) };
    let key = [pid_tgid >> 32, g];
    // SAFETY: this goroutine's entry, copied out at once (before it is removed).
    let Some(call) = (unsafe { GO_CALLS.get(key) }).copied() else {
        return 0;
    };
    let _ = GO_CALLS.remove(key);
    if n <= 0 {
        return 0;
    }
    let Some((sock, fd)) = go_conn_sock(call.conn) else {
        count(DropCause::TlsNoSocket);
        return 0;
    };
    plaintext_event(
        sock,
        fd,
        Source::GoTlsRead,
        call.buf,
        n as u64,
        call.ts_enter,
        pid_tgid,
    );
    0
}

/// Entry of `crypto/tls.(*Conn).Write`: it writes all of `b` or fails the connection, so the
/// plaintext is emitted here. Emitting at its return would be too late: Go clients read
/// responses on another goroutine (and thread), which can see the response before the
/// writing goroutine returns, and the request must be accounted before its response.
#[uprobe]
pub fn go_tls_write_entry(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return 0;
    }
    // SAFETY: `ctx.regs` is the probed thread's saved registers, this program's context.
    let (conn, buf, len) = unsafe { ((*ctx.regs).rax, (*ctx.regs).rbx, (*ctx.regs).rcx) };
    if len == 0 || len > i64::MAX as u64 {
        return 0;
    }
    let Some((sock, fd)) = go_conn_sock(conn) else {
        count(DropCause::TlsNoSocket);
        return 0;
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    plaintext_event(sock, fd, Source::GoTlsWrite, buf, len, now, pid_tgid);
    0
}
