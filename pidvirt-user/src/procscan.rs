//! What /proc says about tasks: the seed of the maps at attach time, and the truth tests and
//! `reconcile` compare against. Parsing of status/stat is procfs's; this module turns it into
//! pidvirt's view (ids at every level, outermost first, and the pid namespace chain).

use std::{
    collections::HashMap,
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::Path,
};

use procfs::{
    FromRead,
    process::{Stat, Status},
};

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("task {tid} is gone")]
    Gone { tid: u32 },
    #[error("/proc/{pid}/task/{tid}: {msg}")]
    Bad { pid: u32, tid: u32, msg: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A task as /proc shows it to a reader in the initial pid namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcTask {
    pub host_pid: u32,
    pub host_tid: u32,
    /// Thread ids at every level, outermost (host) first, like NSpid of /proc/PID/task/TID/status.
    pub nspid: Vec<u32>,
    /// Thread-group ids at every level, outermost first (NStgid).
    pub nstgid: Vec<u32>,
    /// Start time in clock ticks since boot (stat field 22).
    pub start_ticks: u64,
    /// Inode of the task's pid namespace (/proc/PID/ns/pid).
    pub pidns: u32,
    pub comm: String,
    /// A kernel thread (stat's flags hold PF_KTHREAD).
    pub kthread: bool,
}

impl ProcTask {
    /// Level of the task's own pid namespace (0 = host).
    pub fn level(&self) -> u32 {
        self.nspid.len().saturating_sub(1) as u32
    }
}

/// Builds a [`ProcTask`] from the text of status and stat (the pure part, unit-tested).
pub fn parse_task(pid: u32, tid: u32, status: &[u8], stat: &[u8], pidns: u32) -> Result<ProcTask, ProcError> {
    let bad = |msg: String| ProcError::Bad { pid, tid, msg };
    let status = Status::from_read(status).map_err(|e| bad(format!("status: {e}")))?;
    let stat = Stat::from_read(stat).map_err(|e| bad(format!("stat: {e}")))?;
    let ids = |v: Option<Vec<i32>>, what: &str| -> Result<Vec<u32>, ProcError> {
        let v = v.ok_or_else(|| bad(format!("no {what} line (kernel older than 4.1?)")))?;
        if v.is_empty() || v.iter().any(|&n| n <= 0) {
            return Err(bad(format!("bad {what} {v:?}")));
        }
        Ok(v.into_iter().map(|n| n as u32).collect())
    };
    let nspid = ids(status.nspid, "NSpid")?;
    let nstgid = ids(status.nstgid, "NStgid")?;
    if nspid.len() != nstgid.len() {
        return Err(bad(format!("NSpid {nspid:?} and NStgid {nstgid:?} differ in depth")));
    }
    if nspid[0] != tid || nstgid[0] != pid {
        return Err(bad(format!("NSpid {nspid:?} / NStgid {nstgid:?} do not start with {tid}/{pid}")));
    }
    Ok(ProcTask {
        host_pid: pid,
        host_tid: tid,
        nspid,
        nstgid,
        start_ticks: stat.starttime,
        pidns,
        comm: stat.comm,
        kthread: stat.flags & pidvirt_common::task_flags::PF_KTHREAD != 0,
    })
}

fn read_or_gone(path: &str, tid: u32) -> Result<Vec<u8>, ProcError> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ProcError::Gone { tid },
        _ if e.raw_os_error() == Some(libc::ESRCH) => ProcError::Gone { tid },
        _ => ProcError::Io(e),
    })
}

/// Inode of the pid namespace of process `pid`.
pub fn pidns_of(pid: u32) -> Result<u32, ProcError> {
    match std::fs::metadata(format!("/proc/{pid}/ns/pid")) {
        Ok(m) => Ok(m.ino() as u32),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ProcError::Gone { tid: pid }),
        Err(e) => Err(e.into()),
    }
}

/// Reads task `tid` of process `pid`. `pidns` may be given when already known for the process.
pub fn read_task(pid: u32, tid: u32, pidns: Option<u32>) -> Result<ProcTask, ProcError> {
    let base = format!("/proc/{pid}/task/{tid}");
    let status = read_or_gone(&format!("{base}/status"), tid)?;
    let stat = read_or_gone(&format!("{base}/stat"), tid)?;
    let pidns = match pidns {
        Some(ns) => ns,
        None => pidns_of(pid)?,
    };
    parse_task(pid, tid, &status, &stat, pidns)
}

/// Thread ids of process `pid` (empty if it is gone).
pub fn thread_ids(pid: u32) -> Vec<u32> {
    numeric_entries(&format!("/proc/{pid}/task"))
}

/// Numeric directory entries of `dir`.
pub fn numeric_entries(dir: &str) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// Every task on the host, process by process. Tasks that vanish during the walk are skipped.
pub fn scan() -> Vec<ProcTask> {
    let mut out = Vec::with_capacity(1024);
    for pid in numeric_entries("/proc") {
        let ns = match pidns_of(pid) {
            Ok(ns) => ns,
            // A process whose namespace links we may not read (this machine's pid 1, its own
            // supervisor): one level in NSpid is the initial namespace, ours.
            Err(ProcError::Io(e)) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                let Some(ns) = initial_ns_of(pid) else {
                    tracing::warn!(pid, "skipping process: its pid namespace is unreadable ({e})");
                    continue;
                };
                ns
            }
            Err(_) => continue,
        };
        for tid in thread_ids(pid) {
            match read_task(pid, tid, Some(ns)) {
                Ok(t) => out.push(t),
                Err(ProcError::Gone { .. }) => {}
                Err(e) => tracing::warn!("skipping task: {e}"),
            }
        }
    }
    out
}

/// Our own (initial) pid namespace, if process `pid` has a single level in NSpid: it lives in it.
fn initial_ns_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let nspid = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    (nspid.split_whitespace().count() == 1).then(|| pidns_of(std::process::id()).ok())?
}

/// The running kernel's release (`uname -r`), empty if it cannot be read.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string()
}

/// Nanoseconds per clock tick of /proc start times.
pub fn tick_ns() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 { 10_000_000 } else { (1_000_000_000 / hz) as u32 }
}

/// NS_GET_PARENT = _IO(0xb7, 0x2)
const NS_GET_PARENT: libc::c_ulong = 0xb702;

/// Pid namespace inodes from the namespace of `pid` up to the initial one, innermost first
/// (NS_GET_PARENT on /proc/PID/ns/pid). Index `level - i` of the result is the namespace at
/// level `i`.
pub fn pidns_chain(pid: u32) -> Result<Vec<u32>, ProcError> {
    let mut f = match File::open(format!("/proc/{pid}/ns/pid")) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ProcError::Gone { tid: pid });
        }
        Err(e) => return Err(e.into()),
    };
    let mut chain = vec![f.metadata()?.ino() as u32];
    for _ in 0..=pidvirt_common::MAX_PID_NS_LEVEL {
        // SAFETY: NS_GET_PARENT takes no argument; `f` is an open namespace file.
        let fd = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_PARENT) };
        if fd < 0 {
            // EPERM: the parent is outside our namespace, i.e. we reached the initial one.
            break;
        }
        // SAFETY: the ioctl returned a new file descriptor that nothing else owns.
        f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        chain.push(f.metadata()?.ino() as u32);
    }
    Ok(chain)
}

/// Pid namespace chains by leaf namespace, computed once per namespace.
#[derive(Default)]
pub struct ChainCache {
    chains: HashMap<u32, Vec<u32>>,
}

impl ChainCache {
    /// Namespace inodes of `task` at levels 0..=level (outermost first).
    pub fn levels(&mut self, task: &ProcTask) -> Option<Vec<u32>> {
        // The initial namespace has no parent to ask for (and some of its processes' links
        // cannot be read).
        if task.nspid.len() == 1 {
            return Some(vec![task.pidns]);
        }
        let chain = match self.chains.entry(task.pidns) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let mut chain = pidns_chain(task.host_pid).ok()?;
                chain.reverse();
                e.insert(chain)
            }
        };
        (chain.len() == task.nspid.len() && chain.last() == Some(&task.pidns)).then(|| chain.clone())
    }
}

/// The initial pid namespace's inode, checking that we run in it.
pub fn own_pidns_is_init() -> Result<u32, String> {
    let me = std::process::id();
    let t = read_task(me, me, None).map_err(|e| e.to_string())?;
    if t.level() != 0 {
        return Err(format!(
            "pidvirt must run in the initial pid namespace (it runs at level {}, NSpid {:?})",
            t.level(),
            t.nspid
        ));
    }
    Ok(t.pidns)
}

/// Whether `path` names a directory in /proc of a live process.
pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A real /proc/PID/task/TID/status (6.18) of a thread in a level-1 namespace.
    pub(crate) const STATUS: &str = "Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t26919\nNgid:\t0\n\
Pid:\t26921\nPPid:\t26918\nTracerPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nFDSize:\t64\n\
Groups:\t \nNStgid:\t26919\t1\nNSpid:\t26921\t3\nNSpgid:\t26919\t1\nNSsid:\t26900\t0\n\
Kthread:\t0\nThreads:\t2\nSigQ:\t0/96364\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\n\
SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\nSigCgt:\t0000000000000000\n\
CapInh:\t0000000000000000\nCapPrm:\t000001fffeffffff\nCapEff:\t000001fffeffffff\n\
CapBnd:\t000001fffeffffff\nCapAmb:\t0000000000000000\nSeccomp:\t0\n";

    fn stat_line(pid: u32, comm: &str, start: u64) -> String {
        stat_line_flags(pid, comm, start, 0x40_0040)
    }

    /// 52 fields; field 9 is flags, field 22 starttime.
    fn stat_line_flags(pid: u32, comm: &str, start: u64, flags: u32) -> String {
        let mut f: Vec<String> = vec![pid.to_string(), format!("({comm})"), "S".into()];
        for i in 4..=52 {
            f.push(match i {
                9 => flags.to_string(),
                22 => start.to_string(),
                _ => "0".into(),
            });
        }
        f.join(" ") + "\n"
    }

    #[test]
    fn parses_a_thread_in_a_nested_namespace() {
        let t = parse_task(
            26919,
            26921,
            STATUS.as_bytes(),
            stat_line(26921, "sleep", 4242).as_bytes(),
            4026532300,
        )
        .unwrap();
        assert_eq!(t.nspid, vec![26921, 3]);
        assert_eq!(t.nstgid, vec![26919, 1]);
        assert_eq!(t.start_ticks, 4242);
        assert_eq!(t.level(), 1);
        assert_eq!(t.comm, "sleep");
        assert!(!t.kthread);
    }

    #[test]
    fn a_kernel_thread_is_told_by_its_stat_flags() {
        // kthreadd's flags on 6.18: PF_KTHREAD | PF_NOFREEZE | PF_FORKNOEXEC | PF_SUPERPRIV...
        let status =
            STATUS.replace("NSpid:\t26921\t3", "NSpid:\t2").replace("NStgid:\t26919\t1", "NStgid:\t2");
        let t =
            parse_task(2, 2, status.as_bytes(), stat_line_flags(2, "kthreadd", 1, 0x20_8040).as_bytes(), 1)
                .unwrap();
        assert!(t.kthread);
        let (e, _) = crate::seed::entry_from_proc(&t, &[1], 10_000_000);
        assert_eq!(e.flags, pidvirt_common::task_flags::SEEDED | pidvirt_common::task_flags::KTHREAD);
    }

    #[test]
    fn comm_with_spaces_and_parens() {
        let t = parse_task(26919, 26921, STATUS.as_bytes(), stat_line(26921, "a) b (c", 7).as_bytes(), 1)
            .unwrap();
        assert_eq!(t.comm, "a) b (c");
        assert_eq!(t.start_ticks, 7);
    }

    #[test]
    fn rejects_inconsistent_ids() {
        // NSpid does not start with the tid we asked for.
        let e = parse_task(26919, 555, STATUS.as_bytes(), stat_line(555, "x", 1).as_bytes(), 1).unwrap_err();
        assert!(e.to_string().contains("do not start with 555"), "{e}");
        let no_nspid = STATUS.replace("NSpid:\t26921\t3\n", "");
        let e = parse_task(26919, 26921, no_nspid.as_bytes(), stat_line(26921, "x", 1).as_bytes(), 1)
            .unwrap_err();
        assert!(e.to_string().contains("no NSpid"), "{e}");
        let uneven = STATUS.replace("NSpid:\t26921\t3\n", "NSpid:\t26921\n");
        let e =
            parse_task(26919, 26921, uneven.as_bytes(), stat_line(26921, "x", 1).as_bytes(), 1).unwrap_err();
        assert!(e.to_string().contains("differ in depth"), "{e}");
        let e = parse_task(26919, 26921, STATUS.as_bytes(), b"garbage", 1).unwrap_err();
        assert!(e.to_string().contains("stat"), "{e}");
    }

    #[test]
    fn reads_this_process_from_proc() {
        let me = std::process::id();
        let t = read_task(me, me, None).unwrap();
        assert_eq!(t.host_pid, me);
        assert_eq!(t.nspid[0], me);
        let chain = pidns_chain(me).unwrap();
        assert_eq!(chain.len(), t.nspid.len());
        assert_eq!(chain[0], t.pidns);
        assert!(matches!(read_task(me, u32::MAX - 1, None), Err(ProcError::Gone { .. })));
    }
}
