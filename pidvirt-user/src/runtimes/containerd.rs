//! containerd through its own gRPC API: every namespace (`k8s.io` included, where the CRI
//! plugin's labels carry the Kubernetes identity) but `moby`, whose containers Docker names.
//! The tasks that run, then the `/tasks/start` and `/containers/delete` events.

use std::collections::BTreeMap;

use containerd_client::{
    events::{ContainerDelete, TaskStart},
    services::v1::{
        GetContainerRequest, ListNamespacesRequest, ListTasksRequest, SubscribeRequest,
        containers_client::ContainersClient, events_client::EventsClient,
        namespaces_client::NamespacesClient, tasks_client::TasksClient,
    },
    tonic::{Request, transport::Channel},
    with_namespace,
};
use prost::Message as _;

use super::{Endpoint, Facts, Reporter, Update, k8s_from_labels, timed};
use crate::api::RuntimeInfo;

/// Docker's namespace in its containerd: Docker's own API names those containers.
const DOCKER_NAMESPACE: &str = "moby";

pub async fn follow(endpoint: &Endpoint, reporter: &Reporter) -> Result<(), String> {
    let channel = timed("connect", containerd_client::connect(&endpoint.socket)).await?;
    // Subscribe first, then list.
    let filters = vec!["topic==\"/tasks/start\"".to_string(), "topic==\"/containers/delete\"".to_string()];
    let mut events =
        timed("subscribe", EventsClient::new(channel.clone()).subscribe(SubscribeRequest { filters }))
            .await?
            .into_inner();
    let namespaces =
        timed("namespaces", NamespacesClient::new(channel.clone()).list(ListNamespacesRequest::default()))
            .await?
            .into_inner()
            .namespaces;
    reporter.set("connected", None);
    for ns in namespaces.iter().map(|n| n.name.as_str()).filter(|n| *n != DOCKER_NAMESPACE) {
        let tasks = timed(
            "tasks",
            TasksClient::new(channel.clone()).list(with_namespace!(ListTasksRequest::default(), ns)),
        )
        .await?
        .into_inner()
        .tasks;
        for task in tasks.into_iter().filter(|t| t.pid != 0) {
            let id = if task.container_id.is_empty() { &task.id } else { &task.container_id };
            if let Some(facts) = describe(&channel, &endpoint.engine, ns, id, task.pid).await?
                && !reporter.send(Update::Running(facts))
            {
                return Ok(());
            }
        }
    }
    loop {
        let envelope = match events.message().await {
            Ok(Some(e)) => e,
            Ok(None) => return Err("the event stream ended".into()),
            Err(e) => return Err(format!("events: {e}")),
        };
        if envelope.namespace == DOCKER_NAMESPACE {
            continue;
        }
        let Some(event) = envelope.event else { continue };
        let update = match envelope.topic.as_str() {
            "/tasks/start" => {
                let Ok(start) = TaskStart::decode(event.value.as_slice()) else { continue };
                match describe(
                    &channel,
                    &endpoint.engine,
                    &envelope.namespace,
                    &start.container_id,
                    start.pid,
                )
                .await?
                {
                    Some(facts) => Update::Running(facts),
                    None => continue,
                }
            }
            "/containers/delete" => {
                let Ok(delete) = ContainerDelete::decode(event.value.as_slice()) else { continue };
                Update::Removed { engine: endpoint.engine.clone(), id: delete.id }
            }
            _ => continue,
        };
        if !reporter.send(update) {
            return Ok(());
        }
    }
}

/// Container `id` of namespace `ns`, whose task has host pid `pid`.
async fn describe(
    channel: &Channel,
    engine: &str,
    ns: &str,
    id: &str,
    pid: u32,
) -> Result<Option<Facts>, String> {
    let request: Request<GetContainerRequest> =
        with_namespace!(GetContainerRequest { id: id.to_string() }, ns);
    let container = match timed("container", ContainersClient::new(channel.clone()).get(request)).await {
        Ok(r) => r.into_inner().container,
        Err(e) if e.contains("not found") => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(c) = container else { return Ok(None) };
    let labels: BTreeMap<String, String> = c.labels.into_iter().collect();
    let k8s = k8s_from_labels(&labels);
    // A CRI container's name is its Kubernetes container name; others have their id.
    let name =
        k8s.as_ref().map(|k| k.container.clone()).filter(|n| !n.is_empty()).unwrap_or_else(|| c.id.clone());
    Ok(Some(Facts {
        id: c.id,
        runtime: RuntimeInfo { engine: engine.into(), name, image: c.image },
        labels,
        k8s,
        pid,
    }))
}
