//! Encoding: a [`Message`] into the bytes of one frame.

use bytes::{BufMut, Bytes, BytesMut};

use super::codes::*;
use super::error::EncodeError;
use super::{
    BITMAP_FIRST_SET, BITMAP_FIXED_LEN, BITMAP_LAST, DATA_FIXED_LEN, HEADER_LEN, MAGIC,
    MAX_PAYLOAD, MAX_STRING_LEN, RESYNC_DATA_FIXED_LEN,
};
use crate::gen::Generations;
use crate::wire::message::{data_flags, DisconnectReason, Hello, Message, PROTOCOL_VERSION};

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        // Truncation intended: the low 7 bits, with the continuation bit.
        out.put_u8((v & 0x7f) as u8 | 0x80);
        v >>= 7;
    }
    out.put_u8((v & 0x7f) as u8);
}

/// Length of the payload bytes that follow the fixed part of a `Data` frame,
/// as the format requires it.
pub(super) fn expected_data_len(len: u32, flags: u32) -> usize {
    if flags & (data_flags::TRIM | data_flags::ZEROES) != 0 {
        0
    } else {
        // u32 always fits a usize on the platforms this runs on (>= 32 bit).
        usize::try_from(len).unwrap_or(usize::MAX)
    }
}

/// Payload size of `msg`, and the bulk data that ends it (empty for all
/// messages but `Data` and `ResyncData`).
fn payload_len(msg: &Message) -> usize {
    const GENS: usize = 32;
    match msg {
        Message::Hello(h) => {
            2 + 1 + h.resource.len() + 1 + h.node.len() + 8 + 3 + GENS + 4 + 8 + 8 + 32 + 1
        }
        Message::Auth { .. } => 32,
        Message::Data { data, .. } => DATA_FIXED_LEN + data.len(),
        Message::RecvAck { .. }
        | Message::WriteAck { .. }
        | Message::NegAck { .. }
        | Message::Barrier { .. }
        | Message::BarrierAck { .. } => 8,
        Message::Ping | Message::PingAck | Message::SyncDone => 0,
        Message::State { .. } => 2,
        Message::Uuids { .. } | Message::SkipSync { .. } => GENS,
        Message::Bitmap { runs, .. } => {
            BITMAP_FIXED_LEN + runs.iter().map(|&r| varint_len(r)).sum::<usize>()
        }
        Message::ResyncRequest { .. }
        | Message::InSync { .. }
        | Message::ResyncNeg { .. }
        | Message::ResyncAck { .. }
        | Message::ReadRequest { .. }
        | Message::ReadNeg { .. } => 8 + 8 + 4,
        Message::ChecksumRequest { .. } | Message::VerifyRequest { .. } => 8 + 8 + 4 + 4,
        Message::ResyncData { data, .. } | Message::ReadReply { data, .. } => {
            RESYNC_DATA_FIXED_LEN + data.len()
        }
        Message::VerifyReply { .. } => 8 + 8 + 4 + 1,
        Message::OutOfSync { .. } => 8 + 4,
        Message::Disconnect { message, .. } => 1 + 1 + message.len(),
        Message::StartSync { .. } => 2,
    }
}

/// Number of bytes [`encode`] writes for `msg` (when it succeeds).
#[must_use]
pub fn encoded_len(msg: &Message) -> usize {
    HEADER_LEN.saturating_add(payload_len(msg))
}

/// Checks everything that could make `msg` unencodable; returns its payload
/// length.
fn validate(msg: &Message) -> Result<usize, EncodeError> {
    let name = message_name(msg);
    let check_str = |field: &'static str, s: &str| {
        if s.len() > MAX_STRING_LEN {
            Err(EncodeError::StringTooLong {
                message: name,
                field,
                len: s.len(),
            })
        } else {
            Ok(())
        }
    };
    match msg {
        Message::Hello(h) => {
            check_str("resource", &h.resource)?;
            check_str("node", &h.node)?;
        }
        Message::Disconnect { message, .. } => check_str("message", message)?,
        Message::Data {
            len, flags, data, ..
        } => {
            let unknown = flags & !data_flags::ALL;
            if unknown != 0 {
                return Err(EncodeError::UnknownDataFlags {
                    flags: *flags,
                    unknown,
                });
            }
            let expected = expected_data_len(*len, *flags);
            if data.len() != expected {
                return Err(EncodeError::DataLengthMismatch {
                    len: *len,
                    flags: *flags,
                    data: data.len(),
                    expected,
                });
            }
        }
        _ => {}
    }
    let len = payload_len(msg);
    if len > MAX_PAYLOAD {
        return Err(EncodeError::PayloadTooLarge { message: name, len });
    }
    Ok(len)
}

fn put_str(out: &mut BytesMut, s: &str) {
    // validate() guarantees s.len() <= 255.
    out.put_u8(u8::try_from(s.len()).unwrap_or(u8::MAX));
    out.put_slice(s.as_bytes());
}

fn put_gens(out: &mut BytesMut, g: &Generations) {
    out.put_u64_le(g.current);
    out.put_u64_le(g.bitmap);
    out.put_u64_le(g.history[0]);
    out.put_u64_le(g.history[1]);
}

/// Writes the header and every payload byte except the bulk data of
/// `Data`/`ResyncData`, which it returns (a cheap reference-counted clone).
/// The CRC in the header covers the bulk data too. `with_bulk` only sizes
/// the reservation in `out` for the caller appending the bulk data itself.
fn encode_head(msg: &Message, out: &mut BytesMut, with_bulk: bool) -> Result<Bytes, EncodeError> {
    let len = validate(msg)?;
    let bulk = match msg {
        Message::Data { data, .. }
        | Message::ResyncData { data, .. }
        | Message::ReadReply { data, .. } => data.clone(),
        _ => Bytes::new(),
    };
    out.reserve(HEADER_LEN + len - if with_bulk { 0 } else { bulk.len() });
    let start = out.len();
    put_header(msg, len, out);
    put_fields(msg, out);
    seal_crc(out.get_mut(start..).unwrap_or_default(), &bulk);
    Ok(bulk)
}

/// The header, with 0 where the crc goes ([`seal_crc`] fills it in).
fn put_header(msg: &Message, payload_len: usize, out: &mut BytesMut) {
    out.put_u32_le(MAGIC);
    out.put_u16_le(PROTOCOL_VERSION);
    out.put_u8(type_code(msg));
    out.put_u8(0);
    // validate() bounds len by MAX_PAYLOAD, far below u32::MAX.
    out.put_u32_le(u32::try_from(payload_len).unwrap_or(u32::MAX));
    out.put_u32_le(0);
}

/// Writes the crc32c of `frame` (header before the crc, then the payload
/// it holds, then `bulk`) into the header's crc field.
fn seal_crc(frame: &mut [u8], bulk: &[u8]) {
    const CRC_AT: usize = 12;
    let before_crc = frame.get(..CRC_AT).unwrap_or_default();
    let fixed = frame.get(HEADER_LEN..).unwrap_or_default();
    let crc = crate::checksum::crc32c_append(crate::checksum::crc32c(before_crc), fixed);
    let crc = crate::checksum::crc32c_append(crc, bulk);
    if let Some(slot) = frame.get_mut(CRC_AT..CRC_AT + 4) {
        slot.copy_from_slice(&crc.to_le_bytes());
    }
}

/// Every payload field of `msg` but the bulk data, in wire order.
fn put_fields(msg: &Message, out: &mut BytesMut) {
    match msg {
        Message::Hello(h) => put_hello(out, h),
        Message::Auth { mac } => out.put_slice(mac),
        Message::Data {
            seq,
            offset,
            len,
            flags,
            data: _,
        } => {
            out.put_u64_le(*seq);
            out.put_u64_le(*offset);
            out.put_u32_le(*len);
            out.put_u32_le(*flags);
        }
        Message::RecvAck { seq } | Message::WriteAck { seq } | Message::NegAck { seq } => {
            out.put_u64_le(*seq);
        }
        Message::Barrier { id } | Message::BarrierAck { id } => out.put_u64_le(*id),
        Message::Ping | Message::PingAck | Message::SyncDone => {}
        Message::State { role, disk } => {
            out.put_u8(role_code(*role));
            out.put_u8(disk_code(*disk));
        }
        Message::Uuids { gens } | Message::SkipSync { gens } => put_gens(out, gens),
        Message::Bitmap {
            start_bit,
            first_set,
            runs,
            last,
        } => put_bitmap(out, *start_bit, *first_set, runs, *last),
        Message::ResyncRequest { id, offset, len }
        | Message::InSync { id, offset, len }
        | Message::ResyncNeg { id, offset, len }
        | Message::ResyncAck { id, offset, len }
        | Message::ReadRequest { id, offset, len }
        | Message::ReadNeg { id, offset, len } => {
            out.put_u64_le(*id);
            out.put_u64_le(*offset);
            out.put_u32_le(*len);
        }
        Message::ChecksumRequest {
            id,
            offset,
            len,
            digest,
        }
        | Message::VerifyRequest {
            id,
            offset,
            len,
            digest,
        } => {
            out.put_u64_le(*id);
            out.put_u64_le(*offset);
            out.put_u32_le(*len);
            out.put_u32_le(*digest);
        }
        Message::ResyncData {
            id,
            offset,
            data: _,
        }
        | Message::ReadReply {
            id,
            offset,
            data: _,
        } => {
            out.put_u64_le(*id);
            out.put_u64_le(*offset);
        }
        Message::VerifyReply {
            id,
            offset,
            len,
            in_sync,
        } => {
            out.put_u64_le(*id);
            out.put_u64_le(*offset);
            out.put_u32_le(*len);
            out.put_u8(u8::from(*in_sync));
        }
        Message::OutOfSync { offset, len } => {
            out.put_u64_le(*offset);
            out.put_u32_le(*len);
        }
        Message::Disconnect { reason, message } => {
            out.put_u8(reason_code(*reason));
            put_str(out, message);
        }
        Message::StartSync {
            sender_is_source,
            full,
        } => {
            out.put_u8(u8::from(*sender_is_source));
            out.put_u8(u8::from(*full));
        }
    }
}

fn put_hello(out: &mut BytesMut, h: &Hello) {
    out.put_u16_le(h.version);
    put_str(out, &h.resource);
    put_str(out, &h.node);
    out.put_u64_le(h.data_bytes);
    out.put_u8(protocol_code(h.protocol));
    out.put_u8(role_code(h.role));
    out.put_u8(disk_code(h.disk));
    put_gens(out, &h.gens);
    out.put_u32_le(h.meta_flags);
    out.put_u64_le(h.features);
    out.put_u64_le(h.dirty_bits);
    out.put_slice(&h.nonce);
    out.put_u8(u8::from(h.discard_my_data));
}

fn put_bitmap(out: &mut BytesMut, start_bit: u64, first_set: bool, runs: &[u64], last: bool) {
    out.put_u64_le(start_bit);
    let mut flags = 0;
    if first_set {
        flags |= BITMAP_FIRST_SET;
    }
    if last {
        flags |= BITMAP_LAST;
    }
    out.put_u8(flags);
    // validate() bounds the count by MAX_PAYLOAD.
    out.put_u32_le(u32::try_from(runs.len()).unwrap_or(u32::MAX));
    for &r in runs {
        put_varint(out, r);
    }
}

/// Appends the frame for `msg` to `out`.
///
/// Fails, leaving `out` as it was, only for messages the peer would reject:
/// strings over [`MAX_STRING_LEN`] bytes, payloads over [`MAX_PAYLOAD`],
/// `Data` with unknown flags or whose data length does not match `len`.
pub fn encode(msg: &Message, out: &mut BytesMut) -> Result<(), EncodeError> {
    let bulk = encode_head(msg, out, true)?;
    out.put_slice(&bulk);
    Ok(())
}

/// Like [`encode`], but leaves the bulk data of `Data` / `ResyncData` out of
/// `out` and returns it instead (a reference-counted clone, no copy): the
/// frame is the bytes appended to `out` followed by the returned bytes, e.g.
/// for a vectored write. For other messages the returned `Bytes` is empty.
pub fn encode_vectored(msg: &Message, out: &mut BytesMut) -> Result<Bytes, EncodeError> {
    encode_head(msg, out, false)
}

/// A `Disconnect` message whose text is cut (at a character boundary) to the
/// [`MAX_STRING_LEN`] bytes the wire allows, so it always encodes.
#[must_use]
pub fn disconnect(reason: DisconnectReason, message: &str) -> Message {
    let mut end = message.len().min(MAX_STRING_LEN);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    Message::Disconnect {
        reason,
        message: message.get(..end).unwrap_or_default().to_owned(),
    }
}
