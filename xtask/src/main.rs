//! `cargo xtask`: setup, build, run, test (and later bench, vm-test) for pidvirt.

mod bench;
mod setup;

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
    /// Unit tests, then the integration suite on this kernel (serially, as root).
    Test {
        /// Only run integration tests whose name contains this.
        #[arg(long)]
        filter: Option<String>,
    },
    /// clippy on every target, warnings denied.
    Lint,
    /// Benchmark on this machine (root): syscall overhead vs an empty-program floor and a
    /// bpftrace peer, anomaly throughput, attach time, map memory per task. Writes
    /// target/bench/bench.{json,md}.
    Bench(bench::Options),
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| ".".into())
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

fn test(filter: Option<String>) -> anyhow::Result<()> {
    require_root("the test suite")?;
    setup::test_deps()?;
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
    println!("[test] integration suite on {} (serial)", kernel_release());
    let mut cmd = cargo();
    cmd.args(["test", "--release", "--package", "tests", "--"]);
    if let Some(f) = filter {
        cmd.arg(f);
    }
    cmd.args(["--test-threads=1"]).env("PIDVIRT_BIN", &bin);
    setup::run(&mut cmd)?;
    println!("[test] all passed");
    Ok(())
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
        Task::Test { filter } => test(filter),
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
