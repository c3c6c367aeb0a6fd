//! Routine process management is not a missed translation: a parent acting on its nested
//! namespaces, and a wait or kill racing a process's release, are counted under their own
//! verdicts and not reported; what a missed translation looks like still is.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
    time::Duration,
};

use tests::{AuditRecord, Daemon, Fixture, eventually};

const FIXTURE: &str = env!("CARGO_BIN_EXE_pidvirt-fixture");
const ESRCH: i64 = -3;
const ECHILD: i64 = -10;

fn count(d: &Daemon, container: &str, syscall: &str, verdict: &str) -> u64 {
    d.container_crossings(container).0[syscall][verdict]
}

#[test]
fn a_wait_or_kill_racing_a_release_is_counted_released_and_unknown_only_after_the_window() {
    let d = Daemon::start();
    let mut f = Fixture::start(FIXTURE, 1);
    let c = f.container();
    // A vpid that is no host pid (small ones name host kernel threads, which need a test of
    // their own).
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
    eventually(tests::settle(), &format!("unknown after the window (v {v})"), || {
        (count(&d, &c, "kill", "unknown") == 1).then_some(())
    });
    assert_eq!(count(&d, &c, "kill", "released"), 1);
    // Neither is reported by default: a leak after them (this test's host pid) is the only record
    // once its own is written.
    let me = std::process::id();
    assert_eq!(f.num(&format!("sys kill {me} 0")), ESRCH);
    let leak = eventually(tests::settle(), "the leak after them", || {
        d.audit_log().into_iter().find(|r| r.verdict == "leak" && r.value == i64::from(me))
    });
    assert_eq!(d.audit_log(), [leak], "released and unknown are not reported by default");
}

/// The host pid of `ksoftirqd/0`, a kernel thread (PF_KTHREAD) that lives as long as the machine.
fn ksoftirqd() -> u32 {
    let pid = (2..1000)
        .find(|pid| tests::proc_truth::comm(*pid, *pid).is_some_and(|c| c == "ksoftirqd/0"))
        .expect("ksoftirqd/0");
    assert_eq!(tests::proc_truth::kthread(pid), Some(true), "ksoftirqd/0 ({pid}) is a kernel thread");
    pid
}

/// The small numbers a container's own tasks have name kernel threads on the host: a number
/// naming nothing in the container but a kernel thread (a pid file's, read after the container
/// restarted) is no leak but `unknown`, while a user process's host pid still is a leak.
#[test]
fn a_number_naming_only_a_host_kernel_thread_is_unknown_not_a_leak() {
    let d = Daemon::start();
    let mut f = Fixture::start(FIXTURE, 1);
    let c = f.container();
    let kthread = ksoftirqd();
    // The kernel: nothing in the container's namespace has that number.
    assert_eq!(f.num(&format!("sys kill {kthread} 0")), ESRCH, "kill -0 {kthread} in the container");
    eventually(tests::settle(), "the kill counted unknown", || {
        (count(&d, &c, "kill", "unknown") == 1).then_some(())
    });
    assert_eq!(count(&d, &c, "kill", "leak"), 0, "kernel thread {kthread} is nobody's leak");
    assert_eq!(tests::proc_truth::kthread(kthread), Some(true), "{kthread} still lives");
    // The host pid of a user process (this test's): a leak.
    let me = std::process::id();
    assert_eq!(f.num(&format!("sys kill {me} 0")), ESRCH, "kill -0 {me} in the container");
    let leak = eventually(tests::settle(), "the leak of this test's pid", || {
        d.audit_log().into_iter().find(|r| r.container == c && r.verdict == "leak")
    });
    assert_eq!((leak.value, leak.also.map(|t| t.host_pid)), (i64::from(me), Some(me)));
    let records: Vec<(String, i64)> = d.audit_log().into_iter().map(|r| (r.verdict, r.value)).collect();
    assert_eq!(records, [("leak".to_string(), i64::from(me))], "the leak alone (unknown is not reported)");
}

/// THP's setting (/sys/kernel/mm/transparent_hugepage/enabled), put back when dropped: while it
/// is `always` or `madvise` the kernel runs khugepaged, a kernel thread it stops at `never` and
/// starts again (kthreadd forks it) when the setting is on again. Starting it may raise
/// vm.min_free_kbytes, which is put back too.
struct HugepageSetting {
    original: String,
    min_free_kbytes: Option<String>,
}

impl HugepageSetting {
    const PATH: &str = "/sys/kernel/mm/transparent_hugepage/enabled";
    const MIN_FREE: &str = "/proc/sys/vm/min_free_kbytes";

    fn read() -> Option<Self> {
        let line = std::fs::read_to_string(Self::PATH).ok()?;
        let original = line.split_whitespace().find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))?;
        let min_free_kbytes = std::fs::read_to_string(Self::MIN_FREE).ok();
        Some(Self { original: original.to_string(), min_free_kbytes })
    }

    fn set(&self, value: &str) -> Result<(), String> {
        std::fs::write(Self::PATH, value).map_err(|e| format!("writing {value} to {}: {e}", Self::PATH))
    }

    /// A setting under which khugepaged runs: the original one unless that is `never`.
    fn on(&self) -> &str {
        if self.original == "never" { "madvise" } else { &self.original }
    }
}

impl Drop for HugepageSetting {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.original);
        if let Some(v) = &self.min_free_kbytes {
            let _ = std::fs::write(Self::MIN_FREE, v.trim());
        }
    }
}

/// The host pid of khugepaged (a kernel thread), if it runs.
fn khugepaged() -> Option<u32> {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|&pid| {
            tests::proc_truth::comm(pid, pid).is_some_and(|c| c == "khugepaged")
                && tests::proc_truth::kthread(pid) == Some(true)
        })
}

/// Has the kernel fork a new khugepaged: THP `never` (it stops), then on again. Why it could not,
/// where it could not (per-size settings that keep it running or never start it, a read-only
/// /sys).
fn new_khugepaged(thp: &HugepageSetting) -> Result<u32, String> {
    thp.set("never")?;
    if tests::within(tests::settle(), || khugepaged().is_none().then_some(())).is_none() {
        return Err(
            "khugepaged kept running with THP never (a per-size hugepages-*kB setting keeps it)".into()
        );
    }
    thp.set(thp.on())?;
    tests::within(tests::settle(), khugepaged).ok_or_else(|| {
        format!("khugepaged did not start with THP {} (per-size settings at never?)", thp.on())
    })
}

/// A kernel thread forked after the daemon attached is marked by the fork program, as those the
/// start-up scan found are: its host pid, used in a container, is `unknown`, not a leak.
#[test]
fn a_kernel_thread_started_after_attach_is_no_leak_either() {
    const TEST: &str = "a_kernel_thread_started_after_attach_is_no_leak_either";
    let Some(thp) = HugepageSetting::read() else {
        tests::note_unavailable(
            TEST,
            "transparent hugepages (no /sys/kernel/mm/transparent_hugepage/enabled): the kernel \
             thread this test has the kernel start is khugepaged",
        );
        return;
    };
    let d = Daemon::start();
    let mut f = Fixture::start(FIXTURE, 1);
    let c = f.container();
    let kthread = match new_khugepaged(&thp) {
        Ok(pid) => pid,
        Err(why) => {
            tests::note_unavailable(TEST, &format!("a new kernel thread: {why}"));
            return;
        }
    };
    assert_eq!(f.num(&format!("sys kill {kthread} 0")), ESRCH, "kill -0 {kthread} in the container");
    eventually(tests::settle(), "the kill counted unknown", || {
        (count(&d, &c, "kill", "unknown") == 1).then_some(())
    });
    assert_eq!(count(&d, &c, "kill", "leak"), 0, "kernel thread {kthread} is nobody's leak");
    assert_eq!(tests::proc_truth::kthread(kthread), Some(true), "{kthread} still lives");
    let row = d.ps().into_iter().find(|r| r.host_tid == kthread);
    assert!(
        row.as_ref().is_some_and(|r| r.kthread),
        "the new khugepaged ({kthread}) is a kernel thread, as /proc says: {row:?}"
    );
    drop(thp);
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

/// Two namespaces' numbers whose slot in the reverse map's front is the same
/// (pidvirt_common::virt_front): the second one written goes to the hash map. Each is judged as
/// the kernel answers, in both namespaces, while both live, after each is reaped, and again once
/// the slot is free.
#[test]
fn numbers_of_two_namespaces_sharing_a_front_slot_are_judged_as_the_kernel_answers() {
    use pidvirt_common::{released, virt_front};
    let d = Daemon::start();
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .expect("read pid_max")
        .trim()
        .parse()
        .expect("pid_max is a number");
    // Numbers far above what the fixtures' own tasks take.
    let (lo, hi) = (1000, pid_max.min(virt_front::SLOTS));
    let slot = |f: &Fixture, nr: u32| virt_front::slot(released::key(f.inner() as u32, nr));
    let mut a = Fixture::start(FIXTURE, 1);
    // A second namespace whose place in the table lets a number of it share a slot with one
    // of the first's (the places are hashes of the inodes, spread evenly over the table for
    // inodes handed out in turn: a few tries). The namespaces tried stay until the end: the
    // kernel would give an ended one's inode to the next.
    let mut tried = Vec::new();
    let (mut b, na, nb) = loop {
        assert!(tried.len() < 64, "no namespace whose numbers share a slot with the first's in 64 tries");
        let b = Fixture::start(FIXTURE, 1);
        let shift = slot(&b, 0).wrapping_sub(slot(&a, 0)) & (virt_front::SLOTS - 1);
        match (lo..hi).find(|nb| (lo..hi).contains(&((nb + shift) & (virt_front::SLOTS - 1)))) {
            Some(nb) => break (b, (nb + shift) & (virt_front::SLOTS - 1), nb),
            None => tried.push(b),
        }
    };
    assert_eq!(slot(&a, na), slot(&b, nb));
    let (ca, cb) = (a.container(), b.container());
    let counts = |c: &str| {
        let k = &d.container_crossings(c).0["kill"];
        (k["ok"], k["released"])
    };
    let (a0, b0) = (counts(&ca), counts(&cb));

    // Where the kernel keeps the reverse entry of number `n` of fixture `f`'s namespace: the
    // hash map holds it or not.
    let in_hash = |f: &Fixture, n: u32| {
        let key = [(f.inner() as u32).to_ne_bytes(), n.to_ne_bytes()].concat();
        tests::daemon_map_has(d.pid(), pidvirt_common::catalogue::map::VIRT, &key)
    };
    let counted_before =
        tests::daemon_spill_count(d.pid(), pidvirt_common::catalogue::map::VIRT_SPILLS, slot(&a, na));
    assert_eq!(a.num(&format!("spawn_vpid {na} 0")), i64::from(na));
    assert_eq!(b.num(&format!("spawn_vpid {nb} 0")), i64::from(nb));
    // The slot held the first's entry: the second's went to the hash map, counted on the slot.
    assert_eq!((in_hash(&a, na), in_hash(&b, nb)), (false, true));
    // (Relative to what the slot counted before: on a busy host a key of another namespace
    // may meet these two there.)
    let shared = slot(&a, na);
    let spilled = || tests::daemon_spill_count(d.pid(), pidvirt_common::catalogue::map::VIRT_SPILLS, shared);
    assert_eq!(spilled(), counted_before + 1, "the slot counts the key in VIRT");
    // The kernel: each number names a live task of its namespace.
    assert_eq!(a.num(&format!("sys kill {na} 0")), 0);
    assert_eq!(b.num(&format!("sys kill {nb} 0")), 0);
    eventually(tests::settle(), "both kills counted ok", || {
        (counts(&ca).0 == a0.0 + 1 && counts(&cb).0 == b0.0 + 1).then_some(())
    });
    // Reaped (SIGKILL, counted ok, and wait), the one in the slot first: its number then names
    // nothing (released), while the second's, found in the hash map behind a free slot, still
    // names its task.
    assert_eq!(a.cmd(&format!("reap {na}")), "ok");
    assert_eq!(a.num(&format!("sys kill {na} 0")), ESRCH);
    assert_eq!(b.num(&format!("sys kill {nb} 0")), 0);
    eventually(tests::settle(), "the kills counted released and ok", || {
        (counts(&ca).1 == a0.1 + 1 && counts(&cb).0 == b0.0 + 2).then_some(())
    });
    assert_eq!(b.cmd(&format!("reap {nb}")), "ok");
    assert_eq!(b.num(&format!("sys kill {nb} 0")), ESRCH);
    eventually(tests::settle(), "the second's kill counted released", || {
        (counts(&cb).1 == b0.1 + 1).then_some(())
    });
    assert!(!in_hash(&b, nb), "the reaped task's entry left the hash map");
    assert_eq!(
        spilled(),
        counted_before,
        "the slot no longer counts the key: its lookups no longer look there for it"
    );
    // The slot is free again: the second namespace's number, taken anew, is written there.
    assert_eq!(b.num(&format!("spawn_vpid {nb} 0")), i64::from(nb));
    assert!(!in_hash(&b, nb), "the new task's entry went to the free slot");
    assert_eq!(b.num(&format!("sys kill {nb} 0")), 0);
    // ok: the first kill, the one after the first's reap, reap's SIGKILL and this one.
    eventually(tests::settle(), "the new task's kill counted ok", || {
        (counts(&cb).0 == b0.0 + 4).then_some(())
    });
    assert_eq!(counts(&ca).0, a0.0 + 2);
    // The first's number, while its slot holds the second's: the kernel finds nothing there.
    let total = |c: &str| d.container_crossings(c).0["kill"].values().sum::<u64>();
    let before = total(&ca);
    assert_eq!(a.num(&format!("sys kill {na} 0")), ESRCH);
    eventually(tests::settle(), "the first's kill counted", || (total(&ca) == before + 1).then_some(()));
    // A number naming nothing is released (within its window) or unknown, never another task.
    for (c, allowed) in [(&ca, &["ok", "released", "unknown"][..]), (&cb, &["ok", "released"][..])] {
        let k = &d.container_crossings(c).0["kill"];
        let wrong: Vec<(&String, &u64)> =
            k.iter().filter(|(v, n)| **n > 0 && !allowed.contains(&v.as_str())).collect();
        assert!(wrong.is_empty(), "{c}: kill verdicts other than {allowed:?}: {wrong:?}");
    }
    // (The first's last kill, if its release was older than the window: unknown, reported.)
    let ours: Vec<AuditRecord> = d
        .audit_log()
        .into_iter()
        .filter(|r| r.container == ca || r.container == cb)
        .filter(|r| !(r.container == ca && r.verdict == "unknown" && r.value == i64::from(na)))
        .collect();
    assert!(ours.is_empty(), "reported: {ours:#?}");
}

/// Sets kernel.pid_max for a test, and puts the old value back when dropped.
struct PidMax(String);

impl PidMax {
    fn at_least(n: u32) -> Self {
        let old = std::fs::read_to_string("/proc/sys/kernel/pid_max").expect("read pid_max");
        if old.trim().parse::<u32>().expect("pid_max is a number") < n {
            std::fs::write("/proc/sys/kernel/pid_max", n.to_string()).expect("raise pid_max");
        }
        Self(old)
    }
}

impl Drop for PidMax {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/pid_max", self.0.trim());
    }
}

/// Two tasks whose host tids share a slot of the task map's front (tids SLOTS apart, taken with
/// clone3 set_tid over a pid_max raised for the test): the second's entry goes to the hash map
/// TASKS, and both are shown and judged as the kernel answers, while both live, after the one in
/// the slot is reaped, and once the slot is free again.
#[test]
fn tasks_whose_host_tids_share_a_front_slot_are_shown_and_judged_as_the_kernel_answers() {
    use pidvirt_common::{catalogue::map, task_front};
    use tests::proc_truth;
    let d = Daemon::start();
    let h1 = proc_truth::free_pid();
    let h2 = h1 + task_front::SLOTS;
    assert_eq!(task_front::slot(h1), task_front::slot(h2));
    let _pid_max = PidMax::at_least(h2 + 1);
    let (mut a, mut b) = (Fixture::start(FIXTURE, 1), Fixture::start(FIXTURE, 1));
    let (ca, cb) = (a.container(), b.container());
    let (na, nb) = (700, 701);
    let counts = |c: &str| {
        let k = &d.container_crossings(c).0["kill"];
        (k["ok"], k["released"])
    };
    let (a0, b0) = (counts(&ca), counts(&cb));
    let in_hash = |h: u32| tests::daemon_map_has(d.pid(), map::TASKS, &h.to_ne_bytes());
    // `ps` shows host tid `h` with the ids /proc gives it at every level, or not at all when it
    // does not exist.
    let shown_as_the_kernel_says = |h: u32| {
        let ps = d.ps_by_tid();
        match proc_truth::task(h, h) {
            Some(t) => ps.get(&h).is_some_and(|row| row.nspid == t.nspid && row.nstgid == t.nstgid),
            None => !ps.contains_key(&h),
        }
    };

    assert_eq!(a.num(&format!("spawn_pids 0 {na} {h1}")), i64::from(na));
    assert_eq!(b.num(&format!("spawn_pids 0 {nb} {h2}")), i64::from(nb));
    // The kernel: each is a live task at the host tid asked for.
    assert_eq!(proc_truth::task(h1, h1).map(|t| t.nspid), Some(vec![h1, na]));
    assert_eq!(proc_truth::task(h2, h2).map(|t| t.nspid), Some(vec![h2, nb]));
    // The slot held the first's entry: the second's went to the hash map, counted on the slot.
    assert_eq!((in_hash(h1), in_hash(h2)), (false, true));
    let spilled = || tests::daemon_spill_count(d.pid(), map::TASK_SPILLS, task_front::slot(h1));
    assert_eq!(spilled(), 1, "the slot counts the tid in TASKS");
    eventually(tests::settle(), "both shown as /proc shows them", || {
        (shown_as_the_kernel_says(h1) && shown_as_the_kernel_says(h2)).then_some(())
    });
    assert_eq!(a.num(&format!("sys kill {na} 0")), 0);
    assert_eq!(b.num(&format!("sys kill {nb} 0")), 0);
    eventually(tests::settle(), "both kills counted ok", || {
        (counts(&ca).0 == a0.0 + 1 && counts(&cb).0 == b0.0 + 1).then_some(())
    });
    // The one in the slot reaped: the second, in the hash map behind a free slot, still shown
    // and named by its number.
    assert_eq!(a.cmd(&format!("reap {na}")), "ok");
    assert!(!proc_truth::alive(h1));
    assert_eq!(b.num(&format!("sys kill {nb} 0")), 0);
    eventually(tests::settle(), "the second's kill counted ok, the first gone from ps", || {
        (counts(&cb).0 == b0.0 + 2 && shown_as_the_kernel_says(h1) && shown_as_the_kernel_says(h2))
            .then_some(())
    });
    assert_eq!(b.cmd(&format!("reap {nb}")), "ok");
    assert!(!proc_truth::alive(h2));
    eventually(tests::settle(), "the second gone from ps", || shown_as_the_kernel_says(h2).then_some(()));
    assert!(!in_hash(h2), "the reaped task's entry left the hash map");
    assert_eq!(spilled(), 0, "the slot counts no tid in TASKS: its lookups no longer look there");
    // The slot is free again: the second's tid, taken anew, is written there.
    assert_eq!(b.num(&format!("spawn_pids 0 {nb} {h2}")), i64::from(nb));
    assert!(!in_hash(h2), "the new task's entry went to the free slot");
    assert_eq!(b.num(&format!("sys kill {nb} 0")), 0);
    // ok: the first kill, the one after the first's reap, reap's SIGKILL and this one.
    eventually(tests::settle(), "the new task shown and its kill counted ok", || {
        (counts(&cb).0 == b0.0 + 4 && shown_as_the_kernel_says(h2)).then_some(())
    });
    for (c, ok) in [(&ca, a0.0 + 2), (&cb, b0.0 + 4)] {
        let k = &d.container_crossings(c).0["kill"];
        let wrong: Vec<(&String, &u64)> = k.iter().filter(|(v, n)| **n > 0 && v.as_str() != "ok").collect();
        assert!(wrong.is_empty(), "{c}: kill verdicts other than ok: {wrong:?}");
        assert_eq!(k["ok"], ok, "{c}");
    }
    let reported: Vec<AuditRecord> =
        d.audit_log().into_iter().filter(|r| r.container == ca || r.container == cb).collect();
    assert!(reported.is_empty(), "reported: {reported:#?}");
}

/// A CPU's copy of a caller's entry is found by the caller's kernel stack
/// (pidvirt_common::CallerCache), which the kernel hands to a new task once the old one is
/// freed. Children of a namespace's init, two per round: the first calls getpid on another CPU,
/// comes back and exits; once it is freed, the second, forked where the first died (and so most
/// often on its kernel stack), goes to that other CPU and calls getpid there. Each is judged
/// against its own number, as the kernel answered it, never against the copy the first left.
#[test]
fn a_child_on_the_kernel_stack_of_one_freed_is_judged_as_itself() {
    const ROUNDS: u64 = 100;
    let here = tests::last_cpu();
    let there = tests::cpus().into_iter().find(|&c| c != here).expect("a second CPU");
    let d = Daemon::start();
    let mut f =
        Fixture::start_with(Command::new("taskset").args(["-c", &here.to_string(), FIXTURE, "--depth", "1"]));
    let c = f.container();
    let getpids =
        |d: &Daemon| d.container_crossings(&c).0.get("getpid").map_or(0, |v| v.values().sum::<u64>());
    let before = getpids(&d);
    // The kernel's truth: every child's getpid answered the number its fork returned.
    assert_eq!(f.num(&format!("stack_reuse {ROUNDS} {here} {there}")), 2 * ROUNDS as i64);
    eventually(tests::settle(), "the children's getpid counted", || {
        (getpids(&d) >= before + 2 * ROUNDS).then_some(())
    });
    let crossings = d.container_crossings(&c).0;
    assert_eq!(crossings["getpid"].get("mismatch").copied().unwrap_or(0), 0, "{crossings:?}");
    let ours: Vec<AuditRecord> = d.audit_log().into_iter().filter(|r| r.container == c).collect();
    assert!(ours.is_empty(), "a child was judged as another: {ours:#?}");
}

/// Where the kernel runs pidvirt's syscall programs preemptibly (fentry/fexit on a fully
/// preemptible kernel: the 6.12 VM boots with preempt=full), the scheduler may switch tasks in
/// the middle of one, and the next task's programs on that CPU find its per-CPU state half made.
/// Children of a namespace's init taking turns on one CPU, each calling getpid, gettid,
/// kill(itself, 0), getppid and sched_getscheduler(0) in a loop, are each judged against their
/// own ids, as the kernel answered them; and every crossing of theirs is judged or its loss
/// counted: skipped by the kernel (a program's recursion_misses, bpftool) or not judged because
/// another program held the CPU's state (map_errors.preempted). `stats` names the skipped runs of
/// each program as the kernel counts them, under the program's full name (the kernel keeps 15
/// characters: `fentry_sched_ge` is four programs).
#[test]
fn tasks_switched_in_the_middle_of_the_syscall_programs_are_each_judged_as_themselves() {
    const CHILDREN: u64 = 4;
    const MS: u64 = 6000;
    const SYSCALLS: [&str; 5] = ["getpid", "gettid", "kill", "getppid", "sched_getscheduler"];
    // Their programs, on syscall tracepoints and on the syscall functions.
    const PROGRAMS: [&str; 10] = [
        "exit_getpid",
        "exit_own_tid",
        "enter_pid_arg",
        "exit_getppid",
        "enter_task_or_self",
        "fexit_getpid",
        "fexit_gettid",
        "fentry_kill",
        "fexit_getppid",
        "fentry_sched_getscheduler",
    ];
    let cpu = tests::last_cpu();
    // Pinned: a second daemon adopts the programs below.
    let _unpin = Unpin;
    let d = Daemon::start_with(&["--pin"]);
    let mut f =
        Fixture::start_with(Command::new("taskset").args(["-c", &cpu.to_string(), FIXTURE, "--depth", "1"]));
    let c = f.container();
    let judged = |d: &Daemon| {
        let crossings = d.container_crossings(&c).0;
        SYSCALLS.iter().filter_map(|s| crossings.get(*s)).flat_map(|v| v.values()).sum::<u64>()
    };
    let preempted = |d: &Daemon| d.stats()["map_errors"]["preempted"].as_u64().unwrap_or(0);
    let skipped = |d: &Daemon| tests::daemon_program_misses(d.pid(), &PROGRAMS);
    let before = (judged(&d), preempted(&d), skipped(&d));
    let getpids = f.num(&format!("preempt_mix {CHILDREN} {MS} {cpu}"));
    assert!(
        getpids > 0,
        "a child's getpid, gettid, kill(itself, 0) or sched_getscheduler(0) answered otherwise: {getpids}"
    );
    // Each child made one getpid more than it made of each of the other four.
    let made = getpids as u64 + 4 * (getpids as u64 - CHILDREN);
    eventually(tests::settle(), "every crossing judged or its loss counted", || {
        let lost = (preempted(&d) - before.1) + (skipped(&d) - before.2);
        (judged(&d) - before.0 + lost >= made).then_some(())
    });
    let counted = judged(&d) - before.0;
    assert!(counted <= made, "{counted} crossings judged of {made} made");
    let crossings = d.container_crossings(&c).0;
    for syscall in SYSCALLS {
        let verdicts = crossings.get(syscall).cloned().unwrap_or_default();
        let wrong: u64 = verdicts.iter().filter(|(v, _)| *v != "ok").map(|(_, n)| n).sum();
        assert_eq!(wrong, 0, "{syscall}: {verdicts:?}");
    }
    let ours: Vec<AuditRecord> = d.audit_log().into_iter().filter(|r| r.container == c).collect();
    assert!(ours.is_empty(), "a task was judged as another: {ours:#?}");
    // The daemon reports each program's skipped runs under its own name, as the kernel counts
    // them.
    let kernel_after = skipped_runs_named_as_the_kernel_counts(&d, Some(d.pid()));
    // Where the kernel skipped runs of the fentry programs (preempted on a fully preemptible
    // kernel), it skipped some of one whose name it cuts short: the names were put to the test.
    if skipped(&d) > before.2 && !tests::daemon_programs(d.pid(), "fentry_sched_getscheduler").is_empty() {
        assert!(
            kernel_after.keys().any(|n| n.len() > 15),
            "no skipped run of a long-named program: {kernel_after:?}"
        );
    }
    // So does a daemon that adopts the pinned programs (it holds no fd of them).
    let (_, dir) = d.stop_keep_dir();
    let d = Daemon::start_in(dir, &["--pin"]);
    assert_eq!(d.status()["adopted"], true);
    skipped_runs_named_as_the_kernel_counts(&d, None);
}

/// Checks `stats`' `skipped_runs` of daemon `d` against the kernel's counts of the programs
/// process `held_by` holds (None: every program loaded), read before and after it (they only
/// grow); answers the kernel's second reading.
fn skipped_runs_named_as_the_kernel_counts(d: &Daemon, held_by: Option<u32>) -> BTreeMap<String, u64> {
    let kernel_before = tests::kernel_skipped_runs(held_by);
    let reported = d.stats()["skipped_runs"].clone();
    let kernel_after = tests::kernel_skipped_runs(held_by);
    let reported: BTreeMap<String, u64> =
        serde_json::from_value(reported).expect("skipped_runs: name -> count");
    let names: BTreeSet<&String> = reported.keys().chain(kernel_after.keys()).collect();
    for name in names {
        let (low, high) = (kernel_before.get(name).copied(), kernel_after.get(name).copied());
        let n = reported.get(name).copied();
        assert!(
            low.unwrap_or(0) <= n.unwrap_or(0) && n.unwrap_or(0) <= high.unwrap_or(0),
            "skipped runs of {name}: pidvirt {n:?}, the kernel {low:?} then {high:?}"
        );
    }
    kernel_after
}

/// Removes pidvirt's pins when dropped (`pidvirt detach` with no daemon to ask), whatever the
/// test's outcome: pinned programs left behind would count beside the next tests' daemons.
struct Unpin;

impl Drop for Unpin {
    fn drop(&mut self) {
        let _ = tests::pidvirt(&["detach", "--socket", "/nonexistent/pidvirt.sock"]);
        let left = std::path::Path::new("/sys/fs/bpf/pidvirt").exists();
        assert!(!left || std::thread::panicking(), "pidvirt detach left the pins");
    }
}

/// Each CPU keeps a copy of its last caller's entry (pidvirt_common::CallerCache): a task of a
/// pid namespace and a host task taking turns on one CPU, each calling getpid and kill(self, 0)
/// between the switches, are each judged against their own ids, as the kernel answered them,
/// never against the copy of the task that ran before.
#[test]
fn tasks_of_two_namespaces_taking_turns_on_one_cpu_are_each_judged_as_themselves() {
    const ROUNDS: u64 = 300;
    let cpu = tests::last_cpu();
    let d = Daemon::start();
    let mut f =
        Fixture::start_with(Command::new("taskset").args(["-c", &cpu.to_string(), FIXTURE, "--depth", "1"]));
    let _pinned = tests::pin_this_thread(cpu);
    let c = f.container();
    let vpid = f.num("sys getpid");
    let inner = f.host_tid(vpid as u32);
    // SAFETY: getpid takes no arguments.
    let me = unsafe { libc::syscall(libc::SYS_getpid) };
    let switches_before = tests::proc_truth::context_switches(inner);
    for _ in 0..ROUNDS {
        // Each command is a round trip through pipes to the fixture's tasks on the same CPU.
        assert_eq!(f.num("sys getpid"), vpid);
        assert_eq!(f.num(&format!("sys kill {vpid} 0")), 0);
        // SAFETY: getpid takes no arguments; kill with signal 0 only checks.
        assert_eq!(unsafe { libc::syscall(libc::SYS_getpid) }, me);
        assert_eq!(unsafe { libc::syscall(libc::SYS_kill, me, 0) }, 0);
    }
    // The kernel's truth that the two took turns there: the fixture's init ran on that CPU and
    // switched out at least once per command.
    assert_eq!(tests::proc_truth::last_cpu_of(inner), Some(cpu), "the fixture's init ran on CPU {cpu}");
    let switches = tests::proc_truth::context_switches(inner) - switches_before;
    assert!(switches >= 2 * ROUNDS, "{switches} context switches of the fixture's init in {ROUNDS} rounds");
    eventually(tests::settle(), "the container's getpid and kill counted", || {
        (count(&d, &c, "getpid", "ok") > ROUNDS && count(&d, &c, "kill", "ok") >= ROUNDS).then_some(())
    });
    let crossings = d.container_crossings(&c).0;
    assert_eq!(crossings["getpid"].get("mismatch").copied().unwrap_or(0), 0, "{crossings:?}");
    let host = d.container_crossings("host").0;
    assert_eq!(host["getpid"].get("mismatch").copied().unwrap_or(0), 0, "{host:?}");
    let ours: Vec<AuditRecord> = d
        .audit_log()
        .into_iter()
        .filter(|r| r.caller.host_pid == inner || i64::from(r.caller.host_pid) == me)
        .collect();
    assert!(ours.is_empty(), "a task taking turns with another was judged as it: {ours:#?}");
}
