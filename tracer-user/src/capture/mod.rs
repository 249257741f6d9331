//! Loading and attaching the kernel programs, and reading what they report.

pub mod btf;
pub mod cgroup;
pub mod events;
pub mod preflight;
pub mod tls;

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{ProgramError, TracePoint},
};
use tracer_common::{Config, DropCause, KernelOffsets, MAX_CAPTURE};

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
    ebpf: Ebpf,
    /// Verifier-processed instruction counts per program, when the kernel reports them.
    pub attached: Vec<String>,
    /// Whether the TLS probe programs loaded (they are attached per file by
    /// [`tls::TlsAttacher`]).
    pub tls_loaded: bool,
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
            _pad: 0,
            wakeup_bytes: 0,
            _pad2: 0,
        };
        let ring_bytes = opts.ring_bytes.max(4096).next_power_of_two();
        // Wake the agent when an eighth of the ring is used (it drains every DRAIN_INTERVAL
        // anyway): far from full, few wakeups.
        let config = Config {
            wakeup_bytes: ring_bytes / 8,
            ..config
        };
        let mut ebpf = EbpfLoader::new()
            // Rust eBPF has no CO-RE relocations (offsets come from OFFSETS): aya need not parse
            // the kernel's BTF again (that alone cost ~23 MiB of resident memory).
            .btf(None)
            .override_global("CONFIG", &config, true)
            .override_global("OFFSETS", &offsets, true)
            .map_max_entries("EVENTS", ring_bytes)
            .load(EBPF_OBJECT)
            .context("loading the kernel programs' maps")?;
        tracing::debug!(?offsets, rss_kib = rss_kib(), "start-up: maps created");

        fill_targets(&mut ebpf, opts)?;

        let mut attached = Vec::new();
        for (name, category) in TRACEPOINTS {
            let prog: &mut TracePoint = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the object"))?
                .try_into()?;
            prog.load().map_err(|e| describe_load_error(name, e))?;
            prog.attach(category, name)
                .with_context(|| format!("attaching {name} to tracepoint {category}:{name}"))?;
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
            "attached tracepoints: {}",
            attached.join(" ")
        );
        Ok(Self {
            ebpf,
            attached,
            tls_loaded,
        })
    }

    /// The loaded object, for attaching the per-file TLS probes.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// The ring buffer carrying events (can be taken once).
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or_else(|| anyhow!("EVENTS map taken already"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Kernel-side drop counters, summed over CPUs.
    pub fn drops(&self) -> Result<BTreeMap<&'static str, u64>> {
        let map = self
            .ebpf
            .map("DROPS")
            .ok_or_else(|| anyhow!("DROPS map missing"))?;
        let drops = PerCpuArray::<_, u64>::try_from(map)?;
        let mut out = BTreeMap::new();
        for cause in DropCause::ALL {
            let per_cpu = drops.get(&(cause as u32), 0)?;
            out.insert(cause.name(), per_cpu.iter().sum());
        }
        Ok(out)
    }

    /// Ids of the loaded programs (as the kernel numbers them), for tests and diagnostics.
    pub fn program_ids(&self) -> Vec<u32> {
        self.ebpf
            .programs()
            .filter_map(|(_, p)| p.info().ok().map(|i| i.id()))
            .collect()
    }
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
            ebpf.map_mut("TARGET_PIDS")
                .ok_or_else(|| anyhow!("TARGET_PIDS missing"))?,
        )?;
        for pid in &opts.pids {
            pids.insert(pid, 1, 0)?;
        }
    }
    if !opts.ports.is_empty() {
        let mut ports: BpfHashMap<_, u16, u8> = BpfHashMap::try_from(
            ebpf.map_mut("TARGET_PORTS")
                .ok_or_else(|| anyhow!("TARGET_PORTS missing"))?,
        )?;
        for port in &opts.ports {
            ports.insert(port, 1, 0)?;
        }
    }
    if !opts.cgroups.is_empty() {
        let mut cgroups: BpfHashMap<_, u64, u8> = BpfHashMap::try_from(
            ebpf.map_mut("TARGET_CGROUPS")
                .ok_or_else(|| anyhow!("TARGET_CGROUPS missing"))?,
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
