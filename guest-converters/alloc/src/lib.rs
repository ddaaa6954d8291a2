//! A global allocator for tbgw's guest converters.
//!
//! A converter allocates many small blocks per message (keys, values, the
//! vectors that hold them) and frees them all soon after. wasi-libc's
//! dlmalloc, the default on `wasm32-wasip2`, pays for headers, binning and
//! coalescing on every call: in a profile of the `json` converter it took a
//! sixth of the guest's time. This allocator serves blocks up to 4 KiB from
//! per-size-class free lists (a pop to allocate, a push to free, no headers:
//! Rust passes the size back on free), carving new blocks from 64 KiB slabs
//! of the system allocator; larger blocks go to the system allocator.
//!
//! Freed small blocks are kept for reuse, never returned: an instance's
//! memory stays at its peak, which the host caps per instance.
//!
//! WebAssembly guests are single-threaded; on a target with threads this
//! allocator must not be used, and the `compile_error!` below says so.

#![no_std]

#[cfg(all(target_family = "wasm", target_feature = "atomics"))]
compile_error!("tbgw-guest-alloc is for single-threaded WebAssembly only");

extern crate alloc;
extern crate std;

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr;
use std::alloc::System;

/// Block sizes: multiples of 16 up to 256, then four steps per power of two
/// up to 4 KiB.
const CLASSES: [usize; 32] = [
    16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256, 320, 384, 448, 512, 640, 768, 896, 1024,
    1280, 1536, 1792, 2048, 2560, 3072, 3584, 4096,
];
const MAX_SMALL: usize = 4096;
const ALIGN: usize = 16;
const SLAB: usize = 64 * 1024;

/// The class index serving `size` bytes (`size <= MAX_SMALL`).
#[inline]
fn class_of(size: usize) -> usize {
    if size <= 256 {
        size.saturating_sub(1) / 16
    } else {
        // 257..=4096: four classes per power of two.
        let bits = usize::BITS - (size - 1).leading_zeros(); // 2^(bits-1) < size <= 2^bits
        let base = 1usize << (bits - 1);
        let step = base / 4;
        let sub = (size - base).div_ceil(step) - 1; // 0..=3
        16 + (bits as usize - 9) * 4 + sub
    }
}

struct State {
    free: [*mut u8; CLASSES.len()],
    slab: *mut u8,
    slab_left: usize,
}

/// The allocator. Declare it with
/// `#[global_allocator] static ALLOC: tbgw_guest_alloc::Alloc = tbgw_guest_alloc::Alloc::new();`.
pub struct Alloc(UnsafeCell<State>);

// SAFETY: guests are single-threaded (see the compile_error! above).
unsafe impl Sync for Alloc {}

impl Alloc {
    pub const fn new() -> Alloc {
        Alloc(UnsafeCell::new(State { free: [ptr::null_mut(); CLASSES.len()], slab: ptr::null_mut(), slab_left: 0 }))
    }
}

impl Default for Alloc {
    fn default() -> Self {
        Alloc::new()
    }
}

#[inline]
fn small(layout: Layout) -> bool {
    layout.size() <= MAX_SMALL && layout.align() <= ALIGN
}

unsafe impl GlobalAlloc for Alloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !small(layout) {
            return unsafe { System.alloc(layout) };
        }
        let class = class_of(layout.size().max(1));
        // SAFETY: single-threaded, and no allocation happens while borrowed.
        let s = unsafe { &mut *self.0.get() };
        let head = s.free[class];
        if !head.is_null() {
            // SAFETY: a free block starts with the pointer to the next one.
            s.free[class] = unsafe { *(head as *mut *mut u8) };
            return head;
        }
        let size = CLASSES[class];
        if s.slab_left < size {
            // The rest of the old slab is too small for this class; it is
            // not lost for good: give it to the smaller classes.
            let mut left = s.slab_left;
            while left >= 16 {
                let c = CLASSES.iter().rposition(|&c| c <= left).unwrap_or(0);
                let block = s.slab;
                // SAFETY: `block` has `left >= CLASSES[c]` bytes, 16-aligned.
                unsafe {
                    *(block as *mut *mut u8) = s.free[c];
                    s.slab = block.add(CLASSES[c]);
                }
                s.free[c] = block;
                left -= CLASSES[c];
            }
            // SAFETY: a valid, non-zero layout.
            let slab = unsafe { System.alloc(Layout::from_size_align_unchecked(SLAB, ALIGN)) };
            if slab.is_null() {
                return ptr::null_mut();
            }
            s.slab = slab;
            s.slab_left = SLAB;
        }
        let block = s.slab;
        // SAFETY: `size <= slab_left`.
        s.slab = unsafe { block.add(size) };
        s.slab_left -= size;
        block
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        if !small(layout) {
            return unsafe { System.dealloc(p, layout) };
        }
        let class = class_of(layout.size().max(1));
        // SAFETY: single-threaded; `p` is a block of this class.
        let s = unsafe { &mut *self.0.get() };
        unsafe { *(p as *mut *mut u8) = s.free[class] };
        s.free[class] = p;
    }

    #[inline]
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if small(layout) && new_size <= MAX_SMALL && class_of(layout.size().max(1)) == class_of(new_size.max(1)) {
            return p;
        }
        if !small(layout) && new_size > MAX_SMALL {
            return unsafe { System.realloc(p, layout, new_size) };
        }
        // SAFETY: the caller guarantees a valid layout for `new_size`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let q = unsafe { self.alloc(new_layout) };
        if !q.is_null() {
            unsafe {
                ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                self.dealloc(p, layout);
            }
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// Allocate, fill, grow, shrink and free blocks of every size class
    /// (and some large ones), checking that no block overlaps another.
    #[test]
    fn blocks_hold_their_contents() {
        let a = Alloc::new();
        let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
        let mut seed = 7u32;
        for round in 0..20_000u32 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            if live.len() > 200 || (seed.is_multiple_of(3) && !live.is_empty()) {
                let (p, layout, tag) = live.swap_remove(seed as usize % live.len());
                for i in 0..layout.size() {
                    assert_eq!(unsafe { *p.add(i) }, tag, "block of {} bytes overwritten", layout.size());
                }
                if seed.is_multiple_of(5) {
                    let new_size = 1 + (seed as usize >> 8) % 6000;
                    let q = unsafe { a.realloc(p, layout, new_size) };
                    assert!(!q.is_null());
                    let keep = layout.size().min(new_size);
                    for i in 0..keep {
                        assert_eq!(unsafe { *q.add(i) }, tag, "realloc lost data");
                    }
                    let layout = Layout::from_size_align(new_size, layout.align()).unwrap();
                    unsafe { ptr::write_bytes(q, tag, new_size) };
                    live.push((q, layout, tag));
                } else {
                    unsafe { a.dealloc(p, layout) };
                }
                continue;
            }
            let size = 1 + (seed as usize >> 4) % if seed.is_multiple_of(10) { 20_000 } else { 600 };
            let align = [1, 2, 8, 16, 32][(seed >> 20) as usize % 5];
            let layout = Layout::from_size_align(size, align).unwrap();
            let p = unsafe { a.alloc(layout) };
            assert!(!p.is_null());
            assert_eq!(p as usize % align, 0, "misaligned for {align}");
            let tag = (round % 251) as u8;
            unsafe { ptr::write_bytes(p, tag, size) };
            live.push((p, layout, tag));
        }
        for (p, layout, _) in live {
            unsafe { a.dealloc(p, layout) };
        }
    }

    #[test]
    fn classes_cover_every_small_size() {
        for size in 1..=MAX_SMALL {
            let c = class_of(size);
            assert!(CLASSES[c] >= size, "size {size} in class {c} ({})", CLASSES[c]);
            assert!(c == 0 || CLASSES[c - 1] < size, "size {size} could use class {}", c - 1);
        }
    }
}
