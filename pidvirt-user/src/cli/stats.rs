//! `pidvirt stats`: the kernel programs' counters.

use crate::{
    api::Request,
    cli::{SocketArg, emit, emit_json, out},
};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    socket: SocketArg,
    /// Only the crossings of this container.
    #[arg(long)]
    container: Option<String>,
    #[arg(long)]
    json: bool,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let v: serde_json::Value = a.socket.call(Request::Stats { container: a.container }).await?;
    if a.json { emit_json(&v) } else { emit(&table(&v)) }
}

/// Nonzero crossings per syscall, then every other counter group.
fn table(v: &serde_json::Value) -> String {
    let mut o = String::new();
    let Some(groups) = v.as_object() else { return o };
    if let Some(crossings) = v.get("crossings").and_then(|c| c.as_object()) {
        out!(o, "crossings (nonzero):");
        for (syscall, verdicts) in crossings {
            let nonzero: Vec<String> = verdicts
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                .map(|(verdict, n)| format!("{verdict}={n}"))
                .collect();
            if !nonzero.is_empty() {
                out!(o, "  {syscall:<24} {}", nonzero.join(" "));
            }
        }
    }
    for (group, counters) in groups {
        if group == "crossings" {
            continue;
        }
        out!(o, "{group}:");
        if let Some(map) = counters.as_object() {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            for (name, value) in entries {
                out!(o, "  {name:<28} {value}");
            }
        }
    }
    o
}
