//! The in-memory dirty bitmap: one bit per 4 KiB block that may differ from
//! the peer.

use bitvec::prelude::*;

use crate::meta::{BITS_PER_EXTENT, BM_BLOCK_SIZE};

#[derive(Debug, Clone)]
pub struct Bitmap {
    bits: BitVec<u64, Lsb0>,
    /// Set bits, kept up to date so `count` costs nothing: it is asked on
    /// every status call, and a 1 TiB device has 268 million bits.
    ones: u64,
}

impl Bitmap {
    /// A bitmap for `data_bytes`, from stored words (missing words are clear,
    /// extra words and bits past the end are ignored).
    #[must_use]
    pub fn from_words(data_bytes: u64, words: &[u64]) -> Self {
        let nbits = usize::try_from(data_bytes.div_ceil(BM_BLOCK_SIZE)).unwrap_or(usize::MAX);
        let mut bits: BitVec<u64, Lsb0> = BitVec::from_slice(words);
        bits.resize(nbits, false);
        let mut me = Self { bits, ones: 0 };
        me.or_words(&[]);
        me
    }

    /// Cover `data_bytes` now (`repctl resize`, a smaller peer): new bits
    /// are clear, bits cut off are forgotten.
    pub fn resize(&mut self, data_bytes: u64) {
        let nbits = usize::try_from(data_bytes.div_ceil(BM_BLOCK_SIZE)).unwrap_or(usize::MAX);
        self.bits.resize(nbits, false);
        self.ones = self.bits.count_ones() as u64;
    }

    #[must_use]
    pub fn nbits(&self) -> u64 {
        self.bits.len() as u64
    }

    #[must_use]
    pub fn words(&self) -> &[u64] {
        self.bits.as_raw_slice()
    }

    /// The block range covering a byte range, clamped to the device.
    fn blocks(&self, offset: u64, len: u64) -> std::ops::Range<usize> {
        let first = offset / BM_BLOCK_SIZE;
        let end = (offset + len).div_ceil(BM_BLOCK_SIZE).min(self.nbits());
        let first = first.min(end);
        // Both are at most nbits, which came from a usize.
        let to_usize = |x: u64| usize::try_from(x).unwrap_or(usize::MAX);
        to_usize(first)..to_usize(end)
    }

    /// Mark a byte range dirty (whole blocks touched by it).
    pub fn set_range(&mut self, offset: u64, len: u64) {
        let r = self.blocks(offset, len);
        if let Some(s) = self.bits.get_mut(r) {
            let before = s.count_ones() as u64;
            s.fill(true);
            self.ones += s.len() as u64 - before;
        }
    }

    /// Clear the blocks a byte range covers completely or partially: used
    /// after a block range was resynced or found equal as a whole.
    pub fn clear_range(&mut self, offset: u64, len: u64) {
        let r = self.blocks(offset, len);
        if let Some(s) = self.bits.get_mut(r) {
            self.ones -= s.count_ones() as u64;
            s.fill(false);
        }
    }

    pub fn set_all(&mut self) {
        self.bits.fill(true);
        self.ones = self.nbits();
    }

    pub fn set_extent(&mut self, extent: u32) {
        let off = u64::from(extent) * BITS_PER_EXTENT * BM_BLOCK_SIZE;
        self.set_range(off, BITS_PER_EXTENT * BM_BLOCK_SIZE);
    }

    #[must_use]
    pub fn count(&self) -> u64 {
        self.ones
    }

    #[must_use]
    pub fn any_in(&self, offset: u64, len: u64) -> bool {
        let r = self.blocks(offset, len);
        self.bits.get(r).is_some_and(|s| s.any())
    }

    /// The first run of set bits at or after `from_bit`, at most `max_bits`
    /// long, as (first bit, count).
    #[must_use]
    pub fn next_run(&self, from_bit: u64, max_bits: u64) -> Option<(u64, u64)> {
        let from = usize::try_from(from_bit).ok()?;
        let tail = self.bits.get(from..)?;
        let first = tail.first_one()? + from;
        let rest = self.bits.get(first..)?;
        let run = rest.first_zero().unwrap_or(rest.len()) as u64;
        Some((first as u64, run.min(max_bits)))
    }

    /// OR in another bitmap's words (the resync set is the union).
    pub fn or_words(&mut self, words: &[u64]) {
        let n = self.bits.len();
        for (mine, theirs) in self.bits.as_raw_mut_slice().iter_mut().zip(words) {
            *mine |= *theirs;
        }
        // Bits past the end must stay clear: they are persisted with the words.
        let used = n % 64;
        if used != 0 {
            if let Some(last) = self.bits.as_raw_mut_slice().last_mut() {
                *last &= (1u64 << used) - 1;
            }
        }
        self.ones = self.bits.count_ones() as u64;
    }

    /// Words covering the given extent (for persisting it).
    #[must_use]
    pub fn extent_words(&self, extent: u32) -> (u64, Vec<u64>) {
        let words_per_extent = BITS_PER_EXTENT / 64;
        let first = u64::from(extent) * words_per_extent;
        let raw = self.words();
        let start = usize::try_from(first).unwrap_or(usize::MAX).min(raw.len());
        let end = start
            .saturating_add(words_per_extent as usize)
            .min(raw.len());
        (
            first,
            raw.get(start..end).map(<[u64]>::to_vec).unwrap_or_default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_count_matches_a_recount() {
        let mut b = Bitmap::from_words(1 << 30, &[0b1011, 0, u64::MAX]);
        assert_eq!(b.count(), 3 + 64);
        b.set_range(0, 64 * 4096);
        b.clear_range(4096 * 10, 4096 * 3);
        b.or_words(&[0, 0, 0, 0xff]);
        b.set_range((1 << 30) - 4096, 1 << 20);
        assert_eq!(b.count(), b.bits.count_ones() as u64);
        b.set_all();
        assert_eq!(b.count(), (1 << 30) / 4096);
    }
}
