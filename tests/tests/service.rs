//! The systemd unit, dist/systemd/pidvirt.service: systemd's own verdicts on it
//! (`systemd-analyze verify`, `systemd-analyze security`), and what it asks of the daemon, done
//! here without a running systemd: the daemon started with the unit's ExecStart arguments under
//! the unit's capability bounding set and NoNewPrivileges (setpriv), and Type=notify's READY=1
//! on a notify socket of the test's own, once the seed is done.

use std::{
    os::unix::net::UnixDatagram,
    process::Command,
    time::{Duration, Instant},
};

use tests::{Daemon, Fixture, eventually};

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/systemd/pidvirt.service");
const FIXTURE: &str = env!("CARGO_BIN_EXE_pidvirt-fixture");
const ESRCH: i64 = -3;

/// The values of `key=` in the unit.
fn unit_values(key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(UNIT).expect("the unit file");
    text.lines().filter_map(|l| l.strip_prefix(&format!("{key}="))).map(String::from).collect()
}

fn exec_start() -> Vec<String> {
    let v = unit_values("ExecStart");
    assert_eq!(v.len(), 1, "one ExecStart: {v:?}");
    v[0].split_whitespace().map(String::from).collect()
}

/// `systemd-analyze verify` of `unit` in a mount namespace of its own where the unit's
/// ExecStart binary is the pidvirt under test (a tmpfs over its directory): what systemd says.
fn verify(unit: &str) -> tests::Cli {
    let exec = exec_start()[0].clone();
    let dir = std::path::Path::new(&exec).parent().unwrap().display().to_string();
    let script =
        r#"mount -t tmpfs -o mode=0755 tmpfs "$1" && cp "$2" "$3" && exec systemd-analyze verify "$4""#;
    let bin = tests::pidvirt_bin();
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script, "sh", &dir])
        .arg(&bin)
        .args([&exec, unit])
        .output()
        .expect("unshare (util-linux)")
        .into()
}

#[test]
fn systemd_analyze_verifies_the_unit_and_rates_its_hardening_ok() {
    let ok = verify(UNIT);
    assert_eq!(ok.code, 0, "systemd-analyze verify: {ok:?}");
    assert_eq!(format!("{}{}", ok.stdout, ok.stderr), "", "systemd-analyze verify found problems");
    // It does find them: a misspelt type.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("pidvirt.service");
    std::fs::write(&broken, std::fs::read_to_string(UNIT).unwrap().replace("Type=notify", "Type=notifyy"))
        .unwrap();
    let bad = verify(broken.to_str().unwrap());
    assert!(bad.stderr.contains("notifyy"), "a broken unit passed: {bad:?}");

    // The exposure level systemd computes, 0 (locked down) to 10: at most 4.5 ("OK").
    let out: tests::Cli = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=45", "--no-pager", UNIT])
        .output()
        .expect("systemd-analyze")
        .into();
    assert_eq!(out.code, 0, "exposure above 4.5: {}", out.stdout.lines().last().unwrap_or(""));
    let level: f64 = out
        .stdout
        .lines()
        .find_map(|l| l.split("Overall exposure level for pidvirt.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in {}", out.stdout));
    assert!(level <= 4.5, "{level}");
}

/// `CAP_BPF CAP_PERFMON` -> `-all,+bpf,+perfmon` (setpriv's spelling).
fn setpriv_caps(caps: &[String]) -> String {
    let mut s = String::from("-all");
    for c in caps {
        s.push_str(&format!(",+{}", c.trim_start_matches("CAP_").to_lowercase()));
    }
    s
}

/// The bit of each capability name (linux/capability.h).
fn cap_bit(name: &str) -> u32 {
    match name {
        "CAP_DAC_READ_SEARCH" => 2,
        "CAP_SYS_PTRACE" => 19,
        "CAP_SYS_ADMIN" => 21,
        "CAP_MAC_ADMIN" => 33,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("capability {other} unknown to the test"),
    }
}

#[test]
fn the_units_capabilities_suffice_and_readiness_is_notified_after_the_seed() {
    let caps: Vec<String> =
        unit_values("CapabilityBoundingSet").join(" ").split_whitespace().map(String::from).collect();
    assert!(caps.iter().any(|c| c == "CAP_BPF"), "{caps:?}");
    assert_eq!(unit_values("NoNewPrivileges"), ["yes"]);
    assert_eq!(unit_values("Type"), ["notify"]);
    // The unit's arguments but its own paths (the test's directory stands in for them).
    let args = exec_start();
    assert_eq!(args[1], "run");
    let mut extra: Vec<&str> = Vec::new();
    let mut it = args[2..].iter();
    while let Some(a) = it.next() {
        if a == "--audit-log" {
            it.next();
        } else {
            extra.push(a);
        }
    }
    let dir = tempfile::Builder::new().prefix("pidvirt-test-").tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let bounding = setpriv_caps(&caps);
    let wrapper =
        ["setpriv", "--no-new-privs", "--inh-caps", "-all", "--bounding-set", bounding.as_str(), "--"];
    let notify_env = notify_path.to_str().unwrap().to_string();
    let d = Daemon::start_wrapped(dir, &wrapper, &[("NOTIFY_SOCKET", notify_env.as_str())], &extra);
    let detach = d.socket.to_string_lossy().into_owned();
    let _detach = scopeguard(move || {
        let _ = tests::pidvirt(&["detach", "--socket", &detach]);
    });
    // The kernel: the daemon runs with exactly the unit's capabilities (those of them this
    // machine's own bounding set has: a sandbox may have fewer).
    let caps_of = |pid: String, key: &str| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let hex = status.lines().find_map(|l| l.strip_prefix(key)).unwrap().trim().to_string();
        (u64::from_str_radix(&hex, 16).unwrap(), status)
    };
    let (ours, _) = caps_of("self".into(), "CapBnd:");
    let (eff, status) = caps_of(d.pid().to_string(), "CapEff:");
    let want: u64 = caps.iter().map(|c| 1u64 << cap_bit(c)).sum::<u64>() & ours;
    assert_eq!(eff, want, "CapEff {eff:x}");
    let nnp = status.lines().find_map(|l| l.strip_prefix("NoNewPrivs:")).unwrap().trim().to_string();
    assert_eq!(nnp, "1");
    // READY=1 comes, with the seed's figures, and by then the seed is done.
    let start = Instant::now();
    let mut said = String::new();
    while !said.contains("READY=1") {
        let mut buf = [0u8; 4096];
        if let Ok(n) = notify.recv(&mut buf) {
            said.push_str(&String::from_utf8_lossy(&buf[..n]));
            said.push('\n');
        }
        assert!(start.elapsed() < tests::settle() * 4, "no READY=1; got {said:?}\n{}", d.log());
    }
    assert!(d.status()["seed"].is_object(), "READY=1 before the seed was done");
    assert!(said.contains("STATUS=attached;") && said.contains("tasks seeded from /proc"), "{said}");
    assert_eq!(d.status()["pinned"], true, "the unit's --pin");
    // And it audits.
    let (mut f, host) = Fixture::leaky(FIXTURE, 1);
    assert_eq!(f.num(&format!("sys kill {host} 0")), ESRCH);
    let c = f.container();
    eventually(tests::settle(), "the leak recorded under the unit's capabilities", || {
        d.audit_log().iter().any(|r| r.container == c && r.verdict == "leak").then_some(())
    });
    // STOPPING=1 on SIGTERM.
    let pid = d.pid();
    drop(d);
    let start = Instant::now();
    let mut stopping = false;
    while !stopping && start.elapsed() < tests::settle() {
        let mut buf = [0u8; 4096];
        if let Ok(n) = notify.recv(&mut buf) {
            stopping = String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1");
        }
    }
    assert!(stopping, "no STOPPING=1 from {pid}");
}

/// Runs `f` on drop.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
