//! `cargo xtask`: setup, build, run, test (and later bench, vm-test) for pidvirt.

mod bench;
mod setup;
mod vm;
mod vmtest;

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building pidvirt needs (idempotent).
    Setup {
        /// Also what the tests need.
        #[arg(long)]
        tests: bool,
    },
    /// Build target/release/pidvirt (kernel programs embedded).
    Build,
    /// Build, then run `pidvirt run` attached to this host (arguments go to `pidvirt run`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Unit tests, then the suite on this kernel (serially, as root) and its kernel tests on
    /// Debian's kernels booted under QEMU (6.12 and 6.1; the VMs run in parallel).
    Test {
        /// Only run tests whose name contains this (in the VMs too).
        #[arg(long)]
        filter: Option<String>,
        /// Only this kernel: the host's.
        #[arg(long)]
        host_only: bool,
        /// The whole suite in the VMs, not only the tests whose subject is the kernel.
        #[arg(long, conflicts_with = "filter")]
        whole: bool,
    },
    /// The suite's kernel tests in VMs only: `--kernel 6.12 --kernel 6.1` (default: both).
    VmTest {
        #[arg(long = "kernel")]
        kernels: Vec<String>,
        /// Every test whose name contains this, of every binary.
        #[arg(long)]
        filter: Option<String>,
        /// The whole suite, not only the tests whose subject is the kernel (over an hour).
        #[arg(long, conflicts_with = "filter")]
        whole: bool,
    },
    /// clippy on every target, warnings denied.
    Lint,
    /// Benchmark on this machine (root): syscall overhead vs an empty-program floor and a
    /// bpftrace peer, anomaly throughput, attach time, map memory per task. Writes
    /// target/bench/bench.{json,md} and docs/benchmarks.md.
    Bench(bench::Options),
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| ".".into(), Path::to_path_buf)
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!("{what} needs root (it loads eBPF programs and makes pid namespaces); effective uid is {euid}");
    }
    Ok(())
}

fn build() -> anyhow::Result<PathBuf> {
    println!("[build] cargo build --release");
    setup::run(cargo().args(["build", "--release", "--package", "pidvirt-user"]))?;
    Ok(workspace_root().join("target/release/pidvirt"))
}

/// What the VMs run: a filter from the command line, the whole suite, or its kernel tests.
fn selection(filter: Option<&str>, whole: bool) -> vmtest::Selection<'_> {
    match (filter, whole) {
        (Some(f), _) => vmtest::Selection::Filter(f),
        (None, true) => vmtest::Selection::Whole,
        (None, false) => vmtest::Selection::Kernel,
    }
}

fn test(filter: Option<&str>, host_only: bool, whole: bool) -> anyhow::Result<()> {
    require_root("the test suite")?;
    setup::test_deps()?;
    if !host_only {
        vm::ensure_tools()?;
    }
    let started = std::time::Instant::now();
    let bin = build()?;
    println!("[test] unit tests");
    setup::run(cargo().args([
        "test",
        "--release",
        "--workspace",
        "--exclude",
        "tests",
        "--exclude",
        "pidvirt-ebpf",
    ]))?;
    let bins = vmtest::build_test_binaries(cargo())?;
    let mut reports = vec![host_suite(&bins, &bin, filter)?];
    if !host_only {
        let series: Vec<String> = vmtest::DEFAULT_SERIES.iter().map(ToString::to_string).collect();
        println!(
            "[test] the suite's kernel tests on Debian kernels {} under QEMU (in parallel)",
            series.join(", ")
        );
        reports.extend(vmtest::run_all(&workspace_root(), &series, &bins, &bin, selection(filter, whole))?);
    }
    finish(&reports, started)
}

/// Runs every test binary of the suite on this kernel, serially.
fn host_suite(
    bins: &[vmtest::TestBinary],
    pidvirt: &Path,
    filter: Option<&str>,
) -> anyhow::Result<vmtest::KernelReport> {
    let started = std::time::Instant::now();
    let release = kernel_release();
    println!("[test] the suite on this kernel ({release}), serially");
    let logs = workspace_root().join("target/test-logs/host");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs)?;
    let notes = logs.join("unavailable.tsv");
    let mut report = vmtest::KernelReport { kernel: release, ..Default::default() };
    for b in bins {
        let log = logs.join(format!("{}.log", b.name));
        let mut cmd = Command::new(&b.path);
        cmd.current_dir(workspace_root().join("tests"))
            .args(["--test-threads=1", "--logfile"])
            .arg(&log)
            .args(filter)
            .env("PIDVIRT_BIN", pidvirt)
            .env("PIDVIRT_TEST_NOTES", &notes);
        let status = cmd.status().with_context(|| format!("run {}", b.path.display()))?;
        vmtest::parse_logfile(
            &std::fs::read_to_string(&log).unwrap_or_default(),
            &mut report.passed,
            &mut report.failed,
        );
        if !status.success() && report.failed.is_empty() {
            report.error = Some(format!("{} exited with {status} without a failed test", b.name));
        }
    }
    report.unavailable = vmtest::parse_notes(&std::fs::read_to_string(&notes).unwrap_or_default());
    report.elapsed = started.elapsed();
    Ok(report)
}

fn finish(reports: &[vmtest::KernelReport], started: std::time::Instant) -> anyhow::Result<()> {
    println!("\n[test] results per kernel (REAL: passed for real, not through an unavailable path)");
    print!("{}", vmtest::summary(reports));
    println!("[test] total time {:.0} s", started.elapsed().as_secs_f64());
    if reports.iter().all(vmtest::KernelReport::ok) {
        println!("[test] all passed");
        Ok(())
    } else {
        bail!(
            "the suite failed on {}",
            reports.iter().filter(|r| !r.ok()).map(|r| r.kernel.as_str()).collect::<Vec<_>>().join(", ")
        )
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string()
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Task::Setup { tests } => {
            if tests {
                setup::test_deps()
            } else {
                setup::build_deps()
            }
        }
        Task::Build => {
            setup::build_deps()?;
            build().map(|_| ())
        }
        Task::Run { args } => {
            require_root("pidvirt run")?;
            setup::build_deps()?;
            let bin = build()?;
            println!("[run] {} run {}", bin.display(), args.join(" "));
            let err = Command::new(&bin).arg("run").args(&args).exec();
            Err(err).with_context(|| format!("exec {}", bin.display()))
        }
        Task::Test { filter, host_only, whole } => test(filter.as_deref(), host_only, whole),
        Task::VmTest { kernels, filter, whole } => {
            require_root("the test suite")?;
            setup::test_deps()?;
            let started = std::time::Instant::now();
            let bin = build()?;
            let bins = vmtest::build_test_binaries(cargo())?;
            let series = if kernels.is_empty() {
                vmtest::DEFAULT_SERIES.iter().map(ToString::to_string).collect()
            } else {
                kernels
            };
            let sel = selection(filter.as_deref(), whole);
            let reports = vmtest::run_all(&workspace_root(), &series, &bins, &bin, sel)?;
            finish(&reports, started)
        }
        Task::Bench(opts) => bench::run(opts),
        Task::Lint => {
            setup::build_deps()?;
            println!("[lint] clippy, user space (all targets)");
            setup::run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
            println!("[lint] clippy, kernel programs (bpfel-unknown-none, nightly)");
            setup::run(
                Command::new("rustup")
                    .current_dir(workspace_root().join("pidvirt-ebpf"))
                    .args([
                        "run",
                        "nightly",
                        "cargo",
                        "clippy",
                        "--release",
                        "--target",
                        "bpfel-unknown-none",
                    ])
                    .args(["-Z", "build-std=core", "--target-dir"])
                    .arg(workspace_root().join("target/ebpf-clippy"))
                    .args(["--", "-D", "warnings"])
                    .env("CARGO_ENCODED_RUSTFLAGS", "--cfg=bpf_target_arch=\"x86_64\"")
                    .env_remove("RUSTC")
                    .env_remove("CARGO"),
            )
        }
    }
}
