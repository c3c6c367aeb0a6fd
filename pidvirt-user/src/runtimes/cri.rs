//! CRI runtimes (CRI-O, containerd's CRI plugin) through the Kubernetes CRI API: the running
//! containers with their Kubernetes identity (the `io.kubernetes.*` labels the kubelet sets);
//! then the runtime's container events where it has them (CRI v1 `GetContainerEvents`),
//! otherwise a poll every POLL_EVERY. The host pid of a container's init is in its verbose
//! status (`info`, JSON with `pid`), as crictl shows it.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use k8s_cri::v1::{
    ContainerEventType, ContainerState, ContainerStatusRequest, GetEventsRequest, ListContainersRequest,
    VersionRequest, runtime_service_client::RuntimeServiceClient,
};
use tonic::{Code, transport::Channel};

use super::{Endpoint, Facts, Reporter, Update, k8s_from_labels, timed};
use crate::api::RuntimeInfo;

/// How often a runtime without events is asked which containers run.
const POLL_EVERY: Duration = Duration::from_secs(2);

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
                        match status(&mut client, &engine, &event.container_id).await? {
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

/// Reports the running containers not in `known` and the known ones that are gone; false once
/// the daemon stops.
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
    let running: BTreeSet<String> = containers
        .into_iter()
        .filter(|c| c.state == ContainerState::ContainerRunning as i32)
        .map(|c| c.id)
        .collect();
    for gone in known.difference(&running).cloned().collect::<Vec<_>>() {
        known.remove(&gone);
        if !reporter.send(Update::Removed { engine: engine.into(), id: gone }) {
            return Ok(false);
        }
    }
    for id in running {
        if known.contains(&id) {
            continue;
        }
        if let Some(facts) = status(client, engine, &id).await? {
            known.insert(id);
            if !reporter.send(Update::Running(facts)) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// The verbose status of container `id`, if it runs.
async fn status(
    client: &mut RuntimeServiceClient<Channel>,
    engine: &str,
    id: &str,
) -> Result<Option<Facts>, String> {
    let request = ContainerStatusRequest { container_id: id.into(), verbose: true };
    let response = match client.container_status(request).await {
        Ok(r) => r.into_inner(),
        Err(e) if e.code() == Code::NotFound => return Ok(None),
        Err(e) => return Err(format!("container status: {e}")),
    };
    let Some(status) = response.status else { return Ok(None) };
    let Some(pid) = response.info.get("info").and_then(|info| pid_of(info)) else { return Ok(None) };
    let labels: BTreeMap<String, String> = status.labels.into_iter().collect();
    let k8s = k8s_from_labels(&labels);
    let name = status.metadata.map(|m| m.name).unwrap_or_default();
    Ok(Some(Facts {
        id: status.id,
        runtime: RuntimeInfo {
            engine: engine.into(),
            name,
            image: status.image.map(|i| i.image).unwrap_or_default(),
        },
        labels,
        k8s,
        pid,
    }))
}

/// The `pid` of a verbose status's `info` JSON.
fn pid_of(info: &str) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_str(info).ok()?;
    v.get("pid")?.as_u64().and_then(|p| u32::try_from(p).ok()).filter(|p| *p > 0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_pid_comes_from_the_verbose_info() {
        assert_eq!(super::pid_of(r#"{"sandboxID":"abc","pid":4242,"removing":false}"#), Some(4242));
        assert_eq!(super::pid_of(r#"{"pid":0}"#), None);
        assert_eq!(super::pid_of("not json"), None);
    }
}
