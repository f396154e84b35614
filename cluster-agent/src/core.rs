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
//!   started (the failed one too), demotes, and keeps this node from taking
//!   over for `failure-timeout`. A failed stop is never ignored: the node
//!   keeps the role (so the peer does not take over under a resource still
//!   running) and retries every `deadtime`.
//! - **Conflicts.** Two holders that hear each other (after a partition
//!   without fencing): the one that loses the fixed order releases.
//! - **Auto-failback.** The preferred node, back and UpToDate, asks for the
//!   resources; the holder releases them, and nobody but the preferred node
//!   claims while it asks.

use std::collections::VecDeque;

use replication_proto::gen::Generations;
use replication_proto::wire::{DiskState, Role};
use serde::{Deserialize, Serialize};

pub use crate::vocab::{Beat, Millis, StopFailure, WireState};
use crate::witness;

/// How many transitions and events the status keeps.
const HISTORY: usize = 32;

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

/// Counters of what came in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub sent: u64,
    pub received: u64,
    pub bad_mac: u64,
    /// Replayed or old sequence numbers (and packets of an older incarnation).
    pub replay: u64,
    pub malformed: u64,
    /// Valid MAC, but another resource or node.
    pub foreign: u64,
    pub peer_restarts: u64,
}

/// One resource's state in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResState {
    Stopped,
    /// Found Primary on adoption: the resource may run (stop treats it as started).
    Unknown,
    Starting,
    Started,
    Stopping,
    StartFailed(String),
    StopFailed(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// The last time it happened.
    pub at: Millis,
    pub from: HaState,
    pub to: HaState,
    pub reason: String,
    /// How often in a row (a fence retried every deadtime is one entry).
    pub count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub at: Millis,
    pub what: String,
}

#[derive(Debug, Clone, Default)]
struct PathView {
    max_seq: u64,
    last_heard: Option<Millis>,
    received: u64,
    up: bool,
    late: bool,
}

#[derive(Debug, Clone, Default)]
struct PeerView {
    /// (incarnation, started_ms) of the peer's current run.
    incarnation: Option<(u64, u64)>,
    last_valid: Option<Millis>,
    max_seq: u64,
    latest: Option<Beat>,
    alive: Option<bool>,
}

/// What `status` shows of the peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    /// `None` while waiting for the first heartbeat within initdead.
    pub alive: Option<bool>,
    pub state: Option<WireState>,
    pub role: Option<Role>,
    pub disk: Option<DiskState>,
    pub connected: Option<bool>,
    pub eligible: Option<bool>,
    pub failback_request: Option<bool>,
    pub incarnation: Option<String>,
    pub last_heard_ms_ago: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathStatus {
    pub index: usize,
    pub up: bool,
    pub late: bool,
    pub last_heard_ms_ago: Option<u64>,
    pub received: u64,
}

/// The quorum part of `cluster-agent status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumStatus {
    /// A witness is configured (without one, two nodes never lose quorum:
    /// they fence).
    pub witness_configured: bool,
    /// Votes this node counts now (itself, the peer, the witness) of 3.
    pub votes: u32,
    pub has_quorum: bool,
    /// The peer acknowledged a recent heartbeat of ours.
    pub peer_vote: bool,
    /// The witness answered a recent request and counts us as a member.
    pub witness_vote: bool,
    /// The witness answered within deadtime.
    pub witness_reachable: bool,
    pub witness_last_reply_ms_ago: Option<u64>,
    /// Why the witness does not count us, or refused its vote.
    pub witness_says: Option<String>,
    /// How long the witness has not heard the peer, as it last said.
    pub witness_peer_silent_ms: Option<u64>,
    /// The local repd holds (or fails) new writes because quorum was lost.
    pub io_suspended: bool,
}

/// The core's part of `cluster-agent status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreStatus {
    pub node: String,
    pub state: HaState,
    pub state_for_ms: u64,
    /// True from the promotion until the demotion.
    pub holds_role: bool,
    /// Why it did or did not promote, in words.
    pub decision: String,
    pub fencing: String,
    pub last_fence: Option<String>,
    pub failure_timeout_left_ms: Option<u64>,
    /// Votes, witness reachability, whether this node holds quorum.
    pub quorum: QuorumStatus,
    pub stop_failed: Option<String>,
    pub on_stop_failure: StopFailure,
    /// The ping nodes this node reaches (None: none configured, or no answer yet).
    pub ping: Option<PingView>,
    /// A planned handover (switchover, lost ping nodes) in progress or just done.
    pub handover: Option<String>,
    pub pending: Option<Op>,
    pub local: Option<LocalState>,
    pub peer: PeerStatus,
    pub paths: Vec<PathStatus>,
    pub resources: Vec<ResState>,
    pub counters: Counters,
    pub transitions: Vec<Transition>,
    pub events: Vec<Event>,
}

/// What this node knows about its votes. A vote is a lease: the peer's
/// acknowledgement of our heartbeat (or the witness's answer to our request)
/// sent at `s` counts until `s + deadtime / 2`, measured on our clock from
/// the moment we *sent*, which the other side received no earlier. The
/// other side lets a takeover happen only after hearing nothing from us for
/// a whole deadtime, so our lease always runs out first.
#[derive(Debug, Clone, Default)]
struct Quorum {
    /// (heartbeat seq, sent at) of recent rounds; and the same for requests.
    hb_sent: VecDeque<(u64, Millis)>,
    w_sent: VecDeque<(u64, Millis)>,
    w_seq: u64,
    /// Votes valid until.
    peer_until: Millis,
    witness_until: Millis,
    witness_last: Option<Millis>,
    witness_member: Option<bool>,
    witness_says: Option<String>,
    witness_peer_silent: Option<u64>,
    /// The highest request seq answered (older answers are replays).
    w_answered: u64,
    /// The witness remembers the peer Outdated (last member answer).
    witness_peer_outdated: bool,
    /// A takeover vote valid until.
    vote_until: Option<Millis>,
    /// Ask the witness for its vote in the next requests.
    want_vote: bool,
    /// The repd holds/fails writes by our hand.
    suspended: bool,
    io_pending: Option<Op>,
    /// The suspension fails requests (rather than holding them).
    failing: bool,
    /// repd refused to arm the freeze (not tried again).
    freeze_refused: bool,
    /// The generations last sent to the witness, the first request that
    /// carried them, and the newest request it answered as a member.
    gens_sent: Option<Generations>,
    gens_seq: u64,
    member_seq: u64,
}

/// The decision core of one agent.
#[derive(Debug)]
pub struct Core {
    cfg: CoreConfig,
    incarnation: u64,
    started_ms: u64,
    start: Millis,
    seq: u64,
    state: HaState,
    state_since: Millis,
    /// Acquiring: the next step (0 = promote, i + 1 = start resource i).
    /// Releasing: how many resources are left to stop (then demote).
    step: usize,
    force: bool,
    /// The promotion is done (the device is Primary by our hand or adopted).
    promoted: bool,
    pending: Option<Op>,
    claim_seq: u64,
    /// A release that follows a failed start ends with the failure timeout.
    rollback: bool,
    res: Vec<ResState>,
    local: Option<LocalState>,
    local_known: bool,
    peer: PeerView,
    paths: Vec<PathView>,
    next_send: Millis,
    send_now: bool,
    retry_at: Option<Millis>,
    cooldown_until: Option<Millis>,
    fence_outdated_peer: bool,
    q: Quorum,
    /// Until when a refused promotion keeps this node ineligible, and why.
    promote_failed: Option<(Millis, String)>,
    last_fence: Option<String>,
    stop_failed: Option<String>,
    /// Why the last release was a planned handover (switchover, ping).
    handover: Option<String>,
    /// The running release is that handover.
    handing_over: bool,
    /// After a handover: do not claim until then (or until the peer holds).
    yield_until: Option<Millis>,
    /// A switchover moved the resources away: no auto-failback request.
    no_failback: bool,
    ping: Option<PingView>,
    /// Since when no ping node answers.
    ping_lost_since: Option<Millis>,
    /// The stop-failure escalation ran for the current failure.
    escalated: bool,
    /// The running fence answers the peer's own request (its stop failed).
    fencing_on_request: bool,
    decision: String,
    transitions: VecDeque<Transition>,
    events: VecDeque<Event>,
    counters: Counters,
    actions: VecDeque<Action>,
}

impl Core {
    /// A core that starts Idle at `now`. `incarnation` should be random and
    /// `started_ms` the wall clock, so that the peer can tell a restart from
    /// a replay.
    #[must_use]
    pub fn new(cfg: CoreConfig, incarnation: u64, started_ms: u64, now: Millis) -> Self {
        let paths = vec![PathView::default(); cfg.paths];
        let res = vec![ResState::Stopped; cfg.resources];
        Self {
            cfg,
            incarnation,
            started_ms,
            start: now,
            seq: 0,
            state: HaState::Idle,
            state_since: now,
            step: 0,
            force: false,
            promoted: false,
            pending: None,
            claim_seq: 0,
            rollback: false,
            res,
            local: None,
            local_known: false,
            peer: PeerView::default(),
            paths,
            next_send: now,
            send_now: true,
            retry_at: None,
            cooldown_until: None,
            fence_outdated_peer: false,
            q: Quorum::default(),
            promote_failed: None,
            last_fence: None,
            stop_failed: None,
            handover: None,
            handing_over: false,
            yield_until: None,
            no_failback: false,
            ping: None,
            ping_lost_since: None,
            escalated: false,
            fencing_on_request: false,
            decision: "starting".into(),
            transitions: VecDeque::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
            actions: VecDeque::new(),
        }
    }

    #[must_use]
    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    #[must_use]
    pub fn state(&self) -> HaState {
        self.state
    }

    #[must_use]
    pub fn pending(&self) -> Option<&Op> {
        self.pending.as_ref()
    }

    #[must_use]
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    #[must_use]
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// A failed start keeps this node from taking over until then.
    #[must_use]
    pub fn cooling_down(&self, now: Millis) -> bool {
        self.cooldown_until.is_some_and(|t| now < t)
    }

    /// A retry timer (fencing, promotion, stop or demotion) is running.
    #[must_use]
    pub fn retry_pending(&self, now: Millis) -> bool {
        self.retry_at.is_some_and(|t| now < t)
    }

    #[must_use]
    pub fn peer_alive(&self) -> Option<bool> {
        self.peer.alive
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
        let mut t = self.next_send;
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
        if let Some(r) = self.retry_at {
            at(r);
        }
        if let Some(y) = self.yield_until {
            at(y);
        }
        if let Some(p) = self.ping_lost_since {
            at(p.plus_ms(self.cfg.ops.ping_settle));
        }
        if let Some(c) = self.cooldown_until {
            at(c);
        }
        if let Some((t, _)) = &self.promote_failed {
            at(*t);
        }
        if self.state == HaState::Claiming {
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
        match input {
            Input::Tick => {}
            Input::Beat { path, beat } => self.on_beat(now, path, beat),
            Input::BadPacket { kind, .. } => match kind {
                BadPacket::BadMac => self.counters.bad_mac += 1,
                BadPacket::Malformed => self.counters.malformed += 1,
                BadPacket::Foreign => self.counters.foreign += 1,
            },
            Input::Local(l) => self.on_local(now, l),
            Input::Done { op, result } if op.is_io_control() => self.on_io_done(now, op, result),
            Input::Done { op, result } => self.on_done(now, op, result),
            Input::Witness(r) => self.on_witness(now, &r),
        }
        self.evaluate(now);
    }

    // ----- inputs ------------------------------------------------------------

    fn on_beat(&mut self, now: Millis, path: usize, beat: Beat) {
        if path >= self.paths.len() || usize::from(beat.path) != path {
            // Sent for another path: recorded elsewhere, or misconfigured.
            self.counters.malformed += 1;
            return;
        }
        match self.peer.incarnation {
            Some((inc, _)) if inc == beat.incarnation => {}
            Some((_, started)) => {
                let silent = self
                    .peer
                    .last_valid
                    .is_none_or(|t| now.ms_since(t) >= self.cfg.deadtime);
                if beat.started_ms <= started && !silent {
                    // An older run of the peer (a replay), or a clock that went
                    // back: believed only once the current run went silent.
                    self.counters.replay += 1;
                    return;
                }
                self.counters.peer_restarts += 1;
                self.event(
                    now,
                    false,
                    format!(
                        "peer {} restarted (new incarnation {:016x})",
                        self.cfg.peer, beat.incarnation
                    ),
                );
                self.new_incarnation(&beat);
            }
            None => self.new_incarnation(&beat),
        }
        let Some(pv) = self.paths.get_mut(path) else {
            return;
        };
        if beat.seq <= pv.max_seq {
            self.counters.replay += 1;
            return;
        }
        pv.max_seq = beat.seq;
        pv.last_heard = Some(now);
        let lease = self.cfg.deadtime / 2;
        if let Some((inc, seq)) = beat.ack {
            if inc == self.incarnation {
                if let Some(t) = sent_at(&self.q.hb_sent, seq) {
                    self.q.peer_until = self.q.peer_until.max(t + lease);
                }
            }
        }
        pv.received += 1;
        self.counters.received += 1;
        self.peer.last_valid = Some(now);
        if beat.seq > self.peer.max_seq {
            self.peer.max_seq = beat.seq;
            let changed = self.peer.latest.as_ref().is_none_or(|old| {
                old.state != beat.state
                    || old.eligible != beat.eligible
                    || old.failback_request != beat.failback_request
            });
            if changed {
                // Answer at once: a claim waits for our acknowledgement.
                self.send_now = true;
            }
            if beat.disk.is_some_and(|d| d != DiskState::Outdated) {
                // The peer's own word replaces what the fence said.
                self.fence_outdated_peer = false;
            }
            self.peer.latest = Some(beat);
        }
    }

    fn new_incarnation(&mut self, beat: &Beat) {
        self.peer.incarnation = Some((beat.incarnation, beat.started_ms));
        self.peer.max_seq = 0;
        self.peer.latest = None;
        for p in &mut self.paths {
            p.max_seq = 0;
        }
    }

    fn on_local(&mut self, now: Millis, l: Option<LocalState>) {
        let before = self.local.as_ref().map(|s| (s.role, s.disk));
        let after = l.as_ref().map(|s| (s.role, s.disk));
        if before != after || !self.local_known {
            let what = match &l {
                None => "local repd is not running".to_string(),
                Some(s) => format!("local repd: {:?}, disk {:?}", s.role, s.disk),
            };
            self.event(now, l.is_none(), what);
        }
        let first = !self.local_known;
        if self.q.io_pending.is_none() {
            // repd's word (a restart of repd forgets a suspension; an admin
            // may have resumed by hand).
            self.q.suspended = l.as_ref().is_some_and(|s| s.suspended);
            if !self.q.suspended {
                self.q.failing = false;
            }
        }
        self.local = l;
        self.local_known = true;
        let primary = self.local.as_ref().is_some_and(|s| s.role == Role::Primary);
        if first && !primary && !self.res.is_empty() && self.state == HaState::Idle {
            // After a crash of the agent (or of the machine) something of the
            // chain may still run here, on a device that is not Primary:
            // stop all of it, right to left (stops are idempotent).
            for r in &mut self.res {
                *r = ResState::Unknown;
            }
            self.begin_release(
                now,
                "agent start on a Secondary: making sure nothing of the chain runs here".into(),
            );
        }
    }

    fn on_done(&mut self, now: Millis, op: Op, result: OpResult) {
        if self.pending.as_ref() != Some(&op) {
            return;
        }
        self.pending = None;
        match (self.state, op, result) {
            (HaState::Fencing, Op::Fence, r) => self.fence_done(now, r),
            (HaState::Acquiring, Op::Promote { .. }, OpResult::Ok) => {
                self.promoted = true;
                self.step = 1;
                // The next status poll says so too; until then, believe it.
                if let Some(l) = &mut self.local {
                    l.role = Role::Primary;
                }
            }
            (HaState::Acquiring, Op::Promote { .. }, r) => {
                let why = result_text(&r);
                self.retry_at = Some(now.plus_ms(self.cfg.deadtime));
                // Not eligible meanwhile, so that the peer may take over.
                self.promote_failed = Some((now.plus_ms(self.cfg.deadtime), why.clone()));
                self.set_state(now, HaState::Idle, format!("promotion refused: {why}"));
                self.decision =
                    format!("the promotion failed ({why}); trying again after deadtime");
            }
            (HaState::Acquiring, Op::Start(i), OpResult::Ok) => {
                if let Some(r) = self.res.get_mut(i) {
                    *r = ResState::Started;
                }
                self.step = i + 2;
            }
            (HaState::Acquiring, Op::Start(i), r) => {
                let why = result_text(&r);
                if let Some(s) = self.res.get_mut(i) {
                    *s = ResState::StartFailed(why.clone());
                }
                self.rollback = true;
                // Stop it too (a failed start may have half started), and
                // everything that may run, right to left.
                self.step = self.res.len();
                self.set_state(
                    now,
                    HaState::Releasing,
                    format!("resource {i} failed to start ({why}): stopping what was started and releasing the role"),
                );
            }
            (HaState::Releasing, Op::Stop(i), OpResult::Ok) => {
                if let Some(r) = self.res.get_mut(i) {
                    // A failed start stays visible (stopped, but why).
                    if !matches!(r, ResState::StartFailed(_)) {
                        *r = ResState::Stopped;
                    }
                }
                self.stop_failed = None;
                self.escalated = false;
                self.step = i;
            }
            (HaState::Releasing, Op::Stop(i), r) => {
                let why = result_text(&r);
                if let Some(s) = self.res.get_mut(i) {
                    *s = ResState::StopFailed(why.clone());
                }
                let text = format!(
                    "resource {i} failed to stop ({why}): keeping the role so the peer does not take over under it; retrying every deadtime"
                );
                self.log(true, text.clone());
                self.stop_failed = Some(text);
                self.retry_at = Some(now.plus_ms(self.cfg.deadtime));
                self.escalate_stop_failure(now, i, &why);
            }
            (HaState::Releasing, Op::Demote, OpResult::Ok) => {
                self.promoted = false;
                // A demotion ends repd's suspension (held writes fail).
                self.q.suspended = false;
                self.q.failing = false;
                if let Some(l) = &mut self.local {
                    l.role = Role::Secondary;
                }
                let reason = if self.rollback {
                    self.cooldown_until = Some(now.plus_ms(self.cfg.failure_timeout));
                    format!(
                        "released after a failed start; not taking over for failure-timeout ({} ms)",
                        self.cfg.failure_timeout
                    )
                } else if let Some(r) = self.handover_done(now) {
                    r
                } else {
                    "chain stopped and device demoted".to_string()
                };
                self.rollback = false;
                self.set_state(now, HaState::Idle, reason);
            }
            (HaState::Releasing, Op::Demote, r) => {
                let why = result_text(&r);
                self.log(true, format!("demotion refused: {why}; retrying"));
                self.decision = format!("releasing: the demotion was refused ({why}); retrying");
                self.retry_at = Some(now.plus_ms(self.cfg.keepalive.saturating_mul(5)));
            }
            (_, Op::RebootHook, r) => self.reboot_hook_done(now, &r),
            (_, Op::Outdate, OpResult::Ok) => {
                if let Some(l) = &mut self.local {
                    l.disk = DiskState::Outdated;
                }
                self.event(
                    now,
                    true,
                    format!(
                        "outdate-peer: marked the local disk Outdated at {}'s request (our repds are not connected)",
                        self.cfg.peer
                    ),
                );
            }
            (_, Op::Outdate, r) => {
                self.log(
                    true,
                    format!(
                        "outdate-peer: `repctl outdate` failed: {}; trying again",
                        result_text(&r)
                    ),
                );
                self.retry_at = Some(now.plus_ms(self.cfg.keepalive));
            }
            (state, op, r) => {
                self.log(
                    true,
                    format!("ignoring the result of {op:?} in state {state:?}: {r:?}"),
                );
            }
        }
    }

    fn fence_done(&mut self, now: Millis, r: OpResult) {
        let (code, out) = match r {
            OpResult::FenceExit(code, out) => (code, out),
            OpResult::Ok => (Some(0), String::new()),
            OpResult::Failed(e) => (None, e),
        };
        let meaning = match code {
            Some(3) => "peer is Inconsistent",
            Some(4) => "peer outdated",
            Some(5) => "peer unreachable, assumed down",
            Some(6) => "peer refused: it is Primary",
            Some(7) => "peer fenced (STONITH)",
            Some(_) => "fence failed",
            None => "fence command killed or timed out",
        };
        let code_text = code.map_or_else(|| "no exit code".to_string(), |c| format!("exit {c}"));
        let out = out.trim();
        let text = if out.is_empty() {
            format!("fence-command: {code_text} ({meaning})")
        } else {
            format!("fence-command: {code_text} ({meaning}): {out}")
        };
        self.last_fence = Some(text.clone());
        let ok = matches!(code, Some(4 | 5 | 7));
        if std::mem::take(&mut self.fencing_on_request) {
            self.fence_on_request_done(now, code, text);
            return;
        }
        if !ok {
            self.retry_at = Some(now.plus_ms(self.cfg.deadtime));
            self.set_state(
                now,
                HaState::Idle,
                format!("{text}: not promoting without a successful fence"),
            );
            self.decision = format!(
                "peer {} is dead, but {text}; without a witness a node promotes only after the fence \
                 command reports 4 (peer outdated), 5 (peer unreachable) or 7 (peer fenced): not promoting; \
                 fencing again after deadtime",
                self.cfg.peer
            );
            return;
        }
        if code == Some(4) {
            self.fence_outdated_peer = true;
        }
        if self.peer.alive == Some(true)
            && self
                .peer
                .latest
                .as_ref()
                .is_some_and(|b| b.state != WireState::Idle)
        {
            self.set_state(
                now,
                HaState::Idle,
                format!("{text}, but the peer came back and is not idle: not promoting"),
            );
            return;
        }
        match self.eligible(now) {
            Ok(force) => {
                self.force = force;
                self.step = 0;
                self.set_state(
                    now,
                    HaState::Acquiring,
                    format!("peer dead and {text}: promoting"),
                );
                self.decision = format!("took over: peer dead for deadtime, {text}");
            }
            Err(why) => {
                self.set_state(
                    now,
                    HaState::Idle,
                    format!("{text}, but no longer eligible: {why}"),
                );
            }
        }
    }

    // ----- decisions -----------------------------------------------------------

    fn evaluate(&mut self, now: Millis) {
        self.update_membership(now);
        if self.promote_failed.as_ref().is_some_and(|(t, _)| now >= *t) {
            self.promote_failed = None;
        }
        if self.cooldown_until.is_some_and(|t| now >= t) {
            self.cooldown_until = None;
            self.event(now, false, "failure-timeout over: eligible again".into());
        }
        self.quorum_io(now);
        // Decide until nothing moves (a transition may enable the next step).
        for _ in 0..8 {
            let before = (self.state, self.pending.is_some(), self.step);
            self.decide(now);
            if (self.state, self.pending.is_some(), self.step) == before {
                break;
            }
        }
        self.maybe_send(now);
    }

    fn decide(&mut self, now: Millis) {
        if self.pending.is_some() {
            return;
        }
        let retry_wait = self.retry_at.is_some_and(|t| now < t);
        if !retry_wait {
            self.retry_at = None;
        }
        match self.state {
            HaState::Idle => {
                if !self.outdate_self(now) && !retry_wait {
                    self.decide_idle(now);
                }
            }
            HaState::Claiming => self.decide_claiming(now),
            HaState::Fencing => {
                // The fence result moves on; nothing pending means a lost
                // result: start over.
                self.set_state(now, HaState::Idle, "fence result lost".into());
            }
            HaState::Acquiring => self.continue_acquire(now),
            HaState::Holding => self.decide_holding(now),
            HaState::Releasing => {
                if !retry_wait {
                    self.continue_release(now);
                }
            }
        }
    }

    fn update_membership(&mut self, now: Millis) {
        let (dead, warn) = (self.cfg.deadtime, self.cfg.warntime);
        let mut logs = Vec::new();
        for (k, p) in self.paths.iter_mut().enumerate() {
            let age = p.last_heard.map(|t| now.ms_since(t));
            let up = age.is_some_and(|a| a < dead);
            let late = up && age.is_some_and(|a| a >= warn);
            if up != p.up {
                logs.push((
                    !up,
                    if up {
                        format!("path {k} up")
                    } else {
                        format!("path {k} down: nothing heard for deadtime ({dead} ms)")
                    },
                ));
            } else if late && !p.late {
                logs.push((
                    true,
                    format!(
                        "late heartbeat on path {k}: last heard {} ms ago (warntime {warn} ms)",
                        age.unwrap_or(0)
                    ),
                ));
            }
            p.up = up;
            p.late = late;
        }
        for (w, t) in logs {
            self.event(now, w, t);
        }
        let any_up = self.paths.iter().any(|p| p.up);
        let alive = if any_up {
            Some(true)
        } else if self.peer.last_valid.is_some() || now >= self.start.plus_ms(self.cfg.initdead) {
            Some(false)
        } else {
            None
        };
        if alive != self.peer.alive {
            let text = match alive {
                Some(true) => format!("peer {} alive", self.cfg.peer),
                Some(false) => match self.peer.last_valid {
                    Some(t) => format!(
                        "peer {} dead: no heartbeat on any path for {} ms (deadtime {dead} ms)",
                        self.cfg.peer,
                        now.ms_since(t)
                    ),
                    None => format!(
                        "peer {} dead: never heard within initdead ({} ms)",
                        self.cfg.peer, self.cfg.initdead
                    ),
                },
                None => String::new(),
            };
            self.event(now, alive == Some(false), text);
            self.peer.alive = alive;
            self.send_now = true;
        }
    }

    /// The order that settles ties: the preferred node, else the smaller name.
    fn i_win(&self) -> bool {
        match &self.cfg.preferred {
            Some(p) => *p == self.cfg.me,
            None => self.cfg.me < self.cfg.peer,
        }
    }

    fn peer_known_outdated(&self) -> bool {
        let bad = |d: DiskState| {
            matches!(
                d,
                DiskState::Outdated | DiskState::Inconsistent | DiskState::Diskless
            )
        };
        self.fence_outdated_peer
            || (self.cfg.witness && self.q.witness_peer_outdated)
            || self
                .local
                .as_ref()
                .is_some_and(|l| l.connected && bad(l.peer_disk))
            || self
                .peer
                .latest
                .as_ref()
                .and_then(|b| b.disk)
                .is_some_and(bad)
    }

    /// Could this node take the resources now? `Ok(force)`, or why not.
    fn eligible(&self, now: Millis) -> Result<bool, String> {
        let Some(l) = &self.local else {
            return Err("the local repd is not running".into());
        };
        if let Some(t) = self.cooldown_until.filter(|t| now < *t) {
            return Err(format!(
                "the chain failed to start here; failure-timeout runs {} ms more",
                t - now
            ));
        }
        if let Some(s) = &self.stop_failed {
            return Err(s.clone());
        }
        if let Some(p) = self.ping.filter(|p| p.configured > 0 && p.reachable == 0) {
            return Err(format!(
                "none of the {} ping node(s) answers: this node is cut off from the network",
                p.configured
            ));
        }
        if let Some((t, why)) = self.promote_failed.as_ref().filter(|(t, _)| now < *t) {
            return Err(format!(
                "the last promotion failed ({why}); trying again in {} ms",
                *t - now
            ));
        }
        if l.connected && l.peer_role == Some(Role::Primary) {
            return Err("the peer's repd is Primary (seen over the replication link)".into());
        }
        if !self.has_quorum(now) {
            return Err(format!("no quorum: {}", self.quorum_text(now)));
        }
        if self.cfg.witness && !l.freeze_armed && !self.q.freeze_refused {
            return Err("repd's freeze on disconnect is not armed yet".into());
        }
        if self.cfg.witness && !l.connected && now >= self.q.witness_until {
            // Not connected, nothing tells this node its data is current:
            // the peer may have written alone (the witness knows then).
            return Err(format!(
                "not connected to {}'s repd, and no recent word from the witness that this node's data \
                 is current: {}",
                self.cfg.peer,
                self.quorum_text(now)
            ));
        }
        match l.disk {
            DiskState::UpToDate => Ok(false),
            DiskState::Consistent if self.peer_known_outdated() => Ok(true),
            d => Err(format!("the local disk is {d:?}, not UpToDate")),
        }
    }

    fn ready_for_failback(&self, now: Millis) -> bool {
        self.cfg.auto_failback
            && self.cfg.preferred.as_deref() == Some(self.cfg.me.as_str())
            && matches!(self.state, HaState::Idle | HaState::Claiming)
            && !self.cooling_down(now)
            && self.stop_failed.is_none()
            && !self.no_failback
            && self
                .local
                .as_ref()
                .is_some_and(|l| l.disk == DiskState::UpToDate)
            // The witness does not count it (Outdated, older data): asking
            // would only keep the other node from taking the resources.
            && !(self.cfg.witness && self.q.witness_member == Some(false))
    }

    fn decide_idle(&mut self, now: Millis) {
        if self.peer.alive != Some(false) {
            self.q.want_vote = false;
        }
        // A device promoted outside the agent (or before it started): adopt it.
        if self.local.as_ref().is_some_and(|l| l.role == Role::Primary) {
            self.promoted = true;
            self.step = 1;
            for r in &mut self.res {
                if *r == ResState::Stopped {
                    *r = ResState::Unknown;
                }
            }
            self.set_state(
                now,
                HaState::Acquiring,
                "the device is Primary already (promoted outside the agent or before it started): \
                 adopting it and starting the chain"
                    .into(),
            );
            self.decision = "adopted the Primary role found on the device".into();
            return;
        }
        match self.peer.alive {
            None => {
                self.decision = format!(
                    "waiting for the first heartbeat of {} (initdead {} ms)",
                    self.cfg.peer, self.cfg.initdead
                );
            }
            Some(true) => self.decide_idle_peer_alive(now),
            Some(false) => self.decide_idle_peer_dead(now),
        }
    }

    fn decide_idle_peer_alive(&mut self, now: Millis) {
        let peer = self.cfg.peer.clone();
        let Some(b) = self.peer.latest.clone() else {
            return;
        };
        if b.state.holds() {
            self.yield_until = None;
            if b.fence_me && self.fence_on_request(now) {
                return;
            }
            self.decision = if self.ready_for_failback(now) {
                format!("{peer} holds the resources; auto-failback: asked it to hand them back")
            } else {
                format!("{peer} holds the resources ({:?})", b.state)
            };
            return;
        }
        if b.state == WireState::Claiming {
            self.decision = format!("{peer} is claiming the resources");
            return;
        }
        if b.failback_request {
            self.decision =
                format!("{peer} is the preferred node and asked for the resources (auto-failback)");
            return;
        }
        if let Err(why) = self.eligible(now) {
            self.decision = format!("not taking the resources: {why}");
            return;
        }
        if self.yielding(now) {
            self.decision = format!(
                "{}: leaving the resources to {peer}",
                self.handover.as_deref().unwrap_or("handed over")
            );
            return;
        }
        if b.eligible && !self.i_win() {
            self.decision = format!(
                "{peer} is alive, idle and eligible, and comes first ({}): leaving the resources to it",
                if self.cfg.preferred.is_some() {
                    "preferred node"
                } else {
                    "smaller name"
                }
            );
            return;
        }
        self.claim_seq = self.seq + 1;
        self.set_state(
            now,
            HaState::Claiming,
            format!(
                "nobody holds the resources and this node is {}: claiming them from {peer}",
                if b.eligible {
                    "first in order"
                } else {
                    "the only eligible one"
                }
            ),
        );
        self.decision = format!("claiming: waiting for {peer} to acknowledge");
    }

    fn decide_idle_peer_dead(&mut self, now: Millis) {
        let peer = self.cfg.peer.clone();
        match self.eligible(now) {
            Err(why) => {
                self.decision = format!("{peer} is dead, but not taking over: {why}");
            }
            Ok(_) if self.cfg.witness && !self.vote_valid(now) => {
                if !self.q.want_vote {
                    self.q.want_vote = true;
                    self.send_now = true;
                }
                self.decision = match &self.q.witness_says {
                    Some(w) => {
                        format!("{peer} is dead: waiting for the witness's vote (it says: {w})")
                    }
                    None => format!("{peer} is dead: asking the witness for its vote"),
                };
            }
            Ok(force) => {
                if self.cfg.fencing {
                    self.set_state(
                        now,
                        HaState::Fencing,
                        format!("{peer} dead: fencing it before promoting"),
                    );
                    self.decision = match &self.last_fence {
                        None => format!("{peer} is dead: running the fence command"),
                        Some(f) => format!(
                            "{peer} is dead: running the fence command again (last time {f}: not promoting)"
                        ),
                    };
                    self.run(Op::Fence);
                } else if self.cfg.witness {
                    self.force = force;
                    self.step = 0;
                    self.set_state(
                        now,
                        HaState::Acquiring,
                        format!(
                            "{peer} dead for deadtime, and the witness voted for the takeover (it has not heard {peer} for deadtime either): promoting"
                        ),
                    );
                    self.decision = format!(
                        "took over with the witness's vote: {peer} silent to both for deadtime"
                    );
                } else {
                    self.force = force;
                    self.step = 0;
                    self.set_state(
                        now,
                        HaState::Acquiring,
                        format!(
                            "{peer} dead; no fence-command configured: promoting on deadtime alone, as heartbeat does"
                        ),
                    );
                    self.decision = format!(
                        "took over without fencing: {peer} silent on every path for deadtime and no \
                         fence-command configured (a cut of every path would cause a split brain)"
                    );
                }
            }
        }
    }

    fn decide_claiming(&mut self, now: Millis) {
        let peer = self.cfg.peer.clone();
        if self.peer.alive != Some(true) {
            self.set_state(
                now,
                HaState::Idle,
                format!("{peer} went silent during the claim"),
            );
            self.decide_idle(now);
            return;
        }
        let force = match self.eligible(now) {
            Ok(f) => f,
            Err(why) => {
                self.set_state(now, HaState::Idle, format!("claim withdrawn: {why}"));
                return;
            }
        };
        let Some(b) = self.peer.latest.clone() else {
            return;
        };
        if b.state.holds() {
            self.set_state(
                now,
                HaState::Idle,
                format!("claim withdrawn: {peer} holds the resources"),
            );
            return;
        }
        if b.state == WireState::Claiming && !self.i_win() {
            self.set_state(
                now,
                HaState::Idle,
                format!("claim withdrawn: {peer} claims too and comes first"),
            );
            return;
        }
        let acked = b
            .ack
            .is_some_and(|(inc, seq)| inc == self.incarnation && seq >= self.claim_seq);
        if acked && b.state == WireState::Idle && self.wants_peer_outdated() {
            self.decision = format!(
                "claiming: {peer}'s repd is not connected to ours and its disk is {:?}; \
                 waiting for it to mark it Outdated (outdate-peer over a heartbeat path)",
                b.disk.unwrap_or(DiskState::DUnknown)
            );
            if now.ms_since(self.state_since) >= self.cfg.deadtime {
                self.retry_at = Some(now.plus_ms(self.cfg.deadtime));
                self.set_state(
                    now,
                    HaState::Idle,
                    format!("outdate-peer failed: {peer} did not mark its disk Outdated within deadtime; not promoting"),
                );
            }
            return;
        }
        if acked && b.state == WireState::Idle {
            self.force = force;
            self.step = 0;
            self.set_state(
                now,
                HaState::Acquiring,
                format!("{peer} acknowledged the claim and stays idle: promoting"),
            );
            self.decision = format!("took the resources: {peer} acknowledged the claim");
            return;
        }
        if now.ms_since(self.state_since) >= self.cfg.deadtime {
            self.set_state(
                now,
                HaState::Idle,
                format!("claim not acknowledged by {peer} within deadtime; starting over"),
            );
        }
    }

    fn continue_acquire(&mut self, now: Millis) {
        let n = self.res.len();
        if self.step == 0 {
            self.run(Op::Promote { force: self.force });
        } else if self.step <= n {
            let i = self.step - 1;
            if let Some(r) = self.res.get_mut(i) {
                *r = ResState::Starting;
            }
            self.run(Op::Start(i));
        } else {
            self.no_failback = false;
            self.set_state(
                now,
                HaState::Holding,
                format!("Primary with all {n} resource(s) started"),
            );
        }
    }

    fn decide_holding(&mut self, now: Millis) {
        let peer = self.cfg.peer.clone();
        let lost = match &self.local {
            None => Some("the local repd stopped".to_string()),
            Some(l) if l.role != Role::Primary => {
                Some("the device was demoted outside the agent".to_string())
            }
            Some(_) => None,
        };
        if let Some(why) = lost {
            self.begin_release(now, format!("{why}: stopping the chain"));
            return;
        }
        if self.peer.alive != Some(true) {
            return;
        }
        let Some(b) = self.peer.latest.clone() else {
            return;
        };
        if self.q.suspended
            && matches!(b.state, WireState::Acquiring | WireState::Holding)
            && !b.suspended
        {
            self.begin_release(
                now,
                format!(
                    "quorum was lost here and {peer} took over meanwhile: releasing (the held writes fail)"
                ),
            );
            return;
        }
        if self.ping_handover(now, &b) {
            return;
        }
        if matches!(b.state, WireState::Acquiring | WireState::Holding)
            && !b.suspended
            && !self.q.suspended
            && !self.i_win()
        {
            self.begin_release(
                now,
                format!(
                    "{peer} holds the resources too (after a partition?): this node comes second and releases"
                ),
            );
            return;
        }
        if self.cfg.auto_failback
            && self.cfg.preferred.as_deref() == Some(peer.as_str())
            && b.failback_request
        {
            self.begin_release(
                now,
                format!("auto-failback: the preferred node {peer} is back and UpToDate"),
            );
        }
    }

    fn begin_release(&mut self, now: Millis, reason: String) {
        self.step = self.res.len();
        self.set_state(now, HaState::Releasing, reason);
        self.continue_release(now);
    }

    fn continue_release(&mut self, now: Millis) {
        if self.pending.is_some() || self.q.io_pending.is_some() {
            return;
        }
        if self.step > 0 {
            let i = self.step - 1;
            if matches!(self.res.get(i), Some(ResState::Stopped)) {
                // Never started: nothing to stop.
                self.step = i;
                self.continue_release(now);
                return;
            }
            if let Some(r) = self.res.get_mut(i) {
                if !matches!(r, ResState::StartFailed(_)) {
                    *r = ResState::Stopping;
                }
            }
            self.run(Op::Stop(i));
        } else if self.promoted || self.local.as_ref().is_some_and(|l| l.role == Role::Primary) {
            self.run(Op::Demote);
        } else {
            let reason = if self.rollback {
                self.cooldown_until = Some(now.plus_ms(self.cfg.failure_timeout));
                "released after a failed start".to_string()
            } else if let Some(r) = self.handover_done(now) {
                r
            } else {
                "chain stopped".to_string()
            };
            self.rollback = false;
            self.set_state(now, HaState::Idle, reason);
        }
    }

    // ----- output ----------------------------------------------------------------

    fn run(&mut self, op: Op) {
        self.pending = Some(op.clone());
        self.actions.push_back(Action::Run(op));
    }

    fn log(&mut self, warn: bool, text: String) {
        self.actions.push_back(Action::Log { warn, text });
    }

    fn event(&mut self, now: Millis, warn: bool, what: String) {
        self.log(warn, what.clone());
        if self.events.len() == HISTORY {
            self.events.pop_front();
        }
        self.events.push_back(Event { at: now, what });
    }

    fn set_state(&mut self, now: Millis, to: HaState, reason: String) {
        let from = self.state;
        if from == to {
            return;
        }
        self.log(
            matches!(to, HaState::Releasing) || reason.contains("fail"),
            format!("{from:?} -> {to:?}: {reason}"),
        );
        let same = |t: &Transition| t.from == from && t.to == to && t.reason == reason;
        let n = self.transitions.len();
        let repeat = self
            .transitions
            .iter_mut()
            .skip(n.saturating_sub(2))
            .find(|t| same(t));
        if let Some(t) = repeat {
            t.count = t.count.saturating_add(1);
            t.at = now;
        } else {
            if n == HISTORY {
                self.transitions.pop_front();
            }
            self.transitions.push_back(Transition {
                at: now,
                from,
                to,
                reason,
                count: 1,
            });
        }
        self.state = to;
        self.state_since = now;
        self.send_now = true;
    }

    fn maybe_send(&mut self, now: Millis) {
        if !self.send_now && now < self.next_send {
            return;
        }
        self.send_now = false;
        self.next_send = now.plus_ms(self.cfg.keepalive);
        let eligible = self.eligible(now).is_ok() && !self.yielding(now);
        let failback_request = self.ready_for_failback(now);
        let ping_lost = self.ping_lost();
        let fence_me =
            self.stop_failed.is_some() && self.cfg.ops.on_stop_failure == StopFailure::Fence;
        let outdate_request = self.wants_peer_outdated();
        let ack = self
            .peer
            .incarnation
            .filter(|_| self.peer.max_seq > 0)
            .map(|(inc, _)| (inc, self.peer.max_seq));
        for path in 0..self.paths.len() {
            self.seq += 1;
            let beat = Beat {
                path: u8::try_from(path).unwrap_or(u8::MAX),
                incarnation: self.incarnation,
                started_ms: self.started_ms,
                seq: self.seq,
                ack,
                state: self.state.wire(),
                eligible,
                failback_request,
                repd_up: self.local.is_some(),
                role: self.local.as_ref().map(|l| l.role),
                disk: self.local.as_ref().map(|l| l.disk),
                connected: self.local.as_ref().is_some_and(|l| l.connected),
                suspended: self.q.suspended,
                ping_lost,
                fence_me,
                outdate_request,
            };
            self.q.hb_sent.push_back((self.seq, now));
            self.counters.sent += 1;
            self.actions.push_back(Action::Send { path, beat });
        }
        let keep = Millis::from_ms(now.as_ms().saturating_sub(self.cfg.deadtime));
        while self.q.hb_sent.front().is_some_and(|(_, t)| *t < keep) {
            self.q.hb_sent.pop_front();
        }
        if self.cfg.witness {
            self.ask_witness(now);
        }
    }

    /// The status as `cluster-agent status` shows it.
    #[must_use]
    pub fn status(&self, now: Millis) -> CoreStatus {
        let b = self.peer.latest.as_ref();
        let fencing = if self.cfg.witness {
            format!(
                "witness quorum (2 of 3 votes): a dead peer is replaced only with the witness's vote{}; \
                 a Primary without quorum {} new writes",
                if self.cfg.fencing {
                    " and after the fence command"
                } else {
                    ""
                },
                if self.cfg.no_quorum_fail {
                    "fails"
                } else {
                    "holds"
                }
            )
        } else if self.cfg.fencing {
            "fence-command configured: a dead peer is fenced before this node promotes".to_string()
        } else {
            "no fence-command: a dead peer is replaced on deadtime alone, as heartbeat does \
             (a cut of every path causes a split brain)"
                .to_string()
        };
        CoreStatus {
            node: self.cfg.me.clone(),
            state: self.state,
            state_for_ms: now.ms_since(self.state_since),
            holds_role: self.promoted,
            decision: self.decision.clone(),
            fencing,
            last_fence: self.last_fence.clone(),
            failure_timeout_left_ms: self.cooldown_until.filter(|t| *t > now).map(|t| t - now),
            quorum: self.quorum_status(now),
            stop_failed: self.stop_failed.clone(),
            on_stop_failure: self.cfg.ops.on_stop_failure,
            ping: self.ping,
            handover: self.handover.clone(),
            pending: self.pending.clone(),
            local: self.local.clone(),
            peer: PeerStatus {
                name: self.cfg.peer.clone(),
                alive: self.peer.alive,
                state: b.map(|b| b.state),
                role: b.and_then(|b| b.role),
                disk: b.and_then(|b| b.disk),
                connected: b.map(|b| b.connected),
                eligible: b.map(|b| b.eligible),
                failback_request: b.map(|b| b.failback_request),
                incarnation: self.peer.incarnation.map(|(i, _)| format!("{i:016x}")),
                last_heard_ms_ago: self.peer.last_valid.map(|t| now.ms_since(t)),
            },
            paths: self
                .paths
                .iter()
                .enumerate()
                .map(|(index, p)| PathStatus {
                    index,
                    up: p.up,
                    late: p.late,
                    last_heard_ms_ago: p.last_heard.map(|t| now.ms_since(t)),
                    received: p.received,
                })
                .collect(),
            resources: self.res.clone(),
            counters: self.counters.clone(),
            transitions: self.transitions.iter().cloned().collect(),
            events: self.events.iter().cloned().collect(),
        }
    }
}

impl Core {
    /// outdate-peer: we hold or claim the resources, our repd is not
    /// connected to the peer's, and the peer's disk could still pass for
    /// UpToDate: it must be marked Outdated, or it could later be promoted
    /// with data that misses our writes.
    fn wants_peer_outdated(&self) -> bool {
        let Some(l) = &self.local else {
            return false;
        };
        let Some(b) = &self.peer.latest else {
            return false;
        };
        matches!(
            self.state,
            HaState::Claiming | HaState::Acquiring | HaState::Holding
        ) && self.peer.alive == Some(true)
            && !l.connected
            && b.repd_up
            && !b.connected
            && matches!(b.disk, Some(DiskState::UpToDate | DiskState::Consistent))
    }

    /// The peer asks us to outdate our disk: do it when our repd agrees it
    /// is not connected either. Returns whether an operation started.
    fn outdate_self(&mut self, now: Millis) -> bool {
        if self.retry_at.is_some_and(|t| now < t) {
            return false;
        }
        let asked = self.peer.alive == Some(true)
            && self.peer.latest.as_ref().is_some_and(|b| {
                b.outdate_request && (b.state.holds() || b.state == WireState::Claiming)
            });
        let ours = self.local.as_ref().is_some_and(|l| {
            !l.connected
                && l.role == Role::Secondary
                && matches!(l.disk, DiskState::UpToDate | DiskState::Consistent)
        });
        if asked && ours {
            self.decision = format!(
                "{} holds or claims the resources while our repds are not connected: marking our disk Outdated",
                self.cfg.peer
            );
            self.run(Op::Outdate);
            return true;
        }
        false
    }
}

/// When the heartbeat (or request) with sequence number `seq` was sent.
fn sent_at(log: &VecDeque<(u64, Millis)>, seq: u64) -> Option<Millis> {
    log.iter().rev().find(|(s, _)| *s <= seq).map(|(_, t)| *t)
}

impl Core {
    /// How long a vote counts from the moment the question was sent: half
    /// of deadtime, so that a node that lost its votes suspends well before
    /// the other side may act (after a whole deadtime of silence).
    fn lease(&self) -> u64 {
        self.cfg.deadtime / 2
    }

    /// Two votes of three: ours plus the peer's or the witness's. Without a
    /// witness there is no quorum to lose (fencing guards the takeover).
    #[must_use]
    pub fn has_quorum(&self, now: Millis) -> bool {
        !self.cfg.witness || now < self.q.peer_until || now < self.q.witness_until
    }

    /// The local repd holds (or fails) new writes because quorum was lost.
    #[must_use]
    pub fn io_suspended(&self) -> bool {
        self.q.suspended
    }

    fn vote_valid(&self, now: Millis) -> bool {
        self.q.vote_until.is_some_and(|t| now < t)
    }

    fn quorum_text(&self, now: Millis) -> String {
        let witness = match (self.q.witness_last, &self.q.witness_says) {
            (None, _) => "the witness never answered".to_string(),
            (Some(t), _) if now.ms_since(t) >= self.cfg.deadtime => {
                format!("the witness has not answered for {} ms", now.ms_since(t))
            }
            (Some(_), Some(why)) if self.q.witness_member == Some(false) => {
                format!("the witness does not count this node: {why}")
            }
            (Some(_), _) if now < self.q.witness_until => {
                "the witness counts this node".to_string()
            }
            (Some(_), _) => "the witness's last answer is too old".to_string(),
        };
        let peer = if now < self.q.peer_until {
            "acknowledges our heartbeats"
        } else {
            "does not acknowledge our heartbeats"
        };
        format!("{} {peer} and {witness}", self.cfg.peer)
    }

    fn quorum_status(&self, now: Millis) -> QuorumStatus {
        let peer_vote = !self.cfg.witness || now < self.q.peer_until;
        let witness_vote = self.cfg.witness && now < self.q.witness_until;
        QuorumStatus {
            witness_configured: self.cfg.witness,
            votes: 1 + u32::from(peer_vote && self.cfg.witness) + u32::from(witness_vote),
            has_quorum: self.has_quorum(now),
            peer_vote: self.cfg.witness && peer_vote,
            witness_vote,
            witness_reachable: self
                .q
                .witness_last
                .is_some_and(|t| now.ms_since(t) < self.cfg.deadtime),
            witness_last_reply_ms_ago: self.q.witness_last.map(|t| now.ms_since(t)),
            witness_says: self.q.witness_says.clone(),
            witness_peer_silent_ms: self.q.witness_peer_silent,
            io_suspended: self.q.suspended,
        }
    }

    fn ask_witness(&mut self, now: Millis) {
        self.q.w_seq += 1;
        let seq = self.q.w_seq;
        self.q.w_sent.push_back((seq, now));
        let keep = Millis::from_ms(now.as_ms().saturating_sub(self.cfg.deadtime));
        while self.q.w_sent.front().is_some_and(|(_, t)| *t < keep) {
            self.q.w_sent.pop_front();
        }
        let l = self.local.as_ref();
        let req = witness::Request {
            incarnation: self.incarnation,
            started_ms: self.started_ms,
            seq,
            want_vote: self.q.want_vote,
            state: self.state.wire(),
            repd_up: l.is_some(),
            role: l.map(|l| l.role),
            disk: l.map(|l| l.disk),
            connected: l.is_some_and(|l| l.connected),
            gens: l.map(|l| l.gens).unwrap_or_default(),
        };
        if self.q.gens_sent != Some(req.gens) {
            self.q.gens_sent = Some(req.gens);
            self.q.gens_seq = seq;
        }
        self.actions.push_back(Action::AskWitness(req));
    }

    fn on_witness(&mut self, now: Millis, r: &witness::Reply) {
        let (inc, seq) = r.echo;
        if inc != self.incarnation || seq <= self.q.w_answered {
            self.counters.replay += 1;
            return;
        }
        // Only the exact request dates the answer.
        let Some(t) = self
            .q
            .w_sent
            .iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, t)| *t)
        else {
            return;
        };
        self.q.w_answered = seq;
        if self
            .q
            .witness_last
            .is_none_or(|l| now.ms_since(l) >= self.cfg.deadtime)
        {
            self.event(now, false, "witness reachable".into());
        }
        self.q.witness_last = Some(now);
        if self.q.witness_member != Some(r.member) {
            let text = if r.member {
                "the witness counts this node".to_string()
            } else {
                format!("the witness does not count this node: {}", r.reason)
            };
            self.event(now, !r.member, text);
        }
        self.q.witness_member = Some(r.member);
        self.q.witness_says = (!r.reason.is_empty()).then(|| r.reason.clone());
        self.q.witness_peer_silent = r.peer_silent_ms;
        self.q.witness_peer_outdated = r.member && r.peer_outdated;
        if r.member {
            self.q.witness_until = self.q.witness_until.max(t + self.lease());
            self.q.member_seq = seq;
        } else {
            self.q.witness_until = Millis::ZERO;
        }
        if r.vote {
            self.q.vote_until = Some(t + self.lease());
        }
    }

    fn on_io_done(&mut self, now: Millis, op: Op, result: OpResult) {
        if self.q.io_pending.as_ref() != Some(&op) {
            return;
        }
        self.q.io_pending = None;
        match (op, result) {
            (Op::SuspendIo { fail }, OpResult::Ok) => {
                self.q.suspended = true;
                self.q.failing = fail;
            }
            (Op::ArmFreeze, r) => {
                if r != OpResult::Ok {
                    self.q.freeze_refused = true;
                    // An older repd: quorum still suspends it, only a write
                    // acknowledged between its disconnect and the
                    // suspension is not covered.
                    self.event(
                        now,
                        true,
                        format!(
                            "cannot make repd freeze its I/O when it loses the peer: {}",
                            result_text(&r)
                        ),
                    );
                }
                if let Some(l) = &mut self.local {
                    l.freeze_armed = true;
                }
            }
            (Op::ResumeIo { .. }, OpResult::Ok) => {
                self.q.suspended = false;
                self.q.failing = false;
                self.event(now, false, "quorum back: writes resumed".into());
            }
            (op, r) => {
                // Tried again at the next evaluation.
                self.log(
                    true,
                    format!("{op:?} failed: {}; trying again", result_text(&r)),
                );
            }
        }
    }

    /// Quorum lost on a Primary: suspend new writes at once (beside any
    /// operation of the chain). Back: resume, unless the peer took over
    /// meanwhile (then the node releases, see `decide_holding`).
    fn quorum_io(&mut self, now: Millis) {
        if !self.cfg.witness || self.q.io_pending.is_some() {
            return;
        }
        let primary = self.promoted || self.local.as_ref().is_some_and(|l| l.role == Role::Primary);
        let quorum = self.has_quorum(now);
        let peer_took_over = self.peer.alive == Some(true)
            && self.peer.latest.as_ref().is_some_and(|b| {
                matches!(b.state, WireState::Acquiring | WireState::Holding) && !b.suspended
            });
        // A repd that lost its peer froze itself: it runs alone from now
        // on, so it may resume only once the witness has acknowledged its
        // new data generation (the witness then refuses the peer's takeover).
        let alone_known = self.local.as_ref().is_some_and(|l| l.connected)
            || (self.q.gens_sent == self.local.as_ref().map(|l| l.gens)
                && self.q.member_seq >= self.q.gens_seq
                && now < self.q.witness_until);
        let op = if !self.q.freeze_refused && self.local.as_ref().is_some_and(|l| !l.freeze_armed) {
            Some(Op::ArmFreeze)
        } else if primary
            && !quorum
            && (!self.q.suspended || (self.cfg.no_quorum_fail && !self.q.failing))
            && self.local.is_some()
        {
            let text = format!(
                "quorum lost ({}): {} new writes until it is back",
                self.quorum_text(now),
                if self.cfg.no_quorum_fail {
                    "failing"
                } else {
                    "holding"
                }
            );
            self.event(now, true, text);
            Some(Op::SuspendIo {
                fail: self.cfg.no_quorum_fail,
            })
        } else if self.q.suspended
            && primary
            && quorum
            && alone_known
            && !peer_took_over
            && self.state != HaState::Releasing
        {
            Some(Op::ResumeIo {
                current: self.local.as_ref().map_or(0, |l| l.gens.current),
            })
        } else if self.q.suspended && self.state == HaState::Releasing && !self.q.failing {
            // Stopping the chain over held writes would hang (a umount
            // flushes): fail them first.
            Some(Op::SuspendIo { fail: true })
        } else {
            None
        };
        if let Some(op) = op {
            self.q.io_pending = Some(op.clone());
            self.actions.push_back(Action::Run(op));
        }
    }
}

// ----- planned handovers, ping nodes, stop-failure escalation ---------------

impl Core {
    /// A planned switchover (`cluster-agent switchover`): the holder stops its
    /// chain right to left and demotes, then leaves the resources to the
    /// peer, which claims and starts them as usual. No failover timer is
    /// involved. Refused, with the reason, unless this node holds the
    /// resources and the peer is alive, idle, UpToDate and connected.
    ///
    /// # Errors
    /// Why the switchover cannot be done now.
    pub fn request_switchover(&mut self, now: Millis) -> Result<String, String> {
        let peer = self.cfg.peer.clone();
        let peer_alive = self.peer.alive == Some(true);
        let b = self.peer.latest.clone().filter(|_| peer_alive);
        if self.state != HaState::Holding || self.pending.is_some() {
            return Err(match &b {
                Some(b) if b.state.holds() => format!(
                    "this node does not hold the resources, {peer} does: run the switchover there"
                ),
                _ => format!(
                    "this node does not hold the resources (it is {:?}): nothing to hand over",
                    self.state
                ),
            });
        }
        let Some(b) = b else {
            return Err(format!(
                "{peer} is not alive (no heartbeat on any path): nobody to hand the resources to"
            ));
        };
        let refuse = if b.state != WireState::Idle {
            Some(format!("{peer} is {:?}, not idle", b.state))
        } else if !b.repd_up {
            Some(format!("{peer}'s repd does not run"))
        } else if b.disk != Some(DiskState::UpToDate) {
            Some(format!(
                "{peer}'s disk is {}, not UpToDate (wait for the resync)",
                b.disk
                    .map_or_else(|| "unknown".to_string(), |d| format!("{d:?}"))
            ))
        } else if !b.connected {
            Some(format!(
                "{peer}'s repd is not connected to this node's: it would miss the writes done here"
            ))
        } else if b.ping_lost {
            Some(format!("{peer} reaches none of its ping nodes"))
        } else {
            None
        };
        if let Some(why) = refuse {
            return Err(format!("switchover refused: {why}"));
        }
        let reason = format!("switchover requested: handing the resources to {peer}");
        self.begin_handover(now, reason.clone());
        self.evaluate(now);
        Ok(reason)
    }

    /// What the ping nodes answer now (`None`: none configured or no answer
    /// yet). A node that reaches none of them is not eligible, and hands the
    /// resources over to a peer that still reaches them (heartbeat's ipfail).
    pub fn set_ping(&mut self, now: Millis, view: Option<PingView>) {
        let was = self.ping_lost();
        self.ping = view;
        let lost = self.ping_lost();
        if !lost {
            self.ping_lost_since = None;
        } else if self.ping_lost_since.is_none() {
            self.ping_lost_since = Some(now);
        }
        if was != lost {
            let text = match view {
                Some(p) if lost => format!(
                    "none of the {} ping node(s) answers: this node does not take the resources",
                    p.configured
                ),
                Some(p) => format!(
                    "{} of {} ping node(s) answer again",
                    p.reachable, p.configured
                ),
                None => "ping nodes: no answer yet".to_string(),
            };
            self.event(now, lost, text);
        }
        self.evaluate(now);
    }

    /// Record an event that happened outside the core (e.g. a split brain
    /// reported by repd), so that `status` shows it with the transitions.
    pub fn note(&mut self, now: Millis, warn: bool, what: String) {
        self.event(now, warn, what);
    }

    /// A switchover moved the resources away from this node, which does not
    /// ask for them back (auto-failback) until it holds them again.
    #[must_use]
    pub fn switched_away(&self) -> bool {
        self.no_failback
    }

    fn ping_lost(&self) -> bool {
        self.ping
            .is_some_and(|p| p.configured > 0 && p.reachable == 0)
    }

    fn yielding(&self, now: Millis) -> bool {
        self.yield_until.is_some_and(|t| now < t)
    }

    fn begin_handover(&mut self, now: Millis, reason: String) {
        self.handover = Some(reason.clone());
        self.handing_over = true;
        self.yield_until = None;
        self.begin_release(now, reason);
    }

    /// The release that just ended was a handover: leave the resources to
    /// the peer for a while (our heartbeat says not eligible, so the peer
    /// claims as the only eligible node). Returns the transition's reason.
    fn handover_done(&mut self, now: Millis) -> Option<String> {
        if !std::mem::take(&mut self.handing_over) {
            return None;
        }
        self.yield_until = Some(now.plus_ms(self.cfg.ops.handover_grace));
        self.no_failback = true;
        let why = self.handover.clone().unwrap_or_default();
        Some(format!(
            "{why}: chain stopped and device demoted; {} takes over",
            self.cfg.peer
        ))
    }

    /// Holding, but no ping node answers: hand over when the peer could
    /// take the resources (alive, idle, UpToDate, its ping nodes answer).
    fn ping_handover(&mut self, now: Millis, b: &Beat) -> bool {
        if !self.ping_lost() || self.pending.is_some() {
            return false;
        }
        let peer = self.cfg.peer.clone();
        let settled = self
            .ping_lost_since
            .is_some_and(|t| now >= t.plus_ms(self.cfg.ops.ping_settle));
        if !settled {
            self.decision = format!(
                "none of the ping nodes answers: waiting {} ms to see whether {peer} lost them too",
                self.cfg.ops.ping_settle
            );
            return false;
        }
        if b.state == WireState::Idle
            && !b.ping_lost
            && b.repd_up
            && b.connected
            && b.disk == Some(DiskState::UpToDate)
        {
            self.begin_handover(
                now,
                format!(
                    "this node reaches none of its ping nodes while {peer} still does: \
                     handing the resources over (ipfail)"
                ),
            );
            return true;
        }
        self.decision = format!(
            "none of the ping nodes answers, but {peer} cannot take the resources either: keeping them"
        );
        false
    }

    fn escalate_stop_failure(&mut self, now: Millis, i: usize, why: &str) {
        if self.escalated {
            return;
        }
        let peer = self.cfg.peer.clone();
        match self.cfg.ops.on_stop_failure {
            StopFailure::Block => {}
            StopFailure::Fence => {
                self.escalated = true;
                self.send_now = true;
                self.event(
                    now,
                    true,
                    format!(
                        "on-stop-failure = fence: resource {i} failed to stop ({why}); asking {peer} to fence this node"
                    ),
                );
            }
            StopFailure::RebootHook => {
                self.escalated = true;
                self.event(
                    now,
                    true,
                    format!(
                        "on-stop-failure = reboot-hook: resource {i} failed to stop ({why}); running reboot-command"
                    ),
                );
                self.run(Op::RebootHook);
            }
        }
    }

    fn reboot_hook_done(&mut self, now: Millis, r: &OpResult) {
        self.event(
            now,
            true,
            format!(
                "reboot-command returned ({}) and this node still runs: keeping the role, retrying the stop every deadtime",
                result_text(r)
            ),
        );
    }

    /// The holder failed to stop a resource and asks to be fenced
    /// (`on-stop-failure = "fence"`). Returns true when that decides.
    fn fence_on_request(&mut self, now: Millis) -> bool {
        let peer = self.cfg.peer.clone();
        if !self.cfg.fencing {
            self.decision = format!(
                "{peer} failed to stop a resource and asks to be fenced, but no fence-command is configured"
            );
            return true;
        }
        if self.local.is_none() {
            return false;
        }
        self.fencing_on_request = true;
        self.set_state(
            now,
            HaState::Fencing,
            format!(
                "{peer} failed to stop a resource and asks to be fenced (on-stop-failure = fence): fencing it"
            ),
        );
        self.decision = format!("fencing {peer} on its request (its stop failed)");
        self.run(Op::Fence);
        true
    }

    fn fence_on_request_done(&mut self, now: Millis, code: Option<i32>, text: String) {
        let peer = self.cfg.peer.clone();
        self.retry_at = Some(now.plus_ms(self.cfg.deadtime));
        if matches!(code, Some(4 | 5 | 7)) {
            self.set_state(
                now,
                HaState::Idle,
                format!("fenced {peer}, whose stop failed ({text}): taking over once it is gone"),
            );
            self.decision =
                format!("fenced {peer} on its request; takes over when it is silent for deadtime");
        } else {
            self.set_state(
                now,
                HaState::Idle,
                format!("{peer} asked to be fenced, but {text}: trying again after deadtime"),
            );
        }
    }
}

fn result_text(r: &OpResult) -> String {
    match r {
        OpResult::Ok => "ok".into(),
        OpResult::Failed(e) => e.clone(),
        OpResult::FenceExit(c, out) => format!("exit {c:?}: {out}"),
    }
}
