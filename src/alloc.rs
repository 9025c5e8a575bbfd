//! The binary's global allocator: mimalloc, called the way it is fastest.
//!
//! The `mimalloc` crate's `GlobalAlloc` passes every request to `mi_malloc_aligned`, with the
//! alignment Rust gives (1 for a byte buffer, 8 for most boxes). mimalloc v3 takes that path's
//! quick exit only for requests up to 1 KiB whose free block happens to be aligned; a larger
//! one whose size class is not a power of two (a boxed request future of 1,440 bytes, a
//! read buffer with a response head and its body) goes through its generic aligned path and
//! is *over-allocated* by `align - 1` bytes: extra instructions on every such allocation, and
//! sometimes the next size class up. But every mimalloc block is aligned to at least 8 bytes
//! (block sizes are whole machine words and a page's first block is 16-aligned), so for an
//! alignment of 8 or less plain `mi_malloc` already gives what the layout asks, on its
//! quickest path. Larger alignments (tokio's tasks are cache-line aligned) keep the aligned
//! calls. (The same reasoning as std's own `System` allocator, which calls `malloc` when the
//! alignment is within what `malloc` guarantees.)
//!
//! The one `unsafe` of the binary: a global allocator is an FFI boundary by nature. It is
//! checked by the tests below and by every test that runs the binary.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// What every block `mi_malloc` returns is aligned to (a machine word).
const PLAIN_ALIGN: usize = std::mem::size_of::<usize>();

pub struct MiMalloc;

// SAFETY: each method forwards to mimalloc's allocation functions, which return null on failure
// (as `GlobalAlloc` requires) and memory aligned as follows: `mi_malloc`, `mi_zalloc` and
// `mi_realloc` to at least `PLAIN_ALIGN`, used only when `layout.align() <= PLAIN_ALIGN`; the
// `_aligned` variants to the alignment given, otherwise. A block from either is freed by
// `mi_free`. `realloc` keeps the layout's alignment (the same rule picks the same family).
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl; mimalloc has no precondition on the size.
        unsafe {
            if layout.align() <= PLAIN_ALIGN {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe {
            if layout.align() <= PLAIN_ALIGN {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (the caller's contract), so from mimalloc.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout` (the caller's contract); the
        // new block keeps `layout`'s alignment by the same rule as `alloc`.
        unsafe {
            if layout.align() <= PLAIN_ALIGN {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size from 1 byte to past mimalloc's small and medium classes, at each alignment
    /// up to 4 KiB: the block is aligned, writable to its last byte, zeroed when asked, keeps
    /// its bytes across a reallocation, and is freed.
    #[test]
    fn blocks_are_aligned_as_asked_at_every_size() {
        let a = MiMalloc;
        let sizes = (1..=300usize)
            .chain((301..70_000).step_by(97))
            .chain([1 << 20, (1 << 20) + 3]);
        for size in sizes {
            for align in [1usize, 2, 4, 8, 16, 32, 64, 128, 4096] {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                // SAFETY: a non-zero size; each block is used within its size and freed once
                // with its layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "alloc {size} bytes, align {align}");
                    p.write_bytes(0xa5, size);
                    let grown = size * 2 + 1;
                    let q = a.realloc(p, layout, grown);
                    assert!(!q.is_null());
                    assert_eq!(q as usize % align, 0, "realloc to {grown}, align {align}");
                    assert_eq!(*q, 0xa5);
                    assert_eq!(*q.add(size - 1), 0xa5);
                    q.add(grown - 1).write(1);
                    a.dealloc(q, Layout::from_size_align_unchecked(grown, align));

                    let z = a.alloc_zeroed(layout);
                    assert!(!z.is_null());
                    assert_eq!(z as usize % align, 0, "alloc_zeroed {size}, align {align}");
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
