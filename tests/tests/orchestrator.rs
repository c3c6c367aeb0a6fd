//! Container ids from an orchestrator: the control API, the OCI hook with a real runtime
//! (Debian's runc), cgroup containers sharing the host's pid namespace, discovery, restarts.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
};

use tests::{
    AuditRecord, ContainerRow, Daemon, Fixture, TestCgroup,
    engines::runc::{RuncContainer, bundle, runc, runc_init, runc_state},
    eventually, proc_truth,
};

const FIXTURE: &str = env!("CARGO_BIN_EXE_pidvirt-fixture");

fn container(d: &Daemon, id: &str) -> Option<ContainerRow> {
    d.containers().into_iter().find(|c| c.id == id)
}

fn wait_record(d: &Daemon, what: &str, pred: impl Fn(&AuditRecord) -> bool) -> AuditRecord {
    eventually(tests::settle(), what, || d.audit_log().into_iter().find(|r| pred(r)))
}

fn wait_in_cgroup(dir: &Path, pid: u32) {
    eventually(tests::settle(), "process moved into its cgroup", || {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
        procs.lines().any(|l| l.trim() == pid.to_string()).then_some(())
    });
}

#[test]
fn oci_hook_registers_a_runc_container_with_its_annotations_and_unregisters_it() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let annotations =
        serde_json::json!({"io.kubernetes.pod.name": "web", "pidvirt.test/run": "orchestrator"});
    bundle(dir.path(), Some(&d.socket), &annotations);
    let id = format!("pidvirt-test-{}", std::process::id());
    let _guard = RuncContainer(id.clone());
    let (status, stderr) = runc(&["run", "-d", "--bundle", &dir.path().to_string_lossy(), &id]);
    assert!(status.success(), "runc run: {stderr}");

    let c = eventually(tests::settle(), "the OCI id listed", || container(&d, &id));
    assert_eq!((c.kind.as_str(), c.registered_by.as_str(), c.level), ("pidns", "oci", 1));
    let labels = BTreeMap::from([
        ("io.kubernetes.pod.name".to_string(), "web".to_string()),
        ("pidvirt.test/run".to_string(), "orchestrator".to_string()),
    ]);
    assert_eq!(c.labels, labels);
    // The container's init, per the runtime, is a task of that container.
    let init = runc_init(&id);
    let truth = proc_truth::task(init, init).unwrap();
    assert_eq!(c.pidns, truth.pidns);
    let rows = d.ps_by_tid();
    assert_eq!(rows[&init].container, id);
    assert_eq!(rows[&init].nspid, truth.nspid);

    // A leaked host pid passed to kill inside the container: reported under the OCI id.
    let (status, stderr) = runc(&["exec", &id, "/bin/kill", "-0", &init.to_string()]);
    assert!(
        !status.success() && stderr.contains("No such process"),
        "the host pid names nothing inside: {stderr}"
    );
    let r = wait_record(&d, "leak in the runc container", |r| r.container == id && r.verdict == "leak");
    assert_eq!((r.syscall.as_str(), r.value, r.caller.comm.as_str()), ("kill", i64::from(init), "kill"));
    assert_eq!(r.also.as_ref().unwrap().container, id);

    // poststop unregisters it.
    assert!(runc(&["kill", &id, "KILL"]).0.success());
    eventually(tests::settle(), "container stopped", || {
        (runc_state(&id)?["status"] == "stopped").then_some(())
    });
    let (status, stderr) = runc(&["delete", &id]);
    assert!(status.success(), "runc delete: {stderr}");
    assert!(container(&d, &id).is_none(), "unregistered at poststop");
}

#[test]
#[expect(
    clippy::many_single_char_names,
    reason = "the suite's names: d the daemon, a and b the cgroups, t the target's pid, r a record"
)]
fn cgroup_containers_in_the_host_namespace_cross_container() {
    let d = Daemon::start();
    let a = TestCgroup::new(&format!("pidvirt-test-a-{}", std::process::id()));
    let b = TestCgroup::new(&format!("pidvirt-test-b-{}", std::process::id()));
    // A task already in A before registration; a child cgroup of A.
    let mut early = TestCgroup::spawn_in(&a.path, "exec sleep 1000");
    wait_in_cgroup(&a.path, early.id());
    let sub = a.child("sub");
    assert_eq!(
        d.cli(&["container", "add", "ca", "--cgroup", &a.path.to_string_lossy(), "--label", "team=blue"])
            .code,
        0
    );
    let rel = b.path.file_name().unwrap().to_string_lossy().into_owned();
    let out = d.cli(&["container", "add", "cb", "--cgroup", &rel]);
    assert_eq!(out.code, 0, "relative to the cgroup2 mount: {out:?}");
    let ca = container(&d, "ca").unwrap();
    assert_eq!((ca.kind.as_str(), ca.level, ca.labels["team"].as_str()), ("cgroup", 0, "blue"));
    assert_eq!(ca.cgroup.as_deref(), Some(a.path.to_string_lossy().as_ref()));
    let rows = d.ps_by_tid();
    assert_eq!(rows[&early.id()].container, "ca", "a task there before registration joins");
    assert_eq!(rows[&early.id()].vpid, early.id(), "vpid == host pid in the host namespace");

    // A target in B; a caller in A's child cgroup (moved there after registration, then forks).
    let mut target = TestCgroup::spawn_in(&b.path, "exec sleep 1000");
    let t = target.id();
    eventually(tests::settle(), "target in cb", || (d.ps_by_tid().get(&t)?.container == "cb").then_some(()));
    let caller = TestCgroup::spawn_in(&sub, &format!("exec {FIXTURE} call kill {t} 0"));
    let out = caller.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "the kernel lets it through (same pid namespace)"
    );
    let r = wait_record(&d, "cross_container between cgroup containers", |r| {
        r.container == "ca" && r.verdict == "cross_container" && r.syscall == "kill"
    });
    assert_eq!(r.value, i64::from(t));
    let target_party = r.target.unwrap();
    assert_eq!((target_party.host_pid, target_party.container.as_str()), (t, "cb"));
    assert_eq!(
        d.cli(&["translate", "--container", "cb", "--vpid", &t.to_string()]).stdout.trim(),
        t.to_string()
    );
    assert_eq!(d.cli(&["translate", "--container", "ca", "--vpid", &t.to_string()]).code, 1);

    // Unregistering returns the tasks to the host.
    assert_eq!(d.cli(&["container", "rm", "cb"]).code, 0);
    assert_eq!(d.ps_by_tid()[&t].container, "host");
    assert!(container(&d, "cb").is_none());
    let _ = early.kill();
    let _ = target.kill();
    let _ = early.wait();
    let _ = target.wait();
}

/// The programs keep, per CPU, a copy of the last caller's entry (getpid costs no hash lookup).
/// A container registered while its task keeps calling must get that task's next crossings:
/// the daemon's retagging of the task makes the copy be taken again.
#[test]
fn a_container_registered_between_two_call_loops_of_a_task_gets_the_second() {
    let d = Daemon::start();
    let cg = TestCgroup::new(&format!("pidvirt-test-cache-{}", std::process::id()));
    let mut f = Fixture::start_in_cgroup(FIXTURE, 1, &cg.path);
    let ns = f.container();
    let getpid_ok = |c: &str| {
        let (x, _) = d.container_crossings(c);
        x.get("getpid").and_then(|v| v.get("ok")).copied().unwrap_or(0)
    };
    assert_eq!(f.num("repeat 1000 getpid"), 1);
    assert_eq!(getpid_ok(&ns), 1000, "counted for its pid namespace");
    // From here to the second loop nothing forks or exits (the request goes on the socket, not
    // through a CLI process), so no task-map write of the programs' own invalidates the copy:
    // only the daemon's retagging can. The last CLI process is freed (RCU) before the copy is
    // made warm.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(f.num("repeat 10 getpid"), 1);
    let request = serde_json::json!({"op": "register", "id": "registered-mid-loop", "cgroup": cg.path});
    let answer = exchange(&d.socket, &[request.to_string().into_bytes()]);
    assert_eq!(answer[0]["ok"], true, "{answer:?}");
    assert_eq!(f.num("repeat 1000 getpid"), 1);
    assert_eq!(d.ps_by_tid()[&f.outer_init].container, "registered-mid-loop");
    assert_eq!(getpid_ok("registered-mid-loop"), 1000, "every later call counts for the new container");
    assert_eq!(getpid_ok(&ns), 1010, "none for the old one");
}

#[test]
fn registration_by_pid_and_by_pidns() {
    let d = Daemon::start();
    let mut f1 = Fixture::start(FIXTURE, 1);
    let f2 = Fixture::start(FIXTURE, 1);
    let v = f1.num("spawn 1") as u32;
    let host = f1.host_tid(v);
    let out = d.cli(&["container", "add", "by-pid", "--pid", &f1.outer_init.to_string(), "--label", "k=v"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = d.cli(&["container", "add", "by-ns", "--pidns", &f2.inner().to_string()]);
    assert_eq!(out.code, 0, "{out:?}");
    let c1 = container(&d, "by-pid").unwrap();
    assert_eq!((c1.pidns, c1.kind.as_str(), c1.registered_by.as_str()), (f1.inner(), "pidns", "api"));
    assert_eq!(container(&d, "by-ns").unwrap().pidns, f2.inner());
    assert!(container(&d, &f1.container()).is_none(), "the automatic id is replaced");
    assert_eq!(
        d.cli(&["translate", "--container", "by-pid", "--vpid", &v.to_string()]).stdout.trim(),
        host.to_string()
    );
    assert_eq!(d.ps_by_tid()[&host].container, "by-pid");
    // By the pid of a host process: its cgroup.
    let cg = TestCgroup::new(&format!("pidvirt-test-p-{}", std::process::id()));
    let mut p = TestCgroup::spawn_in(&cg.path, "exec sleep 1000");
    wait_in_cgroup(&cg.path, p.id());
    assert_eq!(d.cli(&["container", "add", "by-host-pid", "--pid", &p.id().to_string()]).code, 0);
    let c3 = container(&d, "by-host-pid").unwrap();
    assert_eq!((c3.kind.as_str(), c3.tasks), ("cgroup", 1));
    // Conflicts and unknown targets are errors with exit code 1.
    let taken = d.cli(&["container", "add", "other", "--pidns", &f2.inner().to_string()]);
    assert_eq!(taken.code, 1);
    assert!(taken.stderr.contains("already registered as container `by-ns`"), "{taken:?}");
    let dup = d.cli(&["container", "add", "by-pid", "--pidns", &f2.inner().to_string()]);
    assert!(dup.stderr.contains("already registered"), "{dup:?}");
    let gone = d.cli(&["container", "add", "x", "--pid", "4000000"]);
    assert!(gone.stderr.contains("no process 4000000"), "{gone:?}");
    let nons = d.cli(&["container", "add", "x", "--pidns", "12345"]);
    assert!(nons.stderr.contains("no live pid namespace with inode 12345"), "{nons:?}");
    let nocg = d.cli(&["container", "add", "x", "--cgroup", "/no/such/cgroup"]);
    assert!(nocg.stderr.contains("/no/such/cgroup"), "{nocg:?}");
    let badlabel = d.cli(&["container", "add", "x", "--pid", "1", "--label", "novalue"]);
    assert_eq!(badlabel.code, 2, "{badlabel:?}");
    let rm = d.cli(&["container", "rm", "never-registered"]);
    assert!(rm.code == 1 && rm.stderr.contains("unknown container `never-registered`"), "{rm:?}");
    let _ = p.kill();
    let _ = p.wait();
}

/// Sends raw lines on one connection; returns the response to each.
fn exchange(socket: &Path, lines: &[Vec<u8>]) -> Vec<serde_json::Value> {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(tests::settle())).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    lines
        .iter()
        .map(|l| {
            s.write_all(l).unwrap();
            s.write_all(b"\n").unwrap();
            let mut answer = String::new();
            r.read_line(&mut answer).expect("an answer");
            serde_json::from_str(&answer).unwrap_or_else(|e| panic!("not JSON ({e}): {answer}"))
        })
        .collect()
}

#[test]
fn every_bad_request_gets_an_error_response_and_the_connection_survives() {
    let d = Daemon::start();
    let huge = format!(r#"{{"op":"ps","container":"{}"}}"#, "x".repeat(70_000));
    let cases: Vec<(&[u8], &str)> = vec![
        (b"this is not json", "bad_request"),
        (b"[1,2,3]", "bad_request"),
        (br#"{"container":"host"}"#, "bad_request"),
        (br#"{"op":42}"#, "bad_request"),
        (br#"{"op":"launch_missiles"}"#, "unknown_op"),
        (br#"{"op":"translate","container":"host"}"#, "bad_request"),
        (br#"{"op":"translate","container":"nope","pid":1}"#, "unknown_container"),
        (br#"{"op":"register","id":"x"}"#, "bad_request"),
        (br#"{"op":"register","id":"x","pid":1,"pidns":2}"#, "bad_request"),
        (br#"{"op":"register","id":"x","pid":-5}"#, "not_found"),
        (br#"{"op":"register","id":"has space","pidns":1}"#, "bad_request"),
        (br#"{"op":"register","id":"x","pidns":1,"labels":{"a":1}}"#, "bad_request"),
        (br#"{"op":"register","id":"x","pidns":1,"by":"mallory"}"#, "bad_request"),
        (br#"{"op":"unregister","id":"nope"}"#, "unknown_container"),
        (br#"{"op":"unregister","id":"host"}"#, "bad_request"),
        (huge.as_bytes(), "too_long"),
        (b"\xff\xfe not utf-8", "bad_request"),
    ];
    let mut lines: Vec<Vec<u8>> = Vec::new();
    for (line, _) in &cases {
        lines.push(line.to_vec());
        lines.push(br#"{"op":"status"}"#.to_vec()); // the connection still answers
    }
    let answers = exchange(&d.socket, &lines);
    for (i, (line, code)) in cases.iter().enumerate() {
        let bad = &answers[2 * i];
        assert_eq!(bad["ok"], false, "{}: {bad}", String::from_utf8_lossy(&line[..line.len().min(60)]));
        assert_eq!(
            bad["error"]["code"],
            *code,
            "{}: {bad}",
            String::from_utf8_lossy(&line[..line.len().min(60)])
        );
        assert!(bad["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(answers[2 * i + 1]["ok"], true, "connection alive after case {i}");
    }
    assert!(d.cli(&["status"]).code == 0, "the daemon is still up");
}

#[test]
fn a_non_root_client_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let d = Daemon::start();
    let nobody = tests::NobodyPidvirt::new();
    // The socket is 0600: a non-root client cannot even connect...
    let out = nobody.command().args(["ps", "--socket", &d.socket.to_string_lossy()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"), "{out:?}");
    // ...and if the socket is opened up, SO_PEERCRED still refuses it.
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = nobody.command().args(["ps", "--socket", &d.socket.to_string_lossy()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied: peer uid Some(65534) is not root"),
        "{out:?}"
    );
}

#[test]
fn registrations_come_back_after_a_restart_and_dead_ones_are_dropped() {
    let d = Daemon::start();
    let live = Fixture::start(FIXTURE, 1);
    let dead = Fixture::start(FIXTURE, 1);
    let cg = TestCgroup::new(&format!("pidvirt-test-r-{}", std::process::id()));
    assert_eq!(
        d.cli(&["container", "add", "keep-ns", "--pidns", &live.inner().to_string(), "--label", "a=1"]).code,
        0
    );
    assert_eq!(d.cli(&["container", "add", "keep-cg", "--cgroup", &cg.path.to_string_lossy()]).code, 0);
    assert_eq!(d.cli(&["container", "add", "doomed", "--pid", &dead.outer_init.to_string()]).code, 0);
    let before: Vec<ContainerRow> = d.containers().into_iter().filter(|c| c.registered_by == "api").collect();
    assert_eq!(before.len(), 3);
    let (status, dir) = d.stop_keep_dir();
    assert!(status.is_some_and(|s| s.success()));
    let doomed_ns = dead.inner();
    drop(dead); // its namespace ends while the daemon is down
    let d = Daemon::start_in(dir, &[]);
    let after: Vec<ContainerRow> = d.containers().into_iter().filter(|c| c.registered_by == "api").collect();
    let mut ids: Vec<&str> = after.iter().map(|c| c.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["keep-cg", "keep-ns"]);
    assert!(container(&d, "keep-ns").is_some_and(|c| c.pidns == live.inner() && c.labels["a"] == "1"));
    assert!(container(&d, "keep-cg").is_some_and(|c| c.kind == "cgroup"));
    assert!(container(&d, "doomed").is_none());
    assert!(
        d.log().contains("dropped registration") && d.log().contains(&doomed_ns.to_string()),
        "a log line names the dropped registration:\n{}",
        d.log()
    );
}

#[test]
fn containers_are_discovered_from_their_runtime_cgroup_path_and_an_orchestrator_id_wins() {
    let d = Daemon::start();
    let id = format!("{:0>64x}", 0xd0c4e2u64 + u64::from(std::process::id()));
    let cg = TestCgroup::new(&format!("docker-{id}.scope"));
    let f = Fixture::start_in_cgroup(FIXTURE, 1, &cg.path);
    let c = eventually(tests::settle(), "discovered container", || container(&d, &id));
    let engine = c.runtime.as_ref().map(|r| r.engine.as_str());
    assert_eq!((c.registered_by.as_str(), engine, c.pidns), ("discovered", Some("docker"), f.inner()));
    // An id given by the orchestrator wins.
    assert_eq!(d.cli(&["container", "add", "from-orchestrator", "--pidns", &f.inner().to_string()]).code, 0);
    assert!(container(&d, &id).is_none());
    assert_eq!(container(&d, "from-orchestrator").unwrap().pidns, f.inner());
}

#[test]
fn a_namespace_that_reuses_a_gone_ones_inode_is_not_taken_for_it() {
    let d = Daemon::start();
    let first = Fixture::start(FIXTURE, 1);
    let ns = first.inner();
    assert_eq!(d.cli(&["container", "add", "first", "--pidns", &ns.to_string()]).code, 0);
    assert!(container(&d, "first").is_some());
    drop(first);
    // The kernel gives a new namespace the lowest free inode: the gone one's, once it is freed.
    let mut again = None;
    for _ in 0..50 {
        let f = Fixture::start(FIXTURE, 1);
        if f.inner() == ns {
            again = Some(f);
            break;
        }
        drop(f);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let Some(mut f) = again else {
        tests::note_unavailable(
            "a_namespace_that_reuses_a_gone_ones_inode_is_not_taken_for_it",
            &format!("the kernel did not reuse pid namespace inode {ns} within 50 namespaces"),
        );
        return;
    };
    // Its first crossing: a leak, under the new namespace's own id.
    let v = f.num("spawn 0") as u32;
    let host = f.host_tid(v);
    assert_eq!(f.num(&format!("sys kill {host} 0")), -3);
    let r = wait_record(&d, "the leak in the new namespace", |r| {
        r.verdict == "leak" && r.value == i64::from(host)
    });
    assert_eq!(r.container, format!("pidns-{ns}"), "not the gone namespace's registration");
    let c = eventually(tests::settle(), "the new namespace listed", || {
        d.containers().into_iter().find(|c| c.pidns == ns)
    });
    assert_eq!((c.id.clone(), c.registered_by.as_str()), (format!("pidns-{ns}"), "kernel"));
    assert!(container(&d, "first").is_none(), "the registration ended with its namespace");
}
