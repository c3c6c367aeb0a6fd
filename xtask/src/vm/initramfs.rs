//! The initramfs: a static busybox, the kernel's own 9p/virtio modules (decompressed, in
//! dependency order, read from each module's `.modinfo`) and the guest's init (`init.sh`), packed
//! with cpio into `<kernel dir>/initramfs.cpio`, rebuilt only when one of them changed.

use std::{
    collections::{BTreeMap, HashSet},
    fmt::Write as _,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::UNIX_EPOCH,
};

use anyhow::{Context, Result, anyhow, bail};

use super::{GUEST_HOSTNAME, fnv1a};

/// Modules the initramfs loads: the host's root and the run directory over 9p, and overlayfs,
/// which the container engines' image stores mount. Their dependencies are added from each
/// module's `.modinfo` (`depends=`; Debian's packages ship no `modules.dep`, depmod makes it at
/// install time), and modules built into the kernel (`modules.builtin`) are skipped.
const INITRAMFS_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// The guest's /init. `@HOSTNAME@` is replaced by the guest's host name, `@MODULES@` by the
/// module file names in load order.
const INIT_SCRIPT: &str = include_str!("init.sh");

/// The static busybox binary (from busybox-static).
pub fn busybox_path() -> Result<PathBuf> {
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
    let Some(elf) = Elf64::new(bytes) else {
        return false;
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (elf.usize(0x20), elf.u16(0x36), elf.u16(0x38)) else {
        return false;
    };
    (0..usize::from(phnum)).all(|i| {
        let off = phoff.saturating_add(i.saturating_mul(usize::from(phentsize)));
        // PT_INTERP == 3; a truncated header counts as "not static".
        elf.u32(off).is_some_and(|p_type| p_type != 3)
    })
}

/// A 64-bit little-endian ELF file, read with bounds checks: what lies outside it reads as `None`.
#[derive(Clone, Copy)]
struct Elf64<'a>(&'a [u8]);

impl<'a> Elf64<'a> {
    /// `None` unless `bytes` starts with the ELF magic, ELFCLASS64, ELFDATA2LSB.
    fn new(bytes: &'a [u8]) -> Option<Self> {
        (bytes.len() >= 64 && bytes[..4] == *b"\x7fELF" && bytes[4] == 2 && bytes[5] == 1)
            .then_some(Self(bytes))
    }
    fn array<const N: usize>(self, off: usize) -> Option<[u8; N]> {
        self.0.get(off..off.checked_add(N)?)?.try_into().ok()
    }
    fn u16(self, off: usize) -> Option<u16> {
        self.array(off).map(u16::from_le_bytes)
    }
    fn u32(self, off: usize) -> Option<u32> {
        self.array(off).map(u32::from_le_bytes)
    }
    /// A 64-bit offset or size.
    fn usize(self, off: usize) -> Option<usize> {
        usize::try_from(u64::from_le_bytes(self.array(off)?)).ok()
    }
    fn slice(self, off: usize, len: usize) -> Option<&'a [u8]> {
        self.0.get(off..off.checked_add(len)?)
    }
}

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
    let elf = Elf64::new(elf)?;
    let shoff = elf.usize(0x28)?;
    let shentsize = usize::from(elf.u16(0x3a)?);
    let shnum = usize::from(elf.u16(0x3c)?);
    let shstrndx = usize::from(elf.u16(0x3e)?);
    let header = |i: usize| shoff.checked_add(i.checked_mul(shentsize)?);
    let contents = |hdr: usize| elf.slice(elf.usize(hdr.checked_add(24)?)?, elf.usize(hdr.checked_add(32)?)?);
    let strtab = contents(header(shstrndx)?)?;
    (0..shnum).find_map(|i| {
        let hdr = header(i)?;
        let name_off = usize::try_from(elf.u32(hdr)?).ok()?;
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

fn init_script(modules: &[String]) -> String {
    INIT_SCRIPT.replace("@HOSTNAME@", GUEST_HOSTNAME).replace("@MODULES@", &modules.join(" "))
}

/// Bump when the initramfs layout changes in a way the init script text does not show.
const INITRAMFS_FORMAT: u32 = 2;

/// Builds `<kdir>/initramfs.cpio` unless an up-to-date one exists; returns its path.
pub fn build(kdir: &Path, release: &str, modules_dir: &Path) -> Result<PathBuf> {
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
    let result =
        stage(&staging, &busybox, release, modules_dir).and_then(|()| pack(&staging, kdir, &cpio)).and_then(
            |()| fs::write(&stamp, &stamp_text).with_context(|| format!("writing {}", stamp.display())),
        );
    let _ = fs::remove_dir_all(&staging);
    result.with_context(|| format!("building the initramfs for kernel {release}"))?;
    Ok(cpio)
}

/// Fills `staging` with the initramfs' tree: busybox, the modules, the init.
fn stage(staging: &Path, busybox: &Path, release: &str, modules_dir: &Path) -> Result<()> {
    for d in ["bin", "dev", "proc", "sys", "lib/modules", "host", "share", "newroot"] {
        fs::create_dir_all(staging.join(d))
            .with_context(|| format!("creating {}", staging.join(d).display()))?;
    }
    fs::copy(busybox, staging.join("bin/busybox"))
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
    fs::write(&init_path, init_script(&files)).with_context(|| format!("writing {}", init_path.display()))?;
    set_mode(&init_path, 0o755)
}

/// Packs `staging` into `cpio` (newc, every file owned by root), through a temporary file in
/// `kdir` so that an interrupted build leaves no truncated initramfs.
fn pack(staging: &Path, kdir: &Path, cpio: &Path) -> Result<()> {
    let mut list = String::new();
    for entry in walk(staging)? {
        let rel = entry.strip_prefix(staging).unwrap_or(&entry);
        let _ = writeln!(list, "{}", rel.display());
    }
    let tmp_cpio = kdir.join(format!("initramfs.cpio.tmp-{}", std::process::id()));
    let out = fs::File::create(&tmp_cpio).with_context(|| format!("creating {}", tmp_cpio.display()))?;
    let mut child = Command::new("cpio")
        .args(["--quiet", "-o", "-H", "newc", "-R", "0:0"])
        .current_dir(staging)
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
    fs::rename(&tmp_cpio, cpio)
        .with_context(|| format!("renaming {} to {}", tmp_cpio.display(), cpio.display()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::console::{FATAL_PREFIX, MARKER_PREFIX, RELEASE_PREFIX};

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
overlay:
unrelated: 9p
";
        let names = order_of(spec, "").unwrap();
        let pos = |n: &str| names.iter().position(|x| x == n).unwrap();
        assert_eq!(names.len(), 11, "{names:?}");
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
        let spec = "9p: netfs,9pnet\n9pnet:\n9pnet_virtio: 9pnet\nnetfs:\noverlay:\n";
        let builtin = "kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_pci.ko\n";
        assert_eq!(order_of(spec, builtin).unwrap(), ["9pnet", "9pnet_virtio", "netfs", "9p", "overlay"]);
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

    #[test]
    fn the_init_script_gets_its_placeholders_and_prints_the_console_markers() {
        let init = init_script(&["netfs.ko".into(), "9p.ko".into()]);
        assert!(!init.contains('@'), "a placeholder is left: {init}");
        assert!(init.contains("hostname pidvirt-vm\n") && init.contains("for m in netfs.ko 9p.ko; do\n"));
        // What the console parser looks for.
        for marker in [
            format!("echo \"{MARKER_PREFIX}$NONCE:start\""),
            format!("echo \"{MARKER_PREFIX}$NONCE:exit=$RC\""),
            format!("echo \"{FATAL_PREFIX}$*\""),
            format!("echo \"{RELEASE_PREFIX}$(uname -r)\""),
        ] {
            assert!(init.contains(&marker), "{marker}");
        }
    }
}
