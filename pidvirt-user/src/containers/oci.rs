//! The OCI runtime hook (`pidvirt oci-hook`): the container state a runtime passes to its hooks
//! on stdin becomes a registration (states creating, created, running) or an unregistration
//! (stopped). Annotations become labels; `pidvirt.io/mode` sets the policy. A `stopped` state
//! whose pid is a live process of another pid namespace is a restore: runc before 1.2 runs the
//! prestart hooks of `runc restore` (CRIU) that way, with the restored init's pid.
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
/// that runs `exe oci-hook` at createRuntime, prestart (the only stage runc before 1.2 runs at a
/// restore; at a create it registers the same container again, which changes nothing) and
/// poststop for every container.
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
        "stages": ["createRuntime", "prestart", "poststop"],
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
    Ok(Hook { id, action: action(parsed, restored_init)?, fail: if closed { Fail::Closed } else { fail } })
}

/// Whether `pid` is a live process in a pid namespace other than this one's (the hook runs in
/// the runtime's): a container's init.
fn restored_init(pid: i32) -> bool {
    let pidns = |p: u32| crate::procscan::pidns_of(p).ok();
    let theirs = u32::try_from(pid).ok().and_then(pidns);
    matches!((theirs, pidns(std::process::id())), (Some(theirs), Some(ours)) if theirs != ours)
}

/// The action for `state`; `restored(pid)` says whether a `stopped` state's pid is a restored
/// container's init.
fn action(state: OciState, restored: impl Fn(i32) -> bool) -> Result<HookAction, OciError> {
    let register = |state: OciState, pid: i32| {
        let mode = state.annotations.get(MODE_ANNOTATION).cloned();
        HookAction::Register(Request::Register {
            id: state.id,
            pid: Some(pid),
            cgroup: None,
            pidns: None,
            labels: state.annotations,
            by: Some("oci".into()),
            mode,
        })
    };
    match state.status.as_str() {
        "creating" | "created" | "running" => {
            let pid = state.pid.filter(|p| *p > 0).ok_or_else(|| OciError::NoPid(state.id.clone()))?;
            Ok(register(state, pid))
        }
        "stopped" => match state.pid.filter(|p| *p > 0 && restored(*p)) {
            Some(pid) => Ok(register(state, pid)),
            None => Ok(HookAction::Unregister(state.id)),
        },
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

    #[test]
    fn a_stopped_state_naming_a_live_init_elsewhere_is_a_restore() {
        let parse = |s: &str| serde_json::from_str::<OciState>(s).unwrap();
        let restore = r#"{"id":"web-1","status":"stopped","pid":4242}"#;
        let HookAction::Register(Request::Register { id, pid, .. }) =
            super::action(parse(restore), |p| p == 4242).unwrap()
        else {
            panic!("not a registration")
        };
        assert_eq!((id.as_str(), pid), ("web-1", Some(4242)));
        // A pid that is gone, or of this namespace: the container stopped.
        assert_eq!(super::action(parse(restore), |_| false).unwrap(), HookAction::Unregister("web-1".into()));
        let stopped = r#"{"id":"web-1","status":"stopped","pid":0}"#;
        assert_eq!(super::action(parse(stopped), |_| true).unwrap(), HookAction::Unregister("web-1".into()));
        // The real check: this process is alive but in its own namespace; pid 0 and beyond
        // pid_max name nothing.
        assert!(!restored_init(std::process::id() as i32));
        assert!(!restored_init(i32::MAX));
    }
}
