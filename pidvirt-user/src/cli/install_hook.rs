//! `pidvirt install-hook`: writes the hooks.d entry through which Podman and CRI-O call
//! `pidvirt oci-hook` for every container, with its annotations.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::{
    cli::{SocketArg, emit},
    containers::oci::{self, Fail},
};

/// The file written in the hooks directory.
const FILE: &str = "pidvirt.json";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The hooks directory (Podman's and CRI-O's default; `podman --hooks-dir`, CRI-O's
    /// `hooks_dir` take others).
    #[arg(long, default_value = "/usr/share/containers/oci/hooks.d")]
    dir: PathBuf,
    /// The daemon's socket the hook registers with.
    #[command(flatten)]
    socket: SocketArg,
    /// What the hook does when the daemon is down (see `pidvirt oci-hook --help`).
    #[arg(long, value_enum, default_value_t = Fail::Open)]
    fail: Fail,
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("the path of this pidvirt")?;
    let entry = oci::hooks_d_entry(&exe, &a.socket.socket, a.fail);
    std::fs::create_dir_all(&a.dir).with_context(|| format!("create {}", a.dir.display()))?;
    let path = a.dir.join(FILE);
    let tmp = a.dir.join(format!(".{FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&entry)?)
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("rename to {}", path.display()))?;
    emit(&format!("wrote {}\n", path.display()))
}
