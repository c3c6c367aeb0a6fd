//! The OCI runtime hook (`pidvirt oci-hook`): the container state a runtime passes to its hooks
//! on stdin becomes a registration (states creating, created, running) or an unregistration
//! (stopped). Annotations become labels; `pidvirt.io/mode` sets the policy.
//!
//! The hook fails open: if the daemon cannot be reached, the container starts anyway (the
//! daemon names it from its runtime or its cgroup when it is back), because a hook that fails
//! closed stops every container of the host, the daemon's own included, while the daemon is down.
//! It fails closed for the containers that ask (`pidvirt.io/fail: closed`, or an enforced one)
//! or when installed so (`--fail closed`).

use std::collections::BTreeMap;

use crate::api::Request;

/// The OCI annotation that sets a container's policy.
pub const MODE_ANNOTATION: &str = "pidvirt.io/mode";
/// The OCI annotation that makes the hook fail closed for a container (`closed`).
pub const FAIL_ANNOTATION: &str = "pidvirt.io/fail";

/// What the hook does when it cannot register or unregister the container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fail {
    /// Log the reason and let the container start.
    Open,
    /// Exit non-zero: the runtime refuses to create the container.
    Closed,
}

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

/// The hooks.d entry (the OCI hooks configuration schema 1.0.0 that Podman and CRI-O read)
/// that runs `exe oci-hook` at createRuntime and poststop for every container.
pub fn hooks_d_entry(exe: &std::path::Path, socket: &std::path::Path, fail: Fail) -> serde_json::Value {
    let fail = match fail {
        Fail::Open => "open",
        Fail::Closed => "closed",
    };
    serde_json::json!({
        "version": "1.0.0",
        "hook": {
            "path": exe,
            "args": ["pidvirt", "oci-hook", "--socket", socket, "--fail", fail],
        },
        "when": { "always": true },
        "stages": ["createRuntime", "poststop"],
    })
}

/// The engine and Kubernetes identity a runtime's annotations give away: Podman marks its
/// containers `io.container.manager: libpod`, CRI-O its `io.kubernetes.cri-o.*` (with the
/// kubelet's `io.kubernetes.*` identity).
pub fn runtime_from_annotations(
    annotations: &BTreeMap<String, String>,
) -> (Option<crate::api::RuntimeInfo>, Option<crate::api::K8sInfo>) {
    let k8s = crate::runtimes::k8s_from_labels(annotations);
    let engine = if annotations.get("io.container.manager").is_some_and(|m| m == "libpod") {
        "podman"
    } else if annotations.keys().any(|k| k.starts_with("io.kubernetes.cri-o.")) {
        "cri-o"
    } else {
        return (None, k8s);
    };
    let name = k8s.as_ref().map(|k| k.container.clone()).unwrap_or_default();
    (Some(crate::api::RuntimeInfo { engine: engine.into(), name, image: String::new() }), k8s)
}

/// What a hook invocation asks of the daemon.
#[derive(Debug, PartialEq)]
pub enum HookAction {
    Register(Request),
    /// Unregister this id (idempotent: an id the daemon does not know is fine).
    Unregister(String),
}

/// A hook invocation: its action, and how it fails.
#[derive(Debug, PartialEq)]
pub struct Hook {
    pub id: String,
    pub action: HookAction,
    pub fail: Fail,
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

/// The hook for the state JSON `state`, failing as `fail` says unless the container asks to
/// fail closed.
pub fn hook(state: &str, fail: Fail) -> Result<Hook, OciError> {
    let parsed: OciState = serde_json::from_str(state).map_err(|e| OciError::Invalid(e.to_string()))?;
    let closed = parsed.annotations.get(FAIL_ANNOTATION).is_some_and(|f| f == "closed")
        || parsed.annotations.get(MODE_ANNOTATION).is_some_and(|m| m == "enforce");
    let id = parsed.id.clone();
    Ok(Hook { id, action: action(parsed)?, fail: if closed { Fail::Closed } else { fail } })
}

fn action(state: OciState) -> Result<HookAction, OciError> {
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

    fn action(state: &str) -> Result<HookAction, OciError> {
        hook(state, Fail::Open).map(|h| h.action)
    }

    #[test]
    fn an_annotation_or_enforcement_makes_the_hook_fail_closed() {
        let state = |annotations: &str| {
            format!(r#"{{"id":"c","status":"created","pid":7,"annotations":{{{annotations}}}}}"#)
        };
        assert_eq!(hook(&state(""), Fail::Open).unwrap().fail, Fail::Open);
        assert_eq!(hook(&state(""), Fail::Closed).unwrap().fail, Fail::Closed);
        assert_eq!(hook(&state(r#""pidvirt.io/fail":"closed""#), Fail::Open).unwrap().fail, Fail::Closed);
        assert_eq!(hook(&state(r#""pidvirt.io/mode":"enforce""#), Fail::Open).unwrap().fail, Fail::Closed);
        assert_eq!(hook(&state(r#""pidvirt.io/fail":"open""#), Fail::Open).unwrap().fail, Fail::Open);
    }

    #[test]
    fn states_become_registrations_and_unregistrations() {
        let created = r#"{"ociVersion":"1.0.2","id":"web-1","status":"created","pid":4242,"bundle":"/b",
                         "annotations":{"pod":"web","pidvirt.io/mode":"enforce"}}"#;
        let HookAction::Register(Request::Register { id, pid, labels, by, mode, .. }) =
            action(created).unwrap()
        else {
            panic!("not a registration")
        };
        assert_eq!(
            (id.as_str(), pid, by.as_deref(), mode.as_deref()),
            ("web-1", Some(4242), Some("oci"), Some("enforce"))
        );
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
