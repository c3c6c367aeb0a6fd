//! `pidvirt restore`: remakes a snapshot's process tree in a new pid namespace under the
//! caller's, every process and thread with its pids, parent, group and session, and registers
//! it as a container.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::{
    api::{ContainerRow, Request},
    cli::{SocketArg, emit, snapshot, spawn::NEED_CAP},
    containers::registry::check_id,
    restore::{
        compare::{self, differences},
        protocol::{Driver, Failure, Order, Plan, Report, RestorePlan},
        schedule::{self, Threads},
        snapshot::Snapshot,
        spawn, sys,
    },
};

/// The label a restored container carries: the id of the container its snapshot was taken of.
pub const RESTORED_FROM: &str = "pidvirt.io/restored-from";

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    socket: SocketArg,
    /// A file written by `pidvirt snapshot`.
    snapshot: PathBuf,
    /// Register the new pid namespace as container ID (without it: its automatic id,
    /// pidns-<inode>).
    #[arg(long)]
    id: Option<String>,
    /// Print a JSON object (id, pid namespace, level, init, counts) instead of the id.
    #[arg(long)]
    json: bool,
    /// Every process runs CMD (after `--`) instead of the placeholder; their threads are not
    /// made (execve keeps only the calling thread).
    #[arg(last = true, value_name = "CMD")]
    cmd: Vec<String>,
}

#[derive(Serialize)]
struct Restored {
    id: String,
    pidns: u32,
    level: u32,
    init_host_pid: u32,
    processes: usize,
    threads: usize,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let snap = snapshot::read(&a.snapshot)?;
    let name = a.snapshot.display();
    let tree = snap.validate(sys::pid_max()).with_context(|| format!("{name}"))?;
    let threads = if a.cmd.is_empty() { Threads::Make } else { Threads::Skip };
    let steps = schedule::build(&snap, &tree, threads).with_context(|| format!("{name}"))?;
    if !sys::has_cap_sys_admin() {
        bail!("restore {NEED_CAP}");
    }
    if let Some(id) = &a.id {
        check_id(id)?;
        if let Ok(c) = a.socket.call::<ContainerRow>(Request::Container { container: id.clone() }).await
            && c.id == *id
        {
            bail!("container id {id} is in use (pid namespace {})", c.pidns);
        }
    }
    let mut d = Driver::start(&Plan::Restore(RestorePlan { steps, cmd: a.cmd.clone() })).await?;
    match follow(&a, &snap, threads, &mut d).await {
        Ok(r) => {
            let _ = d.wait().await;
            if a.json {
                emit(&format!("{}\n", serde_json::to_string(&r)?))
            } else {
                emit(&format!("{}\n", r.id))
            }
        }
        Err(e) => {
            d.abort().await;
            Err(e.context("the restore failed; what it made is removed"))
        }
    }
}

async fn follow(a: &Args, snap: &Snapshot, threads: Threads, d: &mut Driver) -> anyhow::Result<Restored> {
    let (pidns, init_host_pid) = match d.next().await? {
        Report::Made { pidns, init_host_pid } => (pidns, init_host_pid),
        Report::Failed(f) => bail!("{}", explain(&f)),
        other => bail!("the clone helper said {other:?}"),
    };
    // The tree as the kernel made it, read back like any container's, must be the snapshot's.
    let made = snapshot::take(&a.socket, &pidns.to_string()).await?;
    let compared =
        if threads == Threads::Make { compare::Threads::Compare } else { compare::Threads::Ignore };
    let diffs = differences(snap, &made, compared);
    if !diffs.is_empty() {
        bail!("the restored tree differs from the snapshot:\n{}", diffs.join("\n"));
    }
    d.order(Order::Go).await?;
    match d.next().await? {
        Report::Running => {}
        Report::ExecFailed { errno, vpid } => bail!(
            "cannot execute `{}` in process {}: {}",
            a.cmd.first().map_or("", String::as_str),
            vpid.unwrap_or(0),
            std::io::Error::from_raw_os_error(errno)
        ),
        Report::Failed(f) => bail!("{}", explain(&f)),
        other => bail!("the clone helper said {other:?}"),
    }
    let row: ContainerRow = match &a.id {
        Some(id) => {
            let labels = BTreeMap::from([(RESTORED_FROM.to_string(), snap.container.clone())]);
            let req = Request::Register {
                id: id.clone(),
                pid: None,
                cgroup: None,
                pidns: Some(pidns),
                labels,
                by: None,
                mode: None,
            };
            a.socket.call(req).await.with_context(|| format!("register container {id}"))?
        }
        None => a.socket.call(Request::Container { container: pidns.to_string() }).await?,
    };
    d.order(Order::Done).await?;
    Ok(Restored {
        id: row.id,
        pidns,
        level: made.level,
        init_host_pid,
        processes: made.processes.len(),
        threads: made.processes.iter().map(|p| p.threads.len()).sum(),
    })
}

/// A failed step in words.
fn explain(f: &Failure) -> String {
    match &f.set_tid {
        Some(set_tid) => format!("{}: {}", f.what, spawn::explain(f.errno, set_tid, &[])),
        None => format!("{}: {}", f.what, std::io::Error::from_raw_os_error(f.errno)),
    }
}
