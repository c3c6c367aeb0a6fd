//! Docker and Podman through the Docker Engine API (bollard): the containers that run, then
//! the `start` and `destroy` events.

use std::collections::HashMap;

use bollard::{
    API_DEFAULT_VERSION, Docker,
    query_parameters::{EventsOptionsBuilder, ListContainersOptionsBuilder},
};
use futures::StreamExt;

use super::{CALL_TIMEOUT, Endpoint, Facts, Reporter, Update, k8s_from_labels, timed};
use crate::api::RuntimeInfo;

pub async fn follow(endpoint: &Endpoint, reporter: &Reporter) -> Result<(), String> {
    let socket = endpoint.socket.to_string_lossy();
    let docker = Docker::connect_with_unix(&socket, CALL_TIMEOUT.as_secs(), API_DEFAULT_VERSION)
        .map_err(|e| format!("connect: {e}"))?;
    // Older engines (Docker 20.10, Podman 4) speak an older API version.
    let docker = timed("version", docker.negotiate_version()).await?;
    // Subscribe first, then list: a container started in between is in one or the other.
    let filters = HashMap::from([("type", vec!["container"]), ("event", vec!["start", "destroy"])]);
    let mut events = docker.events(Some(EventsOptionsBuilder::default().filters(&filters).build()));
    let running = timed(
        "list containers",
        docker.list_containers(Some(ListContainersOptionsBuilder::default().build())),
    )
    .await?;
    reporter.set("connected", None);
    for c in running {
        let Some(id) = c.id else { continue };
        if let Some(facts) = inspect(&docker, &endpoint.engine, &id).await?
            && !reporter.send(Update::Running(facts))
        {
            return Ok(());
        }
    }
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| format!("events: {e}"))?;
        let Some(id) = event.actor.and_then(|a| a.id) else { continue };
        let update = match event.action.as_deref() {
            Some("start") => match inspect(&docker, &endpoint.engine, &id).await? {
                Some(facts) => Update::Running(facts),
                None => continue,
            },
            Some("destroy") => Update::Removed { engine: endpoint.engine.clone(), id },
            _ => continue,
        };
        if !reporter.send(update) {
            return Ok(());
        }
    }
    Err("the event stream ended".into())
}

/// What the engine says about container `id`, if it runs.
async fn inspect(docker: &Docker, engine: &str, id: &str) -> Result<Option<Facts>, String> {
    let c = match timed("inspect", docker.inspect_container(id, None)).await {
        Ok(c) => c,
        // Gone in between (a short-lived container): nothing to name.
        Err(e) if e.contains("404") || e.contains("No such container") => return Ok(None),
        Err(e) => return Err(e),
    };
    let pid = c.state.as_ref().and_then(|s| s.pid).unwrap_or(0);
    let Ok(pid) = u32::try_from(pid) else { return Ok(None) };
    if pid == 0 {
        return Ok(None);
    }
    let config = c.config.unwrap_or_default();
    let labels: std::collections::BTreeMap<String, String> =
        config.labels.unwrap_or_default().into_iter().collect();
    let name = c.name.unwrap_or_default().trim_start_matches('/').to_string();
    Ok(Some(Facts {
        id: c.id.unwrap_or_else(|| id.to_string()),
        runtime: RuntimeInfo { engine: engine.into(), name, image: config.image.unwrap_or_default() },
        k8s: k8s_from_labels(&labels),
        labels,
        pid,
    }))
}
