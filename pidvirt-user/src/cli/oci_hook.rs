//! `pidvirt oci-hook`: an OCI runtime hook; the container state arrives on stdin. Fails open
//! unless asked to fail closed (see containers::oci).

use std::time::Duration;

use anyhow::Context as _;

use crate::{
    api::{self, ContainerRow, Request},
    cli::SocketArg,
    client::{self, ClientError},
    containers::oci::{self, Fail, Hook, HookAction},
};

/// How long the hook waits for the daemon (a runtime waits for its hooks).
const DAEMON_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    socket: SocketArg,
    /// When the daemon cannot be reached or refuses: `open` logs and lets the container start,
    /// `closed` exits non-zero (the runtime refuses the container). Containers annotated
    /// `pidvirt.io/fail: closed` or `pidvirt.io/mode: enforce` always fail closed.
    #[arg(long, value_enum, default_value_t = Fail::Open)]
    fail: Fail,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let mut input = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut input)
        .context("read the OCI state on stdin")?;
    let hook = match oci::hook(&input, a.fail) {
        Ok(h) => h,
        Err(e) if a.fail == Fail::Open => {
            eprintln!("pidvirt oci-hook: {e}; failing open");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let Hook { id, action, fail } = hook;
    let done = match tokio::time::timeout(DAEMON_TIMEOUT, ask(&a.socket, action)).await {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!(
            "the daemon at {} did not answer within {} s",
            a.socket.socket.display(),
            DAEMON_TIMEOUT.as_secs()
        )),
    };
    match (done, fail) {
        (Ok(()), _) => Ok(()),
        (Err(e), Fail::Open) => {
            eprintln!(
                "pidvirt oci-hook: container {id}: {e:#}; failing open (the daemon names it from its runtime when it is back)"
            );
            Ok(())
        }
        (Err(e), Fail::Closed) => Err(e.context(format!("container {id} (the hook fails closed)"))),
    }
}

async fn ask(socket: &SocketArg, action: HookAction) -> anyhow::Result<()> {
    match action {
        HookAction::Register(req) => {
            let _: ContainerRow = socket.call(req).await?;
        }
        HookAction::Unregister(id) => {
            // Idempotent: a container pidvirt does not know (any more) is fine.
            match client::call::<serde_json::Value>(&socket.socket, &Request::Unregister { id }).await {
                Ok(_)
                | Err(ClientError::Api(api::ApiError { code: api::ErrorCode::UnknownContainer, .. })) => {}
                Err(e) => anyhow::bail!("{e}"),
            }
        }
    }
    Ok(())
}
