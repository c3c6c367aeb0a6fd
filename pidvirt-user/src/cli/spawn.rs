//! `pidvirt spawn`: a command inside a container, with the pids chosen for it (clone3
//! `set_tid`), entered like `docker exec`.

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::{
    api::{ContainerRow, ErrorCode, Request, Translation},
    cli::{ContainerArg, Exit, SocketArg, emit},
    client::ClientError,
    procscan,
    restore::{
        protocol::{Driver, Enter, Failure, Init, Order, Plan, Report, SpawnPlan},
        spawn::{self, parse_pid_at},
        sys,
    },
};

/// The privilege spawn and restore need, in words.
pub const NEED_CAP: &str = "needs CAP_SYS_ADMIN over the pid namespaces' user namespace (to enter \
                            namespaces, make a pid namespace and choose pids with clone3 set_tid): run it as root";

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    container: ContainerArg,
    /// The command's pid in the container's namespace.
    #[arg(long)]
    vpid: Option<u32>,
    /// LEVEL=PID: its pid at an outer level (0 = the host); repeatable. Every level from the
    /// container's outwards to the outermost one given needs a pid (clone3 set_tid).
    #[arg(long = "pid-at", value_name = "LEVEL=PID", value_parser = parse_pid_at)]
    pid_at: Vec<(u32, u32)>,
    /// What to enter: `all` (pid, mnt, uts, ipc, net and cgroup namespaces and the root
    /// directory of the container's init, like docker exec) or `pid` (its pid namespace alone).
    #[arg(long, value_enum, default_value_t = Enter::All)]
    enter: Enter,
    /// Return once the command runs (standard streams on /dev/null, in a session of its own).
    #[arg(long)]
    detach: bool,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    cmd: Vec<String>,
}

/// What spawn prints once the command's process exists (before it runs).
#[derive(Serialize)]
struct Spawned<'a> {
    container: &'a str,
    level: u32,
    host_pid: u32,
    vpid: u32,
    /// Its pid at every level, outermost (the host's) first, as /proc NSpid.
    nspid: &'a [u32],
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    if !sys::has_cap_sys_admin() {
        bail!("spawn {NEED_CAP}");
    }
    let c: ContainerRow = a.socket.call(Request::Container { container: a.container.name.clone() }).await?;
    let set_tid = spawn::set_tid(c.level, a.vpid, &a.pid_at, sys::pid_max())?;
    let init = match c.kind.as_str() {
        "host" => None,
        "pidns" => Some(init_of(&a.socket, &c).await?),
        kind => match &c.parent {
            Some(parent) if c.level > 0 => bail!(
                "container {} is a {kind} container in the pid namespace of {parent}: spawn into {parent} instead",
                c.id
            ),
            _ => bail!(
                "container {} is a {kind} container, in the host's pid namespace: spawn into `host` instead",
                c.id
            ),
        },
    };
    let plan =
        SpawnPlan { init, enter: a.enter, set_tid: set_tid.clone(), argv: a.cmd.clone(), detach: a.detach };
    let mut d = Driver::start(&Plan::Spawn(plan)).await?;
    match follow(&a, &c, init, &mut d).await {
        Ok(code) => {
            let _ = d.wait().await;
            if code == 0 { Ok(()) } else { Err(Exit(code).into()) }
        }
        Err(e) => {
            d.abort().await;
            Err(e)
        }
    }
}

/// The host pid of the container's init (vpid 1), as the daemon knows it.
async fn init_of(socket: &SocketArg, c: &ContainerRow) -> anyhow::Result<Init> {
    let req = Request::Translate { container: c.id.clone(), vpid: Some(1), pid: None };
    match socket.call::<Translation>(req).await {
        Ok(t) => Ok(Init { host_pid: t.host_pid, pidns: c.pidns }),
        Err(e) => match e.downcast_ref::<ClientError>() {
            Some(ClientError::Api(api)) if api.code == ErrorCode::NotFound => {
                bail!("container {}: its init (vpid 1) is gone", c.id)
            }
            _ => Err(e),
        },
    }
}

/// Follows the helper: checks that the daemon knows the new task, prints it, lets it run;
/// answers the exit code.
async fn follow(
    args: &Args,
    c: &ContainerRow,
    init: Option<Init>,
    driver: &mut Driver,
) -> anyhow::Result<u8> {
    let (host_pid, nspid) = match driver.next().await? {
        Report::Spawned { host_pid, nspid } => (host_pid, nspid),
        Report::Failed(failure) => bail!("{}", explain(&failure, c, init)),
        other => bail!("the clone helper said {other:?}"),
    };
    let vpid = *nspid.get(c.level as usize).context("the new task is not in the container's namespace")?;
    // The kernel programs recorded the task at fork: translate knows it before it runs.
    let req = Request::Translate { container: c.id.clone(), vpid: Some(vpid), pid: None };
    let known: Translation = args.socket.call(req).await.context("the daemon does not know the new task")?;
    if known.host_pid != host_pid {
        bail!("the daemon says vpid {vpid} is host pid {}, the kernel says {host_pid}", known.host_pid);
    }
    let line =
        serde_json::to_string(&Spawned { container: &c.id, level: c.level, host_pid, vpid, nspid: &nspid })?;
    emit(&format!("{line}\n"))?;
    driver.order(Order::Go).await?;
    match driver.next().await? {
        Report::Exited { code } => Ok(code.clamp(0, 255) as u8),
        Report::Running => Ok(0),
        Report::ExecFailed { errno, .. } => {
            eprintln!(
                "pidvirt: cannot execute `{}`: {}",
                args.cmd[0],
                std::io::Error::from_raw_os_error(errno)
            );
            Ok(127)
        }
        Report::Failed(failure) => bail!("{}", explain(&failure, c, init)),
        other => bail!("the clone helper said {other:?}"),
    }
}

/// A failure of the helper in words: a refused clone3 with the task holding a pid in use, a
/// gone init, missing privilege.
fn explain(f: &Failure, c: &ContainerRow, init: Option<Init>) -> String {
    if let Some(set_tid) = f.set_tid.as_ref().filter(|s| !s.is_empty()) {
        let holders = if f.errno == libc::EEXIST {
            let chain = match init {
                Some(i) => procscan::pidns_chain(i.host_pid)
                    .map(|c| c.into_iter().rev().collect())
                    .unwrap_or_default(),
                None => vec![c.pidns],
            };
            spawn::holders(set_tid, c.level, &chain)
        } else {
            vec![]
        };
        return format!("container {}: {}", c.id, spawn::explain(f.errno, set_tid, &holders));
    }
    if f.init_gone {
        return format!("container {}: {}", c.id, f.what);
    }
    let os = std::io::Error::from_raw_os_error(f.errno);
    if f.errno == libc::EPERM { format!("{}: {os}: {NEED_CAP}", f.what) } else { format!("{}: {os}", f.what) }
}
