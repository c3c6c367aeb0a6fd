//! Real container engines for the suite, each started by the test that needs it in directories
//! of its own (data, run state, sockets) and stopped, with every container it made, on drop:
//! Docker (dockerd with its own containerd), Podman (with its API service), and an image made of
//! a static busybox, since no registry is reachable.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::Cli;

/// The image every engine runs: a static busybox with a few applets.
pub const IMAGE: &str = "localhost/bb:1";

/// A rootfs tarball of a static busybox (the image), in `dir`.
fn busybox_tar(dir: &Path) -> Result<PathBuf, String> {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).map_err(|e| e.to_string())?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .map_err(|e| format!("/bin/busybox (busybox-static): {e}"))?;
    for applet in ["sh", "sleep", "ps", "cat", "kill", "ls", "true", "wait"] {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    let tar = dir.join("bb.tar");
    let status = Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".").status();
    match status {
        Ok(s) if s.success() => Ok(tar),
        other => Err(format!("tar of the busybox rootfs: {other:?}")),
    }
}

/// Polls `ready` for up to `timeout` (scaled like the suite's waits).
fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let timeout = timeout * (crate::settle().as_secs() / 5).max(1) as u32;
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Stops `child` with SIGTERM (then SIGKILL after `grace`) and reaps it.
fn stop(child: &mut Child, grace: Duration) {
    // SAFETY: kill takes no pointers; the pid is our child's, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A dockerd of our own: `--bridge=none`, no iptables, data and exec roots in a temporary
/// directory; the engine's containerd listens at `containerd_socket`.
pub struct Dockerd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub socket: PathBuf,
    pub containerd_socket: PathBuf,
}

impl Dockerd {
    /// Starts dockerd and imports the image; Err says why it could not (no dockerd, it did not
    /// answer...).
    pub fn start() -> Result<Self, String> {
        let dir = tempfile::Builder::new().prefix("pvd-").tempdir().map_err(|e| e.to_string())?;
        let mut d = Self {
            socket: dir.path().join("docker.sock"),
            containerd_socket: dir.path().join("exec/containerd/containerd.sock"),
            child: None,
            dir,
        };
        d.spawn()?;
        let tar = busybox_tar(d.dir.path())?;
        let out = Command::new("docker")
            .arg("-H")
            .arg(d.host())
            .args(["import", "-"])
            .arg(IMAGE)
            .stdin(std::fs::File::open(&tar).map_err(|e| e.to_string())?)
            .output()
            .map_err(|e| format!("docker: {e}"))?;
        if !out.status.success() {
            return Err(format!("docker import: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(d)
    }

    fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Starts dockerd (again, after `stop_engine`); waits until it answers.
    pub fn spawn(&mut self) -> Result<(), String> {
        let dir = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("dockerd.log"))
            .map_err(|e| e.to_string())?;
        let child = Command::new("dockerd")
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("--host")
            .arg(self.host())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("dockerd (docker.io): {e}"))?;
        self.child = Some(child);
        if wait_until(Duration::from_mins(1), || self.docker(&["info"]).code == 0) {
            Ok(())
        } else {
            Err(format!("dockerd did not answer within 60 s:\n{}", self.log()))
        }
    }

    /// Stops dockerd (its containers stop with it) but keeps its state, for `spawn` again.
    pub fn stop_engine(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child, Duration::from_secs(30));
        }
    }

    /// dockerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// `docker ARGS` against this engine.
    pub fn docker(&self, args: &[&str]) -> Cli {
        let out: Output = Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("docker {args:?}: {e}"));
        out.into()
    }

    /// `docker ARGS`, which must succeed; answers its stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert_eq!(out.code, 0, "docker {args:?}: {}", out.stderr);
        out.stdout.trim().to_string()
    }

    /// Imports the busybox rootfs again as `image`, with Dockerfile-style `changes` (a `CMD` for
    /// an image that runs without a command, like a pod's sandbox).
    pub fn import(&self, image: &str, changes: &[&str]) -> Result<(), String> {
        let dir = tempfile::Builder::new().prefix("pvi-").tempdir().map_err(|e| e.to_string())?;
        let tar = busybox_tar(dir.path())?;
        let mut cmd = Command::new("docker");
        cmd.arg("-H").arg(self.host()).arg("import");
        for c in changes {
            cmd.args(["--change", c]);
        }
        let out = cmd
            .args(["-", image])
            .stdin(std::fs::File::open(&tar).map_err(|e| e.to_string())?)
            .output()
            .map_err(|e| format!("docker: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("docker import: {}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// The host pid of container `name`'s init, as the engine says.
    pub fn pid(&self, name: &str) -> u32 {
        self.ok(&["inspect", "-f", "{{.State.Pid}}", name]).parse().expect("a pid")
    }

    /// The full id of container `name`.
    pub fn id(&self, name: &str) -> String {
        self.ok(&["inspect", "-f", "{{.Id}}", name])
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            let ids = self.docker(&["ps", "-aq"]).stdout;
            for id in ids.split_whitespace() {
                let _ = self.docker(&["rm", "-f", id]);
            }
        }
        self.stop_engine();
        // Overlay mounts the engine left behind would keep the directory busy.
        let _ = Command::new("umount").arg("-R").arg(self.dir.path().join("data")).output();
    }
}

/// The image of a pod's sandbox for [`Containerd`]'s CRI plugin (a "pause" that sleeps).
pub const PAUSE_IMAGE: &str = "localhost/pause:1";

/// A standalone containerd with its CRI plugin (the Kubernetes CRI API, on `socket`), root, state
/// and socket in a temporary directory; pods' sandboxes run [`PAUSE_IMAGE`]. On drop every task
/// it runs is killed and deleted before it stops (a containerd's tasks outlive it).
pub struct Containerd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub socket: PathBuf,
}

impl Containerd {
    /// Starts containerd with Debian's default configuration moved into a directory of its own;
    /// Err says why it could not, or why its CRI plugin is not serving.
    pub fn start() -> Result<Self, String> {
        let dir = tempfile::Builder::new().prefix("pvc-").tempdir().map_err(|e| e.to_string())?;
        let socket = dir.path().join("containerd.sock");
        let out = Command::new("containerd")
            .args(["config", "default"])
            .output()
            .map_err(|e| format!("containerd (docker.io's containerd): {e}"))?;
        let default = String::from_utf8_lossy(&out.stdout);
        let config: String = default
            .lines()
            .map(|line| match line.trim_start() {
                l if l.starts_with("root = ") => format!("root = \"{}\"", dir.path().join("root").display()),
                l if l.starts_with("state = ") => {
                    format!("state = \"{}\"", dir.path().join("state").display())
                }
                l if l.starts_with("address = \"/run/containerd/containerd.sock\"") => {
                    format!("  address = \"{}\"", socket.display())
                }
                l if l.starts_with("sandbox_image = ") => format!("    sandbox_image = {PAUSE_IMAGE:?}"),
                // A sandbox asks for oom_score_adj -998, which needs CAP_SYS_RESOURCE (root lacks
                // it on some hosts): no lower than containerd's own.
                l if l.starts_with("restrict_oom_score_adj = ") => "    restrict_oom_score_adj = true".into(),
                _ => line.to_string(),
            })
            .map(|l| l + "\n")
            .collect();
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.path().join("containerd.log")).map_err(|e| e.to_string())?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("containerd: {e}"))?;
        let c = Self { dir, child: Some(child), socket };
        let serving = wait_until(Duration::from_secs(30), || {
            c.ctr(&["plugins", "ls"])
                .stdout
                .lines()
                .any(|l| l.contains(" cri ") && l.trim_end().ends_with("ok"))
        });
        if serving {
            Ok(c)
        } else {
            Err(format!("containerd's CRI plugin did not serve within 30 s:\n{}", c.log()))
        }
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// `ctr ARGS` against this containerd, in the CRI plugin's namespace (`k8s.io`).
    pub fn ctr(&self, args: &[&str]) -> Cli {
        let out: Output = Command::new("ctr")
            .arg("-a")
            .arg(&self.socket)
            .args(["-n", "k8s.io"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("ctr {args:?}: {e}"));
        out.into()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let tasks = self.ctr(&["tasks", "ls", "-q"]).stdout;
        for id in tasks.split_whitespace() {
            let _ = self.ctr(&["tasks", "kill", "-s", "KILL", id]);
        }
        for id in tasks.split_whitespace() {
            wait_until(Duration::from_secs(10), || self.ctr(&["tasks", "delete", id]).code == 0);
        }
        if let Some(mut child) = self.child.take() {
            stop(&mut child, Duration::from_secs(10));
        }
        // Snapshots and sandbox mounts left behind would keep the directory busy.
        unmount_under(self.dir.path());
    }
}

/// Detaches every mount below `dir`, deepest first (from this mount namespace's mountinfo).
fn unmount_under(dir: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> =
        info.lines().filter_map(|l| l.split(' ').nth(4)).filter(|p| Path::new(p).starts_with(dir)).collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").arg("-l").arg(p).output();
    }
}

/// Podman with its own storage and run state (runc, cgroupfs: what runs on these hosts), and
/// optionally its Docker-compatible API service.
pub struct Podman {
    dir: tempfile::TempDir,
    service: Option<Child>,
    pub hooks_dir: PathBuf,
    pub socket: PathBuf,
}

impl Podman {
    /// Podman with the image imported; hooks (if any) read from `hooks_dir`.
    pub fn new() -> Result<Self, String> {
        let dir = tempfile::Builder::new().prefix("pvp-").tempdir().map_err(|e| e.to_string())?;
        let p = Self {
            hooks_dir: dir.path().join("hooks.d"),
            socket: dir.path().join("podman.sock"),
            service: None,
            dir,
        };
        std::fs::create_dir_all(&p.hooks_dir).map_err(|e| e.to_string())?;
        let tar = busybox_tar(p.dir.path())?;
        let out = p
            .command()
            .args(["import", &tar.to_string_lossy(), IMAGE])
            .output()
            .map_err(|e| format!("podman: {e}"))?;
        if !out.status.success() {
            return Err(format!("podman import: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(p)
    }

    fn command(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(self.dir.path().join("run"))
            .args(["--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .arg("--hooks-dir")
            .arg(&self.hooks_dir)
            .stdin(Stdio::null());
        c
    }

    /// `podman ARGS`.
    pub fn podman(&self, args: &[&str]) -> Cli {
        self.command().args(args).output().unwrap_or_else(|e| panic!("podman {args:?}: {e}")).into()
    }

    /// `podman run -d` of the image with these extra arguments (the rlimits these hosts allow,
    /// no network), running `cmd`; answers the container id.
    pub fn run(&self, extra: &[&str], cmd: &[&str]) -> Cli {
        let mut args = vec![
            "run",
            "-d",
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ];
        args.extend_from_slice(extra);
        args.push(IMAGE);
        args.extend_from_slice(cmd);
        self.podman(&args)
    }

    /// Starts the API service on `socket`; waits until it answers.
    pub fn serve(&mut self) -> Result<(), String> {
        let child = self
            .command()
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", self.socket.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("podman system service: {e}"))?;
        self.service = Some(child);
        if !wait_until(Duration::from_secs(30), || self.socket.exists()) {
            return Err("podman system service did not listen within 30 s".into());
        }
        // Its first answer sets up the engine (storage, runtime): seconds here, far more under
        // emulation. Asked once now, so that the daemon's calls (5 s each) find it warm.
        if wait_until(Duration::from_mins(1), || self.api_answers()) {
            Ok(())
        } else {
            Err("podman system service did not answer GET /version within a minute".into())
        }
    }

    /// Whether the API service answers `GET /version` with 200.
    fn api_answers(&self) -> bool {
        use std::io::{Read as _, Write as _};
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(&self.socket) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        if s.write_all(b"GET /version HTTP/1.0\r\nHost: podman\r\n\r\n").is_err() {
            return false;
        }
        let mut head = [0u8; 12];
        s.read_exact(&mut head).is_ok() && head.ends_with(b"200")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-af", "-t", "0"]);
        if let Some(mut child) = self.service.take() {
            stop(&mut child, Duration::from_secs(5));
        }
        let _ = Command::new("umount").arg("-R").arg(self.dir.path().join("root")).output();
    }
}

/// runc directly, with OCI bundles of the busybox rootfs.
pub mod runc {
    use std::{
        path::Path,
        process::{Command, Stdio},
    };

    /// An OCI bundle in `dir`: busybox (static) as the rootfs, `sleep 1000` as the process,
    /// `annotations`, and pidvirt's hook at createRuntime, prestart (runc's only hook at a restore)
    /// and poststop when `hook_socket` is given
    /// (failing open unless the annotations say otherwise).
    pub fn bundle(dir: &Path, hook_socket: Option<&Path>, annotations: &serde_json::Value) {
        let rootfs = dir.join("rootfs");
        for d in ["bin", "proc", "dev", "sys", "tmp"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static is installed");
        for applet in ["sh", "sleep", "kill"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let spec =
            Command::new("runc").args(["spec", "--bundle"]).arg(dir).status().expect("runc is installed");
        assert!(spec.success());
        let path = dir.join("config.json");
        let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        config["process"]["terminal"] = false.into();
        config["process"]["args"] = serde_json::json!(["/bin/sh", "-c", "sleep 1000"]);
        config["annotations"] = annotations.clone();
        if let Some(socket) = hook_socket {
            let hook = serde_json::json!({
                "path": crate::pidvirt_bin(),
                "args": ["pidvirt", "oci-hook", "--socket", socket],
            });
            config["hooks"] = serde_json::json!({"createRuntime": [hook.clone()], "prestart": [hook.clone()], "poststop": [hook]});
        }
        std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    }

    /// Runs runc; returns its exit status and stderr. Its output goes to a file, not a pipe: a
    /// detached container inherits runc's stdio and would hold a pipe open.
    pub fn runc(args: &[&str]) -> (std::process::ExitStatus, String) {
        let log = tempfile::NamedTempFile::new().unwrap();
        let status = Command::new("runc")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .status()
            .expect("runc");
        (status, std::fs::read_to_string(log.path()).unwrap_or_default())
    }

    /// `runc state ID`.
    pub fn runc_state(id: &str) -> Option<serde_json::Value> {
        let out = Command::new("runc").args(["state", id]).stdin(Stdio::null()).output().ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The host pid of the container's init, as `runc state ID` reports it.
    pub fn runc_init(id: &str) -> u32 {
        let state = runc_state(id).expect("runc state");
        u32::try_from(state["pid"].as_u64().expect("runc state has a pid")).expect("a pid")
    }

    /// Deletes the container even when a test fails.
    pub struct RuncContainer(pub String);

    impl Drop for RuncContainer {
        fn drop(&mut self) {
            let _ = runc(&["delete", "--force", &self.0]);
        }
    }
}
