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

/// Direction of a crossing: an argument going in, or a returned value coming out; or an
/// enforcement decision at an LSM hook.
pub const DIR_IN: u8 = 0;
pub const DIR_OUT: u8 = 1;
pub const DIR_LSM: u8 = 2;

/// A BPF-LSM hook the enforcer guards: it receives the target task as argument `target`, and
/// the previous BPF program's verdict after its `args` arguments.
#[derive(Clone, Copy, Debug)]
pub struct LsmHook {
    pub name: &'static str,
    pub args: usize,
}

const fn h(name: &'static str, args: usize) -> LsmHook {
    LsmHook { name, args }
}

/// The enforcer's hooks (program `lsm_<name>` on LSM hook `<name>`); the index is the hook's
/// id in counters and events. The target task is always the first argument.
pub const LSM_HOOKS: [LsmHook; NLSM] = [
    h("task_kill", 4),
    h("ptrace_access_check", 2),
    h("task_setpgid", 2),
    h("task_setnice", 2),
    h("task_setscheduler", 1),
    h("task_getscheduler", 1),
    h("task_setioprio", 2),
    h("task_getioprio", 1),
    h("task_movememory", 1),
    h("task_setrlimit", 3),
    h("task_getsid", 1),
    h("task_getpgid", 1),
    h("capget", 4),
    h("file_send_sigiotask", 3),
];
pub const NLSM: usize = 14;

/// Per-container policy (value of the MODES map, keyed by container number).
pub mod mode {
    /// Audit only (the default; also when a container has no entry).
    pub const OBSERVE: u32 = 0;
    /// Deny actions on tasks outside the container (and the containers nested in it).
    pub const ENFORCE: u32 = 1;
}

/// A watched syscall: which of its tracepoints pidvirt hooks, with which program.
#[derive(Clone, Copy, Debug)]
pub struct SyscallSpec {
    pub name: &'static str,
    /// Program attached to `syscalls:sys_enter_<name>` (an argument is a pid).
    pub enter: Option<&'static str>,
    /// Program attached to `syscalls:sys_exit_<name>` (the return value is a pid).
    pub exit: Option<&'static str>,
}

const fn s(name: &'static str, enter: Option<&'static str>, exit: Option<&'static str>) -> SyscallSpec {
    SyscallSpec { name, enter, exit }
}

/// Every watched syscall. The index is the syscall's id in counters and events. This list IS
/// the hook list: the daemon attaches exactly these programs to exactly these tracepoints, and
/// the benchmark's floor attaches an empty program to the same tracepoints.
pub const SYSCALLS: [SyscallSpec; NSYSCALLS] = [
    s("getpid", None, Some("exit_getpid")),
    s("getppid", None, Some("exit_getppid")),
    s("gettid", None, Some("exit_own_tid")),
    s("set_tid_address", None, Some("exit_own_tid")),
    s("fork", None, Some("exit_fork")),
    s("vfork", None, Some("exit_fork")),
    s("clone", None, Some("exit_fork")),
    s("clone3", None, Some("exit_fork")),
    s("kill", Some("enter_pid_arg"), None),
    s("tkill", Some("enter_task_arg"), None),
    s("tgkill", Some("enter_two_tasks"), None),
    s("rt_sigqueueinfo", Some("enter_task_arg"), None),
    s("rt_tgsigqueueinfo", Some("enter_two_tasks"), None),
    s("pidfd_open", Some("enter_task_arg"), None),
    s("wait4", Some("enter_pid_arg"), Some("exit_wait4")),
    s("waitid", Some("enter_waitid"), Some("exit_waitid")),
    s("setpgid", Some("enter_setpgid"), None),
    s("getpgid", Some("enter_self_query"), Some("exit_self_query")),
    s("getsid", Some("enter_self_query"), Some("exit_self_query")),
    s("setsid", None, Some("exit_setsid")),
    s("sched_setaffinity", Some("enter_task_or_self"), None),
    s("sched_getaffinity", Some("enter_task_or_self"), None),
    s("sched_setscheduler", Some("enter_task_or_self"), None),
    s("sched_getscheduler", Some("enter_task_or_self"), None),
    s("sched_setparam", Some("enter_task_or_self"), None),
    s("sched_getparam", Some("enter_task_or_self"), None),
    s("sched_setattr", Some("enter_task_or_self"), None),
    s("sched_getattr", Some("enter_task_or_self"), None),
    s("sched_rr_get_interval", Some("enter_task_or_self"), None),
    s("setpriority", Some("enter_which_who"), None),
    s("getpriority", Some("enter_which_who"), None),
    s("ioprio_set", Some("enter_which_who"), None),
    s("ioprio_get", Some("enter_which_who"), None),
    s("prlimit64", Some("enter_task_or_self"), None),
    s("ptrace", Some("enter_ptrace"), None),
    s("process_vm_readv", Some("enter_task_arg"), None),
    s("process_vm_writev", Some("enter_task_arg"), None),
    s("kcmp", Some("enter_two_tasks"), None),
    s("get_robust_list", Some("enter_task_or_self"), None),
    s("migrate_pages", Some("enter_task_or_self"), None),
    s("move_pages", Some("enter_task_or_self"), None),
    s("capget", Some("enter_capget"), None),
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
        assert!(SYSCALLS.iter().all(|s| s.enter.is_some() || s.exit.is_some()));
        for (i, v) in VERDICT_NAMES.iter().enumerate() {
            assert_eq!(Verdict::from_u8(i as u8).unwrap().name(), *v);
        }
        assert!(!Verdict::Ok.is_anomaly() && !Verdict::Group.is_anomaly() && !Verdict::Any.is_anomaly());
        assert!(Verdict::Leak.is_anomaly() && Verdict::Mismatch.is_anomaly());
        assert_eq!(core::mem::size_of::<AnomalyEvent>(), 8 + 8 + 8 + 3 * 24 + 8 + 16);
        assert_eq!(crossing_slot(sys::CAPGET, Verdict::Denied), NSYSCALLS * NVERDICTS - 1);
    }
}
