//! The replication core: wire format and the sans-IO replication state machine.
//!
//! Nothing here touches a socket, a clock or a file. The caller (the node
//! daemon, or the simulator in `sim`) owns all I/O: it feeds [`machine::Event`]s
//! in and carries out the [`machine::Action`]s that come out. That keeps the
//! core deterministic, so one seed replays one run exactly.
//!
//! The simulator (`sim`) and what the workspace's simulators share
//! (`simkit`) are test tooling, built only with the `sim` feature.

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
