//! `pidvirt detach`: stop the daemon, remove the pins, and check that no pidvirt program is
//! left in the kernel.

use std::time::{Duration, Instant};

use crate::{
    api::Request,
    cli::{SocketArg, emit, out},
    client::{self, ClientError},
    loader,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    socket: SocketArg,
    /// How long to wait, in seconds, for the kernel to unload the programs once nothing holds
    /// them (it frees links from a work queue, and fentry/fexit and LSM links only after their
    /// trampolines are rewritten and an RCU-tasks grace period: seconds on a busy or emulated
    /// machine).
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    wait_secs: u64,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    loader::require_root()?;
    let socket = &a.socket.socket;
    let mut o = String::new();
    let stopped = match client::call::<serde_json::Value>(socket, &Request::Shutdown).await {
        Ok(_) => {
            out!(o, "asked the daemon at {} to stop", socket.display());
            let start = Instant::now();
            while socket.exists() && start.elapsed() < Duration::from_secs(20) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            true
        }
        Err(ClientError::Connect { .. }) => {
            out!(o, "no daemon at {}", socket.display());
            false
        }
        Err(e) => return Err(anyhow::Error::msg(e.to_string())),
    };
    let pins = loader::remove_pins()?;
    if pins {
        out!(o, "removed the pins in {}", loader::PIN_DIR);
    }
    let since = match (pins, stopped) {
        (true, _) => " after the pins went",
        (false, true) => " after the daemon stopped",
        (false, false) => "",
    };
    // Links go asynchronously once their last reference is gone.
    let start = Instant::now();
    loop {
        let left = loader::loaded_pidvirt_programs();
        if left.is_empty() {
            out!(o, "detached: no pidvirt program is loaded ({:.1} s{since})", start.elapsed().as_secs_f64());
            return emit(&o);
        }
        if start.elapsed() > Duration::from_secs(a.wait_secs) {
            emit(&o)?;
            anyhow::bail!(
                "{} pidvirt programs are still loaded after {} s: {}",
                left.len(),
                a.wait_secs,
                left.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
