//! `pidvirt audit`: recent anomalies from the daemon, a live stream of them (`--follow`), or the
//! records of a saved audit log (standard input when it is a file, or `--input`); as JSON lines,
//! or one compact line per record for people.

use std::{
    collections::VecDeque,
    io::{BufRead, BufReader, IsTerminal as _},
    os::fd::AsFd as _,
    path::PathBuf,
};

use anyhow::Context as _;
use jiff::{Timestamp, ZonedDateTime, tz::TimeZone};

use crate::{
    api::Request,
    audit::{ContainerMatch, Filter, Record, Target},
    cli::{SocketArg, display_name, emit, out, short_id},
    client,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// One line per record, for people.
    Compact,
    /// The records as the audit log has them, one JSON object a line.
    Json,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    socket: SocketArg,
    /// Stream new anomalies until interrupted.
    #[arg(long, conflicts_with = "input")]
    follow: bool,
    /// `compact` (the default on a terminal) or `json` (the default otherwise).
    #[arg(short = 'o', long, value_enum)]
    output: Option<Output>,
    /// Same as `-o json`.
    #[arg(long, conflicts_with = "output")]
    json: bool,
    /// Only records of this container (its id, its runtime's name, its pod, a unique id prefix).
    #[arg(long)]
    container: Option<String>,
    /// Only records with this verdict (leak, collision, cross_container, unknown, ...).
    #[arg(long)]
    verdict: Option<String>,
    /// Only records of this syscall (for denials: of this LSM hook).
    #[arg(long)]
    syscall: Option<String>,
    /// Only records at or after this time: RFC 3339 (2026-12-01T12:00:00Z), a local date and
    /// time (2026-12-01 12:00:00), or a span back from now (10m, 2h, 1d).
    #[arg(long, value_parser = since)]
    since: Option<Timestamp>,
    /// At most this many records, the newest (from the daemon: 1000 unless given).
    #[arg(long)]
    limit: Option<usize>,
    /// Read the records of this saved audit log instead of asking the daemon (`-`: standard
    /// input, e.g. a pipe). Standard input is read without it when it is a file
    /// (`pidvirt audit < audit.jsonl`).
    #[arg(long, value_name = "PATH")]
    input: Option<PathBuf>,
}

/// `--since`: a time, or a span back from now.
fn since(s: &str) -> Result<Timestamp, String> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    if let Ok(dt) = s.parse::<jiff::civil::DateTime>() {
        return dt.to_zoned_datetime(TimeZone::system()).map(|z| z.timestamp()).map_err(|e| e.to_string());
    }
    match s.parse::<jiff::Span>() {
        Ok(span) => ZonedDateTime::now().checked_sub(span).map(|z| z.timestamp()).map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "`{s}` is neither a time (2026-12-01T12:00:00Z, 2026-12-01 12:00:00) nor a span (10m, 2h, 1d)"
        )),
    }
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let output = match a.output {
        Some(o) => o,
        None if a.json || !std::io::stdout().is_terminal() => Output::Json,
        None => Output::Compact,
    };
    let tz = TimeZone::system();
    let line = |r: &Record| match output {
        Output::Json => serde_json::to_string(r).unwrap_or_default(),
        Output::Compact => compact(r, &tz),
    };
    if let Some(input) = saved_log(&a)? {
        let filter = Filter {
            container: a.container.map(ContainerMatch::Name),
            verdict: a.verdict,
            syscall: a.syscall,
            since: a.since,
        };
        filter.check()?;
        return read_saved(input, &filter, a.limit, |r, raw| match output {
            // As saved: fields a newer daemon wrote are kept.
            Output::Json => raw.to_string(),
            Output::Compact => compact(r, &tz),
        });
    }
    let req = Request::Audit {
        container: a.container,
        verdict: a.verdict,
        syscall: a.syscall,
        since: a.since.map(|t| t.to_string()),
        limit: Some(a.limit.unwrap_or(1000)),
        follow: a.follow,
    };
    if !a.follow {
        let records: Vec<Record> = a.socket.call(req).await?;
        let text = records.iter().fold(String::new(), |mut o, r| {
            out!(o, "{}", line(r));
            o
        });
        return emit(&text);
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

/// A saved log to read, named (`--input`) or given as standard input, or None: ask the daemon.
/// Standard input counts only when it is a regular file: a pipe or a terminal may be a script's
/// or ssh's own, and waiting on it would hang.
fn saved_log(a: &Args) -> anyhow::Result<Option<(String, Box<dyn BufRead>)>> {
    let stdin = || -> anyhow::Result<std::fs::File> {
        Ok(std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned()?))
    };
    match &a.input {
        Some(p) if p.as_os_str() == "-" => {
            Ok(Some(("standard input".into(), Box::new(BufReader::new(stdin()?)))))
        }
        Some(p) => {
            let f = std::fs::File::open(p).with_context(|| format!("open {}", p.display()))?;
            Ok(Some((p.display().to_string(), Box::new(BufReader::new(f)))))
        }
        None if a.follow => Ok(None),
        None => match stdin() {
            Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => {
                Ok(Some(("standard input".into(), Box::new(BufReader::new(f)))))
            }
            _ => Ok(None),
        },
    }
}

/// Prints the records of a saved log that `filter` accepts (the last `limit` of them), each
/// as `show(record, line)`. A line that is not a record is named on stderr and makes the
/// command fail once the rest is printed.
fn read_saved(
    (name, input): (String, Box<dyn BufRead>),
    filter: &Filter,
    limit: Option<usize>,
    show: impl Fn(&Record, &str) -> String,
) -> anyhow::Result<()> {
    let mut kept = VecDeque::new();
    let mut bad = 0usize;
    for (n, raw) in input.lines().enumerate() {
        let raw = raw.with_context(|| format!("read {name}"))?;
        if raw.trim().is_empty() {
            continue;
        }
        let r: Record = match serde_json::from_str(&raw) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("pidvirt: {name}, line {}: not an audit record: {e}", n + 1);
                bad += 1;
                continue;
            }
        };
        if !filter.accepts(&r) {
            continue;
        }
        let text = show(&r, &raw);
        match limit {
            Some(limit) => {
                if kept.len() == limit {
                    kept.pop_front();
                }
                if limit > 0 {
                    kept.push_back(text);
                }
            }
            None => emit(&format!("{text}\n"))?,
        }
    }
    let text = kept.iter().fold(String::new(), |mut o, t| {
        out!(o, "{t}");
        o
    });
    emit(&text)?;
    anyhow::ensure!(bad == 0, "{bad} line(s) of {name} were not audit records");
    Ok(())
}

/// A container as people know it: its runtime's (or Kubernetes') name, else its short id.
fn container_name(
    id: &str,
    runtime: Option<&crate::api::RuntimeInfo>,
    k8s: Option<&crate::api::K8sInfo>,
) -> String {
    match display_name(runtime, k8s) {
        n if n == "-" => short_id(id),
        n => n,
    }
}

/// A task's numbers: its vpid where it differs from its host pid.
fn ids(vpid: u32, host_pid: u32) -> String {
    if vpid == host_pid { format!("pid {host_pid}") } else { format!("vpid {vpid}, pid {host_pid}") }
}

fn task(t: &Target) -> String {
    format!("{}[{}]", container_name(&t.container, t.runtime.as_ref(), None), ids(t.vpid, t.host_pid))
}

/// One line per record, like `tetra getevents -o compact`: time (local), verdict, the call,
/// the caller's container and task, then what the number named:
/// `12:00:01.123 leak kill(1043) web-1 sh[vpid 7, pid 26919] -> names nothing here; host pid of host[pid 1043]`
pub fn compact(r: &Record, tz: &TimeZone) -> String {
    let time = r.time.map_or_else(
        // Logs of older versions: the monotonic clock.
        || format!("+{:.3}s", r.ts_ns as f64 / 1e9),
        |t| t.to_zoned_datetime(tz.clone()).strftime("%H:%M:%S%.3f").to_string(),
    );
    let call = if r.direction == "out" {
        format!("{}()={}", r.syscall, r.value)
    } else {
        format!("{}({})", r.syscall, r.value)
    };
    let container = container_name(&r.container, r.runtime.as_ref(), r.k8s.as_ref());
    let caller = format!("{}[{}]", r.caller.comm, ids(r.caller.vpid, r.caller.host_pid));
    format!("{time} {} {call} {container} {caller} -> {}", r.verdict, what_it_named(r))
}

fn what_it_named(r: &Record) -> String {
    let also = r.also.as_ref().map(|also| {
        let whose = match &r.read_at {
            Some(at) if at.level > 0 => format!("pid in {} (level {})", short_id(&at.container), at.level),
            _ => "host pid".into(),
        };
        format!("{whose} of {}", task(also))
    });
    match (r.verdict.as_str(), &r.target, also) {
        ("mismatch", ..) => {
            format!("the task structures say {}", r.truth.map_or_else(|| "?".into(), |t| t.to_string()))
        }
        (_, None, Some(also)) => format!("names nothing here; {also}"),
        (_, Some(t), Some(also)) => format!("hits {}; {also}", task(t)),
        ("denied", Some(t), None) => format!("denied on {}", task(t)),
        (_, Some(t), None) => format!("hits {}", task(t)),
        ("released", None, None) => "names a task released a moment ago".into(),
        (_, None, None) => "names nothing".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(json: &str) -> Record {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn compact_lines_match_their_golden_lines() {
        let utc = TimeZone::UTC;
        let leak = record(
            r#"{"ts_ns":2773705160953,"time":"2026-12-01T12:00:01.123456789Z","syscall":"kill","direction":"in","verdict":"leak","value":1043,
            "container":"4f5a1e2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7","runtime":{"engine":"docker","name":"web-1","image":"nginx"},
            "caller":{"host_pid":26919,"host_tid":26919,"vpid":7,"vtid":7,"pidns":4026532177,"comm":"sh"},
            "also":{"host_pid":1043,"host_tid":1043,"vpid":1043,"vtid":1043,"pidns":4026531836,"container":"host"},
            "read_at":{"level":0,"pidns":4026531836,"container":"host"}}"#,
        );
        assert_eq!(
            compact(&leak, &utc),
            "12:00:01.123 leak kill(1043) web-1 sh[vpid 7, pid 26919] -> names nothing here; host pid of host[pid 1043]"
        );
        let collision = record(
            r#"{"ts_ns":5,"time":"2026-12-01T23:59:59.999Z","syscall":"tgkill","direction":"in","verdict":"collision","value":57,
            "container":"ci/pidns-4026532400",
            "caller":{"host_pid":9000,"host_tid":9000,"vpid":3,"vtid":3,"pidns":4026532400,"comm":"job"},
            "target":{"host_pid":9200,"host_tid":9200,"vpid":57,"vtid":57,"pidns":4026532400,"container":"ci/pidns-4026532400"},
            "also":{"host_pid":9120,"host_tid":9120,"vpid":4,"vtid":4,"pidns":4026532400,"container":"ci/pidns-4026532400"},
            "read_at":{"level":1,"pidns":4026532300,"container":"ci"}}"#,
        );
        assert_eq!(
            compact(&collision, &utc),
            "23:59:59.999 collision tgkill(57) ci/pidns-4026532400 job[vpid 3, pid 9000] -> hits \
             ci/pidns-4026532400[vpid 57, pid 9200]; pid in ci (level 1) of ci/pidns-4026532400[vpid 4, pid 9120]"
        );
        // A record of an older version (no wall-clock time), a returned value.
        let mismatch = record(
            r#"{"ts_ns":1500000000,"syscall":"getpid","direction":"out","verdict":"mismatch","value":8,"container":"host",
            "caller":{"host_pid":8,"host_tid":8,"vpid":8,"vtid":8,"pidns":4026531836,"comm":"init"},"truth":7}"#,
        );
        assert_eq!(
            compact(&mismatch, &utc),
            "+1.500s mismatch getpid()=8 host init[pid 8] -> the task structures say 7"
        );
    }

    #[test]
    fn since_takes_times_and_spans() {
        assert_eq!(since("2026-12-01T12:00:00Z").unwrap().to_string(), "2026-12-01T12:00:00Z");
        let ago = since("10m").unwrap();
        let expected = Timestamp::now() - jiff::SignedDuration::from_mins(10);
        assert!((ago.as_second() - expected.as_second()).abs() <= 2, "{ago} vs {expected}");
        assert!(since("2026-12-01 12:00:00").is_ok());
        assert!(since("1d").unwrap() < ago);
        assert!(since("yesterday-ish").is_err());
    }
}
