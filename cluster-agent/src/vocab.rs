//! The agent's shared vocabulary: the time type, the ids an agent hands
//! out (its incarnation, heartbeat and witness request numbers), the state
//! a heartbeat announces, the heartbeat's content and the stop-failure
//! policy. Core,
//! wire, witness, config, daemon and simulator all speak it; it imports
//! nothing else of the crate, so no module import cycle runs through it.

use std::fmt;

use replication_proto::wire::{DiskState, Role};
use serde::{Deserialize, Serialize};

/// A point on the driver's monotonic clock (see [`replication_proto::time`]);
/// lengths of time are plain `u64` milliseconds.
pub use replication_proto::time::Millis;

/// One run of an agent (or of the witness): random at its start, so that
/// the packets of an earlier run are told apart. Printed in hex (`{:016x}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Incarnation(pub u64);

impl fmt::LowerHex for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

/// A heartbeat's sequence number: monotonic per incarnation, over all
/// paths; [`Seq::ZERO`] is "none yet" (the first heartbeat is 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(pub u64);

impl Seq {
    pub const ZERO: Seq = Seq(0);

    /// The number after this one.
    #[must_use]
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

/// A witness request's number: monotonic per incarnation (the witness
/// drops a request not newer than the last it answered, and the node an
/// answer whose echo is not newer than the last it took);
/// [`RequestNo::ZERO`] is "none yet".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestNo(pub u64);

impl RequestNo {
    pub const ZERO: RequestNo = RequestNo(0);

    /// The number after this one.
    #[must_use]
    pub fn next(self) -> RequestNo {
        RequestNo(self.0 + 1)
    }
}

/// A node's state as its heartbeats announce it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WireState {
    /// Secondary, not asking for anything.
    Idle = 0,
    /// Asking the peer for the resources (waits for its acknowledgement).
    Claiming = 1,
    /// Fencing, promoting or starting the chain.
    Acquiring = 2,
    /// Primary with the chain started.
    Holding = 3,
    /// Stopping the chain and demoting.
    Releasing = 4,
}

impl WireState {
    #[must_use]
    pub fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            0 => Self::Idle,
            1 => Self::Claiming,
            2 => Self::Acquiring,
            3 => Self::Holding,
            4 => Self::Releasing,
            _ => return None,
        })
    }

    /// Holds (or is about to hold, or still holds) the resources.
    #[must_use]
    pub fn holds(self) -> bool {
        matches!(self, Self::Acquiring | Self::Holding | Self::Releasing)
    }
}

/// One heartbeat's content (the wire layer adds resource, node and MAC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beat {
    /// Which path it was sent on (the receiver checks it came in there).
    pub path: u8,
    /// Random per agent start; with `started_ms` it orders restarts.
    pub incarnation: Incarnation,
    /// The sender's wall clock when it started (ms since the epoch).
    pub started_ms: u64,
    /// Monotonic per incarnation, over all paths.
    pub seq: Seq,
    /// The newest heartbeat the sender has received from us.
    pub ack: Option<BeatId>,
    pub state: WireState,
    /// The sender could take the resources now.
    pub eligible: bool,
    /// The sender is the preferred node, back and UpToDate, and wants the
    /// resources back (auto-failback).
    pub failback_request: bool,
    /// The sender's repd answers.
    pub repd_up: bool,
    pub role: Option<Role>,
    pub disk: Option<DiskState>,
    /// The sender's repd is connected to ours.
    pub connected: bool,
    /// The sender lost quorum and holds its writes (it lets go when it hears
    /// that the other node took over).
    pub suspended: bool,
    /// The sender reaches none of its ping nodes (heartbeat's ipfail).
    pub ping_lost: bool,
    /// A stop failed on the sender and `on-stop-failure = "fence"`: it asks
    /// the peer to fence it.
    pub fence_me: bool,
    /// outdate-peer: the sender holds (or claims) the resources while its
    /// repd is not connected to ours; it asks us to mark our disk Outdated
    /// (`repctl outdate`). The acknowledgement is our disk Outdated in our
    /// heartbeats.
    pub outdate_request: bool,
}

/// Which heartbeat: the sender's run (incarnation) and the sequence number
/// in that run. A heartbeat acknowledges the newest one it received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BeatId {
    pub incarnation: Incarnation,
    pub seq: Seq,
}

/// What a failed stop escalates to (`on-stop-failure`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopFailure {
    /// Keep the role and retry; the peer never takes over under a resource
    /// that may still run.
    #[default]
    Block,
    /// Ask the peer (in the heartbeat) to fence this node; it takes over once
    /// this node is gone.
    Fence,
    /// Run `reboot-command` here (once per failure), then keep blocking.
    RebootHook,
}
