//! NBD export of a replicated resource: a network block device server that
//! speaks the fixed-newstyle NBD protocol and serves one export, named
//! after the resource, backed by a [`BlockBackend`](crate::frontend::BlockBackend).
//!
//! Why not a crate: the Rust NBD server crates (`nbd`, and the async ones
//! built on tokio) either handle one request at a time over `Read + Write +
//! Seek` storage or bring an async runtime; we need many requests in
//! flight per connection (fio and qemu use queue depth 32+) completed out
//! of order by a callback-based backend, with bounded memory. The protocol
//! subset we need is small, so it is written here.
//!
//! Shape: one accept thread; per client one reader thread (negotiation,
//! then reading requests and submitting them to the backend) and one
//! writer thread (writing replies in completion order, which may differ
//! from request order: handles identify them).
//!
//! What is served:
//! - negotiation: `NBD_OPT_GO`, `NBD_OPT_INFO` (export size + flags, block
//!   sizes 512/4096/1 MiB, name), `NBD_OPT_EXPORT_NAME`, `NBD_OPT_LIST`,
//!   `NBD_OPT_ABORT`; everything else (structured replies, TLS, meta
//!   contexts, extended headers) is answered `NBD_REP_ERR_UNSUP`. A
//!   Secondary refuses with `NBD_REP_ERR_POLICY`.
//! - transmission: READ, WRITE (FUA), FLUSH, TRIM, WRITE_ZEROES (FUA,
//!   NO_HOLE), DISC; simple replies only.
//!
//! Limits and choices:
//! - READ/WRITE longer than 1 MiB (the advertised maximum payload) get
//!   `EINVAL`; a WRITE's payload up to 32 MiB is read and discarded first
//!   so the stream stays in sync, a longer one closes the connection.
//! - TRIM/WRITE_ZEROES may be longer (the spec allows it for payload-less
//!   commands and Linux sends whole-device discards): they are split into
//!   1 MiB backend requests and answered once.
//! - Unaligned (not a multiple of 512) requests, and reads or trims past
//!   the end: `EINVAL`; writes and write-zeroes past the end: `ENOSPC`
//!   (what the NBD spec asks).
//! - Each connection has at most [`MAX_IN_FLIGHT`] requests and
//!   [`MAX_IN_FLIGHT_BYTES`] of payload in flight; beyond that the reader
//!   stops reading until replies drain.
//! - Malformed input (bad magic, unknown client flags, oversize option or
//!   write) closes that client with a warning; other clients go on.
//!
//! Modules: [`proto`], the wire format (constants, headers, option
//! payloads); `server`, the accept loop and the per-client threads, with
//! `server/negotiate.rs` (the handshake) and `server/transmission.rs` (the
//! reader and writer of requests and replies).

pub mod proto;
mod server;

/// For the fuzz target and its regression test only.
#[doc(hidden)]
pub use server::fuzzing;
pub use server::{NbdServer, NbdServerHandle, NbdTls, TlsKeys, MAX_IN_FLIGHT, MAX_IN_FLIGHT_BYTES};
