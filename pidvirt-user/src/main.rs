//! `pidvirt`: the daemon (`pidvirt run`) and its command-line client (one module per command
//! in `cli`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pidvirt::cli;

#[derive(Parser)]
#[command(
    name = "pidvirt",
    version,
    about = "Run-time check of process ids crossing pid-namespace boundaries"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to this host and serve the control socket (foreground; SIGINT/SIGTERM detach).
    Run(cli::run::Args),
    /// List tracked tasks.
    Ps(cli::ps::Args),
    /// Register or unregister a container.
    Container {
        #[command(subcommand)]
        action: cli::container::Action,
    },
    /// OCI runtime hook: reads the container state JSON on stdin; registers the container at
    /// createRuntime/createContainer/poststart (annotations become labels), unregisters it at
    /// poststop.
    OciHook(cli::oci_hook::Args),
    /// Write the hooks.d entry through which Podman and CRI-O run `pidvirt oci-hook` for every
    /// container.
    InstallHook(cli::install_hook::Args),
    /// Set a container's policy.
    Policy {
        #[command(subcommand)]
        action: cli::policy::Action,
    },
    /// Stop the daemon and remove every pinned program and map (nothing of pidvirt stays in
    /// the kernel).
    Detach(cli::detach::Args),
    /// List known containers.
    Containers(cli::containers::Args),
    /// Translate a vpid of a container to a host pid, or a host pid to the container's vpid.
    Translate(cli::translate::Args),
    /// Counters kept by the kernel programs: crossings per syscall per verdict, drops, errors.
    Stats(cli::stats::Args),
    /// Recent anomalies (every reported verdict), or a live stream of them.
    Audit(cli::audit::Args),
    /// Benchmark floor: attach EMPTY programs to exactly the hooks `run` uses (or, for the
    /// comparison of designs, to `read`'s own tracepoints or the raw sys_enter/sys_exit), until
    /// SIGINT/SIGTERM.
    #[command(hide = true)]
    Floor(cli::floor::Args),
    /// Daemon status: kernel, attached programs, seed report.
    Status(cli::status::Args),
    /// Start a command inside a container with chosen pids (clone3 set_tid), like docker exec.
    Spawn(cli::spawn::Args),
    /// A container's process tree as JSON: every task's pids, parent, group, session, threads.
    Snapshot(cli::snapshot::Args),
    /// Remake a snapshot's tree in a new pid namespace, every pid as it was; register it.
    Restore(cli::restore::Args),
    /// Compare a container's tree with a snapshot: each difference on a line, exit code 1.
    Compare(cli::compare::Args),
    /// The single-threaded process spawn and restore fork from (started by them only).
    #[command(hide = true)]
    CloneHelper(cli::clone_helper::Args),
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PIDVIRT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let _ = tracing_log::LogTracer::init();
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(a) => cli::run::run(a).await,
        Command::Ps(a) => cli::ps::run(a).await,
        Command::Container { action } => cli::container::run(action).await,
        Command::OciHook(a) => cli::oci_hook::run(a).await,
        Command::InstallHook(a) => cli::install_hook::run(&a),
        Command::Policy { action } => cli::policy::run(action).await,
        Command::Detach(a) => cli::detach::run(a).await,
        Command::Containers(a) => cli::containers::run(a).await,
        Command::Translate(a) => cli::translate::run(a).await,
        Command::Stats(a) => cli::stats::run(a).await,
        Command::Audit(a) => cli::audit::run(a).await,
        Command::Floor(a) => cli::floor::run(a).await,
        Command::Status(a) => cli::status::run(a).await,
        Command::Spawn(a) => cli::spawn::run(a).await,
        Command::Snapshot(a) => cli::snapshot::run(a).await,
        Command::Restore(a) => cli::restore::run(a).await,
        Command::Compare(a) => cli::compare::run(a).await,
        // Run before the runtime exists (main).
        Command::CloneHelper(_) => Ok(()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The clone helper must stay single-threaded: no runtime, no logging.
    if let Command::CloneHelper(a) = &cli.command {
        return cli::clone_helper::run(a);
    }
    init_logging();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pidvirt: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(cli::Exit(code)) = e.downcast_ref::<cli::Exit>() {
                return ExitCode::from(*code);
            }
            eprintln!("pidvirt: {e:#}");
            ExitCode::FAILURE
        }
    }
}
