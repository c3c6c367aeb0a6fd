//! How the syscall programs are attached: fentry/fexit on the syscall functions where the kernel
//! takes them (no syscall tracepoint then, so the syscalls pidvirt does not watch keep the
//! kernel's fast path), tracepoints otherwise or when asked (`PIDVIRT_ATTACH=tracepoint`, as the
//! suite's second pass on a kernel with fentry does). Checked against which program the kernel
//! runs on a syscall (its run counts), and the crossings are judged either way.

use std::process::Command;

use tests::{Daemon, Fixture, daemon_programs as programs, eventually, note_unavailable};

const FIXTURE: &str = env!("CARGO_BIN_EXE_pidvirt-fixture");

/// Turns the kernel's BPF run statistics on while it lives (`kernel.bpf_stats_enabled`).
struct BpfStats(String);

impl BpfStats {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";
    fn enable() -> Self {
        let old = std::fs::read_to_string(Self::PATH).expect("bpf_stats_enabled is readable");
        std::fs::write(Self::PATH, "1").expect("bpf_stats_enabled is writable as root");
        Self(old.trim().to_string())
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

fn runs(pid: u32, name: &str) -> u64 {
    programs(pid, name).iter().sum()
}

fn holds(pid: u32, name: &str) -> bool {
    !programs(pid, name).is_empty()
}

#[test]
fn the_syscall_programs_run_where_status_says_and_the_audit_works_there() {
    let test = "the_syscall_programs_run_where_status_says_and_the_audit_works_there";
    let d = Daemon::start();
    let out = d.cli(&["status"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let status: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let (mode, reason) =
        (status["syscalls"]["mode"].as_str().unwrap(), status["syscalls"]["reason"].as_str().unwrap());
    let forced = std::env::var("PIDVIRT_ATTACH").is_ok_and(|a| a == "tracepoint");
    // The kernel's truth: which of the daemon's programs runs when a watched syscall is made.
    let _stats = BpfStats::enable();
    let (fentry_kill, tracepoint_kill) = ("fentry_kill", "enter_pid_arg");
    let before = (runs(d.pid(), fentry_kill), runs(d.pid(), tracepoint_kill));
    // SAFETY: kill with signal 0 only checks that the (own) process exists.
    assert_eq!(unsafe { libc::kill(std::process::id() as i32, 0) }, 0);
    let after = (runs(d.pid(), fentry_kill), runs(d.pid(), tracepoint_kill));
    match mode {
        "fentry" => {
            assert!(!forced, "fentry although tracepoints were asked for");
            assert!(
                after.0 > before.0,
                "fentry mode, yet {fentry_kill} did not run on kill: {before:?} -> {after:?}"
            );
            assert_eq!(after.1, before.1, "fentry mode, yet the tracepoint program ran on kill");
        }
        "tracepoint" => {
            assert!(
                after.1 > before.1,
                "tracepoint mode, yet {tracepoint_kill} did not run on kill: {before:?} -> {after:?}"
            );
            assert!(!holds(d.pid(), fentry_kill), "tracepoint mode, yet {fentry_kill} is loaded");
            if forced {
                assert!(reason.contains("--attach tracepoint"), "{reason}");
            } else {
                // The kernel refuses fentry here, or auto declined it on a fully preemptible
                // kernel: the fallback, with the reason.
                assert!(reason.contains("refused") || reason.contains("fully preemptible"), "{reason}");
                note_unavailable(test, &format!("fentry on the syscall functions: {reason}"));
            }
        }
        other => panic!("unknown mode {other}"),
    }
    // Either way the crossings are judged: a host pid used in a namespace is a leak.
    let mut f = Fixture::start(FIXTURE, 1);
    let v = f.num("spawn 0") as u32;
    let host = f.host_tid(v);
    assert_eq!(f.num(&format!("sys kill {host} 0")), -3);
    eventually(tests::settle(), "the leak reported", || {
        d.audit_log().into_iter().find(|r| r.verdict == "leak" && r.value == i64::from(host))
    });
    assert_eq!(f.num("sys getpid"), 1);
    eventually(tests::settle(), "getpid counted", || {
        (d.container_crossings(&f.container()).0["getpid"]["ok"] >= 1).then_some(())
    });
}

#[test]
fn asking_for_fentry_gets_it_or_a_clear_error_naming_why() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("pidvirt.sock");
    let log = dir.path().join("daemon.log");
    let mut child = Command::new(tests::pidvirt_bin())
        .args(["run", "--attach", "fentry", "--state-file", "none", "--socket"])
        .arg(&socket)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("pidvirt run");
    let sock = socket.to_string_lossy().into_owned();
    // Long: Debian's 6.1 under emulation verifies the fentry programs for minutes.
    let outcome = eventually(std::time::Duration::from_mins(10), "the daemon answers or exits", || {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(Err(status));
        }
        let out = tests::pidvirt(&["status", "--socket", &sock]);
        (out.code == 0).then(|| Ok(out.stdout))
    });
    match outcome {
        Ok(status) => {
            let v: serde_json::Value = serde_json::from_str(&status).unwrap();
            assert_eq!(v["syscalls"]["mode"], "fentry");
            // SAFETY: kill takes no pointers; the pid is our child's, not yet reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
        Err(status) => {
            // A kernel that refuses fentry: the daemon exits 1 and says why, by name.
            let stderr = std::fs::read_to_string(&log).unwrap_or_default();
            assert_eq!(status.code(), Some(1), "{stderr}");
            let why = stderr.lines().last().unwrap_or("").to_string();
            assert!(why.contains("fentry") && why.contains("refused"), "{stderr}");
            note_unavailable("asking_for_fentry_gets_it_or_a_clear_error_naming_why", &why);
        }
    }
}

/// The kernel's preemption mode, where it says it: debugfs's sched/preempt (the running mode, in
/// parentheses), else its version string for a build with one mode (PREEMPT_RT, PREEMPT), else
/// `preempt=` on the command line of a build that takes it (PREEMPT_DYNAMIC). None: not said.
fn kernel_preemption() -> Option<String> {
    if let Ok(s) = std::fs::read_to_string("/sys/kernel/debug/sched/preempt") {
        return s.split_whitespace().find_map(|w| Some(w.strip_prefix('(')?.strip_suffix(')')?.to_string()));
    }
    let version = std::fs::read_to_string("/proc/sys/kernel/version").unwrap_or_default();
    let words: Vec<&str> = version.split_whitespace().collect();
    if words.contains(&"PREEMPT_RT") {
        return Some("rt".into());
    }
    if !words.contains(&"PREEMPT_DYNAMIC") {
        return Some(if words.contains(&"PREEMPT") { "full" } else { "voluntary" }.into());
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    cmdline.split_whitespace().find_map(|w| w.strip_prefix("preempt=").map(str::to_string))
}

/// fentry programs run preemptibly: on a fully preemptible kernel the kernel skips a program's
/// runs on a CPU while a task is switched out in the middle of one. `--attach auto` takes
/// tracepoints there (whose programs run with preemption off), and `status` says why.
#[test]
fn auto_attach_takes_tracepoints_on_a_fully_preemptible_kernel() {
    let test = "auto_attach_takes_tracepoints_on_a_fully_preemptible_kernel";
    let d = Daemon::start_with(&["--attach", "auto"]);
    let status = d.status();
    let (mode, reason) =
        (status["syscalls"]["mode"].as_str().unwrap(), status["syscalls"]["reason"].as_str().unwrap());
    match kernel_preemption().as_deref() {
        Some(m @ ("full" | "lazy" | "rt")) => {
            assert_eq!(mode, "tracepoint", "preempt={m}, yet: {reason}");
            assert!(reason.contains("fully preemptible") && reason.contains(m), "{reason}");
            // The kernel's truth: the tracepoint program runs on kill, no fentry program is loaded.
            let _stats = BpfStats::enable();
            let before = runs(d.pid(), "enter_pid_arg");
            // SAFETY: kill with signal 0 only checks that the (own) process exists.
            assert_eq!(unsafe { libc::kill(std::process::id() as i32, 0) }, 0);
            assert!(runs(d.pid(), "enter_pid_arg") > before, "the tracepoint program did not run on kill");
            assert!(!holds(d.pid(), "fentry_kill"), "an fentry program is loaded");
        }
        Some(m) => {
            // Not fully preemptible: fentry where the kernel takes it.
            assert!(!reason.contains("fully preemptible"), "preempt={m}: {reason}");
            note_unavailable(test, &format!("the kernel is not fully preemptible (preempt={m})"));
        }
        None => {
            note_unavailable(test, "the kernel does not say its preemption mode (no debugfs, no preempt=)")
        }
    }
}
