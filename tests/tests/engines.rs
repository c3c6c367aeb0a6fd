//! Real container engines, started by each test: containers are named as their engine names
//! them (Docker, Podman, containerd), routine orchestration reports nothing, and what a missed
//! translation looks like between containers is still reported with both containers named.
//!
//! Where an engine cannot run (it is not installed, or does not start on this kernel's machine),
//! the test says so by name and checks what pidvirt does without it: nothing named, nothing
//! reported, `status` saying the runtime is absent.

use std::{
    os::unix::fs::MetadataExt as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use tests::{
    AuditRecord, ContainerRow, Daemon, Fixture,
    engines::{
        Containerd, Dockerd, IMAGE, PAUSE_IMAGE, Podman,
        runc::{RuncContainer, bundle, runc},
    },
    eventually, note_unavailable, proc_truth,
};

const FIXTURE: &str = env!("CARGO_BIN_EXE_pidvirt-fixture");
const ESRCH: i64 = -3;

/// A dockerd for `test`, or None after noting why there is none and checking that a daemon
/// pointed at a socket nobody serves says so.
fn dockerd(test: &str) -> Option<Dockerd> {
    match Dockerd::start() {
        Ok(d) => Some(d),
        Err(why) => {
            note_unavailable(
                test,
                &format!("Docker does not run here: {}", why.lines().next().unwrap_or("")),
            );
            let d = Daemon::start_with(&["--docker-socket", "/nonexistent/docker.sock"]);
            let docker = runtime_state(&d, "docker");
            assert_eq!(docker.0, "absent", "{docker:?}");
            None
        }
    }
}

/// A podman for `test`, or None after noting why there is none.
fn podman(test: &str) -> Option<Podman> {
    match Podman::new() {
        Ok(p) => Some(p),
        Err(why) => {
            note_unavailable(
                test,
                &format!("Podman does not run here: {}", why.lines().next().unwrap_or("")),
            );
            None
        }
    }
}

/// The daemon asking only Docker's socket (and, if given, its containerd's).
fn daemon_for(docker: &Dockerd, containerd: bool) -> Daemon {
    let socket = docker.socket.to_string_lossy().into_owned();
    let containerd =
        if containerd { docker.containerd_socket.to_string_lossy().into_owned() } else { "none".into() };
    Daemon::start_with(&[
        "--docker-socket",
        &socket,
        "--containerd-socket",
        &containerd,
        "--podman-socket",
        "none",
        "--cri-socket",
        "none",
    ])
}

/// The (state, error) `status` gives runtime endpoint `engine`.
fn runtime_state(d: &Daemon, engine: &str) -> (String, String) {
    let out = d.cli(&["status"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let r =
        v["runtimes"].as_array().unwrap().iter().find(|r| r["engine"] == engine).cloned().unwrap_or_default();
    (r["state"].as_str().unwrap_or("").into(), r["error"].as_str().unwrap_or("").into())
}

/// The container listed with id `id`, once its runtime named it `name`.
fn named(d: &Daemon, id: &str, name: &str) -> ContainerRow {
    eventually(tests::settle(), &format!("container {id} named {name}"), || {
        d.containers().into_iter().find(|c| c.id == id && c.runtime.as_ref().is_some_and(|r| r.name == name))
    })
}

fn pidns_of(pid: u32) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/ns/pid")).unwrap().ino()
}

fn wait_record(d: &Daemon, what: &str, pred: impl Fn(&AuditRecord) -> bool) -> AuditRecord {
    eventually(tests::settle(), what, || d.audit_log().into_iter().find(|r| pred(r)))
}

#[test]
fn docker_containers_are_listed_by_their_docker_names_before_and_after_attach() {
    let test = "docker_containers_are_listed_by_their_docker_names_before_and_after_attach";
    let Some(docker) = dockerd(test) else { return };
    docker.ok(&["run", "-d", "--name", "before", "--label", "team=a", IMAGE, "sleep", "600"]);
    let d = daemon_for(&docker, false);
    docker.ok(&["run", "-d", "--name", "after", "--label", "team=b", IMAGE, "sleep", "600"]);
    for (name, team) in [("before", "a"), ("after", "b")] {
        let id = docker.id(name);
        let c = named(&d, &id, name);
        let runtime = c.runtime.unwrap();
        assert_eq!((runtime.engine.as_str(), runtime.image.as_str()), ("docker", IMAGE));
        assert_eq!(c.labels.get("team").map(String::as_str), Some(team));
        assert_eq!((c.kind.as_str(), c.registered_by.as_str()), ("pidns", "runtime"));
        assert_eq!(c.pidns, pidns_of(docker.pid(name)), "the namespace of the init docker names");
    }
    // `--container NAME`, and a unique prefix of the id (12 hex, as docker shows it).
    let ns = pidns_of(docker.pid("after"));
    let short = &docker.id("after")[..12];
    for name in ["after", short] {
        let out = d.cli(&["ps", "--json", "--container", name]);
        assert_eq!(out.code, 0, "ps --container {name}: {}", out.stderr);
        let rows: Vec<tests::PsRow> = serde_json::from_str(&out.stdout).unwrap();
        let truth: Vec<u32> = proc_truth::tasks_in(ns).iter().map(|t| t.tid).collect();
        let mut listed: Vec<u32> = rows.iter().map(|r| r.host_tid).collect();
        listed.sort_unstable();
        let mut truth = truth.clone();
        truth.sort_unstable();
        assert_eq!(listed, truth, "ps --container {name} lists the container's tasks");
    }
    // A `docker exec`'d process is tracked with the ids /proc gives it.
    docker.ok(&["exec", "-d", "after", "sleep", "577"]);
    let exec = eventually(tests::settle(), "the exec'd sleep in /proc", || {
        proc_truth::tasks_in(ns).into_iter().find(|t| {
            std::fs::read_to_string(format!("/proc/{}/cmdline", t.pid)).is_ok_and(|c| c.contains("577"))
        })
    });
    let row = eventually(tests::settle(), "the exec'd sleep in ps", || d.ps_by_tid().remove(&exec.tid));
    assert_eq!((row.nspid, row.nstgid), (exec.nspid, exec.nstgid));
    assert_eq!(row.container, docker.id("after"));
}

#[test]
fn a_leak_from_one_docker_container_into_anothers_init_names_both() {
    let test = "a_leak_from_one_docker_container_into_anothers_init_names_both";
    let Some(docker) = dockerd(test) else { return };
    let d = daemon_for(&docker, false);
    docker.ok(&["run", "-d", "--name", "web-a", IMAGE, "sleep", "600"]);
    docker.ok(&["run", "-d", "--name", "web-b", IMAGE, "sleep", "600"]);
    let (a, b) = (docker.id("web-a"), docker.id("web-b"));
    named(&d, &a, "web-a");
    named(&d, &b, "web-b");
    let b_init = docker.pid("web-b");
    // The kernel: b's host pid names nothing inside a.
    let out = docker.docker(&["exec", "web-a", "kill", "-0", &b_init.to_string()]);
    assert_ne!(out.code, 0, "b's host pid named something in a");
    let r = wait_record(&d, "the leak from a", |r| r.verdict == "leak" && r.value == i64::from(b_init));
    assert_eq!(r.container, a);
    assert_eq!(r.runtime.as_ref().map(|rt| rt.name.as_str()), Some("web-a"));
    let also = r.also.as_ref().expect("the task whose host pid leaked");
    assert_eq!((also.host_pid, also.container.as_str()), (b_init, b.as_str()));
    assert_eq!(also.runtime.as_ref().map(|rt| rt.name.as_str()), Some("web-b"));
}

/// `docker run --pid=container:app` (what a pod sharing its process namespace does): two
/// containers, one pid namespace. Each keeps its engine's name, the namespace the name of the
/// container whose init is its init; numbers the kernel translated in that namespace pass
/// silently both ways, and a host pid used there is still a leak, of the container that used it.
#[test]
fn containers_sharing_one_pid_namespace_keep_their_names_and_name_each_other_silently() {
    let test = "containers_sharing_one_pid_namespace_keep_their_names_and_name_each_other_silently";
    let Some(docker) = dockerd(test) else { return };
    let d = daemon_for(&docker, false);
    docker.ok(&["run", "-d", "--name", "app", IMAGE, "sleep", "600"]);
    docker.ok(&["run", "-d", "--name", "side", "--pid=container:app", IMAGE, "sleep", "600"]);
    let (app, side) = (docker.id("app"), docker.id("side"));
    let (app_init, side_init) = (docker.pid("app"), docker.pid("side"));
    // The kernel: one namespace, app's init is its vpid 1, side's init is not.
    let ns = pidns_of(app_init);
    assert_eq!(pidns_of(side_init), ns, "side joined app's pid namespace");
    let side_task = proc_truth::task(side_init, side_init).expect("side's init");
    let side_vpid = *side_task.nspid.last().unwrap();
    assert_eq!(proc_truth::task(app_init, app_init).and_then(|t| t.nspid.last().copied()), Some(1));
    assert_ne!(side_vpid, 1);

    let a = named(&d, &app, "app");
    assert_eq!((a.kind.as_str(), a.pidns), ("pidns", ns));
    let s = named(&d, &side, "side");
    assert_eq!((s.kind.as_str(), s.pidns, s.level), ("cgroup", ns, 1), "{s:?}");
    assert_eq!(s.parent.as_deref(), Some(app.as_str()), "the namespace's container is side's parent");
    let rows = d.ps_by_tid();
    assert_eq!(rows.get(&app_init).map(|r| r.container.as_str()), Some(app.as_str()));
    let row = rows.get(&side_init).expect("side's init in ps");
    assert_eq!((row.container.as_str(), &row.nspid), (side.as_str(), &side_task.nspid));

    // Each names the other by the number the kernel gave it in their namespace.
    assert_eq!(docker.docker(&["exec", "side", "kill", "-0", "1"]).code, 0);
    assert_eq!(docker.docker(&["exec", "app", "kill", "-0", &side_vpid.to_string()]).code, 0);
    let (crossings, _) = d.container_crossings(&side);
    assert!(crossings["kill"]["ok"] >= 1, "side's kill of app's init, counted as side's: {crossings:?}");
    // A host pid inside is still a leak: side used app's host pid, which names nothing there.
    assert_ne!(docker.docker(&["exec", "side", "kill", "-0", &app_init.to_string()]).code, 0);
    let leak = wait_record(&d, "the leak from side", |r| r.verdict == "leak");
    assert_eq!((leak.container.as_str(), leak.value), (side.as_str(), i64::from(app_init)));
    assert_eq!(leak.runtime.as_ref().map(|rt| rt.name.as_str()), Some("side"));
    std::thread::sleep(Duration::from_millis(500));
    let records = d.audit_log();
    assert_eq!(records.len(), 1, "only the leak: {records:#?}");
}

/// Lifecycle operations on Docker, Podman (if it runs) and runc; answers how many were made.
fn churn(docker: &Dockerd, podman: Option<&Podman>) -> usize {
    let mut ops = 0;
    for i in 0..3 {
        let out = docker.docker(&["run", "--rm", IMAGE, "true"]);
        ops += done("docker run --rm", out.code, &out.stderr);
        let name = format!("churn{i}");
        // With --init, docker-init (tini) is the init: it takes the stop signal with
        // sigtimedwait, whose si_pid the kernel zeroes (the sender is of the host's namespace).
        let init = i == 1;
        let mut args = vec!["run", "-d"];
        args.extend(init.then_some("--init"));
        args.extend(["--name", &name, IMAGE, "sleep", "600"]);
        let out = docker.docker(&args);
        ops += done("docker run -d", out.code, &out.stderr);
        if init {
            let comm =
                std::fs::read_to_string(format!("/proc/{}/comm", docker.pid(&name))).unwrap_or_default();
            assert_eq!(comm.trim(), "docker-init", "the container's init");
        }
        let out = docker.docker(&["exec", &name, "ps"]);
        ops += done("docker exec ps", out.code, &out.stderr);
        let out = docker.docker(&["exec", &name, "sh", "-c", "sleep 0.2 & wait"]);
        ops += done("docker exec sh", out.code, &out.stderr);
        let out = docker.docker(&["restart", "-t", "1", &name]);
        ops += done("docker restart", out.code, &out.stderr);
        let out = docker.docker(&["stop", "-t", "1", &name]);
        ops += done("docker stop", out.code, &out.stderr);
        let out = docker.docker(&["rm", &name]);
        ops += done("docker rm", out.code, &out.stderr);
    }
    // A daemon that checks the pid file it left (kill -0 of its old number) when it starts again,
    // stopped for longer than the release window: a pid file's stale number (the daemon started
    // after a few commands, so its number is not one the check's own commands just used).
    let check = "if [ -f /run.pid ]; then p=$(cat /run.pid); kill -0 $p 2>/dev/null && echo alive $p || echo stale $p; fi; for i in 1 2 3 4 5 6; do /bin/true; done; sleep 600 & echo $! > /run.pid; wait";
    let out = docker.docker(&["run", "-d", "--name", "pidfile", IMAGE, "sh", "-c", check]);
    ops += done("docker run -d (a pid file)", out.code, &out.stderr);
    let out = docker.docker(&["stop", "-t", "1", "pidfile"]);
    ops += done("docker stop", out.code, &out.stderr);
    std::thread::sleep(Duration::from_millis(2500));
    let out = docker.docker(&["start", "pidfile"]);
    ops += done("docker start", out.code, &out.stderr);
    eventually(tests::settle(), "the pid file checked", || {
        let logs = docker.docker(&["logs", "pidfile"]);
        logs.stdout.contains("stale ").then_some(())
    });
    let out = docker.docker(&["rm", "-f", "pidfile"]);
    ops += done("docker rm -f", out.code, &out.stderr);
    if let Some(p) = podman {
        for i in 0..2 {
            let name = format!("pchurn{i}");
            let out = p.run(&["--name", &name], &["sleep", "600"]);
            ops += done("podman run -d", out.code, &out.stderr);
            let out = p.podman(&["exec", &name, "ps"]);
            ops += done("podman exec", out.code, &out.stderr);
            let out = p.podman(&["stop", "-t", "1", &name]);
            ops += done("podman stop", out.code, &out.stderr);
            let out = p.podman(&["rm", "-f", &name]);
            ops += done("podman rm -f", out.code, &out.stderr);
        }
        let out = p.run(&["--name", "pchurn-live"], &["sleep", "600"]);
        ops += done("podman run -d", out.code, &out.stderr);
        let out = p.podman(&["rm", "-f", "-t", "0", "pchurn-live"]);
        ops += done("podman rm -f (running)", out.code, &out.stderr);
    }
    for i in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        bundle(dir.path(), None, &serde_json::json!({}));
        let id = format!("pidvirt-churn-{}-{i}", std::process::id());
        let _guard = RuncContainer(id.clone());
        let (status, stderr) = runc(&["run", "-d", "--bundle", &dir.path().to_string_lossy(), &id]);
        ops += done("runc run -d", status.code().unwrap_or(-1), &stderr);
        let (status, stderr) = runc(&["exec", &id, "/bin/sh", "-c", "true"]);
        ops += done("runc exec", status.code().unwrap_or(-1), &stderr);
        let (status, stderr) = runc(&["kill", &id, "KILL"]);
        ops += done("runc kill", status.code().unwrap_or(-1), &stderr);
        eventually(tests::settle(), "runc container stopped", || {
            (tests::engines::runc::runc_state(&id)?["status"] == "stopped").then_some(())
        });
        let (status, stderr) = runc(&["delete", &id]);
        ops += done("runc delete", status.code().unwrap_or(-1), &stderr);
    }
    ops
}

/// One lifecycle operation that must have succeeded.
fn done(what: &str, code: i32, stderr: &str) -> usize {
    assert_eq!(code, 0, "{what}: {stderr}");
    1
}

#[test]
fn routine_orchestration_reports_nothing_while_leaks_collisions_and_siblings_still_are() {
    let test = "routine_orchestration_reports_nothing_while_leaks_collisions_and_siblings_still_are";
    let Some(docker) = dockerd(test) else { return };
    let podman = podman(test);
    let d = daemon_for(&docker, true);
    let ops = churn(&docker, podman.as_ref());
    assert!(ops >= 30, "only {ops} lifecycle operations");
    std::thread::sleep(Duration::from_secs(1));
    let records = d.audit_log();
    assert!(records.is_empty(), "{ops} routine operations were reported: {records:#?}");
    // docker-init took the stop and restart signals with si_pid 0: counted, not reported.
    let nested = d.stats()["crossings"]["rt_sigtimedwait"]["nested"].as_u64().unwrap_or(0);
    assert!(nested >= 1, "docker-init's sigtimedwait was not counted");

    // What is still reported: a host pid used inside a container (leak), a container acting on
    // a sibling (a --pid=host container signalling another container), and a collision.
    docker.ok(&["run", "-d", "--name", "web-a", IMAGE, "sleep", "600"]);
    docker.ok(&["run", "-d", "--name", "web-b", IMAGE, "sleep", "600"]);
    docker.ok(&["run", "-d", "--pid=host", "--name", "hostpid", IMAGE, "sleep", "600"]);
    let (a, b, h) = (docker.id("web-a"), docker.id("web-b"), docker.id("hostpid"));
    let hc = named(&d, &h, "hostpid");
    assert_eq!(hc.kind, "cgroup", "a --pid=host container is tracked by its cgroup");
    named(&d, &b, "web-b");
    named(&d, &a, "web-a");
    let b_init = docker.pid("web-b");
    assert_ne!(docker.docker(&["exec", "web-a", "kill", "-0", &b_init.to_string()]).code, 0);
    // The kernel lets the --pid=host container reach b (one pid namespace), a sibling action.
    assert_eq!(docker.docker(&["exec", "hostpid", "kill", "-0", &b_init.to_string()]).code, 0);
    let mut f = Fixture::start(FIXTURE, 1);
    let y = f.num("spawn 0");
    let y_host = f.host_tid(y as u32);
    let x = f.num(&format!("spawn_vpid {y_host} 0"));
    assert_eq!(x, i64::from(y_host), "set_tid of the sibling's host pid");
    assert_eq!(f.num(&format!("sys kill {y_host} 0")), 0);
    let leak = wait_record(&d, "the leak", |r| r.verdict == "leak");
    assert_eq!((leak.container.as_str(), leak.value), (a.as_str(), i64::from(b_init)));
    let sibling = wait_record(&d, "the sibling action", |r| r.verdict == "cross_container");
    assert_eq!(sibling.container, h);
    assert_eq!(
        sibling.target.as_ref().map(|t| (t.host_pid, t.container.as_str())),
        Some((b_init, b.as_str()))
    );
    let collision = wait_record(&d, "the collision", |r| r.verdict == "collision");
    assert_eq!(collision.container, f.container());
    std::thread::sleep(Duration::from_millis(500));
    let records = d.audit_log();
    assert_eq!(records.len(), 3, "exactly the leak, the sibling action and the collision: {records:#?}");
}

#[test]
fn podman_containers_come_in_through_the_hooks_d_entry_and_its_api() {
    let test = "podman_containers_come_in_through_the_hooks_d_entry_and_its_api";
    let Some(mut podman) = podman(test) else { return };
    podman.serve().expect("podman system service");
    let socket = podman.socket.to_string_lossy().into_owned();
    let d = Daemon::start_with(&[
        "--podman-socket",
        &socket,
        "--docker-socket",
        "none",
        "--containerd-socket",
        "none",
        "--cri-socket",
        "none",
    ]);
    let hooks = podman.hooks_dir.to_string_lossy().into_owned();
    let out = d.cli(&["install-hook", "--dir", &hooks]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = podman.run(&["--name", "p1", "--annotation", "team=x"], &["sleep", "600"]);
    assert_eq!(out.code, 0, "podman run: {}", out.stderr);
    let id = out.stdout.trim().to_string();
    // Podman's API answers slowly under emulation (each call of the daemon's may time out and be
    // retried with a backoff): a longer wait than Docker's.
    let c = eventually(tests::settle() * 3, "container named p1 by Podman's API", || {
        d.containers().into_iter().find(|c| c.id == id && c.runtime.as_ref().is_some_and(|r| r.name == "p1"))
    });
    assert_eq!(c.registered_by, "oci", "the hook registered it");
    assert_eq!(c.labels.get("team").map(String::as_str), Some("x"), "annotations are labels");
    let runtime = c.runtime.unwrap();
    assert_eq!((runtime.engine.as_str(), runtime.image.as_str()), ("podman", IMAGE));
    let pid: u32 = podman.podman(&["inspect", "-f", "{{.State.Pid}}", "p1"]).stdout.trim().parse().unwrap();
    assert_eq!(c.pidns, pidns_of(pid));
    // A container joining p1's pid namespace: the hook registers it by its cgroup, in that
    // namespace, and p1 keeps the namespace's name.
    let out = podman.run(&["--name", "p2", "--pid=container:p1"], &["sleep", "600"]);
    assert_eq!(out.code, 0, "podman run --pid=container:p1: {}", out.stderr);
    let id2 = out.stdout.trim().to_string();
    let pid2: u32 = podman.podman(&["inspect", "-f", "{{.State.Pid}}", "p2"]).stdout.trim().parse().unwrap();
    assert_eq!(pidns_of(pid2), c.pidns, "p2 joined p1's pid namespace");
    let c2 = eventually(tests::settle() * 3, "container named p2 by Podman's API", || {
        d.containers().into_iter().find(|c| c.id == id2 && c.runtime.as_ref().is_some_and(|r| r.name == "p2"))
    });
    assert_eq!(
        (c2.kind.as_str(), c2.registered_by.as_str(), c2.pidns, c2.level),
        ("cgroup", "oci", c.pidns, 1)
    );
    let p1 = d.containers().into_iter().find(|c| c.id == id).expect("p1");
    assert_eq!(p1.runtime.map(|r| r.name), Some("p1".into()), "p1 keeps its namespace's name");
    assert_eq!(podman.podman(&["exec", "p2", "kill", "-0", "1"]).code, 0, "p2 names p1's init");
    assert_eq!(d.ps_by_tid().get(&pid2).map(|r| r.container.clone()), Some(id2.clone()));
    // poststop unregisters them; the runtime then names them no more once they are gone.
    for name in ["p2", "p1"] {
        let out = podman.podman(&["rm", "-f", "-t", "0", name]);
        assert_eq!(out.code, 0, "podman rm {name}: {}", out.stderr);
    }
    eventually(tests::settle(), "p1 and p2 unregistered", || {
        d.containers().iter().all(|c| c.id != id && c.id != id2).then_some(())
    });
    let records = d.audit_log();
    assert!(records.is_empty(), "{records:#?}");
}

#[test]
fn the_hook_fails_open_unless_a_container_asks_to_fail_closed() {
    // No daemon serves this socket.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody.sock");
    let run = |annotations: serde_json::Value| {
        let bundle_dir = tempfile::tempdir().unwrap();
        bundle(bundle_dir.path(), Some(&socket), &annotations);
        let id =
            format!("pidvirt-failopen-{}-{}", std::process::id(), annotations.as_object().unwrap().len());
        let _guard = RuncContainer(id.clone());
        let (status, stderr) = runc(&["run", "-d", "--bundle", &bundle_dir.path().to_string_lossy(), &id]);
        (status.success(), stderr)
    };
    let (started, stderr) = run(serde_json::json!({}));
    assert!(started, "the container starts while the daemon is down: {stderr}");
    let (started, stderr) = run(serde_json::json!({"pidvirt.io/fail": "closed"}));
    assert!(!started, "a container that asks to fail closed does not start");
    assert!(stderr.contains("nobody.sock"), "runc says why: {stderr}");
}

#[test]
fn containerd_containers_carry_their_kubernetes_identity() {
    let test = "containerd_containers_carry_their_kubernetes_identity";
    let Some(docker) = dockerd(test) else { return };
    let d = daemon_for(&docker, true);
    let cs = docker.containerd_socket.to_string_lossy().into_owned();
    let tar = tempfile::NamedTempFile::new().unwrap();
    docker.ok(&["save", IMAGE, "-o", &tar.path().to_string_lossy()]);
    let ctr = |args: &[&str]| {
        let out = Command::new("ctr")
            .args(["-a", &cs, "-n", "k8s.io"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "ctr {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    ctr(&["images", "import", &tar.path().to_string_lossy()]);
    let id = format!("pv-k8s-{}", std::process::id());
    ctr(&[
        "run",
        "-d",
        "--label",
        "io.kubernetes.pod.name=web-0",
        "--label",
        "io.kubernetes.pod.namespace=shop",
        "--label",
        "io.kubernetes.container.name=app",
        IMAGE,
        &id,
        "/bin/sleep",
        "600",
    ]);
    let c = named(&d, &id, "app");
    let k8s = c.k8s.expect("the Kubernetes identity");
    assert_eq!((k8s.namespace.as_str(), k8s.pod.as_str(), k8s.container.as_str()), ("shop", "web-0", "app"));
    assert_eq!(c.runtime.unwrap().engine, "containerd");
    // `--container POD` finds it too.
    assert_eq!(d.cli(&["ps", "--container", "web-0"]).code, 0);
    let _ = Command::new("ctr").args(["-a", &cs, "-n", "k8s.io", "task", "kill", "-s", "KILL", &id]).output();
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("ctr").args(["-a", &cs, "-n", "k8s.io", "task", "delete", &id]).output();
    let _ = Command::new("ctr").args(["-a", &cs, "-n", "k8s.io", "container", "delete", &id]).output();
}

#[test]
fn with_dockerd_stopped_the_audit_goes_on_and_new_containers_are_named_when_it_is_back() {
    let test = "with_dockerd_stopped_the_audit_goes_on_and_new_containers_are_named_when_it_is_back";
    let Some(mut docker) = dockerd(test) else { return };
    let d = daemon_for(&docker, false);
    docker.ok(&["run", "-d", "--name", "first", IMAGE, "sleep", "600"]);
    let first = docker.id("first");
    let first_init = docker.pid("first");
    named(&d, &first, "first");
    docker.stop_engine();
    eventually(tests::settle(), "status says Docker is down", || {
        matches!(runtime_state(&d, "docker").0.as_str(), "absent" | "unreachable").then_some(())
    });
    // Auditing goes on, under the ids of the kernel's view.
    let mut f = Fixture::start(FIXTURE, 1);
    let v = f.num("spawn 0") as u32;
    let host = f.host_tid(v);
    assert_eq!(f.num(&format!("sys kill {host} 0")), ESRCH);
    let r = wait_record(&d, "a leak with Docker down", |r| r.verdict == "leak" && r.value == i64::from(host));
    assert_eq!(r.container, f.container(), "nothing renamed");
    docker.spawn().expect("dockerd again");
    eventually(tests::settle(), "status says Docker is back", || {
        (runtime_state(&d, "docker").0 == "connected").then_some(())
    });
    docker.ok(&["run", "-d", "--name", "second", IMAGE, "sleep", "600"]);
    named(&d, &docker.id("second"), "second");
    // Docker stops its containers when it stops (or, killed first, when it is back): once the
    // kernel says the first one's init is gone, the sweep retires the container (two sweeps 3 s
    // apart after its namespace empties).
    eventually(tests::settle(), "the first container's init exits", || {
        (!proc_truth::alive(first_init)).then_some(())
    });
    eventually(tests::settle() * 2, "the stopped container is gone", || {
        d.containers().iter().all(|c| c.id != first).then_some(())
    });
}

/// The dynamic loader and library path of the host, as seen under `/host` in a container.
fn host_loader() -> (String, String) {
    let ld = std::fs::canonicalize("/lib64/ld-linux-x86-64.so.2").expect("the dynamic loader");
    (format!("/host{}", ld.display()), "/host/lib/x86_64-linux-gnu:/host/usr/lib/x86_64-linux-gnu".into())
}

#[test]
fn a_namespace_nested_in_a_docker_container_is_listed_under_it_and_judged_at_every_level() {
    let test = "a_namespace_nested_in_a_docker_container_is_listed_under_it_and_judged_at_every_level";
    let Some(docker) = dockerd(test) else { return };
    let d = daemon_for(&docker, false);
    let (ld, libs) = host_loader();
    let fixture = format!("/host{}", Path::new(FIXTURE).display());
    for run in 0..5 {
        let name = format!("nest{run}");
        docker.ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "--cap-add",
            "SYS_ADMIN",
            "--security-opt",
            "seccomp=unconfined",
            "-v",
            "/:/host:ro",
            IMAGE,
            "sleep",
            "600",
        ]);
        let id = docker.id(&name);
        named(&d, &id, &name);
        let mut f = Fixture::start_with(
            Command::new("docker").arg("-H").arg(format!("unix://{}", docker.socket.display())).args([
                "exec",
                "-i",
                &name,
                &ld,
                "--library-path",
                &libs,
                &fixture,
                "--depth",
                "1",
            ]),
        );
        let inner = f.inner();
        let nested = format!("{id}/pidns-{inner}");
        let c = eventually(tests::settle(), "the nested namespace listed", || {
            d.containers().into_iter().find(|c| c.pidns == inner)
        });
        assert_eq!(
            (c.id.as_str(), c.parent.as_deref(), c.level),
            (nested.as_str(), Some(id.as_str()), 2),
            "run {run}"
        );
        // From the nested namespace, the docker namespace's number of a sibling: a leak read at
        // level 1, the Docker container's namespace.
        for _ in 0..3 {
            f.num("spawn 0");
        }
        let y = f.num("spawn 0") as u32;
        let y_host = f.host_tid(y);
        let t = proc_truth::task(y_host, y_host).unwrap();
        let in_docker = t.nspid[1];
        assert_eq!(f.num(&format!("sys kill {in_docker} 0")), ESRCH);
        let r = wait_record(&d, "the leak read at level 1", |r| r.verdict == "leak" && r.container == nested);
        assert_eq!(r.also.as_ref().map(|a| a.host_pid), Some(y_host));
        let at = r.read_at.as_ref().unwrap();
        assert_eq!((at.level, at.container.as_str()), (1, id.as_str()));
        assert_eq!(
            r.runtime.as_ref().map(|rt| rt.name.as_str()),
            Some(name.as_str()),
            "named after its holder"
        );
        // A task given that number by set_tid: a collision naming both.
        assert_eq!(f.num(&format!("spawn_vpid {in_docker} 0")), i64::from(in_docker));
        assert_eq!(f.num(&format!("sys kill {in_docker} 0")), 0);
        let r = wait_record(&d, "the collision", |r| r.verdict == "collision" && r.container == nested);
        assert_eq!(r.also.as_ref().map(|a| a.host_pid), Some(y_host));
        drop(f);
        docker.ok(&["rm", "-f", &name]);
        // The next run starts from an empty audit log view.
        let _ = std::fs::write(&d.audit_log, b"");
    }
}

/// A kubelet's calls to a CRI runtime, over its socket.
struct Kubelet {
    rt: tokio::runtime::Runtime,
    client: k8s_cri::v1::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
}

impl Kubelet {
    fn connect(socket: &Path) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let channel = rt.block_on(containerd_client::connect(socket)).expect("the CRI socket");
        Self { rt, client: k8s_cri::v1::runtime_service_client::RuntimeServiceClient::new(channel) }
    }
}

/// `kubelet.method(request)` against the runtime, its answer; panics with the runtime's error.
macro_rules! cri {
    ($kubelet:expr, $method:ident($request:expr)) => {
        $kubelet
            .rt
            .block_on($kubelet.client.$method($request))
            .unwrap_or_else(|e| panic!("CRI {}: {e}", stringify!($method)))
            .into_inner()
    };
}

/// The host pids of processes whose command line is exactly `argv`.
fn pids_running(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}

/// containerd's CRI plugin with the app's and the sandbox's images side-loaded (as one does
/// without a registry), a daemon asking only its CRI socket, and a kubelet's client; None after
/// noting why, when the plugin does not run here.
fn cri(test: &str) -> Option<(Containerd, Daemon, Kubelet)> {
    let docker = dockerd(test)?;
    let containerd = match Containerd::start() {
        Ok(c) => c,
        Err(why) => {
            note_unavailable(
                test,
                &format!("containerd's CRI plugin does not run here: {}", why.lines().next().unwrap_or("")),
            );
            let d = Daemon::start_with(&["--cri-socket", "/nonexistent/cri.sock"]);
            assert_eq!(runtime_state(&d, "cri").0, "absent");
            return None;
        }
    };
    docker.import(PAUSE_IMAGE, &[r#"CMD ["/bin/sleep", "100000"]"#]).unwrap();
    let tar = tempfile::NamedTempFile::new().unwrap();
    docker.ok(&["save", IMAGE, PAUSE_IMAGE, "-o", &tar.path().to_string_lossy()]);
    let import = containerd.ctr(&["images", "import", &tar.path().to_string_lossy()]);
    assert_eq!(import.code, 0, "ctr images import: {}", import.stderr);
    drop(docker);
    let socket = containerd.socket.to_string_lossy().into_owned();
    let d = Daemon::start_with(&[
        "--cri-socket",
        &socket,
        "--docker-socket",
        "none",
        "--containerd-socket",
        "none",
        "--podman-socket",
        "none",
    ]);
    let kubelet = Kubelet::connect(&containerd.socket);
    Some((containerd, d, kubelet))
}

/// The pod sandbox `pod` (namespace "shop") with pid namespace mode `pid`, run as a kubelet
/// runs it: its config (for the containers) and its id.
fn run_pod(
    kubelet: &mut Kubelet,
    pod: &str,
    uid: &str,
    pid: k8s_cri::v1::NamespaceMode,
    logs: &Path,
) -> (k8s_cri::v1::PodSandboxConfig, String) {
    use k8s_cri::v1::{
        LinuxPodSandboxConfig, LinuxSandboxSecurityContext, PodSandboxConfig, PodSandboxMetadata,
        RunPodSandboxRequest,
    };
    // The labels a kubelet puts on every sandbox.
    let labels = [
        ("io.kubernetes.pod.name", pod),
        ("io.kubernetes.pod.namespace", "shop"),
        ("io.kubernetes.pod.uid", uid),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: pod.into(),
            uid: uid.into(),
            namespace: "shop".into(),
            attempt: 0,
        }),
        labels,
        log_directory: logs.to_string_lossy().into_owned(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(pod_namespaces(pid)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = cri!(
        kubelet,
        run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new()
        })
    )
    .pod_sandbox_id;
    (config, id)
}

/// A pod's namespaces: the node's network, the pod's IPC, pid as `pid` says.
fn pod_namespaces(pid: k8s_cri::v1::NamespaceMode) -> k8s_cri::v1::NamespaceOption {
    use k8s_cri::v1::{NamespaceMode, NamespaceOption};
    NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: pid as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// Creates and starts container `name` running `argv` in pod `pod` (as `run_pod` made it), with
/// the labels a kubelet puts on every container; answers its id.
fn start_container(
    kubelet: &mut Kubelet,
    (pod, pod_id): (&k8s_cri::v1::PodSandboxConfig, &str),
    name: &str,
    argv: &[&str],
) -> String {
    use k8s_cri::v1::{
        ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec, LinuxContainerConfig,
        LinuxContainerSecurityContext, StartContainerRequest,
    };
    let meta = pod.metadata.clone().unwrap_or_default();
    let labels = [
        ("io.kubernetes.pod.name", meta.name.as_str()),
        ("io.kubernetes.pod.namespace", meta.namespace.as_str()),
        ("io.kubernetes.pod.uid", meta.uid.as_str()),
        ("io.kubernetes.container.name", name),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let namespaces = pod
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone());
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(ImageSpec { image: IMAGE.into(), ..Default::default() }),
        command: argv.iter().map(ToString::to_string).collect(),
        labels,
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: namespaces,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = cri!(
        kubelet,
        create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        })
    )
    .container_id;
    cri!(kubelet, start_container(StartContainerRequest { container_id: id.clone() }));
    id
}

/// The one process running exactly `argv`, once it runs.
fn the_process(argv: &[&str]) -> u32 {
    eventually(tests::settle(), &format!("{argv:?} running"), || match pids_running(argv)[..] {
        [pid] => Some(pid),
        _ => None,
    })
}

/// The host pid of pod `pod_id`'s pause as the runtime gives it (its verbose status), which the
/// kernel confirms: it runs the sandbox image's command, as the init (vpid 1) of a pid namespace
/// of the pod's own, or in the host's (`own_namespace` false: a hostPID pod).
fn the_pause(kubelet: &mut Kubelet, pod_id: &str, own_namespace: bool) -> u32 {
    let status = cri!(
        kubelet,
        pod_sandbox_status(k8s_cri::v1::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.into(),
            verbose: true
        })
    );
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
    let pid = u32::try_from(info["pid"].as_u64().expect("the sandbox's pid")).unwrap();
    assert_eq!(
        std::fs::read(format!("/proc/{pid}/cmdline")).ok().as_deref(),
        Some(&b"/bin/sleep\0100000\0"[..])
    );
    let nspid = proc_truth::task(pid, pid).expect("the pause").nspid;
    let want = if own_namespace { vec![pid, 1] } else { vec![pid] };
    assert_eq!(nspid, want, "NSpid of {pod_id}'s pause");
    pid
}

/// The container listed for pod `pod`'s sandbox `pod_id`, once named after its pod (where it is,
/// the caller checks).
fn the_sandbox(d: &Daemon, pod_id: &str, pod: &str, uid: &str) -> ContainerRow {
    let c = eventually(tests::settle(), &format!("sandbox {pod_id} named"), || {
        d.containers().into_iter().find(|c| c.id == pod_id && c.k8s.is_some())
    });
    let k8s = c.k8s.clone().unwrap();
    assert_eq!(
        (k8s.namespace.as_str(), k8s.pod.as_str(), k8s.container.as_str(), k8s.pod_uid.as_str()),
        ("shop", pod, "POD", uid)
    );
    assert_eq!(c.runtime.as_ref().map(|r| r.name.as_str()), Some("POD"));
    c
}

/// Stops and removes containers `ids` and pod `pod_id` as a kubelet does.
fn end_pod(kubelet: &mut Kubelet, pod_id: &str, ids: &[&str]) {
    use k8s_cri::v1::{
        RemoveContainerRequest, RemovePodSandboxRequest, StopContainerRequest, StopPodSandboxRequest,
    };
    for id in ids {
        cri!(kubelet, stop_container(StopContainerRequest { container_id: (*id).into(), timeout: 0 }));
        cri!(kubelet, remove_container(RemoveContainerRequest { container_id: (*id).into() }));
    }
    cri!(kubelet, stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod_id.into() }));
    cri!(kubelet, remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod_id.into() }));
}

#[test]
fn a_cri_pods_container_is_named_as_the_kubelet_named_it_and_routine_pod_life_reports_nothing() {
    use k8s_cri::v1::{ContainerStatusRequest, NamespaceMode, VersionRequest};
    let test = "a_cri_pods_container_is_named_as_the_kubelet_named_it_and_routine_pod_life_reports_nothing";
    let Some((_containerd, d, mut kubelet)) = cri(test) else { return };
    let version = cri!(kubelet, version(VersionRequest { version: "v1".into() }));
    let uid = format!("uid-{}", std::process::id());
    let logs = tempfile::tempdir().unwrap();
    // What Kubernetes does by default: each container in a pid namespace of its own.
    let (pod, pod_id) = run_pod(&mut kubelet, "web-0", &uid, NamespaceMode::Container, logs.path());
    let argv = ["/bin/sleep", "6007"];
    let id = start_container(&mut kubelet, (&pod, &pod_id), "app", &argv);

    // The kernel's truth: one such process, init of a pid namespace of its own.
    let pid = the_process(&argv);
    let nspid = proc_truth::task(pid, pid).expect("the container's init").nspid;
    assert_eq!((nspid.len(), nspid.last()), (2, Some(&1)), "NSpid of the container's init: {nspid:?}");
    // The runtime agrees with the kernel about its init.
    let status =
        cri!(kubelet, container_status(ContainerStatusRequest { container_id: id.clone(), verbose: true }));
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
    assert_eq!(info["pid"].as_u64(), Some(u64::from(pid)), "the runtime's pid for {id}");

    let c = named(&d, &id, "app");
    assert_eq!(c.pidns, pidns_of(pid), "the container named is the namespace of its init");
    let runtime = c.runtime.expect("runtime");
    assert_eq!((runtime.engine.as_str(), runtime.image.as_str()), (version.runtime_name.as_str(), IMAGE));
    let k8s = c.k8s.expect("the Kubernetes identity");
    assert_eq!(
        (k8s.namespace.as_str(), k8s.pod.as_str(), k8s.container.as_str(), k8s.pod_uid.as_str()),
        ("shop", "web-0", "app", uid.as_str())
    );
    // The sandbox: its pause is the init of a namespace of its own, named after the pod.
    let pause = the_pause(&mut kubelet, &pod_id, true);
    assert_ne!(pidns_of(pause), pidns_of(pid), "the pause and the app in namespaces of their own");
    let sandbox = the_sandbox(&d, &pod_id, "web-0", &uid);
    assert_eq!((sandbox.kind.as_str(), sandbox.pidns, sandbox.level), ("pidns", pidns_of(pause), 1));
    // The pod's name is its container's; `pod/container` names each.
    for (name, pid) in [("web-0", pid), ("web-0/app", pid), ("web-0/POD", pause)] {
        let ps = d.cli(&["ps", "--json", "--container", name]);
        assert_eq!(ps.code, 0, "ps --container {name}: {}", ps.stderr);
        let rows: Vec<serde_json::Value> = serde_json::from_str(&ps.stdout).unwrap();
        assert!(rows.iter().any(|r| r["host_tid"] == pid), "ps --container {name} lists {pid}: {rows:?}");
    }
    assert!(runtime_state(&d, "cri").0 == "connected", "status: {:?}", runtime_state(&d, "cri"));

    // Stop and remove as a kubelet does: the process goes (kernel), then the container.
    end_pod(&mut kubelet, &pod_id, &[&id]);
    eventually(tests::settle(), "the container's init gone", || (!proc_truth::alive(pid)).then_some(()));
    eventually(tests::settle() * 2, "the container and the sandbox retired", || {
        (!d.containers().iter().any(|c| c.id == id || c.id == pod_id)).then_some(())
    });
    // A pod's whole life is routine orchestration.
    let records = d.audit_log();
    assert!(records.is_empty(), "records for a pod's routine life: {records:#?}");
}

/// A pod sharing its process namespace (`shareProcessNamespace: true`: the CRI's pid mode POD):
/// the sandbox's pause is the namespace's init, and each container joins it. Each container is
/// named as the kubelet named it, its processes listed under it; the containers signal each
/// other silently, and the pod's life reports nothing.
#[test]
fn a_pod_sharing_its_process_namespace_names_each_container_and_its_signals_pass() {
    use k8s_cri::v1::NamespaceMode;
    let test = "a_pod_sharing_its_process_namespace_names_each_container_and_its_signals_pass";
    let Some((_containerd, d, mut kubelet)) = cri(test) else { return };
    let uid = format!("uid-shared-{}", std::process::id());
    let logs = tempfile::tempdir().unwrap();
    let (pod, pod_id) = run_pod(&mut kubelet, "web-1", &uid, NamespaceMode::Pod, logs.path());
    let (app_argv, side_argv) = (["/bin/sleep", "6011"], ["/bin/sleep", "6012"]);
    let app = start_container(&mut kubelet, (&pod, &pod_id), "app", &app_argv);
    let side = start_container(&mut kubelet, (&pod, &pod_id), "sidecar", &side_argv);
    let (app_pid, side_pid) = (the_process(&app_argv), the_process(&side_argv));
    // The kernel: one namespace, which neither container's process is the init of.
    let ns = pidns_of(app_pid);
    assert_eq!(pidns_of(side_pid), ns, "the containers share the pod's pid namespace");
    let vpid = |pid: u32| *proc_truth::task(pid, pid).expect("a container's process").nspid.last().unwrap();
    let (app_vpid, side_vpid) = (vpid(app_pid), vpid(side_pid));
    assert!(app_vpid != 1 && side_vpid != 1, "vpids {app_vpid} and {side_vpid}: pause is the init");
    // The namespace is the sandbox's, named after the pod.
    let pause = the_pause(&mut kubelet, &pod_id, true);
    assert_eq!(pidns_of(pause), ns, "the pause is the init of the pod's namespace");
    let sandbox = the_sandbox(&d, &pod_id, "web-1", &uid);
    assert_eq!((sandbox.kind.as_str(), sandbox.pidns, sandbox.level), ("pidns", ns, 1));

    for (id, name, pid) in [(&app, "app", app_pid), (&side, "sidecar", side_pid)] {
        let c = eventually(tests::settle(), &format!("{name} named"), || {
            d.containers()
                .into_iter()
                .find(|c| c.id == *id && c.k8s.as_ref().is_some_and(|k| k.container == name))
        });
        assert_eq!((c.kind.as_str(), c.pidns, c.level), ("cgroup", ns, 1), "{c:?}");
        assert_eq!(c.parent.as_deref(), Some(pod_id.as_str()), "{name}'s parent is its pod's sandbox");
        assert_eq!(c.k8s.map(|k| (k.pod, k.namespace)), Some(("web-1".into(), "shop".into())));
        assert_eq!(d.ps_by_tid().get(&pid).map(|r| r.container.clone()), Some(id.clone()));
    }
    // The sidecar signals the app by the number the kernel gave it in the pod's namespace.
    let kill = cri!(
        kubelet,
        exec_sync(k8s_cri::v1::ExecSyncRequest {
            container_id: side.clone(),
            cmd: vec!["kill".into(), "-0".into(), app_vpid.to_string()],
            timeout: 10,
        })
    );
    assert_eq!(
        kill.exit_code,
        0,
        "kill -0 {app_vpid} in the sidecar: {}",
        String::from_utf8_lossy(&kill.stderr)
    );
    let (crossings, _) = d.container_crossings(&side);
    assert!(crossings["kill"]["ok"] >= 1, "the sidecar's kill, counted as the sidecar's: {crossings:?}");
    end_pod(&mut kubelet, &pod_id, &[&side, &app]);
    eventually(tests::settle() * 2, "the containers and the sandbox retired", || {
        (!d.containers().iter().any(|c| c.id == app || c.id == side || c.id == pod_id)).then_some(())
    });
    let records = d.audit_log();
    assert!(records.is_empty(), "records for a shared pod's routine life: {records:#?}");
}

/// A hostPID pod (a node agent's: the CRI's pid mode NODE): its pause and its container run in
/// the host's pid namespace, so each is tracked by its cgroup, named as the kubelet named it; the
/// pod's life reports nothing.
#[test]
fn a_host_pid_pods_sandbox_and_container_are_named_by_their_cgroups_and_report_nothing() {
    use k8s_cri::v1::NamespaceMode;
    let test = "a_host_pid_pods_sandbox_and_container_are_named_by_their_cgroups_and_report_nothing";
    let Some((_containerd, d, mut kubelet)) = cri(test) else { return };
    let uid = format!("uid-node-{}", std::process::id());
    let logs = tempfile::tempdir().unwrap();
    let (pod, pod_id) = run_pod(&mut kubelet, "agent-0", &uid, NamespaceMode::Node, logs.path());
    let argv = ["/bin/sleep", "6014"];
    let id = start_container(&mut kubelet, (&pod, &pod_id), "agent", &argv);
    let pid = the_process(&argv);
    // The kernel: both in the host's namespace (this test's own).
    let host = pidns_of(std::process::id());
    let pause = the_pause(&mut kubelet, &pod_id, false);
    assert_eq!((pidns_of(pause), pidns_of(pid)), (host, host), "a hostPID pod's pause and container");
    let sandbox = the_sandbox(&d, &pod_id, "agent-0", &uid);
    let agent = named(&d, &id, "agent");
    for (c, pid) in [(&sandbox, pause), (&agent, pid)] {
        assert_eq!((c.kind.as_str(), u64::from(c.pidns), c.level), ("cgroup", host, 0), "{c:?}");
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(cgroup.contains(c.id.as_str()), "{pid}'s cgroup names {}: {cgroup}", c.id);
        assert_eq!(d.ps_by_tid().get(&pid).map(|r| r.container.clone()), Some(c.id.clone()));
    }
    assert_eq!(agent.k8s.map(|k| (k.pod, k.container)), Some(("agent-0".into(), "agent".into())));
    end_pod(&mut kubelet, &pod_id, &[&id]);
    eventually(tests::settle() * 2, "the container and the sandbox retired", || {
        (!d.containers().iter().any(|c| c.id == id || c.id == pod_id)).then_some(())
    });
    let records = d.audit_log();
    assert!(records.is_empty(), "records for a hostPID pod's routine life: {records:#?}");
}
