//! `pidvirt compare`: does a container's tree match a snapshot (after a migration, a restore,
//! `runc restore`)? Each difference on a line; exit code 0 when none, else 1.

use std::path::PathBuf;

use crate::{
    cli::{ContainerArg, Exit, SocketArg, emit, snapshot},
    restore::compare::{Threads, differences},
};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    socket: SocketArg,
    /// A file written by `pidvirt snapshot`.
    snapshot: PathBuf,
    #[command(flatten)]
    container: ContainerArg,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let expected = snapshot::read(&a.snapshot)?;
    let actual = snapshot::take(&a.socket, &a.container.name).await?;
    let diffs = differences(&expected, &actual, Threads::Compare);
    if diffs.is_empty() {
        let threads: usize = actual.processes.iter().map(|p| p.threads.len()).sum();
        return emit(&format!(
            "container {} matches the snapshot: {} processes, {threads} more threads\n",
            actual.container,
            actual.processes.len()
        ));
    }
    emit(&(diffs.join("\n") + "\n"))?;
    Err(Exit(1).into())
}
