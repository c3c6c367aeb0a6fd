//! The registry of containers: the ids users know them by, how they became known, their labels
//! and policy, and the kernel's container number behind each. Pure bookkeeping (no kernel, no
//! /proc): the container service (`containers`) owns it and keeps it in step with the maps.
//!
//! Container numbers: 0 is the host; a pid namespace container is numbered by its namespace
//! inode (>= 0xF0000000, proc's dynamic inode range); a cgroup container gets a small number
//! (1..CGROUP_NUMBERS_END) allocated here.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
};

use pidvirt_common::{HOST_CONTAINER, PidnsInfo, audit::Mode, pidns_source};
use serde::{Deserialize, Serialize};

use super::discover::{Discovered, discover};

/// The host's id.
pub const HOST_ID: &str = "host";
/// Cgroup containers are numbered below this (namespace inodes are far above).
pub const CGROUP_NUMBERS_END: u32 = 0x1000_0000;

/// What a container is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Host,
    /// A pid namespace (and every namespace nested in it).
    Pidns,
    /// A cgroup v2 directory and its descendants (`slot`: its counter slot).
    Cgroup {
        cgroup_id: u64,
        path: PathBuf,
        slot: u32,
    },
}

impl Kind {
    /// The kind's name in `containers`.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Host => "host",
            Kind::Pidns => "pidns",
            Kind::Cgroup { .. } => "cgroup",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// Kernel container number.
    pub number: u32,
    pub id: String,
    pub kind: Kind,
    /// The pid namespace (for a cgroup container: the host's).
    pub pidns: u32,
    pub level: u32,
    pub parent_pidns: u32,
    /// `host`, `kernel` / `seed` (found automatically), `discovered` (id from a runtime's cgroup
    /// path), `api`, `oci` (registered by an orchestrator).
    pub registered_by: String,
    pub labels: BTreeMap<String, String>,
    /// Observe unless set.
    pub mode: Mode,
}

impl Container {
    /// Registered by an orchestrator (as opposed to found automatically).
    pub fn is_registered(&self) -> bool {
        matches!(self.registered_by.as_str(), "api" | "oci")
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
                registered_by: "host".into(),
                labels: BTreeMap::new(),
                mode: Mode::Observe,
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

    /// Adds the pid namespaces the kernel (or the seed) knows and the registry does not;
    /// `cgroup_of` gives the cgroup path of a namespace's first task, for discovery.
    pub fn sync_pidns(&mut self, all: &[(u32, PidnsInfo)], cgroup_of: impl Fn(u32) -> Option<String>) {
        for (ns, info) in all {
            if info.level == 0 || self.by_number.contains_key(ns) {
                continue;
            }
            let discovered = cgroup_of(info.first_tid).and_then(|p| discover(&p));
            self.note_pidns(*ns, info, discovered);
        }
    }

    /// Registers namespace `ns` automatically (with a runtime's id if one was discovered and
    /// no container has it yet).
    pub fn note_pidns(&mut self, ns: u32, info: &PidnsInfo, discovered: Option<Discovered>) {
        if self.by_number.contains_key(&ns) {
            return;
        }
        let mut c = Container {
            number: ns,
            id: Self::auto_id(ns),
            kind: Kind::Pidns,
            pidns: ns,
            level: info.level,
            parent_pidns: info.parent,
            registered_by: match info.source {
                pidns_source::SEED => "seed".into(),
                _ => "kernel".into(),
            },
            labels: BTreeMap::new(),
            mode: Mode::Observe,
        };
        if let Some(d) = discovered
            && self.find_id(&d.id).is_none()
        {
            c.id = d.id;
            c.registered_by = "discovered".into();
            c.labels.insert("runtime".into(), d.runtime.into());
            if let Some(uid) = d.pod_uid {
                c.labels.insert("pod_uid".into(), uid);
            }
        }
        self.by_number.insert(ns, c);
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
        by: &str,
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
        self.note_pidns(ns, info, None);
        let c = self.by_number.get_mut(&ns).expect("just noted");
        c.id = id.into();
        c.registered_by = by.into();
        c.labels = labels;
        Ok(c.clone())
    }

    /// Registers cgroup `cgroup_id` (at `path`) under `id`; returns the container (with its
    /// newly allocated number, or the existing one when re-registering the same target).
    /// `reuse` is the kernel's (number, counter slot) for this cgroup, if it has one (pinned
    /// programs adopted); `take_slot` allocates a counter slot otherwise.
    pub fn register_cgroup(
        &mut self,
        id: &str,
        (cgroup_id, path): (u64, PathBuf),
        labels: BTreeMap<String, String>,
        by: &str,
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
        let c = Container {
            number,
            id: id.into(),
            kind: Kind::Cgroup { cgroup_id, path, slot },
            pidns: self.host_pidns,
            level: 0,
            parent_pidns: 0,
            registered_by: by.into(),
            labels,
            mode: self.by_number.get(&number).map_or(Mode::Observe, |c| c.mode),
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
                    entry.id = Self::auto_id(c.number);
                    entry.registered_by = "kernel".into();
                    entry.labels.clear();
                    entry.mode = Mode::Observe;
                }
            }
        }
        Ok(c)
    }

    /// Sets container `id`'s policy; returns its number.
    pub fn set_mode(&mut self, id: &str, m: Mode) -> Result<u32, RegError> {
        if id == HOST_ID {
            return Err(RegError::Host);
        }
        let number = self.find_id(id).map(|c| c.number).ok_or_else(|| RegError::Unknown(id.into()))?;
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
        self.by_number.remove(&number)
    }

    pub fn get(&self, number: u32) -> Option<&Container> {
        self.by_number.get(&number)
    }

    /// Id of container `number` (an automatic id if it is not registered yet).
    pub fn id_of(&self, number: u32) -> String {
        match self.by_number.get(&number) {
            Some(c) => c.id.clone(),
            None => Self::auto_id(number),
        }
    }

    /// The container a user names: by id, or by its pid namespace inode.
    pub fn find(&self, name: &str) -> Option<&Container> {
        if let Some(c) = self.find_id(name) {
            return Some(c);
        }
        let ns: u32 = name.parse().ok()?;
        self.by_number.values().find(|c| c.pidns == ns && (c.number == ns || c.number == HOST_CONTAINER))
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

    fn info(level: u32, source: u32) -> PidnsInfo {
        PidnsInfo::from_chain(&[HOST, NS], level as usize, 77, source)
    }

    #[test]
    fn host_and_namespaces() {
        let mut r = Registry::new(HOST);
        r.sync_pidns(&[(HOST, info(0, pidns_source::SEED)), (NS, info(1, pidns_source::KERNEL))], |_| None);
        assert_eq!(r.find("host").unwrap().number, HOST_CONTAINER);
        assert_eq!(r.find(&HOST.to_string()).unwrap().id, "host");
        let c = r.find("pidns-4026532300").unwrap();
        assert_eq!((c.level, c.parent_pidns, c.registered_by.as_str()), (1, HOST, "kernel"));
        assert_eq!(r.find(&NS.to_string()).unwrap().id, "pidns-4026532300");
        assert!(r.find("nope").is_none());
        assert!(r.find("123").is_none());
        assert_eq!(r.id_of(999), "pidns-999");
    }

    #[test]
    fn an_orchestrator_id_wins_and_unregistering_falls_back() {
        let mut r = Registry::new(HOST);
        let docker =
            "/system.slice/docker-4f5a1e2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7.scope";
        r.sync_pidns(&[(NS, info(1, pidns_source::KERNEL))], |_| Some(docker.into()));
        let c = r.get(NS).unwrap();
        assert_eq!(c.id, "4f5a1e2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7");
        assert_eq!((c.registered_by.as_str(), c.labels["runtime"].as_str()), ("discovered", "docker"));
        let labels = BTreeMap::from([("pod".to_string(), "web".to_string())]);
        let c = r.register_pidns("web-1", NS, &info(1, 0), labels.clone(), "oci").unwrap();
        assert_eq!((c.id.as_str(), c.registered_by.as_str()), ("web-1", "oci"));
        assert_eq!(r.find("web-1").unwrap().labels, labels);
        // Idempotent for the same target; refused for another id or another target.
        assert!(r.register_pidns("web-1", NS, &info(1, 0), BTreeMap::new(), "oci").is_ok());
        assert_eq!(
            r.register_pidns("other", NS, &info(1, 0), BTreeMap::new(), "api"),
            Err(RegError::TargetTaken(format!("pid namespace {NS}"), "web-1".into()))
        );
        let g = r.register_cgroup("web-1", (55, "/x".into()), BTreeMap::new(), "api", None, || 7);
        assert_eq!(g, Err(RegError::IdInUse("web-1".into())));
        assert_eq!(r.unregister("web-1").unwrap().id, "web-1");
        assert_eq!(r.get(NS).unwrap().id, "pidns-4026532300");
        assert_eq!(r.unregister("web-1"), Err(RegError::Unknown("web-1".into())));
        assert_eq!(r.unregister("host"), Err(RegError::Host));
        assert_eq!(
            r.register_pidns("bad id", NS, &info(1, 0), BTreeMap::new(), "api"),
            Err(RegError::BadId("bad id".into()))
        );
        assert_eq!(r.register_pidns("x", HOST, &info(0, 0), BTreeMap::new(), "api"), Err(RegError::Host));
    }

    #[test]
    fn cgroup_containers_get_small_numbers() {
        let mut r = Registry::new(HOST);
        let a = r
            .register_cgroup("a", (100, "/sys/fs/cgroup/a".into()), BTreeMap::new(), "api", None, || 7)
            .unwrap();
        let b = r
            .register_cgroup("b", (200, "/sys/fs/cgroup/b".into()), BTreeMap::new(), "api", None, || 7)
            .unwrap();
        assert_eq!((a.number, b.number), (1, 2));
        assert_eq!(a.pidns, HOST);
        let again = r
            .register_cgroup("a", (100, "/sys/fs/cgroup/a".into()), BTreeMap::new(), "api", None, || 7)
            .unwrap();
        assert_eq!(again.number, 1);
        assert!(
            r.register_cgroup("c", (100, "/sys/fs/cgroup/a".into()), BTreeMap::new(), "api", None, || 7)
                .is_err()
        );
        r.unregister("a").unwrap();
        assert!(r.find("a").is_none());
        let c = r
            .register_cgroup("c", (300, "/sys/fs/cgroup/c".into()), BTreeMap::new(), "api", None, || 7)
            .unwrap();
        assert_eq!(c.number, 1, "numbers are reused");
        // A cgroup container is found by id, never by the host's inode.
        assert_eq!(r.find(&HOST.to_string()).unwrap().id, "host");
    }
}
