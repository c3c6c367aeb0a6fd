//! pidvirt kernel programs.
//!
//! Lifecycle (tp_btf): sched_process_fork / exec / exit / free keep, per task, its ids at every
//! pid namespace level (maps::TASKS, maps::DEEP) and the reverse view (pid namespace, number) ->
//! host tid (maps::VIRT). All reads of task structures go through `task.rs` with offsets resolved
//! from BTF at start-up (no CO-RE in Rust eBPF).
#![no_std]
#![no_main]
// For `kernel::below`: an asm barrier (a self-move), so that a bounds check and the index it guards
// are the same register (LLVM otherwise reuses an older, unchecked copy and the verifier refuses).
#![feature(asm_experimental_arch)]
// Map values are passed by reference on purpose: by value they would be copied onto the
// 512-byte BPF stack.
#![allow(clippy::needless_borrows_for_generic_args)]

mod audit;
mod kernel;
mod lifecycle;
mod lsm;
mod maps;
mod syscalls;
mod task;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
