//! Installs what building and testing pidvirt needs, idempotently, a line per step.
//! The recipe is the one in DEVELOPERS.md.

use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// Debian packages the build needs: LLVM 22 for bpf-linker, protoc for the container runtimes'
/// gRPC APIs (containerd, CRI).
pub const BUILD_PACKAGES: &[&str] = &["llvm-22-dev", "libpolly-22-dev", "libzstd-dev", "protobuf-compiler"];
/// Debian packages the integration tests use (unshare/nsenter/setpriv, runc and a busybox rootfs,
/// bpftool, the container engines the suite starts: Docker with its containerd, Podman; the
/// Prometheus server and promtool that scrape and lint the metrics; systemd-analyze, which checks
/// the service unit; apparmor_parser, which Docker needs wherever the kernel runs AppArmor, as
/// Debian's kernels in the VMs do).
pub const TEST_PACKAGES: &[&str] = &[
    "util-linux",
    "runc",
    "busybox-static",
    "bpftool",
    "docker.io",
    "podman",
    "prometheus",
    "systemd",
    "apparmor",
];
/// The bpf-linker series known to work with aya 0.14 and LLVM 22.
pub const BPF_LINKER_VERSION: &str = "0.13";

fn step(what: &str, status: &str) {
    println!("[setup] {what}: {status}");
}

/// Runs a command, streaming its output, failing with its name.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

/// Output of a command, if it ran and succeeded.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn missing_packages(packages: &[&str]) -> Vec<String> {
    packages
        .iter()
        .filter(|p| {
            let status = output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]));
            !status.is_some_and(|s| s.contains("install ok installed"))
        })
        .map(ToString::to_string)
        .collect()
}

/// Installs Debian packages that are missing (apt-get update once if the first try fails).
pub fn apt_install(label: &str, packages: &[&str]) -> anyhow::Result<()> {
    let missing = missing_packages(packages);
    if missing.is_empty() {
        step(label, "present");
        return Ok(());
    }
    step(label, &format!("installing {}", missing.join(" ")));
    let install = |update: bool| -> anyhow::Result<()> {
        if update {
            run(Command::new("apt-get").args(["update", "-q"]))?;
        }
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    install(false)
        .or_else(|_| install(true))
        .with_context(|| format!("apt-get install {}", missing.join(" ")))
}

fn ensure_rust_src() -> anyhow::Result<()> {
    let label = "rust-src component of the nightly toolchain (eBPF build)";
    let installed =
        output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", "nightly"]));
    match installed {
        Some(list) if list.lines().any(|l| l.starts_with("rust-src")) => {
            step(label, "present");
            Ok(())
        }
        Some(_) => {
            step(label, "installing");
            run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        }
        None => {
            step("nightly toolchain", "installing");
            run(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))
        }
    }
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    let label = format!("bpf-linker {BPF_LINKER_VERSION} built against LLVM 22");
    if let Some(v) = output(Command::new("bpf-linker").arg("--version"))
        && v.split_whitespace().nth(1).is_some_and(|v| v.starts_with(&format!("{BPF_LINKER_VERSION}.")))
    {
        step(&label, &format!("present ({})", v.trim()));
        return Ok(());
    }
    step(&label, "installing (cargo install, about 2 minutes)");
    let path = format!("/usr/lib/llvm-22/bin:{}", std::env::var("PATH").unwrap_or_default());
    run(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["install", "bpf-linker", "--locked", "--version", &format!("^{BPF_LINKER_VERSION}")])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("PATH", path)
        .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22"))
}

/// Everything `cargo build` of pidvirt needs.
pub fn build_deps() -> anyhow::Result<()> {
    ensure_rust_src()?;
    apt_install("Debian packages for bpf-linker", BUILD_PACKAGES)?;
    ensure_bpf_linker()
}

/// Everything the test suite needs on top.
pub fn test_deps() -> anyhow::Result<()> {
    build_deps()?;
    apt_install("Debian packages for the tests", TEST_PACKAGES)
}
