//! Numbers judged at every ancestor level: a number handed down from any level above the
//! caller's (not only the host's) is a leak or a collision, and the record says which level it
//! was read at. Three levels made by the fixture: host -> A (level 1) -> B (level 2); the
//! fixture's commands run in B's init.

use tests::{AuditRecord, Daemon, Fixture, eventually, proc_truth};

const FIXTURE: &str = env!("CARGO_BIN_EXE_pidvirt-fixture");
const ESRCH: i64 = -3;

fn wait_record(d: &Daemon, what: &str, pred: impl Fn(&AuditRecord) -> bool) -> AuditRecord {
    let found = eventually(tests::settle(), what, || {
        let found: Vec<AuditRecord> = d.audit_log().into_iter().filter(|r| pred(r)).collect();
        (!found.is_empty()).then_some(found)
    });
    assert_eq!(found.len(), 1, "{what}: {found:#?}");
    found.into_iter().next().unwrap()
}

/// A sibling in B with a few others spawned first, so that its level-1 number is not also a
/// number of B; answers (vpid in B, number in A, host pid).
fn sibling(f: &mut Fixture) -> (u32, u32, u32) {
    for _ in 0..3 {
        f.num("spawn 0");
    }
    let v = f.num("spawn 0") as u32;
    let host = f.host_tid(v);
    let t = proc_truth::task(host, host).expect("the sibling in /proc");
    assert_eq!(t.nspid.len(), 3, "host, A, B");
    (v, t.nspid[1], host)
}

#[test]
fn a_number_of_the_level_above_used_in_a_nested_namespace_is_a_leak_naming_that_level() {
    let d = Daemon::start();
    let mut f = Fixture::start(FIXTURE, 2);
    let (v, in_a, host) = sibling(&mut f);
    let b_numbers: Vec<u32> = proc_truth::tasks_in(f.inner()).iter().map(|t| t.nspid[2]).collect();
    assert!(!b_numbers.contains(&in_a), "A's number {in_a} is also one of B's: {b_numbers:?}");
    // The kernel: A's number of the sibling names nothing in B.
    assert_eq!(f.num(&format!("sys kill {in_a} 0")), ESRCH);
    let r = wait_record(&d, "leak read at level 1", |r| r.container == f.container() && r.verdict == "leak");
    assert_eq!((r.syscall.as_str(), r.value), ("kill", i64::from(in_a)));
    assert!(r.target.is_none());
    let also = r.also.as_ref().expect("the task meant");
    assert_eq!((also.host_pid, also.vpid, also.container.as_str()), (host, v, f.container().as_str()));
    let at = r.read_at.as_ref().expect("where the number was read");
    assert_eq!((at.level, at.pidns, at.container.clone()), (1, f.pidns[0], format!("pidns-{}", f.pidns[0])));
    // The host-level form is judged as before: the sibling's host pid, read at level 0.
    assert_eq!(f.num(&format!("sys kill {host} 0")), ESRCH);
    let r = wait_record(&d, "leak read at level 0", |r| r.verdict == "leak" && r.value == i64::from(host));
    assert_eq!(r.also.as_ref().map(|a| a.host_pid), Some(host));
    let at = r.read_at.as_ref().unwrap();
    assert_eq!((at.level, at.container.as_str()), (0, "host"));
    let (c, _) = d.container_crossings(&f.container());
    assert_eq!(c["kill"]["leak"], 2);
}

#[test]
fn a_vpid_equal_to_a_siblings_number_one_level_up_is_a_collision_naming_both() {
    let d = Daemon::start();
    let mut f = Fixture::start(FIXTURE, 2);
    let (y, in_a, y_host) = sibling(&mut f);
    // X gets, in B, the number Y has in A (clone3 set_tid).
    let x = f.num(&format!("spawn_vpid {in_a} 0"));
    assert_eq!(x, i64::from(in_a), "set_tid {in_a} in B");
    let x_host = f.host_tid(in_a);
    // The kernel acts on X.
    assert_eq!(f.num(&format!("sys kill {in_a} 0")), 0);
    let r = wait_record(&d, "collision read at level 1", |r| {
        r.verdict == "collision" && r.value == i64::from(in_a)
    });
    let target = r.target.as_ref().expect("the task hit");
    assert_eq!((target.host_pid, target.vpid), (x_host, in_a));
    let also = r.also.as_ref().expect("the task meant");
    assert_eq!((also.host_pid, also.vpid), (y_host, y));
    assert_eq!(r.read_at.as_ref().map(|a| (a.level, a.pidns)), Some((1, f.pidns[0])));
}

#[test]
fn a_caller_at_level_one_is_judged_against_the_host_as_before() {
    let d = Daemon::start();
    let mut f = Fixture::start(FIXTURE, 1);
    let v = f.num("spawn 0") as u32;
    let host = f.host_tid(v);
    assert_eq!(f.num(&format!("sys kill {host} 0")), ESRCH);
    let r = wait_record(&d, "leak from level 1", |r| r.verdict == "leak" && r.value == i64::from(host));
    assert_eq!(r.read_at.as_ref().map(|a| (a.level, a.container.as_str())), Some((0, "host")));
    assert_eq!(r.also.as_ref().map(|a| (a.host_pid, a.vpid)), Some((host, v)));
}
