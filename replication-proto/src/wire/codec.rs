//! Framing: how a [`Message`] becomes bytes on the socket and back.
//!
//! # Frame layout
//!
//! Every frame is a 16-byte header followed by the payload. All integers are
//! little-endian.
//!
//! | offset | size | field                                                     |
//! |-------:|-----:|-----------------------------------------------------------|
//! |      0 |    4 | magic [`MAGIC`] = `0x5245_504c` (bytes `4c 50 45 52`)     |
//! |      4 |    2 | wire version, [`PROTOCOL_VERSION`]                        |
//! |      6 |    1 | message type (table below)                                |
//! |      7 |    1 | reserved, must be 0                                       |
//! |      8 |    4 | payload length in bytes, at most [`MAX_PAYLOAD`]          |
//! |     12 |    4 | crc32c over header bytes `0..12` followed by the payload  |
//! |     16 |    n | payload                                                   |
//!
//! The decoder checks the header fields in that order as soon as the bytes
//! are there, so garbage or a peer of another version is refused after at
//! most 16 bytes, and an oversized length is refused *before* anything is
//! buffered for it. The version is checked before anything else in the frame
//! is interpreted, since another version may lay out even the header
//! differently.
//!
//! # Payload field encodings
//!
//! * `u8`/`u16`/`u32`/`u64`: fixed width, little-endian.
//! * `bool`: one byte, 0 or 1; anything else is an error.
//! * `str`: one length byte then that many bytes of UTF-8 (so at most
//!   [`MAX_STRING_LEN`] = 255 bytes; encoding a longer string fails).
//! * `nonce`/`mac`: 32 raw bytes.
//! * `gens`: [`Generations`] as four `u64`: current, bitmap, history\[0\],
//!   history\[1\].
//! * enums: one byte, the codes listed below; unknown codes are an error.
//! * `varint`: unsigned LEB128, at most 10 bytes; overlong (non-minimal)
//!   encodings and values over `u64::MAX` are an error, so every value has
//!   exactly one encoding.
//! * `rest`: all remaining payload bytes (the data of a write).
//!
//! A payload must be consumed exactly: trailing bytes are an error.
//!
//! # Message types and payloads
//!
//! | type | message         | payload                                                     |
//! |-----:|-----------------|-------------------------------------------------------------|
//! |    1 | Hello           | version u16, resource str, node str, data_bytes u64, protocol u8, role u8, disk u8, gens, meta_flags u32, features u64, dirty_bits u64, nonce, discard_my_data bool |
//! |    2 | Auth            | mac                                                         |
//! |    3 | Data            | seq u64, offset u64, len u32, flags u32, data rest          |
//! |    4 | RecvAck         | seq u64                                                     |
//! |    5 | WriteAck        | seq u64                                                     |
//! |    6 | NegAck          | seq u64                                                     |
//! |    7 | Barrier         | id u64                                                      |
//! |    8 | BarrierAck      | id u64                                                      |
//! |    9 | Ping            | (empty)                                                     |
//! |   10 | PingAck         | (empty)                                                     |
//! |   11 | State           | role u8, disk u8                                            |
//! |   12 | Uuids           | gens                                                        |
//! |   13 | Bitmap          | start_bit u64, flags u8 (bit 0 first_set, bit 1 last, others must be 0), run count u32, runs varint × count |
//! |   14 | ResyncRequest   | id u64, offset u64, len u32                                 |
//! |   15 | ChecksumRequest | id u64, offset u64, len u32, digest u32                     |
//! |   16 | ResyncData      | id u64, offset u64, data rest                               |
//! |   17 | InSync          | id u64, offset u64, len u32                                 |
//! |   18 | ResyncNeg       | id u64, offset u64, len u32                                 |
//! |   19 | ResyncAck       | id u64, offset u64, len u32                                 |
//! |   20 | VerifyRequest   | id u64, offset u64, len u32, digest u32                     |
//! |   21 | VerifyReply     | id u64, offset u64, len u32, in_sync bool                   |
//! |   22 | OutOfSync       | offset u64, len u32                                         |
//! |   23 | SyncDone        | (empty)                                                     |
//! |   24 | Disconnect      | reason u8, message str                                      |
//! |   25 | StartSync       | sender_is_source bool, full bool                            |
//!
//! `Data` flags are [`data_flags`]; unknown bits are an error. Without TRIM or
//! ZEROES the data must be exactly `len` bytes; with either of them it must be
//! empty (`len` is then the size of the range).
//!
//! Enum codes: [`Protocol`] A=0 B=1 C=2; [`Role`] Primary=0 Secondary=1;
//! [`DiskState`] Diskless=0 Inconsistent=1 Outdated=2 DUnknown=3
//! Consistent=4 UpToDate=5; [`DisconnectReason`] in declaration order from
//! Shutdown=0 to IoError=13.
//!
//! # Streams
//!
//! [`decode`] works on a borrowed buffer and reports how many bytes it used;
//! [`FrameDecoder`] owns a buffer for a socket reader and hands out the data
//! of writes as slices of it, without copying. Any [`DecodeError`] means the
//! stream can no longer be trusted: the connection must be dropped.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

use super::message::{
    data_flags, DisconnectReason, DiskState, Hello, Message, Protocol, Role, PROTOCOL_VERSION,
};
use crate::gen::Generations;

/// First four bytes of every frame ("REPL" read as a big-endian number).
pub const MAGIC: u32 = 0x5245_504c;
/// Size of the fixed frame header.
pub const HEADER_LEN: usize = 16;
/// Largest write payload a `Data` or `ResyncData` frame is meant to carry.
pub const MAX_DATA: usize = 1 << 20;
/// Largest payload any frame may have: [`MAX_DATA`] plus room for the fields
/// in front of it. Longer frames are refused without buffering them.
pub const MAX_PAYLOAD: usize = MAX_DATA + 4096;
/// Longest string (in bytes of UTF-8) a frame can carry.
pub const MAX_STRING_LEN: usize = 255;
/// Most runs one `Bitmap` frame can carry whatever their values (each run
/// takes at most 10 bytes of varint).
pub const MAX_BITMAP_RUNS: usize = (MAX_PAYLOAD - BITMAP_FIXED_LEN) / MAX_VARINT_LEN;

const BITMAP_FIXED_LEN: usize = 8 + 1 + 4;
/// Fields of `Data` before its bulk data: seq, offset, len, flags.
const DATA_FIXED_LEN: usize = 8 + 8 + 4 + 4;
/// Fields of `ResyncData` before its bulk data: id, offset.
const RESYNC_DATA_FIXED_LEN: usize = 8 + 8;
const MAX_VARINT_LEN: usize = 10;
const BITMAP_FIRST_SET: u8 = 1 << 0;
const BITMAP_LAST: u8 = 1 << 1;

/// Why bytes from the peer are not a valid frame. Any of these ends the
/// connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("bad frame magic {found:#010x} (expected {MAGIC:#010x}): not a replication peer, or the stream lost sync")]
    BadMagic { found: u32 },
    #[error("unsupported wire version: peer speaks wire version {peer}, this build speaks {ours}")]
    UnsupportedVersion { peer: u16, ours: u16 },
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("reserved header byte is {0:#04x}, must be 0")]
    ReservedNotZero(u8),
    #[error("frame payload of {len} bytes is larger than the maximum of {max} bytes")]
    PayloadTooLarge { len: u32, max: usize },
    #[error("frame checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch { stored: u32, computed: u32 },
    #[error("{message} frame: payload ends inside field `{field}`")]
    Truncated {
        message: &'static str,
        field: &'static str,
    },
    #[error("{message} frame: field `{field}` is not valid UTF-8")]
    InvalidUtf8 {
        message: &'static str,
        field: &'static str,
    },
    #[error("{message} frame: field `{field}` has unknown value {value}")]
    UnknownEnumValue {
        message: &'static str,
        field: &'static str,
        value: u8,
    },
    #[error("{message} frame: field `{field}` is not a valid varint (overlong or over 64 bits)")]
    InvalidVarint {
        message: &'static str,
        field: &'static str,
    },
    #[error("Data frame: unknown flag bits {unknown:#x} (flags {flags:#x})")]
    UnknownDataFlags { flags: u32, unknown: u32 },
    #[error("Data frame: len is {len} with flags {flags:#x} but {payload} bytes of data follow (expected {expected})")]
    DataLengthMismatch {
        len: u32,
        flags: u32,
        payload: usize,
        expected: usize,
    },
    #[error("{message} frame: {count} trailing bytes after the last field")]
    TrailingBytes { message: &'static str, count: usize },
    #[error("Bitmap frame: {runs} runs announced but only {remaining} payload bytes remain")]
    TooManyBitmapRuns { runs: u32, remaining: usize },
    #[error("frame buffer holds {have} bytes but its header announces a {announced}-byte frame")]
    FrameLength { have: usize, announced: usize },
}

/// Why a [`Message`] cannot be put on the wire. These are bugs in the caller
/// (every message built from valid state encodes).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    #[error("{message}.{field} is {len} bytes long; the wire allows at most {MAX_STRING_LEN}")]
    StringTooLong {
        message: &'static str,
        field: &'static str,
        len: usize,
    },
    #[error("{message} frame payload would be {len} bytes; the maximum is {MAX_PAYLOAD}")]
    PayloadTooLarge { message: &'static str, len: usize },
    #[error("Data has unknown flag bits {unknown:#x} (flags {flags:#x})")]
    UnknownDataFlags { flags: u32, unknown: u32 },
    #[error(
        "Data has len {len} and flags {flags:#x} but carries {data} bytes (expected {expected})"
    )]
    DataLengthMismatch {
        len: u32,
        flags: u32,
        data: usize,
        expected: usize,
    },
}

/// A decoded header, before the payload is checked.
#[derive(Debug, Clone, Copy)]
struct Header {
    ty: u8,
    payload_len: usize,
    crc: u32,
}

// ----------------------------------------------------------------------------
// Type codes and names

const T_HELLO: u8 = 1;
const T_AUTH: u8 = 2;
const T_DATA: u8 = 3;
const T_RECV_ACK: u8 = 4;
const T_WRITE_ACK: u8 = 5;
const T_NEG_ACK: u8 = 6;
const T_BARRIER: u8 = 7;
const T_BARRIER_ACK: u8 = 8;
const T_PING: u8 = 9;
const T_PING_ACK: u8 = 10;
const T_STATE: u8 = 11;
const T_UUIDS: u8 = 12;
const T_BITMAP: u8 = 13;
const T_RESYNC_REQUEST: u8 = 14;
const T_CHECKSUM_REQUEST: u8 = 15;
const T_RESYNC_DATA: u8 = 16;
const T_IN_SYNC: u8 = 17;
const T_RESYNC_NEG: u8 = 18;
const T_RESYNC_ACK: u8 = 19;
const T_VERIFY_REQUEST: u8 = 20;
const T_VERIFY_REPLY: u8 = 21;
const T_OUT_OF_SYNC: u8 = 22;
const T_SYNC_DONE: u8 = 23;
const T_DISCONNECT: u8 = 24;
const T_START_SYNC: u8 = 25;

/// Name of a message type code, `None` if this build does not know it.
fn type_name(ty: u8) -> Option<&'static str> {
    Some(match ty {
        T_HELLO => "Hello",
        T_AUTH => "Auth",
        T_DATA => "Data",
        T_RECV_ACK => "RecvAck",
        T_WRITE_ACK => "WriteAck",
        T_NEG_ACK => "NegAck",
        T_BARRIER => "Barrier",
        T_BARRIER_ACK => "BarrierAck",
        T_PING => "Ping",
        T_PING_ACK => "PingAck",
        T_STATE => "State",
        T_UUIDS => "Uuids",
        T_BITMAP => "Bitmap",
        T_RESYNC_REQUEST => "ResyncRequest",
        T_CHECKSUM_REQUEST => "ChecksumRequest",
        T_RESYNC_DATA => "ResyncData",
        T_IN_SYNC => "InSync",
        T_RESYNC_NEG => "ResyncNeg",
        T_RESYNC_ACK => "ResyncAck",
        T_VERIFY_REQUEST => "VerifyRequest",
        T_VERIFY_REPLY => "VerifyReply",
        T_OUT_OF_SYNC => "OutOfSync",
        T_SYNC_DONE => "SyncDone",
        T_DISCONNECT => "Disconnect",
        T_START_SYNC => "StartSync",
        _ => return None,
    })
}

fn type_code(msg: &Message) -> u8 {
    match msg {
        Message::Hello(_) => T_HELLO,
        Message::Auth { .. } => T_AUTH,
        Message::Data { .. } => T_DATA,
        Message::RecvAck { .. } => T_RECV_ACK,
        Message::WriteAck { .. } => T_WRITE_ACK,
        Message::NegAck { .. } => T_NEG_ACK,
        Message::Barrier { .. } => T_BARRIER,
        Message::BarrierAck { .. } => T_BARRIER_ACK,
        Message::Ping => T_PING,
        Message::PingAck => T_PING_ACK,
        Message::State { .. } => T_STATE,
        Message::Uuids { .. } => T_UUIDS,
        Message::Bitmap { .. } => T_BITMAP,
        Message::ResyncRequest { .. } => T_RESYNC_REQUEST,
        Message::ChecksumRequest { .. } => T_CHECKSUM_REQUEST,
        Message::ResyncData { .. } => T_RESYNC_DATA,
        Message::InSync { .. } => T_IN_SYNC,
        Message::ResyncNeg { .. } => T_RESYNC_NEG,
        Message::ResyncAck { .. } => T_RESYNC_ACK,
        Message::VerifyRequest { .. } => T_VERIFY_REQUEST,
        Message::VerifyReply { .. } => T_VERIFY_REPLY,
        Message::OutOfSync { .. } => T_OUT_OF_SYNC,
        Message::SyncDone => T_SYNC_DONE,
        Message::Disconnect { .. } => T_DISCONNECT,
        Message::StartSync { .. } => T_START_SYNC,
    }
}

/// The name of a message's variant, as used in error messages and logs.
#[must_use]
pub fn message_name(msg: &Message) -> &'static str {
    type_name(type_code(msg)).unwrap_or("?")
}

// ----------------------------------------------------------------------------
// Enum codes

fn protocol_code(p: Protocol) -> u8 {
    match p {
        Protocol::A => 0,
        Protocol::B => 1,
        Protocol::C => 2,
    }
}

fn protocol_from(v: u8) -> Option<Protocol> {
    Some(match v {
        0 => Protocol::A,
        1 => Protocol::B,
        2 => Protocol::C,
        _ => return None,
    })
}

fn role_code(r: Role) -> u8 {
    match r {
        Role::Primary => 0,
        Role::Secondary => 1,
    }
}

fn role_from(v: u8) -> Option<Role> {
    Some(match v {
        0 => Role::Primary,
        1 => Role::Secondary,
        _ => return None,
    })
}

fn disk_code(d: DiskState) -> u8 {
    match d {
        DiskState::Diskless => 0,
        DiskState::Inconsistent => 1,
        DiskState::Outdated => 2,
        DiskState::DUnknown => 3,
        DiskState::Consistent => 4,
        DiskState::UpToDate => 5,
    }
}

fn disk_from(v: u8) -> Option<DiskState> {
    Some(match v {
        0 => DiskState::Diskless,
        1 => DiskState::Inconsistent,
        2 => DiskState::Outdated,
        3 => DiskState::DUnknown,
        4 => DiskState::Consistent,
        5 => DiskState::UpToDate,
        _ => return None,
    })
}

fn reason_code(r: DisconnectReason) -> u8 {
    match r {
        DisconnectReason::Shutdown => 0,
        DisconnectReason::Admin => 1,
        DisconnectReason::UnsupportedVersion => 2,
        DisconnectReason::AuthFailed => 3,
        DisconnectReason::WrongResource => 4,
        DisconnectReason::WrongSize => 5,
        DisconnectReason::ConfigMismatch => 6,
        DisconnectReason::SplitBrain => 7,
        DisconnectReason::UnrelatedData => 8,
        DisconnectReason::BothPrimary => 9,
        DisconnectReason::NoGoodData => 10,
        DisconnectReason::ProtocolError => 11,
        DisconnectReason::Timeout => 12,
        DisconnectReason::IoError => 13,
    }
}

fn reason_from(v: u8) -> Option<DisconnectReason> {
    Some(match v {
        0 => DisconnectReason::Shutdown,
        1 => DisconnectReason::Admin,
        2 => DisconnectReason::UnsupportedVersion,
        3 => DisconnectReason::AuthFailed,
        4 => DisconnectReason::WrongResource,
        5 => DisconnectReason::WrongSize,
        6 => DisconnectReason::ConfigMismatch,
        7 => DisconnectReason::SplitBrain,
        8 => DisconnectReason::UnrelatedData,
        9 => DisconnectReason::BothPrimary,
        10 => DisconnectReason::NoGoodData,
        11 => DisconnectReason::ProtocolError,
        12 => DisconnectReason::Timeout,
        13 => DisconnectReason::IoError,
        _ => return None,
    })
}

// ----------------------------------------------------------------------------
// Encoding

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
fn expected_data_len(len: u32, flags: u32) -> usize {
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
        Message::Uuids { .. } => GENS,
        Message::Bitmap { runs, .. } => {
            BITMAP_FIXED_LEN + runs.iter().map(|&r| varint_len(r)).sum::<usize>()
        }
        Message::ResyncRequest { .. }
        | Message::InSync { .. }
        | Message::ResyncNeg { .. }
        | Message::ResyncAck { .. } => 8 + 8 + 4,
        Message::ChecksumRequest { .. } | Message::VerifyRequest { .. } => 8 + 8 + 4 + 4,
        Message::ResyncData { data, .. } => RESYNC_DATA_FIXED_LEN + data.len(),
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
        Message::Data { data, .. } | Message::ResyncData { data, .. } => data.clone(),
        _ => Bytes::new(),
    };
    out.reserve(HEADER_LEN + len - if with_bulk { 0 } else { bulk.len() });
    let start = out.len();
    out.put_u32_le(MAGIC);
    out.put_u16_le(PROTOCOL_VERSION);
    out.put_u8(type_code(msg));
    out.put_u8(0);
    // validate() bounds len by MAX_PAYLOAD, far below u32::MAX.
    out.put_u32_le(u32::try_from(len).unwrap_or(u32::MAX));
    let crc_at = out.len();
    out.put_u32_le(0);
    match msg {
        Message::Hello(h) => {
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
        Message::Uuids { gens } => put_gens(out, gens),
        Message::Bitmap {
            start_bit,
            first_set,
            runs,
            last,
        } => {
            out.put_u64_le(*start_bit);
            let mut flags = 0;
            if *first_set {
                flags |= BITMAP_FIRST_SET;
            }
            if *last {
                flags |= BITMAP_LAST;
            }
            out.put_u8(flags);
            // validate() bounds the count by MAX_PAYLOAD.
            out.put_u32_le(u32::try_from(runs.len()).unwrap_or(u32::MAX));
            for &r in runs {
                put_varint(out, r);
            }
        }
        Message::ResyncRequest { id, offset, len }
        | Message::InSync { id, offset, len }
        | Message::ResyncNeg { id, offset, len }
        | Message::ResyncAck { id, offset, len } => {
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
    let frame = out.get_mut(start..).unwrap_or_default();
    let before_crc = frame.get(..crc_at - start).unwrap_or_default();
    let fixed = frame.get(HEADER_LEN..).unwrap_or_default();
    let crc = crate::checksum::crc32c_append(crate::checksum::crc32c(before_crc), fixed);
    let crc = crate::checksum::crc32c_append(crc, &bulk);
    if let Some(slot) = frame.get_mut(crc_at - start..crc_at - start + 4) {
        slot.copy_from_slice(&crc.to_le_bytes());
    }
    Ok(bulk)
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

// ----------------------------------------------------------------------------
// Decoding

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
fn parse_header(buf: &[u8]) -> Result<Option<Header>, DecodeError> {
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
fn check_frame(buf: &[u8]) -> Result<Option<(Header, usize)>, DecodeError> {
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
        T_HELLO => Message::Hello(Hello {
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
        }),
        T_AUTH => Message::Auth {
            mac: r.array("mac")?,
        },
        T_DATA => {
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
            Message::Data {
                seq,
                offset,
                len,
                flags,
                data: bulk(data),
            }
        }
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
        T_BITMAP => {
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
            Message::Bitmap {
                start_bit,
                first_set: flags & BITMAP_FIRST_SET != 0,
                runs,
                last: flags & BITMAP_LAST != 0,
            }
        }
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

/// What a frame header announces, from [`peek_frame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramePeek {
    /// Length of the whole frame, header included.
    pub total: usize,
    /// For `Data` / `ResyncData`: where the bulk data starts in the frame,
    /// so a reader can place it (e.g. at an aligned address for O_DIRECT).
    pub bulk_at: Option<usize>,
}

/// Reads the header at the start of `buf` (checked as [`FrameDecoder`]
/// checks it): `Ok(None)` if fewer than [`HEADER_LEN`] bytes are there.
/// The payload and its checksum are checked by [`decode_frame`].
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
        T_RESYNC_DATA => Some(HEADER_LEN + RESYNC_DATA_FIXED_LEN),
        _ => None,
    };
    Ok(Some(FramePeek {
        total: HEADER_LEN + h.payload_len,
        bulk_at,
    }))
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
