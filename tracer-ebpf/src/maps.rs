//! Maps and globals shared by the programs. Sizes are defaults; the agent may resize
//! `EVENTS` at load time.
use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{
    Config, ConnState, DROP_CAUSES, DataHeader, DropCause, KernelOffsets, MAX_CAPTURE,
};

/// Filters and limits, written by the agent before load.
#[unsafe(no_mangle)]
pub static CONFIG: Config = Config {
    tracer_pid: 0,
    capture_limit: MAX_CAPTURE as u32,
    filter_pids: 0,
    filter_ports: 0,
    sock_state_skaddr_offset: 8,
    sock_state_newstate_offset: 20,
    filter_cgroups: 0,
    _pad: 0,
    wakeup_bytes: 0,
    _pad2: 0,
};

/// Kernel struct offsets from the running kernel's BTF, written by the agent before load.
#[unsafe(no_mangle)]
pub static OFFSETS: KernelOffsets = KernelOffsets {
    task_files: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_inode: 0,
    file_private_data: 0,
    file_refcount: 0,
    file_refcount_one: 0,
    inode_mode: 0,
    inode_ino: 0,
    socket_type: 0,
    socket_sk: 0,
    sk_family: 0,
    sk_daddr: 0,
    sk_rcv_saddr: 0,
    sk_dport: 0,
    sk_num: 0,
    sk_v6_daddr: 0,
    sk_v6_rcv_saddr: 0,
};

#[inline(always)]
pub fn config() -> Config {
    // SAFETY: read-only global; volatile so the compiler does not fold the load-time value.
    unsafe { core::ptr::read_volatile(&CONFIG) }
}

#[inline(always)]
pub fn offsets() -> KernelOffsets {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

/// What a syscall's entry saw, kept for its exit (keyed by pid_tgid).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Inflight {
    /// `struct sock *` of the fd, and its socket's inode number.
    pub sk: u64,
    pub ino: u64,
    /// The buffer, iovec array, msghdr or mmsghdr array argument.
    pub buf: u64,
    pub ts_enter: u64,
    pub fd: i32,
    /// A `tracer_common::Source`, or `CONNECT`.
    pub source: u8,
    pub _pad: [u8; 3],
}

/// `Inflight::source` of a connect(2) in flight.
pub const CONNECT: u8 = 100;

#[map]
pub static INFLIGHT: HashMap<u64, Inflight> = HashMap::with_max_entries(16384, 0);

/// Tracked TCP connections by `struct sock *`. LRU so that connections whose end we missed
/// cannot fill the table.
#[map]
pub static CONNS: LruHashMap<u64, ConnState> = LruHashMap::with_max_entries(65536, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Drop and loss counters, per CPU, indexed by `DropCause`.
#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_CAUSES as u32, 0);

/// Per-CPU counter for connection ids.
#[map]
pub static CONN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Optional target set (see `Config::filter_pids` / `filter_ports`).
#[map]
pub static TARGET_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);
#[map]
pub static TARGET_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(1024, 0);
#[map]
pub static TARGET_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(4096, 0);

/// A data event under construction. Twice the capture size so that the verifier can prove
/// every copy at a masked offset stays inside the buffer.
#[repr(C)]
pub struct DataScratch {
    pub header: DataHeader,
    pub data: [u8; 2 * MAX_CAPTURE],
}

#[map]
pub static SCRATCH: PerCpuArray<DataScratch> = PerCpuArray::with_max_entries(1, 0);

/// Ring-buffer commit flags: wake the agent only once enough events wait (it also drains the
/// ring on a timer), so a busy node costs one wakeup per batch instead of one per event.
#[inline(always)]
pub fn wakeup_flags() -> u64 {
    use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= config().wakeup_bytes as u64 {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[inline(always)]
pub fn count(cause: DropCause) {
    if let Some(c) = DROPS.get_ptr_mut(cause as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}
