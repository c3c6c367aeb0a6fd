//! Compiles the kernel programs (pidvirt-ebpf) for the BPF target with aya-build; the object is
//! embedded in the `pidvirt` binary with `include_bytes_aligned!`. With AYA_BUILD_SKIP=1
//! (`cargo check`/`clippy` on a machine without bpf-linker) aya-build skips the eBPF build and
//! an empty object stands in: such a binary refuses to load, saying why.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let skip = std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
        std::fs::write(out.join("pidvirt"), []).context("write the empty eBPF object")?;
    }
    let metadata = cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "pidvirt-ebpf")
        .ok_or_else(|| anyhow!("pidvirt-ebpf package not found in the workspace"))?;
    let root = ebpf.manifest_path.parent().ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: ebpf.name.as_str(), root_dir: root.as_str(), ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
