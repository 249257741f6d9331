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
    if euid != 0 && !has_caps() {
        bail!(
            "tracer must run as root (or with CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN): \
             try `sudo tracer` or `cargo xtask run`"
        );
    }
    if !Path::new(VMLINUX_BTF).exists() {
        bail!(
            "this kernel has no BTF ({VMLINUX_BTF} is missing): tracer needs a kernel built with \
             CONFIG_DEBUG_INFO_BTF=y (most distributions' kernels since 2020 have it)"
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

/// CAP_BPF (39), CAP_PERFMON (38) and CAP_SYS_ADMIN (21) in the effective set.
fn has_caps() -> bool {
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let Some(eff) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    else {
        return false;
    };
    [39u32, 38, 21].iter().all(|c| eff & (1 << c) != 0)
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
            "tracefs is not mounted and mounting it failed: run `mount -t tracefs tracefs {TRACEFS}`"
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
}
