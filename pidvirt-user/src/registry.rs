//! The one place containers are registered: their ids (what users know them by), how they
//! became known, and the kernel's container number behind each.

use std::collections::{BTreeMap, HashMap};

use pidvirt_common::{HOST_CONTAINER, PidnsInfo, pidns_source};

/// The host's id.
pub const HOST_ID: &str = "host";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// Kernel container number (0 = host, a pid namespace inode for namespace containers).
    pub number: u32,
    pub id: String,
    pub pidns: u32,
    pub level: u32,
    pub parent_pidns: u32,
    pub registered_by: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug)]
pub struct Registry {
    by_number: BTreeMap<u32, Container>,
}

impl Registry {
    pub fn new(host_pidns: u32) -> Self {
        let mut by_number = BTreeMap::new();
        by_number.insert(
            HOST_CONTAINER,
            Container {
                number: HOST_CONTAINER,
                id: HOST_ID.into(),
                pidns: host_pidns,
                level: 0,
                parent_pidns: 0,
                registered_by: "host".into(),
                labels: BTreeMap::new(),
            },
        );
        Self { by_number }
    }

    /// Id of an automatically found namespace container.
    pub fn auto_id(pidns: u32) -> String {
        format!("pidns-{pidns}")
    }

    /// Adds the pid namespaces the kernel (or the seed) knows and the registry does not.
    pub fn sync_pidns(&mut self, all: &[(u32, PidnsInfo)]) {
        for (ns, info) in all {
            if info.level == 0 || self.by_number.contains_key(ns) {
                continue;
            }
            self.note_pidns(*ns, info);
        }
    }

    /// Registers namespace `ns` automatically.
    pub fn note_pidns(&mut self, ns: u32, info: &PidnsInfo) {
        self.by_number.entry(ns).or_insert_with(|| Container {
            number: ns,
            id: Self::auto_id(ns),
            pidns: ns,
            level: info.level,
            parent_pidns: info.parent,
            registered_by: match info.source {
                pidns_source::SEED => "seed".into(),
                _ => "kernel".into(),
            },
            labels: BTreeMap::new(),
        });
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
        if let Some(c) = self.by_number.values().find(|c| c.id == name) {
            return Some(c);
        }
        let ns: u32 = name.parse().ok()?;
        self.by_number.values().find(|c| c.pidns == ns && (c.number == ns || c.number == HOST_CONTAINER))
    }

    pub fn all(&self) -> impl Iterator<Item = &Container> {
        self.by_number.values()
    }

    /// Container id by pid namespace inode, for the parent column.
    pub fn ids_by_pidns(&self) -> HashMap<u32, String> {
        self.by_number.values().map(|c| (c.pidns, c.id.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_namespaces() {
        let mut r = Registry::new(4026531836);
        r.sync_pidns(&[
            (4026531836, PidnsInfo::from_chain(&[4026531836], 0, 1, pidns_source::SEED)),
            (4026532300, PidnsInfo::from_chain(&[4026531836, 4026532300], 1, 77, pidns_source::KERNEL)),
        ]);
        assert_eq!(r.find("host").unwrap().number, HOST_CONTAINER);
        assert_eq!(r.find("4026531836").unwrap().id, "host");
        let c = r.find("pidns-4026532300").unwrap();
        assert_eq!((c.level, c.parent_pidns, c.registered_by.as_str()), (1, 4026531836, "kernel"));
        assert_eq!(r.find("4026532300").unwrap().id, "pidns-4026532300");
        assert!(r.find("nope").is_none());
        assert!(r.find("123").is_none());
        assert_eq!(r.id_of(999), "pidns-999");
    }
}
