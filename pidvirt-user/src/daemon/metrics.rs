//! `pidvirt run --metrics ADDR:PORT`: `/metrics` for Prometheus, encoded by prometheus-client
//! (OpenMetrics for a scraper that asks for it, as Prometheus does; the Prometheus text format
//! 0.0.4 otherwise) and served by axum on the daemon's runtime. Every value is read when it is
//! scraped, from the kernel's per-CPU counters and the daemon's own state, through what `stats`
//! reads (`queries::Counted`): no second bookkeeping, so a scrape never disagrees with
//! `pidvirt stats`.
//!
//! Label cardinality is bounded by the catalogue (syscalls x verdicts, hooks, maps, counters)
//! unless `--metrics-per-container` asks for per-container series, and those are capped.

use std::{
    collections::{BTreeSet, HashSet},
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::Ordering::Relaxed},
};

use axum::{
    Router,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use pidvirt_common::{
    audit::{LSM_HOOKS, NVERDICTS, SYSCALLS, Verdict},
    catalogue::map,
    counter, slots,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, prometheus_text, text},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge, info::Info},
    registry::{Registry, Unit},
};

use super::{
    App,
    queries::{Counted, slot_of},
};
use crate::{
    api::ApiError,
    containers::{Kind, Registry as Containers},
    kernel::{KernelMaps, Occupancy, SlotCounts},
};

/// What `--metrics` and `--metrics-per-container` asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsOptions {
    pub addr: SocketAddr,
    /// Per-container series for at most this many containers besides the host (None: no
    /// per-container series).
    pub per_container: Option<usize>,
}

/// The `container` label of every container without series of its own.
pub const OTHER: &str = "other";

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `/metrics` on `listener` until the daemon stops.
pub async fn serve(listener: tokio::net::TcpListener, app: Arc<App>, opts: MetricsOptions) {
    let mut registry = Registry::with_prefix("pidvirt");
    let per_container = opts.per_container.map(|max| PerContainer { max, admission: Mutex::default() });
    registry.register_collector(Box::new(Scraper { app, per_container }));
    let registry = Arc::new(registry);
    let router =
        Router::new().route("/metrics", get(move |headers: HeaderMap| scrape(registry.clone(), headers)));
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!("metrics server stopped: {e}");
    }
}

/// One scrape: the registry encoded on a blocking thread (it takes the maps lock and reads the
/// kernel's maps), in the format the scraper prefers.
async fn scrape(registry: Arc<Registry>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let encoded = tokio::task::spawn_blocking(move || {
        let mut body = String::new();
        let r = if openmetrics {
            text::encode(&mut body, &registry)
        } else {
            prometheus_text::encode(&mut body, &registry)
        };
        r.map(|()| body)
    })
    .await;
    let content_type = if openmetrics { OPENMETRICS } else { prometheus_text::CONTENT_TYPE };
    match encoded {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "the daemon's counters could not be read\n").into_response(),
    }
}

/// The collector: reads everything at scrape time.
struct Scraper {
    app: Arc<App>,
    per_container: Option<PerContainer>,
}

impl fmt::Debug for Scraper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scraper").finish_non_exhaustive()
    }
}

/// Which containers have series of their own. A container is admitted the first time a scrape
/// sees it, while fewer than `max` are; one seen while the cap was reached stays in `other` for
/// its whole life. So `other` only grows (its containers' counts, those of containers that ended,
/// and the crossings no per-container counter could take) and no series changes hands: counters
/// stay monotonic.
struct PerContainer {
    max: usize,
    admission: Mutex<Admission>,
}

#[derive(Default)]
struct Admission {
    /// Container numbers seen by a scrape (admitted or not), while they live.
    seen: HashSet<u32>,
    admitted: BTreeSet<u32>,
}

impl PerContainer {
    /// (container label, counts) for the host, the admitted containers and `other`.
    fn rows(&self, maps: &KernelMaps, reg: &Containers, counted: &Counted) -> Vec<(String, SlotCounts)> {
        let Ok(mut adm) = self.admission.lock() else { return Vec::new() };
        let live: HashSet<u32> = reg.all().map(|c| c.number).collect();
        adm.seen.retain(|n| live.contains(n));
        adm.admitted.retain(|n| live.contains(n));
        let mut rows = Vec::new();
        let mut other_slots = BTreeSet::new();
        for c in reg.all() {
            let slot = slot_of(maps, c);
            let host = matches!(c.kind, Kind::Host);
            // A container counted in the shared overflow slot cannot be told apart.
            let own_slot = slot != slots::OVERFLOW && c.id != OTHER;
            if adm.seen.insert(c.number) && !host && own_slot && adm.admitted.len() < self.max {
                adm.admitted.insert(c.number);
            }
            if host || adm.admitted.contains(&c.number) {
                rows.push((c.id.clone(), counted.slots.get(slot as usize).cloned().unwrap_or_default()));
            } else {
                other_slots.insert(slot);
            }
        }
        let mut other = counted.retired.clone();
        for slot in other_slots {
            if let Some(s) = counted.slots.get(slot as usize) {
                other.add(s);
            }
        }
        rows.push((OTHER.into(), other));
        rows
    }
}

/// Everything one scrape reports, read under the locks once.
struct Scrape {
    counted: Counted,
    occupancy: Vec<Occupancy>,
    /// Containers by kind name.
    kinds: Vec<(&'static str, u64)>,
    per_container: Vec<(String, SlotCounts)>,
    /// crate::loader::skipped_runs.
    skipped: std::collections::BTreeMap<String, u64>,
}

impl App {
    fn scrape(&self, per_container: Option<&PerContainer>) -> Result<Scrape, ApiError> {
        // Read first, under the maps lock alone: the whole task maps, while records are named.
        let occupancy = self.maps.lock().map_err(ApiError::internal)?.occupancy().to_vec();
        self.containers.view(|maps, reg| {
            let counted = Counted::read(maps, self.containers.retired());
            let kinds = Kind::NAMES
                .iter()
                .map(|k| (*k, reg.all().filter(|c| c.kind.name() == *k).count() as u64))
                .collect();
            let per_container = per_container.map(|p| p.rows(maps, reg, &counted)).unwrap_or_default();
            Scrape { counted, occupancy, kinds, per_container, skipped: crate::loader::skipped_runs() }
        })
    }
}

impl Collector for Scraper {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let s = self.app.scrape(self.per_container.as_ref()).map_err(|err| {
            tracing::warn!("metrics scrape failed: {}", err.message);
            fmt::Error
        })?;
        kernel_families(&mut e, &s)?;
        daemon_families(&mut e, &self.app, &s)?;
        if !s.per_container.is_empty() {
            per_container(&mut e, &s.per_container)?;
        }
        Ok(())
    }
}

/// What the kernel programs counted and hold.
fn kernel_families(e: &mut DescriptorEncoder, s: &Scrape) -> fmt::Result {
    let c = &s.counted;
    let crossing =
        |i: usize, v: Verdict| c.total.crossings.get(i * NVERDICTS + v as usize).copied().unwrap_or(0);
    counters(
        e,
        "crossings",
        "Pid numbers crossing a watched syscall (arguments and returns), by syscall and verdict.",
        SYSCALLS.iter().enumerate().flat_map(|(i, spec)| {
            Verdict::ALL.map(|v| ([("syscall", spec.name), ("verdict", v.name())], crossing(i, v)))
        }),
    )?;
    let global = |base: u32, i: usize| c.counters.get(base as usize + i).copied().unwrap_or(0);
    counters(
        e,
        "ringbuf_lost_events",
        "Events the kernel programs could not put in a ring buffer (it was full), by ring and reason.",
        counter::drop::NAMES.iter().enumerate().map(|(i, reason)| {
            ([("ring", map::EVENTS), ("reason", *reason)], global(counter::drop::BASE, i))
        }),
    )?;
    counters(
        e,
        "map_errors",
        "Failed map updates and kernel reads in the kernel programs, by map (none: not a map's) and reason.",
        counter::map_error::NAMES.iter().zip(counter::map_error::MAPS).enumerate().map(|(i, (reason, m))| {
            ([("map", m.unwrap_or("none")), ("reason", *reason)], global(counter::map_error::BASE, i))
        }),
    )?;
    counters(
        e,
        "program_runs_skipped",
        "Runs of pidvirt's programs the kernel skipped because a run of the same program was under way on the \
         CPU (recursion misses), by program; programs with none are left out.",
        s.skipped.iter().map(|(program, n)| ([("program", program.as_str())], *n)),
    )?;
    counters(
        e,
        "lifecycle_events",
        "Task lifecycle events seen by the kernel programs, by event.",
        counter::lifecycle::NAMES
            .iter()
            .enumerate()
            .map(|(i, event)| ([("event", *event)], global(counter::lifecycle::BASE, i))),
    )?;
    counters(
        e,
        "denied",
        "Actions the enforcer denied, by LSM hook.",
        LSM_HOOKS.iter().zip(&c.total.denied).map(|(h, n)| ([("hook", h.name)], *n)),
    )?;
    gauges(
        e,
        "map_entries",
        None,
        "Entries of the kernel maps kept per task, pid namespace and cgroup container.",
        s.occupancy.iter().map(|o| ([("map", o.map)], o.entries as f64)),
    )?;
    gauges(
        e,
        "map_capacity",
        None,
        "Capacity (max_entries) of the kernel maps kept per task, pid namespace and cgroup container.",
        s.occupancy.iter().map(|o| ([("map", o.map)], o.capacity as f64)),
    )?;
    // The front's and TASKS' (a tid in both, for a moment while the daemon seeds, counts twice).
    let tasks: u64 = s
        .occupancy
        .iter()
        .filter(|o| [map::TASK_FRONT, map::TASKS].contains(&o.map))
        .map(|o| o.entries)
        .sum();
    gauge(e, "tasks_tracked", None, "Tasks in the kernel's task map (its front and TASKS).", tasks as f64)
}

/// The daemon's own state: its containers, the audit stream, the seed, the build.
fn daemon_families(e: &mut DescriptorEncoder, app: &App, s: &Scrape) -> fmt::Result {
    counters(
        e,
        "anomalies_reported",
        "Audit records the daemon received from the kernel (the reported verdicts), by verdict.",
        Verdict::REPORTABLE.map(|v| ([("verdict", v.name())], app.audit.reported[v as usize].load(Relaxed))),
    )?;
    gauges(
        e,
        "containers",
        None,
        "Containers known to the daemon, by kind.",
        s.kinds.iter().map(|(kind, n)| ([("kind", *kind)], *n as f64)),
    )?;
    let audit = &app.audit;
    counter(
        e,
        "audit_log_records_written",
        "Audit records written to the audit log.",
        audit.written.load(Relaxed),
    )?;
    counter(
        e,
        "audit_log_write_errors",
        "Audit records the audit log failed to take.",
        audit.sink_errors.load(Relaxed),
    )?;
    counter(e, "audit_log_rotations", "Rotations of the audit log file.", audit.rotations.load(Relaxed))?;
    gauge(
        e,
        "last_event_timestamp",
        Some(&Unit::Seconds),
        "Wall-clock time of the newest audit record (0: none yet).",
        audit.last_record_unix_ns.load(Relaxed) as f64 / 1e9,
    )?;
    if let Some(seed) = app.seed.lock().ok().and_then(|s| s.clone()) {
        gauge(
            e,
            "seed_duration",
            Some(&Unit::Seconds),
            "How long the walk of /proc took when the daemon attached.",
            seed.elapsed.as_secs_f64(),
        )?;
    }
    let kernel = app.attachment.kernel_release.as_str();
    let build = Info::new([("version", env!("CARGO_PKG_VERSION")), ("kernel", kernel)]);
    let help = "The pidvirt version and the kernel it runs on.";
    build.encode(e.encode_descriptor("build", help, None, build.metric_type())?)
}

/// The per-container families: only nonzero series, for the containers admitted and `other`.
fn per_container(e: &mut DescriptorEncoder, rows: &[(String, SlotCounts)]) -> fmt::Result {
    counters(
        e,
        "container_crossings",
        "Crossings by container (the host, at most --metrics-per-container others, then `other`), syscall and verdict; nonzero series only.",
        rows.iter().flat_map(|(id, counts)| {
            SYSCALLS.iter().enumerate().flat_map(move |(i, spec)| {
                Verdict::ALL.into_iter().filter_map(move |v| {
                    let n = counts.crossings.get(i * NVERDICTS + v as usize).copied().unwrap_or(0);
                    (n > 0).then_some((
                        [("container", id.as_str()), ("syscall", spec.name), ("verdict", v.name())],
                        n,
                    ))
                })
            })
        }),
    )?;
    counters(
        e,
        "container_denied",
        "Actions the enforcer denied, by container and LSM hook; nonzero series only.",
        rows.iter().flat_map(|(id, counts)| {
            LSM_HOOKS
                .iter()
                .zip(&counts.denied)
                .filter(|(_, n)| **n > 0)
                .map(move |(h, n)| ([("container", id.as_str()), ("hook", h.name)], *n))
        }),
    )?;
    counters(
        e,
        "container_ringbuf_lost_events",
        "Anomalies of a container the ring buffer could not take.",
        rows.iter().map(|(id, counts)| ([("container", id.as_str())], counts.ringbuf_drops)),
    )
}

/// A family of one type, one series per label set.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    e: &mut DescriptorEncoder,
    (name, unit, help): (&str, Option<&Unit>, &str),
    metric_type: MetricType,
    series: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, unit, metric_type)?;
    for (labels, metric) in series {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counters<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let series = series.into_iter().map(|(l, n)| (l, ConstCounter::new(n)));
    family(e, (name, None, help), MetricType::Counter, series)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, n: u64) -> fmt::Result {
    ConstCounter::new(n).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauges<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    unit: Option<&Unit>,
    help: &str,
    series: impl IntoIterator<Item = (L, f64)>,
) -> fmt::Result {
    let series = series.into_iter().map(|(l, v)| (l, ConstGauge::new(v)));
    family(e, (name, unit, help), MetricType::Gauge, series)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, unit: Option<&Unit>, help: &str, v: f64) -> fmt::Result {
    ConstGauge::new(v).encode(e.encode_descriptor(name, help, unit, MetricType::Gauge)?)
}
