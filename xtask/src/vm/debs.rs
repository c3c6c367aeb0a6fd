//! Debian packages: the host tools the VM runner needs, and the kernel packages it boots
//! (found with apt-cache, fetched with apt-get download, unpacked with dpkg-deb into the cache).

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, anyhow, bail};

use super::run_cmd;

/// Installs the Debian `packages` that are missing (apt-get update first if the install fails).
pub fn install_host_packages(packages: &[&str]) -> Result<()> {
    let mut missing = Vec::new();
    for pkg in packages {
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

/// The newest Debian amd64 kernel of `series` ("6.12", "6.1"), unpacked into
/// `cache_dir/kernels/<release>` unless it already is (or, offline, the newest one cached).
/// Answers its release and directory.
pub fn unpacked_kernel(cache_dir: &Path, series: &str) -> Result<(String, PathBuf)> {
    if series.is_empty() || !series.chars().all(|c| c.is_ascii_digit() || c == '.') {
        bail!("invalid kernel series {series:?} (expected e.g. \"6.12\" or \"6.1\")");
    }
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
        download_and_unpack(cache_dir, &release, &kdir)?;
        fs::write(&stamp, b"").with_context(|| format!("writing {}", stamp.display()))?;
    }
    Ok((release, kdir))
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
        .filter_map(Result::ok)
        .filter(|e| e.path().join(".unpacked").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|name| kernel_release_key(&name, series).map(|k| (k, name)))
        .max()
        .map(|(_, name)| name)
}

fn download_and_unpack(cache_dir: &Path, release: &str, kdir: &Path) -> Result<()> {
    let debs = cache_dir.join("debs");
    fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    let deb = if let Some(deb) = find_deb(&debs, release)? {
        eprintln!("vm: reusing {}", deb.display());
        deb
    } else {
        download_deb(&debs, release)?
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

/// apt-get download of the kernel package of `release` (signed, else unsigned) into `debs`.
fn download_deb(debs: &Path, release: &str) -> Result<PathBuf> {
    let mut errors = Vec::new();
    for pkg in [format!("linux-image-{release}"), format!("linux-image-{release}-unsigned")] {
        eprintln!("vm: apt-get download {pkg} (into {})", debs.display());
        let what = format!("apt-get download {pkg}");
        let mut cmd = Command::new("apt-get");
        cmd.args(["download", "-q", &pkg]).current_dir(debs);
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
    find_deb(debs, release)?
        .ok_or_else(|| anyhow!("apt-get download linux-image-{release} left no .deb in {}", debs.display()))
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
        if (name.starts_with(&signed) || name.starts_with(&unsigned))
            && Path::new(&name).extension().is_some_and(|e| e.eq_ignore_ascii_case("deb"))
        {
            found = Some(entry.path());
        }
    }
    Ok(found)
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
}
