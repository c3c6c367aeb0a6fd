//! Rebuild the kernel programs when the bpf-linker binary changes, and let LLVM lower small
//! memsets to stores.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    if std::env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|a| a == "bpf") {
        println!("cargo::rustc-link-arg=--disable-expand-memcpy-in-order");
    }
}
