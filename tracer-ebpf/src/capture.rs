//! Syscall data capture: connection state, protocol classification, bounded payload copy
//! into the ring buffer.
use core::mem::offset_of;

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_buf,
    },
    programs::TracePointContext,
};
use tracer_common::{
    CloseEvent, ConnAddr, ConnState, DataHeader, Direction, DropCause, EventKind, MAX_CAPTURE,
    Protocol, Role, Source, SpanCtx,
    classify::{
        MAX_CLASSIFY_ATTEMPTS, classify, classify_db, classify_db_mid_stream, is_h2_headers_frame,
        is_mysql_greeting,
    },
};

use crate::{
    context::{after_ingress, before_egress},
    maps::{
        CONN_SEQ, CONNS, DataScratch, EVENTS, INFLIGHT, INJECT_DONE, PendingSyscall, SCRATCH,
        TARGET_CGROUPS, TARGET_PIDS, TARGET_PORTS, config, count, end_inflight, offsets,
        set_inflight, wakeup_flags,
    },
    sock::{TcpSock, conn_addr, file_of_fd, still_socket, tcp_sock_of_file},
    uapi::{Iovec, Mmsghdr, SyscallRecord, UserMsghdr},
};

/// Bounded iovec walk: at most this many segments are copied (positions stay exact).
const MAX_IOV: u32 = 32;
/// At most this many messages of a sendmmsg/recvmmsg are captured.
pub const MAX_MMSG: u32 = 8;

const MASK: usize = MAX_CAPTURE - 1;

/// Syscall argument `n` (at exit, `n == 0` is the return value).
///
/// A direct load from the tracepoint record rather than a `bpf_probe_read_kernel` call: the
/// verifier lets tracepoint programs read their context at fixed, aligned offsets, and a helper
/// call per argument was a measurable part of each program's run time.
#[inline(always)]
pub fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    let record = ctx.as_ptr() as *const SyscallRecord;
    // SAFETY: `ctx` is the syscall tracepoint's record, whose `args` holds six aligned u64s
    // (every syscalls:* record has this layout); callers pass a constant `n` < 6, so the load is
    // at a fixed offset the verifier checks against the context's bounds.
    unsafe { *core::ptr::addr_of!((*record).args).cast::<u64>().add(n) }
}

/// Common filter: not the agent itself, and within the target set when one is configured.
#[inline(always)]
pub fn traced(pid_tgid: u64) -> bool {
    let tgid = (pid_tgid >> 32) as u32;
    let cfg = config();
    if tgid == cfg.tracer_pid {
        return false;
    }
    // SAFETY: only whether the key exists is used, never the value (which another CPU may
    // change or delete meanwhile).
    if cfg.filter_pids != 0 && unsafe { TARGET_PIDS.get(tgid) }.is_none() {
        return false;
    }
    if cfg.filter_cgroups != 0
        // SAFETY: as above; the helper takes no argument.
        && unsafe { TARGET_CGROUPS.get(bpf_get_current_cgroup_id()) }.is_none()
    {
        return false;
    }
    true
}

/// Syscall entry of a data call: remember the socket and buffer for the exit.
#[inline(always)]
pub fn enter_data(ctx: &TracePointContext, source: Source) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return;
    }
    let (fd, buf) = (arg(ctx, 0) as i32, arg(ctx, 1));
    let off = offsets();
    let Some(file) = file_of_fd(fd, &off) else {
        return;
    };
    let entry = INFLIGHT.get_ptr_mut(pid_tgid);
    // The socket of the thread's previous call, when this call is on the same one.
    let known = entry.and_then(|e| {
        // SAFETY: this thread's entry (only this thread writes it), valid for the run; read
        // at once.
        let (sk, ino, prev_fd, file, inode) =
            unsafe { ((*e).sk, (*e).ino, (*e).fd, (*e).file, (*e).inode) };
        let sock = TcpSock {
            sk,
            ino,
            file,
            inode,
        };
        (prev_fd == fd).then_some(sock)
    });
    let sock = match known {
        Some(sock) if still_socket(file, &sock, &off) => sock,
        _ => match tcp_sock_of_file(file, &off) {
            Some(sock) => sock,
            None => return,
        },
    };
    crate::tls::on_socket_syscall(pid_tgid, &sock, fd);
    // SAFETY: the value is copied at once, so a concurrent update or delete cannot leave a
    // dangling reference here (at worst the copy is a moment old).
    let conn = unsafe { CONNS.get(sock.sk) }
        .copied()
        .filter(|c| c.ino == sock.ino);
    // Connections already known not to be HTTP cost one lookup from here on.
    if let Some(c) = conn {
        let p = Protocol::from_u8(c.protocol);
        if p == Protocol::Other || p == Protocol::Tls {
            return;
        }
    }
    let mut inflight = PendingSyscall::new(&sock, buf, fd, source as u8);
    let egress = source.direction() == Direction::Egress;
    // Only a client's request can get `traceparent` (`http_client_ctx` scans its head, the
    // sk_msg program matches the ports): a server's response costs no read of its buffer here.
    if let Some(c) = conn
        && egress
        && c.role == Role::Client as u8
        && config().inject != 0
    {
        let (src, len) = match source {
            Source::Write | Source::Sendto => (buf, arg(ctx, 2)),
            Source::Writev => first_seg(buf),
            Source::Sendmsg => first_iov(buf),
            _ => (0, 0),
        };
        inflight.scan_src = src;
        inflight.scan_len = if len > u32::MAX as u64 {
            u32::MAX
        } else {
            len as u32
        };
        inflight.local_port = c.addr.local_port;
        inflight.remote_port = c.addr.remote_port;
    }
    if !set_inflight(pid_tgid, entry, &inflight) {
        count(DropCause::InflightMapFull);
        return;
    }
    if let Some(c) = conn
        && egress
    {
        before_egress(ctx, pid_tgid, &c);
    }
}

/// What a data call's exit needs of its entry.
#[derive(Clone, Copy)]
pub struct Call {
    sk: u64,
    ino: u64,
    buf: u64,
    ts_enter: u64,
    fd: i32,
    source: u8,
    /// The sk_msg program inserted `traceparent` into this call's bytes.
    injected: bool,
}

impl Call {
    /// A call seen by the TLS library probes: nothing was injected into it.
    #[inline(always)]
    pub fn plaintext(sk: u64, ino: u64, buf: u64, ts_enter: u64, fd: i32, source: u8) -> Self {
        Self {
            sk,
            ino,
            buf,
            ts_enter,
            fd,
            source,
            injected: false,
        }
    }
}

/// Syscall exit of a data call. Generic over the source so each program carries only its
/// own payload path (the verifier explores every path of a program).
#[inline(always)]
pub fn exit_data<const SOURCE: u8>(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(entry) = INFLIGHT.get_ptr_mut(pid_tgid) else {
        return;
    };
    // SAFETY: `entry` points to this thread's INFLIGHT value, which only this thread writes or
    // removes, and `scratch` to this CPU's SCRATCH slot; both stay valid for this run. What the
    // exit needs is copied out before the entry is marked done (only that: the stack is
    // small); injected ids go straight to this CPU's event header.
    let inflight = unsafe {
        let injected = (*entry).inject_state == INJECT_DONE;
        if let Some(scratch) = SCRATCH.get_ptr_mut(0) {
            (*scratch).header.ctx = if injected {
                (*entry).ctx
            } else {
                SpanCtx::default()
            };
        }
        let call = Call {
            sk: (*entry).sk,
            ino: (*entry).ino,
            buf: (*entry).buf,
            ts_enter: (*entry).ts_enter,
            fd: (*entry).fd,
            source: (*entry).source,
            injected,
        };
        end_inflight(entry);
        call
    };
    // Through the helper, not `arg`: with a direct load here, LLVM's register allocation of
    // the mmsg exits reuses a stack slot in a way the verifier rejects (pointer arithmetic on
    // the spilled INFLIGHT pointer).
    // SAFETY: read_at copies with bpf_probe_read_kernel from the tracepoint record, at the
    // offset of `ret` in every syscalls:sys_exit_* record; a failed read yields an error.
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(offset_of!(SyscallRecord, args)) }) else {
        return;
    };
    if ret <= 0 || inflight.source != SOURCE {
        return;
    }
    let Some(conn) = conn_state(
        TcpSock {
            sk: inflight.sk,
            ino: inflight.ino,
            file: 0,
            inode: 0,
        },
        Role::Unknown,
    ) else {
        return;
    };
    let source = source_of(SOURCE);
    // SAFETY: `conn` points to a CONNS value, which the kernel keeps alive until this run ends
    // even if it is deleted meanwhile; concurrent writers of one socket only race on a flag.
    unsafe {
        if source.direction() == Direction::Ingress {
            (*conn).awaiting_response = 0;
        } else if inflight.injected {
            (*conn).awaiting_response = 1;
        }
    }
    let emitted = match source {
        Source::Sendmmsg | Source::Recvmmsg => {
            let n = ret as u32;
            let mut i = 0;
            while i < MAX_MMSG && i < n {
                let mmsg = Mmsghdr::at(inflight.buf, i);
                let len = Mmsghdr::read_len(mmsg);
                // Each message's first segment: a correct prefix of that message.
                let (base, _) = first_iov(mmsg + offset_of!(Mmsghdr, msg_hdr) as u64);
                data_event(&inflight, conn, source, base, len as u64, pid_tgid);
                i += 1;
            }
            if n > MAX_MMSG {
                // Sizes of the rest are unknown: stop parsing rather than risk a wrong span.
                // SAFETY: as above, a CONNS value valid for this run.
                unsafe { (*conn).protocol = Protocol::Other as u8 };
                count(DropCause::NotHttp);
            }
            false
        }
        Source::Readv | Source::Writev => data_event_iov(
            &inflight,
            conn,
            source,
            inflight.buf,
            u64::MAX,
            ret as u64,
            pid_tgid,
        ),
        Source::Recvmsg | Source::Sendmsg => {
            let iov = UserMsghdr::read_iov(inflight.buf);
            let iovlen = UserMsghdr::read_iovlen(inflight.buf);
            data_event_iov(&inflight, conn, source, iov, iovlen, ret as u64, pid_tgid)
        }
        _ => data_event(&inflight, conn, source, inflight.buf, ret as u64, pid_tgid),
    };
    if emitted && source.direction() == Direction::Ingress {
        after_ingress(ctx, conn);
    }
}

/// Base and length of the first segment of an iovec array.
#[inline(always)]
fn first_seg(iov: u64) -> (u64, u64) {
    let seg = Iovec::read(iov, 0);
    (seg.iov_base, seg.iov_len)
}

/// Base and length of the first iovec of a user_msghdr.
#[inline(always)]
fn first_iov(msghdr: u64) -> (u64, u64) {
    first_seg(UserMsghdr::read_iov(msghdr))
}

#[inline(always)]
fn source_of(v: u8) -> Source {
    match v {
        1 => Source::Read,
        2 => Source::Write,
        3 => Source::Readv,
        4 => Source::Writev,
        5 => Source::Recvfrom,
        6 => Source::Sendto,
        7 => Source::Recvmsg,
        8 => Source::Sendmsg,
        9 => Source::Recvmmsg,
        _ => Source::Sendmmsg,
    }
}

/// The connection's state, created on first sight. `role` is set when known (accept/connect).
/// A state left from an earlier socket at the same address (its end was missed) is replaced.
#[inline(always)]
pub fn conn_state(sock: TcpSock, role: Role) -> Option<*mut ConnState> {
    if let Some(c) = CONNS.get_ptr_mut(sock.sk) {
        // SAFETY: pointer into the map value, valid during this program run.
        unsafe {
            if (*c).ino == sock.ino {
                if role != Role::Unknown {
                    (*c).role = role as u8;
                }
                return Some(c);
            }
        }
        count(DropCause::StaleConn);
    }
    let addr = conn_addr(sock.sk, &offsets());
    let mut protocol = Protocol::Unknown;
    if !in_port_targets(&addr) {
        // Outside the target set: tracked only so later calls are skipped cheaply.
        protocol = Protocol::Other;
    }
    let state = ConnState {
        conn_id: next_conn_id(),
        ino: sock.ino,
        positions: [0; 2],
        addr,
        role: role as u8,
        protocol: protocol as u8,
        classify_attempts: 0,
        awaiting_response: 0,
        _pad: [0; 4],
        tls_positions: [0; 2],
        tls_protocol: Protocol::Unknown as u8,
        tls_classify_attempts: 0,
        _pad_tls: [0; 6],
    };
    if CONNS.insert(sock.sk, state, 0).is_err() {
        count(DropCause::ConnMapFull);
        return None;
    }
    CONNS.get_ptr_mut(sock.sk)
}

/// Whether a connection is inside the port target set (always, when none is configured).
#[inline(always)]
pub fn in_port_targets(addr: &ConnAddr) -> bool {
    // SAFETY: only whether the keys exist is used, never the values.
    config().filter_ports == 0
        || unsafe { TARGET_PORTS.get(addr.local_port) }.is_some()
        || unsafe { TARGET_PORTS.get(addr.remote_port) }.is_some()
}

#[inline(always)]
fn next_conn_id() -> u64 {
    // SAFETY: a helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() } as u64;
    match CONN_SEQ.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU array: valid for the run, and no other program
        // runs on this CPU until this one ends.
        Some(seq) => unsafe {
            *seq += 1;
            (*seq << 12) | (cpu & 0xfff)
        },
        None => cpu,
    }
}

/// Byte positions of a call: where it starts in its direction, and how far the opposite
/// direction had got.
#[derive(Clone, Copy)]
pub struct Positions {
    pub this: u64,
    pub other: u64,
}

/// Accounts `len` bytes in the connection's direction; for parsed protocols, returns the
/// header of the event to emit (the payload is copied by the caller; see [`classified`]).
#[inline(always)]
fn account(
    conn: *mut ConnState,
    source: Source,
    head_src: u64,
    head_len: u64,
    len: u64,
) -> Option<(Positions, Protocol)> {
    let dir = source.direction() as usize & 1;
    // SAFETY: `conn` points into the CONNS map value; concurrent calls on one socket only skew
    // positions, which userspace sees as overlap or gap.
    let (position, other_position, protocol) = unsafe {
        let position = (*conn).positions[dir];
        (*conn).positions[dir] = position + len;
        (
            position,
            (*conn).positions[dir ^ 1],
            Protocol::from_u8((*conn).protocol),
        )
    };
    let protocol = if protocol == Protocol::Unknown {
        let avail = if head_len < len { head_len } else { len };
        let mut head = [0u8; 8];
        let n = read_head(head_src, avail, &mut head);
        let mut c = classify(&head, n);
        // SAFETY: as above, `conn` is a CONNS value valid for this run.
        let open_before_tracing = unsafe { (*conn).role } == Role::Unknown as u8;
        // The direction is a constant of each program, so each carries only its own side's
        // database checks (sys_exit_recvmsg is near the verifier's limit on 6.1). PostgreSQL
        // and Redis clients speak first: sending programs. A MySQL client's first bytes are
        // the server's greeting: receiving programs.
        if c == Protocol::Unknown && source.direction() == Direction::Egress {
            c = classify_db(&head, n, true);
            if c == Protocol::Unknown && open_before_tracing {
                c = classify_db_mid_stream(&head, n, len);
            }
        }
        if c == Protocol::Unknown
            && source.direction() == Direction::Ingress
            && is_mysql_greeting(&head, n, len, position, other_position)
        {
            c = Protocol::Mysql;
        }
        if c == Protocol::Unknown && open_before_tracing && is_h2_headers_frame(&head, n, len) {
            // Open before tracing (no accept or connect seen): HTTP/2 without its preface.
            c = Protocol::Http2;
        }
        // SAFETY: as above.
        unsafe {
            if c != Protocol::Unknown {
                (*conn).protocol = c as u8;
                if c == Protocol::Tls {
                    // The plaintext comes from the TLS library probes; never parse ciphertext.
                    count(DropCause::NotHttp);
                }
            } else {
                (*conn).classify_attempts += 1;
                if (*conn).classify_attempts >= MAX_CLASSIFY_ATTEMPTS {
                    (*conn).protocol = Protocol::Other as u8;
                    count(DropCause::NotHttp);
                }
            }
        }
        c
    } else {
        protocol
    };
    if protocol.is_parsed() {
        Some((
            Positions {
                this: position,
                other: other_position,
            },
            protocol,
        ))
    } else {
        None
    }
}

/// The protocol for the event `account` accepted. Sending programs read it back from the map
/// (where `account` stored it): the verifier then sees one unknown value rather than each
/// classification outcome's constant, and verifies the copy and emit code after it once, not
/// once per protocol (Linux 6.1: `sys_exit_sendmsg` 802k → 422k instructions). Receiving
/// programs keep `account`'s value: read back, 6.1 verified `sys_exit_recvmsg` in 888k
/// instead of 525k. (The direction is a constant of each program.)
#[inline(always)]
fn classified(conn: *mut ConnState, source: Source, protocol: Protocol) -> Protocol {
    if source.direction() == Direction::Egress {
        // SAFETY: `conn` is a CONNS value valid for this program run.
        Protocol::from_u8(unsafe { (*conn).protocol })
    } else {
        protocol
    }
}

/// Up to 8 first bytes of the payload, for classification.
#[inline(always)]
fn read_head(src: u64, avail: u64, head: &mut [u8; 8]) -> usize {
    if avail >= 8 {
        // SAFETY: bpf_probe_read_user copies from any user address; a bad one yields an error.
        return match unsafe { bpf_probe_read_user(src as *const [u8; 8]) } {
            Ok(h) => {
                *head = h;
                8
            }
            Err(_) => 0,
        };
    }
    let n = (avail as usize) & 7;
    // SAFETY: as above, into the `n` (< 8) first bytes of `head`.
    if unsafe { bpf_probe_read_user_buf(src as *const u8, &mut head[..n]) }.is_err() {
        return 0;
    }
    n
}

#[inline(always)]
pub fn capture_len(len: u64) -> usize {
    let limit = config().capture_limit as u64;
    let want = if len < limit { len } else { limit };
    let want = (want as usize) & (2 * MAX_CAPTURE - 1);
    if want > MAX_CAPTURE {
        MAX_CAPTURE
    } else {
        want
    }
}

/// A call with one contiguous buffer.
#[inline(always)]
fn data_event(
    inflight: &Call,
    conn: *mut ConnState,
    source: Source,
    buf: u64,
    len: u64,
    pid_tgid: u64,
) -> bool {
    let Some((position, protocol)) = account(conn, source, buf, len, len) else {
        return false;
    };
    let protocol = classified(conn, source, protocol);
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    let n = capture_len(len);
    // SAFETY: `scratch` is this CPU's SCRATCH slot (no other program runs on this CPU
    // meanwhile); n ≤ MAX_CAPTURE < its buffer's size; the user read may fail, not fault.
    let captured = unsafe {
        if bpf_probe_read_user_buf(buf as *const u8, &mut (&mut (*scratch).data)[..n]).is_err() {
            count(DropCause::CopyFailed);
            0
        } else {
            n
        }
    };
    emit(
        scratch, inflight, conn, source, protocol, position, len, captured, pid_tgid,
    )
}

/// A call with an iovec array.
#[inline(always)]
fn data_event_iov(
    inflight: &Call,
    conn: *mut ConnState,
    source: Source,
    iov: u64,
    iovlen: u64,
    len: u64,
    pid_tgid: u64,
) -> bool {
    if iovlen == 0 {
        return false;
    }
    let (base0, len0) = first_seg(iov);
    let Some((position, protocol)) = account(conn, source, base0, len0, len) else {
        return false;
    };
    let protocol = classified(conn, source, protocol);
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    let want = capture_len(len);
    let mut copied: usize = 0;
    let mut i: u32 = 0;
    while i < MAX_IOV && (i as u64) < iovlen && copied < want {
        let seg = Iovec::read(iov, i as u64);
        let room = (want - copied) as u64;
        let n = (if seg.iov_len < room {
            seg.iov_len
        } else {
            room
        } as usize)
            & MASK;
        let off = copied & MASK;
        // SAFETY: this CPU's SCRATCH slot; off < MAX_CAPTURE and n < MAX_CAPTURE: inside the
        // 2×MAX_CAPTURE buffer; the user read may fail, not fault.
        if unsafe {
            bpf_probe_read_user_buf(
                seg.iov_base as *const u8,
                &mut (&mut (*scratch).data)[off..off + n],
            )
        }
        .is_err()
        {
            count(DropCause::CopyFailed);
            break;
        }
        copied += n;
        i += 1;
    }
    let captured = if copied > MAX_CAPTURE {
        MAX_CAPTURE
    } else {
        copied
    };
    emit(
        scratch, inflight, conn, source, protocol, position, len, captured, pid_tgid,
    )
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn emit(
    scratch: *mut DataScratch,
    inflight: &Call,
    conn: *mut ConnState,
    source: Source,
    protocol: Protocol,
    position: Positions,
    len: u64,
    captured: usize,
    pid_tgid: u64,
) -> bool {
    if (captured as u64) < len {
        count(DropCause::Truncated);
    }
    // SAFETY: this CPU's SCRATCH slot and a CONNS value, both valid for this program run; the
    // bytes handed to the ring buffer are the header plus at most MAX_CAPTURE bytes of the
    // slot's buffer (`size` is clamped), all inside the slot.
    unsafe {
        let h: &mut DataHeader = &mut (*scratch).header;
        h.header.kind = EventKind::Data as u8;
        h.header.pid = (pid_tgid >> 32) as u32;
        h.header.tid = pid_tgid as u32;
        h.header.ts = bpf_ktime_get_ns();
        h.conn_id = (*conn).conn_id;
        h.position = position.this;
        h.other_position = position.other;
        h.ts_enter = inflight.ts_enter;
        h.total_len = if len > u32::MAX as u64 {
            u32::MAX
        } else {
            len as u32
        };
        h.captured_len = captured as u32;
        h.fd = inflight.fd;
        h.direction = source.direction() as u8;
        h.role = (*conn).role;
        h.source = source as u8;
        h.protocol = protocol as u8;
        h.addr = (*conn).addr;
        h.comm = bpf_get_current_comm().unwrap_or([0; 16]);
        let max = core::mem::size_of::<DataHeader>() + MAX_CAPTURE;
        let size = core::mem::size_of::<DataHeader>() + captured;
        let size = if size > max { max } else { size };
        let bytes = core::slice::from_raw_parts(scratch as *const u8, size);
        if EVENTS.output::<[u8]>(bytes, wakeup_flags()).is_err() {
            count(DropCause::RingbufFull);
        }
    }
    true
}

/// Emits a close for a tracked connection and forgets it. `ino` (when known: close(2)) must
/// match, so a stale state is not reported as the end of a new connection.
#[inline(always)]
pub fn close_conn(sk: u64, ino: Option<u64>, pid_tgid: u64) {
    // SAFETY: the value is copied at once.
    let Some(conn) = (unsafe { CONNS.get(sk) }).copied() else {
        return;
    };
    let _ = CONNS.remove(sk);
    if ino.is_some_and(|ino| ino != conn.ino) {
        count(DropCause::StaleConn);
        return;
    }
    // A TLS connection's spans come from its plaintext: report the plaintext's positions.
    let positions = match crate::tls::plaintext_positions(&conn) {
        Some(plain) => plain,
        None => {
            if !Protocol::from_u8(conn.protocol).is_parsed() {
                return;
            }
            conn.positions
        }
    };
    let mut ev = CloseEvent::default();
    ev.header.kind = EventKind::Close as u8;
    ev.header.pid = (pid_tgid >> 32) as u32;
    ev.header.tid = pid_tgid as u32;
    // SAFETY: a helper without arguments.
    ev.header.ts = unsafe { bpf_ktime_get_ns() };
    ev.conn_id = conn.conn_id;
    ev.positions = positions;
    if EVENTS.output::<CloseEvent>(&ev, wakeup_flags()).is_err() {
        count(DropCause::RingbufFull);
    }
}
