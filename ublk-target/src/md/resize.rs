//! Growing the metadata for `repctl resize` (DRBD's online resize): the
//! data area grows, the bitmap grows with it, and internal metadata moves
//! to the new end of the disk.
//!
//! Crash safety (internal metadata). The old area is never written until
//! the switch, and the new area never overlaps it (a grow smaller than the
//! metadata area is refused), so at every step one complete layout is on
//! disk and `open` finds it:
//!
//! 1. **locator**: a 512-byte sector at the *new* superblock's place (the
//!    new end) saying where the old superblock is (`RUBLK-MV`, offset,
//!    crc32c); `open` follows it, so a node that crashes from here on starts
//!    on the old layout;
//! 2. **activity log**: the AL ring copied to its new place;
//! 3. **bitmap**: every page of the grown bitmap written, then fdatasync;
//! 4. **switch**: the new superblock written over the locator, one aligned
//!    sector write + fdatasync: the commit point (a sector is written whole,
//!    see [`super::superblock`]);
//! 5. **cleanup**: the old superblock sector zeroed (it is data now).
//!
//! External metadata only grows its file and the bitmap at its end (the
//! old pages stay where they are), then switches the superblock at its
//! start with the same single-sector write.
//!
//! The steps are numbered for the test hook [`GrowOptions::stop_after_step`]:
//! stop right after step N as if the process had died there.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::layout::{align_down, Layout, MetaKind, MD_BLOCK, MIN_DATA_BYTES};
use super::{io_err, open_existing, size_of, to_usize, MdError, MetaDevice, SB_BYTES};

/// Magic of the locator sector written at the new end during a move.
pub const LOCATOR_MAGIC: u64 = u64::from_le_bytes(*b"RUBLK-MV");
/// Steps of an internal move (see the module documentation).
pub const GROW_STEPS: u32 = 5;

/// How [`MetaDevice::grow`] marks the new region and where it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrowOptions {
    /// The grown region is known identical on both nodes (`--assume-clean`):
    /// its bits stay clear. The old internal metadata area, which becomes
    /// data, is always marked (the two nodes' copies differ).
    pub assume_clean: bool,
    /// Test only: return an error right after this step, writing nothing
    /// more, as a crash there would (see the module documentation).
    pub stop_after_step: Option<u32>,
}

/// The locator sector: magic, the old superblock's absolute offset, crc32c.
fn encode_locator(old_sb_abs: u64) -> [u8; SB_BYTES] {
    let mut buf = [0u8; SB_BYTES];
    let mut v = Vec::with_capacity(20);
    v.extend_from_slice(&LOCATOR_MAGIC.to_le_bytes());
    v.extend_from_slice(&old_sb_abs.to_le_bytes());
    let crc = crc32c::crc32c(&v);
    v.extend_from_slice(&crc.to_le_bytes());
    if let Some(dst) = buf.get_mut(..v.len()) {
        dst.copy_from_slice(&v);
    }
    buf
}

/// Where a locator sector points, if `buf` is one and intact.
fn decode_locator(buf: &[u8; SB_BYTES]) -> Option<u64> {
    let (magic, rest) = buf.split_first_chunk::<8>()?;
    let (offset, rest) = rest.split_first_chunk::<8>()?;
    let (crc, _) = rest.split_first_chunk::<4>()?;
    let body = buf.get(..16)?;
    (u64::from_le_bytes(*magic) == LOCATOR_MAGIC
        && u32::from_le_bytes(*crc) == crc32c::crc32c(body))
    .then(|| u64::from_le_bytes(*offset))
}

/// Where the superblock really is when `sb_abs` (the disk's last block)
/// holds a locator left by an interrupted move: the old superblock. A
/// locator pointing at or past itself is ignored (the caller then reports
/// what it finds at `sb_abs`).
pub(super) fn follow_locator(file: &File, path: &Path, sb_abs: u64) -> Result<u64, MdError> {
    let mut buf = [0u8; SB_BYTES];
    match file.read_exact_at(&mut buf, sb_abs) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(sb_abs),
        Err(e) => return Err(io_err("read the superblock of", path)(e)),
    }
    match decode_locator(&buf) {
        Some(old) if old < sb_abs && old % MD_BLOCK == 0 => {
            tracing::warn!(
                path = %path.display(),
                old_superblock = old,
                "a metadata move (repctl resize) was interrupted: using the old layout; run repctl resize again"
            );
            Ok(old)
        }
        _ => Ok(sb_abs),
    }
}

impl Layout {
    /// Internal metadata at the end of a disk of `disk_bytes` with exactly
    /// `data_bytes` of data (at most what [`Layout::internal`] allows; the
    /// rest is slack between the bitmap and the AL, as there).
    #[must_use]
    pub fn internal_sized(disk_bytes: u64, al_extents: u32, data_bytes: u64) -> Option<Layout> {
        let max = Layout::internal(disk_bytes, al_extents)?;
        if data_bytes > max.data_bytes || data_bytes < MIN_DATA_BYTES || data_bytes % MD_BLOCK != 0
        {
            return None;
        }
        let md_bytes = align_down(disk_bytes) - data_bytes;
        Some(Layout {
            data_bytes,
            md_offset: data_bytes,
            md_bytes,
            al_offset: md_bytes - MD_BLOCK - max.al_bytes(),
            bm_pages: super::layout::bm_pages_for(data_bytes),
            ..max
        })
    }
}

/// The largest data size the backing disk (and for external metadata, its
/// data disk) allows now, for metadata of this kind and AL size.
///
/// # Errors
/// I/O errors, or [`MdError::TooSmall`].
pub fn room_bytes(location: &super::MetaLocation, al_extents: u32) -> Result<u64, MdError> {
    let disk = &location.disk;
    let size = size_of(&open_existing(disk, false)?, disk)?;
    let room = match location.meta_disk {
        crate::config::MetaDisk::Internal => {
            Layout::internal(size, al_extents).map(|l| l.data_bytes)
        }
        crate::config::MetaDisk::External(_) => Some(align_down(size)),
    };
    room.ok_or_else(|| MdError::TooSmall {
        path: disk.clone(),
        size,
        min: Layout::min_internal_disk_bytes(al_extents),
        what: "the metadata",
    })
}

impl MetaDevice {
    /// Grow the data area to `data_bytes` (see the module documentation for
    /// the steps and why a crash at any of them is safe). The new bits are
    /// set (out of sync) unless `opts.assume_clean`. Returns the new layout.
    ///
    /// # Errors
    /// [`MdError::Invalid`] when `data_bytes` does not grow the data, does
    /// not fit the disk, or the grow is too small to move internal metadata
    /// without overwriting it; I/O errors.
    pub fn grow(
        &mut self,
        location: &super::MetaLocation,
        data_bytes: u64,
        opts: GrowOptions,
    ) -> Result<Layout, MdError> {
        self.check_writable()?;
        let old = self.sb.layout;
        if data_bytes <= old.data_bytes || data_bytes % MD_BLOCK != 0 {
            return Err(MdError::Invalid(format!(
                "the new data size {data_bytes} must be a multiple of 4096 above the current {}",
                old.data_bytes
            )));
        }
        let new = self.grown_layout(location, data_bytes)?;
        let mut words = self.bitmap.clone();
        words.resize(to_usize(new.bm_words(), "the bitmap")?, 0);
        let dirty_to = dirty_end(&old, data_bytes, opts.assume_clean);
        set_bits(&mut words, old.data_bytes / MD_BLOCK, dirty_to / MD_BLOCK);
        match old.kind {
            MetaKind::Internal => self.move_internal(new, words, opts.stop_after_step)?,
            MetaKind::External => self.grow_external(new, words, opts.stop_after_step)?,
        }
        Ok(new)
    }

    fn grown_layout(
        &self,
        location: &super::MetaLocation,
        data_bytes: u64,
    ) -> Result<Layout, MdError> {
        let old = self.sb.layout;
        let disk = &location.disk;
        let disk_bytes = size_of(&open_existing(disk, false)?, disk)?;
        let new = match old.kind {
            MetaKind::Internal => Layout::internal_sized(disk_bytes, old.al_extents, data_bytes),
            MetaKind::External => Layout::external(data_bytes, old.al_extents)
                .filter(|_| data_bytes <= align_down(disk_bytes)),
        };
        let new = new.ok_or_else(|| {
            MdError::Invalid(format!(
                "{data_bytes} bytes of data do not fit {} ({disk_bytes} bytes); grow the disk first \
                 (truncate -s, lvextend)",
                disk.display()
            ))
        })?;
        if new.kind == MetaKind::Internal && new.md_offset < old.md_offset + old.md_bytes {
            return Err(MdError::Invalid(format!(
                "the disk grew by too little to move the metadata ({} bytes) without overwriting \
                 it: grow it by at least {} bytes more",
                old.md_bytes,
                old.md_offset + old.md_bytes - new.md_offset
            )));
        }
        Ok(new)
    }

    fn stop_if(step: u32, stop_after: Option<u32>) -> Result<(), MdError> {
        if stop_after == Some(step) {
            return Err(MdError::Invalid(format!(
                "metadata move stopped after step {step} (test hook)"
            )));
        }
        Ok(())
    }

    fn move_internal(
        &mut self,
        new: Layout,
        words: Vec<u64>,
        stop_after: Option<u32>,
    ) -> Result<(), MdError> {
        let old = self.sb.layout;
        let old_sb_abs = self.superblock_offset();
        let new_sb_abs = new.md_offset + new.sb_offset();
        let path = self.path.clone();
        let sync = |f: &File| f.sync_data().map_err(io_err("sync", &path));
        // 1: the locator, so a crash from here on finds the old layout.
        self.file
            .write_all_at(&encode_locator(old_sb_abs), new_sb_abs)
            .map_err(io_err("write the metadata locator of", &path))?;
        sync(&self.file)?;
        Self::stop_if(1, stop_after)?;
        // 2: the AL ring, byte for byte (its slots do not depend on where
        // the ring is).
        let mut ring = vec![0u8; to_usize(old.al_bytes(), "the AL")?];
        self.file
            .read_exact_at(&mut ring, old.md_offset + old.al_offset)
            .map_err(io_err("read the activity log of", &path))?;
        self.file
            .write_all_at(&ring, new.md_offset + new.al_offset)
            .map_err(io_err("write the activity log of", &path))?;
        Self::stop_if(2, stop_after)?;
        // 3: the grown bitmap at its new place.
        self.write_pages_of(new, &words)?;
        sync(&self.file)?;
        Self::stop_if(3, stop_after)?;
        // 4: the switch.
        self.switch_to(new, words)?;
        Self::stop_if(4, stop_after)?;
        // 5: the old superblock is data now; leave no second one behind.
        self.file
            .write_all_at(&[0u8; SB_BYTES], old_sb_abs)
            .map_err(io_err("clear the old superblock of", &path))?;
        sync(&self.file)
    }

    fn grow_external(
        &mut self,
        new: Layout,
        words: Vec<u64>,
        stop_after: Option<u32>,
    ) -> Result<(), MdError> {
        let path = self.path.clone();
        let have = size_of(&self.file, &path)?;
        if have < new.md_bytes {
            if !self
                .file
                .metadata()
                .map_err(io_err("stat", &path))?
                .is_file()
            {
                return Err(MdError::TooSmall {
                    path,
                    size: have,
                    min: new.md_bytes,
                    what: "the grown metadata",
                });
            }
            self.file
                .set_len(new.md_bytes)
                .map_err(io_err("extend", &path))?;
        }
        Self::stop_if(1, stop_after)?;
        self.write_pages_of(new, &words)?;
        self.file.sync_data().map_err(io_err("sync", &path))?;
        Self::stop_if(3, stop_after)?;
        self.switch_to(new, words)
    }

    /// Every bitmap page of `layout` from `words` (no sync).
    fn write_pages_of(&mut self, layout: Layout, words: &[u64]) -> Result<(), MdError> {
        let (old_sb, old_bm) = (self.sb.clone(), std::mem::take(&mut self.bitmap));
        self.sb.layout = layout;
        self.bitmap = words.to_vec();
        super::mask_tail(&mut self.bitmap, layout.bm_bits());
        let r = self.write_bitmap_pages(0, layout.bm_pages);
        self.sb = old_sb;
        self.bitmap = old_bm;
        r
    }

    /// The commit point: the superblock of `layout` at its place.
    fn switch_to(&mut self, layout: Layout, words: Vec<u64>) -> Result<(), MdError> {
        let mut sb = self.sb.clone();
        sb.layout = layout;
        sb.seq = self.sb.seq.wrapping_add(1);
        let at = layout.md_offset + layout.sb_offset();
        self.file
            .write_all_at(&sb.encode(), at)
            .map_err(io_err("write the superblock of", &self.path))?;
        self.file.sync_data().map_err(io_err("sync", &self.path))?;
        self.sb = sb;
        self.bitmap = words;
        super::mask_tail(&mut self.bitmap, layout.bm_bits());
        Ok(())
    }
}

/// Where the bits a grow of `old` to `data_bytes` marks end (they start at
/// the old data end): the whole new region, or with `assume_clean` only
/// the old internal metadata area, which is data now and differs between
/// the nodes.
#[must_use]
pub fn dirty_end(old: &Layout, data_bytes: u64, assume_clean: bool) -> u64 {
    match (assume_clean, old.kind) {
        (false, _) => data_bytes,
        (true, MetaKind::Internal) => (old.md_offset + old.md_bytes).min(data_bytes),
        (true, MetaKind::External) => old.data_bytes,
    }
}

/// Set bits `from..to` of `words` (bits past the end are ignored); whole
/// words at once, a grow can add millions of bits.
fn set_bits(words: &mut [u64], from: u64, to: u64) {
    let mut bit = from;
    while bit < to {
        let Ok(w) = usize::try_from(bit / 64) else {
            return;
        };
        let Some(word) = words.get_mut(w) else {
            return;
        };
        let lo = bit % 64;
        let hi = (to - (bit - lo)).min(64);
        let mask = if hi == 64 { u64::MAX } else { (1u64 << hi) - 1 } & (u64::MAX << lo);
        *word |= mask;
        bit = bit - lo + 64;
    }
}

#[cfg(test)]
#[path = "resize_tests.rs"]
mod tests;
