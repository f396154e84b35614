//! [`RawAligned`]: a 4096-aligned, always-initialized heap allocation, the
//! memory every O_DIRECT read and write of the disk layer goes through.
//! With `sys.rs`, the only place of the disk layer allowed `unsafe`; kept
//! apart from it so that the buffer pool (`aligned.rs`) and the ring
//! (`sys.rs`, which moves `AlignedBuf`s) do not import each other.
#![allow(unsafe_code)]

use std::alloc::{self, Layout};
use std::ptr::NonNull;

/// Alignment of every [`RawAligned`] allocation.
pub(crate) const ALIGN: usize = 4096;

#[repr(C, align(4096))]
struct Page([u8; ALIGN]);

/// A heap allocation of `len` bytes at a 4096-aligned address. The bytes
/// are always initialized (zeroed or copied in), so handing out `&[u8]` is
/// sound. Uniquely owned, like a `Box<[u8]>`.
pub(crate) struct RawAligned {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: `RawAligned` uniquely owns its allocation (no aliasing pointers
// are kept anywhere), exactly like `Box<[u8]>`, which is Send and Sync.
unsafe impl Send for RawAligned {}
// SAFETY: as above; `&RawAligned` only gives out `&[u8]`.
unsafe impl Sync for RawAligned {}

impl RawAligned {
    fn layout(len: usize) -> Option<Layout> {
        Layout::from_size_align(len, ALIGN).ok()
    }

    /// `len` zero bytes. `None` if `len` is too large for a `Layout`.
    pub(crate) fn zeroed(len: usize) -> Option<Self> {
        if len == 0 {
            return Some(Self::empty());
        }
        let layout = Self::layout(len)?;
        // SAFETY: `layout` has a non-zero size (len > 0 checked above).
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            alloc::handle_alloc_error(layout)
        };
        Some(Self { ptr, len })
    }

    /// A copy of `src`, without zeroing first.
    pub(crate) fn copy_from(src: &[u8]) -> Option<Self> {
        let len = src.len();
        if len == 0 {
            return Some(Self::empty());
        }
        let layout = Self::layout(len)?;
        // SAFETY: `layout` has a non-zero size (len > 0 checked above).
        let ptr = unsafe { alloc::alloc(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            alloc::handle_alloc_error(layout)
        };
        // SAFETY: `ptr` is a fresh allocation of `len` writable bytes, so it
        // cannot overlap `src`, which is valid for `len` reads. After this,
        // all `len` bytes are initialized.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), ptr.as_ptr(), len) };
        Some(Self { ptr, len })
    }

    pub(crate) fn empty() -> Self {
        // A dangling `Page` pointer is non-null and 4096-aligned: valid for
        // a zero-length slice and never freed (len == 0).
        Self {
            ptr: NonNull::<Page>::dangling().cast(),
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is non-null, aligned, and valid for `len` initialized
        // bytes that we own (or dangling with len 0); the shared borrow of
        // `self` prevents mutation for the slice's lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and the exclusive borrow of `self` makes
        // this the only reference to the bytes for the slice's lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for RawAligned {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        if let Some(layout) = Self::layout(self.len) {
            // SAFETY: `ptr` was allocated by `alloc`/`alloc_zeroed` with
            // exactly this layout (same len, same ALIGN) and is freed once.
            unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}
