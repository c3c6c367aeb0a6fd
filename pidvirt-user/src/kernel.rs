//! Loading, attaching and reading the kernel programs and their maps.

use std::{
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
    sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release},
};

use aya::maps::{Array, HashMap, IterableMap as _, Map, MapData, MapError, PerCpuArray, Queue};
use pidvirt_common::{
    CgroupContainer, DeepLevels, INLINE_LEVELS, LevelIds, PidnsInfo, TaskEntry, TaskSlot, VirtKey, VirtSlot,
    VirtValue,
    audit::{ContainerCounters, LSM_HOOKS, Mode, NSYSCALLS, NVERDICTS, SYSCALLS, Verdict},
    catalogue::{Program, SyscallSpec, map},
    counter, released, slots, spill_count, task_front, tid_filter, virt_front,
};

/// The kernel programs, compiled for the BPF target by build.rs (aya-build).
pub static PROGRAM_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pidvirt"));

/// The kernel programs, or the error of a build that skipped them.
pub fn program_object() -> Result<&'static [u8], LoadError> {
    if PROGRAM_OBJECT.is_empty() { Err(LoadError::NoPrograms) } else { Ok(PROGRAM_OBJECT) }
}

/// The syscall tracepoint programs: (program, tracepoint) for every hooked side of every
/// watched syscall (the hook list: the catalogue's SYSCALLS).
pub fn syscall_hooks(watched: &dyn Fn(&SyscallSpec) -> bool) -> Vec<(Program, String)> {
    SYSCALLS
        .iter()
        .filter(|spec| watched(spec))
        .flat_map(|spec| {
            spec.hooks().map(move |(program, side)| (program, format!("{}{}", side.prefix(), spec.name)))
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("pidvirt must run as root to load eBPF programs (effective uid is {0})")]
    NotRoot(u32),
    #[error(transparent)]
    Offsets(#[from] crate::btf::OffsetError),
    #[error(transparent)]
    Tracefs(#[from] pidvirt_common::tracefs::TracefsError),
    #[error(
        "this pidvirt was built without its kernel programs (AYA_BUILD_SKIP): rebuild it with bpf-linker"
    )]
    NoPrograms,
    #[error("fentry/fexit on the syscall functions is unavailable: {0}")]
    NoFentry(String),
    #[error("loading the eBPF object failed: {0}")]
    Object(#[source] aya::EbpfError),
    #[error("the kernel refused program `{program}`: {message}")]
    Refused { program: String, message: String },
    #[error("attaching `{program}` to {hook} failed: {message}")]
    Attach { program: String, hook: String, message: String },
    #[error("map `{0}` missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map `{name}`: {source}")]
    Map { name: &'static str, source: MapError },
    #[error("pinning in bpffs: {0}")]
    Pin(String),
    #[error("reading the possible CPUs (/sys/devices/system/cpu/possible): {0}")]
    PossibleCpus(String),
}

/// Handles on the maps the daemon reads and seeds.
pub struct KernelMaps {
    /// The task map's front (pidvirt_common::task_front), mapped: written with the programs'
    /// claims.
    task_front: Mapped<TaskSlot>,
    /// How many tids of each of its slots TASKS holds (pidvirt_common::spill_count), mapped:
    /// counted atomically, as the programs count.
    task_spills: Mapped<u64>,
    /// The tids whose front slot holds another tid.
    tasks: HashMap<MapData, u32, TaskEntry>,
    /// A second descriptor of TASKS, for reading it whole in batches (aya has no batch ops).
    tasks_fd: OwnedFd,
    pub deep: HashMap<MapData, u32, DeepLevels>,
    pub virt: HashMap<MapData, VirtKey, VirtValue>,
    /// The reverse map's front (pidvirt_common::virt_front), mapped; read before VIRT.
    virt_front: Mapped<VirtSlot>,
    /// How many keys of each of its slots VIRT holds, mapped as `task_spills`.
    virt_spills: Mapped<u64>,
    pub pidns: HashMap<MapData, u32, PidnsInfo>,
    pub counters: PerCpuArray<MapData, u64>,
    /// Crossing counters per container slot.
    pub counts: PerCpuArray<MapData, ContainerCounters>,
    pub free_slots: Queue<MapData, u32>,
    pub cgroups: HashMap<MapData, u64, CgroupContainer>,
    pub config: Array<MapData, u32>,
    /// The task map's generations (pidvirt_common::tasks_generation).
    pub tasks_generation: Array<MapData, u64>,
    /// Per-container policy (pidvirt_common::audit::Mode; no entry: observe).
    pub modes: HashMap<MapData, u32, u32>,
    pub meta: Array<MapData, u64>,
    /// The daemon's half of the tid filter (pidvirt_common::tid_filter).
    pub seeded_tids: Array<MapData, u64>,
    /// Mount namespace -> pid namespace of the procfs at its /proc.
    pub procfs: HashMap<MapData, u32, u32>,
}

/// What one counter slot counted (summed over CPUs).
#[derive(Clone, Debug)]
pub struct SlotCounts {
    /// Index `syscall * NVERDICTS + verdict`.
    pub crossings: Vec<u64>,
    pub ringbuf_drops: u64,
    pub reaped: u64,
    /// Denials per LSM hook.
    pub denied: Vec<u64>,
}

impl SlotCounts {
    /// Adds what `other` counted.
    pub fn add(&mut self, other: &SlotCounts) {
        for (t, n) in self.crossings.iter_mut().zip(&other.crossings) {
            *t += n;
        }
        for (t, n) in self.denied.iter_mut().zip(&other.denied) {
            *t += n;
        }
        self.ringbuf_drops += other.ringbuf_drops;
        self.reaped += other.reaped;
    }
}

impl Default for SlotCounts {
    fn default() -> Self {
        Self {
            crossings: vec![0; NSYSCALLS * NVERDICTS],
            ringbuf_drops: 0,
            reaped: 0,
            denied: vec![0; LSM_HOOKS.len()],
        }
    }
}

/// Denials by LSM hook name.
pub fn named_denied(values: &[u64]) -> std::collections::BTreeMap<String, u64> {
    LSM_HOOKS.iter().zip(values).map(|(h, n)| (h.name.to_string(), *n)).collect()
}

/// How full a map is (`pidvirt_map_entries`, `pidvirt_map_capacity`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Occupancy {
    pub map: &'static str,
    pub entries: u64,
    /// Its `max_entries` (0 if the kernel would not say).
    pub capacity: u64,
}

/// How full hash map `m` is: its entries read in batches where the kernel can.
fn occupancy<K: aya::Pod + Default, V: aya::Pod + Default>(
    name: &'static str,
    m: &HashMap<MapData, K, V>,
) -> Occupancy {
    let data = m.map();
    let entries = match lookup_batch::<K, V>(data.fd().as_fd()) {
        Ok(entries) => entries.len(),
        Err(_) => m.keys().flatten().count(),
    };
    let capacity = data.info().map_or(0, |i| i.max_entries());
    Occupancy { map: name, entries: entries as u64, capacity: u64::from(capacity) }
}

/// An array map (created BPF_F_MMAPABLE) mapped into the daemon: its slots are read and written
/// in place, with the same atomics as the programs'.
struct Mapped<T> {
    memory: memmap2::MmapRaw,
    /// The map's descriptor, held as the other maps' are (the mapping alone would keep the map,
    /// but not show it among the daemon's).
    _map: Map,
    len: u32,
    _slot: std::marker::PhantomData<T>,
}

impl<T> Mapped<T> {
    fn open(name: &'static str, map: Map) -> Result<Self, LoadError> {
        let err = |e: std::io::Error| LoadError::Map { name, source: MapError::from(e) };
        let Map::Array(data) = &map else {
            return Err(err(std::io::Error::from(std::io::ErrorKind::InvalidInput)));
        };
        let info = data.info().map_err(|e| LoadError::Map { name, source: e })?;
        if info.value_size() as usize != size_of::<T>() {
            return Err(err(std::io::Error::other(format!(
                "value size {} where the daemon expects {}",
                info.value_size(),
                size_of::<T>()
            ))));
        }
        let len = info.max_entries();
        let memory = memmap2::MmapOptions::new()
            .len(len as usize * size_of::<T>())
            .map_raw(&data.fd().as_fd())
            .map_err(err)?;
        Ok(Self { memory, _map: map, len, _slot: std::marker::PhantomData })
    }

    /// Slot `i` (None beyond the array).
    fn at(&self, i: u32) -> Option<*mut T> {
        // SAFETY: within the mapping, whose slots are T-sized and T-aligned (page-aligned array).
        (i < self.len).then(|| unsafe { self.memory.as_mut_ptr().cast::<T>().add(i as usize) })
    }
}

/// A front table's slot (TASK_FRONT's, VIRT_FRONT's): a u64 key first (0: an empty slot;
/// `CLAIMED`: a writer is writing its value), then the value.
///
/// # Safety
/// `#[repr(C)]`, its first field the u64 key, and plain integers throughout: any bit pattern is
/// a valid value (the slots are read while the programs write them).
unsafe trait FrontSlot: Copy {
    const CLAIMED: u64;
}

// SAFETY: `tid` is TaskSlot's first field (repr(C)).
unsafe impl FrontSlot for TaskSlot {
    const CLAIMED: u64 = task_front::CLAIMED;
}

// SAFETY: `key` is VirtSlot's first field (repr(C)).
unsafe impl FrontSlot for VirtSlot {
    const CLAIMED: u64 = virt_front::CLAIMED;
}

impl<T: FrontSlot> Mapped<T> {
    /// Slot `i`'s key, as the programs write it (atomically, with compare-and-swap).
    fn key(&self, i: u32) -> Option<&std::sync::atomic::AtomicU64> {
        // SAFETY: the key is the naturally aligned first u64 of a mapped slot (FrontSlot), only
        // ever accessed atomically or by aligned 64-bit loads and stores.
        self.at(i).map(|s| unsafe { std::sync::atomic::AtomicU64::from_ptr(s.cast::<u64>()) })
    }

    /// Slot `i` if it holds `key`'s value (read between two reads of the slot's key: a slot freed
    /// and taken by another key meanwhile is not read as `key`'s).
    fn slot(&self, i: u32, key: u64) -> Option<T> {
        let k = self.key(i)?;
        if key == 0 || key == T::CLAIMED || k.load(Acquire) != key {
            return None;
        }
        // SAFETY: a mapped slot; a plain record of integers (FrontSlot: any bit pattern is valid).
        let mut s = unsafe { std::ptr::read_volatile(self.at(i)?) };
        // The value's loads before the key's second load.
        std::sync::atomic::fence(Acquire);
        if k.load(Relaxed) != key {
            return None;
        }
        // Its copy may have caught the key CLAIMED by a rewrite for the same key.
        // SAFETY: the key is the slot's first u64 (FrontSlot).
        unsafe { std::ptr::write(std::ptr::from_mut(&mut s).cast::<u64>(), key) };
        Some(s)
    }

    /// How full the table is: the slots holding a value.
    fn occupancy(&self, map: &'static str) -> Occupancy {
        let entries = (0..self.len)
            .filter_map(|i| self.key(i))
            .filter(|k| ![0, T::CLAIMED].contains(&k.load(Relaxed)))
            .count();
        Occupancy { map, entries: entries as u64, capacity: u64::from(self.len) }
    }
}

impl Mapped<TaskSlot> {
    /// The entry of slot `i` if it is `tid`'s.
    fn entry(&self, i: u32, tid: u64) -> Option<TaskEntry> {
        self.slot(i, tid).map(|s| s.entry)
    }

    /// Claims slot `i` from `held` (0: a free slot; a tid: its entry), as the programs do, lets
    /// `write` change the entry, and publishes `tid`. Err where the slot did not hold `held`;
    /// Ok(false) where `write` declined (the slot is given back as it was).
    fn claimed(
        &self,
        i: u32,
        held: u64,
        tid: u32,
        write: impl FnOnce(&mut TaskEntry) -> bool,
    ) -> Result<bool, ()> {
        let (Some(key), Some(s)) = (self.key(i), self.at(i)) else { return Err(()) };
        if key.compare_exchange(held, task_front::CLAIMED, AcqRel, Acquire).is_err() {
            return Err(());
        }
        // SAFETY: a mapped slot, claimed: no other writer writes its entry.
        let mut entry = unsafe { std::ptr::read_volatile(&raw const (*s).entry) };
        let written = write(&mut entry);
        if written {
            // SAFETY: as above.
            unsafe { std::ptr::write_volatile(&raw mut (*s).entry, entry) };
        }
        // Published after the entry (the programs read the tid, then the entry).
        key.store(if written { u64::from(tid) } else { held }, Release);
        Ok(written)
    }

    /// The slots holding an entry, with their entries.
    fn entries(&self) -> Vec<(u32, TaskEntry)> {
        (0..self.len)
            .filter_map(|i| {
                let tid = self.key(i)?.load(Relaxed);
                Some((tid as u32, self.entry(i, tid)?))
            })
            .collect()
    }
}

/// A front's spill counts (pidvirt_common::spill_count).
impl Mapped<u64> {
    /// The word where slot `slot` counts, and its lane (None beyond the map).
    fn lane(&self, slot: u32) -> Option<(&std::sync::atomic::AtomicU64, u64, u64)> {
        let (word, one, mask) = spill_count::lane(slot);
        // SAFETY: a naturally aligned u64 of the mapping, which lives as long as `self`; the
        // programs and the daemon change it by atomic adds only.
        self.at(word).map(|w| (unsafe { std::sync::atomic::AtomicU64::from_ptr(w) }, one, mask))
    }

    /// Whether the hash map behind the front may hold a key of slot `slot` (a slot beyond the
    /// map: it may).
    fn spilled(&self, slot: u32) -> bool {
        self.lane(slot).is_none_or(|(w, _, mask)| w.load(Acquire) & mask != 0)
    }

    /// Counts a key of slot `slot` into the hash map (before the insert); false beyond the map,
    /// where no key may go.
    fn count(&self, slot: u32) -> bool {
        self.lane(slot).map(|(w, one, _)| w.fetch_add(one, AcqRel)).is_some()
    }

    /// Takes back a key of slot `slot` (after its removal, or after an insert that failed).
    fn uncount(&self, slot: u32) {
        if let Some((w, one, _)) = self.lane(slot) {
            w.fetch_sub(one, AcqRel);
        }
    }
}

/// A task entry with all its levels.
#[derive(Clone, Debug)]
pub struct FullTask {
    pub entry: TaskEntry,
    /// Ids at levels 0..=level.
    pub ids: Vec<LevelIds>,
}

impl FullTask {
    pub fn at(&self, level: u32) -> Option<LevelIds> {
        self.ids.get(level as usize).copied()
    }
}

/// BPF_NOEXIST
const NOEXIST: u64 = 1;

impl KernelMaps {
    /// Takes the maps the daemon uses from `get` (the loaded object, or the pins).
    pub fn open(mut get: impl FnMut(&'static str) -> Result<Map, LoadError>) -> Result<Self, LoadError> {
        fn err(name: &'static str) -> impl FnOnce(MapError) -> LoadError {
            move |source| LoadError::Map { name, source }
        }
        let tasks = get(map::TASKS)?;
        let tasks_fd = match &tasks {
            Map::HashMap(data) => data.fd().as_fd().try_clone_to_owned(),
            _ => Err(std::io::Error::from(std::io::ErrorKind::InvalidInput)),
        }
        .map_err(|e| LoadError::Map { name: map::TASKS, source: MapError::from(e) })?;
        Ok(Self {
            task_front: Mapped::open(map::TASK_FRONT, get(map::TASK_FRONT)?)?,
            task_spills: Mapped::open(map::TASK_SPILLS, get(map::TASK_SPILLS)?)?,
            tasks: HashMap::try_from(tasks).map_err(err(map::TASKS))?,
            tasks_fd,
            deep: HashMap::try_from(get(map::DEEP)?).map_err(err(map::DEEP))?,
            virt: HashMap::try_from(get(map::VIRT)?).map_err(err(map::VIRT))?,
            virt_front: Mapped::open(map::VIRT_FRONT, get(map::VIRT_FRONT)?)?,
            virt_spills: Mapped::open(map::VIRT_SPILLS, get(map::VIRT_SPILLS)?)?,
            pidns: HashMap::try_from(get(map::PIDNS)?).map_err(err(map::PIDNS))?,
            counters: PerCpuArray::try_from(get(map::COUNTERS)?).map_err(err(map::COUNTERS))?,
            counts: PerCpuArray::try_from(get(map::COUNTS)?).map_err(err(map::COUNTS))?,
            free_slots: Queue::try_from(get(map::FREE_SLOTS)?).map_err(err(map::FREE_SLOTS))?,
            cgroups: HashMap::try_from(get(map::CGROUPS)?).map_err(err(map::CGROUPS))?,
            procfs: HashMap::try_from(get(map::PROCFS)?).map_err(err(map::PROCFS))?,
            config: Array::try_from(get(map::CONFIG)?).map_err(err(map::CONFIG))?,
            tasks_generation: Array::try_from(get(map::TASKS_GENERATION)?)
                .map_err(err(map::TASKS_GENERATION))?,
            modes: HashMap::try_from(get(map::MODES)?).map_err(err(map::MODES))?,
            meta: Array::try_from(get(map::META)?).map_err(err(map::META))?,
            seeded_tids: Array::try_from(get(map::SEEDED_TIDS)?).map_err(err(map::SEEDED_TIDS))?,
        })
    }

    /// Every task's entry: the front's, and those of TASKS (read in batches where the kernel
    /// can) whose tid the front does not hold.
    pub fn task_entries(&self) -> Vec<(u32, TaskEntry)> {
        // TASKS first: an entry the programs move to the front meanwhile is then read in one or
        // the other.
        let spilled = match lookup_batch(self.tasks_fd.as_fd()) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::debug!("batch lookup of TASKS: {e}; reading it entry by entry");
                self.tasks.iter().filter_map(Result::ok).collect()
            }
        };
        let mut entries = self.task_front.entries();
        if !spilled.is_empty() {
            // A tid in both (a task the programs recorded in the front while the daemon seeded it
            // into TASKS): the front's entry is what the programs read.
            let front: std::collections::HashSet<u32> = entries.iter().map(|(tid, _)| *tid).collect();
            entries.extend(spilled.into_iter().filter(|(tid, _)| !front.contains(tid)));
        }
        entries
    }

    /// Every task with its ids at every level.
    pub fn all_tasks(&self) -> Vec<FullTask> {
        self.task_entries().into_iter().filter_map(|(tid, e)| self.complete(tid, e)).collect()
    }

    /// The task with host tid `tid`.
    pub fn task(&self, tid: u32) -> Option<FullTask> {
        let e = self.task_entry(tid)?;
        self.complete(tid, e)
    }

    /// Whether TASKS may hold a tid of front slot `slot` (the programs' maps::task_spilled).
    fn spilled(&self, slot: u32) -> bool {
        self.task_spills.spilled(slot)
    }

    /// The entry of host tid `tid`, as the programs find it (maps::task_get).
    fn task_entry(&self, tid: u32) -> Option<TaskEntry> {
        // Tid 0 is never recorded, and 0 is an empty slot.
        if tid == 0 {
            return None;
        }
        let slot = task_front::slot(tid);
        if let Some(e) = self.task_front.entry(slot, u64::from(tid)) {
            return Some(e);
        }
        if !self.spilled(slot) {
            return None;
        }
        self.tasks.get(&tid, 0).ok()
    }

    fn complete(&self, tid: u32, entry: TaskEntry) -> Option<FullTask> {
        let level = entry.level as usize;
        let mut ids: Vec<LevelIds> = entry.nr.iter().take((level + 1).min(INLINE_LEVELS)).copied().collect();
        if level >= INLINE_LEVELS {
            let deep = self.deep.get(&tid, 0).ok()?;
            ids.extend(deep.nr.iter().take(level + 1 - INLINE_LEVELS));
        }
        Some(FullTask { entry, ids })
    }

    /// Host tid of the task numbered `nr` in pid namespace `pidns`, checked against its entry.
    pub fn resolve(&self, pidns: u32, level: u32, nr: u32) -> Option<FullTask> {
        let key = VirtKey { pidns, nr };
        // Read twice: a slot rewritten for the same key between a read's two loads of the key
        // (a pid reused) may give a value half old, half new.
        let v = match (self.front(key), self.front(key)) {
            (Some(a), Some(b)) if a == b => a.value,
            _ => self.virt.get(&key, 0).ok()?,
        };
        let t = self.task(v.host_tid)?;
        (v.points_at(&t.entry) && t.at(level).map(|ids| ids.tid) == Some(nr)).then_some(t)
    }

    pub fn pidns_all(&self) -> Vec<(u32, PidnsInfo)> {
        self.pidns.iter().filter_map(Result::ok).collect()
    }

    /// What counter slot `slot` counted, summed over CPUs.
    pub fn slot_counts(&self, slot: u32) -> SlotCounts {
        let mut c = SlotCounts::default();
        if let Ok(values) = self.counts.get(&slot, 0) {
            for v in values.iter() {
                for (total, n) in c.crossings.iter_mut().zip(v.crossings.iter()) {
                    *total += n;
                }
                for (total, n) in c.denied.iter_mut().zip(v.denied.iter()) {
                    *total += n;
                }
                c.ringbuf_drops += v.ringbuf_drops;
                c.reaped += v.reaped;
            }
        }
        c
    }

    /// What each counter slot counted, by slot (each read once).
    pub fn all_slot_counts(&self) -> Vec<SlotCounts> {
        (0..self.counts.len()).map(|slot| self.slot_counts(slot)).collect()
    }

    /// How full the maps are that hold an entry per task, per namespace or per cgroup container.
    pub fn occupancy(&self) -> [Occupancy; 7] {
        [
            self.task_front.occupancy(map::TASK_FRONT),
            occupancy(map::TASKS, &self.tasks),
            occupancy(map::DEEP, &self.deep),
            self.virt_front.occupancy(map::VIRT_FRONT),
            occupancy(map::VIRT, &self.virt),
            occupancy(map::PIDNS, &self.pidns),
            occupancy(map::CGROUPS, &self.cgroups),
        ]
    }

    /// Sets a container's policy where the enforcer reads it (observe: no entry), and tells the
    /// programs how many containers enforce.
    pub fn set_mode(&mut self, number: u32, m: Mode) {
        if m == Mode::Observe {
            let _ = self.modes.remove(&number);
        } else if let Err(e) = self.modes.insert(number, m as u32, 0) {
            tracing::error!("cannot set the policy of container {number}: {e}");
        }
        // A walk that fails counts as "some enforce": the programs then read each policy.
        let count = self.modes.keys().collect::<Result<Vec<u32>, _>>().map_or(u32::MAX, |k| k.len() as u32);
        if let Err(e) = self.config.set(pidvirt_common::config::ENFORCING, count, 0) {
            tracing::error!("cannot tell the enforcer how many containers enforce ({count}): {e}");
        }
    }

    /// A free counter slot (for a cgroup container), or the overflow slot.
    pub fn take_slot(&mut self) -> u32 {
        self.free_slots.pop(0).unwrap_or(slots::OVERFLOW)
    }

    /// Zeroes counter slot `slot` and returns it to the free slots; returns what it counted.
    pub fn release_slot(&mut self, slot: u32) -> SlotCounts {
        let counted = self.slot_counts(slot);
        if slot >= slots::FIRST_FREE {
            let zero = vec![ContainerCounters::default(); aya::util::nr_cpus().unwrap_or(1)];
            if let Ok(values) = aya::maps::PerCpuValues::try_from(zero) {
                let _ = self.counts.set(slot, values, 0);
            }
            let _ = self.free_slots.push(slot, 0);
        }
        counted
    }

    /// Per-CPU counters summed, up to the end of the crossing region (the slots above it are
    /// spare: one lookup each would be wasted).
    pub fn counters(&self) -> Vec<u64> {
        let used = counter::CROSSING_BASE + (NSYSCALLS * NVERDICTS) as u32;
        (0..used).map(|i| self.counters.get(&i, 0).map_or(0, |v| v.iter().sum())).collect()
    }

    /// Seeds a task found in /proc, without overwriting anything the kernel programs wrote.
    /// `ns` holds the namespace inode at each level; `reaper_start` gives the start time of a
    /// namespace's init (0 where /proc did not show it). Returns whether the task entry was
    /// inserted.
    pub fn seed(
        &mut self,
        entry: &TaskEntry,
        ids: &[LevelIds],
        ns: &[u32],
        reaper_start: impl Fn(u32) -> u64,
    ) -> Result<bool, MapError> {
        let tid = entry.host_tid();
        if self.task_entry(tid).is_some() {
            return Ok(false);
        }
        let slot = task_front::slot(tid);
        // Into a free slot, unless the programs wrote the tid's entry to TASKS meanwhile (the
        // slot then held another tid): theirs is the newer.
        match self.task_front.claimed(slot, 0, tid, |e| {
            let theirs = self.spilled(slot) && self.tasks.get(&tid, 0).is_ok();
            if !theirs {
                *e = *entry;
            }
            !theirs
        }) {
            Ok(true) => {}
            Ok(false) => return Ok(false),
            // The programs wrote it there meanwhile.
            Err(()) if self.task_front.entry(slot, u64::from(tid)).is_some() => return Ok(false),
            Err(()) => {
                // Counted before the insert (the programs look in TASKS only where a slot counts
                // tids there), and taken back if nothing was inserted.
                if !self.task_spills.count(slot) {
                    return Err(MapError::OutOfBounds { index: slot, max_entries: task_front::SLOTS });
                }
                match self.tasks.insert(tid, *entry, NOEXIST) {
                    Ok(()) => {}
                    Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                        self.task_spills.uncount(slot);
                        return Ok(false);
                    }
                    Err(e) => {
                        self.task_spills.uncount(slot);
                        return Err(e);
                    }
                }
            }
        }
        // No generation bump: the insert only succeeds where the tid had no entry, so nobody
        // holds a copy of it (pidvirt_common::CallerCache).
        self.seeded_tid(tid, true);
        if ids.len() > INLINE_LEVELS {
            let mut deep = DeepLevels { start_time: entry.start_time, ..Default::default() };
            for (slot, id) in deep.nr.iter_mut().zip(&ids[INLINE_LEVELS..]) {
                *slot = *id;
            }
            self.deep.insert(tid, deep, 0)?;
        }
        for (level, (id, pidns)) in ids.iter().zip(ns).enumerate().skip(1) {
            let key = VirtKey { pidns: *pidns, nr: id.tid };
            // Kept as in VIRT (NOEXIST): an entry the programs wrote is newer than the walk's.
            // Counted before the insert, and taken back if nothing was inserted.
            let vslot = virt_slot(key);
            if self.front(key).is_none()
                && self.virt_spills.count(vslot)
                && self.virt.insert(key, VirtValue::of(entry), NOEXIST).is_err()
            {
                self.virt_spills.uncount(vslot);
            }
            let info = PidnsInfo::from_chain(
                ns,
                level,
                tid,
                pidvirt_common::pidns_source::SEED,
                reaper_start(*pidns),
            );
            self.seed_pidns(*pidns, info);
        }
        // The counter slot of its namespace (known now: the kernel's or the one just seeded).
        if entry.level > 0 {
            let slot = self.pidns_slot(entry.pidns);
            self.retag(tid, |e| (e.container, slot));
        }
        Ok(true)
    }

    /// Makes tasks of cgroup `cgroup_id` (and below) members of a container (None: of no cgroup
    /// container), and tells the programs how many cgroup containers exist.
    pub fn set_cgroup(&mut self, cgroup_id: u64, container: Option<CgroupContainer>) -> Result<(), MapError> {
        match container {
            Some(c) => self.cgroups.insert(cgroup_id, c, 0)?,
            None => {
                let _ = self.cgroups.remove(&cgroup_id);
            }
        }
        let count = self.cgroups.keys().flatten().count() as u32;
        self.config.set(pidvirt_common::config::CGROUP_CONTAINERS, count, 0)
    }

    /// Sets the container and counter slot of task `tid` (if it is tracked).
    pub fn retag(&mut self, tid: u32, container: impl Fn(&TaskEntry) -> (u32, u32)) {
        let slot = task_front::slot(tid);
        if let Some(seen) = self.task_front.entry(slot, u64::from(tid)) {
            let (c, counter_slot) = container(&seen);
            // Claimed (the task's lookups miss it for that moment): written in place, the change
            // could land on another task's entry, had the slot changed hands since it was read.
            if (c, counter_slot) != (seen.container, seen.slot)
                && self.task_front.claimed(slot, u64::from(tid), tid, |e| {
                    let same = e.start_time == seen.start_time;
                    if same {
                        (e.container, e.slot) = (c, counter_slot);
                    }
                    same
                }) == Ok(true)
            {
                self.tasks_changed();
            }
            return;
        }
        if !self.spilled(slot) {
            return;
        }
        if let Ok(mut e) = self.tasks.get(&tid, 0) {
            let (c, slot) = container(&e);
            if (c, slot) != (e.container, e.slot) {
                e.container = c;
                e.slot = slot;
                // BPF_EXIST: never resurrect an entry the kernel just removed.
                let _ = self.tasks.insert(tid, e, 2);
                self.tasks_changed();
            }
        }
    }

    /// Forgets pid namespace `ns` (its record and its counter slot); returns what it counted.
    /// Makes the PROCFS map say exactly `known` (mount namespace -> pid namespace of its /proc).
    pub fn set_procfs(&mut self, known: &std::collections::HashMap<u32, u32>) -> Result<(), MapError> {
        let stale: Vec<u32> = self
            .procfs
            .iter()
            .filter_map(Result::ok)
            .filter(|(mnt, pid)| known.get(mnt) != Some(pid))
            .map(|(mnt, _)| mnt)
            .collect();
        for mnt in stale {
            let _ = self.procfs.remove(&mnt);
        }
        for (&mnt, &pid) in known {
            if self.procfs.get(&mnt, 0).ok() != Some(pid) {
                self.procfs.insert(mnt, pid, 0)?;
            }
        }
        Ok(())
    }

    pub fn forget_pidns(&mut self, ns: u32) -> Option<SlotCounts> {
        let info = self.pidns.get(&ns, 0).ok()?;
        let _ = self.pidns.remove(&ns);
        Some(self.release_slot(info.slot))
    }

    /// Registers pid namespace `ns` (level, parent, with a counter slot) unless the kernel
    /// already did.
    pub fn seed_pidns(&mut self, ns: u32, mut info: PidnsInfo) {
        if self.pidns.get(&ns, 0).is_ok() {
            return;
        }
        info.slot = if info.level == 0 { slots::HOST } else { self.take_slot() };
        if self.pidns.insert(ns, info, NOEXIST).is_err() && info.slot >= slots::FIRST_FREE {
            let _ = self.free_slots.push(info.slot, 0);
        }
    }

    /// The counter slot of pid namespace `ns`.
    pub fn pidns_slot(&self, ns: u32) -> u32 {
        self.pidns.get(&ns, 0).map_or(slots::OVERFLOW, |i| i.slot)
    }

    /// Removes a seeded entry that turned out stale (its task died during the walk), with its
    /// reverse entries, if the entry still is the one seeded.
    pub fn forget_seeded(&mut self, tid: u32, start_time: u64, ns: &[u32]) {
        let Some(t) = self.task(tid) else { return };
        if !t.entry.is_seeded() || t.entry.start_time != start_time {
            return;
        }
        for (level, ids) in t.ids.iter().enumerate().skip(1) {
            let Some(ns) = ns.get(level) else { break };
            let key = VirtKey { pidns: *ns, nr: ids.tid };
            if self.virt.get(&key, 0).is_ok_and(|v| v.host_tid == tid) && self.virt.remove(&key).is_ok() {
                self.virt_spills.uncount(virt_slot(key));
            }
        }
        if t.ids.len() > INLINE_LEVELS {
            let _ = self.deep.remove(&tid);
        }
        // The bit before the entry (the programs' maps::may_have_entry).
        self.seeded_tid(tid, false);
        let slot = task_front::slot(tid);
        if self.task_front.entry(slot, u64::from(tid)).is_some_and(|e| e == t.entry) {
            // A writer that claimed the slot meanwhile keeps it.
            let _ = self.task_front.key(slot).map(|k| k.compare_exchange(u64::from(tid), 0, AcqRel, Relaxed));
        } else if self.spilled(slot) && self.tasks.remove(&tid).is_ok() {
            self.task_spills.uncount(slot);
        }
        self.tasks_changed();
    }

    /// Sets or clears `tid`'s bit in the daemon's half of the tid filter
    /// (pidvirt_common::tid_filter). Only the daemon sets bits there and the programs only clear
    /// them, so a read-modify-write can at worst set a cleared bit again: a stale bit, which
    /// costs a lookup, never a wrong answer.
    fn seeded_tid(&mut self, tid: u32, set: bool) {
        let (word, bit) = tid_filter::bit(tid);
        let Ok(old) = self.seeded_tids.get(&word, 0) else { return };
        let new = if set { old | bit } else { old & !bit };
        if new != old
            && let Err(e) = self.seeded_tids.set(word, new, 0)
        {
            tracing::warn!("could not update the tid filter for {tid}: {e}");
        }
    }

    /// The reverse map's front slot of `key`, if it holds an entry of `key`.
    fn front(&self, key: VirtKey) -> Option<VirtSlot> {
        let key = released::key(key.pidns, key.nr);
        self.virt_front.slot(virt_front::slot(key), key)
    }

    /// To be called AFTER every write to the task map: the programs' per-CPU copies of a
    /// caller's entry are then taken again (pidvirt_common::CallerCache). The daemon is the only
    /// writer of its generation slot, so read-and-increment is safe; continuing from the map's
    /// value keeps it increasing across a daemon that adopts pinned maps.
    fn tasks_changed(&mut self) {
        let slot = pidvirt_common::tasks_generation::DAEMON;
        let next = self.tasks_generation.get(&slot, 0).unwrap_or(0).wrapping_add(1);
        if let Err(e) = self.tasks_generation.set(slot, next, 0) {
            tracing::warn!("could not bump the task map generation: {e}");
        }
    }
}

/// A record of type `T` (written by a kernel program) at the start of `bytes`, if it is long
/// enough.
pub fn read_record<T: Copy>(bytes: &[u8]) -> Option<T> {
    // SAFETY: the length is checked, `T` is a plain #[repr(C)] record of integers (any bit
    // pattern is valid), and read_unaligned makes no alignment assumption.
    (bytes.len() >= size_of::<T>()).then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

/// Every (key, value) of the hash map `fd`, read with BPF_MAP_LOOKUP_BATCH (Linux 5.6): a few
/// syscalls for the whole map, where iterating costs two per entry (get-next-key, lookup),
/// which made `ps` of 10,000 tasks spend ~100 ms in syscalls. Entries written or removed
/// meanwhile may or may not be seen, as with iteration.
fn lookup_batch<K: aya::Pod + Default, V: aya::Pod + Default>(
    fd: BorrowedFd<'_>,
) -> std::io::Result<Vec<(K, V)>> {
    /// The `batch` member of `union bpf_attr` (include/uapi/linux/bpf.h).
    #[repr(C)]
    #[derive(Default)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    let mut chunk = 1024usize;
    let (mut keys, mut values) = (vec![K::default(); chunk], vec![V::default(); chunk]);
    let mut out = Vec::new();
    // The resume token (a bucket index for hash maps): room for any of its sizes.
    let (mut token, mut next) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { (&raw const token) as u64 },
            out_batch: (&raw mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: attr points at buffers of `count` keys and values of the map's own key and
        // value types (K, V are the map's), and at two u64 tokens; all outlive the call.
        let r = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, &raw mut attr, size_of::<BatchAttr>())
        };
        let err = (r < 0).then(std::io::Error::last_os_error);
        match err.as_ref().and_then(std::io::Error::raw_os_error) {
            // One bucket holds more entries than the buffers: larger buffers, same start.
            Some(libc::ENOSPC) => {
                chunk *= 4;
                keys.resize(chunk, K::default());
                values.resize(chunk, V::default());
                continue;
            }
            None | Some(libc::ENOENT) => {}
            Some(_) => return Err(err.unwrap_or_else(std::io::Error::last_os_error)),
        }
        let n = (attr.count as usize).min(chunk);
        out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
        // ENOENT: that was the last batch.
        if err.is_some() {
            return Ok(out);
        }
        token = next;
        first = false;
    }
}

/// The slot of reverse entry `key` in the reverse map's front (pidvirt_common::virt_front).
fn virt_slot(key: VirtKey) -> u32 {
    virt_front::slot(released::key(key.pidns, key.nr))
}

/// Crossing counts by syscall name and verdict name.
pub fn named_crossings(values: &[u64]) -> crate::api::Crossings {
    SYSCALLS
        .iter()
        .enumerate()
        .map(|(s, spec)| {
            let per_verdict = Verdict::ALL
                .iter()
                .map(|v| {
                    (v.name().to_string(), values.get(s * NVERDICTS + *v as usize).copied().unwrap_or(0))
                })
                .collect();
            (spec.name.to_string(), per_verdict)
        })
        .collect()
}

/// Counter values by group and name, for `stats`.
pub fn named_counters(
    values: &[u64],
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>> {
    counter::GROUPS
        .iter()
        .map(|(group, base, names)| {
            let named = names
                .iter()
                .enumerate()
                .map(|(i, name)| (name.to_string(), values.get(*base as usize + i).copied().unwrap_or(0)))
                .collect();
            (group.to_string(), named)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use aya_obj::{Object, ProgramSection};
    use pidvirt_common::catalogue::{LSM_HOOKS, Program, ProgramKind, SYSCALLS, SyscallSpec, map};

    use super::PROGRAM_OBJECT;

    fn object() -> Object {
        Object::parse(PROGRAM_OBJECT)
            .expect("the built eBPF object parses (was it built with AYA_BUILD_SKIP?)")
    }

    fn kind(section: &ProgramSection) -> Option<ProgramKind> {
        Some(match section {
            ProgramSection::BtfTracePoint => ProgramKind::TpBtf,
            ProgramSection::TracePoint => ProgramKind::Tracepoint,
            ProgramSection::RawTracePoint => ProgramKind::RawTracepoint,
            ProgramSection::Iter { .. } => ProgramKind::Iter,
            ProgramSection::Lsm { .. } => ProgramKind::Lsm,
            ProgramSection::FEntry { .. } => ProgramKind::FEntry,
            ProgramSection::FExit { .. } => ProgramKind::FExit,
            _ => return None,
        })
    }

    #[test]
    fn every_catalogued_program_is_in_the_object_and_nothing_else() {
        let obj = object();
        let mut expected: Vec<(&str, ProgramKind)> =
            Program::ALL.iter().map(|p| (p.name(), p.kind())).collect();
        expected.extend(LSM_HOOKS.iter().map(|h| (h.program, ProgramKind::Lsm)));
        for (prog, floor, kind) in SYSCALLS.iter().flat_map(SyscallSpec::function_programs) {
            expected.extend([(prog, kind), (floor, kind)]);
        }
        for (name, want) in &expected {
            let prog =
                obj.programs.get(*name).unwrap_or_else(|| panic!("program {name} is not in the object"));
            assert_eq!(kind(&prog.section), Some(*want), "program {name} has section {:?}", prog.section);
        }
        let mut unknown: Vec<&String> =
            obj.programs.keys().filter(|n| !expected.iter().any(|(e, _)| e == n)).collect();
        unknown.sort();
        assert!(unknown.is_empty(), "programs in the object but not in the catalogue: {unknown:?}");
    }

    #[test]
    fn every_catalogued_map_is_in_the_object_and_nothing_else() {
        let obj = object();
        for name in map::ALL {
            assert!(obj.maps.contains_key(name), "map {name} is not in the object");
        }
        let mut unknown: Vec<&String> =
            obj.maps.keys().filter(|n| !n.starts_with('.') && !map::ALL.contains(&n.as_str())).collect();
        unknown.sort();
        assert!(unknown.is_empty(), "maps in the object but not in the catalogue: {unknown:?}");
    }
}
