//! `pidvirt snapshot`: a container's process tree as JSON (restore::snapshot is the format).

use std::{collections::HashMap, path::Path};

use anyhow::{Context as _, bail};

use crate::{
    api::{ContainerRow, Request, TaskRow},
    cli::{ContainerArg, SocketArg, emit, emit_json},
    restore::{
        capture::{self, ProcFacts},
        snapshot::Snapshot,
    },
};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    container: ContainerArg,
    /// Write the snapshot to FILE instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    output: Option<std::path::PathBuf>,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let s = take(&a.socket, &a.container.name).await?;
    match &a.output {
        Some(path) => {
            let text = serde_json::to_string_pretty(&s)? + "\n";
            std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
            emit(&format!(
                "{}: {} processes of container {}\n",
                path.display(),
                s.processes.len(),
                s.container
            ))
        }
        None => emit_json(&s),
    }
}

/// The tree of container `name` now: the daemon's rows of its tasks (and of namespaces nested
/// in it), with /proc's parents, groups, sessions and executables.
pub async fn take(socket: &SocketArg, name: &str) -> anyhow::Result<Snapshot> {
    let target: ContainerRow = socket.call(Request::Container { container: name.into() }).await?;
    if target.kind != "pidns" {
        bail!(
            "container {} is a {} container, without a pid namespace of its own: a snapshot is a pid \
             namespace's tree",
            target.id,
            target.kind
        );
    }
    let all: Vec<ContainerRow> = socket.call(Request::Containers).await?;
    let namespaces = capture::namespaces_of(&target, &all);
    let rows: Vec<TaskRow> = socket.call::<Vec<TaskRow>>(Request::Ps { container: None }).await?;
    let rows: Vec<TaskRow> = rows.into_iter().filter(|r| namespaces.contains(&r.pidns)).collect();
    let pids: Vec<u32> = rows.iter().filter(|r| r.host_tid == r.host_pid).map(|r| r.host_pid).collect();
    let facts: HashMap<u32, ProcFacts> = tokio::task::spawn_blocking(move || {
        pids.into_iter().filter_map(|p| Some((p, capture::read_facts(p).ok()?))).collect()
    })
    .await?;
    Ok(capture::assemble(&target, &rows, &facts))
}

/// Reads a snapshot file (the format is checked, not the tree).
pub fn read(path: &Path) -> anyhow::Result<Snapshot> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    Snapshot::parse(&text).with_context(|| format!("{}", path.display()))
}
