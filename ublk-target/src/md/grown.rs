//! Internal metadata of a disk that grew while repd was stopped (lvextend,
//! `truncate -s`): it is no longer at the end, where `open` looks first.
//!
//! DRBD keeps the last known size of the backing disk in `/var/lib/drbd`
//! and `drbdmeta check-resize` finds the metadata there. rep keeps no state
//! outside the disk, so it looks for the superblock below the new end: a
//! superblock is recognised only when everything it says checks out at the
//! place it is found (magic, format, crc32c, internal kind, this resource
//! and node, and a layout whose superblock is exactly that sector and whose
//! data plus metadata end right after it), so a stray copy of one (in a
//! disk image stored as data, say) at any other offset is never taken.
//! The search reads at most [`GROWN_SEARCH_BYTES`] below the end: beyond
//! that the error says how to recover by hand.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::layout::{MetaKind, MD_BLOCK};
use super::superblock::{magic_of, SB_MAGIC};
use super::{io_err, to_usize, MdError, Superblock, SB_BYTES};

/// How far below the superblock's place at the end the search goes: how
/// much a disk may have grown while repd was stopped.
pub const GROWN_SEARCH_BYTES: u64 = 64 << 30;
/// Read size of the search.
const CHUNK_BYTES: u64 = 1 << 20;
/// How often the search logs how far it got.
const REPORT_EVERY_BYTES: u64 = 4 << 30;

/// The superblock of `resource`/`node` at the highest 4 KiB block below
/// `end_sb` (where it would be if the disk had not grown), with its offset.
///
/// # Errors
/// I/O errors reading the disk.
pub(super) fn find_below(
    file: &File,
    path: &Path,
    end_sb: u64,
    resource: &str,
    node: &str,
) -> Result<Option<(u64, Superblock)>, MdError> {
    let lowest = end_sb.saturating_sub(GROWN_SEARCH_BYTES);
    // On a disk that never had `create-md` the search reads all of this
    // before it can say so, minutes on a slow disk, while `repctl up`
    // gives up waiting after 20 s: say at once what is going on.
    tracing::warn!(
        path = %path.display(),
        search_bytes = end_sb - lowest,
        pid = std::process::id(),
        "no metadata at the end of the disk: looking below the end for the metadata of a disk \
         that grew while repd was stopped, reading up to {} MiB; a new disk needs `repctl \
         create-md` instead (stop this repd with `kill {}`)",
        (end_sb - lowest) >> 20,
        std::process::id()
    );
    let mut buf = vec![0u8; to_usize(CHUNK_BYTES, "a read buffer")?];
    let mut hi = end_sb;
    let mut next_report = end_sb.saturating_sub(REPORT_EVERY_BYTES);
    while hi > lowest {
        if hi <= next_report {
            tracing::info!(
                path = %path.display(),
                searched_bytes = end_sb - hi,
                search_bytes = end_sb - lowest,
                "still looking for the metadata of a grown disk"
            );
            next_report = hi.saturating_sub(REPORT_EVERY_BYTES);
        }
        let lo = hi.saturating_sub(CHUNK_BYTES).max(lowest);
        let chunk = buf
            .get_mut(..to_usize(hi - lo, "a read")?)
            .ok_or_else(|| MdError::Invalid("read size".into()))?;
        file.read_exact_at(chunk, lo)
            .map_err(io_err("look for the metadata in", path))?;
        // From the top: the newest layout is the highest (a move that
        // stopped between its switch and its cleanup leaves both).
        let mut at = hi - MD_BLOCK;
        loop {
            let rel = to_usize(at - lo, "an offset")?;
            if let Some(sector) = chunk
                .get(rel..rel + SB_BYTES)
                .and_then(|s| <&[u8; SB_BYTES]>::try_from(s).ok())
            {
                if let Some(sb) = ours(sector, path, at, resource, node) {
                    return Ok(Some((at, sb)));
                }
            }
            if at < lo + MD_BLOCK {
                break;
            }
            at -= MD_BLOCK;
        }
        hi = lo;
    }
    Ok(None)
}

/// The superblock in `sector` when it is one of ours and describes
/// internal metadata whose superblock is at `at`.
fn ours(
    sector: &[u8; SB_BYTES],
    path: &Path,
    at: u64,
    resource: &str,
    node: &str,
) -> Option<Superblock> {
    if magic_of(sector) != SB_MAGIC {
        return None;
    }
    let sb = Superblock::decode(sector, path, at).ok()?;
    let l = sb.layout;
    let here = l.kind == MetaKind::Internal
        && l.md_offset.checked_add(l.sb_offset()) == Some(at)
        && l.data_bytes.checked_add(l.md_bytes) == at.checked_add(MD_BLOCK)
        && sb.resource == resource
        && sb.node == node;
    if !here {
        tracing::warn!(
            path = %path.display(),
            offset = at,
            "a superblock that is not this node's metadata here (a copy stored as data?): ignored"
        );
        return None;
    }
    Some(sb)
}
