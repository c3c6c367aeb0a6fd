//! The audit stream: anomalies from the kernel's ring buffer, turned into JSON records (one
//! object a line) for `--audit-log`, kept in a bounded recent list for `pidvirt audit`, and
//! broadcast to `pidvirt audit --follow` clients.

use std::{
    collections::VecDeque,
    io::Write,
    sync::{Arc, Mutex},
};

use bytes::{BufMut, BytesMut};
use pidvirt_common::audit::{AnomalyEvent, Direction, LSM_HOOKS, PartyInfo, SYSCALLS, Verdict, event_flags};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::{
    api::{K8sInfo, RuntimeInfo},
    containers::Registry,
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
    /// With `also`: the level and namespace `value` was read in.
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

impl Record {
    /// Builds a record from a kernel event; `None` for a malformed one.
    pub fn from_event(ev: &AnomalyEvent, reg: &Registry) -> Option<Self> {
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
            read_at: also.then(|| ReadAt {
                level: ev.also_level,
                pidns: ev.also_pidns,
                container: reg.id_of_pidns(ev.also_pidns),
            }),
            truth: mismatch.then_some(i64::from(ev.also.vpid)),
        })
    }
}

/// Where records go.
pub enum Sink {
    Stdout(std::io::Stdout),
    File(std::fs::File),
}

impl Sink {
    pub fn open(spec: &str) -> std::io::Result<Self> {
        if spec == "-" {
            return Ok(Self::Stdout(std::io::stdout()));
        }
        let f = std::fs::OpenOptions::new().create(true).append(true).open(spec)?;
        Ok(Self::File(f))
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Stdout(s) => s.lock().write_all(bytes),
            Self::File(f) => f.write_all(bytes),
        }
    }
}

/// Records kept for `pidvirt audit` (without --follow).
pub const RECENT: usize = 10_000;

/// The audit stream's state.
pub struct Hub {
    recent: Mutex<VecDeque<Arc<Record>>>,
    live: broadcast::Sender<Arc<Record>>,
    sink: Mutex<Option<Sink>>,
    /// Records written, and records the sink failed to take.
    pub written: std::sync::atomic::AtomicU64,
    pub sink_errors: std::sync::atomic::AtomicU64,
}

impl Hub {
    pub fn new(sink: Option<Sink>) -> Self {
        Self {
            recent: Mutex::new(VecDeque::with_capacity(1024)),
            live: broadcast::channel(65_536).0,
            sink: Mutex::new(sink),
            written: 0.into(),
            sink_errors: 0.into(),
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
        }
        if let Ok(mut sink) = self.sink.lock()
            && let Some(sink) = sink.as_mut()
        {
            use std::sync::atomic::Ordering::Relaxed;
            match sink.write_all(&buf) {
                Ok(()) => self.written.fetch_add(batch.len() as u64, Relaxed),
                Err(e) => {
                    tracing::warn!("audit log write failed: {e}");
                    self.sink_errors.fetch_add(batch.len() as u64, Relaxed)
                }
            };
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

/// Which records a client wants.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub container: Option<String>,
    pub verdict: Option<String>,
}

impl Filter {
    pub fn accepts(&self, r: &Record) -> bool {
        self.container.as_ref().is_none_or(|c| &r.container == c)
            && self.verdict.as_ref().is_none_or(|v| &r.verdict == v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pidvirt_common::{PidnsInfo, audit::sys, event_kind, pidns_source};

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
        let r = Record::from_event(&event(Verdict::Leak, event_flags::HAS_ALSO), &registry()).unwrap();
        assert!(r.target.is_none());
        assert_eq!(r.also.unwrap().host_pid, 26922);
        let r = Record::from_event(&event(Verdict::Mismatch, 0), &registry()).unwrap();
        assert_eq!(r.truth, Some(4));
        assert!(r.also.is_none());
        let mut bad = event(Verdict::Leak, 0);
        bad.verdict = 200;
        assert!(Record::from_event(&bad, &registry()).is_none());
        bad.verdict = 3;
        bad.syscall = 999;
        assert!(Record::from_event(&bad, &registry()).is_none());
    }

    #[test]
    fn a_denial_names_its_lsm_hook() {
        let mut ev = event(Verdict::Denied, event_flags::HAS_TARGET);
        ev.direction = Direction::Lsm as u8;
        ev.syscall = 0;
        let r = Record::from_event(&ev, &registry()).unwrap();
        assert_eq!((r.syscall.as_str(), r.direction.as_str()), ("task_kill", "lsm"));
        ev.syscall = LSM_HOOKS.len() as u16;
        assert!(Record::from_event(&ev, &registry()).is_none());
        ev.syscall = 0;
        ev.direction = 7;
        assert!(Record::from_event(&ev, &registry()).is_none());
    }

    #[test]
    fn hub_keeps_recent_and_filters() {
        let hub = Hub::new(None);
        let reg = registry();
        let leak = Record::from_event(&event(Verdict::Leak, 0), &reg).unwrap();
        let unknown = Record::from_event(&event(Verdict::Unknown, 0), &reg).unwrap();
        hub.publish(vec![leak.clone(), unknown.clone(), leak.clone()]);
        let all = hub.recent(&Filter::default(), 100);
        assert_eq!(all.len(), 3);
        let leaks = hub.recent(&Filter { verdict: Some("leak".into()), ..Default::default() }, 100);
        assert_eq!(leaks.len(), 2);
        let none = hub.recent(&Filter { container: Some("host".into()), ..Default::default() }, 100);
        assert!(none.is_empty());
        assert_eq!(hub.recent(&Filter::default(), 1), vec![leak]);
    }
}
