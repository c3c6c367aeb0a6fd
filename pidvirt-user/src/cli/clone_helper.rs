//! `pidvirt clone-helper` (hidden): the single-threaded process `spawn` and `restore` start to
//! enter namespaces and fork with chosen pids (restore::helper). It runs before, and without,
//! the tokio runtime.

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_: &Args) -> ExitCode {
    ExitCode::from(crate::restore::helper::main().clamp(0, 255) as u8)
}
