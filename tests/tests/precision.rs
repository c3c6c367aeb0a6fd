//! Routine process management is not a missed translation: a parent acting on its nested
//! namespaces, and a wait or kill racing a process's release, are counted under their own
//! verdicts and not reported; what a missed translation looks like still is.

use std::{process::Command, time::Duration};

use tests::{AuditRecord, Daemon, Fixture, eventually};

const FIXTURE: &str = env!("CARGO_BIN_EXE_pidvirt-fixture");
const ESRCH: i64 = -3;
const ECHILD: i64 = -10;

fn count(d: &Daemon, container: &str, syscall: &str, verdict: &str) -> u64 {
    d.container_crossings(container).0[syscall][verdict]
}

#[test]
fn a_wait_or_kill_racing_a_release_is_counted_released_and_reported_unknown_only_after_the_window() {
    let d = Daemon::start();
    let mut f = Fixture::start(FIXTURE, 1);
    let c = f.container();
    // A vpid that is no host pid (small ones name host kernel threads: a leak once the release
    // is old).
    let v = loop {
        let v = f.num("spawn 0");
        if !tests::proc_truth::alive(v as u32) {
            break v;
        }
    };
    assert_eq!(f.cmd(&format!("reap {v}")), "ok");
    // The kernel: the child is gone (another waiter got it; nothing to signal).
    assert_eq!(f.num(&format!("sys wait4 {v} 0 0 0")), ECHILD);
    assert_eq!(f.num(&format!("sys kill {v} 0")), ESRCH);
    eventually(tests::settle(), "both counted released", || {
        (count(&d, &c, "wait4", "released") == 1 && count(&d, &c, "kill", "released") == 1).then_some(())
    });
    assert_eq!((count(&d, &c, "wait4", "unknown"), count(&d, &c, "kill", "unknown")), (0, 0));
    // Once the release is older than the window (2 s), the number names nothing: unknown.
    std::thread::sleep(Duration::from_millis(2300));
    assert_eq!(f.num(&format!("sys kill {v} 0")), ESRCH);
    let r = eventually(
        tests::settle(),
        &format!("unknown after the window (v {v}): {:?}", d.container_crossings(&c).0["kill"]),
        || d.audit_log().into_iter().find(|r| r.container == c && r.verdict == "unknown" && r.value == v),
    );
    assert_eq!(r.syscall, "kill");
    let released: Vec<AuditRecord> = d.audit_log().into_iter().filter(|r| r.verdict == "released").collect();
    assert!(released.is_empty(), "released is not reported by default: {released:#?}");
    assert_eq!(count(&d, &c, "kill", "released"), 1);
}

#[test]
fn unshare_fork_pid_waiting_for_its_nested_init_reports_nothing() {
    let d = Daemon::start();
    for _ in 0..3 {
        let status =
            Command::new("unshare").args(["--fork", "--pid", "--", "sh", "-c", "sleep 0.1"]).status();
        assert!(status.expect("run unshare").success());
    }
    std::thread::sleep(Duration::from_millis(500));
    let ours: Vec<AuditRecord> = d
        .audit_log()
        .into_iter()
        .filter(|r| matches!(r.caller.comm.as_str(), "unshare" | "sh" | "sleep"))
        .collect();
    assert!(ours.is_empty(), "unshare --fork --pid was reported: {ours:#?}");
    assert!(
        count(&d, "host", "wait4", "nested") >= 3,
        "each unshare's wait for its nested init counted nested"
    );
}

#[test]
fn forks_while_the_daemon_detaches_are_not_reported() {
    let d = Daemon::start();
    // A host shell forking and reaping without pause: every clone and wait4 return names one of
    // its own children, at whatever moment the daemon detaches.
    let mut busy = Command::new("sh").args(["-c", "while :; do /bin/true; done"]).spawn().expect("run sh");
    std::thread::sleep(Duration::from_millis(300));
    let log = d.audit_log.clone();
    let (status, _dir) = d.stop_keep_dir();
    let shell = busy.id();
    let _ = busy.kill();
    let _ = busy.wait();
    assert!(status.is_some_and(|s| s.success()), "the daemon stopped cleanly: {status:?}");
    let ours: Vec<AuditRecord> =
        tests::audit_records(&log).into_iter().filter(|r| r.caller.host_pid == shell).collect();
    assert!(ours.is_empty(), "the shell's own children were reported while the daemon detached: {ours:#?}");
}
