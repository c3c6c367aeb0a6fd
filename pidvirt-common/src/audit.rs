//! Pid crossings: the catalogue of watched syscalls, the verdicts, the one classification
//! function (used by the kernel programs, unit-tested here), and the event and counter layouts.

/// How a crossing was judged.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The number names, in the caller's namespace, the task the kernel means.
    Ok = 0,
    /// A process-group value (0 or < -1 for kill/wait, PRIO_PGRP, ...).
    Group = 1,
    /// -1: every task the caller may signal / any child.
    Any = 2,
    /// The number names nothing in the caller's namespace but is the host pid of a live task.
    Leak = 3,
    /// The number names task X in the caller's namespace and is also the host pid of another
    /// task Y the caller can see: a missed translation meant Y, the call hits X.
    Collision = 4,
    /// The target is outside the caller's container.
    CrossContainer = 5,
    /// The number names nothing (the kernel answers ESRCH).
    Unknown = 6,
    /// The number names a task whose entry is gone or was recycled (pid reuse during the call).
    Stale = 7,
    /// A returned number differs from the truth read from the task structures (self-check).
    Mismatch = 8,
    /// The enforcer denied the action.
    Denied = 9,
}

pub const NVERDICTS: usize = 10;
pub const VERDICT_NAMES: [&str; NVERDICTS] =
    ["ok", "group", "any", "leak", "collision", "cross_container", "unknown", "stale", "mismatch", "denied"];

impl Verdict {
    pub fn name(self) -> &'static str {
        VERDICT_NAMES[self as usize]
    }
    pub fn from_u8(v: u8) -> Option<Self> {
        use Verdict::*;
        Some(match v {
            0 => Ok,
            1 => Group,
            2 => Any,
            3 => Leak,
            4 => Collision,
            5 => CrossContainer,
            6 => Unknown,
            7 => Stale,
            8 => Mismatch,
            9 => Denied,
            _ => return None,
        })
    }
    /// Whether the crossing is reported to user space (every verdict but ok, group, any).
    pub fn is_anomaly(self) -> bool {
        !matches!(self, Verdict::Ok | Verdict::Group | Verdict::Any)
    }
}

/// Direction of a crossing: an argument going in, or a returned value coming out.
pub const DIR_IN: u8 = 0;
pub const DIR_OUT: u8 = 1;

/// A watched syscall: which of its tracepoints pidvirt hooks.
#[derive(Clone, Copy, Debug)]
pub struct SyscallSpec {
    pub name: &'static str,
    /// Hooked at sys_enter (an argument is a pid).
    pub enter: bool,
    /// Hooked at sys_exit (the return value is a pid).
    pub exit: bool,
}

const fn s(name: &'static str, enter: bool, exit: bool) -> SyscallSpec {
    SyscallSpec { name, enter, exit }
}

/// Every watched syscall. The index is the syscall's id in counters and events; the kernel
/// programs are named `enter_<name>` / `exit_<name>` and attached to
/// `syscalls:sys_enter_<name>` / `syscalls:sys_exit_<name>`. This list IS the hook list (the
/// benchmark's floor attaches empty programs to exactly these).
pub const SYSCALLS: [SyscallSpec; NSYSCALLS] = [
    s("getpid", false, true),
    s("getppid", false, true),
    s("gettid", false, true),
    s("set_tid_address", false, true),
    s("fork", false, true),
    s("vfork", false, true),
    s("clone", false, true),
    s("clone3", false, true),
    s("kill", true, false),
    s("tkill", true, false),
    s("tgkill", true, false),
    s("rt_sigqueueinfo", true, false),
    s("rt_tgsigqueueinfo", true, false),
    s("pidfd_open", true, false),
    s("wait4", true, true),
    s("waitid", true, true),
    s("setpgid", true, false),
    s("getpgid", true, true),
    s("getsid", true, true),
    s("setsid", false, true),
    s("sched_setaffinity", true, false),
    s("sched_getaffinity", true, false),
    s("sched_setscheduler", true, false),
    s("sched_getscheduler", true, false),
    s("sched_setparam", true, false),
    s("sched_getparam", true, false),
    s("sched_setattr", true, false),
    s("sched_getattr", true, false),
    s("sched_rr_get_interval", true, false),
    s("setpriority", true, false),
    s("getpriority", true, false),
    s("ioprio_set", true, false),
    s("ioprio_get", true, false),
    s("prlimit64", true, false),
    s("ptrace", true, false),
    s("process_vm_readv", true, false),
    s("process_vm_writev", true, false),
    s("kcmp", true, false),
    s("get_robust_list", true, false),
    s("migrate_pages", true, false),
    s("move_pages", true, false),
    s("capget", true, false),
];

pub const NSYSCALLS: usize = 42;

/// Syscall ids (indices into [`SYSCALLS`]).
pub mod sys {
    pub const GETPID: u16 = 0;
    pub const GETPPID: u16 = 1;
    pub const GETTID: u16 = 2;
    pub const SET_TID_ADDRESS: u16 = 3;
    pub const FORK: u16 = 4;
    pub const VFORK: u16 = 5;
    pub const CLONE: u16 = 6;
    pub const CLONE3: u16 = 7;
    pub const KILL: u16 = 8;
    pub const TKILL: u16 = 9;
    pub const TGKILL: u16 = 10;
    pub const RT_SIGQUEUEINFO: u16 = 11;
    pub const RT_TGSIGQUEUEINFO: u16 = 12;
    pub const PIDFD_OPEN: u16 = 13;
    pub const WAIT4: u16 = 14;
    pub const WAITID: u16 = 15;
    pub const SETPGID: u16 = 16;
    pub const GETPGID: u16 = 17;
    pub const GETSID: u16 = 18;
    pub const SETSID: u16 = 19;
    pub const SCHED_SETAFFINITY: u16 = 20;
    pub const SCHED_GETAFFINITY: u16 = 21;
    pub const SCHED_SETSCHEDULER: u16 = 22;
    pub const SCHED_GETSCHEDULER: u16 = 23;
    pub const SCHED_SETPARAM: u16 = 24;
    pub const SCHED_GETPARAM: u16 = 25;
    pub const SCHED_SETATTR: u16 = 26;
    pub const SCHED_GETATTR: u16 = 27;
    pub const SCHED_RR_GET_INTERVAL: u16 = 28;
    pub const SETPRIORITY: u16 = 29;
    pub const GETPRIORITY: u16 = 30;
    pub const IOPRIO_SET: u16 = 31;
    pub const IOPRIO_GET: u16 = 32;
    pub const PRLIMIT64: u16 = 33;
    pub const PTRACE: u16 = 34;
    pub const PROCESS_VM_READV: u16 = 35;
    pub const PROCESS_VM_WRITEV: u16 = 36;
    pub const KCMP: u16 = 37;
    pub const GET_ROBUST_LIST: u16 = 38;
    pub const MIGRATE_PAGES: u16 = 39;
    pub const MOVE_PAGES: u16 = 40;
    pub const CAPGET: u16 = 41;
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
    pub _pad: u32,
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
}

impl Default for ContainerCounters {
    fn default() -> Self {
        Self { crossings: [0; NSYSCALLS * NVERDICTS], ringbuf_drops: 0 }
    }
}

/// Slot of a crossing counter.
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
    fn catalogue_is_consistent() {
        assert_eq!(SYSCALLS.len(), NSYSCALLS);
        assert_eq!(SYSCALLS[sys::CAPGET as usize].name, "capget");
        assert_eq!(SYSCALLS[sys::KILL as usize].name, "kill");
        assert_eq!(SYSCALLS[sys::WAITID as usize].name, "waitid");
        assert_eq!(SYSCALLS[sys::SCHED_RR_GET_INTERVAL as usize].name, "sched_rr_get_interval");
        assert!(SYSCALLS.iter().all(|s| s.enter || s.exit));
        for (i, v) in VERDICT_NAMES.iter().enumerate() {
            assert_eq!(Verdict::from_u8(i as u8).unwrap().name(), *v);
        }
        assert!(!Verdict::Ok.is_anomaly() && !Verdict::Group.is_anomaly() && !Verdict::Any.is_anomaly());
        assert!(Verdict::Leak.is_anomaly() && Verdict::Mismatch.is_anomaly());
        assert_eq!(core::mem::size_of::<AnomalyEvent>(), 8 + 8 + 8 + 3 * 24 + 8 + 16);
        assert_eq!(crossing_slot(sys::CAPGET, Verdict::Denied), NSYSCALLS * NVERDICTS - 1);
    }
}
