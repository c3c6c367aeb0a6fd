//! Files the daemon creates that describe the host's containers (the audit log and its rotated
//! copies, the state file): readable by root alone, whatever the umask.

use std::{
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::Path,
};

/// Opens `path` for writing, creating it mode 0600 and its directory 0700 if missing; an
/// existing file keeps its mode (the operator's choice) and is appended to, or truncated.
pub fn create_private(path: &Path, append: bool) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let mut o = std::fs::OpenOptions::new();
    o.create(true).mode(0o600);
    if append {
        o.append(true);
    } else {
        o.write(true).truncate(true);
    }
    o.open(path)
}
