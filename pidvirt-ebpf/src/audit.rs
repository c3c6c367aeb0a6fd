//! Auditing one crossing: find the caller, resolve the number in the caller's namespace and as a
//! number of its ancestor namespaces (the nearest levels, then the host's), classify it
//! (pidvirt_common::audit::classify, the one place), count it per container per CPU, and report
//! the verdicts the operator asked for on the ring buffer.

use aya_ebpf::{
    cty::c_void,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_get_smp_processor_id,
        bpf_ktime_get_ns,
    },
};
use pidvirt_common::{
    ANCESTOR_SLOTS, CallerCache, HOST_CONTAINER, INLINE_LEVELS, LevelIds, STACK_ALIGN, TaskEntry, VirtKey,
    audit::{
        ANCESTOR_CHECKS, AnomalyEvent, Direction, NSYSCALLS, NVERDICTS, Party, PartyInfo, Resolution,
        Verdict, classify, crossing_slot, event_flags, is_cgroup_container, sys,
    },
    caller_slot, copies, counter, event_kind, task_flags,
};

use crate::{
    kernel::{Direct, Kmem, Probe, off},
    maps::{
        CALLER, COUNTS, DEEP, EVENTS, PIDNS, SCRATCH, SCRATCH_TRACEPOINT, count_drop, count_map_error,
        count_n, host_pidns, may_have_entry, released_lately, reported, task_get, tasks_generation, virt_get,
    },
    task::{container_of, nr_at, ns_at, pidns_inum, task_pids},
};

/// Where a program's context lies: on the calling task's kernel stack (see
/// pidvirt_common::CallerCache), so that the caller's copies are found without asking the kernel
/// which task runs (a helper call, ~20 ns on some machines: the hottest crossings' largest cost).
#[derive(Clone, Copy)]
pub struct Stack(*const c_void);

impl Stack {
    /// The stack of a program whose context is `ctx` (a syscall tracepoint's or fentry's).
    #[inline(always)]
    pub fn of(ctx: *const c_void) -> Self {
        Self(ctx)
    }

    /// The stack's base, if the context lies on an aligned stack (else no copy matches it). A
    /// pointer becomes a number only through memory: `scratch`, this CPU's.
    #[inline(always)]
    fn base(self, scratch: *mut CallerCache) -> u64 {
        unsafe {
            core::ptr::write_volatile(&raw mut (*scratch).at, self.0 as u64);
            core::ptr::read_volatile(&raw const (*scratch).at) & !(STACK_ALIGN - 1)
        }
    }
}

/// The calling task's entry, for a program that knows where its context lies: this CPU's copy
/// of it when still valid (CALLER, see pidvirt_common::CallerCache), found with no helper call;
/// else as [`caller`] finds it.
#[inline(always)]
pub fn caller_on(at: Stack) -> Option<(u32, *const TaskEntry)> {
    let scratch = CALLER.get_ptr_mut(caller_slot::CALLER)?;
    let key = at.base(scratch);
    if let Some(found) = copied(key) {
        return Some(found);
    }
    let task = unsafe { bpf_get_current_task_btf() } as *const u8;
    looked_up(Direct.read::<u64>(task, off!(task_stack)).unwrap_or(0), key)
}

/// The calling task's entry: one of this CPU's copies of it when still valid (CALLER, see
/// pidvirt_common::CallerCache), else looked up in the task map and copied. A caller without
/// an entry (should not happen once seeded; counted) is described from its task structures in
/// per-CPU scratch: its level, namespace and host ids, enough to judge this crossing.
#[inline(always)]
pub fn caller() -> Option<(u32, *const TaskEntry)> {
    let task = unsafe { bpf_get_current_task_btf() } as *const u8;
    let stack = Direct.read::<u64>(task, off!(task_stack)).unwrap_or(0);
    if let Some(found) = copied(stack) {
        return Some(found);
    }
    looked_up(stack, stack)
}

/// This CPU's valid copy of the entry of the task whose kernel stack is `stack`, if any.
#[inline(always)]
fn copied(stack: u64) -> Option<(u32, *const TaskEntry)> {
    if stack == 0 {
        return None;
    }
    let generations = tasks_generation();
    let valid =
        |c: &CallerCache| c.stack == stack && (c.kernel_generation, c.daemon_generation) == generations;
    if let Some(c) = CALLER.get_ptr(caller_slot::CALLER)
        && valid(unsafe { &*c })
    {
        return Some(unsafe { ((*c).tid, &raw const (*c).entry) });
    }
    if let Some(c) = CALLER.get_ptr(caller_slot::NEWBORN)
        && valid(unsafe { &*c })
    {
        return Some(unsafe { ((*c).tid, &raw const (*c).entry) });
    }
    None
}

/// The entry of the calling task, whose kernel stack is `stack` (0: unread), from the task map;
/// copied into this CPU's CALLER slot when `key`, where the program found its stack, is that
/// stack and the task has not exited (see pidvirt_common::CallerCache).
#[inline(always)]
fn looked_up(stack: u64, key: u64) -> Option<(u32, *const TaskEntry)> {
    // The generations are read before the lookup: a write after it makes the copy invalid.
    let generations = tasks_generation();
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Some(e) = task_get(tid) {
        let Some(c) = CALLER.get_ptr_mut(caller_slot::CALLER) else { return Some((tid, e)) };
        // Where the copy would not be found again, or must not be, it is made unfindable (stack
        // 0) all the same: the caller's entry is then always read from this slot, and what
        // follows is verified once, not once per map the entry could be read from.
        let findable = stack != 0 && stack == key && unsafe { (*e).flags } & task_flags::EXITED == 0;
        if findable {
            // Named before the copy is made: the task's exit clears it (lifecycle::forget_copies).
            // The bpf target's atomics are 64-bit here: an or of zeroes leaves the word's other
            // bytes.
            let bit = u64::from(copies::bit(unsafe { bpf_get_smp_processor_id() })) << 16;
            let word = e.cast::<u8>().wrapping_add(copies::WORD);
            unsafe { crate::atomic::or(word.cast(), bit) };
        }
        let c = unsafe { &mut *c };
        fill(c, if findable { stack } else { 0 }, tid, unsafe { &*e }, generations);
        return Some((tid, &raw const c.entry));
    }
    count_map_error(counter::map_error::TASK_MISSING);
    if describe_caller() != 0 {
        return None;
    }
    let s = SCRATCH.get_ptr(SCRATCH_TRACEPOINT)?;
    Some((tid, unsafe { &raw const (*s).entry }))
}

/// Describes the calling task in this CPU's tracepoint scratch entry (`describe`); answers 0,
/// or 1 after counting why it could not. A global function: the verifier checks it once per
/// program, not once per `caller()` a program inlines and per state that reaches it.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn describe_caller() -> i32 {
    let task = unsafe { bpf_get_current_task_btf() } as *const u8;
    let Some(s) = SCRATCH.get_ptr_mut(SCRATCH_TRACEPOINT) else { return 1 };
    match describe(task, unsafe { &mut (*s).entry }) {
        Ok(()) => 0,
        Err(reason) => {
            count_map_error(reason);
            1
        }
    }
}

#[inline(always)]
fn fill(c: &mut CallerCache, stack: u64, tid: u32, e: &TaskEntry, generations: (u64, u64)) {
    // A copy the compiler may not take for a move between overlapping places: an assignment
    // became a call of memmove, whose byte loop the verifier walked in every program.
    unsafe { core::ptr::copy_nonoverlapping(e, &raw mut c.entry, 1) };
    c.stack = stack;
    c.tid = tid;
    (c.kernel_generation, c.daemon_generation) = generations;
}

/// Keeps this CPU's copy of the entry of a child just forked (kernel stack `stack`, entry `e`,
/// naming this CPU in its copies, written after the task map's generations were `generations`).
#[inline(always)]
pub fn remember_newborn(stack: u64, e: &TaskEntry, generations: (u64, u64)) {
    if let Some(c) = CALLER.get_ptr_mut(caller_slot::NEWBORN) {
        fill(unsafe { &mut *c }, stack, e.nr[0].tid, e, generations);
    }
}

/// A minimal entry for `task` (no loop: level, own namespace, host ids, own ids).
#[inline(always)]
fn describe(task: *const u8, e: &mut TaskEntry) -> Result<(), u32> {
    let pids = task_pids(Probe, task)?;
    let level = pids.level;
    e.level = level as u8;
    e.pidns = pidns_inum(Probe, ns_at(Probe, pids.thread_pid, level)?)?;
    let ns_slot = crate::maps::own_ns_slot(e.level, e.pidns);
    let c = container_of(task, level, e.pidns, ns_slot);
    e.container = c.container;
    e.slot = c.slot;
    e.flags = 0;
    e.start_time = 0;
    e.nr[0] = LevelIds { tid: nr_at(Probe, pids.thread_pid, 0)?, tgid: nr_at(Probe, pids.tgid_pid, 0)? };
    if level > 0 && (level as usize) < INLINE_LEVELS {
        let ids = LevelIds {
            tid: nr_at(Probe, pids.thread_pid, level)?,
            tgid: nr_at(Probe, pids.tgid_pid, level)?,
        };
        // Constant indices: older verifiers (6.1) lose a spilled index's bounds.
        match level {
            1 => e.nr[1] = ids,
            2 => e.nr[2] = ids,
            _ => e.nr[3] = ids,
        }
    }
    Ok(())
}

/// A task entry found while resolving, for the event (`entry` null: none).
#[derive(Clone, Copy)]
pub struct Found {
    pub tid: u32,
    pub entry: *const TaskEntry,
}

impl Found {
    pub const NONE: Found = Found { tid: 0, entry: core::ptr::null() };
    #[inline(always)]
    fn lookup(tid: u32) -> Found {
        match task_get(tid) {
            Some(entry) => Found { tid, entry },
            None => Found::NONE,
        }
    }
    #[inline(always)]
    pub fn is_some(&self) -> bool {
        !self.entry.is_null()
    }
    #[inline(always)]
    fn party(&self, visible: bool) -> Party {
        if self.entry.is_null() {
            Party::NONE
        } else {
            Party::new(self.tid, unsafe { (*self.entry).container }, visible)
        }
    }
}

/// Where a number was read: a level and that level's pid namespace.
#[derive(Clone, Copy)]
pub struct Level {
    pub level: u32,
    pub pidns: u32,
}

impl Level {
    pub const NONE: Level = Level { level: 0, pidns: 0 };
}

pub struct Resolved {
    pub res: Resolution,
    pub named: Found,
    /// The task the number names at an ancestor level (see Resolution::ancestor), and where.
    pub ancestor: Found,
    pub ancestor_at: Level,
}

/// Whether task `y` lives in the caller's own pid namespace and that namespace is not the
/// host's: containers there joined it on purpose (`--pid=container:X`, a pod sharing its process
/// namespace), so each sees the others' tasks as the kernel does. Containers sharing the host's
/// namespace (`--pid=host`) stay siblings.
#[inline(always)]
fn shares_namespace(c: &TaskEntry, y: &TaskEntry) -> bool {
    c.level > 0 && y.pidns == c.pidns
}

/// Whether the caller (entry `c`) can see task `y`: same container, a container of its own
/// joined namespace, or a namespace nested below the caller's.
#[inline(always)]
pub fn visible(c: &TaskEntry, y: &TaskEntry) -> bool {
    if y.container == c.container || shares_namespace(c, y) {
        return true;
    }
    if y.level <= c.level {
        return false;
    }
    match PIDNS.get_ptr(y.pidns) {
        Some(info) => unsafe { (*info).ancestors[c.level as usize & (ANCESTOR_SLOTS - 1)] == c.pidns },
        None => false,
    }
}

/// Whether task `x` of another container is in a container nested in the caller's: everything
/// is, for the host proper; nothing is, for a cgroup container of the host's namespace
/// (containers sharing it are siblings); for any other container, what lives in a namespace
/// below its own.
#[inline(always)]
fn nested(c: &TaskEntry, x: &TaskEntry) -> bool {
    if c.container == HOST_CONTAINER {
        true
    } else if is_cgroup_container(c.container) && c.level == 0 {
        false
    } else {
        visible(c, x)
    }
}

/// Resolves `n` for the caller `tid` (entry `c`): as a number of the caller's namespace, and as
/// a number of its ancestor namespaces. A number that is the caller's own tid in its namespace
/// names the caller itself (no lookup: kill(getpid()), raise(), sched_*(own tid) are the common
/// case); at the ancestor levels it is still looked up, for collisions.
#[inline(always)]
pub fn resolve(tid: u32, c: &TaskEntry, n: u32) -> Resolved {
    let (named, stale) = resolve_named(tid, c, n);
    let (named_nested, named_shared_namespace) = if named.is_some() {
        let x = unsafe { &*named.entry };
        let other = x.container != c.container;
        (other && nested(c, x), other && shares_namespace(c, x))
    } else {
        (false, false)
    };
    let mut r = Resolved {
        res: Resolution {
            named: named.party(true),
            named_nested,
            named_shared_namespace,
            named_stale: stale,
            ..Resolution::default()
        },
        named,
        ancestor: Found::NONE,
        ancestor_at: Level::NONE,
    };
    // A number of the caller's namespace released a moment ago: a race with the release, which
    // outranks what the number may name elsewhere.
    if !named.is_some() && !stale {
        r.res.released = released_lately(c.pidns, n);
    }
    // The initial namespace has no ancestor: its numbers are host numbers.
    if c.level > 0 && !r.res.released {
        let (y, at) = resolve_ancestors(tid, c, n, named);
        if y.is_some() {
            let visible = visible(c, unsafe { &*y.entry });
            r.res.ancestor = y.party(visible);
            r.res.ancestor_level = at.level;
            r.ancestor = y;
            r.ancestor_at = at;
        }
    }
    r
}

/// `n` read as a number of the caller's ancestor namespaces, nearest first (at most
/// ANCESTOR_CHECKS levels between the caller's and the host's, then the host's): the first task
/// found, or, when `named` exists, the first task other than it that the caller can see.
#[inline(always)]
fn resolve_ancestors(tid: u32, c: &TaskEntry, n: u32, named: Found) -> (Found, Level) {
    let accept = |y: &Found| !named.is_some() || (y.tid != named.tid && visible(c, unsafe { &*y.entry }));
    if c.level >= 2
        && let Some(info) = PIDNS.get_ptr(c.pidns)
    {
        for i in 1..=ANCESTOR_CHECKS {
            let Some(level) = (c.level as usize).checked_sub(i) else { break };
            if level == 0 {
                break;
            }
            let pidns = unsafe { (*info).ancestors[level & (ANCESTOR_SLOTS - 1)] };
            let y = at_level(pidns, n);
            if y.is_some() && accept(&y) {
                return (y, Level { level: level as u32, pidns });
            }
        }
    }
    // Host pid 1 is the host's init, for as long as the host runs: level 0, a task no caller
    // below the host can see (`visible`). Once the number names a task of the caller's
    // namespace (its init, for vpid 1: `kill -0 1` of a health check), the host's init cannot be
    // the other task it sees, and needs no lookup.
    let host_init_unseen = n == 1 && named.is_some();
    let y = if host_init_unseen { Found::NONE } else { host_pid(tid, c, n) };
    // A kernel thread is no task a number handed to a container can mean: the small numbers a
    // container's own tasks had name kernel threads on the host (a stale pid file read after a
    // restart), and that is no leak.
    if y.is_some() && accept(&y) && unsafe { (*y.entry).flags } & task_flags::KTHREAD == 0 {
        (y, Level { level: 0, pidns: host_pidns() })
    } else {
        (Found::NONE, Level::NONE)
    }
}

/// The live task numbered `n` in pid namespace `pidns` (not the host's).
#[inline(always)]
fn at_level(pidns: u32, n: u32) -> Found {
    let Some(v) = virt_get(VirtKey { pidns, nr: n }) else { return Found::NONE };
    let found = Found::lookup(v.host_tid);
    if found.is_some() && v.points_at(unsafe { &*found.entry }) { found } else { Found::NONE }
}

/// The task `n` names in the caller's namespace, and whether the number's reverse entry is
/// stale (names a task that is gone).
#[inline(always)]
fn resolve_named(tid: u32, c: &TaskEntry, n: u32) -> (Found, bool) {
    if c.level == 0 {
        return (host_pid(tid, c, n), false);
    }
    if own_inline(c).is_some_and(|ids| ids.tid == n) {
        return (Found { tid, entry: c }, false);
    }
    let Some(v) = virt_get(VirtKey { pidns: c.pidns, nr: n }) else {
        return (Found::NONE, false);
    };
    let found = Found::lookup(v.host_tid);
    if found.is_some() && v.points_at(unsafe { &*found.entry }) {
        (found, false)
    } else {
        (Found::NONE, true)
    }
}

/// The task `n` names as a host pid. Most numbers a container passes are no live host tid:
/// the tid filter answers for them without a lookup.
#[inline(always)]
fn host_pid(tid: u32, c: &TaskEntry, n: u32) -> Found {
    if n == tid {
        Found { tid, entry: c }
    } else if may_have_entry(n) {
        Found::lookup(n)
    } else {
        Found::NONE
    }
}

/// The ids of a task in its own namespace, when its entry holds them inline.
#[inline(always)]
fn own_inline(e: &TaskEntry) -> Option<LevelIds> {
    // Constant indices: older verifiers (6.1) lose a spilled index's bounds.
    match e.level {
        0 => Some(e.nr[0]),
        1 => Some(e.nr[1]),
        2 => Some(e.nr[2]),
        3 => Some(e.nr[3]),
        _ => None,
    }
}

/// Adds one to the crossing counter of (container, syscall, verdict), per CPU.
#[inline(always)]
pub fn count_crossing(slot: u32, syscall: u16, verdict: Verdict) {
    count_crossings(slot, syscall, verdict, 1);
}

/// Adds `n` to the crossing counter of (container, syscall, verdict), per CPU.
#[inline(always)]
pub fn count_crossings(slot: u32, syscall: u16, verdict: Verdict, n: u64) {
    let i = crossing_slot(syscall, verdict);
    if let (Some(p), Some(i)) = (COUNTS.get_ptr_mut(slot), crate::kernel::below(i, NSYSCALLS * NVERDICTS)) {
        unsafe { (*p).crossings[i] += n };
    } else {
        count_map_error(counter::map_error::CONTAINER_COUNTERS);
        count_n(counter::CROSSING_BASE + i as u32, n);
    }
}

/// Ids of a task in its own namespace.
#[inline(always)]
fn own_ids(tid: u32, e: &TaskEntry) -> (u32, u32) {
    if let Some(ids) = own_inline(e) {
        return (ids.tgid, ids.tid);
    }
    let level = e.level as usize;
    match DEEP.get_ptr(tid) {
        Some(d) => {
            let ids = unsafe { (*d).nr[(level - INLINE_LEVELS) & 31] };
            (ids.tgid, ids.tid)
        }
        None => (0, 0),
    }
}

#[inline(always)]
fn info(tid: u32, e: &TaskEntry) -> PartyInfo {
    let (vpid, vtid) = own_ids(tid, e);
    PartyInfo {
        host_pid: e.nr[0].tgid,
        host_tid: e.nr[0].tid,
        vpid,
        vtid,
        pidns: e.pidns,
        container: e.container,
    }
}

/// One crossing being reported.
pub struct Crossing {
    pub syscall: u16,
    pub direction: Direction,
    pub verdict: Verdict,
    pub value: i64,
}

/// Reports an anomaly on the ring buffer; a full ring buffer is counted, globally and for the
/// caller's container.
#[inline(always)]
pub fn report(x: &Crossing, caller_tid: u32, c: &TaskEntry, target: Found, also: Found, also_at: Level) {
    let r = AnomalyReport {
        value: x.value,
        syscall: x.syscall,
        direction: x.direction as u8,
        verdict: x.verdict as u8,
        slot: c.slot,
        target_tid: if target.is_some() { target.tid } else { 0 },
        also_tid: if also.is_some() { also.tid } else { 0 },
        also_level: also_at.level,
        also_pidns: also_at.pidns,
        caller: info(caller_tid, c),
    };
    // SAFETY: `r` is an AnomalyReport.
    unsafe { submit_anomaly(&raw const r) };
}

/// What `report` hands `submit_anomaly`: plain numbers.
#[repr(C)]
pub struct AnomalyReport {
    value: i64,
    syscall: u16,
    direction: u8,
    verdict: u8,
    /// The caller's counter slot, for a drop.
    slot: u32,
    /// The target's and `also`'s host tids (0: none).
    target_tid: u32,
    also_tid: u32,
    also_level: u32,
    also_pidns: u32,
    caller: PartyInfo,
}

/// Writes anomaly `r` to the ring buffer (counting a full one), describing its target and
/// `also` from their task entries. A global function for the verifier's sake: it is checked
/// once per program, not once per report site and per state that reaches it (the reports were
/// about a quarter of the instructions the verifier went through at load). So it takes plain
/// numbers and looks the entries up again by host tid: a task released in between is left out
/// of the record, as if not found. It answers 0.
///
/// # Safety
/// `r` is null or points at an `AnomalyReport` (the verifier checks the size).
#[unsafe(no_mangle)]
#[inline(never)]
pub unsafe extern "C" fn submit_anomaly(r: *const AnomalyReport) -> i32 {
    let Some(r) = (unsafe { r.as_ref() }) else { return 0 };
    let party = |tid: u32| -> Option<PartyInfo> {
        if tid == 0 {
            None
        } else if tid == r.caller.host_tid {
            Some(r.caller)
        } else {
            task_get(tid).map(|e| info(tid, unsafe { &*e }))
        }
    };
    let target = party(r.target_tid);
    let also = party(r.also_tid);
    let Some(mut slot) = EVENTS.reserve::<AnomalyEvent>(0) else {
        count_drop(counter::drop::RINGBUF_FULL_ANOMALY);
        if let Some(p) = COUNTS.get_ptr_mut(r.slot) {
            unsafe { (*p).ringbuf_drops += 1 };
        }
        return 0;
    };
    let ev = slot.as_mut_ptr();
    unsafe {
        (*ev).kind = event_kind::ANOMALY;
        (*ev).syscall = r.syscall;
        (*ev).direction = r.direction;
        (*ev).verdict = r.verdict;
        (*ev).value = r.value;
        (*ev).ts_ns = bpf_ktime_get_ns();
        (*ev).caller = r.caller;
        (*ev).flags = 0;
        (*ev).also_level = r.also_level;
        (*ev).also_pidns = r.also_pidns;
        (*ev).pad = 0;
        (*ev).target = PartyInfo::default();
        (*ev).also = PartyInfo::default();
        if let Some(t) = target {
            (*ev).target = t;
            (*ev).flags |= event_flags::HAS_TARGET;
        }
        if let Some(a) = also {
            (*ev).also = a;
            (*ev).flags |= event_flags::HAS_ALSO;
        } else if r.also_tid == 0 && r.also_pidns != 0 {
            // Where the number was read, for a record that names no task there. An `also`
            // released since it was found is left out with its level.
            (*ev).flags |= event_flags::HAS_READ_AT;
        }
        (*ev).comm = bpf_get_current_comm().unwrap_or([0; 16]);
    }
    slot.submit(0);
    0
}

/// A number naming one task, from the caller `tid` (entry `c`): judged, counted and reported.
#[inline(always)]
pub fn audit_task_number(syscall: u16, direction: Direction, n: i32, tid: u32, c: &TaskEntry) {
    // SAFETY: `c` is a live entry; the function reads its fields.
    unsafe { task_number(u32::from(syscall), direction as u32, n, tid, c) };
}

/// `audit_task_number` as a global function (BTF linkage global, not inlined), for the same
/// reason as `submit_anomaly`: the verifier checks it once per program, not once per call site
/// and per state that reaches it (a program with several numbers to judge, fcntl's or the IPC
/// ids', went through the resolution and its report once per site). Plain numbers and the
/// caller's entry, which it may only read; it answers 0. `task_arg`, the audited syscalls' hot
/// path, judges inline instead.
///
/// # Safety
/// `c` is null or points at a `TaskEntry` (the verifier checks the size).
#[unsafe(no_mangle)]
#[inline(never)]
pub unsafe extern "C" fn task_number(
    syscall: u32,
    direction: u32,
    n: i32,
    tid: u32,
    c: *const TaskEntry,
) -> i32 {
    let Some(c) = (unsafe { c.as_ref() }) else { return 0 };
    let direction = match direction {
        0 => Direction::In,
        1 => Direction::Out,
        _ => Direction::Lsm,
    };
    judge_task_number(syscall as u16, direction, n, tid, c);
    0
}

#[inline(always)]
fn judge_task_number(syscall: u16, direction: Direction, n: i32, tid: u32, c: &TaskEntry) -> Verdict {
    if n <= 0 {
        // Not a task number (negative) or nothing (0 where 0 is not "self").
        count_crossing(c.slot, syscall, Verdict::Unknown);
        if reported(Verdict::Unknown) {
            let x = Crossing { syscall, direction, verdict: Verdict::Unknown, value: i64::from(n) };
            report(&x, tid, c, Found::NONE, Found::NONE, Level::NONE);
        }
        return Verdict::Unknown;
    }
    let r = resolve(tid, c, n as u32);
    let verdict = classify(c.container, &r.res);
    count_crossing(c.slot, syscall, verdict);
    if verdict != Verdict::Ok && reported(verdict) {
        let (also, at) = match verdict {
            Verdict::Leak | Verdict::Collision => (r.ancestor, r.ancestor_at),
            _ => (Found::NONE, Level::NONE),
        };
        report(&Crossing { syscall, direction, verdict, value: i64::from(n) }, tid, c, r.named, also, at);
    }
    verdict
}

/// The number `n` of a /proc path (`/proc/N/...`), read in the procfs of pid namespace
/// `procfs_pidns` (0: the caller's own, as far as anyone knows). In the caller's own namespace it
/// is judged like any argument; in another namespace's procfs it names what it names THERE, and
/// that the caller reads another namespace's numbers is the finding.
///
/// A global function (BTF linkage global, not inlined): the verifier checks it once, on its own,
/// instead of once per call site and per state the path parsing before it leaves (inlined twice
/// after that parsing, Debian 6.1's verifier gave up on the /proc path program: "BPF program is
/// too large", 1M instructions processed). Its arguments are plain numbers, as a global
/// function's must be; it answers 0.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn procfs_number(syscall: u32, n: u32, procfs_pidns: u32) -> i32 {
    judge_procfs_number(syscall as u16, n, procfs_pidns);
    0
}

#[inline(always)]
fn judge_procfs_number(syscall: u16, n: u32, procfs_pidns: u32) {
    let Some((tid, c)) = caller() else { return };
    let c = unsafe { &*c };
    if procfs_pidns == 0 || procfs_pidns == c.pidns {
        // Inline, not through task_number: procfs_number is a global function already, and a
        // third frame (enter_path, procfs_number, task_number, submit_anomaly) is more stack
        // than 6.12's and 6.1's verifiers allow ("combined stack size of 4 calls is 608").
        judge_task_number(syscall, Direction::In, n as i32, tid, c);
        return;
    }
    let (named, level) = if procfs_pidns == host_pidns() {
        (host_pid(tid, c, n), 0)
    } else {
        let level = PIDNS.get_ptr(procfs_pidns).map_or(0, |i| unsafe { (*i).level });
        (at_level(procfs_pidns, n), level)
    };
    let visible = named.is_some() && visible(c, unsafe { &*named.entry });
    let res = Resolution { named: named.party(visible), foreign_procfs: true, ..Resolution::default() };
    let verdict = classify(c.container, &res);
    count_crossing(c.slot, syscall, verdict);
    if reported(verdict) {
        let x = Crossing { syscall, direction: Direction::In, verdict, value: i64::from(n) };
        report(&x, tid, c, named, Found::NONE, Level { level, pidns: procfs_pidns });
    }
}

/// An argument naming a task, where 0 means the caller itself.
#[inline(always)]
pub fn task_arg(at: Stack, syscall: u16, n: i32, zero_is_self: bool) {
    let Some((tid, c)) = caller_on(at) else { return };
    let c = unsafe { &*c };
    if n == 0 && zero_is_self {
        count_crossing(c.slot, syscall, Verdict::Ok);
        return;
    }
    // Inline, not through task_number: this is the hot path of the audited syscalls (kill and
    // the other task arguments), and a BPF call there cost kill(self, 0) ~10 ns.
    judge_task_number(syscall, Direction::In, n, tid, c);
}

/// kill/wait-style argument: 0 and < -1 are process groups, -1 is "any", > 0 one task.
#[inline(always)]
pub fn pid_arg(at: Stack, syscall: u16, n: i32) {
    match pidvirt_common::audit::special_pid(n) {
        Some(v) => group(at, syscall, v),
        None => task_arg(at, syscall, n, false),
    }
}

/// A crossing that names a group (or everything): counted, never reported.
#[inline(always)]
pub fn group(at: Stack, syscall: u16, v: Verdict) {
    let Some((_, c)) = caller_on(at) else { return };
    count_crossing(unsafe { (*c).slot }, syscall, v);
}

/// A returned number checked against the truth read from the task structures.
#[inline(always)]
pub fn returned(at: Stack, syscall: u16, value: i64, truth: Result<i64, u32>) {
    let Some((tid, c)) = caller_on(at) else { return };
    let c = unsafe { &*c };
    let truth = match truth {
        Ok(t) => t,
        Err(reason) => {
            count_map_error(reason);
            return;
        }
    };
    let verdict = pidvirt_common::audit::check_return(value, truth);
    count_crossing(c.slot, syscall, verdict);
    if verdict != Verdict::Ok && reported(verdict) {
        report_mismatch(syscall, value, truth, tid, c);
    }
}

/// A returned id of the caller itself (getpid: `tgid`, gettid/set_tid_address: tid) against its
/// ids recorded from the task structures at fork/exec: one map lookup, no kernel read.
#[inline(always)]
pub fn returned_own(at: Stack, syscall: u16, value: i64, tgid: bool) {
    let Some((tid, c)) = caller_on(at) else { return };
    let c = unsafe { &*c };
    let (vpid, vtid) = own_ids(tid, c);
    let truth = i64::from(if tgid { vpid } else { vtid });
    let verdict = pidvirt_common::audit::check_return(value, truth);
    count_crossing(c.slot, syscall, verdict);
    if verdict != Verdict::Ok && reported(verdict) {
        report_mismatch(syscall, value, truth, tid, c);
    }
}

#[inline(always)]
fn report_mismatch(syscall: u16, value: i64, truth: i64, tid: u32, c: &TaskEntry) {
    let Some(mut slot) = EVENTS.reserve::<AnomalyEvent>(0) else {
        count_drop(counter::drop::RINGBUF_FULL_ANOMALY);
        return;
    };
    let ev = slot.as_mut_ptr();
    unsafe {
        *ev = AnomalyEvent::default();
        (*ev).kind = event_kind::ANOMALY;
        (*ev).syscall = syscall;
        (*ev).direction = Direction::Out as u8;
        (*ev).verdict = Verdict::Mismatch as u8;
        (*ev).value = value;
        (*ev).ts_ns = bpf_ktime_get_ns();
        (*ev).caller = info(tid, c);
        (*ev).also.vpid = truth as u32;
        (*ev).comm = bpf_get_current_comm().unwrap_or([0; 16]);
    }
    slot.submit(0);
}

/// A returned number naming a task (fork's child, wait's reaped child): it must name a task in
/// the caller's namespace; if none, its entry is already gone (`stale`). Answers the caller's
/// counter slot and the task named.
#[inline(always)]
pub fn returned_task(at: Stack, syscall: u16, value: i64) -> (u32, Found) {
    let Some((tid, c)) = caller_on(at) else { return (0, Found::NONE) };
    let c = unsafe { &*c };
    if value == 0 {
        // fork/clone in the child.
        count_crossing(c.slot, syscall, Verdict::Ok);
        return (c.slot, Found::NONE);
    }
    // Only the named task decides; the host-pid reading is looked up for the report alone.
    // A fork's child was most likely just recorded on this CPU: its copy names it.
    let named = match newborn_named(c, value, syscall) {
        Some(found) => found,
        None => resolve_named(tid, c, value as u32).0,
    };
    // A child that already ended and was released (a short-lived thread, on a busy host) was
    // named rightly when it was made: a race with its release, not a missed translation.
    let verdict = if named.is_some() {
        Verdict::Ok
    } else if released_lately(c.pidns, value as u32) {
        Verdict::Released
    } else {
        Verdict::Stale
    };
    count_crossing(c.slot, syscall, verdict);
    if verdict != Verdict::Ok && reported(verdict) {
        let x = Crossing { syscall, direction: Direction::Out, verdict, value };
        let host = Level { level: 0, pidns: host_pidns() };
        report(&x, tid, c, Found::NONE, host_pid(tid, c, value as u32), host);
    }
    (c.slot, named)
}

/// The child a fork on this CPU just recorded (CALLER's newborn copy, still valid), if `value`,
/// a fork's return to caller `c`, is its number: same namespace, same number. Only for fork
/// returns: the copy's flags are not kept up to date, and a number passed IN must be judged
/// on the task map as it is now.
#[inline(always)]
fn newborn_named(c: &TaskEntry, value: i64, syscall: u16) -> Option<Found> {
    if !matches!(syscall, sys::FORK | sys::VFORK | sys::CLONE | sys::CLONE3) {
        return None;
    }
    let n = unsafe { &*CALLER.get_ptr(caller_slot::NEWBORN)? };
    let valid = (n.kernel_generation, n.daemon_generation) == tasks_generation()
        && n.entry.level == c.level
        && n.entry.pidns == c.pidns
        && own_inline(&n.entry).is_some_and(|ids| i64::from(ids.tid) == value);
    valid.then_some(Found { tid: n.tid, entry: &raw const n.entry })
}

// Keeps the global fallback region in range.
const _: () = assert!(counter::CROSSING_BASE as usize + NSYSCALLS * NVERDICTS <= counter::SLOTS as usize);

// ---- pids inside structures (issue 15) ----

/// A number the kernel handed the caller inside a structure (a socket's peer, a lock's holder,
/// a signal's sender, a tty's group, ...): judged like an argument, in the caller's namespace
/// and at its ancestor levels (the kernel translates most of these, so `ok` is the rule; a
/// number it did not translate, or a task gone since, is not).
#[inline(always)]
pub fn handed_out(syscall: u16, n: i32) {
    let Some((tid, c)) = caller() else { return };
    audit_task_number(syscall, Direction::Out, n, tid, unsafe { &*c });
}

/// The kernel handed the caller 0 for a task that has no number in the caller's namespace (its
/// own silent translation failure): `invisible`. `host`: that task's host tid where the
/// programs know it (the record's `also`, read at level 0), else 0.
#[inline(always)]
pub fn invisible(syscall: u16, direction: Direction, host: u32) {
    zero_handed_out(syscall, direction, host, Verdict::Invisible);
}

/// The kernel handed the caller 0 for a signal's sender (`si_pid`): it zeroes it for a sender of
/// an ancestor namespace only (send_signal_locked), the host or a parent namespace signalling
/// into the caller's, as a runtime stopping its container does. The kernel's own model, like an
/// action on a nested namespace: counted `nested`, not `invisible`.
#[inline(always)]
pub fn sender_of_an_ancestor(syscall: u16) {
    zero_handed_out(syscall, Direction::Out, 0, Verdict::Nested);
}

/// A 0 the kernel handed the caller for a task it cannot see, under `verdict`.
#[inline(always)]
fn zero_handed_out(syscall: u16, direction: Direction, host: u32, verdict: Verdict) {
    let Some((tid, c)) = caller() else { return };
    let c = unsafe { &*c };
    count_crossing(c.slot, syscall, verdict);
    if reported(verdict) {
        let also = if host != 0 && may_have_entry(host) { Found::lookup(host) } else { Found::NONE };
        // The level `also` was read at; none without it (no `read_at` in the record: the 0 was
        // read in the caller's own namespace).
        let at = Level { level: 0, pidns: if also.is_some() { host_pidns() } else { 0 } };
        let x = Crossing { syscall, direction, verdict, value: 0 };
        report(&x, tid, c, Found::NONE, also, at);
    }
}

/// The child a fork-family call of caller `c` (tid `tid`) returned as `value`: its host tid and
/// entry (none if its entry is gone).
#[inline(always)]
pub fn child_named(tid: u32, c: &TaskEntry, value: i64) -> Found {
    resolve_named(tid, c, value as u32).0
}
