//! Taking a snapshot: the container's tasks and their ids at every level from the daemon (`ps`
//! rows), and from /proc what the maps do not keep: the parent, the process group and the
//! session as the container sees them (NSpgid/NSsid of /proc/PID/status), the executable.

use std::{
    collections::{BTreeMap, HashMap},
    hash::BuildHasher,
};

use procfs::{FromRead, process::Status};

use super::snapshot::{FORMAT, Process, Snapshot, Thread};
use crate::{
    api::{ContainerRow, TaskRow},
    procscan::ProcError,
};

/// What /proc says about a process that the maps do not keep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcFacts {
    /// The parent's host pid (0 for none).
    pub ppid: u32,
    /// Process group and session ids at every level, outermost first (0 where the leader is
    /// not visible).
    pub nspgid: Vec<u32>,
    pub nssid: Vec<u32>,
    pub exe: Option<String>,
}

/// Parses /proc/PID/status into the facts (the pure part).
pub fn parse_facts(pid: u32, status: &[u8], exe: Option<String>) -> Result<ProcFacts, ProcError> {
    let bad = |msg: String| ProcError::Bad { pid, tid: pid, msg };
    let s = Status::from_read(status).map_err(|e| bad(format!("status: {e}")))?;
    let ids = |v: Option<Vec<i32>>, what: &str| -> Result<Vec<u32>, ProcError> {
        let v = v.ok_or_else(|| bad(format!("no {what} line (kernel older than 4.1?)")))?;
        v.into_iter().map(|n| u32::try_from(n).map_err(|_| bad(format!("{what}: {n}")))).collect()
    };
    Ok(ProcFacts {
        ppid: u32::try_from(s.ppid).unwrap_or(0),
        nspgid: ids(s.nspgid, "NSpgid")?,
        nssid: ids(s.nssid, "NSsid")?,
        exe,
    })
}

/// Reads the facts of host pid `pid` from /proc.
pub fn read_facts(pid: u32) -> Result<ProcFacts, ProcError> {
    let status = std::fs::read(format!("/proc/{pid}/status")).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ProcError::Gone { tid: pid },
        _ => ProcError::Io(e),
    })?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok().map(|p| p.display().to_string());
    parse_facts(pid, &status, exe)
}

/// The pid namespaces of `target` and of every container nested in it, from the daemon's list.
pub fn namespaces_of(target: &ContainerRow, all: &[ContainerRow]) -> Vec<u32> {
    let by_id: HashMap<&str, &ContainerRow> = all.iter().map(|c| (c.id.as_str(), c)).collect();
    let inside = |c: &ContainerRow| {
        let mut at = Some(c);
        // A parent chain is at most as long as the levels.
        for _ in 0..=pidvirt_common::MAX_PID_NS_LEVEL {
            match at {
                Some(c) if c.id == target.id => return true,
                Some(c) => at = c.parent.as_deref().and_then(|p| by_id.get(p).copied()),
                None => return false,
            }
        }
        false
    };
    let mut ns: Vec<u32> = all.iter().filter(|c| c.kind == "pidns" && inside(c)).map(|c| c.pidns).collect();
    if !ns.contains(&target.pidns) {
        ns.push(target.pidns);
    }
    ns
}

/// Builds the snapshot of `target` from the rows of its tasks (its own and those of namespaces
/// nested in it) and the facts of its processes (by host pid). A process whose every task has
/// exited (a zombie), or whose facts are missing (it ended meanwhile), is left out.
pub fn assemble<S: BuildHasher>(
    target: &ContainerRow,
    rows: &[TaskRow],
    facts: &HashMap<u32, ProcFacts, S>,
) -> Snapshot {
    let level = target.level as usize;
    let rel = |nspid: &[u32]| nspid.get(level..).map(<[u32]>::to_vec).unwrap_or_default();
    let mut by_pid: BTreeMap<u32, Vec<&TaskRow>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.nspid.len() > level) {
        by_pid.entry(r.host_pid).or_default().push(r);
    }
    let vpid_of: HashMap<u32, u32> = by_pid
        .iter()
        .filter_map(|(&pid, rows)| Some((pid, rows.iter().find(|r| r.host_tid == pid)?.nspid[level])))
        .collect();
    let mut processes = Vec::new();
    for (pid, tasks) in &by_pid {
        let (Some(leader), Some(f)) = (tasks.iter().find(|r| r.host_tid == *pid), facts.get(pid)) else {
            continue;
        };
        if tasks.iter().all(|r| r.exited) {
            continue;
        }
        let at = |v: &[u32]| v.get(level).copied().unwrap_or(0);
        let mut threads: Vec<Thread> = tasks
            .iter()
            .filter(|r| r.host_tid != *pid && !r.exited)
            .map(|r| Thread {
                vtid: r.nspid[level],
                nspid: rel(&r.nspid),
                comm: r.comm.clone(),
                start_time_ns: r.start_time_ns,
            })
            .collect();
        threads.sort_by_key(|t| t.vtid);
        processes.push(Process {
            vpid: leader.nspid[level],
            nspid: rel(&leader.nspid),
            ppid: vpid_of.get(&f.ppid).copied().unwrap_or(0),
            pgid: at(&f.nspgid),
            sid: at(&f.nssid),
            comm: leader.comm.clone(),
            exe: f.exe.clone(),
            start_time_ns: leader.start_time_ns,
            host_pid: Some(*pid),
            threads,
        });
    }
    processes.sort_by_key(|p| p.vpid);
    Snapshot {
        format: FORMAT.into(),
        container: target.id.clone(),
        pidns: target.pidns,
        level: target.level,
        processes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(id: &str, pidns: u32, level: u32, parent: Option<&str>) -> ContainerRow {
        ContainerRow {
            id: id.into(),
            kind: "pidns".into(),
            pidns,
            level,
            parent: parent.map(Into::into),
            cgroup: None,
            mode: "observe".into(),
            tasks: 0,
            registered_by: "kernel".into(),
            labels: BTreeMap::new(),
            runtime: None,
            k8s: None,
        }
    }

    fn row(host_pid: u32, host_tid: u32, nspid: &[u32], pidns: u32) -> TaskRow {
        TaskRow {
            container: String::new(),
            pidns,
            level: nspid.len() as u32 - 1,
            host_tid,
            host_pid,
            vtid: *nspid.last().unwrap(),
            vpid: 0,
            nspid: nspid.to_vec(),
            nstgid: vec![],
            comm: format!("c{host_tid}"),
            start_time_ns: u64::from(host_tid),
            seeded: false,
            exited: false,
            kthread: false,
            runtime: None,
            k8s: None,
        }
    }

    fn facts(ppid: u32, nspgid: &[u32], nssid: &[u32]) -> ProcFacts {
        ProcFacts { ppid, nspgid: nspgid.to_vec(), nssid: nssid.to_vec(), exe: Some("/bin/x".into()) }
    }

    #[test]
    fn status_lines_give_parent_group_and_session_at_every_level() {
        use crate::procscan::tests::STATUS;
        let f = parse_facts(26919, STATUS.as_bytes(), None).unwrap();
        assert_eq!(f, ProcFacts { ppid: 26918, nspgid: vec![26919, 1], nssid: vec![26900, 0], exe: None });
        let e = parse_facts(26919, STATUS.replace("NSpgid:\t26919\t1\n", "").as_bytes(), None).unwrap_err();
        assert!(e.to_string().contains("NSpgid"), "{e}");
    }

    /// A process as the test checks it: vpid, nspid, parent, group, session, thread vtids.
    type Seen = (u32, Vec<u32>, u32, u32, u32, Vec<u32>);

    #[test]
    fn a_tree_relative_to_the_container_with_nested_namespaces() {
        let target = container("web", 10, 1, Some("host"));
        let nested = container("web/pidns-11", 11, 2, Some("web"));
        let other = container("other", 12, 1, Some("host"));
        let host = ContainerRow { kind: "host".into(), ..container("host", 1, 0, None) };
        let all = [host, target.clone(), nested, other];
        assert_eq!(namespaces_of(&target, &all), vec![10, 11]);

        // init 100 (vpid 1) -> 101 (vpid 2, two threads, one exited) -> 102 (init of the nested
        // namespace: 3 in web, 1 in it) -> 103 (4 in web, 2 nested); 104 is a zombie.
        let rows = vec![
            row(100, 100, &[100, 1], 10),
            row(101, 101, &[101, 2], 10),
            row(101, 105, &[105, 5], 10),
            TaskRow { exited: true, ..row(101, 106, &[106, 6], 10) },
            row(102, 102, &[102, 3, 1], 11),
            row(103, 103, &[103, 4, 2], 11),
            TaskRow { exited: true, ..row(104, 104, &[104, 7], 10) },
        ];
        let f = HashMap::from([
            (100, facts(50, &[100, 1], &[100, 1])),
            (101, facts(100, &[101, 2], &[100, 1])),
            (102, facts(101, &[101, 2, 0], &[100, 1, 0])),
            (103, facts(102, &[103, 4, 2], &[100, 1, 0])),
            (104, facts(100, &[104, 7], &[100, 1])),
        ]);
        let s = assemble(&target, &rows, &f);
        assert_eq!((s.container.as_str(), s.pidns, s.level), ("web", 10, 1));
        let got: Vec<Seen> = s
            .processes
            .iter()
            .map(|p| {
                (p.vpid, p.nspid.clone(), p.ppid, p.pgid, p.sid, p.threads.iter().map(|t| t.vtid).collect())
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (1, vec![1], 0, 1, 1, vec![]),
                (2, vec![2], 1, 2, 1, vec![5]),
                (3, vec![3, 1], 2, 2, 1, vec![]),
                (4, vec![4, 2], 3, 4, 1, vec![]),
            ]
        );
        assert_eq!(s.processes[1].threads[0].nspid, vec![5]);
        assert_eq!(s.processes[0].host_pid, Some(100));
        assert!(s.validate(32768).is_ok());
    }
}
