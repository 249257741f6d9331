//! Maps and globals shared by the programs. Sizes are defaults; the agent resizes at load
//! time `EVENTS` (`--ring-buffer-bytes`) and the maps of connections and threads (`CONNS`,
//! `SOCKS`, `INFLIGHT`, `THREAD_CTX`: from `--max-connections`, whose default these match).
use crate::sock::TcpSock;
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf, SockHash},
};
use tracer_common::{
    Config, ConnState, DROP_CAUSES, DataHeader, DropCause, InjectStat, KernelOffsets, MAX_CAPTURE,
    SpanCtx, TailCall,
    propagation::{INJECT_STATS, mix64},
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
    inject: 0,
    wakeup_bytes: 0,
    sampling_follow_parent: 1,
    _pad2: [0; 3],
    ctx_key: 0,
    sampling_threshold: 0,
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
    sk_socket: 0,
    socket_file: 0,
    file_flags: 0,
    _pad: 0,
};

#[inline(always)]
pub fn config() -> Config {
    // SAFETY: a read of a valid, aligned static (never written by the programs); volatile so
    // the compiler does not fold the value the agent sets at load time.
    unsafe { core::ptr::read_volatile(&CONFIG) }
}

#[inline(always)]
pub fn offsets() -> KernelOffsets {
    // SAFETY: as for `config`.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

/// What a syscall's entry saw, kept for its exit (keyed by pid_tgid).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingSyscall {
    /// `struct sock *` of the fd, and its socket's inode number.
    pub sk: u64,
    pub ino: u64,
    /// `struct file *` and `struct inode *` of the fd: the thread's next call on the same fd
    /// checks that they still hold ([`crate::sock::still_socket`]) instead of walking the
    /// socket again.
    pub file: u64,
    pub inode: u64,
    /// The buffer, iovec array, msghdr or mmsghdr array argument.
    pub buf: u64,
    pub ts_enter: u64,
    pub fd: i32,
    /// A `tracer_common::Source`, or `CONNECT`.
    pub source: u8,
    /// An `INJECT_*` state: whether the sk_msg program should insert `traceparent`, and did.
    pub inject_state: u8,
    /// Where the header goes: just after the request line (bytes from the call's start); for
    /// a rewrite, the span id field overwritten with `ctx.span_id`.
    pub inject_at: u16,
    /// A rewrite's second field, overwritten with `ctx.parent_id` (a forwarded B3 context's
    /// parent span id); 0 when none.
    pub rewrite_parent_at: u16,
    /// Ports of the connection, so the sk_msg program only touches this call's socket.
    pub local_port: u16,
    pub remote_port: u16,
    /// First buffer of the call and its length (what the injection decision looks at).
    pub scan_len: u32,
    pub scan_src: u64,
    /// Ids to inject (and to report with the call's data event).
    pub ctx: SpanCtx,
}

impl PendingSyscall {
    #[inline(always)]
    pub fn new(sock: &TcpSock, buf: u64, fd: i32, source: u8) -> Self {
        Self {
            sk: sock.sk,
            ino: sock.ino,
            file: sock.file,
            inode: sock.inode,
            buf,
            // SAFETY: a helper without arguments.
            ts_enter: unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() },
            fd,
            source,
            inject_state: 0,
            inject_at: 0,
            rewrite_parent_at: 0,
            local_port: 0,
            remote_port: 0,
            scan_len: 0,
            scan_src: 0,
            ctx: SpanCtx::default(),
        }
    }
}

/// `PendingSyscall::inject_state` values.
pub const INJECT_PENDING: u8 = 1;
pub const INJECT_DONE: u8 = 2;

/// `PendingSyscall::source` of a connect(2) in flight.
pub const CONNECT: u8 = 100;

/// `PendingSyscall::source` of a thread whose call has returned.
pub const CALL_DONE: u8 = 0;

/// Each thread's socket call in flight, by pid_tgid. A thread's entry stays from its first
/// traced call until it exits (`sched_process_exit` removes it) and is overwritten in place
/// by each call ([`set_inflight`]; its exit marks it [`CALL_DONE`]): a lookup and a copy per
/// call, where an insert at entry and a delete at exit take the bucket lock and the free list
/// twice.
#[map]
pub static INFLIGHT: HashMap<u64, PendingSyscall> = HashMap::with_max_entries(32768, 0);

/// Makes `call` this thread's call in flight, over `entry` (the thread's entry, when it has
/// one); false when the map is full.
#[inline(always)]
pub fn set_inflight(
    pid_tgid: u64,
    entry: Option<*mut PendingSyscall>,
    call: &PendingSyscall,
) -> bool {
    if let Some(entry) = entry {
        // SAFETY: this thread's entry, which only this thread reads or writes (the sk_msg
        // program of its send calls runs on the thread too); valid for the run.
        unsafe { *entry = *call };
        return true;
    }
    INFLIGHT.insert(pid_tgid, call, 0).is_ok()
}

/// The thread's call returned: its exit took what it needed; nothing may act on it any more.
///
/// # Safety
/// `entry` is this thread's INFLIGHT value, valid for the run.
#[inline(always)]
pub unsafe fn end_inflight(entry: *mut PendingSyscall) {
    // SAFETY: per the contract.
    unsafe {
        (*entry).source = CALL_DONE;
        (*entry).inject_state = 0;
    }
}

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

/// The request a thread is serving, as far as the kernel can tell (keyed by pid_tgid): set when
/// a request arrives on a server connection, so a request the thread sends meanwhile carries
/// the same trace (see `context.rs`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ThreadCtx {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub conn_id: u64,
    pub flags: u8,
    /// A `THREAD_*` state.
    pub state: u8,
    /// The thread was seen serving two connections at once (an event loop): never a parent.
    pub multiplexed: u8,
    pub _pad: [u8; 5],
}

pub const THREAD_SERVING: u8 = 1;
/// The response is being written: requests sent from here on are not the request's children.
pub const THREAD_RESPONDED: u8 = 2;
/// The request carried B3 context, which the kernel does not follow: no injection.
pub const THREAD_FOREIGN: u8 = 3;

#[map]
pub static THREAD_CTX: LruHashMap<u64, ThreadCtx> = LruHashMap::with_max_entries(32768, 0);

/// Bytes the injection decision looks at (a power of two).
pub const SCAN_MAX: usize = 2048;
/// Steps one run of the scan program takes before it tail-calls itself (each step covers 1 or
/// 8 bytes): small enough for the verifier to walk every turn of its loop cheaply.
pub const SCAN_CHUNK: usize = 128;

/// A request head being scanned by the chain of tail calls `http_*_ctx` → `http_scan` (×k) →
/// `http_*_finish`, all on this CPU within one syscall. Results live in map memory rather
/// than in locals so that the verifier's states do not multiply per loop turn.
#[repr(C)]
pub struct ScanBuf {
    pub pid_tgid: u64,
    pub conn_id: u64,
    pub position: u64,
    /// Bytes in `data`, and the next one to look at.
    pub len: u32,
    pub cursor: u32,
    pub line_end: u32,
    pub head_end: u32,
    pub traceparent_at: u32,
    pub foreign: u32,
    /// `TailCall::ServerFinish` or `TailCall::ClientFinish`: where the scan goes when done.
    pub finish: u32,
    /// Where the values of `b3`, `X-B3-TraceId`, `X-B3-SpanId` and `X-B3-ParentSpanId` start
    /// (after the colon); 0 when absent, [`B3_TWICE`] when the header came more than once.
    pub b3_at: u16,
    pub b3_trace_at: u16,
    pub b3_span_at: u16,
    pub b3_parent_at: u16,
    pub _pad: u32,
    pub data: [u8; 2 * SCAN_MAX],
}

/// A `ScanBuf::b3_*` position of a header seen twice: ambiguous, never read.
pub const B3_TWICE: u16 = u16::MAX;

#[map]
pub static SCAN: PerCpuArray<ScanBuf> = PerCpuArray::with_max_entries(1, 0);

/// Tail-called programs, indexed by `tracer_common::TailCall`.
#[map]
pub static PROGS: ProgramArray = ProgramArray::with_max_entries(TailCall::COUNT as u32, 0);

/// Client TCP sockets the sk_msg program sees, by socket cookie (added by sock_ops when a
/// connection is established; the kernel removes them when they close).
#[map]
pub static SOCKS: SockHash<u64> = SockHash::with_max_entries(65536, 0);

/// `tracer_common::propagation::HEX_TABLE`, filled by the agent (one value): a table lookup
/// instead of comparisons keeps header parsing branch-free for the verifier.
#[map]
pub static HEX_TABLE: Array<[u8; 256]> = Array::with_max_entries(1, 0);

#[map]
pub static INJECT_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(INJECT_STATS as u32, 0);

#[inline(always)]
pub fn count_inject(stat: InjectStat) {
    if let Some(c) = INJECT_COUNTS.get_ptr_mut(stat as u32) {
        // SAFETY: this CPU's slot of a per-CPU array, valid for the run; no other program runs
        // on this CPU meanwhile.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn count(cause: DropCause) {
    if let Some(c) = DROPS.get_ptr_mut(cause as u32) {
        // SAFETY: as in `count_inject`.
        unsafe { *c += 1 };
    }
}

/// `PendingSyscall::inject_state`: the call forwards a received `traceparent` or B3 context;
/// the sk_msg program overwrites the 16-hex field at `inject_at` (the `traceparent`'s
/// parent-id, B3's span id) with `ctx.span_id`, and B3's parent span id at
/// `rewrite_parent_at` with `ctx.parent_id`.
pub const REWRITE_PENDING: u8 = 3;

/// A `traceparent` (or B3 context) a server request brought into a process: (tgid, trace id,
/// the caller's span id).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ForwardKey {
    pub tgid: u32,
    pub _pad: u32,
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
}

/// One slot of [`RECEIVED`]: a received context, the SERVER span that received it, and a
/// check word over both (see [`remember_received`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ReceivedSlot {
    pub key: ForwardKey,
    pub server_span: [u8; 8],
    pub check: u64,
}

/// Slots of [`RECEIVED`] (a power of two).
pub const RECEIVED_SLOTS: u32 = 16384;

/// Received `traceparent` headers (and B3 contexts) by process, so that a request forwarding
/// one (a proxy, on any thread: event loops too) gets the proxy's CLIENT span as its parent.
/// A direct-mapped table: slot `hash(key) % RECEIVED_SLOTS`, overwritten by the next context
/// that hashes there. Every server request that brings a context writes one slot, and most
/// servers never forward: an LRU hash map's insert (which evicts once it is full, after
/// seconds at a few thousand requests/s) cost 0.7-0.8 µs per request; an array slot write
/// costs next to nothing. A forward comes microseconds to seconds after its receive, so an
/// overwrite in between is rare (and then the request is forwarded as it came, as when the
/// LRU evicted it). Entries are not removed when the request completes (a retry still
/// forwards the same header).
#[map]
pub static RECEIVED: Array<ReceivedSlot> = Array::with_max_entries(RECEIVED_SLOTS, 0);

/// The key's 4 words.
#[inline(always)]
fn key_words(key: &ForwardKey) -> [u64; 4] {
    let w = |b: &[u8]| {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        u64::from_ne_bytes(a)
    };
    [
        key.tgid as u64,
        w(&key.trace_id[..8]),
        w(&key.trace_id[8..]),
        u64::from_ne_bytes(key.parent_id),
    ]
}

#[inline(always)]
fn received_slot(words: &[u64; 4]) -> u32 {
    // The caller's span id is random (or hashed) already; the rest spreads equal ones apart.
    (mix64(words[3] ^ words[1] ^ words[0]) as u32) & (RECEIVED_SLOTS - 1)
}

/// The check word of a slot: two CPUs writing one slot at once could leave one's key beside
/// the other's span; such a torn slot fails the check and is read as empty.
#[inline(always)]
fn received_check(words: &[u64; 4], span: u64) -> u64 {
    mix64(words[0] ^ mix64(words[1] ^ mix64(words[2] ^ mix64(words[3] ^ span)))) | 1
}

/// Remembers that `key` was received by the SERVER span `server_span`.
#[inline(always)]
pub fn remember_received(key: &ForwardKey, server_span: [u8; 8]) {
    let words = key_words(key);
    let Some(slot) = RECEIVED.get_ptr_mut(received_slot(&words)) else {
        return;
    };
    // SAFETY: a pointer into the array's value, valid for the run; a concurrent writer of the
    // same slot can only tear it, which the check word catches.
    unsafe {
        (*slot).key = *key;
        (*slot).server_span = server_span;
        (*slot).check = received_check(&words, u64::from_ne_bytes(server_span));
    }
}

/// The SERVER span that received `key`, if its slot still holds it.
#[inline(always)]
pub fn received_by(key: &ForwardKey) -> Option<[u8; 8]> {
    let words = key_words(key);
    let slot = RECEIVED.get_ptr(received_slot(&words))?;
    // SAFETY: as in `remember_received`; copied at once.
    let s = unsafe { *slot };
    let held = key_words(&s.key);
    let span = u64::from_ne_bytes(s.server_span);
    // An empty slot (all zero) fails too: a check word is never 0.
    (held == words && s.check == received_check(&words, span)).then_some(s.server_span)
}
