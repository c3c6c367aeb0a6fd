//! pidvirt kernel programs.
//!
//! Lifecycle (tp_btf): sched_process_fork / exec / exit / free keep, per task, its ids at every
//! pid namespace level (maps::TASK_FRONT, and maps::TASKS for the tids its slots cannot hold;
//! through maps::task_get, task_insert and task_remove; maps::DEEP) and the reverse view (pid
//! namespace, number) -> host tid (maps::VIRT_FRONT, and maps::VIRT for the keys its slots cannot
//! hold; through maps::virt_insert, virt_get and virt_forget). All reads of task structures go
//! through `task.rs` with offsets resolved from BTF at start-up (no CO-RE in Rust eBPF).
#![no_std]
#![no_main]
// For `kernel::below`: an asm barrier (a self-move), so that a bounds check and the index it guards
// are the same register (LLVM otherwise reuses an older, unchecked copy and the verifier refuses).
#![feature(asm_experimental_arch)]
// Map values are passed by reference on purpose: by value they would be copied onto the
// 512-byte BPF stack.
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "values by reference stay off the 512-byte stack"
)]
#![expect(
    clippy::inline_always,
    reason = "every helper is inlined into its program: the verifier then sees offsets and bounds as constants at \
              the call site, and verifies one flat program"
)]
#![expect(
    clippy::needless_pass_by_value,
    reason = "program entry points take their context by value: aya's program macros call them so"
)]
#![expect(
    clippy::undocumented_unsafe_blocks,
    reason = "map values and kernel memory are reached through raw pointers on nearly every line; the verifier \
              checks each access when the program loads (the user-space crates document theirs)"
)]

mod atomic;
mod audit;
mod kernel;
mod lifecycle;
mod lsm;
mod maps;
mod procfs;
mod structures;
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
