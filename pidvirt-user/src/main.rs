//! `pidvirt`: the daemon (`pidvirt run`) and its command-line client.

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use pidvirt_common::audit::Mode;
use pidvirt::{
    api::{self, ContainerRow, Request, TaskRow, Translation},
    audit::Record,
    client::{self, ClientError},
    daemon::{self, RunOptions},
    loader::LoadOptions,
};

#[derive(Parser)]
#[command(
    name = "pidvirt",
    version,
    about = "Run-time check of process ids crossing pid-namespace boundaries"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct SocketArg {
    /// Control socket of the daemon.
    #[arg(long, default_value = api::DEFAULT_SOCKET, env = "PIDVIRT_SOCKET")]
    socket: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SeedMode {
    Iterator,
    Proc,
}

#[derive(Subcommand)]
enum PolicyAction {
    /// `observe`: audit only; `enforce`: deny this container's actions on tasks of other
    /// containers (EPERM). Enforce needs BPF-LSM (see `pidvirt status`).
    Set {
        #[command(flatten)]
        socket: SocketArg,
        id: String,
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(Mode::NAMES))]
        mode: String,
    },
}

#[derive(Subcommand)]
enum ContainerAction {
    /// Register a container under ID, by a task in it, a cgroup v2 directory or a pid namespace.
    Add {
        #[command(flatten)]
        socket: SocketArg,
        id: String,
        /// A process of the container (its pid namespace; or its cgroup if it runs in the host's).
        #[arg(long, group = "target", required = true)]
        pid: Option<i32>,
        /// A cgroup v2 directory (absolute, or relative to the cgroup2 mount).
        #[arg(long, group = "target")]
        cgroup: Option<String>,
        /// A pid namespace inode.
        #[arg(long, group = "target")]
        pidns: Option<u32>,
        /// KEY=VALUE, repeatable.
        #[arg(long = "label", value_parser = pidvirt::orchestrator::parse_label)]
        labels: Vec<(String, String)>,
        /// Policy: observe (default) or enforce.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(Mode::NAMES))]
        mode: Option<String>,
    },
    /// Unregister a container.
    Rm {
        #[command(flatten)]
        socket: SocketArg,
        id: String,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Attach to this host and serve the control socket (foreground; SIGINT/SIGTERM detach).
    Run {
        #[command(flatten)]
        socket: SocketArg,
        /// Write audit events as JSON lines to this file (`-` for standard output).
        #[arg(long)]
        audit_log: Option<String>,
        /// Capacity of the task maps (tasks tracked at once; preallocated). Default: the kernel's
        /// pid_max (no more tasks can exist at once), within 4096..=262144.
        #[arg(long)]
        max_tasks: Option<u32>,
        /// Size of the events ring buffer in bytes (a power of two, at least one page).
        #[arg(long, default_value_t = LoadOptions::default().ringbuf_bytes)]
        ringbuf_bytes: u32,
        /// Containers whose crossings are counted apart at once (more share one overflow counter).
        #[arg(long, default_value_t = LoadOptions::default().counter_slots - 2)]
        max_containers: u32,
        /// Pin programs and maps in bpffs (/sys/fs/bpf/pidvirt): counting and enforcement go on
        /// while the daemon is down, a restarted daemon adopts them; `pidvirt detach` removes them.
        #[arg(long)]
        pin: bool,
        /// Where registrations are kept across restarts (`none`: not kept).
        #[arg(long, default_value = "/var/lib/pidvirt/state.json")]
        state_file: String,
        /// How to seed tasks that exist at attach: `iterator` (the kernel's task iterator, then
        /// /proc for anything it missed) or `proc` (/proc only; start times at clock-tick precision).
        #[arg(long, value_enum, default_value_t = SeedMode::Iterator)]
        seed: SeedMode,
        /// Read pids above level 0 with bpf_probe_read_kernel even where direct loads are
        /// possible (the path of kernels that declare `pid.numbers[1]`; for tests).
        #[arg(long, hide = true)]
        probe_reads: bool,
    },
    /// List tracked tasks.
    Ps {
        #[command(flatten)]
        socket: SocketArg,
        /// Only the tasks of this container (id or pid namespace inode).
        #[arg(long)]
        container: Option<String>,
        /// JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Register or unregister a container.
    Container {
        #[command(subcommand)]
        action: ContainerAction,
    },
    /// OCI runtime hook: reads the container state JSON on stdin; registers the container at
    /// createRuntime/createContainer/poststart (annotations become labels), unregisters it at
    /// poststop.
    OciHook {
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Set a container's policy.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Stop the daemon and remove every pinned program and map (nothing of pidvirt stays in
    /// the kernel).
    Detach {
        #[command(flatten)]
        socket: SocketArg,
    },
    /// List known containers.
    Containers {
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long)]
        json: bool,
    },
    /// Translate a vpid of a container to a host pid, or a host pid to the container's vpid.
    Translate {
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long)]
        container: String,
        /// A pid as the container sees it.
        #[arg(long, conflicts_with = "pid", required_unless_present = "pid")]
        vpid: Option<u32>,
        /// A host pid.
        #[arg(long)]
        pid: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Counters kept by the kernel programs: crossings per syscall per verdict, drops, errors.
    Stats {
        #[command(flatten)]
        socket: SocketArg,
        /// Only the crossings of this container.
        #[arg(long)]
        container: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Recent anomalies (every verdict but ok, group, any), or a live stream of them.
    Audit {
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
        /// leak, collision, cross_container, unknown, stale, mismatch, denied.
        #[arg(long)]
        verdict: Option<String>,
        /// At most this many recent records.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Benchmark floor: attach EMPTY programs to exactly the hooks `run` uses (or, for the
    /// comparison of designs, to `read`'s own tracepoints or the raw sys_enter/sys_exit), until
    /// SIGINT/SIGTERM.
    #[command(hide = true)]
    Floor {
        #[arg(long, value_enum, default_value_t = pidvirt::loader::FloorHooks::Pidvirt)]
        hooks: pidvirt::loader::FloorHooks,
    },
    /// Daemon status: kernel, attached programs, seed report.
    Status {
        #[command(flatten)]
        socket: SocketArg,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PIDVIRT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let _ = tracing_log::LogTracer::init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pidvirt: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pidvirt: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Appends a line to the output buffer.
macro_rules! out {
    ($buf:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($buf, $($arg)*);
    }};
}

/// Writes the command's output; a closed pipe (`pidvirt ps | head`) is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

async fn dispatch(cmd: Command) -> anyhow::Result<()> {
    let mut o = String::new();
    match cmd {
        Command::Run {
            socket,
            audit_log,
            max_tasks,
            ringbuf_bytes,
            seed,
            state_file,
            max_containers,
            pin,
            probe_reads,
        } => {
            daemon::run(RunOptions {
                socket: socket.socket,
                state_file: (state_file != "none").then(|| state_file.into()),
                audit_log,
                load: LoadOptions {
                    max_tasks: max_tasks.unwrap_or_else(pidvirt::loader::max_tasks_for_this_host),
                    ringbuf_bytes,
                    counter_slots: max_containers.saturating_add(pidvirt_common::slots::FIRST_FREE),
                    task_iterator: matches!(seed, SeedMode::Iterator),
                    pin,
                    probe_reads,
                },
            })
            .await?;
        }
        Command::Ps { socket, container, json } => {
            let rows: Vec<TaskRow> = call(&socket, Request::Ps { container }).await?;
            if json {
                out!(o, "{}", serde_json::to_string_pretty(&rows)?);
            } else {
                out!(
                    o,
                    "{:<22} {:>8} {:>8} {:>7} {:>7}  {:<20} COMM",
                    "CONTAINER",
                    "HOST_PID",
                    "HOST_TID",
                    "VPID",
                    "VTID",
                    "NSPID"
                );
                for r in rows {
                    let nspid = r.nspid.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
                    out!(
                        o,
                        "{:<22} {:>8} {:>8} {:>7} {:>7}  {:<20} {}",
                        r.container,
                        r.host_pid,
                        r.host_tid,
                        r.vpid,
                        r.vtid,
                        nspid,
                        r.comm
                    );
                }
            }
        }
        Command::Container {
            action: ContainerAction::Add { socket, id, pid, cgroup, pidns, labels, mode },
        } => {
            let req = Request::Register {
                id,
                pid,
                cgroup,
                pidns,
                labels: labels.into_iter().collect(),
                by: None,
                mode,
            };
            let row: ContainerRow = call(&socket, req).await?;
            out!(
                o,
                "registered {} ({} {})",
                row.id,
                row.kind,
                row.cgroup.unwrap_or_else(|| row.pidns.to_string())
            );
        }
        Command::Container { action: ContainerAction::Rm { socket, id } } => {
            let _: serde_json::Value = call(&socket, Request::Unregister { id: id.clone() }).await?;
            out!(o, "unregistered {id}");
        }
        Command::OciHook { socket } => oci_hook(&socket).await?,
        Command::Policy { action: PolicyAction::Set { socket, id, mode } } => {
            let row: ContainerRow = call(&socket, Request::Policy { id, mode }).await?;
            out!(o, "{}: {}", row.id, row.mode);
        }
        Command::Detach { socket } => detach(&socket, &mut o).await?,
        Command::Containers { socket, json } => {
            let rows: Vec<ContainerRow> = call(&socket, Request::Containers).await?;
            if json {
                out!(o, "{}", serde_json::to_string_pretty(&rows)?);
            } else {
                out!(
                    o,
                    "{:<28} {:<6} {:>12} {:>5} {:>6}  {:<10} {:<28} LABELS",
                    "ID",
                    "KIND",
                    "PIDNS",
                    "LEVEL",
                    "TASKS",
                    "BY",
                    "PARENT/CGROUP"
                );
                for c in rows {
                    let labels =
                        c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
                    let parent = c.cgroup.or(c.parent).unwrap_or_else(|| "-".into());
                    out!(
                        o,
                        "{:<28} {:<6} {:>12} {:>5} {:>6}  {:<10} {:<28} {}",
                        c.id,
                        c.kind,
                        c.pidns,
                        c.level,
                        c.tasks,
                        c.registered_by,
                        parent,
                        labels
                    );
                }
            }
        }
        Command::Translate { socket, container, vpid, pid, json } => {
            let t: Translation = call(&socket, Request::Translate { container, vpid, pid }).await?;
            if json {
                out!(o, "{}", serde_json::to_string(&t)?);
            } else if vpid.is_some() {
                out!(o, "{}", t.host_pid);
            } else {
                out!(o, "{}", t.vpid);
            }
        }
        Command::Stats { socket, container, json } => {
            let v: serde_json::Value = call(&socket, Request::Stats { container }).await?;
            if json {
                out!(o, "{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_stats(&mut o, &v);
            }
        }
        Command::Audit { socket, follow, json, container, verdict, limit } => {
            let req = Request::Audit { container, verdict, limit: Some(limit), follow };
            if follow {
                if !json {
                    emit(&format!("{}\n", record_header()))?;
                }
                let mut failed = None;
                client::stream(&socket.socket, &req, |v| {
                    let line = match serde_json::from_value::<Record>(v) {
                        Ok(r) if json => serde_json::to_string(&r).unwrap_or_default(),
                        Ok(r) => record_line(&r),
                        Err(e) => format!("(undecodable record: {e})"),
                    };
                    match emit(&format!("{line}\n")) {
                        Ok(()) => true,
                        Err(e) => {
                            failed = Some(e);
                            false
                        }
                    }
                })
                .await
                .map_err(|e| anyhow::Error::msg(e.to_string()))?;
                if let Some(e) = failed {
                    return Err(e);
                }
            } else {
                let records: Vec<Record> = call(&socket, req).await?;
                if !json {
                    out!(o, "{}", record_header());
                }
                for r in records {
                    if json {
                        out!(o, "{}", serde_json::to_string(&r)?);
                    } else {
                        out!(o, "{}", record_line(&r));
                    }
                }
            }
        }
        Command::Floor { hooks } => {
            let (ebpf, attached) = pidvirt::loader::attach_floor(hooks)?;
            tracing::info!("floor: {} empty programs attached; SIGINT/SIGTERM detach", attached.len());
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            drop(ebpf);
        }
        Command::Status { socket } => {
            let v: serde_json::Value = call(&socket, Request::Status).await?;
            out!(o, "{}", serde_json::to_string_pretty(&v)?);
        }
    }
    emit(&o)
}

async fn call<T: serde::de::DeserializeOwned>(socket: &SocketArg, req: Request) -> anyhow::Result<T> {
    client::call(&socket.socket, &req).await.map_err(|e| match e {
        ClientError::Other(e) => e,
        e => anyhow::Error::msg(e.to_string()),
    })
}

/// The container state an OCI runtime passes to hooks on stdin.
#[derive(serde::Deserialize)]
struct OciState {
    id: String,
    status: String,
    #[serde(default)]
    pid: Option<i32>,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

/// The OCI annotation that sets a container's policy.
const MODE_ANNOTATION: &str = "pidvirt.io/mode";

/// Stops the daemon if it runs, removes the pins, and checks that no pidvirt program is left.
async fn detach(socket: &SocketArg, o: &mut String) -> anyhow::Result<()> {
    pidvirt::loader::require_root()?;
    match client::call::<serde_json::Value>(&socket.socket, &Request::Shutdown).await {
        Ok(_) => {
            out!(o, "asked the daemon at {} to stop", socket.socket.display());
            let start = std::time::Instant::now();
            while socket.socket.exists() && start.elapsed() < std::time::Duration::from_secs(20) {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        Err(ClientError::Connect { .. }) => out!(o, "no daemon at {}", socket.socket.display()),
        Err(e) => return Err(anyhow::Error::msg(e.to_string())),
    }
    if pidvirt::loader::remove_pins()? {
        out!(o, "removed the pins in {}", pidvirt::loader::PIN_DIR);
    }
    // Links go asynchronously once their last reference is gone.
    let start = std::time::Instant::now();
    loop {
        let left = pidvirt::loader::loaded_pidvirt_programs();
        if left.is_empty() {
            out!(o, "detached: no pidvirt program is loaded");
            return Ok(());
        }
        if start.elapsed() > std::time::Duration::from_secs(10) {
            anyhow::bail!("{} pidvirt programs are still loaded: {}", left.len(), left.join(", "));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn oci_hook(socket: &SocketArg) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut input = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut input)
        .context("read the OCI state on stdin")?;
    let state: OciState = serde_json::from_str(&input).context("the OCI state on stdin is not valid")?;
    match state.status.as_str() {
        "creating" | "created" | "running" => {
            let pid = state.pid.filter(|p| *p > 0).context("the OCI state has no pid")?;
            let mode = state.annotations.get(MODE_ANNOTATION).cloned();
            let req = Request::Register {
                id: state.id,
                pid: Some(pid),
                cgroup: None,
                pidns: None,
                labels: state.annotations,
                by: Some("oci".into()),
                mode,
            };
            let _: ContainerRow = call(socket, req).await?;
        }
        "stopped" => {
            // Idempotent: a container pidvirt does not know (any more) is fine.
            match client::call::<serde_json::Value>(&socket.socket, &Request::Unregister { id: state.id })
                .await
            {
                Ok(_)
                | Err(ClientError::Api(api::ApiError { code: api::ErrorCode::UnknownContainer, .. })) => {}
                Err(e) => return Err(anyhow::Error::msg(e.to_string())),
            }
        }
        other => anyhow::bail!("unexpected container status `{other}` in the OCI state"),
    }
    Ok(())
}

fn record_header() -> String {
    format!(
        "{:>16} {:<18} {:<4} {:<16} {:>8}  {:<24} {:<28} TARGET",
        "TS_NS", "SYSCALL", "DIR", "VERDICT", "VALUE", "CONTAINER", "CALLER"
    )
}

fn record_line(r: &Record) -> String {
    let caller = format!("{}/{} {}", r.caller.host_pid, r.caller.vpid, r.caller.comm);
    let task = |t: &pidvirt::audit::Target| format!("{}/{}@{}", t.host_pid, t.vpid, t.container);
    let mut target = r.target.as_ref().map(task).unwrap_or_else(|| "-".into());
    if let Some(a) = &r.also {
        target.push_str(&format!(" (host pid of {})", task(a)));
    }
    if let Some(t) = r.truth {
        target.push_str(&format!(" (truth {t})"));
    }
    format!(
        "{:>16} {:<18} {:<4} {:<16} {:>8}  {:<24} {:<28} {}",
        r.ts_ns, r.syscall, r.direction, r.verdict, r.value, r.container, caller, target
    )
}

fn print_stats(o: &mut String, v: &serde_json::Value) {
    let Some(groups) = v.as_object() else { return };
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
}
