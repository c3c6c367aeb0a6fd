//! The fork schedule of a restore (seed 004: "first devising a schedule and then following that
//! schedule with forks/clones to generate a process tree"): parents before children, session and
//! group leaders before their members, each process's pids chosen with clone3 `set_tid`, a
//! namespace nested in the container made with CLONE_NEWPID by its init's parent, threads last.
//!
//! Sessions are only inherited (a child starts in its parent's session) or founded (`setsid`, the
//! founder's vpid becomes the session id); a group is founded by its leader (`setpgid(0, 0)`) or
//! joined (`setpgid(0, G)`, only within the joiner's session). The schedule replays the snapshot
//! with just these moves, tracking where each process stands, and says which trees they cannot
//! make: a session or group whose leader has exited, a child left in its parent's session from
//! before the parent founded its own.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::snapshot::{Snapshot, SnapshotError, Tree};

/// Who carries out a step: the restore helper (outside the new namespace), or a restored process.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    Outside,
    Process(u32),
}

/// One move of the schedule.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// `actor` forks process `vpid` with these pids (innermost first, as clone3 `set_tid`),
    /// in a new pid namespace if `new_pidns`; the child names itself `comm`.
    Fork { actor: Actor, vpid: u32, set_tid: Vec<u32>, new_pidns: bool, comm: String },
    /// Process `vpid` founds its session (and group).
    Setsid { vpid: u32 },
    /// Process `vpid` founds its group (`pgid` 0) or joins group `pgid` (a number of its own
    /// namespace).
    Setpgid { vpid: u32, pgid: u32 },
    /// Process `vpid` makes a thread with these tids (innermost first).
    Thread { vpid: u32, set_tid: Vec<u32>, comm: String },
}

impl Step {
    /// Who carries it out.
    pub fn actor(&self) -> Actor {
        match self {
            Step::Fork { actor, .. } => *actor,
            Step::Setsid { vpid } | Step::Setpgid { vpid, .. } | Step::Thread { vpid, .. } => {
                Actor::Process(*vpid)
            }
        }
    }

    /// What it does, for messages.
    pub fn describe(&self) -> String {
        match self {
            Step::Fork { actor, vpid, set_tid, new_pidns, .. } => format!(
                "{} forks process {vpid} with set_tid {set_tid:?}{}",
                match actor {
                    Actor::Outside => "the restore helper".to_string(),
                    Actor::Process(p) => format!("process {p}"),
                },
                if *new_pidns { " in a new pid namespace" } else { "" }
            ),
            Step::Setsid { vpid } => format!("process {vpid} calls setsid"),
            Step::Setpgid { vpid, pgid: 0 } => format!("process {vpid} founds its process group"),
            Step::Setpgid { vpid, pgid } => format!("process {vpid} joins process group {pgid}"),
            Step::Thread { vpid, set_tid, .. } => {
                format!("process {vpid} makes a thread with set_tid {set_tid:?}")
            }
        }
    }
}

/// Whether the restore makes the snapshot's threads (not when each process execs a command:
/// execve keeps only the calling thread).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    Make,
    Skip,
}

/// Where a process stands while the schedule replays the tree: its session and group (vpids; 0
/// for the restorer's, outside the namespace).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stand {
    sid: u32,
    pgid: u32,
}

/// Builds the schedule of a validated tree.
pub fn build(snapshot: &Snapshot, tree: &Tree<'_>, threads: Threads) -> Result<Vec<Step>, SnapshotError> {
    let not = |vpid: u32, why: String| SnapshotError::NotRestorable { vpid, why };
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for p in tree.by_vpid.values() {
        children.entry(p.ppid).or_default().push(p.vpid);
    }
    // Made in vpid order wherever the tree allows: pids were handed out in that order, so
    // leaders, which a group or session needs first, usually come first.
    let mut ready: BTreeSet<u32> = children.get(&0).into_iter().flatten().copied().collect();
    let mut stand: HashMap<u32, Stand> = HashMap::new();
    let mut waiting: Vec<u32> = Vec::new(); // processes to join a group that is not there yet
    let mut steps = Vec::new();
    while let Some(v) = ready.pop_first() {
        let p = tree.by_vpid[&v];
        let (actor, inherited) = match p.ppid {
            0 => (Actor::Outside, Stand { sid: 0, pgid: 0 }),
            ppid => (Actor::Process(ppid), stand[&ppid]),
        };
        let new_pidns = v == 1 || (p.ppid != 0 && tree.depth(v) > tree.depth(p.ppid));
        steps.push(Step::Fork {
            actor,
            vpid: v,
            set_tid: p.nspid.iter().rev().copied().collect(),
            new_pidns,
            comm: p.comm.clone(),
        });
        let mut now = inherited;
        if p.sid == v {
            steps.push(Step::Setsid { vpid: v });
            now = Stand { sid: v, pgid: v };
        }
        if now.sid != p.sid {
            let why = if p.sid != 0 && !tree.by_vpid.contains_key(&p.sid) {
                format!("its session {} has no leader in the snapshot (the leader exited)", p.sid)
            } else {
                format!(
                    "it is in session {} but would start in session {} of its parent {}: a child keeps \
                     its parent's session unless it founds its own",
                    p.sid, now.sid, p.ppid
                )
            };
            return Err(not(v, why));
        }
        if now.pgid != p.pgid {
            if p.pgid == v {
                steps.push(Step::Setpgid { vpid: v, pgid: 0 });
                now.pgid = v;
            } else if p.pgid == 0 {
                return Err(not(v, "its process group is outside the namespace, its parent's is not".into()));
            } else {
                check_joinable(snapshot, tree, v)?;
                waiting.push(v);
            }
        }
        stand.insert(v, now);
        join_ready_groups(tree, &mut waiting, &mut stand, &mut steps);
        ready.extend(children.get(&v).into_iter().flatten().copied());
    }
    if let Some(&v) = waiting.first() {
        let g = tree.by_vpid[&v].pgid;
        return Err(not(
            v,
            format!("its process group {g} never forms: its leader {g} is not in the snapshot"),
        ));
    }
    if threads == Threads::Make {
        for p in tree.by_vpid.values() {
            for t in &p.threads {
                steps.push(Step::Thread {
                    vpid: p.vpid,
                    set_tid: t.nspid.iter().rev().copied().collect(),
                    comm: t.comm.clone(),
                });
            }
        }
    }
    Ok(steps)
}

/// A process that is to join group G: the group must have its leader in the snapshot, in the
/// same session, visible from the joiner's namespace; and a session leader cannot change group.
fn check_joinable(snapshot: &Snapshot, tree: &Tree<'_>, v: u32) -> Result<(), SnapshotError> {
    let not = |why: String| SnapshotError::NotRestorable { vpid: v, why };
    let p = tree.by_vpid[&v];
    let g = p.pgid;
    let Some(leader) = snapshot.process(g) else {
        return Err(not(format!("its process group {g} has no leader in the snapshot (the leader exited)")));
    };
    if leader.pgid != g {
        return Err(not(format!(
            "its process group {g} is led by process {g}, which is in group {}",
            leader.pgid
        )));
    }
    if leader.sid != p.sid {
        return Err(not(format!(
            "its process group {g} is in session {}, it is in session {}: a group lies in one session",
            leader.sid, p.sid
        )));
    }
    if tree.number_seen_by(g, v).is_none() {
        return Err(not(format!(
            "its process group {g} is led from a namespace it cannot see (nspid {:?})",
            p.nspid
        )));
    }
    Ok(())
}

/// Emits the joins whose group now exists (its leader made and standing in it).
fn join_ready_groups(
    tree: &Tree<'_>,
    waiting: &mut Vec<u32>,
    stand: &mut HashMap<u32, Stand>,
    steps: &mut Vec<Step>,
) {
    loop {
        let formed = |g: u32| stand.get(&g).is_some_and(|s| s.pgid == g);
        let Some(i) = waiting.iter().position(|&v| formed(tree.by_vpid[&v].pgid)) else { return };
        let v = waiting.remove(i);
        let g = tree.by_vpid[&v].pgid;
        let seen = tree.number_seen_by(g, v).unwrap_or(g);
        steps.push(Step::Setpgid { vpid: v, pgid: seen });
        if let Some(s) = stand.get_mut(&v) {
            s.pgid = g;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::snapshot::{
        Process,
        tests::{proc, snap},
    };

    fn schedule(s: &Snapshot) -> Result<Vec<Step>, SnapshotError> {
        let tree = s.validate(32768)?;
        build(s, &tree, Threads::Make)
    }

    fn fork(actor: Actor, vpid: u32, set_tid: &[u32], new_pidns: bool) -> Step {
        Step::Fork { actor, vpid, set_tid: set_tid.to_vec(), new_pidns, comm: format!("p{vpid}") }
    }

    /// Replays a schedule the way the kernel would and answers each process's (ppid, sid, pgid).
    fn replay(steps: &[Step]) -> HashMap<u32, (u32, u32, u32)> {
        let mut at: HashMap<u32, (u32, u32, u32)> = HashMap::new();
        for s in steps {
            match s {
                Step::Fork { actor, vpid, .. } => {
                    let (ppid, (sid, pgid)) = match actor {
                        Actor::Outside => (0, (0, 0)),
                        Actor::Process(p) => {
                            let (_, sid, pgid) = at[p];
                            (*p, (sid, pgid))
                        }
                    };
                    at.insert(*vpid, (ppid, sid, pgid));
                }
                Step::Setsid { vpid } => {
                    let e = at.get_mut(vpid).unwrap();
                    assert_ne!(e.2, *vpid, "setsid by a group leader fails (EPERM)");
                    (e.1, e.2) = (*vpid, *vpid);
                }
                Step::Setpgid { vpid, pgid } => {
                    let g = if *pgid == 0 { *vpid } else { *pgid };
                    let sid = at[vpid].1;
                    assert!(
                        g == *vpid || at.values().any(|&(_, s, gg)| gg == g && s == sid),
                        "process {vpid} joins group {g}, which does not exist in its session"
                    );
                    at.get_mut(vpid).unwrap().2 = g;
                }
                Step::Thread { .. } => {}
            }
        }
        at
    }

    #[test]
    fn two_sessions_three_groups_and_a_join_across_branches() {
        // 1 init (outside session/group)
        // 2 founds session 2; 3 stays; 4 founds group 4; 5 (child of 4) stays in 4;
        // 6 (child of 2) joins group 4; 7 founds session 7 with child 8.
        let mut p2 = proc(2, 1, 2, 2);
        p2.threads = vec![crate::restore::snapshot::Thread {
            vtid: 9,
            nspid: vec![9],
            comm: "w".into(),
            start_time_ns: 0,
        }];
        let s = snap(vec![
            proc(1, 0, 0, 0),
            p2,
            proc(3, 2, 2, 2),
            proc(4, 2, 4, 2),
            proc(5, 4, 4, 2),
            proc(6, 2, 4, 2),
            proc(7, 1, 7, 7),
            proc(8, 7, 7, 7),
        ]);
        let steps = schedule(&s).unwrap();
        assert_eq!(steps[0], fork(Actor::Outside, 1, &[1], true));
        let at = replay(&steps);
        for p in &s.processes {
            assert_eq!(at[&p.vpid], (p.ppid, p.sid, p.pgid), "process {}", p.vpid);
        }
        // Threads come last.
        assert_eq!(steps.last(), Some(&Step::Thread { vpid: 2, set_tid: vec![9], comm: "w".into() }));
        let skip = build(&s, &s.validate(32768).unwrap(), Threads::Skip).unwrap();
        assert!(skip.iter().all(|s| !matches!(s, Step::Thread { .. })));
    }

    #[test]
    fn joins_wait_for_their_group() {
        // 3 joins group 4, whose leader (its sibling) has a higher vpid: made first, it joins
        // once 4 stands in its own group.
        let s = snap(vec![proc(1, 0, 1, 1), proc(2, 1, 1, 1), proc(3, 2, 4, 1), proc(4, 2, 4, 1)]);
        let steps = schedule(&s).unwrap();
        assert_eq!(replay(&steps)[&3], (2, 1, 4));
        let join = steps.iter().position(|s| *s == Step::Setpgid { vpid: 3, pgid: 4 }).unwrap();
        let lead = steps.iter().position(|s| *s == Step::Setpgid { vpid: 4, pgid: 0 }).unwrap();
        assert!(lead < join, "{steps:?}");
        // A parent joins its child's group: the child is forked first (in the parent's group).
        let s = snap(vec![proc(1, 0, 1, 1), proc(2, 1, 3, 1), proc(3, 2, 3, 1), proc(5, 2, 1, 1)]);
        let steps = schedule(&s).unwrap();
        let at = replay(&steps);
        assert_eq!((at[&2], at[&3], at[&5]), ((1, 1, 3), (2, 1, 3), (2, 1, 1)), "{steps:?}");
    }

    #[test]
    fn extra_roots_are_forked_from_outside() {
        // docker exec: 9 has its parent outside the namespace.
        let s = snap(vec![proc(1, 0, 1, 1), proc(9, 0, 0, 0)]);
        let steps = schedule(&s).unwrap();
        assert_eq!(
            steps,
            vec![
                fork(Actor::Outside, 1, &[1], true),
                Step::Setsid { vpid: 1 },
                fork(Actor::Outside, 9, &[9], false),
            ]
        );
    }

    #[test]
    fn nested_namespaces_are_made_by_their_inits_parent() {
        let mut p2 = proc(2, 1, 0, 0);
        p2.nspid = vec![2, 1];
        let mut p3 = proc(3, 2, 3, 0);
        p3.nspid = vec![3, 5];
        // 3 founds group 3; 4 (in the nested namespace too, 6 there) joins it by its number
        // there (5).
        p3.sid = 0;
        let mut p4 = proc(4, 2, 3, 0);
        p4.nspid = vec![4, 6];
        let s = snap(vec![proc(1, 0, 0, 0), p2, p3, p4]);
        let steps = schedule(&s).unwrap();
        assert_eq!(steps[1], fork(Actor::Process(1), 2, &[1, 2], true));
        assert_eq!(steps[2], fork(Actor::Process(2), 3, &[5, 3], false));
        assert!(steps.contains(&Step::Setpgid { vpid: 4, pgid: 5 }), "{steps:?}");
    }

    #[test]
    fn says_which_trees_it_cannot_make() {
        let why = |ps: Vec<Process>| match schedule(&snap(ps)) {
            Err(SnapshotError::NotRestorable { vpid, why }) => (vpid, why),
            other => panic!("{other:?}"),
        };
        // A daemon whose session leader exited (double fork).
        let (v, w) = why(vec![proc(1, 0, 0, 0), proc(5, 1, 4, 4)]);
        assert_eq!(v, 5);
        assert!(w.contains("session 4 has no leader"), "{w}");
        // A group whose leader exited.
        let (v, w) = why(vec![proc(1, 0, 1, 1), proc(5, 1, 4, 1)]);
        assert_eq!(v, 5);
        assert!(w.contains("group 4 has no leader"), "{w}");
        // A child still in the session its parent left.
        let (v, w) = why(vec![proc(1, 0, 0, 0), proc(2, 1, 2, 2), proc(3, 2, 0, 0)]);
        assert_eq!(v, 3);
        assert!(w.contains("would start in session 2"), "{w}");
        // A group across sessions.
        let (v, w) = why(vec![proc(1, 0, 0, 0), proc(2, 1, 2, 2), proc(3, 1, 3, 3), proc(4, 3, 2, 3)]);
        assert_eq!(v, 4);
        assert!(w.contains("a group lies in one session"), "{w}");
    }
}
