//! The syscall tracepoint programs (pidvirt_common::audit::SYSCALLS is the hook list, and names
//! the program of each hook). Arguments are read at sys_enter (raw numbers of the CALLER's
//! namespace), returned values at sys_exit. What a value means follows the kernel (see
//! ../shared/reference/pid-crossings.md): 0 is often "self", kill/wait have group values, etc.
//!
//! Syscalls that are judged alike share one program, which finds which syscall it runs for from
//! the record's `__syscall_nr` (SYSNR map): fewer programs to verify at start-up. The hottest
//! (getpid) has its own.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_user},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use pidvirt_common::{
    audit::{Verdict, sys},
    counter,
    offsets::syscall_record,
};

use crate::{
    audit::{group, pid_arg, returned, returned_own, returned_task, task_arg},
    kernel::offsets_ready,
    lifecycle::forget_reaped,
    maps::{PENDING, SYSNR, count_map_error},
    task::{Own, own_id},
};

/// An 8-byte field of the tracepoint record at `AT`, read straight from the context (the
/// verifier wants a compile-time offset; the daemon checked the layout against tracefs).
#[inline(always)]
#[expect(clippy::cast_ptr_alignment, reason = "the record is 8-aligned and every AT a multiple of 8")]
fn field<const AT: usize>(ctx: &TracePointContext) -> u64 {
    unsafe { *ctx.as_ptr().cast::<u8>().add(AT).cast::<u64>() }
}

const ARGS: usize = syscall_record::ARGS as usize;

/// Argument `I` of a sys_enter record (every syscall argument is stored as 8 bytes).
#[inline(always)]
fn arg<const I: usize>(ctx: &TracePointContext) -> u64 {
    match I {
        0 => field::<ARGS>(ctx),
        1 => field::<{ ARGS + 8 }>(ctx),
        _ => field::<{ ARGS + 16 }>(ctx),
    }
}

/// An `int`/`pid_t` argument (the low 32 bits, as the kernel's SYSCALL_DEFINE truncates).
#[inline(always)]
fn int_arg<const I: usize>(ctx: &TracePointContext) -> i32 {
    arg::<I>(ctx) as u32 as i32
}

/// The return value of a sys_exit record.
#[inline(always)]
fn ret(ctx: &TracePointContext) -> i64 {
    field::<{ syscall_record::RET as usize }>(ctx) as i64
}

/// Which watched syscall a shared program runs for (`None`: not one of its syscalls).
#[inline(always)]
fn syscall_id(ctx: &TracePointContext) -> Option<u16> {
    let nr = field::<{ syscall_record::NR as usize }>(ctx) as u32;
    match SYSNR.get(nr) {
        Some(&id) if id != 0 => Some((id - 1) as u16),
        _ => None,
    }
}

fn current() -> *const u8 {
    unsafe { bpf_get_current_task() as *const u8 }
}

macro_rules! hook {
    ($name:ident, |$ctx:ident| $body:block) => {
        #[tracepoint]
        pub fn $name($ctx: TracePointContext) -> u32 {
            if offsets_ready() $body
            0
        }
    };
}

/// A program shared by several syscalls: `$sys` is the syscall's id in the body.
macro_rules! shared_hook {
    ($name:ident, |$ctx:ident, $sys:ident| $body:block) => {
        hook!($name, |$ctx| {
            if let Some($sys) = syscall_id(&$ctx) $body
        });
    };
}

// ---- returned ids ---------------------------------------------------------------------------

// getpid, gettid, set_tid_address: against the caller's recorded ids.
hook!(exit_getpid, |ctx| {
    let r = ret(&ctx);
    if r >= 0 {
        returned_own(sys::GETPID, r, true);
    }
});
shared_hook!(exit_own_tid, |ctx, s| {
    let r = ret(&ctx);
    if r >= 0 {
        returned_own(s, r, false);
    }
});
// getppid (the parent changes on reparenting) and setsid: against the task structures.
hook!(exit_getppid, |ctx| {
    let r = ret(&ctx);
    if r >= 0 {
        returned(sys::GETPPID, r, own_id(current(), Own::Ppid).map(i64::from));
    }
});
hook!(exit_setsid, |ctx| {
    let r = ret(&ctx);
    if r >= 0 {
        returned(sys::SETSID, r, own_id(current(), Own::Sid).map(i64::from));
    }
});
// fork, vfork, clone, clone3: the parent gets the child's number in the parent's namespace,
// the child 0.
shared_hook!(exit_fork, |ctx, s| {
    let r = ret(&ctx);
    if r >= 0 {
        returned_task(s, r);
    }
});

// ---- arguments ------------------------------------------------------------------------------

// kill, wait4: > 0 a task, 0 and < -1 a process group, -1 any.
shared_hook!(enter_pid_arg, |ctx, s| { pid_arg(s, int_arg::<0>(&ctx)) });
// tkill, rt_sigqueueinfo, pidfd_open, process_vm_readv/writev: the first argument is a task.
shared_hook!(enter_task_arg, |ctx, s| { task_arg(s, int_arg::<0>(&ctx), false) });
// sched_*, prlimit64, get_robust_list, migrate_pages, move_pages: a task, 0 = the caller.
shared_hook!(enter_task_or_self, |ctx, s| { task_arg(s, int_arg::<0>(&ctx), true) });
// tgkill, rt_tgsigqueueinfo, kcmp: two tasks.
shared_hook!(enter_two_tasks, |ctx, s| {
    task_arg(s, int_arg::<0>(&ctx), false);
    task_arg(s, int_arg::<1>(&ctx), false);
});

/// setpriority/getpriority `which` (include/uapi/linux/resource.h) and ioprio_set/get `which`
/// (include/uapi/linux/ioprio.h); the USER forms name a uid, not a pid.
const PRIO_PROCESS: u64 = 0;
const PRIO_PGRP: u64 = 1;
const IOPRIO_WHO_PROCESS: u64 = 1;
const IOPRIO_WHO_PGRP: u64 = 2;

shared_hook!(enter_which_who, |ctx, s| {
    let ioprio = s == sys::IOPRIO_SET || s == sys::IOPRIO_GET;
    let (process, pgrp) =
        if ioprio { (IOPRIO_WHO_PROCESS, IOPRIO_WHO_PGRP) } else { (PRIO_PROCESS, PRIO_PGRP) };
    let which = arg::<0>(&ctx);
    if which == process {
        task_arg(s, int_arg::<1>(&ctx), true);
    } else if which == pgrp {
        group(s, Verdict::Group);
    }
});

hook!(exit_wait4, |ctx| {
    let r = ret(&ctx);
    if r > 0 {
        let (slot, reaped) = returned_task(sys::WAIT4, r);
        forget_reaped(slot, reaped.tid, reaped.entry);
    }
});

/// waitid idtype values (include/uapi/linux/wait.h).
const P_ALL: u64 = 0;
const P_PID: u64 = 1;
const P_PGID: u64 = 2;
/// Offset of si_pid in the user's siginfo_t (uapi layout: three ints, padding, then the union).
const SIGINFO_SI_PID: usize = 16;

hook!(enter_waitid, |ctx| {
    match arg::<0>(&ctx) {
        P_ALL => group(sys::WAITID, Verdict::Any),
        P_PID => task_arg(sys::WAITID, int_arg::<1>(&ctx), false),
        P_PGID => group(sys::WAITID, Verdict::Group),
        _ => {} // P_PIDFD: a file descriptor, not a pid
    }
    let infop = arg::<2>(&ctx);
    if infop != 0 {
        let tid = bpf_get_current_pid_tgid() as u32;
        if PENDING.insert(tid, infop, 0).is_err() {
            count_map_error(counter::map_error::PENDING_INSERT);
        }
    }
});
hook!(exit_waitid, |ctx| {
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Some(infop) = PENDING.get_ptr(tid) {
        let infop = unsafe { *infop };
        let _ = PENDING.remove(tid);
        if ret(&ctx) == 0 {
            let si_pid: i32 =
                unsafe { bpf_probe_read_user((infop as usize + SIGINFO_SI_PID) as *const i32) }.unwrap_or(0);
            if si_pid > 0 {
                returned_task(sys::WAITID, i64::from(si_pid));
            }
        }
    }
});

hook!(enter_setpgid, |ctx| {
    task_arg(sys::SETPGID, int_arg::<0>(&ctx), true);
    let pgid = int_arg::<1>(&ctx);
    if pgid != 0 {
        task_arg(sys::SETPGID, pgid, false);
    }
});

// getpgid/getsid: the argument (0 = self) at enter; at exit, for the caller's own group or
// session (argument 0), the returned id against the task structures.
const SELF_QUERY: u64 = 1 << 32;

shared_hook!(enter_self_query, |ctx, s| {
    let n = int_arg::<0>(&ctx);
    task_arg(s, n, true);
    if n == 0 {
        let tid = bpf_get_current_pid_tgid() as u32;
        if PENDING.insert(tid, u64::from(s) | SELF_QUERY, 0).is_err() {
            count_map_error(counter::map_error::PENDING_INSERT);
        }
    }
});
shared_hook!(exit_self_query, |ctx, s| {
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Some(p) = PENDING.get_ptr(tid) {
        let mark = unsafe { *p };
        let _ = PENDING.remove(tid);
        let r = ret(&ctx);
        if mark == (u64::from(s) | SELF_QUERY) && r >= 0 {
            let which = if s == sys::GETSID { Own::Sid } else { Own::Pgid };
            returned(s, r, own_id(current(), which).map(i64::from));
        }
    }
});

/// PTRACE_TRACEME ignores its pid argument.
const PTRACE_TRACEME: u64 = 0;

hook!(enter_ptrace, |ctx| {
    if arg::<0>(&ctx) != PTRACE_TRACEME {
        task_arg(sys::PTRACE, int_arg::<1>(&ctx), false);
    }
});

/// Offset of `pid` in the user's `struct __user_cap_header_struct { __u32 version; int pid; }`.
const CAP_HEADER_PID: usize = 4;

hook!(enter_capget, |ctx| {
    let header = arg::<0>(&ctx);
    if header != 0
        && let Ok(pid) = unsafe { bpf_probe_read_user((header as usize + CAP_HEADER_PID) as *const i32) }
    {
        task_arg(sys::CAPGET, pid, true);
    }
});

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
