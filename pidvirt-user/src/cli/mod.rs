//! The command-line client: one module per command. Each parses its own arguments (clap
//! derive), asks the daemon over the control socket, and prints (tables for people, `--json`
//! for programs).

pub mod audit;
pub mod container;
pub mod containers;
pub mod detach;
pub mod floor;
pub mod oci_hook;
pub mod policy;
pub mod ps;
pub mod run;
pub mod stats;
pub mod status;
pub mod translate;

use std::path::PathBuf;

use crate::{
    api::{self, Request},
    client::{self, ClientError},
};

#[derive(clap::Args, Clone, Debug)]
pub struct SocketArg {
    /// Control socket of the daemon.
    #[arg(long, default_value = api::DEFAULT_SOCKET, env = "PIDVIRT_SOCKET")]
    pub socket: PathBuf,
}

impl SocketArg {
    /// Sends one request, returns its result.
    pub async fn call<T: serde::de::DeserializeOwned>(&self, req: Request) -> anyhow::Result<T> {
        client::call(&self.socket, &req).await.map_err(|e| match e {
            ClientError::Other(e) => e,
            e => anyhow::Error::msg(e.to_string()),
        })
    }
}

/// Appends a formatted line to a `String` (writing to a String cannot fail).
macro_rules! out {
    ($buf:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($buf, $($arg)*);
    }};
}
pub(crate) use out;

/// Writes the command's output; a closed pipe (`pidvirt ps | head`) is not an error.
pub fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Prints `value` as pretty JSON.
pub fn emit_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    emit(&format!("{}\n", serde_json::to_string_pretty(value)?))
}
