//! Restore with chosen pids (issue 16): `pidvirt spawn` into a runc container and into nested
//! namespaces, `snapshot`, `restore` and `compare` of a tree with sessions, groups and threads,
//! the errors a user hits, and a real checkpoint/restore (`runc checkpoint`/`runc restore`,
//! CRIU). Every assertion is checked against /proc (NSpid, PPid, NSpgid, NSsid, task lists).

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::Path,
    process::{Command, Stdio},
};

use tests::{
    Cli, Daemon, Fixture, NobodyPidvirt,
    engines::runc::{RuncContainer, bundle, runc, runc_init},
    eventually, note_unavailable, proc_truth,
};

const FIXTURE: &str = env!("CARGO_BIN_EXE_pidvirt-fixture");

/// SIGKILLs a restored tree's init (its whole namespace ends) when a test ends, passed or not.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill takes numbers.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        let start = std::time::Instant::now();
        while proc_truth::alive(self.0) && start.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

fn json(out: &Cli) -> serde_json::Value {
    assert_eq!(out.code, 0, "pidvirt failed: {out:?}");
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.stdout))
}

/// Asserts that `out` is a clear failure (exit code 1, one message) saying each of `says`.
fn assert_fails(out: &Cli, says: &[&str]) {
    assert_eq!(out.code, 1, "expected exit code 1: {out:?}");
    for s in says {
        assert!(out.stderr.contains(s), "expected {s:?} in: {}", out.stderr);
    }
}

/// A process of a pid namespace's tree as the kernel shows it, every number as the namespace
/// sees it: (parent, process group, session, NSpid from the namespace down, thread vtids).
type Truth = BTreeMap<u32, (u32, u32, u32, Vec<u32>, Vec<u32>)>;

/// The tree of pid namespace `ns` (at `level`) and of the namespaces below it, from /proc.
fn tree_truth(ns: u64, level: usize) -> Truth {
    let tasks = proc_truth::tasks();
    let inside: BTreeSet<u64> = tasks
        .iter()
        .filter(|t| t.nspid.len() > level && pidns_at(t.pid, level) == Some(ns))
        .map(|t| t.pidns)
        .collect();
    let mine: Vec<_> = tasks.iter().filter(|t| inside.contains(&t.pidns)).collect();
    let vpid_of: BTreeMap<u32, u32> =
        mine.iter().filter(|t| t.pid == t.tid).map(|t| (t.pid, t.nspid[level])).collect();
    let mut out = Truth::new();
    for t in mine.iter().filter(|t| t.pid == t.tid) {
        let Some(r) = proc_truth::relations(t.pid) else { continue };
        let threads: Vec<u32> = mine
            .iter()
            .filter(|x| x.pid == t.pid && x.tid != t.pid)
            .map(|x| x.nspid[level])
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        out.insert(
            t.nspid[level],
            (
                vpid_of.get(&r.ppid).copied().unwrap_or(0),
                r.nspgid[level],
                r.nssid[level],
                t.nspid[level..].to_vec(),
                threads,
            ),
        );
    }
    out
}

/// The pid namespace at `level` of host pid `pid` (NS_GET_PARENT from its own).
fn pidns_at(pid: u32, level: usize) -> Option<u64> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut f = std::fs::File::open(format!("/proc/{pid}/ns/pid")).ok()?;
    let depth = proc_truth::task(pid, pid)?.nspid.len() - 1;
    for _ in level..depth {
        // SAFETY: NS_GET_PARENT (_IO(0xb7, 0x2)) takes no argument; `f` is an open namespace file.
        let fd = unsafe { libc::ioctl(f.as_raw_fd(), 0xb702) };
        if fd < 0 {
            return None;
        }
        // SAFETY: the ioctl returned a new descriptor nothing else owns.
        f = unsafe { std::fs::File::from_raw_fd(fd) };
    }
    Some(f.metadata().ok()?.ino())
}

fn container_row(d: &Daemon, id: &str) -> Option<tests::ContainerRow> {
    d.containers().into_iter().find(|c| c.id == id)
}

// ---------------------------------------------------------------------------------------------
// spawn

#[test]
fn spawn_into_a_runc_container_with_chosen_pids() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    bundle(dir.path(), Some(&d.socket), &serde_json::json!({}));
    let id = format!("pidvirt-spawn-{}", std::process::id());
    let _guard = RuncContainer(id.clone());
    let (status, stderr) = runc(&["run", "-d", "--bundle", &dir.path().to_string_lossy(), &id]);
    assert!(status.success(), "runc run: {stderr}");
    eventually(tests::settle(), "the OCI id listed", || container_row(&d, &id));
    let init = runc_init(&id);
    let ns = proc_truth::task(init, init).unwrap().pidns;

    let host = proc_truth::free_pid();
    let pid_at = format!("0={host}");
    let args = [
        "spawn",
        "--container",
        &id,
        "--vpid",
        "42",
        "--pid-at",
        &pid_at,
        "--detach",
        "--",
        "/bin/sleep",
        "1000",
    ];
    let out = json(&d.cli_env(&args));
    assert_eq!((out["host_pid"].as_u64(), out["vpid"].as_u64()), (Some(u64::from(host)), Some(42)), "{out}");
    assert_eq!(out["container"], id.as_str());
    // The kernel's truth: the chosen numbers at both levels, in the container's namespace, its
    // mount namespace and root.
    let t = proc_truth::task(host, host).expect("the spawned task runs");
    assert_eq!((t.nspid, t.pidns), (vec![host, 42], ns));
    for what in ["ns/mnt", "ns/net", "ns/uts", "ns/ipc", "root"] {
        let ino = |pid: u32| std::fs::metadata(format!("/proc/{pid}/{what}")).unwrap().ino();
        assert_eq!(ino(host), ino(init), "{what} of the spawned task is the container's");
    }
    // translate answers at once, both ways: the maps held the task from its fork.
    let by_vpid = d.cli(&["translate", "--container", &id, "--vpid", "42"]);
    assert_eq!(by_vpid.stdout.trim(), host.to_string(), "{by_vpid:?}");
    let by_pid = d.cli(&["translate", "--container", &id, "--pid", &host.to_string()]);
    assert_eq!(by_pid.stdout.trim(), "42", "{by_pid:?}");

    // A chosen pid in use: the task that holds it is named; nothing new in the container.
    let before = proc_truth::tasks_in(ns).len();
    let again = d.cli_env(&["spawn", "--container", &id, "--vpid", "42", "--", "/bin/sleep", "1000"]);
    assert_fails(&again, &["pid 42 at level 1", "is in use", &format!("process `sleep` (host pid {host},")]);
    let init_taken = d.cli_env(&["spawn", "--container", &id, "--vpid", "1", "--", "/bin/true"]);
    assert_fails(&init_taken, &["pid 1 at level 1", &format!("(host pid {init},")]);
    assert_eq!(proc_truth::tasks_in(ns).len(), before, "a failed spawn leaves nothing behind");
}

#[test]
fn spawn_into_a_nested_namespace_with_a_pid_at_every_level() {
    let d = Daemon::start();
    let f = Fixture::start(FIXTURE, 2);
    let (outer, inner) = (format!("pidns-{}", f.pidns[0]), f.container());
    let host = proc_truth::free_pid();
    let pid_at = format!("0={host}");
    let spawn = |extra: &[&str]| {
        let mut args = vec!["spawn", "--container", &inner];
        args.extend_from_slice(extra);
        args.extend(["--", "sleep", "1000"]);
        d.cli_env(&args)
    };
    let out = json(&spawn(&["--vpid", "7", "--pid-at", "1=77", "--pid-at", &pid_at, "--detach"]));
    assert_eq!(out["nspid"], serde_json::json!([host, 77, 7]));
    let task = proc_truth::task(host, host).expect("the spawned task runs");
    assert_eq!((task.nspid, task.pidns), (vec![host, 77, 7], f.inner()));
    for (container, vpid) in [(&inner, "7"), (&outer, "77")] {
        let by_vpid = d.cli(&["translate", "--container", container, "--vpid", vpid]);
        assert_eq!(by_vpid.stdout.trim(), host.to_string(), "{container} vpid {vpid}: {by_vpid:?}");
        let by_pid = d.cli(&["translate", "--container", container, "--pid", &host.to_string()]);
        assert_eq!(by_pid.stdout.trim(), vpid, "{container} pid {host}: {by_pid:?}");
    }

    let before = (proc_truth::tasks_in(f.pidns[0]).len(), proc_truth::tasks_in(f.inner()).len());
    // In use at the inner level, then at the outer one.
    assert_fails(&spawn(&["--vpid", "7"]), &["pid 7 at level 2", &format!("(host pid {host},")]);
    assert_fails(&spawn(&["--vpid", "8", "--pid-at", "1=77"]), &["pid 77 at level 1", "`sleep`"]);
    // Out of range, levels the namespace does not have, an unknown container.
    let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
    assert_fails(&spawn(&["--vpid", "0"]), &["pid 0 is out of range"]);
    assert_fails(&spawn(&["--vpid", &max.to_string()]), &[&format!("pid {max} is out of range")]);
    assert_fails(&spawn(&["--vpid", "9", "--pid-at", "3=5"]), &["levels 0 (the host) to 2"]);
    assert_fails(&spawn(&["--vpid", "9", "--pid-at", &pid_at]), &["needs --pid-at 1="]);
    let unknown = d.cli_env(&["spawn", "--container", "no-such-container", "--", "true"]);
    assert_fails(&unknown, &["unknown container `no-such-container`"]);
    // Missing privilege (no CAP_SYS_ADMIN as nobody).
    let nobody = NobodyPidvirt::new();
    let unprivileged: Cli = nobody
        .command()
        .args(["spawn", "--container", &inner, "--vpid", "9", "--", "true"])
        .env("PIDVIRT_SOCKET", &d.socket)
        .output()
        .unwrap()
        .into();
    assert_fails(&unprivileged, &["needs CAP_SYS_ADMIN"]);
    let after = (proc_truth::tasks_in(f.pidns[0]).len(), proc_truth::tasks_in(f.inner()).len());
    assert_eq!(after, before, "failed spawns leave nothing behind");
}

#[test]
fn spawn_into_a_container_whose_init_is_gone() {
    let d = Daemon::start();
    let f = Fixture::start(FIXTURE, 1);
    let id = f.container();
    // The namespace's init dies; its parent (the fixture) does not reap it: a zombie, still
    // known to the daemon, in a namespace that takes no new task.
    // SAFETY: kill takes numbers.
    unsafe { libc::kill(f.outer_init as i32, libc::SIGKILL) };
    eventually(tests::settle(), "the init is a zombie", || {
        (proc_truth::state(f.outer_init) == Some('Z')).then_some(())
    });
    for enter in ["all", "pid"] {
        let out = d.cli_env(&["spawn", "--container", &id, "--enter", enter, "--vpid", "5", "--", "true"]);
        assert_fails(&out, &[&format!("container {id}"), "init", "is gone"]);
    }
    assert!(proc_truth::tasks_in(f.inner()).len() <= 1, "only the zombie init is left");
}

/// Runs `pidvirt ARGS` under a seccomp filter that answers ENOSYS to clone3, as a kernel
/// without it (before 5.3) does.
fn without_clone3(d: &Daemon, args: &[&str]) -> Cli {
    let mut cmd = Command::new(tests::pidvirt_bin());
    cmd.args(args).env("PIDVIRT_SOCKET", &d.socket).stdin(Stdio::null());
    // SAFETY: the closure runs between fork and exec and makes two prctl calls on a filter that
    // lives on its own stack.
    unsafe {
        cmd.pre_exec(|| {
            let stmt = |code: u32, k: u32| libc::sock_filter { code: code as u16, jt: 0, jf: 0, k };
            let filter = [
                // seccomp_data.nr, the system call number (offset 0).
                stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
                libc::sock_filter {
                    code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 1,
                    k: libc::SYS_clone3 as u32,
                },
                stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
                stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
            ];
            let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr().cast_mut() };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &raw const prog) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().expect("run pidvirt").into()
}

#[test]
fn spawn_says_when_the_kernel_has_no_clone3() {
    let d = Daemon::start();
    let f = Fixture::start(FIXTURE, 1);
    let before = proc_truth::tasks_in(f.inner()).len();
    let out = without_clone3(&d, &["spawn", "--container", &f.container(), "--vpid", "5", "--", "true"]);
    assert_fails(&out, &["this kernel has no clone3", "ENOSYS"]);
    assert_eq!(proc_truth::tasks_in(f.inner()).len(), before);
}

// ---------------------------------------------------------------------------------------------
// snapshot, restore, compare

/// The fixture's tree checked against what `spawn_tree` promises, from /proc.
#[expect(clippy::many_single_char_names, reason = "spawn_tree's roles are letters: A, C, F")]
fn check_fixture_tree(truth: &Truth, roles: &BTreeMap<String, u32>) {
    let r = |role: &str| roles[role];
    let (a, c, f) = (r("A"), r("C"), r("F"));
    let expect = [
        ("A", 1, a, a, 2),
        ("B", a, a, a, 0),
        ("C", a, c, a, 0),
        ("D", c, c, a, 0),
        ("E", a, c, a, 0),
        ("F", 1, f, f, 0),
        ("G", f, f, f, 0),
        ("H", 1, 0, 0, 0),
    ];
    for (role, ppid, pgid, sid, threads) in expect {
        let (p, g, s, _, t) = &truth[&r(role)];
        assert_eq!((*p, *g, *s, t.len()), (ppid, pgid, sid, threads), "{role} (vpid {}) in /proc", r(role));
    }
    assert_eq!(truth[&1].0, 0, "the init's parent is outside");
    assert_eq!(truth.len(), 9);
}

#[test]
fn snapshot_restore_compare_a_tree_with_sessions_groups_and_threads() {
    let d = Daemon::start();
    let mut f = Fixture::start(FIXTURE, 1);
    let roles = f.tree();
    let original = tree_truth(f.inner(), 1);
    check_fixture_tree(&original, &roles);

    let path = d.dir.path().join("tree.json");
    let path_s = path.to_string_lossy().into_owned();
    let out = d.cli(&["snapshot", "--container", &f.container(), "--output", &path_s]);
    assert_eq!(out.code, 0, "{out:?}");
    // The snapshot says what /proc says.
    let snap: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut said = Truth::new();
    for p in snap["processes"].as_array().unwrap() {
        let n = |k: &str| p[k].as_u64().unwrap() as u32;
        let list = |v: &serde_json::Value| -> Vec<u32> {
            v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
        };
        let threads =
            p["threads"].as_array().map(|ts| ts.iter().map(|t| t["vtid"].as_u64().unwrap() as u32).collect());
        said.insert(
            n("vpid"),
            (n("ppid"), n("pgid"), n("sid"), list(&p["nspid"]), threads.unwrap_or_default()),
        );
    }
    assert_eq!(said, original, "snapshot vs /proc");

    let out = json(&d.cli(&["restore", &path_s, "--id", "restored-tree", "--json"]));
    let _cleanup = KillOnDrop(out["init_host_pid"].as_u64().unwrap() as u32);
    assert_eq!(out["id"], "restored-tree");
    let pidns = out["pidns"].as_u64().unwrap();
    assert_ne!(pidns, f.inner(), "a new pid namespace");
    let level = out["level"].as_u64().unwrap() as usize;
    // The kernel's truth of the restored tree: every vpid, parent, group, session, thread.
    let restored = tree_truth(pidns, level);
    assert_eq!(restored, original, "restored tree vs the original, both from /proc");
    // Each placeholder shows its original's comm, threads included.
    for t in proc_truth::tasks_in(pidns) {
        let vtid = t.nspid[level];
        let original_tid = proc_truth::tasks_in(f.inner()).into_iter().find(|o| o.nspid[1] == vtid).unwrap();
        assert_eq!(
            proc_truth::comm(t.pid, t.tid),
            proc_truth::comm(original_tid.pid, original_tid.tid),
            "comm of vtid {vtid}"
        );
    }
    let c = container_row(&d, "restored-tree").expect("registered");
    assert_eq!((c.pidns, c.registered_by.as_str()), (pidns, "api"));
    assert_eq!(c.labels["pidvirt.io/restored-from"], f.container());

    let same = d.cli(&["compare", &path_s, "--container", "restored-tree"]);
    assert_eq!(same.code, 0, "{same:?}");
    assert!(same.stdout.contains("matches the snapshot: 9 processes, 2 more threads"), "{same:?}");

    // One process changes (D ends): compare says exactly that.
    let d_vpid = roles["D"];
    let d_host =
        proc_truth::tasks_in(pidns).into_iter().find(|t| t.nspid[level] == d_vpid && t.pid == t.tid).unwrap();
    let comm = proc_truth::comm(d_host.pid, d_host.pid).expect("D runs");
    // SAFETY: kill takes numbers.
    unsafe { libc::kill(d_host.pid as i32, libc::SIGKILL) };
    eventually(tests::settle(), "D gone from /proc", || (!proc_truth::alive(d_host.pid)).then_some(()));
    let differs = d.cli(&["compare", &path_s, "--container", "restored-tree"]);
    assert_eq!(differs.code, 1, "{differs:?}");
    assert_eq!(
        differs.stdout.lines().collect::<Vec<_>>(),
        vec![format!("process {d_vpid} ({comm}): missing")]
    );
}

#[test]
fn restore_remakes_namespaces_nested_in_the_container() {
    let d = Daemon::start();
    // The outer container holds the inner namespace (its init: 2 outside, 1 inside) and the
    // tree made in it.
    let mut f = Fixture::start(FIXTURE, 2);
    f.tree();
    let outer = format!("pidns-{}", f.pidns[0]);
    let original = tree_truth(f.pidns[0], 1);
    assert_eq!(original.len(), 10, "2 inits and the tree");
    assert!(original.values().filter(|(_, _, _, nspid, _)| nspid.len() == 2).count() == 9);
    let path = d.dir.path().join("nested.json").to_string_lossy().into_owned();
    assert_eq!(d.cli(&["snapshot", "--container", &outer, "-o", &path]).code, 0);
    let out = json(&d.cli(&["restore", &path, "--json"]));
    let _cleanup = KillOnDrop(out["init_host_pid"].as_u64().unwrap() as u32);
    let level = out["level"].as_u64().unwrap() as usize;
    // Both namespaces made again: every number at both levels, parents, groups, sessions,
    // threads, from /proc.
    assert_eq!(tree_truth(out["pidns"].as_u64().unwrap(), level), original);
    let same = d.cli(&["compare", &path, "--container", out["id"].as_str().unwrap()]);
    assert_eq!(same.code, 0, "{same:?}");
}

#[test]
fn restore_runs_a_command_in_every_process() {
    let d = Daemon::start();
    let mut f = Fixture::start(FIXTURE, 1);
    f.tree();
    let original = tree_truth(f.inner(), 1);
    let path = d.dir.path().join("tree.json").to_string_lossy().into_owned();
    assert_eq!(d.cli(&["snapshot", "--container", &f.container(), "-o", &path]).code, 0);
    let out = json(&d.cli_env(&["restore", &path, "--json", "--", "sleep", "1000"]));
    let _cleanup = KillOnDrop(out["init_host_pid"].as_u64().unwrap() as u32);
    let pidns = out["pidns"].as_u64().unwrap();
    assert!(out["id"].as_str().unwrap().starts_with("pidns-"), "its automatic id: {out}");
    // Every process runs the command; threads are not made (execve keeps one).
    let level = out["level"].as_u64().unwrap() as usize;
    let restored = tree_truth(pidns, level);
    let without_threads: Truth =
        original.iter().map(|(&v, (p, g, s, n, _))| (v, (*p, *g, *s, n.clone(), vec![]))).collect();
    assert_eq!(restored, without_threads);
    eventually(tests::settle(), "every process execs sleep", || {
        proc_truth::tasks_in(pidns)
            .iter()
            .all(|t| proc_truth::comm(t.pid, t.tid).as_deref() == Some("sleep"))
            .then_some(())
    });
}

#[test]
fn a_restore_that_fails_half_way_removes_what_it_made() {
    let d = Daemon::start();
    let mut f = Fixture::start(FIXTURE, 1);
    f.tree();
    let path = d.dir.path().join("tree.json").to_string_lossy().into_owned();
    assert_eq!(d.cli(&["snapshot", "--container", &f.container(), "-o", &path]).code, 0);
    let before = proc_truth::namespaces();
    // The tree is made, then no process can execute the command.
    let out = d.cli_env(&["restore", &path, "--id", "half-made", "--", "/nonexistent/command"]);
    assert_fails(&out, &["cannot execute `/nonexistent/command`", "No such file", "what it made is removed"]);
    assert_eq!(proc_truth::namespaces(), before, "no task of the restore is left, at once");
    assert!(container_row(&d, "half-made").is_none());
}

#[test]
fn restore_refuses_what_it_cannot_make() {
    let d = Daemon::start();
    let f = Fixture::start(FIXTURE, 1);
    let dir = d.dir.path();
    let p = |vpid: u32, ppid: u32, pgid: u32, sid: u32| serde_json::json!({"vpid": vpid, "nspid": [vpid], "ppid": ppid, "pgid": pgid, "sid": sid, "comm": "x"});
    let snap = |processes: Vec<serde_json::Value>| {
        serde_json::json!({"format": "pidvirt-snapshot/1", "container": "c", "pidns": 1, "level": 1, "processes": processes})
            .to_string()
    };
    let cases = [
        ("not-json", "{\"format\": ".to_string(), "not a pidvirt snapshot"),
        ("cycle", snap(vec![p(1, 0, 0, 0), p(2, 3, 0, 0), p(3, 2, 0, 0)]), "form a cycle"),
        ("twice", snap(vec![p(1, 0, 0, 0), p(2, 1, 0, 0), p(2, 1, 0, 0)]), "appears twice"),
        ("range", snap(vec![p(1, 0, 0, 0), p(4_000_000, 1, 0, 0)]), "out of range"),
        ("no-leader", snap(vec![p(1, 0, 0, 0), p(5, 1, 4, 4)]), "session 4 has no leader"),
    ];
    let before = proc_truth::namespaces();
    for (name, text, says) in cases {
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, text).unwrap();
        let out = d.cli(&["restore", &path.to_string_lossy()]);
        assert_fails(&out, &[says]);
    }
    // An id in use.
    let good = dir.join("good.json");
    std::fs::write(&good, snap(vec![p(1, 0, 0, 0)])).unwrap();
    let taken = d.cli(&["restore", &good.to_string_lossy(), "--id", &f.container()]);
    assert_fails(&taken, &["is in use"]);
    assert_eq!(proc_truth::namespaces(), before, "nothing made");
}

// ---------------------------------------------------------------------------------------------
// A real checkpoint/restore

/// Loads kernel module `name` and those it depends on from the kernel package the VM booted
/// (its modules directory in PIDVIRT_VM_MODULES; the guest's /lib/modules is the host's, and
/// without modprobe the kernel cannot load what it asks for itself).
fn load_module(dir: &Path, name: &str) -> Result<(), String> {
    let loaded = |n: &str| Path::new("/sys/module").join(n.replace('-', "_")).exists();
    if loaded(name) {
        return Ok(());
    }
    let file = find_module(&dir.join("kernel"), name)
        .ok_or_else(|| format!("module {name} not in {}", dir.display()))?;
    let bytes = if file.extension().is_some_and(|e| e == "xz") {
        let out = Command::new("xz").arg("-dc").arg(&file).output().map_err(|e| format!("xz: {e}"))?;
        out.stdout
    } else {
        std::fs::read(&file).map_err(|e| e.to_string())?
    };
    // .modinfo holds NUL-separated key=value strings: `depends=` names the modules it needs,
    // `softdep=pre:` those it wants first (libcrc32c: crc32c, whose module is crc32c_generic).
    let info = |key: &[u8]| -> Vec<String> {
        bytes
            .split(|&b| b == 0)
            .filter_map(|s| s.strip_prefix(key))
            .flat_map(|v| {
                String::from_utf8_lossy(v)
                    .replace(',', " ")
                    .split_whitespace()
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    for soft in info(b"softdep=pre:") {
        let _ = load_module(dir, &soft).or_else(|_| load_module(dir, &format!("{soft}_generic")));
    }
    for dep in info(b"depends=") {
        load_module(dir, &dep)?;
    }
    let tmp = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    std::fs::write(tmp.path(), &bytes).map_err(|e| e.to_string())?;
    let out =
        Command::new("busybox").arg("insmod").arg(tmp.path()).output().map_err(|e| format!("insmod: {e}"))?;
    if out.status.success() || loaded(name) {
        Ok(())
    } else {
        Err(format!("insmod {name}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn find_module(dir: &Path, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let path = e.path();
        if path.is_dir() {
            if let Some(found) = find_module(&path, name) {
                return Some(found);
            }
        } else {
            let file = e.file_name().to_string_lossy().into_owned();
            let stem = file.split(".ko").next().unwrap_or_default();
            if file.contains(".ko") && (stem == name || stem.replace('-', "_") == name.replace('-', "_")) {
                return Some(path);
            }
        }
    }
    None
}

/// Modules CRIU uses that Debian builds as modules.
const CRIU_MODULES: &[&str] =
    &["nf_tables", "unix_diag", "inet_diag", "tcp_diag", "udp_diag", "netlink_diag", "af_packet_diag", "tun"];

/// Whether CRIU can checkpoint on this kernel: `criu check`, after what it asks for where the
/// kernel package has it (the loopback up; nf_tables loaded, in a VM). Err names what it lacks.
fn criu_ready() -> Result<(), String> {
    let check = || {
        let out = Command::new("criu")
            .arg("check")
            .output()
            .expect("criu is installed (cargo xtask setup --tests)");
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    };
    let first_error =
        |text: &str| text.lines().find(|l| l.contains("Error")).unwrap_or(text.trim()).to_string();
    let (ok, text) = check();
    if ok {
        return Ok(());
    }
    if text.contains("vdso") || text.contains("vDSO") {
        return Err(format!(
            "criu {} cannot parse this kernel's vDSO layout (criu check: {})",
            criu_version(),
            first_error(&text)
        ));
    }
    let _ = Command::new("ip").args(["link", "set", "lo", "up"]).status();
    // nf_tables (what criu check asks for in the 6.1 guest), and the socket diag modules and tun
    // a dump of a container's network namespace uses.
    let mut missing = Vec::new();
    if let Some(dir) = std::env::var_os("PIDVIRT_VM_MODULES") {
        for m in CRIU_MODULES {
            if let Err(e) = load_module(Path::new(&dir), m) {
                missing.push(e);
            }
        }
    }
    match check() {
        (true, _) => Ok(()),
        (false, text) => Err(format!(
            "criu {}: criu check: {}{}",
            criu_version(),
            first_error(&text),
            if missing.is_empty() { String::new() } else { format!(" ({})", missing.join("; ")) }
        )),
    }
}

fn criu_version() -> String {
    let out = Command::new("criu")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    out.unwrap_or_default().lines().find_map(|l| l.strip_prefix("Version: ")).unwrap_or("?").to_string()
}

/// The last lines of CRIU's log `name` in directory `dir`, for a failure's message.
/// CRIU's errors in log `name` (they come long before its end), then the end.
fn log_tail(dir: &str, name: &str) -> String {
    let text = std::fs::read_to_string(Path::new(dir).join(name)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let errors: Vec<&str> = lines.iter().copied().filter(|l| l.contains("Error (")).collect();
    format!(
        "{name} errors:\n{}\n{name} end:\n{}",
        errors.join("\n"),
        lines[lines.len().saturating_sub(15)..].join("\n")
    )
}

#[test]
fn runc_checkpoint_and_restore_keep_the_tree() {
    const TEST: &str = "runc_checkpoint_and_restore_keep_the_tree";
    let ready = criu_ready();
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let bundle_dir = dir.path().join("bundle");
    std::fs::create_dir(&bundle_dir).unwrap();
    bundle(&bundle_dir, Some(&d.socket), &serde_json::json!({}));
    let config = bundle_dir.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    // Its stdio is its own /dev/null: a detached container inherits runc's, here a deleted
    // temporary file of the host's /tmp, which CRIU cannot dump from inside the container.
    spec["process"]["args"] = serde_json::json!([
        "/bin/sh",
        "-c",
        "exec </dev/null >/dev/null 2>&1; sleep 1000 & sleep 1000 & wait"
    ]);
    // The host's network namespace: the subject is pids, and CRIU 3.17's netns dump fails on
    // Debian's 6.12 and 6.1 in the VMs ("-22 reported by netlink").
    if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
        ns.retain(|n| n["type"] != "network");
    }
    std::fs::write(&config, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    let id = format!("pidvirt-criu-{}", std::process::id());
    let _guard = RuncContainer(id.clone());
    let (status, stderr) = runc(&["run", "-d", "--bundle", &bundle_dir.to_string_lossy(), &id]);
    assert!(status.success(), "runc run: {stderr}");
    let original = eventually(tests::settle(), "the container's 3 processes", || {
        let truth = tree_truth(container_row(&d, &id)?.pidns, 1);
        (truth.len() == 3).then_some(truth)
    });
    let snap = dir.path().join("snap.json").to_string_lossy().into_owned();
    assert_eq!(d.cli(&["snapshot", "--container", &id, "-o", &snap]).code, 0);

    let first_init = runc_init(&id);
    let images = dir.path().join("images").to_string_lossy().into_owned();
    // CRIU's logs go with the images (dump.log, restore.log).
    let (dumped, dump_err) = runc(&["checkpoint", "--image-path", &images, "--work-path", &images, &id]);
    if let Err(reason) = ready {
        note_unavailable(TEST, &reason);
        // Where CRIU cannot run, the checkpoint fails and the container runs on untouched.
        assert!(!dumped.success(), "runc checkpoint worked where criu check failed ({reason})");
        let same = d.cli(&["compare", &snap, "--container", &id]);
        assert_eq!(same.code, 0, "a failed checkpoint leaves the tree as it was: {same:?}");
        return;
    }
    assert!(dumped.success(), "runc checkpoint: {dump_err}\n{}", log_tail(&images, "dump.log"));
    let bundle_s = bundle_dir.to_string_lossy().into_owned();
    let (restored, restore_err) =
        runc(&["restore", "-d", "--image-path", &images, "--work-path", &images, "--bundle", &bundle_s, &id]);
    assert!(restored.success(), "runc restore: {restore_err}\n{}", log_tail(&images, "restore.log"));
    // Named again under the same OCI id, in a new namespace: Debian's runc 1.1.5 runs only the
    // prestart hooks at a restore, with the state `stopped` and the restored init's pid.
    // The kernel's truth: the namespace the restored init lives in (its inode may be the old
    // one's: the kernel reuses them).
    let init = runc_init(&id);
    assert_ne!(init, first_init, "the restored init is a new process");
    let ns = pidns_at(init, 1).expect("the restored init's pid namespace");
    let what =
        format!("the restored container (pid namespace {ns}) under its OCI id (daemon log: {})", d.log());
    let now = eventually(tests::settle(), &what, || {
        container_row(&d, &id).filter(|n| u64::from(n.pidns) == ns && n.registered_by == "oci")
    });
    assert_eq!(tree_truth(now.pidns, 1), original, "restored tree vs the original, both from /proc");
    let same = d.cli(&["compare", &snap, "--container", &id]);
    assert_eq!(same.code, 0, "CRIU kept every pid, parent, group and session: {same:?}");
    // And it is audited under that id: a host pid leaked into it.
    let (status, _) = runc(&["exec", &id, "/bin/kill", "-0", &init.to_string()]);
    assert!(!status.success(), "the host pid names nothing inside");
    let r = eventually(tests::settle(), "a leak record under the OCI id", || {
        d.audit_log().into_iter().find(|r| r.container == id && r.verdict == "leak")
    });
    assert_eq!(r.value, i64::from(init));
}
