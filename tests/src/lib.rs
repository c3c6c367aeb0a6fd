//! Harness of the pidvirt integration suite: runs the real daemon on the real kernel, builds pid
//! namespaces with the fixture, and reads the kernel's own truth from /proc with a parser of its
//! own (independent of pidvirt's), so that a test never checks pidvirt against itself.
//!
//! Tests share one kernel: run them serially (`--test-threads=1`, as `cargo xtask test` does).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader, Write},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde::Deserialize;

pub mod engines;
pub mod prometheus;

/// The pidvirt binary under test: $PIDVIRT_BIN, or target/release/pidvirt of this workspace.
pub fn pidvirt_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PIDVIRT_BIN") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/pidvirt")
}

/// The pidvirt binary run as user nobody (65534): a copy in a directory anyone can enter, since
/// the build's own may not be (a clone under /root, mode 0700).
pub struct NobodyPidvirt {
    _dir: tempfile::TempDir,
    bin: PathBuf,
}

impl NobodyPidvirt {
    pub fn new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod 0755");
        let bin = dir.path().join("pidvirt");
        std::fs::copy(pidvirt_bin(), &bin).expect("copy the pidvirt binary");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod 0755");
        Self { _dir: dir, bin }
    }

    /// `pidvirt ARGS` as nobody.
    pub fn command(&self) -> Command {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(&self.bin);
        c.uid(65534).gid(65534);
        c
    }
}

impl Default for NobodyPidvirt {
    fn default() -> Self {
        Self::new()
    }
}

/// Records that `test` found a kernel feature missing and checked the "unavailable" path
/// instead (the suite's runner reports it per kernel: "unavailable on <kernel>: <reason>").
pub fn note_unavailable(test: &str, reason: &str) {
    eprintln!("{test}: unavailable on this kernel: {reason}");
    if let Some(path) = std::env::var_os("PIDVIRT_TEST_NOTES") {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{test}\t{}", reason.replace(['\t', '\n'], " "));
        }
    }
}

/// How long to wait for something the daemon does asynchronously: 5 s, times
/// $PIDVIRT_TIME_SCALE (set for software-emulated VM kernels, where everything is slower).
pub fn settle() -> Duration {
    let scale: u32 =
        std::env::var("PIDVIRT_TIME_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1).max(1);
    Duration::from_secs(5) * scale
}

/// Polls `f` until it returns Some, or panics with `what` after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    eventually_explained(timeout, what, f, String::new)
}

/// [`eventually`], whose panic also carries what `explain` answers at the timeout (the state
/// that tells why, for a failure too rare to reproduce at will).
pub fn eventually_explained<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    explain: impl FnOnce() -> String,
) -> T {
    within(timeout, &mut f).unwrap_or_else(|| {
        let why = explain();
        let why = if why.is_empty() { why } else { format!("; {why}") };
        panic!("timed out after {timeout:?} waiting for: {what}{why}");
    })
}

/// Polls `f` until it returns Some, for at most `timeout`: None if it never did (for a test
/// that reports a missing kernel feature instead of failing).
pub fn within<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Result of a CLI call.
#[derive(Debug)]
pub struct Cli {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Cli {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs `pidvirt ARGS`.
pub fn pidvirt(args: &[&str]) -> Cli {
    Command::new(pidvirt_bin()).args(args).output().expect("run pidvirt").into()
}

/// A `ps --json` row (the fields the tests check), parsed independently of pidvirt's types.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct PsRow {
    pub container: String,
    pub pidns: u64,
    pub level: u32,
    pub host_tid: u32,
    pub host_pid: u32,
    pub vtid: u32,
    pub vpid: u32,
    pub nspid: Vec<u32>,
    pub nstgid: Vec<u32>,
    pub comm: String,
    pub seeded: bool,
    pub kthread: bool,
}

/// An audit record (a line of --audit-log), parsed independently of pidvirt's types.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct AuditRecord {
    pub ts_ns: u64,
    pub syscall: String,
    pub direction: String,
    pub verdict: String,
    pub value: i64,
    pub container: String,
    pub caller: AuditCaller,
    pub target: Option<AuditTask>,
    pub also: Option<AuditTask>,
    #[serde(default)]
    pub read_at: Option<ReadAt>,
    /// The caller's container, as its runtime knows it.
    #[serde(default)]
    pub runtime: Option<RuntimeRow>,
    #[serde(default)]
    pub k8s: Option<K8sRow>,
}

/// Where a record's number was read (the level and namespace of `also`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ReadAt {
    pub level: u32,
    pub pidns: u64,
    pub container: String,
}

/// What a runtime says about a container.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct RuntimeRow {
    pub engine: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub image: String,
}

/// A container's Kubernetes identity.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct K8sRow {
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub pod: String,
    #[serde(default)]
    pub container: String,
    #[serde(default)]
    pub pod_uid: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct AuditCaller {
    pub host_pid: u32,
    pub host_tid: u32,
    pub vpid: u32,
    pub pidns: u64,
    pub comm: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct AuditTask {
    pub host_pid: u32,
    pub vpid: u32,
    pub container: String,
    #[serde(default)]
    pub runtime: Option<RuntimeRow>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ContainerRow {
    pub id: String,
    pub kind: String,
    pub pidns: u64,
    pub level: u32,
    pub parent: Option<String>,
    pub cgroup: Option<String>,
    pub tasks: u64,
    pub registered_by: String,
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub runtime: Option<RuntimeRow>,
    #[serde(default)]
    pub k8s: Option<K8sRow>,
}

/// A running `pidvirt run`, with its own socket and audit log; stopped (SIGTERM) on drop.
pub struct Daemon {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub audit_log: PathBuf,
    pub stderr_log: PathBuf,
}

impl Daemon {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts the daemon with extra `run` arguments and waits until it answers.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::try_start_with(extra).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the daemon in `dir` (its socket, logs and state file live there); a daemon
    /// started again in the same directory finds the previous one's state file.
    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Self {
        Self::start_wrapped(dir, &[], &[], extra)
    }

    /// Starts the daemon in `dir` as `WRAPPER... pidvirt run ...` (e.g. `setpriv` with a
    /// capability set), with `env` added to its environment.
    pub fn start_wrapped(
        dir: tempfile::TempDir,
        wrapper: &[&str],
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> Self {
        Self::try_start_wrapped(dir, wrapper, env, extra).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the daemon with extra `run` arguments; `Err` with its exit status and log when it
    /// exits before it answers (a kernel that refuses a program).
    pub fn try_start_with(extra: &[&str]) -> Result<Self, String> {
        let dir = tempfile::Builder::new().prefix("pidvirt-test-").tempdir().expect("tempdir");
        Self::try_start_wrapped(dir, &[], &[], extra)
    }

    fn try_start_wrapped(
        dir: tempfile::TempDir,
        wrapper: &[&str],
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> Result<Self, String> {
        let state_file = dir.path().join("state.json");
        let socket = dir.path().join("pidvirt.sock");
        let audit_log = dir.path().join("audit.jsonl");
        let stderr_log = dir.path().join("daemon.log");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(pidvirt_bin());
                c
            }
            None => Command::new(pidvirt_bin()),
        };
        let child = cmd
            .envs(env.iter().copied())
            .arg("run")
            .arg("--socket")
            .arg(&socket)
            .arg("--audit-log")
            .arg(&audit_log)
            .arg("--state-file")
            .arg(&state_file)
            .args(extra)
            .env("PIDVIRT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_log).expect("daemon log"))
            .spawn()
            .expect("start pidvirt run");
        let mut d = Self { child: Some(child), dir, socket, audit_log, stderr_log };
        let sock = d.socket.to_string_lossy().into_owned();
        let start = Instant::now();
        // Generous: under software emulation (the VM kernels) verifying the programs alone
        // takes ~10 s, the /proc path programs (the largest) longer.
        let limit =
            if extra.contains(&"--proc-paths") { Duration::from_mins(10) } else { Duration::from_mins(2) };
        loop {
            if let Some(status) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(format!("pidvirt run exited early ({status}):\n{}", d.log()));
            }
            if pidvirt(&["status", "--socket", &sock]).code == 0 {
                break;
            }
            assert!(
                start.elapsed() <= limit,
                "pidvirt run did not answer within {} s:\n{}",
                limit.as_secs(),
                d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(d)
    }

    /// The daemon's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Runs `pidvirt ARGS` with our socket in PIDVIRT_SOCKET: for commands whose last arguments
    /// are a command of their own (`spawn ... -- CMD`), after which `--socket` would be CMD's.
    pub fn cli_env(&self, args: &[&str]) -> Cli {
        Command::new(pidvirt_bin())
            .args(args)
            .env("PIDVIRT_SOCKET", &self.socket)
            .stdin(Stdio::null())
            .output()
            .expect("run pidvirt")
            .into()
    }

    /// Runs `pidvirt ARGS --socket <ours>`.
    pub fn cli(&self, args: &[&str]) -> Cli {
        let sock = self.socket.to_string_lossy().into_owned();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--socket", &sock]);
        pidvirt(&all)
    }

    fn json<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> T {
        let out = self.cli(args);
        assert_eq!(out.code, 0, "pidvirt {args:?} failed: {}", out.stderr);
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("pidvirt {args:?}: bad JSON ({e}): {}", out.stdout))
    }

    pub fn ps(&self) -> Vec<PsRow> {
        self.json(&["ps", "--json"])
    }

    pub fn ps_by_tid(&self) -> BTreeMap<u32, PsRow> {
        self.ps().into_iter().map(|r| (r.host_tid, r)).collect()
    }

    pub fn containers(&self) -> Vec<ContainerRow> {
        self.json(&["containers", "--json"])
    }

    /// `status` as a JSON value.
    pub fn status(&self) -> serde_json::Value {
        self.json(&["status"])
    }

    /// `stats --json` as a JSON value.
    pub fn stats(&self) -> serde_json::Value {
        self.json(&["stats", "--json"])
    }

    /// Crossing counts of one container: syscall -> verdict -> count, and its ring-buffer drops.
    pub fn container_crossings(&self, container: &str) -> (BTreeMap<String, BTreeMap<String, u64>>, u64) {
        let v: serde_json::Value = self.json(&["stats", "--json", "--container", container]);
        let crossings = serde_json::from_value(v["crossings"].clone()).expect("crossings");
        (crossings, v["ringbuf_drops"].as_u64().expect("ringbuf_drops"))
    }

    /// Every record of the audit log so far (JSON lines).
    pub fn audit_log(&self) -> Vec<AuditRecord> {
        audit_records(&self.audit_log)
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.stop_inner().expect("daemon already stopped")
    }

    /// SIGKILLs the daemon (no chance to clean up) and reaps it.
    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the daemon and hands back its directory (state file, logs) for a restart.
    pub fn stop_keep_dir(mut self) -> (Option<std::process::ExitStatus>, tempfile::TempDir) {
        let status = self.stop_inner();
        let dir = tempfile::Builder::new().prefix("pidvirt-test-").tempdir().expect("tempdir");
        let old = std::mem::replace(&mut self.dir, dir);
        (status, old)
    }

    fn stop_inner(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill takes no pointers; the pid is our unreaped child's, so it names that process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Every record of the audit log at `path` (JSON lines; none if there is no file).
pub fn audit_records(path: &Path) -> Vec<AuditRecord> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line is not a record ({e}): {l}")))
        .collect()
}

/// The namespace fixture (tests/src/bin/pidvirt-fixture.rs): pid namespaces with processes
/// and threads, commanded line by line.
pub struct Fixture {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Namespace inodes, level 1 first.
    pub pidns: Vec<u64>,
    /// Host pid of the level-1 init.
    pub outer_init: u32,
}

#[derive(Deserialize)]
struct FixtureHello {
    pidns: Vec<u64>,
    outer_init: u32,
}

impl Fixture {
    /// Starts `bin` (pass `env!("CARGO_BIN_EXE_pidvirt-fixture")`) with `depth` nested namespaces.
    pub fn start(bin: &str, depth: usize) -> Self {
        Self::spawn(Command::new(bin).args(["--depth", &depth.to_string()]))
    }

    /// The fixture started by `cmd` (e.g. `docker exec -i` of it inside a container).
    pub fn start_with(cmd: &mut Command) -> Self {
        Self::spawn(cmd)
    }

    /// The same, from inside cgroup v2 directory `cgroup` (the fixture moves there first).
    pub fn start_in_cgroup(bin: &str, depth: usize, cgroup: &Path) -> Self {
        let script = format!("echo $$ > '{}/cgroup.procs' && exec '{bin}' --depth {depth}", cgroup.display());
        Self::spawn(Command::new("sh").args(["-c", &script]))
    }

    fn spawn(cmd: &mut Command) -> Self {
        let mut child =
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("start pidvirt-fixture");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut hello = String::new();
        stdout.read_line(&mut hello).expect("fixture hello");
        let h: FixtureHello =
            serde_json::from_str(&hello).unwrap_or_else(|e| panic!("fixture said {hello:?}: {e}"));
        Self { child, stdin, stdout, pidns: h.pidns, outer_init: h.outer_init }
    }

    /// Runs one command in the innermost init; returns its answer.
    pub fn cmd(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").expect("write fixture command");
        self.stdin.flush().expect("flush");
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).expect("fixture answer");
        assert!(!answer.is_empty(), "fixture died on {line:?}");
        answer.trim().to_string()
    }

    /// Runs a command whose answer is a number.
    pub fn num(&mut self, line: &str) -> i64 {
        let a = self.cmd(line);
        a.parse().unwrap_or_else(|_| panic!("fixture {line:?} answered {a:?}"))
    }

    /// `spawn_tree`: the vpid of each role (A..H).
    pub fn tree(&mut self) -> BTreeMap<String, u32> {
        let answer = self.cmd("spawn_tree");
        let roles: BTreeMap<String, u32> = answer
            .split_whitespace()
            .filter_map(|w| {
                let (role, vpid) = w.split_once('=')?;
                Some((role.to_string(), vpid.parse().ok()?))
            })
            .collect();
        assert_eq!(roles.len(), 8, "spawn_tree answered {answer:?}");
        roles
    }

    /// A fixture with `depth` namespaces whose innermost init has a sibling, and that sibling's
    /// host pid: a number that names nothing in the namespace (checked in /proc), so that
    /// `kill(it, 0)` from there is a leak the kernel answers with ESRCH.
    pub fn leaky(bin: &str, depth: usize) -> (Self, u32) {
        let mut f = Self::start(bin, depth);
        let sibling = f.num("spawn 0") as u32;
        let host = f.host_tid(sibling);
        assert!(
            proc_truth::tasks_in(f.inner()).iter().all(|t| t.nspid.last() != Some(&host)),
            "the host pid {host} is also a number of the namespace"
        );
        (f, host)
    }

    /// `kill(n, 0)` from a new process of the level-1 namespace (nsenter forks it there, running
    /// the fixture `bin`); answers the kernel's return value.
    pub fn kill_from_level_1(&self, bin: &str, n: u32) -> String {
        let out = Command::new("nsenter")
            .args(["-t", &self.outer_init.to_string(), "-p", "--", bin, "call", "kill", &n.to_string(), "0"])
            .output()
            .expect("nsenter (util-linux)");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The innermost namespace's container id.
    pub fn container(&self) -> String {
        format!("pidns-{}", self.inner())
    }

    /// The innermost namespace.
    pub fn inner(&self) -> u64 {
        *self.pidns.last().expect("at least one namespace")
    }

    /// Host tid of the task whose number in the innermost namespace is `vtid`.
    pub fn host_tid(&self, vtid: u32) -> u32 {
        let ns = self.inner();
        proc_truth::tasks()
            .into_iter()
            .find(|t| t.pidns == ns && t.nspid.last() == Some(&vtid))
            .unwrap_or_else(|| panic!("no task with vtid {vtid} in pidns {ns} in /proc"))
            .tid
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The namespaces' inits die with the fixture; wait until /proc agrees.
        let namespaces: BTreeSet<u64> = self.pidns.iter().copied().collect();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5)
            && proc_truth::tasks().iter().any(|t| namespaces.contains(&t.pidns))
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A cgroup v2 directory made for a test, removed (after its processes) on drop.
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    /// Creates `<cgroup2 mount>/<name>`.
    pub fn new(name: &str) -> Self {
        let path = cgroup2_root().join(name);
        let _ = std::fs::remove_dir(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path }
    }

    /// A child cgroup (removed with this one).
    pub fn child(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Starts `sh -c SCRIPT` inside cgroup `dir` (moved there before it runs SCRIPT).
    pub fn spawn_in(dir: &Path, script: &str) -> Child {
        Command::new("sh")
            .args(["-c", &format!("echo $$ > '{}/cgroup.procs' && {script}", dir.display())])
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Kill what is left, then remove the directories, deepest first.
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        walk(&e.path(), out);
                    }
                }
            }
            out.push(dir.to_path_buf());
        }
        let mut dirs = Vec::new();
        walk(&self.path, &mut dirs);
        for d in &dirs {
            for pid in std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default().lines() {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    // SAFETY: kill takes no pointers.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        for d in &dirs {
            let start = Instant::now();
            while std::fs::remove_dir(d).is_err() && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The cgroup v2 mount point.
pub fn cgroup2_root() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap()))
        })
        .expect("a cgroup2 mount")
}

/// The highest-numbered CPU this process may run on.
pub fn last_cpu() -> usize {
    cpus().pop().expect("a CPU")
}

/// The CPUs this process may run on.
pub fn cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is ours and of the size passed.
    let r = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut set) };
    assert_eq!(r, 0, "sched_getaffinity: {}", std::io::Error::last_os_error());
    // SAFETY: CPU_ISSET reads the set within its size.
    (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
}

/// Keeps the calling thread on `cpu` until dropped (then restores its CPUs).
pub struct Pinned(libc::cpu_set_t);

/// Pins the calling thread to `cpu`.
pub fn pin_this_thread(cpu: usize) -> Pinned {
    // SAFETY: zeroed sets are valid; the calls read and write sets of the size passed.
    unsafe {
        let mut before: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut before), 0);
        let mut only: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut only);
        let r = libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const only);
        assert_eq!(r, 0, "sched_setaffinity to CPU {cpu}: {}", std::io::Error::last_os_error());
        Pinned(before)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: the set saved at the pinning.
        unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const self.0) };
    }
}

/// What the kernel says, read from /proc with this crate's own parser.
pub mod proc_truth {
    use super::{MetadataExt, Path};

    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Task {
        pub pid: u32,
        pub tid: u32,
        pub nspid: Vec<u32>,
        pub nstgid: Vec<u32>,
        pub pidns: u64,
    }

    fn numbers(status: &str, key: &str) -> Option<Vec<u32>> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].split_whitespace().map(|n| n.parse().ok()).collect()
    }

    fn dir_numbers(dir: &str) -> Vec<u32> {
        std::fs::read_dir(dir)
            .map(|rd| rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Task `tid` of process `pid`, if it exists.
    pub fn task(pid: u32, tid: u32) -> Option<Task> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
        let pidns = std::fs::metadata(format!("/proc/{pid}/ns/pid")).ok()?.ino();
        Some(Task {
            pid,
            tid,
            nspid: numbers(&status, "NSpid:")?,
            nstgid: numbers(&status, "NStgid:")?,
            pidns,
        })
    }

    /// Numeric field `n` (counted from 1, as proc(5) does) of task `tid`'s stat.
    fn stat_field(tid: u32, n: usize) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{tid}/stat")).ok()?;
        // Fields after the command (field 2, in parentheses, may hold spaces) start at field 3.
        stat.rsplit_once(')')?.1.split_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
    }

    /// Whether `pid` is a kernel thread: PF_KTHREAD in its stat's flags (field 9).
    pub fn kthread(pid: u32) -> Option<bool> {
        const PF_KTHREAD: u64 = 0x0020_0000;
        Some(stat_field(pid, 9)? & PF_KTHREAD != 0)
    }

    /// Context switches of task `tid` so far (voluntary and not), as its status counts them.
    pub fn context_switches(tid: u32) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{tid}/status")).unwrap_or_default();
        ["voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"]
            .iter()
            .filter_map(|key| numbers(&status, key)?.first().copied())
            .map(u64::from)
            .sum()
    }

    /// The CPU task `tid` last ran on (`processor`, field 39 of its stat).
    pub fn last_cpu_of(tid: u32) -> Option<usize> {
        usize::try_from(stat_field(tid, 39)?).ok()
    }

    /// Every task on the host.
    pub fn tasks() -> Vec<Task> {
        let mut out = vec![];
        for pid in dir_numbers("/proc") {
            for tid in dir_numbers(&format!("/proc/{pid}/task")) {
                out.extend(task(pid, tid));
            }
        }
        out
    }

    /// Tasks whose own pid namespace is `ns`.
    pub fn tasks_in(ns: u64) -> Vec<Task> {
        tasks().into_iter().filter(|t| t.pidns == ns).collect()
    }

    /// What /proc/PID/status says of a process's relations: its parent (host pid), and its
    /// process group and session at every level (0 where not visible).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Relations {
        pub name: String,
        pub ppid: u32,
        pub nspgid: Vec<u32>,
        pub nssid: Vec<u32>,
    }

    /// The relations of host pid `pid`, if it exists.
    pub fn relations(pid: u32) -> Option<Relations> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        Some(Relations {
            name: status.lines().find_map(|l| l.strip_prefix("Name:"))?.trim().to_string(),
            ppid: numbers(&status, "PPid:")?.first().copied()?,
            nspgid: numbers(&status, "NSpgid:")?,
            nssid: numbers(&status, "NSsid:")?,
        })
    }

    /// Host tids of the threads of host pid `pid` (the leader included).
    pub fn thread_ids(pid: u32) -> Vec<u32> {
        let mut tids = dir_numbers(&format!("/proc/{pid}/task"));
        tids.sort_unstable();
        tids
    }

    /// The comm of host tid `tid` of process `pid`.
    pub fn comm(pid: u32, tid: u32) -> Option<String> {
        Some(std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?.trim().to_string())
    }

    /// Pid namespace inodes that hold a task now.
    pub fn namespaces() -> std::collections::BTreeSet<u64> {
        tasks().into_iter().map(|t| t.pidns).collect()
    }

    /// A host pid no task has now, from the top of the range (pids are handed out from the
    /// bottom, so it stays free for the moment a test needs it).
    pub fn free_pid() -> u32 {
        let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(32768);
        (max / 2..max - 1).rev().find(|p| !alive(*p)).expect("a free pid")
    }

    /// Whether host tid `tid` exists.
    pub fn alive(tid: u32) -> bool {
        Path::new(&format!("/proc/{tid}")).exists()
    }

    /// The state letter of host tid `tid` (`/proc/TID/status` State: R, S, T, Z...).
    pub fn state(tid: u32) -> Option<char> {
        let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
        status.lines().find_map(|l| l.strip_prefix("State:"))?.trim().chars().next()
    }
}

/// `bpftool ARGS -j`, parsed (an empty array where it printed nothing).
pub fn bpftool(args: &[&str]) -> serde_json::Value {
    let out = Command::new("bpftool").args(args).arg("-j").output().expect("bpftool is installed");
    assert!(out.status.success(), "bpftool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Array(vec![]))
}

/// Ids of the BPF objects process `pid` holds, by the fdinfo field `field` of its fds
/// (`prog_id:` of its program and link fds, `map_id:` of its map fds).
fn fdinfo_ids(pid: u32, field: &str) -> std::collections::HashSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .expect("the daemon's fdinfo is readable")
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .flat_map(|info| {
            info.lines()
                .filter_map(|l| l.strip_prefix(field).and_then(|v| v.trim().parse().ok()))
                .collect::<Vec<u64>>()
        })
        .collect()
}

/// Whether the map named `name` that process `pid` holds has an element of key `key` (the
/// kernel's answer to a lookup, by the map's id in the process's fdinfo).
pub fn daemon_map_has(pid: u32, name: &str, key: &[u8]) -> bool {
    daemon_map_lookup(pid, name, key).is_some()
}

/// The value of key `key` in the map named `name` that process `pid` holds (the kernel's answer
/// to a lookup, by the map's id in the process's fdinfo); None where the map has no such key.
pub fn daemon_map_lookup(pid: u32, name: &str, key: &[u8]) -> Option<Vec<u8>> {
    let ids = fdinfo_ids(pid, "map_id:");
    let kernel_name = pidvirt_common::catalogue::kernel_name(name);
    let maps: Vec<u64> = bpftool(&["map", "show"])
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["name"] == kernel_name)
        .filter_map(|m| m["id"].as_u64())
        .filter(|id| ids.contains(id))
        .collect();
    let [id] = maps[..] else { panic!("process {pid} holds {} maps named {name}", maps.len()) };
    let id = id.to_string();
    let mut args = vec!["map", "lookup", "id", &id, "key"];
    let bytes: Vec<String> = key.iter().map(u8::to_string).collect();
    args.extend(bytes.iter().map(String::as_str));
    let out = Command::new("bpftool").args(&args).output().expect("bpftool is installed");
    // A missing key: bpftool prints "Not found" and exits non-zero.
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() && stdout.contains("Not found") {
        return None;
    }
    assert!(out.status.success(), "bpftool {args:?}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    // "key: 01 00 00 00  value: 02 00 ...", the value's bytes in hex, over one line or more.
    let (_, value) =
        stdout.split_once("value:").unwrap_or_else(|| panic!("bpftool {args:?}: no value in {stdout}"));
    Some(
        value
            .split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap_or_else(|e| panic!("bpftool {args:?}: `{b}`: {e}")))
            .collect(),
    )
}

/// How many keys of front slot `slot` the hash map behind the front holds, as the spill counts
/// `counts` (TASK_SPILLS or VIRT_SPILLS, pidvirt_common::spill_count) of daemon `pid` say.
pub fn daemon_spill_count(pid: u32, counts: &str, slot: u32) -> u64 {
    let (word, one, mask) = pidvirt_common::spill_count::lane(slot);
    let value = daemon_map_lookup(pid, counts, &word.to_ne_bytes()).expect("a count word of every slot");
    let word = u64::from_ne_bytes(value.try_into().expect("8-byte words"));
    (word & mask) / one
}

/// The kernel's records (`bpftool prog show`) of the programs process `held_by` holds (by the
/// ids in its fdinfo), or, for None, of every program loaded.
fn program_records(held_by: Option<u32>) -> Vec<serde_json::Value> {
    let ids = held_by.map(|pid| fdinfo_ids(pid, "prog_id:"));
    let records = bpftool(&["prog", "show"]);
    records
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["id"].as_u64().is_some_and(|id| ids.as_ref().is_none_or(|ids| ids.contains(&id))))
        .cloned()
        .collect()
}

/// The kernel's records of the programs named in `names` that process `pid` holds.
fn daemon_program_records(pid: u32, names: &[&str]) -> Vec<serde_json::Value> {
    let mut records = program_records(Some(pid));
    records.retain(|p| p["name"].as_str().is_some_and(|n| names.contains(&n)));
    records
}

/// How many runs of the programs named in `names` that process `pid` holds the kernel skipped
/// because another run of the same program was under way on that CPU (bpf_prog_info's
/// recursion_misses, which bpftool shows when it is not 0).
pub fn daemon_program_misses(pid: u32, names: &[&str]) -> u64 {
    daemon_program_records(pid, names).iter().map(|p| p["recursion_misses"].as_u64().unwrap_or(0)).sum()
}

/// Runs the kernel skipped of each program (bpftool's full names; programs with none left out),
/// as `stats`' `skipped_runs` answers them: of the programs process `held_by` holds, or, for
/// None, of every program loaded (pinned programs a daemon adopted, which it holds no fd of).
pub fn kernel_skipped_runs(held_by: Option<u32>) -> BTreeMap<String, u64> {
    let mut skipped = BTreeMap::new();
    for p in program_records(held_by) {
        let misses = p["recursion_misses"].as_u64().unwrap_or(0);
        if let Some(name) = p["name"].as_str().filter(|_| misses > 0) {
            *skipped.entry(name.to_string()).or_insert(0) += misses;
        }
    }
    skipped
}

/// The programs named `name` that process `pid` holds (the kernel's list, by the ids in its
/// fdinfo), with how many times the kernel ran each.
pub fn daemon_programs(pid: u32, name: &str) -> Vec<u64> {
    daemon_program_records(pid, &[name]).iter().map(|p| p["run_cnt"].as_u64().unwrap_or(0)).collect()
}
