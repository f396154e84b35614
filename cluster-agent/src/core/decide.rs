//! The decisions: after every input, what the node does next in its
//! state (claim, take over, hold, release), and whether it is eligible.

use replication_proto::wire::{DiskState, Role};

use super::*;

impl Core {
    pub(super) fn evaluate(&mut self, now: Millis) {
        self.update_membership(now);
        if self
            .timers
            .promote_failed
            .as_ref()
            .is_some_and(|(t, _)| now >= *t)
        {
            self.timers.promote_failed = None;
        }
        self.expire_failures(now);
        self.quorum_io(now);
        // Decide until nothing moves (a transition may enable the next step).
        for _ in 0..8 {
            let before = (self.phase.clone(), self.pending.is_some());
            self.decide(now);
            if (self.phase.clone(), self.pending.is_some()) == before {
                break;
            }
        }
        self.schedule_monitors(now);
        self.maybe_send(now);
        self.debug_check();
    }

    /// Combinations of the state that cannot happen.
    fn debug_check(&self) {
        let holds = self.state().wire().holds();
        // The promotion is undone only by the demotion that ends a release.
        debug_assert!(!self.promoted || holds, "promoted in {:?}", self.phase);
        // A failed stop keeps the node releasing until the stop succeeds.
        debug_assert!(
            self.ho.stop_failed.is_none() || self.state() == HaState::Releasing,
            "a failed stop in {:?}",
            self.phase
        );
        // The chain's operations run one at a time, in their state.
        let in_state = matches!(
            (&self.pending, &self.phase),
            (None | Some(Op::RebootHook | Op::Outdate), _)
                | (Some(Op::Fence), Phase::Fencing { .. })
                | (
                    Some(Op::Promote { .. } | Op::Start(_)),
                    Phase::Acquiring { .. }
                )
                | (Some(Op::Stop(_) | Op::Demote), Phase::Releasing { .. })
        );
        debug_assert!(in_state, "{:?} pending in {:?}", self.pending, self.phase);
    }

    pub(super) fn decide(&mut self, now: Millis) {
        if self.pending.is_some() {
            return;
        }
        let retry_wait = self.timers.retry_at.is_some_and(|t| now < t);
        if !retry_wait {
            self.timers.retry_at = None;
        }
        match self.state() {
            HaState::Idle => {
                if !self.outdate_self(now) && !retry_wait {
                    self.decide_idle(now);
                }
            }
            HaState::Claiming => self.decide_claiming(now),
            HaState::Fencing => {
                // The fence result moves on; nothing pending means a lost
                // result (a driver that dropped it): start over.
                debug_assert!(false, "Fencing with no fence command running");
                self.set_state(now, Phase::Idle, "fence result lost".into());
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

    pub(super) fn i_win(&self) -> bool {
        match &self.cfg.preferred {
            Some(p) => *p == self.cfg.me,
            None => self.cfg.me < self.cfg.peer,
        }
    }

    pub(super) fn peer_known_outdated(&self) -> bool {
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
    pub(super) fn eligible(&self, now: Millis) -> Result<bool, String> {
        let Some(l) = &self.local else {
            return Err("the local repd is not running".into());
        };
        if let Some(why) = self.ban_text(now) {
            return Err(why);
        }
        if let Some(s) = &self.ho.stop_failed {
            return Err(s.clone());
        }
        if let Some(p) = self
            .ho
            .ping
            .filter(|p| p.configured > 0 && p.reachable == 0)
        {
            return Err(format!(
                "none of the {} ping node(s) answers: this node is cut off from the network",
                p.configured
            ));
        }
        if let Some((t, why)) = self
            .timers
            .promote_failed
            .as_ref()
            .filter(|(t, _)| now < *t)
        {
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

    pub(super) fn ready_for_failback(&self, now: Millis) -> bool {
        self.cfg.auto_failback
            && self.cfg.preferred.as_deref() == Some(self.cfg.me.as_str())
            && matches!(self.state(), HaState::Idle | HaState::Claiming)
            && !self.cooling_down(now)
            && self.ho.stop_failed.is_none()
            && !self.ho.no_failback
            && self
                .local
                .as_ref()
                .is_some_and(|l| l.disk == DiskState::UpToDate)
            // The witness does not count it (Outdated, older data): asking
            // would only keep the other node from taking the resources.
            && !(self.cfg.witness && self.q.witness_member == Some(false))
    }

    pub(super) fn decide_idle(&mut self, now: Millis) {
        if self.peer.alive != Some(false) {
            self.q.want_vote = false;
        }
        // A device promoted outside the agent (or before it started): adopt it.
        if self.local.as_ref().is_some_and(|l| l.role == Role::Primary) {
            self.promoted = true;
            for r in &mut self.res {
                if *r == ResState::Stopped {
                    *r = ResState::Unknown;
                }
            }
            self.set_state(
                now,
                Phase::Acquiring {
                    step: 1,
                    force: false,
                },
                "the device is Primary already (promoted outside the agent or before it started): \
                 adopting it and starting the chain"
                    .into(),
            );
            self.hist.decision = "adopted the Primary role found on the device".into();
            return;
        }
        match self.peer.alive {
            None => {
                self.hist.decision = format!(
                    "waiting for the first heartbeat of {} (initdead {} ms)",
                    self.cfg.peer, self.cfg.initdead
                );
            }
            Some(true) => self.decide_idle_peer_alive(now),
            Some(false) => self.decide_idle_peer_dead(now),
        }
    }

    pub(super) fn decide_idle_peer_alive(&mut self, now: Millis) {
        let peer = self.cfg.peer.clone();
        let Some(b) = self.peer.latest.clone() else {
            return;
        };
        if b.state.holds() {
            self.ho.yield_until = None;
            if b.fence_me && self.fence_on_request(now) {
                return;
            }
            self.hist.decision = if self.ready_for_failback(now) {
                format!("{peer} holds the resources; auto-failback: asked it to hand them back")
            } else {
                format!("{peer} holds the resources ({:?})", b.state)
            };
            return;
        }
        if b.state == WireState::Claiming {
            self.hist.decision = format!("{peer} is claiming the resources");
            return;
        }
        if b.failback_request {
            self.hist.decision =
                format!("{peer} is the preferred node and asked for the resources (auto-failback)");
            return;
        }
        if let Err(why) = self.eligible(now) {
            self.hist.decision = format!("not taking the resources: {why}");
            return;
        }
        if self.yielding(now) {
            self.hist.decision = format!(
                "{}: leaving the resources to {peer}",
                self.ho.reason.as_deref().unwrap_or("handed over")
            );
            return;
        }
        if b.eligible && !self.i_win() {
            self.hist.decision = format!(
                "{peer} is alive, idle and eligible, and comes first ({}): leaving the resources to it",
                if self.cfg.preferred.is_some() {
                    "preferred node"
                } else {
                    "smaller name"
                }
            );
            return;
        }
        let claim_seq = self.tx.seq.next();
        self.set_state(
            now,
            Phase::Claiming { claim_seq },
            format!(
                "nobody holds the resources and this node is {}: claiming them from {peer}",
                if b.eligible {
                    "first in order"
                } else {
                    "the only eligible one"
                }
            ),
        );
        self.hist.decision = format!("claiming: waiting for {peer} to acknowledge");
    }

    pub(super) fn decide_idle_peer_dead(&mut self, now: Millis) {
        let peer = self.cfg.peer.clone();
        match self.eligible(now) {
            Err(why) => {
                self.hist.decision = format!("{peer} is dead, but not taking over: {why}");
            }
            Ok(_) if self.cfg.witness && !self.vote_valid(now) => {
                if !self.q.want_vote {
                    self.q.want_vote = true;
                    self.tx.send_now = true;
                }
                self.hist.decision = match &self.q.witness_says {
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
                        Phase::Fencing { on_request: false },
                        format!("{peer} dead: fencing it before promoting"),
                    );
                    self.hist.decision = match &self.last_fence {
                        None => format!("{peer} is dead: running the fence command"),
                        Some(f) => format!(
                            "{peer} is dead: running the fence command again (last time {f}: not promoting)"
                        ),
                    };
                    self.run(Op::Fence);
                } else if self.cfg.witness {
                    self.set_state(
                        now,
                        Phase::Acquiring { step: 0, force },
                        format!(
                            "{peer} dead for deadtime, and the witness voted for the takeover (it has not heard {peer} for deadtime either): promoting"
                        ),
                    );
                    self.hist.decision = format!(
                        "took over with the witness's vote: {peer} silent to both for deadtime"
                    );
                } else {
                    self.set_state(
                        now,
                        Phase::Acquiring { step: 0, force },
                        format!(
                            "{peer} dead; no fence-command configured: promoting on deadtime alone, as heartbeat does"
                        ),
                    );
                    self.hist.decision = format!(
                        "took over without fencing: {peer} silent on every path for deadtime and no \
                         fence-command configured (a cut of every path would cause a split brain)"
                    );
                }
            }
        }
    }

    pub(super) fn decide_claiming(&mut self, now: Millis) {
        let peer = self.cfg.peer.clone();
        if self.peer.alive != Some(true) {
            self.set_state(
                now,
                Phase::Idle,
                format!("{peer} went silent during the claim"),
            );
            self.decide_idle(now);
            return;
        }
        let force = match self.eligible(now) {
            Ok(f) => f,
            Err(why) => {
                self.set_state(now, Phase::Idle, format!("claim withdrawn: {why}"));
                return;
            }
        };
        let Some(b) = self.peer.latest.clone() else {
            return;
        };
        if b.state.holds() {
            self.set_state(
                now,
                Phase::Idle,
                format!("claim withdrawn: {peer} holds the resources"),
            );
            return;
        }
        if b.state == WireState::Claiming && !self.i_win() {
            self.set_state(
                now,
                Phase::Idle,
                format!("claim withdrawn: {peer} claims too and comes first"),
            );
            return;
        }
        let acked = b
            .ack
            .is_some_and(|a| a.incarnation == self.incarnation && a.seq >= self.phase.claim_seq());
        if acked && b.state == WireState::Idle && self.wants_peer_outdated() {
            self.wait_for_peer_outdated(now, &b);
            return;
        }
        if acked && b.state == WireState::Idle {
            self.set_state(
                now,
                Phase::Acquiring { step: 0, force },
                format!("{peer} acknowledged the claim and stays idle: promoting"),
            );
            self.hist.decision = format!("took the resources: {peer} acknowledged the claim");
            return;
        }
        if now.ms_since(self.state_since) >= self.cfg.deadtime {
            self.set_state(
                now,
                Phase::Idle,
                format!("claim not acknowledged by {peer} within deadtime; starting over"),
            );
        }
    }

    /// Claiming, acknowledged, but the peer's disk could still pass for
    /// UpToDate while our repds are not connected: wait (deadtime at most)
    /// for it to mark its disk Outdated.
    fn wait_for_peer_outdated(&mut self, now: Millis, b: &Beat) {
        let peer = self.cfg.peer.clone();
        self.hist.decision = format!(
            "claiming: {peer}'s repd is not connected to ours and its disk is {:?}; \
             waiting for it to mark it Outdated (outdate-peer over a heartbeat path)",
            b.disk.unwrap_or(DiskState::DUnknown)
        );
        if now.ms_since(self.state_since) >= self.cfg.deadtime {
            self.timers.retry_at = Some(now.plus_ms(self.cfg.deadtime));
            self.set_state(
                now,
                Phase::Idle,
                format!("outdate-peer failed: {peer} did not mark its disk Outdated within deadtime; not promoting"),
            );
        }
    }

    pub(super) fn decide_holding(&mut self, now: Millis) {
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
}
