//! The codec's errors: why bytes are not a frame, why a message cannot be sent.

use thiserror::Error;

use super::{MAGIC, MAX_PAYLOAD, MAX_STRING_LEN};

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

/// Why a [`Message`](crate::wire::Message) cannot be put on the wire. These are bugs in the caller
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
