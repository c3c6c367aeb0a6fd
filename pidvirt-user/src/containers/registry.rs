//! The registry of containers: the ids users know them by, how they became known, their labels,
//! runtime metadata and policy, and the kernel's container number behind each. Pure bookkeeping
//! (no kernel, no /proc): the container service (`containers`) owns it and keeps it in step with
//! the maps.
//!
//! Container numbers: 0 is the host; a pid namespace container is numbered by its namespace
//! inode (>= 0xF0000000, proc's dynamic inode range); a cgroup container gets a small number
//! (1..CGROUP_NUMBERS_END) allocated here.
//!
//! Ids: an orchestrator's id (registration), else a runtime's (its API, or its cgroup path),
//! else `pidns-<inode>`; a namespace nested in a named container is named after it,
//! `<holder id>/pidns-<inode>`, and records its holder. Namespaces are noted outermost first,
//! so which namespace a runtime's id goes to does not depend on the order events arrive in.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
};

use pidvirt_common::{
    HOST_CONTAINER, PidnsInfo,
    audit::{CGROUP_NUMBERS_END, Mode},
    pidns_source,
};
use serde::{Deserialize, Serialize};

use super::discover::{Discovered, discover};
pub use crate::api::{K8sInfo, RuntimeInfo};

/// The host's id.
pub const HOST_ID: &str = "host";

/// What a container is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Host,
    /// A pid namespace (and every namespace nested in it): the kernel's record of it has counter
    /// slot `slot` and names its init by start time `ns_start` (0: not known yet).
    Pidns {
        slot: u32,
        ns_start: u64,
    },
    /// A cgroup v2 directory and its descendants (`slot`: its counter slot).
    Cgroup {
        cgroup_id: u64,
        path: PathBuf,
        slot: u32,
    },
}

impl Kind {
    /// Every kind's name.
    pub const NAMES: [&'static str; 3] = ["host", "pidns", "cgroup"];

    /// The kind's name in `containers`.
    pub fn name(&self) -> &'static str {
        Self::NAMES[match self {
            Kind::Host => 0,
            Kind::Pidns { .. } => 1,
            Kind::Cgroup { .. } => 2,
        }]
    }
}

/// How a container became known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Host,
    /// The kernel programs saw its first task.
    Kernel,
    /// Found in /proc when the daemon attached.
    Seed,
    /// A runtime's id found in the cgroup path of its first task.
    Discovered,
    /// Its runtime (Docker, containerd, Podman, CRI) named it over its API.
    Runtime,
    /// Registered through the API or the CLI.
    Api,
    /// Registered by the OCI hook.
    Oci,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Host => "host",
            Source::Kernel => "kernel",
            Source::Seed => "seed",
            Source::Discovered => "discovered",
            Source::Runtime => "runtime",
            Source::Api => "api",
            Source::Oci => "oci",
        }
    }

    /// The source an orchestrator's registration names (`api` or `oci`).
    pub fn registration(by: &str) -> Option<Self> {
        match by {
            "api" => Some(Source::Api),
            "oci" => Some(Source::Oci),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// Kernel container number.
    pub number: u32,
    pub id: String,
    pub kind: Kind,
    /// The pid namespace (for a cgroup container: the host's, or the one its tasks joined).
    pub pidns: u32,
    pub level: u32,
    pub parent_pidns: u32,
    pub source: Source,
    pub labels: BTreeMap<String, String>,
    /// Observe unless set.
    pub mode: Mode,
    pub runtime: Option<RuntimeInfo>,
    pub k8s: Option<K8sInfo>,
    /// For a namespace without a name of its own: the number of the named container it is nested
    /// in (its id is derived from the holder's).
    pub holder: Option<u32>,
}

impl Container {
    /// Registered by an orchestrator (as opposed to found automatically).
    pub fn is_registered(&self) -> bool {
        matches!(self.source, Source::Api | Source::Oci)
    }

    /// Has a name of its own (not `pidns-<inode>`).
    pub fn is_named(&self) -> bool {
        !matches!(self.source, Source::Kernel | Source::Seed)
    }

    /// Back to an automatic namespace container (its name withdrawn).
    fn forget_name(&mut self) {
        self.id = Registry::auto_id(self.number);
        self.source = Source::Kernel;
        self.labels.clear();
        self.runtime = None;
        self.k8s = None;
        self.mode = Mode::Observe;
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegError {
    #[error("container id `{0}` is already registered for another target")]
    IdInUse(String),
    #[error("{0} is already registered as container `{1}`")]
    TargetTaken(String, String),
    #[error("unknown container `{0}`")]
    Unknown(String),
    #[error("`{0}` names more than one container: {1}")]
    Ambiguous(String, String),
    #[error("container id must be 1..=256 printable characters without spaces, got {0:?}")]
    BadId(String),
    #[error("`host` cannot be registered or unregistered")]
    Host,
    #[error("too many cgroup containers")]
    Full,
}

#[derive(Debug)]
pub struct Registry {
    by_number: BTreeMap<u32, Container>,
    host_pidns: u32,
}

pub fn check_id(id: &str) -> Result<(), RegError> {
    if id == HOST_ID {
        return Err(RegError::Host);
    }
    if id.is_empty() || id.len() > 256 || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(RegError::BadId(id.into()));
    }
    Ok(())
}

/// Shortest id prefix `find` takes (docker shows 12 hex digits).
pub const MIN_PREFIX: usize = 4;

impl Registry {
    pub fn new(host_pidns: u32) -> Self {
        let mut by_number = BTreeMap::new();
        by_number.insert(
            HOST_CONTAINER,
            Container {
                number: HOST_CONTAINER,
                id: HOST_ID.into(),
                kind: Kind::Host,
                pidns: host_pidns,
                level: 0,
                parent_pidns: 0,
                source: Source::Host,
                labels: BTreeMap::new(),
                mode: Mode::Observe,
                runtime: None,
                k8s: None,
                holder: None,
            },
        );
        Self { by_number, host_pidns }
    }

    pub fn host_pidns(&self) -> u32 {
        self.host_pidns
    }

    /// Id of an automatically found namespace container.
    pub fn auto_id(pidns: u32) -> String {
        format!("pidns-{pidns}")
    }

    /// Adds the pid namespaces the kernel (or the seed) knows and the registry does not,
    /// outermost first; `cgroup_of` gives the cgroup path of a namespace's first task, for
    /// discovery. A namespace whose kernel record was replaced (another namespace got its inode
    /// after it ended) is a new container: the old one is returned, for its counters.
    pub fn sync_pidns(
        &mut self,
        all: &[(u32, PidnsInfo)],
        cgroup_of: impl Fn(u32) -> Option<String>,
    ) -> Vec<Container> {
        let mut ended = Vec::new();
        let mut new = Vec::new();
        for (ns, info) in all.iter().filter(|(_, info)| info.level > 0) {
            match self.by_number.get_mut(ns).map(|c| &mut c.kind) {
                Some(Kind::Pidns { slot, ns_start }) => {
                    if *slot != info.slot
                        || (*ns_start != 0 && info.reaper_start != 0 && *ns_start != info.reaper_start)
                    {
                        new.push((*ns, info));
                    } else if *ns_start == 0 {
                        *ns_start = info.reaper_start;
                    }
                }
                Some(_) => {}
                None => new.push((*ns, info)),
            }
        }
        for (ns, _) in &new {
            ended.extend(self.by_number.remove(ns));
        }
        if new.is_empty() && ended.is_empty() {
            return ended;
        }
        new.sort_by_key(|(ns, info)| (info.level, *ns));
        for (ns, info) in new {
            let discovered = cgroup_of(info.first_tid).and_then(|p| discover(&p));
            self.insert_pidns(ns, info, discovered);
        }
        self.refresh_holders();
        ended
    }

    /// Registers namespace `ns` automatically (with a runtime's id discovered from its first
    /// task's cgroup path, if no container has that id yet: a namespace nested in a runtime's
    /// container shares its cgroup, and its outer namespace, noted first, has the id).
    pub fn note_pidns(&mut self, ns: u32, info: &PidnsInfo, discovered: Option<Discovered>) {
        if self.insert_pidns(ns, info, discovered) {
            self.refresh_holders();
        }
    }

    fn insert_pidns(&mut self, ns: u32, info: &PidnsInfo, discovered: Option<Discovered>) -> bool {
        if self.by_number.contains_key(&ns) {
            return false;
        }
        let mut c = Container {
            number: ns,
            id: Self::auto_id(ns),
            kind: Kind::Pidns { slot: info.slot, ns_start: info.reaper_start },
            pidns: ns,
            level: info.level,
            parent_pidns: info.parent,
            source: if info.source == pidns_source::SEED { Source::Seed } else { Source::Kernel },
            labels: BTreeMap::new(),
            mode: Mode::Observe,
            runtime: None,
            k8s: None,
            holder: None,
        };
        if let Some(d) = discovered
            && self.find_id(&d.id).is_none()
        {
            c.id = d.id;
            c.source = Source::Discovered;
            c.runtime = Some(RuntimeInfo { engine: d.runtime.into(), ..RuntimeInfo::default() });
            if let Some(uid) = d.pod_uid {
                c.k8s = Some(K8sInfo { pod_uid: uid, ..K8sInfo::default() });
            }
        }
        self.by_number.insert(ns, c);
        true
    }

    /// Gives every namespace without a name of its own the nearest named container it is nested
    /// in, and its id derived from that holder's.
    fn refresh_holders(&mut self) {
        let mut order: Vec<(u32, u32)> = self.by_number.values().map(|c| (c.level, c.number)).collect();
        order.sort_unstable();
        for (_, number) in order {
            let Some(c) = self.by_number.get(&number) else { continue };
            if c.is_named() || !matches!(c.kind, Kind::Pidns { .. }) {
                continue;
            }
            // Walk up (at most the deepest level) to the first named ancestor namespace.
            let mut parent = c.parent_pidns;
            let mut holder = None;
            for _ in 0..=pidvirt_common::MAX_PID_NS_LEVEL {
                match self.by_number.get(&parent) {
                    Some(p) if matches!(p.kind, Kind::Pidns { .. }) && p.is_named() => {
                        holder = Some((p.number, p.id.clone()));
                        break;
                    }
                    Some(p) if matches!(p.kind, Kind::Pidns { .. }) => parent = p.parent_pidns,
                    _ => break,
                }
            }
            let id = match &holder {
                Some((_, holder_id)) => format!("{holder_id}/{}", Self::auto_id(number)),
                None => Self::auto_id(number),
            };
            if let Some(c) = self.by_number.get_mut(&number) {
                c.holder = holder.map(|(n, _)| n);
                c.id = id;
            }
        }
    }

    fn find_id(&self, id: &str) -> Option<&Container> {
        self.by_number.values().find(|c| c.id == id)
    }

    /// Registers pid namespace `ns` under `id` (an orchestrator's id wins over a discovered or
    /// automatic one). Registering the same id for the same target again updates its labels.
    pub fn register_pidns(
        &mut self,
        id: &str,
        ns: u32,
        info: &PidnsInfo,
        labels: BTreeMap<String, String>,
        by: Source,
    ) -> Result<Container, RegError> {
        check_id(id)?;
        if ns == self.host_pidns {
            return Err(RegError::Host);
        }
        if let Some(other) = self.find_id(id)
            && other.number != ns
        {
            return Err(RegError::IdInUse(id.into()));
        }
        if let Some(c) = self.by_number.get(&ns)
            && c.is_registered()
            && c.id != id
        {
            return Err(RegError::TargetTaken(format!("pid namespace {ns}"), c.id.clone()));
        }
        self.insert_pidns(ns, info, None);
        if let Some(c) = self.by_number.get_mut(&ns) {
            c.id = id.into();
            c.source = by;
            c.labels = labels;
        }
        self.refresh_holders();
        self.by_number.get(&ns).cloned().ok_or_else(|| RegError::Unknown(id.into()))
    }

    /// Names pid namespace `ns` after its runtime's container `id` (the runtime said which
    /// process is the container's init): the id moves there from any other namespace that had
    /// it (a nested one named from its cgroup path). An orchestrator's registration is kept.
    pub fn name_by_runtime(
        &mut self,
        ns: u32,
        info: &PidnsInfo,
        id: &str,
        runtime: RuntimeInfo,
        k8s: Option<K8sInfo>,
    ) {
        if check_id(id).is_err() || ns == self.host_pidns {
            return;
        }
        self.insert_pidns(ns, info, None);
        if self.by_number.get(&ns).is_some_and(Container::is_registered) {
            if let Some(c) = self.by_number.get_mut(&ns) {
                c.runtime = Some(runtime);
                c.k8s = k8s;
            }
            self.refresh_holders();
            return;
        }
        let stolen: Vec<u32> = self
            .by_number
            .values()
            .filter(|c| {
                c.id == id && c.number != ns && !c.is_registered() && matches!(c.kind, Kind::Pidns { .. })
            })
            .map(|c| c.number)
            .collect();
        for n in stolen {
            if let Some(c) = self.by_number.get_mut(&n) {
                c.forget_name();
            }
        }
        if let Some(c) = self.by_number.get_mut(&ns) {
            c.id = id.into();
            c.source = Source::Runtime;
            c.runtime = Some(runtime);
            c.k8s = k8s;
        }
        self.refresh_holders();
    }

    /// Gives back id `id` where discovery gave it to a namespace (from its first task's cgroup
    /// path): that container joined the namespace rather than made it.
    pub fn withdraw_discovered(&mut self, id: &str) {
        let found = self
            .by_number
            .values_mut()
            .filter(|c| c.id == id && c.source == Source::Discovered && matches!(c.kind, Kind::Pidns { .. }));
        let mut any = false;
        for c in found {
            c.forget_name();
            any = true;
        }
        if any {
            self.refresh_holders();
        }
    }

    /// Sets the runtime metadata of container `number` (found some other way).
    pub fn describe(&mut self, number: u32, runtime: Option<RuntimeInfo>, k8s: Option<K8sInfo>) {
        if let Some(c) = self.by_number.get_mut(&number) {
            c.runtime = runtime;
            c.k8s = k8s;
        }
    }

    /// Registers cgroup `cgroup_id` (at `path`) under `id`; returns the container (with its
    /// newly allocated number, or the existing one when re-registering the same target).
    /// `joined` is the pid namespace (inode and record) its tasks live in when that is not the
    /// host's (a container that joined another's namespace). `reuse` is the kernel's (number,
    /// counter slot) for this cgroup, if it has one (pinned programs adopted); `take_slot`
    /// allocates a counter slot otherwise.
    #[expect(clippy::too_many_arguments, reason = "the cgroup, where its tasks live, and the registration")]
    pub fn register_cgroup(
        &mut self,
        id: &str,
        (cgroup_id, path): (u64, PathBuf),
        joined: Option<(u32, &PidnsInfo)>,
        labels: BTreeMap<String, String>,
        by: Source,
        reuse: Option<(u32, u32)>,
        take_slot: impl FnOnce() -> u32,
    ) -> Result<Container, RegError> {
        check_id(id)?;
        let existing = self.by_number.values().find_map(|c| match &c.kind {
            Kind::Cgroup { cgroup_id: g, slot, .. } if *g == cgroup_id => {
                Some((c.number, c.id.clone(), *slot))
            }
            _ => None,
        });
        if let Some((_, other, _)) = &existing
            && other != id
        {
            return Err(RegError::TargetTaken(format!("cgroup {}", path.display()), other.clone()));
        }
        if let Some(other) = self.find_id(id)
            && existing.as_ref().is_none_or(|(n, _, _)| *n != other.number)
        {
            return Err(RegError::IdInUse(id.into()));
        }
        let (number, slot) = match (existing, reuse) {
            (Some((n, _, slot)), _) => (n, slot),
            // The kernel already has this cgroup (pinned programs adopted): same number, same
            // counters.
            (None, Some((n, slot)))
                if (1..CGROUP_NUMBERS_END).contains(&n) && !self.by_number.contains_key(&n) =>
            {
                (n, slot)
            }
            (None, _) => {
                let n = (1..CGROUP_NUMBERS_END)
                    .find(|n| !self.by_number.contains_key(n))
                    .ok_or(RegError::Full)?;
                (n, take_slot())
            }
        };
        let old = self.by_number.get(&number);
        // Where its tasks live: as said, else where this cgroup's container was placed before.
        let (pidns, level, parent_pidns) = match joined {
            Some((ns, info)) => (ns, info.level, info.parent),
            None => old
                .filter(|c| matches!(c.kind, Kind::Cgroup { .. }))
                .map_or((self.host_pidns, 0, 0), |c| (c.pidns, c.level, c.parent_pidns)),
        };
        let c = Container {
            number,
            id: id.into(),
            kind: Kind::Cgroup { cgroup_id, path, slot },
            pidns,
            level,
            parent_pidns,
            source: by,
            labels,
            mode: old.map_or(Mode::Observe, |c| c.mode),
            runtime: old.and_then(|c| c.runtime.clone()),
            k8s: old.and_then(|c| c.k8s.clone()),
            holder: None,
        };
        self.by_number.insert(number, c.clone());
        Ok(c)
    }

    /// Unregisters `id`: a cgroup container goes; a namespace container falls back to its
    /// automatic id. Returns the container as it was.
    pub fn unregister(&mut self, id: &str) -> Result<Container, RegError> {
        if id == HOST_ID {
            return Err(RegError::Host);
        }
        let c = self.find_id(id).cloned().ok_or_else(|| RegError::Unknown(id.into()))?;
        match c.kind {
            Kind::Cgroup { .. } => {
                self.by_number.remove(&c.number);
            }
            _ => {
                if let Some(entry) = self.by_number.get_mut(&c.number) {
                    entry.forget_name();
                }
            }
        }
        self.refresh_holders();
        Ok(c)
    }

    /// Sets container `name`'s policy; returns its number.
    pub fn set_mode(&mut self, name: &str, m: Mode) -> Result<u32, RegError> {
        if name == HOST_ID {
            return Err(RegError::Host);
        }
        let number = self.lookup(name)?.number;
        if let Some(c) = self.by_number.get_mut(&number) {
            c.mode = m;
        }
        Ok(number)
    }

    /// Forgets a namespace container whose namespace is gone.
    pub fn remove(&mut self, number: u32) -> Option<Container> {
        if number == HOST_CONTAINER {
            return None;
        }
        let c = self.by_number.remove(&number);
        self.refresh_holders();
        c
    }

    pub fn get(&self, number: u32) -> Option<&Container> {
        self.by_number.get(&number)
    }

    pub fn get_mut(&mut self, number: u32) -> Option<&mut Container> {
        self.by_number.get_mut(&number)
    }

    /// Id of container `number` (an automatic id if it is not registered yet).
    pub fn id_of(&self, number: u32) -> String {
        match self.by_number.get(&number) {
            Some(c) => c.id.clone(),
            None => Self::auto_id(number),
        }
    }

    /// What the runtime says about container `number`, or about its holder for a namespace
    /// nested in a named container.
    pub fn meta_of(&self, number: u32) -> (Option<&RuntimeInfo>, Option<&K8sInfo>) {
        let Some(c) = self.by_number.get(&number) else { return (None, None) };
        let c = match (c.runtime.is_none(), c.holder.and_then(|h| self.by_number.get(&h))) {
            (true, Some(holder)) => holder,
            _ => c,
        };
        (c.runtime.as_ref(), c.k8s.as_ref())
    }

    /// Id of the container of pid namespace `pidns` (the host's for the host's namespace).
    pub fn id_of_pidns(&self, pidns: u32) -> String {
        if pidns == self.host_pidns { HOST_ID.into() } else { self.id_of(pidns) }
    }
}

/// The one container of `found`, an ambiguity, or None for none.
fn unique<'a>(name: &str, found: &[&'a Container]) -> Option<Result<&'a Container, RegError>> {
    match found {
        [] => None,
        [c] => Some(Ok(*c)),
        many => Some(Err(RegError::Ambiguous(
            name.into(),
            many.iter().map(|c| c.id.as_str()).collect::<Vec<_>>().join(", "),
        ))),
    }
}

impl Registry {
    /// The container a user names: by id, by its runtime's name, by its Kubernetes name
    /// (`pod/container`, or the pod's alone: its container, or its sandbox while that is all it
    /// runs), by its pid namespace inode, or by a unique prefix of its id (at least MIN_PREFIX
    /// characters, like docker's short ids).
    pub fn lookup(&self, name: &str) -> Result<&Container, RegError> {
        if let Some(c) = self.find_id(name) {
            return Ok(c);
        }
        let named = |sandbox: bool| -> Vec<&Container> {
            self.by_number
                .values()
                .filter(|c| {
                    c.runtime.as_ref().is_some_and(|r| r.name == name)
                        || c.k8s.as_ref().is_some_and(|k| {
                            k.name() == name || (k.pod == name && (sandbox || !k.is_sandbox()))
                        })
                })
                .collect()
        };
        let mut by_name = named(false);
        if by_name.is_empty() {
            by_name = named(true);
        }
        if let Some(r) = unique(name, &by_name) {
            return r;
        }
        if let Ok(ns) = name.parse::<u32>()
            && let Some(c) = self
                .by_number
                .values()
                .find(|c| c.pidns == ns && (c.number == ns || c.number == HOST_CONTAINER))
        {
            return Ok(c);
        }
        if name.len() >= MIN_PREFIX {
            // Nested namespaces share their holder's prefix: only whole containers match.
            let by_prefix: Vec<&Container> =
                self.by_number.values().filter(|c| c.holder.is_none() && c.id.starts_with(name)).collect();
            if let Some(r) = unique(name, &by_prefix) {
                return r;
            }
        }
        Err(RegError::Unknown(name.into()))
    }

    /// The container a user names, if exactly one (see [`Registry::lookup`]).
    pub fn find(&self, name: &str) -> Option<&Container> {
        self.lookup(name).ok()
    }

    pub fn all(&self) -> impl Iterator<Item = &Container> {
        self.by_number.values()
    }

    /// Container id by pid namespace inode (namespace containers and the host), for parents.
    pub fn ids_by_pidns(&self) -> HashMap<u32, String> {
        self.by_number
            .values()
            .filter(|c| !matches!(c.kind, Kind::Cgroup { .. }))
            .map(|c| (c.pidns, c.id.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: u32 = 4026531836;
    const NS: u32 = 4026532300;
    const INNER: u32 = 4026532400;
    const DOCKER: &str = "4f5a1e2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7";

    fn info(level: u32, source: u32) -> PidnsInfo {
        PidnsInfo::from_chain(&[HOST, NS, INNER], level as usize, 77, source, 1000)
    }

    #[expect(clippy::unnecessary_wraps, reason = "the shape sync_pidns takes for a cgroup lookup")]
    fn docker_cgroup(_tid: u32) -> Option<String> {
        Some(format!("/docker/{DOCKER}"))
    }

    #[test]
    fn host_and_namespaces() {
        let mut r = Registry::new(HOST);
        r.sync_pidns(&[(HOST, info(0, pidns_source::SEED)), (NS, info(1, pidns_source::KERNEL))], |_| None);
        assert_eq!(r.find("host").unwrap().number, HOST_CONTAINER);
        assert_eq!(r.find(&HOST.to_string()).unwrap().id, "host");
        let c = r.find("pidns-4026532300").unwrap();
        assert_eq!((c.level, c.parent_pidns, c.source), (1, HOST, Source::Kernel));
        assert_eq!(r.find(&NS.to_string()).unwrap().id, "pidns-4026532300");
        assert!(r.find("nope").is_none());
        assert!(r.find("123").is_none());
        assert_eq!(r.id_of(999), "pidns-999");
        assert_eq!((r.id_of_pidns(HOST).as_str(), r.id_of_pidns(NS).as_str()), ("host", "pidns-4026532300"));
    }

    #[test]
    fn an_orchestrator_id_wins_and_unregistering_falls_back() {
        let mut r = Registry::new(HOST);
        r.sync_pidns(&[(NS, info(1, pidns_source::KERNEL))], docker_cgroup);
        let c = r.get(NS).unwrap();
        assert_eq!(c.id, DOCKER);
        assert_eq!((c.source, c.runtime.as_ref().unwrap().engine.as_str()), (Source::Discovered, "docker"));
        let labels = BTreeMap::from([("pod".to_string(), "web".to_string())]);
        let c = r.register_pidns("web-1", NS, &info(1, 0), labels.clone(), Source::Oci).unwrap();
        assert_eq!((c.id.as_str(), c.source), ("web-1", Source::Oci));
        assert_eq!(r.find("web-1").unwrap().labels, labels);
        // Idempotent for the same target; refused for another id or another target.
        assert!(r.register_pidns("web-1", NS, &info(1, 0), BTreeMap::new(), Source::Oci).is_ok());
        assert_eq!(
            r.register_pidns("other", NS, &info(1, 0), BTreeMap::new(), Source::Api),
            Err(RegError::TargetTaken(format!("pid namespace {NS}"), "web-1".into()))
        );
        let g = r.register_cgroup("web-1", (55, "/x".into()), None, BTreeMap::new(), Source::Api, None, || 7);
        assert_eq!(g, Err(RegError::IdInUse("web-1".into())));
        assert_eq!(r.unregister("web-1").unwrap().id, "web-1");
        assert_eq!(r.get(NS).unwrap().id, "pidns-4026532300");
        assert_eq!(r.unregister("web-1"), Err(RegError::Unknown("web-1".into())));
        assert_eq!(r.unregister("host"), Err(RegError::Host));
        assert_eq!(
            r.register_pidns("bad id", NS, &info(1, 0), BTreeMap::new(), Source::Api),
            Err(RegError::BadId("bad id".into()))
        );
        assert_eq!(
            r.register_pidns("x", HOST, &info(0, 0), BTreeMap::new(), Source::Api),
            Err(RegError::Host)
        );
    }

    #[test]
    fn a_runtime_id_goes_to_the_outer_namespace_in_any_order_and_the_nested_one_is_named_after_it() {
        // Both namespaces' first tasks are in the container's cgroup; the kernel's map hands them
        // over in either order.
        for order in [[(NS, info(1, 0)), (INNER, info(2, 0))], [(INNER, info(2, 0)), (NS, info(1, 0))]] {
            let mut r = Registry::new(HOST);
            r.sync_pidns(&order, docker_cgroup);
            assert_eq!(r.get(NS).unwrap().id, DOCKER);
            let inner = r.get(INNER).unwrap();
            assert_eq!(inner.id, format!("{DOCKER}/pidns-{INNER}"));
            assert_eq!((inner.holder, inner.source), (Some(NS), Source::Kernel));
        }
        // Noted one by one, inner first (its event came first): the outer one still gets the id
        // once the runtime names it, and the inner one gives it back.
        let mut r = Registry::new(HOST);
        r.note_pidns(INNER, &info(2, 0), docker_cgroup(0).and_then(|p| discover(&p)));
        assert_eq!(r.get(INNER).unwrap().id, DOCKER);
        let runtime = RuntimeInfo { engine: "docker".into(), name: "web".into(), image: "bb:1".into() };
        r.name_by_runtime(NS, &info(1, 0), DOCKER, runtime, None);
        assert_eq!(r.get(NS).unwrap().id, DOCKER);
        assert_eq!(r.get(INNER).unwrap().id, format!("{DOCKER}/pidns-{INNER}"));
        // Unnamed again: the nested namespace's id follows.
        r.remove(NS);
        assert_eq!(r.get(INNER).unwrap().id, format!("pidns-{INNER}"));
    }

    #[test]
    fn a_namespace_that_took_a_gone_ones_inode_is_a_new_container() {
        let mut r = Registry::new(HOST);
        let mut old = info(1, pidns_source::KERNEL);
        old.slot = 5;
        assert!(r.sync_pidns(&[(NS, old)], docker_cgroup).is_empty());
        assert_eq!(r.get(NS).unwrap().id, DOCKER);
        // The same record again: nothing ends.
        assert!(r.sync_pidns(&[(NS, old)], docker_cgroup).is_empty());
        // The kernel replaced the record: another init, another counter slot.
        let mut new = info(1, pidns_source::KERNEL);
        new.slot = 6;
        new.reaper_start = 2000;
        let ended = r.sync_pidns(&[(NS, new)], |_| None);
        assert_eq!(ended.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), [DOCKER]);
        assert_eq!(ended[0].kind, Kind::Pidns { slot: 5, ns_start: 1000 });
        let c = r.get(NS).unwrap();
        assert_eq!(
            (c.id.as_str(), c.source, &c.kind),
            ("pidns-4026532300", Source::Kernel, &Kind::Pidns { slot: 6, ns_start: 2000 })
        );
        // Same slot (the overflow slot is shared), but another init: ended too.
        let mut again = new;
        again.reaper_start = 3000;
        assert_eq!(r.sync_pidns(&[(NS, again)], |_| None).len(), 1);
        // A record whose init was not known yet learns it without ending.
        let mut unknown = new;
        unknown.reaper_start = 0;
        let mut r = Registry::new(HOST);
        r.sync_pidns(&[(NS, unknown)], |_| None);
        assert!(r.sync_pidns(&[(NS, new)], |_| None).is_empty());
        assert_eq!(r.get(NS).unwrap().kind, Kind::Pidns { slot: 6, ns_start: 2000 });
    }

    #[test]
    fn containers_are_found_by_name_pidns_or_unique_prefix() {
        let mut r = Registry::new(HOST);
        let runtime = RuntimeInfo { engine: "docker".into(), name: "web".into(), image: "bb:1".into() };
        r.name_by_runtime(NS, &info(1, 0), DOCKER, runtime, None);
        r.sync_pidns(&[(INNER, info(2, 0))], |_| None);
        assert_eq!(r.lookup("web").unwrap().number, NS);
        assert_eq!(r.lookup(&DOCKER[..12]).unwrap().number, NS);
        assert_eq!(r.lookup(&format!("{DOCKER}/pidns-{INNER}")).unwrap().number, INNER);
        assert_eq!(r.lookup("4f5").unwrap_err(), RegError::Unknown("4f5".into()));
        let other = "4f5a99999999999999999999999999999999999999999999999999999999999";
        r.register_cgroup(other, (9, "/o".into()), None, BTreeMap::new(), Source::Api, None, || 7).unwrap();
        assert!(matches!(r.lookup("4f5a"), Err(RegError::Ambiguous(..))));
        assert_eq!(r.lookup("4f5a1").unwrap().number, NS);
    }

    #[test]
    fn a_pod_is_found_by_its_kubernetes_names_its_container_before_its_sandbox() {
        let mut r = Registry::new(HOST);
        let k8s = |container: &str| K8sInfo {
            namespace: "shop".into(),
            pod: "web-0".into(),
            container: container.into(),
            pod_uid: "u1".into(),
        };
        let runtime =
            |name: &str| RuntimeInfo { engine: "containerd".into(), name: name.into(), image: String::new() };
        r.name_by_runtime(
            NS,
            &info(1, 0),
            "sandbox-1",
            runtime(K8sInfo::SANDBOX),
            Some(k8s(K8sInfo::SANDBOX)),
        );
        // While only the sandbox runs, the pod's name is the sandbox's.
        assert_eq!(r.lookup("web-0").unwrap().id, "sandbox-1");
        let app =
            r.register_cgroup("app-1", (9, "/a".into()), None, BTreeMap::new(), Source::Runtime, None, || 7);
        r.describe(app.unwrap().number, Some(runtime("app")), Some(k8s("app")));
        for (name, id) in
            [("web-0", "app-1"), ("web-0/app", "app-1"), ("app", "app-1"), ("web-0/POD", "sandbox-1")]
        {
            assert_eq!(r.lookup(name).map(|c| c.id.as_str()), Ok(id), "{name}");
        }
        let side = r.register_cgroup(
            "side-1",
            (10, "/s".into()),
            None,
            BTreeMap::new(),
            Source::Runtime,
            None,
            || 8,
        );
        r.describe(side.unwrap().number, Some(runtime("sidecar")), Some(k8s("sidecar")));
        assert!(matches!(r.lookup("web-0"), Err(RegError::Ambiguous(..))), "two containers of pod web-0");
        assert_eq!(r.lookup("web-0/sidecar").map(|c| c.id.as_str()), Ok("side-1"));
    }

    #[test]
    fn a_namespace_discovery_named_after_a_container_that_joined_it_gives_the_name_back() {
        let mut r = Registry::new(HOST);
        r.note_pidns(NS, &info(1, pidns_source::KERNEL), docker_cgroup(0).and_then(|p| discover(&p)));
        assert_eq!(
            (r.id_of(NS), r.get_mut(NS).map(|c| c.source)),
            (DOCKER.to_string(), Some(Source::Discovered))
        );
        r.withdraw_discovered(DOCKER);
        assert_eq!(r.id_of(NS), Registry::auto_id(NS));
        assert!(r.find_id(DOCKER).is_none());
        // A runtime's or an orchestrator's name is not discovery's to give back.
        r.name_by_runtime(NS, &info(1, pidns_source::KERNEL), DOCKER, RuntimeInfo::default(), None);
        r.withdraw_discovered(DOCKER);
        assert_eq!(r.id_of(NS), DOCKER);
    }

    /// An orchestrator's registration of cgroup `cgroup_id` at `path`, in the host's namespace.
    fn api_cgroup(r: &mut Registry, id: &str, cgroup_id: u64, path: &str) -> Result<Container, RegError> {
        r.register_cgroup(id, (cgroup_id, path.into()), None, BTreeMap::new(), Source::Api, None, || 7)
    }

    #[test]
    fn cgroup_containers_get_small_numbers() {
        let mut r = Registry::new(HOST);
        let a = api_cgroup(&mut r, "a", 100, "/sys/fs/cgroup/a").unwrap();
        let b = api_cgroup(&mut r, "b", 200, "/sys/fs/cgroup/b").unwrap();
        assert_eq!((a.number, b.number), (1, 2));
        assert_eq!((a.pidns, a.level, a.parent_pidns), (HOST, 0, 0));
        // A container that joined another's namespace lives there, at its level.
        let joined = info(1, pidns_source::KERNEL);
        let side = r
            .register_cgroup(
                "side",
                (400, "/sys/fs/cgroup/side".into()),
                Some((NS, &joined)),
                BTreeMap::new(),
                Source::Runtime,
                None,
                || 8,
            )
            .unwrap();
        assert_eq!((side.number, side.pidns, side.level, side.parent_pidns), (3, NS, 1, HOST));
        // Registered again without saying where (the state file's restore, where /proc showed
        // nothing): it stays where it was placed.
        let again = api_cgroup(&mut r, "side", 400, "/sys/fs/cgroup/side").unwrap();
        assert_eq!((again.number, again.pidns, again.level), (3, NS, 1));
        let again = api_cgroup(&mut r, "a", 100, "/sys/fs/cgroup/a").unwrap();
        assert_eq!(again.number, 1);
        assert!(api_cgroup(&mut r, "c", 100, "/sys/fs/cgroup/a").is_err());
        r.unregister("a").unwrap();
        assert!(r.find("a").is_none());
        let c = api_cgroup(&mut r, "c", 300, "/sys/fs/cgroup/c").unwrap();
        assert_eq!(c.number, 1, "numbers are reused");
        // A cgroup container is found by id, never by the host's inode.
        assert_eq!(r.find(&HOST.to_string()).unwrap().id, "host");
    }
}
