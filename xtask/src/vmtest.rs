//! The suite on more kernels: Debian's kernels booted under QEMU (vm.rs), the host-built test
//! binaries run inside them, results per kernel.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::vm;

/// Debian kernel series the suite runs on besides the host's.
pub const DEFAULT_SERIES: &[&str] = &["6.12", "6.1"];

/// Everything under software emulation is about this much slower (tests scale their waits).
const TIME_SCALE: u32 = 8;

/// A test binary of the suite.
#[derive(Clone, Debug)]
pub struct TestBinary {
    pub name: String,
    pub path: PathBuf,
}

/// What one kernel said.
#[derive(Clone, Debug, Default)]
pub struct KernelReport {
    pub kernel: String,
    pub passed: Vec<String>,
    pub failed: Vec<String>,
    /// Tests that found a feature missing and checked its "unavailable" path: (test, reason).
    pub unavailable: Vec<(String, String)>,
    pub elapsed: Duration,
    /// Console log kept for a failure.
    pub console_log: Option<PathBuf>,
    /// Why the run itself failed (no test result).
    pub error: Option<String>,
    /// Boots of the VM: more than one when a guest died before the suite started.
    pub boot_attempts: u32,
}

impl KernelReport {
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.failed.is_empty() && !self.passed.is_empty()
    }
    /// Tests that passed for real (not through an "unavailable" path).
    pub fn real(&self) -> usize {
        self.passed.len() - self.unavailable.iter().filter(|(t, _)| self.passed.contains(t)).count()
    }
}

/// Builds the suite's test binaries (integration tests and pidvirt-user's unit tests, which
/// check the BTF offsets of the running kernel) and lists them.
pub fn build_test_binaries(mut cargo: Command) -> anyhow::Result<Vec<TestBinary>> {
    let out = cargo
        .args(["test", "--release", "--package", "tests", "--package", "pidvirt-user", "--no-run"])
        .args(["--message-format", "json"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
            continue;
        }
        let (Some(exe), Some(name)) = (v["executable"].as_str(), v["target"]["name"].as_str()) else {
            continue;
        };
        let kind = v["target"]["kind"][0].as_str().unwrap_or("");
        // The integration suite, and pidvirt-user's library tests.
        if kind == "test" || (kind == "lib" && name == "pidvirt") {
            bins.push(TestBinary { name: name.to_string(), path: PathBuf::from(exe) });
        }
    }
    bins.sort_by(|a, b| a.name.cmp(&b.name));
    if bins.is_empty() {
        bail!("no test binary found");
    }
    Ok(bins)
}

/// Parses libtest's `--logfile` lines (`ok NAME`, `failed NAME`, `ignored NAME`).
pub fn parse_logfile(text: &str, passed: &mut Vec<String>, failed: &mut Vec<String>) {
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("ok", name)) => passed.push(name.to_string()),
            Some(("failed", name)) => failed.push(name.to_string()),
            _ => {}
        }
    }
}

/// Parses the notes tests leave when a kernel lacks a feature: `test<TAB>reason` lines.
pub fn parse_notes(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(t, r)| (t.trim().to_string(), r.trim().to_string()))
        .collect()
}

/// The shell script the guest runs: every binary, serially, each test serially.
fn guest_script(bins: &[TestBinary], filter: Option<&str>) -> String {
    // The filter comes from the command line, the paths from cargo: quoted as words.
    let filter = filter.map(|f| format!(" {}", vm::shell_quote(f))).unwrap_or_default();
    let mut s = String::from("status=0\n");
    for b in bins {
        let (name, path) = (&b.name, vm::shell_quote(&b.path.to_string_lossy()));
        let log = vm::shell_quote(&format!("/vm-results/{name}.log"));
        let _ = writeln!(
            s,
            "echo {}; {path} --test-threads=1 --logfile {log}{filter} || status=1",
            vm::shell_quote(&format!("== {name}")),
        );
    }
    s.push_str("exit $status\n");
    s
}

/// Runs the suite in a VM booted from Debian kernel `series`.
pub fn run_kernel(
    root: &Path,
    series: &str,
    attach: Attach,
    bins: &[TestBinary],
    pidvirt: &Path,
    filter: Option<&str>,
) -> KernelReport {
    let started = Instant::now();
    let cache = root.join("target/vm-cache");
    let mut report = KernelReport { kernel: format!("debian-{series}"), ..Default::default() };
    let kernel = match vm::prepare_kernel(&cache, series) {
        Ok(k) => k,
        Err(e) => {
            report.error = Some(format!("preparing the kernel: {e:#}"));
            return report;
        }
    };
    report.kernel = attach.label(&kernel.name);
    let bins: Vec<TestBinary> = bins.iter().filter(|b| attach.runs(&b.name)).cloned().collect();
    let bins = bins.as_slice();
    let mut env = vec![
        ("PIDVIRT_BIN".into(), pidvirt.display().to_string()),
        ("PIDVIRT_TIME_SCALE".into(), TIME_SCALE.to_string()),
        ("PIDVIRT_TEST_NOTES".into(), "/vm-results/unavailable.tsv".into()),
        // The booted kernel's own modules (the guest's /lib/modules is the host's): tests load
        // what a tool needs from there (criu: nf_tables).
        ("PIDVIRT_VM_MODULES".into(), kernel.modules_dir.display().to_string()),
        ("RUST_BACKTRACE".into(), "0".into()),
    ];
    if let Attach::Tracepoint | Attach::TracepointOnly = attach {
        env.push(("PIDVIRT_ATTACH".into(), "tracepoint".into()));
    }
    let opts = vm::VmRunOptions {
        cwd: root.join("tests"),
        env,
        timeout: Duration::from_hours(1),
        extra_cmdline: String::new(),
        mem_mb: 3072,
        cpus: 2,
    };
    let argv = vec!["sh".to_string(), "-c".to_string(), guest_script(bins, filter)];
    let run = match vm::run_in_vm(&kernel, &cache, &argv, &opts) {
        Ok(r) => r,
        Err(e) => {
            report.error = Some(format!("running the VM: {e:#}"));
            return report;
        }
    };
    for b in bins {
        let log =
            std::fs::read_to_string(run.results_dir.join(format!("{}.log", b.name))).unwrap_or_default();
        parse_logfile(&log, &mut report.passed, &mut report.failed);
    }
    report.unavailable =
        parse_notes(&std::fs::read_to_string(run.results_dir.join("unavailable.tsv")).unwrap_or_default());
    if run.exit_code.is_none() {
        report.error = Some(match (&run.setup_error, run.timed_out) {
            (Some(e), _) => format!("guest setup failed: {e}"),
            (None, true) => "timed out".into(),
            (None, false) => "the guest died before the suite finished".into(),
        });
    } else if run.exit_code != Some(0) && report.failed.is_empty() {
        report.error =
            Some(format!("the suite exited with {:?} without a failed test (crash?)", run.exit_code));
    }
    // The results are the kernel's only if the guest ran it (the console says which it booted).
    if report.error.is_none()
        && let Some(booted) = vm::guest_kernel_release(&run.console)
        && booted != kernel.name
    {
        report.error = Some(format!("the guest booted kernel {booted}, not {}", kernel.name));
    }
    report.boot_attempts = run.boot_attempts;
    if !report.ok() {
        let dir = root.join("target/vm-logs");
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{}.console.log", report.kernel.replace(' ', "-")));
        if std::fs::write(&path, &run.console).is_ok() {
            report.console_log = Some(path);
        }
    }
    let _ = std::fs::remove_dir_all(run.results_dir.parent().unwrap_or(&run.results_dir));
    report.elapsed = started.elapsed();
    report
}

/// How the daemons of a run attach to the syscalls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// `pidvirt run`'s default: fentry/fexit where the kernel takes them (Debian's kernels do).
    Auto,
    /// Forced tracepoints (`PIDVIRT_ATTACH=tracepoint`): the fallback's path on a kernel that
    /// has fentry, so that both are tested everywhere.
    Tracepoint,
    /// The whole suite with forced tracepoints, the only run of a series whose fentry programs
    /// take longer to verify under emulation than a test waits for a daemon (Debian's 6.1: over
    /// two minutes, where 6.12 takes seconds); fentry is tested on the other series.
    TracepointOnly,
}

impl Attach {
    /// Both, in the order a kernel's runs go.
    pub const BOTH: [Attach; 2] = [Attach::Auto, Attach::Tracepoint];

    /// The runs of series `series`.
    fn runs_of(series: &str) -> &'static [Attach] {
        if series.starts_with("6.1") && !series.starts_with("6.12") {
            &[Attach::TracepointOnly]
        } else {
            &Self::BOTH
        }
    }

    /// The test binaries whose subject is the syscall programs: the forced-tracepoint run takes
    /// only these (the rest do not depend on how the syscalls are hooked, and an emulated VM
    /// runs the whole suite in about half an hour).
    const SYSCALL_SUITES: &[&str] = &["attach", "audit", "levels", "precision", "structures"];

    /// Whether a run in this mode takes test binary `name`.
    fn runs(self, name: &str) -> bool {
        match self {
            Attach::Auto | Attach::TracepointOnly => true,
            Attach::Tracepoint => Self::SYSCALL_SUITES.contains(&name),
        }
    }

    fn label(self, kernel: &str) -> String {
        match self {
            Attach::Auto => kernel.to_string(),
            Attach::Tracepoint | Attach::TracepointOnly => format!("{kernel} tracepoint"),
        }
    }
}

/// Runs the suite on each series, in parallel (one emulated VM per core), in both attach modes
/// (one after the other on a series).
pub fn run_all(
    root: &Path,
    series: &[String],
    bins: &[TestBinary],
    pidvirt: &Path,
    filter: Option<&str>,
) -> anyhow::Result<Vec<KernelReport>> {
    vm::ensure_tools()?;
    // Download and unpack first (serially: apt-get takes a lock).
    for s in series {
        vm::prepare_kernel(&root.join("target/vm-cache"), s).with_context(|| format!("kernel {s}"))?;
    }
    let reports = std::thread::scope(|scope| {
        let handles: Vec<_> = series
            .iter()
            .map(|s| {
                scope.spawn(move || {
                    Attach::runs_of(s)
                        .iter()
                        .map(|&a| run_kernel(root, s, a, bins, pidvirt, filter))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("vm thread")).collect()
    });
    Ok(reports)
}

/// One table line per kernel.
pub fn summary(reports: &[KernelReport]) -> String {
    let mut s = format!(
        "{:<34} {:>6} {:>6} {:>11} {:>6} {:>8}  {}\n",
        "KERNEL", "PASSED", "REAL", "UNAVAILABLE", "FAILED", "TIME", "NOTES"
    );
    for r in reports {
        let mut notes = Vec::new();
        if let Some(e) = &r.error {
            notes.push(e.clone());
        }
        if r.boot_attempts > 1 {
            notes.push(format!("booted {} times (a guest died before the suite started)", r.boot_attempts));
        }
        if !r.failed.is_empty() {
            notes.push(format!("failed: {}", r.failed.join(", ")));
        }
        for (t, why) in &r.unavailable {
            notes.push(format!("{t}: unavailable on {}: {why}", r.kernel));
        }
        if let Some(log) = &r.console_log {
            notes.push(format!("console: {}", log.display()));
        }
        let _ = writeln!(
            s,
            "{:<34} {:>6} {:>6} {:>11} {:>6} {:>7.0}s  {}",
            r.kernel,
            r.passed.len(),
            r.real(),
            r.unavailable.len(),
            r.failed.len(),
            r.elapsed.as_secs_f64(),
            notes.join("; ")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libtest_logfiles_and_notes() {
        let (mut p, mut f) = (vec![], vec![]);
        parse_logfile("ok a\nfailed b\nignored c\nok d e\n", &mut p, &mut f);
        assert_eq!(p, ["a", "d e"]);
        assert_eq!(f, ["b"]);
        let n = parse_notes("enforce_denies\tBPF-LSM is not active (lsm=capability)\nnoise\n");
        assert_eq!(n, [("enforce_denies".to_string(), "BPF-LSM is not active (lsm=capability)".to_string())]);
        let r = KernelReport {
            passed: vec!["x".into(), "y".into()],
            unavailable: n.clone(),
            ..Default::default()
        };
        assert_eq!(r.real(), 2);
        let r = KernelReport { passed: vec!["enforce_denies".into()], unavailable: n, ..Default::default() };
        assert_eq!(r.real(), 0);
    }

    #[test]
    fn the_summary_notes_a_second_boot() {
        let r = KernelReport {
            kernel: "k".into(),
            passed: vec!["a".into()],
            boot_attempts: 2,
            ..Default::default()
        };
        assert!(summary(&[r]).contains("booted 2 times (a guest died before the suite started)"));
        let r = KernelReport {
            kernel: "k".into(),
            passed: vec!["a".into()],
            boot_attempts: 1,
            ..Default::default()
        };
        assert!(!summary(&[r]).contains("booted"));
    }

    #[test]
    fn the_guest_script_runs_every_binary_serially() {
        let bins = [TestBinary { name: "spine".into(), path: "/w/target/release/deps/spine-1".into() }];
        let s = guest_script(&bins, Some("ps_"));
        assert!(s.contains(
            "'/w/target/release/deps/spine-1' --test-threads=1 --logfile '/vm-results/spine.log' 'ps_'"
        ));
        assert!(s.ends_with("exit $status\n"));
        let s = guest_script(&bins, Some("it's"));
        assert!(s.contains("--logfile '/vm-results/spine.log' 'it'\\''s' || status=1\n"), "{s}");
    }
}
