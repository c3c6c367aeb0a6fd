//! `pidvirt container add|rm`: register a container under the id its orchestrator knows it by,
//! or unregister it.

use pidvirt_common::audit::Mode;

use crate::{
    api::{ContainerRow, Request},
    cli::{SocketArg, emit},
    containers::parse_label,
};

#[derive(clap::Subcommand, Debug)]
pub enum Action {
    /// Register a container under ID, by a task in it, a cgroup v2 directory or a pid namespace.
    Add(AddArgs),
    /// Unregister a container.
    Rm {
        #[command(flatten)]
        socket: SocketArg,
        id: String,
    },
}

#[derive(clap::Args, Debug)]
pub struct AddArgs {
    #[command(flatten)]
    socket: SocketArg,
    id: String,
    /// A process of the container (its pid namespace; or its cgroup if it runs in the host's).
    #[arg(long, group = "target", required = true)]
    pid: Option<i32>,
    /// A cgroup v2 directory (absolute, or relative to the cgroup2 mount).
    #[arg(long, group = "target")]
    cgroup: Option<String>,
    /// A pid namespace inode.
    #[arg(long, group = "target")]
    pidns: Option<u32>,
    /// KEY=VALUE, repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Policy: observe (default) or enforce.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(Mode::NAMES))]
    mode: Option<String>,
}

pub async fn run(action: Action) -> anyhow::Result<()> {
    match action {
        Action::Add(a) => {
            let req = Request::Register {
                id: a.id,
                pid: a.pid,
                cgroup: a.cgroup,
                pidns: a.pidns,
                labels: a.labels.into_iter().collect(),
                by: None,
                mode: a.mode,
            };
            let row: ContainerRow = a.socket.call(req).await?;
            let what = row.cgroup.unwrap_or_else(|| row.pidns.to_string());
            emit(&format!("registered {} ({} {what})\n", row.id, row.kind))
        }
        Action::Rm { socket, id } => {
            let _: serde_json::Value = socket.call(Request::Unregister { id: id.clone() }).await?;
            emit(&format!("unregistered {id}\n"))
        }
    }
}
