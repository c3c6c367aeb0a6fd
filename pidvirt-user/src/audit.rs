//! The audit stream: anomalies from the kernel's ring buffer, turned into JSON records (one
//! object a line) for `--audit-log` (rotated by size), kept in a bounded recent list for
//! `pidvirt audit`, and broadcast to `pidvirt audit --follow` clients.

use std::{
    collections::VecDeque,
    io::Write,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
    },
};

use bytes::{BufMut, BytesMut};
use jiff::Timestamp;
use pidvirt_common::audit::{
    AnomalyEvent, Direction, LSM_HOOKS, NVERDICTS, PartyInfo, SYSCALLS, Verdict, event_flags,
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::{
    api::{K8sInfo, RuntimeInfo},
    containers::Registry,
    files,
};

/// The caller of a crossing.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Caller {
    pub host_pid: u32,
    pub host_tid: u32,
    /// tgid / tid in the caller's own pid namespace.
    pub vpid: u32,
    pub vtid: u32,
    pub pidns: u32,
    pub comm: String,
}

/// A task a crossing names.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Target {
    pub host_pid: u32,
    pub host_tid: u32,
    /// tgid / tid in the target's own pid namespace.
    pub vpid: u32,
    pub vtid: u32,
    pub pidns: u32,
    pub container: String,
    /// What the target's container's runtime says about it (engine, name, image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeInfo>,
}

/// Where the number was read when it named `also`: a level above the caller's (0: the host),
/// that level's pid namespace, and the container of that namespace.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReadAt {
    pub level: u32,
    pub pidns: u32,
    pub container: String,
}

/// One audit record (one line of `--audit-log`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// CLOCK_MONOTONIC ns (the clock of task start times).
    pub ts_ns: u64,
    /// The same instant on the wall clock (RFC 3339, UTC); absent from logs of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Timestamp>,
    pub syscall: String,
    /// `in` for an argument, `out` for a returned value.
    pub direction: String,
    pub verdict: String,
    /// The number that crossed, in the caller's namespace.
    pub value: i64,
    /// The caller's container.
    pub container: String,
    /// What the caller's container's runtime says about it (engine, name, image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeInfo>,
    /// The caller's container's Kubernetes identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s: Option<K8sInfo>,
    pub caller: Caller,
    /// The task `value` names in the caller's namespace (what the kernel acts on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// For `collision` and `leak`: the task `value` names at an ancestor level of the caller's
    /// (the nearest level where it names one; its host pid when that level is the host's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub also: Option<Target>,
    /// With `also`, and for `foreign_procfs`: the level and namespace `value` was read in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_at: Option<ReadAt>,
    /// For `mismatch`: the value read from the task structures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truth: Option<i64>,
}

fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

fn target(p: &PartyInfo, reg: &Registry) -> Target {
    Target {
        host_pid: p.host_pid,
        host_tid: p.host_tid,
        vpid: p.vpid,
        vtid: p.vtid,
        pidns: p.pidns,
        container: reg.id_of(p.container),
        runtime: reg.meta_of(p.container).0.cloned(),
    }
}

/// Turns CLOCK_MONOTONIC instants (the records' `ts_ns`) into wall-clock ones, with the offset
/// between the two clocks read when it is made (once per batch of records: the wall clock may be
/// stepped meanwhile, the monotonic one never is).
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    offset_ns: i128,
}

impl WallClock {
    pub fn now() -> Self {
        let mut mono = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes one timespec through a pointer to a live one.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut mono) };
        let mono_ns = i128::from(mono.tv_sec) * 1_000_000_000 + i128::from(mono.tv_nsec);
        Self { offset_ns: Timestamp::now().as_nanosecond() - mono_ns }
    }

    /// The wall-clock time of CLOCK_MONOTONIC instant `mono_ns`.
    pub fn at(self, mono_ns: u64) -> Option<Timestamp> {
        Timestamp::from_nanosecond(i128::from(mono_ns) + self.offset_ns).ok()
    }
}

impl Record {
    /// Builds a record from a kernel event; `None` for a malformed one.
    pub fn from_event(ev: &AnomalyEvent, reg: &Registry, clock: WallClock) -> Option<Self> {
        let verdict = Verdict::from_u8(ev.verdict)?;
        // An LSM decision names its hook; a crossing, its syscall.
        let direction = Direction::from_u8(ev.direction)?;
        let syscall = match direction {
            Direction::In | Direction::Out => SYSCALLS.get(ev.syscall as usize)?.name,
            Direction::Lsm => LSM_HOOKS.get(ev.syscall as usize)?.name,
        };
        let mismatch = verdict == Verdict::Mismatch;
        let also = !mismatch && ev.flags & event_flags::HAS_ALSO != 0;
        let (runtime, k8s) = reg.meta_of(ev.caller.container);
        Some(Self {
            ts_ns: ev.ts_ns,
            time: clock.at(ev.ts_ns),
            syscall: syscall.into(),
            direction: direction.name().into(),
            verdict: verdict.name().into(),
            value: ev.value,
            container: reg.id_of(ev.caller.container),
            runtime: runtime.cloned(),
            k8s: k8s.cloned(),
            caller: Caller {
                host_pid: ev.caller.host_pid,
                host_tid: ev.caller.host_tid,
                vpid: ev.caller.vpid,
                vtid: ev.caller.vtid,
                pidns: ev.caller.pidns,
                comm: comm(&ev.comm),
            },
            target: (ev.flags & event_flags::HAS_TARGET != 0).then(|| target(&ev.target, reg)),
            also: also.then(|| target(&ev.also, reg)),
            read_at: (also || ev.flags & event_flags::HAS_READ_AT != 0).then(|| ReadAt {
                level: ev.also_level,
                pidns: ev.also_pidns,
                container: reg.id_of_pidns(ev.also_pidns),
            }),
            truth: mismatch.then_some(i64::from(ev.also.vpid)),
        })
    }
}

/// When the audit log is rotated: once it would grow beyond `max_bytes` (0: never), it becomes
/// `PATH.1` (and `PATH.1` `PATH.2`...), keeping `keep` copies; the oldest goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    pub max_bytes: u64,
    pub keep: u32,
}

/// Where records go.
pub enum Sink {
    Stdout(std::io::Stdout),
    File(LogFile),
}

impl Sink {
    /// `-` for standard output, else a file (rotated as `rotation` says).
    pub fn open(spec: &str, rotation: Rotation) -> std::io::Result<Self> {
        if spec == "-" {
            return Ok(Self::Stdout(std::io::stdout()));
        }
        LogFile::open(PathBuf::from(spec), rotation).map(Self::File)
    }

    /// Writes whole lines; returns how many times the log was rotated meanwhile.
    fn write_lines(&mut self, bytes: &[u8]) -> std::io::Result<u64> {
        match self {
            Self::Stdout(s) => s.lock().write_all(bytes).map(|()| 0),
            Self::File(f) => f.write_lines(bytes),
        }
    }
}

/// The audit log file: records are appended a batch at a time, and the file is rotated between
/// two lines, never inside one, so that every file holds whole records.
pub struct LogFile {
    path: PathBuf,
    file: std::fs::File,
    size: u64,
    rotation: Rotation,
}

impl LogFile {
    pub fn open(path: PathBuf, rotation: Rotation) -> std::io::Result<Self> {
        let file = files::create_private(&path, true)?;
        let size = file.metadata()?.len();
        Ok(Self { path, file, size, rotation })
    }

    /// `PATH.n`.
    fn copy(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        p.into()
    }

    /// Appends `bytes` (whole lines), rotating before a line that would take the file past
    /// `max_bytes` (a line longer than that gets a file of its own).
    fn write_lines(&mut self, mut bytes: &[u8]) -> std::io::Result<u64> {
        let max = self.rotation.max_bytes;
        let mut rotations = 0;
        while !bytes.is_empty() {
            let room = if max == 0 { u64::MAX } else { max.saturating_sub(self.size) };
            let mut take = lines_within(bytes, room);
            if take == 0 {
                if self.size > 0 {
                    self.rotate();
                    rotations += 1;
                    continue;
                }
                take = bytes.iter().position(|&b| b == b'\n').map_or(bytes.len(), |i| i + 1);
            }
            self.file.write_all(&bytes[..take])?;
            self.size += take as u64;
            bytes = &bytes[take..];
        }
        Ok(rotations)
    }

    /// PATH.(keep-1) -> PATH.keep, ..., PATH -> PATH.1, and a new PATH. A failure is logged and
    /// the current file kept: records go on, past the size, rather than being lost.
    fn rotate(&mut self) {
        let moved = (|| {
            let keep = self.rotation.keep;
            if keep == 0 {
                return std::fs::remove_file(&self.path);
            }
            // The copies there are (1, 2, ... up to the first missing), each one up, the
            // oldest removed past `keep`: a syscall per copy, not per copy allowed.
            let mut copies = 0;
            while copies < keep && self.copy(copies + 1).exists() {
                copies += 1;
            }
            for n in (1..=copies).rev() {
                if n == keep {
                    std::fs::remove_file(self.copy(n))?;
                } else {
                    std::fs::rename(self.copy(n), self.copy(n + 1))?;
                }
            }
            std::fs::rename(&self.path, self.copy(1))
        })();
        match moved.and_then(|()| files::create_private(&self.path, true)) {
            Ok(file) => {
                self.file = file;
                self.size = 0;
            }
            Err(e) => {
                tracing::warn!("audit log {} not rotated: {e}", self.path.display());
                // Not again before another max_bytes.
                self.size = 0;
            }
        }
    }
}

/// The length of the longest run of whole lines at the start of `bytes` that fits in `room`.
fn lines_within(bytes: &[u8], room: u64) -> usize {
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    if bytes.len() <= room {
        return bytes.len();
    }
    bytes[..room].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
}

/// Records kept for `pidvirt audit` (without --follow).
pub const RECENT: usize = 10_000;

/// The audit stream's state.
pub struct Hub {
    recent: Mutex<VecDeque<Arc<Record>>>,
    live: broadcast::Sender<Arc<Record>>,
    sink: Mutex<Option<Sink>>,
    /// Records written, records the sink failed to take, and rotations of the log.
    pub written: AtomicU64,
    pub sink_errors: AtomicU64,
    pub rotations: AtomicU64,
    /// Records published, by verdict id.
    pub reported: [AtomicU64; NVERDICTS],
    /// Wall-clock time (Unix ns) of the newest record published (0: none yet).
    pub last_record_unix_ns: AtomicI64,
}

impl Hub {
    pub fn new(sink: Option<Sink>) -> Self {
        Self {
            recent: Mutex::new(VecDeque::with_capacity(1024)),
            live: broadcast::channel(65_536).0,
            sink: Mutex::new(sink),
            written: 0.into(),
            sink_errors: 0.into(),
            rotations: 0.into(),
            reported: std::array::from_fn(|_| AtomicU64::new(0)),
            last_record_unix_ns: 0.into(),
        }
    }

    /// Takes a batch of records: one write to the sink, then the recent list and live clients.
    pub fn publish(&self, batch: Vec<Record>) {
        if batch.is_empty() {
            return;
        }
        let mut buf = BytesMut::with_capacity(batch.len() * 400);
        for r in &batch {
            let mut w = (&mut buf).writer();
            if serde_json::to_writer(&mut w, r).is_ok() {
                buf.put_u8(b'\n');
            }
            if let Some(v) = Verdict::by_name(&r.verdict) {
                self.reported[v as usize].fetch_add(1, Relaxed);
            }
        }
        if let Some(t) = batch.iter().filter_map(|r| r.time).max() {
            self.last_record_unix_ns.fetch_max(i64::try_from(t.as_nanosecond()).unwrap_or(i64::MAX), Relaxed);
        }
        if let Ok(mut sink) = self.sink.lock()
            && let Some(sink) = sink.as_mut()
        {
            match sink.write_lines(&buf) {
                Ok(rotations) => {
                    self.written.fetch_add(batch.len() as u64, Relaxed);
                    self.rotations.fetch_add(rotations, Relaxed);
                }
                Err(e) => {
                    tracing::warn!("audit log write failed: {e}");
                    self.sink_errors.fetch_add(batch.len() as u64, Relaxed);
                }
            }
        }
        let batch: Vec<Arc<Record>> = batch.into_iter().map(Arc::new).collect();
        if let Ok(mut recent) = self.recent.lock() {
            for r in &batch {
                if recent.len() == RECENT {
                    recent.pop_front();
                }
                recent.push_back(r.clone());
            }
        }
        if self.live.receiver_count() > 0 {
            for r in batch {
                let _ = self.live.send(r);
            }
        }
    }

    /// Recent records matching `filter`, oldest first, at most `limit` (the newest ones).
    pub fn recent(&self, filter: &Filter, limit: usize) -> Vec<Record> {
        let recent = self.recent.lock().map(|r| r.clone()).unwrap_or_default();
        let mut out: Vec<Record> =
            recent.iter().rev().filter(|r| filter.accepts(r)).take(limit).map(|r| (**r).clone()).collect();
        out.reverse();
        out
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Record>> {
        self.live.subscribe()
    }
}

/// How `--container` picks records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerMatch {
    /// The daemon resolved the name: records of exactly this id.
    Id(String),
    /// A saved log, with no registry to ask: an id, a unique-looking id prefix (at least
    /// `MIN_PREFIX` characters), a runtime name, or a Kubernetes pod name (every container of
    /// the pod) or `pod/container`.
    Name(String),
}

impl ContainerMatch {
    fn accepts(&self, r: &Record) -> bool {
        match self {
            Self::Id(id) => &r.container == id,
            Self::Name(n) => {
                &r.container == n
                    || (n.len() >= crate::containers::registry::MIN_PREFIX
                        && r.container.starts_with(n.as_str()))
                    || r.runtime.as_ref().is_some_and(|rt| &rt.name == n)
                    || r.k8s.as_ref().is_some_and(|k| &k.pod == n || &k.name() == n)
            }
        }
    }
}

/// Which records a client wants.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub container: Option<ContainerMatch>,
    pub verdict: Option<String>,
    /// A syscall, or for denials an LSM hook.
    pub syscall: Option<String>,
    /// Records at or after this time (a record without `time` is not).
    pub since: Option<Timestamp>,
}

/// A filter naming something that no record can have.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("unknown verdict `{0}` (one of {names})", names = Verdict::ALL.map(Verdict::name).join(", "))]
    Verdict(String),
    #[error("unknown syscall `{0}` (a watched syscall or an LSM hook of the enforcer)")]
    Syscall(String),
}

impl Filter {
    /// Checks the verdict and syscall names against the catalogue.
    pub fn check(&self) -> Result<(), FilterError> {
        if let Some(v) = &self.verdict
            && Verdict::by_name(v).is_none()
        {
            return Err(FilterError::Verdict(v.clone()));
        }
        if let Some(s) = &self.syscall
            && !SYSCALLS.iter().map(|s| s.name).chain(LSM_HOOKS.iter().map(|h| h.name)).any(|n| n == s)
        {
            return Err(FilterError::Syscall(s.clone()));
        }
        Ok(())
    }

    pub fn accepts(&self, r: &Record) -> bool {
        self.container.as_ref().is_none_or(|c| c.accepts(r))
            && self.verdict.as_ref().is_none_or(|v| &r.verdict == v)
            && self.syscall.as_ref().is_none_or(|s| &r.syscall == s)
            && self.since.is_none_or(|since| r.time.is_some_and(|t| t >= since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pidvirt_common::{PidnsInfo, audit::sys, event_kind, pidns_source};

    /// Monotonic ns 0 is 2026-01-01T00:00:00Z.
    const CLOCK: WallClock = WallClock { offset_ns: 1_767_225_600_000_000_000 };

    fn registry() -> Registry {
        let mut r = Registry::new(4026531836);
        r.note_pidns(
            4026532300,
            &PidnsInfo::from_chain(&[4026531836, 4026532300], 1, 7, pidns_source::KERNEL, 1000),
            None,
        );
        r
    }

    fn event(verdict: Verdict, flags: u32) -> AnomalyEvent {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"kill");
        AnomalyEvent {
            kind: event_kind::ANOMALY,
            syscall: sys::KILL,
            direction: Direction::In as u8,
            verdict: verdict as u8,
            value: 26922,
            ts_ns: 99,
            caller: PartyInfo {
                host_pid: 26919,
                host_tid: 26919,
                vpid: 1,
                vtid: 1,
                pidns: 4026532300,
                container: 4026532300,
            },
            target: PartyInfo {
                host_pid: 500,
                host_tid: 500,
                vpid: 5,
                vtid: 5,
                pidns: 4026532300,
                container: 4026532300,
            },
            also: PartyInfo {
                host_pid: 26922,
                host_tid: 26922,
                vpid: 4,
                vtid: 4,
                pidns: 4026532300,
                container: 4026532300,
            },
            flags,
            also_level: 0,
            also_pidns: 4026531836,
            pad: 0,
            comm,
        }
    }

    #[test]
    fn a_collision_names_both_tasks() {
        let r = Record::from_event(
            &event(Verdict::Collision, event_flags::HAS_TARGET | event_flags::HAS_ALSO),
            &registry(),
            CLOCK,
        )
        .unwrap();
        assert_eq!(
            (r.syscall.as_str(), r.direction.as_str(), r.verdict.as_str()),
            ("kill", "in", "collision")
        );
        assert_eq!(r.container, "pidns-4026532300");
        assert_eq!(r.caller.comm, "kill");
        assert_eq!(r.target.as_ref().unwrap().host_pid, 500);
        assert_eq!(r.also.as_ref().unwrap().host_pid, 26922);
        assert_eq!(r.read_at, Some(ReadAt { level: 0, pidns: 4026531836, container: "host".into() }));
        assert_eq!(r.truth, None);
        let json = serde_json::to_value(&r).unwrap();
        for key in
            ["ts_ns", "syscall", "direction", "verdict", "value", "container", "caller", "target", "also"]
        {
            assert!(json.get(key).is_some(), "{key} missing from {json}");
        }
    }

    #[test]
    fn a_leak_has_no_target_and_a_mismatch_carries_the_truth() {
        let r = Record::from_event(&event(Verdict::Leak, event_flags::HAS_ALSO), &registry(), CLOCK).unwrap();
        assert!(r.target.is_none());
        assert_eq!(r.also.unwrap().host_pid, 26922);
        let r = Record::from_event(&event(Verdict::Mismatch, 0), &registry(), CLOCK).unwrap();
        assert_eq!(r.truth, Some(4));
        assert!(r.also.is_none());
        let mut bad = event(Verdict::Leak, 0);
        bad.verdict = 200;
        assert!(Record::from_event(&bad, &registry(), CLOCK).is_none());
        bad.verdict = 3;
        bad.syscall = 999;
        assert!(Record::from_event(&bad, &registry(), CLOCK).is_none());
    }

    #[test]
    fn a_denial_names_its_lsm_hook() {
        let mut ev = event(Verdict::Denied, event_flags::HAS_TARGET);
        ev.direction = Direction::Lsm as u8;
        ev.syscall = 0;
        let r = Record::from_event(&ev, &registry(), CLOCK).unwrap();
        assert_eq!((r.syscall.as_str(), r.direction.as_str()), ("task_kill", "lsm"));
        ev.syscall = LSM_HOOKS.len() as u16;
        assert!(Record::from_event(&ev, &registry(), CLOCK).is_none());
        ev.syscall = 0;
        ev.direction = 7;
        assert!(Record::from_event(&ev, &registry(), CLOCK).is_none());
    }

    #[test]
    fn hub_keeps_recent_and_filters() {
        let hub = Hub::new(None);
        let reg = registry();
        let leak = Record::from_event(&event(Verdict::Leak, 0), &reg, CLOCK).unwrap();
        let unknown = Record::from_event(&event(Verdict::Unknown, 0), &reg, CLOCK).unwrap();
        hub.publish(vec![leak.clone(), unknown.clone(), leak.clone()]);
        let all = hub.recent(&Filter::default(), 100);
        assert_eq!(all.len(), 3);
        let leaks = hub.recent(&Filter { verdict: Some("leak".into()), ..Default::default() }, 100);
        assert_eq!(leaks.len(), 2);
        let none = hub.recent(
            &Filter { container: Some(ContainerMatch::Id("host".into())), ..Default::default() },
            100,
        );
        assert!(none.is_empty());
        assert_eq!(hub.recent(&Filter::default(), 1), vec![leak]);
    }

    #[test]
    fn records_carry_the_wall_clock_time() {
        let r = Record::from_event(&event(Verdict::Leak, 0), &registry(), CLOCK).unwrap();
        assert_eq!(r.time.unwrap().to_string(), "2026-01-01T00:00:00.000000099Z");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["time"], "2026-01-01T00:00:00.000000099Z");
        // Logs of older versions have no `time`.
        let mut old = json.clone();
        old.as_object_mut().unwrap().remove("time");
        assert_eq!(serde_json::from_value::<Record>(old).unwrap().time, None);
        let now = WallClock::now();
        assert!(now.at(0).unwrap() < Timestamp::now());
    }

    #[test]
    fn filters_take_syscalls_times_and_names() {
        let reg = registry();
        let leak = Record::from_event(&event(Verdict::Leak, 0), &reg, CLOCK).unwrap();
        let at = |s: &str| Some(s.parse::<Timestamp>().unwrap());
        let f = |f: Filter| f.accepts(&leak);
        assert!(f(Filter { syscall: Some("kill".into()), ..Default::default() }));
        assert!(!f(Filter { syscall: Some("tkill".into()), ..Default::default() }));
        assert!(f(Filter { since: at("2026-01-01T00:00:00Z"), ..Default::default() }));
        assert!(!f(Filter { since: at("2026-01-01T00:00:01Z"), ..Default::default() }));
        let name = |n: &str| Filter { container: Some(ContainerMatch::Name(n.into())), ..Default::default() };
        assert!(f(name("pidns-4026532300")) && f(name("pidns-40")));
        assert!(!f(name("pid")), "a prefix shorter than MIN_PREFIX");
        assert!(!f(Filter { container: Some(ContainerMatch::Id("pidns-40".into())), ..Default::default() }));
        let mut pod = leak.clone();
        pod.k8s = Some(K8sInfo { pod: "web-0".into(), container: "app".into(), ..K8sInfo::default() });
        let p = |n: &str| name(n).accepts(&pod);
        assert!(p("web-0") && p("web-0/app") && !p("web-0/POD") && !p("app"));
        let mut old = leak.clone();
        old.time = None;
        assert!(!Filter { since: at("2000-01-01T00:00:00Z"), ..Default::default() }.accepts(&old));
        assert_eq!(
            Filter { verdict: Some("nope".into()), ..Default::default() }.check(),
            Err(FilterError::Verdict("nope".into()))
        );
        assert_eq!(
            Filter { syscall: Some("pread64".into()), ..Default::default() }.check(),
            Err(FilterError::Syscall("pread64".into()))
        );
        assert!(Filter { syscall: Some("task_kill".into()), ..Default::default() }.check().is_ok());
    }

    #[test]
    fn lines_are_never_split_by_the_size_limit() {
        assert_eq!(lines_within(b"ab\ncd\n", 100), 6);
        assert_eq!(lines_within(b"ab\ncd\n", 5), 3);
        assert_eq!(lines_within(b"ab\ncd\n", 2), 0);
    }

    #[test]
    fn the_log_rotates_between_lines_keeping_its_copies_private() {
        use std::{os::unix::fs::PermissionsExt as _, path::Path};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/audit.jsonl");
        let mut log = LogFile::open(path.clone(), Rotation { max_bytes: 10, keep: 2 }).unwrap();
        // 4-byte lines: two fit in 10 bytes, the third rotates.
        assert_eq!(log.write_lines(b"aaa\nbbb\nccc\n").unwrap(), 1);
        assert_eq!(log.write_lines(b"ddd\neee\n").unwrap(), 1);
        assert_eq!(log.write_lines(b"fff\nggg\nhhh\n").unwrap(), 1);
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(&path), "ggg\nhhh\n");
        assert_eq!(read(&log.copy(1)), "eee\nfff\n");
        assert_eq!(read(&log.copy(2)), "ccc\nddd\n");
        assert!(!log.copy(3).exists(), "only `keep` copies");
        for p in [path.clone(), log.copy(1), log.copy(2)] {
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600, "{}", p.display());
        }
        let mode = std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // A line longer than the limit gets a file of its own; 0 never rotates.
        assert_eq!(log.write_lines(b"0123456789abc\n").unwrap(), 1);
        assert_eq!(read(&path), "0123456789abc\n");
        let mut unbounded = LogFile::open(dir.path().join("u"), Rotation { max_bytes: 0, keep: 1 }).unwrap();
        assert_eq!(unbounded.write_lines(&[b'x'; 100]).unwrap(), 0);
    }
}
