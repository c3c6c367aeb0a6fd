//! Pids inside structures (issue 15): file owners and lock holders (fcntl), tty groups
//! (ioctl), credentials (SO_PEERCRED, SCM_CREDENTIALS), siginfo (rt_sigtimedwait, signalfd), SysV IPC,
//! perf_event_open, clone's CLONE_PARENT_SETTID and clone3's set_tid[], PTRACE_GETEVENTMSG,
//! pids written to cgroup.procs. The fixture's innermost init performs each crossing with a known
//! truth; every count of the container is exact (the init is quiet), and the kernel's own answer
//! (the return value, the pid field it wrote) is checked next to pidvirt's verdict.

use std::{
    collections::BTreeMap,
    io::Write,
    os::{
        fd::AsRawFd,
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr, UnixStream},
    },
    process::Command,
};

use tests::{AuditRecord, Daemon, Fixture, TestCgroup, eventually, note_unavailable, proc_truth};

const FIXTURE: &str = env!("CARGO_BIN_EXE_pidvirt-fixture");
const ESRCH: i64 = -3;

type Counts = BTreeMap<(String, String), u64>;

/// The container's non-zero counts of `syscalls`, as (syscall, verdict) -> n.
fn counts(d: &Daemon, container: &str, syscalls: &[&str]) -> Counts {
    let (c, _) = d.container_crossings(container);
    let mut out = Counts::new();
    for s in syscalls {
        for (v, n) in &c[*s] {
            if *n > 0 {
                out.insert(((*s).to_string(), v.clone()), *n);
            }
        }
    }
    out
}

fn expect(pairs: &[(&str, &str, u64)]) -> Counts {
    pairs.iter().map(|(s, v, n)| (((*s).to_string(), (*v).to_string()), *n)).collect()
}

/// Waits until the container's counts of `syscalls` are `want` (they are counted before the
/// syscall returns; the wait only covers the daemon's reading), then asserts them.
fn assert_counts(d: &Daemon, container: &str, syscalls: &[&str], want: &Counts) {
    let start = std::time::Instant::now();
    loop {
        let got = counts(d, container, syscalls);
        if got == *want || start.elapsed() > tests::settle() {
            assert_eq!(&got, want);
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// What the host counted for `syscall` under `verdict` (every host process counts there).
fn host_count(d: &Daemon, syscall: &str, verdict: &str) -> u64 {
    d.container_crossings("host").0[syscall][verdict]
}

fn records(d: &Daemon, container: &str, syscall: &str, verdict: &str) -> Vec<AuditRecord> {
    d.audit_log()
        .into_iter()
        .filter(|r| r.container == container && r.syscall == syscall && r.verdict == verdict)
        .collect()
}

/// Waits for exactly `n` records of (container, syscall, verdict).
fn wait_records(d: &Daemon, container: &str, syscall: &str, verdict: &str, n: usize) -> Vec<AuditRecord> {
    let found = eventually(tests::settle(), &format!("{n} {syscall}/{verdict} records"), || {
        let r = records(d, container, syscall, verdict);
        (r.len() >= n).then_some(r)
    });
    assert_eq!(found.len(), n, "{found:#?}");
    found
}

/// The words of a fixture answer, as numbers.
fn nums(answer: &str) -> Vec<i64> {
    answer.split_whitespace().map(|w| w.parse().unwrap_or_else(|_| panic!("answer {answer:?}"))).collect()
}

/// A fixture of depth 1 whose host process owns fd 100 (F_SETOWN) and whose controlling tty's
/// master is fd 101 (`--host-fds`); answers it and that host process's pid.
fn fixture_with_host_fds() -> (Fixture, u32) {
    let f = Fixture::start_with(Command::new(FIXTURE).args(["--depth", "1", "--host-fds"]));
    let status = std::fs::read_to_string(format!("/proc/{}/status", f.outer_init)).unwrap();
    let ppid = status.lines().find_map(|l| l.strip_prefix("PPid:")).unwrap().trim().parse().unwrap();
    (f, ppid)
}

fn tracepoint_mode(d: &Daemon) -> bool {
    let out = d.cli(&["status"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("status JSON");
    v["syscalls"]["mode"] == "tracepoint"
}

/// The fixture's commands (this process sends credentials with its sender).
#[expect(dead_code, reason = "only the credential sender is used on this side")]
#[path = "../src/fixture/structures.rs"]
mod tests_fixture;

/// The tests, in a module of this name so that `--filter structures` selects them.
mod structures {
    #[expect(clippy::wildcard_imports, reason = "the helpers above")]
    use super::*;

    #[test]
    fn fcntl_owners_and_lock_holders() {
        let d = Daemon::start();
        let (mut f, host_process) = fixture_with_host_fds();
        let c = f.container();
        let sibling = f.num("spawn 0");
        let host = f.host_tid(sibling as u32);
        // F_SETOWN to the sibling's host pid: the kernel finds nothing (ESRCH), no owner is set.
        let a = nums(&f.cmd(&format!("setown {host}")));
        assert_eq!((a[0], a[1], a[3]), (ESRCH, 0, 0), "setown {host}: {a:?}");
        // To its vpid: set, and F_GETOWN_EX hands it back.
        let a = nums(&f.cmd(&format!("setown {sibling}")));
        assert_eq!((a[0], a[1], a[2], a[3]), (0, 0, 1, sibling), "F_OWNER_PID {sibling}");
        // The host process's own pipe (fd 100): its owner has no number here, the kernel says 0.
        let a = nums(&f.cmd("getown_ex 100"));
        assert_eq!((a[0], a[2]), (0, 0), "an owner outside the namespace reads as 0");
        // A lock held by the init, seen from its child: l_pid is the init's vpid.
        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join("init.lock");
        let theirs = dir.path().join("host.lock");
        std::fs::write(&mine, b"").unwrap();
        std::fs::write(&theirs, b"").unwrap();
        assert_eq!(f.cmd(&format!("lock {}", mine.display())), "0");
        assert_eq!(
            nums(&f.cmd(&format!("getlk_child {}", mine.display()))),
            [0, i64::from(libc::F_WRLCK), 1]
        );
        // The same lock seen from the host: the init's host pid.
        let host_nested = host_count(&d, "fcntl", "nested");
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&mine).unwrap();
        let (r, l_pid) = getlk(&file);
        assert_eq!((r, l_pid), (0, f.outer_init as i32));
        // A lock held by this (host) process, seen from the init: l_pid 0.
        let held = std::fs::OpenOptions::new().read(true).write(true).open(&theirs).unwrap();
        let mut l = write_lock();
        // SAFETY: F_SETLK reads the flock, which outlives the call.
        assert_eq!(unsafe { libc::fcntl(held.as_raw_fd(), libc::F_SETLK, &raw mut l) }, 0);
        assert_eq!(nums(&f.cmd(&format!("getlk {}", theirs.display()))), [0, i64::from(libc::F_WRLCK), 0]);
        assert_counts(
            &d,
            &c,
            &["fcntl"],
            &expect(&[("fcntl", "leak", 1), ("fcntl", "ok", 3), ("fcntl", "invisible", 2)]),
        );
        assert!(host_count(&d, "fcntl", "nested") > host_nested, "the host's F_GETLK of the init's lock");
        let leak = &wait_records(&d, &c, "fcntl", "leak", 1)[0];
        assert_eq!((leak.direction.as_str(), leak.value), ("in", i64::from(host)));
        assert_eq!(leak.also.as_ref().map(|a| (a.host_pid, a.vpid as i64)), Some((host, sibling)));
        let inv = wait_records(&d, &c, "fcntl", "invisible", 2);
        assert!(inv.iter().all(|r| r.direction == "out" && r.value == 0), "{inv:#?}");
        // The owner's record names it (the file's owner is known to the kernel); the lock's holder
        // is not (only its global number is kept, in the lock).
        assert_eq!(inv[0].also.as_ref().map(|a| a.host_pid), Some(host_process));
        assert!(inv[1].also.is_none());
    }

    fn write_lock() -> libc::flock {
        // SAFETY: plain data; zeroes are valid.
        let mut l: libc::flock = unsafe { std::mem::zeroed() };
        l.l_type = libc::F_WRLCK as i16;
        l.l_whence = libc::SEEK_SET as i16;
        l
    }

    fn getlk(file: &std::fs::File) -> (i32, i32) {
        let mut l = write_lock();
        // SAFETY: F_GETLK writes the flock, which outlives the call.
        let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &raw mut l) };
        (r, l.l_pid)
    }

    #[test]
    fn tty_groups_and_sessions() {
        let d = Daemon::start();
        let (mut f, host_process) = fixture_with_host_fds();
        let c = f.container();
        let sibling = f.num("spawn 0");
        let host = f.host_tid(sibling as u32);
        // A child of the init, session leader of a new pty: TIOCSPGRP to its own group, then
        // TIOCGPGRP and TIOCGSID read it back (its vpid: a new session's leader leads its group).
        let a = nums(&f.cmd("pty_setpgrp self"));
        assert_eq!(a[0], 0, "TIOCSPGRP to its own group");
        assert_eq!((a[1], a[3]), (0, 0));
        assert!(a[2] > 1 && a[2] == a[4], "group and session are the child's vpid: {a:?}");
        // TIOCSPGRP to a host pid: the kernel finds no such group (ESRCH).
        let a = nums(&f.cmd(&format!("pty_setpgrp {host}")));
        assert_eq!(a[0], ESRCH);
        // The host process's tty, through its master (fd 101): group and session read as 0.
        assert_eq!(nums(&f.cmd("tty 101")), [0, 0, 0, 0]);
        assert_counts(
            &d,
            &c,
            &["ioctl"],
            &expect(&[("ioctl", "ok", 5), ("ioctl", "leak", 1), ("ioctl", "invisible", 2)]),
        );
        let leak = &wait_records(&d, &c, "ioctl", "leak", 1)[0];
        assert_eq!((leak.value, leak.also.as_ref().map(|a| a.host_pid)), (i64::from(host), Some(host)));
        let inv = wait_records(&d, &c, "ioctl", "invisible", 2);
        assert!(inv.iter().all(|r| r.also.as_ref().map(|a| a.host_pid) == Some(host_process)), "{inv:#?}");
    }

    fn peercred(s: &UnixStream) -> (i32, i32) {
        let mut cred = [0i32; 3];
        let mut len = 12u32;
        // SAFETY: getsockopt writes at most `len` bytes into `cred`.
        let r = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                cred.as_mut_ptr().cast(),
                &raw mut len,
            )
        };
        (r, cred[0])
    }

    /// recvmsg of one message with room for credentials: the ucred pid (-1: none).
    fn recv_cred(s: &UnixStream) -> i32 {
        #[repr(C, align(8))]
        struct Control([u8; 64]);
        let mut data = [0u8; 16];
        let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
        let mut control = Control([0; 64]);
        // SAFETY: plain data; zeroes are valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = control.0.len();
        // SAFETY: recvmsg fills the buffers above; the CMSG macros stay within msg_controllen.
        unsafe {
            assert!(libc::recvmsg(s.as_raw_fd(), &raw mut msg, 0) > 0);
            let cm = libc::CMSG_FIRSTHDR(&raw const msg);
            if !cm.is_null() && (*cm).cmsg_type == libc::SCM_CREDENTIALS {
                return *libc::CMSG_DATA(cm).cast::<i32>();
            }
        }
        -1
    }

    #[test]
    fn credentials_between_a_host_process_and_a_container() {
        let d = Daemon::start();
        let mut f = Fixture::start(FIXTURE, 1);
        let c = f.container();
        let name = format!("pidvirt-structures-{}", std::process::id());
        assert_eq!(f.cmd(&format!("listen {name}")), "0");
        let s = UnixStream::connect_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        // The container's side: its peer (this host process) has no number there: 0.
        assert_eq!(nums(&f.cmd("accept")), [0, 0]);
        // This side: the container's init, translated to its host pid.
        let host_before = (host_count(&d, "getsockopt", "nested"), host_count(&d, "recvmsg", "nested"));
        assert_eq!(peercred(&s), (0, f.outer_init as i32));
        // Credentials this process sends (the kernel adds them: the container asked with
        // SO_PASSCRED; then explicitly, with its own pid) arrive as 0.
        (&s).write_all(b"a").unwrap();
        assert_eq!(nums(&f.cmd("recv_cred")), [1, 0]);
        assert_eq!(tests_fixture::sock::send_cred_on(s.as_raw_fd(), std::process::id() as i32), 1);
        assert_eq!(nums(&f.cmd("recv_cred")), [1, 0]);
        // The container sends its own pid (1): this side receives its host pid.
        let one = 1i32;
        // SAFETY: setsockopt reads one int.
        unsafe {
            libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PASSCRED, (&raw const one).cast(), 4)
        };
        assert_eq!(f.num("send_cred 1"), 1);
        assert_eq!(recv_cred(&s), f.outer_init as i32);
        // Its host pid instead: the kernel finds no such process in its namespace (ESRCH).
        assert_eq!(f.num(&format!("send_cred {}", f.outer_init)), ESRCH);
        // A socketpair of its own: its own vpid.
        assert_eq!(nums(&f.cmd("socketpair_peercred")), [0, 1]);
        assert_counts(
            &d,
            &c,
            &["getsockopt", "sendmsg", "recvmsg"],
            &expect(&[
                ("getsockopt", "invisible", 1),
                ("getsockopt", "ok", 1),
                ("recvmsg", "invisible", 2),
                ("sendmsg", "ok", 1),
                ("sendmsg", "leak", 1),
            ]),
        );
        assert!(host_count(&d, "getsockopt", "nested") > host_before.0);
        assert!(host_count(&d, "recvmsg", "nested") > host_before.1);
        let peer = &wait_records(&d, &c, "getsockopt", "invisible", 1)[0];
        assert_eq!(
            peer.also.as_ref().map(|a| a.host_pid),
            Some(std::process::id()),
            "the peer the kernel hid"
        );
        let leak = &wait_records(&d, &c, "sendmsg", "leak", 1)[0];
        assert_eq!(leak.also.as_ref().map(|a| (a.host_pid, a.vpid)), Some((f.outer_init, 1)));
    }

    #[test]
    fn siginfo_of_signals_taken_with_sigtimedwait() {
        let d = Daemon::start();
        let mut f = Fixture::start(FIXTURE, 1);
        let c = f.container();
        let usr1 = libc::SIGUSR1;
        assert_eq!(f.cmd(&format!("block {usr1}")), "0");
        // From this host process: the kernel zeroes si_pid (SI_USER, a sender of an ancestor
        // namespace: the kernel's own model, `nested`).
        // SAFETY: kill takes no pointers; the init blocks SIGUSR1.
        assert_eq!(unsafe { libc::kill(f.outer_init as i32, usr1) }, 0);
        assert_eq!(nums(&f.cmd(&format!("sigwait {usr1}"))), [i64::from(usr1), 0, 0]);
        // Queued to itself with its own pid: 1.
        assert_eq!(f.cmd(&format!("sigqueue_self {usr1} 1")), "0");
        assert_eq!(nums(&f.cmd(&format!("sigwait {usr1}"))), [i64::from(usr1), -1, 1]);
        // Queued with its host pid as si_pid: the kernel passes a queued si_pid as it is.
        let h = f.outer_init;
        assert_eq!(f.cmd(&format!("sigqueue_self {usr1} {h}")), "0");
        assert_eq!(nums(&f.cmd(&format!("sigwait {usr1}"))), [i64::from(usr1), -1, i64::from(h)]);
        assert_counts(
            &d,
            &c,
            &["rt_sigtimedwait", "rt_sigqueueinfo"],
            &expect(&[
                ("rt_sigtimedwait", "nested", 1),
                ("rt_sigtimedwait", "ok", 1),
                ("rt_sigtimedwait", "leak", 1),
                ("rt_sigqueueinfo", "ok", 2),
            ]),
        );
        let leak = &wait_records(&d, &c, "rt_sigtimedwait", "leak", 1)[0];
        assert_eq!((leak.direction.as_str(), leak.value), ("out", i64::from(h)));
        assert_eq!(leak.also.as_ref().map(|a| a.host_pid), Some(h));
    }

    /// Judged at fexit of signalfd_copyinfo, where the kernel takes fexit and kept that function
    /// (this test says which: the kernel's truth is whether the daemon holds the program).
    #[test]
    fn siginfo_of_signals_read_from_a_signalfd() {
        let test = "siginfo_of_signals_read_from_a_signalfd";
        let d = Daemon::start();
        let status = d.status();
        let loaded = !tests::daemon_programs(d.pid(), "fexit_signalfd_copyinfo").is_empty();
        assert_eq!(status["signalfd"]["available"], loaded, "{status}");
        let mut f = Fixture::start(FIXTURE, 1);
        let c = f.container();
        let h = i64::from(f.outer_init);
        // A real-time signal queues every instance: one read takes the three.
        let rt = libc::SIGRTMIN() + 6;
        assert_eq!(f.cmd(&format!("block {rt}")), "0");
        // From this host process: the kernel zeroes si_pid (SI_USER, a sender of an ancestor
        // namespace: the kernel's own model, `nested`).
        // SAFETY: kill takes no pointers; the init blocks the signal.
        assert_eq!(unsafe { libc::kill(f.outer_init as i32, rt) }, 0);
        assert_eq!(f.cmd(&format!("sigqueue_self {rt} 1")), "0");
        assert_eq!(f.cmd(&format!("sigqueue_self {rt} {h}")), "0");
        let size = size_of::<libc::signalfd_siginfo>() as i64;
        let (user, queue) = (i64::from(libc::SI_USER), i64::from(libc::SI_QUEUE));
        assert_eq!(nums(&f.cmd(&format!("signalfd_read {rt} 4"))), [3 * size, user, 0, queue, 1, queue, h]);
        if !loaded {
            let reason = status["signalfd"]["reason"].as_str().unwrap_or_default();
            assert!(reason.contains("signalfd_copyinfo"), "{status}");
            note_unavailable(test, reason);
            assert_counts(&d, &c, &["read"], &expect(&[]));
            return;
        }
        assert_counts(
            &d,
            &c,
            &["read"],
            &expect(&[("read", "nested", 1), ("read", "ok", 1), ("read", "leak", 1)]),
        );
        let leak = &wait_records(&d, &c, "read", "leak", 1)[0];
        assert_eq!((leak.direction.as_str(), leak.value), ("out", h));
        assert_eq!(leak.also.as_ref().map(|a| i64::from(a.host_pid)), Some(h));
    }

    #[test]
    fn sysv_ipc_pid_fields() {
        let d = Daemon::start();
        let mut f = Fixture::start(FIXTURE, 1);
        let c = f.container();
        assert_eq!(nums(&f.cmd("msg_stat")), [0, 1, 0], "msg_lspid: the init; msg_lrpid: none yet");
        assert_eq!(nums(&f.cmd("shm_stat new")), [0, 1, 0], "shm_cpid: the init; shm_lpid: none yet");
        // A segment this host process created: its creator has no number in the container.
        // SAFETY: shmget takes no pointers.
        let id = unsafe { libc::shmget(libc::IPC_PRIVATE, 4096, 0o600) };
        assert!(id >= 0);
        let a = nums(&f.cmd(&format!("shm_stat {id}")));
        // SAFETY: IPC_RMID takes no buffer.
        unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
        assert_eq!(a, [0, 0, 0]);
        assert_eq!(f.num("sem_getpid"), 1, "the last semop: the init");
        assert_counts(
            &d,
            &c,
            &["msgctl", "shmctl", "semctl"],
            &expect(&[
                ("msgctl", "ok", 1),
                ("shmctl", "ok", 1),
                ("shmctl", "invisible", 1),
                ("semctl", "ok", 1),
            ]),
        );
    }

    #[test]
    fn perf_event_open_pid() {
        let d = Daemon::start();
        let mut f = Fixture::start(FIXTURE, 1);
        let c = f.container();
        let sibling = f.num("spawn 0");
        let host = f.host_tid(sibling as u32);
        let fd = f.num(&format!("perf_open {sibling}"));
        if fd < 0 {
            note_unavailable(
                "perf_event_open_pid",
                &format!("perf_event_open of a software event: errno {}", -fd),
            );
            return;
        }
        assert_eq!(f.num(&format!("perf_open {host}")), ESRCH);
        assert_counts(
            &d,
            &c,
            &["perf_event_open"],
            &expect(&[("perf_event_open", "ok", 1), ("perf_event_open", "leak", 1)]),
        );
    }

    #[test]
    fn clone_parent_settid_and_clone3_set_tid_at_every_level() {
        let d = Daemon::start();
        let mut f = Fixture::start(FIXTURE, 2);
        let c = f.container();
        // The child's 0 is seen where the syscall's exit runs in the child (tracepoints), not by
        // fexit (the child never entered the function).
        let child_side = u64::from(tracepoint_mode(&d));
        // CLONE_PARENT_SETTID: the kernel writes the child's vpid where the parent asked.
        let a = nums(&f.cmd("spawn_settid"));
        assert!(a[0] > 1 && a[0] == a[1], "{a:?}");
        assert_counts(&d, &c, &["clone3"], &expect(&[("clone3", "ok", 2 + child_side)]));
        // set_tid at all three levels (innermost first): numbers used by no task at any of them.
        let used: std::collections::BTreeSet<u32> =
            proc_truth::tasks().iter().flat_map(|t| t.nspid.clone()).collect();
        let free: Vec<u32> = (2000..30000).rev().filter(|n| !used.contains(n)).take(3).collect();
        let v = f.num(&format!("spawn_pids 0 {} {} {}", free[0], free[1], free[2]));
        assert_eq!(v, i64::from(free[0]));
        let host = f.host_tid(free[0]);
        assert_eq!(host, free[2]);
        let t = proc_truth::task(host, host).unwrap();
        assert_eq!(t.nspid, [free[2], free[1], free[0]], "NSpid, outermost first");
        // The return, the child's 0, and each of the three chosen pids.
        assert_counts(&d, &c, &["clone3"], &expect(&[("clone3", "ok", 2 + child_side + 1 + child_side + 3)]));
    }

    #[test]
    fn ptrace_event_message_of_a_fork() {
        let d = Daemon::start();
        let mut f = Fixture::start(FIXTURE, 1);
        let c = f.container();
        let a = nums(&f.cmd("trace_fork"));
        assert_eq!(a.len(), 2, "{a:?}");
        assert!(
            a[0] > 1 && a[0] == a[1],
            "the message is the new task's vpid, as its stop reports it: {a:?}"
        );
        // PTRACE_SEIZE's pid, PTRACE_GETEVENTMSG's pid and its message.
        assert_counts(&d, &c, &["ptrace"], &expect(&[("ptrace", "ok", 3)]));
    }

    #[test]
    fn pids_written_to_cgroup_procs() {
        let d = Daemon::start();
        let mut f = Fixture::start(FIXTURE, 1);
        let c = f.container();
        let cg = TestCgroup::new(&format!("pidvirt-structures-{}", std::process::id()));
        let procs = cg.path.join("cgroup.procs");
        let sibling = f.num("spawn 0");
        let host = f.host_tid(sibling as u32);
        let in_cgroup =
            |tid: u32| std::fs::read_to_string(&procs).unwrap().lines().any(|l| l.trim().parse() == Ok(tid));
        // Its vpid: the kernel moves it.
        assert_eq!(
            f.num(&format!("cgwrite {} {sibling}", procs.display())),
            sibling.to_string().len() as i64
        );
        assert!(in_cgroup(host));
        // Its host pid: names nothing here (ESRCH), nothing moves, nothing is counted (the hook sees
        // only moves).
        let other = f.num("spawn 0");
        let other_host = f.host_tid(other as u32);
        assert_eq!(f.num(&format!("cgwrite {} {other_host}", procs.display())), ESRCH);
        assert!(!in_cgroup(other_host));
        // A task whose vpid is that host pid (clone3 set_tid): the write moves it, while the number
        // is `other`'s host pid: a collision.
        assert_eq!(f.num(&format!("spawn_vpid {other_host} 0")), i64::from(other_host));
        let twin = f.host_tid(other_host);
        assert_eq!(
            f.num(&format!("cgwrite {} {other_host}", procs.display())),
            other_host.to_string().len() as i64
        );
        assert!(in_cgroup(twin) && !in_cgroup(other_host), "the kernel moved the twin");
        assert_counts(&d, &c, &["write"], &expect(&[("write", "ok", 1), ("write", "collision", 1)]));
        let r = &wait_records(&d, &c, "write", "collision", 1)[0];
        assert_eq!(r.target.as_ref().map(|t| t.host_pid), Some(twin));
        assert_eq!(r.also.as_ref().map(|a| (a.host_pid, a.vpid as i64)), Some((other_host, other)));
    }
}
