//! The CPU's prefetch hint, one of the two places this crate uses `unsafe`.
#![allow(unsafe_code)]

/// Hints the CPU to fetch the cache line at `p`. Never faults, reads nothing.
#[inline]
pub(crate) fn read(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` is only a hint: it does not fault on any address (null
    // or dangling included) and changes no program state. SSE is baseline on x86_64.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
