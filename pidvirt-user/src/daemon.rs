//! `pidvirt run`: attach to the running host, seed, serve the control socket, stream events.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use pidvirt_common::{
    MigrateEvent, PidnsEvent, PidnsInfo,
    audit::{AnomalyEvent, NSYSCALLS, NVERDICTS, Verdict},
    counter, event_kind, pidns_source,
};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use crate::{
    api::{ApiError, ContainerRow, ErrorCode, Request, TaskRow, Translation},
    audit::{Filter, Hub, Record, Sink},
    kernel::{self, FullTask, KernelMaps},
    loader::{self, LoadOptions},
    orchestrator::{self, Target},
    procscan,
    registry::{self, Kind, Registry},
    seed::{self, SeedReport},
    server,
};

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub socket: PathBuf,
    /// Where registrations are kept across restarts (None: not kept).
    pub state_file: Option<PathBuf>,
    /// `-` for standard output.
    pub audit_log: Option<String>,
    pub load: LoadOptions,
}

/// Everything the request handlers read.
pub struct State {
    pub maps: Mutex<KernelMaps>,
    pub audit: Hub,
    pub state_file: Option<PathBuf>,
    /// Crossing counters of containers that ended (their per-container counters are gone).
    pub retired: Mutex<kernel::SlotCounts>,
    /// Whether the enforcer runs (and why not).
    pub enforcement: loader::Enforcement,
    /// The programs are pinned (they outlive the daemon); `adopted`: pinned by a previous one.
    pub pinned: bool,
    pub adopted: bool,
    /// Notified to stop the daemon (the `shutdown` request).
    pub shutdown: tokio::sync::Notify,
    pub registry: Mutex<Registry>,
    /// How the /proc walk went (None while it runs).
    pub seed: Mutex<Option<SeedReport>>,
    pub attached: Vec<(String, String)>,
    /// How the programs read pids above level 0 (loader::task_reads).
    pub task_reads: &'static str,
    pub started: Instant,
    pub kernel_release: String,
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    loader::require_root()?;
    let sink = match &opts.audit_log {
        Some(spec) => Some(Sink::open(spec).with_context(|| format!("open audit log {spec}"))?),
        None => None,
    };
    let host_pidns = procscan::own_pidns_is_init().map_err(anyhow::Error::msg)?;
    let tick_ns = procscan::tick_ns();
    let t0 = Instant::now();
    let mut offsets = loader::resolve_offsets(tick_ns)?;
    if opts.load.probe_reads {
        offsets.pid_numbers_flexible = 0;
    }
    tracing::info!("offsets from BTF and tracefs in {:.0} ms", t0.elapsed().as_secs_f64() * 1000.0);
    tracing::debug!(?offsets, "kernel offsets from BTF");
    // Attach first, then walk /proc: a process born in between is seen by the fork program.
    let loaded = loader::load_and_attach(offsets, &opts.load)?;
    let loader::Loaded { ebpf, mut maps, events, attached, iterator, enforcement, adopted } = loaded;
    // Adopted maps are current (the pinned programs kept them): the walk only checks them.
    let iterator_ok = iterator.is_ok() || adopted;
    for (prog, hook) in &attached {
        tracing::info!("attached {prog} to {hook}");
    }
    maps.seed_pidns(host_pidns, PidnsInfo::from_chain(&[host_pidns], 0, 1, pidns_source::SEED));
    let mut registry = Registry::new(host_pidns);
    registry.sync_pidns(&maps.pidns_all(), orchestrator::cgroup_path_of);
    let state = Arc::new(State {
        maps: Mutex::new(maps),
        audit: Hub::new(sink),
        state_file: opts.state_file.clone(),
        retired: Mutex::new(kernel::SlotCounts::default()),
        enforcement: enforcement.clone(),
        pinned: opts.load.pin,
        adopted,
        shutdown: tokio::sync::Notify::new(),
        registry: Mutex::new(registry),
        seed: Mutex::new(None),
        attached,
        task_reads: if adopted {
            "as loaded by the daemon that pinned the programs"
        } else {
            loader::task_reads(&offsets)
        },
        started: Instant::now(),
        kernel_release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
    });
    // The /proc walk. When the task iterator already recorded every existing task (exactly, as
    // the fork program would), the walk only checks it and seeds what it missed: it runs while
    // the daemon serves. Without the iterator, /proc is the seed: it completes first.
    let walk = {
        let state = state.clone();
        move || {
            let report = seed::seed(&state.maps, tick_ns, &iterator);
            tracing::info!(
                scanned = report.scanned,
                inserted = report.inserted,
                already_known = report.already_known,
                mismatched = report.mismatched,
                iterator = report.iterator.as_str(),
                died_during_walk = report.died_during_walk,
                errors = report.errors,
                "seeded from /proc in {:.1} ms",
                report.elapsed.as_secs_f64() * 1000.0
            );
            if let Ok(mut seed) = state.seed.lock() {
                *seed = Some(report);
            }
        }
    };
    if iterator_ok {
        tokio::task::spawn_blocking(walk);
    } else {
        tokio::task::spawn_blocking(walk).await?;
    }

    state.restore();
    let sweeper = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut suspects = std::collections::HashSet::new();
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tick.tick().await;
                let s = state.clone();
                let mut held = std::mem::take(&mut suspects);
                suspects = tokio::task::spawn_blocking(move || {
                    s.sweep(&mut held);
                    held
                })
                .await
                .unwrap_or_default();
            }
        })
    };

    let listener = server::bind(&opts.socket)?;
    tracing::info!("serving {}", opts.socket.display());
    let server = tokio::spawn(server::serve(listener, state.clone()));
    let events = tokio::spawn(consume_events(events, state.clone()));

    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let stopping = if state.pinned { "stopping; the pinned programs stay" } else { "detaching" };
    tokio::select! {
        r = tokio::signal::ctrl_c() => { r?; tracing::info!("SIGINT: {stopping}"); }
        _ = term.recv() => tracing::info!("SIGTERM: {stopping}"),
        _ = state.shutdown.notified() => tracing::info!("shutdown requested: {stopping}"),
        r = events => {
            r.context("event task")??;
        }
    }
    server.abort();
    sweeper.abort();
    let _ = std::fs::remove_file(&opts.socket);
    drop(ebpf); // closes every link: the programs are detached unless pinned
    tracing::info!("{}", if state.pinned { "stopped (programs pinned)" } else { "detached" });
    Ok(())
}

/// Most records handled per batch (one sink write each).
const BATCH: usize = 4096;

/// Reads the events ring buffer until the daemon stops.
async fn consume_events(events: RingBuf<MapData>, state: Arc<State>) -> anyhow::Result<()> {
    // SAFETY: the ring buffer owns its map fd for as long as the AsyncFd holds it.
    let mut fd = unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("poll the events ring buffer: {e}"))?;
    let mut anomalies: Vec<AnomalyEvent> = Vec::with_capacity(BATCH);
    loop {
        let mut guard = fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        loop {
            let mut more = false;
            while let Some(item) = ring.next() {
                handle_event(&item, &state, &mut anomalies);
                if anomalies.len() == BATCH {
                    more = true;
                    break;
                }
            }
            publish(&state, &mut anomalies);
            if !more {
                break;
            }
        }
        guard.clear_ready();
    }
}

fn publish(state: &State, anomalies: &mut Vec<AnomalyEvent>) {
    if anomalies.is_empty() {
        return;
    }
    let records: Vec<Record> = match state.registry.lock() {
        Ok(reg) => anomalies.iter().filter_map(|ev| Record::from_event(ev, &reg)).collect(),
        Err(_) => Vec::new(),
    };
    anomalies.clear();
    state.audit.publish(records);
}

fn handle_event(bytes: &[u8], state: &State, anomalies: &mut Vec<AnomalyEvent>) {
    if bytes.len() < 4 {
        return;
    }
    let kind = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if kind == event_kind::ANOMALY && bytes.len() >= std::mem::size_of::<AnomalyEvent>() {
        anomalies.push(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) });
    } else if kind == event_kind::PIDNS && bytes.len() >= std::mem::size_of::<PidnsEvent>() {
        let ev: PidnsEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let discovered = orchestrator::cgroup_path_of(ev.first_tid).and_then(|p| registry::discover(&p));
        tracing::info!(
            pidns = ev.pidns,
            level = ev.level,
            first_tid = ev.first_tid,
            ?discovered,
            "new pid namespace"
        );
        if let Ok(mut reg) = state.registry.lock() {
            let info = PidnsInfo {
                level: ev.level,
                parent: ev.parent,
                first_tid: ev.first_tid,
                source: pidns_source::KERNEL,
                ..Default::default()
            };
            reg.note_pidns(ev.pidns, &info, discovered);
        }
    } else if kind == event_kind::MIGRATE && bytes.len() >= std::mem::size_of::<MigrateEvent>() {
        let ev: MigrateEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        if ev.threadgroup != 0 {
            state.migrated(ev.host_pid, ev.container, ev.slot);
        }
    }
}

pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Internal, e.to_string())
}

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

impl State {
    pub(crate) fn sync_registry(
        &self,
        maps: &KernelMaps,
    ) -> Result<std::sync::MutexGuard<'_, Registry>, ApiError> {
        let mut reg = self.registry.lock().map_err(internal)?;
        reg.sync_pidns(&maps.pidns_all(), orchestrator::cgroup_path_of);
        Ok(reg)
    }

    /// Adds the counters of an ended container to the retired totals.
    pub(crate) fn retire(&self, counted: kernel::SlotCounts) {
        if let Ok(mut retired) = self.retired.lock() {
            for (t, n) in retired.crossings.iter_mut().zip(counted.crossings) {
                *t += n;
            }
            for (t, n) in retired.denied.iter_mut().zip(counted.denied) {
                *t += n;
            }
        }
    }

    fn row(&self, reg: &Registry, t: &FullTask) -> TaskRow {
        let e = &t.entry;
        let own = t.at(e.level as u32).unwrap_or_default();
        TaskRow {
            container: reg.id_of(e.container),
            pidns: e.pidns,
            level: e.level as u32,
            host_tid: e.host_tid(),
            host_pid: e.host_pid(),
            vtid: own.tid,
            vpid: own.tgid,
            nspid: t.ids.iter().map(|i| i.tid).collect(),
            nstgid: t.ids.iter().map(|i| i.tgid).collect(),
            comm: comm_of(e.host_pid(), e.host_tid()),
            start_time_ns: e.start_time,
            seeded: e.is_seeded(),
            exited: e.flags & pidvirt_common::task_flags::EXITED != 0,
        }
    }

    /// Answers one request.
    pub fn handle(&self, req: Request) -> Result<serde_json::Value, ApiError> {
        match req {
            Request::Ps { container } => to_json(self.ps(container.as_deref())?),
            Request::Containers => to_json(self.containers()?),
            Request::Translate { container, vpid, pid } => to_json(self.translate(&container, vpid, pid)?),
            Request::Stats { container } => self.stats(container.as_deref()),
            Request::Register { id, pid, cgroup, pidns, labels, by, mode } => {
                let target = match (pid, cgroup, pidns) {
                    (Some(p), None, None) => Target::Pid(p),
                    (None, Some(c), None) => Target::Cgroup(c),
                    (None, None, Some(n)) => Target::Pidns(n),
                    _ => {
                        return Err(ApiError::new(
                            ErrorCode::BadRequest,
                            "register needs exactly one of `pid`, `cgroup`, `pidns`",
                        ));
                    }
                };
                let c =
                    self.register(&id, target, labels, by.as_deref().unwrap_or("api"), mode.as_deref())?;
                to_json(self.container_row(&c, 0, &std::collections::HashMap::new()))
            }
            Request::Unregister { id } => {
                let c = self.unregister(&id)?;
                to_json(serde_json::json!({ "id": c.id }))
            }
            Request::Policy { id, mode } => {
                let c = self.set_policy(&id, &mode)?;
                to_json(self.container_row(&c, 0, &std::collections::HashMap::new()))
            }
            // The connection notifies `shutdown` once this answer is sent.
            Request::Shutdown => to_json(serde_json::json!({ "stopping": true, "pinned": self.pinned })),
            Request::Audit { container, verdict, limit, .. } => {
                let filter = self.audit_filter(container, verdict)?;
                to_json(self.audit.recent(&filter, limit.unwrap_or(1000)))
            }
            Request::Status => Ok(self.status()),
        }
    }

    pub fn ps(&self, container: Option<&str>) -> Result<Vec<TaskRow>, ApiError> {
        let maps = self.maps.lock().map_err(internal)?;
        let reg = self.sync_registry(&maps)?;
        let want = match container {
            Some(name) => Some(reg.find(name).ok_or_else(|| unknown_container(name))?.number),
            None => None,
        };
        let tasks = maps.all_tasks();
        // The rows (a /proc read each, for the comm) are made without holding the maps.
        drop(maps);
        let mut rows: Vec<TaskRow> = tasks
            .iter()
            .filter(|t| want.is_none_or(|c| t.entry.container == c))
            .map(|t| self.row(&reg, t))
            .collect();
        rows.sort_by_key(|r| (r.host_pid, r.host_tid));
        Ok(rows)
    }

    pub fn containers(&self) -> Result<Vec<ContainerRow>, ApiError> {
        let maps = self.maps.lock().map_err(internal)?;
        let reg = self.sync_registry(&maps)?;
        let mut counts = std::collections::HashMap::<u32, u64>::new();
        for (_, e) in maps.task_entries() {
            *counts.entry(e.container).or_default() += 1;
        }
        let by_ns = reg.ids_by_pidns();
        Ok(reg
            .all()
            .map(|c| self.container_row(c, counts.get(&c.number).copied().unwrap_or(0), &by_ns))
            .collect())
    }

    fn container_row(
        &self,
        c: &registry::Container,
        tasks: u64,
        by_ns: &std::collections::HashMap<u32, String>,
    ) -> ContainerRow {
        ContainerRow {
            id: c.id.clone(),
            kind: match c.kind {
                Kind::Host => "host",
                Kind::Pidns => "pidns",
                Kind::Cgroup { .. } => "cgroup",
            }
            .into(),
            pidns: c.pidns,
            level: c.level,
            parent: (c.level > 0).then(|| by_ns.get(&c.parent_pidns).cloned()).flatten(),
            cgroup: match &c.kind {
                Kind::Cgroup { path, .. } => Some(path.display().to_string()),
                _ => None,
            },
            mode: c.mode.name().into(),
            tasks,
            registered_by: c.registered_by.clone(),
            labels: c.labels.clone(),
        }
    }

    pub fn translate(
        &self,
        container: &str,
        vpid: Option<u32>,
        pid: Option<u32>,
    ) -> Result<Translation, ApiError> {
        let maps = self.maps.lock().map_err(internal)?;
        let reg = self.sync_registry(&maps)?;
        let c = reg.find(container).ok_or_else(|| unknown_container(container))?;
        let (level, pidns, id, number) = (c.level, c.pidns, c.id.clone(), c.number);
        let cgroup = matches!(c.kind, Kind::Cgroup { .. });
        let task = match (vpid, pid) {
            (Some(v), None) => maps.resolve(pidns, level, v).filter(|_| level > 0).or_else(|| {
                // The host's (and host-namespace containers') numbers are host numbers.
                (level == 0).then(|| maps.task(v)).flatten()
            }),
            (None, Some(p)) => maps.task(p),
            _ => {
                return Err(ApiError::new(ErrorCode::BadRequest, "give exactly one of vpid and pid"));
            }
        };
        let not_found = || {
            let what = match (vpid, pid) {
                (Some(v), _) => format!("no task with vpid {v} in container {id}"),
                (_, Some(p)) => format!("no task with host pid {p} in container {id}"),
                _ => unreachable!(),
            };
            ApiError::new(ErrorCode::NotFound, what)
        };
        let t = task.ok_or_else(not_found)?;
        // The task must be in this container or in one nested in it (its ids at this level
        // exist and its namespace at this level is the container's).
        let inside = if cgroup {
            t.entry.container == number
        } else {
            t.entry.level as u32 >= level
                && (level == 0
                    || maps.resolve(pidns, level, t.at(level).map(|i| i.tid).unwrap_or(0)).is_some())
        };
        if !inside {
            return Err(not_found());
        }
        let at = t.at(level).unwrap_or_default();
        let host = t.at(0).unwrap_or_default();
        Ok(Translation {
            container: id,
            vpid: at.tid,
            host_pid: host.tid,
            vtgid: at.tgid,
            host_tgid: host.tgid,
        })
    }

    /// The filter of an audit request, checked: a known container, a known verdict.
    pub fn audit_filter(
        &self,
        container: Option<String>,
        verdict: Option<String>,
    ) -> Result<Filter, ApiError> {
        if let Some(v) = &verdict
            && Verdict::by_name(v).is_none()
        {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!(
                    "unknown verdict `{v}` (one of {})",
                    Verdict::ALL.map(Verdict::name).join(", ")
                ),
            ));
        }
        let container = match container {
            Some(name) => {
                let maps = self.maps.lock().map_err(internal)?;
                let reg = self.sync_registry(&maps)?;
                Some(reg.find(&name).ok_or_else(|| unknown_container(&name))?.id.clone())
            }
            None => None,
        };
        Ok(Filter { container, verdict })
    }

    /// Counters: crossings per syscall per verdict (of one container, or of all), and with no
    /// container also drops, map errors and lifecycle events.
    pub fn stats(&self, container: Option<&str>) -> Result<serde_json::Value, ApiError> {
        let maps = self.maps.lock().map_err(internal)?;
        if let Some(name) = container {
            let reg = self.sync_registry(&maps)?;
            let c = reg.find(name).ok_or_else(|| unknown_container(name))?;
            let slot = match &c.kind {
                Kind::Host => pidvirt_common::slots::HOST,
                Kind::Pidns => maps.pidns_slot(c.pidns),
                Kind::Cgroup { slot, .. } => *slot,
            };
            let counted = maps.slot_counts(slot);
            return Ok(serde_json::json!({
                "container": c.id,
                "crossings": kernel::named_crossings(&counted.crossings),
                "ringbuf_drops": counted.ringbuf_drops,
                "reaped": counted.reaped,
                "denied": kernel::named_denied(&counted.denied),
            }));
        }
        let values = maps.counters();
        // Crossings of every container, plus those no per-container counter could take.
        let mut total: Vec<u64> = (0..NSYSCALLS * NVERDICTS)
            .map(|i| values.get(counter::CROSSING_BASE as usize + i).copied().unwrap_or(0))
            .collect();
        let mut denied = vec![0u64; pidvirt_common::audit::NLSM];
        if let Ok(retired) = self.retired.lock() {
            for (t, n) in total.iter_mut().zip(retired.crossings.iter()) {
                *t += n;
            }
            for (t, n) in denied.iter_mut().zip(retired.denied.iter()) {
                *t += n;
            }
        }
        for slot in 0..maps.counts.len() {
            for (t, n) in denied.iter_mut().zip(maps.slot_counts(slot).denied) {
                *t += n;
            }
        }
        for (t, n) in total.iter_mut().zip(maps.all_counts()) {
            *t += n;
        }
        let mut out = serde_json::to_value(kernel::named_counters(&values)).map_err(internal)?;
        out["crossings"] = serde_json::to_value(kernel::named_crossings(&total)).map_err(internal)?;
        out["denied"] = serde_json::to_value(kernel::named_denied(&denied)).map_err(internal)?;
        use std::sync::atomic::Ordering::Relaxed;
        out["audit_log"] = serde_json::json!({
            "written": self.audit.written.load(Relaxed),
            "write_errors": self.audit.sink_errors.load(Relaxed),
        });
        Ok(out)
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "kernel": self.kernel_release,
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "programs": self.attached.iter().map(|(p, h)| serde_json::json!({"program": p, "hook": h})).collect::<Vec<_>>(),
            "enforcement": self.enforcement,
            "task_reads": self.task_reads,
            "pinned": self.pinned,
            "adopted": self.adopted,
            "seed": self.seed.lock().ok().and_then(|s| s.clone()).map(|s| serde_json::json!(s)).unwrap_or_else(|| serde_json::json!("running")),
        })
    }
}

fn unknown_container(name: &str) -> ApiError {
    ApiError::new(ErrorCode::UnknownContainer, format!("unknown container `{name}`"))
}

fn to_json(v: impl serde::Serialize) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(v).map_err(internal)
}

/// How often containers whose namespace or cgroup is gone are looked for.
pub const SWEEP_EVERY: Duration = Duration::from_secs(3);

/// How long the server waits for a request line before closing an idle connection.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
