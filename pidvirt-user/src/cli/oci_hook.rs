//! `pidvirt oci-hook`: an OCI runtime hook; the container state arrives on stdin.

use anyhow::Context as _;

use crate::{
    api::{self, ContainerRow, Request},
    cli::SocketArg,
    client::{self, ClientError},
    containers::oci::{self, HookAction},
};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    socket: SocketArg,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let mut input = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut input).context("read the OCI state on stdin")?;
    match oci::action(&input)? {
        HookAction::Register(req) => {
            let _: ContainerRow = a.socket.call(req).await?;
        }
        HookAction::Unregister(id) => {
            // Idempotent: a container pidvirt does not know (any more) is fine.
            match client::call::<serde_json::Value>(&a.socket.socket, &Request::Unregister { id }).await {
                Ok(_) | Err(ClientError::Api(api::ApiError { code: api::ErrorCode::UnknownContainer, .. })) => {}
                Err(e) => return Err(anyhow::Error::msg(e.to_string())),
            }
        }
    }
    Ok(())
}
