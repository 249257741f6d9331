//! Kernel struct field offsets from the running kernel's BTF, so the programs read the right
//! fields on any kernel without hard-coded layouts.
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use btf_rs::{Btf, Type};
use tracer_common::KernelOffsets;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Byte offset of `path` (e.g. `["__sk_common", "skc_daddr"]`) inside `struct name`,
/// looking through anonymous structs and unions.
pub fn field_offset(btf: &Btf, name: &str, path: &[&str]) -> Result<u32> {
    let ty = btf
        .resolve_types_by_name(name)
        .with_context(|| format!("BTF has no type `{name}`"))?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(_)))
        .ok_or_else(|| anyhow!("BTF type `{name}` is not a struct"))?;
    let mut ty = ty;
    let mut offset_bits = 0u32;
    for field in path {
        let (bits, member_ty) = find_member(btf, &ty, field, 0)?
            .ok_or_else(|| anyhow!("struct `{name}` has no field `{}`", path.join(".")))?;
        offset_bits += bits;
        ty = skip_modifiers(btf, member_ty)?;
    }
    if !offset_bits.is_multiple_of(8) {
        bail!("`{name}.{}` is a bit field", path.join("."));
    }
    Ok(offset_bits / 8)
}

fn skip_modifiers(btf: &Btf, mut ty: Type) -> Result<Type> {
    loop {
        ty = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t)?,
            Type::Volatile(t) | Type::Const(t) | Type::Restrict(t) => {
                btf.resolve_chained_type(t)?
            }
            Type::TypeTag(t) => btf.resolve_chained_type(t)?,
            _ => return Ok(ty),
        };
    }
}

/// Depth-limited search of `field` among the members of a struct or union, descending into
/// anonymous members. Returns the offset in bits and the member's type.
fn find_member(btf: &Btf, ty: &Type, field: &str, depth: u32) -> Result<Option<(u32, Type)>> {
    let members = match ty {
        Type::Struct(s) | Type::Union(s) => &s.members,
        _ => return Ok(None),
    };
    for m in members {
        let name = btf.resolve_name(m).unwrap_or_default();
        if name == field {
            return Ok(Some((m.bit_offset(), btf.resolve_chained_type(m)?)));
        }
        if name.is_empty() && depth < 4 {
            let inner = skip_modifiers(btf, btf.resolve_chained_type(m)?)?;
            if let Some((bits, t)) = find_member(btf, &inner, field, depth + 1)? {
                return Ok(Some((m.bit_offset() + bits, t)));
            }
        }
    }
    Ok(None)
}

/// All offsets the programs need.
pub fn kernel_offsets(path: &Path) -> Result<KernelOffsets> {
    let btf =
        Btf::from_file(path).with_context(|| format!("reading BTF from {}", path.display()))?;
    let sk = |field: &str| field_offset(&btf, "sock", &["__sk_common", field]);
    // `f_count` (atomic_long_t, 1 = one reference) until 6.12; `f_ref` (file_ref_t, 0 = one
    // reference) since 6.13.
    let (file_refcount, file_refcount_one) = match field_offset(&btf, "file", &["f_count"]) {
        Ok(off) => (off, 1),
        Err(_) => (field_offset(&btf, "file", &["f_ref", "refcnt"])?, 0),
    };
    Ok(KernelOffsets {
        task_files: field_offset(&btf, "task_struct", &["files"])?,
        files_fdt: field_offset(&btf, "files_struct", &["fdt"])?,
        fdt_max_fds: field_offset(&btf, "fdtable", &["max_fds"])?,
        fdt_fd: field_offset(&btf, "fdtable", &["fd"])?,
        file_inode: field_offset(&btf, "file", &["f_inode"])?,
        file_private_data: field_offset(&btf, "file", &["private_data"])?,
        file_refcount,
        file_refcount_one,
        inode_mode: field_offset(&btf, "inode", &["i_mode"])?,
        inode_ino: field_offset(&btf, "inode", &["i_ino"])?,
        socket_type: field_offset(&btf, "socket", &["type"])?,
        socket_sk: field_offset(&btf, "socket", &["sk"])?,
        sk_family: sk("skc_family")?,
        sk_daddr: sk("skc_daddr")?,
        sk_rcv_saddr: sk("skc_rcv_saddr")?,
        sk_dport: sk("skc_dport")?,
        sk_num: sk("skc_num")?,
        sk_v6_daddr: sk("skc_v6_daddr")?,
        sk_v6_rcv_saddr: sk("skc_v6_rcv_saddr")?,
        sk_socket: field_offset(&btf, "sock", &["sk_socket"])?,
        socket_file: field_offset(&btf, "socket", &["file"])?,
        file_flags: field_offset(&btf, "file", &["f_flags"])?,
        _pad: 0,
    })
}

/// [`kernel_offsets`] computed in a forked child, so the ~40 MiB the BTF parser allocates never
/// lands in the agent's resident memory (allocators keep freed memory). Must be called while
/// the process is single-threaded (before the async runtime starts): a fork copies only the
/// calling thread.
pub fn kernel_offsets_isolated(path: &Path) -> Result<KernelOffsets> {
    let size = std::mem::size_of::<KernelOffsets>();
    let bytes =
        in_child(|| {
            let off = kernel_offsets(path)?;
            // SAFETY: KernelOffsets is a plain #[repr(C)] struct of u32s.
            Ok(unsafe {
                std::slice::from_raw_parts((&off as *const KernelOffsets).cast::<u8>(), size)
            }
            .to_vec())
        });
    match bytes {
        Some(Ok(bytes)) if bytes.len() == size => {
            // SAFETY: length checked; plain struct of u32s (any bit pattern is valid).
            Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<KernelOffsets>()) })
        }
        Some(Err(e)) => Err(e),
        _ => kernel_offsets(path),
    }
}

/// How long a child of [`in_child`] may take (parsing the BTF takes ~0.1–0.3 s, several times
/// that on a loaded machine).
const CHILD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

/// Everything `pipe` gives until its end, or `None` on an error or when `deadline` passes
/// first.
fn read_within(pipe: &mut std::fs::File, deadline: std::time::Duration) -> Option<Vec<u8>> {
    use std::{io::Read, os::fd::AsRawFd};

    let until = std::time::Instant::now() + deadline;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = until.checked_duration_since(std::time::Instant::now())?;
        let mut pfd = libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
        match ready {
            0 => continue,
            n if n < 0 => {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return None;
            }
            // Readable or hung up: a read does not block now.
            _ => match pipe.read(&mut buf) {
                Ok(0) => return Some(reply),
                Ok(n) => reply.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            },
        }
    }
}

/// Runs `f` in a forked child and returns its bytes (or its error), so whatever `f` allocates
/// never lands in this process. `None` when the child could not be run or its reply was cut
/// short (the caller then computes in-process). Must be called while the process is
/// single-threaded (a fork copies only the calling thread).
pub fn in_child(f: impl FnOnce() -> Result<Vec<u8>>) -> Option<Result<Vec<u8>>> {
    in_child_within(f, CHILD_DEADLINE)
}

/// [`in_child`] with the child's time limit given.
fn in_child_within(
    f: impl FnOnce() -> Result<Vec<u8>>,
    deadline: std::time::Duration,
) -> Option<Result<Vec<u8>>> {
    use std::os::fd::FromRawFd;

    let mut fds = [0i32; 2];
    // Close-on-exec: a process another thread spawns meanwhile must not hold the write end
    // open (the reply's end would never come). SAFETY: pipe2(2) fills two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return None;
    }
    // SAFETY: single-threaded caller (documented); the child only computes, writes and _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        // SAFETY: closing the fds pipe(2) returned.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        return None;
    }
    if pid == 0 {
        // Child: one byte of status, then the result's bytes on success, or the error text.
        let reply = match f() {
            Ok(bytes) => {
                let mut v = vec![1u8];
                v.extend_from_slice(&bytes);
                v
            }
            Err(e) => {
                let mut v = vec![0u8];
                v.extend_from_slice(format!("{e:#}").as_bytes());
                v
            }
        };
        // SAFETY: writing our own buffer to our pipe, then leaving without running destructors.
        unsafe {
            libc::write(fds[1], reply.as_ptr().cast(), reply.len());
            libc::_exit(0);
        }
    }
    // SAFETY: the parent owns the read end; the write end is the child's.
    unsafe { libc::close(fds[1]) };
    // SAFETY: fds[0] is an open fd this function owns; File closes it.
    let mut pipe = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    let reply = read_within(&mut pipe, deadline);
    if reply.is_none() {
        // A child that forked while another thread held a lock (a test harness, a caller
        // that broke the single-thread rule) can block forever: it is killed, and the caller
        // computes in-process instead of waiting.
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let reply = reply?;
    match reply.split_first() {
        Some((1, bytes)) => Some(Ok(bytes.to_vec())),
        Some((0, msg)) => Some(Err(anyhow::anyhow!("{}", String::from_utf8_lossy(msg)))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs against this machine's kernel: every offset must resolve, inside sane bounds.
    #[test]
    fn offsets_resolve_on_this_kernel() {
        let off = kernel_offsets(Path::new(VMLINUX_BTF)).expect("BTF offsets");
        // struct sock starts with struct sock_common; these are within its first 128 bytes.
        for o in [
            off.sk_daddr,
            off.sk_rcv_saddr,
            off.sk_dport,
            off.sk_num,
            off.sk_family,
        ] {
            assert!(o < 128, "{off:?}");
        }
        assert_eq!(off.sk_rcv_saddr, off.sk_daddr + 4, "{off:?}");
        assert!(off.task_files > 0 && off.fdt_fd > 0, "{off:?}");
    }

    #[test]
    fn isolated_computation_gives_the_same_offsets() {
        let path = Path::new(VMLINUX_BTF);
        assert_eq!(
            kernel_offsets_isolated(path).unwrap(),
            kernel_offsets(path).unwrap()
        );
        let err = kernel_offsets_isolated(Path::new("/nonexistent/btf")).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/btf"), "{err:#}");
    }

    /// A child that never answers (as one blocked on a lock another thread held at the fork)
    /// is killed at the deadline; the caller gets `None` and computes in-process.
    #[test]
    fn a_child_that_hangs_is_killed_at_the_deadline() {
        let started = std::time::Instant::now();
        let reply = in_child_within(
            || {
                std::thread::sleep(std::time::Duration::from_secs(30));
                Ok(vec![1])
            },
            std::time::Duration::from_millis(300),
        );
        assert!(reply.is_none());
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }
}
