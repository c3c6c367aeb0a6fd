//! Test fixture: builds pid namespaces with processes and threads, then acts inside them on
//! command, so that tests can compare what pidvirt says with what the kernel says.
//!
//! `pidvirt-fixture [--depth D]` creates D nested pid namespaces (each with an init that is
//! the only process of the outer one), prints one JSON line
//! `{"pidns": [inode level 1, ..., inode level D], "outer_init": <host pid of the level-1 init>}`
//! and then relays commands, one per line on stdin, to the innermost init, which answers one
//! line each (printed on stdout):
//!
//! - `spawn T` — fork a child with T extra threads that sleep; answers its vpid.
//! - `spawn_vpid V T` — the same with clone3 set_tid = [V] (vpid chosen); answers V or `err E`.
//! - `spawn_pids T P0 P1...` — the same with set_tid = [P0, P1, ...] (innermost level first,
//!   e.g. the vpid then the host pid); answers the vpid or `err E`.
//! - `spawn_exec T` — fork a child with T threads of which a non-leader one execs
//!   `sleep 3600`; answers the child's vpid once the exec happened.
//! - `reap V` — SIGKILL child V and wait for it; answers `ok` or `err E`.
//! - `zombie V` — SIGKILL child V but do not reap it; answers `ok`.
//! - `wait V` — reap child V (after `zombie`); answers the pid wait4 returned.
//! - `stop V` — SIGSTOP child V and wait4(V, WUNTRACED) for it (reported, not reaped);
//!   answers the pid wait4 returned.
//! - `spawn_leader_exits T` — fork a child with T threads that sleep, whose leader thread then
//!   exits on its own (a zombie leader while its threads run); answers its vpid.
//! - `traced_exit V` — a second child of the init ptraces (PTRACE_SEIZE) child V, kills it
//!   and collects its exit with wait4 (the tracer is not V's parent: V stays a zombie for the
//!   init); answers the pid the tracer's wait4 returned.
//! - `sys NAME ARGS...` — make syscall NAME (see `syscall_by_name`) from the init with integer
//!   arguments; answers its raw return value (`-errno` on failure).
//! - `repeat N NAME ARGS...` — the same N times; answers the last value.
//! - `pid` — answers getpid() (the init's vpid, 1).
//! - `prlimit_set P` — prlimit64(P, RLIMIT_NOFILE) setting P's current limits again (the
//!   kernel asks the LSMs); answers 0 or `-errno`.
//! - `spawn_tree` — a tree of 8 processes with two sessions and three process groups under the
//!   init (see `spawn_tree`); answers `ROLE=VPID` for each, space-separated.
//! - `mount_proc`, `path SYS PATH`, `path_at DIR SYS REL`, `path_cwd DIR SYS REL`, `edge ...`: numbers in
//!   /proc paths (tests/src/fixture/paths.rs).
//! - the commands of tests/src/fixture/structures.rs (pids inside structures), and
//!   `--host-fds` (descriptors the host process owns, inherited by the inits).
//!
//! Every process of the fixture dies with the fixture (PR_SET_PDEATHSIG) and when stdin closes.
//!
//! `pidvirt-fixture call NAME ARGS...` makes one syscall from the calling process and prints
//! its raw return value (run it under `nsenter -t PID -p` to call from another namespace).

#[path = "../fixture/paths.rs"]
mod paths;
#[path = "../fixture/structures.rs"]
mod structures;

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::fd::{FromRawFd, RawFd},
};

fn die(what: &str) -> ! {
    let e = std::io::Error::last_os_error();
    eprintln!("pidvirt-fixture: {what}: {e}");
    std::process::exit(111)
}

fn errno() -> i64 {
    std::io::Error::last_os_error().raw_os_error().map_or(0, i64::from)
}

fn pipe() -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        die("pipe2");
    }
    (fds[0], fds[1])
}

fn die_with_parent() {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and touches no memory.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
}

fn own_pidns_inode() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid").map_or(0, |m| m.ino())
}

/// The body of a spawned child: T threads that sleep, and the main thread too. Once every
/// thread runs (so the kernel has finished creating it), one byte on `ready`.
fn child_body(threads: usize, ready: RawFd) -> ! {
    die_with_parent();
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..threads {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send(());
            loop {
                std::thread::sleep(std::time::Duration::from_hours(1));
            }
        });
    }
    for _ in 0..threads {
        let _ = rx.recv();
    }
    // SAFETY: the buffer is one static byte; `ready` is a raw descriptor that no Rust value owns.
    unsafe {
        libc::write(ready, b"r".as_ptr().cast(), 1);
        libc::close(ready);
    }
    loop {
        // SAFETY: pause has no preconditions.
        unsafe { libc::pause() };
    }
}

use structures::CloneArgs;

/// Forks (clone3 with `set_tid` when pids are given, innermost level first); the child runs
/// `body`.
fn spawn_with(set_tid: &[i32], body: impl FnOnce()) -> i64 {
    let pid = if set_tid.is_empty() {
        // SAFETY: the fixture's processes are single-threaded where they fork (threads are made
        // only in children), so the child may run any code.
        unsafe { libc::fork() }
    } else {
        let args = CloneArgs {
            exit_signal: libc::SIGCHLD as u64,
            set_tid: set_tid.as_ptr() as u64,
            set_tid_size: set_tid.len() as u64,
            ..Default::default()
        };
        // SAFETY: `args` is a clone_args of the size passed and `set_tid` holds set_tid_size pids,
        // both alive for the call; with no stack given, the child runs on a copy of ours as after
        // fork, in a single-threaded process (see above).
        unsafe { libc::syscall(libc::SYS_clone3, &raw const args, size_of::<CloneArgs>()) as i32 }
    };
    match pid {
        -1 => -errno(),
        0 => {
            body();
            std::process::exit(0)
        }
        pid => i64::from(pid),
    }
}

/// Closes our write end of `(r, w)`, then, if the spawn worked (`pid` > 0), waits until the
/// child writes a byte or closes its end; answers `pid`.
fn answer_when_ready(pid: i64, (r, w): (RawFd, RawFd)) -> i64 {
    // SAFETY: `w` is a raw descriptor that no Rust value owns.
    unsafe { libc::close(w) };
    if pid > 0 {
        let mut buf = [0u8; 1];
        // SAFETY: `buf` is writable for the one byte read.
        unsafe { libc::read(r, buf.as_mut_ptr().cast(), 1) };
    }
    // SAFETY: `r` is a raw descriptor that no Rust value owns.
    unsafe { libc::close(r) };
    pid
}

/// Spawns a child with `threads` threads; answers once all of them run.
fn spawn(threads: usize, set_tid: &[i32]) -> i64 {
    let (r, w) = pipe();
    let pid = spawn_with(set_tid, || child_body(threads, w));
    answer_when_ready(pid, (r, w))
}

/// A child with `threads` sleeping threads whose leader thread exits on its own once they run
/// (exit(2), not exit_group): the process lives on with a zombie leader.
fn spawn_leader_exits(threads: usize) -> i64 {
    let (r, w) = pipe();
    let pid = spawn_with(&[], || {
        die_with_parent();
        let (ready_r, ready_w) = pipe();
        for _ in 0..threads.max(1) {
            std::thread::spawn(move || {
                // SAFETY: the buffer is one static byte; `ready_w` is never closed.
                unsafe { libc::write(ready_w, b"t".as_ptr().cast(), 1) };
                loop {
                    std::thread::sleep(std::time::Duration::from_hours(1));
                }
            });
        }
        let mut buf = [0u8; 1];
        for _ in 0..threads.max(1) {
            // SAFETY: `buf` is writable for the one byte read.
            unsafe { libc::read(ready_r, buf.as_mut_ptr().cast(), 1) };
        }
        // SAFETY: the buffer is one static byte; `w` is a raw descriptor that no Rust value owns.
        unsafe { libc::write(w, b"r".as_ptr().cast(), 1) };
        // SAFETY: exit(2) ends this thread only, without unwinding; the other threads borrow
        // nothing from its stack (they own copies of `ready_w`).
        unsafe { libc::syscall(libc::SYS_exit, 0) };
    });
    answer_when_ready(pid, (r, w))
}

/// A process of `spawn_tree`: runs `setup` (its session, group and children), reports
/// `ROLE VPID` on `report`, makes `threads` sleeping threads and says it is ready; answers its
/// vpid once it is.
fn tree_node(role: &str, threads: usize, report: RawFd, setup: impl FnOnce()) -> i64 {
    let (r, w) = pipe();
    let pid = spawn_with(&[], || {
        die_with_parent();
        setup();
        // SAFETY: getpid has no preconditions.
        let line = format!("{role}={}\n", unsafe { libc::getpid() });
        // SAFETY: `line` is readable for its length; `report` is a raw descriptor no Rust value owns.
        unsafe { libc::write(report, line.as_ptr().cast(), line.len()) };
        child_body(threads, w)
    });
    answer_when_ready(pid, (r, w))
}

/// Under the init (outside session and group, shown as 0):
/// A founds session A (group A) and has 2 threads; B, its child, stays in group A; C, its
/// child, founds group C; D, C's child, stays in C; E, A's child, joins group C. F founds
/// session F; G, its child, stays in it. H stays in the init's session and group.
fn spawn_tree() -> String {
    let (r, w) = pipe();
    let setsid = || {
        // SAFETY: setsid takes nothing (a new child leads no group, so it succeeds).
        unsafe { libc::setsid() };
    };
    tree_node("A", 2, w, || {
        setsid();
        tree_node("B", 0, w, || {});
        let c = tree_node("C", 0, w, || {
            // SAFETY: setpgid takes numbers.
            unsafe { libc::setpgid(0, 0) };
            tree_node("D", 0, w, || {});
        });
        tree_node("E", 0, w, || {
            // SAFETY: as above; group C exists (C is ready) in this session.
            unsafe { libc::setpgid(0, c as i32) };
        });
    });
    tree_node("F", 0, w, || {
        setsid();
        tree_node("G", 0, w, || {});
    });
    tree_node("H", 0, w, || {});
    // Every node reported before it was ready: the 8 lines are in the pipe.
    let mut lines = Vec::new();
    let mut byte = [0u8; 1];
    let mut line = String::new();
    while lines.len() < 8 {
        // SAFETY: `byte` is writable for one byte; `r` is a raw descriptor no Rust value owns.
        if unsafe { libc::read(r, byte.as_mut_ptr().cast(), 1) } != 1 {
            break;
        }
        if byte[0] == b'\n' {
            lines.push(std::mem::take(&mut line));
        } else {
            line.push(char::from(byte[0]));
        }
    }
    // SAFETY: raw descriptors no Rust value owns (the tree keeps its own copies of `w`).
    unsafe {
        libc::close(r);
        libc::close(w);
    }
    lines.sort();
    lines.join(" ")
}

/// A tracer (another child of ours) seizes child `v`, kills it and collects its exit.
fn traced_exit(v: i32) -> String {
    let (r, w) = pipe();
    // SAFETY: the innermost init is single-threaded, so the child may run any code.
    let tracer = unsafe { libc::fork() };
    if tracer == 0 {
        // SAFETY: ptrace(PTRACE_SEIZE) with no options and kill take no pointers; wait4 accepts
        // null status and rusage pointers.
        let answer = unsafe {
            if libc::ptrace(libc::PTRACE_SEIZE, v, 0, 0) != 0 {
                format!("err seize {}", errno())
            } else if libc::kill(v, libc::SIGKILL) != 0 {
                format!("err kill {}", errno())
            } else {
                libc::wait4(v, std::ptr::null_mut(), libc::__WALL, std::ptr::null_mut()).to_string()
            }
        };
        // SAFETY: `answer` is valid for answer.len() bytes; _exit has no preconditions.
        unsafe {
            libc::write(w, answer.as_ptr().cast(), answer.len());
            libc::_exit(0);
        }
    }
    // SAFETY: `w` is a raw descriptor that no Rust value owns.
    unsafe { libc::close(w) };
    let mut out = String::new();
    // SAFETY: `r` is the pipe's read end, open and owned by nothing else: the File takes it over.
    let _ = unsafe { std::fs::File::from_raw_fd(r) }.read_to_string(&mut out);
    if tracer > 0 {
        // SAFETY: waitpid accepts a null status pointer.
        unsafe { libc::waitpid(tracer, std::ptr::null_mut(), 0) };
    }
    out
}

/// A child whose non-leader thread execs `sleep 3600` (it then takes the leader's pid).
fn spawn_exec(threads: usize) -> i64 {
    let (r, w) = pipe();
    let pid = spawn_with(&[], || {
        die_with_parent();
        for _ in 0..threads {
            std::thread::spawn(|| {
                loop {
                    std::thread::sleep(std::time::Duration::from_hours(1));
                }
            });
        }
        let exec = std::thread::spawn(move || {
            die_with_parent();
            let prog = c"/bin/sleep";
            let args = [prog.as_ptr(), c"3600".as_ptr(), std::ptr::null()];
            // SAFETY: `prog` and the arguments are NUL-terminated, the argument array ends with a
            // null pointer, and all of them outlive the call.
            unsafe { libc::execv(prog.as_ptr(), args.as_ptr()) };
            die("execv");
        });
        let _ = exec.join();
    });
    // The pipe is close-on-exec: EOF means the exec happened (or the child died).
    answer_when_ready(pid, (r, w))
}

fn syscall_by_name(name: &str) -> Option<libc::c_long> {
    Some(match name {
        "getpid" => libc::SYS_getpid,
        "getppid" => libc::SYS_getppid,
        "gettid" => libc::SYS_gettid,
        "kill" => libc::SYS_kill,
        "tkill" => libc::SYS_tkill,
        "tgkill" => libc::SYS_tgkill,
        "getpgid" => libc::SYS_getpgid,
        "getsid" => libc::SYS_getsid,
        "setpgid" => libc::SYS_setpgid,
        "getpriority" => libc::SYS_getpriority,
        "setpriority" => libc::SYS_setpriority,
        "sched_getscheduler" => libc::SYS_sched_getscheduler,
        "prlimit64" => libc::SYS_prlimit64,
        "pidfd_open" => libc::SYS_pidfd_open,
        "get_robust_list" => libc::SYS_get_robust_list,
        "kcmp" => libc::SYS_kcmp,
        "ioprio_get" => libc::SYS_ioprio_get,
        "ptrace" => libc::SYS_ptrace,
        "wait4" => libc::SYS_wait4,
        _ => return None,
    })
}

fn raw_syscall(nr: libc::c_long, args: &[i64]) -> i64 {
    let a = |i: usize| args.get(i).copied().unwrap_or(0);
    // SAFETY: rests on the caller's arguments: the suite passes integers and null pointers to the
    // syscalls of syscall_by_name, and prlimit_set the address of a live rlimit64 (only read).
    let r = unsafe { libc::syscall(nr, a(0), a(1), a(2), a(3), a(4), a(5)) };
    if r == -1 { -errno() } else { r }
}

/// Moves the calling thread to `cpu` (the kernel has moved it when this returns).
fn run_on(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is ours and of the size passed.
    unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) };
}

/// Forks a child that runs `body` and exits with the low byte of its getpid; reaps it and
/// answers whether that byte is the one of the number fork returned (or -errno).
fn child_reporting_getpid(body: impl FnOnce()) -> Result<bool, i64> {
    // SAFETY: the fixture's inits run no threads; the child calls only async-signal-safe
    // functions (sched_setaffinity, syscall, _exit).
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(-i64::from(errno()));
    }
    if child == 0 {
        body();
        // SAFETY: getpid takes no arguments; _exit does not return.
        unsafe { libc::_exit((libc::syscall(libc::SYS_getpid) & 0xff) as i32) };
    }
    let mut status = 0;
    // SAFETY: `status` is a writable int that outlives the call.
    if unsafe { libc::waitpid(child, &raw mut status, 0) } != child {
        return Err(-i64::from(errno()));
    }
    Ok(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == child & 0xff)
}

/// `n` rounds, the caller running on CPU `a`: a child runs on CPU `b` (where it calls getpid),
/// moves back to `a` and exits there, is reaped; after an RCU grace period its kernel stack waits
/// in `a`'s cache of free stacks, and the next child, forked on `a`, most often gets it; that
/// child moves to `b` and calls getpid there. Answers how many of the 2n children's getpid
/// answered the number their fork returned (2n when the kernel is right), or -errno.
fn stack_reuse(n: usize, a: usize, b: usize) -> i64 {
    run_on(a);
    let mut agreed = 0;
    for _ in 0..n {
        let rounds = [
            child_reporting_getpid(|| {
                run_on(b);
                // SAFETY: getpid takes no arguments.
                unsafe { libc::syscall(libc::SYS_getpid) };
                run_on(a);
            }),
            {
                // The grace period after which the kernel caches a freed stack.
                std::thread::sleep(std::time::Duration::from_millis(30));
                child_reporting_getpid(|| run_on(b))
            },
        ];
        for r in rounds {
            match r {
                Ok(true) => agreed += 1,
                Ok(false) => {}
                Err(e) => return e,
            }
        }
    }
    agreed
}

/// `n` children on CPU `cpu`, taking turns there for `ms` milliseconds, each calling getpid,
/// gettid, kill(itself, 0), getppid and sched_getscheduler(0) in a loop: on a fully preemptible
/// kernel the scheduler switches them in the middle of the syscalls' programs. Answers how many
/// getpid calls they made in all (each child checks that getpid always answered the same number,
/// tid and pid alike, and that kill(itself, 0) and sched_getscheduler(0) succeeded), or -errno,
/// or -1 if a child saw otherwise.
fn preempt_mix(n: usize, ms: u64, cpu: usize) -> i64 {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a writable array of two ints.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return -i64::from(errno());
    }
    let mut children = Vec::new();
    for _ in 0..n {
        // SAFETY: the fixture's inits run no threads; the child calls only async-signal-safe
        // functions (sched_setaffinity, syscall, clock_gettime, write, _exit).
        let child = unsafe { libc::fork() };
        if child < 0 {
            return -i64::from(errno());
        }
        if child == 0 {
            run_on(cpu);
            let deadline = std::time::Instant::now() + std::time::Duration::from_millis(ms);
            // SAFETY: getpid takes no arguments.
            let me = unsafe { libc::syscall(libc::SYS_getpid) };
            let (mut calls, mut agreed) = (1u64, true);
            while std::time::Instant::now() < deadline {
                for _ in 0..64 {
                    // SAFETY: these take integers only; kill with signal 0 only checks.
                    unsafe {
                        agreed &= libc::syscall(libc::SYS_getpid) == me;
                        agreed &= libc::syscall(libc::SYS_gettid) == me;
                        agreed &= libc::syscall(libc::SYS_kill, me, 0) == 0;
                        libc::syscall(libc::SYS_getppid);
                        // 0: the caller itself; a program whose name the kernel cuts short.
                        agreed &= libc::syscall(libc::SYS_sched_getscheduler, 0) >= 0;
                    }
                    calls += 1;
                }
            }
            let bytes = calls.to_ne_bytes();
            // SAFETY: `bytes` is readable for its length; _exit does not return.
            unsafe {
                libc::write(fds[1], bytes.as_ptr().cast(), bytes.len());
                libc::_exit(i32::from(!agreed));
            }
        }
        children.push(child);
    }
    // SAFETY: the write end is ours; closed so that the reads below end.
    unsafe { libc::close(fds[1]) };
    let mut total = 0i64;
    let mut agreed = true;
    for child in children {
        let mut status = 0;
        // SAFETY: `status` is a writable int that outlives the call.
        if unsafe { libc::waitpid(child, &raw mut status, 0) } != child {
            return -i64::from(errno());
        }
        agreed &= libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    }
    let mut bytes = [0u8; 8];
    // SAFETY: `bytes` is writable for its length.
    while unsafe { libc::read(fds[0], bytes.as_mut_ptr().cast(), bytes.len()) } == 8 {
        total += u64::from_ne_bytes(bytes) as i64;
    }
    // SAFETY: the read end is ours.
    unsafe { libc::close(fds[0]) };
    if agreed { total } else { -1 }
}

/// Executes one command in the innermost init.
fn execute(line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| -> Option<i64> { words.get(i)?.parse().ok() };
    match words.first().copied() {
        Some("spawn") => spawn(num(1).unwrap_or(0) as usize, &[]).to_string(),
        Some("spawn_vpid") => match num(1) {
            Some(v) => match spawn(num(2).unwrap_or(0) as usize, &[v as i32]) {
                r if r < 0 => format!("err {}", -r),
                r => r.to_string(),
            },
            None => "err bad vpid".into(),
        },
        Some("spawn_pids") => {
            let pids: Vec<i32> = words.iter().skip(2).filter_map(|w| w.parse().ok()).collect();
            match spawn(num(1).unwrap_or(0) as usize, &pids) {
                r if r < 0 => format!("err {}", -r),
                r => r.to_string(),
            }
        }
        Some("spawn_exec") => spawn_exec(num(1).unwrap_or(0) as usize).to_string(),
        Some("spawn_tree") => spawn_tree(),
        Some("stack_reuse") => match (num(1), num(2), num(3)) {
            (Some(n), Some(a), Some(b)) => stack_reuse(n as usize, a as usize, b as usize).to_string(),
            _ => "err bad stack_reuse".into(),
        },
        Some("preempt_mix") => match (num(1), num(2), num(3)) {
            (Some(n), Some(ms), Some(cpu)) if n > 0 && ms > 0 && cpu >= 0 => {
                preempt_mix(n as usize, ms as u64, cpu as usize).to_string()
            }
            _ => "err bad preempt_mix".into(),
        },
        Some("reap" | "zombie") => {
            let Some(v) = num(1) else {
                return "err bad pid".into();
            };
            // SAFETY: kill takes no pointers.
            if unsafe { libc::kill(v as i32, libc::SIGKILL) } != 0 {
                return format!("err {}", errno());
            }
            // SAFETY: waitpid accepts a null status pointer.
            if words[0] == "reap" && unsafe { libc::waitpid(v as i32, std::ptr::null_mut(), 0) } < 0 {
                return format!("err {}", errno());
            }
            if words[0] == "zombie" {
                // Wait until the child is a zombie (its state in our /proc view is Z).
                let _ = wait_zombie(v as i32);
            }
            "ok".into()
        }
        Some("wait") => {
            let Some(v) = num(1) else {
                return "err bad pid".into();
            };
            // SAFETY: waitpid accepts a null status pointer.
            unsafe { libc::waitpid(v as i32, std::ptr::null_mut(), 0) }.to_string()
        }
        Some("stop") => {
            let Some(v) = num(1) else {
                return "err bad pid".into();
            };
            // SAFETY: kill takes no pointers.
            if unsafe { libc::kill(v as i32, libc::SIGSTOP) } != 0 {
                return format!("err {}", errno());
            }
            // SAFETY: wait4 accepts null status and rusage pointers.
            unsafe { libc::wait4(v as i32, std::ptr::null_mut(), libc::WUNTRACED, std::ptr::null_mut()) }
                .to_string()
        }
        Some("spawn_leader_exits") => spawn_leader_exits(num(1).unwrap_or(1) as usize).to_string(),
        Some("traced_exit") => match num(1) {
            Some(v) => traced_exit(v as i32),
            None => "err bad pid".into(),
        },
        Some("sys") => match words.get(1).and_then(|n| syscall_by_name(n)) {
            Some(nr) => {
                let args: Vec<i64> = words[2..].iter().filter_map(|w| w.parse().ok()).collect();
                raw_syscall(nr, &args).to_string()
            }
            None => "err unknown syscall".into(),
        },
        Some("repeat") => {
            let (Some(n), Some(nr)) = (num(1), words.get(2).and_then(|n| syscall_by_name(n))) else {
                return "err bad repeat".into();
            };
            let args: Vec<i64> = words[3..].iter().filter_map(|w| w.parse().ok()).collect();
            let mut last = 0;
            for _ in 0..n {
                last = raw_syscall(nr, &args);
            }
            last.to_string()
        }
        // SAFETY: getpid has no preconditions.
        Some("pid") => unsafe { libc::getpid() }.to_string(),
        Some("prlimit_set") => {
            // prlimit64(PID, RLIMIT_NOFILE, its current limits): a set, so the kernel asks
            // the LSMs (task_setrlimit), but nothing changes.
            let Some(pid) = num(1) else { return "err bad pid".into() };
            // SAFETY: rlimit64 is two integers; all zeroes is a valid value.
            let mut lim: libc::rlimit64 = unsafe { std::mem::zeroed() };
            // SAFETY: no new limit (null); `lim` is a writable rlimit64 that outlives the call.
            if unsafe { libc::prlimit64(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &raw mut lim) }
                != 0
            {
                return (-errno()).to_string();
            }
            raw_syscall(libc::SYS_prlimit64, &[pid, i64::from(libc::RLIMIT_NOFILE), &raw const lim as i64, 0])
                .to_string()
        }
        // Issue 15: numbers in /proc paths (tests/src/fixture/paths.rs), the crossings inside
        // structures (tests/src/fixture/structures.rs).
        _ => paths::execute(&words)
            .or_else(|| structures::execute(&words))
            .unwrap_or_else(|| format!("err unknown command {line:?}")),
    }
}

/// Polls the siginfo of child `pid` without reaping it until it has exited.
fn wait_zombie(pid: i32) -> bool {
    // SAFETY: siginfo_t is plain data; all zeroes is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a writable siginfo_t that outlives the call.
    unsafe { libc::waitid(libc::P_PID, pid as u32, &raw mut info, libc::WEXITED | libc::WNOWAIT) == 0 }
}

/// The innermost init: reports its namespace, then serves commands.
fn serve(cmd_r: RawFd, resp_w: RawFd) -> ! {
    // SAFETY: `resp_w` is the response pipe's write end, open and owned by nothing else in this
    // process (`level` wrapped only a dup of it).
    let mut out = unsafe { std::fs::File::from_raw_fd(resp_w) };
    let _ = writeln!(out, "ready");
    // SAFETY: `cmd_r` is the command pipe's read end, open and owned by nothing else here.
    let input = BufReader::new(unsafe { std::fs::File::from_raw_fd(cmd_r) });
    for line in input.lines() {
        let Ok(line) = line else { break };
        let answer = execute(&line);
        if writeln!(out, "{answer}").is_err() {
            break;
        }
    }
    std::process::exit(0)
}

/// Creates a new pid namespace whose init runs `body` (which never returns); returns the init's
/// pid (as seen by the caller). The caller itself stays in its namespace.
fn new_namespace(body: impl FnOnce()) -> i32 {
    // SAFETY: unshare takes no pointers.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        die("unshare(CLONE_NEWPID)");
    }
    // SAFETY: the caller is single-threaded (the fixture and its inits run no threads), so the
    // child may run any code.
    match unsafe { libc::fork() } {
        -1 => die("fork"),
        0 => {
            die_with_parent();
            body();
            std::process::exit(0)
        }
        pid => pid,
    }
}

/// Level `level` of `depth`: report the namespace inode, then nest or serve.
fn level(depth: usize, level: usize, cmd_r: RawFd, resp_w: RawFd) -> ! {
    // SAFETY: dup takes no pointers.
    let fd = unsafe { libc::dup(resp_w) };
    // SAFETY: `fd` is dup's new descriptor, owned by nothing else (std panics on -1, a failed dup).
    let mut out = unsafe { std::fs::File::from_raw_fd(fd) };
    let _ = writeln!(out, "ns {}", own_pidns_inode());
    drop(out);
    if level == depth {
        serve(cmd_r, resp_w);
    }
    let child = new_namespace(|| level_body(depth, level + 1, cmd_r, resp_w));
    // An intermediate init: reap its child, then end with it.
    let mut status = 0;
    // SAFETY: `status` is a writable int that outlives the call.
    unsafe { libc::waitpid(child, &raw mut status, 0) };
    std::process::exit(0)
}

fn level_body(depth: usize, l: usize, cmd_r: RawFd, resp_w: RawFd) {
    level(depth, l, cmd_r, resp_w)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `pidvirt-fixture call NAME ARGS...`: one syscall from this process (e.g. under nsenter),
    // its raw return value on stdout.
    if args.get(1).map(String::as_str) == Some("call") {
        let line = match args.get(2).map(String::as_str) {
            Some("prlimit_set") => args[2..].join(" "),
            _ => format!("sys {}", args[2..].join(" ")),
        };
        println!("{}", execute(&line));
        return;
    }
    let depth = match args.iter().position(|a| a == "--depth") {
        Some(i) => args.get(i + 1).and_then(|d| d.parse().ok()).unwrap_or(1),
        None => 1,
    };
    if !(1..=32).contains(&depth) {
        eprintln!("pidvirt-fixture: --depth must be 1..=32");
        std::process::exit(2);
    }
    if args.iter().any(|a| a == "--host-fds") {
        structures::host_fds();
    }
    let (cmd_r, cmd_w) = pipe();
    let (resp_r, resp_w) = pipe();
    let outer_init = new_namespace(|| level(depth, 1, cmd_r, resp_w));
    // SAFETY: raw descriptors that no Rust value owns (the init has its own copies).
    unsafe {
        libc::close(cmd_r);
        libc::close(resp_w);
    }
    // SAFETY: `resp_r` is the response pipe's read end, open and owned by nothing else.
    let mut responses = BufReader::new(unsafe { std::fs::File::from_raw_fd(resp_r) });
    let mut namespaces = Vec::new();
    loop {
        let mut line = String::new();
        if responses.read_line(&mut line).unwrap_or(0) == 0 {
            eprintln!("pidvirt-fixture: the namespace init died before it was ready");
            std::process::exit(1);
        }
        match line.trim().split_once(' ') {
            Some(("ns", ino)) => namespaces.push(ino.to_string()),
            _ if line.trim() == "ready" => break,
            _ => {}
        }
    }
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "{{\"pidns\": [{}], \"outer_init\": {outer_init}}}", namespaces.join(", "));
    let _ = stdout.flush();
    // SAFETY: `cmd_w` is the command pipe's write end, open and owned by nothing else.
    let mut commands = unsafe { std::fs::File::from_raw_fd(cmd_w) };
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if writeln!(commands, "{line}").is_err() {
            break;
        }
        let mut answer = String::new();
        if responses.read_line(&mut answer).unwrap_or(0) == 0 {
            break;
        }
        let _ = write!(stdout, "{answer}");
        let _ = stdout.flush();
    }
    // Stdin closed: end the namespaces (their inits die with us; make it prompt).
    // SAFETY: kill takes no pointers; `outer_init` is our unreaped child.
    unsafe { libc::kill(outer_init, libc::SIGKILL) };
    let mut rest = Vec::new();
    let _ = responses.read_to_end(&mut rest);
}
