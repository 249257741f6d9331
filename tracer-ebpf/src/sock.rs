//! From a file descriptor of the current task to its TCP socket, by walking
//! task->files->fdt->fd[fd]->private_data->sk with offsets the agent computed from BTF.
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use tracer_common::{AF_INET, AF_INET6, ConnAddr, KernelOffsets};

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
const SOCK_STREAM: u16 = 1;

/// Reads a `T` at kernel address `base + offset`.
#[inline(always)]
fn read<T>(base: u64, offset: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel copies through the kernel's fault-handling accessor: any
    // address is sound, a bad one yields an error.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T).ok() }
}

/// A TCP socket found from a file descriptor.
#[derive(Clone, Copy)]
pub struct TcpSock {
    /// `struct sock *`.
    pub sk: u64,
    /// Inode number of the socket (unique while it lives; tells reused addresses apart).
    pub ino: u64,
    /// `struct file *` of the fd.
    pub file: u64,
    /// `struct inode *` of the socket.
    pub inode: u64,
}

/// The socket of `fd` when it is a TCP (stream, IPv4/IPv6) socket, else `None` (files,
/// pipes, Unix sockets, UDP, closed fds).
#[inline(always)]
pub fn tcp_sock_of_fd(fd: i32, off: &KernelOffsets) -> Option<TcpSock> {
    tcp_sock_of_file(file_of_fd(fd, off)?, off)
}

/// The `struct file *` of `fd` in the current task's table (`None`: not open).
#[inline(always)]
pub fn file_of_fd(fd: i32, off: &KernelOffsets) -> Option<u64> {
    if fd < 0 {
        return None;
    }
    // SAFETY: a helper without arguments; the task pointer is only used as a number that
    // `read` adds offsets to.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read(task, off.task_files)?;
    let fdt: u64 = read(files, off.files_fdt)?;
    let max_fds: u32 = read(fdt, off.fdt_max_fds)?;
    if fd as u32 >= max_fds {
        return None;
    }
    let fd_array: u64 = read(fdt, off.fdt_fd)?;
    let file: u64 = read(fd_array, (fd as u32) * 8)?;
    if file == 0 { None } else { Some(file) }
}

/// The socket of an open file when it is a TCP (stream, IPv4/IPv6) socket.
#[inline(always)]
pub fn tcp_sock_of_file(file: u64, off: &KernelOffsets) -> Option<TcpSock> {
    let inode: u64 = read(file, off.file_inode)?;
    let mode: u16 = read(inode, off.inode_mode)?;
    if mode & S_IFMT != S_IFSOCK {
        return None;
    }
    let socket: u64 = read(file, off.file_private_data)?;
    let ty: u16 = read(socket, off.socket_type)?;
    if ty != SOCK_STREAM {
        return None;
    }
    let sk: u64 = read(socket, off.socket_sk)?;
    let family: u16 = read(sk, off.sk_family)?;
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    let ino: u64 = read(inode, off.inode_ino)?;
    Some(TcpSock {
        sk,
        ino,
        file,
        inode,
    })
}

/// Whether the open file `file` is still the TCP socket `known` was found for (its file, its
/// inode and the inode's number, which a new socket never reuses while the agent runs): two
/// reads where [`tcp_sock_of_file`] takes seven. A file or inode freed and reallocated at the
/// same address fails the check (a socket's inode gets a new number; another kind of file's
/// inode comes from another slab, so never the socket inode's address).
#[inline(always)]
pub fn still_socket(file: u64, known: &TcpSock, off: &KernelOffsets) -> bool {
    if known.sk == 0 || file != known.file {
        return false;
    }
    let Some(inode) = read::<u64>(file, off.file_inode) else {
        return false;
    };
    inode == known.inode && read::<u64>(inode, off.inode_ino) == Some(known.ino)
}

/// Both ends of the connection, from `struct sock_common`.
#[inline(always)]
pub fn conn_addr(sk: u64, off: &KernelOffsets) -> ConnAddr {
    // A failed read leaves zeros.
    let mut a = ConnAddr {
        family: read(sk, off.sk_family).unwrap_or(0),
        local_port: read(sk, off.sk_num).unwrap_or(0),
        remote_port: u16::from_be(read(sk, off.sk_dport).unwrap_or(0)),
        ..ConnAddr::default()
    };
    if a.family == AF_INET6 {
        a.local_addr = read(sk, off.sk_v6_rcv_saddr).unwrap_or([0; 16]);
        a.remote_addr = read(sk, off.sk_v6_daddr).unwrap_or([0; 16]);
    } else {
        let l: [u8; 4] = read(sk, off.sk_rcv_saddr).unwrap_or([0; 4]);
        let r: [u8; 4] = read(sk, off.sk_daddr).unwrap_or([0; 4]);
        a.local_addr[..4].copy_from_slice(&l);
        a.remote_addr[..4].copy_from_slice(&r);
    }
    a
}

/// Whether other references to the file remain (a forked child, a dup'ed fd): closing this fd
/// then does not end the connection.
#[inline(always)]
pub fn file_shared(file: u64, off: &KernelOffsets) -> bool {
    // On a failed read assume not shared (the close ends tracking, as before).
    let count: i64 = read(file, off.file_refcount).unwrap_or(0);
    count > off.file_refcount_one as i64
}
