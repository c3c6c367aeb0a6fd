//! `compare`: what differs between a snapshot and a container's tree now, a line per difference.
//! Compared: the processes (by vpid), their numbers in nested namespaces, parents, groups,
//! sessions and threads. Not compared: comm, exe, start times and host pids (a restored tree runs
//! other programs, later, elsewhere).

use std::collections::BTreeMap;

use super::snapshot::{Process, Snapshot};

/// Whether threads are compared (not after a restore that ran a command in every process).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    Compare,
    Ignore,
}

/// Every difference between `expected` and `actual`, in vpid order.
pub fn differences(expected: &Snapshot, actual: &Snapshot, threads: Threads) -> Vec<String> {
    let want: BTreeMap<u32, &Process> = expected.processes.iter().map(|p| (p.vpid, p)).collect();
    let have: BTreeMap<u32, &Process> = actual.processes.iter().map(|p| (p.vpid, p)).collect();
    let mut out = Vec::new();
    let vpids: std::collections::BTreeSet<u32> = want.keys().chain(have.keys()).copied().collect();
    for v in vpids {
        let (w, h) = match (want.get(&v), have.get(&v)) {
            (Some(w), Some(h)) => (w, h),
            (Some(w), None) => {
                out.push(format!("process {v} ({}): missing", w.comm));
                continue;
            }
            (None, Some(h)) => {
                out.push(format!("process {v} ({}): not in the snapshot", h.comm));
                continue;
            }
            (None, None) => continue,
        };
        let mut field = |name: &str, want: String, have: String| {
            if want != have {
                out.push(format!("process {v}: {name} {have}, expected {want}"));
            }
        };
        field("nspid", format!("{:?}", w.nspid), format!("{:?}", h.nspid));
        field("parent", w.ppid.to_string(), h.ppid.to_string());
        field("process group", w.pgid.to_string(), h.pgid.to_string());
        field("session", w.sid.to_string(), h.sid.to_string());
        if threads == Threads::Compare {
            let wt: BTreeMap<u32, &Vec<u32>> = w.threads.iter().map(|t| (t.vtid, &t.nspid)).collect();
            let ht: BTreeMap<u32, &Vec<u32>> = h.threads.iter().map(|t| (t.vtid, &t.nspid)).collect();
            for (t, nspid) in &wt {
                match ht.get(t) {
                    None => out.push(format!("process {v}: thread {t} missing")),
                    Some(n) if n != nspid => {
                        out.push(format!("process {v}: thread {t} nspid {n:?}, expected {nspid:?}"));
                    }
                    Some(_) => {}
                }
            }
            for t in ht.keys().filter(|t| !wt.contains_key(t)) {
                out.push(format!("process {v}: thread {t} not in the snapshot"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::snapshot::{
        Thread,
        tests::{proc, snap},
    };

    fn thread(vtid: u32) -> Thread {
        Thread { vtid, nspid: vec![vtid], comm: "t".into(), start_time_ns: 0 }
    }

    #[test]
    fn equal_trees_have_no_difference_whatever_their_programs() {
        let a = snap(vec![proc(1, 0, 0, 0), proc(2, 1, 2, 2)]);
        let mut b = a.clone();
        b.processes[1].comm = "sleep".into();
        b.processes[1].host_pid = Some(4242);
        b.processes[1].start_time_ns = 99;
        b.container = "restored".into();
        b.level = 3;
        assert!(differences(&a, &b, Threads::Compare).is_empty());
    }

    #[test]
    fn each_difference_is_a_line() {
        let mut p2 = proc(2, 1, 2, 2);
        p2.threads = vec![thread(3), thread(4)];
        let a = snap(vec![proc(1, 0, 0, 0), p2.clone(), proc(5, 2, 2, 2), proc(6, 2, 2, 2)]);
        let mut q2 = p2;
        q2.threads = vec![thread(3), thread(7)];
        let mut q5 = proc(5, 1, 5, 2);
        q5.nspid = vec![5, 1];
        let b = snap(vec![proc(1, 0, 0, 0), q2, q5, proc(8, 1, 0, 0)]);
        assert_eq!(
            differences(&a, &b, Threads::Compare),
            vec![
                "process 2: thread 4 missing",
                "process 2: thread 7 not in the snapshot",
                "process 5: nspid [5, 1], expected [5]",
                "process 5: parent 1, expected 2",
                "process 5: process group 5, expected 2",
                "process 6 (p6): missing",
                "process 8 (p8): not in the snapshot",
            ]
        );
        let no_threads = differences(&a, &b, Threads::Ignore);
        assert_eq!(no_threads.len(), 5);
        assert!(no_threads.iter().all(|l| !l.contains("thread")));
    }
}
