//! The command-line client: one module per command. Each parses its own arguments (clap
//! derive), asks the daemon over the control socket, and prints (tables for people, `--json`
//! for programs).

pub mod audit;
pub mod clone_helper;
pub mod compare;
pub mod container;
pub mod containers;
pub mod detach;
pub mod floor;
pub mod install_hook;
pub mod oci_hook;
pub mod policy;
pub mod ps;
pub mod restore;
pub mod run;
pub mod snapshot;
pub mod spawn;
pub mod stats;
pub mod status;
pub mod translate;

use std::path::PathBuf;

use crate::{
    api::{self, Request},
    client::{self, ClientError},
};

/// The container a command acts on (`--container`).
#[derive(clap::Args, Clone, Debug)]
pub struct ContainerArg {
    /// The container: its id, name, pid namespace inode or a unique id prefix.
    #[arg(long = "container", value_name = "CONTAINER")]
    pub name: String,
}

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

/// A command's exit code, with nothing more to say (a spawned command's status, compare's
/// differences, already printed).
#[derive(Debug, thiserror::Error)]
#[error("exit code {0}")]
pub struct Exit(pub u8);

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

/// A container id as tables show it: a 64-hex runtime id cut to 12 digits, like docker's short
/// ids (also as the prefix of a nested namespace's id); other ids as they are.
pub fn short_id(id: &str) -> String {
    let (head, tail) = id.split_at(id.find('/').unwrap_or(id.len()));
    if head.len() == 64 && head.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!("{}{tail}", &head[..12])
    } else {
        id.to_string()
    }
}

/// A container's name for tables: its runtime's name, its pod/container for Kubernetes, or `-`.
pub fn display_name(runtime: Option<&api::RuntimeInfo>, k8s: Option<&api::K8sInfo>) -> String {
    match (k8s, runtime) {
        (Some(k), _) if !k.pod.is_empty() => k.name(),
        (_, Some(r)) if !r.name.is_empty() => r.name.clone(),
        _ => "-".into(),
    }
}

/// Prints `value` as pretty JSON.
pub fn emit_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    emit(&format!("{}\n", serde_json::to_string_pretty(value)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_ids_are_shortened_like_dockers() {
        let id = "4f5a1e2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7";
        assert_eq!(short_id(id), "4f5a1e2b3c4d");
        assert_eq!(short_id(&format!("{id}/pidns-4026532400")), "4f5a1e2b3c4d/pidns-4026532400");
        assert_eq!(short_id("web-1"), "web-1");
        assert_eq!(short_id("pidns-4026532400"), "pidns-4026532400");
    }
}
