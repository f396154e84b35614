//! The 16-byte frame header and the frame's crc32c: checked as the bytes arrive.

use super::codes::{type_name, T_DATA, T_READ_REPLY, T_RESYNC_DATA};
use super::error::DecodeError;
use super::{DATA_FIXED_LEN, HEADER_LEN, MAGIC, MAX_PAYLOAD, RESYNC_DATA_FIXED_LEN};
use crate::wire::message::PROTOCOL_VERSION;

/// A decoded header, before the payload is checked.
#[derive(Debug, Clone, Copy)]
pub(super) struct Header {
    pub(super) ty: u8,
    pub(super) payload_len: usize,
    pub(super) crc: u32,
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes(s.try_into().ok()?))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(s.try_into().ok()?))
}

/// Checks as much of the header as `buf` holds. `Ok(None)`: the header is
/// not complete yet, but what is there is valid.
pub(super) fn parse_header(buf: &[u8]) -> Result<Option<Header>, DecodeError> {
    if let Some(magic) = le_u32(buf, 0) {
        if magic != MAGIC {
            return Err(DecodeError::BadMagic { found: magic });
        }
    } else {
        // Even a partial magic must match what is there.
        let want = MAGIC.to_le_bytes();
        if buf.iter().zip(want.iter()).any(|(a, b)| a != b) {
            let mut found = [0u8; 4];
            for (dst, src) in found.iter_mut().zip(buf) {
                *dst = *src;
            }
            return Err(DecodeError::BadMagic {
                found: u32::from_le_bytes(found),
            });
        }
        return Ok(None);
    }
    let Some(version) = le_u16(buf, 4) else {
        return Ok(None);
    };
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            peer: version,
            ours: PROTOCOL_VERSION,
        });
    }
    let Some(&ty) = buf.get(6) else {
        return Ok(None);
    };
    if type_name(ty).is_none() {
        return Err(DecodeError::UnknownType(ty));
    }
    let Some(&reserved) = buf.get(7) else {
        return Ok(None);
    };
    if reserved != 0 {
        return Err(DecodeError::ReservedNotZero(reserved));
    }
    let Some(len) = le_u32(buf, 8) else {
        return Ok(None);
    };
    let payload_len = match usize::try_from(len) {
        Ok(l) if l <= MAX_PAYLOAD => l,
        _ => {
            return Err(DecodeError::PayloadTooLarge {
                len,
                max: MAX_PAYLOAD,
            })
        }
    };
    let Some(crc) = le_u32(buf, 12) else {
        return Ok(None);
    };
    Ok(Some(Header {
        ty,
        payload_len,
        crc,
    }))
}

/// Checks the header and checksum of the frame at the start of `buf`.
/// Returns the header and the total frame length once all of it is there.
pub(super) fn check_frame(buf: &[u8]) -> Result<Option<(Header, usize)>, DecodeError> {
    let Some(h) = parse_header(buf)? else {
        return Ok(None);
    };
    let total = HEADER_LEN + h.payload_len;
    let (Some(before_crc), Some(payload)) = (buf.get(..12), buf.get(HEADER_LEN..total)) else {
        return Ok(None);
    };
    let computed = crate::checksum::crc32c_append(crate::checksum::crc32c(before_crc), payload);
    if computed != h.crc {
        return Err(DecodeError::ChecksumMismatch {
            stored: h.crc,
            computed,
        });
    }
    Ok(Some((h, total)))
}

/// What a frame header announces, from [`peek_frame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramePeek {
    /// Length of the whole frame, header included.
    pub total: usize,
    /// For `Data` / `ResyncData`: where the bulk data starts in the frame,
    /// so a reader can place it (e.g. at an aligned address for O_DIRECT).
    pub bulk_at: Option<usize>,
}

/// Reads the header at the start of `buf` (checked as [`FrameDecoder`](super::FrameDecoder)
/// checks it): `Ok(None)` if fewer than [`HEADER_LEN`] bytes are there.
/// The payload and its checksum are checked by [`decode_frame`](super::decode_frame).
pub fn peek_frame(buf: &[u8]) -> Result<Option<FramePeek>, DecodeError> {
    if buf.len() < HEADER_LEN {
        // Still refuses garbage early.
        parse_header(buf)?;
        return Ok(None);
    }
    let Some(h) = parse_header(buf)? else {
        return Ok(None);
    };
    let bulk_at = match h.ty {
        T_DATA => Some(HEADER_LEN + DATA_FIXED_LEN),
        T_RESYNC_DATA | T_READ_REPLY => Some(HEADER_LEN + RESYNC_DATA_FIXED_LEN),
        _ => None,
    };
    Ok(Some(FramePeek {
        total: HEADER_LEN + h.payload_len,
        bulk_at,
    }))
}
