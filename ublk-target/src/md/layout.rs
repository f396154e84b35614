//! Where the superblock, the activity log and the bitmap live.
//!
//! The metadata area is a run of 4 KiB blocks. With **internal** metadata it
//! is the tail of the backing disk, and the superblock is its *last* block so
//! that it can be found from the disk size alone (as DRBD does):
//!
//! ```text
//! backing disk: [ data (data_bytes) | bitmap pages | (slack) | AL ring | superblock ]
//!                 0                   ^md_offset = data_bytes            ^disk_end - 4096
//! ```
//!
//! `disk_end` is the disk size rounded down to 4 KiB. The slack is less than
//! one bitmap page and exists only when one more data block would need one
//! more bitmap page than there is room for.
//!
//! With **external** metadata the area is the whole metadata file and the
//! superblock is its *first* block; the whole backing disk holds data:
//!
//! ```text
//! metadata file: [ superblock | AL ring | bitmap pages ]
//!                  0            4096
//! ```
//!
//! The superblock records the offsets and sizes of the AL ring and the bitmap
//! (relative to the start of the area), so later versions may lay them out
//! differently without breaking old metadata.

use replication_proto::meta::BM_BLOCK_SIZE;

use crate::config::{AL_EXTENTS_MAX, AL_EXTENTS_MIN};

/// Metadata block size: every region starts and ends on this boundary.
pub const MD_BLOCK: u64 = 4096;
/// Number of slots in the activity-log ring.
pub const AL_SLOTS: u32 = 8;
/// Bytes of an AL transaction besides its extent numbers (header + crc).
pub const AL_TX_OVERHEAD: u64 = 24;
/// Size of one bitmap page on disk.
pub const BM_PAGE_BYTES: u64 = 4096;
/// Bytes at the start of each bitmap page before the words.
pub const BM_PAGE_HEADER: u64 = 16;
/// 64-bit bitmap words held by one page.
pub const BM_WORDS_PER_PAGE: u64 = (BM_PAGE_BYTES - BM_PAGE_HEADER) / 8;
/// Smallest data area we accept (smaller disks are refused as too small).
pub const MIN_DATA_BYTES: u64 = 1 << 20;

/// Whether the metadata shares the backing disk or has its own file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetaKind {
    /// At the end of the backing disk.
    Internal,
    /// In a separate file or device.
    External,
}

impl MetaKind {
    pub(crate) fn code(self) -> u32 {
        match self {
            MetaKind::Internal => 0,
            MetaKind::External => 1,
        }
    }
    pub(crate) fn from_code(c: u32) -> Option<Self> {
        match c {
            0 => Some(MetaKind::Internal),
            1 => Some(MetaKind::External),
            _ => None,
        }
    }
}

/// The geometry of one node's metadata. Offsets named `*_offset` other than
/// `md_offset` are relative to the start of the metadata area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Layout {
    pub kind: MetaKind,
    /// Bytes of replicated data (a multiple of 4096).
    pub data_bytes: u64,
    /// Absolute offset of the metadata area in the metadata file (internal:
    /// `data_bytes`, external: 0).
    pub md_offset: u64,
    /// Size of the metadata area (a multiple of 4096).
    pub md_bytes: u64,
    /// Capacity of one AL transaction, in extents.
    pub al_extents: u32,
    /// Number of AL ring slots.
    pub al_slots: u32,
    /// 4 KiB blocks per AL slot.
    pub al_slot_blocks: u32,
    /// Offset of the AL ring.
    pub al_offset: u64,
    /// Offset of the first bitmap page.
    pub bm_offset: u64,
    /// Number of bitmap pages.
    pub bm_pages: u64,
}

/// Bitmap pages needed to cover `data_bytes` (1 bit per 4 KiB).
#[must_use]
pub fn bm_pages_for(data_bytes: u64) -> u64 {
    bm_words_for(data_bytes).div_ceil(BM_WORDS_PER_PAGE)
}

/// Bitmap bits needed to cover `data_bytes`.
#[must_use]
pub fn bm_bits_for(data_bytes: u64) -> u64 {
    data_bytes.div_ceil(BM_BLOCK_SIZE)
}

/// 64-bit bitmap words needed to cover `data_bytes`.
#[must_use]
pub fn bm_words_for(data_bytes: u64) -> u64 {
    bm_bits_for(data_bytes).div_ceil(64)
}

/// 4 KiB blocks one AL slot needs to hold a transaction of `al_extents` extents.
#[must_use]
pub fn al_slot_blocks_for(al_extents: u32) -> u32 {
    let bytes = AL_TX_OVERHEAD + 4 * u64::from(al_extents);
    // At most (24 + 4 * 2^32) / 4096 + 1 < 2^23: fits.
    u32::try_from(bytes.div_ceil(MD_BLOCK)).unwrap_or(u32::MAX)
}

fn al_bytes_for(al_extents: u32) -> u64 {
    u64::from(AL_SLOTS) * u64::from(al_slot_blocks_for(al_extents)) * MD_BLOCK
}

/// Round down to a whole number of 4 KiB blocks.
#[must_use]
pub fn align_down(bytes: u64) -> u64 {
    bytes - bytes % MD_BLOCK
}

impl Layout {
    /// Internal metadata on a backing disk of `disk_bytes`: the largest data
    /// area such that `data_bytes + md_bytes <= disk_bytes`. `None` when the
    /// disk is smaller than [`Layout::min_internal_disk_bytes`].
    #[must_use]
    pub fn internal(disk_bytes: u64, al_extents: u32) -> Option<Layout> {
        let end = align_down(disk_bytes);
        let fixed = MD_BLOCK + al_bytes_for(al_extents);
        let room = end.checked_sub(fixed)?;
        // Total size for k data blocks; monotone in k. Binary search the
        // largest k with total(k) <= end.
        let total = |k: u64| k * MD_BLOCK + fixed + bm_pages_for(k * MD_BLOCK) * BM_PAGE_BYTES;
        let (mut lo, mut hi) = (0u64, room / MD_BLOCK);
        if total(hi) <= end {
            lo = hi;
        } else {
            // Invariant: total(lo) <= end < total(hi).
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if total(mid) <= end {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
        }
        let data_bytes = lo * MD_BLOCK;
        if data_bytes < MIN_DATA_BYTES {
            return None;
        }
        let bm_pages = bm_pages_for(data_bytes);
        let al_bytes = al_bytes_for(al_extents);
        // The area runs to the end of the disk so that the superblock is its
        // last block; any slack (less than one bitmap page's worth) sits
        // between the bitmap and the AL ring.
        let md_bytes = end - data_bytes;
        Some(Layout {
            kind: MetaKind::Internal,
            data_bytes,
            md_offset: data_bytes,
            md_bytes,
            al_extents,
            al_slots: AL_SLOTS,
            al_slot_blocks: al_slot_blocks_for(al_extents),
            al_offset: md_bytes - MD_BLOCK - al_bytes,
            bm_offset: 0,
            bm_pages,
        })
    }

    /// The smallest backing disk that can hold internal metadata and
    /// [`MIN_DATA_BYTES`] of data.
    #[must_use]
    pub fn min_internal_disk_bytes(al_extents: u32) -> u64 {
        MIN_DATA_BYTES
            + MD_BLOCK
            + al_bytes_for(al_extents)
            + bm_pages_for(MIN_DATA_BYTES) * BM_PAGE_BYTES
    }

    /// External metadata for a backing disk of `disk_bytes` (all of it, rounded
    /// down to 4 KiB, is data). `None` when that is below [`MIN_DATA_BYTES`].
    /// The metadata file must be at least `md_bytes` long.
    #[must_use]
    pub fn external(disk_bytes: u64, al_extents: u32) -> Option<Layout> {
        let data_bytes = align_down(disk_bytes);
        if data_bytes < MIN_DATA_BYTES {
            return None;
        }
        let al_bytes = al_bytes_for(al_extents);
        let bm_pages = bm_pages_for(data_bytes);
        Some(Layout {
            kind: MetaKind::External,
            data_bytes,
            md_offset: 0,
            md_bytes: MD_BLOCK + al_bytes + bm_pages * BM_PAGE_BYTES,
            al_extents,
            al_slots: AL_SLOTS,
            al_slot_blocks: al_slot_blocks_for(al_extents),
            al_offset: MD_BLOCK,
            bm_offset: MD_BLOCK + al_bytes,
            bm_pages,
        })
    }

    /// Offset of the superblock within the metadata area.
    #[must_use]
    pub fn sb_offset(&self) -> u64 {
        match self.kind {
            MetaKind::Internal => self.md_bytes.saturating_sub(MD_BLOCK),
            MetaKind::External => 0,
        }
    }

    /// Bytes of one AL slot.
    #[must_use]
    pub fn al_slot_bytes(&self) -> u64 {
        u64::from(self.al_slot_blocks) * MD_BLOCK
    }

    /// Bytes of the whole AL ring.
    #[must_use]
    pub fn al_bytes(&self) -> u64 {
        u64::from(self.al_slots) * self.al_slot_bytes()
    }

    /// Bits in the dirty bitmap (one per 4 KiB of data).
    #[must_use]
    pub fn bm_bits(&self) -> u64 {
        bm_bits_for(self.data_bytes)
    }

    /// 64-bit words in the in-memory bitmap.
    #[must_use]
    pub fn bm_words(&self) -> u64 {
        bm_words_for(self.data_bytes)
    }

    /// Bytes the bitmap pages occupy on disk.
    #[must_use]
    pub fn bm_bytes(&self) -> u64 {
        self.bm_pages * BM_PAGE_BYTES
    }

    /// Check that a layout read from disk is self-consistent; the message
    /// says what is not.
    ///
    /// # Errors
    /// A description of the first inconsistency.
    pub fn check(&self) -> Result<(), String> {
        let blk = |v: u64| v % MD_BLOCK == 0;
        if self.data_bytes == 0 || !blk(self.data_bytes) {
            return Err(format!(
                "data size {} is not a positive multiple of 4096",
                self.data_bytes
            ));
        }
        if !blk(self.md_bytes) || !blk(self.al_offset) || !blk(self.bm_offset) {
            return Err("metadata regions are not 4 KiB aligned".to_owned());
        }
        if !(AL_EXTENTS_MIN..=AL_EXTENTS_MAX).contains(&self.al_extents) {
            return Err(format!("al-extents {} is out of range", self.al_extents));
        }
        if self.al_slots < 2 {
            return Err(format!(
                "activity log has {} slots, at least 2 are needed",
                self.al_slots
            ));
        }
        if self.al_slot_blocks < al_slot_blocks_for(self.al_extents) {
            return Err("activity-log slots are too small for al-extents".to_owned());
        }
        if self.bm_pages < bm_pages_for(self.data_bytes) {
            return Err(format!(
                "{} bitmap pages cannot cover {} bytes of data",
                self.bm_pages, self.data_bytes
            ));
        }
        let expected_md_offset = match self.kind {
            MetaKind::Internal => self.data_bytes,
            MetaKind::External => 0,
        };
        if self.md_offset != expected_md_offset {
            return Err("metadata area offset is inconsistent".to_owned());
        }
        self.check_regions()
    }

    /// The regions [start, end) inside the metadata area fit in it and do
    /// not overlap each other or the superblock block.
    fn check_regions(&self) -> Result<(), String> {
        let sb = self.sb_offset();
        let regions = [
            ("superblock", sb, sb.checked_add(MD_BLOCK)),
            (
                "activity log",
                self.al_offset,
                self.al_offset.checked_add(self.al_bytes()),
            ),
            (
                "bitmap",
                self.bm_offset,
                self.bm_pages
                    .checked_mul(BM_PAGE_BYTES)
                    .and_then(|b| b.checked_add(self.bm_offset)),
            ),
        ];
        for (name, start, end) in regions {
            let Some(end) = end else {
                return Err(format!("{name} size overflows"));
            };
            if end > self.md_bytes {
                return Err(format!(
                    "{name} ends at {end}, past the metadata size {}",
                    self.md_bytes
                ));
            }
            for (other, ostart, oend) in regions {
                if other != name {
                    if let Some(oend) = oend {
                        if start < oend && ostart < end {
                            return Err(format!("{name} overlaps the {other}"));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn constants() {
        assert_eq!(BM_WORDS_PER_PAGE, 510);
        assert_eq!(al_slot_blocks_for(1237), 2);
        assert_eq!(al_slot_blocks_for(7), 1);
        assert_eq!(al_slot_blocks_for(1018), 1);
        assert_eq!(al_slot_blocks_for(1019), 2);
        assert_eq!(al_slot_blocks_for(65534), 65);
    }

    #[test]
    fn internal_64m() {
        let disk = 64 << 20;
        let l = Layout::internal(disk, 1237).unwrap();
        l.check().unwrap();
        assert!(l.data_bytes + l.md_bytes <= disk);
        assert_eq!(l.data_bytes % 4096, 0);
        assert_eq!(l.md_offset, l.data_bytes);
        assert_eq!(l.md_offset + l.sb_offset(), disk - 4096);
        // 1 bitmap page covers 510*64*4 KiB = 127.5 MiB: one is enough.
        assert_eq!(l.bm_pages, 1);
        // sb + 8 slots of 2 blocks + 1 bitmap page.
        assert_eq!(l.md_bytes, 4096 * (1 + 16 + 1));
        assert_eq!(l.data_bytes, disk - l.md_bytes);
    }

    #[test]
    fn internal_large_is_tight() {
        for disk in [
            1u64 << 40,
            (1 << 40) + 12345,
            10 << 30,
            127 << 20,
            (510 * 64 * 4096) + 4096 * 18,
        ] {
            let l = Layout::internal(disk, 1237).unwrap();
            l.check().unwrap();
            assert!(l.data_bytes + l.md_bytes <= disk);
            // One more data block would not fit.
            let more = l.data_bytes + 4096;
            assert!(
                more + 4096 * 17 + bm_pages_for(more) * 4096 > align_down(disk),
                "{disk}"
            );
        }
        let l = Layout::internal(1 << 40, 1237).unwrap();
        assert_eq!(l.bm_pages, bm_pages_for(l.data_bytes));
        assert!(l.bm_pages > 8000);
    }

    #[test]
    fn too_small() {
        let min = Layout::min_internal_disk_bytes(1237);
        assert!(Layout::internal(min, 1237).is_some());
        assert!(Layout::internal(min - 4096, 1237).is_none());
        assert!(Layout::internal(0, 1237).is_none());
        assert!(Layout::internal(4096, 1237).is_none());
        assert!(Layout::external(MIN_DATA_BYTES - 1, 1237).is_none());
    }

    #[test]
    fn external_layout() {
        let l = Layout::external((64 << 20) + 100, 65534).unwrap();
        l.check().unwrap();
        assert_eq!(l.data_bytes, 64 << 20);
        assert_eq!(l.md_offset, 0);
        assert_eq!(l.sb_offset(), 0);
        assert_eq!(l.al_offset, 4096);
        assert_eq!(l.bm_offset, 4096 + 8 * 65 * 4096);
        assert_eq!(l.md_bytes, l.bm_offset + 4096);
    }

    #[test]
    fn check_catches_nonsense() {
        let good = Layout::internal(64 << 20, 1237).unwrap();
        let mut l = good;
        l.bm_pages = 0;
        assert!(l.check().is_err());
        let mut l = good;
        l.al_offset = 0;
        assert!(l.check().unwrap_err().contains("overlaps"));
        let mut l = good;
        l.md_bytes -= 4096;
        assert!(l.check().is_err());
        let mut l = good;
        l.data_bytes += 1;
        assert!(l.check().is_err());
    }

    proptest! {
        #[test]
        fn internal_fits(disk in 0u64..(1u64 << 44), al in AL_EXTENTS_MIN..=AL_EXTENTS_MAX) {
            match Layout::internal(disk, al) {
                None => prop_assert!(disk < Layout::min_internal_disk_bytes(al)),
                Some(l) => {
                    prop_assert!(l.check().is_ok());
                    prop_assert!(l.data_bytes + l.md_bytes <= disk);
                    prop_assert_eq!(l.data_bytes % 4096, 0);
                    prop_assert!(l.bm_pages * BM_WORDS_PER_PAGE * 64 * 4096 >= l.data_bytes);
                    prop_assert!(l.bm_bits() * 4096 >= l.data_bytes);
                    // The superblock is the last whole block of the disk.
                    prop_assert_eq!(l.md_offset + l.sb_offset(), align_down(disk) - 4096);
                    // Maximal: one more data block does not fit.
                    let more = l.data_bytes + 4096;
                    prop_assert!(more + 4096 + l.al_bytes() + bm_pages_for(more) * 4096 > align_down(disk));
                }
            }
        }

        #[test]
        fn external_fits(disk in 0u64..(1u64 << 44), al in AL_EXTENTS_MIN..=AL_EXTENTS_MAX) {
            if let Some(l) = Layout::external(disk, al) {
                prop_assert!(l.check().is_ok());
                prop_assert!(l.data_bytes <= disk);
                prop_assert!(disk - l.data_bytes < 4096);
                prop_assert!(l.bm_bits() * 4096 >= l.data_bytes);
            } else {
                prop_assert!(disk < MIN_DATA_BYTES);
            }
        }
    }
}
