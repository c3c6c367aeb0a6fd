//! `pidvirt run`: the daemon, in the foreground.

use std::net::{Ipv4Addr, SocketAddr};

use pidvirt_common::audit::Verdict;

use crate::{
    audit::Rotation,
    cli::SocketArg,
    daemon::{self, MetricsOptions, RunOptions},
    loader::{self, AttachMode, LoadOptions},
    runtimes::{Api, Endpoint},
};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum SeedMode {
    Iterator,
    Proc,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    socket: SocketArg,
    /// Write audit events as JSON lines to this file (`-` for standard output). Created mode
    /// 0600 (its directory 0700); rotated by size.
    #[arg(long)]
    audit_log: Option<String>,
    /// Rotate the audit log file before it grows beyond this many bytes (0: never): it becomes
    /// PATH.1, PATH.1 becomes PATH.2, and so on. Records are never split between files.
    #[arg(long, default_value_t = 100 << 20, value_name = "BYTES")]
    audit_log_max_bytes: u64,
    /// Rotated copies of the audit log kept (the oldest beyond them is removed).
    #[arg(long, default_value_t = 5, value_name = "N")]
    audit_log_keep: u32,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics. A bare PORT binds the loopback
    /// address (127.0.0.1); give 0.0.0.0:PORT to be scraped from elsewhere. Suggested: 9479.
    #[arg(long, value_name = "[ADDR:]PORT", value_parser = metrics_addr)]
    metrics: Option<SocketAddr>,
    /// Also per-container series, for the host and at most MAX other containers (default 100;
    /// the rest add up under container="other").
    #[arg(long, value_name = "MAX", num_args = 0..=1, default_missing_value = "100", requires = "metrics")]
    metrics_per_container: Option<usize>,
    /// Capacity of the task maps (tasks tracked at once). Default: the kernel's
    /// pid_max (no more tasks can exist at once), within 4096..=262144.
    #[arg(long)]
    max_tasks: Option<u32>,
    /// Size of the events ring buffer in bytes (a power of two, at least one page).
    #[arg(long, default_value_t = LoadOptions::default().ringbuf_bytes)]
    ringbuf_bytes: u32,
    /// Containers whose crossings are counted apart at once (more share one overflow counter).
    #[arg(long, default_value_t = LoadOptions::default().counter_slots - pidvirt_common::slots::FIRST_FREE)]
    max_containers: u32,
    /// Pin programs and maps in bpffs (/sys/fs/bpf/pidvirt): counting and enforcement go on
    /// while the daemon is down, a restarted daemon adopts them; `pidvirt detach` removes them.
    #[arg(long)]
    pin: bool,
    /// Where registrations are kept across restarts (`none`: not kept).
    #[arg(long, default_value = "/var/lib/pidvirt/state.json")]
    state_file: String,
    /// How to seed tasks that exist at attach: `iterator` (the kernel's task iterator, then
    /// /proc for anything it missed) or `proc` (/proc only; start times at clock-tick precision).
    #[arg(long, value_enum, default_value_t = SeedMode::Iterator)]
    seed: SeedMode,
    /// Read pids above level 0 with bpf_probe_read_kernel even where direct loads are
    /// possible (the path of kernels that declare `pid.numbers[1]`; for tests).
    #[arg(long, hide = true)]
    probe_reads: bool,
    /// The verdicts reported (audit records), comma-separated; every crossing is counted either
    /// way. Default: leak, collision, cross_container, stale, mismatch, denied, invisible,
    /// foreign_procfs (not nested, released, unknown).
    #[arg(long, value_delimiter = ',', value_parser = verdict)]
    report: Vec<Verdict>,
    /// Docker's Engine API socket, asked for container names, images and labels (`none`: not
    /// asked). Absent or silent sockets are retried; `status` says which runtimes answer.
    #[arg(long, default_value = "/var/run/docker.sock")]
    docker_socket: String,
    /// Podman's Docker-compatible API socket (`podman system service`).
    #[arg(long, default_value = "/run/podman/podman.sock")]
    podman_socket: String,
    /// containerd's API socket (every namespace but Docker's `moby`; `k8s.io` gives the
    /// Kubernetes identity). A containerd started by dockerd listens under its exec-root.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    containerd_socket: String,
    /// A CRI runtime's socket (CRI-O's by default; containerd's CRI service listens on its own).
    #[arg(long, default_value = "/run/crio/crio.sock")]
    cri_socket: String,
    /// How the syscall programs are attached: fentry/fexit on the syscall functions where the
    /// kernel takes them (no tax on the syscalls pidvirt does not watch), else the syscall
    /// tracepoints (`auto`); or only one of them. `status` says which runs, and why.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto, env = "PIDVIRT_ATTACH")]
    attach: AttachMode,
    /// Watch the path syscalls (open, stat, readlink, access, chdir, execve families) for
    /// numbers in /proc paths. Off by default: every open and stat of the host would pay for it
    /// (README: what it costs). `status` says which (`syscalls.proc_paths`).
    #[arg(long)]
    proc_paths: bool,
}

/// `PORT` (on the loopback address) or `ADDR:PORT`.
fn metrics_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    s.parse()
        .map_err(|_| format!("`{s}` is neither PORT nor ADDR:PORT (e.g. 9479, 127.0.0.1:9479, [::1]:9479)"))
}

/// A verdict `--report` may name.
fn verdict(name: &str) -> Result<Verdict, String> {
    Verdict::REPORTABLE.iter().copied().find(|v| v.name() == name).ok_or_else(|| {
        let names: Vec<&str> = Verdict::REPORTABLE.iter().map(|v| v.name()).collect();
        format!("one of {}", names.join(", "))
    })
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let endpoint = |engine: &str, api: Api, socket: &str| {
        (socket != "none").then(|| Endpoint { engine: engine.into(), api, socket: socket.into() })
    };
    let runtimes = [
        endpoint("docker", Api::Docker, &a.docker_socket),
        endpoint("podman", Api::Docker, &a.podman_socket),
        endpoint("containerd", Api::Containerd, &a.containerd_socket),
        endpoint("cri", Api::Cri, &a.cri_socket),
    ]
    .into_iter()
    .flatten()
    .collect();
    daemon::run(RunOptions {
        runtimes,
        socket: a.socket.socket,
        state_file: (a.state_file != "none").then(|| a.state_file.into()),
        audit_log: a.audit_log,
        audit_rotation: Rotation { max_bytes: a.audit_log_max_bytes, keep: a.audit_log_keep },
        metrics: a.metrics.map(|addr| MetricsOptions { addr, per_container: a.metrics_per_container }),
        load: LoadOptions {
            max_tasks: a.max_tasks.unwrap_or_else(loader::max_tasks_for_this_host),
            ringbuf_bytes: a.ringbuf_bytes,
            counter_slots: a.max_containers.saturating_add(pidvirt_common::slots::FIRST_FREE),
            task_iterator: matches!(a.seed, SeedMode::Iterator),
            pin: a.pin,
            probe_reads: a.probe_reads,
            report: if a.report.is_empty() {
                Verdict::DEFAULT_REPORTED
            } else {
                a.report.iter().fold(0, |mask, v| mask | v.bit())
            },
            host_pidns: 0,
            attach: a.attach,
            proc_paths: a.proc_paths,
        },
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_metrics_port_binds_loopback() {
        assert_eq!(metrics_addr("9479").unwrap(), "127.0.0.1:9479".parse().unwrap());
        assert_eq!(metrics_addr("0.0.0.0:9479").unwrap(), "0.0.0.0:9479".parse().unwrap());
        assert_eq!(metrics_addr("[::1]:9479").unwrap(), "[::1]:9479".parse().unwrap());
        assert!(metrics_addr(":9479").is_err(), "all interfaces must be said explicitly");
        assert!(metrics_addr("localhost:9479").is_err());
    }
}
