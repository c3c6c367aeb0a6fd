//! `pidvirt translate`: a vpid of a container to its host pid, or a host pid to the vpid.

use crate::{
    api::{Request, Translation},
    cli::{ContainerArg, SocketArg, emit},
};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    container: ContainerArg,
    /// A pid as the container sees it.
    #[arg(long, conflicts_with = "pid", required_unless_present = "pid")]
    vpid: Option<u32>,
    /// A host pid.
    #[arg(long)]
    pid: Option<u32>,
    #[arg(long)]
    json: bool,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let t: Translation =
        a.socket.call(Request::Translate { container: a.container.name, vpid: a.vpid, pid: a.pid }).await?;
    let line = if a.json {
        serde_json::to_string(&t)?
    } else if a.vpid.is_some() {
        t.host_pid.to_string()
    } else {
        t.vpid.to_string()
    };
    emit(&format!("{line}\n"))
}
