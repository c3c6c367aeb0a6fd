//! `cargo xtask bench`: what pidvirt costs, measured on this machine in ONE run, as ratios.
//!
//! 1. Syscall overhead. Four workloads (raw getpid, kill(self, 0), fork+exit+wait, a 1-byte read
//!    of /dev/zero, which pidvirt does not audit), each in a fresh pid namespace, under four
//!    modes: `bare` (nothing attached), `floor` (`pidvirt floor`: EMPTY programs on exactly
//!    pidvirt's hooks), `pidvirt` (`pidvirt run`), `peer` (bpftrace auditing the same syscalls
//!    minimally); and, for the syscalls pidvirt does not audit, two other designs with EMPTY
//!    programs: `read-hooked` (read's own syscall tracepoints: what hooking a syscall costs it)
//!    and `raw` (raw sys_enter/sys_exit: a program on every syscall). The modes alternate round
//!    by round (the order rotates), so drift hits all of them; a mode's cost is the median over
//!    rounds of its per-round difference to bare.
//! 2. In-kernel program time (bpf_stats, in a pass of its own: the statistics cost every run two
//!    clock reads): per workload and mode, and program by program for fork+exit+wait.
//! 3. P4: anomaly throughput (kill(host pid) `leak` crossings from a container into the JSON sink).
//! 4. P5: attach time to a host with 10,000 extra processes in 10 pid namespaces.
//! 5. P6: kernel map memory per tracked task (bpftool map show), before and after those processes.
//!
//! A round during which someone else had tracing programs attached (a test daemon, another
//! tracer: `bare` would pay for them) is discarded and run again while `--time-budget` lasts.
//!
//! The load generator is `tests/src/bin/pidvirt-bench.rs`. Every process started here is
//! stopped by a Drop guard (and dies with us: PR_SET_PDEATHSIG); SIGINT/SIGTERM make the bench
//! stop early through the same guards.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use pidvirt_common::{audit::SYSCALLS, catalogue::map};
use serde_json::{Value, json};

use crate::setup;

#[derive(clap::Args, Clone, Debug)]
pub struct Options {
    /// Alternating rounds of the syscall workloads (each runs every mode once).
    #[arg(long, default_value_t = 15)]
    rounds: usize,
    /// Calls per batch (getpid, kill, read).
    #[arg(long, default_value_t = 200_000)]
    iters: u64,
    /// fork+exit+wait per batch (a batch of ~30 ms: long enough to hold the kernel's deferred
    /// work, RCU callbacks, short enough that a burst of host noise spoils few batches).
    #[arg(long, default_value_t = 300)]
    fork_iters: u64,
    /// Batches of fork+exit+wait per round (the round's value is the median of their means).
    #[arg(long, default_value_t = 21)]
    fork_batches: usize,
    /// Batches per workload per round (the round's value is their median).
    #[arg(long, default_value_t = 3)]
    batches: usize,
    /// CPU the load generator is pinned to (default: the last one).
    #[arg(long)]
    cpu: Option<usize>,
    /// Seconds of leak generation (P4).
    #[arg(long, default_value_t = 2.0)]
    leak_seconds: f64,
    /// Pid namespaces of the extra processes (P5, P6).
    #[arg(long, default_value_t = 10)]
    namespaces: usize,
    /// Extra processes in all (P5, P6), spread evenly over the namespaces.
    #[arg(long, default_value_t = 10_000)]
    tasks: usize,
    /// Seconds to wait, before the first round, for other tracing programs (a daemon of a test
    /// run, another tracer) to go: they perturb `bare`. Later rounds wait up to 20 s (within --time-budget).
    #[arg(long, default_value_t = 30)]
    quiet_wait: u64,
    /// Seconds the syscall rounds may take in all: a perturbed round (someone else tracing) is
    /// run again while this lasts.
    #[arg(long, default_value_t = 300)]
    time_budget: u64,
    /// Skip the bpftrace peer.
    #[arg(long)]
    no_peer: bool,
}

// ---------------------------------------------------------------------------------------------
// Processes

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// SIGINT/SIGTERM: stop at the next check (the guards then stop everything we started).
fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// A background process, stopped (signal, then SIGKILL after a grace period) when dropped.
struct Running {
    what: String,
    child: Child,
    stop_signal: i32,
    log: PathBuf,
}

impl Running {
    fn spawn(what: &str, cmd: &mut Command, stop_signal: i32, log: &Path) -> anyhow::Result<Self> {
        let out = std::fs::File::create(log).with_context(|| log.display().to_string())?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: prctl is async-signal-safe; it only makes the child die with us.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, stop_signal);
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("cannot start {what}: {cmd:?}"))?;
        Ok(Self { what: what.to_string(), child, stop_signal, log: log.to_path_buf() })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Err with the log's tail if the process is gone.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!("{} exited ({status}): {}", self.what, self.log_tail());
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, self.stop_signal) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("[bench] {} did not stop within 15 s: SIGKILL", self.what);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the load generator with `args`, talking to it through its stdin and stdout; it dies
/// with us (PR_SET_PDEATHSIG). Answers the child and its two pipes.
fn start_generator(
    generator: &Path,
    args: &[&str],
) -> anyhow::Result<(Child, ChildStdin, std::process::ChildStdout)> {
    let mut cmd = Command::new(generator);
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    // SAFETY: as in Running::spawn.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().with_context(|| format!("cannot start pidvirt-bench {}", args.join(" ")))?;
    let stdin = child.stdin.take().context("no stdin")?;
    let stdout = child.stdout.take().context("no stdout")?;
    Ok((child, stdin, stdout))
}

/// Closes a generator's stdin (which ends it), gives it 10 s to exit, then kills it.
fn stop_generator(child: &mut Child, stdin: Option<ChildStdin>) {
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The extra processes of P5/P6: the generator holds them until its stdin closes.
struct Spawned {
    child: Child,
    stdin: Option<ChildStdin>,
    inits: Vec<i32>,
    file: PathBuf,
    count: usize,
}

impl Spawned {
    fn start(generator: &Path, namespaces: usize, per_ns: usize, file: &Path) -> anyhow::Result<Self> {
        let (namespaces, per_ns) = (namespaces.to_string(), per_ns.to_string());
        let (child, stdin, stdout) =
            start_generator(generator, &["spawn", "--namespaces", &namespaces, "--per-ns", &per_ns])?;
        let mut guard =
            Self { child, stdin: Some(stdin), inits: Vec::new(), file: file.to_path_buf(), count: 0 };
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let v: Value =
            serde_json::from_str(&line).context("pidvirt-bench spawn did not report its processes")?;
        guard.inits = v["inits"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p.as_i64())
            .map(|p| p as i32)
            .collect();
        guard.count = v["tasks"].as_array().map_or(0, Vec::len);
        std::fs::write(file, &line)?;
        Ok(guard)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        stop_generator(&mut self.child, self.stdin.take());
        // Belt and braces: an init's death takes its whole namespace with it.
        for &i in &self.inits {
            // SAFETY: these are the inits the generator made (still ours until they are gone).
            unsafe { libc::kill(i, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline
            && self.inits.iter().any(|i| Path::new(&format!("/proc/{i}")).exists())
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(&self.file);
    }
}

/// `pidvirt-bench serve`: one process in one pid namespace measuring every mode of the run
/// (closing its stdin ends it).
struct Generator {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Generator {
    fn start(path: &Path, cpu: usize) -> anyhow::Result<Self> {
        let (child, stdin, stdout) = start_generator(path, &["serve", "--cpu", &cpu.to_string()])?;
        Ok(Self { child, stdin: Some(stdin), stdout: BufReader::new(stdout) })
    }

    /// Runs `workloads` (comma-separated) with the run's counts; answers the generator's JSON.
    fn run(&mut self, workloads: &str, o: &Options) -> anyhow::Result<Value> {
        self.request(workloads, [o.iters, o.batches as u64, o.fork_iters, o.fork_batches as u64])
    }

    /// Runs `workloads` with `[iters, batches, fork_iters, fork_batches]`.
    fn request(&mut self, workloads: &str, counts: [u64; 4]) -> anyhow::Result<Value> {
        let stdin = self.stdin.as_mut().context("generator closed")?;
        let [iters, batches, fork_iters, fork_batches] = counts;
        writeln!(stdin, "{workloads} {iters} {batches} {fork_iters} {fork_batches}")?;
        stdin.flush()?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("pidvirt-bench serve ended ({:?})", self.child.try_wait());
        }
        let v: Value = serde_json::from_str(&line).with_context(|| format!("pidvirt-bench serve: {line}"))?;
        if let Some(e) = v.get("error") {
            bail!("pidvirt-bench serve: {e}");
        }
        Ok(v)
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        stop_generator(&mut self.child, self.stdin.take());
    }
}

/// A scratch directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<Self> {
        let p = std::env::temp_dir().join(format!("pidvirt-bench.{}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `cmd`, fails with its stderr; answers its stdout.
fn capture(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("cannot start {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` and parses the last line of its stdout as JSON.
fn capture_json(cmd: &mut Command) -> anyhow::Result<Value> {
    let out = capture(cmd)?;
    if let Ok(v) = serde_json::from_str(&out) {
        return Ok(v);
    }
    let line = out.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))
}

/// `pidvirt-bench ps-check`: polls `pidvirt ps --json` on `socket` until it lists every process
/// of `spawned` with nspid equal to /proc's (30 s at most); answers its JSON report.
fn ps_check(b: &Bench, socket: &Path, spawned: &Spawned) -> anyhow::Result<Value> {
    capture_json(
        Command::new(&b.generator)
            .args(["ps-check", "--pidvirt"])
            .arg(&b.pidvirt)
            .arg("--socket")
            .arg(socket)
            .arg("--expect")
            .arg(&spawned.file)
            .args(["--timeout-ms", "30000"]),
    )
}

fn wait_for(
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        check_interrupted()?;
        if ready()? {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------------
// The modes

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Bare,
    Floor,
    Pidvirt,
    Peer,
    /// EMPTY programs on read's own syscall tracepoints: what hooking a syscall through its
    /// tracepoints costs it (the yardstick for the syscalls pidvirt does not audit).
    ReadHooked,
    /// EMPTY programs on the raw sys_enter/sys_exit tracepoints: a design hooking every syscall.
    Raw,
}

const MODES: [Mode; 6] = [Mode::Bare, Mode::Floor, Mode::Pidvirt, Mode::Peer, Mode::ReadHooked, Mode::Raw];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Bare => "bare",
            Mode::Floor => "floor",
            Mode::Pidvirt => "pidvirt",
            Mode::Peer => "peer",
            Mode::ReadHooked => "read-hooked",
            Mode::Raw => "raw",
        }
    }

    /// The workloads measured under this mode (pidvirt-bench `--workloads`).
    fn workloads(self) -> &'static str {
        match self {
            Mode::ReadHooked => "read",
            Mode::Raw => "getpid,read",
            _ => "getpid,kill,fork,read",
        }
    }

    /// `pidvirt floor --hooks H` for the floor-like modes.
    fn floor_hooks(self) -> Option<&'static str> {
        match self {
            Mode::Floor => Some("pidvirt"),
            Mode::ReadHooked => Some("read"),
            Mode::Raw => Some("raw"),
            _ => None,
        }
    }
}

struct Bench {
    pidvirt: PathBuf,
    generator: PathBuf,
    tmp: TempDir,
    opts: Options,
    cpu: usize,
    /// The bpftrace script, or why the peer is unavailable.
    peer: Result<PeerScript, String>,
}

struct PeerScript {
    path: PathBuf,
    tracepoints: usize,
}

impl Bench {
    fn pidvirt_cmd(&self) -> Command {
        Command::new(&self.pidvirt)
    }

    fn socket(&self, name: &str) -> PathBuf {
        self.tmp.0.join(format!("{name}.sock"))
    }

    /// `pidvirt run --socket <tmp>/NAME.sock --audit-log LOG`, ready once `status` answers.
    fn start_daemon(&self, name: &str, audit_log: &Path) -> anyhow::Result<Running> {
        let socket = self.socket(name);
        let mut cmd = self.pidvirt_cmd();
        cmd.arg("run").arg("--socket").arg(&socket).arg("--audit-log").arg(audit_log);
        let mut d =
            Running::spawn("pidvirt run", &mut cmd, libc::SIGTERM, &self.tmp.0.join(format!("{name}.log")))?;
        wait_for("pidvirt run to serve its socket", Duration::from_secs(60), || {
            d.check_alive()?;
            Ok(self.pidvirt_cmd().arg("status").arg("--socket").arg(&socket).output()?.status.success())
        })?;
        Ok(d)
    }

    fn start_mode(&self, mode: Mode) -> anyhow::Result<Option<Running>> {
        match mode {
            Mode::Bare => Ok(None),
            Mode::Floor | Mode::ReadHooked | Mode::Raw => {
                let hooks = mode.floor_hooks().unwrap_or("pidvirt");
                let log = self.tmp.0.join(format!("{}.log", mode.name()));
                let mut f = Running::spawn(
                    "pidvirt floor",
                    self.pidvirt_cmd().args(["floor", "--hooks", hooks]),
                    libc::SIGTERM,
                    &log,
                )?;
                wait_for("pidvirt floor to attach", Duration::from_secs(60), || {
                    f.check_alive()?;
                    Ok(std::fs::read_to_string(&log).unwrap_or_default().contains("empty programs attached"))
                })?;
                Ok(Some(f))
            }
            Mode::Pidvirt => self.start_daemon("syscalls", Path::new("/dev/null")).map(Some),
            Mode::Peer => {
                let script = self.peer.as_ref().map_err(|e| anyhow::anyhow!("peer unavailable: {e}"))?;
                let log = self.tmp.0.join("bpftrace.log");
                let mut b = Running::spawn(
                    "bpftrace",
                    Command::new("bpftrace").arg(&script.path),
                    libc::SIGINT,
                    &log,
                )?;
                let pid = b.pid();
                wait_for("bpftrace to attach every probe", Duration::from_secs(120), || {
                    b.check_alive()?;
                    Ok(perf_attachments(Some(pid))? >= script.tracepoints)
                })?;
                Ok(Some(b))
            }
        }
    }
}

/// `bpftool perf show`: perf-event attachments (tracepoints, kprobes), of one process or all.
fn perf_attachments(pid: Option<u32>) -> anyhow::Result<usize> {
    let v: Value = serde_json::from_str(&capture(Command::new("bpftool").args(["perf", "show", "--json"]))?)
        .unwrap_or(Value::Null);
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter(|e| pid.is_none_or(|p| e["pid"].as_u64() == Some(p as u64)))
        .filter(|e| e["fd_type"].as_str() != Some("raw_tracepoint"))
        .count())
}

/// Tracing attachments of anyone else (a daemon left running, a test suite, another tracer):
/// they would perturb `bare`. Answers a description, empty when the machine is quiet.
fn foreign_tracing() -> String {
    let links: Value = Command::new("bpftool")
        .args(["link", "show", "--json"])
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice(&o.stdout).ok())
        .unwrap_or(Value::Null);
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for l in links.as_array().into_iter().flatten() {
        let t = l["type"].as_str().unwrap_or("?");
        if matches!(t, "raw_tracepoint" | "tracing" | "perf_event" | "kprobe_multi" | "uprobe_multi") {
            *kinds.entry(format!("{t} link")).or_default() += 1;
        }
    }
    if let Ok(n) = perf_attachments(None)
        && n > 0
    {
        kinds.insert("perf-event attachment".into(), n);
    }
    let who: Vec<String> = capture(Command::new("bpftool").args(["perf", "show", "--json"]))
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .into_iter()
        .flat_map(|v| v.as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["pid"].as_u64())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|p| {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            format!("{p} ({})", comm.trim())
        })
        .collect();
    if kinds.is_empty() {
        return String::new();
    }
    let what: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
    format!(
        "{}{}",
        what.join(", "),
        if who.is_empty() { String::new() } else { format!("; pids {}", who.join(", ")) }
    )
}

/// The bpftrace peer: the same syscalls as pidvirt's hook list (pidvirt_common::audit::SYSCALLS),
/// each crossing counted per syscall and task, kill targets recorded, forks and exits followed.
fn peer_script() -> (String, usize) {
    let tracefs = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("events/syscalls").is_dir());
    let exists = |tp: &str| tracefs.is_none_or(|t| t.join("events/syscalls").join(tp).is_dir());
    let mut counted = Vec::new();
    for s in SYSCALLS.iter() {
        for (hooked, dir) in [(s.enter.is_some(), "enter"), (s.exit.is_some(), "exit")] {
            let tp = format!("sys_{dir}_{}", s.name);
            if hooked && exists(&tp) && tp != "sys_enter_kill" {
                counted.push(format!("tracepoint:syscalls:{tp}"));
            }
        }
    }
    let mut script = String::from(
        "// Generated by `cargo xtask bench` from pidvirt_common::audit::SYSCALLS: a minimal audit\n\
         // of the syscalls pidvirt watches (count per syscall and task, kill targets, fork/exit).\n",
    );
    let mut n = counted.len() + 2;
    if SYSCALLS[pidvirt_common::audit::sys::KILL as usize].enter.is_some() && exists("sys_enter_kill") {
        script.push_str("tracepoint:syscalls:sys_enter_kill { @kill[args->pid] = count(); @counts[probe, tid] = count(); }\n");
        n += 1;
    }
    let _ = writeln!(script, "{}\n{{ @counts[probe, tid] = count(); }}", counted.join(",\n"));
    script.push_str("tracepoint:sched:sched_process_fork { @tasks[args->child_pid] = args->parent_pid; }\n");
    script.push_str("tracepoint:sched:sched_process_exit { delete(@tasks[args->pid]); }\n");
    script.push_str("END { clear(@counts); clear(@kill); clear(@tasks); }\n");
    (script, n)
}

// ---------------------------------------------------------------------------------------------
// Statistics

fn median(v: &[f64]) -> Option<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => None,
        n if n % 2 == 1 => Some(s[n / 2]),
        n => Some((s[n / 2 - 1] + s[n / 2]) / 2.0),
    }
}

/// The q-quantile (0..=1) of `v`, interpolated linearly.
fn quantile(v: &[f64], q: f64) -> Option<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return None;
    }
    let pos = q * (s.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(s[lo] + (s[hi] - s[lo]) * (pos - lo as f64))
}

const WORKLOADS: [(&str, &str, bool); 4] = [
    ("getpid", "getpid (raw syscall)", true),
    ("kill", "kill(self, 0)", true),
    ("fork", "fork+exit+wait", true),
    ("read", "read 1 B of /dev/zero (unaudited)", false),
];

/// A workload's value in one round: ns per call, the median of the batch means.
fn round_value(v: &Value) -> f64 {
    v["ns_per_call"].as_f64().unwrap_or(f64::NAN)
}

struct Goal {
    name: String,
    measured: String,
    target: String,
    pass: Option<bool>,
}

impl Goal {
    fn new(
        name: impl Into<String>,
        measured: impl Into<String>,
        target: impl Into<String>,
        pass: Option<bool>,
    ) -> Self {
        Self { name: name.into(), measured: measured.into(), target: target.into(), pass }
    }
    fn verdict(&self) -> &'static str {
        match self.pass {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "N/A",
        }
    }
    fn json(&self) -> Value {
        json!({ "goal": self.name, "measured": self.measured, "target": self.target, "verdict": self.verdict() })
    }
}

fn fmt_opt(v: Option<f64>, prec: usize, prefix_plus: bool) -> String {
    match v {
        Some(x) if prefix_plus => format!("{x:+.prec$}"),
        Some(x) => format!("{x:.prec$}"),
        None => "n/a".into(),
    }
}

/// a / b, when b is a positive cost (an added cost at or below zero is noise: no ratio).
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Output: a plain-text report (stdout) and the same as markdown.
#[derive(Default)]
struct Report {
    text: String,
    md: String,
}

impl Report {
    fn heading(&mut self, s: &str) {
        let _ = writeln!(self.text, "\n== {s}");
        let _ = writeln!(self.md, "\n#### {s}\n");
    }
    fn note(&mut self, s: &str) {
        let _ = writeln!(self.text, "{s}");
        let _ = writeln!(self.md, "{s}\n");
    }
    fn table(&mut self, header: &[&str], rows: &[Vec<String>]) {
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for r in rows {
            for (i, c) in r.iter().enumerate() {
                widths[i] = widths[i].max(c.len());
            }
        }
        // Numeric columns right-aligned, text left-aligned.
        let numeric: Vec<bool> = (0..header.len())
            .map(|i| {
                i > 0
                    && rows.iter().all(|r| {
                        r[i] == "n/a"
                            || r[i].starts_with(|c: char| c.is_ascii_digit() || c == '+' || c == '-')
                    })
            })
            .collect();
        let line = |cells: Vec<String>| -> String {
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if numeric[i] {
                        format!("{c:>w$}", w = widths[i])
                    } else {
                        format!("{c:<w$}", w = widths[i])
                    }
                })
                .collect::<Vec<_>>()
                .join("  ")
        };
        let _ = writeln!(self.text, "{}", line(header.iter().map(|s| s.to_string()).collect()));
        for r in rows {
            let _ = writeln!(self.text, "{}", line(r.clone()));
        }
        let _ = writeln!(self.md, "| {} |", header.join(" | "));
        let _ = writeln!(
            self.md,
            "|{}",
            numeric.iter().map(|n| if *n { " ---: |" } else { " --- |" }).collect::<String>()
        );
        for r in rows {
            let _ = writeln!(self.md, "| {} |", r.join(" | "));
        }
        self.md.push('\n');
    }
    fn goals(&mut self, goals: &[Goal]) {
        let rows: Vec<Vec<String>> = goals
            .iter()
            .map(|g| vec![g.verdict().to_string(), g.name.clone(), g.measured.clone(), g.target.clone()])
            .collect();
        self.table(&["result", "goal", "measured", "target"], &rows);
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Syscall overhead

fn syscall_section(b: &mut Bench, report: &mut Report, goals: &mut Vec<Goal>) -> anyhow::Result<Value> {
    // Rounds: ns per call by mode and workload, and whether someone else was tracing meanwhile.
    struct Round {
        ns: BTreeMap<Mode, BTreeMap<&'static str, f64>>,
        attach_ms: BTreeMap<Mode, f64>,
        foreign: String,
    }
    let mut rounds: Vec<Round> = Vec::new();
    let mut peer_error: Option<String> = b.peer.as_ref().err().cloned();
    let wait_quiet = |limit: Duration| -> String {
        let mut foreign = foreign_tracing();
        if !foreign.is_empty() && !limit.is_zero() {
            println!(
                "[bench] waiting up to {:.0} s for other tracing programs to go: {foreign}",
                limit.as_secs_f64()
            );
        }
        let deadline = Instant::now() + limit;
        while !foreign.is_empty() && Instant::now() < deadline && check_interrupted().is_ok() {
            std::thread::sleep(Duration::from_millis(500));
            foreign = foreign_tracing();
        }
        foreign
    };
    // Wait for a quiet machine first: another tracer (a test daemon...) would perturb `bare`.
    let mut foreign = wait_quiet(Duration::from_secs(b.opts.quiet_wait));
    // One process measures every mode of every round (see pidvirt-bench serve).
    let mut generator = Generator::start(&b.generator, b.cpu)?;
    // Once before the rounds, not counted: the process's first runs pay for faulting itself in.
    generator.run(Mode::Bare.workloads(), &b.opts).context("load generator warm-up")?;
    let started = Instant::now();
    let budget = Duration::from_secs(b.opts.time_budget);
    let clean = |rounds: &[Round]| rounds.iter().filter(|r| r.foreign.is_empty()).count();
    // A perturbed round is run again while the time budget lasts (at most 3x the rounds); at
    // least 3 rounds run whatever the budget.
    while clean(&rounds) < b.opts.rounds
        && rounds.len() < 3 * b.opts.rounds
        && (rounds.len() < 3 || started.elapsed() < budget)
    {
        check_interrupted()?;
        let attempt = rounds.len();
        if attempt > 0 {
            foreign = wait_quiet(budget.saturating_sub(started.elapsed()).min(Duration::from_secs(20)));
        }
        let mut round = Round { ns: BTreeMap::new(), attach_ms: BTreeMap::new(), foreign: foreign.clone() };
        let mut order = MODES.to_vec();
        order.rotate_left(attempt % MODES.len());
        let mut line = format!("[bench] round {} (clean so far {}):", attempt + 1, clean(&rounds));
        for mode in order {
            if mode == Mode::Peer && peer_error.is_some() {
                continue;
            }
            // Nothing of ours is attached between modes: anything attached is someone else's.
            if round.foreign.is_empty() {
                round.foreign = foreign_tracing();
            }
            let t = Instant::now();
            let guard = match b.start_mode(mode) {
                Ok(g) => g,
                Err(e) if mode == Mode::Peer => {
                    println!("[bench] peer unavailable: {e:#}");
                    peer_error = Some(format!("{e:#}"));
                    continue;
                }
                Err(e) => return Err(e.context(format!("starting mode {}", mode.name()))),
            };
            round.attach_ms.insert(mode, t.elapsed().as_secs_f64() * 1e3);
            let v = generator
                .run(mode.workloads(), &b.opts)
                .with_context(|| format!("load generator under mode {}", mode.name()))?;
            drop(guard);
            check_interrupted()?;
            let _ = write!(line, " {}", mode.name());
            let per = round.ns.entry(mode).or_default();
            for (w, _, _) in WORKLOADS {
                if v.get(w).is_none() {
                    continue;
                }
                let ns = round_value(&v[w]);
                per.insert(w, ns);
                let _ = write!(line, " {w}={ns:.0}");
            }
            let _ = write!(line, ";");
        }
        if round.foreign.is_empty() {
            round.foreign = foreign_tracing();
        }
        println!("{line}");
        if !round.foreign.is_empty() {
            println!("[bench] round {} perturbed (someone else was tracing: {})", attempt + 1, round.foreign);
        }
        rounds.push(round);
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Clean rounds only, if there are enough of them (3); else every round, flagged.
    let n_clean = clean(&rounds);
    let use_all = n_clean < 3.min(b.opts.rounds);
    let used: Vec<&Round> = rounds.iter().filter(|r| use_all || r.foreign.is_empty()).collect();
    let perturbed: Vec<Value> = rounds
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.foreign.is_empty())
        .map(|(i, r)| json!({ "round": i + 1, "foreign": r.foreign }))
        .collect();
    let mut results: BTreeMap<Mode, BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
    for r in &used {
        for (m, per) in &r.ns {
            for (w, ns) in per {
                results.entry(*m).or_default().entry(w).or_default().push(*ns);
            }
        }
    }
    let median_of = |m: Mode, w: &str| results.get(&m).and_then(|r| r.get(w)).and_then(|v| median(v));
    // Added ns: median over rounds of (mode - bare) in the same round.
    let diffs = |m: Mode, w: &str| -> Vec<f64> {
        used.iter().filter_map(|r| Some(r.ns.get(&m)?.get(w)? - r.ns.get(&Mode::Bare)?.get(w)?)).collect()
    };
    let added = |m: Mode, w: &str| median(&diffs(m, w));
    // "+median [p25..p75]" of the per-round differences.
    let cell = |m: Mode, w: &str| -> String {
        let d = diffs(m, w);
        match (median(&d), quantile(&d, 0.25), quantile(&d, 0.75)) {
            (Some(x), Some(lo), Some(hi)) => format!("{x:+.1} [{lo:+.0}..{hi:+.0}]"),
            _ => "n/a".into(),
        }
    };
    let attach_ms: BTreeMap<&str, Option<f64>> = MODES[1..]
        .iter()
        .map(|m| {
            (m.name(), median(&used.iter().filter_map(|r| r.attach_ms.get(m).copied()).collect::<Vec<_>>()))
        })
        .collect();
    let peer_ok = peer_error.is_none();

    report.heading("Syscall overhead (ns per call)");
    report.note(&format!(
        "Every workload of every mode and round runs in ONE process pinned to CPU {}, the init of one pid \
         namespace (pidvirt-bench serve: a process's own layout, which fork copies, then weighs the same \
         on every mode); a round's value is the median of {} \
         batches' means of {} calls ({} batches of {} for fork+exit+wait), timed with CLOCK_MONOTONIC. {} \
         rounds ({}); the \
         modes alternate round by round (rotating order). bare: median ns per call with nothing attached; \
         +floor / +pidvirt / +peer: ns ADDED over bare (median of the per-round differences, \
         [25th..75th percentile] of them). floor = \
         EMPTY programs on exactly pidvirt's hooks; peer = bpftrace counting the same syscalls per \
         syscall and task, kill targets, fork/exit ({}).",
        b.cpu,
        b.opts.batches,
        b.opts.iters,
        b.opts.fork_batches,
        b.opts.fork_iters,
        used.len(),
        if use_all && !perturbed.is_empty() {
            format!("PERTURBED: only {n_clean} of {} ran with no one else tracing", rounds.len())
        } else if perturbed.is_empty() {
            "no one else was tracing".to_string()
        } else {
            format!("{} perturbed round(s), when someone else was tracing, discarded", perturbed.len())
        },
        match (&b.peer, &peer_error) {
            (Ok(s), None) => format!("{} tracepoints", s.tracepoints),
            (_, Some(e)) => format!("UNAVAILABLE: {e}"),
            (Err(e), _) => format!("UNAVAILABLE: {e}"),
        }
    ));
    let mut rows = Vec::new();
    let mut workloads = serde_json::Map::new();
    for (w, label, audited) in WORKLOADS {
        let (f, p, q) = (
            added(Mode::Floor, w),
            added(Mode::Pidvirt, w),
            if peer_ok { added(Mode::Peer, w) } else { None },
        );
        let bare_ns = median_of(Mode::Bare, w);
        rows.push(vec![
            label.to_string(),
            fmt_opt(bare_ns, 1, false),
            cell(Mode::Floor, w),
            cell(Mode::Pidvirt, w),
            if peer_ok { cell(Mode::Peer, w) } else { "unavailable".into() },
            ratio(p, f).map_or("n/a".into(), |r| format!("{r:.2}x")),
            ratio(p, q).map_or("n/a".into(), |r| format!("{r:.2}x")),
        ]);
        let pf = ratio(p, f);
        if audited {
            goals.push(Goal::new(
                format!("{label}: pidvirt added <= 1.3x floor added"),
                match pf {
                    Some(r) => format!("{r:.2}x ({} vs {} ns)", fmt_opt(p, 1, true), fmt_opt(f, 1, true)),
                    None => format!(
                        "no ratio: floor added {} ns (noise), pidvirt {} ns",
                        fmt_opt(f, 1, true),
                        fmt_opt(p, 1, true)
                    ),
                },
                "<= 1.30x",
                pf.map(|r| r <= 1.3),
            ));
            goals.push(Goal::new(
                format!("{label}: pidvirt added below the peer's"),
                match (p, q) {
                    (Some(p), Some(q)) if q > 0.0 => format!("{p:+.1} vs {q:+.1} ns"),
                    (Some(p), Some(q)) => {
                        format!("no comparison: peer added {q:+.1} ns (noise), pidvirt {p:+.1}")
                    }
                    _ => "peer unavailable".into(),
                },
                "pidvirt < peer",
                // An addition at or below zero is noise (as for the ratios): nothing to compare.
                match (p, q) {
                    (Some(p), Some(q)) if q > 0.0 => Some(p < q),
                    _ => None,
                },
            ));
        }
        let rounds: serde_json::Map<String, Value> =
            results.iter().map(|(m, r)| (m.name().to_string(), json!(r.get(w)))).collect();
        workloads.insert(
            w.to_string(),
            json!({
                "label": label, "audited": audited,
                "bare_ns": bare_ns,
                "floor_ns": median_of(Mode::Floor, w), "pidvirt_ns": median_of(Mode::Pidvirt, w),
                "peer_ns": if peer_ok { median_of(Mode::Peer, w) } else { None },
                "floor_added_ns": f, "pidvirt_added_ns": p, "peer_added_ns": q,
                "pidvirt_added_over_floor_added": pf, "pidvirt_added_over_peer_added": ratio(p, q),
                "ns_per_call_by_round": rounds,
                "added_ns_by_round": MODES[1..].iter().map(|m| (m.name(), diffs(*m, w))).collect::<BTreeMap<_, _>>(),
                "added_ns_p25_p75": MODES[1..].iter()
                    .map(|m| (m.name(), [quantile(&diffs(*m, w), 0.25), quantile(&diffs(*m, w), 0.75)]))
                    .collect::<BTreeMap<_, _>>(),
            }),
        );
    }
    report.table(
        &["workload", "bare ns", "+floor ns", "+pidvirt ns", "+peer ns", "pidvirt/floor", "pidvirt/peer"],
        &rows,
    );
    report.note(&format!(
        "fork+exit+wait: {} batches of {} per round, ~{:.0} ms each: long enough to hold the work the \
         kernel defers to RCU callbacks (freeing the task, and the programs on sched_process_free), short \
         enough that a burst of host noise spoils few of them; the median of their means is the round's \
         value. The in-kernel time of every program is broken down below (bpf_stats).",
        b.opts.fork_batches,
        b.opts.fork_iters,
        median_of(Mode::Bare, "fork").map_or(0.0, |ns| ns * b.opts.fork_iters as f64 / 1e6),
    ));
    let rate_by_round: Vec<f64> = used
        .iter()
        .filter_map(|r| Some(r.ns.get(&Mode::Bare)?.get("fork")? / r.ns.get(&Mode::Pidvirt)?.get("fork")?))
        .collect();
    let fork_rate = median(&rate_by_round);
    report.note(&format!(
        "fork+exit+wait rate with pidvirt: {} of bare (median of the rounds' ratios; {} vs {} per second)",
        fork_rate.map_or("n/a".into(), |r| format!("{r:.3}x")),
        fmt_opt(median_of(Mode::Pidvirt, "fork").map(|ns| 1e9 / ns), 0, false),
        fmt_opt(median_of(Mode::Bare, "fork").map(|ns| 1e9 / ns), 0, false),
    ));

    // Syscalls pidvirt does not audit: what the design taxes them with, against hooking them.
    report.heading("Syscalls pidvirt does not audit: what each design adds (ns per call)");
    report.note(
        "Per-syscall tracepoints (pidvirt's design) put a program on the audited syscalls only; every \
         other syscall pays just the kernel's slow path for traced syscalls. A design on the raw \
         sys_enter/sys_exit tracepoints runs a program on every syscall. Yardstick: EMPTY programs on \
         read's own sys_enter_read/sys_exit_read tracepoints, i.e. what hooking read would cost it. Same \
         rounds, same statistics as above.",
    );
    let dash = || "-".to_string();
    report.table(
        &["design (EMPTY programs unless pidvirt)", "+ns read (unaudited)", "+ns getpid (audited)"],
        &[
            vec![
                "per-syscall tracepoints: pidvirt's hooks (floor)".into(),
                cell(Mode::Floor, "read"),
                cell(Mode::Floor, "getpid"),
            ],
            vec!["pidvirt".into(), cell(Mode::Pidvirt, "read"), cell(Mode::Pidvirt, "getpid")],
            vec![
                "per-syscall tracepoints: read's own (read hooked)".into(),
                cell(Mode::ReadHooked, "read"),
                dash(),
            ],
            vec![
                "raw sys_enter/sys_exit (every syscall)".into(),
                cell(Mode::Raw, "read"),
                cell(Mode::Raw, "getpid"),
            ],
        ],
    );
    let (p_read, f_read) = (added(Mode::Pidvirt, "read"), added(Mode::Floor, "read"));
    let unaudited = ratio(p_read, f_read);
    goals.push(Goal::new(
        "read 1 B of /dev/zero (unaudited): pidvirt added <= 1.3x EMPTY programs on per-syscall tracepoints (floor)",
        match unaudited {
            Some(r) => format!("{r:.2}x ({} vs {} ns)", fmt_opt(p_read, 1, true), fmt_opt(f_read, 1, true)),
            None => format!("no ratio: floor added {} ns (noise), pidvirt {} ns", fmt_opt(f_read, 1, true), fmt_opt(p_read, 1, true)),
        },
        "<= 1.30x",
        unaudited.map(|r| r <= 1.3),
    ));
    report.note(&format!(
        "Neither pidvirt nor its floor attaches anything to read: what both add to it ({} and {} ns here) is \
         the kernel's slow path for syscalls while any syscall tracepoint is enabled, the same for both; their \
         difference per round is {}.",
        fmt_opt(p_read, 1, true),
        fmt_opt(f_read, 1, true),
        {
            let d: Vec<f64> = used
                .iter()
                .filter_map(|r| {
                    Some(r.ns.get(&Mode::Pidvirt)?.get("read")? - r.ns.get(&Mode::Floor)?.get("read")?)
                })
                .collect();
            match (median(&d), quantile(&d, 0.25), quantile(&d, 0.75)) {
                (Some(x), Some(lo), Some(hi)) => format!("{x:+.1} ns [{lo:+.0}..{hi:+.0}]"),
                _ => "n/a".into(),
            }
        }
    ));
    goals.push(Goal::new(
        "fork+exit+wait rate with pidvirt >= 0.9x bare",
        fork_rate.map_or("n/a".into(), |r| format!("{r:.3}x")),
        ">= 0.90x",
        fork_rate.map(|r| r >= 0.9),
    ));
    if use_all && !perturbed.is_empty() {
        report.note(&format!(
            "WARNING: {} of {} rounds ran while someone else had tracing programs attached: the numbers are \
             perturbed (bare then pays the tracepoint cost too). Rerun on a quiet machine.",
            perturbed.len(),
            rounds.len()
        ));
    }
    report.note(&format!(
        "Time to attach (median): floor {} ms, pidvirt {} ms (until `status` answers), peer {} ms (until \
         bpftool perf show lists every probe).",
        fmt_opt(attach_ms["floor"], 0, false),
        fmt_opt(attach_ms["pidvirt"], 0, false),
        fmt_opt(attach_ms["peer"], 0, false),
    ));
    Ok(json!({
        "rounds_wanted": b.opts.rounds, "rounds_run": rounds.len(), "rounds_used": used.len(),
        "clean_rounds": n_clean, "perturbed_rounds_used": use_all && !perturbed.is_empty(),
        "attach_ms_median": attach_ms,
        "all_rounds": rounds.iter().enumerate().map(|(i, r)| json!({
            "round": i + 1, "foreign": r.foreign,
            "ns_per_call": r.ns.iter().map(|(m, v)| (m.name(), v)).collect::<BTreeMap<_, _>>(),
            "attach_ms": r.attach_ms.iter().map(|(m, v)| (m.name(), v)).collect::<BTreeMap<_, _>>(),
        })).collect::<Vec<_>>(),
        "batches": b.opts.batches, "iters": b.opts.iters, "fork_iters": b.opts.fork_iters,
        "fork_batches": b.opts.fork_batches,
        "cpu": b.cpu, "elapsed_s": elapsed,
        "peer": { "available": peer_ok, "reason": peer_error,
                  "tracepoints": b.peer.as_ref().ok().map(|s| s.tracepoints),
                  "script": b.peer.as_ref().ok().and_then(|s| std::fs::read_to_string(&s.path).ok()) },
        "workloads": workloads,
        "fork_rate_pidvirt_over_bare": fork_rate,
        "perturbed_rounds": perturbed,
    }))
}

// ---------------------------------------------------------------------------------------------
// 1b. In-kernel program time (bpf_stats)

/// Turns the kernel's BPF run-time statistics on while it lives (they cost every program run
/// two clock reads, so never during the timed rounds); restores the previous setting.
struct BpfStats {
    previous: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> anyhow::Result<Self> {
        let previous = std::fs::read_to_string(BPF_STATS).with_context(|| BPF_STATS.to_string())?;
        std::fs::write(BPF_STATS, "1").with_context(|| format!("enable {BPF_STATS}"))?;
        Ok(Self { previous: previous.trim().to_string() })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, &self.previous);
    }
}

/// Loaded programs: id -> (name, run_time_ns, run_cnt).
fn prog_stats() -> anyhow::Result<BTreeMap<u64, (String, u64, u64)>> {
    let v: Value = serde_json::from_str(&capture(Command::new("bpftool").args(["prog", "show", "--json"]))?)
        .context("bpftool prog show --json")?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["id"].as_u64()?,
                (
                    p["name"].as_str().unwrap_or("?").to_string(),
                    p["run_time_ns"].as_u64().unwrap_or(0),
                    p["run_cnt"].as_u64().unwrap_or(0),
                ),
            ))
        })
        .collect())
}

/// What one program did during one workload.
struct ProgTime {
    name: String,
    runs: u64,
    ns: u64,
}

fn kernel_time_section(b: &mut Bench, report: &mut Report, _goals: &mut Vec<Goal>) -> anyhow::Result<Value> {
    let forks = b.opts.fork_iters * b.opts.fork_batches as u64;
    let workloads = [("getpid", b.opts.iters), ("kill", b.opts.iters), ("fork", forks)];
    let mut modes = vec![Mode::Floor, Mode::Pidvirt];
    if b.peer.is_ok() {
        modes.push(Mode::Peer);
    }
    let mut generator = Generator::start(&b.generator, b.cpu)?;
    let stats = BpfStats::enable()?;
    // (mode, workload) -> per-program times, and the calls made.
    let mut measured: BTreeMap<(Mode, &str), (Vec<ProgTime>, u64)> = BTreeMap::new();
    for &mode in &modes {
        check_interrupted()?;
        let others = prog_stats()?;
        let guard = b.start_mode(mode).with_context(|| format!("starting mode {}", mode.name()))?;
        for (w, iters) in workloads {
            let before = prog_stats()?;
            generator
                .request(w, [iters, 1, iters, 1])
                .with_context(|| format!("load generator ({w}) under mode {}", mode.name()))?;
            let after = prog_stats()?;
            // The generator warms up with a tenth of the calls first (pidvirt-bench batches).
            let calls = iters + (iters / 10).max(1);
            let progs = after
                .iter()
                .filter(|(id, _)| !others.contains_key(id))
                .filter_map(|(id, (name, ns, runs))| {
                    let (_, ns0, runs0) = before.get(id)?;
                    (runs > runs0).then(|| ProgTime { name: name.clone(), runs: runs - runs0, ns: ns - ns0 })
                })
                .collect();
            measured.insert((mode, w), (progs, calls));
        }
        drop(guard);
    }
    drop(stats);

    // bpf_stats' own cost per run: what an EMPTY program measures.
    let (empty_ns, empty_runs) = measured
        .iter()
        .filter(|((m, _), _)| *m == Mode::Floor)
        .flat_map(|(_, (progs, _))| progs.iter())
        .fold((0u64, 0u64), |(ns, runs), p| (ns + p.ns, runs + p.runs));
    let per_run = if empty_runs > 0 { empty_ns as f64 / empty_runs as f64 } else { f64::NAN };
    let per_call = |mode: Mode, w: &str| -> Option<(f64, f64)> {
        let (progs, calls) = measured.get(&(mode, w))?;
        let ns: u64 = progs.iter().map(|p| p.ns).sum();
        let runs: u64 = progs.iter().map(|p| p.runs).sum();
        Some((ns as f64 / *calls as f64, runs as f64 / *calls as f64))
    };

    report.heading("In-kernel program time per call (bpf_stats)");
    report.note(&format!(
        "The same workloads once more under each mode with the kernel's BPF run-time statistics on \
         (kernel.bpf_stats_enabled): the time spent INSIDE the programs, summed over every program run \
         during the workload, per call. It leaves out the tracepoints' own dispatch (which the floor's \
         added ns above is made of) and each run includes the statistics' own two clock reads: {per_run:.1} \
         ns per run, what the floor's EMPTY programs measure. pidvirt minus floor is what pidvirt's \
         program bodies cost: the part of its added ns above the floor's."
    ));
    let mut rows = Vec::new();
    for (w, _) in workloads {
        let cell = |m: Mode| match per_call(m, w) {
            Some((ns, runs)) => format!("{ns:.1} ({runs:.2} runs)"),
            None => "n/a".into(),
        };
        let bodies = match (per_call(Mode::Pidvirt, w), per_call(Mode::Floor, w)) {
            (Some((p, _)), Some((f, _))) => format!("{:+.1}", p - f),
            _ => "n/a".into(),
        };
        rows.push(vec![
            WORKLOADS.iter().find(|(n, _, _)| *n == w).map_or(w, |(_, l, _)| l).to_string(),
            cell(Mode::Floor),
            cell(Mode::Pidvirt),
            if b.peer.is_ok() { cell(Mode::Peer) } else { "unavailable".into() },
            bodies,
        ]);
    }
    report.table(&["workload", "floor ns", "pidvirt ns", "peer ns", "pidvirt - floor"], &rows);
    // Where fork+exit+wait goes, program by program.
    let mut rows = Vec::new();
    for &mode in &modes[1..] {
        let Some((progs, calls)) = measured.get(&(mode, "fork")) else { continue };
        let mut progs: Vec<&ProgTime> = progs.iter().collect();
        progs.sort_by_key(|p| std::cmp::Reverse(p.ns));
        for p in progs {
            let runs = p.runs as f64 / *calls as f64;
            if runs < 0.01 {
                continue;
            }
            let ns_run = p.ns as f64 / p.runs as f64;
            rows.push(vec![
                mode.name().to_string(),
                p.name.clone(),
                format!("{runs:.2}"),
                format!("{ns_run:.1}"),
                format!("{:.1}", ns_run - per_run),
                format!("{:.1}", p.ns as f64 / *calls as f64),
            ]);
        }
    }
    report.note("fork+exit+wait, program by program (runs per call, and ns per run with and without the statistics' own cost):");
    report.table(&["mode", "program", "runs/call", "ns/run", "ns/run - stats", "ns/call"], &rows);

    let json_of = |(progs, calls): &(Vec<ProgTime>, u64)| {
        json!({
            "calls": calls,
            "programs": progs.iter().map(|p| json!({ "name": p.name, "runs": p.runs, "run_time_ns": p.ns })).collect::<Vec<_>>(),
        })
    };
    Ok(json!({
        "stats_ns_per_run": per_run,
        "by_mode": modes.iter().map(|m| (m.name(), workloads.iter()
            .filter_map(|(w, _)| Some((w.to_string(), json_of(measured.get(&(*m, *w))?))))
            .collect::<serde_json::Map<_, _>>())).collect::<BTreeMap<_, _>>(),
    }))
}

// ---------------------------------------------------------------------------------------------
// 2. P4: anomaly throughput

fn p4_section(b: &mut Bench, report: &mut Report, goals: &mut Vec<Goal>) -> anyhow::Result<Value> {
    let log = b.tmp.0.join("audit.jsonl");
    let socket = b.socket("p4");
    check_interrupted()?;
    let mut daemon = b.start_daemon("p4", &log)?;
    let t_gen = Instant::now();
    let leak = capture_json(Command::new(&b.generator).args([
        "leak",
        "--seconds",
        &b.opts.leak_seconds.to_string(),
        "--cpu",
        &b.cpu.to_string(),
    ]))?;
    let generated = leak["generated"].as_u64().unwrap_or(0);
    let esrch = leak["esrch"].as_u64().unwrap_or(0);
    let gen_s = leak["elapsed_s"].as_f64().unwrap_or(f64::NAN);
    let container = format!("pidns-{}", leak["pidns"].as_u64().unwrap_or(0));
    // Wait until the sink stops growing; note when it reached its final count.
    let written = || -> anyhow::Result<u64> {
        let v = capture_json(b.pidvirt_cmd().args(["stats", "--json", "--socket"]).arg(&socket))?;
        Ok(v["audit_log"]["written"].as_u64().unwrap_or(0))
    };
    let (mut last, mut last_change, mut stable) = (written()?, t_gen.elapsed(), 0);
    let drain_deadline = Instant::now() + Duration::from_secs(120);
    while stable < 15 && Instant::now() < drain_deadline {
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(20));
        let w = written()?;
        if w != last {
            (last, last_change, stable) = (w, t_gen.elapsed(), 0);
        } else {
            stable += 1;
        }
    }
    check_interrupted()?;
    let stats = capture_json(
        b.pidvirt_cmd().args(["stats", "--json", "--container", &container, "--socket"]).arg(&socket),
    )?;
    let counted = stats["crossings"]["kill"]["leak"].as_u64();
    let drops = stats["ringbuf_drops"].as_u64();
    daemon.check_alive()?;
    drop(daemon); // closes (flushes) the audit log
    let count = capture_json(Command::new(&b.generator).args(["audit-count", "--log"]).arg(&log).args([
        "--container",
        &container,
        "--verdict",
        "leak",
        "--syscall",
        "kill",
    ]))?;
    let log_bytes = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(&log);
    let delivered = count["matched"].as_u64().unwrap_or(0);
    let sink_s = last_change.as_secs_f64();
    let rate_sink = delivered as f64 / sink_s;
    let rate_gen_window = delivered as f64 / gen_s;
    let gen_rate = generated as f64 / gen_s;
    let accounted = drops.map(|d| delivered + d);

    report.heading("P4: anomaly throughput (leak crossings into the JSON sink)");
    report.note(&format!(
        "A process in a fresh pid namespace ({container}) calls kill(H, 0) in a tight loop for {:.1} s, H the \
         host pid of a sibling that is no vpid inside (ESRCH), while `pidvirt run --audit-log FILE` runs. \
         delivered = audit-log lines of that container with verdict leak; counted = stats crossings.kill.leak; \
         dropped = stats ringbuf_drops of the container. Sink rate = delivered / time from the start of \
         generation until the sink stopped growing.",
        b.opts.leak_seconds
    ));
    let rows = vec![
        vec!["generated (kill calls, all ESRCH)".into(), format!("{generated} ({esrch} ESRCH)")],
        vec!["generation rate".into(), format!("{gen_rate:.0} /s")],
        vec![
            "counted by pidvirt (crossings.kill.leak)".into(),
            counted.map_or("n/a".into(), |c| c.to_string()),
        ],
        vec!["delivered to the JSON sink".into(), delivered.to_string()],
        vec!["dropped (ringbuf_drops)".into(), drops.map_or("n/a".into(), |d| d.to_string())],
        vec!["delivered + dropped".into(), accounted.map_or("n/a".into(), |a| a.to_string())],
        vec![
            "sink rate (until the sink caught up)".into(),
            format!("{rate_sink:.0} events/s over {sink_s:.2} s"),
        ],
        vec!["delivered / generation time".into(), format!("{rate_gen_window:.0} events/s")],
        vec!["audit log written".into(), format!("{:.1} MiB", log_bytes as f64 / 1048576.0)],
    ];
    report.table(&["P4", "value"], &rows);
    goals.push(Goal::new(
        "P4: leak events reaching the JSON sink",
        format!("{rate_sink:.0} /s"),
        ">= 200000 /s",
        Some(rate_sink >= 200_000.0),
    ));
    goals.push(Goal::new(
        "P4: every drop counted (generated == delivered + dropped)",
        format!("{generated} == {}", accounted.map_or("n/a".into(), |a| a.to_string())),
        "equal",
        Some(accounted == Some(generated)),
    ));
    goals.push(Goal::new(
        "P4: every crossing counted (counted == generated)",
        format!("{} vs {generated}", counted.map_or("n/a".into(), |c| c.to_string())),
        "equal",
        Some(counted == Some(generated)),
    ));
    Ok(json!({
        "container": container, "target_host_pid": leak["target_host_pid"], "seconds": gen_s,
        "generated": generated, "esrch": esrch, "generated_per_s": gen_rate,
        "counted_kill_leak": counted, "delivered": delivered, "ringbuf_drops": drops,
        "delivered_plus_dropped": accounted,
        "sink_caught_up_after_s": sink_s, "delivered_per_s_until_caught_up": rate_sink,
        "delivered_per_generation_s": rate_gen_window,
        "audit_log_lines": count["lines"], "audit_log_bytes": log_bytes,
    }))
}

// ---------------------------------------------------------------------------------------------
// 3 and 4. P5 attach time, P6 memory per task

const MAPS: [&str; 7] = [map::TASKS, map::VIRT, map::DEEP, map::PIDNS, map::COUNTS, map::LIVE_TIDS, map::SEEDED_TIDS];

/// The daemon's maps (those it holds fds of), by name, from `bpftool map show --json`.
fn daemon_maps(pid: u32) -> anyhow::Result<BTreeMap<String, Value>> {
    let mut ids = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))?.flatten() {
        let info = std::fs::read_to_string(e.path()).unwrap_or_default();
        if let Some(id) =
            info.lines().find_map(|l| l.strip_prefix("map_id:")).and_then(|v| v.trim().parse::<u64>().ok())
        {
            ids.insert(id);
        }
    }
    let all: Value =
        serde_json::from_str(&capture(Command::new("bpftool").args(["map", "show", "--json"]))?)?;
    let mut out = BTreeMap::new();
    for m in all.as_array().into_iter().flatten() {
        let (Some(id), Some(name)) = (m["id"].as_u64(), m["name"].as_str()) else { continue };
        if ids.contains(&id) && MAPS.contains(&name) {
            out.insert(
                name.to_string(),
                json!({ "id": id, "type": m["type"], "bytes_key": m["bytes_key"], "bytes_value": m["bytes_value"],
                        "max_entries": m["max_entries"], "bytes_memlock": m["bytes_memlock"] }),
            );
        }
    }
    for name in MAPS {
        if !out.contains_key(name) {
            bail!("map {name} of pidvirt run (pid {pid}) not found in bpftool map show");
        }
    }
    Ok(out)
}

struct Snapshot {
    maps: BTreeMap<String, Value>,
    ps: Value,
}

impl Snapshot {
    fn take(b: &Bench, daemon: &Running, socket: &Path) -> anyhow::Result<Self> {
        let ps = capture_json(
            Command::new(&b.generator)
                .args(["ps-check", "--pidvirt"])
                .arg(&b.pidvirt)
                .arg("--socket")
                .arg(socket),
        )?;
        Ok(Self { maps: daemon_maps(daemon.pid())?, ps })
    }
    fn tasks(&self) -> u64 {
        self.ps["tasks"].as_u64().unwrap_or(0)
    }
    fn levels(&self) -> BTreeMap<u64, u64> {
        self.ps["levels"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_u64()?)))
            .collect()
    }
    fn nested(&self) -> u64 {
        self.levels().iter().filter(|(l, _)| **l >= 1).map(|(_, n)| n).sum()
    }
    fn field(&self, map: &str, f: &str) -> u64 {
        self.maps.get(map).and_then(|m| m[f].as_u64()).unwrap_or(0)
    }
    fn memlock(&self) -> u64 {
        MAPS.iter().map(|m| self.field(m, "bytes_memlock")).sum()
    }
    /// Map value bytes of every tracked task: a TASKS value each, a VIRT value per non-host
    /// level, a DEEP value for tasks nested deeper than the inline levels (4 and more).
    fn value_bytes(&self) -> u64 {
        let (t, v, d) = (
            self.field(map::TASKS, "bytes_value"),
            self.field(map::VIRT, "bytes_value"),
            self.field(map::DEEP, "bytes_value"),
        );
        self.levels().iter().map(|(l, n)| n * (t + l * v + if *l >= 4 { d } else { 0 })).sum()
    }
    fn json(&self) -> Value {
        json!({ "tasks": self.tasks(), "tasks_by_level": self.ps["levels"], "tasks_level_ge_1": self.nested(),
                "maps": self.maps, "memlock_bytes": self.memlock(), "map_value_bytes": self.value_bytes() })
    }
}

fn p5_p6_section(b: &mut Bench, report: &mut Report, goals: &mut Vec<Goal>) -> anyhow::Result<Value> {
    let namespaces = b.opts.namespaces.max(1);
    let per_ns = b.opts.tasks.div_ceil(namespaces).max(1);
    let total = namespaces * per_ns;
    // P6 "before": a daemon on the host as it is.
    let sock6 = b.socket("p6");
    check_interrupted()?;
    let d6 = b.start_daemon("p6", Path::new("/dev/null"))?;
    let before = Snapshot::take(b, &d6, &sock6)?;
    println!("[bench] spawning {total} sleeping processes in {namespaces} pid namespaces");
    let t_spawn = Instant::now();
    check_interrupted()?;
    let spawned = Spawned::start(&b.generator, namespaces, per_ns, &b.tmp.0.join("spawned.json"))?;
    let spawn_s = t_spawn.elapsed().as_secs_f64();
    if spawned.count != total {
        bail!("pidvirt-bench spawn made {} processes, not {total}", spawned.count);
    }
    // Tracked by the fork program as they were born; wait until `ps` lists them all.
    let live = ps_check(b, &sock6, &spawned)?;
    check_interrupted()?;
    let after = Snapshot::take(b, &d6, &sock6)?;
    drop(d6);

    // P5: a daemon started on a host that already has them.
    check_interrupted()?;
    let sock5 = b.socket("p5");
    let t0 = Instant::now();
    let mut cmd = b.pidvirt_cmd();
    cmd.arg("run").arg("--socket").arg(&sock5).args(["--audit-log", "/dev/null"]);
    let d5 = Running::spawn("pidvirt run", &mut cmd, libc::SIGTERM, &b.tmp.0.join("p5.log"))?;
    let attach = ps_check(b, &sock5, &spawned)?;
    let attach_s = t0.elapsed().as_secs_f64();
    check_interrupted()?;
    // The socket (and the iterator's entries) come before the /proc walk ends: its report is
    // "running" until then.
    let status = || capture_json(b.pidvirt_cmd().arg("status").arg("--socket").arg(&sock5));
    let walk_deadline = Instant::now() + Duration::from_secs(30);
    let mut status_now = status()?;
    while !status_now["seed"].is_object() && Instant::now() < walk_deadline {
        std::thread::sleep(Duration::from_millis(50));
        status_now = status()?;
    }
    let status = status_now;
    let seeded = Snapshot::take(b, &d5, &sock5)?;
    drop(d5);
    drop(spawned);

    let attach_ok = attach["ok"].as_bool() == Some(true);
    let seed_ms = status["seed"]["elapsed"].as_f64();
    report.heading("P5: attach to a running host");
    report.note(&format!(
        "{total} extra sleeping processes in {namespaces} pid namespaces (spawned in {spawn_s:.2} s). Time from \
         spawning `pidvirt run` until `pidvirt ps --json` lists every one of them with nspid equal to \
         /proc/PID/status NSpid ({} polls of ps)."
        ,
        attach["polls"]
    ));
    report.table(
        &["P5", "value"],
        &[
            vec![
                "attach: spawn of pidvirt run -> ps lists all".into(),
                if attach_ok {
                    format!("{:.0} ms", attach_s * 1e3)
                } else {
                    format!("FAILED after {:.0} ms: {}", attach_s * 1e3, attach)
                },
            ],
            vec![
                "  of which: until the socket existed / the last ps --json call".into(),
                format!(
                    "{} ms / {} ms",
                    fmt_opt(attach["socket_seen_ms"].as_f64(), 0, false),
                    fmt_opt(attach["last_ps_call_ms"].as_f64(), 0, false)
                ),
            ],
            vec![
                "the daemon's /proc walk after the iterator (status seed.elapsed; may end after ps lists all)"
                    .into(),
                fmt_opt(seed_ms, 1, false) + " ms",
            ],
            vec!["tasks tracked after the seed".into(), seeded.tasks().to_string()],
        ],
    );
    goals.push(Goal::new(
        format!("P5: attach with {total} extra processes"),
        format!("{:.0} ms", attach_s * 1e3),
        "< 1000 ms",
        Some(attach_ok && attach_s < 1.0),
    ));

    // P6
    let dt = after.tasks().saturating_sub(before.tasks());
    let per_task_memlock = (after.memlock() as f64 - before.memlock() as f64) / dt.max(1) as f64;
    let (tv, vv) = (after.field(map::TASKS, "bytes_value"), after.field(map::VIRT, "bytes_value"));
    let level1 = tv + vv;
    let avg_value = after.value_bytes() as f64 / after.tasks().max(1) as f64;
    let avg_value_nested = {
        let nested: u64 =
            after.levels().iter().filter(|(l, _)| **l >= 1).map(|(l, n)| n * (tv + l * vv)).sum();
        nested as f64 / after.nested().max(1) as f64
    };
    report.heading("P6: kernel memory per tracked task");
    report.note(&format!(
        "Maps of the running daemon (bpftool map show --json), before and after the {total} extra processes \
         (tracked by the fork program; `ps` listed them all: {}). Value bytes per task = TASKS value + a VIRT \
         value per non-host level (+ DEEP for levels >= 4). memlock = bytes_memlock summed over {}.",
        live["ok"],
        MAPS.join(", ")
    ));
    let mut rows = Vec::new();
    for m in MAPS {
        rows.push(vec![
            m.to_string(),
            after.field(m, "bytes_key").to_string(),
            after.field(m, "bytes_value").to_string(),
            after.field(m, "max_entries").to_string(),
            before.field(m, "bytes_memlock").to_string(),
            after.field(m, "bytes_memlock").to_string(),
            seeded.field(m, "bytes_memlock").to_string(),
        ]);
    }
    report.table(
        &["map", "key B", "value B", "max_entries", "memlock before", "memlock after", "after (seeded)"],
        &rows,
    );
    report.table(
        &["P6", "value"],
        &[
            vec![
                "tracked tasks before -> after (level >= 1)".into(),
                format!("{} ({}) -> {} ({})", before.tasks(), before.nested(), after.tasks(), after.nested()),
            ],
            vec![
                "map value bytes per level-1 task (TASKS + 1 VIRT)".into(),
                format!("{level1} B ({tv} + {vv})"),
            ],
            vec![
                "map value bytes per task, average over nested tasks".into(),
                format!("{avg_value_nested:.1} B"),
            ],
            vec!["map value bytes per task, average over all tasks".into(), format!("{avg_value:.1} B")],
            vec![
                "memlock delta / task delta".into(),
                format!(
                    "{per_task_memlock:.0} B ({} B / {dt})",
                    after.memlock() as i64 - before.memlock() as i64
                ),
            ],
        ],
    );
    goals.push(Goal::new(
        "P6: map value bytes per (level-1) task",
        format!("{level1} B (nested average {avg_value_nested:.1} B; memlock {per_task_memlock:.0} B/task)"),
        "<= 64 B",
        Some(level1 <= 64 && avg_value_nested <= 64.0),
    ));
    Ok(json!({
        "namespaces": namespaces, "extra_processes": total, "spawn_s": spawn_s,
        "p5": { "attach_ms": attach_s * 1e3, "listed_all": attach_ok, "ps_check": attach,
                "seed_elapsed_ms": seed_ms, "seed": status["seed"] },
        "p6": { "before": before.json(), "after": after.json(), "after_seeded_daemon": seeded.json(),
                "tracked_by_fork_program": live,
                "value_bytes_level1_task": level1, "value_bytes_avg_nested": avg_value_nested,
                "value_bytes_avg_all": avg_value, "memlock_delta_per_task": per_task_memlock,
                "task_delta": dt },
    }))
}

// ---------------------------------------------------------------------------------------------

pub fn run(opts: Options) -> anyhow::Result<()> {
    crate::require_root("the benchmark")?;
    catch_signals();
    setup::build_deps()?;
    setup::apt_install("bpftool (bench: map sizes, attachments)", &["bpftool"])?;
    println!("[bench] cargo build --release -p pidvirt-user -p tests");
    setup::run(crate::cargo().args(["build", "--release", "-p", "pidvirt-user", "-p", "tests"]))?;
    let root = crate::workspace_root();
    let peer = if opts.no_peer {
        Err("skipped (--no-peer)".to_string())
    } else {
        setup::apt_install("bpftrace (bench: the peer)", &["bpftrace"]).map_err(|e| format!("{e:#}"))
    };
    let tmp = TempDir::new()?;
    let peer = peer.and_then(|()| {
        let (script, tracepoints) = peer_script();
        let path = tmp.0.join("peer.bt");
        std::fs::write(&path, script).map_err(|e| e.to_string())?;
        Ok(PeerScript { path, tracepoints })
    });
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    let cpu = opts.cpu.unwrap_or(cpus - 1);
    let mut b = Bench {
        pidvirt: root.join("target/release/pidvirt"),
        generator: root.join("target/release/pidvirt-bench"),
        tmp,
        opts: opts.clone(),
        cpu,
        peer,
    };
    let loadavg = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string();
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let load_start = loadavg();
    let foreign = foreign_tracing();
    let started = Instant::now();
    let mut report = Report::default();
    let mut goals = Vec::new();
    let _ = writeln!(
        report.text,
        "pidvirt bench: kernel {}, {cpus} CPUs ({cpu_model}), load generator pinned to CPU {cpu}",
        crate::kernel_release()
    );
    let _ = writeln!(
        report.md,
        "Measured by `cargo xtask bench` on kernel {}, {cpus} CPUs ({cpu_model}); load generator pinned to CPU {cpu}.",
        crate::kernel_release()
    );
    if !foreign.is_empty() {
        println!("[bench] WARNING: other tracing programs are attached: {foreign}");
    }

    let mut sections = serde_json::Map::new();
    let mut failed = Vec::new();
    type Section = fn(&mut Bench, &mut Report, &mut Vec<Goal>) -> anyhow::Result<Value>;
    let all: [(&str, &str, Section); 4] = [
        ("syscalls", "syscall overhead", syscall_section),
        ("kernel_time", "in-kernel program time", kernel_time_section),
        ("p4_leak_throughput", "P4 anomaly throughput", p4_section),
        ("p5_p6_attach_memory", "P5 attach / P6 memory", p5_p6_section),
    ];
    for (key, label, section) in all {
        if check_interrupted().is_err() {
            break;
        }
        println!("[bench] {label}");
        let t = Instant::now();
        match section(&mut b, &mut report, &mut goals) {
            Ok(v) => {
                sections.insert(key.into(), v);
            }
            Err(e) => {
                println!("[bench] {label} FAILED: {e:#}");
                report.heading(&format!("{label}: FAILED"));
                report.note(&format!("{e:#}"));
                goals.push(Goal::new(
                    format!("{label} ran"),
                    format!("error: {e:#}"),
                    "no error",
                    Some(false),
                ));
                sections.insert(key.into(), json!({ "error": format!("{e:#}") }));
                failed.push(label);
            }
        }
        println!("[bench] {label}: {:.1} s", t.elapsed().as_secs_f64());
    }

    report.heading("Goals");
    report.goals(&goals);
    let passed = goals.iter().filter(|g| g.pass == Some(true)).count();
    let failed_goals = goals.iter().filter(|g| g.pass == Some(false)).count();
    report.note(&format!(
        "{passed} passed, {failed_goals} failed, {} not applicable",
        goals.len() - passed - failed_goals
    ));

    // An interrupted run leaves the previous results alone.
    check_interrupted()?;
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let doc = json!({
        "machine": { "kernel": crate::kernel_release(), "cpus": cpus, "cpu_model": cpu_model,
                     "loadavg_start": load_start, "loadavg_end": loadavg(),
                     "foreign_tracing_at_start": foreign },
        "options": { "rounds": opts.rounds, "iters": opts.iters, "fork_iters": opts.fork_iters, "fork_batches": opts.fork_batches, "batches": opts.batches,
                     "cpu": cpu, "leak_seconds": opts.leak_seconds, "namespaces": opts.namespaces, "tasks": opts.tasks },
        "elapsed_s": started.elapsed().as_secs_f64(),
        "results": sections,
        "goals": goals.iter().map(Goal::json).collect::<Vec<_>>(),
    });
    std::fs::write(out_dir.join("bench.json"), serde_json::to_string_pretty(&doc)? + "\n")?;
    std::fs::write(out_dir.join("bench.md"), &report.md)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", report.text)?;
    writeln!(
        stdout,
        "[bench] {:.0} s; wrote {} and {}",
        started.elapsed().as_secs_f64(),
        out_dir.join("bench.json").display(),
        out_dir.join("bench.md").display()
    )?;
    check_interrupted()?;
    if !failed.is_empty() {
        bail!("bench sections failed: {}", failed.join(", "));
    }
    Ok(())
}
