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
//!
//! Modules:
//! - `scenario`: what a seed exercises ([`Scenario`], [`Kind`], [`Link`]);
//! - `world`: the state, the event queue and its loop, [`run`];
//! - `nodes`: each node's plumbing (events in, actions out, metadata writes);
//! - `disk`: a disk with a volatile cache, and the metadata area;
//! - `network`: the link (latency, partitions, bandwidth, damage);
//! - `app`: the application's requests on the Primary;
//! - `faults`: the fault schedule and the operator;
//! - `detach`: disk failures, Diskless nodes and the attach of a repaired or new disk;
//! - `checks` and `oracle`: the invariants, and what the data must show.

// The simulator is a test harness: an out-of-range index there is a bug in
// the harness, caught as a violation by `run`, never input from outside.
#![allow(
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::unwrap_used
)]

mod app;
mod checks;
mod detach;
mod disk;
mod faults;
mod network;
mod nodes;
mod oracle;
mod scenario;
mod world;

pub use crate::simkit::Violation;
pub use scenario::{Kind, Link, Rates, Scenario};
pub use world::{run, run_resuming, slow_link_resync, SimReport};
