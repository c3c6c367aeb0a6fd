//! Maps shared by the programs. Sizes are defaults; the daemon may resize them at load.

use crate::atomic;
use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_NOEXIST},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, Queue, RingBuf},
};
use pidvirt_common::{
    CALLER_SLOTS, CallerCache, CgroupContainer, DeepLevels, LevelIds, MAX_LEVELS, PidnsInfo, Released,
    TaskEntry, TaskSlot, VirtKey, VirtSlot, VirtValue,
    audit::{ContainerCounters, Verdict},
    config, counter, released, slots, spill_count, task_front, tasks_generation, tid_filter, virt_front,
};

/// host tid -> ids at every level (inline up to INLINE_LEVELS): the tids whose slot in
/// TASK_FRONT holds another tid (pidvirt_common::task_front). Allocated on insert: few tids come
/// here, and a preallocated capacity would be memory held for nothing. Capacity set by the
/// daemon. Reached only through [`task_get`], [`task_insert`] and [`task_remove`].
#[map]
pub static TASKS: HashMap<u32, TaskEntry> = HashMap::with_max_entries(262_144, BPF_F_NO_PREALLOC);

/// The task map's front, by host tid (pidvirt_common::task_front). Mappable: the daemon writes
/// its slots with the same claims as the programs.
#[map]
pub static TASK_FRONT: Array<TaskSlot> = Array::with_max_entries(task_front::SLOTS, BPF_F_MMAPABLE);

/// How many tids of each front slot TASKS holds (pidvirt_common::spill_count; the daemon's
/// seeds count there too, through a shared mapping).
#[map]
pub static TASK_SPILLS: Array<u64> = Array::with_max_entries(task_front::SPILL_WORDS, BPF_F_MMAPABLE);

/// Whether TASKS may hold a tid of front slot `slot`.
#[inline(always)]
fn task_spilled(slot: u32) -> bool {
    spilled_at(&TASK_SPILLS, slot)
}

/// Whether the hash map behind a front may hold a key of slot `slot`, by its spill counts (a
/// word beyond the map: it may).
#[inline(always)]
fn spilled_at(counts: &Array<u64>, slot: u32) -> bool {
    let (word, _, mask) = spill_count::lane(slot);
    counts.get(word).is_none_or(|w| w & mask != 0)
}

/// Counts a key of slot `slot` into the hash map behind a front (before the insert).
#[inline(always)]
fn count_spill(counts: &Array<u64>, slot: u32) {
    let (word, one, _) = spill_count::lane(slot);
    if let Some(p) = counts.get_ptr_mut(word) {
        // Atomic: other CPUs count the other half, and other keys of this slot.
        unsafe { atomic::add(p, one) };
    }
}

/// Takes back a key of slot `slot` (after its removal, or after an insert that failed).
#[inline(always)]
fn uncount_spill(counts: &Array<u64>, slot: u32) {
    let (word, one, _) = spill_count::lane(slot);
    if let Some(p) = counts.get_ptr_mut(word) {
        unsafe { atomic::add(p, one.wrapping_neg()) };
    }
}

/// Why [`spill_insert`] wrote nothing.
enum SpillError {
    /// The key is there (and `replace` was not asked).
    Exists,
    /// The map refused the entry.
    Refused,
}

/// Writes `key` -> `value` into the hash map behind a front, counted on the key's front slot
/// `slot` in `counts` (pidvirt_common::spill_count): as a new key, counted before the insert and
/// taken back if none was inserted; or, with `replace`, over the key where the map holds it
/// already, uncounted (it was counted when it went in: an insert with no flags would count a
/// replaced key twice, and its slot would never count 0 again).
#[inline(always)]
fn spill_insert<K, V>(
    map: &HashMap<K, V>,
    counts: &Array<u64>,
    slot: u32,
    key: &K,
    value: &V,
    replace: bool,
) -> Result<(), SpillError> {
    count_spill(counts, slot);
    if map.insert(key, value, u64::from(BPF_NOEXIST)).is_ok() {
        return Ok(());
    }
    uncount_spill(counts, slot);
    if !replace {
        return Err(if map.get_ptr(key).is_some() { SpillError::Exists } else { SpillError::Refused });
    }
    if map.insert(key, value, u64::from(BPF_EXIST)).is_ok() {
        return Ok(());
    }
    // Removed between the two (or refused): once more, as a new key.
    count_spill(counts, slot);
    map.insert(key, value, u64::from(BPF_NOEXIST)).map_err(|_| {
        uncount_spill(counts, slot);
        SpillError::Refused
    })
}

/// The entry of host tid `tid`, if any. The pointer is into a front slot or a TASKS element,
/// which the removal of the entry frees for another task's (as a preallocated hash map's
/// element is): read what is needed at once.
#[inline(always)]
pub fn task_get(tid: u32) -> Option<*mut TaskEntry> {
    // Tid 0 (the idle task, current in an interrupt) is never recorded, and 0 is an empty slot.
    if tid == 0 {
        return None;
    }
    let slot = task_front::slot(tid);
    if let Some(s) = TASK_FRONT.get_ptr_mut(slot)
        && unsafe { core::ptr::read_volatile(&raw const (*s).tid) } == u64::from(tid)
    {
        return Some(unsafe { &raw mut (*s).entry });
    }
    if !task_spilled(slot) {
        return None;
    }
    TASKS.get_ptr_mut(tid)
}

/// Why [`task_insert`] wrote nothing.
pub enum TaskInsertError {
    /// `tid` has an entry (with `only_new`).
    Exists,
    /// TASKS refused the entry.
    Full,
}

/// Writes `tid`'s entry: over its entry where it has one (in the front or in TASKS), else into its
/// front slot when that is free, else into TASKS, counted on the slot. With `only_new`, writes
/// nothing where `tid` has an entry.
#[inline(always)]
pub fn task_insert(tid: u32, e: &TaskEntry, only_new: bool) -> Result<(), TaskInsertError> {
    if tid == 0 {
        return Err(TaskInsertError::Full);
    }
    let slot = task_front::slot(tid);
    let spilled = task_spilled(slot);
    let Some(s) = TASK_FRONT.get_ptr_mut(slot) else { return Err(TaskInsertError::Full) };
    let held = unsafe { core::ptr::read_volatile(&raw const (*s).tid) };
    let own = held == u64::from(tid);
    // Whether TASKS holds a copy of the tid's entry: looked up once, where the slot counts any.
    let in_tasks = spilled && TASKS.get_ptr(tid).is_some();
    if own || in_tasks {
        if only_new {
            return Err(TaskInsertError::Exists);
        }
        // Replaced where it is: moved to the front, it would be in neither for a reader that
        // looked at the slot before the move and in TASKS after it. Only over a key that is
        // still there (BPF_EXIST: its count stands); one removed meanwhile is written anew below.
        if !own && TASKS.insert(tid, e, u64::from(BPF_EXIST)).is_ok() {
            return Ok(());
        }
    }
    // The tid's own entry is claimed as a free slot is: written in place, it could land on
    // another tid's entry, had the slot changed hands since it was read.
    if (held == 0 || own) && unsafe { atomic::cmpxchg(&raw mut (*s).tid, held, task_front::CLAIMED) } == held
    {
        unsafe { core::ptr::write_volatile(&raw mut (*s).entry, *e) };
        // Published after the entry: x86-64 keeps stores in order (and loads: a reader that sees
        // the tid sees this entry).
        unsafe { core::ptr::write_volatile(&raw mut (*s).tid, u64::from(tid)) };
        // A copy of the tid's entry in TASKS (the daemon's seed, written while the slot held
        // another tid) goes: the front's is the one read. Only where the lookup above found
        // one: a removal takes the bucket's lock even to find nothing. A copy written since
        // goes with the entry (task_remove).
        if in_tasks && TASKS.remove(tid).is_ok() {
            uncount_spill(&TASK_SPILLS, slot);
        }
        return Ok(());
    }
    // Counted before the insert: whoever can find the entry in TASKS sees the count.
    spill_insert(&TASKS, &TASK_SPILLS, slot, &tid, e, !only_new).map_err(|e| match e {
        SpillError::Exists => TaskInsertError::Exists,
        SpillError::Refused => TaskInsertError::Full,
    })
}

/// Removes `tid`'s entry, wherever it is.
#[inline(always)]
pub fn task_remove(tid: u32) {
    if tid == 0 {
        return;
    }
    let slot = task_front::slot(tid);
    if let Some(s) = TASK_FRONT.get_ptr_mut(slot)
        && unsafe { core::ptr::read_volatile(&raw const (*s).tid) } == u64::from(tid)
    {
        // A writer that claimed the slot meanwhile (the tid's next task) keeps it.
        let _ = unsafe { atomic::cmpxchg(&raw mut (*s).tid, u64::from(tid), 0) };
    }
    // Looked up first: a removal takes the bucket's lock even to find nothing.
    if task_spilled(slot) && TASKS.get_ptr(tid).is_some() && TASKS.remove(tid).is_ok() {
        uncount_spill(&TASK_SPILLS, slot);
    }
}

/// host tid -> ids at levels >= INLINE_LEVELS, for deeply nested tasks only.
#[map]
pub static DEEP: HashMap<u32, DeepLevels> = HashMap::with_max_entries(16_384, BPF_F_NO_PREALLOC);

/// (pid namespace inode, number in it) -> host tid, for every non-host level of every task: the
/// keys whose slot in VIRT_FRONT holds another key (pidvirt_common::virt_front), and the
/// daemon's seeds. Allocated on insert, as TASKS. Reached only through [`virt_insert`],
/// [`virt_get`] and [`virt_forget`].
#[map]
pub static VIRT: HashMap<VirtKey, VirtValue> = HashMap::with_max_entries(262_144, BPF_F_NO_PREALLOC);

/// The reverse map's front, in number order (pidvirt_common::virt_front). Mapped by the daemon,
/// which reads it in place.
#[map]
pub static VIRT_FRONT: Array<VirtSlot> = Array::with_max_entries(virt_front::SLOTS, BPF_F_MMAPABLE);

/// How many keys of each front slot VIRT holds (pidvirt_common::spill_count; the daemon's
/// seeds, which go to VIRT only, count there too, through a shared mapping).
#[map]
pub static VIRT_SPILLS: Array<u64> = Array::with_max_entries(virt_front::SPILL_WORDS, BPF_F_MMAPABLE);

/// Whether VIRT may hold a key of front slot `slot`.
#[inline(always)]
fn spilled(slot: u32) -> bool {
    spilled_at(&VIRT_SPILLS, slot)
}

/// Writes reverse entry `k` -> `v`: into its front slot when that is free or holds `k` (a stale
/// entry of the number, replaced as VIRT would), else into VIRT, counted on the slot.
///
/// Whoever writes a slot's value claims the slot first (its key to CLAIMED, by compare-and-swap
/// from what it read), and only the claimer writes a claimed slot: a writer that read `k` can
/// then not write its value over a key that took the slot after `k` was forgotten, and a reader
/// that reads the key, the value and the key again does not pair a key with another key's value
/// (but for the same key written again in between: its number reused within the read).
/// The order of the key's and the value's stores and loads is x86-64's (the programs attach to
/// the x86-64 syscall functions and tracepoints only).
#[inline(always)]
pub fn virt_insert(k: VirtKey, v: VirtValue) -> Result<(), ()> {
    if virt_write(k.pidns, k.nr, v.host_tid, v.start_lo) == 0 { Ok(()) } else { Err(()) }
}

/// `virt_insert` as a global function (BTF linkage global, not inlined), as `virt_remove`: the
/// programs write and remove reverse entries in loops over the levels, and the verifier walks a
/// loop once per level; the front's claim, the spill and the map calls are then checked once per
/// program, not in every iteration. Plain numbers; it answers 0, or 1 where VIRT refused.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn virt_write(pidns: u32, nr: u32, host_tid: u32, start_lo: u32) -> i32 {
    match front_insert(VirtKey { pidns, nr }, VirtValue { host_tid, start_lo }) {
        Ok(()) => 0,
        Err(()) => 1,
    }
}

#[inline(always)]
fn front_insert(k: VirtKey, v: VirtValue) -> Result<(), ()> {
    let key = released::key(k.pidns, k.nr);
    let slot = virt_front::slot(key);
    if let Some(s) = VIRT_FRONT.get_ptr_mut(slot) {
        let s = unsafe { &mut *s };
        let held = unsafe { core::ptr::read_volatile(&raw const s.key) };
        if held == key && unsafe { core::ptr::read_volatile(&raw const s.value) } == v {
            // Already there (the task iterator recording a task the fork program recorded):
            // no claim, during which a removal would miss the entry.
            return Ok(());
        }
        if (held == 0 || held == key)
            && unsafe { atomic::cmpxchg(&raw mut s.key, held, virt_front::CLAIMED) } == held
        {
            unsafe { core::ptr::write_volatile(&raw mut s.value, v) };
            // Published after the value: x86-64 keeps stores in order (and loads: a reader
            // that sees the key sees this value).
            unsafe { core::ptr::write_volatile(&raw mut s.key, key) };
            // An older entry of the key in VIRT (written while the slot held another key) is
            // replaced, as VIRT's own insert would have replaced it. Looked up first: a removal
            // takes the bucket's lock even to find nothing.
            if spilled(slot) && VIRT.get_ptr(k).is_some() && VIRT.remove(&k).is_ok() {
                uncount_spill(&VIRT_SPILLS, slot);
            }
            return Ok(());
        }
    }
    // Counted before the insert: whoever can find the entry in VIRT sees the count. An older
    // entry of the key there is replaced, as VIRT's own insert would.
    spill_insert(&VIRT, &VIRT_SPILLS, slot, &k, &v, true).map_err(|_| ())
}

/// Reverse entry `k`, if any.
#[inline(always)]
pub fn virt_get(k: VirtKey) -> Option<VirtValue> {
    let key = released::key(k.pidns, k.nr);
    let slot = virt_front::slot(key);
    if let Some(s) = VIRT_FRONT.get_ptr(slot) {
        let s = unsafe { &*s };
        if unsafe { core::ptr::read_volatile(&raw const s.key) } == key {
            let v = unsafe { core::ptr::read_volatile(&raw const s.value) };
            // Still the key: the slot was not freed and taken by another key meanwhile, whose
            // value this could be (x86-64 keeps loads in order).
            if unsafe { core::ptr::read_volatile(&raw const s.key) } == key {
                return Some(v);
            }
        }
    }
    if !spilled(slot) {
        return None;
    }
    VIRT.get_ptr(k).map(|v| unsafe { *v })
}

/// Removes reverse entry `k` wherever it still points at `tid` (a newer task may own the
/// number).
#[inline(always)]
pub fn virt_forget(k: VirtKey, tid: u32) {
    virt_remove(k.pidns, k.nr, tid);
}

/// `virt_forget` as a global function (see `virt_write`). It answers 0.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn virt_remove(pidns: u32, nr: u32, tid: u32) -> i32 {
    front_forget(VirtKey { pidns, nr }, tid);
    0
}

#[inline(always)]
fn front_forget(k: VirtKey, tid: u32) {
    let key = released::key(k.pidns, k.nr);
    let slot = virt_front::slot(key);
    if let Some(s) = VIRT_FRONT.get_ptr_mut(slot) {
        let s = unsafe { &mut *s };
        if unsafe { core::ptr::read_volatile(&raw const s.key) } == key
            && unsafe { core::ptr::read_volatile(&raw const s.value.host_tid) } == tid
            && unsafe { atomic::cmpxchg(&raw mut s.key, key, virt_front::CLAIMED) } == key
        {
            // Claimed, the value is checked again: a newer task of the number may have been
            // written between the first look and the claim; its entry is given back.
            let still_tid = unsafe { core::ptr::read_volatile(&raw const s.value.host_tid) } == tid;
            unsafe { core::ptr::write_volatile(&raw mut s.key, if still_tid { 0 } else { key }) };
        }
    }
    // The same task may have been written to both (recorded twice, by the daemon's seeding
    // and the programs, or once while the slot was taken and once after it was freed).
    if spilled(slot)
        && let Some(v) = VIRT.get_ptr(k)
        && unsafe { (*v).host_tid } == tid
        && VIRT.remove(k).is_ok()
    {
        uncount_spill(&VIRT_SPILLS, slot);
    }
}

/// pid namespace inode -> level and parent.
#[map]
pub static PIDNS: HashMap<u32, PidnsInfo> = HashMap::with_max_entries(16_384, BPF_F_NO_PREALLOC);

/// Crossing counters per container, per CPU: one element per counter slot (pidvirt_common::slots).
#[map]
pub static COUNTS: PerCpuArray<ContainerCounters> = PerCpuArray::with_max_entries(slots::DEFAULT, 0);

/// Counter slots free for new containers (filled by the daemon).
#[map]
pub static FREE_SLOTS: Queue<u32> = Queue::with_max_entries(slots::DEFAULT, 0);

/// x86_64 syscall number -> pidvirt syscall id (pidvirt_common::audit::sys), for the programs
/// shared by several syscalls (filled by the daemon).
#[map]
pub static SYSNR: Array<u32> = Array::with_max_entries(1024, 0);

/// State of a syscall between its enter and exit (host tid -> value), for the few that need it.
#[map]
pub static PENDING: HashMap<u32, u64> = HashMap::with_max_entries(16_384, BPF_F_NO_PREALLOC);

/// Registered cgroup containers: cgroup v2 id -> container number and counter slot. A task in
/// that cgroup or below belongs to the container.
#[map]
pub static CGROUPS: HashMap<u64, CgroupContainer> = HashMap::with_max_entries(4096, 0);

/// Per-container policy: container number -> pidvirt_common::audit::mode (absent: observe).
#[map]
pub static MODES: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

/// What the daemon notes about the loaded object, kept with the pins (pidvirt_common::meta).
#[map]
pub static META: Array<u64> = Array::with_max_entries(pidvirt_common::meta::SLOTS, 0);

/// Daemon settings the programs read (pidvirt_common::config).
#[map]
pub static CONFIG: Array<u32> = Array::with_max_entries(config::SLOTS, 0);

/// Copies of callers' entries, per CPU (pidvirt_common::CallerCache, ::caller_slot; used by
/// audit::caller).
#[map]
pub static CALLER: PerCpuArray<CallerCache> = PerCpuArray::with_max_entries(CALLER_SLOTS, 0);

/// Whether one of pidvirt's preemptible programs is in the middle of its run on this CPU (1) or
/// not (0). fentry/fexit programs run with migration disabled but, on a fully preemptible
/// kernel, preemption enabled: a task switched out in the middle of one would otherwise find,
/// when it comes back, the CPU's state (CALLER, SCRATCH) rewritten by the next task's programs.
#[map]
pub static CPU_STATE_HELD: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's per-CPU state, held by a preemptible program for its run; given back when dropped.
pub struct CpuState(*mut u64);

impl CpuState {
    /// The CPU's state for this run, or None when another of pidvirt's programs holds it
    /// (preempted in the middle of its run here; counted: map_errors.preempted).
    #[inline(always)]
    pub fn hold() -> Option<CpuState> {
        let p = CPU_STATE_HELD.get_ptr_mut(0)?;
        // One instruction: no preemption between the test and the set.
        if unsafe { atomic::xchg(p, 1) } != 0 {
            count_preempted();
            return None;
        }
        Some(CpuState(p))
    }

    /// Whether a preemptible program holds this CPU's state: asked by a program that cannot be
    /// preempted (a tracepoint's), so held by one preempted in the middle of its run here.
    #[inline(always)]
    pub fn held() -> bool {
        CPU_STATE_HELD.get_ptr(0).is_some_and(|p| unsafe { core::ptr::read_volatile(p) } != 0)
    }

    /// For a program that cannot be preempted and would use the CPU's state: whether it may
    /// (not held), else counted as map_errors.preempted (its crossing is not judged).
    #[inline(always)]
    pub fn free_here() -> bool {
        if Self::held() {
            count_preempted();
            return false;
        }
        true
    }
}

/// Counts a crossing not judged because the CPU's state was held. Atomic: the programs that
/// count it may themselves be preempted in the middle of the increment.
#[inline(always)]
fn count_preempted() {
    if let Some(p) = COUNTERS.get_ptr_mut(counter::map_error::BASE + counter::map_error::PREEMPTED) {
        unsafe { atomic::add(p, 1) };
    }
}

impl Drop for CpuState {
    #[inline(always)]
    fn drop(&mut self) {
        unsafe { core::ptr::write_volatile(self.0, 0) };
    }
}

/// Generations of the task map (pidvirt_common::tasks_generation, ::CallerCache).
#[map]
pub static TASKS_GENERATION: Array<u64> = Array::with_max_entries(tasks_generation::SLOTS, 0);

/// The task map's (kernel, daemon) generations.
#[inline(always)]
pub fn tasks_generation() -> (u64, u64) {
    let read = |slot| match TASKS_GENERATION.get_ptr(slot) {
        Some(p) => unsafe { core::ptr::read_volatile(p) },
        None => 0,
    };
    (read(tasks_generation::KERNEL), read(tasks_generation::DAEMON))
}

/// To be called AFTER every write to TASKS by a program. Atomic: a read-then-write could
/// be preempted and store an older generation back.
#[inline(always)]
pub fn tasks_changed() {
    if let Some(p) = TASKS_GENERATION.get_ptr_mut(tasks_generation::KERNEL) {
        unsafe { atomic::add(p, 1) };
    }
}

/// Host tids whose entry the programs wrote (pidvirt_common::tid_filter); sized by the daemon.
#[map]
pub static LIVE_TIDS: Array<u64> = Array::with_max_entries(tid_filter::MAX_WORDS, 0);

/// Host tids whose entry the daemon seeded (only the daemon sets bits; the programs clear them).
#[map]
pub static SEEDED_TIDS: Array<u64> = Array::with_max_entries(tid_filter::MAX_WORDS, 0);

/// Host tids that may have a PENDING_CALLS entry (set after the insert, cleared after the
/// removal): the exits whose entry kept nothing (an ioctl, fcntl, recvmsg... of another command,
/// most of them) find so without a hash lookup. Sized by the daemon like LIVE_TIDS.
#[map]
pub static PENDING_TIDS: Array<u64> = Array::with_max_entries(tid_filter::MAX_WORDS, 0);

/// Records that `tid` has an entry written by the programs (after the write).
#[inline(always)]
pub fn mark_tid(tid: u32) {
    set_bit(&LIVE_TIDS, tid);
}

/// Records that `tid` has no entry any more (after its removal).
#[inline(always)]
pub fn unmark_tid(tid: u32) {
    for map in [&LIVE_TIDS, &SEEDED_TIDS] {
        clear_bit(map, tid);
    }
}

/// Clears `tid`'s bit in a tid filter (a locked operation only where it is set: SEEDED_TIDS
/// rarely has it).
#[inline(always)]
pub fn clear_bit(map: &Array<u64>, tid: u32) {
    let (word, bit) = tid_filter::bit(tid);
    if let Some(p) = map.get_ptr_mut(word)
        && unsafe { core::ptr::read_volatile(p) } & bit != 0
    {
        unsafe { atomic::and(p, !bit) };
    }
}

/// Sets `tid`'s bit in a tid filter.
#[inline(always)]
pub fn set_bit(map: &Array<u64>, tid: u32) {
    let (word, bit) = tid_filter::bit(tid);
    if let Some(p) = map.get_ptr_mut(word) {
        // Atomic: other CPUs set and clear other bits of the word.
        unsafe { atomic::or(p, bit) };
    }
}

/// Whether `tid`'s bit is set in a tid filter (a tid beyond its words: true).
#[inline(always)]
pub fn bit_set(map: &Array<u64>, tid: u32) -> bool {
    let (word, bit) = tid_filter::bit(tid);
    map.get(word).is_none_or(|w| w & bit != 0)
}

/// Whether `tid` may have an entry: false only when neither the programs nor the daemon wrote
/// one that is still there (a tid beyond the filter: true). Every writer sets the bit after its
/// insert and clears it before its removal, so an entry always has its bit (a bit without an
/// entry only costs a lookup): the free program relies on it to skip tasks already removed.
#[inline(always)]
pub fn may_have_entry(tid: u32) -> bool {
    let (word, bit) = tid_filter::bit(tid);
    match (LIVE_TIDS.get(word), SEEDED_TIDS.get(word)) {
        (Some(live), Some(seeded)) => (live | seeded) & bit != 0,
        _ => true,
    }
}

/// Pids released a moment ago (pidvirt_common::released).
#[map]
pub static RELEASED: Array<Released> = Array::with_max_entries(released::SLOTS, 0);

/// Records that number `nr` of pid namespace `pidns` was released now.
#[inline(always)]
pub fn note_released(pidns: u32, nr: u32, now: u64) {
    let key = released::key(pidns, nr);
    if let Some(p) = RELEASED.get_ptr_mut(released::slot(key)) {
        unsafe { *p = Released { key, at_ns: now } };
    }
}

/// Whether number `nr` of pid namespace `pidns` was released within the window.
#[inline(always)]
pub fn released_lately(pidns: u32, nr: u32) -> bool {
    let key = released::key(pidns, nr);
    match RELEASED.get(released::slot(key)) {
        Some(r) if r.key == key => {
            unsafe { bpf_ktime_get_ns() }.saturating_sub(r.at_ns) < released::WINDOW_NS
        }
        _ => false,
    }
}

/// A CONFIG value.
#[inline(always)]
fn config(slot: u32) -> u32 {
    CONFIG.get(slot).copied().unwrap_or(0)
}

/// Whether crossings judged `v` are reported on the ring buffer (`pidvirt run --report`).
#[inline(always)]
pub fn reported(v: Verdict) -> bool {
    config(config::REPORTED) & v.bit() != 0
}

/// Inode of the host's pid namespace (0 until the daemon wrote it).
#[inline(always)]
pub fn host_pidns() -> u32 {
    config(config::HOST_PIDNS)
}

/// Whether any container is in enforce mode.
#[inline(always)]
pub fn enforcing() -> bool {
    config(config::ENFORCING) != 0
}

/// The daemon's host pid (0 until the daemon wrote it).
#[inline(always)]
pub fn daemon_tgid() -> u32 {
    config(config::DAEMON_TGID)
}

/// Mount namespace inode -> inode of the pid namespace whose procfs is mounted at /proc there
/// (set by the daemon, which reads it from the mount namespace's tasks; a mount namespace it has
/// not seen is taken to show its callers' own namespace).
#[map]
pub static PROCFS: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

/// Per-CPU counters (pidvirt_common::counter).
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::SLOTS, 0);

/// Records user space must see (new namespaces, anomalies).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Per-CPU scratch space to build a task's ids without using the 512-byte stack.
pub struct Scratch {
    pub entry: TaskEntry,
    pub deep: DeepLevels,
    /// Inode of the pid namespace at each level.
    pub ns: [u32; MAX_LEVELS],
    /// Ids at every level (copied into entry/deep).
    pub ids: [LevelIds; MAX_LEVELS],
    /// A namespace being registered.
    pub pidns: PidnsInfo,
    /// Start time of the init of the task's own namespace (0: the host's, or unread).
    pub reaper_start: u64,
}

/// Slots of SCRATCH. Tracepoint programs run with preemption disabled and share slot 0 with the
/// preemptible fentry/fexit programs, which use it only while they hold the CPU's state
/// ([`CpuState`]); a fork while one holds it (preempted there) takes slot 2. The task iterator
/// runs preemptible (a tracepoint program may run on its CPU in between) and has its own slot.
pub const SCRATCH_TRACEPOINT: u32 = 0;
pub const SCRATCH_ITERATOR: u32 = 1;
pub const SCRATCH_STATE_HELD: u32 = 2;

#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(3, 0);

/// A counter slot for a new container (the overflow slot, counted, when none is free).
#[inline(always)]
pub fn take_slot() -> u32 {
    if let Ok(Some(slot)) = FREE_SLOTS.pop() {
        slot
    } else {
        count_map_error(counter::map_error::NO_COUNTER_SLOT);
        slots::OVERFLOW
    }
}

/// Adds one to a per-CPU counter slot.
#[inline(always)]
pub fn count(slot: u32) {
    count_n(slot, 1);
}

/// Adds `n` to a per-CPU counter slot.
#[inline(always)]
pub fn count_n(slot: u32, n: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(slot) {
        unsafe { *p += n };
    }
}

#[inline(always)]
pub fn count_map_error(reason: u32) {
    count(counter::map_error::BASE + reason);
}

#[inline(always)]
pub fn count_lifecycle(which: u32) {
    count(counter::lifecycle::BASE + which);
}

#[inline(always)]
pub fn count_drop(reason: u32) {
    count(counter::drop::BASE + reason);
}

/// Counter slot of pid namespace `ns` (the overflow slot if it has no record).
#[inline(always)]
pub fn pidns_slot(ns: u32) -> u32 {
    match PIDNS.get_ptr(ns) {
        Some(info) => unsafe { (*info).slot },
        None => slots::OVERFLOW,
    }
}

/// Counter slot of a task's own pid namespace `pidns` at `level` (the host's at level 0).
#[inline(always)]
pub fn own_ns_slot(level: u8, pidns: u32) -> u32 {
    if level == 0 { slots::HOST } else { pidns_slot(pidns) }
}

// ---- pids inside structures (issue 15) ----

/// What a syscall's exit needs from its entry (host tid -> pidvirt_common::PendingCall): the
/// user addresses the kernel writes pids to, the descriptor behind them.
#[map]
pub static PENDING_CALLS: HashMap<u32, pidvirt_common::PendingCall> =
    HashMap::with_max_entries(16_384, BPF_F_NO_PREALLOC);
