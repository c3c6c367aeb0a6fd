//! Pids inside structures (issue 15): the numbers that cross inside a syscall's structures
//! rather than as its argument or return value — file owners and lock holders (fcntl), tty
//! groups and sessions (ioctl), credentials (SO_PEERCRED, SCM_CREDENTIALS), siginfo
//! (rt_sigtimedwait, signalfd reads), SysV IPC pid fields, perf_event_open's pid, clone's CLONE_PARENT_SETTID
//! and clone3's set_tid[], PTRACE_GETEVENTMSG, and pids written to cgroup files.
//!
//! Each is filtered on its command first (an fcntl that is no F_*OWN* or GETLK costs nothing
//! more than the program's dispatch), judged by the one classifier (audit.rs) in the caller's
//! namespace, and counted under its syscall. A structure the kernel writes is read at the exit,
//! from the user address stashed at the entry (PENDING_CALLS, keyed by tid), or for clone and
//! clone3 from the caller's saved registers at the exit (no entry program); a signalfd read's
//! siginfo from the kernel's own, at fexit of the function that copies it out. Where the kernel
//! hands back 0 for a task the caller cannot see (its own silent translation failure), the
//! verdict is `invisible`; where 0 could also mean "nothing" (no owner set, no peer), the
//! kernel's own object (the file's owner, the socket's peer, the tty's group) decides. A
//! signal's sender of 0 from kill, tkill/tgkill or sigqueue is `nested`: those name only tasks
//! their namespace sees, so the kernel zeroed a sender of an ancestor namespace.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_task_btf, bpf_probe_read_user,
    },
    macros::fexit,
    programs::FExitContext,
};
use pidvirt_common::{
    INLINE_LEVELS, MAX_LEVELS, MAX_PID_NS_LEVEL, PendingCall, TaskEntry,
    audit::{Direction, Verdict, sys},
    counter,
};

use crate::{
    audit::{
        Stack, audit_task_number, caller, caller_on, child_named, count_crossing, count_crossings,
        handed_out, invisible, returned, sender_of_an_ancestor,
    },
    kernel::{Direct, Kmem, Probe, off, offsets_ready},
    maps::{DEEP, PENDING_CALLS, PENDING_TIDS, bit_set, clear_bit, count_map_error, set_bit},
    syscalls::{Arg4, Call, regs_arg},
    task::{fd_file, nr_at, pidns_inum, upid},
};

/// A `T` at user address `addr`.
#[inline(always)]
fn user<T: Copy>(addr: u64) -> Option<T> {
    if addr == 0 {
        return None;
    }
    unsafe { bpf_probe_read_user(addr as *const T) }.ok()
}

/// Keeps what syscall `syscall`'s exit needs.
#[inline(always)]
fn stash(syscall: u16, cmd: u16, fd: u32, a: u64, b: u64) {
    let tid = bpf_get_current_pid_tgid() as u32;
    if PENDING_CALLS.insert(tid, &PendingCall { syscall, cmd, fd, a, b }, 0).is_err() {
        count_map_error(counter::map_error::PENDING_INSERT);
    } else {
        set_bit(&PENDING_TIDS, tid);
    }
}

/// What the entry of this syscall kept (removed from the map); `syscall` is `u16::MAX` when
/// nothing was kept for it.
#[inline(always)]
fn take(syscall: u16) -> PendingCall {
    let tid = bpf_get_current_pid_tgid() as u32;
    let mut out = PendingCall { syscall: u16::MAX, ..PendingCall::default() };
    if !bit_set(&PENDING_TIDS, tid) {
        return out;
    }
    if let Some(p) = PENDING_CALLS.get_ptr(tid) {
        let p = unsafe { *p };
        let _ = PENDING_CALLS.remove(tid);
        if p.syscall == syscall {
            out = p;
        }
    }
    clear_bit(&PENDING_TIDS, tid);
    out
}

/// The low 32 bits of a register (an `int` or `unsigned int` argument).
#[inline(always)]
fn low32(v: u64) -> u64 {
    v & 0xffff_ffff
}

fn current_task() -> *const u8 {
    unsafe { bpf_get_current_task() as *const u8 }
}

/// The `struct sock *` of the caller's socket `fd`.
#[inline(always)]
fn socket_sk(fd: u32) -> Option<*const u8> {
    let socket = Probe.read_ptr(fd_file(fd)?, off!(file_private_data)).ok()?;
    Probe.read_ptr(socket, off!(socket_sk)).ok()
}

/// `pid`'s number in the namespace of the caller (entry `c`), `None` if it has none there.
#[inline(always)]
fn number_here(pid: *const u8, c: &TaskEntry) -> Result<Option<u32>, u32> {
    let level: u32 = Probe.read(pid, off!(pid_level)).map_err(|_| counter::map_error::KERNEL_READ)?;
    let here = u32::from(c.level);
    if level < here || here > MAX_PID_NS_LEVEL {
        return Ok(None);
    }
    let (nr, ns) = upid(Probe, pid, here)?;
    if pidns_inum(Probe, ns)? != c.pidns {
        return Ok(None);
    }
    Ok(Some(nr))
}

/// The kernel handed the caller 0 for `pid`, a `struct pid *` it holds (null: nothing was
/// there, nothing crossed): `invisible` if it has no number in the caller's namespace.
#[inline(always)]
fn zero_for(s: u16, pid: *const u8) {
    if pid.is_null() {
        return;
    }
    let Some((_, c)) = caller() else { return };
    match number_here(pid, unsafe { &*c }) {
        Ok(None) => invisible(s, Direction::Out, nr_at(Probe, pid, 0).unwrap_or(0)),
        Ok(Some(_)) => {}
        Err(reason) => count_map_error(reason),
    }
}

/// F_GETOWN(_EX) answered 0: the owner of file `fd` decides (none set, or its task gone: nothing
/// crossed; a live owner the caller cannot see: invisible).
#[inline(always)]
fn zero_owner(s: u16, fd: u32) {
    let Some(file) = fd_file(fd) else { return };
    let fown = if off!(file_f_owner_is_ptr) != 0 {
        match Probe.read_ptr(file, off!(file_f_owner)) {
            Ok(p) => p,
            Err(_) => return, // never set (allocated on the first F_SETOWN)
        }
    } else {
        file.wrapping_add(off!(file_f_owner) as usize)
    };
    let Ok(pid) = Probe.read_ptr(fown, off!(fown_pid)) else { return };
    let ty: u32 = Probe.read(fown, off!(fown_pid_type)).unwrap_or(0);
    // The kernel answers 0 for an owner no task uses any more, too.
    let first: u64 = Probe.read(pid, off!(pid_tasks) + 8 * (ty & 3)).unwrap_or(0);
    if first != 0 {
        zero_for(s, pid);
    }
}

/// TIOCGPGRP / TIOCGSID answered 0: the tty's foreground group or session decides (a pty
/// master's are its slave's).
#[inline(always)]
fn zero_tty(s: u16, fd: u32, session: bool) {
    let Some(file) = fd_file(fd) else { return };
    let Ok(private) = Probe.read_ptr(file, off!(file_private_data)) else { return };
    let Ok(tty) = Probe.read_ptr(private, off!(tty_file_tty)) else { return };
    let at = if session { off!(tty_session) } else { off!(tty_pgrp) };
    let pid = match Probe.read_ptr(tty, at) {
        Ok(p) => p,
        Err(_) => match Probe.read_ptr(tty, off!(tty_link)).and_then(|slave| Probe.read_ptr(slave, at)) {
            Ok(p) => p,
            Err(_) => return,
        },
    };
    zero_for(s, pid);
}

/// The socket family of the caller's socket `fd`.
#[inline(always)]
fn socket_family(fd: u32) -> Option<u16> {
    Probe.read(socket_sk(fd)?, off!(sock_family)).ok()
}

/// clone3 `set_tid[]` (`n` entries at `set_tid`, innermost level first): each chosen number
/// against the child's number at the level it names (`ok`, or `mismatch`: the kernel always
/// honours them or fails). `r`: the child's number in the caller's namespace.
#[inline(always)]
fn set_tids(at: Stack, syscall: u16, child_nr: i64, set_tid: u64, count: u32) {
    let Some((tid, c)) = caller_on(at) else { return };
    let c = unsafe { &*c };
    let child = child_named(tid, c, child_nr);
    if !child.is_some() {
        return;
    }
    let entry = unsafe { &*child.entry };
    let level = u32::from(entry.level);
    let deep = if level >= INLINE_LEVELS as u32 { DEEP.get_ptr(child.tid) } else { None };
    let mut wrong = (0i32, 0u32, false);
    // Counted once after the loop: a counter update per level made the verifier walk a map
    // lookup per level and per state.
    let mut ok = 0u64;
    for i in 0..MAX_LEVELS as u32 {
        if i >= count || i > level {
            break;
        }
        let Some(chosen) = user::<i32>(set_tid + 4 * u64::from(i)) else { break };
        let at = (level - i) as usize;
        // Constant indices: 6.1's verifier follows a bounds check on this index into branches it
        // cannot take (a level known >= 4 checked < 4) and refuses the pointer arithmetic there.
        let truth = match at {
            0 => entry.nr[0].tid,
            1 => entry.nr[1].tid,
            2 => entry.nr[2].tid,
            3 => entry.nr[3].tid,
            _ => match deep {
                Some(d) => unsafe { (*d).nr[at.wrapping_sub(INLINE_LEVELS) & 31].tid },
                None => 0,
            },
        };
        if chosen as u32 == truth {
            ok += 1;
        } else {
            wrong = (chosen, truth, true);
            break;
        }
    }
    if ok > 0 {
        count_crossings(c.slot, syscall, Verdict::Ok, ok);
    }
    if wrong.2 {
        returned(at, syscall, i64::from(wrong.0), Ok(i64::from(wrong.1)));
    }
}

/// Events whose PTRACE_GETEVENTMSG message is a pid: PTRACE_EVENT_FORK, _VFORK, _CLONE,
/// _VFORK_DONE (include/uapi/linux/ptrace.h); EXEC's is the former tid, gone by then.
const PID_EVENTS: [u16; 4] = [1, 2, 3, 5];
/// Tracees of the caller looked at for the one a PTRACE_GETEVENTMSG names.
const MAX_TRACEES: usize = 8;

/// The event tracee `pid` (a number of the caller's namespace) is stopped at: the high byte of
/// its stop's si_code (0: not one of the caller's first MAX_TRACEES tracees, or not stopped).
#[inline(always)]
fn tracee_event(pid: i32, c: &TaskEntry) -> u16 {
    let head = current_task().wrapping_add(off!(task_ptraced) as usize);
    let mut node = head;
    for _ in 0..MAX_TRACEES {
        node = match Probe.read_ptr(node, 0) {
            Ok(n) => n,
            Err(_) => return 0,
        };
        if node == head {
            return 0;
        }
        let t = node.wrapping_sub(off!(task_ptrace_entry) as usize);
        let Ok(thread_pid) = Probe.read_ptr(t, off!(task_thread_pid)) else { return 0 };
        if number_here(thread_pid, c) == Ok(Some(pid as u32)) {
            let Ok(si) = Probe.read_ptr(t, off!(task_last_siginfo)) else { return 0 };
            let code: i32 = Probe.read(si, off!(siginfo_code)).unwrap_or(0);
            return ((code >> 8) & 0xff) as u16;
        }
    }
    0
}

/// PTRACE_GETEVENTMSG (called from `enter_ptrace`): keeps where the message goes when the
/// tracee's event makes it a pid.
#[inline(always)]
pub fn ptrace_enter(c: &impl Call, s: u16) {
    const PTRACE_GETEVENTMSG: u64 = 0x4201;
    let data = c.arg::<3>();
    if c.arg::<0>() != PTRACE_GETEVENTMSG || data == 0 {
        return;
    }
    let Some((_, e)) = caller() else { return };
    let event = tracee_event(c.int_arg::<1>(), unsafe { &*e });
    if PID_EVENTS.contains(&event) {
        stash(s, event, 0, data, 0);
    }
}

/// A pid moved into a cgroup by a write to `cgroup.procs`, `cgroup.threads` or v1 `tasks`
/// (called from the cgroup_attach_task hook, `task` the task moved, current the writer): the
/// number written was `task`'s number in the writer's namespace (its leader's, for a thread
/// group), judged like any argument under `write`. A task with no number there was not moved by
/// a number the writer wrote (a kernel-side attach): not counted. A task moving itself (the
/// writer wrote 0 or its own pid): `ok`.
#[inline(always)]
pub fn cgroup_write(task: *const u8) {
    let Some((tid, c)) = caller() else { return };
    let c = unsafe { &*c };
    let me = unsafe { bpf_get_current_task_btf() } as *const u8;
    if task == me {
        count_crossing(c.slot, sys::WRITE, Verdict::Ok);
        return;
    }
    let Ok(pid) = Direct.read_ptr(task, off!(task_thread_pid)) else { return };
    match number_here(pid, c) {
        Ok(Some(n)) => {
            audit_task_number(sys::WRITE, Direction::In, n as i32, tid, c);
        }
        Ok(None) => {}
        Err(reason) => count_map_error(reason),
    }
}

/// The handlers of the catalogue's structure syscalls (re-exported by syscalls::handlers).
pub mod handlers {
    #[expect(clippy::wildcard_imports, reason = "the handlers are the body of this module's parent")]
    use super::*;
    use crate::audit::{group, task_arg};

    // ---- fcntl ------------------------------------------------------------------------------

    /// fcntl commands (include/uapi/asm-generic/fcntl.h, linux/fcntl.h).
    const F_GETLK: u64 = 5;
    const F_SETOWN: u64 = 8;
    const F_GETOWN: u64 = 9;
    const F_SETOWN_EX: u64 = 15;
    const F_GETOWN_EX: u64 = 16;
    const F_OFD_GETLK: u64 = 36;
    /// `struct f_owner_ex { int type; pid_t pid; }` types.
    const F_OWNER_TID: i32 = 0;
    const F_OWNER_PID: i32 = 1;
    const F_OWNER_PGRP: i32 = 2;
    const F_UNLCK: i16 = 2;
    /// `struct flock` on x86-64: l_type, l_whence (short), l_start, l_len (off_t), l_pid.
    const FLOCK_PID: u64 = 24;

    /// F_SETOWN (`arg` > 0 a process, < 0 a group) and F_SETOWN_EX in; the GET commands keep
    /// where their answer goes.
    #[inline(always)]
    pub fn enter_fcntl(c: &impl Call, s: u16) {
        let cmd = low32(c.arg::<1>());
        match cmd {
            F_SETOWN => {
                let who = c.int_arg::<2>();
                if who > 0 {
                    task_arg(c.stack(), s, who, false);
                } else if who < 0 {
                    group(c.stack(), s, Verdict::Group);
                }
            }
            F_SETOWN_EX => {
                if let Some([ty, pid]) = user::<[i32; 2]>(c.arg::<2>())
                    && pid > 0
                {
                    if ty == F_OWNER_PGRP {
                        group(c.stack(), s, Verdict::Group);
                    } else if ty == F_OWNER_TID || ty == F_OWNER_PID {
                        task_arg(c.stack(), s, pid, false);
                    }
                }
            }
            F_GETOWN | F_GETOWN_EX | F_GETLK | F_OFD_GETLK => {
                stash(s, cmd as u16, c.arg::<0>() as u32, c.arg::<2>(), 0);
            }
            _ => {}
        }
    }

    /// F_GETOWN (returned: > 0 a process, < 0 a group), F_GETOWN_EX, F_GETLK / F_OFD_GETLK
    /// (`l_pid` of a conflicting lock: 0 is a holder the caller cannot see, -1 an OFD lock).
    #[inline(always)]
    pub fn exit_fcntl(c: &impl Call, s: u16) {
        let p = take(s);
        if p.syscall != s {
            return;
        }
        let r = c.ret();
        match u64::from(p.cmd) {
            F_GETOWN => {
                if r > 0 {
                    handed_out(s, r as i32);
                } else if r == 0 {
                    zero_owner(s, p.fd);
                } else if fd_file(p.fd).is_some() {
                    // A group (an error has no open file behind it).
                    group(c.stack(), s, Verdict::Group);
                }
            }
            F_GETOWN_EX if r == 0 => {
                if let Some([ty, pid]) = user::<[i32; 2]>(p.a) {
                    if pid > 0 && ty == F_OWNER_PGRP {
                        group(c.stack(), s, Verdict::Group);
                    } else if pid > 0 {
                        handed_out(s, pid);
                    } else if pid == 0 {
                        zero_owner(s, p.fd);
                    }
                }
            }
            F_GETLK | F_OFD_GETLK if r == 0 => {
                if let (Some(ty), Some(pid)) = (user::<i16>(p.a), user::<i32>(p.a + FLOCK_PID))
                    && ty != F_UNLCK
                {
                    if pid > 0 {
                        handed_out(s, pid);
                    } else if pid == 0 {
                        invisible(s, Direction::Out, 0);
                    }
                }
            }
            _ => {}
        }
    }

    // ---- tty --------------------------------------------------------------------------------

    const TIOCGPGRP: u64 = 0x540F;
    const TIOCSPGRP: u64 = 0x5410;
    const TIOCGSID: u64 = 0x5429;

    /// TIOCSPGRP in (`*argp` a process group, judged as the number of its leader); TIOCGPGRP and
    /// TIOCGSID keep where their answer goes.
    #[inline(always)]
    pub fn enter_ioctl(c: &impl Call, s: u16) {
        let cmd = low32(c.arg::<1>());
        if cmd == TIOCSPGRP {
            if let Some(pgrp) = user::<i32>(c.arg::<2>()) {
                task_arg(c.stack(), s, pgrp, false);
            }
        } else if cmd == TIOCGPGRP || cmd == TIOCGSID {
            stash(s, cmd as u16, c.arg::<0>() as u32, c.arg::<2>(), 0);
        }
    }

    #[inline(always)]
    pub fn exit_ioctl(c: &impl Call, s: u16) {
        let p = take(s);
        if p.syscall != s || c.ret() != 0 {
            return;
        }
        let Some(v) = user::<i32>(p.a) else { return };
        if v > 0 {
            handed_out(s, v);
        } else if v == 0 {
            zero_tty(s, p.fd, u64::from(p.cmd) == TIOCGSID);
        }
    }

    // ---- credentials ------------------------------------------------------------------------

    const SOL_SOCKET: u64 = 1;
    const SO_PEERCRED: u64 = 17;
    const SCM_CREDENTIALS: i32 = 2;
    const AF_UNIX: u16 = 1;
    /// `struct user_msghdr` on x86-64: msg_control (8 bytes) then msg_controllen (8) at 32.
    const MSG_CONTROL: u64 = 32;
    /// `struct cmsghdr { size_t cmsg_len; int cmsg_level; int cmsg_type; }`, data after it.
    const CMSG_HDR: u64 = 16;
    /// CMSG_LEN(sizeof(struct ucred { pid_t pid; uid_t uid; gid_t gid; })).
    const CMSG_UCRED_LEN: u64 = CMSG_HDR + 12;
    /// Control messages looked at per call (SCM_RIGHTS may come first).
    const MAX_CMSGS: usize = 4;

    /// The `pid` of the first SCM_CREDENTIALS control message in `len` bytes at `control`.
    #[inline(always)]
    fn ucred_pid(control: u64, len: u64) -> Option<i32> {
        if control == 0 || len < CMSG_UCRED_LEN {
            return None;
        }
        let end = control.wrapping_add(len);
        let mut at = control;
        for _ in 0..MAX_CMSGS {
            if at.wrapping_add(CMSG_UCRED_LEN) > end {
                break;
            }
            let h = user::<[u64; 2]>(at)?;
            let (len, level, ty) = (h[0], h[1] as u32 as i32, (h[1] >> 32) as u32 as i32);
            if len < CMSG_HDR {
                break;
            }
            if level == SOL_SOCKET as i32 && ty == SCM_CREDENTIALS {
                return if len >= CMSG_UCRED_LEN { user::<i32>(at + CMSG_HDR) } else { None };
            }
            at = at.wrapping_add((len + 7) & !7);
        }
        None
    }

    /// getsockopt(SOL_SOCKET, SO_PEERCRED): keeps where the ucred goes.
    #[inline(always)]
    pub fn enter_getsockopt(c: &impl Call, s: u16) {
        if low32(c.arg::<1>()) == SOL_SOCKET && low32(c.arg::<2>()) == SO_PEERCRED {
            stash(s, SO_PEERCRED as u16, c.arg::<0>() as u32, c.arg::<3>(), 0);
        }
    }

    /// SO_PEERCRED's `pid`: the peer in the caller's namespace; 0 for a peer the caller cannot
    /// see (the socket's peer pid decides: none, as for an unconnected or TCP socket, is no
    /// crossing).
    #[inline(always)]
    pub fn exit_getsockopt(c: &impl Call, s: u16) {
        let p = take(s);
        if p.syscall != s || c.ret() != 0 {
            return;
        }
        let Some(pid) = user::<i32>(p.a) else { return };
        if pid > 0 {
            handed_out(s, pid);
        } else if pid == 0
            && let Some(sk) = socket_sk(p.fd)
            && let Ok(peer) = Probe.read_ptr(sk, off!(sock_peer_pid))
        {
            zero_for(s, peer);
        }
    }

    /// SCM_CREDENTIALS sent: `ucred.pid`, a number of the sender's namespace (the kernel looks
    /// it up there).
    #[inline(always)]
    pub fn enter_sendmsg(c: &impl Call, s: u16) {
        let msg = c.arg::<1>();
        if msg != 0
            && let Some([control, len]) = user::<[u64; 2]>(msg + MSG_CONTROL)
            && let Some(pid) = ucred_pid(control, len)
        {
            task_arg(c.stack(), s, pid, false);
        }
    }

    /// recvmsg with room for credentials: keeps the msghdr.
    #[inline(always)]
    pub fn enter_recvmsg(c: &impl Call, s: u16) {
        let msg = c.arg::<1>();
        if msg != 0
            && let Some([control, len]) = user::<[u64; 2]>(msg + MSG_CONTROL)
            && control != 0
            && len >= CMSG_UCRED_LEN
        {
            stash(s, 0, c.arg::<0>() as u32, msg, 0);
        }
    }

    /// SCM_CREDENTIALS received: `ucred.pid` in the receiver's namespace; 0 on a unix socket is
    /// a sender the receiver cannot see (netlink's 0 is the kernel).
    #[inline(always)]
    pub fn exit_recvmsg(c: &impl Call, s: u16) {
        let p = take(s);
        if p.syscall != s || c.ret() < 0 {
            return;
        }
        let Some([control, len]) = user::<[u64; 2]>(p.a + MSG_CONTROL) else { return };
        match ucred_pid(control, len) {
            Some(pid) if pid > 0 => handed_out(s, pid),
            Some(0) if socket_family(p.fd) == Some(AF_UNIX) => invisible(s, Direction::Out, 0),
            _ => {}
        }
    }

    // ---- siginfo ----------------------------------------------------------------------------

    const SIGCHLD: i32 = 17;
    /// si_code values whose siginfo carries a sender's pid: SI_USER, SI_QUEUE, SI_MESGQ,
    /// SI_TKILL; and SIGCHLD's CLD_* (1..=6).
    const SI_WITH_PID: [i32; 4] = [0, -1, -3, -6];
    /// SI_USER, SI_QUEUE, SI_TKILL: sent by a task that named the receiver in its own namespace.
    const FROM_A_TASK_IT_SEES: [i32; 3] = [0, -1, -6];

    #[inline(always)]
    pub fn enter_sigtimedwait(c: &impl Call, s: u16) {
        let info = c.arg::<1>();
        if info != 0 {
            stash(s, 0, 0, info, 0);
        }
    }

    /// `si_pid` of the signal taken: the sender in the caller's namespace (not translated for a
    /// queued siginfo), 0 for a sender the caller cannot see.
    #[inline(always)]
    pub fn exit_sigtimedwait(c: &impl Call, s: u16) {
        let p = take(s);
        if p.syscall != s || c.ret() <= 0 {
            return;
        }
        // siginfo_t: si_signo, si_errno, si_code, padding, then si_pid.
        let Some(si) = user::<[i32; 5]>(p.a) else { return };
        signal_sender(s, si[0], si[2], si[4]);
    }

    /// The sender of signal `signo` (code `code`) a receiver was handed, `pid`, counted under
    /// syscall `s`: judged for the codes that carry a sender. A 0 from kill, tkill/tgkill or
    /// sigqueue (SI_USER, SI_TKILL, SI_QUEUE) is a sender of an ancestor namespace (they name
    /// only tasks their namespace sees); from mq_send (SI_MESGQ: any process sharing the IPC
    /// namespace, a sibling's too) or a child's SIGCHLD, a sender the receiver cannot see.
    #[inline(always)]
    pub fn signal_sender(s: u16, signo: i32, code: i32, pid: i32) {
        if !(SI_WITH_PID.contains(&code) || (signo == SIGCHLD && (1..=6).contains(&code))) {
            return;
        }
        if pid > 0 {
            handed_out(s, pid);
        } else if pid == 0 && FROM_A_TASK_IT_SEES.contains(&code) {
            sender_of_an_ancestor(s);
        } else if pid == 0 {
            invisible(s, Direction::Out, 0);
        }
    }

    // ---- SysV IPC ---------------------------------------------------------------------------

    const IPC_64: u64 = 0x100;
    const IPC_STAT: u64 = 2;
    const MSG_STAT: u64 = 11;
    const MSG_STAT_ANY: u64 = 13;
    const SHM_STAT: u64 = 13;
    const SHM_STAT_ANY: u64 = 15;
    const GETPID: u64 = 11;
    /// `struct msqid64_ds` on x86-64: msg_lspid, msg_lrpid at 96; `struct shmid64_ds`:
    /// shm_cpid, shm_lpid at 80.
    const MSQID_LSPID: u64 = 96;
    const SHMID_CPID: u64 = 80;

    /// msgctl/shmctl IPC_STAT (and the *_STAT forms) keep the buffer; semctl GETPID its command.
    #[inline(always)]
    pub fn enter_ipc_ctl(c: &impl Call, s: u16) {
        let (cmd, buf) = if s == sys::SEMCTL { (c.arg::<2>(), 0) } else { (c.arg::<1>(), c.arg::<2>()) };
        let cmd = low32(cmd) & !IPC_64;
        let watched = if s == sys::MSGCTL {
            buf != 0 && (cmd == IPC_STAT || cmd == MSG_STAT || cmd == MSG_STAT_ANY)
        } else if s == sys::SHMCTL {
            buf != 0 && (cmd == IPC_STAT || cmd == SHM_STAT || cmd == SHM_STAT_ANY)
        } else {
            cmd == GETPID
        };
        if watched {
            stash(s, cmd as u16, 0, buf, 0);
        }
    }

    /// The pid fields: last sender and receiver (msg), creator and last attacher (shm), last
    /// semop (sem, returned). 0 means "none yet" as much as "invisible", except shm_cpid (a
    /// segment always has a creator): only that one counts `invisible`.
    #[inline(always)]
    pub fn exit_ipc_ctl(c: &impl Call, s: u16) {
        let p = take(s);
        let r = c.ret();
        if p.syscall != s || r < 0 {
            return;
        }
        if s == sys::SEMCTL {
            if r > 0 {
                handed_out(s, r as i32);
            }
            return;
        }
        let at = if s == sys::MSGCTL { MSQID_LSPID } else { SHMID_CPID };
        let Some([first, second]) = user::<[i32; 2]>(p.a + at) else { return };
        if first > 0 {
            handed_out(s, first);
        } else if first == 0 && s == sys::SHMCTL {
            invisible(s, Direction::Out, 0);
        }
        if second > 0 {
            handed_out(s, second);
        }
    }

    // ---- perf_event_open --------------------------------------------------------------------

    const PERF_FLAG_PID_CGROUP: u64 = 4;

    /// `pid`: a task (0 the caller, -1 every task on a cpu); with PERF_FLAG_PID_CGROUP a cgroup
    /// descriptor, not a pid.
    #[inline(always)]
    pub fn enter_perf_event_open<C: Call + Arg4>(c: &C, s: u16) {
        if c.arg4() & PERF_FLAG_PID_CGROUP != 0 {
            return;
        }
        let pid = c.int_arg::<1>();
        if pid == -1 {
            group(c.stack(), s, Verdict::Any);
        } else {
            task_arg(c.stack(), s, pid, true);
        }
    }

    // ---- clone, clone3 ----------------------------------------------------------------------

    const CLONE_PARENT_SETTID: u64 = 0x0010_0000;
    /// `struct clone_args`: flags at 0, parent_tid at 24, set_tid and set_tid_size at 64
    /// (CLONE_ARGS_SIZE_VER1 = 80).
    const CLONE_ARGS_PARENT_TID: u64 = 24;
    const CLONE_ARGS_SET_TID: u64 = 64;
    const CLONE_ARGS_SIZE_VER1: u64 = 80;

    /// The returned child (exit_fork), then in the parent the CLONE_PARENT_SETTID value against
    /// the returned one (0: a thread that already exited cleared it) and clone3's set_tid[]. The
    /// arguments are read here, at the exit, from the caller's saved registers, and clone3's
    /// `struct clone_args` from its memory, which the kernel copied at the entry: no entry
    /// program, and nothing kept between the two. A caller that rewrites them meanwhile (a tracer
    /// at the fork event, a CLONE_VFORK child writing its parent's memory) is judged on what it
    /// wrote.
    #[inline(always)]
    pub fn exit_clone(c: &impl Call, s: u16) {
        crate::syscalls::handlers::exit_fork(c, s);
        let r = c.ret();
        if r <= 0 {
            return;
        }
        let regs = c.saved_regs();
        let (parent_tid, set_tid, n) = if s == sys::CLONE {
            // clone (flags, stack, parent_tid, ...).
            let parent_tid =
                if regs_arg::<0>(regs) & CLONE_PARENT_SETTID != 0 { regs_arg::<2>(regs) } else { 0 };
            (parent_tid, 0, 0)
        } else {
            // clone3 (args, size).
            let args = regs_arg::<0>(regs);
            let Some(flags) = user::<u64>(args) else { return };
            let parent_tid = if flags & CLONE_PARENT_SETTID != 0 {
                user::<u64>(args + CLONE_ARGS_PARENT_TID).unwrap_or(0)
            } else {
                0
            };
            let (set_tid, n) = if regs_arg::<1>(regs) >= CLONE_ARGS_SIZE_VER1 {
                user::<[u64; 2]>(args + CLONE_ARGS_SET_TID).map_or((0, 0), |v| (v[0], v[1]))
            } else {
                (0, 0)
            };
            (parent_tid, set_tid, if set_tid != 0 && n <= MAX_LEVELS as u64 { n } else { 0 })
        };
        if let Some(v) = user::<i32>(parent_tid)
            && v != 0
        {
            returned(c.stack(), s, i64::from(v), Ok(r));
        }
        if n != 0 {
            set_tids(c.stack(), s, r, set_tid, n as u32);
        }
    }

    // ---- ptrace -----------------------------------------------------------------------------

    /// PTRACE_GETEVENTMSG of a fork, vfork or clone event: the new task, in the tracer's
    /// namespace (0 if it has no number there).
    #[inline(always)]
    pub fn exit_ptrace(c: &impl Call, s: u16) {
        let p = take(s);
        if p.syscall != s || c.ret() != 0 {
            return;
        }
        let Some(msg) = user::<u64>(p.a) else { return };
        let n = msg as u32 as i32;
        if n > 0 {
            handed_out(s, n);
        } else if n == 0 {
            invisible(s, Direction::Out, 0);
        }
    }
}

/// A signal a signalfd read hands out (fexit on signalfd's `signalfd_copyinfo(to, kinfo)`, one
/// call per signal, where the kernel takes fexit): its sender, judged like rt_sigtimedwait's and
/// counted under read(2). The siginfo is the kernel's own (`kinfo`), so nothing is read from the
/// reader's memory; a copy that failed (-EFAULT) handed nothing out.
#[fexit]
pub fn fexit_signalfd_copyinfo(ctx: FExitContext) -> i32 {
    // Preemptible, as the syscall functions' programs: it holds the CPU's state for its run.
    if offsets_ready()
        && let Some(_held) = crate::maps::CpuState::hold()
    {
        let info: *const u8 = ctx.arg(1);
        let copied = ctx.arg::<i64>(2) as i32;
        if copied > 0
            && let (Ok(signo), Ok(code), Ok(pid)) = (
                Probe.read::<i32>(info, off!(siginfo_signo)),
                Probe.read::<i32>(info, off!(siginfo_code)),
                Probe.read::<i32>(info, off!(siginfo_pid)),
            )
        {
            handlers::signal_sender(sys::READ, signo, code, pid);
        }
    }
    0
}
