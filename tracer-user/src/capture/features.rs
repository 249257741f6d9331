//! What the running kernel offers, detected once at start-up and reported in one line.
//!
//! The agent's programs use tracepoints and the BPF ring buffer only: that path is the default
//! and the one tested on every kernel of the matrix (`cargo xtask kernel-test`). The other hook
//! types are detected so the line tells what a kernel lacks (kprobes and fentry are often
//! compiled out or blocked) and so optional, cheaper hooks can be chosen where they exist.
use std::path::Path;

use anyhow::{Result, bail};
use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_map_supported, is_program_supported},
};

use super::{btf, preflight};

/// Kernel features the agent can use. Each is probed the way the agent would use it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// Tracepoint programs load and tracefs lists the syscall tracepoints (required).
    pub tracepoints: bool,
    /// Uprobes can be attached (kprobe-type programs load and the `uprobe` perf PMU exists).
    pub uprobes: bool,
    /// Kprobes can be attached (kprobe-type programs load and the `kprobe` perf PMU exists;
    /// absent when the kernel is built without `CONFIG_KPROBES`).
    pub kprobes: bool,
    /// fentry/fexit (BPF trampolines): a tracing program loads against a kernel function's
    /// BTF and attaches.
    pub fentry: bool,
    /// `BPF_MAP_TYPE_RINGBUF` maps can be created (required; 5.8+).
    pub ringbuf: bool,
    /// The kernel's own BTF is exported at /sys/kernel/btf/vmlinux (required for offsets).
    pub btf: bool,
    /// `BPF_PROG_TYPE_SOCK_OPS` programs load.
    pub sock_ops: bool,
    /// `BPF_PROG_TYPE_SK_MSG` programs load.
    pub sk_msg: bool,
}

impl Features {
    /// Probes the running kernel (loads a few trivial programs and maps, then closes them).
    pub fn detect() -> Self {
        let program = |ty: ProgramType| match is_program_supported(ty) {
            Ok(yes) => yes,
            Err(e) => {
                // EPERM and friends: the kernel knows the type but will not let us use it.
                tracing::debug!("probing {ty:?} programs: {e}");
                false
            }
        };
        let pmu = |name: &str| {
            Path::new("/sys/bus/event_source/devices")
                .join(name)
                .join("type")
                .exists()
        };
        let kprobe_type = program(ProgramType::KProbe);
        Self {
            tracepoints: program(ProgramType::TracePoint)
                && Path::new(preflight::TRACEFS)
                    .join("events/syscalls/sys_enter_read")
                    .is_dir(),
            uprobes: kprobe_type && pmu("uprobe"),
            kprobes: kprobe_type && pmu("kprobe"),
            fentry: program(ProgramType::Tracing),
            ringbuf: is_map_supported(MapType::RingBuf).unwrap_or(false),
            btf: Path::new(btf::VMLINUX_BTF).exists(),
            sock_ops: program(ProgramType::SockOps),
            sk_msg: program(ProgramType::SkMsg),
        }
    }

    /// [`Features::detect`] in a forked child: probing fentry parses the kernel's whole BTF
    /// (tens of MiB the allocator would keep). Must be called while the process is
    /// single-threaded; falls back to probing in-process.
    pub fn detect_isolated() -> Self {
        match btf::in_child(|| Ok(Self::detect().to_bits().to_le_bytes().to_vec())) {
            Some(Ok(bytes)) if bytes.len() == 2 => {
                Self::from_bits(u16::from_le_bytes([bytes[0], bytes[1]]))
            }
            _ => Self::detect(),
        }
    }

    fn flags(&self) -> [(&'static str, bool); 8] {
        [
            ("tracepoints", self.tracepoints),
            ("uprobes", self.uprobes),
            ("kprobes", self.kprobes),
            ("fentry", self.fentry),
            ("ringbuf", self.ringbuf),
            ("btf", self.btf),
            ("sock_ops", self.sock_ops),
            ("sk_msg", self.sk_msg),
        ]
    }

    fn to_bits(self) -> u16 {
        self.flags()
            .iter()
            .enumerate()
            .fold(0, |bits, (i, (_, on))| bits | (u16::from(*on) << i))
    }

    fn from_bits(bits: u16) -> Self {
        let on = |i: u16| bits & (1 << i) != 0;
        Self {
            tracepoints: on(0),
            uprobes: on(1),
            kprobes: on(2),
            fentry: on(3),
            ringbuf: on(4),
            btf: on(5),
            sock_ops: on(6),
            sk_msg: on(7),
        }
    }

    /// The start-up line: `kernel 6.18.44: tracepoints yes, uprobes yes, kprobes no, ...`.
    pub fn summary(&self, release: &str) -> String {
        let list: Vec<String> = self
            .flags()
            .iter()
            .map(|(name, on)| format!("{name} {}", if *on { "yes" } else { "no" }))
            .collect();
        format!("kernel {}: {}", release.trim(), list.join(", "))
    }

    /// Fails with one line naming what the agent cannot run without.
    pub fn require(&self) -> Result<()> {
        let missing: Vec<&str> = [
            ("tracepoints", self.tracepoints),
            ("the BPF ring buffer", self.ringbuf),
            ("BTF", self.btf),
        ]
        .iter()
        .filter(|(_, on)| !on)
        .map(|(name, _)| *name)
        .collect();
        if !missing.is_empty() {
            bail!(
                "this kernel lacks {} which tracer needs (Linux ≥ 5.8 with CONFIG_BPF_EVENTS and \
                 CONFIG_DEBUG_INFO_BTF)",
                missing.join(" and ")
            );
        }
        Ok(())
    }
}

/// The running kernel's release string (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_round_trip_and_summary_names_every_feature() {
        let f = Features {
            tracepoints: true,
            uprobes: true,
            kprobes: false,
            fentry: false,
            ringbuf: true,
            btf: true,
            sock_ops: true,
            sk_msg: false,
        };
        assert_eq!(Features::from_bits(f.to_bits()), f);
        assert_eq!(
            f.summary("6.18.0\n"),
            "kernel 6.18.0: tracepoints yes, uprobes yes, kprobes no, fentry no, ringbuf yes, \
             btf yes, sock_ops yes, sk_msg no"
        );
        assert!(f.require().is_ok());
        let err = Features {
            ringbuf: false,
            ..f
        }
        .require()
        .unwrap_err()
        .to_string();
        assert!(err.contains("the BPF ring buffer"), "{err}");
    }
}
