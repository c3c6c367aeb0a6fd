//! Loading and attaching the kernel programs: the tracer (lifecycle and syscall programs), the
//! enforcer (BPF-LSM, where the kernel accepts it), the benchmark's floor; pinning in bpffs so
//! that counting and enforcement outlive the daemon, adopting pinned programs, detaching.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, Map, MapData, Queue, RingBuf},
    programs::{
        BtfTracePoint, FEntry, FExit, Iter, Lsm, ProgramError, RawTracePoint, TracePoint,
        links::{FdLink, PinnedLink},
    },
};
use pidvirt_common::{
    KernelOffsets, TaskComm,
    audit::{LSM_HOOKS, SYSCALLS, SyscallSpec},
    catalogue::{OFFSETS_GLOBAL, Program, SIGNALFD_FUNCTION, map},
    meta,
    offsets::syscall_record,
    slots, tid_filter,
};

use crate::kernel::{KernelMaps, LoadError, PROGRAM_OBJECT, program_object, read_record, syscall_hooks};
use crate::preemption::Preemption;

/// Where `--pin` keeps maps (`maps/NAME`) and links (`links/PROGRAM@HOOK`).
pub const PIN_DIR: &str = "/sys/fs/bpf/pidvirt";

/// Sizes and choices made at load time.
#[derive(Clone, Debug)]
#[expect(clippy::struct_excessive_bools, reason = "independent switches of `pidvirt run`")]
pub struct LoadOptions {
    pub max_tasks: u32,
    pub ringbuf_bytes: u32,
    /// Containers counted apart at once (counter slots, including the host and overflow ones).
    pub counter_slots: u32,
    /// Seed existing tasks with the kernel's task iterator before the /proc walk.
    pub task_iterator: bool,
    /// Pin maps and links in bpffs: counting and enforcement go on while the daemon is down,
    /// and a restarted daemon adopts them.
    pub pin: bool,
    /// Read a task's pids above level 0 with bpf_probe_read_kernel even where direct loads are
    /// possible: the path of kernels that declare `pid.numbers[1]` (tests use it).
    pub probe_reads: bool,
    /// The verdicts reported on the ring buffer (a mask of `Verdict::bit`s).
    pub report: u32,
    /// Inode of the host's pid namespace.
    pub host_pidns: u32,
    /// How the syscall programs are attached.
    pub attach: AttachMode,
    /// Watch the path syscalls for numbers in /proc paths.
    pub proc_paths: bool,
}

/// How the syscall programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// fentry/fexit on the syscall functions where the kernel takes them, else tracepoints.
    Auto,
    /// The syscall tracepoints (every syscall of the host then takes the kernel's slow path).
    Tracepoint,
    /// fentry/fexit on the syscall functions (`__x64_sys_*`), or an error.
    Fentry,
}

/// The mode the syscall programs run in, and why: for `status`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Attached {
    /// `fentry` or `tracepoint`.
    pub mode: &'static str,
    pub reason: String,
    /// The kernel's preemption model and where it was read (crate::preemption).
    pub preemption: String,
    /// Whether the path syscalls are watched for /proc/N (`--no-proc-paths`: not).
    pub proc_paths: bool,
}

/// The kernel functions that implement syscall `name` on x86-64, as BTF may name them: the
/// `__x64_sys_` stub, or the `__do_sys_` body the stub of an argument-less syscall is an alias of
/// (SYSCALL_DEFINE0: same address, same `(const struct pt_regs *)` prototype).
fn syscall_functions(name: &str) -> [String; 2] {
    [format!("__x64_sys_{name}"), format!("__do_sys_{name}")]
}

/// Default capacity of the task maps: the kernel's pid_max (host tids are below it, so no more
/// tasks exist at once), within 4096..=262144. TASKS and VIRT are allocated on insert and hold
/// only what the fixed fronts of the task map and of the reverse map (pidvirt_common::task_front
/// and virt_front, 4 MiB each) do not: the capacity holds only their buckets (16 bytes per entry
/// of capacity, rounded up to a power of two, each).
pub fn max_tasks_for_this_host() -> u32 {
    pid_max().map_or(262_144, |n| n.clamp(4096, 262_144))
}

/// The kernel's pid_max (host tids are below it).
fn pid_max() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/kernel/pid_max").ok().and_then(|s| s.trim().parse::<u32>().ok())
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_tasks: 262_144,
            ringbuf_bytes: 1 << 20,
            counter_slots: slots::DEFAULT,
            task_iterator: true,
            pin: false,
            probe_reads: false,
            report: pidvirt_common::audit::Verdict::DEFAULT_REPORTED,
            host_pidns: 0,
            attach: AttachMode::Auto,
            proc_paths: false,
        }
    }
}

/// Whether a part that not every kernel takes runs (the enforcer, the signalfd reads), and why
/// not.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Availability {
    pub available: bool,
    pub reason: String,
}

/// Formats a program error, with the verifier log when the kernel refused the program.
/// Program `name` of the object as a `T` (a refusal naming `label` if it is missing or of
/// another type).
fn typed_program<'a, T>(ebpf: &'a mut Ebpf, name: &str, label: &str) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let refused = |message: String| LoadError::Refused { program: label.into(), message };
    ebpf.program_mut(name)
        .ok_or_else(|| refused("not in object".into()))?
        .try_into()
        .map_err(|e| refused(program_error(&e)))
}

/// Where a program is loaded for: aya's typed `load` of each kind needs it.
enum LoadTarget {
    /// A syscalls: tracepoint (attached to its hook after loading).
    TracePoint,
    /// A tp_btf hook, an iterator's target or an fentry/fexit function, found in `btf`.
    Btf(String),
}

/// How many programs `load_in_parallel` loads at once: one per CPU this process may run on, up
/// to `MAX_LOAD_THREADS`.
fn load_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get).min(MAX_LOAD_THREADS)
}

/// Verifier runs at once, at most: each holds its own states in kernel memory while it runs.
const MAX_LOAD_THREADS: usize = 8;

/// Loads `programs` on as many threads as this process may run on, and attaches nothing.
/// Loading is almost all the kernel verifier's work, done in the calling thread and, for
/// root, under no global lock; the attaching stays in order, in the callers, which load
/// themselves what this left unloaded (and report a refusal there, with its verifier log).
fn load_in_parallel(ebpf: &mut Ebpf, btf: &Btf, programs: &[(&str, LoadTarget)]) {
    use aya::programs::Program as P;
    let queue: Vec<_> = ebpf
        .programs_mut()
        .filter(|(_, program)| program.fd().is_err())
        .filter_map(|(name, program)| {
            programs.iter().find(|(n, _)| *n == name).map(|(_, target)| (program, target))
        })
        .collect();
    let threads = load_threads().min(queue.len());
    let queue = std::sync::Mutex::new(queue);
    let next = || queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while let Some((program, target)) = next() {
                    // A refusal is the caller's to report, when it loads the program again.
                    let _ = match (program, target) {
                        (P::TracePoint(p), LoadTarget::TracePoint) => p.load(),
                        (P::BtfTracePoint(p), LoadTarget::Btf(at)) => p.load(at, btf),
                        (P::Iter(p), LoadTarget::Btf(at)) => p.load(at, btf),
                        (P::FEntry(p), LoadTarget::Btf(at)) => p.load(at, btf),
                        (P::FExit(p), LoadTarget::Btf(at)) => p.load(at, btf),
                        _ => Ok(()),
                    };
                }
            });
        }
    });
}

pub fn program_error(e: &ProgramError) -> String {
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

/// The loaded (or adopted) programs.
pub struct Loaded {
    /// The object (None when pinned programs were adopted); dropping it detaches every program
    /// that is not pinned.
    pub ebpf: Option<Ebpf>,
    pub maps: KernelMaps,
    pub events: RingBuf<MapData>,
    /// Programs attached, with their hooks, for `status`.
    pub attached: Vec<(String, String)>,
    /// Whether the task iterator seeded the existing tasks (or why not).
    pub iterator: Result<(), String>,
    /// How the syscall programs are attached.
    pub syscalls: Attached,
    pub enforcement: Availability,
    /// Whether the siginfo of signalfd reads is judged (fexit on [`SIGNALFD_FUNCTION`]).
    pub signalfd: Availability,
    /// Pinned programs of a previous daemon were adopted (nothing was loaded).
    pub adopted: bool,
}

/// Loading eBPF programs (and mounting tracefs) needs root: say so first.
pub fn require_root() -> Result<(), LoadError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(LoadError::NotRoot(euid));
    }
    Ok(())
}

/// How the programs read a task's pids at levels above 0 (`pidvirt status`: `task_reads`).
pub fn task_reads(offsets: &KernelOffsets) -> &'static str {
    if offsets.pid_numbers_flexible != 0 {
        "direct loads through BTF-typed pointers (the kernel declares pid.numbers[] a flexible array)"
    } else {
        "bpf_probe_read_kernel above level 0 (the kernel declares pid.numbers[1], or --probe-reads)"
    }
}

/// Every offset the programs need, from the kernel's BTF; and the syscall record layout the
/// programs are compiled for, checked against every hooked tracepoint's format.
pub fn resolve_offsets(tick_ns: u32) -> Result<KernelOffsets, LoadError> {
    let mut offsets = crate::btf::resolve_running_kernel(tick_ns)?;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| LoadError::PossibleCpus(e.to_string()))?;
    offsets.possible_cpus = u32::try_from(cpus).map_err(|e| LoadError::PossibleCpus(e.to_string()))?;
    let root = pidvirt_common::tracefs::tracefs_root()?;
    let enter = SYSCALLS.iter().filter(|s| s.enter.is_some()).map(|s| s.name);
    let exit = SYSCALLS.iter().filter(|s| s.exit.is_some()).map(|s| s.name);
    let layout = pidvirt_common::tracefs::syscall_layout(&root, enter, exit)?;
    let expected = pidvirt_common::tracefs::SyscallLayout {
        nr: syscall_record::NR,
        args: syscall_record::ARGS,
        ret: syscall_record::RET,
    };
    if layout != expected {
        return Err(LoadError::Tracefs(pidvirt_common::tracefs::TracefsError::Format {
            path: "syscalls:*".into(),
            msg: format!("records are laid out as {layout:?}; the programs were built for {expected:?}"),
        }));
    }
    Ok(offsets)
}

/// FNV-1a of the object: tells a build's pinned programs from another's.
pub fn object_hash() -> u64 {
    PROGRAM_OBJECT
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

fn pin_dir() -> PathBuf {
    PathBuf::from(PIN_DIR)
}

/// Pins of a previous daemon, if any.
pub fn pinned() -> bool {
    pin_dir().join("maps/META").exists()
}

/// Mounts bpffs at /sys/fs/bpf unless it is there.
fn ensure_bpffs() -> Result<(), LoadError> {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let path = c"/sys/fs/bpf";
    // SAFETY: statfs is plain data; all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is a valid, writable statfs for the call.
    if unsafe { libc::statfs(path.as_ptr(), &raw mut st) } == 0 && st.f_type == BPF_FS_MAGIC {
        return Ok(());
    }
    let _ = std::fs::create_dir_all("/sys/fs/bpf");
    let fstype = c"bpf";
    // SAFETY: NUL-terminated strings, no mount data.
    if unsafe { libc::mount(fstype.as_ptr(), path.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) } != 0 {
        return Err(LoadError::Pin(format!(
            "mount bpffs at /sys/fs/bpf: {}",
            std::io::Error::last_os_error()
        )));
    }
    tracing::info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

/// Keeps links alive: pinned (when pinning) or owned.
struct Links {
    pin: bool,
    pinned: Vec<PinnedLink>,
}

impl Links {
    /// Pins `link` as `links/<program>@<hook>` when pinning; otherwise the program keeps it.
    fn keep(
        &mut self,
        program: &str,
        hook: &str,
        link: impl TryInto<FdLink, Error = impl std::fmt::Display>,
    ) -> Result<(), LoadError> {
        if !self.pin {
            return Ok(());
        }
        let fd: FdLink = link.try_into().map_err(|e| LoadError::Pin(format!("{program}@{hook}: {e}")))?;
        let path = pin_dir().join("links").join(format!("{program}@{}", hook.replace('/', ":")));
        let pinned = fd.pin(&path).map_err(|e| LoadError::Pin(format!("{}: {e}", path.display())))?;
        self.pinned.push(pinned);
        Ok(())
    }
}

/// Loads the object with `offsets`, attaches every program (lifecycle, then the task iterator,
/// syscalls, and the enforcer where the kernel takes it), pins them with `opts.pin`; or adopts
/// the pinned programs of a previous daemon.
pub fn load_and_attach(offsets: KernelOffsets, opts: &LoadOptions) -> Result<Loaded, LoadError> {
    require_root()?;
    if opts.pin {
        ensure_bpffs()?;
        if pinned() {
            return adopt(opts);
        }
    }
    let t0 = Instant::now();
    let tid_words = tid_filter::words(pid_max().unwrap_or(tid_filter::MAX_WORDS * 64));
    let mut ebpf = EbpfLoader::new()
        .override_global(OFFSETS_GLOBAL, &offsets, true)
        .map_max_entries(map::TASKS, opts.max_tasks)
        .map_max_entries(map::VIRT, opts.max_tasks)
        .map_max_entries(map::EVENTS, opts.ringbuf_bytes)
        .map_max_entries(map::COUNTS, opts.counter_slots)
        .map_max_entries(map::FREE_SLOTS, opts.counter_slots)
        .map_max_entries(map::LIVE_TIDS, tid_words)
        .map_max_entries(map::SEEDED_TIDS, tid_words)
        .map_max_entries(map::PENDING_TIDS, tid_words)
        .load(program_object()?)
        .map_err(LoadError::Object)?;
    prepare_maps(&mut ebpf, opts)?;
    let mut links = Links { pin: opts.pin, pinned: Vec::new() };
    if opts.pin {
        let _ = std::fs::remove_dir_all(pin_dir());
        std::fs::create_dir_all(pin_dir().join("maps")).map_err(|e| LoadError::Pin(e.to_string()))?;
        std::fs::create_dir_all(pin_dir().join("links")).map_err(|e| LoadError::Pin(e.to_string()))?;
        // Every map but the object's read-only data (the programs hold it; bpffs refuses dot names).
        for (name, map) in ebpf.maps().filter(|(name, _)| !name.starts_with('.')) {
            map.pin(pin_dir().join("maps").join(name))
                .map_err(|e| LoadError::Pin(format!("map {name}: {e}")))?;
        }
    }
    let t_object = t0.elapsed();
    let btf = Btf::from_sys_fs().map_err(|e| LoadError::Object(aya::EbpfError::BtfError(e)))?;
    let t_btf = t0.elapsed();
    let watched = |spec: &SyscallSpec| opts.proc_paths || !spec.is_path();
    // Read once: the mode the programs are loaded for is the mode they are attached in.
    let preemption = crate::preemption::detect();
    load_all(&mut ebpf, &btf, opts, &preemption, &watched);
    let t_loaded = t0.elapsed();
    let mut attached = Vec::new();
    for &program in Program::LIFECYCLE {
        let hook = attach_btf_tracepoint(&mut ebpf, program, &btf, &mut links)?;
        attached.push((program.name().to_string(), hook));
    }
    // Attached first; now record every task that already exists, exactly as the fork program
    // would (same code, same precision). The /proc walk that follows seeds what this missed.
    let t_lifecycle = t0.elapsed();
    let iterator = if opts.task_iterator {
        run_task_iterator(&mut ebpf, &btf)
    } else {
        Err("disabled (--seed proc)".to_string())
    };
    let t_iterator = t0.elapsed();
    let syscalls = attach_syscalls(
        &mut ebpf,
        &btf,
        (opts.attach, &preemption),
        false,
        &watched,
        &mut links,
        &mut attached,
    )?;
    let t_syscalls = t0.elapsed();
    let signalfd = attach_signalfd(&mut ebpf, &btf, &mut links, &mut attached);
    let enforcement = attach_enforcer(&mut ebpf, &btf, &mut links, &mut attached);
    let t_end = t0.elapsed();
    let ms = |from: Duration, to: Duration| to.saturating_sub(from).as_secs_f64() * 1000.0;
    tracing::info!(
        "loaded in {:.0} ms: object and maps {:.0}, kernel BTF {:.0}, programs loaded ({} at once) {:.0}, \
         lifecycle programs attached {:.0}, task iterator {:.0}, syscall programs attached {:.0}, enforcer {:.0}",
        ms(Duration::ZERO, t_end),
        ms(Duration::ZERO, t_object),
        ms(t_object, t_btf),
        load_threads(),
        ms(t_btf, t_loaded),
        ms(t_loaded, t_lifecycle),
        ms(t_lifecycle, t_iterator),
        ms(t_iterator, t_syscalls),
        ms(t_syscalls, t_end)
    );
    log_verifier_work(&ebpf);
    remember_loaded(&ebpf);
    let maps = KernelMaps::open(|name| ebpf.take_map(name).ok_or(LoadError::MissingMap(name)))?;
    let mut maps = maps;
    let _ = maps.meta.set(meta::OBJECT_HASH, object_hash(), 0);
    let _ = maps.meta.set(meta::ENFORCEMENT, u64::from(enforcement.available), 0);
    let events = RingBuf::try_from(ebpf.take_map(map::EVENTS).ok_or(LoadError::MissingMap(map::EVENTS))?)
        .map_err(|source| LoadError::Map { name: map::EVENTS, source })?;
    // The pins hold the links from here on; our link handles can go.
    drop(links);
    Ok(Loaded {
        ebpf: Some(ebpf),
        maps,
        events,
        attached,
        iterator,
        syscalls,
        enforcement,
        signalfd,
        adopted: false,
    })
}

/// Loads (verifies) every program the daemon attaches, all together (`load_in_parallel`); the
/// attaching comes after, in the order that matters. Which syscall programs is the kernel's
/// choice: the first fentry program, loaded alone, says whether it takes fentry.
fn load_all(
    ebpf: &mut Ebpf,
    btf: &Btf,
    opts: &LoadOptions,
    preemption: &Preemption,
    watched: &dyn Fn(&SyscallSpec) -> bool,
) {
    // Lazy: each function is a search of the kernel's BTF; a kernel that refuses the probe
    // needs the first only.
    let mut functions = function_programs(btf, watched);
    let fentry = opts.attach != AttachMode::Tracepoint
        && fentry_declined(opts.attach, preemption).is_none()
        && functions.next().is_some_and(|probe| {
            load_in_parallel(ebpf, btf, std::slice::from_ref(&probe));
            ebpf.program(probe.0).is_some_and(|p| p.fd().is_ok())
        });
    let mut programs: Vec<(&str, LoadTarget)> = Program::LIFECYCLE
        .iter()
        .filter_map(|p| Some((p.name(), LoadTarget::Btf(p.btf_tracepoint()?.to_string()))))
        .collect();
    if opts.task_iterator {
        programs.push((Program::SeedTasks.name(), LoadTarget::Btf("task".into())));
    }
    programs.push((Program::TaskComms.name(), LoadTarget::Btf("task".into())));
    if fentry {
        programs.extend(functions);
    } else {
        programs.extend(
            syscall_hooks(watched).iter().map(|(program, _)| (program.name(), LoadTarget::TracePoint)),
        );
    }
    load_in_parallel(ebpf, btf, &programs);
}

/// Logs (debug) how many instructions the verifier processed for each loaded program, the
/// kernel's own count (`verified_insns`): what loading costs, and how near a program is to the
/// verifier's limit of one million. Nothing is asked of the kernel unless debug is on.
fn log_verifier_work(ebpf: &Ebpf) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let mut total = 0u64;
    for (name, program) in ebpf.programs() {
        if let Some(verified) = program.info().ok().and_then(|i| i.verified_instruction_count()) {
            total += u64::from(verified);
            tracing::debug!(program = name, verified_insns = verified, "verified");
        }
    }
    tracing::debug!(verified_insns = total, "verified in all");
}

/// Opens the maps and lists the links a previous daemon pinned (same build only).
fn adopt(opts: &LoadOptions) -> Result<Loaded, LoadError> {
    let open = |name: &'static str| -> Result<Map, LoadError> {
        let data = MapData::from_pin(pin_dir().join("maps").join(name))
            .map_err(|source| LoadError::Map { name, source })?;
        Map::from_map_data(data).map_err(|source| LoadError::Map { name, source })
    };
    let meta_map: Array<MapData, u64> =
        Array::try_from(open(map::META)?).map_err(|source| LoadError::Map { name: map::META, source })?;
    let hash = meta_map.get(&meta::OBJECT_HASH, 0).unwrap_or(0);
    if hash != object_hash() {
        return Err(LoadError::Pin(format!(
            "the programs pinned in {PIN_DIR} come from another pidvirt build; run `pidvirt detach` first"
        )));
    }
    let available = meta_map.get(&meta::ENFORCEMENT, 0).unwrap_or(0) == 1;
    let mut maps = KernelMaps::open(open)?;
    // This daemon's settings (what to report) replace the previous one's.
    configure(&mut maps.config, opts)?;
    let events = RingBuf::try_from(open(map::EVENTS)?)
        .map_err(|source| LoadError::Map { name: map::EVENTS, source })?;
    let mut attached: Vec<(String, String)> = std::fs::read_dir(pin_dir().join("links"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.split_once('@').map(|(p, h)| (p.to_string(), h.replacen(':', "/", 1)))
                })
                .collect()
        })
        .unwrap_or_default();
    attached.sort();
    remember_pinned();
    tracing::info!("adopted {} pinned programs from {PIN_DIR}", attached.len());
    let fentry = attached
        .iter()
        .any(|(p, _)| SYSCALLS.iter().flat_map(SyscallSpec::function_programs).any(|f| f.0 == p));
    let signalfd = attached.iter().any(|(p, _)| p == Program::FexitSignalfdCopyinfo.name());
    // The path syscalls are watched if the pinning daemon attached their programs.
    let path_programs: Vec<&str> = SYSCALLS
        .iter()
        .filter(|s| s.is_path())
        .flat_map(|s| s.enter.map(Program::name).into_iter().chain(s.fentry.map(|(p, _)| p)))
        .collect();
    let proc_paths = attached.iter().any(|(p, _)| path_programs.contains(&p.as_str()));
    let syscalls = Attached {
        mode: if fentry { "fentry" } else { "tracepoint" },
        reason: "as the daemon that pinned the programs attached them".into(),
        preemption: crate::preemption::detect().to_string(),
        proc_paths,
    };
    Ok(Loaded {
        ebpf: None,
        maps,
        events,
        attached,
        iterator: Err("pinned programs adopted: their maps are current".into()),
        syscalls,
        enforcement: Availability {
            available,
            reason: if available {
                "pinned LSM programs".into()
            } else {
                "not attached by the pinning daemon".into()
            },
        },
        signalfd: Availability {
            available: signalfd,
            reason: if signalfd {
                format!("pinned fexit program on {SIGNALFD_FUNCTION}")
            } else {
                "not attached by the pinning daemon".into()
            },
        },
        adopted: true,
    })
}

/// Detaches and unloads every program, the lifecycle programs last: while a syscall program
/// still runs, the maps must still follow forks and releases (a child forked during the teardown
/// would have no entry, and its parent's clone and wait4 returns would be judged stale). Dropping
/// the object would go in no set order. Pinned links stay attached.
pub fn detach(mut ebpf: Ebpf) {
    let lifecycle: Vec<&str> = Program::LIFECYCLE.iter().map(|p| p.name()).collect();
    let (last, first): (Vec<_>, Vec<_>) = ebpf.programs_mut().partition(|(name, _)| lifecycle.contains(name));
    unload_together(first);
    unload_together(last);
    drop(ebpf);
}

/// Unloads `programs`, each from a thread of its own. Detaching a tracepoint waits for the
/// kernel's RCU grace periods: one link after another, a daemon took seconds to detach; waits
/// made together end together.
fn unload_together(programs: Vec<(&str, &mut aya::programs::Program)>) {
    use aya::programs::Program as P;
    std::thread::scope(|scope| {
        for (name, program) in programs {
            scope.spawn(move || {
                let unloaded = match program {
                    P::TracePoint(p) => p.unload(),
                    P::BtfTracePoint(p) => p.unload(),
                    P::FEntry(p) => p.unload(),
                    P::FExit(p) => p.unload(),
                    P::Lsm(p) => p.unload(),
                    P::RawTracePoint(p) => p.unload(),
                    P::Iter(p) => p.unload(),
                    _ => Ok(()),
                };
                if let Err(e) = unloaded
                    && !matches!(e, ProgramError::NotLoaded)
                {
                    tracing::warn!(program = name, "unloading: {e}");
                }
            });
        }
    });
}

/// Removes every pin; the programs go once no daemon holds them. The syscall programs' links
/// go first, as in [`detach`]: the lifecycle programs keep the maps those read in step.
pub fn remove_pins() -> std::io::Result<bool> {
    let lifecycle = |link: &Path| {
        let name = link.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let program = name.split('@').next().unwrap_or_default();
        Program::LIFECYCLE.iter().any(|p| p.name() == program)
    };
    if let Ok(links) = std::fs::read_dir(pin_dir().join("links")) {
        for link in links.flatten().map(|l| l.path()).filter(|l| !lifecycle(l)) {
            std::fs::remove_file(&link)?;
        }
    }
    match std::fs::remove_dir_all(pin_dir()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Names (as the kernel keeps them: 15 bytes) of pidvirt's programs that are loaded.
pub fn loaded_pidvirt_programs() -> Vec<String> {
    let ours: std::collections::HashSet<String> = Program::ALL
        .iter()
        .map(|p| p.name())
        .chain(LSM_HOOKS.iter().map(|h| h.program))
        .chain(SYSCALLS.iter().flat_map(SyscallSpec::function_programs).map(|(p, _, _)| p))
        .map(|n| n.chars().take(15).collect())
        .collect();
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| String::from_utf8_lossy(p.name()).into_owned())
        .filter(|n| ours.contains(n))
        .collect()
}

/// The programs this process loaded or adopted, with their full names (the kernel keeps 15
/// characters of a name: `fentry_sched_getparam` and three more are all `fentry_sched_ge` there)
/// and a fd of each, whose fdinfo counts the runs the kernel skipped. Set once, by the load or the
/// adoption.
static PROGRAMS: std::sync::OnceLock<Vec<(String, std::os::fd::OwnedFd)>> = std::sync::OnceLock::new();

/// Records the programs `ebpf` loaded.
fn remember_loaded(ebpf: &Ebpf) {
    use std::os::fd::AsFd as _;
    let _ = PROGRAMS.set(
        ebpf.programs()
            .filter_map(|(name, p)| Some((name.to_string(), p.fd().ok()?.as_fd().try_clone_to_owned().ok()?)))
            .collect(),
    );
}

/// Records the programs attached by the links pinned in `links/PROGRAM@HOOK`: an adopting daemon
/// holds no fd of them, and each link names its program's id.
fn remember_pinned() {
    use std::os::fd::AsFd as _;
    let Ok(pins) = std::fs::read_dir(pin_dir().join("links")) else { return };
    let names: std::collections::BTreeMap<u32, String> = pins
        .flatten()
        .filter_map(|pin| {
            let file = pin.file_name().to_string_lossy().into_owned();
            let (program, _) = file.split_once('@')?;
            let link = FdLink::from(PinnedLink::from_pin(pin.path()).ok()?);
            Some((link.info().ok()?.program_id(), program.to_string()))
        })
        .collect();
    let _ = PROGRAMS.set(
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter_map(|p| {
                let name = names.get(&p.id())?;
                Some((name.clone(), p.fd().ok()?.as_fd().try_clone_to_owned().ok()?))
            })
            .collect(),
    );
}

/// Runs of this process's programs that the kernel skipped, by program (full names; those with
/// none left out): a program's recursion misses, runs it did not make on a CPU where a run of it
/// was under way (an fentry program preempted in the middle of one, or a tracepoint fired inside
/// it). The programs are those the process loaded or adopted (none before either); the kernel
/// shows each one's count in the fdinfo of a fd of it.
pub fn skipped_runs() -> std::collections::BTreeMap<String, u64> {
    use std::os::fd::AsRawFd as _;
    let misses = |fd: i32| -> Option<u64> {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
        info.lines().find_map(|l| l.strip_prefix("recursion_misses:")?.trim().parse().ok())
    };
    let mut skipped = std::collections::BTreeMap::new();
    for (name, fd) in PROGRAMS.get().into_iter().flatten() {
        if let Some(n) = misses(fd.as_raw_fd()).filter(|&n| n > 0) {
            *skipped.entry(name.clone()).or_insert(0) += n;
        }
    }
    skipped
}

/// Fills what the programs need before any is attached: the free counter slots, the
/// syscall-number table of the shared syscall programs, and the settings.
fn prepare_maps(ebpf: &mut Ebpf, opts: &LoadOptions) -> Result<(), LoadError> {
    let err = |name| move |source| LoadError::Map { name, source };
    let counter_slots = opts.counter_slots;
    let map = ebpf.map_mut(map::FREE_SLOTS).ok_or(LoadError::MissingMap(map::FREE_SLOTS))?;
    let mut free: Queue<&mut MapData, u32> = Queue::try_from(map).map_err(err(map::FREE_SLOTS))?;
    for slot in slots::FIRST_FREE..counter_slots {
        free.push(slot, 0).map_err(err(map::FREE_SLOTS))?;
    }
    let map = ebpf.map_mut(map::SYSNR).ok_or(LoadError::MissingMap(map::SYSNR))?;
    let mut sysnr: Array<&mut MapData, u32> = Array::try_from(map).map_err(err(map::SYSNR))?;
    for (id, spec) in SYSCALLS.iter().enumerate() {
        sysnr.set(spec.nr as u32, id as u32 + 1, 0).map_err(err(map::SYSNR))?;
    }
    let map = ebpf.map_mut(map::CONFIG).ok_or(LoadError::MissingMap(map::CONFIG))?;
    configure(&mut Array::try_from(map).map_err(err(map::CONFIG))?, opts)
}

/// Writes the settings the programs read (CONFIG): what to report, the host's namespace, the
/// daemon's pid.
fn configure<T: std::borrow::BorrowMut<MapData>>(
    config: &mut Array<T, u32>,
    opts: &LoadOptions,
) -> Result<(), LoadError> {
    let err = |source| LoadError::Map { name: map::CONFIG, source };
    config.set(pidvirt_common::config::REPORTED, opts.report, 0).map_err(err)?;
    config.set(pidvirt_common::config::HOST_PIDNS, opts.host_pidns, 0).map_err(err)?;
    config.set(pidvirt_common::config::DAEMON_TGID, std::process::id(), 0).map_err(err)
}

/// The LSMs the kernel runs (securityfs, mounted if needed).
fn active_lsms() -> Result<String, String> {
    let path = Path::new("/sys/kernel/security/lsm");
    if !path.exists() {
        let target = c"/sys/kernel/security";
        let fstype = c"securityfs";
        // SAFETY: NUL-terminated strings, no mount data. A failure shows in the read below.
        unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    }
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Attaches the fexit program that judges the siginfo of signalfd reads, where the kernel takes
/// fexit and its BTF has the function (it is static: the compiler may have inlined it).
fn attach_signalfd(
    ebpf: &mut Ebpf,
    btf: &Btf,
    links: &mut Links,
    attached: &mut Vec<(String, String)>,
) -> Availability {
    let program = Program::FexitSignalfdCopyinfo.name();
    match attach_function(ebpf, program, SIGNALFD_FUNCTION, true, btf, links) {
        Ok(hook) => {
            let reason = format!("{hook}: the siginfo of signalfd reads is judged");
            attached.push((program.to_string(), hook));
            Availability { available: true, reason }
        }
        Err(e) => {
            let why = match e {
                FunctionError::NotInBtf(_) => e.to_string(),
                FunctionError::Refused(e) => format!("the kernel refused {program}: {}", first_line(&e)),
            };
            let reason = format!("signalfd reads are not seen: fexit on {SIGNALFD_FUNCTION}: {why}");
            tracing::warn!("{reason}");
            Availability { available: false, reason }
        }
    }
}

/// Attaches the enforcer's LSM programs if BPF-LSM is active and the kernel accepts them.
fn attach_enforcer(
    ebpf: &mut Ebpf,
    btf: &Btf,
    links: &mut Links,
    attached: &mut Vec<(String, String)>,
) -> Availability {
    let unavailable = |reason: String| {
        tracing::warn!("enforcement unavailable: {reason}");
        Availability { available: false, reason }
    };
    let lsms = match active_lsms() {
        Ok(l) => l,
        Err(e) => return unavailable(e),
    };
    if !lsms.split(',').any(|l| l == "bpf") {
        return unavailable(format!("BPF-LSM is not active (lsm={lsms}); boot with lsm=...,bpf"));
    }
    for hook in LSM_HOOKS {
        let program = hook.program.to_string();
        let Some(prog) = ebpf.program_mut(&program) else {
            return unavailable(format!("program {program} missing from the object"));
        };
        let prog: &mut Lsm = match prog.try_into() {
            Ok(p) => p,
            Err(e) => return unavailable(format!("{program}: {}", program_error(&e))),
        };
        if let Err(e) = prog.load(hook.name, btf) {
            return unavailable(format!(
                "the kernel refused the LSM program for {}: {}",
                hook.name,
                first_line(&program_error(&e))
            ));
        }
        let id = match prog.attach() {
            Ok(id) => id,
            Err(e) => {
                return unavailable(format!(
                    "attaching the LSM program to {}: {}",
                    hook.name,
                    program_error(&e)
                ));
            }
        };
        if links.pin {
            match prog.take_link(id) {
                Ok(link) => {
                    if let Err(e) = links.keep(&program, &format!("lsm/{}", hook.name), link) {
                        return unavailable(e.to_string());
                    }
                }
                Err(e) => return unavailable(program_error(&e)),
            }
        }
        attached.push((program, format!("lsm/{}", hook.name)));
    }
    Availability { available: true, reason: format!("BPF-LSM active (lsm={lsms})") }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// Which hooks the benchmark's floor puts EMPTY programs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FloorHooks {
    /// The hooks pidvirt uses: the lifecycle tp_btf hooks and every syscall tracepoint of the
    /// hook list (what any design on these hooks pays); not the fexit on signalfd_copyinfo,
    /// which runs on signalfd reads only, and which the kernels that take fexit alone take.
    Pidvirt,
    /// syscalls:sys_enter_read and sys_exit_read: what hooking one syscall through its own
    /// tracepoints costs it (the yardstick for syscalls pidvirt does not audit).
    Read,
    /// The raw sys_enter/sys_exit tracepoints: what a design that hooks every syscall (and
    /// filters in the program) costs each one.
    Raw,
}

/// The benchmark's floor: EMPTY programs attached to `hooks`. Dropping the result detaches
/// them.
pub fn attach_floor(hooks: FloorHooks, mode: AttachMode) -> Result<(Ebpf, Vec<(String, String)>), LoadError> {
    require_root()?;
    let mut ebpf = EbpfLoader::new().load(program_object()?).map_err(LoadError::Object)?;
    let mut attached = Vec::new();
    let mut links = Links { pin: false, pinned: Vec::new() };
    match hooks {
        FloorHooks::Pidvirt => {
            let btf = Btf::from_sys_fs().map_err(|e| LoadError::Object(aya::EbpfError::BtfError(e)))?;
            for &program in Program::LIFECYCLE {
                let hook = attach_btf_tracepoint(&mut ebpf, program.floor(), &btf, &mut links)?;
                attached.push((program.floor().name().to_string(), hook));
            }
            let preemption = crate::preemption::detect();
            let how = attach_syscalls(
                &mut ebpf,
                &btf,
                (mode, &preemption),
                true,
                &|_| true,
                &mut links,
                &mut attached,
            )?;
            tracing::info!("floor on the syscalls: {} ({})", how.mode, how.reason);
        }
        FloorHooks::Read => {
            pidvirt_common::tracefs::tracefs_root()?;
            let floor = Program::FloorEmpty.name();
            for tp in ["sys_enter_read", "sys_exit_read"] {
                attach_tracepoint(&mut ebpf, floor, floor, tp, &mut links)?;
                attached.push((floor.into(), format!("syscalls:{tp}")));
            }
        }
        FloorHooks::Raw => {
            let name = Program::FloorRawEmpty.name();
            let refused = |message: String| LoadError::Refused { program: name.into(), message };
            let prog: &mut RawTracePoint = typed_program(&mut ebpf, name, name)?;
            prog.load().map_err(|e| refused(program_error(&e)))?;
            for tp in ["sys_enter", "sys_exit"] {
                prog.attach(tp).map_err(|e| LoadError::Attach {
                    program: name.into(),
                    hook: format!("raw_tracepoint/{tp}"),
                    message: program_error(&e),
                })?;
                attached.push((name.into(), format!("raw_tracepoint/{tp}")));
            }
        }
    }
    Ok((ebpf, attached))
}

/// Loads tp_btf program `program` and attaches it to its BTF tracepoint; answers the hook.
fn attach_btf_tracepoint(
    ebpf: &mut Ebpf,
    program: Program,
    btf: &Btf,
    links: &mut Links,
) -> Result<String, LoadError> {
    let name = program.name();
    let tp = program
        .btf_tracepoint()
        .ok_or_else(|| LoadError::Refused { program: name.into(), message: "not a tp_btf program".into() })?;
    let refused = |message: String| LoadError::Refused { program: name.into(), message };
    let prog: &mut BtfTracePoint = typed_program(ebpf, name, name)?;
    if prog.fd().is_err() {
        prog.load(tp, btf).map_err(|e| refused(program_error(&e)))?;
    }
    let hook = format!("tp_btf/{tp}");
    let id = prog.attach().map_err(|e| LoadError::Attach {
        program: name.into(),
        hook: hook.clone(),
        message: program_error(&e),
    })?;
    if links.pin {
        links.keep(name, &hook, prog.take_link(id).map_err(|e| refused(program_error(&e)))?)?;
    }
    Ok(hook)
}

/// Attaches the syscall programs (or, for the benchmark's `floor`, their empty twins) as `mode`
/// says, on a kernel of preemption model `preemption`: fentry/fexit on every watched syscall's
/// function where the kernel takes them (the first program loaded is the probe: a kernel that
/// refuses fentry refuses it, and nothing is attached yet), tracepoints otherwise. Answers the
/// mode used and why.
fn attach_syscalls(
    ebpf: &mut Ebpf,
    btf: &Btf,
    (mode, preemption): (AttachMode, &Preemption),
    floor: bool,
    watched: &dyn Fn(&SyscallSpec) -> bool,
    links: &mut Links,
    attached: &mut Vec<(String, String)>,
) -> Result<Attached, LoadError> {
    let fentry = match (mode, fentry_declined(mode, preemption)) {
        (AttachMode::Tracepoint, _) => Err("asked for tracepoints (--attach tracepoint)".to_string()),
        (_, Some(why)) => Err(why),
        (AttachMode::Auto | AttachMode::Fentry, None) => {
            attach_functions(ebpf, btf, floor, watched, links, attached)
        }
    };
    let proc_paths = SYSCALLS.iter().filter(|s| s.is_path()).all(watched);
    let preemption_named = preemption.to_string();
    match (fentry, mode) {
        (Ok(()), _) => Ok(Attached {
            mode: "fentry",
            reason: if preemption.preemptible() {
                format!(
                    "asked for fentry (--attach fentry) on a fully preemptible kernel (preemption {preemption}): \
                     a crossing whose program finds another of pidvirt's preempted in the middle of its run on \
                     the CPU is not judged (map_errors.preempted), and the kernel skips a program's runs on a CPU \
                     while one is preempted (its recursion misses)"
                )
            } else {
                "the kernel takes fentry/fexit on the syscall functions: syscalls pidvirt does not watch keep the \
                 kernel's fast path"
                    .into()
            },
            preemption: preemption_named,
            proc_paths,
        }),
        (Err(why), AttachMode::Fentry) => Err(LoadError::NoFentry(why)),
        (Err(why), _) => {
            pidvirt_common::tracefs::tracefs_root()?;
            for (program, tp) in syscall_hooks(watched) {
                let name = if floor { program.floor().name() } else { program.name() };
                attach_tracepoint(ebpf, name, program.name(), &tp, links)?;
                attached.push((name.to_string(), format!("syscalls:{tp}")));
            }
            Ok(Attached { mode: "tracepoint", reason: why, preemption: preemption_named, proc_paths })
        }
    }
}

/// Why `--attach auto` takes tracepoints on a kernel that may take fentry: a fully preemptible
/// one (crate::preemption), where fentry programs would run preemptibly and lose crossings.
fn fentry_declined(mode: AttachMode, preemption: &Preemption) -> Option<String> {
    (mode == AttachMode::Auto && preemption.preemptible()).then(|| {
        format!(
            "the kernel is fully preemptible (preemption {preemption}): fentry programs would run \
             preemptibly, and the kernel skips a program's runs on a CPU while a task is switched out in the \
             middle of one; tracepoint programs run with preemption off (--attach fentry forces fentry)"
        )
    })
}

/// fentry/fexit programs on every watched syscall's function; Err(why) if the kernel refuses
/// the first one (then nothing is attached). A refusal after the first is an error of its own.
fn attach_functions(
    ebpf: &mut Ebpf,
    btf: &Btf,
    floor: bool,
    watched: &dyn Fn(&SyscallSpec) -> bool,
    links: &mut Links,
    attached: &mut Vec<(String, String)>,
) -> Result<(), String> {
    let mut first = true;
    for spec in SYSCALLS.iter().filter(|s| watched(s)) {
        let [stub, body] = syscall_functions(spec.name);
        for (programs, exit) in [(spec.fentry, false), (spec.fexit, true)] {
            let Some((program, floor_program)) = programs else { continue };
            let name = if floor { floor_program } else { program };
            let result = match attach_function(ebpf, name, &stub, exit, btf, links) {
                Err(FunctionError::NotInBtf(_)) => attach_function(ebpf, name, &body, exit, btf, links),
                other => other,
            };
            match result {
                Ok(hook) => attached.push((name.to_string(), hook)),
                Err(e) if first => {
                    return Err(format!("the kernel refused {name}: {}", first_line(&e.to_string())));
                }
                Err(e) => return Err(format!("{name}, after others were taken: {e}")),
            }
            first = false;
        }
    }
    Ok(())
}

/// The watched syscalls' fentry/fexit programs, each with the function the kernel's BTF has
/// for it (`syscall_functions`), found as the iterator is taken.
fn function_programs<'a>(
    btf: &'a Btf,
    watched: &'a dyn Fn(&SyscallSpec) -> bool,
) -> impl Iterator<Item = (&'static str, LoadTarget)> + 'a {
    let in_btf = |f: &str| btf.id_by_type_name_kind(f, aya_obj::btf::BtfKind::Func).is_ok();
    SYSCALLS
        .iter()
        .filter(|s| watched(s))
        .filter_map(move |spec| {
            syscall_functions(spec.name).into_iter().find(|f| in_btf(f)).map(|f| (spec, f))
        })
        .flat_map(|(spec, function)| {
            [spec.fentry, spec.fexit]
                .into_iter()
                .flatten()
                .map(move |(program, _)| (program, LoadTarget::Btf(function.clone())))
        })
}

/// Why an fentry/fexit program could not be attached.
#[derive(Debug, thiserror::Error)]
enum FunctionError {
    #[error("the kernel's BTF has no function {0}")]
    NotInBtf(String),
    #[error("{0}")]
    Refused(String),
}

/// Loads fentry (or fexit) program `name` for kernel function `function` and attaches it;
/// answers the hook.
fn attach_function(
    ebpf: &mut Ebpf,
    name: &str,
    function: &str,
    exit: bool,
    btf: &Btf,
    links: &mut Links,
) -> Result<String, FunctionError> {
    if btf.id_by_type_name_kind(function, aya_obj::btf::BtfKind::Func).is_err() {
        return Err(FunctionError::NotInBtf(function.into()));
    }
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| FunctionError::Refused(format!("{name} is not in the object")))?;
    let e = |e: ProgramError| FunctionError::Refused(program_error(&e));
    let hook = if exit {
        let prog: &mut FExit = program.try_into().map_err(e)?;
        if prog.fd().is_err() {
            prog.load(function, btf).map_err(e)?;
        }
        let id = prog.attach().map_err(e)?;
        let hook = format!("fexit/{function}");
        if links.pin {
            links
                .keep(name, &hook, prog.take_link(id).map_err(e)?)
                .map_err(|e| FunctionError::Refused(e.to_string()))?;
        }
        hook
    } else {
        let prog: &mut FEntry = program.try_into().map_err(e)?;
        if prog.fd().is_err() {
            prog.load(function, btf).map_err(e)?;
        }
        let id = prog.attach().map_err(e)?;
        let hook = format!("fentry/{function}");
        if links.pin {
            links
                .keep(name, &hook, prog.take_link(id).map_err(e)?)
                .map_err(|e| FunctionError::Refused(e.to_string()))?;
        }
        hook
    };
    Ok(hook)
}

/// Loads program `program` (once) and attaches it to syscalls:`tp`.
fn attach_tracepoint(
    ebpf: &mut Ebpf,
    program: &str,
    label: &str,
    tp: &str,
    links: &mut Links,
) -> Result<(), LoadError> {
    let refused = |message: String| LoadError::Refused { program: label.into(), message };
    let prog: &mut TracePoint = typed_program(ebpf, program, label)?;
    if prog.fd().is_err() {
        prog.load().map_err(|e| refused(program_error(&e)))?;
    }
    let hook = format!("syscalls:{tp}");
    let id = prog.attach("syscalls", tp).map_err(|e| LoadError::Attach {
        program: label.into(),
        hook: hook.clone(),
        message: program_error(&e),
    })?;
    if links.pin {
        links.keep(program, &hook, prog.take_link(id).map_err(|e| refused(program_error(&e)))?)?;
    }
    Ok(())
}

/// Loads the `iter/task` program and reads its file once: one run over every task.
fn run_task_iterator(ebpf: &mut Ebpf, btf: &Btf) -> Result<(), String> {
    read_task_iterator(ebpf, Program::SeedTasks, Some(btf)).map(drop)
}

/// Runs the task iterator `program` once (loading it first if `btf` is given and it is not
/// loaded): a fresh link, whose file is read to its end. Answers what the program wrote.
fn read_task_iterator(ebpf: &mut Ebpf, program: Program, btf: Option<&Btf>) -> Result<Vec<u8>, String> {
    let name = program.name();
    let prog: &mut Iter = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} not in object"))?
        .try_into()
        .map_err(|e: ProgramError| e.to_string())?;
    if prog.fd().is_err() {
        let btf = btf.ok_or_else(|| format!("program {name} is not loaded"))?;
        prog.load("task", btf).map_err(|e| format!("load: {}", program_error(&e)))?;
    }
    let id = prog.attach().map_err(|e| format!("attach: {}", program_error(&e)))?;
    let link = prog.take_link(id).map_err(|e| format!("link: {}", program_error(&e)))?;
    let mut file = link.into_file().map_err(|e| format!("open: {e}"))?;
    let mut sink = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut sink).map_err(|e| format!("read: {e}"))?;
    Ok(sink)
}

/// Every task's command by host tid, from one run of the `task_comms` iterator (loaded with
/// the other programs).
pub fn task_comms(ebpf: &mut Ebpf) -> Result<HashMap<u32, String>, String> {
    let bytes = read_task_iterator(ebpf, Program::TaskComms, None)?;
    let records = bytes.chunks_exact(size_of::<TaskComm>());
    if !records.remainder().is_empty() {
        return Err(format!("{} bytes are not whole records of {}", bytes.len(), size_of::<TaskComm>()));
    }
    Ok(records
        .filter_map(read_record::<TaskComm>)
        .map(|t| {
            let name = t.comm.split(|&b| b == 0).next().unwrap_or_default();
            (t.host_tid, String::from_utf8_lossy(name).into_owned())
        })
        .collect())
}
