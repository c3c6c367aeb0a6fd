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
//! before starting the command is booted once more ([`VmRun::boot_attempts`]).
//!
//! Consequence of the tmpfs mounts: host files under `/tmp`, `/run` or `/var/tmp` are not visible
//! in the guest, except the top-level entry there that holds the program or the working
//! directory (e.g. `/tmp/clone` for a clone of the repository under /tmp): [`run_in_vm`] lists
//! it in the run directory's `expose` file and the guest binds it (read-only) into its tmpfs.
//!
//! Kernel cache layout (`cache_dir`): `debs/*.deb`, `kernels/<release>/{boot,lib,...}` (unpacked
//! package), `kernels/<release>/initramfs.cpio`, and `runs/<id>/results` (one per run; kept for the
//! caller, remove them when done).

// A caller need not use every field and helper of this API.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};

/// Debian packages the VM runner needs on the host.
pub const HOST_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "cpio", "xz-utils"];

/// Modules the initramfs needs. Their dependencies are added from each module's `.modinfo`
/// (`depends=`; Debian's packages ship no `modules.dep`, depmod makes it at install time), and
/// modules built into the kernel (`modules.builtin`) are skipped.
const INITRAMFS_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];

/// Host paths the guest replaces with its own mounts.
const MASKED_DIRS: &[&str] = &["/tmp", "/run", "/var/tmp", "/proc", "/sys", "/dev"];

const GUEST_HOSTNAME: &str = "pidvirt-vm";
const GUEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const MARKER_PREFIX: &str = "pidvirt-vm:";
/// Printed by the init script before it powers off because setup failed.
const FATAL_PREFIX: &str = "pidvirt-vm: FATAL: ";
const RELEASE_PREFIX: &str = "pidvirt-vm: kernel release ";
/// Boots per run when the guest dies before starting the command.
const BOOT_ATTEMPTS: u32 = 2;

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
            timeout: Duration::from_secs(300),
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
    /// Wall time from starting QEMU until it exited (or was killed), over all boot attempts.
    pub elapsed: Duration,
    /// True when QEMU was killed because `timeout` expired.
    pub timed_out: bool,
    /// Console text between the start and exit markers: the command's output (kernel messages
    /// printed meanwhile may be interleaved).
    pub output: String,
    /// Why the guest setup failed, if the init script said so.
    pub setup_error: Option<String>,
    /// How many times the guest was booted: a guest that dies before it starts the command (not
    /// the command's fault) is booted again, up to 2 times in all.
    pub boot_attempts: u32,
}

// ---------------------------------------------------------------------------------------------
// Host tools
// ---------------------------------------------------------------------------------------------

/// Installs qemu-system-x86, busybox-static, cpio and xz-utils if missing (idempotent).
pub fn ensure_tools() -> Result<()> {
    let mut missing = Vec::new();
    for pkg in HOST_PACKAGES {
        if dpkg_installed(pkg)? {
            eprintln!("vm: host package {pkg} is installed");
        } else {
            eprintln!("vm: host package {pkg} is missing");
            missing.push(*pkg);
        }
    }
    if !missing.is_empty() {
        eprintln!("vm: apt-get install {}", missing.join(" "));
        let install = || {
            run_cmd(
                Command::new("apt-get")
                    .args(["install", "-y", "-q", "--no-install-recommends"])
                    .args(&missing)
                    .env("DEBIAN_FRONTEND", "noninteractive"),
                &format!("apt-get install {}", missing.join(" ")),
            )
        };
        if let Err(first) = install() {
            eprintln!("vm: apt-get install failed ({first:#}); running apt-get update and retrying");
            apt_get_update()?;
            install()?;
        }
    }
    let busybox = busybox_path()?;
    eprintln!("vm: static busybox at {}", busybox.display());
    Ok(())
}

fn dpkg_installed(pkg: &str) -> Result<bool> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", pkg])
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("running dpkg-query for {pkg}"))?;
    Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "installed")
}

fn apt_get_update() -> Result<()> {
    eprintln!("vm: apt-get update");
    run_cmd(
        Command::new("apt-get").args(["update", "-q"]).env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get update",
    )
    .map(drop)
}

/// The static busybox binary (from busybox-static).
fn busybox_path() -> Result<PathBuf> {
    for cand in ["/bin/busybox", "/usr/bin/busybox", "/usr/sbin/busybox", "/sbin/busybox"] {
        let p = Path::new(cand);
        if let Ok(bytes) = fs::read(p) {
            if elf_is_static(&bytes) {
                return Ok(p.to_path_buf());
            }
            bail!(
                "{} is not a statically linked ELF executable; install busybox-static \
                 (the dynamically linked busybox cannot run in the initramfs)",
                p.display()
            );
        }
    }
    bail!("busybox not found; install busybox-static (see ensure_tools)")
}

/// True if `bytes` is a 64-bit little-endian ELF file without a PT_INTERP program header.
fn elf_is_static(bytes: &[u8]) -> bool {
    let rd_u16 = |off: usize| bytes.get(off..off + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let rd_u32 = |off: usize| bytes.get(off..off + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let rd_u64 = |off: usize| {
        bytes.get(off..off + 8).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_le_bytes)
    };
    // ELF magic, ELFCLASS64, ELFDATA2LSB.
    if bytes.len() < 64 || bytes[..4] != *b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (rd_u64(0x20), rd_u16(0x36), rd_u16(0x38)) else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    (0..usize::from(phnum)).all(|i| {
        let off = phoff.saturating_add(i.saturating_mul(usize::from(phentsize)));
        // PT_INTERP == 3; a truncated header counts as "not static".
        rd_u32(off).is_some_and(|p_type| p_type != 3)
    })
}

// ---------------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------------

/// Downloads (apt-get download) and unpacks the newest Debian amd64 kernel of `series` ("6.12",
/// "6.1") into `cache_dir`, reusing what is already there, and builds its initramfs.
pub fn prepare_kernel(cache_dir: &Path, series: &str) -> Result<VmKernel> {
    if series.is_empty() || !series.chars().all(|c| c.is_ascii_digit() || c == '.') {
        bail!("invalid kernel series {series:?} (expected e.g. \"6.12\" or \"6.1\")");
    }
    let cache_dir = absolute(cache_dir)?;
    let kernels_dir = cache_dir.join("kernels");
    fs::create_dir_all(&kernels_dir)
        .with_context(|| format!("creating kernel cache {}", kernels_dir.display()))?;

    let release = match newest_available_kernel(series) {
        Ok(release) => release,
        Err(err) => {
            // Offline or no apt lists: fall back to what is cached.
            match newest_cached_kernel(&kernels_dir, series) {
                Some(release) => {
                    eprintln!("vm: {err:#}; using cached kernel {release}");
                    release
                }
                None => return Err(err),
            }
        }
    };
    let kdir = kernels_dir.join(&release);
    let stamp = kdir.join(".unpacked");
    if stamp.exists() {
        eprintln!("vm: kernel {release} already unpacked in {}", kdir.display());
    } else {
        download_and_unpack(&cache_dir, &release, &kdir)?;
        fs::write(&stamp, b"").with_context(|| format!("writing {}", stamp.display()))?;
    }

    let vmlinuz = kdir.join("boot").join(format!("vmlinuz-{release}"));
    let modules_dir = kdir.join("lib/modules").join(&release);
    if !vmlinuz.is_file() {
        bail!("{} missing from the unpacked kernel package", vmlinuz.display());
    }
    if !modules_dir.join("kernel").is_dir() {
        bail!("{}/kernel missing from the unpacked kernel package", modules_dir.display());
    }
    let initramfs = build_initramfs(&kdir, &release, &modules_dir)?;
    Ok(VmKernel { name: release, vmlinuz, modules_dir, initramfs })
}

/// Asks apt for the newest kernel of `series` that has an installation candidate.
fn newest_available_kernel(series: &str) -> Result<String> {
    let search = || -> Result<Vec<(u64, String)>> {
        let out = run_cmd(
            Command::new("apt-cache").args([
                "search",
                "--names-only",
                &format!("^linux-image-{}", series.replace('.', "\\.")),
            ]),
            &format!("apt-cache search linux-image-{series}"),
        )?;
        Ok(kernel_candidates(&out, series))
    };
    let mut cands = search()?;
    if cands.is_empty() {
        eprintln!("vm: apt-cache knows no linux-image-{series}.* kernel; running apt-get update");
        apt_get_update()?;
        cands = search()?;
    }
    // Newest first; check the candidate is downloadable (apt-cache search also lists packages
    // only mentioned by others).
    for (_, release) in cands.iter().rev() {
        for pkg in [format!("linux-image-{release}"), format!("linux-image-{release}-unsigned")] {
            let out = run_cmd(
                Command::new("apt-cache").args(["policy", &pkg]),
                &format!("apt-cache policy {pkg}"),
            )?;
            if policy_has_candidate(&out) {
                return Ok(release.clone());
            }
        }
    }
    bail!("apt-cache offers no linux-image-{series}.*-amd64 kernel with a download candidate")
}

/// Parses `apt-cache search` output and returns the releases of plain amd64 kernels of
/// `series`, sorted oldest to newest, deduplicated (signed and -unsigned packages collapse).
fn kernel_candidates(apt_search: &str, series: &str) -> Vec<(u64, String)> {
    let mut found: BTreeMap<u64, String> = BTreeMap::new();
    for line in apt_search.lines() {
        let Some(pkg) = line.split_whitespace().next() else {
            continue;
        };
        let Some(release) = pkg.strip_prefix("linux-image-") else {
            continue;
        };
        let release = release.strip_suffix("-unsigned").unwrap_or(release);
        if let Some(key) = kernel_release_key(release, series) {
            found.insert(key, release.to_string());
        }
    }
    found.into_iter().collect()
}

/// Sort key of a Debian amd64 kernel release of `series`: `6.12.<N>+debXX-amd64` and
/// `6.1.0-<N>-amd64` give `N`. Other flavours (cloud, rt, dbg) and series give `None`.
fn kernel_release_key(release: &str, series: &str) -> Option<u64> {
    let rest = release.strip_prefix(series)?.strip_prefix('.')?;
    let rest = rest.strip_suffix("-amd64")?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some((n, deb)) = rest.split_once("+deb") {
        // 6.12.117+deb12-amd64
        if all_digits(n) && all_digits(deb) {
            return n.parse().ok();
        }
    } else if let Some(abi) = rest.strip_prefix("0-") {
        // 6.1.0-44-amd64
        if all_digits(abi) {
            return abi.parse().ok();
        }
    }
    None
}

/// True if `apt-cache policy` output shows an installation candidate.
fn policy_has_candidate(policy: &str) -> bool {
    policy.lines().any(|l| {
        l.trim().strip_prefix("Candidate:").is_some_and(|c| {
            let c = c.trim();
            !c.is_empty() && c != "(none)"
        })
    })
}

fn newest_cached_kernel(kernels_dir: &Path, series: &str) -> Option<String> {
    fs::read_dir(kernels_dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(".unpacked").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|name| kernel_release_key(&name, series).map(|k| (k, name)))
        .max()
        .map(|(_, name)| name)
}

fn download_and_unpack(cache_dir: &Path, release: &str, kdir: &Path) -> Result<()> {
    let debs = cache_dir.join("debs");
    fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    let deb = match find_deb(&debs, release)? {
        Some(deb) => {
            eprintln!("vm: reusing {}", deb.display());
            deb
        }
        None => {
            let mut errors = Vec::new();
            for pkg in [format!("linux-image-{release}"), format!("linux-image-{release}-unsigned")] {
                eprintln!("vm: apt-get download {pkg} (into {})", debs.display());
                let what = format!("apt-get download {pkg}");
                let mut cmd = Command::new("apt-get");
                cmd.args(["download", "-q", &pkg]).current_dir(&debs);
                match run_cmd(&mut cmd, &what) {
                    Ok(_) => {
                        errors.clear();
                        break;
                    }
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
            if !errors.is_empty() {
                bail!("{}", errors.join("; "));
            }
            find_deb(&debs, release)?.ok_or_else(|| {
                anyhow!("apt-get download linux-image-{release} left no .deb in {}", debs.display())
            })?
        }
    };
    let parent = kdir.parent().unwrap_or(cache_dir);
    let tmp = parent.join(format!("{release}.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    eprintln!("vm: dpkg-deb -x {} {}", deb.display(), kdir.display());
    let unpacked = run_cmd(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp),
        &format!("dpkg-deb -x {}", deb.display()),
    );
    if let Err(e) = unpacked {
        let _ = fs::remove_dir_all(&tmp);
        // Probably a truncated download: drop it so the next attempt downloads it again.
        let _ = fs::remove_file(&deb);
        return Err(e.context(format!(
            "unpacking kernel {release} failed; removed {} so the next run downloads it again",
            deb.display()
        )));
    }
    let _ = fs::remove_dir_all(kdir);
    fs::rename(&tmp, kdir).with_context(|| format!("renaming {} to {}", tmp.display(), kdir.display()))?;
    Ok(())
}

/// A downloaded `linux-image-<release>[-unsigned]_<version>_amd64.deb` in `debs`, if any.
fn find_deb(debs: &Path, release: &str) -> Result<Option<PathBuf>> {
    let signed = format!("linux-image-{release}_");
    let unsigned = format!("linux-image-{release}-unsigned_");
    let mut found = None;
    for entry in fs::read_dir(debs).with_context(|| format!("listing {}", debs.display()))? {
        let entry = entry.with_context(|| format!("listing {}", debs.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // apt-get download escapes ':' in versions as %3a; plain names are enough here.
        if (name.starts_with(&signed) || name.starts_with(&unsigned)) && name.ends_with(".deb") {
            found = Some(entry.path());
        }
    }
    Ok(found)
}

// ---------------------------------------------------------------------------------------------
// Modules and initramfs
// ---------------------------------------------------------------------------------------------

/// Module name as the kernel sees it: file stem without `.ko[.xz|.zst|.gz]`, `-` as `_`.
fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.find(".ko").map_or(base, |i| &base[..i]);
    stem.replace('-', "_")
}

/// What [`module_load_order`] needs to know about one loadable module.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ModuleInfo {
    /// Where the module file is (opaque to the ordering).
    path: String,
    /// Names of the modules it depends on (`depends=` of its `.modinfo`).
    deps: Vec<String>,
}

/// Returns the modules to load, in order, so that `wanted` and all their dependencies are
/// loaded; modules in `builtin` are skipped. `lookup` describes a loadable module by name
/// (`None`: no such module file).
fn module_load_order(
    wanted: &[&str],
    builtin: &HashSet<String>,
    lookup: &mut dyn FnMut(&str) -> Result<Option<ModuleInfo>>,
) -> Result<Vec<ModuleInfo>> {
    struct Walk<'a> {
        builtin: &'a HashSet<String>,
        lookup: &'a mut dyn FnMut(&str) -> Result<Option<ModuleInfo>>,
        stack: Vec<String>,
        done: HashSet<String>,
        order: Vec<ModuleInfo>,
    }
    impl Walk<'_> {
        fn visit(&mut self, name: &str) -> Result<()> {
            if self.done.contains(name) || self.builtin.contains(name) {
                return Ok(());
            }
            if self.stack.iter().any(|s| s == name) {
                bail!("module dependency cycle: {} -> {name}", self.stack.join(" -> "));
            }
            let Some(info) = (self.lookup)(name)? else {
                bail!("module {name} is neither a module file of this kernel nor in modules.builtin");
            };
            self.stack.push(name.to_string());
            for dep in &info.deps {
                self.visit(&module_name(dep))?;
            }
            self.stack.pop();
            self.done.insert(name.to_string());
            self.order.push(info);
            Ok(())
        }
    }
    let mut walk = Walk { builtin, lookup, stack: Vec::new(), done: HashSet::new(), order: Vec::new() };
    for w in wanted {
        walk.visit(&module_name(w))?;
    }
    Ok(walk.order)
}

/// Names of built-in modules from the text of `modules.builtin`.
fn parse_modules_builtin(text: &str) -> HashSet<String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).map(module_name).collect()
}

/// Contents of the ELF64 little-endian section called `name`, if present.
fn elf_section<'a>(elf: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let u16_at = |off: usize| elf.get(off..off.checked_add(2)?).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at =
        |off: usize| elf.get(off..off.checked_add(4)?).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let usize_at = |off: usize| {
        elf.get(off..off.checked_add(8)?)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .and_then(|b| usize::try_from(u64::from_le_bytes(b)).ok())
    };
    if elf.len() < 64 || elf[..4] != *b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return None;
    }
    let shoff = usize_at(0x28)?;
    let shentsize = usize::from(u16_at(0x3a)?);
    let shnum = usize::from(u16_at(0x3c)?);
    let shstrndx = usize::from(u16_at(0x3e)?);
    let header = |i: usize| shoff.checked_add(i.checked_mul(shentsize)?);
    let contents = |hdr: usize| -> Option<&'a [u8]> {
        let off = usize_at(hdr.checked_add(24)?)?;
        let size = usize_at(hdr.checked_add(32)?)?;
        elf.get(off..off.checked_add(size)?)
    };
    let strtab = contents(header(shstrndx)?)?;
    (0..shnum).find_map(|i| {
        let hdr = header(i)?;
        let name_off = usize::try_from(u32_at(hdr)?).ok()?;
        let rest = strtab.get(name_off..)?;
        let sec_name = &rest[..rest.iter().position(|&b| b == 0)?];
        if sec_name == name.as_bytes() { contents(hdr) } else { None }
    })
}

/// The `depends=` list of a module's `.modinfo` section (NUL-separated `key=value` strings).
fn modinfo_depends(modinfo: &[u8]) -> Vec<String> {
    modinfo
        .split(|&b| b == 0)
        .filter_map(|field| field.strip_prefix(b"depends="))
        .flat_map(|v| {
            String::from_utf8_lossy(v).split(',').map(str::trim).map(str::to_string).collect::<Vec<_>>()
        })
        .filter(|d| !d.is_empty())
        .collect()
}

/// Map from module name to the module file (relative to `modules_dir`), from walking `kernel/`.
fn index_module_files(modules_dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut index = BTreeMap::new();
    for path in walk(&modules_dir.join("kernel"))? {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if [".ko", ".ko.xz", ".ko.zst", ".ko.gz"].iter().any(|s| name.ends_with(s)) {
            let rel = path.strip_prefix(modules_dir).unwrap_or(&path);
            index.insert(module_name(&name), rel.to_string_lossy().into_owned());
        }
    }
    Ok(index)
}

/// The guest's /init. `@MODULES@` is replaced by the module file names in load order.
const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
# pidvirt-vm guest init (generated by xtask/src/vm.rs)
/bin/busybox mkdir -p /proc /sys /dev /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
fatal() {
    echo "pidvirt-vm: FATAL: $*"
    poweroff -f
    sleep 1000
}
hostname @HOSTNAME@
echo "pidvirt-vm: kernel release $(uname -r)"
for m in @MODULES@; do
    insmod "/lib/modules/$m" || fatal "insmod $m failed"
done
O9P=trans=virtio,version=9p2000.L,msize=512000
mkdir -p /host /share /newroot
mount -t 9p -o "ro,cache=loose,$O9P" hostroot /host || fatal "mounting the host root (9p hostroot) failed"
mount -t 9p -o "$O9P" vmrun /share || fatal "mounting the run directory (9p vmrun) failed"
NONCE=$(cat /share/nonce) || fatal "reading the run nonce failed"
mount -t tmpfs -o mode=0755 newroot /newroot || fatal "mounting the tmpfs root failed"
R=/newroot
for e in /host/* /host/.[!.]* /host/..?*; do
    n=${e#/host/}
    case "$n" in
        proc|sys|dev|run|tmp|vm-results) continue ;;
    esac
    if [ -L "$e" ]; then
        ln -s "$(readlink "$e")" "$R/$n" || fatal "symlink /$n failed"
    elif [ -d "$e" ]; then
        mkdir "$R/$n" && mount -o bind "$e" "$R/$n" || fatal "bind mount of /$n failed"
    elif [ -e "$e" ]; then
        touch "$R/$n" && mount -o bind "$e" "$R/$n" || fatal "bind mount of /$n failed"
    fi
done
mkdir -p $R/proc $R/sys $R/dev $R/run $R/tmp $R/vm-results
mount -t proc proc $R/proc || fatal "mounting proc failed"
mount -t sysfs sysfs $R/sys || fatal "mounting sysfs failed"
mount -t devtmpfs devtmpfs $R/dev || fatal "mounting devtmpfs failed"
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts || fatal "mounting devpts failed"
mount -t tmpfs -o mode=1777 shm $R/dev/shm || fatal "mounting /dev/shm failed"
mount -t securityfs securityfs $R/sys/kernel/security || fatal "mounting securityfs failed"
mount -t bpf bpf $R/sys/fs/bpf || fatal "mounting bpffs failed"
mount -t tracefs tracefs $R/sys/kernel/tracing || fatal "mounting tracefs failed"
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup || fatal "mounting cgroup2 failed"
if [ -d $R/sys/kernel/debug ]; then
    mount -t debugfs debugfs $R/sys/kernel/debug || fatal "mounting debugfs failed"
fi
mount -t tmpfs -o mode=0755 run $R/run || fatal "mounting /run failed"
mount -t tmpfs -o mode=1777 tmp $R/tmp || fatal "mounting /tmp failed"
if [ -d $R/var/tmp ]; then
    mount -t tmpfs -o mode=1777 vartmp $R/var/tmp || fatal "mounting /var/tmp failed"
fi
while read -r p; do
    [ -n "$p" ] || continue
    mkdir -p "$R$p" && mount -o bind "/host$p" "$R$p" || fatal "showing the host's $p in the guest failed"
done < /share/expose
mount -o bind /share/results $R/vm-results || fatal "mounting /vm-results failed"
mkdir -p $R/run/pidvirt-vm
cp /bin/busybox /share/cmd.sh $R/run/pidvirt-vm/ || fatal "copying the command script failed"
mount -o remount,ro $R || fatal "remounting the root read-only failed"
echo "pidvirt-vm:$NONCE:start"
chroot $R /run/pidvirt-vm/busybox env -i /run/pidvirt-vm/busybox sh /run/pidvirt-vm/cmd.sh </dev/null
RC=$?
# The status file is what the host reads; the marker is for humans (and a fallback: kernel
# messages may be interleaved with it on the serial console).
echo "$RC" > /share/exit-status
sync
echo "pidvirt-vm:$NONCE:exit=$RC"
umount $R/vm-results
umount /share
poweroff -f
sleep 1000
"#;

fn init_script(modules: &[String]) -> String {
    INIT_SCRIPT.replace("@HOSTNAME@", GUEST_HOSTNAME).replace("@MODULES@", &modules.join(" "))
}

/// Bump when the initramfs layout changes in a way the init script text does not show.
const INITRAMFS_FORMAT: u32 = 2;

/// Builds `<kdir>/initramfs.cpio` unless an up-to-date one exists; returns its path.
fn build_initramfs(kdir: &Path, release: &str, modules_dir: &Path) -> Result<PathBuf> {
    let busybox = busybox_path()?;
    let bb_meta = fs::metadata(&busybox).with_context(|| format!("stat {}", busybox.display()))?;
    let bb_mtime = bb_meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok());
    let stamp_text = format!(
        "format={INITRAMFS_FORMAT} init={:016x} modules={} busybox={}:{}\n",
        fnv1a(INIT_SCRIPT.as_bytes()),
        INITRAMFS_MODULES.join(","),
        bb_meta.len(),
        bb_mtime.map_or(0, |d| d.as_secs()),
    );
    let cpio = kdir.join("initramfs.cpio");
    let stamp = kdir.join("initramfs.stamp");
    if cpio.is_file() && fs::read_to_string(&stamp).is_ok_and(|s| s == stamp_text) {
        eprintln!("vm: initramfs for {release} is up to date ({})", cpio.display());
        return Ok(cpio);
    }

    let staging = kdir.join(format!("initramfs.staging-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    let result = (|| -> Result<()> {
        for d in ["bin", "dev", "proc", "sys", "lib/modules", "host", "share", "newroot"] {
            fs::create_dir_all(staging.join(d))
                .with_context(|| format!("creating {}", staging.join(d).display()))?;
        }
        fs::copy(&busybox, staging.join("bin/busybox"))
            .with_context(|| format!("copying {}", busybox.display()))?;

        // Modules: decompress each needed module into the staging tree and read its
        // dependencies from its own .modinfo (Debian packages ship no modules.dep).
        let builtin_path = modules_dir.join("modules.builtin");
        let builtin = parse_modules_builtin(&fs::read_to_string(&builtin_path).unwrap_or_default());
        let index = index_module_files(modules_dir)?;
        let mut lookup = |name: &str| -> Result<Option<ModuleInfo>> {
            let Some(rel) = index.get(name) else {
                return Ok(None);
            };
            let file = format!("{name}.ko");
            let dst = staging.join("lib/modules").join(&file);
            decompress_module(&modules_dir.join(rel), &dst)?;
            let bytes = fs::read(&dst).with_context(|| format!("reading {}", dst.display()))?;
            let modinfo = elf_section(&bytes, ".modinfo")
                .ok_or_else(|| anyhow!("{rel} has no .modinfo section (not a kernel module?)"))?;
            Ok(Some(ModuleInfo { path: file, deps: modinfo_depends(modinfo) }))
        };
        let order = module_load_order(INITRAMFS_MODULES, &builtin, &mut lookup)
            .with_context(|| format!("resolving the 9p/virtio modules of kernel {release}"))?;
        let files: Vec<String> = order.into_iter().map(|m| m.path).collect();
        eprintln!("vm: building initramfs for {release} (modules: {})", files.join(" "));

        let init_path = staging.join("init");
        fs::write(&init_path, init_script(&files))
            .with_context(|| format!("writing {}", init_path.display()))?;
        set_mode(&init_path, 0o755)?;
        let mut list = String::new();
        for entry in walk(&staging)? {
            let rel = entry.strip_prefix(&staging).unwrap_or(&entry);
            let _ = writeln!(list, "{}", rel.display());
        }
        let tmp_cpio = kdir.join(format!("initramfs.cpio.tmp-{}", std::process::id()));
        let out = fs::File::create(&tmp_cpio).with_context(|| format!("creating {}", tmp_cpio.display()))?;
        let mut child = Command::new("cpio")
            .args(["--quiet", "-o", "-H", "newc", "-R", "0:0"])
            .current_dir(&staging)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(Stdio::piped())
            .spawn()
            .context("running cpio to build the initramfs (is cpio installed? see ensure_tools)")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(list.as_bytes()).context("feeding the file list to cpio")?;
        }
        let res = child.wait_with_output().context("waiting for cpio")?;
        if !res.status.success() {
            let _ = fs::remove_file(&tmp_cpio);
            bail!("cpio failed ({}): {}", res.status, String::from_utf8_lossy(&res.stderr).trim());
        }
        fs::rename(&tmp_cpio, &cpio)
            .with_context(|| format!("renaming {} to {}", tmp_cpio.display(), cpio.display()))?;
        fs::write(&stamp, &stamp_text).with_context(|| format!("writing {}", stamp.display()))?;
        Ok(())
    })();
    let _ = fs::remove_dir_all(&staging);
    result.with_context(|| format!("building the initramfs for kernel {release}"))?;
    Ok(cpio)
}

fn decompress_module(src: &Path, dst: &Path) -> Result<()> {
    let name = src.to_string_lossy();
    let tool = if name.ends_with(".ko.xz") {
        Some("xz")
    } else if name.ends_with(".ko.zst") {
        Some("zstd")
    } else if name.ends_with(".ko.gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => {
            fs::copy(src, dst).with_context(|| format!("copying {}", src.display()))?;
        }
        Some(tool) => {
            let out = fs::File::create(dst).with_context(|| format!("creating {}", dst.display()))?;
            let res = Command::new(tool)
                .arg("-dc")
                .arg(src)
                .stdout(out)
                .stderr(Stdio::piped())
                .output()
                .with_context(|| format!("running {tool} -dc {}", src.display()))?;
            if !res.status.success() {
                bail!(
                    "{tool} -dc {} failed ({}): {}",
                    src.display(),
                    res.status,
                    String::from_utf8_lossy(&res.stderr).trim()
                );
            }
        }
    }
    Ok(())
}

/// All files and directories under `root` (excluding `root`), parents before children.
fn walk(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("listing {}", dir.display()))?;
        entries.sort();
        for p in entries {
            if p.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                pending.push(p.clone());
            }
            out.push(p);
        }
    }
    Ok(out)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

// ---------------------------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------------------------

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
    let script = command_script(argv, opts)?;
    let mut expose = check_guest_visible(&opts.cwd, "working directory")?;
    if let Some(prog) = argv.first().filter(|a| a.starts_with('/')) {
        expose.extend(check_guest_visible(Path::new(prog), "program")?);
    }
    expose.sort();
    expose.dedup();
    if opts.extra_cmdline.contains(['\n', '\r', '\0']) {
        bail!("extra_cmdline contains a line break or NUL: {:?}", opts.extra_cmdline);
    }
    for (what, p) in [("kernel image", &kernel.vmlinuz), ("initramfs", &kernel.initramfs)] {
        if !p.is_file() {
            bail!("{what} {} of kernel {} not found (run prepare_kernel)", p.display(), kernel.name);
        }
    }

    let cache_dir = absolute(cache_dir)?;
    let run_dir = new_run_dir(&cache_dir)?;
    // The run directory is shared writable with the guest (tag vmrun): the host puts the
    // command script and nonce there, the guest bind-mounts `results/` at /vm-results and
    // writes `exit-status`.
    let results_dir = run_dir.join("results");
    fs::create_dir_all(&results_dir).with_context(|| format!("creating {}", results_dir.display()))?;
    let (nonce_file, script_file, status_file) =
        (run_dir.join("nonce"), run_dir.join("cmd.sh"), run_dir.join("exit-status"));
    fs::write(&script_file, &script).context("writing the command script")?;
    // Host directories under the guest's tmpfs mounts to bind there again, a line each.
    let expose: String = expose.iter().filter_map(|p| p.to_str()).map(|p| format!("{p}\n")).collect();
    fs::write(run_dir.join("expose"), expose).context("writing the list of directories to expose")?;

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
        .args(["-virtfs", &virtfs_arg(&run_dir, "vmrun", false)?]);

    let start = Instant::now();
    let deadline = start + opts.timeout;
    let mut console = String::new();
    let mut boot_attempts = 0;
    let (nonce, timed_out) = loop {
        boot_attempts += 1;
        let nonce = new_nonce();
        fs::write(&nonce_file, &nonce).context("writing the run nonce")?;
        let _ = fs::remove_file(&status_file);
        let (log, timed_out) = run_qemu(&mut cmd, deadline, opts.timeout, on_line)?;
        console.push_str(&log);
        let started = log.contains(&format!("{MARKER_PREFIX}{nonce}:start"));
        if started || timed_out || parse_setup_error(&log).is_some() || boot_attempts >= BOOT_ATTEMPTS {
            break (nonce, timed_out);
        }
        let note = "pidvirt-vm: host: the guest died before starting the command; booting again";
        on_line(note);
        console.push_str(note);
        console.push('\n');
    };
    let elapsed = start.elapsed();
    let status_text = fs::read_to_string(&status_file).ok();
    for f in [&nonce_file, &script_file, &status_file] {
        let _ = fs::remove_file(f);
    }
    let exit_code =
        status_text.and_then(|s| s.trim().parse().ok()).or_else(|| parse_exit_marker(&console, &nonce));
    Ok(VmRun {
        exit_code,
        output: command_output(&console, &nonce),
        setup_error: parse_setup_error(&console),
        console,
        results_dir,
        elapsed,
        timed_out,
        boot_attempts,
    })
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
                        if tx.send(clean_line(&line)).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        if !pending.is_empty() {
            let _ = tx.send(clean_line(&pending));
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

/// A console line as text: lossy UTF-8, without `\r`, `\n` and terminal escape sequences
/// (SeaBIOS clears the screen).
fn clean_line(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' | '\n' => {}
            '\x1b' => {
                // CSI: ESC [ parameters... final byte in '@'..='~'; otherwise ESC + one char.
                if chars.next_if_eq(&'[').is_some() {
                    while chars.next().is_some_and(|c| !('@'..='~').contains(&c)) {}
                } else {
                    chars.next();
                }
            }
            c => out.push(c),
        }
    }
    out
}

static RUN_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Creates and returns a fresh `cache_dir/runs/<id>`.
fn new_run_dir(cache_dir: &Path) -> Result<PathBuf> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
    let id = format!("{}-{}-{n}", now.as_secs(), std::process::id());
    let dir = cache_dir.join("runs").join(id);
    fs::create_dir_all(&dir).with_context(|| format!("creating run directory {}", dir.display()))?;
    Ok(dir)
}

/// A fresh value that makes this boot's console markers unique.
fn new_nonce() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
    let seed = format!("{}:{}:{n}", now.as_nanos(), std::process::id());
    format!("{:016x}", fnv1a(seed.as_bytes()))
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

/// Directories the guest masks with its own tmpfs but can show the host's entries of again
/// (bind mounts of the read-only host root inside that tmpfs).
const REEXPOSABLE_DIRS: &[&str] = &["/tmp", "/run", "/var/tmp"];

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
fn command_script(argv: &[String], opts: &VmRunOptions) -> Result<String> {
    if argv.is_empty() {
        bail!("empty command line for the VM");
    }
    if let Some(a) = argv.iter().find(|a| a.contains('\0')) {
        bail!("command argument {a:?} contains NUL");
    }
    let cwd = opts.cwd.to_str().ok_or_else(|| anyhow!("cwd {} is not UTF-8", opts.cwd.display()))?;
    let mut s = String::from("# generated by pidvirt xtask (vm.rs)\n");
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

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Exit code from the last `pidvirt-vm:<nonce>:exit=<N>` marker in `console`.
fn parse_exit_marker(console: &str, nonce: &str) -> Option<i32> {
    let marker = format!("{MARKER_PREFIX}{nonce}:exit=");
    console.lines().rev().find_map(|line| {
        let rest = &line[line.find(&marker)? + marker.len()..];
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        digits.parse().ok()
    })
}

/// Lines between the start and exit markers.
fn command_output(console: &str, nonce: &str) -> String {
    let start = format!("{MARKER_PREFIX}{nonce}:start");
    let exit = format!("{MARKER_PREFIX}{nonce}:exit=");
    let mut out = String::new();
    let mut inside = false;
    for line in console.lines() {
        if line.contains(&start) {
            inside = true;
        } else if let Some(i) = line.find(&exit) {
            // Output without a final newline shares the marker's line.
            if inside && i > 0 {
                out.push_str(&line[..i]);
                out.push('\n');
            }
            break;
        } else if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn parse_setup_error(console: &str) -> Option<String> {
    console.lines().find_map(|l| l.find(FATAL_PREFIX).map(|i| l[i + FATAL_PREFIX.len()..].to_string()))
}

/// Kernel release the guest reported on its console (`uname -r` in the guest's init), falling
/// back to the kernel's `Linux version` banner.
pub fn guest_kernel_release(console: &str) -> Option<String> {
    let word = |rest: &str| rest.split_whitespace().next().map(str::to_string);
    console
        .lines()
        .find_map(|l| l.find(RELEASE_PREFIX).and_then(|i| word(&l[i + RELEASE_PREFIX.len()..])))
        .or_else(|| console.lines().find_map(|l| l.find("Linux version ").and_then(|i| word(&l[i + 14..]))))
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving path {}", p.display()))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_newest_kernel_of_series() {
        let search = "\
linux-image-6.1.0-47-amd64-unsigned - Linux 6.1 for 64-bit PCs
linux-image-6.1.0-56-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-9-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.1.0-50-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.1.0-50-amd64-dbg - Debug symbols for linux-image-6.1.0-50-amd64
linux-image-6.1.0-50-rt-amd64 - Linux 6.1 for 64-bit PCs, PREEMPT_RT (signed)
linux-image-6.12.117+deb12-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-6.12.99+deb12-amd64 - Linux 6.12 for 64-bit PCs (signed)
linux-image-6.12.117+deb12-amd64-unsigned - Linux 6.12 for 64-bit PCs
linux-image-6.12.113+deb12-amd64 - Linux 6.12 for 64-bit PCs (signed)
linux-image-6.12-amd64-dbg - Debugging symbols for Linux amd64 configuration (meta-package)
linux-image-6.12.10-amd64 - bogus
linux-image-amd64 - Linux for 64-bit PCs (meta-package)
";
        let six_one: Vec<_> = kernel_candidates(search, "6.1").into_iter().map(|c| c.1).collect();
        assert_eq!(six_one, ["6.1.0-9-amd64", "6.1.0-47-amd64", "6.1.0-50-amd64"]);
        let six_twelve: Vec<_> = kernel_candidates(search, "6.12").into_iter().map(|c| c.1).collect();
        assert_eq!(six_twelve, ["6.12.99+deb12-amd64", "6.12.113+deb12-amd64", "6.12.117+deb12-amd64"]);
        assert!(kernel_candidates(search, "6.6").is_empty());
        assert_eq!(kernel_release_key("6.12.117+deb12-amd64", "6.1"), None);
    }

    #[test]
    fn apt_policy_candidate() {
        let none = "linux-image-x:\n  Installed: (none)\n  Candidate: (none)\n  Version table:\n";
        let some = "linux-image-x:\n  Installed: (none)\n  Candidate: 6.1.192-2\n  Version table:\n";
        assert!(!policy_has_candidate(none));
        assert!(policy_has_candidate(some));
        assert!(!policy_has_candidate(""));
    }

    /// A `lookup` for [`module_load_order`] from `name: dep,dep` lines.
    fn fake_modules(spec: &str) -> BTreeMap<String, ModuleInfo> {
        spec.lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(name, deps)| {
                let deps = deps.split(',').map(str::trim).filter(|d| !d.is_empty());
                let info = ModuleInfo {
                    path: format!("{}.ko", name.trim()),
                    deps: deps.map(str::to_string).collect(),
                };
                (name.trim().to_string(), info)
            })
            .collect()
    }

    fn order_of(spec: &str, builtin: &str) -> Result<Vec<String>> {
        let mods = fake_modules(spec);
        let builtin = parse_modules_builtin(builtin);
        let mut lookup = |n: &str| Ok(mods.get(n).cloned());
        let order = module_load_order(INITRAMFS_MODULES, &builtin, &mut lookup)?;
        Ok(order.into_iter().map(|m| module_name(&m.path)).collect())
    }

    #[test]
    fn module_order_6_1_style() {
        // Dependencies as in Debian's 6.1 kernel: virtio is modular, 9p needs fscache.
        let spec = "\
9p: netfs,9pnet,fscache
9pnet:
9pnet_virtio: virtio_ring,9pnet,virtio
netfs: fscache
fscache:
virtio:
virtio_ring: virtio
virtio_pci: virtio_pci_modern_dev,virtio_pci_legacy_dev,virtio_ring,virtio
virtio_pci_modern_dev:
virtio_pci_legacy_dev:
unrelated: 9p
";
        let names = order_of(spec, "").unwrap();
        let pos = |n: &str| names.iter().position(|x| x == n).unwrap();
        assert_eq!(names.len(), 10, "{names:?}");
        for (before, after) in [
            ("virtio", "virtio_ring"),
            ("virtio_ring", "virtio_pci"),
            ("virtio_pci_modern_dev", "virtio_pci"),
            ("virtio_pci_legacy_dev", "virtio_pci"),
            ("9pnet", "9pnet_virtio"),
            ("virtio_pci", "9pnet_virtio"),
            ("fscache", "netfs"),
            ("netfs", "9p"),
            ("9pnet", "9p"),
        ] {
            assert!(pos(before) < pos(after), "{before} must precede {after}: {names:?}");
        }
    }

    #[test]
    fn module_order_6_12_style_skips_builtin() {
        let spec = "9p: netfs,9pnet\n9pnet:\n9pnet_virtio: 9pnet\nnetfs:\n";
        let builtin = "kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_pci.ko\n";
        assert_eq!(order_of(spec, builtin).unwrap(), ["9pnet", "9pnet_virtio", "netfs", "9p"]);
        let err = order_of(spec, "").unwrap_err();
        assert!(err.to_string().contains("virtio_pci"), "{err}");
    }

    #[test]
    fn module_dependency_cycle_is_an_error() {
        let mods = fake_modules("a: b\nb: a\n");
        let mut lookup = |n: &str| Ok(mods.get(n).cloned());
        assert!(module_load_order(&["a"], &HashSet::new(), &mut lookup).is_err());
    }

    #[test]
    fn modinfo_from_elf_section() {
        // A minimal ELF64 with sections: [null, .shstrtab, .modinfo].
        let shstrtab = b"\0.shstrtab\0.modinfo\0";
        let modinfo = b"license=GPL\0depends=netfs,9pnet\0retpoline=Y\0name=9p\0";
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let strtab_off = elf.len();
        elf.extend_from_slice(shstrtab);
        let modinfo_off = elf.len();
        elf.extend_from_slice(modinfo);
        let shoff = elf.len();
        let mut section = |name: u32, off: usize, size: usize| {
            let mut h = vec![0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&h);
        };
        section(0, 0, 0);
        section(1, strtab_off, shstrtab.len());
        section(11, modinfo_off, modinfo.len());
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());

        let sec = elf_section(&elf, ".modinfo").unwrap();
        assert_eq!(sec, modinfo);
        assert_eq!(modinfo_depends(sec), ["netfs", "9pnet"]);
        assert!(elf_section(&elf, ".text").is_none());
        assert!(elf_section(&elf[..100], ".modinfo").is_none());
        assert!(elf_section(b"not an elf", ".modinfo").is_none());
        assert!(modinfo_depends(b"depends=\0name=x\0").is_empty());
    }

    #[test]
    fn module_names() {
        assert_eq!(module_name("kernel/net/9p/9pnet_virtio.ko.xz"), "9pnet_virtio");
        assert_eq!(module_name("kernel/drivers/foo/foo-bar.ko"), "foo_bar");
        assert_eq!(module_name("9p"), "9p");
    }

    #[test]
    fn exit_marker() {
        let nonce = "00ff";
        let console = "\
boot noise
pidvirt-vm:00ff:start
pidvirt-vm:00ff:exit=99 (fake, printed by the command)
pidvirt-vm:beef:exit=3
hello
[    2.5] some kernel line
pidvirt-vm:00ff:exit=7
[    2.6] reboot: Power down
";
        assert_eq!(parse_exit_marker(console, nonce), Some(7));
        assert_eq!(parse_exit_marker(console, "beef"), Some(3));
        assert_eq!(parse_exit_marker(console, "1234"), None);
        assert_eq!(parse_exit_marker("pidvirt-vm:00ff:exit=", nonce), None);
        assert_eq!(parse_exit_marker("", nonce), None);
        let out = command_output(console, nonce);
        assert_eq!(out, "");
        let console2 = "x\npidvirt-vm:ab:start\nline 1\nline 2\npidvirt-vm:ab:exit=0\n";
        assert_eq!(command_output(console2, "ab"), "line 1\nline 2\n");
        let no_newline = "x\npidvirt-vm:ab:start\nline 1\nbpf,lsmpidvirt-vm:ab:exit=0\n";
        assert_eq!(command_output(no_newline, "ab"), "line 1\nbpf,lsm\n");
        assert_eq!(parse_exit_marker(no_newline, "ab"), Some(0));
    }

    #[test]
    fn console_lines_are_cleaned() {
        let raw = b"\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16)\r\n";
        assert_eq!(clean_line(raw), "SeaBIOS (version 1.16)");
        assert_eq!(clean_line(b"a\xffb\r\n"), "a\u{fffd}b");
        assert_eq!(clean_line(b"cut \x1b["), "cut ");
    }

    #[test]
    fn kernel_release_from_console() {
        let c = "[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@...) #1 SMP\n\
                 pidvirt-vm: kernel release 6.1.0-56-amd64\n";
        assert_eq!(guest_kernel_release(c).as_deref(), Some("6.1.0-56-amd64"));
        let banner_only = "[    0.000000] Linux version 6.12.117+deb12-amd64 (x) #1\n";
        assert_eq!(guest_kernel_release(banner_only).as_deref(), Some("6.12.117+deb12-amd64"));
        assert_eq!(guest_kernel_release("nothing"), None);
    }

    #[test]
    fn setup_error_is_reported() {
        let c = "a\npidvirt-vm: FATAL: insmod 9p.ko failed\n";
        assert_eq!(parse_setup_error(c).as_deref(), Some("insmod 9p.ko failed"));
        assert_eq!(parse_setup_error("ok"), None);
    }

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

    #[test]
    fn static_elf_detection() {
        let mut elf = vec![0u8; 64 + 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        elf[64..68].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        assert!(elf_is_static(&elf));
        elf[64..68].copy_from_slice(&3u32.to_le_bytes()); // PT_INTERP
        assert!(!elf_is_static(&elf));
        assert!(!elf_is_static(b"#!/bin/sh\n"));
        elf.truncate(80); // program header cut off
        assert!(!elf_is_static(&elf));
    }
}
