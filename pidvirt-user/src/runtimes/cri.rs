//! CRI runtimes (CRI-O, containerd's CRI plugin) through the Kubernetes CRI API: the running
//! containers with their Kubernetes identity (the `io.kubernetes.*` labels the kubelet sets),
//! and the ready pod sandboxes, whose pause is the init of the pod's namespaces (named after
//! their pod, as container [`K8sInfo::SANDBOX`]); then the runtime's container events where it
//! has them (CRI v1 `GetContainerEvents`), otherwise a poll every POLL_EVERY. The host pid of a
//! container's or a sandbox's init is in its verbose status (`info`, JSON with `pid`), as crictl
//! shows it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Duration,
};

use k8s_cri::v1::{
    ContainerEventType, ContainerState, ContainerStatusRequest, GetEventsRequest, ListContainersRequest,
    ListPodSandboxRequest, PodSandboxState, PodSandboxStatusRequest, VersionRequest,
    runtime_service_client::RuntimeServiceClient,
};
use tonic::{Code, transport::Channel};

use super::{Endpoint, Facts, Reporter, Update, k8s_from_labels, timed};
use crate::api::{K8sInfo, RuntimeInfo};

/// How often a runtime without events is asked which containers run.
const POLL_EVERY: Duration = Duration::from_secs(2);

/// What a CRI id names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Container,
    Sandbox,
}

pub async fn follow(endpoint: &Endpoint, reporter: &Reporter) -> Result<(), String> {
    let channel = timed("connect", containerd_client::connect(&endpoint.socket)).await?;
    let mut client = RuntimeServiceClient::new(channel);
    let version =
        timed("version", client.version(VersionRequest { version: "v1".into() })).await?.into_inner();
    // The engine records carry: what the runtime calls itself (cri-o, containerd).
    let engine = if version.runtime_name.is_empty() { endpoint.engine.clone() } else { version.runtime_name };
    reporter.set("connected", None);
    let mut known = BTreeSet::new();
    if !sync(&mut client, &engine, reporter, &mut known).await? {
        return Ok(());
    }
    match client.get_container_events(GetEventsRequest {}).await {
        Ok(stream) => {
            let mut stream = stream.into_inner();
            loop {
                let event = match stream.message().await {
                    Ok(Some(e)) => e,
                    Ok(None) => return Err("the event stream ended".into()),
                    Err(e) => return Err(format!("events: {e}")),
                };
                let update = match ContainerEventType::try_from(event.container_event_type) {
                    Ok(ContainerEventType::ContainerStartedEvent) => {
                        // A sandbox's start comes as a container event with the sandbox's id, and
                        // its status where the runtime could read it: an id no container has is
                        // asked as a sandbox too.
                        let id = &event.container_id;
                        let first = if event.pod_sandbox_status.as_ref().is_some_and(|s| s.id == *id) {
                            Kind::Sandbox
                        } else {
                            Kind::Container
                        };
                        let facts = match status(&mut client, &engine, id, first).await? {
                            None if first == Kind::Container => {
                                status(&mut client, &engine, id, Kind::Sandbox).await?
                            }
                            facts => facts,
                        };
                        match facts {
                            Some(facts) => Update::Running(facts),
                            None => continue,
                        }
                    }
                    Ok(ContainerEventType::ContainerDeletedEvent) => {
                        Update::Removed { engine: engine.clone(), id: event.container_id }
                    }
                    _ => continue,
                };
                if !reporter.send(update) {
                    return Ok(());
                }
            }
        }
        Err(e) if e.code() == Code::Unimplemented => loop {
            tokio::time::sleep(POLL_EVERY).await;
            if !sync(&mut client, &engine, reporter, &mut known).await? {
                return Ok(());
            }
        },
        Err(e) => Err(format!("events: {e}")),
    }
}

/// Reports the running containers and ready sandboxes not in `known` and the known ones that are
/// gone; false once the daemon stops.
async fn sync(
    client: &mut RuntimeServiceClient<Channel>,
    engine: &str,
    reporter: &Reporter,
    known: &mut BTreeSet<String>,
) -> Result<bool, String> {
    let containers = timed("list containers", client.list_containers(ListContainersRequest { filter: None }))
        .await?
        .into_inner()
        .containers;
    let sandboxes =
        timed("list pod sandboxes", client.list_pod_sandbox(ListPodSandboxRequest { filter: None }))
            .await?
            .into_inner()
            .items;
    let running: BTreeMap<String, Kind> = containers
        .into_iter()
        .filter(|c| c.state == ContainerState::ContainerRunning as i32)
        .map(|c| (c.id, Kind::Container))
        .chain(
            sandboxes
                .into_iter()
                .filter(|s| s.state == PodSandboxState::SandboxReady as i32)
                .map(|s| (s.id, Kind::Sandbox)),
        )
        .collect();
    for gone in known.iter().filter(|id| !running.contains_key(*id)).cloned().collect::<Vec<_>>() {
        known.remove(&gone);
        if !reporter.send(Update::Removed { engine: engine.into(), id: gone }) {
            return Ok(false);
        }
    }
    for (id, kind) in running {
        if known.contains(&id) {
            continue;
        }
        // Asked once while it runs: one without a pid (a sandbox without a pause, CRI-O's
        // drop_infra_ctr) has none the next time either.
        let facts = status(client, engine, &id, kind).await?;
        known.insert(id);
        if let Some(facts) = facts
            && !reporter.send(Update::Running(facts))
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// What the runtime says of `id` in its verbose status, if it runs: a container by its CRI name,
/// as the kubelet labelled it; a sandbox as its pod's [`K8sInfo::SANDBOX`], with the identity
/// in the sandbox's own metadata.
async fn status(
    client: &mut RuntimeServiceClient<Channel>,
    engine: &str,
    id: &str,
    kind: Kind,
) -> Result<Option<Facts>, String> {
    let (id, name, labels, k8s, image, info) = match kind {
        Kind::Container => {
            let request = ContainerStatusRequest { container_id: id.into(), verbose: true };
            let Some(response) = answer("container status", client.container_status(request)).await? else {
                return Ok(None);
            };
            let Some(status) = response.status else { return Ok(None) };
            let labels: BTreeMap<String, String> = status.labels.into_iter().collect();
            let k8s = k8s_from_labels(&labels);
            let name = status.metadata.map(|m| m.name).unwrap_or_default();
            let image = status.image.map(|i| i.image).unwrap_or_default();
            (status.id, name, labels, k8s, image, response.info)
        }
        Kind::Sandbox => {
            let request = PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: true };
            let Some(response) = answer("pod sandbox status", client.pod_sandbox_status(request)).await?
            else {
                return Ok(None);
            };
            let Some(status) = response.status else { return Ok(None) };
            let meta = status.metadata.unwrap_or_default();
            let k8s = K8sInfo {
                namespace: meta.namespace,
                pod: meta.name,
                container: K8sInfo::SANDBOX.into(),
                pod_uid: meta.uid,
            };
            let image = verbose(&response.info)
                .and_then(|v| v.get("image")?.as_str().map(str::to_string))
                .unwrap_or_default();
            let labels = status.labels.into_iter().collect();
            (status.id, K8sInfo::SANDBOX.into(), labels, Some(k8s), image, response.info)
        }
    };
    let Some(pid) = verbose(&info).as_ref().and_then(pid_of) else { return Ok(None) };
    Ok(Some(Facts { id, runtime: RuntimeInfo { engine: engine.into(), name, image }, labels, k8s, pid }))
}

/// A call's answer within the call timeout ([`timed`]: a runtime can hang); None when the
/// runtime no longer knows the id.
async fn answer<T>(
    what: &str,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<Option<T>, String> {
    timed(what, async {
        match call.await {
            Ok(r) => Ok(Some(r.into_inner())),
            Err(e) if e.code() == Code::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    })
    .await
}

/// A verbose status's `info`, the JSON crictl shows.
fn verbose(info: &HashMap<String, String>) -> Option<serde_json::Value> {
    serde_json::from_str(info.get("info")?).ok()
}

/// The `pid` of a verbose status's `info`.
fn pid_of(info: &serde_json::Value) -> Option<u32> {
    info.get("pid")?.as_u64().and_then(|p| u32::try_from(p).ok()).filter(|p| *p > 0)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    fn pid(info: &str) -> Option<u32> {
        super::verbose(&HashMap::from([("info".to_string(), info.to_string())]))
            .as_ref()
            .and_then(super::pid_of)
    }

    #[test]
    fn the_pid_comes_from_the_verbose_info() {
        assert_eq!(pid(r#"{"sandboxID":"abc","pid":4242,"removing":false}"#), Some(4242));
        assert_eq!(pid(r#"{"pid":0}"#), None);
        assert_eq!(pid(r#"{"pid":-3}"#), None);
        assert_eq!(pid("not json"), None);
        assert_eq!(super::verbose(&HashMap::new()), None);
    }
}
