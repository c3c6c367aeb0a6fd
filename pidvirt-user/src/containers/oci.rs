//! The OCI runtime hook (`pidvirt oci-hook`): the container state a runtime passes to its hooks
//! on stdin becomes a registration (states creating, created, running) or an unregistration
//! (stopped). Annotations become labels; `pidvirt.io/mode` sets the policy.

use std::collections::BTreeMap;

use crate::api::Request;

/// The OCI annotation that sets a container's policy.
pub const MODE_ANNOTATION: &str = "pidvirt.io/mode";

/// The container state an OCI runtime passes to hooks on stdin (runtime-spec `state`).
#[derive(Debug, serde::Deserialize)]
struct OciState {
    id: String,
    status: String,
    #[serde(default)]
    pid: Option<i32>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// What a hook invocation asks of the daemon.
#[derive(Debug, PartialEq)]
pub enum HookAction {
    Register(Request),
    /// Unregister this id (idempotent: an id the daemon does not know is fine).
    Unregister(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OciError {
    #[error("the OCI state on stdin is not valid: {0}")]
    Invalid(String),
    #[error("the OCI state of container {0} has no pid")]
    NoPid(String),
    #[error("unexpected container status `{0}` in the OCI state")]
    Status(String),
}

/// The action for the state JSON `state`.
pub fn action(state: &str) -> Result<HookAction, OciError> {
    let state: OciState = serde_json::from_str(state).map_err(|e| OciError::Invalid(e.to_string()))?;
    match state.status.as_str() {
        "creating" | "created" | "running" => {
            let pid = state.pid.filter(|p| *p > 0).ok_or_else(|| OciError::NoPid(state.id.clone()))?;
            let mode = state.annotations.get(MODE_ANNOTATION).cloned();
            Ok(HookAction::Register(Request::Register {
                id: state.id,
                pid: Some(pid),
                cgroup: None,
                pidns: None,
                labels: state.annotations,
                by: Some("oci".into()),
                mode,
            }))
        }
        "stopped" => Ok(HookAction::Unregister(state.id)),
        other => Err(OciError::Status(other.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_become_registrations_and_unregistrations() {
        let created = r#"{"ociVersion":"1.0.2","id":"web-1","status":"created","pid":4242,"bundle":"/b",
                         "annotations":{"pod":"web","pidvirt.io/mode":"enforce"}}"#;
        let HookAction::Register(Request::Register { id, pid, labels, by, mode, .. }) = action(created).unwrap()
        else {
            panic!("not a registration")
        };
        assert_eq!((id.as_str(), pid, by.as_deref(), mode.as_deref()), ("web-1", Some(4242), Some("oci"), Some("enforce")));
        assert_eq!(labels["pod"], "web");
        assert_eq!(
            action(r#"{"id":"web-1","status":"stopped"}"#).unwrap(),
            HookAction::Unregister("web-1".into())
        );
        assert_eq!(action(r#"{"id":"x","status":"running"}"#), Err(OciError::NoPid("x".into())));
        assert_eq!(action(r#"{"id":"x","status":"paused","pid":3}"#), Err(OciError::Status("paused".into())));
        assert!(matches!(action("not json"), Err(OciError::Invalid(_))));
    }
}
