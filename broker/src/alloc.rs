//! A global allocator that keeps hostile length prefixes from aborting the process.
//!
//! The generated decoders of `kafka-protocol` 0.18 call `Vec::with_capacity(n)` with an
//! array length `n` read from the wire, before decoding any element (an open upstream
//! issue). A frame of a few bytes can therefore ask for hundreds of GiB; the system
//! allocator refuses that, and Rust aborts on a refused allocation, which would take the
//! whole broker down for one bad frame.
//!
//! [`GuardedAlloc`] serves allocations of at least [`HUGE_BYTES`] with an anonymous
//! `mmap(MAP_NORESERVE)`: address space only, committed page by page as it is touched.
//! A decoder that reserves 200 GiB and then fails on the next element touches nothing,
//! so the reservation is returned at once. Everything smaller goes to the system
//! allocator unchanged. Memory actually used stays bounded by the request-size limit.
//! (Under `vm.overcommit_memory=2` the kernel refuses such mappings too; the broker
//! then has only the request-size limit.)
//!
//! `flowc` installs it with `#[global_allocator]`; so do the broker's robustness tests.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations from this size up are served by `mmap(MAP_NORESERVE)`.
pub const HUGE_BYTES: usize = 1 << 30;
const PAGE_BYTES: usize = 4096;

/// See the module documentation.
#[derive(Debug, Default, Clone, Copy)]
pub struct GuardedAlloc;

fn is_huge(layout: &Layout) -> bool {
    layout.size() >= HUGE_BYTES && layout.align() <= PAGE_BYTES
}

// SAFETY: every block is either the system allocator's (small, or over-aligned) or a
// private anonymous mapping of exactly `layout.size()` bytes (huge); `dealloc` and
// `realloc` tell them apart by the same size test `alloc` used, which the caller's
// layout guarantees is the one the block was allocated with.
unsafe impl GlobalAlloc for GuardedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !is_huge(&layout) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.alloc(layout) };
        }
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            p.cast()
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_huge(&layout) {
            // SAFETY: `ptr` is a mapping of `layout.size()` bytes made by `alloc`.
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        if !is_huge(&layout) && !is_huge(&new_layout) {
            // SAFETY: both blocks belong to the system allocator.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: `new_layout` has a non-zero size (it is at least as large as a huge
        // block or came from a valid layout), and the copy covers bytes both blocks own.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_reservations_succeed_and_small_ones_are_untouched() {
        let a = GuardedAlloc;
        let huge = Layout::from_size_align(200 << 30, 8).unwrap();
        // SAFETY: layouts are valid and blocks are freed with the layout they got.
        unsafe {
            let p = a.alloc(huge);
            assert!(!p.is_null(), "a 200 GiB reservation must not fail");
            p.write(7);
            assert_eq!(p.read(), 7);
            let q = a.realloc(p, huge, 16);
            assert!(!q.is_null());
            assert_eq!(q.read(), 7);
            a.dealloc(q, Layout::from_size_align(16, 8).unwrap());
            let small = Layout::from_size_align(100, 8).unwrap();
            let s = a.alloc(small);
            assert!(!s.is_null());
            let grown = a.realloc(s, small, HUGE_BYTES + 1);
            assert!(!grown.is_null());
            a.dealloc(grown, Layout::from_size_align(HUGE_BYTES + 1, 8).unwrap());
        }
    }
}
