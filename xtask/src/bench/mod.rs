//! `cargo xtask bench`: what pidvirt costs, measured on this machine in ONE run, as ratios.
//!
//! 1. Syscall overhead. Four workloads (raw getpid, kill(self, 0), fork+exit+wait, a 1-byte read
//!    of /dev/zero, which pidvirt does not audit), each in a fresh pid namespace, under four
//!    modes: `bare` (nothing attached), `floor` (`pidvirt floor`: EMPTY programs on exactly
//!    pidvirt's hooks), `pidvirt` (`pidvirt run`), `peer` (bpftrace auditing the same syscalls
//!    minimally); and, for the syscalls pidvirt does not audit, two other designs with EMPTY
//!    programs: `read-hooked` (read's own syscall tracepoints: what hooking a syscall costs it)
//!    and `raw` (raw sys_enter/sys_exit: a program on every syscall). The modes alternate round
//!    by round (the order rotates), so drift hits all of them; a mode's cost is the median over
//!    rounds of its per-round difference to bare.
//! 2. In-kernel program time (bpf_stats, in a pass of its own: the statistics cost every run two
//!    clock reads): per workload and mode, and program by program for fork+exit+wait.
//! 3. P4: anomaly throughput (kill(host pid) `leak` crossings from a container into the JSON sink).
//! 4. P5: attach time to a host with 10,000 extra processes in 10 pid namespaces.
//! 5. P6: kernel map memory per tracked task (bpftool map show), before and after those processes.
//!
//! A round during which someone else had tracing programs attached (a test daemon, another
//! tracer: `bare` would pay for them) is discarded and run again while `--time-budget` lasts.
//!
//! Each section is measured ([`measure`]), summarised ([`stats`]) and rendered ([`report`]) as
//! a plain-text report (stdout), markdown (target/bench/bench.md, and docs/benchmarks.md under a
//! short header) and JSON (target/bench/bench.json). The load generator is
//! `tests/src/bin/pidvirt-bench.rs`.

mod engine;
mod measure;
mod report;
mod stats;
mod vm;

use std::{io::Write as _, time::Instant};

use anyhow::bail;
use serde_json::Value;

use crate::setup;
use measure::{Bench, Machine, check_interrupted};
use report::{Goal, Report};

#[derive(clap::Args, Clone, Debug)]
pub struct Options {
    /// Alternating rounds of the syscall workloads (each runs every mode once).
    #[arg(long, default_value_t = 15)]
    rounds: usize,
    /// Calls per batch (getpid, kill, read).
    #[arg(long, default_value_t = 200_000)]
    iters: u64,
    /// fork+exit+wait per batch (a batch of ~30 ms: long enough to hold the kernel's deferred
    /// work, RCU callbacks, short enough that a burst of host noise spoils few batches).
    #[arg(long, default_value_t = 300)]
    fork_iters: u64,
    /// Calls per batch of the open workloads (openat+close of a regular file, of /proc/self/stat).
    #[arg(long, default_value_t = 20_000)]
    open_iters: u64,
    /// Batches of fork+exit+wait per round (the round's value is the median of their means).
    #[arg(long, default_value_t = 21)]
    fork_batches: usize,
    /// Batches per workload per round (the round's value is their median).
    #[arg(long, default_value_t = 3)]
    batches: usize,
    /// CPU the load generator is pinned to (default: the last one).
    #[arg(long)]
    cpu: Option<usize>,
    /// Seconds of leak generation (P4).
    #[arg(long, default_value_t = 2.0)]
    leak_seconds: f64,
    /// Pid namespaces of the extra processes (P5, P6).
    #[arg(long, default_value_t = 10)]
    namespaces: usize,
    /// Extra processes in all (P5, P6), spread evenly over the namespaces.
    #[arg(long, default_value_t = 10_000)]
    tasks: usize,
    /// Seconds to wait, before the first round, for other tracing programs (a daemon of a test
    /// run, another tracer) to go: they perturb `bare`. Later rounds wait up to 20 s (within --time-budget).
    #[arg(long, default_value_t = 30)]
    quiet_wait: u64,
    /// Seconds the syscall rounds may take in all: a perturbed round (someone else tracing) is
    /// run again while this lasts.
    #[arg(long, default_value_t = 300)]
    time_budget: u64,
    /// Skip the bpftrace peer.
    #[arg(long)]
    no_peer: bool,
    /// How to attach the syscall programs of the floor and of pidvirt (comma-separated); each
    /// mode is measured where the kernel takes it, and reported as unavailable (with the
    /// kernel's reason) where it does not.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = measure::Attach::ALL)]
    attach: Vec<measure::Attach>,
    /// Run the sections this many times: the report judges every goal on the median of the runs
    /// and gives their spread (the in-kernel times move by up to 2x between runs on a shared
    /// machine).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Only these sections (comma-separated: syscalls, kernel-time, p4, p5-p6). A partial run
    /// writes target/bench only, not docs/benchmarks.md.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Rounds of the Docker section (each: both modes, the order alternating).
    #[arg(long, default_value_t = 6)]
    engine_rounds: usize,
    /// `docker run --rm` and `docker exec` per mode per round.
    #[arg(long, default_value_t = 5)]
    engine_ops: usize,
    /// The Docker section's daemon without `--proc-paths` (pidvirt's default): the path
    /// programs' share of the engine's cost apart.
    #[arg(long)]
    engine_without_proc_paths: bool,
    /// Run the benchmark inside Debian's kernel of this series ("6.12", "6.1") booted under QEMU,
    /// as the suite's VMs are: a kernel that takes fentry/fexit, which this one may refuse.
    /// Software emulation: its times are the emulator's, only the modes' costs against each
    /// other on that kernel mean something. Writes target/bench/vm-<series>/, never the docs.
    #[arg(long, value_name = "SERIES")]
    vm: Option<String>,
    /// Where bench.json and bench.md go instead of target/bench (the VM's run writes its
    /// results directory); docs/benchmarks.md is left alone.
    #[arg(long, hide = true)]
    out: Option<std::path::PathBuf>,
}

/// A section: measures, adds its tables to the report and its goals, answers its JSON.
type Section = fn(&Bench, &mut Report, &mut Vec<Goal>) -> anyhow::Result<Value>;

/// The sections in the order they run: name (`--only`), JSON key, label, section.
const SECTIONS: [(&str, &str, &str, Section); 5] = [
    ("syscalls", "syscalls", "syscall overhead", syscalls),
    ("kernel-time", "kernel_time", "in-kernel program time", kernel_time),
    ("p4", "p4_leak_throughput", "P4 anomaly throughput", leak_throughput),
    ("p5-p6", "p5_p6_attach_memory", "P5 attach / P6 memory", attach_memory),
    ("engine", "engine_latency", "Docker run/exec latency", engine_latency),
];

fn syscalls(b: &Bench, out: &mut Report, goals: &mut Vec<Goal>) -> anyhow::Result<Value> {
    let runs = measure::syscall_rounds(b)?;
    let summary = stats::SyscallSummary::of(&runs, b.opts.rounds);
    Ok(report::syscalls(out, goals, b, &runs, &summary))
}

fn kernel_time(b: &Bench, out: &mut Report, goals: &mut Vec<Goal>) -> anyhow::Result<Value> {
    let times = measure::kernel_times(b)?;
    let per_run = stats::stats_cost_per_run(&times);
    Ok(report::kernel_time(out, goals, b, &times, per_run))
}

fn leak_throughput(b: &Bench, out: &mut Report, goals: &mut Vec<Goal>) -> anyhow::Result<Value> {
    let run = measure::leak_throughput(b)?;
    let rates = stats::throughput(&run);
    Ok(report::leak_throughput(out, goals, &b.opts, &run, &rates))
}

fn attach_memory(b: &Bench, out: &mut Report, goals: &mut Vec<Goal>) -> anyhow::Result<Value> {
    let run = measure::attach_and_memory(b)?;
    let memory = stats::memory_per_task(&run.before, &run.after);
    Ok(report::attach_memory(out, goals, &run, &memory))
}

fn engine_latency(b: &Bench, out: &mut Report, goals: &mut Vec<Goal>) -> anyhow::Result<Value> {
    if which("dockerd").is_err() {
        return Ok(report::engine_unavailable(out, goals, "dockerd is not installed (docker.io)"));
    }
    let run = engine::docker_latency(b)?;
    Ok(report::engine_latency(out, goals, &run))
}

/// One run of the sections: its report, goals and JSON.
struct Run {
    report: Report,
    goals: Vec<Goal>,
    sections: serde_json::Map<String, Value>,
    elapsed_s: f64,
}

/// Runs the sections chosen, once; answers the run and the labels of the sections that failed.
fn run_sections(b: &Bench, machine: &Machine, number: usize) -> (Run, Vec<&'static str>) {
    let started = Instant::now();
    let mut report = Report::default();
    let mut goals = Vec::new();
    report.header(machine, b.cpus, b.cpu);
    let mut sections = serde_json::Map::new();
    let mut failed = Vec::new();
    for (name, key, label, section) in SECTIONS {
        if !b.opts.only.is_empty() && !b.opts.only.iter().any(|o| o == name) {
            continue;
        }
        if check_interrupted().is_err() {
            break;
        }
        println!("[bench] run {number} of {}: {label}", b.opts.repeat);
        let t = Instant::now();
        let value = section(b, &mut report, &mut goals).unwrap_or_else(|e| {
            println!("[bench] {label} FAILED: {e:#}");
            failed.push(label);
            report::section_failed(&mut report, &mut goals, label, &e)
        });
        sections.insert(key.into(), value);
        println!("[bench] {label}: {:.1} s", t.elapsed().as_secs_f64());
    }
    report::goals(&mut report, &mut goals);
    (Run { report, goals, sections, elapsed_s: started.elapsed().as_secs_f64() }, failed)
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    crate::require_root("the benchmark")?;
    if let Some(bad) = opts.only.iter().find(|o| !SECTIONS.iter().any(|(name, ..)| name == o)) {
        let names: Vec<&str> = SECTIONS.iter().map(|(name, ..)| *name).collect();
        bail!("--only {bad}: no such section (sections: {})", names.join(", "));
    }
    if opts.repeat == 0 {
        bail!("--repeat 0: nothing to measure");
    }
    if let Some(series) = &opts.vm {
        vm::check_series(series)?;
    }
    measure::catch_signals();
    // In a VM the host root is read-only and there is no network: the host installed and
    // built everything before it booted the guest.
    if !vm::in_guest() {
        install_and_build(&opts)?;
    }
    if let Some(series) = opts.vm.clone() {
        return vm::run(&series);
    }
    let root = crate::workspace_root();
    let peer = if opts.no_peer { Err("skipped (--no-peer)".to_string()) } else { which("bpftrace") };
    let mut b = Bench::new(&root, opts, peer)?;
    let machine = Machine::now();
    let started = Instant::now();
    if !machine.foreign.is_empty() {
        println!("[bench] WARNING: other tracing programs are attached: {}", machine.foreign);
    }
    b.probe_fentry()?;
    if let Err(why) = &b.fentry {
        println!("[bench] fentry/fexit: {why}");
    }

    let mut runs = Vec::new();
    let mut failed = Vec::new();
    for number in 1..=b.opts.repeat {
        if check_interrupted().is_err() {
            break;
        }
        let (run, f) = run_sections(&b, &machine, number);
        failed.extend(f);
        runs.push(run);
    }
    // An interrupted run leaves the previous results alone.
    check_interrupted()?;
    let machine_end = Machine::now();
    let summary = report::across_runs(&machine, &machine_end, &b, &runs_view(&runs));
    let md = match &summary {
        Some(s) => format!("{}\n{}", s.md, runs.last().map_or("", |r| r.report.md.as_str())),
        None => runs.last().map(|r| r.report.md.clone()).unwrap_or_default(),
    };
    let text = match &summary {
        Some(s) => format!("{}\n{}", runs.last().map_or("", |r| r.report.text.as_str()), s.text),
        None => runs.last().map(|r| r.report.text.clone()).unwrap_or_default(),
    };
    let out_dir = b.opts.out.clone().unwrap_or_else(|| root.join("target/bench"));
    std::fs::create_dir_all(&out_dir)?;
    let docs: Vec<Value> =
        runs.iter().map(|r| report::document(&machine, &b, r.elapsed_s, &r.sections, &r.goals)).collect();
    let doc = if docs.len() == 1 {
        docs.into_iter().next().unwrap_or_default()
    } else {
        serde_json::json!({
            "repeat": b.opts.repeat,
            "summary": summary.as_ref().map(|s| s.json.clone()),
            "elapsed_s": started.elapsed().as_secs_f64(),
            "runs": docs,
        })
    };
    std::fs::write(out_dir.join("bench.json"), serde_json::to_string_pretty(&doc)? + "\n")?;
    std::fs::write(out_dir.join("bench.md"), &md)?;
    let docs_path = root.join("docs/benchmarks.md");
    let full = b.opts.only.is_empty() && b.opts.out.is_none();
    if full {
        std::fs::create_dir_all(root.join("docs"))?;
        let previous = std::fs::read_to_string(&docs_path).ok();
        std::fs::write(&docs_path, report::benchmarks_doc(&md, previous.as_deref()))?;
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")?;
    writeln!(
        stdout,
        "[bench] {:.0} s; wrote {}, {}{}",
        started.elapsed().as_secs_f64(),
        out_dir.join("bench.json").display(),
        out_dir.join("bench.md").display(),
        if full {
            format!(" and {}", docs_path.display())
        } else {
            " (a partial run: --only or --out; docs/benchmarks.md left alone)".into()
        }
    )?;
    check_interrupted()?;
    if !failed.is_empty() {
        failed.sort_unstable();
        failed.dedup();
        bail!("bench sections failed: {}", failed.join(", "));
    }
    Ok(())
}

/// The runs as the report's summary reads them: each run's goals and JSON sections.
fn runs_view(runs: &[Run]) -> Vec<(&[Goal], &serde_json::Map<String, Value>)> {
    runs.iter().map(|r| (r.goals.as_slice(), &r.sections)).collect()
}

/// What the sections need, installed, and pidvirt and the load generator built.
fn install_and_build(opts: &Options) -> anyhow::Result<()> {
    setup::build_deps()?;
    setup::apt_install("bpftool (bench: map sizes, attachments)", &["bpftool"])?;
    if opts.only.is_empty() || opts.only.iter().any(|o| o == "engine") {
        // Without it the Docker section says it is unavailable.
        let _ = setup::apt_install("Docker (bench: run/exec latency)", &["docker.io", "busybox-static"]);
    }
    if !opts.no_peer {
        // Without it the peer is reported unavailable (a VM's run uses the host's, if there).
        if let Err(e) = setup::apt_install("bpftrace (bench: the peer)", &["bpftrace"]) {
            println!("[bench] bpftrace: {e:#}");
        }
    }
    println!("[bench] cargo build --release -p pidvirt-user -p tests");
    setup::run(crate::cargo().args(["build", "--release", "-p", "pidvirt-user", "-p", "tests"]))
}

/// Why `tool` cannot run, if it cannot.
fn which(tool: &str) -> Result<(), String> {
    match std::process::Command::new(tool).arg("--version").output() {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("{tool} is not installed: {e}")),
    }
}
