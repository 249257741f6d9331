//! Start-up configuration handed to the kernel programs as read-only globals.

/// Filters and limits. Set once by the agent before the programs are loaded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// The agent's own pid: never traced.
    pub tracer_pid: u32,
    /// Bytes copied per syscall, at most [`crate::MAX_CAPTURE`].
    pub capture_limit: u32,
    /// Non-zero: only trace pids present in the `TARGET_PIDS` map.
    pub filter_pids: u8,
    /// Non-zero: only trace connections with a local or remote port in `TARGET_PORTS`.
    pub filter_ports: u8,
    /// Field offsets in the `sock:inet_sock_set_state` tracepoint record (from its format file).
    pub sock_state_skaddr_offset: u16,
    pub sock_state_newstate_offset: u16,
    /// Non-zero: only trace tasks whose cgroup v2 id is in `TARGET_CGROUPS`.
    pub filter_cgroups: u8,
    /// Insert `traceparent` into outgoing plaintext HTTP/1.x requests (sk_msg): 0 off,
    /// [`INJECT_NONBLOCKING`] or [`INJECT_ALL`] (which client sockets join the sockmap).
    pub inject: u8,
    /// Events are committed without waking the agent until this many bytes wait in the ring
    /// buffer (the agent also drains it on a short timer): one wakeup per batch, not per event.
    pub wakeup_bytes: u32,
    /// Non-zero: the sampled flag of incoming context is followed
    /// ([`crate::sampling::HeadRule::follow_parent`]).
    pub sampling_follow_parent: u8,
    pub _pad2: [u8; 3],
    /// Random per-agent key of [`crate::propagation::server_ids`].
    pub ctx_key: u64,
    /// The head sampler's threshold ([`crate::sampling::HeadRule::threshold`]): decides the
    /// sampled flag of the `traceparent` the kernel injects.
    pub sampling_threshold: u64,
}

impl Config {
    /// The head sampling rule the agent configured.
    #[inline(always)]
    pub fn head_rule(&self) -> crate::sampling::HeadRule {
        crate::sampling::HeadRule {
            threshold: self.sampling_threshold,
            follow_parent: self.sampling_follow_parent != 0,
        }
    }
}

/// `Config::inject`: only sockets whose file is non-blocking (event loops: a spurious EAGAIN
/// from the kernel's sockmap receive path is part of their contract).
pub const INJECT_NONBLOCKING: u8 = 1;
/// `Config::inject`: every client socket.
pub const INJECT_ALL: u8 = 2;

/// Log target of the kernel programs' diagnostics (aya-log, off unless the agent's log filter
/// enables this target at debug level when it loads them).
pub const KERNEL_LOG_TARGET: &str = "tracer::kernel";

/// Byte offsets of the kernel struct fields the programs read, computed by the agent from the
/// running kernel's BTF (`/sys/kernel/btf/vmlinux`): nothing is hard-coded for one kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_inode: u32,
    pub file_private_data: u32,
    /// The file's reference count (`f_count`, or `f_ref` since 6.13), and its value when
    /// exactly one reference is held (1 for `f_count`; 0 for `file_ref_t`, which counts from 0).
    pub file_refcount: u32,
    pub file_refcount_one: u32,
    pub inode_mode: u32,
    pub inode_ino: u32,
    pub socket_type: u32,
    pub socket_sk: u32,
    pub sk_family: u32,
    pub sk_daddr: u32,
    pub sk_rcv_saddr: u32,
    pub sk_dport: u32,
    pub sk_num: u32,
    pub sk_v6_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
    /// `sock->sk_socket`, `socket->file`, `file->f_flags`: whether a socket's file is
    /// non-blocking (which sockets injection may touch).
    pub sk_socket: u32,
    pub socket_file: u32,
    pub file_flags: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: #[repr(C)] and Copy, only integers, padding spelled out as fields: every bit
    // pattern is a valid value.
    unsafe impl aya::Pod for Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for KernelOffsets {}
}
