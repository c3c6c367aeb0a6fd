//! Loading, attaching and reading the kernel programs and their maps.

use std::collections::HashMap as StdHashMap;

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePoint, Iter, ProgramError, TracePoint},
};
use pidvirt_common::{
    DeepLevels, INLINE_LEVELS, KernelOffsets, LevelIds, PidnsInfo, TaskEntry, VirtKey, VirtValue,
    audit::{ContainerCounters, NSYSCALLS, NVERDICTS, SYSCALLS, VERDICT_NAMES},
    counter,
};

/// The kernel programs, compiled for the BPF target by build.rs (aya-build).
pub static PROGRAM_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pidvirt"));

/// tp_btf programs following the task lifecycle: (program, tracepoint).
pub const LIFECYCLE_HOOKS: [(&str, &str); 5] = [
    ("sched_process_fork", "sched_process_fork"),
    ("sched_process_exec", "sched_process_exec"),
    ("sched_process_exit", "sched_process_exit"),
    ("sched_process_free", "sched_process_free"),
    ("cgroup_attach_task", "cgroup_attach_task"),
];

/// The syscall tracepoint programs: (program, tracepoint) for every hooked side of every
/// watched syscall (the hook list, from pidvirt_common::audit::SYSCALLS).
pub fn syscall_hooks() -> Vec<(String, String)> {
    let mut hooks = Vec::new();
    for spec in SYSCALLS {
        if spec.enter {
            hooks.push((format!("enter_{}", spec.name), format!("sys_enter_{}", spec.name)));
        }
        if spec.exit {
            hooks.push((format!("exit_{}", spec.name), format!("sys_exit_{}", spec.name)));
        }
    }
    hooks
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("pidvirt must run as root to load eBPF programs (effective uid is {0})")]
    NotRoot(u32),
    #[error(transparent)]
    Offsets(#[from] crate::btf::OffsetError),
    #[error(transparent)]
    Tracefs(#[from] crate::tracefs::TracefsError),
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
}

/// Sizes that can be chosen at load time.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub max_tasks: u32,
    pub ringbuf_bytes: u32,
    /// Seed existing tasks with the kernel's task iterator before the /proc walk.
    pub task_iterator: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { max_tasks: 262_144, ringbuf_bytes: 1 << 20, task_iterator: true }
    }
}

/// Formats a program error, with the verifier log when the kernel refused the program.
fn program_error(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError { io_error, verifier_log } => {
            format!("{io_error}\n--- verifier log ---\n{verifier_log}")
        }
        other => {
            let mut s = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        }
    }
}

/// The loaded object; dropping it detaches every program.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub maps: KernelMaps,
    pub events: RingBuf<MapData>,
    pub offsets: KernelOffsets,
    /// Programs attached, with their hooks, for `status`.
    pub attached: Vec<(String, String)>,
    /// Whether the task iterator seeded the existing tasks (or why not).
    pub iterator: Result<(), String>,
}

/// Loading eBPF programs (and mounting tracefs) needs root: say so first.
pub fn require_root() -> Result<(), LoadError> {
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(LoadError::NotRoot(euid));
    }
    Ok(())
}

/// Every offset the programs need: structure offsets from the kernel's BTF, syscall record
/// offsets from the tracepoint formats (checked on every hooked tracepoint).
pub fn resolve_offsets(tick_ns: u32) -> Result<KernelOffsets, LoadError> {
    let mut offsets = crate::btf::resolve_running_kernel(tick_ns)?;
    let root = crate::tracefs::tracefs_root()?;
    let enter = SYSCALLS.iter().filter(|s| s.enter).map(|s| s.name);
    let exit = SYSCALLS.iter().filter(|s| s.exit).map(|s| s.name);
    let (args, ret) = crate::tracefs::syscall_layout(&root, enter, exit)?;
    offsets.syscall_args = args;
    offsets.syscall_ret = ret;
    Ok(offsets)
}

/// Loads the object with `offsets`, attaches the lifecycle programs, and takes the maps.
pub fn load_and_attach(offsets: KernelOffsets, opts: &LoadOptions) -> Result<Loaded, LoadError> {
    require_root()?;
    let mut ebpf = EbpfLoader::new()
        .override_global("OFFSETS", &offsets, true)
        .map_max_entries("TASKS", opts.max_tasks)
        .map_max_entries("VIRT", opts.max_tasks)
        .map_max_entries("EVENTS", opts.ringbuf_bytes)
        .load(PROGRAM_OBJECT)
        .map_err(LoadError::Object)?;
    if let Err(e) = aya_log::EbpfLogger::init(&mut ebpf) {
        tracing::debug!("no eBPF log channel: {e}");
    }
    let btf = Btf::from_sys_fs().map_err(|e| LoadError::Object(aya::EbpfError::BtfError(e)))?;
    let mut attached = Vec::new();
    for (name, tp) in LIFECYCLE_HOOKS {
        let prog: &mut BtfTracePoint = ebpf
            .program_mut(name)
            .ok_or_else(|| LoadError::Refused { program: name.into(), message: "not in object".into() })?
            .try_into()
            .map_err(|e| LoadError::Refused { program: name.into(), message: program_error(&e) })?;
        prog.load(tp, &btf)
            .map_err(|e| LoadError::Refused { program: name.into(), message: program_error(&e) })?;
        prog.attach().map_err(|e| LoadError::Attach {
            program: name.into(),
            hook: format!("tp_btf/{tp}"),
            message: program_error(&e),
        })?;
        attached.push((name.to_string(), format!("tp_btf/{tp}")));
    }
    // Attached first; now record every task that already exists, exactly as the fork program
    // would (same code, same precision). The /proc walk that follows seeds what this missed.
    let iterator = if opts.task_iterator {
        run_task_iterator(&mut ebpf, &btf)
    } else {
        Err("disabled (--seed proc)".to_string())
    };
    for (name, tp) in syscall_hooks() {
        attach_tracepoint(&mut ebpf, &name, &name, &tp)?;
        attached.push((name, format!("syscalls:{tp}")));
    }
    let maps = KernelMaps::take(&mut ebpf)?;
    let events = RingBuf::try_from(ebpf.take_map("EVENTS").ok_or(LoadError::MissingMap("EVENTS"))?)
        .map_err(|source| LoadError::Map { name: "EVENTS", source })?;
    Ok(Loaded { ebpf, maps, events, offsets, attached, iterator })
}

/// The benchmark's floor: EMPTY programs attached to exactly the hooks pidvirt uses (the
/// lifecycle tp_btf hooks and every syscall tracepoint of the hook list). Dropping the result
/// detaches them.
pub fn attach_floor() -> Result<(Ebpf, Vec<(String, String)>), LoadError> {
    require_root()?;
    let mut ebpf = EbpfLoader::new().load(PROGRAM_OBJECT).map_err(LoadError::Object)?;
    let btf = Btf::from_sys_fs().map_err(|e| LoadError::Object(aya::EbpfError::BtfError(e)))?;
    let mut attached = Vec::new();
    for (_, tp) in LIFECYCLE_HOOKS {
        let name = format!("floor_{tp}");
        let refused = |message: String| LoadError::Refused { program: name.clone(), message };
        let prog: &mut BtfTracePoint = ebpf
            .program_mut(&name)
            .ok_or_else(|| refused("not in object".into()))?
            .try_into()
            .map_err(|e| refused(program_error(&e)))?;
        prog.load(tp, &btf).map_err(|e| refused(program_error(&e)))?;
        prog.attach().map_err(|e| refused(program_error(&e)))?;
        attached.push((name, format!("tp_btf/{tp}")));
    }
    crate::tracefs::tracefs_root()?;
    for (name, tp) in syscall_hooks() {
        attach_tracepoint(&mut ebpf, "floor_empty", &name, &tp)?;
        attached.push(("floor_empty".into(), format!("syscalls:{tp}")));
    }
    Ok((ebpf, attached))
}

/// Loads program `program` (once) and attaches it to syscalls:`tp`.
fn attach_tracepoint(ebpf: &mut Ebpf, program: &str, label: &str, tp: &str) -> Result<(), LoadError> {
    let refused = |message: String| LoadError::Refused { program: label.into(), message };
    let prog: &mut TracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| refused("not in object".into()))?
        .try_into()
        .map_err(|e| refused(program_error(&e)))?;
    if prog.fd().is_err() {
        prog.load().map_err(|e| refused(program_error(&e)))?;
    }
    prog.attach("syscalls", tp).map_err(|e| LoadError::Attach {
        program: label.into(),
        hook: format!("syscalls:{tp}"),
        message: program_error(&e),
    })?;
    Ok(())
}

/// Loads the `iter/task` program and reads its file once: one run over every task.
fn run_task_iterator(ebpf: &mut Ebpf, btf: &Btf) -> Result<(), String> {
    let prog: &mut Iter = ebpf
        .program_mut("seed_tasks")
        .ok_or("program seed_tasks not in object")?
        .try_into()
        .map_err(|e: ProgramError| e.to_string())?;
    prog.load("task", btf).map_err(|e| format!("load: {}", program_error(&e)))?;
    let id = prog.attach().map_err(|e| format!("attach: {}", program_error(&e)))?;
    let link = prog.take_link(id).map_err(|e| format!("link: {}", program_error(&e)))?;
    let mut file = link.into_file().map_err(|e| format!("open: {e}"))?;
    let mut sink = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut sink).map_err(|e| format!("read: {e}"))?;
    Ok(())
}

/// Handles on the maps the daemon reads and seeds.
pub struct KernelMaps {
    pub tasks: HashMap<MapData, u32, TaskEntry>,
    pub deep: HashMap<MapData, u32, DeepLevels>,
    pub virt: HashMap<MapData, VirtKey, VirtValue>,
    pub pidns: HashMap<MapData, u32, PidnsInfo>,
    pub counters: PerCpuArray<MapData, u64>,
    pub container_counters: PerCpuHashMap<MapData, u32, ContainerCounters>,
    pub cgroups: HashMap<MapData, u64, u32>,
    pub config: Array<MapData, u32>,
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

fn map_of<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, LoadError> {
    let m = ebpf.take_map(name).ok_or(LoadError::MissingMap(name))?;
    HashMap::try_from(m).map_err(|source| LoadError::Map { name, source })
}

impl KernelMaps {
    fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        let counters = ebpf.take_map("COUNTERS").ok_or(LoadError::MissingMap("COUNTERS"))?;
        let ccounters = ebpf.take_map("CCOUNTERS").ok_or(LoadError::MissingMap("CCOUNTERS"))?;
        let config = ebpf.take_map("CONFIG").ok_or(LoadError::MissingMap("CONFIG"))?;
        Ok(Self {
            cgroups: map_of(ebpf, "CGROUPS")?,
            config: Array::try_from(config).map_err(|source| LoadError::Map { name: "CONFIG", source })?,
            container_counters: PerCpuHashMap::try_from(ccounters)
                .map_err(|source| LoadError::Map { name: "CCOUNTERS", source })?,
            tasks: map_of(ebpf, "TASKS")?,
            deep: map_of(ebpf, "DEEP")?,
            virt: map_of(ebpf, "VIRT")?,
            pidns: map_of(ebpf, "PIDNS")?,
            counters: PerCpuArray::try_from(counters)
                .map_err(|source| LoadError::Map { name: "COUNTERS", source })?,
        })
    }

    /// Every task with its ids at every level.
    pub fn all_tasks(&self) -> Vec<FullTask> {
        let entries: Vec<(u32, TaskEntry)> = self.tasks.iter().filter_map(Result::ok).collect();
        entries.into_iter().filter_map(|(tid, e)| self.complete(tid, e)).collect()
    }

    /// The task with host tid `tid`.
    pub fn task(&self, tid: u32) -> Option<FullTask> {
        let e = self.tasks.get(&tid, 0).ok()?;
        self.complete(tid, e)
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
        let v = self.virt.get(&VirtKey { pidns, nr }, 0).ok()?;
        let t = self.task(v.host_tid)?;
        (v.points_at(&t.entry) && t.at(level).map(|ids| ids.tid) == Some(nr)).then_some(t)
    }

    pub fn pidns_all(&self) -> Vec<(u32, PidnsInfo)> {
        self.pidns.iter().filter_map(Result::ok).collect()
    }

    /// Crossing counters (summed over CPUs) of every container, or of one.
    pub fn crossings(&self, container: Option<u32>) -> StdHashMap<u32, (Vec<u64>, u64)> {
        let mut out = StdHashMap::new();
        let sum = |values: aya::maps::PerCpuValues<ContainerCounters>| {
            let mut crossings = vec![0u64; NSYSCALLS * NVERDICTS];
            let mut drops = 0;
            for v in values.iter() {
                for (total, n) in crossings.iter_mut().zip(v.crossings.iter()) {
                    *total += n;
                }
                drops += v.ringbuf_drops;
            }
            (crossings, drops)
        };
        match container {
            Some(c) => {
                if let Ok(v) = self.container_counters.get(&c, 0) {
                    out.insert(c, sum(v));
                }
            }
            None => {
                for (c, v) in self.container_counters.iter().filter_map(Result::ok) {
                    out.insert(c, sum(v));
                }
            }
        }
        out
    }

    /// Per-CPU counters summed.
    pub fn counters(&self) -> Vec<u64> {
        (0..counter::SLOTS).map(|i| self.counters.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0)).collect()
    }

    /// Seeds a task found in /proc, without overwriting anything the kernel programs wrote.
    /// `ns` holds the namespace inode at each level. Returns whether the task entry was inserted.
    pub fn seed(&mut self, entry: &TaskEntry, ids: &[LevelIds], ns: &[u32]) -> Result<bool, MapError> {
        let tid = entry.host_tid();
        match self.tasks.insert(tid, *entry, NOEXIST) {
            Ok(()) => {}
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        if ids.len() > INLINE_LEVELS {
            let mut deep = DeepLevels { start_time: entry.start_time, ..Default::default() };
            for (slot, id) in deep.nr.iter_mut().zip(&ids[INLINE_LEVELS..]) {
                *slot = *id;
            }
            self.deep.insert(tid, deep, 0)?;
        }
        for (level, (id, pidns)) in ids.iter().zip(ns).enumerate().skip(1) {
            let key = VirtKey { pidns: *pidns, nr: id.tid };
            let _ = self.virt.insert(key, VirtValue::of(entry), NOEXIST);
            self.seed_pidns(
                *pidns,
                PidnsInfo::from_chain(ns, level, tid, pidvirt_common::pidns_source::SEED),
            );
        }
        Ok(true)
    }

    /// Makes tasks of cgroup `cgroup_id` (and below) members of container `number` (None: of
    /// no cgroup container), and tells the programs how many cgroup containers exist.
    pub fn set_cgroup(&mut self, cgroup_id: u64, number: Option<u32>) -> Result<(), MapError> {
        match number {
            Some(n) => self.cgroups.insert(cgroup_id, n, 0)?,
            None => {
                let _ = self.cgroups.remove(&cgroup_id);
            }
        }
        let count = self.cgroups.keys().filter(Result::is_ok).count() as u32;
        self.config.set(pidvirt_common::config::CGROUP_CONTAINERS, count, 0)
    }

    /// Sets the container of task `tid` (if it is tracked).
    pub fn retag(&mut self, tid: u32, container: impl Fn(&TaskEntry) -> u32) {
        if let Ok(mut e) = self.tasks.get(&tid, 0) {
            let c = container(&e);
            if c != e.container {
                e.container = c;
                // BPF_EXIST: never resurrect an entry the kernel just removed.
                let _ = self.tasks.insert(tid, e, 2);
            }
        }
    }

    /// Forgets pid namespace `ns` and container `number`'s counters; returns the counters.
    pub fn forget_container(&mut self, ns: Option<u32>, number: u32) -> Option<(Vec<u64>, u64)> {
        if let Some(ns) = ns {
            let _ = self.pidns.remove(&ns);
        }
        let counters = self.crossings(Some(number)).remove(&number);
        let _ = self.container_counters.remove(&number);
        counters
    }

    /// Registers pid namespace `ns` (level, parent) unless the kernel already did.
    pub fn seed_pidns(&mut self, ns: u32, info: PidnsInfo) {
        let _ = self.pidns.insert(ns, info, NOEXIST);
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
            if self.virt.get(&key, 0).is_ok_and(|v| v.host_tid == tid) {
                let _ = self.virt.remove(&key);
            }
        }
        if t.ids.len() > INLINE_LEVELS {
            let _ = self.deep.remove(&tid);
        }
        let _ = self.tasks.remove(&tid);
    }
}

/// Crossing counts by syscall name and verdict name.
pub fn named_crossings(
    values: &[u64],
) -> std::collections::BTreeMap<&'static str, std::collections::BTreeMap<&'static str, u64>> {
    SYSCALLS
        .iter()
        .enumerate()
        .map(|(s, spec)| {
            let per_verdict = VERDICT_NAMES
                .iter()
                .enumerate()
                .map(|(v, name)| (*name, values.get(s * NVERDICTS + v).copied().unwrap_or(0)))
                .collect();
            (spec.name, per_verdict)
        })
        .collect()
}

/// Counter values by name, for `stats`.
pub fn named_counters(values: &[u64]) -> StdHashMap<&'static str, StdHashMap<&'static str, u64>> {
    let mut out: StdHashMap<&'static str, StdHashMap<&'static str, u64>> = StdHashMap::new();
    let get = |slot: u32| values.get(slot as usize).copied().unwrap_or(0);
    for (i, name) in counter::MAP_ERROR_REASONS.iter().enumerate() {
        out.entry("map_errors").or_default().insert(name, get(counter::MAP_ERROR_BASE + i as u32));
    }
    for (i, name) in counter::DROP_REASONS.iter().enumerate() {
        out.entry("drops").or_default().insert(name, get(counter::DROP_BASE + i as u32));
    }
    for (i, name) in counter::LIFECYCLE_NAMES.iter().enumerate() {
        out.entry("lifecycle").or_default().insert(name, get(counter::LIFECYCLE_BASE + i as u32));
    }
    out
}
