//! One small program per watched syscall tracepoint (pidvirt_common::audit::SYSCALLS is the
//! list): arguments are read at sys_enter (raw numbers of the CALLER's namespace), returned
//! values at sys_exit. What a value means follows the kernel (see
//! ../shared/reference/pid-crossings.md): 0 is often "self", kill/wait have group values, etc.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use pidvirt_common::{
    audit::{Verdict, sys},
    counter,
};

use crate::{
    audit::{group, pid_arg, returned, returned_task, task_arg},
    kernel::{off, offsets_ready},
    maps::{PENDING, count_map_error},
    task::{Own, own_id},
};

/// Argument `i` of a sys_enter record (every syscall argument is stored as 8 bytes).
#[inline(always)]
fn arg(ctx: &TracePointContext, i: usize) -> u64 {
    let at = off!(syscall_args) as usize + 8 * i;
    unsafe { ctx.read_at::<u64>(at).unwrap_or(0) }
}

/// An `int`/`pid_t` argument (the low 32 bits, as the kernel's SYSCALL_DEFINE truncates).
#[inline(always)]
fn int_arg(ctx: &TracePointContext, i: usize) -> i32 {
    arg(ctx, i) as u32 as i32
}

/// The return value of a sys_exit record.
#[inline(always)]
fn ret(ctx: &TracePointContext) -> i64 {
    let at = off!(syscall_ret) as usize;
    unsafe { ctx.read_at::<i64>(at).unwrap_or(-1) }
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

// ---- returned ids: checked against the task structures --------------------------------------

macro_rules! own_return {
    ($name:ident, $sys:expr, $which:expr) => {
        hook!($name, |ctx| {
            let r = ret(&ctx);
            if r >= 0 {
                returned($sys, r, own_id(current(), $which).map(|v| v as i64));
            }
        });
    };
}

own_return!(exit_getpid, sys::GETPID, Own::Tgid);
own_return!(exit_gettid, sys::GETTID, Own::Tid);
own_return!(exit_getppid, sys::GETPPID, Own::Ppid);
own_return!(exit_set_tid_address, sys::SET_TID_ADDRESS, Own::Tid);
own_return!(exit_setsid, sys::SETSID, Own::Sid);

// fork/clone: the parent gets the child's number in the parent's namespace, the child 0.
macro_rules! fork_return {
    ($name:ident, $sys:expr) => {
        hook!($name, |ctx| {
            let r = ret(&ctx);
            if r >= 0 {
                returned_task($sys, r);
            }
        });
    };
}

fork_return!(exit_fork, sys::FORK);
fork_return!(exit_vfork, sys::VFORK);
fork_return!(exit_clone, sys::CLONE);
fork_return!(exit_clone3, sys::CLONE3);

// ---- arguments ------------------------------------------------------------------------------

hook!(enter_kill, |ctx| { pid_arg(sys::KILL, int_arg(&ctx, 0)) });
hook!(enter_tkill, |ctx| { task_arg(sys::TKILL, int_arg(&ctx, 0), false) });
hook!(enter_tgkill, |ctx| {
    task_arg(sys::TGKILL, int_arg(&ctx, 0), false);
    task_arg(sys::TGKILL, int_arg(&ctx, 1), false);
});
hook!(enter_rt_sigqueueinfo, |ctx| { task_arg(sys::RT_SIGQUEUEINFO, int_arg(&ctx, 0), false) });
hook!(enter_rt_tgsigqueueinfo, |ctx| {
    task_arg(sys::RT_TGSIGQUEUEINFO, int_arg(&ctx, 0), false);
    task_arg(sys::RT_TGSIGQUEUEINFO, int_arg(&ctx, 1), false);
});
hook!(enter_pidfd_open, |ctx| { task_arg(sys::PIDFD_OPEN, int_arg(&ctx, 0), false) });

hook!(enter_wait4, |ctx| { pid_arg(sys::WAIT4, int_arg(&ctx, 0)) });
hook!(exit_wait4, |ctx| {
    let r = ret(&ctx);
    if r > 0 {
        returned_task(sys::WAIT4, r);
    }
});

/// waitid idtype values (include/uapi/linux/wait.h).
const P_ALL: u64 = 0;
const P_PID: u64 = 1;
const P_PGID: u64 = 2;
/// Offset of si_pid in the user's siginfo_t (uapi layout: three ints, padding, then the union).
const SIGINFO_SI_PID: usize = 16;

hook!(enter_waitid, |ctx| {
    match arg(&ctx, 0) {
        P_ALL => group(sys::WAITID, Verdict::Any),
        P_PID => task_arg(sys::WAITID, int_arg(&ctx, 1), false),
        P_PGID => group(sys::WAITID, Verdict::Group),
        _ => {} // P_PIDFD: a file descriptor, not a pid
    }
    let infop = arg(&ctx, 2);
    if infop != 0 {
        let tid = bpf_get_current_pid_tgid() as u32;
        if PENDING.insert(tid, infop, 0).is_err() {
            count_map_error(counter::ERR_PENDING_INSERT);
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
                returned_task(sys::WAITID, si_pid as i64);
            }
        }
    }
});

hook!(enter_setpgid, |ctx| {
    task_arg(sys::SETPGID, int_arg(&ctx, 0), true);
    let pgid = int_arg(&ctx, 1);
    if pgid != 0 {
        task_arg(sys::SETPGID, pgid, false);
    }
});

// getpgid/getsid: the argument (0 = self) at enter; at exit, for the caller's own group or
// session (argument 0), the returned id against the task structures.
macro_rules! self_query {
    ($enter:ident, $exit:ident, $sys:expr, $which:expr) => {
        hook!($enter, |ctx| {
            let n = int_arg(&ctx, 0);
            task_arg($sys, n, true);
            if n == 0 {
                let tid = bpf_get_current_pid_tgid() as u32;
                if PENDING.insert(tid, $sys as u64 | 1 << 32, 0).is_err() {
                    count_map_error(counter::ERR_PENDING_INSERT);
                }
            }
        });
        hook!($exit, |ctx| {
            let tid = bpf_get_current_pid_tgid() as u32;
            if let Some(p) = PENDING.get_ptr(tid) {
                let mark = unsafe { *p };
                let _ = PENDING.remove(tid);
                let r = ret(&ctx);
                if mark == ($sys as u64 | 1 << 32) && r >= 0 {
                    returned($sys, r, own_id(current(), $which).map(|v| v as i64));
                }
            }
        });
    };
}

self_query!(enter_getpgid, exit_getpgid, sys::GETPGID, Own::Pgid);
self_query!(enter_getsid, exit_getsid, sys::GETSID, Own::Sid);

// sched_* and friends: the first argument is a task, 0 is the caller.
macro_rules! self_or_task {
    ($name:ident, $sys:expr) => {
        hook!($name, |ctx| { task_arg($sys, int_arg(&ctx, 0), true) });
    };
}

self_or_task!(enter_sched_setaffinity, sys::SCHED_SETAFFINITY);
self_or_task!(enter_sched_getaffinity, sys::SCHED_GETAFFINITY);
self_or_task!(enter_sched_setscheduler, sys::SCHED_SETSCHEDULER);
self_or_task!(enter_sched_getscheduler, sys::SCHED_GETSCHEDULER);
self_or_task!(enter_sched_setparam, sys::SCHED_SETPARAM);
self_or_task!(enter_sched_getparam, sys::SCHED_GETPARAM);
self_or_task!(enter_sched_setattr, sys::SCHED_SETATTR);
self_or_task!(enter_sched_getattr, sys::SCHED_GETATTR);
self_or_task!(enter_sched_rr_get_interval, sys::SCHED_RR_GET_INTERVAL);
self_or_task!(enter_prlimit64, sys::PRLIMIT64);
self_or_task!(enter_get_robust_list, sys::GET_ROBUST_LIST);
self_or_task!(enter_migrate_pages, sys::MIGRATE_PAGES);
self_or_task!(enter_move_pages, sys::MOVE_PAGES);

/// setpriority/getpriority `which` (include/uapi/linux/resource.h).
const PRIO_PROCESS: u64 = 0;
const PRIO_PGRP: u64 = 1;

macro_rules! priority {
    ($name:ident, $sys:expr) => {
        hook!($name, |ctx| {
            match arg(&ctx, 0) {
                PRIO_PROCESS => task_arg($sys, int_arg(&ctx, 1), true),
                PRIO_PGRP => group($sys, Verdict::Group),
                _ => {} // PRIO_USER: a uid
            }
        });
    };
}

priority!(enter_setpriority, sys::SETPRIORITY);
priority!(enter_getpriority, sys::GETPRIORITY);

/// ioprio_set/ioprio_get `which` (include/uapi/linux/ioprio.h).
const IOPRIO_WHO_PROCESS: u64 = 1;
const IOPRIO_WHO_PGRP: u64 = 2;

macro_rules! ioprio {
    ($name:ident, $sys:expr) => {
        hook!($name, |ctx| {
            match arg(&ctx, 0) {
                IOPRIO_WHO_PROCESS => task_arg($sys, int_arg(&ctx, 1), true),
                IOPRIO_WHO_PGRP => group($sys, Verdict::Group),
                _ => {} // IOPRIO_WHO_USER: a uid
            }
        });
    };
}

ioprio!(enter_ioprio_set, sys::IOPRIO_SET);
ioprio!(enter_ioprio_get, sys::IOPRIO_GET);

/// PTRACE_TRACEME ignores its pid argument.
const PTRACE_TRACEME: u64 = 0;

hook!(enter_ptrace, |ctx| {
    if arg(&ctx, 0) != PTRACE_TRACEME {
        task_arg(sys::PTRACE, int_arg(&ctx, 1), false);
    }
});
hook!(enter_process_vm_readv, |ctx| { task_arg(sys::PROCESS_VM_READV, int_arg(&ctx, 0), false) });
hook!(enter_process_vm_writev, |ctx| { task_arg(sys::PROCESS_VM_WRITEV, int_arg(&ctx, 0), false) });
hook!(enter_kcmp, |ctx| {
    task_arg(sys::KCMP, int_arg(&ctx, 0), false);
    task_arg(sys::KCMP, int_arg(&ctx, 1), false);
});

/// Offset of `pid` in the user's `struct __user_cap_header_struct { __u32 version; int pid; }`.
const CAP_HEADER_PID: usize = 4;

hook!(enter_capget, |ctx| {
    let header = arg(&ctx, 0);
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
