//! Numbers inside /proc paths (issue 15, part 1): `/proc/N/...` given to the path syscalls, and
//! `N/...` relative to a directory that is a procfs root (a directory fd, the working directory).
//! N is a number of the pid namespace of THAT procfs. Each crossing is made by the fixture's init
//! in its pid namespace, and the kernel's answer (the syscall's return value) is checked beside
//! pidvirt's count, which must be exact: the init is quiet between commands.

use std::collections::BTreeMap;

use tests::{AuditRecord, Daemon, Fixture, daemon_programs, eventually};

const FIXTURE: &str = env!("CARGO_BIN_EXE_pidvirt-fixture");
const ENOENT: i64 = -2;

type Counts = BTreeMap<String, BTreeMap<String, u64>>;

fn counts(d: &Daemon, f: &Fixture) -> Counts {
    d.container_crossings(&f.container()).0
}

/// What changed between two readings of a container's counters: (syscall, verdict) -> added.
fn delta(before: &Counts, after: &Counts) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for (sys, verdicts) in after {
        for (v, n) in verdicts {
            let was = before.get(sys).and_then(|m| m.get(v)).copied().unwrap_or(0);
            if *n > was {
                out.insert((sys.clone(), v.clone()), n - was);
            }
        }
    }
    out
}

/// Runs `cmd` in the fixture and checks that the container's counters show exactly `want` added
/// (and nothing else: the programs count in the syscall itself, so the counts are final when it
/// returns); answers the kernel's return value.
fn crossing(d: &Daemon, f: &mut Fixture, cmd: &str, want: &[(&str, &str, u64)]) -> i64 {
    let before = counts(d, f);
    let r = f.num(cmd);
    let want: BTreeMap<(String, String), u64> =
        want.iter().map(|(s, v, n)| ((s.to_string(), v.to_string()), *n)).collect();
    let counted = delta(&before, &counts(d, f));
    assert_eq!(counted, want, "{cmd} (the kernel answered {r})");
    r
}

/// A daemon watching /proc paths (`--proc-paths`): every kernel of the suite takes the path
/// programs (Debian 6.1's verifier refused them while the classifier was inlined twice in them).
fn daemon() -> Daemon {
    Daemon::start_with(&["--proc-paths"])
}

fn own_procfs() -> (Daemon, Fixture, u32, u32) {
    let d = daemon();
    let mut f = Fixture::start(FIXTURE, 1);
    assert_eq!(f.cmd("mount_proc"), "ok");
    let child = f.num("spawn 0") as u32;
    let host = f.host_tid(child);
    assert_ne!(host, child);
    // Which procfs a mount namespace shows at /proc is learnt at the daemon's sweep (every 3 s):
    // until then its absolute /proc paths are not judged. The init's own /proc/1 says when.
    eventually(tests::settle(), "the fixture's /proc learnt by the daemon", || {
        let before = counts(&d, &f);
        f.num("path openat /proc/1/status");
        let added = delta(&before, &counts(&d, &f));
        (added.get(&("openat".to_string(), "ok".to_string())) == Some(&1)).then_some(())
    });
    (d, f, child, host)
}

#[test]
fn a_host_pid_in_a_proc_path_of_the_containers_own_procfs_is_a_leak_and_its_vpid_ok() {
    let (d, mut f, child, host) = own_procfs();
    assert_eq!(d.status()["syscalls"]["proc_paths"], true, "watched when asked");
    // The kernel: the host pid names nothing in the namespace's procfs; the vpid does.
    let r = crossing(&d, &mut f, &format!("path openat /proc/{host}/status"), &[("openat", "leak", 1)]);
    assert_eq!(r, ENOENT);
    let r = crossing(&d, &mut f, &format!("path openat /proc/{child}/status"), &[("openat", "ok", 1)]);
    assert!(r >= 0, "{r}");
    let rec: Vec<AuditRecord> = eventually(tests::settle(), "the leak record", || {
        let v: Vec<AuditRecord> = d
            .audit_log()
            .into_iter()
            .filter(|r| r.container == f.container() && r.syscall == "openat" && r.verdict == "leak")
            .collect();
        (!v.is_empty()).then_some(v)
    });
    assert_eq!(rec.len(), 1, "{rec:#?}");
    assert_eq!(rec[0].value, i64::from(host));
    let also = rec[0].also.as_ref().expect("the task whose host pid leaked");
    assert_eq!((also.host_pid, also.vpid), (host, child));
    // Not numbers: no crossing.
    assert!(crossing(&d, &mut f, "path openat /proc/self/status", &[]) >= 0);
    assert!(crossing(&d, &mut f, "path openat /proc/thread-self/status", &[]) >= 0);
    assert!(crossing(&d, &mut f, "path newfstatat /proc/1x", &[]) == ENOENT);
    // Leading zeros are no pid to the kernel either.
    assert_eq!(crossing(&d, &mut f, &format!("path openat /proc/0{child}/status"), &[]), ENOENT);
    // /proc/N/task/T: two numbers.
    let r =
        crossing(&d, &mut f, &format!("path openat /proc/{child}/task/{child}/stat"), &[("openat", "ok", 2)]);
    assert!(r >= 0, "{r}");
    let r = crossing(
        &d,
        &mut f,
        &format!("path openat /proc/{child}/task/{host}/stat"),
        &[("openat", "ok", 1), ("openat", "leak", 1)],
    );
    assert_eq!(r, ENOENT);
}

#[test]
fn every_path_syscall_carries_the_number() {
    let (d, mut f, child, host) = own_procfs();
    for sys in
        ["open", "openat", "openat2", "newstat", "newlstat", "newfstatat", "statx", "access", "faccessat"]
    {
        let r = crossing(&d, &mut f, &format!("path {sys} /proc/{host}/stat"), &[(sys, "leak", 1)]);
        assert_eq!(r, ENOENT, "{sys}");
        let r = crossing(&d, &mut f, &format!("path {sys} /proc/{child}/stat"), &[(sys, "ok", 1)]);
        assert!(r >= 0, "{sys}: {r}");
    }
    // faccessat2 is 5.8 and later: every kernel of the suite has it.
    let r = crossing(&d, &mut f, &format!("path faccessat2 /proc/{host}/stat"), &[("faccessat2", "leak", 1)]);
    assert_eq!(r, ENOENT);
    for sys in ["readlink", "readlinkat"] {
        let r = crossing(&d, &mut f, &format!("path {sys} /proc/{host}/exe"), &[(sys, "leak", 1)]);
        assert_eq!(r, ENOENT, "{sys}");
        let r = crossing(&d, &mut f, &format!("path {sys} /proc/{child}/exe"), &[(sys, "ok", 1)]);
        assert!(r > 0, "{sys}: {r}");
    }
    let r = crossing(&d, &mut f, &format!("path chdir /proc/{host}"), &[("chdir", "leak", 1)]);
    assert_eq!(r, ENOENT);
    assert_eq!(crossing(&d, &mut f, &format!("path chdir /proc/{child}"), &[("chdir", "ok", 1)]), 0);
    // exec of a file that is no program: the kernel refuses it, the number crossed all the same.
    let r = crossing(&d, &mut f, &format!("path execve /proc/{host}/status"), &[("execve", "leak", 1)]);
    assert_eq!(r, ENOENT);
    let r = crossing(&d, &mut f, &format!("path execve /proc/{child}/status"), &[("execve", "ok", 1)]);
    assert_eq!(r, -i64::from(libc::EACCES));
}

#[test]
fn a_number_relative_to_a_procfs_root_is_judged_and_one_in_any_other_directory_is_no_crossing() {
    let (d, mut f, child, host) = own_procfs();
    let r = crossing(&d, &mut f, &format!("path_at /proc openat {host}/status"), &[("openat", "leak", 1)]);
    assert_eq!(r, ENOENT);
    let r = crossing(&d, &mut f, &format!("path_at /proc newfstatat {child}"), &[("newfstatat", "ok", 1)]);
    assert_eq!(r, 0);
    let r = crossing(&d, &mut f, &format!("path_cwd /proc openat {host}/stat"), &[("openat", "leak", 1)]);
    assert_eq!(r, ENOENT);
    let r = crossing(&d, &mut f, &format!("path_cwd /proc statx {child}/stat"), &[("statx", "ok", 1)]);
    assert_eq!(r, 0);
    // Short paths that end on a page's last byte, before an unmapped page: the kernel reads them
    // (the numbers are judged as the ones above), where a copy of their first 8 bytes faults (the
    // vpid's path is that short; the host pid's too, unless the host's pids have 7 digits).
    assert!(child.to_string().len() < 7, "{child}");
    for (sys, rel, verdict, kernel) in
        [("openat", format!("{host}"), "leak", ENOENT), ("newfstatat", format!("{child}"), "ok", 0)]
    {
        for how in ["path_at", "path_cwd"] {
            let r = crossing(&d, &mut f, &format!("edge {how} /proc {sys} {rel}"), &[(sys, verdict, 1)]);
            if kernel == 0 {
                assert!(r >= 0, "{how} {sys} {rel}: {r}")
            } else {
                assert_eq!(r, kernel, "{how} {sys} {rel}")
            }
        }
    }
    // A directory holding a file named like a pid is no procfs.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(host.to_string()), "").unwrap();
    let d_path = dir.path().display().to_string();
    assert!(crossing(&d, &mut f, &format!("path_at {d_path} openat {host}"), &[]) >= 0);
    assert_eq!(crossing(&d, &mut f, &format!("path_cwd {d_path} newfstatat {host}"), &[]), 0);
}

/// A fixture without a mount namespace of its own reads the host's procfs at /proc: the numbers
/// there are host numbers, and the kernel answers for them. That a namespace reads another's
/// procfs is the finding, named with the procfs's namespace.
#[test]
fn a_namespace_reading_the_hosts_procfs_is_recorded_with_that_procfs_namespace() {
    let d = daemon();
    let mut f = Fixture::start(FIXTURE, 1);
    let child = f.num("spawn 0") as u32;
    let host = f.host_tid(child);
    let host_pidns =
        std::fs::metadata("/proc/self/ns/pid").map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
    // The kernel: the host pid names the child in the host's procfs.
    let r =
        crossing(&d, &mut f, &format!("path openat /proc/{host}/status"), &[("openat", "foreign_procfs", 1)]);
    assert!(r >= 0, "{r}");
    let r = crossing(
        &d,
        &mut f,
        &format!("path_at /proc newfstatat {host}"),
        &[("newfstatat", "foreign_procfs", 1)],
    );
    assert_eq!(r, 0);
    let recs: Vec<AuditRecord> = eventually(tests::settle(), "two foreign_procfs records", || {
        let v: Vec<AuditRecord> = d
            .audit_log()
            .into_iter()
            .filter(|r| r.container == f.container() && r.verdict == "foreign_procfs")
            .collect();
        (v.len() >= 2).then_some(v)
    });
    assert_eq!(recs.len(), 2, "{recs:#?}");
    for r in &recs {
        assert_eq!(r.value, i64::from(host));
        let at = r.read_at.as_ref().expect("the procfs's namespace");
        assert_eq!((at.level, at.pidns, at.container.as_str()), (0, host_pidns, "host"));
        let target = r.target.as_ref().expect("the task the number names in that procfs");
        assert_eq!((target.host_pid, target.vpid), (host, child));
    }
}

#[test]
fn without_proc_paths_the_path_syscalls_are_left_alone_and_the_rest_still_judged() {
    let d = Daemon::start();
    let status = d.status();
    assert_eq!(status["syscalls"]["proc_paths"], false, "{status}");
    // The kernel's truth: the daemon holds no program of a path syscall, however it attached
    // (shared tracepoint programs, or one fentry program per syscall function), and still kill's.
    let tracepoints = status["syscalls"]["mode"] == "tracepoint";
    for name in
        ["enter_path", "enter_at_path", "fentry_open", "fentry_openat", "fentry_newfstatat", "fentry_execve"]
    {
        assert!(daemon_programs(d.pid(), name).is_empty(), "{name} is loaded");
    }
    let kill = if tracepoints { "enter_pid_arg" } else { "fentry_kill" };
    assert!(!daemon_programs(d.pid(), kill).is_empty(), "{kill} is not loaded");
    let mut f = Fixture::start(FIXTURE, 1);
    assert_eq!(f.cmd("mount_proc"), "ok");
    let child = f.num("spawn 0") as u32;
    let host = f.host_tid(child);
    let r = crossing(&d, &mut f, &format!("path openat /proc/{host}/status"), &[]);
    assert_eq!(r, ENOENT, "the host pid names nothing in the namespace's procfs");
    // kill(host pid, 0) is still a leak.
    let r = crossing(&d, &mut f, &format!("sys kill {host} 0"), &[("kill", "leak", 1)]);
    assert_eq!(r, -3, "ESRCH");
}
