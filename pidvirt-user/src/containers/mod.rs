//! The container service: every way a container becomes known (registration through the API,
//! the CLI or the OCI hook; discovery from a runtime's cgroup path; the kernel's first sight of
//! a pid namespace; the state file read back at start) and every way it ends (unregistration,
//! the sweep), with the kernel's view (container numbers, counter slots, cgroup membership,
//! policy) kept in step.
//!
//! Lock order: the kernel maps (shared with the seed and the queries), then the registry, then
//! the retired counters. The registry and the retired counters are private to this service, and
//! every method here that needs more than one takes them in that order; nothing else takes the
//! registry.

pub mod cgroup;
pub mod discover;
pub mod oci;
pub mod procfs;
pub mod registry;
pub mod state_file;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

use pidvirt_common::{
    CgroupContainer, HOST_CONTAINER, INLINE_LEVELS, PidnsEvent, PidnsInfo, TaskEntry, audit::Mode, slots,
};

pub use self::registry::{Container, K8sInfo, Kind, RegError, Registry, RuntimeInfo, Source};
use self::state_file::{Saved, Target};
use crate::runtimes::{Facts, Update};
use crate::{
    api::{ApiError, ContainerRow, ErrorCode},
    kernel::{KernelMaps, SlotCounts},
    loader::Availability,
    procscan,
};

/// A registration request, as the API, the CLI and the OCI hook make it.
#[derive(Clone, Debug)]
pub struct Registration {
    pub id: String,
    pub target: Target,
    pub labels: BTreeMap<String, String>,
    /// Source::Api or Source::Oci.
    pub by: Source,
    pub mode: Option<Mode>,
}

impl From<RegError> for ApiError {
    fn from(e: RegError) -> Self {
        let code = match e {
            RegError::IdInUse(_) | RegError::TargetTaken(..) => ErrorCode::IdInUse,
            RegError::Unknown(_) => ErrorCode::UnknownContainer,
            RegError::Ambiguous(..) => ErrorCode::Ambiguous,
            RegError::BadId(_) | RegError::Host | RegError::Full => ErrorCode::BadRequest,
        };
        ApiError::new(code, e.to_string())
    }
}

fn not_found(msg: String) -> ApiError {
    ApiError::new(ErrorCode::NotFound, msg)
}

/// The error for a container name nobody knows.
pub fn unknown_container(name: &str) -> ApiError {
    ApiError::new(ErrorCode::UnknownContainer, format!("unknown container `{name}`"))
}

/// A policy mode by name.
pub fn parse_mode(name: &str) -> Result<Mode, ApiError> {
    Mode::by_name(name).ok_or_else(|| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("mode must be one of {}, not `{name}`", Mode::NAMES.join(", ")),
        )
    })
}

/// Labels given as `k=v` on the command line.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("label must be KEY=VALUE, got {s:?}")),
    }
}

/// The container service (see the module documentation for its lock order).
pub struct Containers {
    maps: Arc<Mutex<KernelMaps>>,
    registry: Mutex<Registry>,
    /// Crossing counters of containers that ended (their per-container counters are gone).
    retired: Mutex<SlotCounts>,
    state_file: Option<PathBuf>,
    enforcement: Availability,
}

impl Containers {
    /// The service for a host whose initial pid namespace is `host_pidns`, with the namespaces
    /// the maps already know.
    pub fn new(
        maps: Arc<Mutex<KernelMaps>>,
        host_pidns: u32,
        state_file: Option<PathBuf>,
        enforcement: Availability,
    ) -> Self {
        let mut registry = Registry::new(host_pidns);
        if let Ok(maps) = maps.lock() {
            let _ = registry.sync_pidns(&maps.pidns_all(), cgroup::cgroup_path_of);
        }
        Self {
            maps,
            registry: Mutex::new(registry),
            retired: Mutex::new(SlotCounts::default()),
            state_file,
            enforcement,
        }
    }

    /// The maps and the registry, locked in order, the registry synced with the namespaces the
    /// kernel knows.
    fn lock(&self) -> Result<(MutexGuard<'_, KernelMaps>, MutexGuard<'_, Registry>), ApiError> {
        let mut maps = self.maps.lock().map_err(ApiError::internal)?;
        let mut reg = self.registry.lock().map_err(ApiError::internal)?;
        let pidns = maps.pidns_all();
        for ended in reg.sync_pidns(&pidns, cgroup::cgroup_path_of) {
            // Its inode went to a new namespace, whose record has a counter slot of its own.
            if let Kind::Pidns { slot, .. } = ended.kind
                && pidns.iter().all(|(_, info)| info.slot != slot)
            {
                self.retire(&maps.release_slot(slot));
            }
            maps.set_mode(ended.number, Mode::Observe);
            tracing::info!(
                id = ended.id,
                pidns = ended.pidns,
                "container ended: its namespace's inode went to a new one"
            );
        }
        Ok((maps, reg))
    }

    /// Runs `f` on the maps and the registry (locked in order, the registry synced).
    pub fn view<R>(&self, f: impl FnOnce(&KernelMaps, &Registry) -> R) -> Result<R, ApiError> {
        let (maps, reg) = self.lock()?;
        Ok(f(&maps, &reg))
    }

    /// Runs `f` on the registry alone (naming records: no kernel access).
    pub fn with_registry<R>(&self, f: impl FnOnce(&Registry) -> R) -> Result<R, ApiError> {
        let reg = self.registry.lock().map_err(ApiError::internal)?;
        Ok(f(&reg))
    }

    /// The container a user names, as it is now.
    pub fn find(&self, name: &str) -> Result<Container, ApiError> {
        Ok(self.view(|_, reg| reg.lookup(name).cloned())??)
    }

    /// A pid namespace the kernel programs saw for the first time. It is noted with every
    /// namespace the kernel knows and the registry does not, outermost first (the kernel
    /// registers a new namespace's unknown ancestors silently), so that which of them a runtime's
    /// id goes to does not depend on the order of events.
    pub fn noticed(&self, ev: &PidnsEvent) {
        match self.lock() {
            Ok((_, reg)) => tracing::info!(
                pidns = ev.pidns,
                level = ev.level,
                first_tid = ev.first_tid,
                id = reg.id_of(ev.pidns),
                "new pid namespace"
            ),
            Err(e) => tracing::warn!(pidns = ev.pidns, "new pid namespace not noted: {e}"),
        }
    }

    /// Whether enforcement runs, and why not.
    pub fn enforcement(&self) -> &Availability {
        &self.enforcement
    }

    /// An error naming why enforcement is unavailable, if it is.
    fn require_enforcement(&self) -> Result<(), ApiError> {
        if self.enforcement.available {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::Unavailable,
                format!("enforcement is unavailable on this kernel: {}", self.enforcement.reason),
            ))
        }
    }

    /// Registers a container; returns it.
    pub fn register(&self, r: Registration) -> Result<Container, ApiError> {
        registry::check_id(&r.id)?;
        if r.mode == Some(Mode::Enforce) {
            self.require_enforcement()?;
        }
        let (mut maps, mut reg) = self.lock()?;
        // The namespace a cgroup container's tasks joined, when the registration says it.
        let mut joined = None;
        let target = match r.target {
            Target::Pid(pid) => {
                let pid = u32::try_from(pid)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| not_found(format!("no process {pid}")))?;
                let gone = |_| not_found(format!("no process {pid}"));
                let ns = procscan::pidns_of(pid).map_err(gone)?;
                // A process of the host's namespace, or a runtime's container that joined another
                // container's namespace (its init is not the namespace's): its cgroup.
                let member =
                    ns != reg.host_pidns() && r.by == Source::Oci && joined_namespace(pid).map_err(gone)?;
                if ns == reg.host_pidns() || member {
                    let path = cgroup::cgroup_path_of(pid)
                        .ok_or_else(|| not_found(format!("no cgroup v2 path for process {pid}")))?;
                    joined = member.then_some(ns);
                    Target::Cgroup(path)
                } else {
                    Target::Pidns(ns)
                }
            }
            other => other,
        };
        let c = match &target {
            Target::Pidns(ns) => {
                let info = maps
                    .pidns
                    .get(ns, 0)
                    .map_err(|_| not_found(format!("no live pid namespace with inode {ns}")))?;
                reg.register_pidns(&r.id, *ns, &info, r.labels, r.by)?
            }
            Target::Cgroup(spec) => {
                let host = reg.host_pidns();
                track_cgroup(&mut maps, &mut reg, (&r.id, spec), r.labels, r.by, |path| {
                    joined.or_else(|| joined_by(path, host))
                })?
            }
            Target::Pid(_) => unreachable!("resolved above"),
        };
        // What the runtime's annotations say (the engine, Kubernetes identity), until its API
        // says more.
        let (runtime, k8s) = oci::runtime_from_annotations(&c.labels);
        if c.runtime.is_none() && (runtime.is_some() || k8s.is_some()) {
            reg.describe(c.number, runtime, k8s);
        }
        let c = reg.get(c.number).cloned().unwrap_or(c);
        let c = match r.mode {
            Some(m) => {
                maps.set_mode(c.number, m);
                let _ = reg.set_mode(&c.id, m);
                Container { mode: m, ..c }
            }
            None => c,
        };
        drop(maps);
        tracing::info!(
            id = c.id.as_str(),
            by = r.by.name(),
            mode = c.mode.name(),
            "registered container ({})",
            c.describe()
        );
        self.save(&reg);
        Ok(c)
    }

    /// Sets container `id`'s policy.
    pub fn set_policy(&self, id: &str, m: Mode) -> Result<Container, ApiError> {
        if m == Mode::Enforce {
            self.require_enforcement()?;
        }
        let (mut maps, mut reg) = self.lock()?;
        let number = reg.set_mode(id, m)?;
        maps.set_mode(number, m);
        drop(maps);
        let c = reg.get(number).cloned().ok_or_else(|| unknown_container(id))?;
        tracing::info!(id, mode = m.name(), "policy set");
        self.save(&reg);
        Ok(c)
    }

    /// Unregisters `id`.
    pub fn unregister(&self, id: &str) -> Result<Container, ApiError> {
        let (mut maps, mut reg) = self.lock()?;
        let c = reg.unregister(id)?;
        maps.set_mode(c.number, Mode::Observe);
        if let Kind::Cgroup { cgroup_id, path, slot } = &c.kind {
            maps.set_cgroup(*cgroup_id, None).map_err(ApiError::internal)?;
            let ns_slots: HashMap<u32, u32> =
                maps.pidns_all().into_iter().map(|(ns, i)| (ns, i.slot)).collect();
            for tid in cgroup::threads_below(path) {
                maps.retag(tid, |e| {
                    default_container(e, |ns| ns_slots.get(&ns).copied().unwrap_or(slots::OVERFLOW))
                });
            }
            self.retire(&maps.release_slot(*slot));
        }
        drop(maps);
        tracing::info!(id, "unregistered container");
        self.save(&reg);
        Ok(c)
    }

    /// What a runtime says: a container runs with init `pid`, or was removed. A claim is checked
    /// against the kernel first: the pid must be a live process whose cgroup path names the
    /// container (a runtime can lie, or a pid be reused); one that fails is logged and ignored.
    /// A container in its own pid namespace gives that namespace its name. One that shares the
    /// host's (`--pid=host`, a hostPID pod) becomes a cgroup container, so that what it does to
    /// other containers is judged as a sibling's action. One that joined another container's
    /// namespace (`--pid=container:X`, a pod sharing its process namespace: its init is not the
    /// namespace's) becomes a cgroup container in that namespace: each keeps its own name, and
    /// the namespace the name of the container whose init is its init.
    pub fn runtime_update(&self, update: Update) {
        match update {
            Update::Running(f) => {
                if let Err(why) = self.runtime_running(&f) {
                    tracing::warn!(
                        engine = f.runtime.engine,
                        id = f.id,
                        pid = f.pid,
                        "runtime's container not named: {why}"
                    );
                }
            }
            Update::Removed { engine, id } => self.runtime_removed(&engine, &id),
        }
    }

    fn runtime_running(&self, f: &Facts) -> Result<(), String> {
        let path = cgroup::cgroup_path_of(f.pid).ok_or("no such process")?;
        if !path.contains(f.id.as_str()) {
            return Err(format!("that process's cgroup is {path}, which does not name the container"));
        }
        let ns = procscan::pidns_of(f.pid).map_err(|e| e.to_string())?;
        let joined = joined_namespace(f.pid).map_err(|e| e.to_string())?;
        let (mut maps, mut reg) = self.lock().map_err(|e| e.message)?;
        if ns == reg.host_pidns() || joined {
            // An orchestrator's registration of its cgroup (the OCI hook's) is kept; the runtime
            // describes it. One of a namespace is another container's: not this one's to name.
            if let Ok(c) = reg.lookup(&f.id)
                && c.is_registered()
            {
                if !matches!(c.kind, Kind::Cgroup { .. }) {
                    return Err(format!(
                        "{} is registered as pid namespace {}, not by its cgroup",
                        f.id, c.pidns
                    ));
                }
                let number = c.number;
                reg.describe(number, Some(f.runtime.clone()), f.k8s.clone());
                return Ok(());
            }
            // A namespace that discovery named after this container (its first task seen was
            // this container's, which joined it) gives the name back.
            reg.withdraw_discovered(&f.id);
            let c =
                track_cgroup(&mut maps, &mut reg, (&f.id, &path), f.labels.clone(), Source::Runtime, |_| {
                    joined.then_some(ns)
                })
                .map_err(|e| e.message)?;
            reg.describe(c.number, Some(f.runtime.clone()), f.k8s.clone());
            tracing::info!(
                engine = f.runtime.engine,
                id = f.id,
                name = f.runtime.name,
                pidns = ns,
                "runtime container in {} pid namespace: tracked by its cgroup {}",
                if joined { "another container's" } else { "the host's" },
                match &c.kind {
                    Kind::Cgroup { path, .. } => path.display().to_string(),
                    _ => path,
                }
            );
            return Ok(());
        }
        let info = maps.pidns.get(&ns, 0).map_err(|_| format!("pid namespace {ns} is not tracked yet"))?;
        reg.name_by_runtime(ns, &info, &f.id, f.runtime.clone(), f.k8s.clone());
        // The runtime's labels, unless an orchestrator's registration gave its own.
        if let Some(c) = reg.get_mut(ns)
            && !c.is_registered()
        {
            c.labels.clone_from(&f.labels);
        }
        tracing::info!(
            engine = f.runtime.engine,
            id = f.id,
            name = f.runtime.name,
            image = f.runtime.image,
            pidns = ns,
            "runtime named container"
        );
        Ok(())
    }

    /// A runtime removed a container: a cgroup container it made goes (a namespace container
    /// goes with its last task, in the sweep).
    fn runtime_removed(&self, engine: &str, id: &str) {
        let Ok((mut maps, mut reg)) = self.lock() else { return };
        let Some(c) = reg.lookup(id).ok().filter(|c| c.source == Source::Runtime).cloned() else { return };
        if let Kind::Cgroup { cgroup_id, slot, .. } = &c.kind {
            let _ = maps.set_cgroup(*cgroup_id, None);
            maps.set_mode(c.number, Mode::Observe);
            self.retire(&maps.release_slot(*slot));
            let _ = reg.unregister(&c.id);
            tracing::info!(engine, id, "runtime removed container");
        }
    }

    /// Gives every thread of process `pid` the container (and counter slot) its leader moved to.
    pub fn migrated(&self, pid: u32, container: u32, slot: u32) {
        if let Ok(mut maps) = self.maps.lock() {
            for tid in procscan::thread_ids(pid) {
                maps.retag(tid, |_| (container, slot));
            }
        }
    }

    /// Adds the counters of an ended container to the retired totals.
    fn retire(&self, counted: &SlotCounts) {
        if let Ok(mut retired) = self.retired.lock() {
            retired.add(counted);
        }
    }

    /// What containers that ended counted.
    pub fn retired(&self) -> SlotCounts {
        self.retired.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Writes the registrations made by orchestrators to the state file.
    fn save(&self, reg: &Registry) {
        let Some(path) = &self.state_file else { return };
        let registrations = reg
            .all()
            .filter(|c| c.is_registered())
            .map(|c| Saved {
                id: c.id.clone(),
                target: match &c.kind {
                    Kind::Cgroup { path, .. } => Target::Cgroup(path.display().to_string()),
                    _ => Target::Pidns(c.pidns),
                },
                labels: c.labels.clone(),
                registered_by: c.source.name().into(),
                mode: c.mode.name().into(),
            })
            .collect();
        if let Err(e) = state_file::write(path, registrations) {
            tracing::error!("{e}");
        }
    }

    /// Registers again what the state file holds; a registration whose namespace or cgroup is
    /// gone is dropped with a log line.
    pub fn restore(&self) {
        let Some(path) = &self.state_file else { return };
        let saved = match state_file::read(path) {
            Ok(saved) => saved,
            Err(e) => {
                tracing::error!("{e}; starting without registrations");
                return;
            }
        };
        for s in saved {
            let Some(by) = Source::registration(&s.registered_by) else {
                tracing::warn!(
                    id = s.id.as_str(),
                    "dropped registration by `{}`: not api or oci",
                    s.registered_by
                );
                continue;
            };
            let registration = Registration {
                id: s.id.clone(),
                target: s.target.clone(),
                labels: s.labels,
                by,
                mode: Mode::by_name(&s.mode),
            };
            if let Err(e) = self.register(registration) {
                tracing::warn!(id = s.id.as_str(), "dropped registration {:?}: {}", s.target, e.message);
            }
        }
    }

    /// Retires containers whose pid namespace has had no task for two sweeps, and cgroup
    /// containers whose cgroup was removed. `suspects` carries the namespaces found empty by
    /// the previous sweep.
    pub fn sweep(&self, suspects: &mut HashSet<u32>) {
        let Ok(mut maps) = self.maps.lock() else { return };
        let pidns = maps.pidns_all();
        let ancestors: HashMap<u32, PidnsInfo> = pidns.iter().copied().collect();
        let mut live = HashSet::new();
        let mut inits = Vec::new();
        for (_, e) in maps.task_entries() {
            if (1..INLINE_LEVELS as u8).contains(&e.level) && e.nr[e.level as usize].tid == 1 {
                inits.push(e.host_tid());
            }
            match ancestors.get(&e.pidns) {
                Some(info) => live.extend(info.ancestors.iter().take(e.level as usize + 1).copied()),
                None => {
                    live.insert(e.pidns);
                }
            }
        }
        let Ok(mut reg) = self.registry.lock() else { return };
        let mut changed = false;
        for (ns, info) in pidns {
            if info.level == 0 || live.contains(&ns) {
                suspects.remove(&ns);
                continue;
            }
            if suspects.insert(ns) {
                continue; // first sweep without a task: wait for the next
            }
            suspects.remove(&ns);
            if let Some(counters) = maps.forget_pidns(ns) {
                self.retire(&counters);
            }
            maps.set_mode(ns, Mode::Observe);
            if let Some(c) = reg.remove(ns)
                && c.is_registered()
            {
                changed = true;
                tracing::info!(id = c.id.as_str(), "container ended: no task left in pid namespace {ns}");
            }
        }
        let gone: Vec<Container> = reg
            .all()
            .filter(|c| matches!(&c.kind, Kind::Cgroup { cgroup_id, path, .. } if !cgroup::still_there(path, *cgroup_id)))
            .cloned()
            .collect();
        for c in gone {
            if let Kind::Cgroup { cgroup_id, path, slot } = &c.kind {
                tracing::info!(id = c.id.as_str(), "container ended: cgroup {} removed", path.display());
                let _ = maps.set_cgroup(*cgroup_id, None);
                maps.set_mode(c.number, Mode::Observe);
                self.retire(&maps.release_slot(*slot));
                let _ = reg.unregister(&c.id);
                changed = true;
            }
        }
        drop(maps);
        drop(reg);
        // Which procfs each namespace's init sees at /proc (read outside the locks: it walks
        // /proc).
        let known = procfs::procfs_map(inits);
        if let Ok(mut maps) = self.maps.lock()
            && let Err(e) = maps.set_procfs(&known)
        {
            tracing::warn!("PROCFS map not updated: {e}");
        }
        if changed && let Ok(reg) = self.registry.lock() {
            self.save(&reg);
        }
    }
}

/// Registers container `id` as cgroup `spec` (absolute, or relative to the cgroup2 mount), in the
/// pid namespace `joined` says its tasks joined (given the cgroup's path; None: the host's, or
/// where an earlier registration placed it), and makes every task below it a member.
fn track_cgroup(
    maps: &mut KernelMaps,
    reg: &mut Registry,
    (id, spec): (&str, &str),
    labels: BTreeMap<String, String>,
    by: Source,
    joined: impl FnOnce(&Path) -> Option<u32>,
) -> Result<Container, ApiError> {
    let (path, cgroup_id) = cgroup::resolve_cgroup(spec)?;
    let reuse = maps.cgroups.get(&cgroup_id, 0).ok().map(|c| (c.container, c.slot));
    let joined = match joined(&path) {
        Some(ns) => Some((
            ns,
            maps.pidns
                .get(&ns, 0)
                .map_err(|_| not_found(format!("pid namespace {ns} is not tracked yet")))?,
        )),
        None => None,
    };
    let c = reg.register_cgroup(
        id,
        (cgroup_id, path.clone()),
        joined.as_ref().map(|(ns, info)| (*ns, info)),
        labels,
        by,
        reuse,
        || maps.take_slot(),
    )?;
    let Kind::Cgroup { slot, .. } = c.kind else { unreachable!("a cgroup container") };
    let member = CgroupContainer { container: c.number, slot };
    maps.set_cgroup(cgroup_id, Some(member)).map_err(ApiError::internal)?;
    for tid in cgroup::threads_below(&path) {
        maps.retag(tid, |_| (member.container, member.slot));
    }
    Ok(c)
}

/// Whether process `pid` joined a pid namespace that another process made: it is not its
/// namespace's init (its innermost number is not 1). False in the host's namespace, whose init
/// is this machine's.
fn joined_namespace(pid: u32) -> Result<bool, procscan::ProcError> {
    let task = procscan::read_task(pid, pid, Some(0))?;
    Ok(task.level() > 0 && task.nspid.last() != Some(&1))
}

/// The pid namespace the tasks of cgroup `dir` (and below) joined: the namespace of its
/// shallowest tasks, if that is not the host's, they all live in it, and none of them is its
/// init (a container sharing another's namespace; its deeper tasks are in namespaces it made
/// below). None for a cgroup of the host's namespace, of a namespace it made, or with no task.
fn joined_by(dir: &Path, host: u32) -> Option<u32> {
    let tasks: Vec<procscan::ProcTask> = cgroup::threads_below(dir)
        .into_iter()
        .filter_map(|tid| procscan::read_task(tid, tid, None).ok())
        .collect();
    let top = tasks.iter().min_by_key(|t| t.level())?;
    let made_it = tasks
        .iter()
        .filter(|t| t.level() == top.level())
        .any(|t| t.pidns != top.pidns || t.nstgid.last() == Some(&1));
    (top.pidns != host && !made_it).then_some(top.pidns)
}

/// A task's container (and counter slot) when it belongs to no cgroup container: its pid
/// namespace's, or the host's. `ns_slot` gives a namespace's counter slot.
fn default_container(e: &TaskEntry, ns_slot: impl Fn(u32) -> u32) -> (u32, u32) {
    if e.level == 0 { (HOST_CONTAINER, slots::HOST) } else { (e.pidns, ns_slot(e.pidns)) }
}

impl Container {
    /// One-line description of what the container is, for logs.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Cgroup { path, .. } => format!("cgroup {}", path.display()),
            _ => format!("pid namespace {} at level {}", self.pidns, self.level),
        }
    }

    /// The container as `containers` shows it, with its task count and the ids of containers by
    /// pid namespace (for its parent).
    pub fn row(&self, tasks: u64, ids_by_pidns: &HashMap<u32, String>) -> ContainerRow {
        ContainerRow {
            id: self.id.clone(),
            kind: self.kind.name().into(),
            pidns: self.pidns,
            level: self.level,
            // A cgroup container in a namespace below the host's joined it: the namespace's
            // container is its parent.
            parent: match self.kind {
                Kind::Cgroup { .. } if self.level > 0 => ids_by_pidns.get(&self.pidns).cloned(),
                _ => (self.level > 0).then(|| ids_by_pidns.get(&self.parent_pidns).cloned()).flatten(),
            },
            cgroup: match &self.kind {
                Kind::Cgroup { path, .. } => Some(path.display().to_string()),
                _ => None,
            },
            mode: self.mode.name().into(),
            tasks,
            registered_by: self.source.name().into(),
            labels: self.labels.clone(),
            runtime: self.runtime.clone(),
            k8s: self.k8s.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_modes() {
        assert_eq!(parse_label("pod=web").unwrap(), ("pod".into(), "web".into()));
        assert_eq!(parse_label("empty=").unwrap(), ("empty".into(), String::new()));
        assert!(parse_label("=x").is_err());
        assert!(parse_label("novalue").is_err());
        assert_eq!(parse_mode("enforce").unwrap(), Mode::Enforce);
        assert_eq!(parse_mode("loud").unwrap_err().code, ErrorCode::BadRequest);
    }
}
