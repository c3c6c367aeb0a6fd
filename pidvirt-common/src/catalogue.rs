//! The catalogue: every verdict, watched syscall, LSM hook, counter, program and map of pidvirt,
//! each written once. The kernel programs take their ids from here, the daemon its names, hook
//! lists and syscall numbers, the benchmark its hook and map names. The program and map names
//! are also the identifiers of their definitions in pidvirt-ebpf (aya names a program after its
//! function and a map after its static); a unit test of pidvirt-user checks both lists against
//! the built object, so a rename cannot drift.
//!
//! The lists other crates expand into code of their own (the LSM hooks and lifecycle hooks, from
//! which pidvirt-ebpf generates its enforcer and floor programs) are `for_each_*` macros that
//! hand the list to a macro of the caller's.

use pastey::paste;

/// The second expression, once per occurrence of the first (a column present where another is).
macro_rules! side {
    ($present:ident, $value:expr) => {
        $value
    };
}

/// `Some(x)` for one token tree, `None` for none (optional catalogue columns).
macro_rules! opt {
    () => {
        None
    };
    ($x:expr) => {
        Some($x)
    };
}

// ---- verdicts ------------------------------------------------------------------------------

macro_rules! verdicts {
    ($( $(#[doc = $doc:literal])* $name:ident reported: $reported:literal, )*) => { paste! {
        /// How a crossing was judged.
        #[repr(u8)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Verdict { $( $(#[doc = $doc])* [<$name:camel>], )* }

        /// Number of verdicts.
        pub const NVERDICTS: usize = [$(stringify!($name)),*].len();

        impl Verdict {
            /// Every verdict, in id order (the id is the discriminant).
            pub const ALL: [Verdict; NVERDICTS] = [$(Verdict::[<$name:camel>]),*];

            /// The verdict's name in records, counters and options.
            pub const fn name(self) -> &'static str {
                match self { $(Verdict::[<$name:camel>] => stringify!($name),)* }
            }

            /// Whether crossings with this verdict are reported unless the operator chooses
            /// otherwise (`pidvirt run --report`).
            pub const fn reported_by_default(self) -> bool {
                match self { $(Verdict::[<$name:camel>] => $reported,)* }
            }
        }
    }};
}

verdicts! {
    /// The number names, in the caller's namespace, the task the kernel means.
    ok reported: false,
    /// A process-group value (0 or < -1 for kill/wait, PRIO_PGRP, ...).
    group reported: false,
    /// -1: every task the caller may signal / any child.
    any reported: false,
    /// The number names nothing in the caller's namespace but is the host pid of a live task
    /// (not a kernel thread's: the small numbers a container's own tasks have name those).
    leak reported: true,
    /// The number names task X in the caller's namespace and is also the host pid of another
    /// task Y the caller can see: a missed translation meant Y, the call hits X.
    collision reported: true,
    /// The target is outside the caller's container and not nested in it: a sibling, a parent,
    /// or (for containers sharing a pid namespace) another container.
    cross_container reported: true,
    /// The target is in a container nested in the caller's (a namespace below the caller's, or,
    /// for the host proper, any container): the kernel's own model of a parent acting on its
    /// children (a runtime stopping its container, a parent waiting for its nested init). Also
    /// a signal's sender handed to the caller as 0: the kernel zeroes `si_pid` for a sender of
    /// an ancestor namespace, the same relation seen from the receiving side.
    nested reported: false,
    /// The number names nothing (the kernel answers ESRCH), or at the host's level only a kernel
    /// thread. Counted, not reported by default: a number that names nothing anywhere is no
    /// evidence of a missed translation (a pid file's number once its process ended, a
    /// kill(pid, 0) that finds it gone), and the call hit nothing.
    unknown reported: false,
    /// The number names nothing now but named a task of the caller's namespace that was
    /// released a moment ago (a wait on a child another thread reaped, a kill(pid, 0) loop
    /// waiting for a process to end).
    released reported: false,
    /// The number names a task whose entry is gone or was recycled (pid reuse during the call).
    stale reported: true,
    /// A returned number differs from the truth read from the task structures (self-check).
    mismatch reported: true,
    /// The enforcer denied the action.
    denied reported: true,
    /// The kernel handed the caller 0 where a pid belongs, because the task it stands for has no
    /// number in the caller's namespace (SO_PEERCRED, SCM_CREDENTIALS, F_GETOWN,
    /// TIOCGPGRP, F_GETLK, ...): the kernel's own silent translation failure.
    invisible reported: true,
    /// The number was read through the procfs of ANOTHER pid namespace than the caller's (the
    /// procfs mounted at the caller's /proc, or a directory fd of one): the numbers there are
    /// that namespace's, which the caller does not live in.
    foreign_procfs reported: true,
}

impl Verdict {
    /// The verdicts `pidvirt run --report` may choose from: every one but the values that name
    /// no single task (ok, group, any), which are only counted.
    pub const REPORTABLE: [Verdict; NVERDICTS - 3] = {
        let mut out = [Verdict::Leak; NVERDICTS - 3];
        let mut i = 3;
        while i < NVERDICTS {
            out[i - 3] = Verdict::ALL[i];
            i += 1;
        }
        out
    };

    /// The bit of this verdict in a report mask (CONFIG `REPORTED`).
    pub const fn bit(self) -> u32 {
        1 << self as u32
    }

    /// The report mask of the verdicts reported by default.
    pub const DEFAULT_REPORTED: u32 = {
        let mut mask = 0;
        let mut i = 0;
        while i < NVERDICTS {
            if Verdict::ALL[i].reported_by_default() {
                mask |= Verdict::ALL[i].bit();
            }
            i += 1;
        }
        mask
    };

    /// The verdict with id `v`.
    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.get(v as usize).copied()
    }

    /// The verdict named `name`.
    pub fn by_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.name() == name)
    }
}

// ---- directions ----------------------------------------------------------------------------

/// What crossed: an argument going in, a returned value coming out, or an enforcement decision
/// at an LSM hook (its "syscall" is then the hook).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    In = 0,
    Out = 1,
    Lsm = 2,
}

impl Direction {
    pub const ALL: [Direction; 3] = [Direction::In, Direction::Out, Direction::Lsm];

    pub const fn name(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
            Direction::Lsm => "lsm",
        }
    }

    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.get(v as usize).copied()
    }
}

// ---- policy modes --------------------------------------------------------------------------

/// A container's policy (value of the MODES map; a container without an entry observes).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Audit only.
    #[default]
    Observe = 0,
    /// Deny actions on tasks outside the container (and the containers nested in it).
    Enforce = 1,
}

impl Mode {
    pub const ALL: [Mode; 2] = [Mode::Observe, Mode::Enforce];
    /// The names, for option parsers.
    pub const NAMES: [&'static str; 2] = [Mode::Observe.name(), Mode::Enforce.name()];

    pub const fn name(self) -> &'static str {
        match self {
            Mode::Observe => "observe",
            Mode::Enforce => "enforce",
        }
    }

    pub fn by_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|m| m.name() == name)
    }

    /// The mode a MODES value means (anything but enforce observes).
    pub const fn from_u32(v: u32) -> Self {
        if v == Mode::Enforce as u32 { Mode::Enforce } else { Mode::Observe }
    }
}

// ---- programs ------------------------------------------------------------------------------

/// How a program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramKind {
    /// `tp_btf`: attached to the BTF tracepoint named like the program (`floor_X`: to X).
    TpBtf,
    /// A `syscalls:` tracepoint (the syscall catalogue says which).
    Tracepoint,
    /// The raw `sys_enter` / `sys_exit` tracepoints (the benchmark's floor only).
    RawTracepoint,
    /// A BPF iterator over tasks.
    Iter,
    /// A BPF-LSM program (`lsm_X` on hook X).
    Lsm,
    /// An fentry program on a syscall's kernel function (`fentry_X`), where the kernel takes it.
    FEntry,
    /// An fexit program on a kernel function: a syscall's (`fexit_X`), or
    /// [`SIGNALFD_FUNCTION`].
    FExit,
}

/// Lists the tp_btf hooks that follow the task lifecycle (each has a program of the same name,
/// and an empty `floor_<hook>` for the benchmark), handing them to `$cb!`.
#[macro_export]
macro_rules! for_each_lifecycle_hook {
    ($cb:ident) => {
        $cb! { sched_process_fork, sched_process_exec, sched_process_exit, sched_process_free, cgroup_attach_task }
    };
}

/// Lists the LSM hooks the enforcer guards, each with the number of arguments before the
/// previous program's verdict (the target task is always the first), handing them to `$cb!`.
/// A hook's index is its id in counters and events; its program is `lsm_<hook>`.
#[macro_export]
macro_rules! for_each_lsm_hook {
    ($cb:ident) => {
        $cb! {
            task_kill 4,
            ptrace_access_check 2,
            task_setpgid 2,
            task_setnice 2,
            task_setscheduler 1,
            task_getscheduler 1,
            task_setioprio 2,
            task_getioprio 1,
            task_movememory 1,
            task_setrlimit 3,
            task_getsid 1,
            task_getpgid 1,
            capget 4,
            file_send_sigiotask 3,
        }
    };
}

macro_rules! programs {
    (
        lifecycle: $($life:ident),* ;
        $( $kind:ident: $($name:ident),* ; )*
    ) => { paste! {
        /// Every program of pidvirt-ebpf but the enforcer's (see [`LsmHook::program`]).
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Program {
            $( [<$life:camel>], [<Floor $life:camel>], )*
            $( $( [<$name:camel>], )* )*
        }

        impl Program {
            pub const ALL: &'static [Program] = &[
                $( Program::[<$life:camel>], Program::[<Floor $life:camel>], )*
                $( $( Program::[<$name:camel>], )* )*
            ];

            /// The lifecycle programs, in attach order.
            pub const LIFECYCLE: &'static [Program] = &[$( Program::[<$life:camel>], )*];

            /// The name of the program (and of its function in pidvirt-ebpf).
            pub const fn name(self) -> &'static str {
                match self {
                    $(
                        Program::[<$life:camel>] => stringify!($life),
                        Program::[<Floor $life:camel>] => concat!("floor_", stringify!($life)),
                    )*
                    $( $( Program::[<$name:camel>] => stringify!($name), )* )*
                }
            }

            pub const fn kind(self) -> ProgramKind {
                match self {
                    $( Program::[<$life:camel>] | Program::[<Floor $life:camel>] => ProgramKind::TpBtf, )*
                    $( $( Program::[<$name:camel>] => ProgramKind::$kind, )* )*
                }
            }

            /// The BTF tracepoint of a tp_btf program.
            pub const fn btf_tracepoint(self) -> Option<&'static str> {
                match self {
                    $( Program::[<$life:camel>] | Program::[<Floor $life:camel>] => Some(stringify!($life)), )*
                    _ => None,
                }
            }

            /// The empty program the benchmark's floor puts on this program's hook.
            pub const fn floor(self) -> Program {
                match self {
                    $( Program::[<$life:camel>] => Program::[<Floor $life:camel>], )*
                    Program::FloorRawEmpty => Program::FloorRawEmpty,
                    _ => Program::FloorEmpty,
                }
            }
        }
    }};
}

macro_rules! lifecycle_programs {
    ($($life:ident),*) => {
        programs! {
            lifecycle: $($life),* ;
            Tracepoint:
                exit_getpid, exit_getppid, exit_own_tid, exit_setsid, exit_fork, enter_pid_arg,
                enter_task_arg, enter_task_or_self, enter_two_tasks, enter_which_who, exit_wait4,
                enter_waitid, exit_waitid, enter_setpgid, enter_self_query, exit_self_query,
                enter_ptrace, enter_capget, enter_path, enter_at_path, floor_empty,
                // issue 15: pids inside structures
                exit_clone, exit_ptrace, enter_fcntl, exit_fcntl, enter_ioctl,
                exit_ioctl, enter_getsockopt, exit_getsockopt, enter_sendmsg, enter_recvmsg,
                exit_recvmsg, enter_sigtimedwait, exit_sigtimedwait, enter_ipc_ctl, exit_ipc_ctl,
                enter_perf_event_open;
            FExit: fexit_signalfd_copyinfo;
            RawTracepoint: floor_raw_empty;
            Iter: seed_tasks, task_comms;
        }
    };
}
for_each_lifecycle_hook!(lifecycle_programs);

/// The kernel function whose fexit program, [`Program::FexitSignalfdCopyinfo`], judges the
/// siginfo of a signalfd read: called once per signal a read hands out, with the kernel's own
/// siginfo (where the compiler kept it a function of its own: the kernel's BTF says).
pub const SIGNALFD_FUNCTION: &str = "signalfd_copyinfo";

// ---- LSM hooks -----------------------------------------------------------------------------

/// A BPF-LSM hook the enforcer guards.
#[derive(Clone, Copy, Debug)]
pub struct LsmHook {
    pub name: &'static str,
    /// Arguments of the hook before the previous BPF program's verdict.
    pub args: usize,
    /// The program attached to it.
    pub program: &'static str,
}

macro_rules! lsm_table {
    ($($hook:ident $args:literal),* $(,)?) => { paste! {
        #[expect(non_camel_case_types, reason = "variants named exactly as the kernel's hooks")]
        #[repr(usize)]
        enum LsmIndex { $($hook,)* }

        /// LSM hook ids (indices into [`LSM_HOOKS`]).
        pub mod lsm {
            $( pub const [<$hook:upper>]: usize = super::LsmIndex::$hook as usize; )*
        }

        /// Number of guarded LSM hooks.
        pub const NLSM: usize = [$(stringify!($hook)),*].len();

        /// The enforcer's hooks; the index is the hook's id.
        pub const LSM_HOOKS: [LsmHook; NLSM] = [
            $( LsmHook { name: stringify!($hook), args: $args, program: concat!("lsm_", stringify!($hook)) }, )*
        ];
    }};
}
for_each_lsm_hook!(lsm_table);

// ---- syscalls ------------------------------------------------------------------------------

/// Lists the watched syscalls, each with the handler of its entry (an argument is a pid) and of
/// its exit (the return value is a pid), handing them to `$cb!`. A handler is the tracepoint
/// program of that side (shared by the syscalls judged alike) and, where the kernel takes fentry,
/// the body of the syscall's own `fentry_<name>` / `fexit_<name>` program.
#[macro_export]
macro_rules! for_each_syscall {
    ($cb:ident) => {
        $cb! {
        getpid: exit(exit_getpid);
        getppid: exit(exit_getppid);
        gettid: exit(exit_own_tid);
        set_tid_address: exit(exit_own_tid);
        fork: exit(exit_fork);
        vfork: exit(exit_fork);
        clone: exit(exit_clone);
        clone3: exit(exit_clone);
        kill: enter(enter_pid_arg);
        tkill: enter(enter_task_arg);
        tgkill: enter(enter_two_tasks);
        rt_sigqueueinfo: enter(enter_task_arg);
        rt_tgsigqueueinfo: enter(enter_two_tasks);
        pidfd_open: enter(enter_task_arg);
        wait4: enter(enter_pid_arg) exit(exit_wait4);
        waitid: enter(enter_waitid) exit(exit_waitid);
        setpgid: enter(enter_setpgid);
        getpgid: enter(enter_self_query) exit(exit_self_query);
        getsid: enter(enter_self_query) exit(exit_self_query);
        setsid: exit(exit_setsid);
        sched_setaffinity: enter(enter_task_or_self);
        sched_getaffinity: enter(enter_task_or_self);
        sched_setscheduler: enter(enter_task_or_self);
        sched_getscheduler: enter(enter_task_or_self);
        sched_setparam: enter(enter_task_or_self);
        sched_getparam: enter(enter_task_or_self);
        sched_setattr: enter(enter_task_or_self);
        sched_getattr: enter(enter_task_or_self);
        sched_rr_get_interval: enter(enter_task_or_self);
        setpriority: enter(enter_which_who);
        getpriority: enter(enter_which_who);
        ioprio_set: enter(enter_which_who);
        ioprio_get: enter(enter_which_who);
        prlimit64: enter(enter_task_or_self);
        ptrace: enter(enter_ptrace) exit(exit_ptrace);
        process_vm_readv: enter(enter_task_arg);
        process_vm_writev: enter(enter_task_arg);
        kcmp: enter(enter_two_tasks);
        get_robust_list: enter(enter_task_or_self);
        migrate_pages: enter(enter_task_or_self);
        move_pages: enter(enter_task_or_self);
        capget: enter(enter_capget);
        // ---- pids inside structures (issue 15, pidvirt-ebpf/src/structures.rs) ----
        fcntl: enter(enter_fcntl) exit(exit_fcntl);
        ioctl: enter(enter_ioctl) exit(exit_ioctl);
        getsockopt: enter(enter_getsockopt) exit(exit_getsockopt);
        sendmsg: enter(enter_sendmsg);
        recvmsg: enter(enter_recvmsg) exit(exit_recvmsg);
        rt_sigtimedwait: enter(enter_sigtimedwait) exit(exit_sigtimedwait);
        msgctl: enter(enter_ipc_ctl) exit(exit_ipc_ctl);
        shmctl: enter(enter_ipc_ctl) exit(exit_ipc_ctl);
        semctl: enter(enter_ipc_ctl) exit(exit_ipc_ctl);
        perf_event_open: enter(enter_perf_event_open);
        // pids written to cgroup.procs, cgroup.threads, tasks: no syscall program (judged at
        // the cgroup_attach_task hook), counted under the syscall that wrote them
        write: ;
        // the siginfo a signalfd read hands out: no syscall program (judged at fexit of
        // signalfd_copyinfo, SIGNALFD_FUNCTION, where the kernel takes fexit), counted under read
        read: ;
        // ---- numbers in /proc paths (issue 15, pidvirt-ebpf/src/procfs.rs) ----
        open: enter(enter_path);
        openat: enter(enter_at_path);
        openat2: enter(enter_at_path);
        newstat: enter(enter_path);
        newlstat: enter(enter_path);
        newfstatat: enter(enter_at_path);
        statx: enter(enter_at_path);
        readlink: enter(enter_path);
        readlinkat: enter(enter_at_path);
        access: enter(enter_path);
        faccessat: enter(enter_at_path);
        faccessat2: enter(enter_at_path);
        chdir: enter(enter_path);
        execve: enter(enter_path);
        execveat: enter(enter_at_path);
        }
    };
}

/// A watched syscall: which of its sides pidvirt hooks, with which programs.
#[derive(Clone, Copy, Debug)]
pub struct SyscallSpec {
    pub name: &'static str,
    /// Program attached to `syscalls:sys_enter_<name>` (an argument is a pid).
    pub enter: Option<Program>,
    /// Program attached to `syscalls:sys_exit_<name>` (the return value is a pid).
    pub exit: Option<Program>,
    /// The fentry program of the syscall's function (`fentry_<name>`), where it has an entry side,
    /// and the floor's empty twin.
    pub fentry: Option<(&'static str, &'static str)>,
    /// The fexit program of the syscall's function (`fexit_<name>`), where it has an exit side,
    /// and the floor's empty twin.
    pub fexit: Option<(&'static str, &'static str)>,
    /// This architecture's syscall number (the records' `__syscall_nr`).
    #[cfg(feature = "user")]
    pub nr: i64,
}

/// The libc syscall number of a syscall the kernel names otherwise (its tracepoints and
/// functions carry the kernel's name: `newstat` is stat(2)).
#[cfg(feature = "user")]
macro_rules! sysnr {
    (newstat) => {
        libc::SYS_stat
    };
    (newlstat) => {
        libc::SYS_lstat
    };
    ($name:ident) => {
        paste! { libc::[<SYS_ $name>] }
    };
}

macro_rules! syscalls {
    ($( $name:ident: $(enter($enter:ident))? $(exit($exit:ident))? ; )*) => { paste! {
        #[expect(non_camel_case_types, reason = "variants named exactly as the syscalls")]
        #[repr(u16)]
        enum SyscallIndex { $($name,)* }

        /// Syscall ids (indices into [`SYSCALLS`]: the id in counters and events).
        pub mod sys {
            $( pub const [<$name:upper>]: u16 = super::SyscallIndex::$name as u16; )*
        }

        /// Number of watched syscalls.
        pub const NSYSCALLS: usize = [$(stringify!($name)),*].len();

        /// Every watched syscall, in id order. This list IS the hook list: the daemon attaches
        /// exactly these programs to exactly these tracepoints, and the benchmark's floor an
        /// empty program to the same tracepoints.
        pub const SYSCALLS: [SyscallSpec; NSYSCALLS] = [
            $( SyscallSpec {
                name: stringify!($name),
                enter: opt!($(Program::[<$enter:camel>])?),
                exit: opt!($(Program::[<$exit:camel>])?),
                fentry: opt!($(side!($enter, (concat!("fentry_", stringify!($name)), concat!("floor_fentry_", stringify!($name)))))?),
                fexit: opt!($(side!($exit, (concat!("fexit_", stringify!($name)), concat!("floor_fexit_", stringify!($name)))))?),
                #[cfg(feature = "user")]
                nr: sysnr!($name),
            }, )*
        ];
    }};
}

for_each_syscall!(syscalls);

impl SyscallSpec {
    /// Whether this syscall is watched for the numbers in its path (`/proc/N`), which only
    /// `pidvirt run --proc-paths` watches.
    pub fn is_path(&self) -> bool {
        matches!(self.enter, Some(Program::EnterPath | Program::EnterAtPath))
    }

    /// The syscall tracepoints of this syscall that pidvirt hooks, with their programs.
    pub fn hooks(&self) -> impl Iterator<Item = (Program, SyscallSide)> {
        let enter = self.enter.map(|p| (p, SyscallSide::Enter));
        let exit = self.exit.map(|p| (p, SyscallSide::Exit));
        enter.into_iter().chain(exit)
    }

    /// The fentry/fexit programs of this syscall's function, with their floor twins:
    /// `(program, floor program, kind)`.
    pub fn function_programs(&self) -> impl Iterator<Item = (&'static str, &'static str, ProgramKind)> {
        let enter = self.fentry.map(|(p, f)| (p, f, ProgramKind::FEntry));
        let exit = self.fexit.map(|(p, f)| (p, f, ProgramKind::FExit));
        enter.into_iter().chain(exit)
    }
}

/// Which tracepoint of a syscall: `sys_enter_<name>` or `sys_exit_<name>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyscallSide {
    Enter,
    Exit,
}

impl SyscallSide {
    /// The tracepoint name's prefix.
    pub const fn prefix(self) -> &'static str {
        match self {
            SyscallSide::Enter => "sys_enter_",
            SyscallSide::Exit => "sys_exit_",
        }
    }
}

// ---- counters ------------------------------------------------------------------------------

macro_rules! counter_groups {
    ($( $(#[doc = $gdoc:literal])* $group:ident @ $base:literal { $( $(#[doc = $doc:literal])* $name:ident $(in $map:ident)?, )* } )*) => { paste! {
        $(
            $(#[doc = $gdoc])*
            pub mod $group {
                #[expect(non_camel_case_types, reason = "variants named exactly as the counters")]
                #[repr(u32)]
                enum Index { $($name,)* }
                /// Slot of the first counter of the group in `COUNTERS`.
                pub const BASE: u32 = $base;
                $( $(#[doc = $doc])* pub const [<$name:upper>]: u32 = Index::$name as u32; )*
                /// Names of the group's counters, by index.
                pub const NAMES: [&str; [$(stringify!($name)),*].len()] = [$(stringify!($name)),*];
                /// The map each counter is about, if any (`pidvirt_map_errors_total{map}`).
                pub const MAPS: [Option<&str>; NAMES.len()] = [$(opt!($($crate::catalogue::map::$map)?)),*];
            }
        )*
    }};
}

/// Per-CPU counter slots (one `u64` each) of the `COUNTERS` map: failures per reason (nothing
/// is dropped silently), lifecycle events, and crossings no per-container counter could take.
pub mod counter {
    use pastey::paste;

    counter_groups! {
        /// Map insert/update failures and failed reads, per reason (`stats`: `map_errors`).
        map_error @ 0 {
            task_insert in TASKS,
            virt_insert in VIRT,
            deep_insert in DEEP,
            pidns_insert in PIDNS,
            /// bpf_probe_read_kernel failed on a task structure.
            kernel_read,
            /// A task with a level above MAX_PID_NS_LEVEL (should be impossible).
            level_overflow,
            /// Per-CPU scratch space could not be had.
            scratch in SCRATCH,
            /// A caller had no task entry when one was needed (not yet seeded, or lost).
            task_missing in TASKS,
            /// A task of a nested namespace was forgotten but its namespace had no record.
            pidns_missing in PIDNS,
            /// Per-container counters could not be had: counted in the global crossing region.
            container_counters in COUNTS,
            /// A syscall's state between enter and exit could not be kept (waitid's infop).
            pending_insert in PENDING,
            /// No free counter slot for a new container: its crossings count in the overflow slot.
            no_counter_slot in FREE_SLOTS,
            /// A crossing not judged: its program (fentry/fexit, which the kernel lets be
            /// preempted) found the CPU's per-CPU state held by another of pidvirt's programs,
            /// preempted in the middle of its run on that CPU.
            preempted in CPU_STATE_HELD,
        }
        /// Events that could not be handed to user space, per reason (`stats`: `drops`).
        drop @ 16 {
            ringbuf_full_anomaly,
            ringbuf_full_lifecycle,
        }
        /// Lifecycle events seen by the kernel programs (`stats`: `lifecycle`).
        lifecycle @ 32 {
            fork,
            exec,
            exit,
            free,
            /// A fork found a stale entry under the new task's host tid (the old task's free was
            /// not seen yet): the old entry was replaced.
            pid_reuse,
            /// A wait4 returned the pid of a process it released (task_flags::reaped_by_wait): its
            /// entries were removed there, while their lines were hot, not at its free.
            reaped,
            /// A fork found the record of its pid namespace stale: the namespace that had that
            /// inode ended and the kernel gave the inode to a new one.
            pidns_reuse,
            /// A task exited without an entry (the daemon removed it, or it was never seen): any
            /// copy of one made for it may still be on a CPU, so every copy was made invalid.
            exit_untracked,
        }
    }

    /// Crossings of containers whose per-container counters could not be had, index
    /// `CROSSING_BASE + syscall * NVERDICTS + verdict`.
    pub const CROSSING_BASE: u32 = 64;
    /// Size of the counters array.
    pub const SLOTS: u32 = 2048;

    /// The groups, with the name `stats` shows them under.
    pub const GROUPS: [(&str, u32, &[&str]); 3] = [
        ("map_errors", map_error::BASE, &map_error::NAMES),
        ("drops", drop::BASE, &drop::NAMES),
        ("lifecycle", lifecycle::BASE, &lifecycle::NAMES),
    ];
}

// ---- maps ----------------------------------------------------------------------------------

/// The read-only global through which the programs get their kernel offsets (`OFFSETS` in
/// pidvirt-ebpf).
pub const OFFSETS_GLOBAL: &str = "OFFSETS";

macro_rules! maps {
    ($($name:ident),* $(,)?) => {
        /// Names of the maps of pidvirt-ebpf (each the name of its static there).
        pub mod map {
            $( pub const $name: &str = stringify!($name); )*
            /// Every map.
            pub const ALL: [&str; [$(stringify!($name)),*].len()] = [$($name),*];
        }
    };
}

maps! {
    TASKS, TASK_FRONT, TASK_SPILLS, DEEP, VIRT, VIRT_FRONT, VIRT_SPILLS, PIDNS, COUNTS, FREE_SLOTS, SYSNR, PENDING, CGROUPS, MODES, META, CONFIG,
    CALLER, TASKS_GENERATION, LIVE_TIDS, SEEDED_TIDS, RELEASED, COUNTERS, EVENTS, SCRATCH,
    PENDING_CALLS, PENDING_TIDS, PROCFS, CPU_STATE_HELD,
}

/// The name the kernel keeps of map `name` (BPF_OBJ_NAME_LEN 16, with its NUL), as `bpftool map
/// show` shows it (programs' full names bpftool takes from their BTF).
pub fn kernel_name(name: &str) -> &str {
    &name[..name.len().min(15)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_keep_distinct_names_in_the_kernel() {
        let names: std::collections::BTreeSet<&str> = map::ALL.iter().map(|n| kernel_name(n)).collect();
        assert_eq!(names.len(), map::ALL.len());
        assert_eq!(kernel_name(map::TASKS_GENERATION), "TASKS_GENERATIO");
    }

    #[test]
    fn ids_index_their_tables() {
        assert_eq!(SYSCALLS[sys::CAPGET as usize].name, "capget");
        assert_eq!(SYSCALLS[sys::KILL as usize].name, "kill");
        assert_eq!(SYSCALLS[sys::SCHED_RR_GET_INTERVAL as usize].name, "sched_rr_get_interval");
        assert_eq!(SYSCALLS.len(), NSYSCALLS);
        // Every syscall has a program but write(2), whose pids (cgroup files) are judged at the
        // cgroup_attach_task hook, and read(2), whose (signalfd's siginfo) at signalfd_copyinfo.
        let judged_elsewhere = [SYSCALLS[sys::WRITE as usize].name, SYSCALLS[sys::READ as usize].name];
        assert_eq!(judged_elsewhere, ["write", "read"]);
        assert!(
            SYSCALLS
                .iter()
                .all(|s| s.enter.is_some() || s.exit.is_some() || judged_elsewhere.contains(&s.name))
        );
        assert_eq!(SYSCALLS[sys::WRITE as usize].hooks().count(), 0);
        assert_eq!(SYSCALLS[sys::READ as usize].hooks().count(), 0);
        assert_eq!(SYSCALLS[sys::WAIT4 as usize].hooks().count(), 2);
        assert_eq!(LSM_HOOKS[lsm::FILE_SEND_SIGIOTASK].name, "file_send_sigiotask");
        assert_eq!(LSM_HOOKS[lsm::TASK_KILL].program, "lsm_task_kill");
        assert_eq!(
            counter::map_error::NAMES[counter::map_error::NO_COUNTER_SLOT as usize],
            "no_counter_slot"
        );
        assert_eq!(counter::lifecycle::NAMES[counter::lifecycle::REAPED as usize], "reaped");
        assert_eq!(counter::map_error::MAPS[counter::map_error::VIRT_INSERT as usize], Some(map::VIRT));
        assert_eq!(counter::map_error::MAPS[counter::map_error::KERNEL_READ as usize], None);
        assert!(counter::drop::MAPS.iter().all(Option::is_none));
    }

    #[test]
    fn verdicts_round_trip() {
        for (i, v) in Verdict::ALL.iter().enumerate() {
            assert_eq!(*v as usize, i);
            assert_eq!(Verdict::from_u8(i as u8), Some(*v));
            assert_eq!(Verdict::by_name(v.name()), Some(*v));
        }
        assert_eq!(Verdict::CrossContainer.name(), "cross_container");
        assert_eq!(Verdict::from_u8(NVERDICTS as u8), None);
        assert!(!Verdict::Ok.reported_by_default() && Verdict::Leak.reported_by_default());
        for d in Direction::ALL {
            assert_eq!(Direction::from_u8(d as u8), Some(d));
        }
        assert_eq!(Mode::by_name("enforce"), Some(Mode::Enforce));
        assert_eq!(Mode::from_u32(7), Mode::Observe);
    }

    #[test]
    fn programs_are_named_after_their_hooks() {
        assert_eq!(Program::SchedProcessFork.name(), "sched_process_fork");
        assert_eq!(Program::FloorSchedProcessFork.name(), "floor_sched_process_fork");
        assert_eq!(Program::FloorSchedProcessFork.btf_tracepoint(), Some("sched_process_fork"));
        assert_eq!(Program::SchedProcessFork.floor(), Program::FloorSchedProcessFork);
        assert_eq!(Program::EnterPidArg.floor(), Program::FloorEmpty);
        assert_eq!(Program::LIFECYCLE.len(), 5);
        let mut names = std::collections::HashSet::new();
        for p in Program::ALL {
            assert!(names.insert(p.name()), "{} twice", p.name());
        }
        for h in LSM_HOOKS {
            assert!(names.insert(h.program), "{} twice", h.program);
        }
    }

    #[test]
    fn counter_groups_do_not_overlap() {
        let mut end = 0;
        for (_, base, names) in counter::GROUPS {
            assert!(base >= end, "counter group at {base} overlaps the previous one");
            end = base + names.len() as u32;
        }
        assert!(end <= counter::CROSSING_BASE);
        assert!(counter::CROSSING_BASE as usize + NSYSCALLS * NVERDICTS <= counter::SLOTS as usize);
    }
}
