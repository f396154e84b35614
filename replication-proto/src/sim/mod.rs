//! A seeded simulator for two nodes: simulated disks with a volatile write
//! cache, a simulated network that delays (with a bandwidth limit where the
//! scenario sets one), breaks and partitions, crashes
//! with power loss, an application writing on whichever node is Primary, and
//! an operator who fails over. One `u64` seed decides everything, so a failing
//! seed replays exactly (TigerBeetle's VOPR and quinn's `Pair` are the
//! models).
//!
//! Invariants checked on every run:
//! - no write acknowledged while both nodes held it (or flushed before a
//!   crash) is lost by a single crash or any number of network faults;
//! - after the network heals and the resync ends, both data regions are
//!   identical and both disks UpToDate;
//! - a split brain is always detected and never merged silently;
//! - the state machine never panics (a panic fails the run).

// The simulator is a test harness: an out-of-range index there is a bug in
// the harness, caught as a violation by `run`, never input from outside.
#![allow(
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::unwrap_used
)]

mod disk;
mod oracle;
mod world;

pub use world::{run, run_resuming, slow_link_resync, Link, Scenario, SimReport, Violation};
