//! `pidvirt ps`: every tracked task, with its ids at every level.

use crate::{
    api::{Request, TaskRow},
    cli::{SocketArg, display_name, emit, emit_json, out, short_id},
};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    socket: SocketArg,
    /// Only the tasks of this container (id or pid namespace inode).
    #[arg(long)]
    container: Option<String>,
    /// JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let rows: Vec<TaskRow> = a.socket.call(Request::Ps { container: a.container }).await?;
    if a.json {
        return emit_json(&rows);
    }
    let mut o = String::new();
    out!(
        o,
        "{:<28} {:<20} {:>8} {:>8} {:>7} {:>7}  {:<20} COMM",
        "CONTAINER",
        "NAME",
        "HOST_PID",
        "HOST_TID",
        "VPID",
        "VTID",
        "NSPID"
    );
    for r in rows {
        let nspid = r.nspid.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
        out!(
            o,
            "{:<28} {:<20} {:>8} {:>8} {:>7} {:>7}  {:<20} {}",
            short_id(&r.container),
            display_name(r.runtime.as_ref(), r.k8s.as_ref()),
            r.host_pid,
            r.host_tid,
            r.vpid,
            r.vtid,
            nspid,
            r.comm
        );
    }
    emit(&o)
}
