//! The replication core: wire format and the sans-IO replication state machine.
//!
//! Nothing here touches a socket, a clock or a file. The caller (the node
//! daemon, or the simulator in `sim`) owns all I/O: it feeds [`machine::Event`]s
//! in and carries out the [`machine::Action`]s that come out. That keeps the
//! core deterministic, so one seed replays one run exactly.
//!
//! The simulator (`sim`) and what the workspace's simulators share
//! (`simkit`) are test tooling, built only with the `sim` feature.
//!
//! - [`wire`]: the wire format: messages, the frame codec (crc32c over
//!   header and payload), run-length coded bitmap chunks, the HMAC handshake.
//! - [`machine`]: the sans-IO state machine ([`machine::Node`]), its inputs
//!   and outputs, the sync decision table, the activity log, the in-memory
//!   bitmap and the ordering of overlapping local I/O.
//! - [`gen`]: generation UUIDs.
//! - [`meta`]: what the state machine needs persisted (not where).
//! - [`checksum`]: CRC32C, two implementations.
//! - [`time`]: [`time::Millis`], the one time type of the sans-IO cores.
//! - `sim` (feature `sim`): the seeded two-node simulator (`repsim`).
//! - `simkit` (feature `sim`): what the workspace's seeded simulators
//!   share: seed-drawn fault rates, the violation, the seed-range runner.

pub mod checksum;
pub mod gen;
pub mod machine;
pub mod meta;
#[cfg(feature = "sim")]
pub mod sim;
#[cfg(feature = "sim")]
pub mod simkit;
pub mod time;
pub mod wire;
