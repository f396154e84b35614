//! The wire format: versioned frames, each checked with crc32c.
//!
//! * [`message`]: the messages.
//! * [`codec`]: the frame format, [`encode`] / [`decode`] and [`FrameDecoder`].
//! * [`rle`]: the dirty bitmap as run-length coded [`Message::Bitmap`] chunks.
//! * [`auth`]: the HMAC-SHA256 challenge/response of the handshake.

pub mod auth;
pub mod codec;
pub mod message;
pub mod rle;

pub use auth::{auth_mac, ping_conn_mac, verify_auth, verify_ping_conn, AUTH_CONTEXT};
pub use codec::{
    decode, disconnect, encode, encode_vectored, encoded_len, DecodeError, EncodeError,
    FrameDecoder, MAX_DATA, MAX_PAYLOAD, MAX_STRING_LEN,
};
pub use message::*;
pub use rle::{bitmap_messages, BitmapReceiver, Progress, RleError};
