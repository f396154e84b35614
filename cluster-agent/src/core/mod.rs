//! The agent's decisions, sans IO: events in (a heartbeat from the peer on a
//! path, a timer tick, the local repd's status, the result of an operation),
//! actions out (send a heartbeat on a path, promote, demote, start or stop a
//! resource of the chain, run the fence command, log a transition). It never
//! touches a socket, a clock or a process, so the simulator drives it
//! deterministically from one seed, like `replication_proto::machine`.
//!
//! # Rules
//! - **Membership.** The peer is alive while some path heard a valid,
//!   fresh heartbeat from it within `deadtime`; a path silent for `warntime`
//!   is logged as late. Right after the start, a peer never heard is given
//!   `initdead` before it is declared dead.
//! - **Claim (peer alive).** When nobody holds the resources, the designated
//!   node (the `preferred` one, else the smaller name; or the only eligible
//!   one) *claims*: it announces `Claiming` and promotes only after a
//!   heartbeat of the peer that acknowledges the claim (its `ack` covers the
//!   claim's sequence number) and says the peer is `Idle`. A node that has
//!   seen the peer claim or hold never claims itself, and two simultaneous
//!   claims are settled by the same fixed order on both sides, so with any
//!   path working two nodes never promote at once.
//! - **Takeover (peer dead).** An eligible node (UpToDate, or Consistent
//!   with the peer known Outdated; the peer's repd not seen Primary over the
//!   replication link) runs the fence command first when one is configured
//!   and promotes only on DRBD fence-peer exit codes 4 (peer outdated), 5
//!   (peer unreachable) or 7 (peer fenced); anything else leaves it
//!   Secondary, says why, and retries after `deadtime`. Without a fence
//!   command it promotes on deadtime alone, as heartbeat does, and says so.
//! - **Quorum (with a witness).** Votes are leases: the peer's
//!   acknowledgement of a heartbeat, or the witness's answer to a request,
//!   counts for deadtime / 2 from the moment *we sent* it; the other side
//!   acts only after a whole deadtime of silence. A Primary with fewer than
//!   two votes of three suspends new writes at once (beside the chain's
//!   operations) and resumes when quorum is back, unless the peer took over
//!   (then it releases). A dead peer is replaced only with the witness's
//!   vote; a node not connected to the peer's repd is eligible only on a
//!   recent answer of the witness counting it (its data is not older than
//!   what the witness saw). repd is armed to freeze on disconnect, and a
//!   frozen Primary writes on alone only once the witness acknowledged its
//!   new data generation.
//! - **outdate-peer.** Holding or claiming while our repd is not connected
//!   to the peer's: the heartbeats ask the peer to mark its disk Outdated;
//!   a claim waits for that (the peer's disk Outdated in its heartbeats).
//! - **Chain.** After the promotion the resources start left to right; before
//!   the demotion they stop right to left. A failed start stops what was
//!   started (the failed one too), demotes, and bans this node from the
//!   chain for `failure-timeout`. A failed stop is never ignored: the node
//!   keeps the role (so the peer does not take over under a resource still
//!   running) and retries every `deadtime`.
//! - **Monitors.** While holding, each resource is checked at its
//!   interval ([`Action::Monitor`], answered by [`Input::MonitorResult`]).
//!   A failure counts against the resource and restarts it in place: the
//!   resources after it stop right to left, then it and they start again,
//!   the device staying Primary. At its `migration-threshold` the chain
//!   moves to the peer (a handover, when the peer could take it) and this
//!   node is banned from it for `failure-timeout` (or until `cleanup`);
//!   fail counts are forgotten `failure-timeout` after the last failure.
//! - **Conflicts.** Two holders that hear each other (after a partition
//!   without fencing): the one that loses the fixed order releases.
//! - **Auto-failback.** The preferred node, back and UpToDate, asks for the
//!   resources; the holder releases them, and nobody but the preferred node
//!   claims while it asks.
//!
//! # Modules
//! - `io`: inputs, actions, operations, settings;
//! - `membership`: paths, the peer's liveness and incarnation, sending heartbeats;
//! - `decide`: what to do next in each state, eligibility;
//! - `chain`: promotion, the resource chain's starts and stops, demotion;
//! - `quorum`: votes as leases, the witness, suspending a Primary's writes;
//! - `handover`: switchover, ping nodes, stop-failure escalation, outdate-peer;
//! - `monitor`: the chain's monitors, fail counts, the ban, `cleanup`;
//! - `status`: `cluster-agent status`, transitions and events.

use std::collections::VecDeque;

mod chain;
mod decide;
mod handover;
mod io;
mod membership;
mod monitor;
mod quorum;
mod status;

pub use crate::vocab::{Beat, BeatId, Incarnation, Millis, RequestNo, Seq, StopFailure, WireState};
pub use chain::ResState;
pub use io::{
    Action, BadPacket, CoreConfig, HaState, Input, LocalState, MonitorConfig, MonitorOutcome, Op,
    OpResult, OpsConfig, PingView,
};
pub use monitor::{BanStatus, MonitorStatus};
pub use status::{CoreStatus, Counters, Event, PathStatus, PeerStatus, QuorumStatus, Transition};

use handover::Handover;
use membership::{PathView, PeerView, Sender};
use monitor::{Ban, Monitors};
use quorum::Quorum;
use status::History;

/// The decision core of one agent.
///
/// # Driver contract
/// The same as `replication_proto::machine::Node`'s:
/// - **Inputs one at a time.** Give an input with [`Core::handle`] (or an
///   operator's request: [`Core::request_switchover`], [`Core::set_ping`],
///   [`Core::note`]), then take every action with [`Core::poll_action`]
///   before the next input, and carry them out in the order given:
///   heartbeats and witness requests are sent in that order; operations of
///   the chain run one at a time, the I/O controls ([`Op::is_io_control`])
///   beside them; each operation is answered once, with [`Input::Done`].
/// - **Time only moves forward.** `now` is a point on the driver's
///   monotonic clock and never smaller than in the call before (debug builds
///   assert it).
/// - **Ticks no later than [`Core::poll_timeout`].** Earlier ticks are
///   harmless; the daemon ticks after every input and at least every second.
/// - **Logging.** [`Action::Log`] carries no node name: the driver puts the
///   core's lines under a span per node (the daemon's `agent` span with
///   `node`, the simulator's trace prefix).
#[derive(Debug)]
pub struct Core {
    cfg: CoreConfig,
    /// The latest `now` given (time only moves forward).
    now: Millis,
    incarnation: Incarnation,
    started_ms: u64,
    start: Millis,
    phase: Phase,
    state_since: Millis,
    /// The promotion is done (the device is Primary by our hand or adopted).
    promoted: bool,
    /// The chain's operation in flight (one at a time).
    pending: Option<Op>,
    res: Vec<ResState>,
    local: Option<LocalState>,
    local_known: bool,
    peer: PeerView,
    paths: Vec<PathView>,
    tx: Sender,
    timers: Timers,
    fence_outdated_peer: bool,
    last_fence: Option<String>,
    q: Quorum,
    ho: Handover,
    mon: Monitors,
    hist: History,
    actions: VecDeque<Action>,
}

/// The timers that hold a decision back.
#[derive(Debug, Default)]
struct Timers {
    /// Fencing, promotion, stop, demotion or outdate is retried then.
    retry_at: Option<Millis>,
    /// A failed start, or a resource that failed its monitor
    /// migration-threshold times, keeps this node from taking over.
    ban: Option<Ban>,
    /// Until when a refused promotion keeps this node ineligible, and why.
    promote_failed: Option<(Millis, String)>,
}

/// The agent's state with the data that belongs to that state alone.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Idle,
    /// Waiting for the peer to acknowledge our heartbeat `claim_seq`.
    Claiming {
        claim_seq: Seq,
    },
    /// The fence command runs; `on_request`: the peer asked for it (its
    /// stop failed), so success does not mean a takeover now.
    Fencing {
        on_request: bool,
    },
    /// The next step: 0 = promote (`force`: a Consistent disk whose peer is
    /// known Outdated), i + 1 = start resource i.
    Acquiring {
        step: usize,
        force: bool,
    },
    Holding,
    /// `left` resources are left to stop, then demote. `rollback`: after a
    /// failed start (ends with the failure timeout); `handover`: a planned
    /// handover (ends leaving the resources to the peer); `restart_from`:
    /// a restart in place after a failed monitor of that resource (stops
    /// down to it, then starts it and the rest again, still Primary).
    Releasing {
        left: usize,
        rollback: bool,
        handover: bool,
        restart_from: Option<usize>,
    },
}

impl Phase {
    fn state(&self) -> HaState {
        match self {
            Phase::Idle => HaState::Idle,
            Phase::Claiming { .. } => HaState::Claiming,
            Phase::Fencing { .. } => HaState::Fencing,
            Phase::Acquiring { .. } => HaState::Acquiring,
            Phase::Holding => HaState::Holding,
            Phase::Releasing { .. } => HaState::Releasing,
        }
    }

    /// Acquiring: the next step; Releasing: how many resources are left.
    fn step(&self) -> usize {
        match self {
            Phase::Acquiring { step, .. } => *step,
            Phase::Releasing { left, .. } => *left,
            other => {
                debug_assert!(false, "no chain step in {other:?}");
                0
            }
        }
    }

    fn set_step(&mut self, n: usize) {
        match self {
            Phase::Acquiring { step, .. } => *step = n,
            Phase::Releasing { left, .. } => *left = n,
            other => debug_assert!(false, "no chain step in {other:?}"),
        }
    }

    fn claim_seq(&self) -> Seq {
        match self {
            Phase::Claiming { claim_seq } => *claim_seq,
            other => {
                debug_assert!(false, "no claim in {other:?}");
                Seq(u64::MAX)
            }
        }
    }

    fn rollback(&self) -> bool {
        matches!(self, Phase::Releasing { rollback: true, .. })
    }

    fn restart_from(&self) -> Option<usize> {
        match self {
            Phase::Releasing { restart_from, .. } => *restart_from,
            _ => None,
        }
    }
}

impl Core {
    /// A core that starts Idle at `now`. `incarnation` should be random and
    /// `started_ms` the wall clock, so that the peer can tell a restart from
    /// a replay.
    #[must_use]
    pub fn new(cfg: CoreConfig, incarnation: Incarnation, started_ms: u64, now: Millis) -> Self {
        let paths = vec![PathView::default(); cfg.paths];
        let res = vec![ResState::Stopped; cfg.resources];
        let mon = Monitors::new(cfg.resources);
        Self {
            cfg,
            incarnation,
            started_ms,
            start: now,
            now,
            phase: Phase::Idle,
            state_since: now,
            promoted: false,
            pending: None,
            res,
            local: None,
            local_known: false,
            peer: PeerView::default(),
            paths,
            tx: Sender::new(now),
            timers: Timers::default(),
            fence_outdated_peer: false,
            last_fence: None,
            q: Quorum::default(),
            ho: Handover::default(),
            mon,
            hist: History::new(),
            actions: VecDeque::new(),
        }
    }

    #[must_use]
    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    #[must_use]
    pub fn state(&self) -> HaState {
        self.phase.state()
    }

    #[must_use]
    pub fn pending(&self) -> Option<&Op> {
        self.pending.as_ref()
    }

    #[must_use]
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    #[must_use]
    pub fn counters(&self) -> &Counters {
        &self.hist.counters
    }

    /// A failed start or failed monitors keep this node from taking over
    /// (for failure-timeout, or until `cleanup`).
    #[must_use]
    pub fn cooling_down(&self, now: Millis) -> bool {
        self.banned(now).is_some()
    }

    /// A retry timer (fencing, promotion, stop or demotion) is running.
    #[must_use]
    pub fn retry_pending(&self, now: Millis) -> bool {
        self.timers.retry_at.is_some_and(|t| now < t)
    }

    #[must_use]
    pub fn peer_alive(&self) -> Option<bool> {
        self.peer.alive
    }

    /// Note the driver's clock: it only moves forward.
    fn advance(&mut self, now: Millis) {
        debug_assert!(
            now >= self.now,
            "time went backwards: {now} after {}",
            self.now
        );
        self.now = self.now.max(now);
    }

    /// The next action to carry out.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When the core wants a [`Input::Tick`] at the latest: the next
    /// heartbeat is always due, so this is never `None` today; a driver
    /// may tick earlier (the daemon ticks after every input) but not later.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Millis> {
        let mut t = self.tx.next_send;
        let mut at = |x: Millis| t = t.min(x);
        for p in &self.paths {
            if let Some(h) = p.last_heard {
                if p.up {
                    at(h.plus_ms(self.cfg.deadtime));
                    if !p.late {
                        at(h.plus_ms(self.cfg.warntime));
                    }
                }
            }
        }
        if self.peer.alive.is_none() {
            at(self.start.plus_ms(self.cfg.initdead));
        }
        if let Some(r) = self.timers.retry_at {
            at(r);
        }
        if let Some(y) = self.ho.yield_until {
            at(y);
        }
        if let Some(p) = self.ho.ping_lost_since {
            at(p.plus_ms(self.cfg.ops.ping_settle));
        }
        if let Some(c) = self.timers.ban.as_ref().and_then(|b| b.until) {
            at(c);
        }
        if let Some(m) = self.monitor_deadlines() {
            at(m);
        }
        if let Some((t, _)) = &self.timers.promote_failed {
            at(*t);
        }
        if self.state() == HaState::Claiming {
            at(self.state_since.plus_ms(self.cfg.deadtime));
        }
        if self.cfg.witness && self.q.io_pending.is_none() && !self.q.suspended {
            // The moment the votes run out: the suspension must not wait
            // for the next heartbeat.
            at(self.q.peer_until.max(self.q.witness_until));
        }
        Some(t)
    }

    /// Feed one input; then take the actions with [`Core::poll_action`].
    pub fn handle(&mut self, now: Millis, input: Input) {
        self.advance(now);
        match input {
            Input::Tick => {}
            Input::Beat { path, beat } => self.on_beat(now, path, beat),
            Input::BadPacket { kind, .. } => match kind {
                BadPacket::BadMac => self.hist.counters.bad_mac += 1,
                BadPacket::Malformed => self.hist.counters.malformed += 1,
                BadPacket::Foreign => self.hist.counters.foreign += 1,
            },
            Input::Local(l) => self.on_local(now, l),
            Input::Done { op, result } if op.is_io_control() => self.on_io_done(now, op, result),
            Input::Done { op, result } => self.on_done(now, op, result),
            Input::Witness(r) => self.on_witness(now, &r),
            Input::MonitorResult { res, id, outcome } => self.on_monitor(now, res, id, outcome),
        }
        self.evaluate(now);
    }
}
