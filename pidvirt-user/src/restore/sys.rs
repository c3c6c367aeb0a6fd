//! The system calls of spawn and restore that std does not offer: clone3 with `set_tid` (a
//! process, or a thread on a stack of its own), setns, and a step counter shared by every
//! restored process (a futex word in a shared anonymous mapping).

use std::{
    ffi::CStr,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicI32, AtomicU32, Ordering},
    time::Duration,
};

/// `struct clone_args` up to `set_tid_size` (CLONE_ARGS_SIZE_VER1, Linux 5.5): the size that
/// says "set_tid is wanted"; a 5.3/5.4 kernel, whose clone3 knows only the first 64 bytes,
/// answers E2BIG.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
}

/// The `set_tid` field: no pointer for none (clone3 refuses a pointer with a size of 0).
fn set_tid_ptr(tids: &[libc::pid_t]) -> u64 {
    if tids.is_empty() { 0 } else { tids.as_ptr() as u64 }
}

/// Which side of a fork we are on.
#[derive(Debug, PartialEq, Eq)]
pub enum Forked {
    Child,
    /// The child's pid, as the caller's namespace numbers it.
    Parent(u32),
}

/// Forks: with `set_tid` (innermost level first) the child gets exactly those pids (clone3);
/// with `new_pidns` it is the init of a new pid namespace (CLONE_NEWPID).
///
/// # Safety
/// As fork(2): the child of a multi-threaded process may only call async-signal-safe functions.
/// Spawn and restore fork from processes whose other threads (if any) are [`clone_thread`]'s,
/// which hold no lock.
pub unsafe fn clone_process(set_tid: &[u32], new_pidns: bool) -> io::Result<Forked> {
    let ret = if set_tid.is_empty() && !new_pidns {
        // SAFETY: the caller's contract (above).
        i64::from(unsafe { libc::fork() })
    } else {
        let tids: Vec<libc::pid_t> = set_tid.iter().map(|&t| t as libc::pid_t).collect();
        let args = CloneArgs {
            flags: if new_pidns { libc::CLONE_NEWPID as u64 } else { 0 },
            exit_signal: libc::SIGCHLD as u64,
            set_tid: set_tid_ptr(&tids),
            set_tid_size: tids.len() as u64,
            ..CloneArgs::default()
        };
        // SAFETY: `args` is a clone_args of the size passed and `tids` holds set_tid_size pids,
        // both alive for the call; without CLONE_VM and a stack the child runs on a copy of our
        // memory, as after fork (the caller's contract covers what it then runs).
        unsafe { libc::syscall(libc::SYS_clone3, &raw const args, size_of::<CloneArgs>()) }
    };
    match ret {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid as u32)),
    }
}

/// Raw system calls that touch nothing but registers: a thread made by [`clone_thread`] shares
/// its creator's thread pointer, so it must not use libc (errno is thread-local).
#[cfg(target_arch = "x86_64")]
mod raw {
    /// # Safety
    /// As the system call `nr` with these arguments.
    pub unsafe fn syscall(nr: libc::c_long, a: [usize; 4]) -> isize {
        let ret: isize;
        // SAFETY: the x86-64 system call convention; the kernel clobbers rcx and r11 only.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") nr as isize => ret,
                in("rdi") a[0], in("rsi") a[1], in("rdx") a[2], in("r10") a[3],
                lateout("rcx") _, lateout("r11") _,
                options(nostack),
            );
        }
        ret
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod raw {
    /// # Safety
    /// As the system call `nr` with these arguments.
    pub unsafe fn syscall(nr: libc::c_long, a: [usize; 4]) -> isize {
        // SAFETY: as the system call; only used by processes here (threads are x86-64 only).
        unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3]) as isize }
    }
}

/// A restore stopped: a step failed.
#[derive(Debug, PartialEq, Eq)]
pub struct Stopped;

/// Step counter of a restore, shared by the helper, every restored process and thread.
#[repr(C)]
struct BoardWords {
    /// The next step to run; `steps` when all are done; [`Board::GO`] once the restore stands;
    /// [`Board::FAILED`] when a step failed.
    word: AtomicU32,
    failed_step: AtomicU32,
    errno: AtomicI32,
}

/// The shared step counter (a MAP_SHARED anonymous page, inherited by every fork, never
/// unmapped: restored processes keep it until they end).
#[derive(Clone, Copy)]
pub struct Board(&'static BoardWords);

impl Board {
    pub const GO: u32 = u32::MAX - 1;
    pub const FAILED: u32 = u32::MAX;

    pub fn new() -> io::Result<Self> {
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the page is zeroed (a valid BoardWords: atomics of 0), aligned, and never
        // unmapped, so a 'static reference to it stays valid.
        Ok(Self(unsafe { &*p.cast::<BoardWords>() }))
    }

    pub fn now(&self) -> u32 {
        self.0.word.load(Ordering::Acquire)
    }

    fn wake(&self) {
        // SAFETY: FUTEX_WAKE on a word of a mapping every waiter shares (not a private futex:
        // the waiters are other processes).
        unsafe {
            raw::syscall(
                libc::SYS_futex,
                [self.0.word.as_ptr() as usize, libc::FUTEX_WAKE as usize, i32::MAX as usize, 0],
            )
        };
    }

    /// The current step is done.
    pub fn advance(&self) {
        self.0.word.fetch_add(1, Ordering::AcqRel);
        self.wake();
    }

    /// Sets the word (GO, FAILED) and wakes every waiter.
    pub fn set(&self, v: u32) {
        self.0.word.store(v, Ordering::Release);
        self.wake();
    }

    /// Step `step` failed with `errno`.
    pub fn fail(&self, step: u32, errno: i32) {
        self.0.failed_step.store(step, Ordering::Relaxed);
        self.0.errno.store(errno, Ordering::Relaxed);
        self.set(Self::FAILED);
    }

    /// The step that failed and its errno.
    pub fn failure(&self) -> (u32, i32) {
        (self.0.failed_step.load(Ordering::Relaxed), self.0.errno.load(Ordering::Relaxed))
    }

    /// Sleeps while the word is `seen` (at most `timeout`; spurious wake-ups happen).
    pub fn wait_change(&self, seen: u32, timeout: Option<Duration>) {
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(t.subsec_nanos()),
        });
        let tsp = ts.as_ref().map_or(std::ptr::null(), std::ptr::from_ref);
        // SAFETY: FUTEX_WAIT reads the shared word and the timespec (or none), both alive.
        unsafe {
            raw::syscall(
                libc::SYS_futex,
                [self.0.word.as_ptr() as usize, libc::FUTEX_WAIT as usize, seen as usize, tsp as usize],
            )
        };
    }

    /// Waits for step `k`.
    pub fn wait_turn(&self, k: u32) -> Result<(), Stopped> {
        loop {
            match self.now() {
                v if v == k => return Ok(()),
                Self::FAILED => return Err(Stopped),
                v => self.wait_change(v, None),
            }
        }
    }
}

/// What a thread made by [`clone_thread`] needs: the board and its name.
#[repr(C)]
struct ThreadStart {
    board: Board,
    comm: [u8; 16],
}

/// A thread made by [`clone_thread`]: names itself, says it runs, and sleeps until its process
/// ends. Raw system calls only (see [`raw`]).
#[cfg(target_arch = "x86_64")]
extern "C" fn thread_main(start: *const ThreadStart) -> ! {
    // SAFETY: `clone_thread` leaked the ThreadStart for this thread.
    let start = unsafe { &*start };
    // SAFETY: PR_SET_NAME reads 16 bytes, NUL-terminated (comm_bytes).
    unsafe {
        raw::syscall(libc::SYS_prctl, [libc::PR_SET_NAME as usize, start.comm.as_ptr() as usize, 0, 0])
    };
    start.board.advance();
    loop {
        // SAFETY: pause takes nothing.
        unsafe { raw::syscall(libc::SYS_pause, [0; 4]) };
    }
}

/// A task name as PR_SET_NAME takes it: 15 bytes at most, NUL-terminated.
pub fn comm_bytes(name: &str) -> [u8; 16] {
    let mut b = [0u8; 16];
    for (d, s) in b.iter_mut().zip(name.bytes().filter(|&c| c != 0).take(15)) {
        *d = s;
    }
    b
}

/// Names the calling thread.
pub fn set_comm(name: &str) {
    let b = comm_bytes(name);
    // SAFETY: PR_SET_NAME reads the 16-byte NUL-terminated buffer.
    unsafe { libc::prctl(libc::PR_SET_NAME, b.as_ptr()) };
}

/// Makes a thread of the calling process with tids `set_tid` (innermost first), named `comm`,
/// that advances `board` once it runs and then sleeps until the process ends.
#[cfg(target_arch = "x86_64")]
pub fn clone_thread(set_tid: &[u32], comm: &str, board: Board) -> io::Result<u32> {
    const STACK: usize = 64 * 1024;
    // SAFETY: a fresh anonymous mapping; no existing memory is affected.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // Leaked: the thread reads it, and lives as long as the process.
    let start: &'static ThreadStart = Box::leak(Box::new(ThreadStart { board, comm: comm_bytes(comm) }));
    let tids: Vec<libc::pid_t> = set_tid.iter().map(|&t| t as libc::pid_t).collect();
    let flags = libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM;
    let args = CloneArgs {
        flags: flags as u64,
        stack: stack as u64,
        stack_size: STACK as u64,
        set_tid: set_tid_ptr(&tids),
        set_tid_size: tids.len() as u64,
        ..CloneArgs::default()
    };
    let ret: isize;
    // SAFETY: clone3 with CLONE_VM on a stack of its own: the parent returns with the tid (or
    // -errno); the child starts on the new stack (16-byte aligned: the call leaves it as the ABI
    // wants at a function's entry) and calls thread_main, which never returns and uses raw
    // system calls only. r12 and r13 survive the system call in both.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 as isize => ret,
            in("rdi") &raw const args,
            in("rsi") size_of::<CloneArgs>(),
            in("r12") std::ptr::from_ref(start),
            in("r13") thread_main as *const (),
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
    }
    if ret < 0 {
        return Err(io::Error::from_raw_os_error(-ret as i32));
    }
    Ok(ret as u32)
}

#[cfg(not(target_arch = "x86_64"))]
pub fn clone_thread(_set_tid: &[u32], _comm: &str, _board: Board) -> io::Result<u32> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "threads with chosen tids are made on x86-64 only"))
}

/// Opens `path` (O_CLOEXEC, plus `flags`).
pub fn open(path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: `path` is NUL-terminated.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open returned a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `path` relative to directory `dir`.
pub fn open_at(dir: &OwnedFd, path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: `path` is NUL-terminated; `dir` is an open descriptor.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), path.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat returned a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Joins the namespace `fd` refers to (`nstype`: a CLONE_NEW* constant).
pub fn setns(fd: &OwnedFd, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: setns takes a descriptor and a flag.
    check(unsafe { libc::setns(fd.as_raw_fd(), nstype) })
}

/// Makes the directory `root` the calling process's root and working directory (what
/// `docker exec` does with the container's root).
pub fn chroot_to(root: &OwnedFd) -> io::Result<()> {
    // SAFETY: fchdir takes a descriptor; chroot a NUL-terminated path.
    check(unsafe { libc::fchdir(root.as_raw_fd()) })?;
    // SAFETY: as above.
    check(unsafe { libc::chroot(c".".as_ptr()) })
}

/// A pipe, both ends close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 returned two new descriptors nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Points standard input, output and error at `fd`.
pub fn stdio_to(fd: &OwnedFd) {
    for target in 0..3 {
        // SAFETY: dup2 takes two descriptors.
        unsafe { libc::dup2(fd.as_raw_fd(), target) };
    }
}

/// Closes every descriptor from `first` up.
pub fn close_from(first: u32) {
    // SAFETY: close_range takes numbers; descriptors owned by Rust values above `first` are not
    // used again by callers (they exec or sleep until killed).
    if unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) } != 0 {
        for fd in first..1024 {
            // SAFETY: as above (close_range is missing before 5.9).
            unsafe { libc::close(fd as libc::c_int) };
        }
    }
}

/// The calling thread's errno as an io::Error's number.
pub fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// Waits for any child (every kind: __WALL); answers its pid, or None when none is left.
pub fn reap_any() -> Option<(u32, i32)> {
    let mut status = 0;
    // SAFETY: `status` is a writable int that outlives the call.
    let pid = unsafe { libc::waitpid(-1, &raw mut status, libc::__WALL) };
    (pid > 0).then_some((pid as u32, status))
}

/// Waits for child `pid`; answers its exit code (128 + the signal for one killed by a signal).
pub fn wait_exit_code(pid: u32) -> io::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a writable int that outlives the call.
        let r = unsafe { libc::waitpid(pid as libc::pid_t, &raw mut status, 0) };
        if r >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(if libc::WIFSIGNALED(status) { 128 + libc::WTERMSIG(status) } else { libc::WEXITSTATUS(status) })
}

/// Whether child `pid` has ended (without reaping it).
pub fn child_ended(pid: u32) -> bool {
    // SAFETY: siginfo_t is plain data; all zeroes is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a writable siginfo_t that outlives the call.
    let r = unsafe {
        libc::waitid(libc::P_PID, pid, &raw mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT)
    };
    // SAFETY: waitid filled `info` (si_pid 0 when the child has not ended).
    r != 0 || unsafe { info.si_pid() } != 0
}

/// SIGKILL to `pid`.
pub fn kill(pid: u32) {
    // SAFETY: kill takes numbers.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
}

/// Whether the calling process has CAP_SYS_ADMIN in its effective set (what choosing pids with
/// set_tid, entering namespaces and making a pid namespace take).
pub fn has_cap_sys_admin() -> bool {
    /// Its bit in the capability sets (linux/capability.h).
    const CAP_SYS_ADMIN: u32 = 21;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

/// The kernel's pid_max (pids run from 1 to pid_max - 1).
pub fn pid_max() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_is_cut_to_fifteen_bytes() {
        assert_eq!(&comm_bytes("sleep")[..6], b"sleep\0");
        let long = comm_bytes("a-very-long-process-name");
        assert_eq!(&long[..15], b"a-very-long-pro");
        assert_eq!(long[15], 0);
    }

    #[test]
    fn the_board_counts_steps_across_a_fork() {
        let board = Board::new().unwrap();
        assert_eq!(board.now(), 0);
        // SAFETY: the child only touches the shared board and exits.
        match unsafe { clone_process(&[], false) }.unwrap() {
            Forked::Child => {
                board.advance();
                // SAFETY: _exit ends the child without running the test harness's exit code.
                unsafe { libc::_exit(0) }
            }
            Forked::Parent(pid) => {
                assert_eq!(board.wait_turn(1), Ok(()));
                assert_eq!(wait_exit_code(pid).unwrap(), 0);
            }
        }
        // A thread on a stack of its own: it names itself and moves the board on.
        let tid = clone_thread(&[], "pv-raw-thread", board).unwrap();
        assert_eq!(board.wait_turn(2), Ok(()));
        let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap();
        assert_eq!(comm.trim(), "pv-raw-thread");
        board.fail(2, libc::EEXIST);
        assert_eq!(board.wait_turn(3), Err(Stopped));
        assert_eq!(board.failure(), (2, libc::EEXIST));
    }
}
