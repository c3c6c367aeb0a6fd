//! cgroup v2: where it is mounted, a process's path in it, the directories registrations name,
//! and the threads below a directory.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::api::{ApiError, ErrorCode};

fn not_found(msg: String) -> ApiError {
    ApiError::new(ErrorCode::NotFound, msg)
}

/// The cgroup v2 mount point (from /proc/self/mountinfo).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// The cgroup v2 path of process `pid` (the `0::` line of /proc/PID/cgroup).
pub fn cgroup_path_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

/// A cgroup v2 directory given as an absolute path, or relative to the cgroup2 mount, and its
/// id (the directory's inode number, the kernfs node id the programs read).
pub fn resolve_cgroup(spec: &str) -> Result<(PathBuf, u64), ApiError> {
    let mount = cgroup2_mount().ok_or_else(|| not_found("no cgroup2 file system is mounted".into()))?;
    let path = if Path::new(spec).starts_with(&mount) {
        PathBuf::from(spec)
    } else {
        mount.join(spec.trim_start_matches('/'))
    };
    let canonical = path.canonicalize().map_err(|e| not_found(format!("cgroup {}: {e}", path.display())))?;
    if !canonical.starts_with(&mount) || !canonical.join("cgroup.procs").exists() {
        return Err(not_found(format!("{} is not a cgroup v2 directory (under {})", spec, mount.display())));
    }
    let id =
        std::fs::metadata(&canonical).map_err(|e| not_found(format!("{}: {e}", canonical.display())))?.ino();
    Ok((canonical, id))
}

/// Whether cgroup `path` still is the directory with id `cgroup_id` (not removed, not replaced).
pub fn still_there(path: &Path, cgroup_id: u64) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.ino() == cgroup_id)
}

/// Every thread id in cgroup `dir` and its descendants.
pub fn threads_below(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    collect_threads(dir, &mut out, 0);
    out
}

fn collect_threads(dir: &Path, out: &mut Vec<u32>, depth: u32) {
    if depth > pidvirt_common::MAX_CGROUP_DEPTH {
        return;
    }
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.threads")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_threads(&e.path(), out, depth + 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_v2_mount_and_paths() {
        let mount = cgroup2_mount().expect("a cgroup2 mount");
        let (path, id) = resolve_cgroup("/").unwrap();
        assert_eq!(path, mount.canonicalize().unwrap());
        assert_eq!(id, std::fs::metadata(&mount).unwrap().ino());
        assert!(still_there(&path, id));
        assert!(!still_there(&path, id + 1));
        assert!(resolve_cgroup("/no/such/cgroup").unwrap_err().message.contains("no/such/cgroup"));
        assert!(cgroup_path_of(std::process::id()).is_some());
        assert!(threads_below(&path).contains(&(std::process::id())));
    }
}
