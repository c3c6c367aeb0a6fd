//! The crossing audit: every pid crossing a watched syscall is counted per container and
//! classified; anomalies reach the audit log. The kernel's own answer (the syscall's return
//! value, /proc) is checked next to pidvirt's verdict.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tests::{AuditRecord, Daemon, Fixture, eventually, proc_truth};

const FIXTURE: &str = env!("CARGO_BIN_EXE_pidvirt-fixture");
const ESRCH: i64 = -3;

fn records_of(d: &Daemon, container: &str, syscall: &str) -> Vec<AuditRecord> {
    d.audit_log().into_iter().filter(|r| r.container == container && r.syscall == syscall).collect()
}

/// Waits for exactly `n` audit records matching `pred`; returns them.
fn wait_records(d: &Daemon, n: usize, what: &str, pred: impl Fn(&AuditRecord) -> bool) -> Vec<AuditRecord> {
    let found = eventually(tests::settle(), what, || {
        let found: Vec<AuditRecord> = d.audit_log().into_iter().filter(|r| pred(r)).collect();
        (found.len() >= n).then_some(found)
    });
    assert_eq!(found.len(), n, "{what}: {found:#?}");
    found
}

/// A pid number used by no task, neither as a host pid nor as a vpid.
fn unused_number() -> u32 {
    let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
    let used: std::collections::BTreeSet<u32> =
        proc_truth::tasks().iter().flat_map(|t| t.nspid.iter().copied()).collect();
    (1000..max).rev().find(|n| !used.contains(n)).expect("a free number")
}

fn count(c: &BTreeMap<String, BTreeMap<String, u64>>, syscall: &str, verdict: &str) -> u64 {
    c[syscall][verdict]
}

#[test]
fn a_host_pid_passed_to_kill_inside_a_container_is_a_leak() {
    let d = Daemon::start();
    let mut f = Fixture::start(FIXTURE, 1);
    let sibling = f.num("spawn 0") as u32;
    let host = f.host_tid(sibling);
    assert!(proc_truth::tasks_in(f.inner()).iter().all(|t| t.nspid[1] != host), "host pid is also a vpid");
    // The kernel: the host pid names nothing inside the container.
    assert_eq!(f.num(&format!("sys kill {host} 0")), ESRCH);
    let r = wait_records(&d, 1, "leak record", |r| r.container == f.container() && r.verdict == "leak");
    let r = &r[0];
    assert_eq!((r.syscall.as_str(), r.direction.as_str(), r.value), ("kill", "in", i64::from(host)));
    assert_eq!((r.caller.vpid, r.caller.host_pid, r.caller.pidns), (1, f.outer_init, f.inner()));
    assert_eq!(r.caller.comm, "pidvirt-fixture");
    assert!(r.target.is_none(), "nothing is named in the container");
    let also = r.also.as_ref().expect("the task whose host pid leaked");
    assert_eq!((also.host_pid, also.vpid, also.container.as_str()), (host, sibling, f.container().as_str()));
    let (c, _) = d.container_crossings(&f.container());
    assert_eq!(count(&c, "kill", "leak"), 1);
}

/// A task that only the daemon's /proc walk recorded (`--seed proc`: no task iterator) is found
/// by its host pid as well: the daemon keeps its own half of the filter of host tids.
#[test]
fn the_host_pid_of_a_task_seeded_from_proc_is_a_leak_too() {
    let mut f = Fixture::start(FIXTURE, 1);
    let sibling = f.num("spawn 0") as u32;
    let host = f.host_tid(sibling);
    let d = Daemon::start_with(&["--seed", "proc"]);
    eventually(tests::settle(), "the sibling seeded from /proc", || {
        d.ps_by_tid().get(&host).filter(|r| r.seeded).map(|_| ())
    });
    assert_eq!(f.num(&format!("sys kill {host} 0")), ESRCH);
    let r = wait_records(&d, 1, "leak record", |r| r.container == f.container() && r.verdict == "leak");
    let also = r[0].also.as_ref().expect("the task whose host pid leaked");
    assert_eq!((r[0].value, also.host_pid, also.vpid), (i64::from(host), host, sibling));
    // Its own number: the reverse entry the daemon's seeding wrote (the hash map behind the
    // front, found through the count the seeding put on its slot) names it, as the kernel does.
    let c = f.container();
    let (before, _) = d.container_crossings(&c);
    assert_eq!(f.num(&format!("sys kill {sibling} 0")), 0);
    let (after, _) = d.container_crossings(&c);
    let delta = |v: &str| count(&after, "kill", v) - count(&before, "kill", v);
    assert_eq!((delta("ok"), delta("unknown"), delta("stale")), (1, 0, 0), "kill of the seeded task's vpid");
}

#[test]
fn a_vpid_equal_to_a_siblings_host_pid_is_a_collision_naming_both() {
    let d = Daemon::start();
    let mut f = Fixture::start(FIXTURE, 1);
    let sibling = f.num("spawn 0") as u32;
    let sibling_host = f.host_tid(sibling);
    // clone3 set_tid: a task whose vpid is the sibling's host pid.
    assert_eq!(f.num(&format!("spawn_vpid {sibling_host} 0")), i64::from(sibling_host));
    let twin_host = f.host_tid(sibling_host);
    assert_ne!(twin_host, sibling_host);
    // The kernel: the number names the twin (kill succeeds), while it is the sibling's host pid.
    assert_eq!(f.num(&format!("sys kill {sibling_host} 0")), 0);
    let r =
        wait_records(&d, 1, "collision record", |r| r.container == f.container() && r.verdict == "collision");
    let r = &r[0];
    assert_eq!((r.syscall.as_str(), r.value), ("kill", i64::from(sibling_host)));
    let target = r.target.as_ref().expect("the task hit");
    assert_eq!((target.host_pid, target.vpid), (twin_host, sibling_host));
    let also = r.also.as_ref().expect("the task meant");
    assert_eq!((also.host_pid, also.vpid), (sibling_host, sibling));
    assert_eq!(also.container, f.container());
}

/// A number naming nothing is counted `unknown` and, by default, not reported (no evidence of a
/// missed translation: a stale pid file's number); `--report unknown` writes its records.
#[test]
fn a_number_naming_nothing_is_counted_unknown_and_reported_when_asked() {
    let n = unused_number();
    let calls = |f: &mut Fixture| {
        assert_eq!(f.num(&format!("sys kill {n} 0")), ESRCH);
        assert_eq!(f.num(&format!("sys tkill {n} 0")), ESRCH);
        assert_eq!(f.num(&format!("sys prlimit64 {n} 7 0 0")), ESRCH);
    };
    let d = Daemon::start();
    let mut f = Fixture::start(FIXTURE, 1);
    calls(&mut f);
    let c = f.container();
    eventually(tests::settle(), "three unknowns counted", || {
        let (counts, _) = d.container_crossings(&c);
        ["kill", "tkill", "prlimit64"].iter().all(|s| count(&counts, s, "unknown") == 1).then_some(())
    });
    // A leak after them (this test's host pid) is reported: once its record is written, theirs
    // would have been.
    let me = std::process::id();
    assert_eq!(f.num(&format!("sys kill {me} 0")), ESRCH);
    wait_records(&d, 1, "the leak after them", |r| r.verdict == "leak" && r.value == i64::from(me));
    let records = d.audit_log();
    assert_eq!(records.len(), 1, "unknown is not reported by default: {records:#?}");
    drop(f);
    drop(d);

    let d = Daemon::start_with(&["--report", "unknown"]);
    let mut f = Fixture::start(FIXTURE, 1);
    calls(&mut f);
    let rs =
        wait_records(&d, 3, "unknown records", |r| r.container == f.container() && r.verdict == "unknown");
    let syscalls: Vec<&str> = rs.iter().map(|r| r.syscall.as_str()).collect();
    assert_eq!(syscalls, ["kill", "tkill", "prlimit64"]);
    assert!(rs.iter().all(|r| r.value == i64::from(n) && r.target.is_none() && r.also.is_none()));
}

#[test]
fn a_nested_container_targeted_from_its_parent_or_the_host_is_counted_nested_and_not_reported() {
    let d = Daemon::start();
    let mut f = Fixture::start(FIXTURE, 2);
    let v2 = f.num("spawn 0") as u32;
    let host = f.host_tid(v2);
    let t = proc_truth::task(host, host).unwrap();
    let in_parent = t.nspid[1]; // the number the level-1 namespace knows it by
    let outer = format!("pidns-{}", f.pidns[0]);
    let before = count(&d.container_crossings(&outer).0, "kill", "nested");
    assert_eq!(f.kill_from_level_1(FIXTURE, in_parent), "0", "the kernel lets the parent reach it");
    eventually(tests::settle(), "the parent's kill counted nested", || {
        (count(&d.container_crossings(&outer).0, "kill", "nested") == before + 1).then_some(())
    });
    // And from the host (other host processes count there too: at least ours).
    let host_before = count(&d.container_crossings("host").0, "kill", "nested");
    // SAFETY: kill takes no pointers; signal 0 only checks.
    assert_eq!(unsafe { libc::kill(host as i32, 0) }, 0);
    eventually(tests::settle(), "the host's kill counted nested", || {
        (count(&d.container_crossings("host").0, "kill", "nested") > host_before).then_some(())
    });
    // Neither is reported (the kernel's own model), nor the level-1 init's wait for its child.
    std::thread::sleep(Duration::from_millis(500));
    let me = std::process::id();
    let reported: Vec<AuditRecord> = d
        .audit_log()
        .into_iter()
        .filter(|r| {
            r.container == outer
                || r.caller.host_pid == me
                || r.target.as_ref().is_some_and(|t| t.host_pid == host)
        })
        .collect();
    assert!(reported.is_empty(), "routine parent-to-child crossings were reported: {reported:#?}");
}

#[test]
fn report_chooses_the_reported_verdicts_and_a_nested_record_names_its_target() {
    let d = Daemon::start_with(&["--report", "nested"]);
    let mut f = Fixture::start(FIXTURE, 2);
    let v2 = f.num("spawn 0") as u32;
    let host = f.host_tid(v2);
    let in_parent = proc_truth::task(host, host).unwrap().nspid[1];
    let outer = format!("pidns-{}", f.pidns[0]);
    assert_eq!(f.kill_from_level_1(FIXTURE, in_parent), "0");
    let r = wait_records(&d, 1, "nested from the parent namespace", |r| {
        r.container == outer && r.verdict == "nested" && r.syscall == "kill"
    });
    let target = r[0].target.as_ref().unwrap();
    assert_eq!((target.host_pid, target.vpid, target.container.as_str()), (host, v2, f.container().as_str()));
    assert_eq!(r[0].value, i64::from(in_parent));
    // `leak` is not in the set any more: counted, not reported.
    let sibling = f.num("spawn 0") as u32;
    let sibling_host = f.host_tid(sibling);
    assert_eq!(f.num(&format!("sys kill {sibling_host} 0")), ESRCH);
    eventually(tests::settle(), "the leak counted", || {
        (count(&d.container_crossings(&f.container()).0, "kill", "leak") == 1).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.audit_log().iter().all(|r| r.verdict == "nested"), "only nested records: {:#?}", d.audit_log());
    // A verdict `--report` cannot choose is refused with the list it can.
    let out = tests::pidvirt(&["run", "--report", "ok", "--socket", "/nonexistent/x.sock"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("leak") && out.stderr.contains("released"), "{}", out.stderr);
}

#[test]
fn returns_are_counted_ok_exactly_and_never_reported() {
    let d = Daemon::start();
    let mut f = Fixture::start(FIXTURE, 1);
    let c = f.container();
    let (before, _) = d.container_crossings(&c);
    assert_eq!(f.num("repeat 1000 getpid"), 1);
    assert_eq!(f.num("repeat 300 gettid"), 1);
    assert_eq!(f.num("repeat 200 getppid"), 0, "a namespace init's parent is outside");
    let child = f.num("spawn 0");
    assert_eq!(f.cmd(&format!("reap {child}")), "ok");
    assert_eq!(f.num("sys getpgid 0"), 0, "the init's group is outside its namespace");
    let (after, drops) = d.container_crossings(&c);
    let delta = |s: &str, v: &str| count(&after, s, v) - count(&before, s, v);
    assert_eq!(delta("getpid", "ok"), 1000);
    assert_eq!(delta("gettid", "ok"), 300);
    assert_eq!(delta("getppid", "ok"), 200);
    // fexit runs where the syscall function returns: in the parent; the child starts in
    // ret_from_fork and leaves through the exit tracepoint only.
    let returns = if d.status()["syscalls"]["mode"] == "fentry" { 1 } else { 2 };
    assert_eq!(
        delta("clone", "ok"),
        returns,
        "fork: the parent's return (and, on tracepoints, the child's 0)"
    );
    assert_eq!(delta("kill", "ok"), 1);
    assert_eq!(delta("wait4", "ok"), 2, "wait4's argument and its return");
    assert_eq!(delta("getpgid", "ok"), 2, "getpgid(0): argument and return");
    for (syscall, verdicts) in &after {
        for (verdict, n) in verdicts {
            if !matches!(verdict.as_str(), "ok" | "group" | "any") {
                assert_eq!(*n, 0, "{syscall}/{verdict} in a correct container");
            }
        }
    }
    assert_eq!(drops, 0);
    std::thread::sleep(Duration::from_millis(200));
    assert!(d.audit_log().iter().all(|r| r.container != c), "nothing of this container is reported");
}

#[test]
fn group_and_any_values_are_counted_not_reported() {
    let d = Daemon::start();
    let mut f = Fixture::start(FIXTURE, 1);
    let c = f.container();
    let (before, _) = d.container_crossings(&c);
    assert_eq!(f.num("sys kill 0 0"), 0); // own process group
    assert!((1..=40).contains(&f.num("sys getpriority 1 0"))); // PRIO_PGRP: 20 - nice
    let (after, _) = d.container_crossings(&c);
    assert_eq!(count(&after, "kill", "group") - count(&before, "kill", "group"), 1);
    assert_eq!(count(&after, "getpriority", "group") - count(&before, "getpriority", "group"), 1);
    assert!(records_of(&d, &c, "kill").is_empty());
}

#[test]
fn a_tiny_ring_buffer_overflows_and_every_drop_is_counted() {
    let d = Daemon::start_with(&["--ringbuf-bytes", "4096"]);
    let mut f = Fixture::start(FIXTURE, 1);
    let sibling = f.num("spawn 0") as u32;
    let host = f.host_tid(sibling);
    let n = 20_000;
    assert_eq!(f.num(&format!("repeat {n} kill {host} 0")), ESRCH);
    let c = f.container();
    // Wait until the audit log stops growing.
    let mut last = usize::MAX;
    let start = Instant::now();
    let delivered = loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = records_of(&d, &c, "kill").len();
        if now == last || start.elapsed() > Duration::from_secs(20) {
            break now as u64;
        }
        last = now;
    };
    let (crossings, drops) = d.container_crossings(&c);
    assert_eq!(count(&crossings, "kill", "leak"), n, "every crossing counted");
    assert!(drops > 0, "a 4 KiB ring buffer must overflow under {n} anomalies");
    assert_eq!(delivered + drops, n, "delivered {delivered} + dropped {drops} == generated");
    let global = d.stats();
    assert!(global["drops"]["ringbuf_full_anomaly"].as_u64().unwrap() >= drops);
}

#[test]
#[expect(
    clippy::many_single_char_names,
    reason = "the suite's names: d the daemon, f the fixture, c its container, n an unused pid, r a record"
)]
fn audit_follow_streams_and_filters() {
    let d = Daemon::start_with(&["--report", "leak,unknown"]);
    let mut f = Fixture::start(FIXTURE, 1);
    let sock = d.socket.to_string_lossy().into_owned();
    let c = f.container();
    let mut follower = Command::new(tests::pidvirt_bin())
        .args(["audit", "--follow", "--json", "--verdict", "unknown", "--container", &c, "--socket", &sock])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let n = unused_number();
    let sibling = f.num("spawn 0") as u32;
    let host_pid = f.host_tid(sibling);
    // Until the follower has subscribed, records are not streamed to it: repeat the crossings
    // until one arrives.
    let start = Instant::now();
    let line = loop {
        assert_eq!(f.num(&format!("sys kill {host_pid} 0")), ESRCH); // a leak: filtered out
        assert_eq!(f.num(&format!("sys kill {n} 0")), ESRCH); // unknown: streamed
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            break line;
        }
        assert!(start.elapsed() < tests::settle(), "no streamed record");
    };
    let r: AuditRecord = serde_json::from_str(&line).unwrap();
    assert_eq!((r.verdict.as_str(), r.value, r.container.as_str()), ("unknown", i64::from(n), c.as_str()));
    let _ = follower.kill();
    let _ = follower.wait();
    // Recent records, with filters; bad filters are clear errors.
    let out = d.cli(&["audit", "--json", "--container", &c, "--verdict", "leak"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.lines().count() >= 1);
    let recent: Vec<AuditRecord> = out.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(recent.iter().all(|r| r.verdict == "leak" && r.container == c && r.value == i64::from(host_pid)));
    let bad = d.cli(&["audit", "--verdict", "nope"]);
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("unknown verdict `nope`"), "{bad:?}");
    let bad = d.cli(&["stats", "--container", "nope"]);
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("unknown container `nope`"), "{bad:?}");
}
