//! Planned handovers (switchover, lost ping nodes), the stop-failure
//! escalation, fencing on the peer's request, and outdate-peer.

use replication_proto::wire::{DiskState, Role};

use super::io::result_text;
use super::*;

/// Planned handovers, ping nodes and the stop-failure escalation.
#[derive(Debug, Default)]
pub(super) struct Handover {
    /// Why the last release was a planned handover (switchover, ping).
    pub(super) reason: Option<String>,
    /// After a handover: do not claim until then (or until the peer holds).
    pub(super) yield_until: Option<Millis>,
    /// A switchover moved the resources away: no auto-failback request.
    pub(super) no_failback: bool,
    pub(super) ping: Option<PingView>,
    /// Since when no ping node answers.
    pub(super) ping_lost_since: Option<Millis>,
    /// A stop failed (the text says which and why): the role is kept.
    pub(super) stop_failed: Option<String>,
    /// The stop-failure escalation ran for the current failure.
    pub(super) escalated: bool,
}

impl Core {
    /// outdate-peer: we hold or claim the resources, our repd is not
    /// connected to the peer's, and the peer's disk could still pass for
    /// UpToDate: it must be marked Outdated, or it could later be promoted
    /// with data that misses our writes.
    pub(super) fn wants_peer_outdated(&self) -> bool {
        let Some(l) = &self.local else {
            return false;
        };
        let Some(b) = &self.peer.latest else {
            return false;
        };
        matches!(
            self.state(),
            HaState::Claiming | HaState::Acquiring | HaState::Holding
        ) && self.peer.alive == Some(true)
            && !l.connected
            && b.repd_up
            && !b.connected
            && matches!(b.disk, Some(DiskState::UpToDate | DiskState::Consistent))
    }

    /// The peer asks us to outdate our disk: do it when our repd agrees it
    /// is not connected either. Returns whether an operation started.
    pub(super) fn outdate_self(&mut self, now: Millis) -> bool {
        if self.timers.retry_at.is_some_and(|t| now < t) {
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
            self.hist.decision = format!(
                "{} holds or claims the resources while our repds are not connected: marking our disk Outdated",
                self.cfg.peer
            );
            self.run(Op::Outdate);
            return true;
        }
        false
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
        self.advance(now);
        let peer = self.cfg.peer.clone();
        let peer_alive = self.peer.alive == Some(true);
        let b = self.peer.latest.clone().filter(|_| peer_alive);
        if self.state() != HaState::Holding || self.pending.is_some() {
            return Err(match &b {
                Some(b) if b.state.holds() => format!(
                    "this node does not hold the resources, {peer} does: run the switchover there"
                ),
                _ => format!(
                    "this node does not hold the resources (it is {:?}): nothing to hand over",
                    self.state()
                ),
            });
        }
        let Some(b) = b else {
            return Err(format!(
                "{peer} is not alive (no heartbeat on any path): nobody to hand the resources to"
            ));
        };
        let refuse = Self::peer_refusal(&peer, &b);
        if let Some(why) = refuse {
            return Err(format!("switchover refused: {why}"));
        }
        let reason = format!("switchover requested: handing the resources to {peer}");
        self.begin_handover(now, reason.clone());
        self.evaluate(now);
        Ok(reason)
    }

    /// Why the peer could not take the chain now (`None`: it could): it
    /// must be alive, idle, UpToDate, connected and reach its ping nodes.
    /// (Its heartbeat's `eligible` says no while this node is Primary.)
    pub(super) fn handover_refusal(&self) -> Option<String> {
        let peer = &self.cfg.peer;
        match self
            .peer
            .latest
            .as_ref()
            .filter(|_| self.peer.alive == Some(true))
        {
            None => Some(format!("{peer} is not alive")),
            Some(b) => Self::peer_refusal(peer, b),
        }
    }

    fn peer_refusal(peer: &str, b: &Beat) -> Option<String> {
        if b.state != WireState::Idle {
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
        }
    }

    /// What the ping nodes answer now (`None`: none configured or no answer
    /// yet). A node that reaches none of them is not eligible, and hands the
    /// resources over to a peer that still reaches them (heartbeat's ipfail).
    pub fn set_ping(&mut self, now: Millis, view: Option<PingView>) {
        self.advance(now);
        let was = self.ping_lost();
        self.ho.ping = view;
        let lost = self.ping_lost();
        if !lost {
            self.ho.ping_lost_since = None;
        } else if self.ho.ping_lost_since.is_none() {
            self.ho.ping_lost_since = Some(now);
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
        self.advance(now);
        self.event(now, warn, what);
    }

    /// A switchover moved the resources away from this node, which does not
    /// ask for them back (auto-failback) until it holds them again.
    #[must_use]
    pub fn switched_away(&self) -> bool {
        self.ho.no_failback
    }

    pub(super) fn ping_lost(&self) -> bool {
        self.ho
            .ping
            .is_some_and(|p| p.configured > 0 && p.reachable == 0)
    }

    pub(super) fn yielding(&self, now: Millis) -> bool {
        self.ho.yield_until.is_some_and(|t| now < t)
    }

    pub(super) fn begin_handover(&mut self, now: Millis, reason: String) {
        self.ho.reason = Some(reason.clone());
        self.ho.yield_until = None;
        self.begin_release_as(now, reason, true);
    }

    /// The release that just ended was a handover: leave the resources to
    /// the peer for a while (our heartbeat says not eligible, so the peer
    /// claims as the only eligible node). Returns the transition's reason.
    pub(super) fn handover_done(&mut self, now: Millis) -> Option<String> {
        if !matches!(self.phase, Phase::Releasing { handover: true, .. }) {
            return None;
        }
        self.ho.yield_until = Some(now.plus_ms(self.cfg.ops.handover_grace));
        self.ho.no_failback = true;
        let why = self.ho.reason.clone().unwrap_or_default();
        Some(format!(
            "{why}: chain stopped and device demoted; {} takes over",
            self.cfg.peer
        ))
    }

    /// Holding, but no ping node answers: hand over when the peer could
    /// take the resources (alive, idle, UpToDate, its ping nodes answer).
    pub(super) fn ping_handover(&mut self, now: Millis, b: &Beat) -> bool {
        if !self.ping_lost() || self.pending.is_some() {
            return false;
        }
        let peer = self.cfg.peer.clone();
        let settled = self
            .ho
            .ping_lost_since
            .is_some_and(|t| now >= t.plus_ms(self.cfg.ops.ping_settle));
        if !settled {
            self.hist.decision = format!(
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
        self.hist.decision = format!(
            "none of the ping nodes answers, but {peer} cannot take the resources either: keeping them"
        );
        false
    }

    pub(super) fn escalate_stop_failure(&mut self, now: Millis, i: usize, why: &str) {
        if self.ho.escalated {
            return;
        }
        let peer = self.cfg.peer.clone();
        match self.cfg.ops.on_stop_failure {
            StopFailure::Block => {}
            StopFailure::Fence => {
                self.ho.escalated = true;
                self.tx.send_now = true;
                self.event(
                    now,
                    true,
                    format!(
                        "on-stop-failure = fence: resource {i} failed to stop ({why}); asking {peer} to fence this node"
                    ),
                );
            }
            StopFailure::RebootHook => {
                self.ho.escalated = true;
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

    pub(super) fn reboot_hook_done(&mut self, now: Millis, r: &OpResult) {
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
    pub(super) fn fence_on_request(&mut self, now: Millis) -> bool {
        let peer = self.cfg.peer.clone();
        if !self.cfg.fencing {
            self.hist.decision = format!(
                "{peer} failed to stop a resource and asks to be fenced, but no fence-command is configured"
            );
            return true;
        }
        if self.local.is_none() {
            return false;
        }
        self.set_state(
            now,
            Phase::Fencing { on_request: true },
            format!(
                "{peer} failed to stop a resource and asks to be fenced (on-stop-failure = fence): fencing it"
            ),
        );
        self.hist.decision = format!("fencing {peer} on its request (its stop failed)");
        self.run(Op::Fence);
        true
    }

    pub(super) fn fence_on_request_done(&mut self, now: Millis, code: Option<i32>, text: String) {
        let peer = self.cfg.peer.clone();
        self.timers.retry_at = Some(now.plus_ms(self.cfg.deadtime));
        if matches!(code, Some(4 | 5 | 7)) {
            self.set_state(
                now,
                Phase::Idle,
                format!("fenced {peer}, whose stop failed ({text}): taking over once it is gone"),
            );
            self.hist.decision =
                format!("fenced {peer} on its request; takes over when it is silent for deadtime");
        } else {
            self.set_state(
                now,
                Phase::Idle,
                format!("{peer} asked to be fenced, but {text}: trying again after deadtime"),
            );
        }
    }
}
