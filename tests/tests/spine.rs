//! The spine: per-container vpid maps kept in the kernel, attach to a running host, and the CLI
//! contract. Every assertion compares with the kernel's own truth (/proc), not with pidvirt.

use tests::{Daemon, Fixture, PsRow, pidvirt, proc_truth};

const FIXTURE: &str = env!("CARGO_BIN_EXE_pidvirt-fixture");

/// Asserts that `ps --json` lists exactly the tasks /proc lists in namespace `ns`, each with
/// the same ids at every level; returns the rows.
fn assert_ps_matches_proc(d: &Daemon, ns: u64) -> Vec<PsRow> {
    let truth = proc_truth::tasks_in(ns);
    assert!(!truth.is_empty(), "no task in pidns {ns}");
    let rows = d.ps_by_tid();
    let mut mine = Vec::new();
    for t in &truth {
        let r = rows
            .get(&t.tid)
            .unwrap_or_else(|| panic!("task {} (NSpid {:?}) of pidns {ns} missing from ps", t.tid, t.nspid));
        assert_eq!(r.nspid, t.nspid, "NSpid of host tid {}", t.tid);
        assert_eq!(r.nstgid, t.nstgid, "NStgid of host tid {}", t.tid);
        assert_eq!(r.pidns, ns, "pidns of host tid {}", t.tid);
        assert_eq!(r.host_pid, t.pid);
        assert_eq!(r.vtid, *t.nspid.last().unwrap());
        assert_eq!(r.vpid, *t.nstgid.last().unwrap());
        assert_eq!(r.level as usize, t.nspid.len() - 1);
        assert_eq!(r.container, format!("pidns-{ns}"));
        // The command the thread itself carries (threads may be named apart from their leader).
        assert_eq!(Some(&r.comm), proc_truth::comm(t.pid, t.tid).as_ref(), "comm of host tid {}", t.tid);
        mine.push(r.clone());
    }
    let listed = rows.values().filter(|r| r.pidns == ns).count();
    assert_eq!(listed, truth.len(), "ps lists {listed} tasks in pidns {ns}, /proc {}", truth.len());
    mine
}

fn namespace_tree(f: &mut Fixture, children: usize, threads: usize) {
    for _ in 0..children {
        assert!(f.num(&format!("spawn {threads}")) > 1);
    }
}

fn check_before_and_after_attach(seed: &str) {
    // A namespace with processes and threads made BEFORE the daemon starts...
    let mut before = Fixture::start(FIXTURE, 1);
    namespace_tree(&mut before, 3, 2);
    let d = Daemon::start_with(&["--seed", seed]);
    // ...one made after, and more tasks in the first one after attach.
    let mut after = Fixture::start(FIXTURE, 1);
    namespace_tree(&mut after, 2, 3);
    namespace_tree(&mut before, 1, 1);

    let old = assert_ps_matches_proc(&d, before.inner());
    let new = assert_ps_matches_proc(&d, after.inner());
    // 1 init + 3 children x 3 tasks + 1 child x 2 tasks; 1 init + 2 children x 4 tasks.
    assert_eq!(old.len(), 12);
    assert_eq!(new.len(), 9);
    // Tasks that existed at attach: the task iterator records them exactly like forks; the
    // /proc-only seed marks them (clock-tick start times).
    let seeded = old.iter().filter(|r| r.seeded).count();
    match seed {
        "iterator" => assert_eq!(seeded, 0, "iterator seeding must leave no /proc-seeded entry"),
        _ => assert_eq!(seeded, 10, "the 10 tasks made before attach are seeded from /proc"),
    }
    assert!(new.iter().all(|r| !r.seeded));

    // Both namespaces are containers, registered automatically, with their task counts.
    let containers = d.containers();
    for (f, n) in [(&before, 12), (&after, 9)] {
        let c = containers.iter().find(|c| c.pidns == f.inner()).expect("container listed");
        assert_eq!(c.id, format!("pidns-{}", f.inner()));
        assert_eq!((c.level, c.tasks), (1, n));
        assert_eq!(c.parent.as_deref(), Some("host"));
    }
    assert!(d.log().contains("mismatched=0"), "seed self-check:\n{}", d.log());
    // Kernel threads (all made before attach, in the host's namespace) are marked as /proc's stat
    // flags mark them, by either seeding; other tasks are not.
    let host: Vec<PsRow> = d.ps_by_tid().into_values().filter(|r| r.level == 0).collect();
    let mut kthreads = 0;
    for r in &host {
        let Some(truth) = proc_truth::kthread(r.host_tid) else { continue }; // gone since
        assert_eq!(r.kthread, truth, "kthread of host tid {} ({})", r.host_tid, r.comm);
        kthreads += usize::from(truth);
    }
    assert!(kthreads > 0, "no kernel thread among {} host tasks", host.len());
    assert!(old.iter().chain(&new).all(|r| !r.kthread));
}

#[test]
fn ps_equals_proc_for_tasks_made_before_and_after_attach() {
    check_before_and_after_attach("iterator");
}

#[test]
fn ps_equals_proc_with_proc_only_seeding() {
    check_before_and_after_attach("proc");
}

#[test]
fn nested_namespaces_have_a_pid_at_every_level() {
    let mut pre = Fixture::start(FIXTURE, 2);
    namespace_tree(&mut pre, 1, 1);
    let d = Daemon::start();
    let mut post = Fixture::start(FIXTURE, 2);
    namespace_tree(&mut post, 2, 2);
    for f in [&pre, &post] {
        let rows = assert_ps_matches_proc(&d, f.inner());
        assert!(rows.iter().all(|r| r.nspid.len() == 3 && r.level == 2));
        // The level-1 init is a task of the outer namespace.
        let outer = d.ps_by_tid()[&f.outer_init].clone();
        assert_eq!(outer.nspid, proc_truth::task(f.outer_init, f.outer_init).unwrap().nspid);
        assert_eq!((outer.level, outer.vpid), (1, 1));
        let containers = d.containers();
        let inner = containers.iter().find(|c| c.pidns == f.inner()).unwrap();
        assert_eq!(inner.level, 2);
        assert_eq!(inner.parent, Some(format!("pidns-{}", f.pidns[0])));
    }
}

#[test]
fn deep_nesting_beyond_the_inline_levels() {
    // Level 6: ids at levels 4..=6 live in the deep-levels map.
    let d = Daemon::start();
    let mut f = Fixture::start(FIXTURE, 6);
    namespace_tree(&mut f, 1, 1);
    let rows = assert_ps_matches_proc(&d, f.inner());
    assert!(rows.iter().all(|r| r.nspid.len() == 7));
}

/// Kernels that declare `pid.numbers[1]` refuse direct loads of levels above 0; the programs
/// then read those levels with bpf_probe_read_kernel. `--probe-reads` forces that path here, so
/// it is checked on every kernel: tasks seeded by the iterator, recorded at fork, at inline and
/// at deep levels, all against /proc.
#[test]
fn probe_read_fallback_reads_every_level_like_direct_loads() {
    let mut pre = Fixture::start(FIXTURE, 5);
    namespace_tree(&mut pre, 1, 1);
    let d = Daemon::start_with(&["--probe-reads"]);
    let status = d.cli(&["status"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).expect("status JSON");
    let reads = status["task_reads"].as_str().unwrap_or_default();
    assert!(reads.starts_with("bpf_probe_read_kernel"), "task_reads: {reads}");
    let mut post = Fixture::start(FIXTURE, 5);
    namespace_tree(&mut post, 2, 2);
    for f in [&pre, &post] {
        // Every namespace of the chain (the inits of the outer ones, too), level by level.
        for (i, &ns) in f.pidns.iter().enumerate() {
            let rows = assert_ps_matches_proc(&d, ns);
            assert!(rows.iter().all(|r| r.nspid.len() == i + 2 && r.level as usize == i + 1));
        }
    }
}

#[test]
fn exits_remove_entries() {
    let d = Daemon::start();
    let mut f = Fixture::start(FIXTURE, 1);
    let vpid = f.num("spawn 3") as u32;
    let host = f.host_tid(vpid);
    let threads: Vec<u32> =
        proc_truth::tasks().into_iter().filter(|t| t.pid == host).map(|t| t.tid).collect();
    assert_eq!(threads.len(), 4);
    let rows = d.ps_by_tid();
    assert!(threads.iter().all(|t| rows.contains_key(t)));
    assert_eq!(f.cmd(&format!("reap {vpid}")), "ok");
    assert!(!proc_truth::alive(host), "the kernel reaped {host}");
    tests::eventually_explained(
        tests::settle(),
        "exited tasks leave ps",
        || {
            let rows = d.ps_by_tid();
            threads.iter().all(|t| !rows.contains_key(t)).then_some(())
        },
        // What tells the programs' entries from the /proc walk's (seeded), and whether the free
        // of each ran (lifecycle), for a failure seen once and not reproduced since.
        || {
            let ps: serde_json::Value =
                serde_json::from_str(&d.cli(&["ps", "--json"]).stdout).unwrap_or_default();
            let left: Vec<&serde_json::Value> = ps
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["host_tid"].as_u64().is_some_and(|t| threads.contains(&(t as u32))))
                .collect();
            let alive: Vec<bool> = threads.iter().map(|t| proc_truth::alive(*t)).collect();
            format!(
                "left in ps: {}; alive in /proc: {alive:?}; stats: {}",
                serde_json::to_string(&left).unwrap_or_default(),
                d.cli(&["stats", "--json"]).stdout
            )
        },
    );
    assert_ps_matches_proc(&d, f.inner());
    // A zombie still holds its pid (wait4 and kill still name it): listed until reaped.
    let z = f.num("spawn 0") as u32;
    let zhost = f.host_tid(z);
    assert_eq!(f.cmd(&format!("zombie {z}")), "ok");
    assert!(proc_truth::alive(zhost));
    assert!(d.ps_by_tid().contains_key(&zhost), "a zombie keeps its entry");
    assert_eq!(f.num(&format!("wait {z}")), i64::from(z));
    tests::eventually(tests::settle(), "reaped zombie leaves ps", || {
        (!d.ps_by_tid().contains_key(&zhost)).then_some(())
    });
}

/// Processes the tasks of container `container` released with a wait4 that removed their
/// entries (`reaped` in its stats).
fn reaped(d: &Daemon, container: &str) -> u64 {
    let out = d.cli(&["stats", "--container", container, "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("stats JSON");
    v["reaped"].as_u64().expect("reaped in the container's stats")
}

/// A wait4 that releases a process removes its entries at once; one that only reports it (a
/// stopped child) or a process that is not dead as a whole (a zombie leader whose threads run)
/// keeps them. Every step is checked against /proc.
#[test]
#[expect(
    clippy::many_single_char_names,
    reason = "the suite's names: d the daemon, f the fixture, a child's vpid (s) beside its host tid (shost)"
)]
fn a_wait_that_reaps_removes_the_entries_one_that_reports_keeps_them() {
    let d = Daemon::start();
    let mut f = Fixture::start(FIXTURE, 1);
    let before = reaped(&d, &f.container());

    // Killed, then waited for: the wait releases it.
    let v = f.num("spawn 1") as u32;
    let host = f.host_tid(v);
    assert_eq!(f.cmd(&format!("zombie {v}")), "ok");
    assert_eq!(proc_truth::state(host), Some('Z'));
    assert!(d.ps_by_tid().contains_key(&host), "a zombie keeps its entry");
    assert_eq!(f.num(&format!("wait {v}")), i64::from(v));
    assert!(!proc_truth::alive(host), "the kernel released {host}");
    tests::eventually(tests::settle(), "the reaped process leaves ps", || {
        (!d.ps_by_tid().contains_key(&host)).then_some(())
    });
    assert_eq!(reaped(&d, &f.container()), before + 1, "removed by the wait that reaped it");

    // Stopped and reported by wait4(WUNTRACED): alive, and listed.
    let s = f.num("spawn 0") as u32;
    let shost = f.host_tid(s);
    assert_eq!(f.num(&format!("stop {s}")), i64::from(s));
    assert_eq!(proc_truth::state(shost), Some('T'));
    let row = d.ps_by_tid().get(&shost).cloned().expect("a stopped child keeps its entry");
    assert_eq!(row.nspid, proc_truth::task(shost, shost).unwrap().nspid);

    // A zombie leader whose threads run is not reapable; once they die (SIGKILL), the last
    // thread's exit marks the group dead and the wait releases it.
    let z = f.num("spawn_leader_exits 2") as u32;
    let zhost = f.host_tid(z);
    tests::eventually(tests::settle(), "the leader thread exits", || {
        (proc_truth::state(zhost) == Some('Z')).then_some(())
    });
    let threads: Vec<u32> =
        proc_truth::tasks().into_iter().filter(|t| t.pid == zhost && t.tid != zhost).map(|t| t.tid).collect();
    assert_eq!(threads.len(), 2, "the threads outlive their leader");
    assert!(d.ps_by_tid().contains_key(&zhost), "the zombie leader of a live group keeps its entry");
    // Stopped: wait4(WUNTRACED) returns its pid, its leader is a zombie, the group lives on.
    assert_eq!(f.num(&format!("stop {z}")), i64::from(z));
    assert!(threads.iter().all(|t| proc_truth::state(*t) == Some('T')));
    assert!(d.ps_by_tid().contains_key(&zhost), "a reported group that lives keeps its leader's entry");
    assert_eq!(reaped(&d, &f.container()), before + 1);
    assert_eq!(f.cmd(&format!("reap {z}")), "ok");
    assert!(!proc_truth::alive(zhost));
    tests::eventually(tests::settle(), "the group leaves ps", || {
        let rows = d.ps_by_tid();
        (!rows.contains_key(&zhost) && threads.iter().all(|t| !rows.contains_key(t))).then_some(())
    });
    assert_eq!(
        reaped(&d, &f.container()),
        before + 2,
        "the leader's entry went with the wait that reaped the group"
    );

    // A tracer that is not the parent collects the exit: the zombie stays for the parent.
    let t = f.num("spawn 0") as u32;
    let thost = f.host_tid(t);
    assert_eq!(f.num(&format!("traced_exit {t}")), i64::from(t));
    assert_eq!(proc_truth::state(thost), Some('Z'), "a zombie for its parent still");
    assert!(d.ps_by_tid().contains_key(&thost), "a zombie the tracer reported keeps its entry");
    assert_eq!(f.num(&format!("wait {t}")), i64::from(t));
    assert!(!proc_truth::alive(thost));
    tests::eventually(tests::settle(), "the traced process leaves ps", || {
        (!d.ps_by_tid().contains_key(&thost)).then_some(())
    });
    assert_ps_matches_proc(&d, f.inner());
}

#[test]
fn recycled_pids_do_not_inherit_old_entries() {
    let d = Daemon::start();
    let mut f = Fixture::start(FIXTURE, 1);
    // The same vpid, twice, in the same container: a new host pid each time.
    assert_eq!(f.num("spawn_vpid 500 0"), 500);
    let first = f.host_tid(500);
    assert_eq!(f.cmd("reap 500"), "ok");
    assert_eq!(f.num("spawn_vpid 500 0"), 500);
    let second = f.host_tid(500);
    assert_ne!(first, second);
    tests::eventually(tests::settle(), "old host tid leaves ps", || {
        (!d.ps_by_tid().contains_key(&first)).then_some(())
    });
    let rows = d.ps_by_tid();
    assert_eq!(rows[&second].nspid, vec![second, 500]);
    let c = format!("pidns-{}", f.inner());
    assert_eq!(d.cli(&["translate", "--container", &c, "--vpid", "500"]).stdout.trim(), second.to_string());

    // The same HOST pid, recycled into the same container with another vpid: pin both levels
    // with clone3 set_tid (innermost first). The old vpid must not resolve to it any more.
    let host = pick_free_host_pid();
    assert_eq!(f.num(&format!("spawn_pids 0 600 {host}")), 600);
    assert_eq!(f.host_tid(600), host);
    assert_eq!(f.cmd("reap 600"), "ok");
    assert_eq!(f.num(&format!("spawn_pids 0 601 {host}")), 601);
    assert_eq!(f.host_tid(601), host);
    tests::eventually(tests::settle(), "recycled host pid carries the new vpid", || {
        let rows = d.ps_by_tid();
        (rows.get(&host).map(|r| r.nspid.clone()) == Some(vec![host, 601])).then_some(())
    });
    let old = d.cli(&["translate", "--container", &c, "--vpid", "600"]);
    assert_eq!(old.code, 1, "vpid 600 is gone: {old:?}");
    assert_eq!(d.cli(&["translate", "--container", &c, "--pid", &host.to_string()]).stdout.trim(), "601");
    assert_ps_matches_proc(&d, f.inner());
}

/// A host pid no task uses, far from where the kernel allocates next (pids wrap at pid_max).
fn pick_free_host_pid() -> u32 {
    let read = |f: &str| -> u32 { std::fs::read_to_string(f).unwrap().trim().parse().unwrap() };
    let (max, last) = (read("/proc/sys/kernel/pid_max"), read("/proc/sys/kernel/ns_last_pid"));
    let used: std::collections::BTreeSet<u32> = proc_truth::tasks().iter().map(|t| t.tid).collect();
    (0..max)
        .map(|i| 301 + (last + max / 2 + i) % (max - 301))
        .find(|p| !used.contains(p))
        .expect("a free host pid")
}

#[test]
fn a_thread_that_execs_takes_the_leaders_pid() {
    let d = Daemon::start();
    let mut f = Fixture::start(FIXTURE, 1);
    // A process whose other thread execs (the leader, and nothing else, exits before the exec
    // releases it), and one with two more threads.
    let mut exec_d = Vec::new();
    for threads in [0, 2] {
        let vpid = f.num(&format!("spawn_exec {threads}")) as u32;
        let host = f.host_tid(vpid);
        tests::eventually(tests::settle(), "exec'd process is single-threaded in ps", || {
            let rows: Vec<PsRow> = d.ps().into_iter().filter(|r| r.host_pid == host).collect();
            (rows.len() == 1).then_some(())
        });
        let rows = assert_ps_matches_proc(&d, f.inner());
        let r = rows.iter().find(|r| r.host_pid == host).unwrap();
        assert_eq!((r.host_tid, r.vtid, r.vpid), (host, vpid, vpid));
        assert_eq!(r.comm, "sleep");
        exec_d.push((host, vpid));
    }
    // The old leaders' structures are freed an RCU grace period after the execs (each exited
    // under the pid its process now has, then took the thread's old tid): their frees leave the
    // processes' entries alone.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let rows = assert_ps_matches_proc(&d, f.inner());
    for (host, vpid) in exec_d {
        assert!(
            rows.iter().any(|r| (r.host_pid, r.host_tid, r.vtid) == (host, host, vpid)),
            "{host}: {rows:?}"
        );
    }
}

#[test]
fn translate_both_ways_and_clear_errors() {
    let d = Daemon::start();
    let mut f = Fixture::start(FIXTURE, 1);
    let vpid = f.num("spawn 1") as u32;
    let host = f.host_tid(vpid);
    let c = format!("pidns-{}", f.inner());
    let to_host = d.cli(&["translate", "--container", &c, "--vpid", &vpid.to_string()]);
    assert_eq!((to_host.code, to_host.stdout.trim()), (0, host.to_string().as_str()));
    let to_v = d.cli(&["translate", "--container", &c, "--pid", &host.to_string()]);
    assert_eq!((to_v.code, to_v.stdout.trim()), (0, vpid.to_string().as_str()));
    // By namespace inode too.
    let by_ino = d.cli(&["translate", "--container", &f.inner().to_string(), "--vpid", "1"]);
    assert_eq!(by_ino.stdout.trim(), f.outer_init.to_string());
    // The host sees host pids.
    let me = std::process::id().to_string();
    assert_eq!(d.cli(&["translate", "--container", "host", "--pid", &me]).stdout.trim(), me);

    let unknown = d.cli(&["translate", "--container", "no-such-container", "--vpid", "1"]);
    assert_eq!(unknown.code, 1);
    assert!(unknown.stderr.contains("unknown container `no-such-container`"), "{unknown:?}");
    let absent = d.cli(&["translate", "--container", &c, "--vpid", "4000000"]);
    assert_eq!(absent.code, 1);
    assert!(absent.stderr.contains("no task with vpid 4000000"), "{absent:?}");
    // A host pid that is not in the container.
    let outside = d.cli(&["translate", "--container", &c, "--pid", &me]);
    assert_eq!(outside.code, 1, "{outside:?}");
    let ps_unknown = d.cli(&["ps", "--container", "nope"]);
    assert_eq!(ps_unknown.code, 1);
    assert!(ps_unknown.stderr.contains("unknown container `nope`"));
    // ps --container shows exactly that container.
    let rows: Vec<PsRow> = serde_json::from_str(&d.cli(&["ps", "--json", "--container", &c]).stdout).unwrap();
    assert_eq!(rows.len(), proc_truth::tasks_in(f.inner()).len());
}

#[test]
fn bad_socket_path_is_a_clear_error() {
    let out = pidvirt(&["ps", "--socket", "/nonexistent/dir/pidvirt.sock"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("/nonexistent/dir/pidvirt.sock"), "{out:?}");
    assert!(out.stderr.contains("is `pidvirt run` running?"), "{out:?}");
    let out = pidvirt(&["translate", "--container", "x"]);
    assert_eq!(out.code, 2, "clap usage error: {out:?}");
}

#[test]
fn refuses_to_run_without_root() {
    let dir = tempfile::tempdir().unwrap();
    let nobody = tests::NobodyPidvirt::new();
    let out = nobody.command().args(["run", "--socket"]).arg(dir.path().join("s.sock")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("must run as root"), "{stderr}");
}

#[test]
fn a_second_daemon_does_not_steal_the_socket() {
    let d = Daemon::start();
    let sock = d.socket.to_string_lossy().into_owned();
    let out = pidvirt(&["run", "--socket", &sock]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("another pidvirt daemon is serving"), "{out:?}");
    assert_eq!(d.cli(&["status"]).code, 0, "the first daemon still serves");
}

/// Names of the BPF programs loaded in the kernel, as bpftool lists them.
fn loaded_programs() -> Vec<String> {
    let out =
        std::process::Command::new("bpftool").args(["prog", "show", "--json"]).output().expect("bpftool");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()
        .map(|a| a.iter().filter_map(|p| p["name"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

#[test]
fn sigterm_detaches_every_program() {
    let d = Daemon::start();
    let socket = d.socket.clone();
    let ours = |names: &[String]| names.iter().filter(|n| n.starts_with("sched_process_")).count();
    assert!(ours(&loaded_programs()) >= 4, "{:?}", loaded_programs());
    let status = d.stop();
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "socket removed");
    tests::eventually(tests::settle(), "programs unloaded", || (ours(&loaded_programs()) == 0).then_some(()));
}

#[test]
fn socket_is_root_only() {
    use std::os::unix::fs::PermissionsExt;
    let d = Daemon::start();
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}
