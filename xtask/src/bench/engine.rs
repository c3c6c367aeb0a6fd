//! Issue 13's cost with a real engine: the latency of `docker run --rm IMAGE true` and of
//! `docker exec CONTAINER true` with pidvirt attached and without, rounds alternating the order,
//! on a dockerd of the bench's own (no network, the static-busybox image every test uses). The
//! audit log of the attached daemon is kept: routine orchestration must have written nothing.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::measure::{Bench, Running, check_interrupted, wait_for};

/// The image: the busybox rootfs (busybox-static), imported.
const IMAGE: &str = "localhost/pidvirt-bench:1";

/// What one mode's operations took (ms, every sample).
#[derive(Debug, Default)]
pub struct Latencies {
    pub run: Vec<f64>,
    pub exec: Vec<f64>,
}

#[derive(Debug)]
pub struct EngineRun {
    pub bare: Latencies,
    pub pidvirt: Latencies,
    pub rounds: usize,
    pub per_round: usize,
    /// Records the attached daemons wrote (routine operations: none expected).
    pub records: usize,
    pub docker_version: String,
    /// Whether the daemon watched /proc paths (`--proc-paths`).
    pub proc_paths: bool,
}

/// A dockerd in a directory of the bench's, stopped (with its containers) on drop.
struct Dockerd {
    dir: PathBuf,
    _daemon: Running,
}

impl Dockerd {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        let mut cmd = Command::new("dockerd");
        cmd.args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("--host")
            .arg(format!("unix://{}", dir.join("docker.sock").display()));
        let daemon = Running::spawn("dockerd", &mut cmd, libc::SIGTERM, &dir.join("dockerd.log"))?;
        let d = Self { dir: dir.to_path_buf(), _daemon: daemon };
        wait_for("dockerd to answer", Duration::from_mins(1), || Ok(d.docker(&["info"]).is_ok()))?;
        Ok(d)
    }

    fn docker(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.dir.join("docker.sock").display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("docker (docker.io)")?;
        if !out.status.success() {
            bail!("docker {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Imports the busybox rootfs as [`IMAGE`].
    fn import_image(&self) -> anyhow::Result<()> {
        let root = self.dir.join("rootfs");
        std::fs::create_dir_all(root.join("bin"))?;
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("/bin/busybox (busybox-static)")?;
        for applet in ["sh", "sleep", "true"] {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
        let tar = self.dir.join("rootfs.tar");
        let ok = Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".").status()?.success();
        if !ok {
            bail!("tar of the busybox rootfs failed");
        }
        self.docker(&["import", &tar.to_string_lossy(), IMAGE]).map(|_| ())
    }

    /// Milliseconds `docker ARGS` took (it must succeed).
    fn timed(&self, args: &[&str]) -> anyhow::Result<f64> {
        let start = Instant::now();
        self.docker(args)?;
        Ok(start.elapsed().as_secs_f64() * 1000.0)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Ok(ids) = self.docker(&["ps", "-aq"]) {
            for id in ids.split_whitespace() {
                let _ = self.docker(&["rm", "-f", id]);
            }
        }
    }
}

/// `rounds` rounds; in each, both modes (the order alternating), `per_round` runs and execs per
/// mode; pidvirt started afresh for its half of every round.
pub fn docker_latency(b: &Bench) -> anyhow::Result<EngineRun> {
    let (rounds, per_round) = (b.opts.engine_rounds, b.opts.engine_ops);
    let dir = b.tmp.path().join("engine");
    std::fs::create_dir_all(&dir)?;
    let docker = Dockerd::start(&dir)?;
    docker.import_image()?;
    let docker_version = docker.docker(&["version", "-f", "{{.Server.Version}}"])?;
    docker.docker(&["run", "-d", "--name", "pv-bench-exec", IMAGE, "sleep", "1000000"])?;
    // A first run and exec warm the engine's caches for both modes alike.
    docker.timed(&["run", "--rm", IMAGE, "true"])?;
    docker.timed(&["exec", "pv-bench-exec", "true"])?;
    let mut run = EngineRun {
        bare: Latencies::default(),
        pidvirt: Latencies::default(),
        rounds,
        per_round,
        records: 0,
        docker_version,
        proc_paths: !b.opts.engine_without_proc_paths,
    };
    for round in 0..rounds {
        for attached in if round % 2 == 0 { [false, true] } else { [true, false] } {
            check_interrupted()?;
            let log = dir.join(format!("audit-{round}.jsonl"));
            let daemon = if attached {
                Some(b.start_daemon_with("engine", &log, "auto", run.proc_paths, &[])?)
            } else {
                None
            };
            let into = if attached { &mut run.pidvirt } else { &mut run.bare };
            for _ in 0..per_round {
                into.run.push(docker.timed(&["run", "--rm", IMAGE, "true"])?);
                into.exec.push(docker.timed(&["exec", "pv-bench-exec", "true"])?);
            }
            drop(daemon);
            if attached {
                run.records += std::fs::read_to_string(&log).unwrap_or_default().lines().count();
            }
        }
    }
    Ok(run)
}
