//! Containers as an orchestrator knows them: registration by pid, cgroup or pid namespace, the
//! state file that keeps registrations across daemon restarts, and the sweep that retires
//! containers whose namespace or cgroup is gone.

use std::{
    collections::{BTreeMap, HashSet},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use pidvirt_common::{CgroupContainer, HOST_CONTAINER, PidnsInfo, TaskEntry, audit::Mode, slots};
use serde::{Deserialize, Serialize};

use crate::{
    api::{ApiError, ErrorCode},
    daemon::State,
    procscan,
    registry::{Container, Kind, RegError, Registry},
};

/// What a registration names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Pid(i32),
    Cgroup(String),
    Pidns(u32),
}

/// A registration as the state file keeps it (the target resolved: a namespace or a cgroup).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub id: String,
    pub target: Target,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub registered_by: String,
    /// `observe` or `enforce`.
    #[serde(default = "observe")]
    pub mode: String,
}

fn observe() -> String {
    Mode::Observe.name().into()
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

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    registrations: Vec<Saved>,
}

impl From<RegError> for ApiError {
    fn from(e: RegError) -> Self {
        let code = match e {
            RegError::IdInUse(_) | RegError::TargetTaken(..) => ErrorCode::IdInUse,
            RegError::Unknown(_) => ErrorCode::UnknownContainer,
            RegError::BadId(_) | RegError::Host | RegError::Full => ErrorCode::BadRequest,
        };
        ApiError::new(code, e.to_string())
    }
}

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

/// Every thread id in cgroup `dir` and its descendants.
fn cgroup_threads(dir: &Path, out: &mut Vec<u32>, depth: u32) {
    if depth > pidvirt_common::MAX_CGROUP_DEPTH {
        return;
    }
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.threads")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                cgroup_threads(&e.path(), out, depth + 1);
            }
        }
    }
}

/// A task's container (and counter slot) when it belongs to no cgroup container: its pid
/// namespace's, or the host's. `ns_slot` gives a namespace's counter slot.
fn default_container(e: &TaskEntry, ns_slot: impl Fn(u32) -> u32) -> (u32, u32) {
    if e.level == 0 { (HOST_CONTAINER, slots::HOST) } else { (e.pidns, ns_slot(e.pidns)) }
}

impl State {
    /// Registers `id` for `target`; returns the container.
    pub fn register(
        &self,
        id: &str,
        target: Target,
        labels: BTreeMap<String, String>,
        by: &str,
        mode: Option<&str>,
    ) -> Result<Container, ApiError> {
        if !matches!(by, "api" | "oci") {
            return Err(ApiError::new(ErrorCode::BadRequest, format!("`by` must be api or oci, not `{by}`")));
        }
        crate::registry::check_id(id)?;
        let mode = mode.map(parse_mode).transpose()?;
        if mode == Some(Mode::Enforce) {
            self.require_enforcement()?;
        }
        let mut maps = self.maps.lock().map_err(crate::daemon::internal)?;
        let mut reg = self.sync_registry(&maps)?;
        let target = match target {
            Target::Pid(pid) => {
                let pid = u32::try_from(pid)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| not_found(format!("no process {pid}")))?;
                let ns = procscan::pidns_of(pid).map_err(|_| not_found(format!("no process {pid}")))?;
                if ns == reg.host_pidns() {
                    // A process of the host's namespace: its container is its cgroup.
                    let path = cgroup_path_of(pid)
                        .ok_or_else(|| not_found(format!("no cgroup v2 path for process {pid}")))?;
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
                reg.register_pidns(id, *ns, &info, labels, by)?
            }
            Target::Cgroup(spec) => {
                let (path, cgroup_id) = resolve_cgroup(spec)?;
                let reuse = maps.cgroups.get(&cgroup_id, 0).ok().map(|c| (c.container, c.slot));
                let c = reg
                    .register_cgroup(id, (cgroup_id, path.clone()), labels, by, reuse, || maps.take_slot())?;
                let Kind::Cgroup { slot, .. } = c.kind else { unreachable!("a cgroup container") };
                let member = CgroupContainer { container: c.number, slot };
                maps.set_cgroup(cgroup_id, Some(member)).map_err(crate::daemon::internal)?;
                let mut tids = Vec::new();
                cgroup_threads(&path, &mut tids, 0);
                for tid in tids {
                    maps.retag(tid, |_| (member.container, member.slot));
                }
                c
            }
            Target::Pid(_) => unreachable!("resolved above"),
        };
        let c = match mode {
            Some(m) => {
                set_kernel_mode(&mut maps, c.number, m);
                let _ = reg.set_mode(&c.id, m);
                Container { mode: m, ..c }
            }
            None => c,
        };
        drop(maps);
        tracing::info!(
            id = c.id.as_str(),
            by,
            mode = c.mode.name(),
            "registered container ({})",
            describe(&c)
        );
        self.save(&reg);
        Ok(c)
    }

    /// An error naming why enforcement is unavailable, if it is.
    pub fn require_enforcement(&self) -> Result<(), ApiError> {
        if self.enforcement.available {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::Unavailable,
                format!("enforcement is unavailable on this kernel: {}", self.enforcement.reason),
            ))
        }
    }

    /// Sets container `id`'s policy.
    pub fn set_policy(&self, id: &str, mode_name_: &str) -> Result<Container, ApiError> {
        let m = parse_mode(mode_name_)?;
        if m == Mode::Enforce {
            self.require_enforcement()?;
        }
        let mut maps = self.maps.lock().map_err(crate::daemon::internal)?;
        let mut reg = self.sync_registry(&maps)?;
        let number = reg.set_mode(id, m)?;
        set_kernel_mode(&mut maps, number, m);
        let c = reg.get(number).cloned().ok_or_else(|| ApiError::new(ErrorCode::UnknownContainer, id))?;
        drop(maps);
        tracing::info!(id, mode = m.name(), "policy set");
        self.save(&reg);
        Ok(c)
    }

    /// Unregisters `id`.
    pub fn unregister(&self, id: &str) -> Result<Container, ApiError> {
        let mut maps = self.maps.lock().map_err(crate::daemon::internal)?;
        let mut reg = self.sync_registry(&maps)?;
        let c = reg.unregister(id)?;
        set_kernel_mode(&mut maps, c.number, Mode::Observe);
        if let Kind::Cgroup { cgroup_id, path, slot } = &c.kind {
            maps.set_cgroup(*cgroup_id, None).map_err(crate::daemon::internal)?;
            let mut tids = Vec::new();
            cgroup_threads(path, &mut tids, 0);
            let ns_slots: std::collections::HashMap<u32, u32> =
                maps.pidns_all().into_iter().map(|(ns, i)| (ns, i.slot)).collect();
            for tid in tids {
                maps.retag(tid, |e| {
                    default_container(e, |ns| ns_slots.get(&ns).copied().unwrap_or(slots::OVERFLOW))
                });
            }
            self.retire(maps.release_slot(*slot));
        }
        drop(maps);
        tracing::info!(id, "unregistered container");
        self.save(&reg);
        Ok(c)
    }

    /// Gives every thread of process `pid` the container (and counter slot) its leader moved to.
    pub fn migrated(&self, pid: u32, container: u32, slot: u32) {
        if let Ok(mut maps) = self.maps.lock() {
            for tid in procscan::thread_ids(pid) {
                maps.retag(tid, |_| (container, slot));
            }
        }
    }

    /// Writes the registrations made by orchestrators to the state file (atomically).
    pub fn save(&self, reg: &Registry) {
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
                registered_by: c.registered_by.clone(),
                mode: c.mode.name().into(),
            })
            .collect();
        if let Err(e) = write_atomically(path, &StateFile { version: 1, registrations }) {
            tracing::error!("cannot write state file {}: {e}", path.display());
        }
    }

    /// Registers again what the state file holds; a registration whose namespace or cgroup is
    /// gone is dropped with a log line.
    pub fn restore(&self) {
        let Some(path) = &self.state_file else { return };
        let saved: StateFile = match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(
                        "state file {} is not valid ({e}); starting without registrations",
                        path.display()
                    );
                    return;
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::error!("cannot read state file {}: {e}", path.display());
                return;
            }
        };
        for s in saved.registrations {
            if let Err(e) = self.register(&s.id, s.target.clone(), s.labels, &s.registered_by, Some(&s.mode))
            {
                tracing::warn!(id = s.id.as_str(), "dropped registration {:?}: {}", s.target, e.message);
            }
        }
    }

    /// Retires containers whose pid namespace has had no task for two sweeps, and cgroup
    /// containers whose cgroup was removed.
    pub fn sweep(&self, suspects: &mut HashSet<u32>) {
        let Ok(mut maps) = self.maps.lock() else { return };
        let pidns = maps.pidns_all();
        let ancestors: std::collections::HashMap<u32, PidnsInfo> = pidns.iter().copied().collect();
        let mut live = HashSet::new();
        for (_, e) in maps.task_entries() {
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
                self.retire(counters);
            }
            set_kernel_mode(&mut maps, ns, Mode::Observe);
            if let Some(c) = reg.remove(ns) {
                changed |= c.is_registered();
                if c.is_registered() {
                    tracing::info!(id = c.id.as_str(), "container ended: no task left in pid namespace {ns}");
                }
            }
        }
        let gone: Vec<Container> = reg
            .all()
            .filter(|c| match &c.kind {
                Kind::Cgroup { cgroup_id, path, .. } => {
                    std::fs::metadata(path).map(|m| m.ino() != *cgroup_id).unwrap_or(true)
                }
                _ => false,
            })
            .cloned()
            .collect();
        for c in gone {
            if let Kind::Cgroup { cgroup_id, path, slot } = &c.kind {
                tracing::info!(id = c.id.as_str(), "container ended: cgroup {} removed", path.display());
                let _ = maps.set_cgroup(*cgroup_id, None);
                set_kernel_mode(&mut maps, c.number, Mode::Observe);
                self.retire(maps.release_slot(*slot));
                let _ = reg.unregister(&c.id);
                changed = true;
            }
        }
        drop(maps);
        if changed {
            self.save(&reg);
        }
    }
}

/// Writes a container's policy where the enforcer reads it (observe: no entry).
fn set_kernel_mode(maps: &mut crate::kernel::KernelMaps, number: u32, m: Mode) {
    if m == Mode::Observe {
        let _ = maps.modes.remove(&number);
    } else if let Err(e) = maps.modes.insert(number, m as u32, 0) {
        tracing::error!("cannot set the policy of container {number}: {e}");
    }
}

fn describe(c: &Container) -> String {
    match &c.kind {
        Kind::Cgroup { path, .. } => format!("cgroup {}", path.display()),
        _ => format!("pid namespace {} at level {}", c.pidns, c.level),
    }
}

fn write_atomically(path: &Path, state: &StateFile) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Labels given as `k=v` on the command line.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("label must be KEY=VALUE, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_state_file() {
        assert_eq!(parse_label("pod=web").unwrap(), ("pod".into(), "web".into()));
        assert_eq!(parse_label("empty=").unwrap(), ("empty".into(), "".into()));
        assert!(parse_label("=x").is_err());
        assert!(parse_label("novalue").is_err());
        let dir = std::env::temp_dir().join(format!("pidvirt-state-{}", std::process::id()));
        let path = dir.join("state.json");
        let state = StateFile {
            version: 1,
            registrations: vec![Saved {
                id: "c1".into(),
                target: Target::Pidns(4026532300),
                labels: BTreeMap::from([("pod".into(), "web".into())]),
                registered_by: "oci".into(),
                mode: "enforce".into(),
            }],
        };
        write_atomically(&path, &state).unwrap();
        let back: StateFile = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back.registrations, state.registrations);
        assert!(!path.with_extension("tmp").exists());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn cgroup_v2_mount_and_paths() {
        let mount = cgroup2_mount().expect("a cgroup2 mount");
        let (path, id) = resolve_cgroup("/").unwrap();
        assert_eq!(path, mount.canonicalize().unwrap());
        assert_eq!(id, std::fs::metadata(&mount).unwrap().ino());
        assert!(resolve_cgroup("/no/such/cgroup").unwrap_err().message.contains("no/such/cgroup"));
        assert!(cgroup_path_of(std::process::id()).is_some());
    }
}
