//! Between the CLI (`spawn`, `restore`) and the clone helper (`pidvirt clone-helper`, the same
//! binary started fresh): JSON lines on a socket pair that the helper finds as descriptor 3.
//!
//! The helper does the forking: it must be single-threaded (setns into a mount namespace
//! refuses a process whose threads share its file-system context, and a process forked from a
//! multi-threaded one may only run async-signal-safe code until it execs, while restored
//! processes run the schedule first), and the CLI runs a tokio runtime.
//!
//! CLI -> helper: a [`Plan`], then [`Order`]s. Helper -> CLI: [`Report`]s. A helper whose
//! channel closes before the CLI says `done` (the CLI failed, or was killed) undoes what it
//! made.

use std::{
    io::{BufRead, BufReader, Write as _},
    os::{
        fd::{AsRawFd, FromRawFd},
        unix::{net::UnixStream, process::CommandExt},
    },
    process::{Child, Command},
};

use anyhow::{Context as _, anyhow};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use super::schedule::Step;

/// The descriptor of the channel in the helper.
pub const CHANNEL_FD: i32 = 3;

/// What the helper is to do.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "plan", rename_all = "snake_case")]
pub enum Plan {
    Spawn(SpawnPlan),
    Restore(RestorePlan),
}

/// `pidvirt spawn`: enter the container (unless it is the host), fork CMD with `set_tid`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SpawnPlan {
    /// The container's init (none for the host).
    pub init: Option<Init>,
    pub enter: Enter,
    /// Chosen pids, innermost level first (empty: the kernel's choice).
    pub set_tid: Vec<u32>,
    pub argv: Vec<String>,
    pub detach: bool,
}

/// A container's init, and the pid namespace it must still be in (a reused pid is not it).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Init {
    pub host_pid: u32,
    pub pidns: u32,
}

/// Which of the init's namespaces a spawned command joins.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Enter {
    /// pid, mnt, uts, ipc, net and cgroup namespaces and the root directory (like `docker exec`).
    All,
    /// The pid namespace alone.
    Pid,
}

/// `pidvirt restore`: follow the schedule in a new pid namespace; every process then runs `cmd`
/// (empty: the placeholder).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RestorePlan {
    pub steps: Vec<Step>,
    pub cmd: Vec<String>,
}

/// What the CLI says after the plan.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Let the spawned command, or the restored processes, run.
    Go,
    /// Undo what was made.
    Abort,
    /// The restore stands; the helper may end.
    Done,
}

/// What the helper says.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "report", rename_all = "snake_case")]
pub enum Report {
    /// The command's process exists (waiting for `go`): its host pid and NSpid (every level).
    Spawned {
        host_pid: u32,
        nspid: Vec<u32>,
    },
    /// The restored tree stands (waiting for `go`): its new pid namespace and init.
    Made {
        pidns: u32,
        init_host_pid: u32,
    },
    /// Every process runs (its command, or the placeholder); a detached command runs.
    Running,
    /// The spawned command exited with `code` (128 + N: killed by signal N).
    Exited {
        code: i32,
    },
    /// A command could not be executed (in restored process `vpid`).
    ExecFailed {
        errno: i32,
        vpid: Option<u32>,
    },
    Failed(Failure),
}

/// A step that failed, with what the kernel said.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Failure {
    /// What was being done ("setns into the mnt namespace of process 1234").
    pub what: String,
    pub errno: i32,
    /// For a failed clone: the pids it asked for, innermost first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_tid: Option<Vec<u32>>,
    /// Set when the container's init turned out to be gone.
    #[serde(default)]
    pub init_gone: bool,
}

/// The CLI's end: the helper process and its channel.
pub struct Driver {
    child: Child,
    read: tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
    write: tokio::net::unix::OwnedWriteHalf,
}

impl Driver {
    /// Starts `pidvirt clone-helper` (this very binary) with its channel as descriptor 3 and
    /// sends it `plan`. Standard input, output and error are shared (a spawned command's).
    pub async fn start(plan: &Plan) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("find the pidvirt binary")?;
        let (ours, theirs) = UnixStream::pair().context("socketpair")?;
        let fd = theirs.as_raw_fd();
        let mut cmd = Command::new(&exe);
        cmd.arg("clone-helper");
        // SAFETY: the closure runs between fork and exec and calls only fcntl and dup2, which
        // are async-signal-safe; `fd` is open in the child (it is ours, inherited).
        unsafe {
            cmd.pre_exec(move || {
                let r = if fd == CHANNEL_FD {
                    libc::fcntl(fd, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, CHANNEL_FD)
                };
                if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
            });
        }
        let child = cmd.spawn().with_context(|| format!("start {} clone-helper", exe.display()))?;
        drop(theirs);
        ours.set_nonblocking(true)?;
        let (read, write) = tokio::net::UnixStream::from_std(ours)?.into_split();
        let mut d = Self { child, read: tokio::io::BufReader::new(read), write };
        d.send(plan).await?;
        Ok(d)
    }

    async fn send(&mut self, v: &impl Serialize) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(v)?;
        line.push('\n');
        self.write.write_all(line.as_bytes()).await.context("write to the clone helper")
    }

    /// The helper's next report.
    pub async fn next(&mut self) -> anyhow::Result<Report> {
        let mut line = String::new();
        self.read.read_line(&mut line).await.context("read from the clone helper")?;
        if line.is_empty() {
            let status = self.wait().await?;
            return Err(anyhow!("the clone helper ended without answering ({status})"));
        }
        serde_json::from_str(&line).with_context(|| format!("the clone helper said {line:?}"))
    }

    /// Sends an order.
    pub async fn order(&mut self, o: Order) -> anyhow::Result<()> {
        self.send(&o).await
    }

    /// Waits for the helper to end.
    pub async fn wait(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        // try_wait in a loop: the child is std's (the helper needs descriptor 3 set up before it
        // runs, which tokio's Command cannot do on stable).
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Tells the helper to undo what it made, and waits until it has.
    pub async fn abort(mut self) {
        let _ = self.order(Order::Abort).await;
        let _ = self.write.shutdown().await;
        let _ = self.wait().await;
    }
}

/// The helper's end of the channel.
pub struct Channel {
    /// One descriptor (3) for both ways: a forked child closes just that one.
    stream: BufReader<UnixStream>,
}

impl Channel {
    /// Takes descriptor 3, which must be a socket (the helper is started by spawn and restore
    /// only).
    pub fn take() -> anyhow::Result<Self> {
        // SAFETY: stat is plain data; all zeroes is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a writable stat that outlives the call.
        let ok = unsafe { libc::fstat(CHANNEL_FD, &raw mut st) } == 0
            && st.st_mode & libc::S_IFMT == libc::S_IFSOCK;
        if !ok {
            return Err(anyhow!("clone-helper is started by `pidvirt spawn` and `pidvirt restore` only"));
        }
        // SAFETY: descriptor 3 is the open socket the CLI passed; nothing else in this process
        // owns it.
        let s = unsafe { UnixStream::from_raw_fd(CHANNEL_FD) };
        // SAFETY: fcntl takes numbers; the channel must not outlive an exec.
        unsafe { libc::fcntl(CHANNEL_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
        Ok(Self { stream: BufReader::new(s) })
    }

    /// Sends a report (a CLI that has gone is noticed at the next read).
    pub fn send(&mut self, r: &Report) {
        if let Ok(mut line) = serde_json::to_string(r) {
            line.push('\n');
            let _ = self.stream.get_ref().write_all(line.as_bytes());
        }
    }

    fn recv<T: DeserializeOwned>(&mut self) -> Option<T> {
        let mut line = String::new();
        match self.stream.read_line(&mut line) {
            Ok(n) if n > 0 => serde_json::from_str(&line).ok(),
            _ => None,
        }
    }

    /// The plan (first line).
    pub fn plan(&mut self) -> Option<Plan> {
        self.recv()
    }

    /// The next order; a closed channel or garbage is `abort`.
    pub fn order(&mut self) -> Order {
        self.recv().unwrap_or(Order::Abort)
    }
}
