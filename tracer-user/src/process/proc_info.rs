//! What procfs says about a process (`/proc/PID/{exe,comm,cmdline,environ,cgroup}`), raw and
//! with bounded reads.
//!
//! A process in a container is read from the host the same way: `environ` is the process's own
//! memory (the container's variables, e.g. `podman run -e`), and the kernel resolves the `exe`
//! link within the process's own mount namespace (`/usr/bin/python3.11`, the path inside the
//! container), so its name is the container's executable. Only opening the file itself would
//! need `/proc/PID/root` (as the TLS capture does).
use std::io::Read;

use procfs::process::Process;

use super::container::{ContainerInfo, MAX_CGROUP_BYTES, parse_cgroup};
use super::resource::MAX_COMMAND_LINE_BYTES;

/// Bytes of `/proc/PID/environ` read at most.
pub const MAX_ENVIRON_BYTES: usize = 64 * 1024;

/// What procfs says about a process, raw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct ProcInfo {
    /// Target of `/proc/PID/exe`, without a ` (deleted)` suffix.
    pub(super) exe: Option<String>,
    /// `/proc/PID/comm`, without the newline.
    pub(super) comm: Option<String>,
    /// `/proc/PID/cmdline`: NUL-separated arguments (a prefix, bounded).
    pub(super) cmdline: Vec<u8>,
    /// `/proc/PID/environ`: NUL-separated `K=V` (whole entries only, bounded).
    pub(super) environ: Vec<u8>,
    /// The container and pod, from `/proc/PID/cgroup` (empty for a host process).
    pub(super) container: ContainerInfo,
}

/// Reads what can be read; `None` when the process has no `/proc` entry (exited) or vanished
/// while being read.
pub(super) fn read_proc(pid: u32) -> Option<ProcInfo> {
    let pid = i32::try_from(pid).ok().filter(|p| *p > 0)?;
    let p = Process::new(pid).ok()?;
    let exe = p.exe().ok().map(|path| {
        let s = path.to_string_lossy();
        s.strip_suffix(" (deleted)").unwrap_or(&s).to_owned()
    });
    let comm = read_bounded(&p, "comm", 64)
        .map(|b| {
            String::from_utf8_lossy(&b)
                .trim_end_matches(['\n', '\0'])
                .to_owned()
        })
        .filter(|c| !c.is_empty());
    if exe.is_none() && comm.is_none() {
        return None;
    }
    let cmdline = read_bounded(&p, "cmdline", MAX_COMMAND_LINE_BYTES + 1).unwrap_or_default();
    let mut environ = read_bounded(&p, "environ", MAX_ENVIRON_BYTES).unwrap_or_default();
    if environ.len() >= MAX_ENVIRON_BYTES {
        // Cut: keep whole entries only.
        let keep = environ.iter().rposition(|b| *b == 0).map_or(0, |i| i + 1);
        environ.truncate(keep);
    }
    let container = read_bounded(&p, "cgroup", MAX_CGROUP_BYTES)
        .map(|text| parse_cgroup(&text))
        .unwrap_or_default();
    Some(ProcInfo {
        exe,
        comm,
        cmdline,
        environ,
        container,
    })
}

fn read_bounded(p: &Process, name: &str, max: usize) -> Option<Vec<u8>> {
    let file = p.open_relative(name).ok()?;
    let mut buf = Vec::with_capacity(max.min(4096));
    file.take(max as u64).read_to_end(&mut buf).ok()?;
    Some(buf)
}
