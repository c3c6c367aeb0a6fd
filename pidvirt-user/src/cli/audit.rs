//! `pidvirt audit`: recent anomalies, or with `--follow` a live stream of them.

use crate::{
    api::Request,
    audit::{Record, Target},
    cli::{SocketArg, emit, out, short_id},
    client,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    socket: SocketArg,
    /// Stream new anomalies until interrupted.
    #[arg(long)]
    follow: bool,
    /// JSON lines instead of a table.
    #[arg(long)]
    json: bool,
    #[arg(long)]
    container: Option<String>,
    /// Only records with this verdict (leak, collision, cross_container, unknown, ...).
    #[arg(long)]
    verdict: Option<String>,
    /// At most this many recent records.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let req =
        Request::Audit { container: a.container, verdict: a.verdict, limit: Some(a.limit), follow: a.follow };
    let line =
        |r: &Record| if a.json { serde_json::to_string(r).unwrap_or_default() } else { record_line(r) };
    if !a.follow {
        let records: Vec<Record> = a.socket.call(req).await?;
        let mut o = String::new();
        if !a.json {
            out!(o, "{}", record_header());
        }
        for r in &records {
            out!(o, "{}", line(r));
        }
        return emit(&o);
    }
    if !a.json {
        emit(&format!("{}\n", record_header()))?;
    }
    let mut failed = None;
    client::stream(&a.socket.socket, &req, |v| {
        let text = match serde_json::from_value::<Record>(v) {
            Ok(r) => line(&r),
            Err(e) => format!("(undecodable record: {e})"),
        };
        match emit(&format!("{text}\n")) {
            Ok(()) => true,
            Err(e) => {
                failed = Some(e);
                false
            }
        }
    })
    .await
    .map_err(|e| anyhow::Error::msg(e.to_string()))?;
    failed.map_or(Ok(()), Err)
}

fn record_header() -> String {
    format!(
        "{:>16} {:<18} {:<4} {:<16} {:>8}  {:<24} {:<28} TARGET",
        "TS_NS", "SYSCALL", "DIR", "VERDICT", "VALUE", "CONTAINER", "CALLER"
    )
}

fn record_line(r: &Record) -> String {
    use std::fmt::Write as _;
    let caller = format!("{}/{} {}", r.caller.host_pid, r.caller.vpid, r.caller.comm);
    let task = |t: &Target| {
        let name = t.runtime.as_ref().map(|r| r.name.as_str()).filter(|n| !n.is_empty());
        format!("{}/{}@{}", t.host_pid, t.vpid, name.map_or_else(|| short_id(&t.container), String::from))
    };
    let mut target = r.target.as_ref().map_or_else(|| "-".into(), task);
    if let Some(a) = &r.also {
        let _ = write!(target, " (host pid of {})", task(a));
    }
    if let Some(t) = r.truth {
        let _ = write!(target, " (truth {t})");
    }
    format!(
        "{:>16} {:<18} {:<4} {:<16} {:>8}  {:<24} {:<28} {}",
        r.ts_ns,
        r.syscall,
        r.direction,
        r.verdict,
        r.value,
        r.runtime
            .as_ref()
            .map(|rt| rt.name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| short_id(&r.container)),
        caller,
        target
    )
}
