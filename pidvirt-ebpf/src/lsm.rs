//! The enforcer: BPF-LSM programs on the hooks that receive the target task. A task of a
//! container in `enforce` mode may act on tasks of its own container, of containers nested in
//! it, and of other containers in the pid namespace it lives in when that is not the host's (a
//! namespace joined on purpose: audit::visible); any other target is denied with EPERM, reported (verdict `denied`) and counted. The
//! host acts on all; `observe` containers are only audited (by the syscall programs).
//!
//! Loaded only where the kernel accepts LSM programs; the daemon says so (`pidvirt status`).

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::lsm, programs::LsmContext};
use pidvirt_common::{
    TaskEntry,
    audit::{Direction, Mode, NLSM, Verdict, lsm},
    counter,
};

use crate::{
    audit::{Crossing, Found, Level, report, visible},
    kernel::{Direct, Kmem, off, offsets_ready},
    maps::{COUNTS, MODES, count_map_error, enforcing, reported, task_get},
};

/// EPERM
const EPERM: i32 = 1;

/// The decision for an action of `current` on `target` at hook `hook`; `prev` is the verdict of
/// the BPF programs before this one (kept if it denies).
#[inline(always)]
fn decide(hook: usize, target: *const u8, prev: i32) -> i32 {
    // Where no container enforces (the common case), a kill or ptrace pays no lookup here.
    if prev != 0 || !enforcing() || !offsets_ready() {
        return prev;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(c) = task_get(tid) else { return 0 };
    let c = unsafe { &*c };
    match MODES.get_ptr(c.container) {
        Some(m) if unsafe { *m } == Mode::Enforce as u32 => {}
        _ => return 0,
    }
    let Ok(target_tid) = Direct.read::<u32>(target, off!(task_pid)) else {
        count_map_error(counter::map_error::KERNEL_READ);
        return 0;
    };
    let Some(t) = task_get(target_tid) else {
        count_map_error(counter::map_error::TASK_MISSING);
        return 0;
    };
    let t = unsafe { &*t };
    if visible(c, t) {
        return 0;
    }
    deny(hook, tid, c, target_tid, t);
    -EPERM
}

/// Counts the denial for the caller's container and reports it (target: the task acted on).
#[inline(always)]
fn deny(hook: usize, tid: u32, c: &TaskEntry, target_tid: u32, t: &TaskEntry) {
    if let Some(p) = COUNTS.get_ptr_mut(c.slot)
        && hook < NLSM
    {
        unsafe { (*p).denied[hook] += 1 };
    }
    let x = Crossing {
        syscall: hook as u16,
        direction: Direction::Lsm,
        verdict: Verdict::Denied,
        value: i64::from(target_tid),
    };
    if reported(Verdict::Denied) {
        report(&x, tid, c, Found { tid: target_tid, entry: t }, Found::NONE, Level::NONE);
    }
}

/// One program per hook of the catalogue (`lsm_<hook>`; the daemon attaches it to `<hook>`).
macro_rules! guards {
    ($($hook:ident $args:literal),* $(,)?) => { pastey::paste! { $(
        #[lsm]
        pub fn [<lsm_ $hook>](ctx: LsmContext) -> i32 {
            let target: *const u8 = ctx.arg(0);
            let prev: i32 = ctx.arg($args);
            decide(lsm::[<$hook:upper>], target, prev)
        }
    )* } };
}

pidvirt_common::for_each_lsm_hook!(guards);
