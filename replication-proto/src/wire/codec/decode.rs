//! Decoding: a payload into a [`Message`], a buffer or a stream into frames.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

use super::codes::*;
use super::encode::expected_data_len;
use super::error::DecodeError;
use super::header::{check_frame, parse_header};
use super::{BITMAP_FIRST_SET, BITMAP_LAST, HEADER_LEN, MAX_VARINT_LEN};
use crate::gen::Generations;
use crate::wire::message::{data_flags, Hello, Message};

/// Reads payload fields, naming the message and field in errors.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    msg: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n);
        match end.and_then(|end| self.buf.get(self.pos..end)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(DecodeError::Truncated {
                message: self.msg,
                field,
            }),
        }
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let s = self.take(N, field)?;
        s.try_into().map_err(|_| DecodeError::Truncated {
            message: self.msg,
            field,
        })
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(u8::from_le_bytes(self.array(field)?))
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    fn enum_u8<T>(
        &mut self,
        field: &'static str,
        from: impl FnOnce(u8) -> Option<T>,
    ) -> Result<T, DecodeError> {
        let value = self.u8(field)?;
        from(value).ok_or(DecodeError::UnknownEnumValue {
            message: self.msg,
            field,
            value,
        })
    }

    fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        self.enum_u8(field, |v| match v {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        })
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = self.u8(field)?;
        let bytes = self.take(usize::from(len), field)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(DecodeError::InvalidUtf8 {
                message: self.msg,
                field,
            }),
        }
    }

    fn gens(&mut self) -> Result<Generations, DecodeError> {
        Ok(Generations {
            current: self.u64("gens.current")?,
            bitmap: self.u64("gens.bitmap")?,
            history: [self.u64("gens.history[0]")?, self.u64("gens.history[1]")?],
        })
    }

    fn varint(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let mut value: u64 = 0;
        for i in 0..MAX_VARINT_LEN {
            let byte = self.u8(field)?;
            let bits = u64::from(byte & 0x7f);
            let shift = 7 * i;
            // The 10th byte may only hold the top bit of a u64.
            if i == MAX_VARINT_LEN - 1 && byte > 1 {
                return Err(DecodeError::InvalidVarint {
                    message: self.msg,
                    field,
                });
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                // A final zero byte after the first is an overlong encoding.
                if i > 0 && byte == 0 {
                    return Err(DecodeError::InvalidVarint {
                        message: self.msg,
                        field,
                    });
                }
                return Ok(value);
            }
        }
        Err(DecodeError::InvalidVarint {
            message: self.msg,
            field,
        })
    }

    /// The rest of the payload, as a range of it.
    fn rest(&mut self) -> Range<usize> {
        let r = self.pos..self.buf.len();
        self.pos = self.buf.len();
        r
    }

    fn remaining(&self) -> usize {
        debug_assert!(self.pos <= self.buf.len(), "read past the payload");
        self.buf.len().saturating_sub(self.pos)
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes {
                message: self.msg,
                count,
            }),
        }
    }
}

/// Decodes a payload whose checksum has been verified. `bulk` turns a range
/// of the payload into `Bytes` (a copy, or a slice of a shared buffer).
fn decode_payload(
    ty: u8,
    payload: &[u8],
    bulk: impl FnOnce(Range<usize>) -> Bytes,
) -> Result<Message, DecodeError> {
    let msg = type_name(ty).ok_or(DecodeError::UnknownType(ty))?;
    let mut r = Reader {
        buf: payload,
        pos: 0,
        msg,
    };
    let m = match ty {
        T_HELLO => decode_hello(&mut r)?,
        T_AUTH => Message::Auth {
            mac: r.array("mac")?,
        },
        T_DATA => decode_data(&mut r, bulk)?,
        T_RECV_ACK => Message::RecvAck { seq: r.u64("seq")? },
        T_WRITE_ACK => Message::WriteAck { seq: r.u64("seq")? },
        T_NEG_ACK => Message::NegAck { seq: r.u64("seq")? },
        T_BARRIER => Message::Barrier { id: r.u64("id")? },
        T_BARRIER_ACK => Message::BarrierAck { id: r.u64("id")? },
        T_PING => Message::Ping,
        T_PING_ACK => Message::PingAck,
        T_STATE => Message::State {
            role: r.enum_u8("role", role_from)?,
            disk: r.enum_u8("disk", disk_from)?,
        },
        T_UUIDS => Message::Uuids { gens: r.gens()? },
        T_SKIP_SYNC => Message::SkipSync { gens: r.gens()? },
        T_BITMAP => decode_bitmap(&mut r)?,
        T_RESYNC_REQUEST => Message::ResyncRequest {
            id: r.u64("id")?,
            offset: r.u64("offset")?,
            len: r.u32("len")?,
        },
        T_CHECKSUM_REQUEST => Message::ChecksumRequest {
            id: r.u64("id")?,
            offset: r.u64("offset")?,
            len: r.u32("len")?,
            digest: r.u32("digest")?,
        },
        T_RESYNC_DATA => {
            let id = r.u64("id")?;
            let offset = r.u64("offset")?;
            let data = r.rest();
            Message::ResyncData {
                id,
                offset,
                data: bulk(data),
            }
        }
        T_READ_REQUEST => Message::ReadRequest {
            id: r.u64("id")?,
            offset: r.u64("offset")?,
            len: r.u32("len")?,
        },
        T_READ_REPLY => {
            let id = r.u64("id")?;
            let offset = r.u64("offset")?;
            let data = r.rest();
            Message::ReadReply {
                id,
                offset,
                data: bulk(data),
            }
        }
        T_READ_NEG => Message::ReadNeg {
            id: r.u64("id")?,
            offset: r.u64("offset")?,
            len: r.u32("len")?,
        },
        T_IN_SYNC => Message::InSync {
            id: r.u64("id")?,
            offset: r.u64("offset")?,
            len: r.u32("len")?,
        },
        T_RESYNC_NEG => Message::ResyncNeg {
            id: r.u64("id")?,
            offset: r.u64("offset")?,
            len: r.u32("len")?,
        },
        T_RESYNC_ACK => Message::ResyncAck {
            id: r.u64("id")?,
            offset: r.u64("offset")?,
            len: r.u32("len")?,
        },
        T_VERIFY_REQUEST => Message::VerifyRequest {
            id: r.u64("id")?,
            offset: r.u64("offset")?,
            len: r.u32("len")?,
            digest: r.u32("digest")?,
        },
        T_VERIFY_REPLY => Message::VerifyReply {
            id: r.u64("id")?,
            offset: r.u64("offset")?,
            len: r.u32("len")?,
            in_sync: r.bool("in_sync")?,
        },
        T_OUT_OF_SYNC => Message::OutOfSync {
            offset: r.u64("offset")?,
            len: r.u32("len")?,
        },
        T_SYNC_DONE => Message::SyncDone,
        T_DISCONNECT => Message::Disconnect {
            reason: r.enum_u8("reason", reason_from)?,
            message: r.string("message")?,
        },
        T_START_SYNC => Message::StartSync {
            sender_is_source: r.bool("sender_is_source")?,
            full: r.bool("full")?,
        },
        _ => return Err(DecodeError::UnknownType(ty)),
    };
    r.finish()?;
    Ok(m)
}

/// `Hello`: its fields in wire order.
fn decode_hello(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    Ok(Message::Hello(Hello {
        version: r.u16("version")?,
        resource: r.string("resource")?,
        node: r.string("node")?,
        data_bytes: r.u64("data_bytes")?,
        protocol: r.enum_u8("protocol", protocol_from)?,
        role: r.enum_u8("role", role_from)?,
        disk: r.enum_u8("disk", disk_from)?,
        gens: r.gens()?,
        meta_flags: r.u32("meta_flags")?,
        features: r.u64("features")?,
        dirty_bits: r.u64("dirty_bits")?,
        nonce: r.array("nonce")?,
        discard_my_data: r.bool("discard_my_data")?,
    }))
}

/// `Data`: the fields, its flags and the length of its data checked.
fn decode_data(
    r: &mut Reader<'_>,
    bulk: impl FnOnce(Range<usize>) -> Bytes,
) -> Result<Message, DecodeError> {
    let seq = r.u64("seq")?;
    let offset = r.u64("offset")?;
    let len = r.u32("len")?;
    let flags = r.u32("flags")?;
    let unknown = flags & !data_flags::ALL;
    if unknown != 0 {
        return Err(DecodeError::UnknownDataFlags { flags, unknown });
    }
    let data = r.rest();
    let expected = expected_data_len(len, flags);
    if data.len() != expected {
        return Err(DecodeError::DataLengthMismatch {
            len,
            flags,
            payload: data.len(),
            expected,
        });
    }
    Ok(Message::Data {
        seq,
        offset,
        len,
        flags,
        data: bulk(data),
    })
}

/// `Bitmap`: its flags, and no more runs announced than bytes remain.
fn decode_bitmap(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let start_bit = r.u64("start_bit")?;
    let flags = r.enum_u8("flags", |f| {
        (f & !(BITMAP_FIRST_SET | BITMAP_LAST) == 0).then_some(f)
    })?;
    let count = r.u32("run count")?;
    // Every run takes at least one byte: this bounds the allocation.
    let n = usize::try_from(count).unwrap_or(usize::MAX);
    if n > r.remaining() {
        return Err(DecodeError::TooManyBitmapRuns {
            runs: count,
            remaining: r.remaining(),
        });
    }
    let mut runs = Vec::with_capacity(n);
    for _ in 0..n {
        runs.push(r.varint("runs")?);
    }
    Ok(Message::Bitmap {
        start_bit,
        first_set: flags & BITMAP_FIRST_SET != 0,
        runs,
        last: flags & BITMAP_LAST != 0,
    })
}

/// Decodes the frame at the start of `buf`.
///
/// * `Ok(None)`: `buf` holds the beginning of a frame that is valid so far;
///   read more bytes and call again with all of them.
/// * `Ok(Some((msg, n)))`: a complete frame of `n` bytes; the next frame
///   starts at `buf[n..]`.
/// * `Err(_)`: not a valid frame; the stream cannot be resynchronised.
///
/// The data of `Data` / `ResyncData` is copied out of `buf`; [`FrameDecoder`]
/// avoids that copy.
pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, DecodeError> {
    let Some((h, total)) = check_frame(buf)? else {
        return Ok(None);
    };
    let payload = buf.get(HEADER_LEN..total).unwrap_or_default();
    let msg = decode_payload(h.ty, payload, |r| {
        Bytes::copy_from_slice(payload.get(r).unwrap_or_default())
    })?;
    Ok(Some((msg, total)))
}

/// Decodes `frame`, which must hold exactly one whole frame. The data of
/// `Data` / `ResyncData` is a slice of `frame`, not a copy.
pub fn decode_frame(frame: Bytes) -> Result<Message, DecodeError> {
    let announced = |total| DecodeError::FrameLength {
        have: frame.len(),
        announced: total,
    };
    let Some((h, total)) = check_frame(&frame)? else {
        let total = parse_header(&frame)?.map_or(HEADER_LEN, |h| HEADER_LEN + h.payload_len);
        return Err(announced(total));
    };
    if total != frame.len() {
        return Err(announced(total));
    }
    let payload = frame.slice(HEADER_LEN..);
    decode_payload(h.ty, &payload, |r| payload.slice(r))
}

/// Buffers bytes read from a stream and cuts them into messages.
///
/// ```
/// # use replication_proto::wire::{codec::{encode, FrameDecoder}, Message};
/// let mut wire = bytes::BytesMut::new();
/// encode(&Message::Ping, &mut wire).unwrap();
/// let mut dec = FrameDecoder::new();
/// dec.push(&wire[..5]);
/// assert_eq!(dec.next().unwrap(), None);
/// dec.push(&wire[5..]);
/// assert_eq!(dec.next().unwrap(), Some(Message::Ping));
/// ```
///
/// Once [`FrameDecoder::next`] returned an error it keeps returning it: the
/// stream is out of sync and the connection must be dropped.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
    failed: Option<DecodeError>,
}

impl FrameDecoder {
    /// An empty decoder.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes received from the peer.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Number of bytes received but not yet returned as messages.
    #[must_use]
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    /// The data of `Data` / `ResyncData` shares the decoder's buffer.
    // Fallible, and `None` only means "not yet": not an `Iterator`.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Message>, DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.next_inner() {
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
            ok => ok,
        }
    }

    fn next_inner(&mut self) -> Result<Option<Message>, DecodeError> {
        let Some((h, total)) = check_frame(&self.buf)? else {
            // Make room for the rest of the frame at once (bounded by
            // MAX_PAYLOAD, which parse_header has checked).
            if let Ok(Some(h)) = parse_header(&self.buf) {
                self.buf
                    .reserve(HEADER_LEN + h.payload_len - self.buf.len());
            }
            return Ok(None);
        };
        let frame = self.buf.split_to(total).freeze();
        let payload = frame.slice(HEADER_LEN..);
        let msg = decode_payload(h.ty, &payload, |r| payload.slice(r))?;
        Ok(Some(msg))
    }
}
