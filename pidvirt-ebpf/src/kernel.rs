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

/// Reads a `T` at `base + offset` from kernel memory.
#[inline(always)]
pub fn read<T>(base: *const u8, offset: u32) -> Result<T, i32> {
    if base.is_null() {
        return Err(-14);
    }
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize) as *const T) }
}

/// Reads a kernel pointer at `base + offset`.
#[inline(always)]
pub fn read_ptr(base: *const u8, offset: u32) -> Result<*const u8, i32> {
    let p: *const u8 = read(base, offset)?;
    if p.is_null() { Err(-14) } else { Ok(p) }
}

/// `i` if it is below `n`: the check is made on a value LLVM cannot relate to older copies of
/// `i` (an asm self-move), so the verifier sees it on the very register that indexes.
#[inline(always)]
pub fn below(i: usize, n: usize) -> Option<usize> {
    let mut v = i;
    unsafe { core::arch::asm!("{0} = {0}", inout(reg) v) };
    if v < n { Some(v) } else { None }
}
