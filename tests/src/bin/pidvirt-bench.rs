//! Load generator of `cargo xtask bench`. Every mode prints one JSON line on stdout.
//!
//! - `pidvirt-bench serve [--cpu C]` — one pid namespace (unshare(CLONE_NEWPID) + fork) whose
//!   init (vpid 1) runs workloads on command for as long as stdin lasts, in that one process:
//!   each line `WORKLOADS ITERS BATCHES FORK_ITERS FORK_BATCHES [OPEN_ITERS]` (WORKLOADS
//!   comma-separated, of `getpid`, `kill`, `kill-level3` (kill(self, 0) two namespaces further
//!   down: level 3), `fork`, `read`, `openat`, `openat-proc`) is answered with one JSON line holding, per workload, the
//!   ns per call of each batch (timed with CLOCK_MONOTONIC) and their median. `getpid`:
//!   syscall(SYS_getpid); `kill`: kill(self, 0); `fork`: clone(SIGCHLD) of a child that
//!   exit_group(0)s at once, then wait4 (FORK_BATCHES batches of FORK_ITERS; every call is also
//!   timed on its own: `per_call_ns` has the quantiles of those times); `read`: a 1-byte read of
//!   /dev/zero; `openat`: openat(AT_FDCWD, "/etc/passwd") then close, `openat-proc` the same of
//!   "/proc/self/stat" (OPEN_ITERS calls per batch, default a tenth of ITERS). Each workload
//!   first warms up with a tenth of its calls.
//! - `pidvirt-bench leak [--seconds S] [--cpu C]` — forks a sibling on the host (host pid H),
//!   then in a fresh pid namespace calls kill(H, 0) in a tight loop for S seconds (H names
//!   nothing inside: the kernel answers ESRCH; pidvirt's verdict is `leak`). Answers the calls
//!   made, how many returned ESRCH, the namespace inode and H.
//! - `pidvirt-bench spawn [--namespaces K] [--per-ns M]` — K pid namespaces, each an init and
//!   M - 1 children, all asleep. Answers every process (host pid, NSpid read from
//!   /proc/PID/status), then holds them until stdin closes (or it dies: everything has
//!   PR_SET_PDEATHSIG) and kills them.
//! - `pidvirt-bench ps-check --pidvirt BIN --socket S [--expect FILE] [--timeout-ms T]` — runs
//!   `BIN ps --json --socket S` until it lists every process of FILE (the `spawn` answer) with
//!   `nspid` equal to the expected NSpid, or until T ms passed; answers the outcome and the
//!   tracked tasks per level. Without --expect: one successful `ps`, summarised.
//! - `pidvirt-bench audit-count --log FILE --container C [--verdict V] [--syscall S]` — counts
//!   audit-log lines of container C (and verdict V, syscall S).

use std::{
    collections::{BTreeMap, HashMap},
    io::{BufRead, BufReader, Read as _},
    os::unix::fs::MetadataExt,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Deserialize;
use serde_json::{Value, json};

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a writable timespec that outlives the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) has no memory effects.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
}

/// fork(2) of this single-threaded program, the child killed with its parent: the child's pid
/// in the parent, 0 in the child.
fn fork_tied() -> anyhow::Result<libc::pid_t> {
    // SAFETY: the program is single-threaded, so the child may go on running Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        die_with_parent();
    }
    Ok(pid)
}

fn pin(cpu: Option<usize>) -> anyhow::Result<()> {
    let Some(cpu) = cpu else { return Ok(()) };
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET bounds-checks `cpu` (a panic past
    // the set's 1024 cpus); `set` is valid for the size passed.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set)
    };
    if rc != 0 {
        bail!("sched_setaffinity(cpu {cpu}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn pipe() -> anyhow::Result<(i32, i32)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe2: {}", std::io::Error::last_os_error());
    }
    Ok((fds[0], fds[1]))
}

fn write_all(fd: i32, mut buf: &[u8]) {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for reads of buf.len() bytes.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n <= 0 {
            if n < 0 && errno() == libc::EINTR {
                continue;
            }
            return;
        }
        buf = &buf[n as usize..];
    }
}

fn read_to_end(fd: i32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: `buf` is valid for writes of buf.len() bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
}

fn waitpid(pid: i32) -> i32 {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a writable int that outlives the call.
        let r = unsafe { libc::waitpid(pid, &raw mut status, 0) };
        if r >= 0 || errno() != libc::EINTR {
            return status;
        }
    }
}

/// Runs `f` as the init (vpid 1) of a fresh pid namespace: a helper process unshares
/// CLONE_NEWPID and forks it. Answers what `f` returned (sent back through a pipe), and the
/// namespace's inode.
fn in_new_pidns(f: impl FnOnce() -> String) -> anyhow::Result<(String, u64)> {
    let (r, w) = pipe()?;
    let (ir, iw) = pipe()?;
    // The child only runs `f` and exits.
    let helper = fork_tied()?;
    if helper == 0 {
        // SAFETY: close, unshare and _exit take no pointers, and no Rust value owns r, ir, w or iw;
        // the fork is in a single-threaded process, so its child may run `f`.
        unsafe {
            libc::close(r);
            libc::close(ir);
            if libc::unshare(libc::CLONE_NEWPID) != 0 {
                let msg = format!("unshare(CLONE_NEWPID): {}", std::io::Error::last_os_error());
                write_all(w, json!({ "error": msg }).to_string().as_bytes());
                libc::_exit(1);
            }
            let child = libc::fork();
            if child == 0 {
                libc::close(iw);
                die_with_parent();
                let out = f();
                write_all(w, out.as_bytes());
                libc::_exit(0);
            }
            libc::close(w);
            // The namespace has an init now (before, its ns file cannot be opened).
            let ino = std::fs::metadata(format!("/proc/{child}/ns/pid")).map_or(0, |m| m.ino());
            write_all(iw, ino.to_string().as_bytes());
            libc::close(iw);
            let status = if child > 0 { waitpid(child) } else { 1 };
            libc::_exit(i32::from(status != 0));
        }
    }
    // SAFETY: no Rust value owns w or iw (the helper has its own copies).
    unsafe {
        libc::close(w);
        libc::close(iw);
    }
    let ino = String::from_utf8_lossy(&read_to_end(ir)).trim().parse().unwrap_or(0);
    let out = String::from_utf8_lossy(&read_to_end(r)).into_owned();
    // SAFETY: no Rust value owns r or ir.
    unsafe {
        libc::close(r);
        libc::close(ir);
    }
    let status = waitpid(helper);
    if status != 0 || out.is_empty() {
        bail!("workload in a new pid namespace failed (wait status {status}): {out}");
    }
    Ok((out, ino))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => f64::midpoint(s[n / 2 - 1], s[n / 2]),
    }
}

/// Times `iters` calls of `body` per batch; answers ns per call per batch.
fn batches(n: usize, iters: u64, mut body: impl FnMut() -> i64) -> Vec<f64> {
    // Warm-up (page faults, caches).
    for _ in 0..(iters / 10).max(1) {
        std::hint::black_box(body());
    }
    (0..n)
        .map(|_| {
            let t0 = now_ns();
            for _ in 0..iters {
                std::hint::black_box(body());
            }
            (now_ns() - t0) as f64 / iters as f64
        })
        .collect()
}

/// The q-quantile (0..=1) of sorted `v` (nearest rank).
fn quantile_sorted(v: &[u64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * q).round() as usize] as f64
}

/// Times every call of `body` (for calls long enough that reading the clock around each one
/// costs nothing that matters: fork+exit+wait). Answers ns per call per batch (mean), and the
/// quantiles of all the calls' times. The batch means are what to compare: work the kernel
/// defers (RCU callbacks: freeing the task, and the sched_process_free programs) runs in
/// batches inside a few calls, which the quantiles of single calls leave out.
fn batches_each(n: usize, iters: u64, mut body: impl FnMut() -> i64) -> (Vec<f64>, Value) {
    for _ in 0..(iters / 10).max(1) {
        std::hint::black_box(body());
    }
    let mut all = Vec::with_capacity(n * iters as usize);
    let means = (0..n)
        .map(|_| {
            let t0 = now_ns();
            for _ in 0..iters {
                let t = now_ns();
                std::hint::black_box(body());
                all.push(now_ns() - t);
            }
            (now_ns() - t0) as f64 / iters as f64
        })
        .collect();
    all.sort_unstable();
    let q = |q| quantile_sorted(&all, q);
    (means, json!({ "p10": q(0.10), "p25": q(0.25), "p50": q(0.50), "p75": q(0.75), "p90": q(0.90) }))
}

/// fork(2) (as clone(SIGCHLD)) of a child that exit_group(0)s at once, then wait4 for it.
fn fork_exit_wait() -> i64 {
    // SAFETY: clone with no new stack runs the child on a copy of ours, as fork does, and the
    // child only exits; wait4 writes to `status`, alive for the call, and gets a null rusage.
    unsafe {
        let pid = libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        );
        if pid == 0 {
            libc::syscall(libc::SYS_exit_group, 0);
        }
        let mut status = 0;
        libc::syscall(libc::SYS_wait4, pid, &raw mut status, 0, 0usize)
    }
}

/// openat(AT_FDCWD, `path`, O_RDONLY) then close: the open family's path audit (a regular file's
/// path is no /proc path; /proc/self/stat is a /proc path without a number).
fn open_close(path: &std::ffi::CStr) -> i64 {
    // SAFETY: the path is NUL-terminated and outlives the call; the fd is ours to close.
    unsafe {
        let fd =
            libc::syscall(libc::SYS_openat, libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            libc::syscall(libc::SYS_close, fd);
        }
        fd
    }
}

/// The body of one workload, run as the init of a fresh pid namespace.
fn workload(name: &str, iters: u64, n: usize) -> Value {
    // SAFETY: getpid takes no arguments.
    let getpid = || unsafe { libc::syscall(libc::SYS_getpid) };
    let me = getpid();
    let ns = match name {
        "getpid" => batches(n, iters, getpid),
        // SAFETY: kill takes no pointers; signal 0 only checks.
        "kill" => batches(n, iters, || unsafe { libc::syscall(libc::SYS_kill, me, 0) }),
        "fork" => {
            let (ns, quantiles) = batches_each(n, iters, fork_exit_wait);
            return json!({
                "ns_per_call": median(&ns), "batches": ns, "per_call_ns": quantiles, "iters": iters, "vpid": me,
            });
        }
        "read" => {
            // SAFETY: the path is NUL-terminated.
            let fd = unsafe { libc::open(c"/dev/zero".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                return json!({ "error": format!("open /dev/zero: {}", std::io::Error::last_os_error()) });
            }
            let mut byte = 0u8;
            let ptr = &raw mut byte;
            // SAFETY: `ptr` points at `byte`, which outlives the calls, and each reads one byte.
            batches(n, iters, || unsafe { libc::syscall(libc::SYS_read, fd, ptr, 1usize) })
        }
        // kill(self, 0) from level 3: two namespaces more below this init (level 1).
        "kill-level3" => {
            let nested = in_new_pidns(|| match in_new_pidns(|| nested_kill(iters, n)) {
                Ok((out, _)) => out,
                Err(e) => json!({ "error": format!("{e:#}") }).to_string(),
            });
            return match nested {
                Ok((out, _)) => {
                    serde_json::from_str(&out).unwrap_or_else(|e| json!({ "error": e.to_string() }))
                }
                Err(e) => json!({ "error": format!("{e:#}") }),
            };
        }
        "openat" => batches(n, iters, || open_close(c"/etc/passwd")),
        "openat-proc" => batches(n, iters, || open_close(c"/proc/self/stat")),
        other => return json!({ "error": format!("unknown workload {other}") }),
    };
    json!({ "ns_per_call": median(&ns), "batches": ns, "iters": iters, "vpid": me })
}

/// The kill workload where it runs, with its level (the number of namespaces above it, from
/// /proc: NSpid has one number per level).
fn nested_kill(iters: u64, n: usize) -> String {
    let mut v = workload("kill", iters, n);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let levels = status.lines().find_map(|l| l.strip_prefix("NSpid:")).map(|l| l.split_whitespace().count());
    v["level"] = json!(levels.map(|l| l - 1));
    v.to_string()
}

struct Args(Vec<String>);

impl Args {
    fn get(&self, flag: &str) -> Option<&str> {
        self.0.iter().position(|a| a == flag).and_then(|i| self.0.get(i + 1)).map(String::as_str)
    }
    fn num<T: std::str::FromStr>(&self, flag: &str, default: T) -> anyhow::Result<T> {
        match self.get(flag) {
            Some(v) => v.parse().ok().with_context(|| format!("bad value for {flag}: {v}")),
            None => Ok(default),
        }
    }
    fn cpu(&self) -> anyhow::Result<Option<usize>> {
        self.get("--cpu").map(|v| v.parse().with_context(|| format!("bad --cpu {v}"))).transpose()
    }
    fn required(&self, flag: &str) -> anyhow::Result<&str> {
        self.get(flag).with_context(|| format!("{flag} is required"))
    }
}

/// `serve`: one pid namespace whose init runs workloads on command for as long as stdin lasts.
/// Each line `WORKLOADS ITERS BATCHES FORK_ITERS FORK_BATCHES [OPEN_ITERS]` (WORKLOADS comma-separated) is
/// answered with one JSON line (see the module doc). One process for every measurement of a
/// run: what a process brings along (its memory layout, which fork copies) is then the same under
/// every mode compared (separate processes differ by a few µs per fork here).
fn serve(args: &Args) -> anyhow::Result<()> {
    use std::io::Write as _;
    pin(args.cpu()?)?;
    // SAFETY: unshare takes no pointers.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        bail!("unshare(CLONE_NEWPID): {}", std::io::Error::last_os_error());
    }
    let init = fork_tied()?;
    if init == 0 {
        let mut out = std::io::stdout().lock();
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let answer = serve_line(&line);
            if writeln!(out, "{answer}").and_then(|()| out.flush()).is_err() {
                break;
            }
        }
        // SAFETY: ends the init (and with it the namespace) without unwinding.
        unsafe { libc::_exit(0) };
    }
    match waitpid(init) {
        0 => Ok(()),
        status => bail!("the namespace's init ended with wait status {status}"),
    }
}

/// One `serve` request, run in the serving namespace.
fn serve_line(line: &str) -> Value {
    let w: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| w.get(i).and_then(|v| v.parse::<u64>().ok());
    let (Some(list), Some(iters), Some(n), Some(fork_iters), Some(fork_n)) =
        (w.first(), num(1), num(2), num(3), num(4))
    else {
        return json!({
            "error": format!("bad request {line:?}: WORKLOADS ITERS BATCHES FORK_ITERS FORK_BATCHES [OPEN_ITERS]")
        });
    };
    // The open workloads take ~10x a getpid's time: a tenth of the calls unless told.
    let open_iters = num(5).unwrap_or((iters / 10).max(1));
    let mut out = serde_json::Map::new();
    for name in list.split(',') {
        let (it, n) = match name {
            "fork" => (fork_iters, fork_n),
            "openat" | "openat-proc" => (open_iters, n),
            _ => (iters, n),
        };
        let v = workload(name, it, n as usize);
        if v.get("error").is_some() {
            return v;
        }
        out.insert(name.to_string(), v);
    }
    out.insert("pidns".into(), json!(std::fs::metadata("/proc/self/ns/pid").map_or(0, |m| m.ino())));
    Value::Object(out)
}

fn leak(args: &Args) -> anyhow::Result<Value> {
    pin(args.cpu()?)?;
    let seconds: f64 = args.num("--seconds", 2.0)?;
    // The sibling: a host process whose host pid the container will (wrongly) use.
    // The child only sleeps.
    let sibling = fork_tied()?;
    if sibling == 0 {
        loop {
            // SAFETY: pause has no preconditions.
            unsafe { libc::pause() };
        }
    }
    let target = sibling;
    let result = in_new_pidns(move || {
        let deadline = now_ns() + (seconds * 1e9) as u64;
        let t0 = now_ns();
        let (mut calls, mut esrch) = (0u64, 0u64);
        loop {
            for _ in 0..1024 {
                // SAFETY: kill with signal 0 only checks.
                let r = unsafe { libc::syscall(libc::SYS_kill, target, 0) };
                if r == -1 && errno() == libc::ESRCH {
                    esrch += 1;
                }
            }
            calls += 1024;
            if now_ns() >= deadline {
                break;
            }
        }
        let elapsed = (now_ns() - t0) as f64 / 1e9;
        json!({ "generated": calls, "esrch": esrch, "elapsed_s": elapsed }).to_string()
    });
    // SAFETY: the sibling is our child.
    unsafe { libc::kill(sibling, libc::SIGKILL) };
    waitpid(sibling);
    let (text, ino) = result?;
    let mut v: Value = serde_json::from_str(&text).with_context(|| format!("leak generator: {text}"))?;
    v["pidns"] = json!(ino);
    v["target_host_pid"] = json!(target);
    Ok(v)
}

fn nspid_of(pid: i32) -> Option<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    line["NSpid:".len()..].split_whitespace().map(|w| w.parse().ok()).collect()
}

fn spawn(args: &Args) -> anyhow::Result<()> {
    let namespaces: usize = args.num("--namespaces", 10)?;
    let per_ns: usize = args.num("--per-ns", 1000)?;
    if per_ns == 0 {
        bail!("--per-ns must be at least 1 (the init)");
    }
    let mut helpers = Vec::new();
    for _ in 0..namespaces {
        let (r, w) = pipe()?;
        // The children only fork and sleep.
        let helper = fork_tied()?;
        if helper == 0 {
            // SAFETY: open gets a NUL-terminated path and wait a null status (allowed); the other
            // calls take no pointers, and no Rust value owns r or w; every fork is in a
            // single-threaded process.
            unsafe {
                libc::close(r);
                // Keep the pipes to xtask out of thousands of sleepers.
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                libc::dup2(null, 0);
                libc::dup2(null, 1);
                if libc::unshare(libc::CLONE_NEWPID) != 0 {
                    libc::_exit(1);
                }
                let init = libc::fork();
                if init == 0 {
                    die_with_parent();
                    for _ in 1..per_ns {
                        let c = libc::fork();
                        if c == 0 {
                            libc::close(w);
                            die_with_parent();
                            loop {
                                libc::pause();
                            }
                        }
                        if c < 0 {
                            libc::_exit(1);
                        }
                    }
                    write_all(w, b"r");
                    libc::close(w);
                    // Reap whatever dies; the namespace goes when this init does.
                    loop {
                        if libc::wait(std::ptr::null_mut()) < 0 && errno() == libc::ECHILD {
                            libc::pause();
                        }
                    }
                }
                if init < 0 {
                    libc::_exit(1);
                }
                // The init's host pid (the init adds "r" once its children exist).
                write_all(w, format!("p{init}\n").as_bytes());
                libc::close(w);
                let status = waitpid(init);
                libc::_exit(i32::from(status != 0));
            }
        }
        // SAFETY: no Rust value owns `w` (the helper has its own copy).
        unsafe { libc::close(w) };
        helpers.push((helper, r));
    }
    // Each helper writes "p<init host pid>\n" and the init "r" once its children exist; EOF
    // once both closed the pipe.
    let mut inits = Vec::new();
    for &(_, r) in &helpers {
        let got = String::from_utf8_lossy(&read_to_end(r)).into_owned();
        // SAFETY: no Rust value owns `r`.
        unsafe { libc::close(r) };
        let pid = got.split(['p', '\n', 'r']).find_map(|w| w.parse::<i32>().ok());
        match pid {
            Some(pid) if got.contains('r') => inits.push(pid),
            _ => {
                kill_all(&helpers, &inits);
                bail!("a namespace did not come up (read {got:?})");
            }
        }
    }
    let mut ns_of_init = Vec::new();
    for &i in &inits {
        ns_of_init.push(std::fs::metadata(format!("/proc/{i}/ns/pid")).map_or(0, |m| m.ino()));
    }
    let mut tasks = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(ino) = std::fs::metadata(format!("/proc/{pid}/ns/pid")).map(|m| m.ino()) else { continue };
        if !ns_of_init.contains(&ino) {
            continue;
        }
        if let Some(nspid) = nspid_of(pid) {
            tasks.push(json!({ "pid": pid, "nspid": nspid, "pidns": ino }));
        }
    }
    let expected = namespaces * per_ns;
    if tasks.len() != expected {
        kill_all(&helpers, &inits);
        bail!("expected {expected} processes in the new namespaces, /proc shows {}", tasks.len());
    }
    println!(
        "{}",
        json!({ "inits": inits, "pidns": ns_of_init, "helpers": helpers.iter().map(|h| h.0).collect::<Vec<_>>(),
                "tasks": tasks })
    );
    // Hold them until stdin closes.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    kill_all(&helpers, &inits);
    Ok(())
}

fn kill_all(helpers: &[(i32, i32)], inits: &[i32]) {
    for &i in inits {
        // SAFETY: kill takes no pointers.
        unsafe { libc::kill(i, libc::SIGKILL) };
    }
    for &(h, _) in helpers {
        // SAFETY: as above.
        unsafe { libc::kill(h, libc::SIGKILL) };
        waitpid(h);
    }
}

#[derive(Deserialize)]
struct PsRow {
    host_tid: u32,
    level: u32,
    nspid: Vec<u32>,
}

#[derive(Deserialize)]
struct Expected {
    tasks: Vec<ExpectedTask>,
}

#[derive(Deserialize)]
struct ExpectedTask {
    pid: u32,
    nspid: Vec<u32>,
}

fn ps_check(args: &Args) -> anyhow::Result<Value> {
    let bin = args.required("--pidvirt")?;
    let socket = args.required("--socket")?;
    let timeout = Duration::from_millis(args.num("--timeout-ms", 30_000)?);
    let expect: Option<Expected> = match args.get("--expect") {
        Some(f) => Some(serde_json::from_str(&std::fs::read_to_string(f).with_context(|| f.to_string())?)?),
        None => None,
    };
    let start = Instant::now();
    let mut polls = 0u64;
    let mut socket_seen_ms = None;
    loop {
        // Until the daemon serves its socket, a stat is enough (no process competing with it).
        if !std::path::Path::new(socket).exists() && start.elapsed() <= timeout {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        socket_seen_ms.get_or_insert(start.elapsed().as_secs_f64() * 1e3);
        polls += 1;
        let call = Instant::now();
        let out = Command::new(bin).args(["ps", "--json", "--socket", socket]).output()?;
        let last_error = if out.status.success() {
            let rows: Vec<PsRow> = serde_json::from_slice(&out.stdout).context("ps --json")?;
            let mut levels: BTreeMap<u32, u64> = BTreeMap::new();
            for r in &rows {
                *levels.entry(r.level).or_default() += 1;
            }
            let (mut missing, mut wrong) = (0u64, 0u64);
            if let Some(e) = &expect {
                let by_tid: HashMap<u32, &PsRow> = rows.iter().map(|r| (r.host_tid, r)).collect();
                for t in &e.tasks {
                    match by_tid.get(&t.pid) {
                        None => missing += 1,
                        Some(r) if r.nspid != t.nspid => wrong += 1,
                        Some(_) => {}
                    }
                }
            }
            let ok = missing == 0 && wrong == 0;
            if ok || start.elapsed() > timeout {
                return Ok(json!({
                    "ok": ok, "polls": polls, "elapsed_ms": start.elapsed().as_secs_f64() * 1e3,
                    "tasks": rows.len(), "levels": levels, "missing": missing, "wrong_nspid": wrong,
                    "socket_seen_ms": socket_seen_ms, "last_ps_call_ms": call.elapsed().as_secs_f64() * 1e3,
                }));
            }
            format!("{missing} missing, {wrong} with a wrong nspid")
        } else {
            String::from_utf8_lossy(&out.stderr).trim().to_string()
        };
        if start.elapsed() > timeout {
            return Ok(json!({ "ok": false, "polls": polls, "error": last_error,
                              "elapsed_ms": start.elapsed().as_secs_f64() * 1e3 }));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn audit_count(args: &Args) -> anyhow::Result<Value> {
    let log = args.required("--log")?;
    let container = args.required("--container")?;
    let verdict = args.get("--verdict");
    let syscall = args.get("--syscall");
    let file = std::fs::File::open(log).with_context(|| log.to_string())?;
    let (mut lines, mut matched, mut bad) = (0u64, 0u64, 0u64);
    for line in BufReader::with_capacity(1 << 20, file).split(b'\n') {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        lines += 1;
        let Ok(v) = serde_json::from_slice::<Value>(&line) else {
            bad += 1;
            continue;
        };
        let field = |k: &str| v.get(k).and_then(Value::as_str);
        if field("container") == Some(container)
            && verdict.is_none_or(|x| field("verdict") == Some(x))
            && syscall.is_none_or(|x| field("syscall") == Some(x))
        {
            matched += 1;
        }
    }
    Ok(json!({ "lines": lines, "matched": matched, "unparsable": bad }))
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(mode) = argv.first().cloned() else {
        eprintln!("usage: pidvirt-bench serve|leak|spawn|ps-check|audit-count [OPTIONS]");
        std::process::exit(2);
    };
    let args = Args(argv);
    let result = match mode.as_str() {
        "leak" => leak(&args).map(Some),
        "spawn" => spawn(&args).map(|()| None),
        "serve" => serve(&args).map(|()| None),
        "ps-check" => ps_check(&args).map(Some),
        "audit-count" => audit_count(&args).map(Some),
        other => {
            eprintln!("pidvirt-bench: unknown mode {other}");
            std::process::exit(2);
        }
    };
    match result {
        Ok(Some(v)) => println!("{v}"),
        Ok(None) => {}
        Err(e) => {
            eprintln!("pidvirt-bench {mode}: {e:#}");
            std::process::exit(1);
        }
    }
}
