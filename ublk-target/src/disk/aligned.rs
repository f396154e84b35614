//! Heap buffers that O_DIRECT accepts: 4096-aligned address, length a
//! multiple of 512.

use bytes::Bytes;

use super::sys::{RawAligned, ALIGN};

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
        RawAligned::copy_from(src)
            .map(|raw| Self { raw })
            .ok_or(BadBufLen(src.len()))
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
    fn is_aligned_checks_address_and_length() {
        let b = AlignedBuf::zeroed(8192).unwrap();
        assert!(is_aligned(&b.as_slice()[4096..]));
        assert!(!is_aligned(&b.as_slice()[512..]));
        assert!(!is_aligned(&b.as_slice()[..100]));
    }
}
