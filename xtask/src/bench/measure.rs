//! Measuring: the processes the benchmark starts (daemons, floors, the bpftrace peer, the load
//! generator), the modes, and each section's measurement, answered as plain data for
//! [`super::stats`] and [`super::report`].
//!
//! Every process started here is stopped by a Drop guard (and dies with us: PR_SET_PDEATHSIG);
//! SIGINT/SIGTERM make the bench stop early through the same guards.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use pidvirt_common::{
    audit::{SYSCALLS, Verdict, sys},
    catalogue::{self, Program, SyscallSide, map},
    tracefs,
};
use serde_json::Value;

use super::{Options, stats};

// ---------------------------------------------------------------------------------------------
// Processes

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT/SIGTERM: stop at the next check (the guards then stop everything we started).
pub fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

pub fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Makes the child `cmd` starts die with us, by `signal`.
fn die_with_us(cmd: &mut Command, signal: i32) {
    // SAFETY: the closure runs between fork and exec; prctl is async-signal-safe and only sets
    // the child's parent-death signal.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, signal);
            Ok(())
        });
    }
}

/// A background process, stopped (signal, then SIGKILL after a grace period) when dropped.
pub struct Running {
    what: String,
    child: Child,
    stop_signal: i32,
    log: PathBuf,
}

impl Running {
    pub fn spawn(what: &str, cmd: &mut Command, stop_signal: i32, log: &Path) -> anyhow::Result<Self> {
        let out = std::fs::File::create(log).with_context(|| log.display().to_string())?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        die_with_us(cmd, stop_signal);
        let child = cmd.spawn().with_context(|| format!("cannot start {what}: {cmd:?}"))?;
        Ok(Self { what: what.to_string(), child, stop_signal, log: log.to_path_buf() })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Err with the log's tail if the process is gone.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
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
        // SAFETY: kill(2) on the pid of our own child, not yet reaped (try_wait said it runs).
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
fn start_generator(generator: &Path, args: &[&str]) -> anyhow::Result<(Child, ChildStdin, ChildStdout)> {
    let mut cmd = Command::new(generator);
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    die_with_us(&mut cmd, libc::SIGKILL);
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
        guard.inits =
            v["inits"].as_array().into_iter().flatten().filter_map(Value::as_i64).map(|p| p as i32).collect();
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
            // SAFETY: kill(2) of the inits the generator made (still ours until they are gone).
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
    stdout: BufReader<ChildStdout>,
}

impl Generator {
    fn start(path: &Path, cpu: usize) -> anyhow::Result<Self> {
        let (child, stdin, stdout) = start_generator(path, &["serve", "--cpu", &cpu.to_string()])?;
        Ok(Self { child, stdin: Some(stdin), stdout: BufReader::new(stdout) })
    }

    /// Runs `workloads` (comma-separated) with the run's counts; answers the generator's JSON.
    fn run(&mut self, workloads: &str, o: &Options) -> anyhow::Result<Value> {
        self.request(
            workloads,
            [o.iters, o.batches as u64, o.fork_iters, o.fork_batches as u64, o.open_iters],
        )
    }

    /// Runs `workloads` with `[iters, batches, fork_iters, fork_batches, open_iters]`.
    fn request(&mut self, workloads: &str, counts: [u64; 5]) -> anyhow::Result<Value> {
        let stdin = self.stdin.as_mut().context("generator closed")?;
        let [iters, batches, fork_iters, fork_batches, open_iters] = counts;
        writeln!(stdin, "{workloads} {iters} {batches} {fork_iters} {fork_batches} {open_iters}")?;
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
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> anyhow::Result<Self> {
        let p = std::env::temp_dir().join(format!("pidvirt-bench.{}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(Self(p))
    }

    pub fn path(&self) -> &Path {
        &self.0
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

pub fn wait_for(
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

/// How the syscall programs are attached (`pidvirt run --attach`, `pidvirt floor --attach`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Attach {
    /// The syscall tracepoints (while any is enabled, every syscall of the host takes the kernel's
    /// slow path).
    Tracepoint,
    /// fentry/fexit on the syscall functions, where the kernel takes them.
    Fentry,
}

impl Attach {
    pub const ALL: [Attach; 2] = [Attach::Tracepoint, Attach::Fentry];

    pub fn name(self) -> &'static str {
        match self {
            Attach::Tracepoint => "tracepoint",
            Attach::Fentry => "fentry",
        }
    }

    /// The floor and pidvirt modes attached this way.
    pub fn modes(self) -> (Mode, Mode) {
        match self {
            Attach::Tracepoint => (Mode::Floor, Mode::Pidvirt),
            Attach::Fentry => (Mode::FloorFentry, Mode::PidvirtFentry),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    Bare,
    /// EMPTY programs on pidvirt's hooks, the syscalls' by their tracepoints.
    Floor,
    /// pidvirt, its syscall programs on the syscall tracepoints.
    Pidvirt,
    Peer,
    /// EMPTY programs on read's own syscall tracepoints: what hooking a syscall through its
    /// tracepoints costs it (the yardstick for the syscalls pidvirt does not audit).
    ReadHooked,
    /// EMPTY programs on the raw sys_enter/sys_exit tracepoints: a design hooking every syscall.
    Raw,
    /// The floor with its syscall programs on fentry/fexit.
    FloorFentry,
    /// pidvirt with its syscall programs on fentry/fexit.
    PidvirtFentry,
}

pub const MODES: [Mode; 8] = [
    Mode::Bare,
    Mode::Floor,
    Mode::Pidvirt,
    Mode::Peer,
    Mode::ReadHooked,
    Mode::Raw,
    Mode::FloorFentry,
    Mode::PidvirtFentry,
];

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Bare => "bare",
            Mode::Floor => "floor",
            Mode::Pidvirt => "pidvirt",
            Mode::Peer => "peer",
            Mode::ReadHooked => "read-hooked",
            Mode::Raw => "raw",
            Mode::FloorFentry => "floor-fentry",
            Mode::PidvirtFentry => "pidvirt-fentry",
        }
    }

    /// How the mode attaches to the syscalls, for the floors and pidvirt.
    pub fn attach(self) -> Option<Attach> {
        match self {
            Mode::Floor | Mode::Pidvirt => Some(Attach::Tracepoint),
            Mode::FloorFentry | Mode::PidvirtFentry => Some(Attach::Fentry),
            _ => None,
        }
    }

    /// The workloads measured under this mode (pidvirt-bench `--workloads`).
    fn workloads(self) -> &'static str {
        match self {
            Mode::ReadHooked => "read",
            Mode::Raw => "getpid,read",
            _ => "getpid,kill,fork,read,openat,openat-proc",
        }
    }

    /// `pidvirt floor --hooks H` for the floor-like modes.
    fn floor_hooks(self) -> Option<&'static str> {
        match self {
            Mode::Floor | Mode::FloorFentry => Some("pidvirt"),
            Mode::ReadHooked => Some("read"),
            Mode::Raw => Some("raw"),
            _ => None,
        }
    }
}

/// The load generator's workloads: name, label in the report, whether pidvirt audits it.
pub const WORKLOADS: [(&str, &str, bool); 6] = [
    ("getpid", "getpid (raw syscall)", true),
    ("kill", "kill(self, 0)", true),
    ("fork", "fork+exit+wait", true),
    ("read", "read 1 B of /dev/zero (unaudited)", false),
    ("openat", "openat+close of /etc/passwd", true),
    ("openat-proc", "openat+close of /proc/self/stat", true),
];

/// Workloads of the in-kernel pass only: name, label.
const KERNEL_ONLY_WORKLOADS: [(&str, &str); 1] = [("kill-level3", "kill(self, 0) from level 3 (issue 14)")];

/// The report's label of workload `w`.
pub fn workload_label(w: &str) -> &str {
    WORKLOADS
        .iter()
        .map(|(n, l, _)| (n, l))
        .chain(KERNEL_ONLY_WORKLOADS.iter().map(|(n, l)| (n, l)))
        .find(|(n, _)| **n == w)
        .map_or(w, |(_, l)| l)
}

/// What the benchmark runs with: the binaries, a scratch directory, the options.
pub struct Bench {
    pub pidvirt: PathBuf,
    pub generator: PathBuf,
    pub tmp: TempDir,
    pub opts: Options,
    /// CPUs online.
    pub cpus: usize,
    /// The CPU the load generator is pinned to.
    pub cpu: usize,
    /// The bpftrace script, or why the peer is unavailable.
    pub peer: Result<PeerScript, String>,
    /// Whether the syscall programs can be attached with fentry/fexit here (Err: why not, as
    /// `pidvirt status` says it), once [`Bench::probe_fentry`] asked.
    pub fentry: Result<(), String>,
}

pub struct PeerScript {
    pub path: PathBuf,
    pub tracepoints: usize,
}

impl Bench {
    /// `peer` says whether bpftrace is there (or why not).
    pub fn new(root: &Path, opts: Options, peer: Result<(), String>) -> anyhow::Result<Self> {
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
        Ok(Self {
            pidvirt: root.join("target/release/pidvirt"),
            generator: root.join("target/release/pidvirt-bench"),
            tmp,
            opts,
            cpus,
            cpu,
            peer,
            fentry: Err("not probed".into()),
        })
    }

    /// Asks the kernel whether it takes fentry/fexit on the syscall functions: a daemon started
    /// with `--attach auto` says in `status` (syscalls.mode, syscalls.reason) what it got and why.
    pub fn probe_fentry(&mut self) -> anyhow::Result<()> {
        if !self.opts.attach.contains(&Attach::Fentry) {
            self.fentry = Err("not measured (--attach without fentry)".into());
            return Ok(());
        }
        let socket = self.socket("probe");
        let d = self.start_daemon_with("probe", Path::new("/dev/null"), "auto", true, &[])?;
        let status = capture_json(self.pidvirt_cmd().arg("status").arg("--socket").arg(&socket))?;
        drop(d);
        let (mode, reason) = (status["syscalls"]["mode"].as_str(), status["syscalls"]["reason"].as_str());
        self.fentry = match mode {
            Some("fentry") => Ok(()),
            _ => Err(format!(
                "unavailable on this kernel: {}",
                reason.unwrap_or("pidvirt status gave no reason")
            )),
        };
        Ok(())
    }

    /// The modes this run measures: every mode, but the fentry ones only where the kernel takes
    /// fentry (and the peer only while it is available).
    pub fn modes(&self) -> Vec<Mode> {
        MODES
            .into_iter()
            .filter(|m| m.attach().is_none_or(|a| self.opts.attach.contains(&a)))
            .filter(|m| m.attach() != Some(Attach::Fentry) || self.fentry.is_ok())
            .collect()
    }

    /// Whether attach mode `a` is measured in this run, or why not.
    pub fn attach_measured(&self, a: Attach) -> Result<(), String> {
        match a {
            _ if !self.opts.attach.contains(&a) => {
                Err(format!("not measured (--attach without {})", a.name()))
            }
            Attach::Tracepoint => Ok(()),
            Attach::Fentry => self.fentry.clone(),
        }
    }

    fn pidvirt_cmd(&self) -> Command {
        Command::new(&self.pidvirt)
    }

    fn socket(&self, name: &str) -> PathBuf {
        self.tmp.0.join(format!("{name}.sock"))
    }

    /// `pidvirt run --socket <tmp>/NAME.sock --audit-log LOG`, ready once `status` answers.
    /// The audit log is never rotated (`--audit-log-max-bytes 0`): P4 counts the lines of one
    /// file, and a rotated stream would hide the records of the files before it.
    pub fn start_daemon(&self, name: &str, audit_log: &Path) -> anyhow::Result<Running> {
        self.start_daemon_with(name, audit_log, "auto", true, &["--audit-log-max-bytes", "0"])
    }

    /// [`Self::start_daemon`] with `--attach ATTACH`, and `--proc-paths` if `proc_paths`.
    pub fn start_daemon_with(
        &self,
        name: &str,
        audit_log: &Path,
        attach: &str,
        proc_paths: bool,
        extra: &[&str],
    ) -> anyhow::Result<Running> {
        let socket = self.socket(name);
        let mut cmd = self.pidvirt_cmd();
        cmd.arg("run")
            .arg("--socket")
            .arg(&socket)
            .arg("--audit-log")
            .arg(audit_log)
            .args(["--attach", attach]);
        if proc_paths {
            cmd.arg("--proc-paths");
        }
        cmd.args(extra);
        let mut d =
            Running::spawn("pidvirt run", &mut cmd, libc::SIGTERM, &self.tmp.0.join(format!("{name}.log")))?;
        wait_for("pidvirt run to serve its socket", Duration::from_mins(1), || {
            d.check_alive()?;
            Ok(self.pidvirt_cmd().arg("status").arg("--socket").arg(&socket).output()?.status.success())
        })?;
        Ok(d)
    }

    fn start_mode(&self, mode: Mode) -> anyhow::Result<Option<Running>> {
        match mode {
            Mode::Bare => Ok(None),
            Mode::Floor | Mode::FloorFentry | Mode::ReadHooked | Mode::Raw => {
                let hooks = mode.floor_hooks().unwrap_or("pidvirt");
                let attach = mode.attach().unwrap_or(Attach::Tracepoint).name();
                let log = self.tmp.0.join(format!("{}.log", mode.name()));
                let mut f = Running::spawn(
                    "pidvirt floor",
                    self.pidvirt_cmd().args(["floor", "--hooks", hooks, "--attach", attach]),
                    libc::SIGTERM,
                    &log,
                )?;
                wait_for("pidvirt floor to attach", Duration::from_mins(1), || {
                    f.check_alive()?;
                    Ok(std::fs::read_to_string(&log).unwrap_or_default().contains("empty programs attached"))
                })?;
                Ok(Some(f))
            }
            Mode::Pidvirt | Mode::PidvirtFentry => {
                let attach = mode.attach().unwrap_or(Attach::Tracepoint).name();
                self.start_daemon_with(mode.name(), Path::new("/dev/null"), attach, true, &[]).map(Some)
            }
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
                wait_for("bpftrace to attach every probe", Duration::from_mins(2), || {
                    b.check_alive()?;
                    Ok(perf_attachments(Some(pid))? >= script.tracepoints)
                })?;
                Ok(Some(b))
            }
        }
    }

    /// `pidvirt-bench ps-check`: with `expect` (a `spawn` answer), polls `pidvirt ps --json` on
    /// `socket` until it lists every process there with nspid equal to /proc's (30 s at most);
    /// without, one `ps` summarised. Answers its JSON report.
    fn ps_check(&self, socket: &Path, expect: Option<&Path>) -> anyhow::Result<Value> {
        let mut cmd = Command::new(&self.generator);
        cmd.args(["ps-check", "--pidvirt"]).arg(&self.pidvirt).arg("--socket").arg(socket);
        if let Some(file) = expect {
            cmd.arg("--expect").arg(file).args(["--timeout-ms", "30000"]);
        }
        capture_json(&mut cmd)
    }
}

/// `bpftool perf show`: perf-event attachments (tracepoints, kprobes), of one process or all.
fn perf_attachments(pid: Option<u32>) -> anyhow::Result<usize> {
    let v: Value = serde_json::from_str(&capture(Command::new("bpftool").args(["perf", "show", "--json"]))?)
        .unwrap_or(Value::Null);
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter(|e| pid.is_none_or(|p| e["pid"].as_u64() == Some(u64::from(p))))
        .filter(|e| e["fd_type"].as_str() != Some("raw_tracepoint"))
        .count())
}

/// Tracing attachments of anyone else (a daemon left running, a test suite, another tracer):
/// they would perturb `bare`. Answers a description, empty when the machine is quiet.
pub fn foreign_tracing() -> String {
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
        .collect::<BTreeSet<_>>()
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
/// Answers the script and the number of its tracepoints.
fn peer_script() -> (String, usize) {
    // Mounted at /sys/kernel/tracing (as pidvirt does) when it is nowhere yet; without it, every
    // hook is taken to exist and each path argument to be `filename`.
    let root = tracefs::tracefs_root().ok();
    let tracefs = root.as_deref();
    let exists = |tp: &str| tracefs.is_none_or(|t| tracefs::syscall_event(t, tp).is_dir());
    let kill = &SYSCALLS[sys::KILL as usize];
    // kill's entry gets a probe of its own, which also records the target.
    let kill_enter = format!("{}{}", SyscallSide::Enter.prefix(), kill.name);
    let mut counted = Vec::new();
    // The path syscalls: (tracepoint, the path argument's field).
    let mut paths = Vec::new();
    for s in &SYSCALLS {
        for (hooked, side) in [(s.enter.is_some(), SyscallSide::Enter), (s.exit.is_some(), SyscallSide::Exit)]
        {
            let tp = format!("{}{}", side.prefix(), s.name);
            if !hooked || !exists(&tp) || tp == kill_enter {
                continue;
            }
            let path = side == SyscallSide::Enter
                && s.enter.is_some_and(|p| matches!(p.name(), "enter_path" | "enter_at_path"));
            if path {
                paths.push((format!("tracepoint:syscalls:{tp}"), path_field(tracefs, &tp)));
            } else {
                counted.push(format!("tracepoint:syscalls:{tp}"));
            }
        }
    }
    let mut script = String::from(
        "// Generated by `cargo xtask bench` from pidvirt_common::audit::SYSCALLS: a minimal audit\n\
         // of the syscalls pidvirt watches (count per syscall and task, kill targets, fork/exit).\n",
    );
    let mut n = counted.len() + paths.len() + 2;
    // The same /proc-prefix check as pidvirt's: a path under /proc/ counted per syscall and task.
    for (tp, field) in &paths {
        let _ = writeln!(
            script,
            "{tp} {{ if (strncmp(str(args->{field}, 16), \"/proc/\", 6) == 0) {{ @counts[probe, tid] = count(); }} }}"
        );
    }
    if kill.enter.is_some() && exists(&kill_enter) {
        let _ = writeln!(
            script,
            "tracepoint:syscalls:{kill_enter} {{ @kill[args->pid] = count(); @counts[probe, tid] = count(); }}"
        );
        n += 1;
    }
    let _ = writeln!(script, "{}\n{{ @counts[probe, tid] = count(); }}", counted.join(",\n"));
    let (fork, exit) = (Program::SchedProcessFork.name(), Program::SchedProcessExit.name());
    let _ = writeln!(script, "tracepoint:sched:{fork} {{ @tasks[args->child_pid] = args->parent_pid; }}");
    let _ = writeln!(script, "tracepoint:sched:{exit} {{ delete(@tasks[args->pid]); }}");
    script.push_str("END { clear(@counts); clear(@kill); clear(@tasks); }\n");
    (script, n)
}

/// The path argument of syscall tracepoint `tp` as its tracefs format names it (the first
/// `const char *` field: `filename`, `pathname` or `path`), `filename` where tracefs does not say.
fn path_field(tracefs: Option<&Path>, tp: &str) -> String {
    tracefs
        .and_then(|t| tracefs::read_format(t, tp).ok())
        .and_then(|fields| fields.into_iter().find(|f| f.ty == "const char *"))
        .map_or_else(|| "filename".into(), |f| f.name)
}

// ---------------------------------------------------------------------------------------------
// 1. Syscall overhead: rounds of every mode

/// What one round measured, and whether someone else was tracing meanwhile.
pub struct Round {
    /// ns per call by mode and workload.
    pub ns: stats::RoundNs<Mode>,
    /// Time to attach each mode.
    pub attach_ms: BTreeMap<Mode, f64>,
    /// Who else was tracing (empty: nobody; the round is clean).
    pub foreign: String,
}

impl Round {
    pub fn is_clean(&self) -> bool {
        self.foreign.is_empty()
    }
}

/// The syscall rounds as they ran, perturbed ones included.
pub struct SyscallRuns {
    pub rounds: Vec<Round>,
    /// Why the peer was not measured (it was unavailable, or failed to start in a round).
    pub peer_error: Option<String>,
    /// Seconds the rounds took.
    pub elapsed_s: f64,
}

impl SyscallRuns {
    pub fn clean(&self) -> usize {
        clean_rounds(&self.rounds)
    }
}

fn clean_rounds(rounds: &[Round]) -> usize {
    rounds.iter().filter(|r| r.is_clean()).count()
}

/// Waits up to `limit` for the machine to have no one else's tracing programs; answers who is
/// still there (empty: nobody).
fn wait_quiet(limit: Duration) -> String {
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
}

/// Runs the rounds: every mode once per round, in an order that rotates round by round.
pub fn syscall_rounds(b: &Bench) -> anyhow::Result<SyscallRuns> {
    let mut rounds: Vec<Round> = Vec::new();
    let mut peer_error: Option<String> = b.peer.as_ref().err().cloned();
    // Wait for a quiet machine first: another tracer (a test daemon...) would perturb `bare`.
    let mut foreign = wait_quiet(Duration::from_secs(b.opts.quiet_wait));
    // One process measures every mode of every round (see pidvirt-bench serve).
    let mut generator = Generator::start(&b.generator, b.cpu)?;
    // Once before the rounds, not counted: the process's first runs pay for faulting itself in.
    generator.run(Mode::Bare.workloads(), &b.opts).context("load generator warm-up")?;
    let started = Instant::now();
    let budget = Duration::from_secs(b.opts.time_budget);
    // A perturbed round is run again while the time budget lasts (at most 3x the rounds); at
    // least 3 rounds run whatever the budget.
    while clean_rounds(&rounds) < b.opts.rounds
        && rounds.len() < 3 * b.opts.rounds
        && (rounds.len() < 3 || started.elapsed() < budget)
    {
        check_interrupted()?;
        let attempt = rounds.len();
        if attempt > 0 {
            foreign = wait_quiet(budget.saturating_sub(started.elapsed()).min(Duration::from_secs(20)));
        }
        let round =
            run_round(b, &mut generator, attempt, clean_rounds(&rounds), foreign.clone(), &mut peer_error)?;
        rounds.push(round);
    }
    Ok(SyscallRuns { rounds, peer_error, elapsed_s: started.elapsed().as_secs_f64() })
}

/// One round (number `attempt` from 0): every mode attached in turn, the workloads measured
/// under it; `foreign` is who else was tracing before it. A peer that fails to start is left out
/// of this round and the following ones.
fn run_round(
    b: &Bench,
    generator: &mut Generator,
    attempt: usize,
    clean_so_far: usize,
    foreign: String,
    peer_error: &mut Option<String>,
) -> anyhow::Result<Round> {
    let mut round = Round { ns: BTreeMap::new(), attach_ms: BTreeMap::new(), foreign };
    let mut order = b.modes();
    let n = order.len();
    order.rotate_left(attempt % n);
    let mut line = format!("[bench] round {} (clean so far {clean_so_far}):", attempt + 1);
    for mode in order {
        if mode == Mode::Peer && peer_error.is_some() {
            continue;
        }
        // Nothing of ours is attached between modes: anything attached is someone else's.
        if round.is_clean() {
            round.foreign = foreign_tracing();
        }
        let t = Instant::now();
        let guard = match b.start_mode(mode) {
            Ok(g) => g,
            Err(e) if mode == Mode::Peer => {
                println!("[bench] peer unavailable: {e:#}");
                *peer_error = Some(format!("{e:#}"));
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
            // The round's value: ns per call, the median of the batch means.
            let ns = v[w]["ns_per_call"].as_f64().unwrap_or(f64::NAN);
            per.insert(w, ns);
            let _ = write!(line, " {w}={ns:.0}");
        }
        let _ = write!(line, ";");
    }
    if round.is_clean() {
        round.foreign = foreign_tracing();
    }
    println!("{line}");
    if !round.is_clean() {
        println!("[bench] round {} perturbed (someone else was tracing: {})", attempt + 1, round.foreign);
    }
    Ok(round)
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

/// The programs loaded since `others` that ran between the statistics `before` and `after`, with
/// what they did meanwhile.
fn ran_between(
    others: &BTreeMap<u64, (String, u64, u64)>,
    before: &BTreeMap<u64, (String, u64, u64)>,
    after: &BTreeMap<u64, (String, u64, u64)>,
) -> Vec<ProgTime> {
    after
        .iter()
        .filter(|(id, _)| !others.contains_key(id))
        .filter_map(|(id, (name, ns, runs))| {
            let (_, ns0, runs0) = before.get(id)?;
            (runs > runs0).then(|| ProgTime { name: name.clone(), runs: runs - runs0, ns: ns - ns0 })
        })
        .collect()
}

/// What one program did during one workload.
pub struct ProgTime {
    pub name: String,
    pub runs: u64,
    pub ns: u64,
}

/// One workload under one mode, with the statistics on.
pub struct Pass {
    /// The programs of the mode that ran.
    pub progs: Vec<ProgTime>,
    /// The calls the workload made.
    pub calls: u64,
}

/// The in-kernel pass: every workload under every mode that has programs.
pub struct KernelTimes {
    pub modes: Vec<Mode>,
    /// Workloads and the calls each makes.
    pub workloads: Vec<(&'static str, u64)>,
    pub passes: BTreeMap<(Mode, &'static str), Pass>,
    /// What one helper call costs on this machine, or why it was not measured.
    pub helper_call: Result<HelperCall, String>,
}

/// One BPF helper call's cost on this machine: a bpftrace probe on getpid's exit tracepoint,
/// empty and with one call of `bpf_get_current_task` (`curtask`), ns per run (bpf_stats), the
/// load generator's getpid calls running them.
pub struct HelperCall {
    pub empty_ns: f64,
    pub one_call_ns: f64,
}

impl KernelTimes {
    pub fn pass(&self, mode: Mode, w: &'static str) -> Option<&Pass> {
        self.passes.get(&(mode, w))
    }
}

pub fn kernel_times(b: &Bench) -> anyhow::Result<KernelTimes> {
    let forks = b.opts.fork_iters * b.opts.fork_batches as u64;
    let workloads = vec![
        ("getpid", b.opts.iters),
        ("kill", b.opts.iters),
        ("fork", forks),
        ("openat", b.opts.open_iters),
        ("openat-proc", b.opts.open_iters),
        ("kill-level3", b.opts.iters),
    ];
    let modes: Vec<Mode> = b
        .modes()
        .into_iter()
        .filter(|m| matches!(m, Mode::Floor | Mode::Pidvirt | Mode::FloorFentry | Mode::PidvirtFentry))
        .chain(b.peer.is_ok().then_some(Mode::Peer))
        .collect();
    let mut generator = Generator::start(&b.generator, b.cpu)?;
    let stats = BpfStats::enable()?;
    let mut passes = BTreeMap::new();
    for &mode in &modes {
        check_interrupted()?;
        let others = prog_stats()?;
        let guard = b.start_mode(mode).with_context(|| format!("starting mode {}", mode.name()))?;
        for &(w, iters) in &workloads {
            let before = prog_stats()?;
            generator
                .request(w, [iters, 1, iters, 1, iters])
                .with_context(|| format!("load generator ({w}) under mode {}", mode.name()))?;
            let after = prog_stats()?;
            // The generator warms up with a tenth of the calls first (pidvirt-bench batches).
            let calls = iters + (iters / 10).max(1);
            passes.insert((mode, w), Pass { progs: ran_between(&others, &before, &after), calls });
        }
        drop(guard);
    }
    let helper_call = match &b.peer {
        Ok(_) => helper_call(b, &mut generator).map_err(|e| format!("{e:#}")),
        Err(e) => Err(format!("bpftrace unavailable: {e}")),
    };
    drop(stats);
    Ok(KernelTimes { modes, workloads, passes, helper_call })
}

/// [`HelperCall`], with the statistics on.
fn helper_call(b: &Bench, generator: &mut Generator) -> anyhow::Result<HelperCall> {
    let iters = b.opts.iters;
    let mut ns = [0.0; 2];
    for (i, body) in ["", "$t = curtask;"].into_iter().enumerate() {
        check_interrupted()?;
        let script = b.tmp.0.join(format!("helper-call-{i}.bt"));
        std::fs::write(&script, format!("tracepoint:syscalls:sys_exit_getpid {{ {body} }}\n"))?;
        let others = prog_stats()?;
        let log = b.tmp.0.join(format!("helper-call-{i}.log"));
        let mut probe =
            Running::spawn("bpftrace", Command::new("bpftrace").arg(&script), libc::SIGINT, &log)?;
        let pid = probe.pid();
        wait_for("bpftrace to attach its probe", Duration::from_mins(2), || {
            probe.check_alive()?;
            Ok(perf_attachments(Some(pid))? >= 1)
        })?;
        let before = prog_stats()?;
        generator.request("getpid", [iters, 1, iters, 1, iters]).context("load generator (getpid)")?;
        let after = prog_stats()?;
        let pass = Pass { progs: ran_between(&others, &before, &after), calls: 1 };
        let (run_ns, runs) = stats::per_call(&pass);
        ensure!(runs > 0.0, "bpftrace's probe on sys_exit_getpid did not run");
        ns[i] = run_ns / runs;
    }
    Ok(HelperCall { empty_ns: ns[0], one_call_ns: ns[1] })
}

// ---------------------------------------------------------------------------------------------
// 2. P4: anomaly throughput

/// The syscall and verdict of P4's crossings: kill(H, 0) of a host pid H that names nothing in
/// the caller's namespace is a leak.
pub const LEAK_SYSCALL: &str = SYSCALLS[sys::KILL as usize].name;
pub const LEAK_VERDICT: &str = Verdict::Leak.name();

/// What P4 measured.
pub struct LeakRun {
    /// The container of the generating process.
    pub container: String,
    /// `pidvirt-bench leak`'s answer.
    pub leak: Value,
    /// kill calls made, how many answered ESRCH, in how many seconds.
    pub generated: u64,
    pub esrch: u64,
    pub generation_s: f64,
    /// The container's crossings counter of the leaks, and its ring-buffer drops.
    pub counted: Option<u64>,
    pub drops: Option<u64>,
    /// Audit-log lines of the container's leaks (`pidvirt-bench audit-count`'s answer).
    pub delivered: u64,
    pub audit_count: Value,
    pub log_bytes: u64,
    /// Seconds from the start of generation until the sink stopped growing.
    pub sink_s: f64,
}

pub fn leak_throughput(b: &Bench) -> anyhow::Result<LeakRun> {
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
    let container = format!("pidns-{}", leak["pidns"].as_u64().unwrap_or(0));
    let sink_s = sink_settled(b, &socket, t_gen)?.as_secs_f64();
    check_interrupted()?;
    let stats = capture_json(
        b.pidvirt_cmd().args(["stats", "--json", "--container", &container, "--socket"]).arg(&socket),
    )?;
    daemon.check_alive()?;
    drop(daemon); // closes (flushes) the audit log
    let audit_count =
        capture_json(Command::new(&b.generator).args(["audit-count", "--log"]).arg(&log).args([
            "--container",
            &container,
            "--verdict",
            LEAK_VERDICT,
            "--syscall",
            LEAK_SYSCALL,
        ]))?;
    let log_bytes = std::fs::metadata(&log).map_or(0, |m| m.len());
    let _ = std::fs::remove_file(&log);
    Ok(LeakRun {
        generated: leak["generated"].as_u64().unwrap_or(0),
        esrch: leak["esrch"].as_u64().unwrap_or(0),
        generation_s: leak["elapsed_s"].as_f64().unwrap_or(f64::NAN),
        counted: stats["crossings"][LEAK_SYSCALL][LEAK_VERDICT].as_u64(),
        drops: stats["ringbuf_drops"].as_u64(),
        delivered: audit_count["matched"].as_u64().unwrap_or(0),
        container,
        leak,
        audit_count,
        log_bytes,
        sink_s,
    })
}

/// Waits until the daemon's audit sink stops growing; answers when, since `t_gen`, it reached
/// its final count.
fn sink_settled(b: &Bench, socket: &Path, t_gen: Instant) -> anyhow::Result<Duration> {
    let written = || -> anyhow::Result<u64> {
        let v = capture_json(b.pidvirt_cmd().args(["stats", "--json", "--socket"]).arg(socket))?;
        Ok(v["audit_log"]["written"].as_u64().unwrap_or(0))
    };
    let (mut last, mut last_change, mut stable) = (written()?, t_gen.elapsed(), 0);
    let drain_deadline = Instant::now() + Duration::from_mins(2);
    while stable < 15 && Instant::now() < drain_deadline {
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(20));
        let w = written()?;
        if w == last {
            stable += 1;
        } else {
            (last, last_change, stable) = (w, t_gen.elapsed(), 0);
        }
    }
    Ok(last_change)
}

// ---------------------------------------------------------------------------------------------
// 3 and 4. P5 attach time, P6 memory per task

/// The maps whose memory P6 reports.
pub const MAPS: [&str; 12] = [
    map::TASK_FRONT,
    map::TASK_SPILLS,
    map::TASKS,
    map::VIRT,
    map::VIRT_FRONT,
    map::VIRT_SPILLS,
    map::DEEP,
    map::PIDNS,
    map::COUNTS,
    map::LIVE_TIDS,
    map::SEEDED_TIDS,
    map::PENDING_TIDS,
];

/// The daemon's maps (those it holds fds of), by name, from `bpftool map show --json`.
fn daemon_maps(pid: u32) -> anyhow::Result<BTreeMap<String, Value>> {
    let mut ids = BTreeSet::new();
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
        let Some(name) = MAPS.iter().find(|m| catalogue::kernel_name(m) == name) else { continue };
        if ids.contains(&id) {
            out.insert(
                name.to_string(),
                serde_json::json!({ "id": id, "type": m["type"], "bytes_key": m["bytes_key"],
                    "bytes_value": m["bytes_value"], "max_entries": m["max_entries"],
                    "bytes_memlock": m["bytes_memlock"] }),
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

/// A running daemon's maps and tracked tasks.
pub struct Snapshot {
    pub maps: BTreeMap<String, Value>,
    /// `pidvirt-bench ps-check`'s summary of `pidvirt ps`.
    pub ps: Value,
}

impl Snapshot {
    fn take(b: &Bench, daemon: &Running, socket: &Path) -> anyhow::Result<Self> {
        let ps = b.ps_check(socket, None)?;
        Ok(Self { maps: daemon_maps(daemon.pid())?, ps })
    }
    pub fn tasks(&self) -> u64 {
        self.ps["tasks"].as_u64().unwrap_or(0)
    }
    /// Tracked tasks by pid namespace level.
    pub fn levels(&self) -> BTreeMap<u64, u64> {
        self.ps["levels"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_u64()?)))
            .collect()
    }
    /// Tracked tasks of nested namespaces (level 1 and deeper).
    pub fn nested(&self) -> u64 {
        self.levels().iter().filter(|(l, _)| **l >= 1).map(|(_, n)| n).sum()
    }
    /// A number of `bpftool map show` about `map` (0 if absent).
    pub fn field(&self, map: &str, f: &str) -> u64 {
        self.maps.get(map).and_then(|m| m[f].as_u64()).unwrap_or(0)
    }
    pub fn memlock(&self) -> u64 {
        MAPS.iter().map(|m| self.field(m, "bytes_memlock")).sum()
    }
    /// The value sizes of the maps a task takes room in.
    pub fn value_sizes(&self) -> stats::ValueSizes {
        stats::ValueSizes {
            tasks: self.field(map::TASKS, "bytes_value"),
            virt: self.field(map::VIRT, "bytes_value"),
            deep: self.field(map::DEEP, "bytes_value"),
        }
    }
    /// Map value bytes of every tracked task.
    pub fn value_bytes(&self) -> u64 {
        self.value_sizes().of_tasks(&self.levels())
    }
}

/// What P5 and P6 measured.
pub struct AttachRun {
    pub namespaces: usize,
    /// Extra processes spawned, and how long that took.
    pub total: usize,
    pub spawn_s: f64,
    /// A daemon's view before and after the extra processes (born under it).
    pub before: Snapshot,
    pub after: Snapshot,
    /// `ps-check` of that daemon: did it list every extra process?
    pub live: Value,
    /// `ps-check` of a daemon started on top of them, and the time from its spawn until then.
    pub attach: Value,
    pub attach_s: f64,
    /// That daemon's `status` once its /proc walk ended (or 30 s passed), and its view then.
    pub status: Value,
    pub seeded: Snapshot,
}

pub fn attach_and_memory(b: &Bench) -> anyhow::Result<AttachRun> {
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
    let live = b.ps_check(&sock6, Some(&spawned.file))?;
    check_interrupted()?;
    let after = Snapshot::take(b, &d6, &sock6)?;
    drop(d6);
    let (attach, attach_s, status, seeded) = attach_to_host(b, &spawned)?;
    drop(spawned);
    Ok(AttachRun { namespaces, total, spawn_s, before, after, live, attach, attach_s, status, seeded })
}

/// P5: a daemon started on a host that already has the `spawned` processes. Answers ps-check's
/// report, the seconds until it listed them all, the daemon's status after its /proc walk, and
/// its view then.
fn attach_to_host(b: &Bench, spawned: &Spawned) -> anyhow::Result<(Value, f64, Value, Snapshot)> {
    check_interrupted()?;
    let sock5 = b.socket("p5");
    let t0 = Instant::now();
    let mut cmd = b.pidvirt_cmd();
    cmd.arg("run").arg("--socket").arg(&sock5).args(["--audit-log", "/dev/null"]);
    let d5 = Running::spawn("pidvirt run", &mut cmd, libc::SIGTERM, &b.tmp.0.join("p5.log"))?;
    let attach = b.ps_check(&sock5, Some(&spawned.file))?;
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
    let seeded = Snapshot::take(b, &d5, &sock5)?;
    Ok((attach, attach_s, status_now, seeded))
}

// ---------------------------------------------------------------------------------------------
// The machine

/// Where the benchmark runs, read at its start.
pub struct Machine {
    pub kernel: String,
    pub cpu_model: String,
    pub loadavg: String,
    /// Someone else's tracing programs (empty: none).
    pub foreign: String,
    /// In a VM of `bench --vm` (software emulation: the emulator's times).
    pub emulated: bool,
}

impl Machine {
    pub fn now() -> Self {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_default();
        Self {
            kernel: crate::kernel_release(),
            cpu_model,
            loadavg: loadavg(),
            foreign: foreign_tracing(),
            emulated: super::vm::in_guest(),
        }
    }
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string()
}

#[cfg(test)]
mod tests {
    /// The peer names each path argument as the running kernel's tracefs does (readlinkat's is
    /// `pathname`, openat's `filename`): bpftrace refuses a script with a field the tracepoint
    /// lacks.
    #[test]
    fn the_peer_reads_each_path_argument_by_its_tracefs_name() {
        let (script, _) = super::peer_script();
        for (tp, field) in [("sys_enter_readlinkat", "pathname"), ("sys_enter_openat", "filename")] {
            let probe = format!("tracepoint:syscalls:{tp} {{ if (strncmp(str(args->{field}, 16)");
            assert!(script.contains(&probe), "no `{probe}` in\n{script}");
        }
    }
}
