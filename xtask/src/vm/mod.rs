//! Boot Debian kernels under QEMU (software emulation, TCG) and run a host command inside them.
//!
//! The guest sees the host's root file system read-only over virtio-9p, so host-built binaries
//! run unchanged. Layout of a guest:
//!
//! * a small initramfs (static busybox + the kernel's own 9p/virtio modules, decompressed, loaded
//!   in dependency order) mounts the host root at `/host`;
//! * the new root is a tmpfs whose top-level entries are bind mounts of the host's top-level
//!   directories (so `/vm-results` can exist without touching the host), with fresh `proc`,
//!   `sysfs`, `devtmpfs`, `securityfs`, `bpf`, `tracefs`, `debugfs`, `cgroup2` mounts and tmpfs on
//!   `/run`, `/tmp` and `/var/tmp`; it is remounted read-only once set up;
//! * the per-run directory is shared writable over 9p: the host puts the command script there,
//!   its `results/` subdirectory is bind-mounted at `/vm-results`, and the guest writes the exit
//!   status to it (also printed on the console with a per-run marker);
//! * the command runs as root inside `chroot` with stdin from `/dev/null` and stdout/stderr on the
//!   serial console, environment `PATH` (Debian's root default), `HOME=/root` (read-only),
//!   `TERM=dumb`, `HOSTNAME=pidvirt-vm`, `PIDVIRT_VM=1` plus the caller's; then the guest powers
//!   off.
//!
//! QEMU runs with `-accel tcg,thread=single`: with multi-threaded TCG the guest kernel sometimes
//! (about 1 boot in 75 here) dies of an int3 Oops while patching its own code. A guest that dies
//! before starting the command is booted once more ([`qemu::BOOT_ATTEMPTS`] in all).
//!
//! Consequence of the tmpfs mounts: host files under `/tmp`, `/run` or `/var/tmp` are not visible
//! in the guest, except the top-level entry there that holds the program or the working
//! directory (e.g. `/tmp/clone` for a clone of the repository under /tmp): [`run_in_vm`] lists
//! it in the run directory's `expose` file and the guest binds it (read-only) into its tmpfs.
//!
//! Kernel cache layout (`cache_dir`): `debs/*.deb`, `kernels/<release>/{boot,lib,...}` (unpacked
//! package), `kernels/<release>/initramfs.cpio`, and `runs/<id>/results` (one per run; kept for the
//! caller, remove them when done).
//!
//! The steps: [`debs`] finds, downloads and unpacks the kernel package, [`initramfs`] builds the
//! initramfs around the guest's init (`init.sh`), [`qemu`] runs the guest, [`console`] reads what
//! it printed.

mod console;
mod debs;
mod initramfs;
mod qemu;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
pub use qemu::shell_quote;

/// Debian packages the VM runner needs on the host.
pub const HOST_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "cpio", "xz-utils"];

/// The guest's host name (set by its init, and in the command's environment).
const GUEST_HOSTNAME: &str = "pidvirt-vm";

/// A Debian kernel unpacked in the cache, ready to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmKernel {
    /// Kernel release, e.g. `6.12.117+deb12-amd64` (what `uname -r` prints in the guest).
    pub name: String,
    pub vmlinuz: PathBuf,
    /// `.../lib/modules/<release>` inside the unpacked package.
    pub modules_dir: PathBuf,
    /// The initramfs built for this kernel by [`prepare_kernel`].
    pub initramfs: PathBuf,
}

/// How to run one command in a VM.
#[derive(Debug, Clone)]
pub struct VmRunOptions {
    /// Working directory of the command in the guest (a host path; must not be under a masked
    /// directory such as /tmp).
    pub cwd: PathBuf,
    /// Extra environment of the command (on top of PATH, HOME, TERM, HOSTNAME; may override them).
    pub env: Vec<(String, String)>,
    /// Wall-clock limit for the whole boot-run-poweroff cycle; QEMU is killed when it expires.
    pub timeout: Duration,
    /// Appended to the kernel command line.
    pub extra_cmdline: String,
    /// Guest memory; 0 means 2048.
    pub mem_mb: u32,
    /// Guest vCPUs; 0 means 2.
    pub cpus: u32,
}

impl Default for VmRunOptions {
    fn default() -> Self {
        Self {
            cwd: PathBuf::from("/"),
            env: Vec::new(),
            timeout: Duration::from_mins(5),
            extra_cmdline: String::new(),
            mem_mb: 2048,
            cpus: 2,
        }
    }
}

/// Result of one VM run.
#[derive(Debug, Clone)]
pub struct VmRun {
    /// Exit status of the command (128+N if killed by signal N); `None` if the command did not
    /// finish (setup failure, guest crash, timeout).
    pub exit_code: Option<i32>,
    /// Full console log (`\r` removed); QEMU's own stderr is appended after a separator line.
    pub console: String,
    /// Host directory mounted writable in the guest at `/vm-results`.
    pub results_dir: PathBuf,
    /// True when QEMU was killed because `timeout` expired.
    pub timed_out: bool,
    /// Why the guest setup failed, if the init script said so.
    pub setup_error: Option<String>,
    /// How many times the guest was booted: a guest that dies before it starts the command (not
    /// the command's fault) is booted again, up to [`qemu::BOOT_ATTEMPTS`] times in all.
    pub boot_attempts: u32,
}

/// Kernel release the guest reported on its console (`uname -r` in the guest's init), falling
/// back to the kernel's `Linux version` banner.
pub fn guest_kernel_release(console: &str) -> Option<String> {
    console::kernel_release(console)
}

/// Installs qemu-system-x86, busybox-static, cpio and xz-utils if missing (idempotent).
pub fn ensure_tools() -> Result<()> {
    debs::install_host_packages(HOST_PACKAGES)?;
    let busybox = initramfs::busybox_path()?;
    eprintln!("vm: static busybox at {}", busybox.display());
    Ok(())
}

/// Downloads (apt-get download) and unpacks the newest Debian amd64 kernel of `series` ("6.12",
/// "6.1") into `cache_dir`, reusing what is already there, and builds its initramfs.
pub fn prepare_kernel(cache_dir: &Path, series: &str) -> Result<VmKernel> {
    let (release, kdir) = debs::unpacked_kernel(&absolute(cache_dir)?, series)?;
    let vmlinuz = kdir.join("boot").join(format!("vmlinuz-{release}"));
    let modules_dir = kdir.join("lib/modules").join(&release);
    if !vmlinuz.is_file() {
        bail!("{} missing from the unpacked kernel package", vmlinuz.display());
    }
    if !modules_dir.join("kernel").is_dir() {
        bail!("{}/kernel missing from the unpacked kernel package", modules_dir.display());
    }
    let initramfs = initramfs::build(&kdir, &release, &modules_dir)?;
    Ok(VmKernel { name: release, vmlinuz, modules_dir, initramfs })
}

/// Boots `kernel`, runs `argv` as root in the guest's chroot of the host root and returns its
/// exit code and the console log.
pub fn run_in_vm(kernel: &VmKernel, cache_dir: &Path, argv: &[String], opts: &VmRunOptions) -> Result<VmRun> {
    run_in_vm_with_console(kernel, cache_dir, argv, opts, &mut |_| {})
}

/// Like [`run_in_vm`], calling `on_line` with each console line as it arrives (for live output).
pub fn run_in_vm_with_console(
    kernel: &VmKernel,
    cache_dir: &Path,
    argv: &[String],
    opts: &VmRunOptions,
    on_line: &mut dyn FnMut(&str),
) -> Result<VmRun> {
    let script = qemu::command_script(argv, opts)?;
    let expose = qemu::exposed_dirs(&opts.cwd, argv)?;
    if opts.extra_cmdline.contains(['\n', '\r', '\0']) {
        bail!("extra_cmdline contains a line break or NUL: {:?}", opts.extra_cmdline);
    }
    for (what, p) in [("kernel image", &kernel.vmlinuz), ("initramfs", &kernel.initramfs)] {
        if !p.is_file() {
            bail!("{what} {} of kernel {} not found (run prepare_kernel)", p.display(), kernel.name);
        }
    }
    let run = qemu::RunDir::create(&absolute(cache_dir)?, &script, &expose)?;
    let mut cmd = qemu::command(kernel, &run, opts)?;
    let boots = qemu::boot(&mut cmd, &run, opts.timeout, on_line)?;
    let exit_code = run.finish().or_else(|| console::exit_status(&boots.console, &boots.nonce));
    Ok(VmRun {
        exit_code,
        setup_error: console::setup_error(&boots.console),
        console: boots.console,
        results_dir: run.results,
        timed_out: boots.timed_out,
        boot_attempts: boots.attempts,
    })
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving path {}", p.display()))
}

/// Runs `cmd` (stdin from /dev/null), failing with its stderr (or stdout) and `what`; answers
/// its stdout.
fn run_cmd(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("{what} failed to start"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let detail = if stderr.trim().is_empty() { stdout } else { stderr };
        bail!("{what} failed ({}): {}", out.status, detail.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// FNV-1a: a stable hash for cache stamps and nonces (not for security).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
