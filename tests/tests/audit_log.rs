//! The audit log on disk: rotated by size under a leak storm with every record in exactly one
//! file (lines counted against the crossings the kernel made), files created 0600; and
//! `pidvirt audit` reading a saved log, compact or JSON, with its filters.

use std::{
    collections::BTreeSet,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tests::{AuditRecord, Daemon, Fixture, eventually, proc_truth};

const FIXTURE: &str = env!("CARGO_BIN_EXE_pidvirt-fixture");
const ESRCH: i64 = -3;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o7777
}

/// The audit log and its rotated copies, oldest first: `PATH.n`, ..., `PATH.1`, `PATH`.
fn log_files(log: &Path) -> Vec<PathBuf> {
    let name = log.file_name().unwrap().to_str().unwrap().to_string();
    let mut copies: Vec<(u32, PathBuf)> = std::fs::read_dir(log.parent().unwrap())
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let n = e.file_name().to_str()?.strip_prefix(&format!("{name}."))?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    copies.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    let mut files: Vec<PathBuf> = copies.into_iter().map(|(_, p)| p).collect();
    files.push(log.to_path_buf());
    files
}

/// Every record of a file, checking that it holds whole lines only.
fn records_of(file: &Path) -> Vec<AuditRecord> {
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'), "{} ends inside a line", file.display());
    text.lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}: a split or broken line ({e}): {l}", file.display()))
        })
        .collect()
}

/// Waits until the container's leaks are all accounted for: written to the log or dropped by
/// the ring buffer (counted per container). Returns the drops.
fn settle_storm(d: &Daemon, container: &str, n: u64) -> u64 {
    let start = Instant::now();
    loop {
        let (c, drops) = d.container_crossings(container);
        assert_eq!(c["kill"]["leak"], n, "every crossing counted");
        let written = d.stats()["audit_log"]["written"].as_u64().unwrap();
        if written + drops >= n {
            return drops;
        }
        assert!(start.elapsed() < tests::settle() * 4, "written {written} + dropped {drops} < {n}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_audit_log_rotates_under_a_leak_storm_without_losing_or_splitting_a_line() {
    let max: u64 = 256 * 1024;
    let d = Daemon::start_with(&[
        "--audit-log-max-bytes",
        &max.to_string(),
        "--audit-log-keep",
        "100000",
        "--ringbuf-bytes",
        &(64u32 << 20).to_string(),
    ]);
    let (mut f, host) = Fixture::leaky(FIXTURE, 1);
    let c = f.container();
    let n: u64 = 100_000;
    let started = Instant::now();
    assert_eq!(f.num(&format!("repeat {n} kill {host} 0")), ESRCH);
    let made = started.elapsed();
    let drops = settle_storm(&d, &c, n);
    let elapsed = started.elapsed();
    let files = log_files(&d.audit_log);
    let mut leaks = 0u64;
    let mut last_ts = 0;
    for file in &files {
        let size = std::fs::metadata(file).unwrap().len();
        assert!(size <= max, "{} has {size} bytes, over {max}", file.display());
        assert_eq!(mode(file), 0o600, "{}", file.display());
        for r in records_of(file) {
            // Oldest file first: the records follow each other in time, none twice.
            assert!(r.ts_ns >= last_ts, "{} goes back in time", file.display());
            last_ts = r.ts_ns;
            if r.container == c && r.verdict == "leak" && r.value == i64::from(host) {
                leaks += 1;
            }
        }
    }
    assert_eq!(leaks + drops, n, "lines {leaks} + ring-buffer drops {drops} == leaks made {n}");
    assert!(leaks > n / 2, "most records reach the log ({leaks} of {n})");
    let rotations = d.stats()["audit_log"]["rotations"].as_u64().unwrap();
    assert_eq!(rotations as usize, files.len() - 1, "one rotation per copy");
    assert!(files.len() > 10, "{} files for {leaks} records of {max} bytes at most", files.len());
    eprintln!(
        "storm: {n} leaks made in {made:?} ({:.0}/s), all written or dropped after {elapsed:?} ({:.0}/s, \
         polled), {leaks} lines in {} files, {drops} dropped",
        n as f64 / made.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        files.len()
    );
}

#[test]
fn the_audit_log_keeps_its_copies_and_no_more() {
    let max: u64 = 64 * 1024;
    let d = Daemon::start_with(&["--audit-log-max-bytes", &max.to_string(), "--audit-log-keep", "2"]);
    let (mut f, host) = Fixture::leaky(FIXTURE, 1);
    let n = 5_000;
    assert_eq!(f.num(&format!("repeat {n} kill {host} 0")), ESRCH);
    settle_storm(&d, &f.container(), n);
    let files = log_files(&d.audit_log);
    let names: Vec<String> =
        files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["audit.jsonl.2", "audit.jsonl.1", "audit.jsonl"], "the log and `keep` copies");
    let mut last = 0;
    let mut lines = 0;
    for file in &files {
        assert!(std::fs::metadata(file).unwrap().len() <= max);
        assert_eq!(mode(file), 0o600);
        for r in records_of(file) {
            assert!(r.ts_ns >= last);
            last = r.ts_ns;
            lines += 1;
        }
    }
    assert!(lines < n as usize, "older copies were removed");
    assert!(d.stats()["audit_log"]["rotations"].as_u64().unwrap() > 2);
}

#[test]
fn the_audit_log_and_the_state_file_are_created_0600() {
    // Whatever the umask says (the suite's is usually 022).
    // SAFETY: umask only sets this process's mask; the daemon inherits it.
    let old = unsafe { libc::umask(0o022) };
    let d = Daemon::start();
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    assert_eq!(mode(&d.audit_log), 0o600);
    let f = Fixture::start(FIXTURE, 1);
    let out = d.cli(&["container", "add", "private-1", "--pidns", &f.inner().to_string()]);
    assert_eq!(out.code, 0, "{out:?}");
    let state = d.dir.path().join("state.json");
    assert!(std::fs::read_to_string(&state).unwrap().contains("private-1"));
    assert_eq!(mode(&state), 0o600);
}

/// `pidvirt audit ARGS` with standard input from `input` (a file) and TZ=UTC, no daemon.
fn audit_from_file(input: &Path, args: &[&str]) -> tests::Cli {
    Command::new(tests::pidvirt_bin())
        .arg("audit")
        .args(args)
        .args(["--socket", "/nonexistent/pidvirt.sock"])
        .env("TZ", "UTC")
        .stdin(std::fs::File::open(input).unwrap())
        .output()
        .unwrap()
        .into()
}

fn record(
    ts: u64,
    time: &str,
    container: &str,
    name: Option<&str>,
    syscall: &str,
    verdict: &str,
) -> serde_json::Value {
    let mut r = serde_json::json!({
        "ts_ns": ts, "time": time, "syscall": syscall, "direction": "in", "verdict": verdict, "value": 1043,
        "container": container,
        "caller": {"host_pid": 26919, "host_tid": 26919, "vpid": 7, "vtid": 7, "pidns": 4026532177u64, "comm": "sh"},
        "also": {"host_pid": 1043, "host_tid": 1043, "vpid": 1043, "vtid": 1043, "pidns": 4026531836u64, "container": "host"},
        "read_at": {"level": 0, "pidns": 4026531836u64, "container": "host"}
    });
    if let Some(n) = name {
        r["runtime"] = serde_json::json!({"engine": "docker", "name": n, "image": "nginx"});
    }
    r
}

#[test]
fn a_saved_log_on_stdin_is_filtered_exactly_and_compact_lines_match_their_golden_line() {
    let dir = tempfile::tempdir().unwrap();
    let web = "4f5a1e2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7";
    let mut records = Vec::new();
    for i in 0..60u64 {
        let (container, name) = if i % 3 == 0 { (web, Some("web-1")) } else { ("pidns-4026532400", None) };
        let syscall = ["kill", "tgkill", "prlimit64"][(i % 4).min(2) as usize];
        let verdict = ["leak", "unknown", "collision", "cross_container"][((i / 2) % 4) as usize];
        let time = format!("2026-12-01T12:{:02}:{:02}.123456789Z", i / 60, i % 60);
        records.push(record(1_000 + i, &time, container, name, syscall, verdict));
    }
    let log = dir.path().join("audit.jsonl");
    let text: String = records.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&log, &text).unwrap();

    // The filters, each judged here from the records themselves.
    // Fractions on both sides: the strings compare as the times do.
    let since = "2026-12-01T12:00:30.5Z";
    let want: Vec<String> = records
        .iter()
        .filter(|r| {
            r["verdict"] == "leak"
                && r["syscall"] == "kill"
                && r["runtime"]["name"] == "web-1"
                && r["time"].as_str().unwrap() >= since
        })
        .map(ToString::to_string)
        .collect();
    assert!(!want.is_empty());
    let out = audit_from_file(
        &log,
        &["-o", "json", "--verdict", "leak", "--syscall", "kill", "--container", "web-1", "--since", since],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.lines().map(String::from).collect::<Vec<_>>(), want);
    // The id prefix selects the same container; --limit keeps the newest.
    let out = audit_from_file(&log, &["-o", "json", "--container", &web[..12], "--limit", "3"]);
    let want: Vec<String> =
        records.iter().filter(|r| r["container"] == web).map(ToString::to_string).collect::<Vec<_>>()[17..]
            .to_vec();
    assert_eq!(out.stdout.lines().map(String::from).collect::<Vec<_>>(), want);
    // Unknown filters are refused.
    let out = audit_from_file(&log, &["--syscall", "pread64"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("unknown syscall `pread64`"), "{out:?}");

    // The golden compact line of the first record.
    let out = audit_from_file(
        &log,
        &["-o", "compact", "--limit", "1", "--since", "2026-12-01T12:00:00Z", "--verdict", "collision"],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout,
        "12:00:53.123 collision tgkill(1043) pidns-4026532400 sh[vpid 7, pid 26919] -> names nothing here; host pid of host[pid 1043]\n"
    );
    let first = audit_from_file(&log, &["-o", "compact", "--container", "web-1"]);
    assert_eq!(
        first.stdout.lines().next().unwrap(),
        "12:00:00.123 leak kill(1043) web-1 sh[vpid 7, pid 26919] -> names nothing here; host pid of host[pid 1043]"
    );
    assert_eq!(first.stdout.lines().count(), 20);

    // A pipe, with --input -; a broken line is named and fails the command, the rest printed.
    let mut broken = text.clone();
    broken.insert_str(text.find('\n').unwrap() + 1, "{\"ts_ns\":\n");
    let mut child = Command::new(tests::pidvirt_bin())
        .args(["audit", "--input", "-", "-o", "json", "--socket", "/nonexistent/pidvirt.sock"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), broken.as_bytes()).unwrap();
    let out: tests::Cli = child.wait_with_output().unwrap().into();
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("standard input, line 2: not an audit record"), "{out:?}");
    assert_eq!(out.stdout.lines().count(), 60);
}

#[test]
fn the_daemons_own_log_read_back_names_the_kernels_tasks() {
    let d = Daemon::start();
    let (mut f, host) = Fixture::leaky(FIXTURE, 1);
    let c = f.container();
    assert_eq!(f.num(&format!("repeat 4 kill {host} 0")), ESRCH);
    let sibling = proc_truth::task(host, host).unwrap();
    eventually(tests::settle(), "4 leak records", || {
        (d.audit_log().iter().filter(|r| r.container == c && r.verdict == "leak").count() == 4).then_some(())
    });
    // The daemon's own file, read back with the same filters as the daemon takes.
    let out = audit_from_file(&d.audit_log, &["-o", "json", "--container", &c, "--verdict", "leak"]);
    assert_eq!(out.code, 0, "{out:?}");
    let back: Vec<AuditRecord> = out.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let direct: Vec<AuditRecord> =
        d.audit_log().into_iter().filter(|r| r.container == c && r.verdict == "leak").collect();
    assert_eq!(back, direct);
    // Compact, from the daemon: the caller and the task the host pid names, as /proc has them.
    let out = d.cli(&["audit", "-o", "compact", "--container", &c, "--syscall", "kill", "--limit", "1"]);
    assert_eq!(out.code, 0, "{out:?}");
    let line = out.stdout.trim();
    let expected_tail = format!(
        " leak kill({host}) {c} pidvirt-fixture[vpid 1, pid {}] -> names nothing here; host pid of {c}[vpid {}, pid {host}]",
        f.outer_init,
        sibling.nspid.last().unwrap()
    );
    assert!(line.ends_with(&expected_tail), "{line:?} does not end with {expected_tail:?}");
    // The time is the wall clock's, today's.
    let time = line.split(' ').next().unwrap();
    assert_eq!(time.len(), "12:00:01.123".len(), "{line}");
    let since_future = d.cli(&["audit", "--json", "--since", "2099-01-01T00:00:00Z"]);
    assert_eq!((since_future.code, since_future.stdout.as_str()), (0, ""));
    let names: BTreeSet<String> = d
        .cli(&["audit", "--json", "--since", "1h"])
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<AuditRecord>(l).unwrap().container)
        .collect();
    assert!(names.contains(&c));
}
