//! Runtime container ids found in cgroup paths, for containers no orchestrator registered.

/// A runtime's container found from a cgroup path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovered {
    pub runtime: &'static str,
    pub id: String,
    pub pod_uid: Option<String>,
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The runtime container id in a cgroup path, for docker (`docker-<id>.scope`, `/docker/<id>`),
/// containerd/CRI (`cri-containerd-<id>.scope`), CRI-O (`crio-<id>.scope`), podman
/// (`libpod-<id>.scope`, `/libpod_parent/libpod-<id>`) and kubepods paths (cgroupfs and systemd
/// drivers). Conmon scopes are not containers.
pub fn discover(cgroup_path: &str) -> Option<Discovered> {
    let parts: Vec<&str> = cgroup_path.split('/').filter(|p| !p.is_empty()).collect();
    let pod_uid = parts.iter().find_map(|p| {
        let p = p.strip_suffix(".slice").unwrap_or(p);
        let uid = p.rsplit_once("-pod").map(|(_, u)| u).or_else(|| p.strip_prefix("pod"))?;
        (!uid.is_empty()).then(|| uid.replace('_', "-"))
    });
    let kube = parts.iter().any(|p| p.starts_with("kubepods"));
    for (i, part) in parts.iter().enumerate().rev() {
        let scope = part.strip_suffix(".scope").unwrap_or(part);
        for (prefix, runtime) in [
            ("docker-", "docker"),
            ("cri-containerd-", "containerd"),
            ("crio-", "cri-o"),
            ("libpod-", "podman"),
        ] {
            if let Some(id) = scope.strip_prefix(prefix)
                && is_container_id(id)
            {
                return Some(Discovered { runtime, id: id.into(), pod_uid: pod_uid.clone() });
            }
        }
        if is_container_id(part) && i > 0 {
            let parent = parts[i - 1];
            if parent == "docker" {
                return Some(Discovered { runtime: "docker", id: (*part).into(), pod_uid: None });
            }
            if kube {
                return Some(Discovered {
                    runtime: "kubernetes",
                    id: (*part).into(),
                    pod_uid: pod_uid.clone(),
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_of_runtime_ids_from_cgroup_paths() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let d = |p: String| discover(&p);
        let docker = d(format!("/system.slice/docker-{id}.scope")).unwrap();
        assert_eq!((docker.runtime, docker.id.as_str()), ("docker", id));
        assert_eq!(d(format!("/docker/{id}")).unwrap().runtime, "docker");
        let cri = d(format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2c5d4e8a_1b2c_4d5e_8f90_a1b2c3d4e5f6.slice/cri-containerd-{id}.scope"
        ))
        .unwrap();
        assert_eq!((cri.runtime, cri.id.as_str()), ("containerd", id));
        assert_eq!(cri.pod_uid.as_deref(), Some("2c5d4e8a-1b2c-4d5e-8f90-a1b2c3d4e5f6"));
        let crio = d(format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podabc.slice/crio-{id}.scope"
        ))
        .unwrap();
        assert_eq!((crio.runtime, crio.pod_uid.as_deref()), ("cri-o", Some("abc")));
        assert_eq!(d(format!("/machine.slice/libpod-{id}.scope")).unwrap().runtime, "podman");
        assert_eq!(d(format!("/libpod_parent/libpod-{id}")).unwrap().runtime, "podman");
        let kube = d(format!("/kubepods/burstable/pod7f0c1a2b-3c4d-5e6f-7a8b-9c0d1e2f3a4b/{id}")).unwrap();
        assert_eq!((kube.runtime, kube.id.as_str()), ("kubernetes", id));
        assert_eq!(kube.pod_uid.as_deref(), Some("7f0c1a2b-3c4d-5e6f-7a8b-9c0d1e2f3a4b"));
        // Not containers: conmon, the host, short ids, user slices.
        assert_eq!(d(format!("/machine.slice/libpod-conmon-{id}.scope")), None);
        assert_eq!(d(format!("/system.slice/crio-conmon-{id}.scope")), None);
        assert_eq!(d("/".into()), None);
        assert_eq!(d("/user.slice/user-1000.slice/session-2.scope".into()), None);
        assert_eq!(d("/docker/abc".into()), None);
    }
}
