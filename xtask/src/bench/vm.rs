//! `cargo xtask bench --vm SERIES`: the benchmark inside one of Debian's kernels booted under
//! QEMU as the suite's VMs are, for what this kernel refuses (fentry/fexit). The guest runs this
//! same xtask binary with the same arguments, writing its results directory; the host keeps them
//! under target/bench/vm-<series>/.

use std::time::Duration;

use anyhow::{Context, bail};

use crate::{vm, vmtest};

/// Generous: the emulator runs the programs' verification and every workload tens of times
/// slower than the hardware.
const TIMEOUT: Duration = Duration::from_hours(4);

/// Fails unless `series` names a series and, after a colon, a boot variant the VMs know.
pub fn check_series(series: &str) -> anyhow::Result<()> {
    if vmtest::kernel_series(series).is_empty() {
        bail!("--vm {series:?}: no kernel series (e.g. 6.12, 6.1)");
    }
    vmtest::check_boot_variant(series)
}

/// Whether this runs in a guest of `bench --vm` (or any of the VMs: the guest's environment
/// says so).
pub fn in_guest() -> bool {
    std::env::var_os("PIDVIRT_VM").is_some()
}

pub fn run(series: &str) -> anyhow::Result<()> {
    vm::ensure_tools()?;
    let root = crate::workspace_root();
    let cache = root.join("target/vm-cache");
    let kernel = vm::prepare_kernel(&cache, vmtest::kernel_series(series))?;
    let exe = std::env::current_exe().context("this xtask binary's path")?;
    let mut argv = vec![exe.display().to_string()];
    argv.extend(guest_args(std::env::args().skip(1)));
    argv.extend(["--out".to_string(), "/vm-results".to_string()]);
    let opts = vm::VmRunOptions {
        cwd: root.clone(),
        env: vec![("RUST_BACKTRACE".into(), "0".into())],
        timeout: TIMEOUT,
        extra_cmdline: vmtest::boot_variant(series).unwrap_or_default().to_string(),
        mem_mb: 3072,
        cpus: 2,
    };
    println!("[bench] in a VM: Debian {} under QEMU (software emulation)", kernel.name);
    let run = vm::run_in_vm_with_console(&kernel, &cache, &argv, &opts, &mut |line| println!("{line}"))?;
    let out = root.join("target/bench").join(format!("vm-{}", series.replace([':', '='], "-")));
    // Only this run's results, never a mix with an earlier run's.
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    let mut kept = Vec::new();
    for name in ["bench.json", "bench.md"] {
        let from = run.results_dir.join(name);
        if from.is_file() {
            std::fs::copy(&from, out.join(name)).with_context(|| format!("copying {}", from.display()))?;
            kept.push(out.join(name).display().to_string());
        }
    }
    let _ = std::fs::remove_dir_all(run.results_dir.parent().unwrap_or(&run.results_dir));
    match (run.exit_code, &run.setup_error, run.timed_out) {
        (Some(0), ..) => {
            println!("[bench] the VM's run wrote {}", kept.join(", "));
            Ok(())
        }
        (Some(code), ..) => bail!("the benchmark in the VM exited with {code} (kept: {})", kept.join(", ")),
        (None, Some(e), _) => bail!("the VM's setup failed: {e}"),
        (None, None, true) => bail!("the VM timed out after {TIMEOUT:?}"),
        (None, None, false) => bail!("the guest died before the benchmark finished"),
    }
}

/// The guest's arguments: the host's, without `--vm` and `--out` (the guest writes its results
/// directory).
fn guest_args(args: impl Iterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for a in args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        if a == "--vm" || a == "--out" {
            skip_value = true;
        } else if !a.starts_with("--vm=") && !a.starts_with("--out=") {
            out.push(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_guest_runs_the_same_bench_without_vm() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            super::guest_args(args("bench --vm 6.12 --only syscalls --no-peer").into_iter()),
            args("bench --only syscalls --no-peer")
        );
        assert_eq!(
            super::guest_args(args("bench --rounds 3 --vm=6.1").into_iter()),
            args("bench --rounds 3")
        );
        assert_eq!(
            super::guest_args(args("bench --out /x --vm 6.12 --out=/y --no-peer").into_iter()),
            args("bench --no-peer")
        );
    }

    #[test]
    fn a_series_is_checked_before_anything_is_built() {
        assert!(super::check_series("6.12").is_ok());
        assert!(super::check_series("6.12:preempt=full").is_ok());
        assert!(super::check_series("6.12:quiet").is_err());
        assert!(super::check_series(":preempt=full").is_err());
    }
}
