//! What `cluster-agent status` shows, and the history behind it: the
//! transitions and events the core keeps, its counters and its log lines.

use serde::{Deserialize, Serialize};

use replication_proto::wire::{DiskState, Role};

use super::*;

/// How many transitions and events the status keeps.
const HISTORY: usize = 32;

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
    /// Each resource's monitor: interval, last result, fail count, threshold.
    pub monitors: Vec<super::MonitorStatus>,
    /// Why this node may not take the chain (failed start, failed
    /// monitors), and for how long.
    pub ban: Option<super::BanStatus>,
    pub counters: Counters,
    pub transitions: Vec<Transition>,
    pub events: Vec<Event>,
}

/// What the status tells besides the current state: the decision in
/// words, the recent transitions and events, and the counters.
#[derive(Debug)]
pub(super) struct History {
    pub(super) decision: String,
    pub(super) transitions: VecDeque<Transition>,
    pub(super) events: VecDeque<Event>,
    pub(super) counters: Counters,
}

impl History {
    pub(super) fn new() -> Self {
        Self {
            decision: "starting".into(),
            transitions: VecDeque::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
        }
    }
}

impl Core {
    pub(super) fn log(&mut self, warn: bool, text: String) {
        self.actions.push_back(Action::Log { warn, text });
    }

    pub(super) fn event(&mut self, now: Millis, warn: bool, what: String) {
        self.log(warn, what.clone());
        if self.hist.events.len() == HISTORY {
            self.hist.events.pop_front();
        }
        self.hist.events.push_back(Event { at: now, what });
    }

    /// Enter `phase`, with the transition logged and kept for `status`.
    /// Within the same state only the state's data changes.
    pub(super) fn set_state(&mut self, now: Millis, phase: Phase, reason: String) {
        let (from, to) = (self.state(), phase.state());
        self.phase = phase;
        if from == to {
            return;
        }
        self.log(
            matches!(to, HaState::Releasing) || reason.contains("fail"),
            format!("{from:?} -> {to:?}: {reason}"),
        );
        let same = |t: &Transition| t.from == from && t.to == to && t.reason == reason;
        let n = self.hist.transitions.len();
        let repeat = self
            .hist
            .transitions
            .iter_mut()
            .skip(n.saturating_sub(2))
            .find(|t| same(t));
        if let Some(t) = repeat {
            t.count = t.count.saturating_add(1);
            t.at = now;
        } else {
            if n == HISTORY {
                self.hist.transitions.pop_front();
            }
            self.hist.transitions.push_back(Transition {
                at: now,
                from,
                to,
                reason,
                count: 1,
            });
        }
        self.state_since = now;
        self.tx.send_now = true;
    }

    #[must_use]
    pub fn status(&self, now: Millis) -> CoreStatus {
        CoreStatus {
            node: self.cfg.me.clone(),
            state: self.state(),
            state_for_ms: now.ms_since(self.state_since),
            holds_role: self.promoted,
            decision: self.hist.decision.clone(),
            fencing: self.fencing_text(),
            last_fence: self.last_fence.clone(),
            failure_timeout_left_ms: self
                .timers
                .ban
                .as_ref()
                .and_then(|b| b.until)
                .filter(|t| *t > now)
                .map(|t| t - now),
            quorum: self.quorum_status(now),
            stop_failed: self.ho.stop_failed.clone(),
            on_stop_failure: self.cfg.ops.on_stop_failure,
            ping: self.ho.ping,
            handover: self.ho.reason.clone(),
            pending: self.pending.clone(),
            local: self.local.clone(),
            peer: self.peer_status(now),
            paths: self.path_status(now),
            resources: self.res.clone(),
            monitors: self.monitor_status(now),
            ban: self.ban_status(now),
            counters: self.hist.counters.clone(),
            transitions: self.hist.transitions.iter().cloned().collect(),
            events: self.hist.events.iter().cloned().collect(),
        }
    }

    /// How a dead peer is replaced, in words.
    fn fencing_text(&self) -> String {
        if self.cfg.witness {
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
        }
    }

    fn peer_status(&self, now: Millis) -> PeerStatus {
        let b = self.peer.latest.as_ref();
        PeerStatus {
            name: self.cfg.peer.clone(),
            alive: self.peer.alive,
            state: b.map(|b| b.state),
            role: b.and_then(|b| b.role),
            disk: b.and_then(|b| b.disk),
            connected: b.map(|b| b.connected),
            eligible: b.map(|b| b.eligible),
            failback_request: b.map(|b| b.failback_request),
            incarnation: self.peer.run.map(|r| format!("{:016x}", r.incarnation)),
            last_heard_ms_ago: self.peer.last_valid.map(|t| now.ms_since(t)),
        }
    }

    fn path_status(&self, now: Millis) -> Vec<PathStatus> {
        self.paths
            .iter()
            .enumerate()
            .map(|(index, p)| PathStatus {
                index,
                up: p.up,
                late: p.late,
                last_heard_ms_ago: p.last_heard.map(|t| now.ms_since(t)),
                received: p.received,
            })
            .collect()
    }
}
