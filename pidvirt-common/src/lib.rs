//! Types shared by the kernel programs (pidvirt-ebpf) and the daemon (pidvirt-user).
//!
//! Every layout that crosses the kernel-user boundary lives here, once, as `#[repr(C)]`.
//! Numbers are tagged with the namespace they were read in: `host_*` fields are init-namespace
//! numbers, `v*` fields and `nr[level]` are numbers in the namespace at that level.
#![no_std]

#[cfg(any(test, feature = "tracefs"))]
extern crate std;

pub mod audit;
pub mod catalogue;
pub mod offsets;
#[cfg(feature = "tracefs")]
pub mod tracefs;
pub use catalogue::counter;
pub use offsets::KernelOffsets;

/// Deepest pid namespace level the kernel allows (`MAX_PID_NS_LEVEL`): levels run 0..=32.
pub const MAX_PID_NS_LEVEL: u32 = 32;
/// Number of levels a task can have numbers in (level 0, the host, up to level 32).
pub const MAX_LEVELS: usize = MAX_PID_NS_LEVEL as usize + 1;
/// Levels stored inline in a [`TaskEntry`]; deeper levels go to the deep-levels map.
pub const INLINE_LEVELS: usize = 4;
/// Levels stored in a [`DeepLevels`] value (levels INLINE_LEVELS..=MAX_PID_NS_LEVEL).
pub const DEEP_LEVELS: usize = MAX_LEVELS - INLINE_LEVELS;
/// Slots of a [`DeepLevels`] value: DEEP_LEVELS rounded up to a power of two, so that the
/// kernel programs can bound a variable index with a mask the verifier understands.
pub const DEEP_SLOTS: usize = 32;

/// Container number of the host (the init pid namespace): it has a global view.
pub const HOST_CONTAINER: u32 = 0;

/// A task's ids in the pid namespace of one level.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LevelIds {
    /// Thread id (what gettid returns in that namespace).
    pub tid: u32,
    /// Thread-group id (what getpid returns in that namespace).
    pub tgid: u32,
}

/// Flags of a [`TaskEntry`].
pub mod task_flags {
    /// Written by the daemon from /proc when it attached: `start_time` has clock-tick precision.
    pub const SEEDED: u8 = 1 << 0;
    /// The task has passed sched_process_exit (a zombie until it is reaped and freed).
    pub const EXITED: u8 = 1 << 1;
    /// The task was seen at exec.
    pub const EXECED: u8 = 1 << 2;
    /// On a thread-group leader's entry: its whole group has exited (the last thread's exit
    /// found `signal->live` at 0), so the process is a zombie that a wait reaps.
    pub const GROUP_DEAD: u8 = 1 << 3;
    /// On a thread-group leader's entry: it was ptraced when it exited (a tracer that is not
    /// its parent may collect its exit status without releasing it).
    pub const TRACED: u8 = 1 << 4;
    /// A kernel thread (`PF_KTHREAD`; only ever in the host's namespace): the task of no
    /// number a container or an orchestrator hands around, so its host pid is nobody's leak.
    pub const KTHREAD: u8 = 1 << 5;
    /// `task_struct.flags`' bit for a kernel thread (include/linux/sched.h), which /proc's stat
    /// shows too (field 9).
    pub const PF_KTHREAD: u32 = 0x0020_0000;

    /// Whether a task whose entry has `flags` is released once a wait4 returns its pid: a
    /// whole group that exited untraced (a stopped or continued child, a zombie leader whose
    /// threads still run, or a tracee reported to its tracer, is not).
    pub const fn reaped_by_wait(flags: u8) -> bool {
        flags & (EXITED | GROUP_DEAD | TRACED) == EXITED | GROUP_DEAD
    }
}

/// Value of the task map, keyed by host tid. 56 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskEntry {
    /// `task_struct.start_time` (ns since boot, CLOCK_MONOTONIC) — or, for SEEDED entries,
    /// the /proc start time in clock ticks converted to ns.
    pub start_time: u64,
    /// Container number: [`HOST_CONTAINER`], or the pid namespace inode for namespace containers.
    pub container: u32,
    /// Inode of the task's own (innermost) pid namespace.
    pub pidns: u32,
    /// Level of the task's own pid namespace (0 = host; at most MAX_PID_NS_LEVEL).
    pub level: u8,
    /// [`task_flags`].
    pub flags: u8,
    /// The CPUs whose per-CPU copies ([`CallerCache`]) may hold this task's entry
    /// ([`copies`]): its exit clears those copies before its kernel stack can be reused. Set
    /// by an atomic or on the 64-bit word around it ([`copies::WORD`]).
    pub copies: u16,
    /// Ids at levels 0..INLINE_LEVELS (only 0..=level are meaningful).
    pub nr: [LevelIds; INLINE_LEVELS],
    /// The container's counter slot (index into the per-CPU counters array; see [`slots`]).
    pub slot: u32,
}

impl TaskEntry {
    /// Host (init namespace) tid.
    pub fn host_tid(&self) -> u32 {
        self.nr[0].tid
    }
    /// Host (init namespace) tgid.
    pub fn host_pid(&self) -> u32 {
        self.nr[0].tgid
    }
    pub fn is_seeded(&self) -> bool {
        self.flags & task_flags::SEEDED != 0
    }
}

/// Value of the deep-levels map (keyed by host tid) for tasks with level >= INLINE_LEVELS.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeepLevels {
    pub start_time: u64,
    /// Ids at levels INLINE_LEVELS..=MAX_PID_NS_LEVEL (slot `level - INLINE_LEVELS`).
    pub nr: [LevelIds; DEEP_SLOTS],
}

impl Default for DeepLevels {
    fn default() -> Self {
        Self { start_time: 0, nr: [LevelIds::default(); DEEP_SLOTS] }
    }
}

/// Key of the reverse map: (pid namespace inode, number in that namespace) -> host tid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VirtKey {
    pub pidns: u32,
    pub nr: u32,
}

/// Value of the reverse map: the host tid, and the low 32 bits of its entry's start time, so
/// that a reverse entry is only believed while the task entry it points at is the same task.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtValue {
    pub host_tid: u32,
    pub start_lo: u32,
}

impl VirtValue {
    pub fn of(entry: &TaskEntry) -> Self {
        Self { host_tid: entry.nr[0].tid, start_lo: entry.start_time as u32 }
    }
    pub fn points_at(&self, entry: &TaskEntry) -> bool {
        self.start_lo == entry.start_time as u32
    }
}

/// Length of [`PidnsInfo::ancestors`]: a power of two above MAX_LEVELS, so that a level from a
/// map value can index it behind a mask the verifier understands.
pub const ANCESTOR_SLOTS: usize = 64;

/// Value of the pid-namespace map, keyed by namespace inode.
///
/// The kernel reuses a namespace's inode number soon after the namespace ends: a record is only
/// the record of the namespace whose init started at `reaper_start` (ns; clock ticks for seeded
/// records). A fork into a namespace whose init is another task finds its record stale and
/// replaces it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PidnsInfo {
    /// `task_struct.start_time` of the namespace's init (its child_reaper), as [`TaskEntry`]
    /// start times are.
    pub reaper_start: u64,
    pub level: u32,
    /// Inode of the parent namespace (0 for the init namespace).
    pub parent: u32,
    /// Host tid of the first task it was seen with.
    pub first_tid: u32,
    /// [`pidns_source`].
    pub source: u32,
    /// Counter slot of the namespace's container ([`slots`]).
    pub slot: u32,
    /// Explicit padding (zero).
    pub pad: u32,
    /// Inode of the namespace at each level 0..=level (this namespace's ancestors, then itself);
    /// entries above `level` are unspecified and never read. Lets the programs find every
    /// level's namespace with constant indices.
    pub ancestors: [u32; ANCESTOR_SLOTS],
}

impl Default for PidnsInfo {
    fn default() -> Self {
        Self {
            reaper_start: 0,
            level: 0,
            parent: 0,
            first_tid: 0,
            source: 0,
            slot: 0,
            pad: 0,
            ancestors: [0; ANCESTOR_SLOTS],
        }
    }
}

impl PidnsInfo {
    /// Info for the namespace at `level` of a chain of inodes (outermost first), whose init
    /// started at `reaper_start`.
    pub fn from_chain(chain: &[u32], level: usize, first_tid: u32, source: u32, reaper_start: u64) -> Self {
        let mut info = Self {
            reaper_start,
            level: level as u32,
            parent: if level == 0 { 0 } else { chain.get(level - 1).copied().unwrap_or(0) },
            first_tid,
            source,
            ..Self::default()
        };
        for (slot, ns) in info.ancestors.iter_mut().zip(chain.iter().take(level + 1)) {
            *slot = *ns;
        }
        info
    }
}

/// How a pid namespace became known.
pub mod pidns_source {
    /// The kernel programs saw a task in it (fork or exec).
    pub const KERNEL: u32 = 1;
    /// The daemon found it in /proc when it attached.
    pub const SEED: u32 = 2;
}

/// Per-container counter slots: each container's crossing counters are one element of a per-CPU
/// array (a lookup the verifier inlines), not a hash-map value. The programs take a free slot
/// for a new pid namespace from the FREE_SLOTS queue the daemon fills; the daemon gives cgroup
/// containers theirs and recycles the slots of ended containers.
pub mod slots {
    /// The host (the initial pid namespace).
    pub const HOST: u32 = 0;
    /// Containers that found no free slot (counted, and counted together here).
    pub const OVERFLOW: u32 = 1;
    /// The first slot handed out.
    pub const FIRST_FREE: u32 = 2;
    /// Default number of slots (containers counted apart at once, plus the two above).
    pub const DEFAULT: u32 = 258;
}

/// Value of the cgroup-container map (key: cgroup v2 id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupContainer {
    pub container: u32,
    pub slot: u32,
}

/// Slots of the CONFIG array the daemon writes and the programs read.
pub mod config {
    /// Number of registered cgroup containers (the programs skip the cgroup walk when 0).
    pub const CGROUP_CONTAINERS: u32 = 0;
    /// The verdicts reported on the ring buffer (a mask of `Verdict::bit`s; `pidvirt run
    /// --report`); every verdict is counted either way.
    pub const REPORTED: u32 = 1;
    /// Inode of the host's (initial) pid namespace.
    pub const HOST_PIDNS: u32 = 2;
    /// The daemon's host pid: its own /proc walk (which reads every process, racing their ends
    /// and its own seeding) is not audited as numbers in paths.
    pub const DAEMON_TGID: u32 = 3;
    /// Number of containers in enforce mode (the enforcer's programs return at once when 0).
    pub const ENFORCING: u32 = 4;
    pub const SLOTS: u32 = 5;
}

/// The record of pids released a moment ago (map RELEASED): a direct-mapped table keyed by
/// (pid namespace, number), written when a task's entries are removed (it was reaped or freed),
/// read when a number names nothing, so that a wait or kill racing a process's end is judged
/// `released`, not `unknown`. Bounded: a burst of releases can evict older records (which then
/// count as `unknown`).
pub mod released {
    /// Slots of the table (a power of two).
    pub const SLOTS: u32 = 8192;
    /// How long after its release a number still counts as released.
    pub const WINDOW_NS: u64 = 2_000_000_000;

    /// The key of number `nr` of pid namespace `pidns`.
    pub const fn key(pidns: u32, nr: u32) -> u64 {
        ((pidns as u64) << 32) | nr as u64
    }

    /// The slot of `key`: the namespace's place in the table (Fibonacci hashing of its inode),
    /// then its numbers in order. The kernel hands out pids in turn (idr_alloc_cyclic), so the
    /// numbers released one after the other are near each other, and so are their records: the
    /// lines a reap writes are the ones the reaps before it wrote (scattered records cost a cold
    /// line each).
    pub const fn slot(key: u64) -> u32 {
        super::number_order_place(key) & (SLOTS - 1)
    }
}

/// The place of key (pid namespace, number) (see [`released::key`]) in a direct-mapped table
/// (taken modulo its size): the namespace's place (Fibonacci hashing of its inode), then its
/// numbers in order. The kernel hands out pids in turn (idr_alloc_cyclic), so the numbers
/// recorded or released one after the other are near each other, and so are their slots: the
/// lines a fork or reap writes are the ones the forks and reaps before it wrote (a hash map's
/// buckets, scattered over the table, cost a cold line each).
pub const fn number_order_place(key: u64) -> u32 {
    let pidns = key >> 32;
    let base = (pidns.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32;
    base.wrapping_add(key as u32)
}

/// The front of the reverse map (VIRT_FRONT): a direct-mapped table of (pid namespace, number)
/// -> host tid, slot [`slot`] of a key. Reverse entries are written there, and only the keys
/// whose slot holds another key go to the hash map VIRT; each slot counts its keys in VIRT
/// (VIRT_SPILLS, [`spill_count`]), and only where its count is not 0 does a lookup or removal
/// that the front does not answer look in VIRT. The writes of a fork and a reap then land on the lines the ones before
/// them wrote (the table is in number order) instead of a cold hash bucket each. A writer of a
/// slot's value claims the slot first ([`virt_front::CLAIMED`], by compare-and-swap from the key
/// it read) and publishes the key after the value.
pub mod virt_front {
    /// Slots of the table (a power of two).
    pub const SLOTS: u32 = 262_144;
    /// Words of the spill counts (VIRT_SPILLS, [`super::spill_count`]).
    pub const SPILL_WORDS: u32 = SLOTS / super::spill_count::PER_WORD;
    /// A slot's key while a writer that claimed it writes its value (never a real key: no
    /// number reaches 2^32 - 1).
    pub const CLAIMED: u64 = u64::MAX;

    /// The slot of `key` ([`super::released::key`]).
    pub const fn slot(key: u64) -> u32 {
        super::number_order_place(key) & (SLOTS - 1)
    }
}

/// How many keys of a front slot its hash map holds (TASK_SPILLS for TASK_FRONT and TASKS,
/// VIRT_SPILLS for VIRT_FRONT and VIRT): a 32-bit count per slot, two to a 64-bit word, added to
/// and taken from atomically (by the programs and, through a shared mapping, the daemon). A
/// writer adds 1 before it inserts a new key into the hash map (and takes it back if none was
/// inserted; a key already there is replaced uncounted, with BPF_EXIST), and takes 1 after a
/// removal that removed a key; so a slot whose hash map holds a key of it never counts 0. A
/// lookup or removal the front does not answer looks in the hash map only where the count is not
/// 0, and a slot whose keys all left costs nothing again.
pub mod spill_count {
    /// Counts per word.
    pub const PER_WORD: u32 = 2;

    /// Where slot `slot` counts: its word, 1 in its half of the word (what an insert adds), and
    /// the mask of its half.
    pub const fn lane(slot: u32) -> (u32, u64, u64) {
        let shift = 32 * (slot % PER_WORD);
        (slot / PER_WORD, 1 << shift, (u32::MAX as u64) << shift)
    }
}

/// The front of the task map (TASK_FRONT): host tid -> entry in a direct-mapped table, slot
/// [`task_front::slot`] of a tid. A task's entry is written there, and only a tid whose slot
/// holds another tid goes to the hash map TASKS, counted on its slot (TASK_SPILLS,
/// [`spill_count`]); a lookup or removal the front does not answer looks in TASKS only where the
/// slot's count is not 0. The kernel hands out tids in turn, so
/// a fork writes the line after the one the fork before it wrote, and its reap the line the fork
/// wrote, where a hash map's insert and removal each cost a cold bucket. Whoever writes a slot's
/// entry (the programs, and the daemon through a shared mapping of the array) claims the slot
/// first ([`task_front::CLAIMED`], by compare-and-swap from the tid it read) and publishes the
/// tid after the entry; a removal swaps the tid for 0.
pub mod task_front {
    /// Slots of the table (a power of two): every tid of a host whose pid_max is at most this
    /// has a slot of its own.
    pub const SLOTS: u32 = 65_536;
    /// Words of the spill counts (TASK_SPILLS, [`super::spill_count`]).
    pub const SPILL_WORDS: u32 = SLOTS / super::spill_count::PER_WORD;
    /// A slot's tid while a writer that claimed it writes its entry (no tid reaches 2^32).
    pub const CLAIMED: u64 = u64::MAX;

    /// The slot of host tid `tid`.
    pub const fn slot(tid: u32) -> u32 {
        tid & (SLOTS - 1)
    }
}

/// A slot of the task map's front ([`task_front`]): `tid` 0 is an empty slot. One cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskSlot {
    pub tid: u64,
    pub entry: TaskEntry,
}

const _: () = assert!(size_of::<TaskSlot>() == 64);

/// A slot of the reverse map's front ([`virt_front`]): `key` 0 is an empty slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtSlot {
    pub key: u64,
    pub value: VirtValue,
}

/// A pid released recently (value of the RELEASED map; see [`released`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Released {
    pub key: u64,
    /// bpf_ktime_get_ns() when the task's entries were removed.
    pub at_ns: u64,
}

/// Slots of the TASKS_GENERATION array (u64 each; see [`CallerCache`]).
pub mod tasks_generation {
    /// Bumped (atomically) by the programs after every write to the task map.
    pub const KERNEL: u32 = 0;
    /// Bumped by the daemon (the only writer of this slot) after every write to the task map.
    pub const DAEMON: u32 = 1;
    pub const SLOTS: u32 = 2;
}

/// Per-CPU copy of a calling task's entry, so that the hottest crossings (getpid, a task naming
/// itself) cost no hash lookup. Each CPU keeps [`CALLER_SLOTS`] of them: [`caller_slot::CALLER`]
/// for the last caller that had to look its entry up, [`caller_slot::NEWBORN`] for the last
/// child forked on that CPU (the fork program fills it, so the child's first crossing, fork's 0,
/// needs no lookup either).
///
/// A copy is found by the task's kernel stack (`task_struct.stack`), which a program knows
/// without asking the kernel: its context lies on that stack (a syscall tracepoint's record is
/// built there, fentry's saved arguments too), so the context's address rounded down to
/// [`STACK_ALIGN`] is the stack's base, where the stack is that aligned (checked at every fill
/// against the task the kernel names: a copy is only made where they agree). Stacks of live tasks
/// never overlap; a dead task's stack is reused by a new task, so a task's exit clears its copies
/// on every CPU its entry names ([`TaskEntry::copies`]) first, and an exited task is not copied.
/// A copy is also valid only
/// while both generations equal the task map's ([`tasks_generation`]): whoever changes the entry
/// of a LIVE task (a daemon retag, a cgroup move, an exec that changes a thread's tid, a seeded
/// entry replaced) bumps its generation AFTER the write, and a filler reads the generations
/// BEFORE copying, so a copy is never labelled newer than its content. Inserting the entry of a
/// new task needs no bump (nobody holds a copy of it), and neither do writes of `flags` alone
/// (exit, exec): the copy's flags are not read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CallerCache {
    pub kernel_generation: u64,
    pub daemon_generation: u64,
    /// The task's kernel stack (`task_struct.stack`); 0: no copy.
    pub stack: u64,
    /// Scratch: where the running program's context lies (the verifier turns a pointer into a
    /// number only through memory).
    pub at: u64,
    pub tid: u32,
    /// Explicit padding (zero).
    pub pad: u32,
    pub entry: TaskEntry,
}

/// Copies of callers' entries per CPU (see [`CallerCache`]).
pub const CALLER_SLOTS: u32 = 2;

/// What a task's kernel stack is aligned to at least (x86-64's THREAD_SIZE, 16 KiB, or more
/// with KASAN): a context's address rounded down to it is a stack's base only if that stack is
/// aligned so, which every copy's fill checks ([`CallerCache`]).
pub const STACK_ALIGN: u64 = 16 * 1024;

/// [`TaskEntry::copies`]: bit `cpu % 16`; a task's exit looks at every CPU of the residue of
/// each bit set (one CPU each on machines of up to 16).
pub mod copies {
    /// Bits of [`super::TaskEntry::copies`].
    pub const BITS: u32 = 16;
    /// Byte offset of the 8-aligned 64-bit word of the task entry whose bits 16..32 are `copies`
    /// (with `level`, `flags` and `nr[0].tid`): where the programs set a bit atomically.
    pub const WORD: usize = 16;

    /// The bit of `cpu`.
    pub const fn bit(cpu: u32) -> u16 {
        1 << (cpu % BITS)
    }
}

/// Which copy a slot of the per-CPU caller cache holds.
pub mod caller_slot {
    /// The last caller whose entry was looked up on this CPU.
    pub const CALLER: u32 = 0;
    /// The last child forked on this CPU.
    pub const NEWBORN: u32 = 1;
}

/// The filter of host tids with a task entry (maps LIVE_TIDS, written by the programs, and
/// SEEDED_TIDS, written by the daemon): bit `tid % 64` of word `tid / 64`. Answers "no entry"
/// for a number without a hash lookup; a set bit may be stale (then the lookup says no), a
/// tid beyond the words is always looked up.
pub mod tid_filter {
    /// Words for a kernel whose pid_max is `pid_max` (host tids are below it), within the
    /// map's bounds.
    pub const fn words(pid_max: u32) -> u32 {
        let w = pid_max.div_ceil(64);
        if w < 64 {
            64
        } else if w > MAX_WORDS {
            MAX_WORDS
        } else {
            w
        }
    }
    /// For the largest pid_max (PID_MAX_LIMIT, 4194304 on 64-bit): 512 KiB.
    pub const MAX_WORDS: u32 = 4_194_304 / 64;

    /// Word index and bit of `tid`.
    pub const fn bit(tid: u32) -> (u32, u64) {
        (tid / 64, 1u64 << (tid % 64))
    }
}

/// Slots of the META array (read by a daemon adopting pinned programs).
pub mod meta {
    /// A hash of the eBPF object the pinned programs were loaded from.
    pub const OBJECT_HASH: u32 = 0;
    /// 1 when the enforcer's LSM programs are attached.
    pub const ENFORCEMENT: u32 = 1;
    pub const SLOTS: u32 = 4;
}

/// Deepest cgroup level the programs walk up from (deeper ancestors are not matched).
pub const MAX_CGROUP_DEPTH: u32 = 32;

/// Kinds of record on the events ring buffer.
pub mod event_kind {
    /// A pid namespace was seen for the first time ([`super::PidnsEvent`]).
    pub const PIDNS: u32 = 1;
    /// A crossing judged anything but ok/group/any ([`super::audit::AnomalyEvent`]).
    pub const ANOMALY: u32 = 2;
    /// A process moved to another cgroup ([`super::MigrateEvent`]): the daemon gives its other
    /// threads the leader's container.
    pub const MIGRATE: u32 = 3;
}

/// A new pid namespace, reported once by the kernel programs (also a new namespace that took a
/// gone one's inode: `replaced`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PidnsEvent {
    pub kind: u32,
    pub pidns: u32,
    pub level: u32,
    pub parent: u32,
    pub first_tid: u32,
    /// 1 when the namespace took the inode of one that ended (its record was replaced).
    pub replaced: u32,
    pub ts_ns: u64,
    /// Start time of the namespace's init.
    pub reaper_start: u64,
}

/// A process (its leader) moved to another cgroup and now belongs to `container`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MigrateEvent {
    pub kind: u32,
    pub host_pid: u32,
    pub container: u32,
    pub slot: u32,
    pub threadgroup: u32,
}

/// One record of the `task_comms` iterator: a task's host tid and command, for `ps` (one read
/// of the iterator instead of a /proc path walk per task).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskComm {
    pub host_tid: u32,
    /// task_struct.comm: NUL-padded, at most 15 bytes of name.
    pub comm: [u8; 16],
}

/// Whether an entry's start time denotes the same task as a task whose
/// `task_struct.start_time` is `start_ns`. Seeded entries only have clock-tick precision.
#[expect(clippy::inline_always, reason = "called by the kernel programs, which inline every helper")]
#[inline(always)]
pub fn same_start(entry_start: u64, entry_flags: u8, start_ns: u64, tick_ns: u64) -> bool {
    if entry_flags & task_flags::SEEDED != 0 && tick_ns != 0 {
        entry_start / tick_ns == start_ns / tick_ns
    } else {
        entry_start == start_ns
    }
}

/// Value of the PENDING_CALLS map (host tid -> what a syscall's exit needs from its entry), for
/// the crossings inside structures (issue 15): which syscall stashed it (an exit only takes a
/// value its own syscall stashed), the command, the descriptor and up to two user addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingCall {
    pub syscall: u16,
    pub cmd: u16,
    pub fd: u32,
    pub a: u64,
    pub b: u64,
}

/// The map keys and values the daemon reads and writes with aya.
#[cfg(feature = "user")]
mod pod {
    use super::{
        CgroupContainer, DeepLevels, KernelOffsets, LevelIds, PidnsInfo, TaskEntry, VirtKey, VirtSlot,
        VirtValue, audit,
    };

    macro_rules! pod {
        ($($t:ty),* $(,)?) => { $(
            // SAFETY: a #[repr(C)] struct of integers and integer arrays whose padding is explicit
            // (`pad` fields; the layout tests check the sizes): every bit pattern is a valid value
            // and no byte is uninitialized.
            unsafe impl aya::Pod for $t {}
        )* };
    }
    pod!(
        KernelOffsets,
        LevelIds,
        TaskEntry,
        DeepLevels,
        VirtKey,
        PidnsInfo,
        VirtValue,
        VirtSlot,
        CgroupContainer,
        audit::ContainerCounters
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_are_compact() {
        assert_eq!(size_of::<LevelIds>(), 8);
        assert_eq!(size_of::<TaskEntry>(), 56);
        assert_eq!(core::mem::offset_of!(TaskEntry, level), copies::WORD);
        assert_eq!(core::mem::offset_of!(TaskEntry, copies), copies::WORD + 2);
        assert_eq!(size_of::<VirtKey>(), 8);
        assert_eq!(size_of::<DeepLevels>(), 8 + 8 * DEEP_SLOTS);
        assert!(DEEP_SLOTS >= DEEP_LEVELS && DEEP_SLOTS.is_power_of_two());
        assert!(INLINE_LEVELS.is_power_of_two());
        assert_eq!(size_of::<PidnsEvent>(), 40);
        assert_eq!(size_of::<TaskComm>(), 20);
        assert_eq!(size_of::<PidnsInfo>(), 8 + 24 + 4 * ANCESTOR_SLOTS);
        assert!(ANCESTOR_SLOTS >= MAX_LEVELS && ANCESTOR_SLOTS.is_power_of_two());
        assert_eq!(size_of::<VirtValue>(), 8);
        assert_eq!(size_of::<Released>(), 16);
        assert_eq!(size_of::<VirtSlot>(), 16);
        assert!(released::SLOTS.is_power_of_two());
    }

    #[test]
    fn virt_front_slots_are_in_number_order() {
        let key = |nr| released::key(0xF000_0100, nr);
        assert!(virt_front::slot(key(7)) < virt_front::SLOTS);
        assert_eq!((virt_front::slot(key(41)) + 1) % virt_front::SLOTS, virt_front::slot(key(42)));
        // Numbers a table apart share a slot: the second one goes to VIRT.
        assert_eq!(virt_front::slot(key(5)), virt_front::slot(key(5 + virt_front::SLOTS)));
        // Two counts to a word, each in its own half.
        assert_eq!(spill_count::lane(130), (65, 1, 0xFFFF_FFFF));
        assert_eq!(spill_count::lane(131), (65, 1 << 32, 0xFFFF_FFFF << 32));
        assert_eq!(spill_count::lane(virt_front::SLOTS - 1).0, virt_front::SPILL_WORDS - 1);
        assert_eq!(spill_count::lane(task_front::SLOTS - 1).0, task_front::SPILL_WORDS - 1);
        // Taking back what was added leaves the other half alone.
        let (_, one, mask) = spill_count::lane(131);
        let w = (3u64 << 32 | 5).wrapping_add(one).wrapping_add(one.wrapping_neg());
        assert_eq!((w & mask, w & !mask), (3 << 32, 5));
        // Its number part is above any pid (PID_MAX_LIMIT is 2^22).
        assert!(virt_front::CLAIMED as u32 > 1 << 22);
    }

    #[test]
    fn released_slots_are_in_range_and_spread() {
        let mut seen = std::collections::HashSet::new();
        for nr in 1..1000 {
            let slot = released::slot(released::key(0xF000_0100, nr));
            assert!(slot < released::SLOTS);
            seen.insert(slot);
        }
        assert_eq!(seen.len(), 999, "consecutive pids of a namespace never share a slot");
        // Side by side: pids handed out in turn are released near each other, and their records
        // then share cache lines.
        let (a, b) = (released::key(0xF000_0100, 41), released::key(0xF000_0100, 42));
        assert_eq!((released::slot(a) + 1) % released::SLOTS, released::slot(b));
        // Namespaces start at different places (inodes are handed out in turn too).
        let starts: std::collections::HashSet<u32> =
            (0..64).map(|i| released::slot(released::key(0xF000_0100 + i, 0))).collect();
        assert!(starts.len() > 60, "{} starting slots for 64 namespaces", starts.len());
    }

    #[test]
    fn same_start_respects_seed_precision() {
        let tick = 10_000_000;
        // Kernel entry: exact.
        assert!(same_start(123_456_789, 0, 123_456_789, tick));
        assert!(!same_start(123_456_789, 0, 123_456_790, tick));
        // Seeded entry: same tick matches, another tick does not.
        assert!(same_start(120_000_000, task_flags::SEEDED, 123_456_789, tick));
        assert!(!same_start(120_000_000, task_flags::SEEDED, 133_456_789, tick));
    }

    #[test]
    fn pidns_info_from_chain() {
        let chain = [10, 20, 30];
        let info = PidnsInfo::from_chain(&chain, 1, 7, pidns_source::SEED, 99);
        assert_eq!((info.level, info.parent, info.first_tid, info.reaper_start), (1, 10, 7, 99));
        assert_eq!(&info.ancestors[..3], &[10, 20, 0]);
        let root = PidnsInfo::from_chain(&chain, 0, 1, pidns_source::SEED, 0);
        assert_eq!((root.level, root.parent, root.ancestors[0]), (0, 0, 10));
    }
}
