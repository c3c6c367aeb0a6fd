//! `pidvirt containers`: every known container.

use crate::{
    api::{ContainerRow, Request},
    cli::{SocketArg, emit, emit_json, out},
};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    socket: SocketArg,
    /// JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let rows: Vec<ContainerRow> = a.socket.call(Request::Containers).await?;
    if a.json {
        return emit_json(&rows);
    }
    let mut o = String::new();
    out!(
        o,
        "{:<28} {:<6} {:>12} {:>5} {:>6}  {:<10} {:<28} LABELS",
        "ID",
        "KIND",
        "PIDNS",
        "LEVEL",
        "TASKS",
        "BY",
        "PARENT/CGROUP"
    );
    for c in rows {
        let labels = c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        let parent = c.cgroup.or(c.parent).unwrap_or_else(|| "-".into());
        out!(
            o,
            "{:<28} {:<6} {:>12} {:>5} {:>6}  {:<10} {:<28} {}",
            c.id,
            c.kind,
            c.pidns,
            c.level,
            c.tasks,
            c.registered_by,
            parent,
            labels
        );
    }
    emit(&o)
}
