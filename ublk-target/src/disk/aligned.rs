//! Heap buffers that O_DIRECT accepts: 4096-aligned address, length a
//! multiple of 512.
//!
//! Dropped buffers of up to [`POOL_MAX_BUF`] go back to a small process-wide
//! pool and [`AlignedBuf::copy_from`] / [`AlignedBuf::for_overwrite`] take
//! from it. Without it every 1 MiB write paid a fresh mmap (glibc's mmap
//! threshold is fixed at 128 KiB, see `alloc.rs`), 256 page faults with
//! page clearing, and a munmap with its TLB shootdown: more CPU than the
//! copy and the disk submission together. The pool is bounded by
//! [`POOL_MAX_BYTES`], so idle memory stays small.

use std::sync::{Mutex, PoisonError};

use bytes::Bytes;

use super::raw::{RawAligned, ALIGN};

/// Largest buffer kept for reuse: a 1 MiB write, or a whole replication
/// frame of one placed so that its data is aligned.
pub const POOL_MAX_BUF: usize = (1 << 20) + 8192;
/// Bytes of idle buffers the pool keeps at most; beyond that they are freed.
pub const POOL_MAX_BYTES: usize = 16 << 20;

/// Idle buffers by exact length. Few distinct lengths occur (4 KiB, 1 MiB,
/// the sizes a client uses), so a short list beats hashing.
struct Pool {
    by_len: Vec<(usize, Vec<RawAligned>)>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    by_len: Vec::new(),
    bytes: 0,
});

fn pool_take(len: usize) -> Option<RawAligned> {
    if len == 0 || len > POOL_MAX_BUF {
        return None;
    }
    let mut p = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    let raw = p
        .by_len
        .iter_mut()
        .find(|(l, _)| *l == len)
        .and_then(|(_, v)| v.pop())?;
    p.bytes -= len;
    Some(raw)
}

fn pool_put(raw: RawAligned) {
    let len = raw.len();
    if len == 0 || len > POOL_MAX_BUF {
        return;
    }
    let mut p = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    if p.bytes + len > POOL_MAX_BYTES {
        // Full: free outside the lock (a munmap can take a while).
        drop(p);
        drop(raw);
        return;
    }
    p.bytes += len;
    match p.by_len.iter_mut().find(|(l, _)| *l == len) {
        Some((_, v)) => v.push(raw),
        None => p.by_len.push((len, vec![raw])),
    }
}

/// Bytes of idle buffers held by the pool now.
pub fn pool_idle_bytes() -> usize {
    POOL.lock().unwrap_or_else(PoisonError::into_inner).bytes
}

/// Sector size every length must be a multiple of.
pub const SECTOR: usize = 512;

/// The buffer length given to an [`AlignedBuf`] constructor is not a
/// multiple of 512 (or is absurdly large).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("aligned buffer length {0} is not a multiple of 512 bytes (or is too large)")]
pub struct BadBufLen(pub usize);

/// A heap buffer at a 4096-aligned address whose length is a multiple of
/// 512: what O_DIRECT needs. Its bytes are always initialized, either
/// zeroed ([`AlignedBuf::zeroed`]) or copied in ([`AlignedBuf::copy_from`],
/// which does not zero first).
pub struct AlignedBuf {
    raw: RawAligned,
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("ptr", &self.raw.as_slice().as_ptr())
            .field("len", &self.raw.len())
            .finish()
    }
}

impl AlignedBuf {
    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> Result<Self, BadBufLen> {
        if len % SECTOR != 0 {
            return Err(BadBufLen(len));
        }
        RawAligned::zeroed(len)
            .map(|raw| Self { raw })
            .ok_or(BadBufLen(len))
    }

    /// An aligned copy of `src` (the bytes are copied, not zeroed first).
    pub fn copy_from(src: &[u8]) -> Result<Self, BadBufLen> {
        if src.len() % SECTOR != 0 {
            return Err(BadBufLen(src.len()));
        }
        if let Some(mut raw) = pool_take(src.len()) {
            raw.as_mut_slice().copy_from_slice(src);
            return Ok(Self { raw });
        }
        RawAligned::copy_from(src)
            .map(|raw| Self { raw })
            .ok_or(BadBufLen(src.len()))
    }

    /// `len` bytes whose content is unspecified (old data of a reused
    /// buffer, or zeroes): for a caller that overwrites all of it, such as
    /// a socket read of a write's payload.
    pub fn for_overwrite(len: usize) -> Result<Self, BadBufLen> {
        if len % SECTOR != 0 {
            return Err(BadBufLen(len));
        }
        match pool_take(len) {
            Some(raw) => Ok(Self { raw }),
            None => Self::zeroed(len),
        }
    }

    pub fn len(&self) -> usize {
        self.raw.len()
    }

    pub fn is_empty(&self) -> bool {
        self.raw.len() == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        self.raw.as_slice()
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.raw.as_mut_slice()
    }

    /// The buffer as `Bytes`, without copying: the `Bytes` owns the
    /// allocation and frees it when its last clone goes. The data stays
    /// 4096-aligned, so it can be written with O_DIRECT without a copy.
    pub fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        pool_put(std::mem::replace(&mut self.raw, RawAligned::empty()));
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsMut<[u8]> for AlignedBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

/// Whether `b` can go to O_DIRECT as is: 4096-aligned address and a length
/// that is a multiple of 512.
pub fn is_aligned(b: &[u8]) -> bool {
    (b.as_ptr() as usize) % ALIGN == 0 && b.len() % SECTOR == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_is_aligned_and_zero() {
        for len in [0, 512, 4096, 512 * 9, 1 << 20] {
            let b = AlignedBuf::zeroed(len).unwrap();
            assert_eq!(b.len(), len);
            assert!(is_aligned(b.as_slice()), "len {len}");
            assert!(b.as_slice().iter().all(|&x| x == 0));
        }
    }

    #[test]
    fn bad_lengths_are_refused() {
        assert_eq!(AlignedBuf::zeroed(100).unwrap_err(), BadBufLen(100));
        assert_eq!(
            AlignedBuf::copy_from(&[1; 513]).unwrap_err(),
            BadBufLen(513)
        );
        assert!(AlignedBuf::zeroed(usize::MAX - 511).is_err());
    }

    #[test]
    fn copy_and_into_bytes_keep_data_and_address() {
        let src: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut b = AlignedBuf::copy_from(&src).unwrap();
        assert_eq!(b.as_slice(), &src[..]);
        b.as_mut_slice()[0] = 0xAA;
        let ptr = b.as_slice().as_ptr();
        let bytes = b.into_bytes();
        assert_eq!(bytes.as_ptr(), ptr, "into_bytes must not copy");
        assert!(is_aligned(&bytes));
        assert_eq!(bytes[0], 0xAA);
        assert_eq!(&bytes[1..], &src[1..]);
        let clone = bytes.clone();
        drop(bytes);
        assert_eq!(clone.len(), 8192);
    }

    #[test]
    fn dropped_buffers_are_reused_and_the_pool_stays_bounded() {
        // A length no other test uses, so parallel tests do not interfere.
        let len = 512 * 37;
        let a = AlignedBuf::copy_from(&vec![7u8; len]).unwrap();
        let ptr = a.as_slice().as_ptr();
        drop(a);
        let b = AlignedBuf::for_overwrite(len).unwrap();
        assert_eq!(b.as_slice().as_ptr(), ptr, "the dropped buffer is reused");
        assert!(is_aligned(b.as_slice()));
        let c = AlignedBuf::copy_from(&vec![9u8; len]).unwrap();
        assert!(
            c.as_slice().iter().all(|&x| x == 9),
            "a reused buffer holds the new data"
        );
        // Zeroed buffers are zero even when the pool has one of that length.
        drop(b);
        assert!(AlignedBuf::zeroed(len)
            .unwrap()
            .as_slice()
            .iter()
            .all(|&x| x == 0));
        // Through Bytes too: the buffer comes back when the last clone goes.
        let bytes = c.into_bytes();
        let ptr = bytes.as_ptr();
        let clone = bytes.clone();
        drop(bytes);
        drop(clone);
        assert_eq!(
            AlignedBuf::for_overwrite(len).unwrap().as_slice().as_ptr(),
            ptr
        );
        // Far more than the pool keeps: idle memory stays under the bound.
        let many: Vec<_> = (0..40)
            .map(|_| AlignedBuf::for_overwrite(POOL_MAX_BUF).unwrap())
            .collect();
        drop(many);
        assert!(pool_idle_bytes() <= POOL_MAX_BYTES);
        assert!(AlignedBuf::for_overwrite(100).is_err());
    }

    #[test]
    fn is_aligned_checks_address_and_length() {
        let b = AlignedBuf::zeroed(8192).unwrap();
        assert!(is_aligned(&b.as_slice()[4096..]));
        assert!(!is_aligned(&b.as_slice()[512..]));
        assert!(!is_aligned(&b.as_slice()[..100]));
    }
}
