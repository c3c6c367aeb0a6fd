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
pub const DEFAULT_SERIES: &[&str] = &["6.12", "6.1", "6.12:preempt=full"];

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
    /// What each failed test printed (libtest's `---- NAME stdout ----` section), from the
    /// console: the log file stays on the machine that ran the VM, CI's output is all one sees.
    pub failure_output: Vec<(String, String)>,
    /// Why the run itself failed (no test result).
    pub error: Option<String>,
    /// Boots of the VM: more than one when a guest died before the suite started.
    pub boot_attempts: u32,
    /// Seconds each test binary took: (binary, seconds).
    pub binary_times: Vec<(String, String)>,
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

/// The lines libtest printed for each of `failed` (its `---- NAME stdout ----` section, the
/// last 60 lines of it: the panic comes last) in a console's text.
pub fn failure_output(console: &str, failed: &[String]) -> Vec<(String, String)> {
    const KEPT: usize = 60;
    let lines: Vec<&str> = console.lines().map(|l| l.trim_end_matches('\r')).collect();
    failed
        .iter()
        .filter_map(|name| {
            // The logfile names a test by its path; the section header does too.
            let header = format!("---- {name} stdout ----");
            let start = lines.iter().position(|l| l.trim() == header)? + 1;
            let body: Vec<&str> = lines[start..]
                .iter()
                .take_while(|l| !l.starts_with("---- ") && l.trim() != "failures:")
                .copied()
                .collect();
            let text = match body.len().checked_sub(KEPT) {
                Some(cut) if cut > 0 => format!("({cut} lines left out)\n{}", body[cut..].join("\n")),
                _ => body.join("\n"),
            };
            Some((name.clone(), text.trim().to_string()))
        })
        .collect()
}

/// Parses the notes tests leave when a kernel lacks a feature: `test<TAB>reason` lines.
pub fn parse_notes(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(t, r)| (t.trim().to_string(), r.trim().to_string()))
        .collect()
}

/// The shell script the guest runs: the selected tests of each binary, serially, each binary's
/// time in seconds noted in `times.tsv`.
fn guest_script(bins: &[TestBinary], sel: Selection<'_>, kernel_tests: KernelTests) -> String {
    // The preemption model the kernel booted with, on the console for run_kernel to check.
    let mut s = String::from("status=0\ndmesg | grep -m1 'Dynamic Preempt' || true\n");
    for b in bins {
        let Some(args) = test_args(&b.name, sel, kernel_tests) else { continue };
        // The filters come from the command line, the paths from cargo: quoted as words.
        let args: String = args.iter().flat_map(|a| [" ".to_string(), vm::shell_quote(a)]).collect();
        let (name, path) = (&b.name, vm::shell_quote(&b.path.to_string_lossy()));
        let log = vm::shell_quote(&format!("/vm-results/{name}.log"));
        let _ = writeln!(
            s,
            "echo {banner}; t=$(date +%s); {path} --test-threads=1 --logfile {log}{args} || status=1; \
             echo \"{name}\t$(( $(date +%s) - t ))\" >> /vm-results/times.tsv",
            banner = vm::shell_quote(&format!("== {name}")),
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
    sel: Selection<'_>,
) -> KernelReport {
    let started = Instant::now();
    let cache = root.join("target/vm-cache");
    let mut report = KernelReport { kernel: format!("debian-{series}"), ..Default::default() };
    let kernel = match vm::prepare_kernel(&cache, kernel_series(series)) {
        Ok(k) => k,
        Err(e) => {
            report.error = Some(format!("preparing the kernel: {e:#}"));
            return report;
        }
    };
    report.kernel = attach.label(&kernel.name);
    let mut env = vec![
        ("PIDVIRT_BIN".into(), pidvirt.display().to_string()),
        ("PIDVIRT_TIME_SCALE".into(), TIME_SCALE.to_string()),
        ("PIDVIRT_TEST_NOTES".into(), "/vm-results/unavailable.tsv".into()),
        // The booted kernel's own modules (the guest's /lib/modules is the host's): tests load
        // what a tool needs from there (criu: nf_tables).
        ("PIDVIRT_VM_MODULES".into(), kernel.modules_dir.display().to_string()),
        ("RUST_BACKTRACE".into(), "0".into()),
    ];
    match attach {
        Attach::Auto => {}
        Attach::Tracepoint => env.push(("PIDVIRT_ATTACH".into(), "tracepoint".into())),
        Attach::FentryPreemptible => env.push(("PIDVIRT_ATTACH".into(), "fentry".into())),
    }
    let opts = vm::VmRunOptions {
        cwd: root.join("tests"),
        env,
        timeout: Duration::from_hours(1),
        extra_cmdline: attach.cmdline().to_string(),
        mem_mb: 3072,
        cpus: 2,
    };
    let argv = vec!["sh".to_string(), "-c".to_string(), guest_script(bins, sel, attach.tests())];
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
    report.binary_times =
        parse_notes(&std::fs::read_to_string(run.results_dir.join("times.tsv")).unwrap_or_default());
    if run.exit_code.is_none() {
        report.error = Some(match (&run.setup_error, run.timed_out) {
            (Some(e), _) => format!("guest setup failed: {e}"),
            (None, true) => "timed out".into(),
            (None, false) => "the guest died before the suite finished".into(),
        });
    } else if run.exit_code != Some(0) && report.failed.is_empty() {
        report.error =
            Some(format!("the suite exited with {:?} without a failed test (crash?)", run.exit_code));
    } else if let Selection::Kernel = sel {
        let missing = missing_kernel_tests(bins, &report.passed, &report.failed, attach.tests());
        if !missing.is_empty() {
            report.error = Some(format!("selected for the VMs but not in the suite: {}", missing.join(", ")));
        }
    }
    // The results are the kernel's only if the guest ran it (the console says which it booted).
    if report.error.is_none()
        && let Some(booted) = vm::guest_kernel_release(&run.console)
        && booted != kernel.name
    {
        report.error = Some(format!("the guest booted kernel {booted}, not {}", kernel.name));
    }
    // A fully preemptible run is that only if the kernel says so.
    if report.error.is_none()
        && let Some(mode) = attach.cmdline().strip_prefix("preempt=")
        && !run.console.contains(&format!("Dynamic Preempt: {mode}"))
    {
        report.error = Some(format!("the guest's console does not say \"Dynamic Preempt: {mode}\""));
    }
    report.boot_attempts = run.boot_attempts;
    if !report.ok() {
        report.failure_output = failure_output(&run.console, &report.failed);
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
    /// Forced tracepoints (`PIDVIRT_ATTACH=tracepoint`), for a series whose fentry programs take
    /// longer to verify under emulation than a test waits for a daemon (Debian's 6.1: over two
    /// minutes, where 6.12 takes seconds); fentry there is what the attach test asks for.
    Tracepoint,
    /// Booted fully preemptible (`preempt=full`) with fentry forced (`PIDVIRT_ATTACH=fentry`;
    /// `--attach auto` takes tracepoints there): the fentry programs then run preemptibly. Only
    /// [`PREEMPTIBLE_TESTS`].
    FentryPreemptible,
}

impl Attach {
    /// The run of series `series`: fentry on 6.12, tracepoints on 6.1 (and on the host, whose
    /// kernel refuses fentry), so that each path runs on two kernels.
    fn of(series: &str) -> Attach {
        if boot_variant(series) == Some(PREEMPTIBLE_BOOT) {
            Attach::FentryPreemptible
        } else if series.starts_with("6.1") && !series.starts_with("6.12") {
            Attach::Tracepoint
        } else {
            Attach::Auto
        }
    }

    fn label(self, kernel: &str) -> String {
        match self {
            Attach::Auto => kernel.to_string(),
            Attach::Tracepoint => format!("{kernel} tracepoint"),
            Attach::FentryPreemptible => format!("{kernel} {} fentry", self.cmdline()),
        }
    }

    /// Debian's kernels default to voluntary preemption and take `preempt=` at boot.
    fn cmdline(self) -> &'static str {
        match self {
            Attach::Auto | Attach::Tracepoint => "",
            Attach::FentryPreemptible => PREEMPTIBLE_BOOT,
        }
    }

    /// What the run's [`Selection::Kernel`] is.
    fn tests(self) -> KernelTests {
        match self {
            Attach::Auto | Attach::Tracepoint => KERNEL_TESTS,
            Attach::FentryPreemptible => PREEMPTIBLE_TESTS,
        }
    }
}

/// Binaries and their tests (None: all of them).
type KernelTests = &'static [(&'static str, Option<&'static [&'static str]>)];

/// A series booted fully preemptible: `<series>:preempt=full`.
const PREEMPTIBLE_BOOT: &str = "preempt=full";

/// The kernel series of a run (`6.12` of `6.12:preempt=full`).
pub fn kernel_series(run: &str) -> &str {
    run.split_once(':').map_or(run, |(series, _)| series)
}

/// The boot variant of a run (`preempt=full` of `6.12:preempt=full`), if any.
pub fn boot_variant(run: &str) -> Option<&str> {
    run.split_once(':').map(|(_, boot)| boot)
}

/// Fails unless the run's boot variant, if any, is one the VMs know.
pub fn check_boot_variant(run: &str) -> anyhow::Result<()> {
    match boot_variant(run) {
        Some(boot) if boot != PREEMPTIBLE_BOOT => {
            bail!("kernel {run}: the only boot variant is :{PREEMPTIBLE_BOOT}, not :{boot}")
        }
        _ => Ok(()),
    }
}

/// The tests of a fully preemptible run (fentry forced): those whose subject is preemption.
pub const PREEMPTIBLE_TESTS: KernelTests = &[
    ("attach", Some(&["auto_attach_takes_tracepoints_on_a_fully_preemptible_kernel"])),
    (
        "precision",
        Some(&["tasks_switched_in_the_middle_of_the_syscall_programs_are_each_judged_as_themselves"]),
    ),
];

/// Which tests a VM runs.
#[derive(Clone, Copy, Debug)]
pub enum Selection<'a> {
    /// The tests whose subject is the kernel ([`KERNEL_TESTS`]).
    Kernel,
    /// Every test of every binary.
    Whole,
    /// The tests of every binary whose name holds this (libtest's filter).
    Filter(&'a str),
}

/// The tests a VM runs by default, by binary (`None`: all of it; else these, by exact name): those
/// whose subject is the kernel — the programs and their verdicts at every level, the BTF offsets of
/// each structure, attach modes, BPF-LSM, clone3 set_tid, CRIU. The rest (engines, registration,
/// metrics, logs, the unit file) is user space over the same maps and runs on the host's kernel;
/// under emulation the whole suite takes over an hour per kernel (`--whole` runs it).
pub const KERNEL_TESTS: KernelTests = &[
    ("pidvirt", None),
    ("attach", None),
    (
        "audit",
        Some(&[
            "a_host_pid_passed_to_kill_inside_a_container_is_a_leak",
            "a_tiny_ring_buffer_overflows_and_every_drop_is_counted",
            "a_vpid_equal_to_a_siblings_host_pid_is_a_collision_naming_both",
            "returns_are_counted_ok_exactly_and_never_reported",
        ]),
    ),
    ("enforce", None),
    ("levels", Some(&["a_number_of_the_level_above_used_in_a_nested_namespace_is_a_leak_naming_that_level"])),
    (
        "precision",
        Some(&[
            "unshare_fork_pid_waiting_for_its_nested_init_reports_nothing",
            "a_number_naming_only_a_host_kernel_thread_is_unknown_not_a_leak",
            "a_kernel_thread_started_after_attach_is_no_leak_either",
            "tasks_of_two_namespaces_taking_turns_on_one_cpu_are_each_judged_as_themselves",
            "a_child_on_the_kernel_stack_of_one_freed_is_judged_as_itself",
            "tasks_switched_in_the_middle_of_the_syscall_programs_are_each_judged_as_themselves",
        ]),
    ),
    ("procfs", Some(&["a_host_pid_in_a_proc_path_of_the_containers_own_procfs_is_a_leak_and_its_vpid_ok"])),
    (
        "restore",
        Some(&[
            "runc_checkpoint_and_restore_keep_the_tree",
            "snapshot_restore_compare_a_tree_with_sessions_groups_and_threads",
            "spawn_into_a_nested_namespace_with_a_pid_at_every_level",
        ]),
    ),
    (
        "spine",
        Some(&[
            "nested_namespaces_have_a_pid_at_every_level",
            "probe_read_fallback_reads_every_level_like_direct_loads",
            "ps_equals_proc_for_tasks_made_before_and_after_attach",
        ]),
    ),
    ("structures", None),
];

/// The libtest arguments binary `name` runs with under `sel`; `None` when it does not run.
fn test_args(name: &str, sel: Selection<'_>, kernel_tests: KernelTests) -> Option<Vec<String>> {
    match sel {
        Selection::Whole => Some(vec![]),
        Selection::Filter(f) => Some(vec![f.to_string()]),
        Selection::Kernel => kernel_tests.iter().find(|(n, _)| *n == name).map(|(_, tests)| match tests {
            None => vec![],
            Some(tests) => {
                std::iter::once("--exact").chain(tests.iter().copied()).map(String::from).collect()
            }
        }),
    }
}

/// Binaries and tests of [`KERNEL_TESTS`] that a run of `bins` did not have or report: renamed
/// or gone, they would otherwise drop out of the VMs unnoticed.
fn missing_kernel_tests(
    bins: &[TestBinary],
    passed: &[String],
    failed: &[String],
    kernel_tests: KernelTests,
) -> Vec<String> {
    let mut missing = Vec::new();
    for (name, tests) in kernel_tests {
        if !bins.iter().any(|b| b.name == *name) {
            missing.push(format!("{name} (no such test binary)"));
            continue;
        }
        let ran = |t: &&str| passed.iter().chain(failed).any(|r| r == t);
        missing.extend(tests.unwrap_or_default().iter().filter(|t| !ran(t)).map(|t| format!("{name}::{t}")));
    }
    missing
}

/// Runs the selected tests on each series, in parallel (one emulated VM per core).
pub fn run_all(
    root: &Path,
    series: &[String],
    bins: &[TestBinary],
    pidvirt: &Path,
    sel: Selection<'_>,
) -> anyhow::Result<Vec<KernelReport>> {
    vm::ensure_tools()?;
    for s in series {
        check_boot_variant(s)?;
    }
    // Download and unpack first (serially: apt-get takes a lock).
    for s in series {
        vm::prepare_kernel(&root.join("target/vm-cache"), kernel_series(s))
            .with_context(|| format!("kernel {s}"))?;
    }
    let reports = std::thread::scope(|scope| {
        let handles: Vec<_> = series
            .iter()
            .map(|s| scope.spawn(move || run_kernel(root, s, Attach::of(s), bins, pidvirt, sel)))
            .collect();
        handles.into_iter().map(|h| h.join().expect("vm thread")).collect()
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
    for r in reports {
        for (test, out) in &r.failure_output {
            let _ = writeln!(s, "  {} failed {test}:\n{}", r.kernel, indent(out, "    "));
        }
    }
    for r in reports.iter().filter(|r| !r.binary_times.is_empty()) {
        let times: Vec<String> = r.binary_times.iter().map(|(b, t)| format!("{b} {t}s")).collect();
        let _ = writeln!(s, "  {}: {}", r.kernel, times.join(", "));
    }
    s
}

fn indent(text: &str, by: &str) -> String {
    text.lines().map(|l| format!("{by}{l}")).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_a_failed_test_printed_in_the_console() {
        let console = "running 2 tests\r\ntest a ... FAILED\ntest b ... ok\n\nfailures:\n\n---- a stdout ----\n\n\
                       thread 'a' panicked at tests/x.rs:3:5:\r\nassertion failed: x\n\n\nfailures:\n    a\n";
        let out = failure_output(console, &["a".into(), "c".into()]);
        assert_eq!(
            out,
            [("a".to_string(), "thread 'a' panicked at tests/x.rs:3:5:\nassertion failed: x".to_string())]
        );
        let long = (0..100).map(|i| format!("line {i}")).collect::<Vec<_>>().join("\n") + "\n";
        let out2 = failure_output(&format!("---- b stdout ----\n{long}failures:\n"), &["b".into()]);
        assert!(out2[0].1.starts_with("(40 lines left out)\nline 40\n"), "{out2:?}");
        assert!(out2[0].1.ends_with("line 99"), "{out2:?}");
        let r = KernelReport { kernel: "k".into(), failure_output: out, ..Default::default() };
        assert!(summary(&[r]).contains("  k failed a:\n    thread 'a' panicked"));
    }

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
        let s = guest_script(&bins, Selection::Filter("ps_"), KERNEL_TESTS);
        assert!(s.contains(
            "'/w/target/release/deps/spine-1' --test-threads=1 --logfile '/vm-results/spine.log' 'ps_'"
        ));
        assert!(s.ends_with("exit $status\n"));
        let s = guest_script(&bins, Selection::Filter("it's"), KERNEL_TESTS);
        assert!(s.contains("--logfile '/vm-results/spine.log' 'it'\\''s' || status=1;"), "{s}");
        let s = guest_script(&bins, Selection::Whole, KERNEL_TESTS);
        assert!(s.contains("--logfile '/vm-results/spine.log' || status=1;"), "{s}");
    }

    #[test]
    fn a_preemptible_run_boots_its_series_with_preempt_full_and_runs_its_own_tests() {
        assert_eq!(kernel_series("6.12:preempt=full"), "6.12");
        assert_eq!(kernel_series("6.1"), "6.1");
        assert_eq!(Attach::of("6.12:preempt=full"), Attach::FentryPreemptible);
        assert_eq!(Attach::of("6.12"), Attach::Auto);
        assert_eq!(Attach::of("6.1"), Attach::Tracepoint);
        assert_eq!(Attach::FentryPreemptible.cmdline(), "preempt=full");
        assert_eq!(Attach::Auto.cmdline(), "");
        let bins = [
            TestBinary { name: "spine".into(), path: "/spine-1".into() },
            TestBinary { name: "precision".into(), path: "/precision-1".into() },
        ];
        let s = guest_script(&bins, Selection::Kernel, Attach::FentryPreemptible.tests());
        assert!(
            s.contains("'/precision-1' --test-threads=1 --logfile '/vm-results/precision.log' '--exact' 'tasks_switched_"),
            "{s}"
        );
        assert!(!s.contains("spine"), "{s}");
    }

    #[test]
    fn the_kernel_selection_names_its_tests_exactly_and_skips_other_binaries() {
        let bins = [
            TestBinary { name: "spine".into(), path: "/spine-1".into() },
            TestBinary { name: "engines".into(), path: "/engines-1".into() },
            TestBinary { name: "attach".into(), path: "/attach-1".into() },
        ];
        let s = guest_script(&bins, Selection::Kernel, KERNEL_TESTS);
        assert!(
            s.contains("'/spine-1' --test-threads=1 --logfile '/vm-results/spine.log' '--exact' 'nested_")
                && s.contains(" 'probe_read_fallback_reads_every_level_like_direct_loads' "),
            "{s}"
        );
        assert!(!s.contains("engines"), "{s}");
        assert!(
            s.contains("'/attach-1' --test-threads=1 --logfile '/vm-results/attach.log' || status=1;"),
            "{s}"
        );
        // A selected test that did not run is named (a rename would drop it silently).
        let spine = KERNEL_TESTS.iter().find(|(n, _)| *n == "spine").and_then(|(_, t)| *t).unwrap();
        let mut passed: Vec<String> = spine.iter().map(ToString::to_string).collect();
        let spine_missing = |passed: &[String]| {
            let all = missing_kernel_tests(&bins, passed, &[], KERNEL_TESTS);
            assert!(all.contains(&"levels (no such test binary)".to_string()), "{all:?}");
            all.into_iter().filter(|m| m.starts_with("spine")).collect::<Vec<_>>()
        };
        assert!(spine_missing(&passed).is_empty());
        passed.retain(|t| t != "ps_equals_proc_for_tasks_made_before_and_after_attach");
        assert_eq!(spine_missing(&passed), ["spine::ps_equals_proc_for_tasks_made_before_and_after_attach"]);
    }
}
