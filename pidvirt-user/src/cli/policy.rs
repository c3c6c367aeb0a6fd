//! `pidvirt policy set`: a container's policy.

use pidvirt_common::audit::Mode;

use crate::{
    api::{ContainerRow, Request},
    cli::{SocketArg, emit},
};

#[derive(clap::Subcommand, Debug)]
pub enum Action {
    /// `observe`: audit only; `enforce`: deny this container's actions on tasks of other
    /// containers (EPERM). Enforce needs BPF-LSM (see `pidvirt status`).
    Set {
        #[command(flatten)]
        socket: SocketArg,
        id: String,
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(Mode::NAMES))]
        mode: String,
    },
}

pub async fn run(action: Action) -> anyhow::Result<()> {
    let Action::Set { socket, id, mode } = action;
    let row: ContainerRow = socket.call(Request::Policy { id, mode }).await?;
    emit(&format!("{}: {}\n", row.id, row.mode))
}
