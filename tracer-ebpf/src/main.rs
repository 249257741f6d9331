//! Kernel programs of the tracer. Tracepoints only (stable ABI, available where kprobes are
//! not): syscall entry/exit for socket data and lifecycle, `sock:inet_sock_set_state` for
//! connection ends, `sched:*` for process exec/exit; uprobes on TLS libraries for plaintext.
#![no_std]
#![no_main]

/// A diagnostic for the agent's log (debug level, target
/// [`tracer_common::config::KERNEL_LOG_TARGET`]): why a client socket or a request gets no
/// `traceparent`. The agent sets the level when it loads the programs, off unless its log
/// filter shows these; the verifier then sees a constant and drops the disabled code. Only in
/// the injection programs: in the syscall programs, even off, it changed their code (README,
/// "Kernel diagnostics").
macro_rules! diag {
    ($($arg:tt)+) => {
        aya_log_ebpf::debug!(&(), target: tracer_common::config::KERNEL_LOG_TARGET, $($arg)+)
    };
}

mod capture;
mod context;
mod go_tls;
mod maps;
mod sock;
mod tls;
mod uapi;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{DropCause, EventKind, ProcessEvent, Role, Source};

use crate::{
    capture::{arg, close_conn, conn_state, enter_data, exit_data, traced},
    maps::{
        CONNECT, EVENTS, INFLIGHT, PendingSyscall, config, count, end_inflight, offsets,
        set_inflight, wakeup_flags,
    },
    sock::{TcpSock, file_shared, tcp_sock_of_fd},
};

macro_rules! data_syscall {
    ($enter:ident, $exit:ident, $source:expr) => {
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            enter_data(&ctx, $source);
            0
        }
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            exit_data::<{ $source as u8 }>(&ctx);
            0
        }
    };
}

data_syscall!(sys_enter_read, sys_exit_read, Source::Read);
data_syscall!(sys_enter_write, sys_exit_write, Source::Write);
data_syscall!(sys_enter_readv, sys_exit_readv, Source::Readv);
data_syscall!(sys_enter_writev, sys_exit_writev, Source::Writev);
data_syscall!(sys_enter_recvfrom, sys_exit_recvfrom, Source::Recvfrom);
data_syscall!(sys_enter_sendto, sys_exit_sendto, Source::Sendto);
data_syscall!(sys_enter_recvmsg, sys_exit_recvmsg, Source::Recvmsg);
data_syscall!(sys_enter_sendmsg, sys_exit_sendmsg, Source::Sendmsg);
data_syscall!(sys_enter_recvmmsg, sys_exit_recvmmsg, Source::Recvmmsg);
data_syscall!(sys_enter_sendmmsg, sys_exit_sendmmsg, Source::Sendmmsg);

/// accept/accept4 returned a new connection: this process is its server.
fn accepted(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return;
    }
    let fd = arg(ctx, 0) as i64;
    if fd < 0 {
        return;
    }
    if let Some(sock) = tcp_sock_of_fd(fd as i32, &offsets()) {
        let _ = conn_state(sock, Role::Server);
    }
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    accepted(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    accepted(&ctx);
    0
}

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return 0;
    }
    let fd = arg(&ctx, 0);
    let none = TcpSock {
        sk: 0,
        ino: 0,
        file: 0,
        inode: 0,
    };
    let inflight = PendingSyscall::new(&none, 0, fd as i32, CONNECT);
    if !set_inflight(pid_tgid, INFLIGHT.get_ptr_mut(pid_tgid), &inflight) {
        count(DropCause::InflightMapFull);
    }
    0
}

/// connect returned 0 or EINPROGRESS: this process is the connection's client. The local
/// address is bound by now.
#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    const EINPROGRESS: i64 = 115;
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(entry) = INFLIGHT.get_ptr_mut(pid_tgid) else {
        return 0;
    };
    // SAFETY: this thread's entry (only this thread writes it), valid for the run; copied out
    // before it is marked done.
    let inflight = unsafe {
        let inflight = *entry;
        end_inflight(entry);
        inflight
    };
    let ret = arg(&ctx, 0) as i64;
    if inflight.source != CONNECT || (ret != 0 && ret != -EINPROGRESS) {
        return 0;
    }
    if let Some(sock) = tcp_sock_of_fd(inflight.fd, &offsets()) {
        let _ = conn_state(sock, Role::Client);
    }
    0
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return 0;
    }
    let fd = arg(&ctx, 0);
    let off = offsets();
    if let Some(sock) = tcp_sock_of_fd(fd as i32, &off) {
        // Pre-fork servers close the parent's copy while a child serves the connection: only
        // the last reference's close ends it (TCP_CLOSE also does).
        if !file_shared(sock.file, &off) {
            close_conn(sock.sk, Some(sock.ino), pid_tgid);
        }
    }
    0
}

/// The TCP state machine reached TCP_CLOSE (reset, timeout, or the end of a normal close):
/// the socket is done even if no close(2) was seen (e.g. the fd is still open after a reset).
#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    const TCP_CLOSE: i32 = 7;
    let cfg = config();
    // SAFETY: read_at copies from the tracepoint record with bpf_probe_read_kernel, at the
    // field offsets the agent read from this tracepoint's format; a bad read fails, not faults.
    let newstate: i32 =
        unsafe { ctx.read_at(cfg.sock_state_newstate_offset as usize) }.unwrap_or(0);
    if newstate != TCP_CLOSE {
        return 0;
    }
    // SAFETY: as above.
    let Ok(sk) = (unsafe { ctx.read_at::<u64>(cfg.sock_state_skaddr_offset as usize) }) else {
        return 0;
    };
    // Often in softirq context: no meaningful pid.
    close_conn(sk, None, 0);
    0
}

fn process_event(kind: EventKind) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut ev = ProcessEvent::default();
    ev.header.kind = kind as u8;
    ev.header.pid = (pid_tgid >> 32) as u32;
    ev.header.tid = pid_tgid as u32;
    // SAFETY: a helper without arguments.
    ev.header.ts = unsafe { bpf_ktime_get_ns() };
    let _ = EVENTS.output::<ProcessEvent>(&ev, wakeup_flags());
}

#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    process_event(EventKind::Exec);
    0
}

/// Fires for every thread: the thread's `INFLIGHT` entry goes; only the thread-group leader's
/// exit ends the process.
#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let _ = INFLIGHT.remove(pid_tgid);
    if (pid_tgid >> 32) as u32 == pid_tgid as u32 {
        process_event(EventKind::Exit);
    }
    0
}

/// The object's licence, which the kernel checks at load: `bpf_probe_read_kernel`,
/// `bpf_probe_read_user` and `bpf_get_current_task` (the socket walk, every payload copy) are
/// GPL-only helpers, refused to a program whose licence is not GPL-compatible. The kernel
/// programs are dual-licensed (this crate's `license`), which the kernel accepts as
/// GPL-compatible; the rest of the project is Apache-2.0.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
