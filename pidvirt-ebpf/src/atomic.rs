//! Atomic operations on 64-bit words of map values (BPF_ATOMIC; the bpf target gives Rust's
//! atomics no such instructions here, so they are written out). Each is one instruction: no
//! preemption or other CPU comes between its read and its write.

/// `*p += v`.
#[inline(always)]
pub unsafe fn add(p: *mut u64, v: u64) {
    unsafe { core::arch::asm!("lock *(u64 *)({0} + 0) += {1}", in(reg) p, in(reg) v) };
}

/// `*p |= v`.
#[inline(always)]
pub unsafe fn or(p: *mut u64, v: u64) {
    unsafe { core::arch::asm!("lock *(u64 *)({0} + 0) |= {1}", in(reg) p, in(reg) v) };
}

/// `*p &= v`.
#[inline(always)]
pub unsafe fn and(p: *mut u64, v: u64) {
    unsafe { core::arch::asm!("lock *(u64 *)({0} + 0) &= {1}", in(reg) p, in(reg) v) };
}

/// Writes `v` to `*p`; answers what `*p` held.
#[inline(always)]
pub unsafe fn xchg(p: *mut u64, v: u64) -> u64 {
    let mut v = v;
    unsafe { core::arch::asm!("{v} = xchg_64({p} + 0, {v})", p = in(reg) p, v = inout(reg) v) };
    v
}

/// Compare-and-swap of `*p` from `old` to `new` (fully ordered); answers what `*p` held.
#[inline(always)]
pub unsafe fn cmpxchg(p: *mut u64, old: u64, new: u64) -> u64 {
    let held: u64;
    // Compares with and answers in r0.
    unsafe {
        core::arch::asm!("r0 = cmpxchg_64({p} + 0, r0, {new})", p = in(reg) p, new = in(reg) new,
                         inout("r0") old => held);
    }
    held
}
