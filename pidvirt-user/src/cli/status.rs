//! `pidvirt status`: kernel, attached programs, enforcement, seed report.

use crate::{
    api::Request,
    cli::{SocketArg, emit_json},
};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    socket: SocketArg,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let v: serde_json::Value = a.socket.call(Request::Status).await?;
    emit_json(&v)
}
