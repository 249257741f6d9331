//! The kernel side of a traced round: how long the agent's eBPF programs ran, from the
//! kernel's BPF statistics (`run_time_ns`, `run_cnt` per program).
//!
//! The statistics cost two clock reads per program run, so they are on only while a traced
//! round runs. They are turned on with the `BPF_ENABLE_STATS` command of bpf(2) rather than by
//! writing `kernel.bpf_stats_enabled`: it enables the same kernel switch the sysctl does, for
//! as long as its file descriptor is open, and the kernel turns it off again when the fd is
//! closed — on every path, Ctrl-C and SIGKILL included — without touching the sysctl's own
//! value (which another user of the machine may have set).
//!
//! The counters are read from `/proc/<agent pid>/fdinfo/<fd>` of the agent's program fds, the
//! programs' names from `bpftool prog show -j` (by program id; without bpftool the programs
//! are named by type and id).
use std::{
    collections::BTreeMap,
    os::fd::{FromRawFd, OwnedFd},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value as Json, json};

use super::report::Figure;
use crate::util;

/// bpf(2) command and statistics type (include/uapi/linux/bpf.h).
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;

/// The target for the sum over programs per request (both ends).
const TARGET_NS_PER_REQUEST: f64 = 3000.0;

/// BPF run-time statistics on while this lives.
pub(super) struct StatsOn {
    _fd: OwnedFd,
}

impl StatsOn {
    pub(super) fn enable() -> Result<Self> {
        #[repr(C)]
        struct EnableStats {
            kind: u32,
        }
        let attr = EnableStats {
            kind: BPF_STATS_RUN_TIME,
        };
        // SAFETY: `attr` is a valid `bpf_attr.enable_stats` of the size passed; the kernel
        // only reads it.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                &attr as *const EnableStats,
                std::mem::size_of::<EnableStats>() as libc::c_uint,
            )
        };
        if fd < 0 {
            bail!(
                "bpf(BPF_ENABLE_STATS) failed: {} (needs CAP_SYS_ADMIN and Linux 5.8)",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: the kernel returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(Self { _fd: fd })
    }
}

/// Run time and run count of one program.
#[derive(Clone, Copy, Default)]
struct Run {
    ns: u64,
    count: u64,
}

/// The counters of every program the agent `pid` holds, by program id, at one moment.
#[derive(Default)]
pub(super) struct Snapshot(BTreeMap<u32, (String, Run)>);

impl Snapshot {
    pub(super) fn take(pid: u32) -> Result<Self> {
        let mut progs = BTreeMap::new();
        let dir = format!("/proc/{pid}/fd");
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
            let fd = entry?.file_name();
            let is_prog = std::fs::read_link(format!("{dir}/{}", fd.to_string_lossy()))
                .is_ok_and(|t| t.to_string_lossy() == "anon_inode:bpf-prog");
            if !is_prog {
                continue;
            }
            // The fd may be closed meanwhile: skip it.
            let Ok(info) =
                std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.to_string_lossy()))
            else {
                continue;
            };
            let field = |key: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(key)?.trim().parse::<u64>().ok())
            };
            let (Some(id), Some(ns), Some(count)) =
                (field("prog_id:"), field("run_time_ns:"), field("run_cnt:"))
            else {
                continue;
            };
            let kind = info
                .lines()
                .find_map(|l| l.strip_prefix("prog_type:"))
                .map_or("?", str::trim);
            progs.insert(
                id as u32,
                (format!("type {kind} id {id}"), Run { ns, count }),
            );
        }
        name_programs(&mut progs);
        Ok(Self(progs))
    }
}

/// Names from `bpftool prog show -j` where it is installed (the fdinfo has none).
fn name_programs(progs: &mut BTreeMap<u32, (String, Run)>) {
    let Some(out) = util::output("bpftool", &["prog", "show", "-j"]) else {
        return;
    };
    let Ok(Json::Array(all)) = serde_json::from_str::<Json>(&out) else {
        return;
    };
    for p in all {
        let id = p.get("id").and_then(Json::as_u64);
        let name = p.get("name").and_then(Json::as_str);
        if let (Some(id), Some(name)) = (id, name)
            && let Some((n, _)) = progs.get_mut(&(id as u32))
        {
            *n = name.to_owned();
        }
    }
}

/// What the agent's programs ran between two snapshots, for `requests` requests.
pub(super) struct KernelCost {
    /// (name, runs, ns per run, ns per request), most expensive per request first.
    programs: Vec<(String, u64, f64, f64)>,
    pub(super) ns_per_request: f64,
}

impl KernelCost {
    pub(super) fn between(before: &Snapshot, after: &Snapshot, requests: u64) -> Self {
        let requests = requests.max(1) as f64;
        let mut programs: Vec<(String, u64, f64, f64)> = after
            .0
            .iter()
            .filter_map(|(id, (name, a))| {
                let b = before.0.get(id).map_or(Run::default(), |(_, r)| *r);
                let runs = a.count.saturating_sub(b.count);
                let ns = a.ns.saturating_sub(b.ns);
                (runs > 0).then(|| {
                    (
                        name.clone(),
                        runs,
                        ns as f64 / runs as f64,
                        ns as f64 / requests,
                    )
                })
            })
            .collect();
        programs.sort_by(|a, b| b.3.total_cmp(&a.3));
        let ns_per_request = programs.iter().map(|p| p.3).sum();
        Self {
            programs,
            ns_per_request,
        }
    }

    /// `name ns/run ×runs per request`, for the figure's note.
    pub(super) fn text(&self, requests: u64) -> String {
        let requests = requests.max(1) as f64;
        self.programs
            .iter()
            .map(|(name, runs, per_run, _)| {
                format!("{name} {per_run:.0} ns ×{:.2}", *runs as f64 / requests)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub(super) fn json(&self) -> Json {
        json!({
            "ns_per_request": self.ns_per_request,
            "programs": self.programs.iter().map(|(name, runs, per_run, per_req)| json!({
                "name": name, "runs": runs, "ns_per_run": per_run, "ns_per_request": per_req,
            })).collect::<Vec<_>>(),
        })
    }
}

/// The figure over the traced rounds: the median round's sum per request, with that round's
/// programs in the note. `what`: `request` or `call`.
pub(super) fn figure(
    name: &'static str,
    rounds: &[(KernelCost, u64)],
    what: &str,
) -> Option<Figure> {
    let mut sorted: Vec<&(KernelCost, u64)> = rounds.iter().collect();
    sorted.sort_by(|a, b| a.0.ns_per_request.total_cmp(&b.0.ns_per_request));
    let (median, requests) = sorted.get(sorted.len().checked_sub(1)? / 2)?;
    let per_round: Vec<String> = rounds
        .iter()
        .map(|(k, _)| format!("{:.2}", k.ns_per_request / 1000.0))
        .collect();
    Some(Figure::max(
        name,
        median.ns_per_request / 1000.0,
        TARGET_NS_PER_REQUEST / 1000.0,
        "µs",
        format!(
            "sum over the agent's programs of run_time_ns / {what}s (bpf_stats, both ends), \
             median of rounds {} µs; ns per run × runs per {what}: {}",
            per_round.join(" "),
            median.text(*requests)
        ),
    ))
}
