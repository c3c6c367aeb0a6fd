//! The snapshot format (`pidvirt snapshot`, read by `restore` and `compare`) and its validation.
//!
//! Every number is relative to the container: `nspid[0]` is a task's number in the container's
//! own pid namespace (its vpid), `nspid[1..]` its numbers in namespaces nested in the container,
//! innermost last (like /proc NSpid, cut at the container's level). A restore may then put the
//! tree at another level than the one it was taken at: the seed's "known namespaces" get their
//! numbers, the ones above are the kernel's choice.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

/// The `format` of every snapshot this version writes and reads.
pub const FORMAT: &str = "pidvirt-snapshot/1";

/// A container's process tree.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub format: String,
    /// The container's id when it was taken.
    pub container: String,
    /// Its pid namespace inode and that namespace's level (0 = the host's).
    pub pidns: u32,
    pub level: u32,
    /// Processes by vpid (ascending), zombies left out.
    pub processes: Vec<Process>,
}

/// A process (thread group).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Process {
    pub vpid: u32,
    /// Its numbers from the container's namespace inwards (`nspid[0] == vpid`).
    pub nspid: Vec<u32>,
    /// The parent's vpid; 0 when the parent is outside the container's namespace (its init,
    /// a process entered from outside like `docker exec`).
    pub ppid: u32,
    /// Process group and session, as vpids; 0 when they are outside the container's namespace.
    pub pgid: u32,
    pub sid: u32,
    pub comm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// Start time, ns since boot (informative; compare ignores it).
    #[serde(default)]
    pub start_time_ns: u64,
    /// The host pid it had (informative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_pid: Option<u32>,
    /// Its other threads (the leader is the process itself), by vtid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub threads: Vec<Thread>,
}

/// A thread other than its process's leader.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Thread {
    pub vtid: u32,
    /// Its numbers from the container's namespace inwards (`nspid[0] == vtid`).
    pub nspid: Vec<u32>,
    pub comm: String,
    #[serde(default)]
    pub start_time_ns: u64,
}

/// Why a file is not a snapshot that can be restored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("not a pidvirt snapshot: {0}")]
    NotJson(String),
    #[error("format `{0}` is not `{FORMAT}`")]
    Format(String),
    #[error("the snapshot has no process")]
    Empty,
    #[error("process {vpid}: {what}")]
    Bad { vpid: u32, what: String },
    #[error("pid {number} is out of range: pids run from 1 to pid_max - 1 ({max})", max = pid_max - 1)]
    OutOfRange { number: u32, pid_max: u32 },
    #[error("pid {number} appears twice in one namespace: {first} and {second}")]
    Twice { number: u32, first: String, second: String },
    #[error("process {vpid}: its parent {ppid} is not in the snapshot")]
    NoParent { vpid: u32, ppid: u32 },
    #[error("the parents of processes {} form a cycle", list(.0))]
    Cycle(Vec<u32>),
    #[error("no init: a pid namespace starts with vpid 1, whose parent is outside it (ppid 0)")]
    NoInit,
    #[error("process {vpid} cannot be restored: {why}")]
    NotRestorable { vpid: u32, why: String },
}

fn list(v: &[u32]) -> String {
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(" -> ")
}

impl Snapshot {
    /// Parses a snapshot's text (the format is checked, not the tree: see [`Snapshot::validate`]).
    pub fn parse(text: &str) -> Result<Self, SnapshotError> {
        let s: Snapshot = serde_json::from_str(text).map_err(|e| SnapshotError::NotJson(e.to_string()))?;
        if s.format != FORMAT {
            return Err(SnapshotError::Format(s.format));
        }
        Ok(s)
    }

    /// The process with vpid `vpid`.
    pub fn process(&self, vpid: u32) -> Option<&Process> {
        self.processes.iter().find(|p| p.vpid == vpid)
    }

    /// Checks that the tree is one a pid namespace can hold: numbers in 1..pid_max, each once per
    /// namespace, an init, parents that exist and form no cycle, nested namespaces entered only
    /// through their init. Sessions and groups are checked by the fork schedule.
    pub fn validate(&self, pid_max: u32) -> Result<Tree<'_>, SnapshotError> {
        if self.processes.is_empty() {
            return Err(SnapshotError::Empty);
        }
        let by_vpid = self.index()?;
        for p in &self.processes {
            check_numbers(p.vpid, &p.nspid, pid_max)?;
            for t in &p.threads {
                check_numbers(p.vpid, &t.nspid, pid_max)?;
                if t.nspid[0] != t.vtid || t.nspid.len() != p.nspid.len() {
                    return Err(bad(p.vpid, format!("thread {}: nspid {:?} does not fit", t.vtid, t.nspid)));
                }
            }
            if p.nspid[0] != p.vpid {
                return Err(bad(p.vpid, format!("nspid {:?} does not start with its vpid", p.nspid)));
            }
            if p.ppid != 0 && !by_vpid.contains_key(&p.ppid) {
                return Err(SnapshotError::NoParent { vpid: p.vpid, ppid: p.ppid });
            }
        }
        if by_vpid.get(&1).is_none_or(|p| p.ppid != 0) {
            return Err(SnapshotError::NoInit);
        }
        find_cycle(&by_vpid)?;
        let tree = Tree::new(by_vpid)?;
        tree.check_unique()?;
        Ok(tree)
    }

    fn index(&self) -> Result<BTreeMap<u32, &Process>, SnapshotError> {
        let mut by_vpid = BTreeMap::new();
        for p in &self.processes {
            if by_vpid.insert(p.vpid, p).is_some() {
                return Err(SnapshotError::Twice {
                    number: p.vpid,
                    first: format!("process {}", p.vpid),
                    second: format!("process {}", p.vpid),
                });
            }
        }
        Ok(by_vpid)
    }
}

fn bad(vpid: u32, what: String) -> SnapshotError {
    SnapshotError::Bad { vpid, what }
}

fn check_numbers(vpid: u32, nspid: &[u32], pid_max: u32) -> Result<(), SnapshotError> {
    if nspid.is_empty() {
        return Err(bad(vpid, "empty nspid".into()));
    }
    if nspid.len() > pidvirt_common::MAX_PID_NS_LEVEL as usize {
        return Err(bad(vpid, format!("{} nested levels is more than a kernel nests", nspid.len())));
    }
    match nspid.iter().find(|&&n| n == 0 || n >= pid_max) {
        Some(&number) => Err(SnapshotError::OutOfRange { number, pid_max }),
        None => Ok(()),
    }
}

/// Walks every process's parents; a walk longer than the tree is a cycle.
fn find_cycle(by_vpid: &BTreeMap<u32, &Process>) -> Result<(), SnapshotError> {
    let mut rooted = HashSet::new();
    for &start in by_vpid.keys() {
        let mut path = Vec::new();
        let mut seen = HashSet::new();
        let mut v = start;
        while v != 0 && !rooted.contains(&v) {
            if !seen.insert(v) {
                let from = path.iter().position(|&x| x == v).unwrap_or(0);
                let mut cycle = path[from..].to_vec();
                cycle.push(v);
                return Err(SnapshotError::Cycle(cycle));
            }
            path.push(v);
            v = by_vpid.get(&v).map_or(0, |p| p.ppid);
        }
        rooted.extend(path);
    }
    Ok(())
}

/// A validated snapshot's tree: processes by vpid and the nested namespace each lives in.
#[derive(Debug)]
pub struct Tree<'a> {
    pub by_vpid: BTreeMap<u32, &'a Process>,
    /// Per process, the namespaces it lives in from the container's inwards, each named by the
    /// vpid of its init (0 for the container's own).
    pub chain: HashMap<u32, Vec<u32>>,
}

impl<'a> Tree<'a> {
    fn new(by_vpid: BTreeMap<u32, &'a Process>) -> Result<Self, SnapshotError> {
        let mut chain: HashMap<u32, Vec<u32>> = HashMap::new();
        // Parents first: walk each process's ancestry down from its root.
        for &v in by_vpid.keys() {
            let mut line = vec![v];
            while let Some(p) = by_vpid.get(line.last().unwrap_or(&0)).filter(|p| p.ppid != 0) {
                line.push(p.ppid);
            }
            for &x in line.iter().rev() {
                if chain.contains_key(&x) {
                    continue;
                }
                let p = by_vpid[&x];
                let c = if p.ppid == 0 {
                    if p.nspid.len() != 1 {
                        return Err(SnapshotError::NotRestorable {
                            vpid: x,
                            why: format!(
                                "it lives in a namespace nested in the container (nspid {:?}) but its parent is \
                                 outside the container: it entered that namespace from outside (setns)",
                                p.nspid
                            ),
                        });
                    }
                    vec![0]
                } else {
                    let parent = by_vpid[&p.ppid];
                    let mut c = chain[&p.ppid].clone();
                    match p.nspid.len().checked_sub(parent.nspid.len()) {
                        Some(0) => {}
                        Some(1) if p.nspid.last() == Some(&1) => c.push(x),
                        _ => {
                            return Err(SnapshotError::NotRestorable {
                                vpid: x,
                                why: format!(
                                    "nspid {:?} under parent {} (nspid {:?}): a child lives in its parent's \
                                     namespace, or is the init (1) of a namespace nested one level below it",
                                    p.nspid, p.ppid, parent.nspid
                                ),
                            });
                        }
                    }
                    c
                };
                chain.insert(x, c);
            }
        }
        Ok(Self { by_vpid, chain })
    }

    /// Every number once per namespace (a thread's tid and a process's pid share one space).
    fn check_unique(&self) -> Result<(), SnapshotError> {
        let mut owners: HashMap<(Vec<u32>, u32), String> = HashMap::new();
        for (&v, p) in &self.by_vpid {
            let chain = &self.chain[&v];
            let mut tasks = vec![(format!("process {v}"), &p.nspid)];
            tasks.extend(p.threads.iter().map(|t| (format!("thread {} of process {v}", t.vtid), &t.nspid)));
            for (name, nspid) in tasks {
                for (level, &number) in nspid.iter().enumerate() {
                    let key = (chain[..=level].to_vec(), number);
                    if let Some(first) = owners.insert(key, name.clone()) {
                        return Err(SnapshotError::Twice { number, first, second: name });
                    }
                }
            }
        }
        Ok(())
    }

    /// Depth of process `v` below the container's namespace (0: in it).
    pub fn depth(&self, v: u32) -> usize {
        self.chain[&v].len() - 1
    }

    /// The number process `of` has in the namespace process `seen_by` lives in, if `of` lives
    /// there or below it.
    pub fn number_seen_by(&self, of: u32, seen_by: u32) -> Option<u32> {
        let (a, b) = (&self.chain[&of], &self.chain[&seen_by]);
        (a.len() >= b.len() && a[..b.len()] == b[..]).then(|| self.by_vpid[&of].nspid[b.len() - 1])
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A process for tests: vpid, parent, group, session, nspid beyond the vpid, thread vtids.
    pub fn proc(vpid: u32, ppid: u32, pgid: u32, sid: u32) -> Process {
        Process {
            vpid,
            nspid: vec![vpid],
            ppid,
            pgid,
            sid,
            comm: format!("p{vpid}"),
            exe: None,
            start_time_ns: 0,
            host_pid: None,
            threads: vec![],
        }
    }

    pub fn snap(processes: Vec<Process>) -> Snapshot {
        Snapshot { format: FORMAT.into(), container: "c".into(), pidns: 4026532000, level: 1, processes }
    }

    fn thread(vtid: u32) -> Thread {
        Thread { vtid, nspid: vec![vtid], comm: "t".into(), start_time_ns: 0 }
    }

    #[test]
    fn a_plain_tree_is_valid() {
        let mut p2 = proc(2, 1, 0, 0);
        p2.threads = vec![thread(3), thread(4)];
        let s = snap(vec![proc(1, 0, 0, 0), p2, proc(5, 2, 0, 0)]);
        let tree = s.validate(32768).unwrap();
        assert_eq!(tree.depth(5), 0);
        assert_eq!(tree.number_seen_by(5, 1), Some(5));
    }

    #[test]
    fn round_trips_and_refuses_other_text() {
        let s = snap(vec![proc(1, 0, 0, 0)]);
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(Snapshot::parse(&text).unwrap(), s);
        assert!(matches!(Snapshot::parse("{not json"), Err(SnapshotError::NotJson(_))));
        assert!(matches!(Snapshot::parse("[1,2]"), Err(SnapshotError::NotJson(_))));
        let other = text.replace(FORMAT, "criu-images/3");
        assert_eq!(Snapshot::parse(&other), Err(SnapshotError::Format("criu-images/3".into())));
        let extra = text.replacen("\"container\"", "\"surprise\":1,\"container\"", 1);
        assert!(matches!(Snapshot::parse(&extra), Err(SnapshotError::NotJson(e)) if e.contains("surprise")));
    }

    #[test]
    fn refuses_trees_no_namespace_holds() {
        let e = |ps: Vec<Process>| snap(ps).validate(32768).unwrap_err();
        assert_eq!(e(vec![]), SnapshotError::Empty);
        assert_eq!(e(vec![proc(2, 0, 0, 0)]), SnapshotError::NoInit);
        assert_eq!(e(vec![proc(1, 0, 0, 0), proc(2, 9, 0, 0)]), SnapshotError::NoParent { vpid: 2, ppid: 9 });
        assert_eq!(
            e(vec![proc(1, 0, 0, 0), proc(2, 3, 0, 0), proc(3, 4, 0, 0), proc(4, 2, 0, 0)]),
            SnapshotError::Cycle(vec![2, 3, 4, 2])
        );
        assert!(e(vec![proc(1, 0, 0, 0), proc(1, 0, 0, 0)]).to_string().contains("twice"));
        let mut p2 = proc(2, 1, 0, 0);
        p2.threads = vec![thread(5)];
        let clash = e(vec![proc(1, 0, 0, 0), p2, proc(5, 1, 0, 0)]);
        assert_eq!(
            clash,
            SnapshotError::Twice {
                number: 5,
                first: "thread 5 of process 2".into(),
                second: "process 5".into()
            }
        );
        assert_eq!(
            e(vec![proc(1, 0, 0, 0), proc(40000, 1, 0, 0)]),
            SnapshotError::OutOfRange { number: 40000, pid_max: 32768 }
        );
        assert!(
            e(vec![proc(1, 0, 0, 0), proc(32768, 1, 0, 0)]).to_string().contains("1 to pid_max - 1 (32767)")
        );
        let mut odd = proc(2, 1, 0, 0);
        odd.nspid = vec![3];
        assert!(matches!(e(vec![proc(1, 0, 0, 0), odd]), SnapshotError::Bad { vpid: 2, .. }));
    }

    #[test]
    fn nested_namespaces_are_entered_through_their_init() {
        // 1 -> 2 (init of a nested namespace: 1 there) -> 3 (2 there).
        let mut p2 = proc(2, 1, 0, 0);
        p2.nspid = vec![2, 1];
        let mut p3 = proc(3, 2, 0, 0);
        p3.nspid = vec![3, 2];
        let s = snap(vec![proc(1, 0, 0, 0), p2.clone(), p3.clone()]);
        let tree = s.validate(32768).unwrap();
        assert_eq!((tree.depth(2), tree.depth(3)), (1, 1));
        assert_eq!(tree.chain[&3], vec![0, 2]);
        assert_eq!(tree.number_seen_by(3, 2), Some(2));
        assert_eq!(tree.number_seen_by(1, 3), None, "the container's init is outside the nested namespace");
        // The same number in two namespaces is fine; twice in one is not.
        let mut p4 = proc(4, 2, 0, 0);
        p4.nspid = vec![4, 3];
        assert!(snap(vec![proc(1, 0, 0, 0), p2.clone(), p3.clone(), p4.clone()]).validate(32768).is_ok());
        p4.nspid = vec![4, 2];
        let twice = snap(vec![proc(1, 0, 0, 0), p2.clone(), p3, p4]).validate(32768).unwrap_err();
        assert!(matches!(twice, SnapshotError::Twice { number: 2, .. }), "{twice}");
        // A nested process that is not the init, under a parent outside: entered by setns.
        let mut setns = proc(5, 1, 0, 0);
        setns.nspid = vec![5, 7];
        let e = snap(vec![proc(1, 0, 0, 0), setns]).validate(32768).unwrap_err();
        assert!(matches!(e, SnapshotError::NotRestorable { vpid: 5, .. }), "{e}");
    }
}
