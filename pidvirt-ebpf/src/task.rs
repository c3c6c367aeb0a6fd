//! The one place that reads a task's pid at every namespace level.
//!
//! For a task T: PID = T->thread_pid, TGID = T->signal->pids[PIDTYPE_TGID]; the number at level
//! i is pid->numbers[i].nr and the namespace is pid->numbers[i].ns (mirrors the kernel's
//! pid_nr_ns()). Level 0 is the init namespace: host numbers.

use pidvirt_common::{
    CgroupContainer, INLINE_LEVELS, LevelIds, MAX_LEVELS, MAX_PID_NS_LEVEL, counter, task_flags,
};

use crate::{
    kernel::{Kmem, Probe, below, off, read, read_ptr},
    maps::Scratch,
};

/// A failed kernel read, as a counter reason.
#[inline(always)]
fn kerr(_: i32) -> u32 {
    counter::map_error::KERNEL_READ
}

/// Pointers of the two `struct pid` of a task.
#[derive(Clone, Copy)]
pub struct TaskPids {
    pub thread_pid: *const u8,
    pub tgid_pid: *const u8,
    pub level: u32,
}

#[inline(always)]
pub fn task_pids<K: Kmem>(k: K, task: *const u8) -> Result<TaskPids, u32> {
    let thread_pid = k.read_ptr(task, off!(task_thread_pid)).map_err(kerr)?;
    let level: u32 = k.read(thread_pid, off!(pid_level)).map_err(kerr)?;
    if level > MAX_PID_NS_LEVEL {
        return Err(counter::map_error::LEVEL_OVERFLOW);
    }
    let signal = k.read_ptr(task, off!(task_signal)).map_err(kerr)?;
    let tgid_pid = k.read_ptr(signal, off!(signal_pids) + 8 * off!(pidtype_tgid)).map_err(kerr)?;
    Ok(TaskPids { thread_pid, tgid_pid, level })
}

/// Address of `pid->numbers[level]`.
#[inline(always)]
pub fn upid_at(pid: *const u8, level: u32) -> *const u8 {
    pid.wrapping_add((off!(pid_numbers) + level * off!(upid_size)) as usize)
}

/// The number and `struct pid_namespace *` of `pid` at `level`: with [`Probe`], one read of the
/// whole 16-byte `struct upid` (the daemon checked its size; the field offsets are the BTF's);
/// directly, two loads (`level` must then be a constant to the verifier).
#[inline(always)]
pub fn upid<K: Kmem>(k: K, pid: *const u8, level: u32) -> Result<(u32, *const u8), u32> {
    let (nr, ns) = if K::DIRECT {
        let at = upid_at(pid, level);
        (
            k.read::<u32>(at, off!(upid_nr)).map_err(kerr)?,
            k.read::<*const u8>(at, off!(upid_ns)).map_err(kerr)?,
        )
    } else {
        let u: [u64; 2] = k.read(upid_at(pid, level), 0).map_err(kerr)?;
        let (nr_at, ns_at) = (off!(upid_nr), off!(upid_ns));
        let word = u[(nr_at / 8) as usize & 1];
        let nr = if nr_at % 8 == 0 { word as u32 } else { (word >> 32) as u32 };
        (nr, u[(ns_at / 8) as usize & 1] as *const u8)
    };
    if ns.is_null() {
        return Err(counter::map_error::KERNEL_READ);
    }
    Ok((nr, ns))
}

/// The number of `pid` at `level` (no namespace check: the caller knows the level exists).
#[inline(always)]
pub fn nr_at<K: Kmem>(k: K, pid: *const u8, level: u32) -> Result<u32, u32> {
    k.read(upid_at(pid, level), off!(upid_nr)).map_err(kerr)
}

/// Inode of the pid namespace a `struct pid_namespace *` points to.
#[inline(always)]
pub fn pidns_inum<K: Kmem>(k: K, ns: *const u8) -> Result<u32, u32> {
    k.read(ns, off!(pidns_inum)).map_err(kerr)
}

/// `struct pid_namespace *` of `pid` at `level`.
#[inline(always)]
pub fn ns_at<K: Kmem>(k: K, pid: *const u8, level: u32) -> Result<*const u8, u32> {
    k.read_ptr(upid_at(pid, level), off!(upid_ns)).map_err(kerr)
}

/// Reads the ids and namespace of inline level `lvl` (below INLINE_LEVELS; deeper ones:
/// `read_deep_levels`) of the task whose pids are `pids` into `s`.
#[inline(always)]
fn read_level<K: Kmem>(k: K, pids: &TaskPids, lvl: u32, s: &mut Scratch) -> Result<(), u32> {
    let i = lvl as usize;
    let (tid, ns) = upid(k, pids.thread_pid, lvl)?;
    // A thread-group leader's two pids are one (the common case: one read less per level).
    let tgid = if pids.tgid_pid == pids.thread_pid { tid } else { nr_at(k, pids.tgid_pid, lvl)? };
    if lvl == pids.level && lvl > 0 {
        s.reaper_start = reaper_start(k, ns);
    }
    let ns = pidns_inum(k, ns)?;
    if let Some(slot) = s.ids.get_mut(i) {
        *slot = LevelIds { tid, tgid };
    }
    if let Some(slot) = s.ns.get_mut(i) {
        *slot = ns;
    }
    if lvl == pids.level {
        s.entry.pidns = ns;
    }
    if let Some(slot) = s.entry.nr.get_mut(i) {
        *slot = LevelIds { tid, tgid };
    }
    Ok(())
}

/// Start time of the init (child_reaper) of pid namespace `ns` (0 if it cannot be read): what
/// tells a namespace from a later one that got the same inode.
#[inline(always)]
fn reaper_start<K: Kmem>(k: K, ns: *const u8) -> u64 {
    k.read_ptr(ns, off!(pidns_child_reaper))
        .and_then(|init| k.read::<u64>(init, off!(task_start_time)))
        .unwrap_or(0)
}

/// An inline level (a constant `lvl` > 0): directly where the kernel declares `pid.numbers` a
/// flexible array (the verifier refuses a direct load past `numbers[1]` otherwise; the flag is a
/// constant to it, so it checks only the branch taken).
#[inline(always)]
fn read_inline_level<K: Kmem>(k: K, pids: &TaskPids, lvl: u32, s: &mut Scratch) -> Result<(), u32> {
    if K::DIRECT && off!(pid_numbers_flexible) == 0 {
        read_level(Probe, pids, lvl, s)
    } else {
        read_level(k, pids, lvl, s)
    }
}

/// Reads task `task`: its start time, level, and ids and namespace inode at every level, into
/// `s.ids` / `s.ns`, then packs them into `s.entry` (inline levels) and `s.deep` (the rest).
/// The inline levels are read one by one with constant indices, so that [`crate::kernel::Direct`]
/// loads are possible; deeper levels (rare) in a loop with [`Probe`] reads.
/// The entry's `container` is left to the caller.
#[inline(always)]
pub fn read_task<K: Kmem>(k: K, task: *const u8, s: &mut Scratch) -> Result<(), u32> {
    let pids = task_pids(k, task)?;
    let start: u64 = k.read(task, off!(task_start_time)).map_err(kerr)?;
    // PF_KTHREAD: only ever on tasks of the host's namespace, where kernel threads live.
    let kthread = k.read::<u32>(task, off!(task_flags)).map_err(kerr)? & task_flags::PF_KTHREAD != 0;
    let level = pids.level;
    reaper_outside_inline_levels(&pids, level, s)?;
    read_level(k, &pids, 0, s)?;
    if level >= 1 {
        read_inline_level(k, &pids, 1, s)?;
    }
    if level >= 2 {
        read_inline_level(k, &pids, 2, s)?;
    }
    if level >= 3 {
        read_inline_level(k, &pids, 3, s)?;
    }
    if level as usize >= INLINE_LEVELS {
        read_deep_levels(task, level, s)?;
    }
    s.entry.start_time = start;
    s.entry.level = level as u8;
    s.entry.flags = if kthread { task_flags::KTHREAD } else { 0 };
    s.deep.start_time = start;
    Ok(())
}

/// Fills `s.reaper_start` for a task whose own level is 0 (the host's: not needed) or above
/// the inline levels (read here, once, rather than in read_deep_levels' loop).
#[inline(always)]
fn reaper_outside_inline_levels(pids: &TaskPids, level: u32, s: &mut Scratch) -> Result<(), u32> {
    s.reaper_start = if level as usize >= INLINE_LEVELS {
        reaper_start(Probe, ns_at(Probe, pids.thread_pid, level)?)
    } else {
        0
    };
    Ok(())
}

/// Levels INLINE_LEVELS..=`level` of `task` (deep nesting: rare), in a loop with Probe reads,
/// written so that the verifier, which walks the loop once per level, has little to branch on in
/// each iteration (the 33 iterations otherwise cost most of the program's verification time).
#[inline(always)]
fn read_deep_levels(task: *const u8, level: u32, s: &mut Scratch) -> Result<(), u32> {
    // The pointers again, read with Probe: plain numbers to the verifier, which then keeps one
    // state per iteration, not one per kind of pointer.
    let pids = task_pids(Probe, task)?;
    // Decided once: a thread-group leader's two pids are one.
    let leader = pids.tgid_pid == pids.thread_pid;
    for i in INLINE_LEVELS..MAX_LEVELS {
        let lvl = i as u32;
        if lvl > level {
            break;
        }
        let (tid, ns) = upid(Probe, pids.thread_pid, lvl)?;
        let tgid = if leader { tid } else { nr_at(Probe, pids.tgid_pid, lvl)? };
        let ns = pidns_inum(Probe, ns)?;
        if let Some(slot) = s.ns.get_mut(i) {
            *slot = ns;
        }
        if let Some(slot) = s.ids.get_mut(i) {
            *slot = LevelIds { tid, tgid };
        }
        if let Some(slot) = s.deep.nr.get_mut(i - INLINE_LEVELS) {
            *slot = LevelIds { tid, tgid };
        }
    }
    if let Some(own) = below(level as usize, MAX_LEVELS) {
        s.entry.pidns = s.ns[own];
    }
    Ok(())
}

// read_task unrolls exactly the inline levels.
const _: () = assert!(INLINE_LEVELS == 4);

/// The number of `struct pid` `pid` in the namespace `ns` at `level` (pid_nr_ns(): 0 when
/// the pid has no number there).
#[inline(always)]
pub fn pid_nr_ns(pid: *const u8, level: u32, ns: *const u8) -> Result<u32, u32> {
    if pid.is_null() {
        return Ok(0);
    }
    let plevel: u32 = read(pid, off!(pid_level)).map_err(kerr)?;
    if plevel < level {
        return Ok(0);
    }
    if ns_at(Probe, pid, level)? != ns {
        return Ok(0);
    }
    nr_at(Probe, pid, level)
}

/// Which of a task's ids, as seen from its own namespace.
#[derive(Clone, Copy)]
pub enum Own {
    Pgid,
    Sid,
    /// The real parent's tgid.
    Ppid,
}

/// `task`'s id `which` in the task's own (active) pid namespace — what getpgid(0), getsid(0),
/// setsid and getppid return to it. Read from the task structures: the truth
/// returned values are checked against.
#[inline(always)]
pub fn own_id(task: *const u8, which: Own) -> Result<u32, u32> {
    let pids = task_pids(Probe, task)?;
    let level = pids.level;
    let ns = ns_at(Probe, pids.thread_pid, level)?;
    let pid = match which {
        Own::Pgid | Own::Sid => {
            let signal = read_ptr(task, off!(task_signal)).map_err(|_| counter::map_error::KERNEL_READ)?;
            let index = if matches!(which, Own::Pgid) { off!(pidtype_pgid) } else { off!(pidtype_sid) };
            read::<*const u8>(signal, off!(signal_pids) + 8 * index)
                .map_err(|_| counter::map_error::KERNEL_READ)?
        }
        Own::Ppid => {
            let parent =
                read_ptr(task, off!(task_real_parent)).map_err(|_| counter::map_error::KERNEL_READ)?;
            task_pids(Probe, parent)?.tgid_pid
        }
    };
    pid_nr_ns(pid, level, ns)
}

/// The registered cgroup container of the task whose `css_set` is at `cset`: the first
/// registered cgroup among its cgroup v2 (default hierarchy) cgroup and that cgroup's
/// ancestors, deepest first. Answers it packed (`slot << 32 | container`), or -1 when there is
/// none or a read failed (counted).
///
/// A global function: the verifier walks its loop (up to MAX_CGROUP_DEPTH levels) once per
/// program, not once for every state that reaches it (the task iterator's program was 179k
/// instructions). Its argument is a number (a global function takes no kernel pointer on 6.1):
/// the caller's probe read of `task->cgroups`; every read here is a probe read too.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn cgroup_container(cset: u64) -> i64 {
    let walk = || -> Result<Option<CgroupContainer>, i32> {
        let cgrp = read_ptr(cset as *const u8, off!(css_set_dfl_cgrp))?;
        let level: i32 = read(cgrp, off!(cgroup_level))?;
        for i in 0..pidvirt_common::MAX_CGROUP_DEPTH as i32 {
            let l = level - i;
            if l < 0 {
                break;
            }
            let ancestor = read_ptr(cgrp, off!(cgroup_ancestors) + 8 * l as u32)?;
            let kn = read_ptr(ancestor, off!(cgroup_kn))?;
            let id: u64 = read(kn, off!(kernfs_node_id))?;
            if let Some(c) = crate::maps::CGROUPS.get_ptr(id) {
                return Ok(Some(unsafe { *c }));
            }
        }
        Ok(None)
    };
    match walk() {
        Ok(Some(c)) => (i64::from(c.slot) << 32) | i64::from(c.container),
        Ok(None) => -1,
        Err(_) => {
            crate::maps::count_map_error(counter::map_error::KERNEL_READ);
            -1
        }
    }
}

/// Whether any cgroup container is registered.
#[inline(always)]
pub fn cgroup_containers_registered() -> bool {
    crate::maps::CONFIG.get(pidvirt_common::config::CGROUP_CONTAINERS).is_some_and(|n| *n > 0)
}

/// The container (and counter slot) of a task whose own pid namespace is `pidns` at `level`,
/// with counter slot `ns_slot`: a registered cgroup container if the task is in one, else its
/// namespace (or the host).
#[inline(always)]
pub fn container_of(task: *const u8, level: u32, pidns: u32, ns_slot: u32) -> CgroupContainer {
    if cgroup_containers_registered() {
        match read_ptr(task, off!(task_cgroups)) {
            Ok(cset) => {
                let packed = cgroup_container(cset as u64);
                if packed >= 0 {
                    return CgroupContainer { container: packed as u32, slot: (packed >> 32) as u32 };
                }
            }
            Err(_) => crate::maps::count_map_error(counter::map_error::KERNEL_READ),
        }
    }
    if level == 0 {
        CgroupContainer { container: pidvirt_common::HOST_CONTAINER, slot: pidvirt_common::slots::HOST }
    } else {
        CgroupContainer { container: pidns, slot: ns_slot }
    }
}

/// Open file `fd` of the current task (`struct file *`): its file table, read with
/// bpf_probe_read_kernel (the index is the caller's). None past the table's end or for a free slot.
#[inline(always)]
pub fn fd_file(fd: u32) -> Option<*const u8> {
    let task = unsafe { aya_ebpf::helpers::bpf_get_current_task() } as *const u8;
    let fdt = read_ptr(read_ptr(task, off!(task_files)).ok()?, off!(files_fdt)).ok()?;
    if fd >= read::<u32>(fdt, off!(fdtable_max_fds)).ok()? {
        return None;
    }
    let fds = read_ptr(fdt, off!(fdtable_fd)).ok()?;
    read_ptr(fds.wrapping_add(fd as usize * 8), 0).ok()
}
