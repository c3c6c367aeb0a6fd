//! `pidvirt floor` (hidden): the benchmark's floor, EMPTY programs on exactly the hooks `run`
//! uses (or on `read`'s own tracepoints, or the raw sys_enter/sys_exit), until SIGINT/SIGTERM.

use crate::loader::{self, AttachMode, FloorHooks};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, value_enum, default_value_t = FloorHooks::Pidvirt)]
    hooks: FloorHooks,
    /// How to attach to the syscalls (as `pidvirt run --attach`).
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    attach: AttachMode,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let (ebpf, attached) = loader::attach_floor(a.hooks, a.attach)?;
    tracing::info!("floor: {} empty programs attached; SIGINT/SIGTERM detach", attached.len());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop(ebpf);
    Ok(())
}
