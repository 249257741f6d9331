//! Start-up checks, each failing with one actionable line.
use std::{fs, path::Path};

use anyhow::{Result, bail};

use super::btf::VMLINUX_BTF;

pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Checks privileges, BTF, tracefs and the kernel version; mounts tracefs when it is missing
/// (the agent needs it to attach tracepoints).
pub fn check() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let caps = effective_caps();
    let missing = missing_caps(caps);
    if !missing.is_empty() {
        let needed = "CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, or CAP_SYS_ADMIN (which the TLS \
                      probes need too)";
        if euid != 0 {
            bail!(
                "tracer must run as root (or with {needed}; it lacks {}): try `sudo tracer` or \
                 `cargo xtask run`",
                missing.join(", ")
            );
        }
        bail!(
            "tracer lacks {}: it needs {needed}; in a container add them (the Helm chart's \
             `capabilities` value) or run it privileged",
            missing.join(", ")
        );
    }
    if caps & (1 << CAP_SYS_ADMIN) == 0 {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            tracing::warn!(
                "no CAP_SYS_ADMIN: the TLS probes (uprobes) cannot attach on this kernel, \
                 HTTPS is traced only where it is decrypted outside the process"
            );
        });
    }
    bpf_syscall_allowed()?;
    if !Path::new(VMLINUX_BTF).exists() {
        bail!(
            "this kernel has no BTF ({VMLINUX_BTF} is missing): tracer needs a kernel built with \
             CONFIG_DEBUG_INFO_BTF=y (most distributions' kernels since 2020 have it); in a \
             container, mount the host's /sys/kernel/btf"
        );
    }
    let (major, minor) = kernel_version()?;
    if (major, minor) < (5, 8) {
        bail!(
            "kernel {major}.{minor} is too old: tracer needs 5.8 or newer for the BPF ring buffer"
        );
    }
    ensure_tracefs()?;
    Ok(())
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_NET_ADMIN: u32 = 12;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set (0 when it cannot be read).
fn effective_caps() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// The capabilities the programs need that `eff` lacks: CAP_SYS_ADMIN stands in for each
/// (loading programs, attaching tracepoints through perf events, creating the sockhash).
fn missing_caps(eff: u64) -> Vec<&'static str> {
    let has = |c: u32| eff & (1 << c) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    [
        (CAP_BPF, "CAP_BPF"),
        (CAP_PERFMON, "CAP_PERFMON"),
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
    ]
    .into_iter()
    .filter(|(c, _)| !has(*c))
    .map(|(_, name)| name)
    .collect()
}

/// With the capabilities there, bpf(2) can still be refused by a seccomp filter (container
/// runtimes' default profiles allow it only with CAP_SYS_ADMIN): the kernel checks would
/// then blame missing features. Creates and closes a one-entry array map to find out.
fn bpf_syscall_allowed() -> Result<()> {
    // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries, ...
    let mut attr = [0u32; 16];
    attr[0] = 2; // BPF_MAP_TYPE_ARRAY
    attr[1] = 4;
    attr[2] = 4;
    attr[3] = 1;
    // SAFETY: bpf(BPF_MAP_CREATE) reads `size` bytes of `attr`, which lives across the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0, // BPF_MAP_CREATE
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd >= 0 {
        // SAFETY: the descriptor was just returned to us and is not used elsewhere.
        unsafe { libc::close(fd as i32) };
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EPERM) {
        bail!(
            "the bpf() system call is refused (EPERM) although the capabilities are there: a \
             seccomp profile blocks it (container runtimes' default profiles allow bpf() only \
             with CAP_SYS_ADMIN): add CAP_SYS_ADMIN or use an Unconfined seccomp profile"
        );
    }
    // Other errors (ENOSYS, ...): the kernel feature checks say what is missing.
    Ok(())
}

pub fn kernel_version() -> Result<(u32, u32)> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")?;
    parse_release(&release)
        .ok_or_else(|| anyhow::anyhow!("cannot parse kernel release {release:?}"))
}

fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn tracefs_mounted() -> bool {
    Path::new(TRACEFS).join("events").is_dir()
}

/// Mounts tracefs at /sys/kernel/tracing when it is not mounted.
pub fn ensure_tracefs() -> Result<()> {
    if tracefs_mounted() {
        return Ok(());
    }
    tracing::info!("tracefs is not mounted; mounting it at {TRACEFS}");
    let status = std::process::Command::new("mount")
        .args(["-t", "tracefs", "tracefs", TRACEFS])
        .status();
    if !matches!(status, Ok(s) if s.success()) || !tracefs_mounted() {
        bail!(
            "tracefs is not mounted at {TRACEFS} and mounting it failed: run `mount -t tracefs \
             tracefs {TRACEFS}` (in a container, mount the host's {TRACEFS})"
        );
    }
    Ok(())
}

/// Offsets of `skaddr` and `newstate` in the `sock:inet_sock_set_state` record, from its
/// format file (falls back to the layout of current kernels).
pub fn sock_state_offsets() -> (u16, u16) {
    let path = Path::new(TRACEFS).join("events/sock/inet_sock_set_state/format");
    let Ok(format) = fs::read_to_string(path) else {
        return (8, 20);
    };
    let find = |name: &str| {
        format.lines().find_map(|l| {
            let l = l.trim();
            let field = l.strip_prefix("field:")?;
            let (decl, rest) = field.split_once(';')?;
            if !decl.ends_with(&format!(" {name}")) {
                return None;
            }
            rest.trim()
                .strip_prefix("offset:")?
                .split(';')
                .next()?
                .parse::<u16>()
                .ok()
        })
    };
    (find("skaddr").unwrap_or(8), find("newstate").unwrap_or(20))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases() {
        assert_eq!(parse_release("6.18.44-fc-v657\n"), Some((6, 18)));
        assert_eq!(parse_release("5.8.0"), Some((5, 8)));
        assert_eq!(parse_release("garbage"), None);
    }

    #[test]
    fn capabilities() {
        let set = |caps: &[u32]| caps.iter().fold(0u64, |m, c| m | (1 << c));
        // CAP_SYS_ADMIN alone covers the programs (measured in a container).
        assert!(missing_caps(set(&[CAP_SYS_ADMIN])).is_empty());
        assert!(missing_caps(set(&[CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN])).is_empty());
        assert_eq!(
            missing_caps(set(&[CAP_BPF, 19 /* CAP_SYS_PTRACE */])),
            ["CAP_PERFMON", "CAP_NET_ADMIN"]
        );
        assert_eq!(missing_caps(0).len(), 3);
    }
}
