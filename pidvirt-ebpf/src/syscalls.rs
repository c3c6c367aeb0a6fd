//! The syscall programs (pidvirt_common::catalogue::for_each_syscall is the hook list, and names
//! the handler of each side of each syscall). Arguments are judged at entry (raw numbers of the
//! CALLER's namespace), returned values at exit. What a value means follows the kernel (see
//! ../shared/reference/pid-crossings.md): 0 is often "self", kill/wait have group values, etc.
//!
//! Each handler is written once, over a [`Call`] (how a program reads the syscall's arguments
//! and return value), and reached two ways:
//! - syscall tracepoints (`syscalls:sys_enter_*` / `sys_exit_*`): syscalls judged alike share one
//!   program, which finds which syscall it runs for from the record's `__syscall_nr` (SYSNR map):
//!   fewer programs to verify at start-up; the hottest (getpid) has its own;
//! - fentry/fexit on each syscall's kernel function (`__x64_sys_*`), where the kernel takes
//!   them: one program per syscall side, arguments from the `pt_regs` the function receives. No
//!   syscall tracepoint is then enabled, so the syscalls pidvirt does not watch keep the kernel's
//!   fast path.

use aya_ebpf::{
    EbpfContext,
    cty::c_void,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_task_btf, bpf_probe_read_user,
        bpf_task_pt_regs,
    },
    macros::{fentry, fexit, raw_tracepoint, tracepoint},
    programs::{FEntryContext, FExitContext, RawTracePointContext, TracePointContext},
};
use pidvirt_common::{
    audit::{Verdict, sys},
    counter,
    offsets::syscall_record,
};

use crate::{
    audit::{Stack, group, pid_arg, returned, returned_own, returned_task, task_arg},
    kernel::{Direct, Kmem, off, offsets_ready},
    lifecycle::forget_reaped,
    maps::{CpuState, PENDING, SYSNR, count_map_error},
    procfs::{AT_FDCWD, path_crossing},
    task::{Own, own_id},
};

/// How a program reads the syscall it runs for.
pub trait Call {
    /// Argument `I` (0..=3) as the caller passed it.
    fn arg<const I: usize>(&self) -> u64;
    /// The value returned to the caller (exit side).
    fn ret(&self) -> i64;

    /// At the exit, the caller's user registers the kernel saved at the entry (a BTF-typed
    /// `struct pt_regs *`; read its arguments with [`regs_arg`]): the syscall functions leave
    /// them as they were, but for the return value's. What an entry program would have kept,
    /// without one; except where a tracer rewrote them at a ptrace stop inside the syscall (a
    /// fork event's), when the exit sees what the tracer wrote.
    fn saved_regs(&self) -> *const u8;

    /// Where the program's context lies (the caller's kernel stack).
    fn stack(&self) -> Stack;

    /// An `int`/`pid_t` argument (the low 32 bits, as the kernel's SYSCALL_DEFINE truncates).
    #[inline(always)]
    fn int_arg<const I: usize>(&self) -> i32 {
        self.arg::<I>() as u32 as i32
    }
}

/// Argument `I` of the x86-64 syscall ABI (di, si, dx, r10) in a BTF-typed `struct pt_regs *`.
#[inline(always)]
pub fn regs_arg<const I: usize>(regs: *const u8) -> u64 {
    let at = match I {
        0 => off!(pt_regs_di),
        1 => off!(pt_regs_si),
        2 => off!(pt_regs_dx),
        _ => off!(pt_regs_r10),
    };
    Direct.read(regs, at).unwrap_or(0)
}

/// A syscall tracepoint's record.
struct Record<'a>(&'a TracePointContext);

impl Record<'_> {
    /// An 8-byte field of the record at `AT`, read straight from the context (the verifier wants
    /// a compile-time offset; the daemon checked the layout against tracefs).
    #[inline(always)]
    #[expect(clippy::cast_ptr_alignment, reason = "the record is 8-aligned and every AT a multiple of 8")]
    fn field<const AT: usize>(&self) -> u64 {
        unsafe { *self.0.as_ptr().cast::<u8>().add(AT).cast::<u64>() }
    }

    /// Which watched syscall a shared program runs for (`None`: not one of its syscalls).
    #[inline(always)]
    fn syscall_id(&self) -> Option<u16> {
        let nr = self.field::<{ syscall_record::NR as usize }>() as u32;
        match SYSNR.get(nr) {
            Some(&id) if id != 0 => Some((id - 1) as u16),
            _ => None,
        }
    }
}

const ARGS: usize = syscall_record::ARGS as usize;

impl Call for Record<'_> {
    /// Every syscall argument is stored as 8 bytes after `__syscall_nr`.
    #[inline(always)]
    fn arg<const I: usize>(&self) -> u64 {
        match I {
            0 => self.field::<ARGS>(),
            1 => self.field::<{ ARGS + 8 }>(),
            2 => self.field::<{ ARGS + 16 }>(),
            _ => self.field::<{ ARGS + 24 }>(),
        }
    }

    #[inline(always)]
    fn ret(&self) -> i64 {
        self.field::<{ syscall_record::RET as usize }>() as i64
    }

    /// An exit record has no arguments: the caller's saved registers (bpf_task_pt_regs, 5.15).
    #[inline(always)]
    fn saved_regs(&self) -> *const u8 {
        unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) as *const u8 }
    }

    /// The kernel builds the record the program reads on the caller's stack
    /// (kernel/trace/trace_syscalls.c, perf_call_bpf_enter/exit).
    #[inline(always)]
    fn stack(&self) -> Stack {
        Stack::of(self.0.as_ptr())
    }
}

/// A syscall function's `struct pt_regs *` (fentry and fexit on `__x64_sys_*` receive it,
/// BTF-typed: its fields are direct loads at the offsets the daemon resolved), and for fexit the
/// value returned.
struct SyscallFunction {
    regs: *const u8,
    ret: i64,
    /// The program's context: the arguments the trampoline saved on the caller's stack.
    ctx: *const c_void,
}

impl Call for SyscallFunction {
    #[inline(always)]
    fn arg<const I: usize>(&self) -> u64 {
        regs_arg::<I>(self.regs)
    }

    #[inline(always)]
    fn ret(&self) -> i64 {
        self.ret
    }

    #[inline(always)]
    fn saved_regs(&self) -> *const u8 {
        self.regs
    }

    #[inline(always)]
    fn stack(&self) -> Stack {
        Stack::of(self.ctx)
    }
}

/// Argument 4 of a syscall (issue 15: perf_event_open's flags).
pub trait Arg4 {
    fn arg4(&self) -> u64;
}

impl Arg4 for Record<'_> {
    #[inline(always)]
    fn arg4(&self) -> u64 {
        self.field::<{ ARGS + 32 }>()
    }
}

impl Arg4 for SyscallFunction {
    /// The x86-64 syscall ABI's fifth register.
    #[inline(always)]
    fn arg4(&self) -> u64 {
        Direct.read(self.regs, off!(pt_regs_r8)).unwrap_or(0)
    }
}

fn current() -> *const u8 {
    unsafe { bpf_get_current_task() as *const u8 }
}

/// The handler of each side of each syscall, as the catalogue names them.
pub mod handlers {
    #[expect(
        clippy::wildcard_imports,
        reason = "the handlers are the body of this module's parent, split out to be named by the catalogue"
    )]
    use super::*;

    // ---- returned ids -----------------------------------------------------------------------

    /// getpid: against the caller's recorded ids.
    #[inline(always)]
    pub fn exit_getpid(c: &impl Call, s: u16) {
        let r = c.ret();
        if r >= 0 {
            returned_own(c.stack(), s, r, true);
        }
    }

    /// gettid, set_tid_address: against the caller's recorded ids.
    #[inline(always)]
    pub fn exit_own_tid(c: &impl Call, s: u16) {
        let r = c.ret();
        if r >= 0 {
            returned_own(c.stack(), s, r, false);
        }
    }

    /// getppid (the parent changes on reparenting): against the task structures.
    #[inline(always)]
    pub fn exit_getppid(c: &impl Call, s: u16) {
        let r = c.ret();
        if r >= 0 {
            returned(c.stack(), s, r, own_id(current(), Own::Ppid).map(i64::from));
        }
    }

    /// setsid: against the task structures.
    #[inline(always)]
    pub fn exit_setsid(c: &impl Call, s: u16) {
        let r = c.ret();
        if r >= 0 {
            returned(c.stack(), s, r, own_id(current(), Own::Sid).map(i64::from));
        }
    }

    /// fork, vfork, clone, clone3: the parent gets the child's number in the parent's
    /// namespace, the child 0.
    #[inline(always)]
    pub fn exit_fork(c: &impl Call, s: u16) {
        let r = c.ret();
        if r >= 0 {
            returned_task(c.stack(), s, r);
        }
    }

    // ---- arguments --------------------------------------------------------------------------

    /// kill, wait4: > 0 a task, 0 and < -1 a process group, -1 any.
    #[inline(always)]
    pub fn enter_pid_arg(c: &impl Call, s: u16) {
        pid_arg(c.stack(), s, c.int_arg::<0>());
    }

    /// tkill, rt_sigqueueinfo, pidfd_open, process_vm_readv/writev: the first argument is a task.
    #[inline(always)]
    pub fn enter_task_arg(c: &impl Call, s: u16) {
        task_arg(c.stack(), s, c.int_arg::<0>(), false);
    }

    /// sched_*, prlimit64, get_robust_list, migrate_pages, move_pages: a task, 0 = the caller.
    #[inline(always)]
    pub fn enter_task_or_self(c: &impl Call, s: u16) {
        task_arg(c.stack(), s, c.int_arg::<0>(), true);
    }

    /// tgkill, rt_tgsigqueueinfo, kcmp: two tasks.
    #[inline(always)]
    pub fn enter_two_tasks(c: &impl Call, s: u16) {
        task_arg(c.stack(), s, c.int_arg::<0>(), false);
        task_arg(c.stack(), s, c.int_arg::<1>(), false);
    }

    /// setpriority/getpriority `which` (include/uapi/linux/resource.h) and ioprio_set/get
    /// `which` (include/uapi/linux/ioprio.h); the USER forms name a uid, not a pid.
    const PRIO_PROCESS: u64 = 0;
    const PRIO_PGRP: u64 = 1;
    const IOPRIO_WHO_PROCESS: u64 = 1;
    const IOPRIO_WHO_PGRP: u64 = 2;

    #[inline(always)]
    pub fn enter_which_who(c: &impl Call, s: u16) {
        let ioprio = s == sys::IOPRIO_SET || s == sys::IOPRIO_GET;
        let (process, pgrp) =
            if ioprio { (IOPRIO_WHO_PROCESS, IOPRIO_WHO_PGRP) } else { (PRIO_PROCESS, PRIO_PGRP) };
        let which = c.arg::<0>();
        if which == process {
            task_arg(c.stack(), s, c.int_arg::<1>(), true);
        } else if which == pgrp {
            group(c.stack(), s, Verdict::Group);
        }
    }

    /// wait4's return: the child it reported; if that released it, its entries go now.
    #[inline(always)]
    pub fn exit_wait4(c: &impl Call, s: u16) {
        let r = c.ret();
        if r > 0 {
            let (slot, reaped) = returned_task(c.stack(), s, r);
            forget_reaped(slot, reaped.tid, reaped.entry);
        }
    }

    /// waitid idtype values (include/uapi/linux/wait.h).
    const P_ALL: u64 = 0;
    const P_PID: u64 = 1;
    const P_PGID: u64 = 2;
    /// Offset of si_pid in the user's siginfo_t (uapi layout: three ints, padding, then the
    /// union).
    const SIGINFO_SI_PID: usize = 16;

    #[inline(always)]
    pub fn enter_waitid(c: &impl Call, s: u16) {
        match c.arg::<0>() {
            P_ALL => group(c.stack(), s, Verdict::Any),
            P_PID => task_arg(c.stack(), s, c.int_arg::<1>(), false),
            P_PGID => group(c.stack(), s, Verdict::Group),
            _ => {} // P_PIDFD: a file descriptor, not a pid
        }
        let infop = c.arg::<2>();
        if infop != 0 {
            let tid = bpf_get_current_pid_tgid() as u32;
            if PENDING.insert(tid, infop, 0).is_err() {
                count_map_error(counter::map_error::PENDING_INSERT);
            }
        }
    }

    /// waitid's return: `si_pid` in the user's siginfo (kept from the entry).
    #[inline(always)]
    pub fn exit_waitid(c: &impl Call, s: u16) {
        let tid = bpf_get_current_pid_tgid() as u32;
        if let Some(infop) = PENDING.get_ptr(tid) {
            let infop = unsafe { *infop };
            let _ = PENDING.remove(tid);
            if c.ret() == 0 {
                let si_pid: i32 =
                    unsafe { bpf_probe_read_user((infop as usize + SIGINFO_SI_PID) as *const i32) }
                        .unwrap_or(0);
                if si_pid > 0 {
                    returned_task(c.stack(), s, i64::from(si_pid));
                }
            }
        }
    }

    #[inline(always)]
    pub fn enter_setpgid(c: &impl Call, s: u16) {
        task_arg(c.stack(), s, c.int_arg::<0>(), true);
        let pgid = c.int_arg::<1>();
        if pgid != 0 {
            task_arg(c.stack(), s, pgid, false);
        }
    }

    // getpgid/getsid: the argument (0 = self) at entry; at exit, for the caller's own group or
    // session (argument 0), the returned id against the task structures.
    const SELF_QUERY: u64 = 1 << 32;

    #[inline(always)]
    pub fn enter_self_query(c: &impl Call, s: u16) {
        let n = c.int_arg::<0>();
        task_arg(c.stack(), s, n, true);
        if n == 0 {
            let tid = bpf_get_current_pid_tgid() as u32;
            if PENDING.insert(tid, u64::from(s) | SELF_QUERY, 0).is_err() {
                count_map_error(counter::map_error::PENDING_INSERT);
            }
        }
    }

    #[inline(always)]
    pub fn exit_self_query(c: &impl Call, s: u16) {
        let tid = bpf_get_current_pid_tgid() as u32;
        if let Some(p) = PENDING.get_ptr(tid) {
            let mark = unsafe { *p };
            let _ = PENDING.remove(tid);
            let r = c.ret();
            if mark == (u64::from(s) | SELF_QUERY) && r >= 0 {
                let which = if s == sys::GETSID { Own::Sid } else { Own::Pgid };
                returned(c.stack(), s, r, own_id(current(), which).map(i64::from));
            }
        }
    }

    /// PTRACE_TRACEME ignores its pid argument.
    const PTRACE_TRACEME: u64 = 0;

    #[inline(always)]
    pub fn enter_ptrace(c: &impl Call, s: u16) {
        if c.arg::<0>() != PTRACE_TRACEME {
            task_arg(c.stack(), s, c.int_arg::<1>(), false);
        }
        // Issue 15: where a PTRACE_GETEVENTMSG's pid goes.
        crate::structures::ptrace_enter(c, s);
    }

    /// Offset of `pid` in the user's `struct __user_cap_header_struct { __u32 version; int pid; }`.
    const CAP_HEADER_PID: usize = 4;

    // ---- numbers in paths ---------------------------------------------------------------------

    /// open, stat, lstat, readlink, access, chdir, execve: a path relative to the working
    /// directory or absolute.
    #[inline(always)]
    pub fn enter_path(c: &impl Call, s: u16) {
        path_crossing(s, AT_FDCWD, c.arg::<0>());
    }

    /// openat, openat2, newfstatat, statx, readlinkat, faccessat(2), execveat: a path relative to
    /// directory fd `dirfd`.
    #[inline(always)]
    pub fn enter_at_path(c: &impl Call, s: u16) {
        path_crossing(s, c.int_arg::<0>(), c.arg::<1>());
    }

    #[inline(always)]
    pub fn enter_capget(c: &impl Call, s: u16) {
        let header = c.arg::<0>();
        if header != 0
            && let Ok(pid) = unsafe { bpf_probe_read_user((header as usize + CAP_HEADER_PID) as *const i32) }
        {
            task_arg(c.stack(), s, pid, true);
        }
    }

    // Issue 15: pids inside structures (fcntl, ioctl, sockets, siginfo, IPC, clone, ptrace).
    pub use crate::structures::handlers::{
        enter_fcntl, enter_getsockopt, enter_ioctl, enter_ipc_ctl, enter_perf_event_open, enter_recvmsg,
        enter_sendmsg, enter_sigtimedwait, exit_clone, exit_fcntl, exit_getsockopt, exit_ioctl, exit_ipc_ctl,
        exit_ptrace, exit_recvmsg, exit_sigtimedwait,
    };
}

// ---- syscall tracepoints ----------------------------------------------------------------------

/// Whether a call to handler `$handler` may cross at all, where the handler has a test cheaper
/// than the programs' common checks (the offsets, the CPU's state, the syscall's id), which then
/// run only when it passes: most path calls are no crossing.
macro_rules! may_cross {
    (enter_path, $call:expr) => {
        crate::procfs::may_cross($call.arg::<0>())
    };
    (enter_at_path, $call:expr) => {
        crate::procfs::may_cross($call.arg::<1>())
    };
    ($handler:ident, $call:expr) => {
        true
    };
}

/// A tracepoint program running handler `$name` for one syscall (`=> SYS`) or for the several
/// that share it (`=> shared`: the syscall from the record). Not preemptible, it keeps off the
/// CPU's state while a preemptible program (signalfd's fexit) holds it.
macro_rules! tracepoints {
    ($($name:ident => $which:tt;)*) => { $(
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            let record = Record(&ctx);
            if may_cross!($name, record) && offsets_ready() && CpuState::free_here() {
                tracepoints!(@id record, $which, |s| handlers::$name(&record, s));
            }
            0
        }
    )* };
    (@id $record:ident, shared, |$s:ident| $body:expr) => {
        if let Some($s) = $record.syscall_id() {
            $body;
        }
    };
    (@id $record:ident, $id:ident, |$s:ident| $body:expr) => {{
        let $s = sys::$id;
        $body;
    }};
}

tracepoints! {
    exit_getpid => GETPID;
    exit_own_tid => shared;
    exit_getppid => GETPPID;
    exit_setsid => SETSID;
    exit_fork => shared;
    enter_pid_arg => shared;
    enter_task_arg => shared;
    enter_task_or_self => shared;
    enter_two_tasks => shared;
    enter_which_who => shared;
    exit_wait4 => WAIT4;
    enter_waitid => WAITID;
    exit_waitid => WAITID;
    enter_setpgid => SETPGID;
    enter_self_query => shared;
    exit_self_query => shared;
    enter_ptrace => PTRACE;
    enter_capget => CAPGET;
    enter_path => shared;
    enter_at_path => shared;
    // issue 15: pids inside structures
    exit_clone => shared;
    exit_ptrace => PTRACE;
    enter_fcntl => FCNTL;
    exit_fcntl => FCNTL;
    enter_ioctl => IOCTL;
    exit_ioctl => IOCTL;
    enter_getsockopt => GETSOCKOPT;
    exit_getsockopt => GETSOCKOPT;
    enter_sendmsg => SENDMSG;
    enter_recvmsg => RECVMSG;
    exit_recvmsg => RECVMSG;
    enter_sigtimedwait => RT_SIGTIMEDWAIT;
    exit_sigtimedwait => RT_SIGTIMEDWAIT;
    enter_ipc_ctl => shared;
    exit_ipc_ctl => shared;
    enter_perf_event_open => PERF_EVENT_OPEN;
}

// ---- fentry / fexit on the syscall functions --------------------------------------------------

/// `fentry_<syscall>` and `fexit_<syscall>` for every side of every watched syscall (the daemon
/// attaches them to `__x64_sys_<syscall>` where the kernel takes fentry; an fentry program is
/// loaded for one function), and the floor's empty twins `floor_fentry_<syscall>`,
/// `floor_fexit_<syscall>`. The kernel may preempt them: each holds the CPU's state for its run
/// ([`CpuState`]).
macro_rules! function_programs {
    ($( $name:ident: $(enter($enter:ident))? $(exit($exit:ident))? ; )*) => { pastey::paste! { $(
        $(
            #[fentry]
            pub fn [<fentry_ $name>](ctx: FEntryContext) -> i32 {
                let call = SyscallFunction { regs: ctx.arg(0), ret: 0, ctx: ctx.as_ptr() };
                // The arguments are read at the offsets: they come first.
                if offsets_ready()
                    && may_cross!($enter, call)
                    && let Some(_held) = CpuState::hold()
                {
                    handlers::$enter(&call, sys::[<$name:upper>]);
                }
                0
            }

            #[fentry]
            pub fn [<floor_fentry_ $name>](ctx: FEntryContext) -> i32 {
                let _ = (ctx.as_ptr(), stringify!($enter));
                0
            }
        )?
        $(
            #[fexit]
            pub fn [<fexit_ $name>](ctx: FExitContext) -> i32 {
                if offsets_ready()
                    && let Some(_held) = CpuState::hold()
                {
                    let call = SyscallFunction { regs: ctx.arg(0), ret: ctx.arg(1), ctx: ctx.as_ptr() };
                    handlers::$exit(&call, sys::[<$name:upper>]);
                }
                0
            }

            #[fexit]
            pub fn [<floor_fexit_ $name>](ctx: FExitContext) -> i32 {
                let _ = (ctx.as_ptr(), stringify!($exit));
                0
            }
        )?
    )* } };
}

pidvirt_common::for_each_syscall!(function_programs);

// ---- the benchmark's floor --------------------------------------------------------------------

/// An empty program, attached to every hook above by the benchmark's floor measurement.
#[tracepoint]
pub fn floor_empty(ctx: TracePointContext) -> u32 {
    let _ = ctx.as_ptr();
    0
}

/// An empty program on the raw `sys_enter`/`sys_exit` tracepoints (every syscall): the
/// benchmark's measure of a design that hooks every syscall and filters in the program.
#[raw_tracepoint]
pub fn floor_raw_empty(ctx: RawTracePointContext) -> i32 {
    let _ = ctx.as_ptr();
    0
}
