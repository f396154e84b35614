//! Activity-log transactions.
//!
//! The activity log names the 4 MiB extents that may have writes in flight, so
//! that after a crash of a Primary only those extents need resyncing. It is a
//! ring of [`super::layout::AL_SLOTS`] slots; transaction `seq` goes to slot
//! `seq % slots` and replaces the transaction `slots` steps older. Each slot
//! holds one complete transaction (all active extents), so reading needs only
//! the newest valid slot.
//!
//! Slot encoding (little-endian), padded with zeros to whole 4 KiB blocks:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 4 | magic `"ALtx"` |
//! | 4 | 4 | reserved, zero |
//! | 8 | 8 | seq |
//! | 16 | 4 | n, the number of extents |
//! | 20 | 4·n | extent numbers |
//! | 20+4n | 4 | crc32c of bytes 0..20+4n |
//!
//! A slot whose magic or crc is wrong (a torn write) is ignored. That is safe
//! because a data write never starts before the AL transaction covering it has
//! been written and synced, so the previous transaction still covers every
//! write that could have reached the disk.

/// Magic at the start of a valid AL slot.
pub const AL_MAGIC: u32 = u32::from_le_bytes(*b"ALtx");

/// What the activity log says: the newest valid transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AlState {
    /// Sequence number of the newest valid transaction (0 after create-md).
    pub seq: u64,
    /// The extents (4 MiB units of the data area) active in it.
    pub extents: Vec<u32>,
    /// Slots that carried the magic but failed their checksum (torn writes).
    pub torn_slots: u32,
}

/// Encode one transaction into a zero-padded slot of `slot_bytes`. The caller
/// has checked that it fits.
#[must_use]
pub fn encode_tx(seq: u64, extents: &[u32], slot_bytes: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(slot_bytes);
    v.extend_from_slice(&AL_MAGIC.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    let n = u32::try_from(extents.len()).unwrap_or(u32::MAX);
    v.extend_from_slice(&n.to_le_bytes());
    for e in extents {
        v.extend_from_slice(&e.to_le_bytes());
    }
    let crc = crc32c::crc32c(&v);
    v.extend_from_slice(&crc.to_le_bytes());
    v.resize(slot_bytes.max(v.len()), 0);
    v
}

/// The outcome of decoding one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// Never written (no magic).
    Blank,
    /// Magic present but the transaction does not check out.
    Torn,
    /// A valid transaction.
    Valid { seq: u64, extents: Vec<u32> },
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

/// Decode one slot; `max_extents` is the layout's `al_extents`.
#[must_use]
pub fn decode_tx(buf: &[u8], max_extents: u32) -> Slot {
    if u32_at(buf, 0) != Some(AL_MAGIC) {
        return Slot::Blank;
    }
    let Some(n) = u32_at(buf, 16) else {
        return Slot::Torn;
    };
    if n > max_extents {
        return Slot::Torn;
    }
    let Ok(n) = usize::try_from(n) else {
        return Slot::Torn;
    };
    let body_len = 20 + 4 * n;
    let (Some(body), Some(stored)) = (buf.get(..body_len), u32_at(buf, body_len)) else {
        return Slot::Torn;
    };
    if crc32c::crc32c(body) != stored {
        return Slot::Torn;
    }
    let seq = body
        .get(8..16)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes);
    let extents = body
        .get(20..)
        .unwrap_or_default()
        .chunks_exact(4)
        .filter_map(|c| c.try_into().ok().map(u32::from_le_bytes))
        .collect();
    Slot::Valid { seq, extents }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let buf = encode_tx(9, &[1, 5, 4096], 4096);
        assert_eq!(buf.len(), 4096);
        assert_eq!(
            decode_tx(&buf, 7),
            Slot::Valid {
                seq: 9,
                extents: vec![1, 5, 4096]
            }
        );
        let empty = encode_tx(0, &[], 4096);
        assert_eq!(
            decode_tx(&empty, 7),
            Slot::Valid {
                seq: 0,
                extents: vec![]
            }
        );
        assert_eq!(decode_tx(&[0u8; 4096], 7), Slot::Blank);
    }

    #[test]
    fn damage_is_torn() {
        let buf = encode_tx(9, &[1, 2, 3], 4096);
        for i in 4..(20 + 12 + 4) {
            let mut b = buf.clone();
            b[i] ^= 0x80;
            assert_eq!(decode_tx(&b, 7), Slot::Torn, "byte {i}");
        }
        // Too many extents for the layout.
        assert_eq!(decode_tx(&buf, 2), Slot::Torn);
        // Truncated buffer.
        assert_eq!(decode_tx(&buf[..30], 7), Slot::Torn);
    }
}
