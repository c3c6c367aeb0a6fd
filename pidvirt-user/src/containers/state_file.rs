//! The state file: registrations made by orchestrators, kept across daemon restarts (written
//! atomically; a registration whose namespace or cgroup is gone is dropped when read back).

use std::{collections::BTreeMap, path::Path};

use serde::{Deserialize, Serialize};

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
    /// A policy mode name.
    #[serde(default = "observe")]
    pub mode: String,
}

fn observe() -> String {
    pidvirt_common::audit::Mode::Observe.name().into()
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    registrations: Vec<Saved>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("cannot read state file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("state file {path} is not valid: {source}")]
    Invalid { path: String, source: serde_json::Error },
    #[error("cannot write state file {path}: {source}")]
    Write { path: String, source: std::io::Error },
}

/// The registrations in `path` (none if it does not exist).
pub fn read(path: &Path) -> Result<Vec<Saved>, StateFileError> {
    let shown = || path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<StateFile>(&bytes)
            .map(|s| s.registrations)
            .map_err(|source| StateFileError::Invalid { path: shown(), source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(StateFileError::Read { path: shown(), source }),
    }
}

/// Replaces the registrations in `path`, atomically (a temporary file renamed over it).
pub fn write(path: &Path, registrations: Vec<Saved>) -> Result<(), StateFileError> {
    write_atomically(path, &StateFile { version: 1, registrations })
        .map_err(|source| StateFileError::Write { path: path.display().to_string(), source })
}

fn write_atomically(path: &Path, state: &StateFile) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    // A left-over temporary file would keep its own mode.
    let _ = std::fs::remove_file(&tmp);
    let mut f = crate::files::create_private(&tmp, false)?;
    f.write_all(&serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_round_trip_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        assert!(read(&path).unwrap().is_empty());
        let saved = vec![Saved {
            id: "c1".into(),
            target: Target::Pidns(4026532300),
            labels: BTreeMap::from([("pod".into(), "web".into())]),
            registered_by: "oci".into(),
            mode: "enforce".into(),
        }];
        write(&path, saved.clone()).unwrap();
        assert_eq!(read(&path).unwrap(), saved);
        assert!(!path.with_extension("tmp").exists());
        let mode =
            |p: &Path| std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions());
        assert_eq!(mode(&path) & 0o777, 0o600, "registrations describe the host's containers");
        assert_eq!(mode(path.parent().unwrap()) & 0o777, 0o700);
        std::fs::write(&path, b"{").unwrap();
        assert!(matches!(read(&path), Err(StateFileError::Invalid { .. })));
    }
}
