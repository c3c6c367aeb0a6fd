//! Numbers inside /proc paths: `/proc/N/...` (and `/proc/N/task/T/...`) given to the path
//! syscalls (the open, stat, readlink, access, chdir and exec families), or `N/...` relative to a
//! directory that is a procfs root (a directory fd, or the working directory). N is a number of
//! the pid namespace of THAT procfs, which is not always the caller's: a procfs root reached
//! through a directory says whose it is (its superblock's `proc_fs_info.pid_ns`); for `/proc`
//! itself, the daemon says which procfs is mounted there in each mount namespace it knows (PROCFS).
//! `/proc/self`, `/proc/thread-self` and other names are not numbers: no crossing.

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_user_str_bytes};

use crate::{
    audit::procfs_number,
    kernel::{off, read, read_ptr},
    maps::{PROCFS, daemon_tgid},
    task::fd_file,
};

/// PROC_SUPER_MAGIC (include/uapi/linux/magic.h).
const PROC_SUPER_MAGIC: u64 = 0x9fa0;
/// The dirfd meaning "the working directory".
pub const AT_FDCWD: i32 = -100;
/// Bytes of a path read at once: "/proc/", a pid of at most 7 digits (PID_MAX_LIMIT is 4194304),
/// the byte after it, and the NUL.
const CHUNK: usize = 16;
/// Digits of the longest pid.
const PID_DIGITS: usize = 7;

/// A pid at `AT` in `buf` (what the kernel's `name_to_int` takes: decimal, no leading zero, not
/// 0), ending at a '/' or the end of the string: the number and the byte after it.
#[inline(always)]
fn number<const AT: usize>(buf: &[u8; CHUNK]) -> Option<(u32, usize, u8)> {
    let mut n = 0u32;
    let mut i = 0;
    while i <= PID_DIGITS {
        let ch = buf[AT + i];
        if ch == b'/' || ch == 0 {
            return (i > 0 && buf[AT] != b'0').then_some((n, i, ch));
        }
        if !ch.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u32::from(ch - b'0');
        i += 1;
    }
    None
}

/// Reads a chunk of the user's string at `at` (zero-padded after its end).
#[inline(always)]
fn chunk(at: u64) -> Option<[u8; CHUNK]> {
    let mut buf = [0u8; CHUNK];
    unsafe { bpf_probe_read_user_str_bytes(at as *const u8, &mut buf) }.ok()?;
    Some(buf)
}

/// Whether path `path` may hold a pid: its first 7 bytes start with a digit, or are `/proc/` and
/// a digit, or cannot be read (then [`path_crossing`] decides). Most paths are no crossing and
/// their first bytes say so: the syscall programs test this before anything else (their other
/// checks, and the longer read of [`path_crossing`], cost more).
#[inline(always)]
pub fn may_cross(path: u64) -> bool {
    let mut head = [0u8; 8];
    match unsafe { bpf_probe_read_user_str_bytes(path as *const u8, &mut head) } {
        Ok(_) => starts_like_a_number(&head),
        Err(_) => true,
    }
}

/// Whether a path's first bytes (zero-padded after its end) start as a pid's: a digit (relative
/// to a directory), or `/proc/` and a digit.
#[inline(always)]
fn starts_like_a_number<const N: usize>(head: &[u8; N]) -> bool {
    head[0].is_ascii_digit() || (head[..6] == *b"/proc/" && head[6].is_ascii_digit())
}

/// A path argument of syscall `s`, relative to `dirfd` (AT_FDCWD: the working directory).
#[inline(always)]
pub fn path_crossing(s: u16, dirfd: i32, path: u64) {
    let Some(buf) = chunk(path) else { return };
    // The prefix before anything else: most paths are no crossing.
    if !starts_like_a_number(&buf) || daemon() {
        return;
    }
    let (number, rest, ns) = if buf[0] == b'/' {
        let Some((n, len, next)) = number::<6>(&buf) else { return };
        // A mount namespace the daemon has not seen yet (a container started less than a sweep
        // ago): whose procfs is at its /proc is unknown, and a guess would be noise.
        let Some(ns) = procfs_at_root() else { return };
        ((n, next), path + 6 + len as u64, ns)
    } else {
        let Some((n, len, next)) = number::<0>(&buf) else { return };
        // A procfs root, or no crossing at all (a file named 42 in some directory).
        let Some(ns) = procfs_dir(dirfd) else { return };
        ((n, next), path + len as u64, ns)
    };
    procfs_number(u32::from(s), number.0, ns);
    if number.1 == b'/' {
        task_number(s, rest, ns);
    }
}

/// Whether the caller is pidvirt's daemon (its /proc walk is not audited).
#[inline(always)]
fn daemon() -> bool {
    (bpf_get_current_pid_tgid() >> 32) as u32 == daemon_tgid()
}

/// `/task/T` after a pid's directory: T is a tid of the same procfs.
#[inline(always)]
fn task_number(s: u16, at: u64, ns: u32) {
    let Some(buf) = chunk(at) else { return };
    if buf[..6] == *b"/task/"
        && let Some((t, _, _)) = number::<6>(&buf)
    {
        procfs_number(u32::from(s), t, ns);
    }
}

/// The pid namespace of the procfs at /proc in the caller's mount namespace, if the daemon
/// knows it.
#[inline(always)]
fn procfs_at_root() -> Option<u32> {
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let mnt_ns =
        read_ptr(task, off!(task_nsproxy)).and_then(|nsproxy| read_ptr(nsproxy, off!(nsproxy_mnt_ns)));
    let inum = mnt_ns.and_then(|ns| read::<u32>(ns, off!(mnt_ns_inum))).ok()?;
    PROCFS.get_ptr(inum).map(|p| unsafe { *p })
}

/// The pid namespace of the procfs whose root is directory `dirfd` of the caller (AT_FDCWD: its
/// working directory); None when it is no procfs root.
#[inline(always)]
fn procfs_dir(dirfd: i32) -> Option<u32> {
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let dentry = if dirfd == AT_FDCWD {
        read_ptr(read_ptr(task, off!(task_fs)).ok()?, off!(fs_pwd_dentry)).ok()?
    } else {
        read_ptr(fd_file(u32::try_from(dirfd).ok()?)?, off!(file_dentry)).ok()?
    };
    let sb = read_ptr(dentry, off!(dentry_sb)).ok()?;
    if read::<u64>(sb, off!(sb_magic)).ok()? != PROC_SUPER_MAGIC
        || read_ptr(sb, off!(sb_root)).ok()? != dentry
    {
        return None;
    }
    let pid_ns = read_ptr(read_ptr(sb, off!(sb_fs_info)).ok()?, off!(proc_fs_info_pid_ns)).ok()?;
    read::<u32>(pid_ns, off!(pidns_inum)).ok()
}
