//! Attaching to a running host: after every program is attached, walk /proc and seed the tasks
//! that already exist, then reconcile the ones that died during the walk. Tasks born during the
//! walk are recorded by the fork program (which always wins: seeding never overwrites).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use pidvirt_common::{HOST_CONTAINER, INLINE_LEVELS, LevelIds, TaskEntry, task_flags};
use serde::Serialize;

use crate::{
    kernel::KernelMaps,
    procscan::{self, ChainCache, ProcTask},
};

#[derive(Clone, Debug, Default, Serialize)]
pub struct SeedReport {
    /// Tasks read from /proc.
    pub scanned: usize,
    /// Entries written by the seed.
    pub inserted: usize,
    /// Tasks the kernel programs had already recorded (by the task iterator, or born or
    /// exec'd after attach); each is checked against /proc.
    pub already_known: usize,
    /// Of those, entries whose ids differ from /proc's NSpid/NStgid (a self-check: should be 0).
    pub mismatched: usize,
    /// How the task iterator went: `ok`, or why it did not run.
    pub iterator: String,
    /// Seeded entries removed again because their task died during the walk.
    pub died_during_walk: usize,
    /// Tasks that vanished before their namespace chain could be read.
    pub vanished: usize,
    /// Map insert failures.
    pub errors: usize,
    #[serde(with = "duration_ms")]
    pub elapsed: Duration,
}

mod duration_ms {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1000.0)
    }
}

/// The entry and per-level ids of a task read from /proc.
pub fn entry_from_proc(t: &ProcTask, ns: &[u32], tick_ns: u32) -> (TaskEntry, Vec<LevelIds>) {
    let ids: Vec<LevelIds> =
        t.nspid.iter().zip(&t.nstgid).map(|(&tid, &tgid)| LevelIds { tid, tgid }).collect();
    let level = t.level();
    let mut entry = TaskEntry {
        start_time: t.start_ticks * u64::from(tick_ns),
        container: if level == 0 { HOST_CONTAINER } else { t.pidns },
        pidns: ns.last().copied().unwrap_or(t.pidns),
        level: level as u8,
        flags: task_flags::SEEDED | if t.kthread { task_flags::KTHREAD } else { 0 },
        ..Default::default()
    };
    for (slot, id) in entry.nr.iter_mut().zip(ids.iter().take(INLINE_LEVELS)) {
        *slot = *id;
    }
    (entry, ids)
}

/// Seeds every task in /proc into the maps, then reconciles. `iterator` says whether the
/// kernel's task iterator already recorded the existing tasks.
pub fn seed(maps: &std::sync::Mutex<KernelMaps>, tick_ns: u32, iterator: &Result<(), String>) -> SeedReport {
    let started = Instant::now();
    let mut report = SeedReport {
        iterator: match iterator {
            Ok(()) => "ok".into(),
            Err(why) => format!("unavailable: {why}"),
        },
        ..SeedReport::default()
    };
    let mut chains = ChainCache::default();
    let mut inserted: Vec<(ProcTask, Vec<u32>, u64)> = Vec::new();
    let tasks = procscan::scan();
    // Each namespace's init (its vpid 1): the identity of its record.
    let inits: HashMap<u32, u64> = tasks
        .iter()
        .filter(|t| t.level() > 0 && t.nspid.last() == Some(&1))
        .map(|t| (t.pidns, t.start_ticks * u64::from(tick_ns)))
        .collect();
    let reaper_start = |ns: u32| inits.get(&ns).copied().unwrap_or(0);
    for t in tasks {
        report.scanned += 1;
        let Some(ns) = chains.levels(&t) else {
            report.vanished += 1;
            continue;
        };
        let (entry, ids) = entry_from_proc(&t, &ns, tick_ns);
        // The lock is taken per task: the daemon answers meanwhile.
        let Ok(mut maps) = maps.lock() else { break };
        match maps.seed(&entry, &ids, &ns, reaper_start) {
            Ok(true) => inserted.push((t, ns, entry.start_time)),
            Ok(false) => {
                report.already_known += 1;
                if let Some(known) = maps.task(t.host_tid)
                    && (known.ids != ids || known.entry.pidns != entry.pidns)
                    && procscan::read_task(t.host_pid, t.host_tid, Some(t.pidns)).is_ok_and(|now| now == t)
                {
                    report.mismatched += 1;
                    tracing::warn!(
                        tid = t.host_tid,
                        "kernel entry {:?} (pidns {}) differs from /proc NSpid {:?} NStgid {:?} (pidns {})",
                        known.ids,
                        known.entry.pidns,
                        t.nspid,
                        t.nstgid,
                        entry.pidns
                    );
                }
            }
            Err(e) => {
                report.errors += 1;
                tracing::warn!(tid = t.host_tid, "seeding failed: {e}");
            }
        }
    }
    // Reconcile: a task that died between our read and our insert left an entry its free
    // event could not remove (it ran before the insert).
    for (t, ns, start) in &inserted {
        let alive = matches!(
            procscan::read_task(t.host_pid, t.host_tid, Some(t.pidns)),
            Ok(now) if now.start_ticks == t.start_ticks
        );
        if alive {
            report.inserted += 1;
        } else if let Ok(mut maps) = maps.lock() {
            maps.forget_seeded(t.host_tid, *start, ns);
            report.died_during_walk += 1;
        }
    }
    report.elapsed = started.elapsed();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_from_a_nested_thread() {
        let t = ProcTask {
            host_pid: 26919,
            host_tid: 26921,
            nspid: vec![26921, 3],
            nstgid: vec![26919, 1],
            start_ticks: 42,
            pidns: 4026532300,
            comm: "x".into(),
            kthread: false,
        };
        let (e, ids) = entry_from_proc(&t, &[4026531836, 4026532300], 10_000_000);
        assert_eq!(e.start_time, 420_000_000);
        assert_eq!(e.container, 4026532300);
        assert_eq!(e.level, 1);
        assert_eq!(e.flags, task_flags::SEEDED);
        assert_eq!(e.host_tid(), 26921);
        assert_eq!(e.host_pid(), 26919);
        assert_eq!(e.nr[1], LevelIds { tid: 3, tgid: 1 });
        assert_eq!(ids.len(), 2);
    }
}
