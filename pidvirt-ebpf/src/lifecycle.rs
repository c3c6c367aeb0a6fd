//! Task lifecycle: fork, exec, exit, free keep the task and reverse maps in step with the kernel.
//!
//! - fork: the CHILD task (argument 1) is read, never `current` (the parent).
//! - exec: a non-leader thread that execs takes its leader's pid (de_thread/exchange_tids): the
//!   entry under its old tid is forgotten and the task is recorded under its new tid.
//! - exit: the entry is only marked EXITED: a zombie keeps its pid until it is reaped, and
//!   wait4/kill still name it.
//! - free: the entry goes, if it still describes this task (same start time): a pid may have been
//!   recycled between the kernel freeing the pid and this RCU-delayed event.
//!
//! Every argument of these tracepoints is a BTF-typed task pointer: the task structures are read
//! with direct loads ([`Direct`]), not helper calls.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, seq_file},
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_map_lookup_percpu_elem, bpf_seq_write},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use pidvirt_common::{
    CallerCache, DEEP_LEVELS, INLINE_LEVELS, MAX_LEVELS, MAX_PID_NS_LEVEL, MigrateEvent, PidnsEvent,
    TaskComm, TaskEntry, VirtKey, VirtValue, caller_slot, copies, counter, event_kind, pidns_source,
    same_start, slots, task_flags,
};

use crate::{
    kernel::{Direct, Kmem, Probe, below, off, offsets_ready},
    maps::{
        CALLER, COUNTS, CpuState, DEEP, EVENTS, FREE_SLOTS, PIDNS, SCRATCH, SCRATCH_ITERATOR,
        SCRATCH_STATE_HELD, SCRATCH_TRACEPOINT, Scratch, TaskInsertError, count_drop, count_lifecycle,
        count_map_error, host_pidns, mark_tid, may_have_entry, note_released, own_ns_slot, pidns_slot,
        take_slot, task_get, task_insert, task_remove, tasks_changed, tasks_generation, unmark_tid,
        virt_forget, virt_insert,
    },
    task::{container_of, read_task},
};

#[inline(always)]
fn tick_ns() -> u64 {
    u64::from(off!(tick_ns))
}

#[btf_tracepoint]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    if !offsets_ready() {
        return 0;
    }
    count_lifecycle(counter::lifecycle::FORK);
    let child: *const u8 = ctx.arg(1);
    // Read before the entry is written: a copy is never labelled newer than its content.
    let generations = tasks_generation();
    // A preemptible program switched out in the middle of its run here may be using the
    // scratch slot and the newborn copy: this fork keeps off both.
    let held = CpuState::held();
    let stack = if held { 0 } else { Direct.read::<u64>(child, off!(task_stack)).unwrap_or(0) };
    let here = if stack != 0 { copies::bit(unsafe { bpf_get_smp_processor_id() }) } else { 0 };
    let scratch = if held { SCRATCH_STATE_HELD } else { SCRATCH_TRACEPOINT };
    match record_task(Direct, child, scratch, here) {
        // The child's first crossing (fork's 0) then needs no lookup.
        Ok(s) if here != 0 => crate::audit::remember_newborn(stack, unsafe { &(*s).entry }, generations),
        Ok(_) => {}
        Err(reason) => count_map_error(reason),
    }
    0
}

#[btf_tracepoint]
pub fn sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    if !offsets_ready() {
        return 0;
    }
    count_lifecycle(counter::lifecycle::EXEC);
    let task: *const u8 = ctx.arg(0);
    let old_tid: i32 = ctx.arg(1);
    let Ok(tid) = Direct.read::<u32>(task, off!(task_pid)) else {
        count_map_error(counter::map_error::KERNEL_READ);
        return 0;
    };
    if old_tid as u32 != tid {
        // A non-leader thread exec'd: it now carries its leader's pid, ids and start time (the
        // leader's entry, which describes it exactly), and its own old entry goes.
        if let Some(old) = task_get(old_tid as u32) {
            let old = unsafe { *old };
            // Its old tid names nothing from now on.
            forget(old_tid as u32, &old, unsafe { bpf_ktime_get_ns() });
            // The task lives on under another tid: copies of its old entry must go.
            tasks_changed();
        }
    }
    match task_get(tid) {
        Some(e) => unsafe {
            // The entry under the leader's tid now describes a live exec'd thread: what the old
            // leader's exit marked on it goes (and exec makes no kernel thread, as the kernel's
            // own clears PF_KTHREAD).
            let exit_marks =
                task_flags::EXITED | task_flags::GROUP_DEAD | task_flags::TRACED | task_flags::KTHREAD;
            (*e).flags = ((*e).flags & !exit_marks) | task_flags::EXECED;
        },
        None => count_map_error(counter::map_error::TASK_MISSING),
    }
    0
}

#[btf_tracepoint]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> i32 {
    if !offsets_ready() {
        return 0;
    }
    count_lifecycle(counter::lifecycle::EXIT);
    let task: *const u8 = ctx.arg(0);
    let Ok((tid, start)) = tid_and_start(task) else {
        count_map_error(counter::map_error::KERNEL_READ);
        return 0;
    };
    let tgid: u32 = Direct.read(task, off!(task_tgid)).unwrap_or(0);
    // do_exit() decrements signal->live before this tracepoint: 0 once the group's last
    // thread is exiting (a read that fails counts as alive: nothing is concluded from it).
    let group_dead = Direct
        .read_ptr(task, off!(task_signal))
        .and_then(|signal| Direct.read::<u32>(signal, off!(signal_live)))
        .is_ok_and(|live| live == 0);
    if let Some(e) = task_get(tid) {
        let e = unsafe { &mut *e };
        let own = same_start(e.start_time, e.flags, start, tick_ns());
        if own {
            // Before its copies go: an EXITED entry is not copied again.
            e.flags |= task_flags::EXITED;
        }
        // A stale entry under this tid (its task's free missed) may have been copied for this
        // task too: its copies go as well.
        let copies = core::mem::take(&mut e.copies);
        forget_copies(task, copies);
        if own && tid == tgid {
            // A ptraced leader's exit may be reported to its tracer first (a read that fails
            // counts as traced).
            if Direct.read::<u32>(task, off!(task_ptrace)).is_ok_and(|p| p == 0) {
                e.flags &= !task_flags::TRACED;
            } else {
                e.flags |= task_flags::TRACED;
            }
            if group_dead {
                e.flags |= task_flags::GROUP_DEAD;
            }
        }
    } else {
        // An exiting task without its entry may still have copies (a daemon that removed its
        // entry, a stale seed): every copy goes.
        count_lifecycle(counter::lifecycle::EXIT_UNTRACKED);
        tasks_changed();
    }
    if group_dead && tid != tgid {
        // The last thread of a group whose leader exited before it.
        if let Some(leader) = task_get(tgid) {
            unsafe { (*leader).flags |= task_flags::GROUP_DEAD };
        }
    }
    0
}

/// Clears the per-CPU copies of exiting `task`'s entry on the CPUs `copies` names
/// (pidvirt_common::CallerCache): its kernel stack is reused once it is freed, and a copy found
/// by that stack would then describe another task.
#[inline(always)]
fn forget_copies(task: *const u8, copies: u16) {
    if copies == 0 {
        return;
    }
    let Ok(stack) = Direct.read::<u64>(task, off!(task_stack)) else {
        tasks_changed();
        return;
    };
    let here = unsafe { bpf_get_smp_processor_id() };
    let possible = off!(possible_cpus);
    if possible <= copies::BITS && copies == copies::bit(here) {
        // The common case: the copies are this CPU's only.
        forget_copy_on(here, here, stack);
        return;
    }
    // CPU by CPU (the verifier knows how many): a loop over the mask's bits is walked for every
    // bit whatever the machine.
    let mut cpu = 0;
    while cpu < possible && cpu < MAX_CPUS {
        if copies & copies::bit(cpu) != 0 {
            forget_copy_on(cpu, here, stack);
        }
        cpu += 1;
    }
    if possible > MAX_CPUS {
        tasks_changed();
    }
}

/// Clears CPU `cpu`'s copies of the task whose kernel stack is `stack` (`here`: this CPU).
#[inline(always)]
fn forget_copy_on(cpu: u32, here: u32, stack: u64) {
    for slot in [caller_slot::CALLER, caller_slot::NEWBORN] {
        let c = if cpu == here {
            CALLER.get_ptr_mut(slot)
        } else {
            let p = unsafe {
                bpf_map_lookup_percpu_elem(
                    (&raw const CALLER).cast_mut().cast(),
                    (&raw const slot).cast(),
                    cpu,
                )
            };
            (!p.is_null()).then_some(p.cast::<CallerCache>())
        };
        if let Some(c) = c
            && unsafe { (*c).stack } == stack
        {
            unsafe { (*c).stack = 0 };
        }
    }
}

/// The most CPUs whose copies a task's exit looks at one by one (a bound for the verifier); on a
/// machine with more possible CPUs, the exit of a task with copies makes every copy invalid
/// (the task map's generation).
const MAX_CPUS: u32 = 1024;

/// A wait4 of a task of the container with counter slot `slot` returned the pid of task
/// `tid` (entry `entry`): if the kernel released that process (a whole group that exited
/// untraced: task_flags::reaped_by_wait), its entries go now, while the lookups that found it
/// have their lines in cache, rather than at its free (RCU-delayed, cold), whose program then
/// finds the tid's bit clear and reads no more of the task.
#[inline(always)]
pub fn forget_reaped(slot: u32, tid: u32, entry: *const TaskEntry) {
    if entry.is_null() {
        return;
    }
    let e = unsafe { *entry };
    if task_flags::reaped_by_wait(e.flags) {
        count_lifecycle(counter::lifecycle::REAPED);
        if let Some(c) = COUNTS.get_ptr_mut(slot) {
            unsafe { (*c).reaped += 1 };
        }
        forget(tid, &e, unsafe { bpf_ktime_get_ns() });
    }
}

#[btf_tracepoint]
pub fn sched_process_free(ctx: BtfTracePointContext) -> i32 {
    if !offsets_ready() {
        return 0;
    }
    count_lifecycle(counter::lifecycle::FREE);
    let task: *const u8 = ctx.arg(0);
    let Ok(tid) = Direct.read::<u32>(task, off!(task_pid)) else {
        count_map_error(counter::map_error::KERNEL_READ);
        return 0;
    };
    // No entry under this tid (the wait4 that reaped the task removed it, and no task took the
    // number since): nothing to look up, and no second read of the task, which an RCU grace
    // period after its release is rarely in cache.
    if !may_have_entry(tid) {
        return 0;
    }
    let Ok(start) = Direct.read::<u64>(task, off!(task_start_time)) else {
        count_map_error(counter::map_error::KERNEL_READ);
        return 0;
    };
    if let Some(e) = task_get(tid) {
        let e = unsafe { *e };
        if same_start(e.start_time, e.flags, start, tick_ns()) {
            forget(tid, &e, unsafe { bpf_ktime_get_ns() });
        }
    }
    0
}

#[inline(always)]
fn tid_and_start(task: *const u8) -> Result<(u32, u64), i32> {
    Ok((Direct.read(task, off!(task_pid))?, Direct.read(task, off!(task_start_time))?))
}

/// Reads `task` and writes its entry, deep levels and reverse entries; registers pid
/// namespaces seen for the first time. Answers the scratch space holding the entry written.
#[inline(always)]
pub fn record_task<K: Kmem>(k: K, task: *const u8, scratch: u32, copies: u16) -> Result<*const Scratch, u32> {
    let s = SCRATCH.get_ptr_mut(scratch).ok_or(counter::map_error::SCRATCH)?;
    let s = unsafe { &mut *s };
    read_task(k, task, s)?;
    s.entry.copies = copies;
    // Loaded again from the map value (volatile): the verifier then knows nothing of the level
    // here, so the paths out of read_task's loops (one per level) become one state, and what
    // follows is verified once, not once per level.
    let level = u32::from(unsafe { core::ptr::read_volatile(&raw const s.entry.level) });
    let tid = s.entry.nr[0].tid;

    // The container, by the counter slot of the task's own namespace. A namespace seen for the
    // first time is registered, with those of its ancestors that are not (a namespace is only
    // ever registered after its ancestors, so a known one needs nothing more). A record whose
    // init is another task is the record of a namespace that ended and left its inode to this
    // one: replaced.
    let ns_slot = if level == 0 {
        slots::HOST
    } else {
        let reaper = unsafe { core::ptr::read_volatile(&raw const s.reaper_start) };
        match PIDNS.get_ptr_mut(s.entry.pidns) {
            Some(info) => {
                let info = unsafe { &mut *info };
                let seeded = if info.source == pidns_source::SEED { task_flags::SEEDED } else { 0 };
                if reaper == 0 || same_start(info.reaper_start, seeded, reaper, tick_ns()) {
                    info.slot
                } else if info.reaper_start == 0 {
                    // Registered as an ancestor of a task seen first: its init unknown until now.
                    info.reaper_start = reaper;
                    info.slot
                } else {
                    count_lifecycle(counter::lifecycle::PIDNS_REUSE);
                    replace_own(s, scratch, level as usize, tid, reaper)
                }
            }
            None => register_chain(s, scratch, level as usize, tid, reaper),
        }
    };
    let c = container_of(task, level, s.entry.pidns, ns_slot);
    s.entry.container = c.container;
    s.entry.slot = c.slot;

    // The common case: the tid has no entry (its front slot is free), and nobody can hold a copy
    // of an entry that did not exist: no generation bump.
    if let Err(e) = task_insert(tid, &s.entry, true) {
        if matches!(e, TaskInsertError::Full) {
            return Err(counter::map_error::TASK_INSERT);
        }
        // An entry is there: the same task (seeded from /proc, or recorded by the iterator
        // while the fork program ran), or a stale one (its task's free not seen yet, or lost),
        // which is dropped with its reverse entries so that the new task inherits none of it.
        // Before this task's own reverse entries are written: they may carry the same keys.
        if let Some(old) = task_get(tid) {
            let old = unsafe { *old };
            if !same_start(old.start_time, old.flags, s.entry.start_time, tick_ns()) {
                count_lifecycle(counter::lifecycle::PID_REUSE);
                // A task gone long ago (its free was missed): not a release of a moment ago.
                forget(tid, &old, 0);
            }
        }
        task_insert(tid, &s.entry, false).map_err(|_| counter::map_error::TASK_INSERT)?;
        tasks_changed();
    }
    mark_tid(tid);
    // Reverse entries for every level.
    for i in 1..MAX_LEVELS {
        if i as u32 > level {
            break;
        }
        let (Some(ids), Some(&ns)) = (s.ids.get(i), s.ns.get(i)) else {
            break;
        };
        if virt_insert(VirtKey { pidns: ns, nr: ids.tid }, VirtValue::of(&s.entry)).is_err() {
            count_map_error(counter::map_error::VIRT_INSERT);
        }
    }
    if level as usize >= INLINE_LEVELS && DEEP.insert(tid, &s.deep, 0).is_err() {
        count_map_error(counter::map_error::DEEP_INSERT);
    }
    Ok(s)
}

/// Registers the namespaces of the task in `s`, from level 1 to its own `level`, that have no
/// record yet; answers the slot of the task's own namespace.
#[inline(always)]
fn register_chain(s: &mut Scratch, scratch: u32, level: usize, tid: u32, reaper: u64) -> u32 {
    // A namespace's ancestors are this task's namespaces up to its level (the entries above a
    // namespace's own level are not read). One straight copy, not a loop: the verifier then has
    // nothing to walk through 33 times.
    let (ancestors, ns) = (&mut s.pidns.ancestors, &s.ns);
    ancestors[..MAX_LEVELS].copy_from_slice(ns);
    // Ancestors without a record first, silently (the daemon reads every record from the map
    // when it answers). The loop's body is kept small and carries nothing from one level to the
    // next: the verifier walks it once per level, and its states then stay alike and are pruned.
    for i in 1..MAX_LEVELS {
        if i >= level {
            break;
        }
        let Some(&ns) = s.ns.get(i) else { break };
        if PIDNS.get_ptr(ns).is_none() {
            let _ = insert_pidns(scratch, i, tid, 0, false);
        }
    }
    // The task's own namespace, announced on the ring buffer.
    let Some(slot) = insert_pidns(scratch, level, tid, reaper, false) else {
        // Another CPU registered it first.
        return pidns_slot(s.entry.pidns);
    };
    announce(s, level, tid, reaper, false);
    slot
}

/// Replaces the stale record of the task's own namespace (a namespace that ended left it its
/// inode) with a new one and a new counter slot, and announces it; the daemon retires the old
/// namespace's container and counters. Its ancestors' records stay (they live: they hold it).
#[inline(always)]
fn replace_own(s: &mut Scratch, scratch: u32, level: usize, tid: u32, reaper: u64) -> u32 {
    let (ancestors, ns) = (&mut s.pidns.ancestors, &s.ns);
    ancestors[..MAX_LEVELS].copy_from_slice(ns);
    let Some(slot) = insert_pidns(scratch, level, tid, reaper, true) else {
        return pidns_slot(s.entry.pidns);
    };
    announce(s, level, tid, reaper, true);
    slot
}

/// Tells the daemon about the task's own namespace, just registered.
#[inline(always)]
fn announce(s: &Scratch, level: usize, tid: u32, reaper: u64, replaced: bool) {
    match EVENTS.reserve::<PidnsEvent>(0) {
        Some(mut ev) => {
            ev.write(PidnsEvent {
                kind: event_kind::PIDNS,
                pidns: s.entry.pidns,
                level: level as u32,
                parent: s.pidns.parent,
                first_tid: tid,
                replaced: u32::from(replaced),
                ts_ns: unsafe { bpf_ktime_get_ns() },
                reaper_start: reaper,
            });
            ev.submit(0);
        }
        None => count_drop(counter::drop::RINGBUF_FULL_LIFECYCLE),
    }
}

/// Writes the record of the namespace at `level` of the task in scratch space `scratch` (its
/// ancestors are `ns[..level]`, already in `pidns.ancestors` there; its init started at `reaper`,
/// 0 if unknown) with a new counter slot; answers the slot, or None where a record was there
/// already (unless `replace`).
#[inline(always)]
fn insert_pidns(scratch: u32, level: usize, tid: u32, reaper: u64, replace: bool) -> Option<u32> {
    u32::try_from(pidns_record(scratch, level as u32, tid, reaper, u32::from(replace))).ok()
}

/// `insert_pidns` as a global function (BTF linkage global, not inlined): register_chain calls
/// it in a loop over the levels, which the verifier walks once per level; the record's writes,
/// the counter slot and the map calls are then checked once per program, not in each iteration.
/// It takes the index of the task's scratch space, not a pointer to it: 6.1's verifier refuses
/// a global function's memory argument as a map update's value. The look-up finds the caller's
/// own per-CPU copy (programs run with migration disabled, the task iterator's too). Answers the
/// slot, or -1 for None.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn pidns_record(scratch: u32, level: u32, tid: u32, reaper: u64, replace: u32) -> i64 {
    let Some(s) = SCRATCH.get_ptr_mut(scratch) else { return -1 };
    let s = unsafe { &mut *s };
    write_pidns(s, level as usize, tid, reaper, replace != 0).map_or(-1, i64::from)
}

#[inline(always)]
fn write_pidns(s: &mut Scratch, level: usize, tid: u32, reaper: u64, replace: bool) -> Option<u32> {
    // Checked on the very registers that index (6.1's verifier loses a spilled index's bounds).
    let (Some(own), Some(up)) = (below(level, MAX_LEVELS), below(level.wrapping_sub(1), MAX_LEVELS)) else {
        return None;
    };
    let (ns, parent) = (s.ns[own], s.ns[up]);
    let slot = take_slot();
    let info = &mut s.pidns;
    info.level = level as u32;
    info.first_tid = tid;
    info.source = pidns_source::KERNEL;
    info.slot = slot;
    info.pad = 0;
    info.parent = parent;
    info.reaper_start = reaper;
    // BPF_NOEXIST: two CPUs may race to register the same namespace; one wins, the other gives
    // its slot back. A stale record goes first (the first task of the new namespace, its init,
    // replaces it; a task the iterator records meanwhile finds the new record or loses the race
    // the same way).
    if replace {
        let _ = PIDNS.remove(ns);
    }
    if PIDNS.insert(ns, &s.pidns, u64::from(BPF_NOEXIST)).is_err() {
        if slot >= slots::FIRST_FREE {
            let _ = FREE_SLOTS.push(slot, 0);
        }
        return None;
    }
    Some(slot)
}

/// Removes the entry of `tid` (whose content is `e`), its deep levels, and the reverse entries
/// that still point at it. The namespace of the task's own level is in its entry; those of the
/// levels between come from its namespace's record (the task's `struct pid` is already detached
/// at free time). All indices are constants per loop iteration, which the verifier can check.
///
/// `released_ns`, when not 0, is when the task's numbers stopped naming it (reaped, freed, or a
/// thread's old tid after its exec): each is noted in the record of released pids, so that a
/// wait or kill racing the release is judged `released`.
///
/// No generation bump: a copy of the entry (pidvirt_common::CallerCache) is only used by the
/// task it describes, matched by address AND start time, and this task is gone (free) or was
/// replaced (a stale entry). A caller that removes the entry of a task that lives on bumps.
#[inline(always)]
fn forget(tid: u32, e: &TaskEntry, released_ns: u64) {
    let level = e.level as usize;
    if released_ns != 0 {
        note_released(host_pidns(), e.nr[0].tid, released_ns);
    }
    let deep = if level >= INLINE_LEVELS { DEEP.get_ptr(tid) } else { None };
    // The task's own level: its namespace is in the entry (the common case, a task one level
    // down, needs nothing else).
    let own = match level {
        0 => None,
        1 => Some(e.nr[1].tid),
        2 => Some(e.nr[2].tid),
        3 => Some(e.nr[3].tid),
        _ => match (deep, below(level - INLINE_LEVELS, DEEP_LEVELS)) {
            (Some(d), Some(j)) => Some(unsafe { (*d).nr[j].tid }),
            _ => None,
        },
    };
    if let Some(nr) = own {
        virt_forget(VirtKey { pidns: e.pidns, nr }, tid);
        if released_ns != 0 {
            note_released(e.pidns, nr, released_ns);
        }
    }
    // The levels between: their namespaces come from the namespace's record.
    if level > 1 {
        match PIDNS.get_ptr(e.pidns) {
            Some(info) => {
                for i in 1..MAX_LEVELS {
                    if i >= level {
                        break;
                    }
                    let ns = unsafe { (*info).ancestors[i] };
                    let nr = if i < INLINE_LEVELS {
                        e.nr[i].tid
                    } else {
                        match deep {
                            Some(d) => unsafe { (*d).nr[i - INLINE_LEVELS].tid },
                            None => break,
                        }
                    };
                    virt_forget(VirtKey { pidns: ns, nr }, tid);
                    if released_ns != 0 {
                        note_released(ns, nr, released_ns);
                    }
                }
            }
            // Only the host namespace has no record before a task is seen in it; these reverse
            // entries are left to the daemon's sweep.
            None => count_map_error(counter::map_error::PIDNS_MISSING),
        }
    }
    if deep.is_some() {
        let _ = DEEP.remove(tid);
    }
    // The bit before the entry (maps::may_have_entry): a task that takes the tid meanwhile
    // inserts only after this removal, and sets the bit again after its insert.
    unmark_tid(tid);
    task_remove(tid);
}

// Keeps MAX_LEVELS and the scratch array bound in sync.
const _: () = assert!(MAX_LEVELS == MAX_PID_NS_LEVEL as usize + 1);

/// A process moved to another cgroup: its leader's entry takes the container of its new
/// cgroup, and the daemon is told so that the other threads follow.
#[btf_tracepoint]
pub fn cgroup_attach_task(ctx: BtfTracePointContext) -> i32 {
    if !offsets_ready() {
        return 0;
    }
    let task: *const u8 = ctx.arg(2);
    let threadgroup: u8 = ctx.arg(3);
    // Issue 15: the number a write to cgroup.procs / cgroup.threads / tasks named (judged with
    // the CPU's state, which a preempted program may hold).
    if CpuState::free_here() {
        crate::structures::cgroup_write(task);
    }
    let Ok((tid, _)) = tid_and_start(task) else {
        count_map_error(counter::map_error::KERNEL_READ);
        return 0;
    };
    let Some(e) = task_get(tid) else { return 0 };
    let e = unsafe { &mut *e };
    let ns_slot = own_ns_slot(e.level, e.pidns);
    let c = container_of(task, u32::from(e.level), e.pidns, ns_slot);
    if c.container == e.container {
        return 0;
    }
    e.container = c.container;
    e.slot = c.slot;
    tasks_changed();
    match EVENTS.reserve::<MigrateEvent>(0) {
        Some(mut ev) => {
            ev.write(MigrateEvent {
                kind: event_kind::MIGRATE,
                host_pid: tid,
                container: c.container,
                slot: c.slot,
                threadgroup: u32::from(threadgroup),
            });
            ev.submit(0);
        }
        None => count_drop(counter::drop::RINGBUF_FULL_LIFECYCLE),
    }
    0
}

/// The task of a task iterator's context (bpf_iter__task { meta, task }); none at the end of
/// the walk (a null task), or before the offsets are loaded.
#[inline(always)]
fn iterated_task(ctx: *mut core::ffi::c_void) -> Option<*const u8> {
    if !offsets_ready() {
        return None;
    }
    let task: *const u8 = unsafe { *(ctx as *const *const u8).add(1) };
    (!task.is_null()).then_some(task)
}

/// Task iterator: records every existing task exactly as the fork program would. Driven by the
/// daemon at attach time, by reading the iterator's file.
#[expect(
    clippy::no_mangle_with_rust_abi,
    reason = "the BPF target has one calling convention; aya's program macros declare their entry points alike"
)]
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub fn seed_tasks(ctx: *mut core::ffi::c_void) -> i32 {
    let Some(task) = iterated_task(ctx) else { return 0 };
    if let Err(reason) = record_task(Direct, task, SCRATCH_ITERATOR, 0) {
        count_map_error(reason);
    }
    0
}

/// Task iterator writing every task's host tid and command ([`TaskComm`]) to the iterator's
/// file: what `ps` shows beside the ids, read by the daemon in one pass. Writes nothing else.
#[expect(
    clippy::no_mangle_with_rust_abi,
    reason = "the BPF target has one calling convention; aya's program macros declare their entry points alike"
)]
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub fn task_comms(ctx: *mut core::ffi::c_void) -> i32 {
    let Some(task) = iterated_task(ctx) else { return 0 };
    // meta->seq is bpf_iter_meta's first field.
    let meta: *const *mut seq_file = unsafe { *ctx.cast::<*const *mut seq_file>() };
    if meta.is_null() {
        return 0;
    }
    let seq = unsafe { *meta };
    let Ok(host_tid) = Direct.read::<u32>(task, off!(task_pid)) else {
        return 0;
    };
    // The comm through a helper: a direct load may not span the char array's elements.
    let Ok(comm) = Probe.read::<[u8; 16]>(task, off!(task_comm)) else {
        return 0;
    };
    let record = TaskComm { host_tid, comm };
    unsafe {
        bpf_seq_write(seq, (&raw const record).cast(), size_of::<TaskComm>() as u32);
    }
    0
}

/// Empty programs on the lifecycle hooks, for the benchmark's floor (`pidvirt floor`).
macro_rules! floor_programs {
    ($($hook:ident),* $(,)?) => { pastey::paste! { $(
        #[btf_tracepoint]
        pub fn [<floor_ $hook>](_ctx: BtfTracePointContext) -> i32 {
            0
        }
    )* } };
}

pidvirt_common::for_each_lifecycle_hook!(floor_programs);
