//! Which pid namespace's procfs each mount namespace shows at /proc: the numbers in a
//! `/proc/N` path are that namespace's, which is usually, but not always, the caller's (a
//! process that made a pid namespace without a mount namespace and a procfs of its own still
//! reads the host's /proc). Read from the kernel through a task of the mount namespace:
//! `/proc/PID/root/proc` is resolved in that task's root and mount namespace.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// PROC_SUPER_MAGIC (include/uapi/linux/magic.h).
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

/// Inode of a namespace link (`/proc/PID/ns/KIND`).
fn ns_inode(pid: &str, kind: &str) -> Option<u32> {
    u32::try_from(std::fs::metadata(format!("/proc/{pid}/ns/{kind}")).ok()?.ino()).ok()
}

/// Device and inode of a directory.
fn dev_ino(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Whether `path` is on a procfs.
fn is_procfs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: statfs is plain data: all zeroes is a valid value.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `buf` a writable statfs, both outliving the call.
    unsafe { libc::statfs(c.as_ptr(), &raw mut buf) == 0 && buf.f_type == PROC_SUPER_MAGIC }
}

/// This process's view: its mount namespace, root and pid namespace.
struct Own {
    mnt: u32,
    root: (u64, u64),
    pidns: u32,
    pid: u32,
}

impl Own {
    fn read() -> Option<Self> {
        Some(Self {
            mnt: ns_inode("self", "mnt")?,
            root: dev_ino(Path::new("/"))?,
            pidns: ns_inode("self", "pid")?,
            pid: std::process::id(),
        })
    }
}

/// The mount namespace of task `pid` and the pid namespace of the procfs at its /proc, if it
/// has one there. A task of another mount namespace whose root is still the host's is either
/// being set up by a runtime (which mounts the container's procfs inside the new root, then
/// pivots: its /proc is still the host's, and will not be) or made its own procfs in place
/// (`unshare --mount-proc`): only the latter, a procfs of the task's own namespace, is certain.
/// A mount namespace left out is not judged by the kernel programs.
fn procfs_of(own: &Own, pid: u32) -> Option<(u32, u32)> {
    let mnt = ns_inode(&pid.to_string(), "mnt")?;
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let setting_up = mnt != own.mnt && dev_ino(&root)? == own.root;
    let proc = root.join("proc");
    if !is_procfs(&proc) {
        return None;
    }
    // `self` in a procfs is the reader's number in that procfs's namespace: ours if it is ours,
    // nothing if we are not in it (then its pid 1, the namespace's init, says which it is).
    let shown = match std::fs::read_link(proc.join("self")) {
        Ok(me) => (me.to_str()? == own.pid.to_string()).then_some(own.pidns)?,
        Err(_) => u32::try_from(std::fs::metadata(proc.join("1/ns/pid")).ok()?.ino()).ok()?,
    };
    if setting_up && Some(shown) != ns_inode(&pid.to_string(), "pid") {
        return None;
    }
    Some((mnt, shown))
}

/// Mount namespace -> pid namespace of its /proc, for this process's mount namespace and those
/// of the tasks `pids`.
pub fn procfs_map(pids: impl IntoIterator<Item = u32>) -> HashMap<u32, u32> {
    let Some(own) = Own::read() else { return HashMap::new() };
    let mut known = HashMap::from([(own.mnt, own.pidns)]);
    for pid in pids {
        if let Some((mnt, pidns)) = procfs_of(&own, pid) {
            known.entry(mnt).or_insert(pidns);
        }
    }
    known
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_sees_its_own_namespaces_procfs() {
        let own = Own::read().expect("our own namespaces");
        let map = procfs_map([std::process::id()]);
        assert_eq!(map.get(&own.mnt), Some(&own.pidns), "{map:?}");
        assert!(procfs_of(&own, u32::MAX).is_none());
    }
}
