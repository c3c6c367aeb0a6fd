//! Running the guest: the run directory shared with it, the QEMU command line (TCG, the two 9p
//! shares), the command script it runs, and the boots themselves.

use std::{
    fmt::Write as _,
    fs,
    io::Read,
    path::{Component, Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, anyhow, bail};

use super::{GUEST_HOSTNAME, VmKernel, VmRunOptions, console, fnv1a};

/// Boots per run when the guest dies before starting the command.
pub const BOOT_ATTEMPTS: u32 = 2;

/// Host paths the guest replaces with its own mounts.
const MASKED_DIRS: &[&str] = &["/tmp", "/run", "/var/tmp", "/proc", "/sys", "/dev"];

/// Directories the guest masks with its own tmpfs but can show the host's entries of again
/// (bind mounts of the read-only host root inside that tmpfs).
const REEXPOSABLE_DIRS: &[&str] = &["/tmp", "/run", "/var/tmp"];

const GUEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A run's directory, `cache_dir/runs/<id>`, shared writable with the guest (tag vmrun): the host
/// puts the command script, the list of directories to expose and each boot's nonce there; the
/// guest bind-mounts `results/` at /vm-results and writes `exit-status`.
pub struct RunDir {
    pub dir: PathBuf,
    pub results: PathBuf,
}

static RUN_COUNTER: AtomicU32 = AtomicU32::new(0);

impl RunDir {
    /// A fresh run directory holding `script` and `expose` (host directories under the guest's
    /// tmpfs mounts to bind there again).
    pub fn create(cache_dir: &Path, script: &str, expose: &[PathBuf]) -> Result<Self> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = cache_dir.join("runs").join(format!("{}-{}-{n}", now.as_secs(), std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("creating run directory {}", dir.display()))?;
        let results = dir.join("results");
        fs::create_dir_all(&results).with_context(|| format!("creating {}", results.display()))?;
        let run = Self { dir, results };
        fs::write(run.script_file(), script).context("writing the command script")?;
        // One directory a line: the init binds each with a `while read` loop.
        let expose: String = expose.iter().filter_map(|p| p.to_str()).flat_map(|p| [p, "\n"]).collect();
        fs::write(run.dir.join("expose"), expose).context("writing the list of directories to expose")?;
        Ok(run)
    }

    fn nonce_file(&self) -> PathBuf {
        self.dir.join("nonce")
    }
    fn script_file(&self) -> PathBuf {
        self.dir.join("cmd.sh")
    }
    fn status_file(&self) -> PathBuf {
        self.dir.join("exit-status")
    }

    /// Gets the directory ready for a boot: a fresh nonce (answered), no exit status.
    fn new_boot(&self) -> Result<String> {
        let nonce = new_nonce();
        fs::write(self.nonce_file(), &nonce).context("writing the run nonce")?;
        let _ = fs::remove_file(self.status_file());
        Ok(nonce)
    }

    /// After the last boot: the exit status the guest wrote, if any; the files for the guest go.
    pub fn finish(&self) -> Option<i32> {
        let status = fs::read_to_string(self.status_file()).ok();
        for f in [self.nonce_file(), self.script_file(), self.status_file()] {
            let _ = fs::remove_file(f);
        }
        status.and_then(|s| s.trim().parse().ok())
    }
}

/// A fresh value that makes this boot's console markers unique.
fn new_nonce() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
    let seed = format!("{}:{}:{n}", now.as_nanos(), std::process::id());
    format!("{:016x}", fnv1a(seed.as_bytes()))
}

/// The QEMU command that boots `kernel` with the host root and `run`'s directory shared.
pub fn command(kernel: &VmKernel, run: &RunDir, opts: &VmRunOptions) -> Result<Command> {
    let mem = if opts.mem_mb == 0 { 2048 } else { opts.mem_mb };
    let cpus = if opts.cpus == 0 { 2 } else { opts.cpus };
    let cmdline = format!("console=ttyS0 panic=-1 loglevel=5 edd=off {}", opts.extra_cmdline.trim());
    let mut cmd = Command::new("qemu-system-x86_64");
    // Single-threaded TCG: with one host thread per vCPU (MTTCG) the guest kernel now and then
    // dies on a stray int3 while it patches its own code (static keys, text_poke); boot time
    // is the same either way.
    cmd.args(["-accel", "tcg,thread=single", "-cpu", "max"])
        .args(["-nographic", "-no-reboot", "-nodefaults", "-no-user-config"])
        .args(["-serial", "stdio", "-net", "none"])
        .args(["-smp", &cpus.to_string(), "-m", &format!("{mem}M")])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&kernel.initramfs)
        .args(["-append", cmdline.trim()])
        .args(["-virtfs", &virtfs_arg(Path::new("/"), "hostroot", true)?])
        .args(["-virtfs", &virtfs_arg(&run.dir, "vmrun", false)?]);
    Ok(cmd)
}

/// What the boots of one run left.
pub struct Boots {
    /// The console of every boot.
    pub console: String,
    /// The last boot's nonce (its markers).
    pub nonce: String,
    /// Whether QEMU was killed at the deadline.
    pub timed_out: bool,
    pub attempts: u32,
}

/// Boots with `cmd` until the guest starts the command (or says why its setup failed), at most
/// [`BOOT_ATTEMPTS`] times within `timeout` in all.
pub fn boot(
    cmd: &mut Command,
    run: &RunDir,
    timeout: Duration,
    on_line: &mut dyn FnMut(&str),
) -> Result<Boots> {
    let deadline = Instant::now() + timeout;
    let mut console = String::new();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let nonce = run.new_boot()?;
        let (log, timed_out) = run_qemu(cmd, deadline, timeout, on_line)?;
        console.push_str(&log);
        if console::started(&log, &nonce)
            || timed_out
            || console::setup_error(&log).is_some()
            || attempts >= BOOT_ATTEMPTS
        {
            return Ok(Boots { console, nonce, timed_out, attempts });
        }
        let note = "pidvirt-vm: host: the guest died before starting the command; booting again";
        on_line(note);
        console.push_str(note);
        console.push('\n');
    }
}

/// Boots once: runs QEMU until it exits or `deadline` passes (then kills it), passing console
/// lines to `on_line`. Returns the console (plus QEMU's stderr) and whether it timed out.
fn run_qemu(
    cmd: &mut Command,
    deadline: Instant,
    timeout: Duration,
    on_line: &mut dyn FnMut(&str),
) -> Result<(String, bool)> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (is qemu-system-x86 installed? see ensure_tools)")?;
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take();
    let stderr = child.0.stderr.take();
    let stderr_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut s) = stderr {
            let _ = s.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    });

    // Read the console on a thread and hand lines to the caller's callback here, so the callback
    // needs no Send bound; this loop also enforces the deadline.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let Some(mut out) = stdout else { return };
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=i).collect();
                        if tx.send(console::clean_line(&line)).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        if !pending.is_empty() {
            let _ = tx.send(console::clean_line(&pending));
        }
    });

    let mut console = String::new();
    let mut timed_out = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                on_line(&line);
                console.push_str(&line);
                console.push('\n');
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if !timed_out && Instant::now() >= deadline {
            timed_out = true;
            let _ = child.0.kill();
            let note = format!("pidvirt-vm: host: timeout after {timeout:?}, killed QEMU");
            on_line(&note);
            console.push_str(&note);
            console.push('\n');
        }
    }
    let status = child.0.wait().context("waiting for QEMU")?;
    let _ = reader.join();
    let qemu_stderr = stderr_thread.join().unwrap_or_default();
    if !qemu_stderr.trim().is_empty() || (!status.success() && !timed_out) {
        let _ = writeln!(console, "--- qemu ({status}) stderr ---\n{}", qemu_stderr.trim_end());
    }
    Ok((console, timed_out))
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `-virtfs` value for sharing `path` (commas in paths are doubled, as QEMU requires).
fn virtfs_arg(path: &Path, tag: &str, readonly: bool) -> Result<String> {
    let p = path.to_str().ok_or_else(|| anyhow!("path {} is not UTF-8", path.display()))?;
    let mut arg =
        format!("local,path={},mount_tag={tag},security_model=none,multidevs=remap", p.replace(',', ",,"));
    if readonly {
        arg.push_str(",readonly=on");
    }
    Ok(arg)
}

/// The host directories to bind into the guest's tmpfs mounts for the working directory `cwd`
/// and the program `argv[0]` (when it is a path), sorted.
pub fn exposed_dirs(cwd: &Path, argv: &[String]) -> Result<Vec<PathBuf>> {
    let mut expose = check_guest_visible(cwd, "working directory")?;
    if let Some(prog) = argv.first().filter(|a| a.starts_with('/')) {
        expose.extend(check_guest_visible(Path::new(prog), "program")?);
    }
    expose.sort();
    expose.dedup();
    Ok(expose)
}

/// Checks that `path` can be made visible in the guest. Returns the host directories to bind
/// into the guest's tmpfs mounts for it: for `/tmp/clone/target/x`, `/tmp/clone` (a clone of
/// the repository under /tmp still runs its VM tests). Fails for a relative or missing path, or
/// one under /proc, /sys or /dev.
fn check_guest_visible(path: &Path, what: &str) -> Result<Vec<PathBuf>> {
    if !path.is_absolute() {
        bail!("{what} {} must be an absolute host path", path.display());
    }
    let real = fs::canonicalize(path)
        .with_context(|| format!("{what} {} does not exist on the host", path.display()))?;
    let mut expose = Vec::new();
    for p in [path, real.as_path()] {
        let Some(m) = masked_dir(p) else { continue };
        let top = reexposed_top(p, m).ok_or_else(|| {
            anyhow!("{what} {} is under {m}, which the guest replaces with its own mount", path.display())
        })?;
        if top.to_str().is_none_or(|t| t.contains(['\n', '\r'])) {
            bail!(
                "{what} {}: {} cannot be shown in the guest (not UTF-8 or a line break)",
                path.display(),
                top.display()
            );
        }
        expose.push(top);
    }
    Ok(expose)
}

/// `m/first` for a path `m/first/...` under a re-exposable masked directory `m`.
fn reexposed_top(path: &Path, m: &str) -> Option<PathBuf> {
    if !REEXPOSABLE_DIRS.contains(&m) {
        return None;
    }
    let norm: PathBuf = path.components().filter(|c| !matches!(c, Component::CurDir)).collect();
    let first = norm.strip_prefix(m).ok()?.components().next()?;
    match first {
        Component::Normal(n) => Some(Path::new(m).join(n)),
        _ => None,
    }
}

fn masked_dir(path: &Path) -> Option<&'static str> {
    let norm: PathBuf = path.components().filter(|c| !matches!(c, Component::CurDir)).collect();
    MASKED_DIRS.iter().copied().find(|m| norm.starts_with(m))
}

/// The shell script run in the guest: environment, working directory, then `exec argv`.
pub fn command_script(argv: &[String], opts: &VmRunOptions) -> Result<String> {
    if argv.is_empty() {
        bail!("empty command line for the VM");
    }
    if let Some(a) = argv.iter().find(|a| a.contains('\0')) {
        bail!("command argument {a:?} contains NUL");
    }
    let cwd = opts.cwd.to_str().ok_or_else(|| anyhow!("cwd {} is not UTF-8", opts.cwd.display()))?;
    let mut s = String::from("# generated by pidvirt xtask (vm/qemu.rs)\n");
    let base = [
        ("PATH", GUEST_PATH),
        ("HOME", "/root"),
        ("TERM", "dumb"),
        ("HOSTNAME", GUEST_HOSTNAME),
        ("PIDVIRT_VM", "1"),
    ];
    let user = opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    for (k, v) in base.into_iter().chain(user) {
        let valid = k.chars().next().is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
            && k.chars().all(|c| c == '_' || c.is_ascii_alphanumeric());
        if !valid {
            bail!("invalid environment variable name {k:?} for the VM");
        }
        if v.contains('\0') {
            bail!("environment variable {k} contains NUL");
        }
        let _ = writeln!(s, "export {k}={}", shell_quote(v));
    }
    let _ = writeln!(s, "cd {} || exit 126", shell_quote(cwd));
    let words: Vec<String> = argv.iter().map(|a| shell_quote(a)).collect();
    let _ = writeln!(s, "exec {}", words.join(" "));
    Ok(s)
}

/// `s` as one word of a POSIX shell command line.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_quoting_and_validation() {
        let opts = VmRunOptions {
            cwd: PathBuf::from("/work/it's"),
            env: vec![("RUST_LOG".into(), "debug".into())],
            ..VmRunOptions::default()
        };
        let argv = vec!["/bin/echo".to_string(), "a b".to_string(), "it's".to_string()];
        let s = command_script(&argv, &opts).unwrap();
        assert!(s.contains("export RUST_LOG='debug'\n"), "{s}");
        assert!(s.contains("cd '/work/it'\\''s' || exit 126\n"), "{s}");
        assert!(s.ends_with("exec '/bin/echo' 'a b' 'it'\\''s'\n"), "{s}");
        assert!(command_script(&[], &opts).is_err());
        let bad = VmRunOptions { env: vec![("A-B".into(), "x".into())], ..VmRunOptions::default() };
        assert!(command_script(&argv, &bad).is_err());
    }

    #[test]
    fn masked_paths() {
        assert_eq!(masked_dir(Path::new("/tmp/x/y")), Some("/tmp"));
        assert_eq!(masked_dir(Path::new("/var/tmp")), Some("/var/tmp"));
        assert_eq!(masked_dir(Path::new("/tmpfoo/x")), None);
        assert_eq!(masked_dir(Path::new("/work/main/target/debug/x")), None);
        assert!(check_guest_visible(Path::new("relative"), "program").is_err());
        assert_eq!(
            reexposed_top(Path::new("/tmp/clone/target/x"), "/tmp"),
            Some(PathBuf::from("/tmp/clone"))
        );
        assert_eq!(reexposed_top(Path::new("/var/tmp/a"), "/var/tmp"), Some(PathBuf::from("/var/tmp/a")));
        assert_eq!(reexposed_top(Path::new("/tmp"), "/tmp"), None, "the whole tmpfs cannot be replaced");
        assert_eq!(reexposed_top(Path::new("/proc/1/exe"), "/proc"), None);
        assert!(check_guest_visible(Path::new("/proc/self/exe"), "program").is_err());
    }

    #[test]
    fn virtfs_escapes_commas() {
        let a = virtfs_arg(Path::new("/a,b"), "t", true).unwrap();
        assert_eq!(a, "local,path=/a,,b,mount_tag=t,security_model=none,multidevs=remap,readonly=on");
    }
}
