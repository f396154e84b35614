//! The superblock: one 512-byte sector naming the resource, the node, the
//! layout, the generation identifiers and the persistent flags.
//!
//! It is always written as a single 512-byte write at a 4 KiB-aligned offset,
//! followed by `fdatasync`. Like DRBD we rely on the storage writing a single
//! sector atomically: after a crash the sector holds either the old or the new
//! superblock, never a mix. (Buffered writes go out as the whole 4 KiB page,
//! but the other seven sectors of that page are always zero and never change,
//! so a torn page write cannot tear the superblock sector itself.) The crc32c
//! at the end catches anything else.
//!
//! Encoding (little-endian):
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 8 | magic `"RUBLK-MD"` |
//! | 8 | 4 | format version (1) |
//! | 12 | 4 | kind: 0 internal, 1 external |
//! | 16 | 8 | seq (incremented on every write) |
//! | 24 | 64 | resource name, NUL padded (≤ 63 bytes) |
//! | 88 | 64 | node name, NUL padded (≤ 63 bytes) |
//! | 152 | 8 | data_bytes |
//! | 160 | 8 | md_bytes |
//! | 168 | 4 | al_extents |
//! | 172 | 4 | al_slots |
//! | 176 | 4 | al_slot_blocks |
//! | 180 | 4 | device id |
//! | 184 | 8 | al_offset (in the metadata area) |
//! | 192 | 8 | bm_offset (in the metadata area) |
//! | 200 | 8 | bm_pages |
//! | 208 | 32 | generations: current, bitmap, history\[0\], history\[1\] |
//! | 240 | 4 | flags ([`MetaFlags`]) |
//! | 244 | 256 | reserved, zero |
//! | 500 | 8 | promoted_at_ms: when the node last became Primary (wall-clock ms since the epoch, 0: never) |
//! | 508 | 4 | crc32c of bytes 0..508 |
//!
//! `promoted_at_ms` was added inside format version 1, in bytes that were
//! reserved and zero: older metadata reads as "never promoted" (the
//! discard-younger/older-primary policies then fall back to
//! discard-least-changes), and an older repd ignores the field. It sits at
//! the end of the reserved bytes so that fields added at their start do not
//! collide with it.

use std::path::Path;

use replication_proto::gen::Generations;
use replication_proto::meta::MetaFlags;

use super::layout::{Layout, MetaKind};
use super::MdError;
use crate::config::NAME_MAX;

/// Magic number at the start of the superblock.
pub const SB_MAGIC: u64 = u64::from_le_bytes(*b"RUBLK-MD");
/// The on-disk format this build writes and understands.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the encoded superblock: one sector.
pub const SB_BYTES: usize = 512;
const CRC_AT: usize = SB_BYTES - 4;
const NAME_FIELD: usize = NAME_MAX + 1;

/// The decoded superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub format_version: u32,
    /// Write counter; [`super::MetaDevice::write_superblock`] bumps it.
    pub seq: u64,
    pub resource: String,
    pub node: String,
    pub layout: Layout,
    pub generations: Generations,
    pub flags: MetaFlags,
    /// ublk device id recorded at create-md time (informational).
    pub device_id: u32,
    /// When the node last became Primary (wall-clock ms since the epoch;
    /// 0: never, or metadata written by an older repd).
    pub promoted_at_ms: u64,
}

/// Where `promoted_at_ms` sits in the sector.
const PROMOTED_AT: usize = 500;

fn put_name(out: &mut Vec<u8>, name: &str) {
    let bytes = name.as_bytes();
    let n = bytes.len().min(NAME_MAX);
    out.extend_from_slice(bytes.get(..n).unwrap_or_default());
    out.resize(out.len() + (NAME_FIELD - n), 0);
}

/// A little-endian reader over a byte slice.
struct Rd<'a>(&'a [u8]);

impl<'a> Rd<'a> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, tail) = self.0.split_first_chunk::<N>()?;
        self.0 = tail;
        Some(*head)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take::<4>().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take::<8>().map(u64::from_le_bytes)
    }
    fn name(&mut self) -> Option<Result<String, ()>> {
        let raw = self.take::<NAME_FIELD>()?;
        let end = raw.iter().position(|&b| b == 0).unwrap_or(NAME_FIELD);
        if end > NAME_MAX {
            return Some(Err(()));
        }
        Some(
            std::str::from_utf8(raw.get(..end).unwrap_or_default())
                .map(str::to_owned)
                .map_err(|_| ()),
        )
    }
}

/// Read the stored magic of an encoded superblock.
#[must_use]
pub fn magic_of(buf: &[u8; SB_BYTES]) -> u64 {
    Rd(buf).u64().unwrap_or(0)
}

/// (stored, computed) checksum of an encoded superblock.
#[must_use]
pub fn checksums_of(buf: &[u8; SB_BYTES]) -> (u32, u32) {
    let (body, tail) = buf.split_at(CRC_AT);
    let stored = Rd(tail).u32().unwrap_or(0);
    (stored, crc32c::crc32c(body))
}

impl Superblock {
    /// Encode into one sector, crc included.
    #[must_use]
    pub fn encode(&self) -> [u8; SB_BYTES] {
        let l = &self.layout;
        let mut v = Vec::with_capacity(SB_BYTES);
        v.extend_from_slice(&SB_MAGIC.to_le_bytes());
        v.extend_from_slice(&self.format_version.to_le_bytes());
        v.extend_from_slice(&l.kind.code().to_le_bytes());
        v.extend_from_slice(&self.seq.to_le_bytes());
        put_name(&mut v, &self.resource);
        put_name(&mut v, &self.node);
        v.extend_from_slice(&l.data_bytes.to_le_bytes());
        v.extend_from_slice(&l.md_bytes.to_le_bytes());
        v.extend_from_slice(&l.al_extents.to_le_bytes());
        v.extend_from_slice(&l.al_slots.to_le_bytes());
        v.extend_from_slice(&l.al_slot_blocks.to_le_bytes());
        v.extend_from_slice(&self.device_id.to_le_bytes());
        v.extend_from_slice(&l.al_offset.to_le_bytes());
        v.extend_from_slice(&l.bm_offset.to_le_bytes());
        v.extend_from_slice(&l.bm_pages.to_le_bytes());
        let g = &self.generations;
        for u in [g.current, g.bitmap, g.history[0], g.history[1]] {
            v.extend_from_slice(&u.to_le_bytes());
        }
        v.extend_from_slice(&self.flags.0.to_le_bytes());
        v.resize(PROMOTED_AT, 0);
        v.extend_from_slice(&self.promoted_at_ms.to_le_bytes());
        let crc = crc32c::crc32c(&v);
        v.extend_from_slice(&crc.to_le_bytes());
        let mut out = [0u8; SB_BYTES];
        out.copy_from_slice(&v);
        out
    }

    /// Decode and check one sector read from `path` at `offset` (both only for
    /// messages). Checks, in order: magic, checksum, format version, field
    /// sanity and layout consistency.
    ///
    /// # Errors
    /// [`MdError::NoMetadata`], [`MdError::Checksum`],
    /// [`MdError::UnsupportedVersion`] or [`MdError::BadLayout`].
    pub fn decode(buf: &[u8; SB_BYTES], path: &Path, offset: u64) -> Result<Superblock, MdError> {
        if magic_of(buf) != SB_MAGIC {
            return Err(MdError::NoMetadata {
                path: path.to_owned(),
                offset,
            });
        }
        let mut r = Rd(buf);
        let bad = |message: &str| MdError::BadLayout {
            path: path.to_owned(),
            message: message.to_owned(),
        };
        let short = || bad("superblock too short");
        let _magic = r.u64().ok_or_else(short)?;
        let format_version = r.u32().ok_or_else(short)?;
        check_sum_and_version(buf, path, offset, format_version)?;
        let kind_code = r.u32().ok_or_else(short)?;
        let kind = MetaKind::from_code(kind_code)
            .ok_or_else(|| bad(&format!("unknown metadata kind {kind_code}")))?;
        let seq = r.u64().ok_or_else(short)?;
        let resource = r
            .name()
            .ok_or_else(short)?
            .map_err(|()| bad("resource name is not valid"))?;
        let node = r
            .name()
            .ok_or_else(short)?
            .map_err(|()| bad("node name is not valid"))?;
        let (layout, device_id) = read_layout(&mut r, kind).ok_or_else(short)?;
        let current = r.u64().ok_or_else(short)?;
        let bitmap = r.u64().ok_or_else(short)?;
        let h0 = r.u64().ok_or_else(short)?;
        let h1 = r.u64().ok_or_else(short)?;
        let flags = MetaFlags(r.u32().ok_or_else(short)?);
        let promoted_at_ms = Rd(buf.get(PROMOTED_AT..).unwrap_or_default())
            .u64()
            .ok_or_else(short)?;
        layout.check().map_err(|m| bad(&m))?;
        Ok(Superblock {
            format_version,
            seq,
            resource,
            node,
            layout,
            generations: Generations {
                current,
                bitmap,
                history: [h0, h1],
            },
            flags,
            device_id,
            promoted_at_ms,
        })
    }
}

/// The checksum first (a torn or damaged block), then the version: a
/// newer format is refused, not misread.
fn check_sum_and_version(
    buf: &[u8; SB_BYTES],
    path: &Path,
    offset: u64,
    format_version: u32,
) -> Result<(), MdError> {
    let (stored, computed) = checksums_of(buf);
    if stored != computed {
        return Err(MdError::Checksum {
            path: path.to_owned(),
            offset,
            stored,
            computed,
            version: format_version,
        });
    }
    if format_version != FORMAT_VERSION {
        return Err(MdError::UnsupportedVersion {
            path: path.to_owned(),
            found: format_version,
            supported: FORMAT_VERSION,
        });
    }
    Ok(())
}

/// The layout fields of a superblock (and the device id stored among
/// them), unchecked; `None` when the block is too short.
fn read_layout(r: &mut Rd<'_>, kind: MetaKind) -> Option<(Layout, u32)> {
    let data_bytes = r.u64()?;
    let md_bytes = r.u64()?;
    let al_extents = r.u32()?;
    let al_slots = r.u32()?;
    let al_slot_blocks = r.u32()?;
    let device_id = r.u32()?;
    let layout = Layout {
        kind,
        data_bytes,
        md_offset: match kind {
            MetaKind::Internal => data_bytes,
            MetaKind::External => 0,
        },
        md_bytes,
        al_extents,
        al_slots,
        al_slot_blocks,
        al_offset: r.u64()?,
        bm_offset: r.u64()?,
        bm_pages: r.u64()?,
    };
    Some((layout, device_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        Superblock {
            format_version: FORMAT_VERSION,
            seq: 42,
            resource: "r0".into(),
            node: "alpha".into(),
            layout: Layout::internal(64 << 20, 1237).unwrap(),
            generations: Generations {
                current: 0x1111,
                bitmap: 0x2222,
                history: [0x3333, 0x4444],
            },
            flags: MetaFlags(MetaFlags::CONSISTENT | MetaFlags::AL_CLEAN),
            device_id: 7,
            promoted_at_ms: 1_765_000_000_123,
        }
    }

    /// Metadata from before `promoted_at_ms` (zero reserved bytes, the
    /// same version) still reads, as never promoted.
    #[test]
    fn metadata_without_promotion_time_reads() {
        let mut sb = sample();
        sb.promoted_at_ms = 0;
        let mut buf = sb.encode();
        assert!(buf[244..508].iter().all(|&b| b == 0));
        let crc = crc32c::crc32c(&buf[..CRC_AT]);
        buf[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        let back = Superblock::decode(&buf, Path::new("x"), 0).unwrap();
        assert_eq!(back.promoted_at_ms, 0);
        assert_eq!(back.generations, sb.generations);
    }

    #[test]
    fn round_trip() {
        let sb = sample();
        let buf = sb.encode();
        assert_eq!(&buf[..8], b"RUBLK-MD");
        let back = Superblock::decode(&buf, Path::new("x"), 0).unwrap();
        assert_eq!(back, sb);
        let mut ext = sample();
        ext.layout = Layout::external(1 << 30, 65534).unwrap();
        ext.resource = "r".repeat(63);
        ext.node = "n".repeat(63);
        let back = Superblock::decode(&ext.encode(), Path::new("x"), 0).unwrap();
        assert_eq!(back, ext);
    }

    #[test]
    fn every_byte_is_covered() {
        let buf = sample().encode();
        for i in 8..SB_BYTES {
            let mut b = buf;
            b[i] ^= 0x01;
            let e = Superblock::decode(&b, Path::new("f"), 9).unwrap_err();
            assert!(e.to_string().contains("checksum"), "byte {i}: {e}");
        }
        let mut b = buf;
        b[0] ^= 0x01;
        let e = Superblock::decode(&b, Path::new("f"), 9).unwrap_err();
        assert!(matches!(e, MdError::NoMetadata { .. }), "{e}");
    }

    #[test]
    fn newer_version_refused() {
        let mut sb = sample();
        sb.format_version = 2;
        let e = Superblock::decode(&sb.encode(), Path::new("f"), 0).unwrap_err();
        assert!(
            matches!(e, MdError::UnsupportedVersion { found: 2, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("version 2"), "{e}");
    }

    #[test]
    fn inconsistent_layout_refused() {
        let mut sb = sample();
        sb.layout.bm_pages = 0;
        let e = Superblock::decode(&sb.encode(), Path::new("f"), 0).unwrap_err();
        assert!(matches!(e, MdError::BadLayout { .. }), "{e}");
    }
}
