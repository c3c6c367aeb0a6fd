//! Pid crossings: the one classification function (used by the kernel programs, unit-tested
//! here), and the event and counter layouts. The verdicts and watched syscalls are in the
//! catalogue.

pub use crate::catalogue::{
    Direction, LSM_HOOKS, LsmHook, Mode, NLSM, NSYSCALLS, NVERDICTS, SYSCALLS, SyscallSpec, Verdict, lsm, sys,
};

/// Whether a crossing with verdict `v` is reported to user space (every verdict but ok,
/// group, any).
pub const fn is_anomaly(v: Verdict) -> bool {
    v.reported_by_default()
}

/// A task as the classification sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Party {
    /// Whether there is such a task (the other fields are zero otherwise).
    pub found: bool,
    pub host_tid: u32,
    pub container: u32,
    /// Whether the caller can see this task: it is in the caller's container or in a
    /// namespace nested below the caller's (only meaningful for the `host` party).
    pub visible: bool,
}

impl Party {
    pub const NONE: Party = Party { found: false, host_tid: 0, container: 0, visible: false };
    pub const fn new(host_tid: u32, container: u32, visible: bool) -> Self {
        Self { found: true, host_tid, container, visible }
    }
}

/// What the maps say about a crossing value N from a caller. Plain fields (no `Option`): the
/// kernel programs build it, and the verifier refuses registers LLVM leaves undefined.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resolution {
    /// The task N names in the caller's namespace (the one the kernel acts on).
    pub named: Party,
    /// N is in the caller's namespace's reverse map, but the entry it points at is gone or
    /// belongs to a recycled pid.
    pub named_stale: bool,
    /// The task whose HOST pid is N (looked up for callers in a nested namespace; for a caller
    /// in the initial namespace it is `named`).
    pub host: Party,
}

/// The one place a crossing value naming a task is judged.
pub fn classify(caller_container: u32, r: &Resolution) -> Verdict {
    if r.named_stale {
        return Verdict::Stale;
    }
    let (x, y) = (&r.named, &r.host);
    if x.found {
        if y.found && y.host_tid != x.host_tid && y.visible {
            Verdict::Collision
        } else if x.container != caller_container {
            Verdict::CrossContainer
        } else {
            Verdict::Ok
        }
    } else if y.found {
        Verdict::Leak
    } else {
        Verdict::Unknown
    }
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

    #[test]
    fn a_number_naming_a_task_of_the_callers_container_is_ok() {
        let r = Resolution { named: party(500, C, true), host: Party::NONE, named_stale: false };
        assert_eq!(classify(C, &r), Verdict::Ok);
        // The host pid N belongs to an unrelated task the caller cannot see: a coincidence.
        let r = Resolution { named: party(500, C, true), host: party(7, D, false), named_stale: false };
        assert_eq!(classify(C, &r), Verdict::Ok);
        // The host pid N is the very task named.
        let r = Resolution { named: party(500, C, true), host: party(500, C, true), named_stale: false };
        assert_eq!(classify(C, &r), Verdict::Ok);
    }

    #[test]
    fn a_host_pid_that_does_not_resolve_is_a_leak() {
        let r = Resolution { named: Party::NONE, host: party(26922, C, true), named_stale: false };
        assert_eq!(classify(C, &r), Verdict::Leak);
        let r = Resolution { named: Party::NONE, host: party(26922, D, false), named_stale: false };
        assert_eq!(classify(C, &r), Verdict::Leak);
    }

    #[test]
    fn a_number_naming_one_task_while_it_is_the_host_pid_of_a_visible_other_is_a_collision() {
        let r = Resolution { named: party(500, C, true), host: party(700, C, true), named_stale: false };
        assert_eq!(classify(C, &r), Verdict::Collision);
        // Even when the named task is in a nested container: collision wins.
        let r = Resolution { named: party(500, D, true), host: party(700, C, true), named_stale: false };
        assert_eq!(classify(C, &r), Verdict::Collision);
    }

    #[test]
    fn a_target_outside_the_callers_container_is_cross_container() {
        // From the host (container 0) into a nested namespace.
        let r = Resolution { named: party(500, D, true), host: party(500, D, true), named_stale: false };
        assert_eq!(classify(0, &r), Verdict::CrossContainer);
        // From a container into another sharing its namespace.
        let r = Resolution { named: party(500, D, true), host: Party::NONE, named_stale: false };
        assert_eq!(classify(C, &r), Verdict::CrossContainer);
    }

    #[test]
    fn nothing_is_unknown_and_a_recycled_entry_is_stale() {
        assert_eq!(classify(C, &Resolution::default()), Verdict::Unknown);
        let r = Resolution { named: Party::NONE, host: party(9, C, true), named_stale: true };
        assert_eq!(classify(C, &r), Verdict::Stale);
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
    fn layouts() {
        assert_eq!(size_of::<AnomalyEvent>(), 8 + 8 + 8 + 3 * 24 + 8 + 16);
        assert_eq!(crossing_slot(sys::CAPGET, Verdict::Denied), NSYSCALLS * NVERDICTS - 1);
        assert!(!is_anomaly(Verdict::Ok) && !is_anomaly(Verdict::Group) && !is_anomaly(Verdict::Any));
        assert!(is_anomaly(Verdict::Leak) && is_anomaly(Verdict::Mismatch));
    }
}
