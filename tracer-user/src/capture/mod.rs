//! Loading and attaching the kernel programs, and reading what they report.

pub mod btf;
pub mod cgroup;
pub mod events;
pub mod features;
pub mod kernel_log;
pub mod preflight;
pub mod tls;

use std::{
    collections::BTreeMap,
    mem::ManuallyDrop,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, ProgramArray, RingBuf, SockHash},
    programs::{
        CgroupAttachMode, ProgramError, SkMsg, SockOps, TracePoint, trace_point::TracePointLink,
    },
};
use tracer_common::{
    Config, DropCause, InjectStat, KernelOffsets, MAX_CAPTURE, TailCall,
    names::{global, map},
};

use self::features::Features;

/// How often the agent drains the ring buffer without being woken (events are committed
/// without wakeups until `ring_bytes / 8` wait).
pub const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// The kernel programs, built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// What to capture.
#[derive(Clone, Debug)]
pub struct CaptureOptions {
    /// Payload bytes copied per syscall (≤ MAX_CAPTURE).
    pub capture_limit: u32,
    /// Ring buffer size in bytes (a power of two, ≥ one page).
    pub ring_bytes: u32,
    /// Trace only these processes (empty: all).
    pub pids: Vec<u32>,
    /// Trace only connections with one of these local or remote ports (empty: all).
    pub ports: Vec<u16>,
    /// Trace only processes in these cgroup v2 ids (empty: all).
    pub cgroups: Vec<u64>,
    /// Kernel struct offsets computed beforehand (see `btf::kernel_offsets_isolated`);
    /// `None`: computed during `Capture::load`.
    pub offsets: Option<KernelOffsets>,
    /// Insert `traceparent` into outgoing plaintext HTTP/1.x requests.
    pub inject: InjectMode,
    /// Where sock_ops attaches (`None`: the cgroup v2 mount this process sees).
    pub cgroup_root: Option<std::path::PathBuf>,
    /// Key of the server span id derivation shared with the kernel
    /// ([`tracer_common::propagation::server_ids`]).
    pub ctx_key: u64,
    /// The head sampler's rule: the sampled flag of the `traceparent` the kernel injects.
    pub head_rule: tracer_common::sampling::HeadRule,
    /// Kernel features detected beforehand (see `Features::detect_isolated`); `None`: detected
    /// during `Capture::load`.
    pub features: Option<Features>,
    /// Connections tracked at once: sizes the kernel's connection and thread maps
    /// ([`budget_map_sizes`]).
    pub max_connections: u32,
}

/// Connections tracked at once by default (`--max-connections`).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 65536;

/// Threads the per-thread maps hold at least.
const MIN_THREAD_ENTRIES: u32 = 16384;

/// Entries of each budget map for `max_connections`: one per connection in the maps of
/// connections (`CONNS`, and `SOCKS` for injection), and one per two connections, at least
/// [`MIN_THREAD_ENTRIES`], in those of threads (`INFLIGHT`: a live thread that has made a
/// traced socket call; `THREAD_CTX`: the request a thread serves) — a thread-per-connection
/// server fills them one per connection, an event loop with one.
pub fn budget_map_sizes(max_connections: u32) -> [(&'static str, u32); 4] {
    let threads = (max_connections / 2).max(MIN_THREAD_ENTRIES);
    [
        (map::CONNS, max_connections),
        (map::SOCKS, max_connections),
        (map::INFLIGHT, threads),
        (map::THREAD_CTX, threads),
    ]
}

/// Which outgoing requests get a `traceparent` (see `--inject-traceparent`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum InjectMode {
    /// Requests on non-blocking client sockets.
    #[default]
    Auto,
    /// Requests on every client socket.
    All,
    /// None: requests leave byte-identical.
    Off,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        Self {
            capture_limit: MAX_CAPTURE as u32,
            ring_bytes: 8 << 20,
            pids: Vec::new(),
            ports: Vec::new(),
            cgroups: Vec::new(),
            offsets: None,
            inject: InjectMode::Off,
            cgroup_root: None,
            ctx_key: 0,
            head_rule: tracer_common::sampling::HeadRule::ALWAYS_ON,
            features: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Tracepoints the programs attach to: (program name, category). The program is named after
/// its tracepoint.
pub const TRACEPOINTS: &[(&str, &str)] = &[
    ("sys_enter_read", "syscalls"),
    ("sys_exit_read", "syscalls"),
    ("sys_enter_write", "syscalls"),
    ("sys_exit_write", "syscalls"),
    ("sys_enter_readv", "syscalls"),
    ("sys_exit_readv", "syscalls"),
    ("sys_enter_writev", "syscalls"),
    ("sys_exit_writev", "syscalls"),
    ("sys_enter_recvfrom", "syscalls"),
    ("sys_exit_recvfrom", "syscalls"),
    ("sys_enter_sendto", "syscalls"),
    ("sys_exit_sendto", "syscalls"),
    ("sys_enter_recvmsg", "syscalls"),
    ("sys_exit_recvmsg", "syscalls"),
    ("sys_enter_sendmsg", "syscalls"),
    ("sys_exit_sendmsg", "syscalls"),
    ("sys_enter_recvmmsg", "syscalls"),
    ("sys_exit_recvmmsg", "syscalls"),
    ("sys_enter_sendmmsg", "syscalls"),
    ("sys_exit_sendmmsg", "syscalls"),
    ("sys_exit_accept", "syscalls"),
    ("sys_exit_accept4", "syscalls"),
    ("sys_enter_connect", "syscalls"),
    ("sys_exit_connect", "syscalls"),
    ("sys_enter_close", "syscalls"),
    ("inet_sock_set_state", "sock"),
    ("sched_process_exec", "sched"),
    ("sched_process_exit", "sched"),
];

/// The loaded and attached programs. Dropping it detaches everything.
pub struct Capture {
    /// Owned here so that dropping the capture detaches them in parallel (each waits for
    /// RCU grace periods in the kernel: ~100 ms, 28 of them).
    tracepoint_links: Vec<TracePointLink>,
    /// Shared with the TLS scanner thread, which attaches the per-file probes: the event loop
    /// never takes the lock (the counters it reads are taken out of the object at load).
    ebpf: ManuallyDrop<Arc<Mutex<Ebpf>>>,
    drops: PerCpuArray<MapData, u64>,
    inject_counts: PerCpuArray<MapData, u64>,
    /// The attached tracepoints (`category:name`).
    pub attached: Vec<String>,
    /// Whether the TLS probe programs loaded (they are attached per file by
    /// [`tls::TlsAttacher`]).
    pub tls_loaded: bool,
    /// `traceparent` injection is active.
    pub injecting: bool,
    /// What the kernel offers (logged at start-up).
    pub features: Features,
    /// Instructions the verifier processed per program (`None`: the kernel does not report
    /// them; it does since 5.16).
    pub verified: Vec<(&'static str, Option<u32>)>,
}

/// The injection programs: sock_ops (fills `SOCKS`) and sk_msg (on `SOCKS`).
const SOCK_OPS: &str = "tracer_sock_ops";
const SK_MSG: &str = "tracer_sk_msg";

/// Every program the agent loads from the object.
fn program_names() -> impl Iterator<Item = &'static str> {
    TRACEPOINTS
        .iter()
        .map(|(name, _)| *name)
        .chain(TailCall::ALL.iter().map(|call| call.program()))
        .chain([SOCK_OPS, SK_MSG])
        .chain(tls::PROGRAMS.iter().copied())
}

/// Fails, naming them, when maps or programs the agent reaches by name are not in the loaded
/// object (the kernel side names them after its statics and functions): at start-up, not at
/// first use.
fn require_names(ebpf: &Ebpf) -> Result<()> {
    let maps: Vec<&str> = map::ALL
        .into_iter()
        .filter(|name| ebpf.map(name).is_none())
        .collect();
    let programs: Vec<&str> = program_names()
        .filter(|name| ebpf.program(name).is_none())
        .collect();
    if !maps.is_empty() || !programs.is_empty() {
        bail!(
            "the kernel object does not match this agent: missing maps [{}], missing programs \
             [{}] (tracer-common/src/names.rs and tracer-ebpf must agree)",
            maps.join(" "),
            programs.join(" ")
        );
    }
    Ok(())
}

/// Loads tracepoint program `name` and records how many instructions the verifier processed.
fn load_tracepoint<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
    verified: &mut Vec<(&'static str, Option<u32>)>,
) -> Result<&'a mut TracePoint> {
    let prog: &mut TracePoint = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the object"))?
        .try_into()?;
    prog.load().map_err(|e| describe_load_error(name, e))?;
    verified.push((
        name,
        prog.info()
            .ok()
            .and_then(|i| i.verified_instruction_count()),
    ));
    Ok(prog)
}

/// The tail-call table of the header scans (`PROGS`).
fn tail_programs(ebpf: &mut Ebpf) -> Result<ProgramArray<&mut aya::maps::MapData>> {
    Ok(ProgramArray::try_from(
        ebpf.map_mut(map::PROGS)
            .ok_or_else(|| anyhow!("{} map missing", map::PROGS))?,
    )?)
}

/// sock_ops on the cgroup v2 root puts established client sockets into `SOCKS`; sk_msg on
/// `SOCKS` inserts the header. Both stay attached until the agent exits.
fn attach_injection(
    ebpf: &mut Ebpf,
    root: &Path,
    verified: &mut Vec<(&'static str, Option<u32>)>,
) -> Result<()> {
    let socks: SockHash<_, u64> = SockHash::try_from(
        ebpf.map(map::SOCKS)
            .ok_or_else(|| anyhow!("{} map missing", map::SOCKS))?,
    )?;
    let socks_fd = socks.fd().try_clone()?;
    let msg: &mut SkMsg = ebpf
        .program_mut(SK_MSG)
        .ok_or_else(|| anyhow!("program {SK_MSG} missing"))?
        .try_into()?;
    msg.load().map_err(|e| describe_load_error(SK_MSG, e))?;
    verified.push((
        SK_MSG,
        msg.info().ok().and_then(|i| i.verified_instruction_count()),
    ));
    msg.attach(&socks_fd).context("attaching sk_msg to SOCKS")?;
    let ops: &mut SockOps = ebpf
        .program_mut(SOCK_OPS)
        .ok_or_else(|| anyhow!("program {SOCK_OPS} missing"))?
        .try_into()?;
    ops.load().map_err(|e| describe_load_error(SOCK_OPS, e))?;
    verified.push((
        SOCK_OPS,
        ops.info().ok().and_then(|i| i.verified_instruction_count()),
    ));
    let cgroup = std::fs::File::open(root)
        .with_context(|| format!("opening the cgroup v2 root {}", root.display()))?;
    ops.attach(cgroup, CgroupAttachMode::Single)
        .with_context(|| {
            format!(
                "attaching sock_ops to {} (another sock_ops program may own it)",
                root.display()
            )
        })?;
    Ok(())
}

impl Capture {
    /// Runs the start-up checks, loads every program and attaches it. Fails with the name of
    /// the program and the verifier's last lines when the kernel rejects one.
    pub fn load(opts: &CaptureOptions) -> Result<Self> {
        if EBPF_OBJECT.is_empty() {
            bail!(
                "this tracer binary was built without its kernel programs (AYA_BUILD_SKIP was set)"
            );
        }
        preflight::check()?;
        let features = opts.features.unwrap_or_else(Features::detect);
        // One line saying what this kernel has; the agent uses tracepoints whatever else exists.
        tracing::info!("{}", features.summary(&features::kernel_release()));
        features.require()?;
        tracing::debug!(rss_kib = rss_kib(), "start-up: before reading BTF");
        let offsets = match opts.offsets {
            Some(off) => off,
            None => btf::kernel_offsets(Path::new(btf::VMLINUX_BTF))?,
        };
        tracing::debug!(
            rss_kib = rss_kib(),
            "start-up: kernel offsets read from BTF"
        );
        let (skaddr, newstate) = preflight::sock_state_offsets();
        let config = Config {
            tracer_pid: std::process::id(),
            capture_limit: opts.capture_limit.clamp(64, MAX_CAPTURE as u32),
            filter_pids: u8::from(!opts.pids.is_empty()),
            filter_ports: u8::from(!opts.ports.is_empty()),
            sock_state_skaddr_offset: skaddr,
            sock_state_newstate_offset: newstate,
            filter_cgroups: u8::from(!opts.cgroups.is_empty()),
            inject: 0,
            wakeup_bytes: 0,
            sampling_follow_parent: u8::from(opts.head_rule.follow_parent),
            _pad2: [0; 3],
            ctx_key: opts.ctx_key,
            sampling_threshold: opts.head_rule.threshold,
        };
        let ring_bytes = opts.ring_bytes.max(4096).next_power_of_two();
        // Wake the agent when an eighth of the ring is used (it drains every DRAIN_INTERVAL
        // anyway): far from full, few wakeups.
        // Injection needs sock_ops and sk_msg on the cgroup v2 root; without them the agent
        // still links what it can see (incoming headers, threads, same-node connections).
        let inject_root = if opts.inject != InjectMode::Off {
            let root = opts.cgroup_root.clone().or_else(cgroup::cgroup2_mount);
            if root.is_none() {
                tracing::warn!(
                    "traceparent injection off: cgroup v2 is not mounted (sock_ops needs it)"
                );
            }
            root
        } else {
            None
        };
        let config = Config {
            wakeup_bytes: ring_bytes / 8,
            inject: match (&inject_root, opts.inject) {
                (None, _) | (_, InjectMode::Off) => 0,
                (Some(_), InjectMode::Auto) => tracer_common::config::INJECT_NONBLOCKING,
                (Some(_), InjectMode::All) => tracer_common::config::INJECT_ALL,
            },
            ..config
        };
        let kernel_log_level = kernel_log::level();
        let mut loader = EbpfLoader::new();
        // Rust eBPF has no CO-RE relocations (offsets come from OFFSETS): aya need not parse
        // the kernel's BTF again (that alone cost ~23 MiB of resident memory).
        loader
            .btf(None)
            .override_global(global::CONFIG, &config, true)
            .override_global(global::OFFSETS, &offsets, true)
            .override_global(aya_log::LEVEL, &kernel_log_level, true)
            .map_max_entries(map::EVENTS, ring_bytes)
            .map_max_entries(kernel_log::MAP, kernel_log::ring_bytes(kernel_log_level));
        let budget = budget_map_sizes(opts.max_connections);
        for (name, entries) in budget {
            loader.map_max_entries(name, entries);
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .context("loading the kernel programs' maps")?;
        require_names(&ebpf)?;
        if kernel_log_level != 0
            && let Err(e) = kernel_log::spawn_reader(&mut ebpf)
        {
            tracing::warn!("kernel diagnostics off: {e:#}");
        }
        tracing::debug!(?offsets, rss_kib = rss_kib(), "start-up: maps created");

        fill_targets(&mut ebpf, opts)?;
        let mut hex: aya::maps::Array<_, [u8; 256]> = aya::maps::Array::try_from(
            ebpf.map_mut(map::HEX_TABLE)
                .ok_or_else(|| anyhow!("{} map missing", map::HEX_TABLE))?,
        )?;
        hex.set(0, tracer_common::propagation::HEX_TABLE, 0)?;

        let mut verified = Vec::new();
        // Tail-call targets first, so the first events find them.
        for call in TailCall::ALL {
            let fd = load_tracepoint(&mut ebpf, call.program(), &mut verified)?
                .fd()?
                .try_clone()?;
            tail_programs(&mut ebpf)?.set(call.index(), &fd, 0)?;
        }
        let injecting = match &inject_root {
            Some(root) => match attach_injection(&mut ebpf, root, &mut verified) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(
                        "traceparent injection off: {e:#} (spans are still linked from incoming \
                         headers, threads and same-node connections)"
                    );
                    false
                }
            },
            None => false,
        };
        if inject_root.is_some() && !injecting {
            // Nothing would insert the header the kernel decides on: skip the decisions too.
            let mut progs = tail_programs(&mut ebpf)?;
            for call in TailCall::ALL {
                progs.clear_index(&call.index())?;
            }
        }

        let mut attached = Vec::new();
        let mut tracepoint_links = Vec::new();
        for (name, category) in TRACEPOINTS {
            let prog = load_tracepoint(&mut ebpf, name, &mut verified)?;
            let link = prog
                .attach(category, name)
                .with_context(|| format!("attaching {name} to tracepoint {category}:{name}"))?;
            tracepoint_links.push(prog.take_link(link)?);
            attached.push(format!("{category}:{name}"));
        }
        let tls_loaded = match tls::load_programs(&mut ebpf) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!("TLS plaintext will not be traced: {e:#}");
                false
            }
        };
        tracing::debug!(rss_kib = rss_kib(), "start-up: programs attached");
        tracing::info!(
            programs = attached.len(),
            capture_limit = config.capture_limit,
            ring_bytes,
            max_connections = opts.max_connections,
            kernel_maps = %name_values(&budget),
            "attached tracepoints: {}",
            attached.join(" ")
        );
        if injecting {
            tracing::info!(
                "traceparent injection on ({}): sock_ops and sk_msg attached to the cgroup v2 \
                 root (plaintext HTTP/1.x requests on connections opened from now on)",
                match opts.inject {
                    InjectMode::All => "all client sockets",
                    _ => "non-blocking client sockets",
                }
            );
        } else if opts.inject == InjectMode::Off {
            tracing::info!(
                "traceparent injection off (--inject-traceparent off); spans are linked from \
                 incoming headers, threads and same-node connections"
            );
        }
        tracing::info!("{}", verifier_summary(&verified));
        let drops = PerCpuArray::try_from(take_map(&mut ebpf, map::DROPS)?)?;
        let inject_counts = PerCpuArray::try_from(take_map(&mut ebpf, map::INJECT_COUNTS)?)?;
        Ok(Self {
            tracepoint_links,
            ebpf: ManuallyDrop::new(Arc::new(Mutex::new(ebpf))),
            drops,
            inject_counts,
            attached,
            tls_loaded,
            injecting,
            features,
            verified,
        })
    }

    /// The loaded object, for the TLS scanner thread that attaches the per-file probes.
    pub fn shared_ebpf(&self) -> Arc<Mutex<Ebpf>> {
        Arc::clone(&self.ebpf)
    }

    /// Kernel-side injection counters, summed over CPUs.
    pub fn inject_counts(&self) -> Result<BTreeMap<&'static str, u64>> {
        per_cpu_counters(
            &self.inject_counts,
            InjectStat::ALL.map(|s| (s as u32, s.name())),
        )
    }

    /// The ring buffer carrying events (can be taken once).
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>> {
        let mut ebpf = self.ebpf.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(RingBuf::try_from(take_map(&mut ebpf, map::EVENTS)?)?)
    }

    /// Kernel-side drop counters, summed over CPUs.
    pub fn drops(&self) -> Result<BTreeMap<&'static str, u64>> {
        per_cpu_counters(&self.drops, DropCause::ALL.map(|c| (c as u32, c.name())))
    }

    /// Ids of the loaded programs (as the kernel numbers them), for tests and diagnostics.
    pub fn program_ids(&self) -> Vec<u32> {
        self.ebpf
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .programs()
            .filter_map(|(_, p)| p.info().ok().map(|i| i.id()))
            .collect()
    }
}

impl Drop for Capture {
    /// Detaches and unloads everything; returns once the kernel has let go of the programs
    /// (a link's program is put after an RCU grace period, so the object's own drop returns
    /// a little before).
    fn drop(&mut self) {
        let ids = self.program_ids();
        drop_in_parallel(std::mem::take(&mut self.tracepoint_links));
        // SAFETY: the only drop of the field, and its last use.
        unsafe { ManuallyDrop::drop(&mut self.ebpf) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while std::time::Instant::now() < deadline {
            let loaded: std::collections::HashSet<u32> = aya::programs::loaded_programs()
                .filter_map(|p| p.ok().map(|p| p.id()))
                .collect();
            if !ids.iter().any(|id| loaded.contains(id)) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// Drops `items` (links: each drop detaches) from up to 64 threads at once; returns when all
/// are dropped.
pub(crate) fn drop_in_parallel<T: Send>(mut items: Vec<T>) {
    const THREADS: usize = 64;
    if items.len() <= 1 {
        return;
    }
    let per_thread = items.len().div_ceil(THREADS);
    std::thread::scope(|scope| {
        while !items.is_empty() {
            let batch: Vec<T> = items.drain(..per_thread.min(items.len())).collect();
            // A thread that cannot start drops its batch here (with the closure).
            let _ = std::thread::Builder::new()
                .name("detach".into())
                .stack_size(64 * 1024)
                .spawn_scoped(scope, move || drop(batch));
        }
    });
}

/// Takes map `name` out of the object (it stays alive as long as the value returned).
fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("{name} map missing or taken already"))
}

/// The slots `(index, name)` of a per-CPU counter array, each summed over CPUs.
fn per_cpu_counters(
    counts: &PerCpuArray<MapData, u64>,
    slots: impl IntoIterator<Item = (u32, &'static str)>,
) -> Result<BTreeMap<&'static str, u64>> {
    let mut out = BTreeMap::new();
    for (index, name) in slots {
        out.insert(name, counts.get(&index, 0)?.iter().sum());
    }
    Ok(out)
}

/// One line with the verifier's work: `verifier: 28 programs, 51234 instructions processed in
/// total, largest sys_exit_recvmsg=9876; sys_enter_read=120 ...` (the kernel reports the counts
/// since 5.16).
pub fn verifier_summary(verified: &[(&str, Option<u32>)]) -> String {
    let counts: Vec<(&str, u32)> = verified
        .iter()
        .filter_map(|(name, n)| n.map(|n| (*name, n)))
        .collect();
    if counts.len() < verified.len() {
        return format!(
            "verifier: {} programs loaded; this kernel does not report instruction counts (5.16+ does)",
            verified.len()
        );
    }
    let total: u64 = counts.iter().map(|(_, n)| u64::from(*n)).sum();
    let (max_name, max) = counts
        .iter()
        .copied()
        .max_by_key(|(_, n)| *n)
        .unwrap_or(("-", 0));
    let each: Vec<String> = counts
        .iter()
        .map(|(name, n)| format!("{name}={n}"))
        .collect();
    format!(
        "verifier: {} programs, {total} instructions processed in total, largest {max_name}={max}; {}",
        counts.len(),
        each.join(" ")
    )
}

/// `CONNS=65536 SOCKS=65536 ...`
fn name_values(sizes: &[(&str, u32)]) -> String {
    let words: Vec<String> = sizes.iter().map(|(n, v)| format!("{n}={v}")).collect();
    words.join(" ")
}

/// Resident memory of the agent in KiB (for start-up diagnostics).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn fill_targets(ebpf: &mut Ebpf, opts: &CaptureOptions) -> Result<()> {
    if !opts.pids.is_empty() {
        let mut pids: BpfHashMap<_, u32, u8> = BpfHashMap::try_from(
            ebpf.map_mut(map::TARGET_PIDS)
                .ok_or_else(|| anyhow!("{} missing", map::TARGET_PIDS))?,
        )?;
        for pid in &opts.pids {
            pids.insert(pid, 1, 0)?;
        }
    }
    if !opts.ports.is_empty() {
        let mut ports: BpfHashMap<_, u16, u8> = BpfHashMap::try_from(
            ebpf.map_mut(map::TARGET_PORTS)
                .ok_or_else(|| anyhow!("{} missing", map::TARGET_PORTS))?,
        )?;
        for port in &opts.ports {
            ports.insert(port, 1, 0)?;
        }
    }
    if !opts.cgroups.is_empty() {
        let mut cgroups: BpfHashMap<_, u64, u8> = BpfHashMap::try_from(
            ebpf.map_mut(map::TARGET_CGROUPS)
                .ok_or_else(|| anyhow!("{} missing", map::TARGET_CGROUPS))?,
        )?;
        for id in &opts.cgroups {
            cgroups.insert(id, 1, 0)?;
        }
    }
    Ok(())
}

/// The verifier's verdict in a few readable lines: the program's name and the log's tail.
pub(crate) fn describe_load_error(name: &str, e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log.lines().rev().take(12).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            anyhow!(
                "the kernel verifier rejected program {name} ({io_error}); last verifier lines:\n{}",
                tail.join("\n")
            )
        }
        e => anyhow!("loading program {name}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

    use super::*;

    /// The built object's map and program names as aya reads them: the symbols of its map
    /// sections, and the functions of its program sections (every section but `.text`).
    fn object_names(elf: &[u8]) -> (BTreeSet<String>, BTreeSet<String>) {
        let file = object::File::parse(elf).expect("the kernel object parses");
        let (mut maps, mut programs) = (BTreeSet::new(), BTreeSet::new());
        for symbol in file.symbols() {
            let Some(section) = symbol
                .section_index()
                .and_then(|i| file.section_by_index(i).ok())
            else {
                continue;
            };
            let (Ok(name), Ok(section)) = (symbol.name(), section.name()) else {
                continue;
            };
            if section == "maps" || section == ".maps" {
                maps.insert(name.to_owned());
            } else if symbol.kind() == SymbolKind::Text && symbol.is_global() && section != ".text"
            {
                programs.insert(name.to_owned());
            }
        }
        (maps, programs)
    }

    #[test]
    fn the_connection_budget_sizes_every_map_of_connections_and_threads() {
        let sizes = |n| budget_map_sizes(n).map(|(_, e)| e);
        assert_eq!(sizes(65536), [65536, 65536, 32768, 32768]);
        assert_eq!(sizes(200_000), [200_000, 200_000, 100_000, 100_000]);
        // Small budgets keep room for the threads of the node.
        assert_eq!(sizes(4096), [4096, 4096, 16384, 16384]);
    }

    #[test]
    fn the_kernel_object_has_every_name_the_agent_looks_up() {
        if EBPF_OBJECT.is_empty() {
            eprintln!("built with AYA_BUILD_SKIP: no kernel object to check");
            return;
        }
        let (maps, programs) = object_names(EBPF_OBJECT);
        for name in map::ALL {
            assert!(
                maps.contains(name),
                "map {name} not in the object: {maps:?}"
            );
        }
        let file = object::File::parse(EBPF_OBJECT).unwrap();
        for name in [global::CONFIG, global::OFFSETS] {
            assert!(
                file.symbols().any(|s| s.name() == Ok(name)),
                "global {name} not in the object"
            );
        }
        // Both ways: a program the agent does not know would never be loaded.
        let expected: BTreeSet<String> = program_names().map(str::to_owned).collect();
        assert_eq!(
            expected.len(),
            program_names().count(),
            "a program listed twice"
        );
        assert_eq!(
            programs, expected,
            "programs in the object vs the agent's lists"
        );
    }
}
