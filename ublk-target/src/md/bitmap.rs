//! Dirty-bitmap pages.
//!
//! One bit per 4 KiB block of the data area; bit `i` is bit `i % 64` of the
//! little-endian word `i / 64`. On disk the words are grouped in 4 KiB pages,
//! each with its own header so a damaged page is detected on its own:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 4 | magic `"BMpg"` |
//! | 4 | 4 | crc32c of bytes 0..4 and 8..4096 |
//! | 8 | 8 | page index |
//! | 16 | 8·510 | words `510·index ..` (unused tail words are zero) |
//!
//! A page that fails its checks is read as all ones: every block it covers is
//! taken as dirty. That is always safe (it only costs resync time), so a bad
//! bitmap page is counted and reported, never an error.

use super::layout::{BM_PAGE_BYTES, BM_PAGE_HEADER, BM_WORDS_PER_PAGE};

/// Magic at the start of each bitmap page.
pub const BM_MAGIC: u32 = u32::from_le_bytes(*b"BMpg");

#[allow(clippy::cast_possible_truncation)] // 4096 and 16 fit in usize.
const PAGE: usize = BM_PAGE_BYTES as usize;
#[allow(clippy::cast_possible_truncation)]
const HEADER: usize = BM_PAGE_HEADER as usize;
#[allow(clippy::cast_possible_truncation)]
/// Words per page as a `usize`.
pub const WORDS: usize = BM_WORDS_PER_PAGE as usize;

fn page_crc(buf: &[u8]) -> u32 {
    let head = buf.get(..4).unwrap_or_default();
    let rest = buf.get(8..).unwrap_or_default();
    crc32c::crc32c_append(crc32c::crc32c(head), rest)
}

/// Encode page `index` holding `words` (at most [`WORDS`]; fewer are padded
/// with zeros) and append it to `out`.
pub fn encode_page(out: &mut Vec<u8>, index: u64, words: &[u64]) {
    let start = out.len();
    out.extend_from_slice(&BM_MAGIC.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    for w in words.iter().take(WORDS) {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.resize(start + PAGE, 0);
    if let Some(page) = out.get_mut(start..) {
        let crc = page_crc(page);
        if let Some(slot) = page.get_mut(4..8) {
            slot.copy_from_slice(&crc.to_le_bytes());
        }
    }
}

/// Decode page `index` into `out` (its words, at most [`WORDS`]). Returns
/// `false`, leaving `out` untouched, if the page fails a check.
pub fn decode_page(buf: &[u8], index: u64, out: &mut [u64]) -> bool {
    if buf.len() != PAGE {
        return false;
    }
    let field = |at: usize| {
        buf.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let idx = buf
        .get(8..16)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes);
    if field(0) != Some(BM_MAGIC) || idx != Some(index) || field(4) != Some(page_crc(buf)) {
        return false;
    }
    let words = buf.get(HEADER..).unwrap_or_default().chunks_exact(8);
    for (o, w) in out.iter_mut().zip(words) {
        *o = w.try_into().map(u64::from_le_bytes).unwrap_or(u64::MAX);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let words: Vec<u64> = (0..WORDS as u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let mut buf = Vec::new();
        encode_page(&mut buf, 3, &words);
        assert_eq!(buf.len(), 4096);
        let mut out = vec![0u64; WORDS];
        assert!(decode_page(&buf, 3, &mut out));
        assert_eq!(out, words);
        assert!(!decode_page(&buf, 4, &mut out), "wrong index");
        for i in [0, 5, 9, 16, 2000, 4095] {
            let mut b = buf.clone();
            b[i] ^= 1;
            assert!(!decode_page(&b, 3, &mut out), "byte {i}");
        }
        assert!(!decode_page(&vec![0u8; 4096], 0, &mut out));
    }

    #[test]
    fn short_page_is_padded() {
        let mut buf = Vec::new();
        encode_page(&mut buf, 0, &[1, 2]);
        let mut out = vec![7u64; WORDS];
        assert!(decode_page(&buf, 0, &mut out));
        assert_eq!(&out[..3], &[1, 2, 0]);
    }
}
