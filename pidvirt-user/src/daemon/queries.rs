//! The read-only requests: tasks, containers, translations, counters, status.

use std::{collections::HashMap, sync::atomic::Ordering::Relaxed};

use pidvirt_common::{audit::NSYSCALLS, audit::NVERDICTS, counter, slots, task_flags};

use serde_json::value::RawValue;

use super::{App, to_json};
use crate::{
    api::{
        ApiError, AuditLogStats, ContainerRow, ContainerStats, ErrorCode, HostStats, K8sInfo, RuntimeInfo,
        TaskRow, Translation,
    },
    containers::{Container, Kind},
    kernel::{self, FullTask, KernelMaps, SlotCounts},
    loader,
};

/// comm of a task, from /proc (empty if it is gone).
fn comm_of(host_pid: u32, host_tid: u32) -> String {
    use std::io::Read as _;
    // One read into a small buffer (a comm is at most 15 bytes): read_to_string would stat the
    // file first, a path walk per task of `ps`.
    let mut buf = [0u8; 64];
    let n = std::fs::File::open(format!("/proc/{host_pid}/task/{host_tid}/comm"))
        .and_then(|mut f| f.read(&mut buf))
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).trim_end_matches('\n').to_string()
}

fn row(
    (container, runtime, k8s): (String, Option<RuntimeInfo>, Option<K8sInfo>),
    t: &FullTask,
    comm: String,
) -> TaskRow {
    let e = &t.entry;
    let own = t.at(u32::from(e.level)).unwrap_or_default();
    TaskRow {
        container,
        pidns: e.pidns,
        level: u32::from(e.level),
        host_tid: e.host_tid(),
        host_pid: e.host_pid(),
        vtid: own.tid,
        vpid: own.tgid,
        nspid: t.ids.iter().map(|i| i.tid).collect(),
        nstgid: t.ids.iter().map(|i| i.tgid).collect(),
        comm,
        start_time_ns: e.start_time,
        seeded: e.is_seeded(),
        exited: e.flags & task_flags::EXITED != 0,
        kthread: e.flags & task_flags::KTHREAD != 0,
        runtime,
        k8s,
    }
}

/// The counter slot where the kernel counts container `c`'s crossings.
pub(super) fn slot_of(maps: &KernelMaps, c: &Container) -> u32 {
    match &c.kind {
        Kind::Host => slots::HOST,
        Kind::Pidns { .. } => maps.pidns_slot(c.pidns),
        Kind::Cgroup { slot, .. } => *slot,
    }
}

/// What the kernel counted, host-wide, read at one time under the maps lock: `stats` and the
/// metrics both take it from here, so they never disagree.
pub(super) struct Counted {
    /// Each counter slot's counts, by slot.
    pub slots: Vec<SlotCounts>,
    /// What the containers that ended counted, with the crossings no per-container counter
    /// could take (the global counters' crossing region).
    pub retired: SlotCounts,
    /// Every crossing: `retired` and every slot.
    pub total: SlotCounts,
    /// The global counters (`counter::GROUPS`), summed over CPUs.
    pub counters: Vec<u64>,
}

impl Counted {
    /// Reads the counters; `retired` must be read under the same maps lock, so that a container
    /// retired meanwhile is counted exactly once.
    pub(super) fn read(maps: &KernelMaps, mut retired: SlotCounts) -> Self {
        let counters = maps.counters();
        for (t, i) in retired.crossings.iter_mut().zip(0..NSYSCALLS * NVERDICTS) {
            *t += counters.get(counter::CROSSING_BASE as usize + i).copied().unwrap_or(0);
        }
        let slots = maps.all_slot_counts();
        let mut total = retired.clone();
        for s in &slots {
            total.add(s);
        }
        Self { slots, retired, total, counters }
    }
}

impl App {
    pub(super) fn ps(&self, container: Option<&str>) -> Result<Vec<TaskRow>, ApiError> {
        let (tasks, names) = self.containers.view(|maps, reg| {
            let want = match container {
                Some(name) => Some(reg.lookup(name)?.number),
                None => None,
            };
            let tasks: Vec<FullTask> = maps
                .all_tasks()
                .into_iter()
                .filter(|t| want.is_none_or(|c| t.entry.container == c))
                .collect();
            let names: HashMap<u32, (String, Option<RuntimeInfo>, Option<K8sInfo>)> = tasks
                .iter()
                .map(|t| {
                    let (runtime, k8s) = reg.meta_of(t.entry.container);
                    (t.entry.container, (reg.id_of(t.entry.container), runtime.cloned(), k8s.cloned()))
                })
                .collect();
            Ok::<_, ApiError>((tasks, names))
        })??;
        // The rows are made without holding the maps.
        let mut comms = self.task_comms();
        let mut rows: Vec<TaskRow> = tasks
            .iter()
            .map(|t| {
                let e = &t.entry;
                // A task the iterator did not see (born since) is read from /proc.
                let comm = match comms.as_mut().and_then(|c| c.remove(&e.host_tid())) {
                    Some(c) => c,
                    None => comm_of(e.host_pid(), e.host_tid()),
                };
                row(names.get(&e.container).cloned().unwrap_or_default(), t, comm)
            })
            .collect();
        rows.sort_by_key(|r| (r.host_pid, r.host_tid));
        Ok(rows)
    }

    /// Every task's command, from one run of the kernel's `task_comms` iterator (None when the
    /// programs were adopted, or it failed: then each is read from /proc).
    fn task_comms(&self) -> Option<HashMap<u32, String>> {
        let mut programs = self.programs.lock().ok()?;
        match loader::task_comms(programs.as_mut()?) {
            Ok(comms) => Some(comms),
            Err(e) => {
                tracing::debug!("task_comms iterator: {e}; reading each command from /proc");
                None
            }
        }
    }

    pub(super) fn containers(&self) -> Result<Vec<ContainerRow>, ApiError> {
        self.containers.view(|maps, reg| {
            let mut counts = HashMap::<u32, u64>::new();
            for (_, e) in maps.task_entries() {
                *counts.entry(e.container).or_default() += 1;
            }
            let by_ns = reg.ids_by_pidns();
            reg.all().map(|c| c.row(counts.get(&c.number).copied().unwrap_or(0), &by_ns)).collect()
        })
    }

    pub(super) fn container(&self, name: &str) -> Result<ContainerRow, ApiError> {
        self.containers.view(|maps, reg| {
            let c = reg.lookup(name)?;
            let tasks = maps.task_entries().iter().filter(|(_, e)| e.container == c.number).count();
            Ok(c.row(tasks as u64, &reg.ids_by_pidns()))
        })?
    }

    pub(super) fn translate(
        &self,
        container: &str,
        vpid: Option<u32>,
        pid: Option<u32>,
    ) -> Result<Translation, ApiError> {
        self.containers.view(|maps, reg| {
            let c = reg.lookup(container)?;
            let (level, pidns, number) = (c.level, c.pidns, c.number);
            let not_found = || {
                let what = match (vpid, pid) {
                    (Some(v), _) => format!("no task with vpid {v} in container {}", c.id),
                    (_, Some(p)) => format!("no task with host pid {p} in container {}", c.id),
                    _ => String::new(),
                };
                ApiError::new(ErrorCode::NotFound, what)
            };
            let task = match (vpid, pid) {
                (Some(v), None) => maps.resolve(pidns, level, v).filter(|_| level > 0).or_else(|| {
                    // The host's (and host-namespace containers') numbers are host numbers.
                    (level == 0).then(|| maps.task(v)).flatten()
                }),
                (None, Some(p)) => maps.task(p),
                _ => return Err(ApiError::new(ErrorCode::BadRequest, "give exactly one of vpid and pid")),
            };
            let t = task.ok_or_else(not_found)?;
            // The task must be in this container or in one nested in it (its ids at this level
            // exist and its namespace at this level is the container's).
            let inside = if matches!(c.kind, Kind::Cgroup { .. }) {
                t.entry.container == number
            } else {
                u32::from(t.entry.level) >= level
                    && (level == 0 || maps.resolve(pidns, level, t.at(level).map_or(0, |i| i.tid)).is_some())
            };
            if !inside {
                return Err(not_found());
            }
            let at = t.at(level).unwrap_or_default();
            let host = t.at(0).unwrap_or_default();
            Ok(Translation {
                container: c.id.clone(),
                vpid: at.tid,
                host_pid: host.tid,
                vtgid: at.tgid,
                host_tgid: host.tgid,
            })
        })?
    }

    /// Counters: crossings per syscall per verdict (of one container, or of all), and with no
    /// container also drops, map errors and lifecycle events.
    pub(super) fn stats(&self, container: Option<&str>) -> Result<Box<RawValue>, ApiError> {
        if let Some(name) = container {
            let stats = self.containers.view(|maps, reg| {
                let c = reg.lookup(name)?;
                let counted = maps.slot_counts(slot_of(maps, c));
                Ok::<_, ApiError>(ContainerStats {
                    container: c.id.clone(),
                    crossings: kernel::named_crossings(&counted.crossings),
                    ringbuf_drops: counted.ringbuf_drops,
                    reaped: counted.reaped,
                    denied: kernel::named_denied(&counted.denied),
                })
            })??;
            return to_json(stats);
        }
        let counted = self.containers.view(|maps, _| Counted::read(maps, self.containers.retired()))?;
        to_json(HostStats {
            counters: kernel::named_counters(&counted.counters),
            crossings: kernel::named_crossings(&counted.total.crossings),
            denied: kernel::named_denied(&counted.total.denied),
            skipped_runs: loader::skipped_runs(),
            audit_log: AuditLogStats {
                written: self.audit.written.load(Relaxed),
                write_errors: self.audit.sink_errors.load(Relaxed),
                rotations: self.audit.rotations.load(Relaxed),
            },
        })
    }

    pub(super) fn status(&self) -> serde_json::Value {
        let a = &self.attachment;
        let seed = self.seed.lock().ok().and_then(|s| s.clone());
        serde_json::json!({
            "kernel": a.kernel_release,
            "uptime_s": a.started.elapsed().as_secs_f64(),
            "programs": a.attached.iter().map(|(p, h)| serde_json::json!({"program": p, "hook": h})).collect::<Vec<_>>(),
            "syscalls": a.syscalls,
            "enforcement": self.containers.enforcement(),
            "signalfd": a.signalfd,
            "task_reads": a.task_reads,
            "pinned": a.pinned,
            "adopted": a.adopted,
            "seed": seed.map_or_else(|| serde_json::json!("running"), |s| serde_json::json!(s)),
            "runtimes": self.runtimes.lock().map(|r| r.clone()).unwrap_or_default(),
            "metrics": a.metrics.map(|addr| format!("http://{addr}/metrics")),
        })
    }
}
