//! Pid crossings: the one classification function (used by the kernel programs, unit-tested
//! here), and the event and counter layouts. The verdicts and watched syscalls are in the
//! catalogue.

pub use crate::catalogue::{
    Direction, LSM_HOOKS, LsmHook, Mode, NLSM, NSYSCALLS, NVERDICTS, SYSCALLS, SyscallSpec, Verdict, lsm, sys,
};

/// A task as the classification sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Party {
    /// Whether there is such a task (the other fields are zero otherwise).
    pub found: bool,
    pub host_tid: u32,
    pub container: u32,
    /// Whether the caller can see this task: it is in the caller's container or in a
    /// namespace nested below the caller's.
    pub visible: bool,
}

impl Party {
    pub const NONE: Party = Party { found: false, host_tid: 0, container: 0, visible: false };
    pub const fn new(host_tid: u32, container: u32, visible: bool) -> Self {
        Self { found: true, host_tid, container, visible }
    }
}

/// Ancestor levels a number is judged against besides the host's: the nearest ones above the
/// caller's (a caller at level L checks levels L-1 .. L-ANCESTOR_CHECKS, then 0). Bounded, so
/// that a crossing costs at most that many more lookups; deeper callers are rare.
pub const ANCESTOR_CHECKS: usize = 4;

/// What the maps say about a crossing value N from a caller at level L. Plain fields (no
/// `Option`): the kernel programs build it, and the verifier refuses registers LLVM leaves
/// undefined.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent facts about the number, each read by classify"
)]
pub struct Resolution {
    /// X: the task N names in the caller's namespace (the one the kernel acts on).
    pub named: Party,
    /// X is in a container nested in the caller's (a namespace below the caller's; for the
    /// host proper, any container).
    pub named_nested: bool,
    /// X is of another container that lives in the caller's own pid namespace, below the host's
    /// (`docker run --pid=container:X`, a pod sharing its process namespace): the namespace was
    /// joined on purpose and the kernel translated N in it, so X is the caller's to name.
    pub named_shared_namespace: bool,
    /// N is in the caller's namespace's reverse map, but the entry it points at is gone or
    /// belongs to a recycled pid.
    pub named_stale: bool,
    /// Y: N read as a number of an ancestor namespace (levels L-1 down to 0, nearest first):
    /// when X exists, the first task other than X that the caller can see; otherwise the first
    /// task at all; never a kernel thread. Not looked for from the host (its numbers are host
    /// numbers).
    pub ancestor: Party,
    /// The level Y was found at.
    pub ancestor_level: u32,
    /// N names nothing now but named a task of the caller's namespace released a moment ago
    /// (then the ancestor levels are not read).
    pub released: bool,
    /// N was read through a procfs of another pid namespace than the caller's (`named` is then
    /// what N names in THAT namespace).
    pub foreign_procfs: bool,
}

/// The one place a crossing value naming a task is judged.
pub fn classify(caller_container: u32, r: &Resolution) -> Verdict {
    // The number is not the caller's namespace's at all: what it names there says nothing of
    // the caller's view.
    if r.foreign_procfs {
        return Verdict::ForeignProcfs;
    }
    if r.named_stale {
        return Verdict::Stale;
    }
    let (x, y) = (&r.named, &r.ancestor);
    if x.found {
        if y.found && y.host_tid != x.host_tid && y.visible {
            Verdict::Collision
        } else if x.container == caller_container || r.named_shared_namespace {
            Verdict::Ok
        } else if r.named_nested {
            Verdict::Nested
        } else {
            Verdict::CrossContainer
        }
    } else if r.released {
        // The caller's own namespace had this number a moment ago: a race with the release
        // (small numbers name host kernel threads too; that is no leak).
        Verdict::Released
    } else if y.found {
        Verdict::Leak
    } else {
        Verdict::Unknown
    }
}

/// Container numbers: 0 is the host, a pid namespace container is numbered by its namespace
/// inode (proc's dynamic inodes start at 0xF0000000), a cgroup container by a small number
/// below this bound.
pub const CGROUP_NUMBERS_END: u32 = 0x1000_0000;

/// Whether container number `c` is a cgroup container (tasks sharing the host's namespace, or
/// another container's).
pub const fn is_cgroup_container(c: u32) -> bool {
    c != crate::HOST_CONTAINER && c < CGROUP_NUMBERS_END
}

/// Whether container number `c` is a pid namespace container (neither the host proper nor a
/// cgroup container): its tasks all live in its namespace or below, never at the host level.
pub const fn is_namespace_container(c: u32) -> bool {
    c != crate::HOST_CONTAINER && !is_cgroup_container(c)
}

/// kill(2)/wait4(2) special values: 0 and < -1 name a process group, -1 everything. `None` for
/// a value naming one task.
pub fn special_pid(value: i32) -> Option<Verdict> {
    match value {
        0 => Some(Verdict::Group),
        -1 => Some(Verdict::Any),
        v if v < -1 => Some(Verdict::Group),
        _ => None,
    }
}

/// A returned number against the truth read from the task structures.
pub fn check_return(returned: i64, truth: i64) -> Verdict {
    if returned == truth { Verdict::Ok } else { Verdict::Mismatch }
}

/// A task in an event: host numbers, its own namespace's numbers, its container.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartyInfo {
    pub host_pid: u32,
    pub host_tid: u32,
    /// tgid and tid in the task's own pid namespace.
    pub vpid: u32,
    pub vtid: u32,
    pub pidns: u32,
    pub container: u32,
}

/// Flags of an [`AnomalyEvent`].
pub mod event_flags {
    pub const HAS_TARGET: u32 = 1;
    pub const HAS_ALSO: u32 = 2;
    /// `also_level`/`also_pidns` name the namespace the value was read in, without an `also`
    /// task (a foreign procfs).
    pub const HAS_READ_AT: u32 = 4;
}

/// An anomaly, as the kernel programs report it (ring buffer record, kind ANOMALY).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AnomalyEvent {
    pub kind: u32,
    pub syscall: u16,
    pub direction: u8,
    pub verdict: u8,
    /// The number that crossed (argument or return value), sign-extended.
    pub value: i64,
    /// CLOCK_MONOTONIC (bpf_ktime_get_ns).
    pub ts_ns: u64,
    pub caller: PartyInfo,
    /// The task the number names in the caller's namespace (HAS_TARGET).
    pub target: PartyInfo,
    /// For a collision: the task whose host pid the number is (HAS_ALSO). For a return
    /// mismatch: `also.vpid` carries the truth.
    pub also: PartyInfo,
    pub flags: u32,
    /// For `also` of a leak or collision: the level whose number N is, and that level's pid
    /// namespace (0 for the host).
    pub also_level: u32,
    pub also_pidns: u32,
    /// Explicit padding (zero).
    pub pad: u32,
    pub comm: [u8; 16],
}

/// Per-container counters (per-CPU hash value keyed by container number).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ContainerCounters {
    /// Crossings, index `syscall * NVERDICTS + verdict`.
    pub crossings: [u64; NSYSCALLS * NVERDICTS],
    /// Anomalies of this container that could not be reported (ring buffer full).
    pub ringbuf_drops: u64,
    /// Processes its tasks released with wait4 (their entries removed there: `reaped` in the
    /// lifecycle counters).
    pub reaped: u64,
    /// Actions of this container the enforcer denied, per LSM hook.
    pub denied: [u64; NLSM],
}

impl Default for ContainerCounters {
    fn default() -> Self {
        Self { crossings: [0; NSYSCALLS * NVERDICTS], ringbuf_drops: 0, reaped: 0, denied: [0; NLSM] }
    }
}

/// Slot of a crossing counter.
#[expect(clippy::inline_always, reason = "called by the kernel programs, which inline every helper")]
#[inline(always)]
pub const fn crossing_slot(syscall: u16, verdict: Verdict) -> usize {
    syscall as usize * NVERDICTS + verdict as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: u32 = 0xF000_0100; // the caller's container
    const D: u32 = 0xF000_0200; // another container

    fn party(host_tid: u32, container: u32, visible: bool) -> Party {
        Party::new(host_tid, container, visible)
    }

    /// X named in the caller's namespace, Y found at ancestor `level`.
    fn res(named: Party, ancestor: Party, level: u32) -> Resolution {
        Resolution { named, ancestor, ancestor_level: level, ..Resolution::default() }
    }

    #[test]
    fn a_number_naming_a_task_of_the_callers_container_is_ok() {
        assert_eq!(classify(C, &res(party(500, C, true), Party::NONE, 0)), Verdict::Ok);
        // At an ancestor level N names an unrelated task the caller cannot see: a coincidence.
        assert_eq!(classify(C, &res(party(500, C, true), party(7, D, false), 0)), Verdict::Ok);
        assert_eq!(classify(C, &res(party(500, C, true), party(7, D, false), 1)), Verdict::Ok);
        // At an ancestor level N names the very task named.
        assert_eq!(classify(C, &res(party(500, C, true), party(500, C, true), 0)), Verdict::Ok);
    }

    #[test]
    fn a_number_that_names_nothing_here_but_a_task_at_an_ancestor_level_is_a_leak() {
        // The host pid of a task (level 0), seen or not.
        assert_eq!(classify(C, &res(Party::NONE, party(26922, C, true), 0)), Verdict::Leak);
        assert_eq!(classify(C, &res(Party::NONE, party(26922, D, false), 0)), Verdict::Leak);
        // A sibling's number one level up (a caller at level 2 given its level-1 pid).
        assert_eq!(classify(C, &res(Party::NONE, party(801, C, true), 1)), Verdict::Leak);
    }

    #[test]
    fn a_number_naming_one_task_here_and_a_visible_other_at_an_ancestor_level_is_a_collision() {
        assert_eq!(classify(C, &res(party(500, C, true), party(700, C, true), 0)), Verdict::Collision);
        assert_eq!(classify(C, &res(party(500, C, true), party(700, C, true), 1)), Verdict::Collision);
        // Even when the named task is in a nested container: collision wins.
        let r = Resolution { named_nested: true, ..res(party(500, D, true), party(700, C, true), 0) };
        assert_eq!(classify(C, &r), Verdict::Collision);
    }

    #[test]
    fn a_target_nested_in_the_callers_container_is_nested_any_other_is_cross_container() {
        // From the host proper, or a parent namespace, into a nested one: the kernel's model.
        let nested = Resolution { named_nested: true, ..res(party(500, D, true), Party::NONE, 0) };
        assert_eq!(classify(crate::HOST_CONTAINER, &nested), Verdict::Nested);
        assert_eq!(classify(C, &nested), Verdict::Nested);
        // From a container into a sibling sharing its namespace, or into its parent's tasks.
        assert_eq!(classify(C, &res(party(500, D, true), Party::NONE, 0)), Verdict::CrossContainer);
        assert_eq!(
            classify(3, &res(party(500, crate::HOST_CONTAINER, true), Party::NONE, 0)),
            Verdict::CrossContainer
        );
    }

    #[test]
    fn a_target_of_another_container_in_the_callers_own_joined_namespace_is_ok() {
        let shared = Resolution { named_shared_namespace: true, ..res(party(500, D, true), Party::NONE, 0) };
        assert_eq!(classify(C, &shared), Verdict::Ok);
        // A collision still wins: N names another task the caller sees at an ancestor level.
        let r =
            Resolution { named_shared_namespace: true, ..res(party(500, D, true), party(700, C, true), 0) };
        assert_eq!(classify(C, &r), Verdict::Collision);
    }

    #[test]
    fn nothing_is_unknown_unless_released_a_moment_ago_and_a_recycled_entry_is_stale() {
        assert_eq!(classify(C, &Resolution::default()), Verdict::Unknown);
        let released = Resolution { released: true, ..Resolution::default() };
        assert_eq!(classify(C, &released), Verdict::Released);
        // A release in the caller's own namespace outranks the ancestor levels: vpid 2 of a
        // container just reaped is host pid 2 too (kthreadd), and that is no leak.
        let r = Resolution { released: true, ..res(Party::NONE, party(2, D, false), 0) };
        assert_eq!(classify(C, &r), Verdict::Released);
        let r = Resolution { named_stale: true, ..res(Party::NONE, party(9, C, true), 0) };
        assert_eq!(classify(C, &r), Verdict::Stale);
    }

    #[test]
    fn a_number_read_through_another_namespaces_procfs_is_foreign_whatever_it_names_there() {
        for r in [res(party(500, C, true), Party::NONE, 0), res(Party::NONE, party(7, D, false), 0)] {
            let r = Resolution { foreign_procfs: true, ..r };
            assert_eq!(classify(C, &r), Verdict::ForeignProcfs);
        }
        let r = Resolution { foreign_procfs: true, ..Resolution::default() };
        assert_eq!(classify(crate::HOST_CONTAINER, &r), Verdict::ForeignProcfs);
    }

    #[test]
    fn cgroup_container_numbers() {
        assert!(!is_cgroup_container(crate::HOST_CONTAINER));
        assert!(is_cgroup_container(1) && is_cgroup_container(CGROUP_NUMBERS_END - 1));
        assert!(!is_cgroup_container(0xF000_0100));
        assert!(is_namespace_container(0xF000_0100));
        assert!(!is_namespace_container(crate::HOST_CONTAINER) && !is_namespace_container(1));
    }

    #[test]
    fn special_values() {
        assert_eq!(special_pid(0), Some(Verdict::Group));
        assert_eq!(special_pid(-1), Some(Verdict::Any));
        assert_eq!(special_pid(-42), Some(Verdict::Group));
        assert_eq!(special_pid(i32::MIN), Some(Verdict::Group));
        assert_eq!(special_pid(1), None);
        assert_eq!(check_return(5, 5), Verdict::Ok);
        assert_eq!(check_return(26922, 5), Verdict::Mismatch);
    }

    #[test]
    fn layouts_and_report_masks() {
        assert_eq!(size_of::<AnomalyEvent>(), 8 + 8 + 8 + 3 * 24 + 16 + 16);
        let last = Verdict::ALL[NVERDICTS - 1];
        assert_eq!(crossing_slot((NSYSCALLS - 1) as u16, last), NSYSCALLS * NVERDICTS - 1);
        let reported = |v: Verdict| Verdict::DEFAULT_REPORTED & v.bit() != 0;
        assert!(!reported(Verdict::Ok) && !reported(Verdict::Group) && !reported(Verdict::Any));
        assert!(!reported(Verdict::Nested) && !reported(Verdict::Released) && !reported(Verdict::Unknown));
        assert!(reported(Verdict::Leak) && reported(Verdict::Mismatch) && reported(Verdict::CrossContainer));
        assert!(reported(Verdict::Invisible) && Verdict::REPORTABLE.contains(&Verdict::Invisible));
        assert!(
            !Verdict::REPORTABLE.contains(&Verdict::Ok) && Verdict::REPORTABLE.contains(&Verdict::Nested)
        );
    }
}
