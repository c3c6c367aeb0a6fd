//! Container runtimes, asked over their own sockets what their containers are called: Docker and
//! Podman (the Docker Engine API), containerd (its gRPC API, every namespace) and CRI runtimes
//! (CRI-O, or containerd's CRI service). Each endpoint has a task of its own that syncs the
//! containers that exist, then follows the runtime's events (or polls, where it has none), and
//! hands what it learns to the container service as [`Update`]s. A runtime whose socket is
//! absent, hangs or answers garbage is retried with a backoff and reported in `status`; it never
//! holds up the audit: containers are still named from their cgroup paths meanwhile.
//!
//! What a runtime says is a claim: the container service checks it against the kernel (the pid
//! must be a live process whose cgroup names the container) before believing it.

mod containerd;
mod cri;
mod docker;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::api::{K8sInfo, RuntimeInfo};

/// How long one call to a runtime may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait before a runtime that failed is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The API a socket speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// Docker Engine API (Docker, and Podman's compatible service).
    Docker,
    /// containerd's own gRPC API.
    Containerd,
    /// The Kubernetes Container Runtime Interface (CRI-O, containerd's CRI plugin).
    Cri,
}

/// A runtime socket to ask.
#[derive(Clone, Debug, Serialize)]
pub struct Endpoint {
    /// The engine name records carry (`docker`, `podman`, `containerd`, `cri-o`...).
    pub engine: String,
    pub api: Api,
    pub socket: PathBuf,
}

/// What a runtime says about a running container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    pub id: String,
    pub runtime: RuntimeInfo,
    pub labels: BTreeMap<String, String>,
    pub k8s: Option<K8sInfo>,
    /// Host pid of the container's init (its first process).
    pub pid: u32,
}

/// News from a runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// A container runs (found at sync, or started).
    Running(Facts),
    /// A container was removed.
    Removed { engine: String, id: String },
}

/// How an endpoint answers, for `status`.
#[derive(Clone, Debug, Serialize)]
pub struct Health {
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// `connecting`, `connected`, `absent` (no socket), `unreachable` (see `error`).
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Containers it named since the daemon started.
    pub containers_seen: u64,
    /// When the state last changed (seconds since the epoch).
    pub since: u64,
}

/// The health of every endpoint, shared with `status`.
pub type HealthBook = Arc<Mutex<Vec<Health>>>;

/// Kubernetes identity from CRI labels (`io.kubernetes.*`), if any. A pod's sandbox is
/// [`K8sInfo::SANDBOX`]: CRI-O labels it so itself, containerd's CRI plugin marks its kind.
pub fn k8s_from_labels(labels: &BTreeMap<String, String>) -> Option<K8sInfo> {
    let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
    let sandbox = labels.get("io.cri-containerd.kind").is_some_and(|k| k == "sandbox");
    let k8s = K8sInfo {
        namespace: get("io.kubernetes.pod.namespace"),
        pod: get("io.kubernetes.pod.name"),
        container: labels
            .get("io.kubernetes.container.name")
            .cloned()
            .or_else(|| sandbox.then(|| K8sInfo::SANDBOX.into()))
            .unwrap_or_default(),
        pod_uid: get("io.kubernetes.pod.uid"),
    };
    (k8s != K8sInfo::default()).then_some(k8s)
}

/// Where one endpoint's task reports.
#[derive(Clone)]
pub struct Reporter {
    index: usize,
    health: HealthBook,
    updates: mpsc::UnboundedSender<Update>,
}

impl Reporter {
    fn set(&self, state: &'static str, error: Option<String>) {
        if let Ok(mut book) = self.health.lock()
            && let Some(h) = book.get_mut(self.index)
            && (h.state != state || h.error != error)
        {
            if state == "unreachable" || (h.state == "connected" && state != "connected") {
                tracing::warn!(engine = h.endpoint.engine, socket = %h.endpoint.socket.display(), "runtime {state}: {}", error.as_deref().unwrap_or(""));
            } else if state == "connected" {
                tracing::info!(engine = h.endpoint.engine, socket = %h.endpoint.socket.display(), "runtime connected");
            }
            h.state = state;
            h.error = error;
            h.since = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        }
    }

    fn state(&self) -> &'static str {
        self.health.lock().ok().and_then(|b| b.get(self.index).map(|h| h.state)).unwrap_or("connecting")
    }

    /// Hands an update to the container service; false once the daemon stops.
    fn send(&self, update: Update) -> bool {
        if matches!(update, Update::Running(_))
            && let Ok(mut book) = self.health.lock()
            && let Some(h) = book.get_mut(self.index)
        {
            h.containers_seen += 1;
        }
        self.updates.send(update).is_ok()
    }
}

/// Runs `fut` with the call timeout, as a `Result` with a message.
pub async fn timed<T, E: std::fmt::Display>(
    what: &str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {} s", CALL_TIMEOUT.as_secs())),
    }
}

/// Starts a task per endpoint, which keeps its health in `health`; returns the stream of updates.
pub fn watch(endpoints: Vec<Endpoint>, health: &HealthBook) -> mpsc::UnboundedReceiver<Update> {
    let (tx, rx) = mpsc::unbounded_channel();
    if let Ok(mut book) = health.lock() {
        *book = endpoints
            .iter()
            .map(|e| Health {
                endpoint: e.clone(),
                state: "connecting",
                error: None,
                containers_seen: 0,
                since: 0,
            })
            .collect();
    }
    for (index, endpoint) in endpoints.into_iter().enumerate() {
        let reporter = Reporter { index, health: health.clone(), updates: tx.clone() };
        tokio::spawn(follow(endpoint, reporter));
    }
    rx
}

/// Follows one endpoint forever: connect, sync, stream; on any failure wait and start over.
async fn follow(endpoint: Endpoint, reporter: Reporter) {
    let mut backoff = Duration::from_millis(250);
    loop {
        if endpoint.socket.exists() {
            let result = match endpoint.api {
                Api::Docker => docker::follow(&endpoint, &reporter).await,
                Api::Containerd => containerd::follow(&endpoint, &reporter).await,
                Api::Cri => cri::follow(&endpoint, &reporter).await,
            };
            match result {
                // The daemon stops.
                Ok(()) => return,
                Err(e) => {
                    // A runtime that was up and went away is tried again promptly.
                    if reporter.state() == "connected" {
                        backoff = Duration::from_millis(250);
                    }
                    reporter.set("unreachable", Some(e));
                }
            }
        } else {
            reporter.set("absent", Some(format!("no socket at {}", endpoint.socket.display())));
        }
        if reporter.updates.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect()
    }

    #[test]
    fn a_pods_sandbox_is_its_pod_container_and_unlabelled_containers_have_no_identity() {
        let pod = [
            ("io.kubernetes.pod.name", "web-0"),
            ("io.kubernetes.pod.namespace", "shop"),
            ("io.kubernetes.pod.uid", "u1"),
        ];
        let app =
            k8s_from_labels(&labels(&[pod.as_slice(), &[("io.kubernetes.container.name", "app")]].concat()));
        assert_eq!(app.as_ref().map(|k| (k.container.as_str(), k.is_sandbox())), Some(("app", false)));
        // containerd's CRI plugin marks its sandbox's kind; CRI-O names it itself.
        for kind in [("io.cri-containerd.kind", "sandbox"), ("io.kubernetes.container.name", "POD")] {
            let k = k8s_from_labels(&labels(&[pod.as_slice(), &[kind]].concat())).unwrap();
            assert_eq!((k.pod.as_str(), k.namespace.as_str(), k.pod_uid.as_str()), ("web-0", "shop", "u1"));
            assert!(k.is_sandbox(), "{kind:?}: {k:?}");
        }
        let k =
            k8s_from_labels(&labels(&[pod.as_slice(), &[("io.cri-containerd.kind", "container")]].concat()));
        assert_eq!(k.map(|k| k.container), Some(String::new()));
        assert_eq!(k8s_from_labels(&labels(&[("com.docker.compose.service", "db")])), None);
    }
}
