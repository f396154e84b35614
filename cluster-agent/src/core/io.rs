//! What goes in and out of the core: its inputs, actions and operations,
//! the local repd's state, the settings, and the agent's finer state.

use replication_proto::gen::Generations;
use replication_proto::wire::{DiskState, Role};
use serde::{Deserialize, Serialize};

use crate::vocab::{Beat, StopFailure, WireState};
use crate::witness;

/// The agent's own state (finer than what the heartbeat says).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HaState {
    Idle,
    Claiming,
    Fencing,
    Acquiring,
    Holding,
    Releasing,
}

impl HaState {
    #[must_use]
    pub fn wire(self) -> WireState {
        match self {
            Self::Idle => WireState::Idle,
            Self::Claiming => WireState::Claiming,
            Self::Fencing | Self::Acquiring => WireState::Acquiring,
            Self::Holding => WireState::Holding,
            Self::Releasing => WireState::Releasing,
        }
    }
}

/// What the local repd says (`repctl status`), reduced to what matters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalState {
    pub role: Role,
    pub disk: DiskState,
    /// Connected to the peer's repd (including resync and verify).
    pub connected: bool,
    /// The peer's role as seen over the replication link (when connected).
    pub peer_role: Option<Role>,
    pub peer_disk: DiskState,
    /// The data generations (the witness compares them).
    #[serde(default)]
    pub gens: Generations,
    /// repd holds or fails new writes (`repctl suspend-io`).
    #[serde(default)]
    pub suspended: bool,
    /// repd freezes its I/O when it loses the peer while Primary.
    #[serde(default)]
    pub freeze_armed: bool,
}

/// An operation the driver carries out, one at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Make the device Primary (`force` for a Consistent disk whose peer is
    /// known Outdated).
    Promote {
        force: bool,
    },
    Demote,
    /// Start resource `i` of the chain (after the device).
    Start(usize),
    Stop(usize),
    /// Run the fence command against the peer.
    Fence,
    /// Run `reboot-command` after a failed stop (`on-stop-failure = "reboot-hook"`).
    RebootHook,
    /// Quorum lost: hold (or `fail`) new writes on the local repd.
    SuspendIo {
        fail: bool,
    },
    /// Quorum back: let held writes in — if the data generation is still
    /// `current` (repd refuses when it froze again since).
    ResumeIo {
        current: u64,
    },
    /// With a witness: make repd freeze I/O when it loses the peer while
    /// Primary, so that nothing is acknowledged alone before the witness
    /// knows the new data generation.
    ArmFreeze,
    /// outdate-peer, on the peer's request: mark the local disk Outdated.
    Outdate,
}

impl Op {
    /// Suspension and resumption run beside the chain's one-at-a-time
    /// operations: a Primary that loses quorum must not wait for a
    /// resource start to finish.
    #[must_use]
    pub fn is_io_control(&self) -> bool {
        matches!(
            self,
            Op::SuspendIo { .. } | Op::ResumeIo { .. } | Op::ArmFreeze
        )
    }
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    Ok,
    Failed(String),
    /// The fence command's exit code (`None`: killed or timed out), and what
    /// it printed.
    FenceExit(Option<i32>, String),
}

/// Why a datagram was dropped before the core saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPacket {
    BadMac,
    Malformed,
    /// Another resource's or node's heartbeat (valid MAC).
    Foreign,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Tick,
    /// A heartbeat with a valid MAC from the peer, received on `path`.
    Beat {
        path: usize,
        beat: Beat,
    },
    BadPacket {
        path: usize,
        kind: BadPacket,
    },
    /// The local repd's status; `None` when it does not run.
    Local(Option<LocalState>),
    Done {
        op: Op,
        result: OpResult,
    },
    /// An authenticated answer of the witness addressed to this node.
    Witness(witness::Reply),
    /// What the monitor `id` of resource `res` found (see
    /// [`Action::Monitor`]); a result the core no longer waits for is
    /// ignored.
    MonitorResult {
        res: usize,
        id: u64,
        outcome: MonitorOutcome,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send {
        path: usize,
        beat: Beat,
    },
    Run(Op),
    /// Ask the witness (every keepalive while a witness is configured).
    AskWitness(witness::Request),
    /// Check whether resource `res` of the chain still runs (its monitor:
    /// `SCRIPT status`, the mount, the address), beside the chain's
    /// operations and without holding up the core; answer with
    /// [`Input::MonitorResult`] carrying the same `id`.
    Monitor {
        res: usize,
        id: u64,
    },
    /// Something to log (transitions and membership changes, with causes).
    Log {
        warn: bool,
        text: String,
    },
}

/// The agent's settings; every length of time is in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreConfig {
    pub me: String,
    pub peer: String,
    pub keepalive: u64,
    pub warntime: u64,
    pub deadtime: u64,
    pub initdead: u64,
    pub paths: usize,
    /// Resources after the device.
    pub resources: usize,
    pub fencing: bool,
    pub auto_failback: bool,
    pub preferred: Option<String>,
    pub failure_timeout: u64,
    /// A witness is configured: quorum rules apply (2 votes of 3).
    pub witness: bool,
    /// On quorum loss, fail new writes instead of holding them.
    pub no_quorum_fail: bool,
    /// Switchover, ping nodes and stop-failure escalation.
    pub ops: OpsConfig,
    /// Each resource's monitor (missing entries: not monitored).
    pub monitors: Vec<MonitorConfig>,
}

/// How one resource of the chain is monitored (Pacemaker's recurring
/// monitor operation and `migration-threshold`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorConfig {
    /// One monitor this often while the chain runs; 0: not monitored.
    pub interval_ms: u64,
    /// After this many failures on this node (counted until
    /// failure-timeout passes without one), the chain moves to the peer;
    /// below it the resource is restarted in place. 0: never moves.
    pub threshold: u32,
}

/// What a resource's monitor found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MonitorOutcome {
    /// It runs (LSB status exit 0; mounted; address present).
    Running,
    /// It does not run (LSB status exit 3; not mounted; address gone).
    Stopped,
    /// The monitor failed (another exit code, a timeout): not running as
    /// far as the agent can tell.
    Failed(String),
}

/// The settings of planned handovers and escalations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpsConfig {
    pub on_stop_failure: StopFailure,
    /// How long a node that handed the resources over leaves them to the
    /// peer before it may claim them again (if the peer never took them).
    pub handover_grace: u64,
    /// How long a holder that lost its ping nodes waits before it hands
    /// over, so that a peer that lost them at the same time (the ping node
    /// itself went down) has said so in its heartbeat: one ping interval
    /// plus two keepalives.
    pub ping_settle: u64,
}

/// What the ping nodes answered (`[cluster] ping-nodes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingView {
    pub reachable: usize,
    pub configured: usize,
}

pub(super) fn result_text(r: &OpResult) -> String {
    match r {
        OpResult::Ok => "ok".into(),
        OpResult::Failed(e) => e.clone(),
        OpResult::FenceExit(c, out) => format!("exit {c:?}: {out}"),
    }
}
