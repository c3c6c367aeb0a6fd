//! `pidvirt run`: attach to the running host, seed, and wire the container service, the event
//! consumer and the control socket together. Nothing else imports this module: it is the top.

mod events;
mod metrics;
mod queries;

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use pidvirt_common::{PidnsInfo, pidns_source};
use serde_json::value::RawValue;
use tokio::signal::unix::SignalKind;

pub use self::metrics::MetricsOptions;
use crate::{
    api::{ApiError, AuditQuery, ErrorCode, Request},
    audit::{ContainerMatch, Filter, Hub, Rotation, Sink},
    containers::{Containers, Registration, Source, parse_mode, state_file::Target},
    kernel::KernelMaps,
    loader::{self, LoadOptions},
    procscan, runtimes,
    seed::{self, SeedReport},
    server::{self, Follow, Handler},
};

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub socket: PathBuf,
    /// Where registrations are kept across restarts (None: not kept).
    pub state_file: Option<PathBuf>,
    /// `-` for standard output.
    pub audit_log: Option<String>,
    /// When the audit log file is rotated.
    pub audit_rotation: Rotation,
    /// Where `/metrics` is served (None: it is not).
    pub metrics: Option<MetricsOptions>,
    pub load: LoadOptions,
    /// The container runtimes to ask for names.
    pub runtimes: Vec<runtimes::Endpoint>,
}

/// What `status` says about how the daemon attached (fixed once it runs).
struct Attachment {
    attached: Vec<(String, String)>,
    /// How the syscall programs are attached (fentry or tracepoints), and why.
    syscalls: loader::Attached,
    /// Whether signalfd reads are judged, and why not.
    signalfd: loader::Availability,
    /// How the programs read pids above level 0 (loader::task_reads).
    task_reads: &'static str,
    /// The programs are pinned (they outlive the daemon); `adopted`: pinned by a previous one.
    pinned: bool,
    adopted: bool,
    started: Instant,
    kernel_release: String,
    /// Where `/metrics` is served.
    metrics: Option<SocketAddr>,
}

/// The running daemon: what the request handlers and the event consumer share.
pub struct App {
    maps: Arc<Mutex<KernelMaps>>,
    containers: Containers,
    audit: Hub,
    attachment: Attachment,
    /// How the /proc walk went (None while it runs).
    seed: Mutex<Option<SeedReport>>,
    /// Which container runtimes answer.
    runtimes: runtimes::HealthBook,
    /// Notified to stop the daemon (the `shutdown` request).
    shutdown: tokio::sync::Notify,
    /// The loaded object (None when pinned programs were adopted): `ps` runs its `task_comms`
    /// iterator; taken at the end to detach.
    programs: Mutex<Option<aya::Ebpf>>,
}

/// How often containers whose namespace or cgroup is gone are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(3);

/// The audit log and the metrics listener, opened before anything is attached: a file that
/// cannot be written or a port in use is an error at once.
async fn open_outputs(opts: &RunOptions) -> anyhow::Result<(Option<Sink>, Option<tokio::net::TcpListener>)> {
    let sink = match &opts.audit_log {
        Some(spec) => {
            Some(Sink::open(spec, opts.audit_rotation).with_context(|| format!("open audit log {spec}"))?)
        }
        None => None,
    };
    let metrics_listener = match &opts.metrics {
        Some(m) => Some(
            tokio::net::TcpListener::bind(m.addr)
                .await
                .with_context(|| format!("metrics listener on {}", m.addr))?,
        ),
        None => None,
    };
    Ok((sink, metrics_listener))
}

pub async fn run(mut opts: RunOptions) -> anyhow::Result<()> {
    loader::require_root()?;
    crate::kernel::program_object()?;
    let (sink, metrics_listener) = open_outputs(&opts).await?;
    let host_pidns = procscan::own_pidns_is_init().map_err(anyhow::Error::msg)?;
    opts.load.host_pidns = host_pidns;
    let tick_ns = procscan::tick_ns();
    let t0 = Instant::now();
    let mut offsets = loader::resolve_offsets(tick_ns)?;
    if opts.load.probe_reads {
        offsets.pid_numbers_flexible = 0;
    }
    tracing::info!("offsets from BTF and tracefs in {:.0} ms", t0.elapsed().as_secs_f64() * 1000.0);
    tracing::debug!(?offsets, "kernel offsets from BTF");
    // Attach first, then walk /proc: a process born in between is seen by the fork program.
    let loader::Loaded {
        ebpf,
        mut maps,
        events,
        attached,
        iterator,
        syscalls,
        enforcement,
        signalfd,
        adopted,
    } = loader::load_and_attach(offsets, &opts.load)?;
    tracing::info!(mode = syscalls.mode, "syscall programs attached: {}", syscalls.reason);
    for (prog, hook) in &attached {
        tracing::info!("attached {prog} to {hook}");
    }
    maps.seed_pidns(host_pidns, PidnsInfo::from_chain(&[host_pidns], 0, 1, pidns_source::SEED, 0));
    // The host's procfs before anyone is judged; the sweep adds every namespace's init's.
    if let Err(e) = maps.set_procfs(&crate::containers::procfs::procfs_map([])) {
        tracing::warn!("PROCFS map not set: {e}");
    }
    let maps = Arc::new(Mutex::new(maps));
    let app = Arc::new(App {
        containers: Containers::new(maps.clone(), host_pidns, opts.state_file.clone(), enforcement),
        maps,
        audit: Hub::new(sink),
        attachment: Attachment {
            attached,
            syscalls,
            signalfd,
            task_reads: if adopted {
                "as loaded by the daemon that pinned the programs"
            } else {
                loader::task_reads(&offsets)
            },
            pinned: opts.load.pin,
            adopted,
            started: Instant::now(),
            kernel_release: procscan::kernel_release(),
            metrics: metrics_listener.as_ref().and_then(|l| l.local_addr().ok()),
        },
        seed: Mutex::new(None),
        runtimes: runtimes::HealthBook::default(),
        shutdown: tokio::sync::Notify::new(),
        programs: Mutex::new(ebpf),
    });
    // Adopted maps are current (the pinned programs kept them): the walk only checks them.
    let complete = iterator.is_ok() || adopted;
    let seeding = walk_proc(&app, tick_ns, iterator, complete).await?;
    app.containers.restore();
    let sweeper = tokio::spawn(sweep(app.clone()));
    // The runtimes are asked once the namespaces that exist are known (attach, then scan, then
    // reconcile): their sync names the containers already running.
    let namer = tokio::spawn(name_from_runtimes(app.clone(), opts.runtimes.clone()));

    let listener = server::bind(&opts.socket)?;
    tracing::info!("serving {}", opts.socket.display());
    let server = tokio::spawn(server::serve(listener, app.clone()));
    let events = tokio::spawn(events::consume(events, app.clone()));
    let metrics = match (metrics_listener, opts.metrics) {
        (Some(listener), Some(m)) => {
            tracing::info!("serving metrics on http://{}/metrics", app.attachment.metrics.unwrap_or(m.addr));
            Some(tokio::spawn(metrics::serve(listener, app.clone(), m)))
        }
        _ => None,
    };
    let ready = tokio::spawn(notify_ready(app.clone(), seeding, opts.socket.clone()));

    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let pinned = app.attachment.pinned;
    let stopping = if pinned { "stopping; the pinned programs stay" } else { "detaching" };
    tokio::select! {
        r = tokio::signal::ctrl_c() => { r?; tracing::info!("SIGINT: {stopping}"); }
        _ = term.recv() => tracing::info!("SIGTERM: {stopping}"),
        () = app.shutdown.notified() => tracing::info!("shutdown requested: {stopping}"),
        r = events => {
            r.context("event task")??;
        }
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    server.abort();
    sweeper.abort();
    namer.abort();
    ready.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    let _ = std::fs::remove_file(&opts.socket);
    // Closes every link, the lifecycle programs' last: the programs are detached unless pinned.
    app.detach();
    tracing::info!("{}", if pinned { "stopped (programs pinned)" } else { "detached" });
    Ok(())
}

/// Tells the service manager (systemd's `Type=notify`, where NOTIFY_SOCKET is set) that the
/// daemon is ready once the socket is served and the seed is done: from then on every task of
/// the host is known, so what a unit ordered after this one starts is judged from its first call.
async fn notify_ready(app: Arc<App>, seeding: Option<tokio::task::JoinHandle<()>>, socket: PathBuf) {
    if let Some(seeding) = seeding {
        let _ = seeding.await;
    }
    let seed = app.seed.lock().ok().and_then(|s| s.clone()).unwrap_or_default();
    let status = format!(
        "attached; {} tasks seeded from /proc ({} already known); serving {}",
        seed.inserted,
        seed.already_known,
        socket.display()
    );
    notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&status)]);
}

/// One message to the service manager (nothing without NOTIFY_SOCKET).
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("could not notify the service manager: {e}");
    }
}

/// The /proc walk. When the task iterator already recorded every existing task (`complete`:
/// exactly, as the fork program would), the walk only checks it and seeds what it missed: it
/// runs while the daemon serves (its handle is returned). Without the iterator, /proc is the
/// seed: it completes first.
async fn walk_proc(
    app: &Arc<App>,
    tick_ns: u32,
    iterator: Result<(), String>,
    complete: bool,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let walk = {
        let app = app.clone();
        move || {
            let report = seed::seed(&app.maps, tick_ns, &iterator);
            tracing::info!(
                scanned = report.scanned,
                inserted = report.inserted,
                already_known = report.already_known,
                mismatched = report.mismatched,
                iterator = report.iterator.as_str(),
                died_during_walk = report.died_during_walk,
                errors = report.errors,
                "seeded from /proc in {:.1} ms",
                report.elapsed.as_secs_f64() * 1000.0
            );
            if let Ok(mut seed) = app.seed.lock() {
                *seed = Some(report);
            }
        }
    };
    if complete {
        Ok(Some(tokio::task::spawn_blocking(walk)))
    } else {
        tokio::task::spawn_blocking(walk).await?;
        Ok(None)
    }
}

/// Follows the runtimes' news and hands it to the container service, forever.
async fn name_from_runtimes(app: Arc<App>, endpoints: Vec<runtimes::Endpoint>) {
    let mut updates = runtimes::watch(endpoints, &app.runtimes);
    while let Some(update) = updates.recv().await {
        let app = app.clone();
        let _ = tokio::task::spawn_blocking(move || app.containers.runtime_update(update)).await;
    }
}

/// Retires ended containers every SWEEP_EVERY, forever.
async fn sweep(app: Arc<App>) {
    let mut suspects = HashSet::new();
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        let app = app.clone();
        let mut held = std::mem::take(&mut suspects);
        suspects = tokio::task::spawn_blocking(move || {
            app.containers.sweep(&mut held);
            held
        })
        .await
        .unwrap_or_default();
    }
}

/// An answer serialized at once (a `ps` of a big host is megabytes: no JSON tree in between).
fn to_json(v: impl serde::Serialize) -> Result<Box<RawValue>, ApiError> {
    serde_json::value::to_raw_value(&v).map_err(ApiError::internal)
}

impl Handler for App {
    fn handle(&self, req: Request) -> Result<Box<RawValue>, ApiError> {
        match req {
            Request::Ps { container } => to_json(self.ps(container.as_deref())?),
            Request::Containers => to_json(self.containers()?),
            Request::Container { container } => to_json(self.container(&container)?),
            Request::Translate { container, vpid, pid } => to_json(self.translate(&container, vpid, pid)?),
            Request::Stats { container } => self.stats(container.as_deref()),
            Request::Register { id, pid, cgroup, pidns, labels, by, mode } => {
                let target = match (pid, cgroup, pidns) {
                    (Some(p), None, None) => Target::Pid(p),
                    (None, Some(c), None) => Target::Cgroup(c),
                    (None, None, Some(n)) => Target::Pidns(n),
                    _ => {
                        return Err(ApiError::new(
                            ErrorCode::BadRequest,
                            "register needs exactly one of `pid`, `cgroup`, `pidns`",
                        ));
                    }
                };
                let mode = mode.as_deref().map(parse_mode).transpose()?;
                let by = match by.as_deref() {
                    None => Source::Api,
                    Some(by) => Source::registration(by).ok_or_else(|| {
                        ApiError::new(ErrorCode::BadRequest, format!("`by` must be api or oci, not `{by}`"))
                    })?,
                };
                let c = self.containers.register(Registration { id, target, labels, by, mode })?;
                to_json(c.row(0, &std::collections::HashMap::new()))
            }
            Request::Unregister { id } => {
                let c = self.containers.unregister(&id)?;
                to_json(serde_json::json!({ "id": c.id }))
            }
            Request::Policy { id, mode } => {
                let c = self.containers.set_policy(&id, parse_mode(&mode)?)?;
                to_json(c.row(0, &std::collections::HashMap::new()))
            }
            // The server calls `shutdown` once this answer is sent.
            Request::Shutdown => {
                to_json(serde_json::json!({ "stopping": true, "pinned": self.attachment.pinned }))
            }
            Request::Audit { container, verdict, syscall, since, limit, .. } => {
                let filter = self.audit_filter(AuditQuery { container, verdict, syscall, since })?;
                to_json(self.audit.recent(&filter, limit.unwrap_or(1000)))
            }
            Request::Status => to_json(self.status()),
        }
    }

    fn follow(&self, query: AuditQuery) -> Result<Follow, ApiError> {
        let filter = self.audit_filter(query)?;
        Ok(Follow { filter, records: self.audit.subscribe() })
    }

    fn shutdown(&self) {
        self.shutdown.notify_one();
    }
}

impl App {
    /// Detaches the programs this daemon loaded (nothing when it adopted pinned ones).
    fn detach(&self) {
        let ebpf = self.programs.lock().ok().and_then(|mut p| p.take());
        if let Some(ebpf) = ebpf {
            loader::detach(ebpf);
        }
    }

    /// The filter of an audit request, checked: a known container, verdict and syscall, a time.
    fn audit_filter(&self, q: AuditQuery) -> Result<Filter, ApiError> {
        let bad = |msg: String| ApiError::new(ErrorCode::BadRequest, msg);
        let since = q
            .since
            .map(|t| t.parse().map_err(|e| bad(format!("`since` must be an RFC 3339 time, not `{t}`: {e}"))))
            .transpose()?;
        let container = match q.container {
            Some(name) => Some(ContainerMatch::Id(self.containers.find(&name)?.id)),
            None => None,
        };
        let filter = Filter { container, verdict: q.verdict, syscall: q.syscall, since };
        filter.check().map_err(|e| bad(e.to_string()))?;
        Ok(filter)
    }
}
