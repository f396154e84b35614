//! Framing: how a [`Message`](super::Message) becomes bytes on the socket and back.
//!
//! # Frame layout
//!
//! Every frame is a 16-byte header followed by the payload. All integers are
//! little-endian.
//!
//! | offset | size | field                                                     |
//! |-------:|-----:|-----------------------------------------------------------|
//! |      0 |    4 | magic [`MAGIC`] = `0x5245_504c` (bytes `4c 50 45 52`)     |
//! |      4 |    2 | wire version, [`PROTOCOL_VERSION`](super::PROTOCOL_VERSION)                        |
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
//! * `gens`: [`Generations`](crate::gen::Generations) as four `u64`: current, bitmap, history\[0\],
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
//! |   26 | SkipSync        | gens (only to a peer with the SKIP_SYNC feature)            |
//! |   27 | ReadRequest     | id u64, offset u64, len u32 (only to a peer with REMOTE_READ) |
//! |   28 | ReadReply       | id u64, offset u64, data rest                               |
//! |   29 | ReadNeg         | id u64, offset u64, len u32                                 |
//!
//! `Data` flags are [`data_flags`](super::data_flags); unknown bits are an error. Without TRIM or
//! ZEROES the data must be exactly `len` bytes; with either of them it must be
//! empty (`len` is then the size of the range).
//!
//! Enum codes: [`Protocol`](super::Protocol) A=0 B=1 C=2; [`Role`](super::Role) Primary=0 Secondary=1;
//! [`DiskState`](super::DiskState) Diskless=0 Inconsistent=1 Outdated=2 DUnknown=3
//! Consistent=4 UpToDate=5; [`DisconnectReason`](super::DisconnectReason) in declaration order from
//! Shutdown=0 to IoError=13.
//!
//! # Streams
//!
//! [`decode()`] works on a borrowed buffer and reports how many bytes it used;
//! [`FrameDecoder`] owns a buffer for a socket reader and hands out the data
//! of writes as slices of it, without copying. Any [`DecodeError`] means the
//! stream can no longer be trusted: the connection must be dropped.
//!
//! # Modules
//!
//! - `header`: the 16-byte header and the frame's crc32c, checked as the
//!   bytes arrive;
//! - `encode`: a message into the bytes of one frame;
//! - `decode`: a payload into a message, a buffer or a stream into frames
//!   ([`FrameDecoder`]);
//! - `codes`: the message type codes and the codes of enum fields;
//! - `error`: [`DecodeError`] and the errors of encoding.

//!
//! # Modules
//!
//! * `header`: the frame header and its crc32c, checked as bytes arrive.
//! * `codes`: message type codes and enum field codes.
//! * `encode`: a message into a frame.
//! * `decode`: a frame into a message; [`FrameDecoder`] for a stream.
//! * `error`: [`DecodeError`] and [`EncodeError`].

mod codes;
mod decode;
mod encode;
mod error;
mod header;

pub use codes::message_name;
pub use decode::{decode, decode_frame, FrameDecoder};
pub use encode::{disconnect, encode, encode_vectored, encoded_len};
pub use error::{DecodeError, EncodeError};
pub use header::{peek_frame, FramePeek};

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

pub(super) const BITMAP_FIXED_LEN: usize = 8 + 1 + 4;
/// Fields of `Data` before its bulk data: seq, offset, len, flags.
pub(super) const DATA_FIXED_LEN: usize = 8 + 8 + 4 + 4;
/// Fields of `ResyncData` before its bulk data: id, offset.
pub(super) const RESYNC_DATA_FIXED_LEN: usize = 8 + 8;
pub(super) const MAX_VARINT_LEN: usize = 10;
pub(super) const BITMAP_FIRST_SET: u8 = 1 << 0;
pub(super) const BITMAP_LAST: u8 = 1 << 1;
