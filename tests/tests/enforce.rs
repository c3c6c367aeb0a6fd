//! The enforcer: per-container observe/enforce with BPF-LSM, fail-safe pinning, detach.
//!
//! BPF-LSM is refused by some kernels (the 6.18 host of these machines): there the tests check
//! the "unavailable" path by name (and say so through `note_unavailable`); on kernels that take
//! LSM programs (the VM kernels) they check that actions are really denied.

use std::{path::Path, process::Command};

use tests::{AuditRecord, Daemon, TestCgroup, eventually, note_unavailable, pidvirt, settle};

const FIXTURE: &str = env!("CARGO_BIN_EXE_pidvirt-fixture");
const EPERM: i64 = -1;

/// Whether the daemon runs the enforcer, and why not.
fn enforcement(d: &Daemon) -> (bool, String) {
    let out = d.cli(&["status"]);
    assert_eq!(out.code, 0, "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let e = &v["enforcement"];
    (e["available"].as_bool().expect("enforcement.available"), e["reason"].as_str().unwrap_or("").to_string())
}

/// The LSMs the kernel runs, read from securityfs (the kernel's own word).
fn kernel_lsms() -> String {
    std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default().trim().to_string()
}

/// Runs one syscall from a new process in cgroup `dir` (`call NAME ARGS` of the fixture);
/// returns its raw result.
fn call_from(dir: &Path, args: &str) -> i64 {
    let out = TestCgroup::spawn_in(dir, &format!("exec '{FIXTURE}' call {args}")).wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().parse().unwrap_or_else(|_| panic!("fixture call {args}: {text:?}"))
}

/// Runs one syscall from this (host) process's child.
fn call_from_host(args: &str) -> i64 {
    let out = Command::new(FIXTURE).arg("call").args(args.split_whitespace()).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A sleeping process in cgroup `dir`; its pid once it is there.
fn sleeper(dir: &Path) -> (std::process::Child, u32) {
    let child = TestCgroup::spawn_in(dir, "exec sleep 1000");
    let pid = child.id();
    eventually(settle(), "sleeper in its cgroup", || {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
        procs.lines().any(|l| l.trim() == pid.to_string()).then_some(())
    });
    (child, pid)
}

/// PTRACE_SEIZE: attaches without stopping the tracee (the tracer's exit detaches it).
const PTRACE_SEIZE: i64 = 0x4206;

/// The four actions the enforcer must stop, from a process in `dir` on task `pid`.
fn actions(dir: &Path, pid: u32) -> [(&'static str, i64); 4] {
    [
        ("task_kill", call_from(dir, &format!("kill {pid} 0"))),
        ("ptrace_access_check", call_from(dir, &format!("ptrace {PTRACE_SEIZE} {pid} 0 0"))),
        ("task_setnice", call_from(dir, &format!("setpriority 0 {pid} 0"))),
        ("task_setrlimit", call_from(dir, &format!("prlimit_set {pid}"))),
    ]
}

#[test]
fn enforce_mode_denies_cross_container_actions_observe_mode_audits_them() {
    let d = Daemon::start();
    let a = TestCgroup::new(&format!("pidvirt-test-ea-{}", std::process::id()));
    let b = TestCgroup::new(&format!("pidvirt-test-eb-{}", std::process::id()));
    let (mut a_task, a_pid) = sleeper(&a.path);
    let (mut b_task, b_pid) = sleeper(&b.path);
    assert_eq!(d.cli(&["container", "add", "ca", "--cgroup", &a.path.to_string_lossy()]).code, 0);
    assert_eq!(d.cli(&["container", "add", "cb", "--cgroup", &b.path.to_string_lossy()]).code, 0);
    let (available, reason) = enforcement(&d);
    if available {
        assert_eq!(d.cli(&["policy", "set", "ca", "--mode", "enforce"]).code, 0);
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(&d.cli(&["containers", "--json"]).stdout).unwrap();
        assert_eq!(rows.iter().find(|c| c["id"] == "ca").unwrap()["mode"], "enforce");
        // From A (enforce) on B's task: every action denied with EPERM.
        for (hook, r) in actions(&a.path, b_pid) {
            assert_eq!(r, EPERM, "{hook}: the kernel must deny it");
        }
        let denied = eventually(settle(), "four denial records", || {
            let rs: Vec<AuditRecord> =
                d.audit_log().into_iter().filter(|r| r.verdict == "denied" && r.container == "ca").collect();
            (rs.len() >= 4).then_some(rs)
        });
        let hooks: std::collections::BTreeSet<&str> = denied.iter().map(|r| r.syscall.as_str()).collect();
        for hook in ["task_kill", "ptrace_access_check", "task_setnice", "task_setrlimit"] {
            assert!(hooks.contains(hook), "{hook} missing from {hooks:?}");
        }
        for r in &denied {
            assert_eq!(r.direction, "lsm");
            let t = r.target.as_ref().unwrap();
            assert_eq!((t.host_pid, t.container.as_str()), (b_pid, "cb"));
        }
        let stats: serde_json::Value =
            serde_json::from_str(&d.cli(&["stats", "--json", "--container", "ca"]).stdout).unwrap();
        assert!(stats["denied"]["task_kill"].as_u64().unwrap() >= 1);
        // Within A, and from the host: allowed.
        for (hook, r) in actions(&a.path, a_pid) {
            assert_eq!(r, 0, "{hook} within the container");
        }
        assert_eq!(call_from_host(&format!("kill {b_pid} 0")), 0);
        assert_eq!(call_from_host(&format!("setpriority 0 {b_pid} 0")), 0);
        // B observes: acting on A's task is allowed by the kernel and audited.
        for (hook, r) in actions(&b.path, a_pid) {
            assert_eq!(r, 0, "{hook} from an observe container");
        }
        // A observes again (no container enforces now): the kernel allows what it denied.
        assert_eq!(d.cli(&["policy", "set", "ca", "--mode", "observe"]).code, 0);
        for (hook, r) in actions(&a.path, b_pid) {
            assert_eq!(r, 0, "{hook} from A once it observes again");
        }
        // And enforces once more: denied again.
        assert_eq!(d.cli(&["policy", "set", "ca", "--mode", "enforce"]).code, 0);
        for (hook, r) in actions(&a.path, b_pid) {
            assert_eq!(r, EPERM, "{hook} from A once it enforces again");
        }
    } else {
        // The unavailable path: said by name, asking for enforce is an error, nothing is denied.
        note_unavailable("enforce_mode_denies_cross_container_actions_observe_mode_audits_them", &reason);
        assert!(!reason.is_empty());
        let lsms = kernel_lsms();
        assert!(
            !lsms.split(',').any(|l| l == "bpf") || reason.contains("refused"),
            "BPF-LSM is active (lsm={lsms}) yet enforcement is unavailable for: {reason}"
        );
        let out = d.cli(&["policy", "set", "ca", "--mode", "enforce"]);
        assert_eq!(out.code, 1, "{out:?}");
        assert!(out.stderr.contains("enforcement is unavailable on this kernel"), "{out:?}");
        let out = d.cli(&["container", "add", "cc", "--pidns", "1", "--mode", "enforce"]);
        assert!(out.stderr.contains("enforcement is unavailable"), "{out:?}");
        // Observe (the only mode here): the kernel allows it, pidvirt audits it.
        assert_eq!(call_from(&a.path, &format!("kill {b_pid} 0")), 0);
    }
    let cross = eventually(settle(), "cross_container audit", || {
        d.audit_log()
            .into_iter()
            .find(|r| r.verdict == "cross_container" && r.syscall == "kill" && r.value > 1)
    });
    assert!(cross.container == "ca" || cross.container == "cb", "{cross:?}");
    let _ = a_task.kill();
    let _ = b_task.kill();
    let _ = a_task.wait();
    let _ = b_task.wait();
}

/// Detaches (and removes the pins) even when a test fails.
struct Detach(String);
impl Drop for Detach {
    fn drop(&mut self) {
        let _ = pidvirt(&["detach", "--socket", &self.0]);
    }
}

/// Names of pidvirt's programs the kernel has loaded (bpftool's view).
fn loaded_programs() -> Vec<String> {
    let out = Command::new("bpftool").args(["prog", "show", "--json"]).output().expect("bpftool");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let ours = ["sched_process_f", "sched_process_e", "exit_getpid", "enter_pid_arg", "lsm_task_kill"];
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["name"].as_str().map(str::to_string))
                .filter(|n| ours.contains(&n.as_str()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn pinned_programs_keep_counting_and_enforcing_while_the_daemon_is_killed_and_detach_removes_them() {
    let mut d = Daemon::start_with(&["--pin"]);
    let _detach = Detach(d.socket.to_string_lossy().into_owned());
    let a = TestCgroup::new(&format!("pidvirt-test-pa-{}", std::process::id()));
    let b = TestCgroup::new(&format!("pidvirt-test-pb-{}", std::process::id()));
    let (mut b_task, b_pid) = sleeper(&b.path);
    assert_eq!(d.cli(&["container", "add", "pa", "--cgroup", &a.path.to_string_lossy()]).code, 0);
    assert_eq!(d.cli(&["container", "add", "pb", "--cgroup", &b.path.to_string_lossy()]).code, 0);
    let (available, reason) = enforcement(&d);
    if available {
        assert_eq!(d.cli(&["policy", "set", "pa", "--mode", "enforce"]).code, 0);
    }
    let status: serde_json::Value = serde_json::from_str(&d.cli(&["status"]).stdout).unwrap();
    assert_eq!(status["pinned"], true);
    let attached = (status["syscalls"]["mode"].clone(), status["signalfd"]["available"].clone());
    let before: serde_json::Value =
        serde_json::from_str(&d.cli(&["stats", "--json", "--container", "pa"]).stdout).unwrap();
    let kills_before = before["crossings"]["kill"]["cross_container"].as_u64().unwrap();

    // SIGKILL: no chance to clean up. The programs stay (pinned), and keep working.
    d.sigkill();
    assert!(!loaded_programs().is_empty(), "pinned programs outlive the daemon");
    let r = call_from(&a.path, &format!("kill {b_pid} 0"));
    if available {
        assert_eq!(r, EPERM, "enforcement holds while the daemon is down");
    } else {
        note_unavailable(
            "pinned_programs_keep_counting_and_enforcing_while_the_daemon_is_killed_and_detach_removes_them",
            &reason,
        );
        assert_eq!(r, 0);
    }
    // A new daemon adopts the pins: what was counted while it was down is there.
    let (_, dir) = d.stop_keep_dir();
    let d = Daemon::start_in(dir, &["--pin"]);
    let status: serde_json::Value = serde_json::from_str(&d.cli(&["status"]).stdout).unwrap();
    assert_eq!(status["adopted"], true, "{status}");
    // Adopted as they were attached: the syscall programs' mode, and the signalfd program (an
    // fexit program, whatever the syscalls' mode).
    assert_eq!(
        (status["syscalls"]["mode"].clone(), status["signalfd"]["available"].clone()),
        attached,
        "{status}"
    );
    let after: serde_json::Value =
        serde_json::from_str(&d.cli(&["stats", "--json", "--container", "pa"]).stdout).unwrap();
    assert_eq!(
        after["crossings"]["kill"]["cross_container"].as_u64().unwrap(),
        kills_before + 1,
        "the kill made while the daemon was down was counted"
    );

    // Detach: the daemon stops, the pins go, no pidvirt program is left in the kernel.
    let out = pidvirt(&["detach", "--socket", &d.socket.to_string_lossy()]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!Path::new("/sys/fs/bpf/pidvirt").exists());
    eventually(settle(), "no program left", || loaded_programs().is_empty().then_some(()));
    assert_eq!(call_from(&a.path, &format!("kill {b_pid} 0")), 0, "nothing enforces after detach");
    let _ = b_task.kill();
    let _ = b_task.wait();
}
