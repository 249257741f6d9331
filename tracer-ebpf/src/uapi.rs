//! The kernel's user-space ABI that the syscall programs read: the syscall tracepoint record
//! and the structs the socket syscalls take from user memory, laid out as the kernel's UAPI
//! headers define them for 64-bit targets. These types name the offsets; user memory is never
//! dereferenced by Rust, only copied with `bpf_probe_read_user` (a bad address yields an error).
use core::mem::{offset_of, size_of};

use aya_ebpf::helpers::bpf_probe_read_user;

/// A `syscalls:sys_enter_*` record (`include/trace/events/syscalls.h`): the common tracepoint
/// fields, the syscall number, then the six arguments. A `sys_exit_*` record has the return
/// value where the first argument is.
#[repr(C)]
pub struct SyscallRecord {
    pub common: u64,
    pub syscall_nr: i32,
    pub _pad: u32,
    pub args: [u64; 6],
}

/// `struct iovec` (`include/uapi/linux/uio.h`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Iovec {
    pub iov_base: u64,
    pub iov_len: u64,
}

/// `struct user_msghdr` (`include/linux/socket.h`), the `msghdr` of sendmsg/recvmsg.
#[repr(C)]
pub struct UserMsghdr {
    pub msg_name: u64,
    pub msg_namelen: i32,
    pub msg_iov: u64,
    pub msg_iovlen: u64,
    pub msg_control: u64,
    pub msg_controllen: u64,
    pub msg_flags: u32,
}

/// `struct mmsghdr` (`include/linux/socket.h`), one message of sendmmsg/recvmmsg.
#[repr(C)]
pub struct Mmsghdr {
    pub msg_hdr: UserMsghdr,
    /// Bytes sent or received for this message (written by the kernel).
    pub msg_len: u32,
}

// The layout the kernel uses; a mismatch would silently read the wrong user bytes.
const _: () = {
    assert!(offset_of!(SyscallRecord, args) == 16);
    assert!(size_of::<Iovec>() == 16);
    assert!(offset_of!(UserMsghdr, msg_iov) == 16);
    assert!(offset_of!(UserMsghdr, msg_iovlen) == 24);
    assert!(size_of::<UserMsghdr>() == 56);
    assert!(offset_of!(Mmsghdr, msg_len) == 56);
    assert!(size_of::<Mmsghdr>() == 64);
};

/// Reads a `T` at user address `addr`.
#[inline(always)]
fn read_user<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_user copies through the kernel's fault-handling accessor: any
    // address is sound, a bad one yields an error.
    unsafe { bpf_probe_read_user(addr as *const T) }.ok()
}

impl Iovec {
    /// Segment `i` of the iovec array at `array`; an empty segment where unreadable.
    #[inline(always)]
    pub fn read(array: u64, i: u64) -> Self {
        read_user(array + i * size_of::<Iovec>() as u64).unwrap_or(Iovec {
            iov_base: 0,
            iov_len: 0,
        })
    }
}

impl UserMsghdr {
    /// `msg_iov` of the `user_msghdr` at `msghdr` (0 where unreadable).
    #[inline(always)]
    pub fn read_iov(msghdr: u64) -> u64 {
        read_user(msghdr + offset_of!(UserMsghdr, msg_iov) as u64).unwrap_or(0)
    }

    /// `msg_iovlen` of the `user_msghdr` at `msghdr` (0 where unreadable).
    #[inline(always)]
    pub fn read_iovlen(msghdr: u64) -> u64 {
        read_user(msghdr + offset_of!(UserMsghdr, msg_iovlen) as u64).unwrap_or(0)
    }
}

impl Mmsghdr {
    /// Address of message `i` of the mmsghdr array at `array`.
    #[inline(always)]
    pub fn at(array: u64, i: u32) -> u64 {
        array + i as u64 * size_of::<Mmsghdr>() as u64
    }

    /// `msg_len` of the `mmsghdr` at `mmsg` (0 where unreadable).
    #[inline(always)]
    pub fn read_len(mmsg: u64) -> u32 {
        read_user(mmsg + offset_of!(Mmsghdr, msg_len) as u64).unwrap_or(0)
    }
}
