//! The daemon's control API: newline-delimited JSON on a Unix socket, one request a line, one
//! response a line. Shared by the server and the CLI client.
//!
//! Request:  `{"op": "ps", "container": "pidns-4026532301"}`
//! Response: `{"ok": true, "result": ...}` or `{"ok": false, "error": {"code": "...", "message": "..."}}`

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Longest request line the server reads; a longer line gets a `too_long` error.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Default socket path.
pub const DEFAULT_SOCKET: &str = "/run/pidvirt/pidvirt.sock";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Every tracked task, optionally of one container.
    Ps {
        #[serde(default)]
        container: Option<String>,
    },
    /// Every known container.
    Containers,
    /// One container, named as users name it (id, runtime name, pod, pid namespace inode,
    /// unique id prefix).
    Container { container: String },
    /// Registers a container under `id`, by exactly one of: `pid` (a task in it: its pid
    /// namespace, or its cgroup if it runs in the host's), `cgroup` (a cgroup v2 directory,
    /// absolute or relative to the cgroup2 mount) or `pidns` (a namespace inode).
    Register {
        id: String,
        #[serde(default)]
        pid: Option<i32>,
        #[serde(default)]
        cgroup: Option<String>,
        #[serde(default)]
        pidns: Option<u32>,
        #[serde(default)]
        labels: BTreeMap<String, String>,
        /// Who registers: `api` (default) or `oci` (the OCI hook).
        #[serde(default)]
        by: Option<String>,
        /// `observe` (default) or `enforce`.
        #[serde(default)]
        mode: Option<String>,
    },
    /// Sets a container's policy: `observe` (audit only) or `enforce` (deny cross-container
    /// actions; an error where enforcement is unavailable).
    Policy { id: String, mode: String },
    /// Stops the daemon (pinned programs stay: `pidvirt detach` removes them).
    Shutdown,
    /// Unregisters container `id`.
    Unregister { id: String },
    /// vpid -> host pid (`vpid`) or host pid -> vpid (`pid`) in a container.
    Translate {
        container: String,
        #[serde(default)]
        vpid: Option<u32>,
        #[serde(default)]
        pid: Option<u32>,
    },
    /// Counters kept by the kernel programs (crossings of one container, or all).
    Stats {
        #[serde(default)]
        container: Option<String>,
    },
    /// Recent anomalies (oldest first), or with `follow` a live stream of them: one response
    /// line per record until the client disconnects.
    Audit {
        #[serde(default)]
        container: Option<String>,
        #[serde(default)]
        verdict: Option<String>,
        /// A watched syscall, or an LSM hook (denials).
        #[serde(default)]
        syscall: Option<String>,
        /// RFC 3339: records at or after this time.
        #[serde(default)]
        since: Option<String>,
        #[serde(default)]
        limit: Option<usize>,
        #[serde(default)]
        follow: bool,
    },
    /// Daemon and kernel status (attached programs, features).
    Status,
}

/// The filters of an `audit` request, as the client gave them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub container: Option<String>,
    pub verdict: Option<String>,
    pub syscall: Option<String>,
    pub since: Option<String>,
}

/// Error codes of failed requests.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    TooLong,
    UnknownOp,
    UnknownContainer,
    NotFound,
    IdInUse,
    /// A name or id prefix that matches more than one container.
    Ambiguous,
    PermissionDenied,
    /// The kernel lacks what the request needs (e.g. BPF-LSM for enforce mode).
    Unavailable,
    Internal,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// An internal error (a poisoned lock, a map the kernel refused to update, ...).
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::Internal, e.to_string())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

/// One line of response.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    /// In an audit stream: records this client missed because it read too slowly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lagged: Option<u64>,
}

impl Response {
    pub fn ok(result: impl Serialize) -> Self {
        match serde_json::value::to_raw_value(&result) {
            Ok(v) => Self::raw(v),
            Err(e) => Self::err(ApiError::new(ErrorCode::Internal, e.to_string())),
        }
    }
    /// A result already serialized.
    pub fn raw(result: Box<RawValue>) -> Self {
        Self { ok: true, result: Some(result), error: None, lagged: None }
    }
    pub fn err(error: ApiError) -> Self {
        Self { ok: false, result: None, error: Some(error), lagged: None }
    }
    pub fn lagged(n: u64) -> Self {
        Self { ok: true, result: None, error: None, lagged: Some(n) }
    }
}

/// A task as `ps` shows it. Numbers are tagged: `host_*` in the initial namespace, `v*` in the
/// task's own namespace, `nspid`/`nstgid` at every level outermost first (as /proc NSpid).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TaskRow {
    pub container: String,
    pub pidns: u32,
    pub level: u32,
    pub host_tid: u32,
    pub host_pid: u32,
    pub vtid: u32,
    pub vpid: u32,
    pub nspid: Vec<u32>,
    pub nstgid: Vec<u32>,
    pub comm: String,
    /// Task start time, ns since boot (clock-tick precision for `seeded` tasks).
    pub start_time_ns: u64,
    /// Found in /proc when the daemon attached (not seen forking).
    pub seeded: bool,
    /// Exited, not yet reaped.
    pub exited: bool,
    /// A kernel thread (PF_KTHREAD): no number a container is handed means it.
    pub kthread: bool,
    /// What the container's runtime says about it (engine, name, image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeInfo>,
    /// The container's Kubernetes identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s: Option<K8sInfo>,
}

/// What a container's runtime says about it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    /// `docker`, `containerd`, `podman`, `cri-o`, `kubernetes`.
    pub engine: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
}

/// The Kubernetes identity of a container (from its runtime's CRI labels).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct K8sInfo {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_uid: String,
}

impl K8sInfo {
    /// The container name Kubernetes gives a pod's sandbox (the infra container whose pause is
    /// the init of the pod's namespaces): CRI-O labels it so, as dockershim did.
    pub const SANDBOX: &str = "POD";

    /// Whether this is a pod's sandbox rather than one of its containers.
    pub fn is_sandbox(&self) -> bool {
        self.container == Self::SANDBOX
    }

    /// The name `containers` shows: `pod/container`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.pod, self.container)
    }
}

/// A container as `containers` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerRow {
    pub id: String,
    /// `host`, `pidns` (a pid namespace and those nested in it) or `cgroup` (a cgroup v2
    /// subtree whose tasks share the host's pid namespace, or joined another container's).
    pub kind: String,
    pub pidns: u32,
    pub level: u32,
    /// Id of the container whose namespace is the parent of this one's (none for the host).
    pub parent: Option<String>,
    /// The cgroup of a cgroup container.
    pub cgroup: Option<String>,
    /// `observe` or `enforce`.
    pub mode: String,
    pub tasks: u64,
    /// How the container became known: `host`, `kernel` (first task seen by the kernel
    /// programs), `seed` (found in /proc at attach), `discovered` (a runtime's id found in the
    /// cgroup path of its first task), `api` or `oci` (registered by an orchestrator).
    pub registered_by: String,
    pub labels: BTreeMap<String, String>,
    /// What its runtime says (engine, name, image), where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeInfo>,
    /// Its Kubernetes identity, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s: Option<K8sInfo>,
}

/// Result of `translate`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Translation {
    pub container: String,
    pub vpid: u32,
    pub host_pid: u32,
    /// Thread-group ids on both sides (equal to the above for a process's main thread).
    pub vtgid: u32,
    pub host_tgid: u32,
}

/// Crossings per syscall, then per verdict (every syscall and verdict, zeros included).
pub type Crossings = BTreeMap<String, BTreeMap<String, u64>>;

/// Result of `stats` with a container: what the kernel counted in its counter slot.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerStats {
    pub container: String,
    pub crossings: Crossings,
    /// Its audit records the ring buffer had no room for.
    pub ringbuf_drops: u64,
    /// Its tasks reaped.
    pub reaped: u64,
    /// Its denials, per LSM hook.
    pub denied: BTreeMap<String, u64>,
}

/// Result of `stats` for the whole host: every counter group (drops, map errors, lifecycle...)
/// by name, with every crossing (those of ended containers included).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostStats {
    /// The kernel's global counter groups (pidvirt_common::counter::GROUPS), by group and name.
    #[serde(flatten)]
    pub counters: BTreeMap<String, BTreeMap<String, u64>>,
    pub crossings: Crossings,
    pub denied: BTreeMap<String, u64>,
    /// Runs the kernel skipped, by program (those with none left out).
    pub skipped_runs: BTreeMap<String, u64>,
    pub audit_log: AuditLogStats,
}

/// What the daemon wrote to its audit log.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditLogStats {
    pub written: u64,
    pub write_errors: u64,
    pub rotations: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let r: Request = serde_json::from_str(r#"{"op":"translate","container":"c1","vpid":3}"#).unwrap();
        assert_eq!(r, Request::Translate { container: "c1".into(), vpid: Some(3), pid: None });
        let r: Request = serde_json::from_str(r#"{"op":"container","container":"web"}"#).unwrap();
        assert_eq!(r, Request::Container { container: "web".into() });
        let r: Request = serde_json::from_str(r#"{"op":"ps"}"#).unwrap();
        assert_eq!(r, Request::Ps { container: None });
        assert!(serde_json::from_str::<Request>(r#"{"op":"nope"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"ps","bogus":1}"#).is_err());
        let r: Request =
            serde_json::from_str(r#"{"op":"register","id":"c","cgroup":"/x","labels":{"pod":"web"}}"#)
                .unwrap();
        assert!(
            matches!(r, Request::Register { ref cgroup, ref labels, .. } if cgroup.as_deref() == Some("/x") && labels["pod"] == "web")
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"register","id":"c","labels":{"pod":1}}"#).is_err());
    }
}
