//! The sans-IO witness: requests in, answers out, no clock and no socket.
//!
//! The driver (the witness process in [`super::daemon`], or the simulator)
//! feeds each authenticated request with [`WitnessCore::handle`] and then
//! drains [`WitnessCore::poll_action`] until it returns `None`, doing each
//! action in the order given. Contract for drivers:
//!
//! - time only moves forward: `now` is a point on the driver's monotonic
//!   clock ([`Millis`]) and never smaller than the last one given;
//! - an [`Action::Persist`] is durable before any later action goes out: a
//!   vote the witness gave (and the Outdated mark it set) survives its crash.
//!
//! The witness has no timers (it only answers), so it has no `poll_timeout`.

use std::collections::{BTreeMap, VecDeque};

use replication_proto::gen::Generations;
use replication_proto::time::Millis;
use replication_proto::wire::DiskState;
use serde::{Deserialize, Serialize};

use super::codec::{Reply, Request};
use crate::vocab::{Incarnation, RequestNo, WireState};

/// What the witness remembers of one node across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMemory {
    /// The newest generations the node reported.
    pub gens: Generations,
    /// Why the node counts as Outdated (cleared when it reports UpToDate
    /// while connected to its peer, i.e. in sync again).
    pub outdated: Option<String>,
}

/// The witness's state file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    pub nodes: BTreeMap<String, NodeMemory>,
}

/// What the witness knows of a node since it started (not persisted).
#[derive(Debug, Clone, Default)]
struct Live {
    /// The node's (incarnation, started-ms) last accepted.
    incarnation: Option<(Incarnation, u64)>,
    max_seq: RequestNo,
    last_heard: Option<Millis>,
    last: Option<Request>,
}

/// What the witness process shows in its log and status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeView {
    pub name: String,
    pub last_heard_ms_ago: Option<u64>,
    pub state: Option<WireState>,
    pub disk: Option<DiskState>,
    pub outdated: Option<String>,
    pub current_gen: String,
}

/// What the driver hands the witness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A request whose MAC was checked and whose resource is the witness's,
    /// from the node it names.
    Request { node: String, req: Request },
}

/// What the witness asks its driver to do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Store this memory durably before doing the actions after it.
    Persist(Memory),
    /// Send this answer to `node` (where its request came from).
    Reply { node: String, reply: Reply },
    /// The request of `node` was dropped (replayed, old, or an unknown
    /// node); nothing to answer.
    Dropped { node: String, why: &'static str },
}

/// The sans-IO witness.
#[derive(Debug)]
pub struct WitnessCore {
    nodes: [String; 2],
    deadtime_ms: u64,
    start: Millis,
    incarnation: Incarnation,
    memory: Memory,
    live: [Live; 2],
    actions: VecDeque<Action>,
    /// The memory changed since it was last handed out to persist.
    dirty: bool,
    /// Requests dropped as replays.
    pub replays: u64,
}

impl WitnessCore {
    /// A witness for `nodes` that started at `now` with the `memory` of its
    /// state file; `incarnation` is echoed in every answer.
    #[must_use]
    pub fn new(
        nodes: [String; 2],
        deadtime_ms: u64,
        memory: Memory,
        incarnation: Incarnation,
        now: Millis,
    ) -> Self {
        Self {
            nodes,
            deadtime_ms,
            start: now,
            incarnation,
            memory,
            live: [Live::default(), Live::default()],
            actions: VecDeque::new(),
            dirty: false,
            replays: 0,
        }
    }

    #[must_use]
    pub fn memory(&self) -> &Memory {
        &self.memory
    }

    /// Take in one input; its consequences come out of [`Self::poll_action`].
    pub fn handle(&mut self, now: Millis, input: Input) {
        match input {
            Input::Request { node, req } => self.on_request(now, node, &req),
        }
    }

    /// The next thing to do, in order; `None` once all is done.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Whether the witness counts `node` as a member (not remembered
    /// Outdated, data not older than the other node's).
    #[must_use]
    pub fn counts(&self, node: &str) -> bool {
        self.index(node)
            .is_some_and(|i| self.not_member(i).is_none())
    }

    /// The witness's view of both nodes.
    #[must_use]
    pub fn view(&self, now: Millis) -> Vec<NodeView> {
        (0..2)
            .map(|i| {
                let name = self.nodes.get(i).cloned().unwrap_or_default();
                let mem = self.memory.nodes.get(&name).cloned().unwrap_or_default();
                let last = self.live.get(i).and_then(|l| l.last.clone());
                NodeView {
                    last_heard_ms_ago: self.silent(i, now),
                    state: last.as_ref().map(|r| r.state),
                    disk: last.as_ref().and_then(|r| r.disk),
                    outdated: mem.outdated,
                    current_gen: format!("{:016X}", mem.gens.current),
                    name,
                }
            })
            .collect()
    }

    fn index(&self, node: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n == node)
    }

    /// How long node `i` has been silent (`None`: never heard since the start).
    fn silent(&self, i: usize, now: Millis) -> Option<u64> {
        self.live
            .get(i)
            .and_then(|l| l.last_heard)
            .map(|t| now.ms_since(t))
    }

    /// Why node `i` is not part of a majority with the witness, if it is not.
    fn not_member(&self, i: usize) -> Option<String> {
        let me = self.nodes.get(i)?;
        let peer = self.nodes.get(1 - i)?;
        let mine = self.memory.nodes.get(me).cloned().unwrap_or_default();
        if let Some(why) = &mine.outdated {
            return Some(format!("the witness remembers {me} Outdated: {why}"));
        }
        let theirs = self.memory.nodes.get(peer)?;
        let cur = mine.gens.current;
        let moved_on = theirs.gens.current != cur
            && cur != 0
            && (theirs.gens.bitmap == cur || theirs.gens.history.contains(&cur));
        moved_on.then(|| {
            format!(
                "{me}'s data generation {cur:016X} is older than {peer}'s {:016X} (seen by the witness)",
                theirs.gens.current
            )
        })
    }

    /// One authenticated request: accepted (fresh), remembered, answered.
    fn on_request(&mut self, now: Millis, node: String, req: &Request) {
        debug_assert!(!self.dirty, "a change was not handed out to persist");
        let Some(i) = self.index(&node) else {
            let why = "unknown node";
            self.actions.push_back(Action::Dropped { node, why });
            return;
        };
        if let Err(why) = self.accept(now, i, req) {
            self.actions.push_back(Action::Dropped { node, why });
            return;
        }
        self.remember(&node, req);
        let reply = self.answer(now, i, req);
        if std::mem::take(&mut self.dirty) {
            self.actions.push_back(Action::Persist(self.memory.clone()));
        }
        self.actions.push_back(Action::Reply { node, reply });
    }

    /// Whether the request of node `i` is fresh (not a replay, not from an
    /// older incarnation while the current one talks); notes it heard.
    fn accept(&mut self, now: Millis, i: usize, req: &Request) -> Result<(), &'static str> {
        let deadtime_ms = self.deadtime_ms;
        let Some(live) = self.live.get_mut(i) else {
            debug_assert!(false, "node index {i} out of range");
            return Err("unknown node");
        };
        match live.incarnation {
            Some((inc, _)) if inc == req.incarnation => {}
            Some((_, started)) => {
                let silent = live
                    .last_heard
                    .is_none_or(|t| now.ms_since(t) >= deadtime_ms);
                if req.started_ms <= started && !silent {
                    self.replays += 1;
                    return Err("an older incarnation");
                }
                live.incarnation = Some((req.incarnation, req.started_ms));
                live.max_seq = RequestNo::ZERO;
            }
            None => live.incarnation = Some((req.incarnation, req.started_ms)),
        }
        if req.seq <= live.max_seq {
            self.replays += 1;
            return Err("replayed sequence number");
        }
        live.max_seq = req.seq;
        live.last_heard = Some(now);
        live.last = Some(req.clone());
        Ok(())
    }

    /// Remember what `node` reports of its data.
    fn remember(&mut self, node: &str, req: &Request) {
        let mut changed = false;
        let mem = self.memory.nodes.entry(node.to_string()).or_default();
        if req.repd_up && req.gens != Generations::default() && mem.gens != req.gens {
            mem.gens = req.gens;
            changed = true;
        }
        match req.disk {
            Some(DiskState::Outdated) if mem.outdated.is_none() => {
                mem.outdated = Some("its disk reported Outdated".into());
                changed = true;
            }
            Some(DiskState::UpToDate) if req.connected && mem.outdated.is_some() => {
                // UpToDate while connected: the replication handshake found
                // it in sync with its peer.
                mem.outdated = None;
                changed = true;
            }
            _ => {}
        }
        self.dirty |= changed;
    }

    /// The answer to node `i`: membership, and the vote if asked (granting
    /// it marks the silent peer Outdated).
    fn answer(&mut self, now: Millis, i: usize, req: &Request) -> Reply {
        let me = self.nodes.get(i).cloned().unwrap_or_default();
        let peer = self.nodes.get(1 - i).cloned().unwrap_or_default();
        let not_member = self.not_member(i);
        let peer_silent = self.silent(1 - i, now);
        let mut vote = false;
        let mut reason = not_member.clone().unwrap_or_default();
        if req.want_vote && not_member.is_none() {
            // Never heard since the witness started counts from the start:
            // a restarted witness waits deadtime before it votes.
            let silent_for = peer_silent.unwrap_or_else(|| now.ms_since(self.start));
            if silent_for >= self.deadtime_ms {
                vote = true;
                let pm = self.memory.nodes.entry(peer.clone()).or_default();
                if pm.outdated.is_none() {
                    pm.outdated = Some(format!(
                        "{me} was granted the takeover while {peer} was silent to the witness"
                    ));
                    self.dirty = true;
                }
                reason.clear();
            } else {
                reason = format!(
                    "the witness still hears {peer} (last {silent_for} ms ago, deadtime {} ms)",
                    self.deadtime_ms
                );
            }
        }
        Reply {
            witness_incarnation: self.incarnation,
            echo: (req.incarnation, req.seq),
            member: not_member.is_none(),
            vote,
            peer_outdated: self.not_member(1 - i).is_some(),
            peer_silent_ms: peer_silent,
            reason,
        }
    }
}
