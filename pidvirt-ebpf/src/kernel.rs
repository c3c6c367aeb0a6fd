//! Access to kernel memory through the offsets the daemon resolved from BTF.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use pidvirt_common::{KernelOffsets, offsets::OFFSETS_MAGIC};

/// Filled by the daemon with `EbpfLoader::set_global("OFFSETS", ..)` before load.
#[unsafe(no_mangle)]
pub(crate) static OFFSETS: KernelOffsets = KernelOffsets::zeroed();

/// Reads one field of the OFFSETS global. Volatile, so that the compiler does not fold the
/// zeroed initial value; the verifier sees the real (frozen, read-only) value.
macro_rules! off {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&raw const $crate::kernel::OFFSETS.$field) }
    };
}
pub(crate) use off;

/// Whether the daemon filled the offsets (programs do nothing otherwise).
#[inline(always)]
pub fn offsets_ready() -> bool {
    off!(magic) == OFFSETS_MAGIC
}

/// How a program reads kernel memory: [`Probe`] or [`Direct`].
pub trait Kmem: Copy {
    /// Whether reads are direct loads (then every offset must be a constant to the verifier).
    const DIRECT: bool;

    /// Reads a `T` at `base + offset` (a null `base` is an error, never read).
    fn read<T: Copy>(self, base: *const u8, offset: u32) -> Result<T, i32>;

    /// Reads a kernel pointer at `base + offset` (a null pointer is an error).
    #[inline(always)]
    fn read_ptr(self, base: *const u8, offset: u32) -> Result<*const u8, i32> {
        let p: *const u8 = self.read(base, offset)?;
        if p.is_null() { Err(-14) } else { Ok(p) }
    }
}

/// Reads through bpf_probe_read_kernel: any address (a task from bpf_get_current_task, an
/// index the verifier cannot know), at the cost of a helper call (~35 ns on these machines).
#[derive(Clone, Copy)]
pub struct Probe;

impl Kmem for Probe {
    const DIRECT: bool = false;

    #[inline(always)]
    fn read<T: Copy>(self, base: *const u8, offset: u32) -> Result<T, i32> {
        if base.is_null() {
            return Err(-14);
        }
        unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }
    }
}

/// Plain loads through a BTF-typed pointer: a tp_btf or LSM argument, the task iterator's task,
/// bpf_get_current_task_btf(), or a pointer loaded from one of those. The verifier checks every
/// load against the kernel's BTF (the offset, a constant to it because OFFSETS is a frozen
/// read-only global, must land on a field of that size) and the JIT makes it a fault-tolerant
/// load (a bad address reads 0): about a nanosecond instead of a helper call. Only for offsets
/// the verifier knows: no variable index (use [`Probe`] there).
#[derive(Clone, Copy)]
pub struct Direct;

impl Kmem for Direct {
    const DIRECT: bool = true;

    #[inline(always)]
    fn read<T: Copy>(self, base: *const u8, offset: u32) -> Result<T, i32> {
        if base.is_null() {
            return Err(-14);
        }
        Ok(unsafe { core::ptr::read_volatile(base.wrapping_add(offset as usize).cast::<T>()) })
    }
}

/// Reads a `T` at `base + offset` from kernel memory with bpf_probe_read_kernel.
#[inline(always)]
pub fn read<T: Copy>(base: *const u8, offset: u32) -> Result<T, i32> {
    Probe.read(base, offset)
}

/// Reads a kernel pointer at `base + offset` with bpf_probe_read_kernel.
#[inline(always)]
pub fn read_ptr(base: *const u8, offset: u32) -> Result<*const u8, i32> {
    Probe.read_ptr(base, offset)
}

/// `i` if it is below `n`: the check is made on a value LLVM cannot relate to older copies of
/// `i` (an asm self-move), so the verifier sees it on the very register that indexes.
#[inline(always)]
pub fn below(i: usize, n: usize) -> Option<usize> {
    let mut v = i;
    unsafe { core::arch::asm!("{0} = {0}", inout(reg) v) };
    if v < n { Some(v) } else { None }
}
