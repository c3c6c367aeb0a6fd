//! `pidvirt containers`: every known container.

use crate::{
    api::{ContainerRow, Request},
    cli::{SocketArg, display_name, emit, emit_json, out, short_id},
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
        "{:<28} {:<20} {:<10} {:<16} {:<6} {:>12} {:>5} {:>6}  {:<10} {:<28} LABELS",
        "ID",
        "NAME",
        "ENGINE",
        "IMAGE",
        "KIND",
        "PIDNS",
        "LEVEL",
        "TASKS",
        "BY",
        "PARENT/CGROUP"
    );
    for c in rows {
        let labels = c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        let parent = c.cgroup.or(c.parent.map(|p| short_id(&p))).unwrap_or_else(|| "-".into());
        let (engine, image) = c.runtime.as_ref().map_or(("-", "-"), |r| {
            (r.engine.as_str(), if r.image.is_empty() { "-" } else { r.image.as_str() })
        });
        out!(
            o,
            "{:<28} {:<20} {:<10} {:<16} {:<6} {:>12} {:>5} {:>6}  {:<10} {:<28} {}",
            short_id(&c.id),
            display_name(c.runtime.as_ref(), c.k8s.as_ref()),
            engine,
            image,
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
