//! The clone helper (`pidvirt clone-helper`, hidden): the single-threaded process that enters a
//! container and forks a command with chosen pids (spawn), or makes a restored tree in a new pid
//! namespace by following the fork schedule (restore). See `protocol` for how the CLI drives it.

use std::{
    ffi::CString,
    io::Read as _,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    time::{Duration, Instant},
};

use procfs::{FromRead as _, process::Stat};

use super::{
    protocol::{Channel, Enter, Failure, Init, Order, Plan, Report, RestorePlan, SpawnPlan},
    schedule::{Actor, Step},
    sys::{self, Board, Forked},
};

/// How long a restore may make no progress before the helper gives up on it.
const STALL: Duration = Duration::from_secs(30);

/// Runs the helper; answers its exit code.
pub fn main() -> i32 {
    let mut ch = match Channel::take() {
        Ok(ch) => ch,
        Err(e) => {
            eprintln!("pidvirt: {e}");
            return 2;
        }
    };
    match ch.plan() {
        Some(Plan::Spawn(p)) => spawn(&p, &mut ch),
        Some(Plan::Restore(p)) => restore(&p, &mut ch),
        None => 2,
    }
}

fn failure(what: impl Into<String>, e: &std::io::Error) -> Failure {
    Failure { what: what.into(), errno: sys::errno_of(e), set_tid: None, init_gone: false }
}

fn cstrings(argv: &[String]) -> Result<Vec<CString>, Failure> {
    argv.iter()
        .map(|a| {
            CString::new(a.as_bytes()).map_err(|_| Failure {
                what: format!("argument {a:?} holds a NUL byte"),
                errno: libc::EINVAL,
                set_tid: None,
                init_gone: false,
            })
        })
        .collect()
}

/// Replaces this process with `argv` (PATH searched); answers the errno if it cannot.
fn exec(argv: &[CString]) -> i32 {
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: `ptrs` is a null-terminated array of NUL-terminated strings that outlive the call.
    unsafe { libc::execvp(ptrs[0], ptrs.as_ptr()) };
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::ENOEXEC)
}

/// Writes all of `bytes` to a pipe (a short message: one write).
fn write_all(fd: &OwnedFd, bytes: &[u8]) {
    // SAFETY: `bytes` is readable for its length; `fd` is open.
    unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
}

fn exit_now(code: i32) -> ! {
    // SAFETY: _exit ends the process without running destructors or atexit handlers, which in a
    // forked child belong to its parent.
    unsafe { libc::_exit(code) }
}

// ---------------------------------------------------------------------------------------------
// spawn

fn spawn(p: &SpawnPlan, ch: &mut Channel) -> i32 {
    match spawn_steps(p, ch) {
        Ok(code) => code,
        Err(f) => {
            ch.send(&Report::Failed(f));
            1
        }
    }
}

/// The namespaces `enter` joins, as /proc names them, in the order they are joined (the mount
/// namespace last: /proc paths stay the host's until then).
fn namespaces(enter: Enter) -> &'static [(&'static str, libc::c_int)] {
    match enter {
        Enter::All => &[
            ("cgroup", libc::CLONE_NEWCGROUP),
            ("ipc", libc::CLONE_NEWIPC),
            ("uts", libc::CLONE_NEWUTS),
            ("net", libc::CLONE_NEWNET),
            ("pid", libc::CLONE_NEWPID),
            ("mnt", libc::CLONE_NEWNS),
        ],
        Enter::Pid => &[("pid", libc::CLONE_NEWPID)],
    }
}

/// Joins the init's namespaces (those that differ from ours) and, with everything, its root.
fn enter(init: Init, how: Enter) -> Result<(), Failure> {
    let pid = init.host_pid;
    let gone = |why: String| Failure {
        what: format!("the container's init (host pid {pid}) is gone: {why}"),
        errno: libc::ESRCH,
        set_tid: None,
        init_gone: true,
    };
    let open_or_gone = |path: &str, flags| {
        let c = CString::new(path).unwrap_or_default();
        sys::open(&c, flags).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT | libc::ESRCH) => gone(format!("{path}: {e}")),
            _ => failure(format!("open {path}"), &e),
        })
    };
    // An init that exited is a zombie until its parent reaps it: its pid namespace takes no
    // new task.
    let stat = std::fs::File::open(format!("/proc/{pid}/stat")).map_err(|e| gone(e.to_string()))?;
    let stat = Stat::from_read(stat).map_err(|e| gone(e.to_string()))?;
    if matches!(stat.state, 'Z' | 'X') {
        return Err(gone("it has exited and is a zombie".into()));
    }
    // Everything is opened first: once in the container's mount namespace, /proc is its own.
    let mut joins = Vec::new();
    for &(name, nstype) in namespaces(how) {
        let fd = open_or_gone(&format!("/proc/{pid}/ns/{name}"), libc::O_RDONLY)?;
        let theirs = std::fs::File::from(fd.try_clone().map_err(|e| failure("dup", &e))?)
            .metadata()
            .map_err(|e| failure(format!("stat /proc/{pid}/ns/{name}"), &e))?
            .ino();
        if name == "pid" && theirs != u64::from(init.pidns) {
            return Err(gone(format!("host pid {pid} is now in pid namespace {theirs}, not {}", init.pidns)));
        }
        let ours = std::fs::metadata(format!("/proc/self/ns/{name}")).map_or(0, |m| m.ino());
        if theirs != ours {
            joins.push((name, nstype, fd));
        }
    }
    let root = match how {
        Enter::All => Some(open_or_gone(&format!("/proc/{pid}/root"), libc::O_PATH | libc::O_DIRECTORY)?),
        Enter::Pid => None,
    };
    for (name, nstype, fd) in &joins {
        sys::setns(fd, *nstype)
            .map_err(|e| failure(format!("setns into the {name} namespace of process {pid}"), &e))?;
    }
    if let Some(root) = root {
        sys::chroot_to(&root).map_err(|e| failure(format!("chroot to the root of process {pid}"), &e))?;
    }
    Ok(())
}

/// NSpid of host pid `pid`, read through the host's /proc (`proc_dir`, opened before entering).
fn nspid_of(proc_dir: &OwnedFd, pid: u32) -> Result<Vec<u32>, Failure> {
    let path = CString::new(format!("{pid}/status")).unwrap_or_default();
    let fd = sys::open_at(proc_dir, &path, libc::O_RDONLY)
        .map_err(|e| failure(format!("open /proc/{pid}/status"), &e))?;
    let mut text = String::new();
    std::fs::File::from(fd)
        .read_to_string(&mut text)
        .map_err(|e| failure(format!("read /proc/{pid}/status"), &e))?;
    let line = text.lines().find_map(|l| l.strip_prefix("NSpid:")).unwrap_or_default();
    Ok(line.split_whitespace().filter_map(|n| n.parse().ok()).collect())
}

fn spawn_steps(p: &SpawnPlan, ch: &mut Channel) -> Result<i32, Failure> {
    let proc_dir =
        sys::open(c"/proc", libc::O_PATH | libc::O_DIRECTORY).map_err(|e| failure("open /proc", &e))?;
    let devnull = sys::open(c"/dev/null", libc::O_RDWR).map_err(|e| failure("open /dev/null", &e))?;
    let argv = cstrings(&p.argv)?;
    if let Some(init) = p.init {
        enter(init, p.enter)?;
    }
    let (go_r, go_w) = sys::pipe().map_err(|e| failure("pipe", &e))?;
    let (err_r, err_w) = sys::pipe().map_err(|e| failure("pipe", &e))?;
    // SAFETY: this helper is single-threaded; the child execs (or _exits).
    let pid = match unsafe { sys::clone_process(&p.set_tid, false) } {
        Err(e) => {
            let what = if p.set_tid.is_empty() { "fork" } else { "clone3 with set_tid" };
            return Err(Failure { set_tid: Some(p.set_tid.clone()), ..failure(what, &e) });
        }
        Ok(Forked::Child) => {
            // SAFETY: the channel is not the command's.
            unsafe { libc::close(super::protocol::CHANNEL_FD) };
            let mut go = [0u8; 1];
            // SAFETY: `go` is writable for one byte.
            if unsafe { libc::read(go_r.as_raw_fd(), go.as_mut_ptr().cast(), 1) } != 1 {
                exit_now(1);
            }
            if p.detach {
                // SAFETY: setsid takes nothing: a detached command leaves our terminal's session.
                unsafe { libc::setsid() };
                sys::stdio_to(&devnull);
            }
            let errno = exec(&argv);
            write_all(&err_w, &errno.to_ne_bytes());
            exit_now(127)
        }
        Ok(Forked::Parent(pid)) => pid,
    };
    drop((go_r, err_w));
    let nspid = match nspid_of(&proc_dir, pid) {
        Ok(n) => n,
        Err(f) => {
            sys::kill(pid);
            let _ = sys::wait_exit_code(pid);
            return Err(f);
        }
    };
    ch.send(&Report::Spawned { host_pid: pid, nspid });
    if ch.order() != Order::Go {
        sys::kill(pid);
        let _ = sys::wait_exit_code(pid);
        return Ok(1);
    }
    write_all(&go_w, b"g");
    drop(go_w);
    let mut errno = [0u8; 4];
    // The pipe closes on a successful exec (close-on-exec); four bytes are the errno of a failed one.
    if std::fs::File::from(err_r).read_exact(&mut errno).is_ok() {
        let _ = sys::wait_exit_code(pid);
        ch.send(&Report::ExecFailed { errno: i32::from_ne_bytes(errno), vpid: None });
        return Ok(127);
    }
    if p.detach {
        ch.send(&Report::Running);
        return Ok(0);
    }
    let code = sys::wait_exit_code(pid).map_err(|e| failure("wait for the command", &e))?;
    ch.send(&Report::Exited { code });
    Ok(code)
}

// ---------------------------------------------------------------------------------------------
// restore

/// What the helper made itself (the new namespace's init and processes whose parent is outside).
#[derive(Default)]
struct Made {
    init: Option<u32>,
}

impl Made {
    /// Kills everything made: SIGKILL to the init ends its namespace (the kernel kills every task
    /// in it and in namespaces below); then reaps the helper's children (the init waits for those
    /// whose parent is outside the namespace to be reaped).
    fn undo(&self) {
        if let Some(init) = self.init {
            sys::kill(init);
        }
        while sys::reap_any().is_some() {}
    }
}

/// What every restored process needs to follow the schedule.
struct Ctx<'a> {
    steps: &'a [Step],
    cmd: Vec<CString>,
    board: Board,
    devnull: OwnedFd,
    /// Written by a process whose command cannot be executed: its vpid and errno.
    exec_status: OwnedFd,
}

fn restore(p: &RestorePlan, ch: &mut Channel) -> i32 {
    let mut made = Made::default();
    match restore_steps(p, ch, &mut made) {
        Ok(code) => {
            if code != 0 {
                made.undo();
            }
            code
        }
        Err(r) => {
            made.undo();
            ch.send(&r);
            1
        }
    }
}

fn describe_failure(steps: &[Step], board: Board) -> Report {
    let (k, errno) = board.failure();
    let step = steps.get(k as usize);
    let set_tid = match step {
        Some(Step::Fork { set_tid, .. } | Step::Thread { set_tid, .. }) => Some(set_tid.clone()),
        _ => None,
    };
    Report::Failed(Failure {
        what: step.map_or_else(|| format!("step {k}"), Step::describe),
        errno,
        set_tid,
        init_gone: false,
    })
}

/// The helper waits for step `k`, watching for a failure, a stall and the init's end.
fn wait_for(k: u32, ctx: &Ctx<'_>, made: &Made) -> Result<(), Report> {
    let mut last = ctx.board.now();
    let mut since = Instant::now();
    loop {
        let v = ctx.board.now();
        if v == k {
            return Ok(());
        }
        if v == Board::FAILED {
            return Err(describe_failure(ctx.steps, ctx.board));
        }
        if v != last {
            (last, since) = (v, Instant::now());
        }
        let stalled = since.elapsed() > STALL;
        let init_ended = made.init.is_some_and(sys::child_ended);
        if stalled || init_ended {
            let at = ctx.steps.get(v as usize).map_or_else(|| format!("step {v}"), Step::describe);
            let why = if init_ended { "the new namespace's init ended" } else { "no progress for 30 s" };
            return Err(Report::Failed(Failure {
                what: format!("the restore stopped at `{at}`: {why}"),
                errno: libc::ETIMEDOUT,
                set_tid: None,
                init_gone: false,
            }));
        }
        ctx.board.wait_change(v, Some(Duration::from_millis(100)));
    }
}

fn restore_steps(p: &RestorePlan, ch: &mut Channel, made: &mut Made) -> Result<i32, Report> {
    let fail = |what: &str, e: std::io::Error| Report::Failed(failure(what, &e));
    // The restored tree's outside session and group are this helper's, not the caller's
    // terminal's (which a restored process would otherwise share, shown as 0 inside).
    // SAFETY: setsid takes nothing; the helper, just started by the CLI, leads no group.
    unsafe { libc::setsid() };
    let (status_r, status_w) = sys::pipe().map_err(|e| fail("pipe", e))?;
    let ctx = Ctx {
        steps: &p.steps,
        cmd: cstrings(&p.cmd).map_err(Report::Failed)?,
        board: Board::new().map_err(|e| fail("mmap", e))?,
        devnull: sys::open(c"/dev/null", libc::O_RDWR).map_err(|e| fail("open /dev/null", e))?,
        exec_status: status_w,
    };
    for (k, step) in p.steps.iter().enumerate() {
        let Step::Fork { actor: Actor::Outside, vpid, set_tid, new_pidns, .. } = step else { continue };
        wait_for(k as u32, &ctx, made)?;
        // SAFETY: this helper is single-threaded; the child follows the schedule and then execs
        // or sleeps.
        match unsafe { sys::clone_process(set_tid, *new_pidns) } {
            Err(e) => {
                return Err(Report::Failed(Failure {
                    set_tid: Some(set_tid.clone()),
                    ..failure(step.describe(), &e)
                }));
            }
            Ok(Forked::Child) => restored(&ctx, k, *vpid),
            Ok(Forked::Parent(pid)) if made.init.is_none() => {
                made.init = Some(pid);
                // Later processes whose parent is outside are forked into the new namespace.
                let ns = sys::open(
                    &CString::new(format!("/proc/{pid}/ns/pid")).unwrap_or_default(),
                    libc::O_RDONLY,
                )
                .map_err(|e| fail("open the new pid namespace", e))?;
                sys::setns(&ns, libc::CLONE_NEWPID)
                    .map_err(|e| fail("setns into the new pid namespace", e))?;
            }
            Ok(Forked::Parent(_)) => {}
        }
    }
    wait_for(p.steps.len() as u32, &ctx, made)?;
    let init = made.init.unwrap_or(0);
    let pidns = std::fs::metadata(format!("/proc/{init}/ns/pid"))
        .map_err(|e| fail("stat the new pid namespace", e))?;
    ch.send(&Report::Made { pidns: pidns.ino() as u32, init_host_pid: init });
    if ch.order() != Order::Go {
        return Ok(1);
    }
    ctx.board.set(Board::GO);
    drop(ctx.exec_status);
    // Every process closes its copy when it execs or becomes a placeholder: end of file.
    let mut status = std::fs::File::from(status_r);
    let mut record = [0u8; 8];
    if status.read_exact(&mut record).is_ok() {
        let vpid = u32::from_ne_bytes([record[0], record[1], record[2], record[3]]);
        let errno = i32::from_ne_bytes([record[4], record[5], record[6], record[7]]);
        return Err(Report::ExecFailed { errno, vpid: Some(vpid) });
    }
    ch.send(&Report::Running);
    Ok(i32::from(ch.order() != Order::Done))
}

/// A restored process, made by step `made_by`: names itself, carries out its own steps, waits
/// for the go, then execs the command or becomes the placeholder. Never returns.
fn restored(ctx: &Ctx<'_>, made_by: usize, vpid: u32) -> ! {
    // SAFETY: the channel is the helper's.
    unsafe { libc::close(super::protocol::CHANNEL_FD) };
    if let Some(Step::Fork { comm, .. }) = ctx.steps.get(made_by) {
        sys::set_comm(comm);
    }
    ctx.board.advance();
    for (k, step) in ctx.steps.iter().enumerate().skip(made_by + 1) {
        if step.actor() != Actor::Process(vpid) {
            continue;
        }
        if ctx.board.wait_turn(k as u32).is_err() {
            exit_now(1);
        }
        let done = match step {
            Step::Fork { vpid: child, set_tid, new_pidns, .. } => {
                // SAFETY: the process is single-threaded here (threads come last in the schedule).
                match unsafe { sys::clone_process(set_tid, *new_pidns) } {
                    Ok(Forked::Child) => restored(ctx, k, *child),
                    Ok(Forked::Parent(_)) => Ok(false), // the child moves the board on
                    Err(e) => Err(e),
                }
            }
            // SAFETY: setsid takes nothing.
            Step::Setsid { .. } => check(unsafe { libc::setsid() }).map(|()| true),
            Step::Setpgid { pgid, .. } => {
                // SAFETY: setpgid takes numbers.
                check(unsafe { libc::setpgid(0, *pgid as libc::pid_t) }).map(|()| true)
            }
            Step::Thread { set_tid, comm, .. } => sys::clone_thread(set_tid, comm, ctx.board).map(|_| false),
        };
        match done {
            Ok(true) => ctx.board.advance(),
            Ok(false) => {}
            Err(e) => {
                ctx.board.fail(k as u32, sys::errno_of(&e));
                exit_now(1);
            }
        }
    }
    loop {
        match ctx.board.now() {
            Board::GO => break,
            Board::FAILED => exit_now(1),
            v => ctx.board.wait_change(v, None),
        }
    }
    sys::stdio_to(&ctx.devnull);
    if !ctx.cmd.is_empty() {
        let errno = exec(&ctx.cmd);
        let mut record = vpid.to_ne_bytes().to_vec();
        record.extend(errno.to_ne_bytes());
        write_all(&ctx.exec_status, &record);
        exit_now(127);
    }
    placeholder()
}

fn check(ret: libc::c_int) -> std::io::Result<()> {
    if ret < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

extern "C" fn end_on_signal(_: libc::c_int) {
    exit_now(0);
}

/// Sleeps until killed: SIGTERM, SIGINT and SIGHUP end it (an init ignores signals it has no
/// handler for), and its children are reaped as they end (SIGCHLD ignored).
fn placeholder() -> ! {
    sys::close_from(3);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: the handler only calls _exit, which is async-signal-safe.
        unsafe { libc::signal(sig, end_on_signal as *const () as libc::sighandler_t) };
    }
    // SAFETY: SIG_IGN for SIGCHLD: the kernel reaps the children.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    loop {
        // SAFETY: pause takes nothing.
        unsafe { libc::pause() };
    }
}
