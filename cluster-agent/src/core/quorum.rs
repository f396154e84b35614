//! Quorum with a witness: votes as leases, the witness's requests and
//! answers, and the suspension and resumption of a Primary's writes.

use std::collections::VecDeque;

use replication_proto::gen::Generations;

use replication_proto::wire::Role;

use super::io::result_text;
use super::*;
use crate::witness;

/// What this node knows about its votes. A vote is a lease: the peer's
/// acknowledgement of our heartbeat (or the witness's answer to our request)
/// sent at `s` counts until `s + deadtime / 2`, measured on our clock from
/// the moment we *sent*, which the other side received no earlier. The
/// other side lets a takeover happen only after hearing nothing from us for
/// a whole deadtime, so our lease always runs out first.
#[derive(Debug, Clone, Default)]
pub(super) struct Quorum {
    /// (heartbeat seq, sent at) of recent rounds; and the same for requests.
    pub(super) hb_sent: SentLog<Seq>,
    pub(super) w_sent: SentLog<RequestNo>,
    pub(super) w_seq: RequestNo,
    /// Votes valid until.
    pub(super) peer_until: Millis,
    pub(super) witness_until: Millis,
    pub(super) witness_last: Option<Millis>,
    pub(super) witness_member: Option<bool>,
    pub(super) witness_says: Option<String>,
    pub(super) witness_peer_silent: Option<u64>,
    /// The highest request seq answered (older answers are replays).
    pub(super) w_answered: RequestNo,
    /// The witness remembers the peer Outdated (last member answer).
    pub(super) witness_peer_outdated: bool,
    /// A takeover vote valid until.
    pub(super) vote_until: Option<Millis>,
    /// Ask the witness for its vote in the next requests.
    pub(super) want_vote: bool,
    /// The repd holds/fails writes by our hand.
    pub(super) suspended: bool,
    pub(super) io_pending: Option<Op>,
    /// The suspension fails requests (rather than holding them).
    pub(super) failing: bool,
    /// repd refused to arm the freeze (not tried again).
    pub(super) freeze_refused: bool,
    /// The generations last sent to the witness, the first request that
    /// carried them, and the newest request it answered as a member.
    pub(super) gens_sent: Option<Generations>,
    pub(super) gens_seq: RequestNo,
    pub(super) member_seq: RequestNo,
}

/// When our recent heartbeats (or witness requests) were sent, by sequence
/// number, oldest first: an answer counts from the moment of the question.
#[derive(Debug, Clone, Default)]
pub(super) struct SentLog<S>(VecDeque<(S, Millis)>);

impl<S: Copy + Ord> SentLog<S> {
    pub(super) fn record(&mut self, seq: S, at: Millis) {
        self.0.push_back((seq, at));
    }

    /// Forget what was sent more than `len_ms` before `now`.
    pub(super) fn forget_older(&mut self, now: Millis, len_ms: u64) {
        // Early on the clock nothing is that old.
        let keep = Millis::from_ms(now.as_ms().saturating_sub(len_ms));
        while self.0.front().is_some_and(|(_, t)| *t < keep) {
            self.0.pop_front();
        }
    }

    /// When the newest one up to `seq` was sent (an acknowledgement of
    /// `seq` covers everything sent before it).
    pub(super) fn covering(&self, seq: S) -> Option<Millis> {
        self.0
            .iter()
            .rev()
            .find(|(s, _)| *s <= seq)
            .map(|(_, t)| *t)
    }

    /// When exactly `seq` was sent.
    pub(super) fn exact(&self, seq: S) -> Option<Millis> {
        self.0.iter().find(|(s, _)| *s == seq).map(|(_, t)| *t)
    }
}

impl Core {
    /// How long a vote counts from the moment the question was sent: half
    /// of deadtime, so that a node that lost its votes suspends well before
    /// the other side may act (after a whole deadtime of silence).
    pub(super) fn lease(&self) -> u64 {
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

    pub(super) fn vote_valid(&self, now: Millis) -> bool {
        self.q.vote_until.is_some_and(|t| now < t)
    }

    pub(super) fn quorum_text(&self, now: Millis) -> String {
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

    pub(super) fn quorum_status(&self, now: Millis) -> QuorumStatus {
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

    pub(super) fn ask_witness(&mut self, now: Millis) {
        self.q.w_seq = self.q.w_seq.next();
        let seq = self.q.w_seq;
        self.q.w_sent.record(seq, now);
        self.q.w_sent.forget_older(now, self.cfg.deadtime);
        let l = self.local.as_ref();
        let req = witness::Request {
            incarnation: self.incarnation,
            started_ms: self.started_ms,
            seq,
            want_vote: self.q.want_vote,
            state: self.state().wire(),
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

    pub(super) fn on_witness(&mut self, now: Millis, r: &witness::Reply) {
        let (inc, seq) = r.echo;
        if inc != self.incarnation || seq <= self.q.w_answered {
            self.hist.counters.replay += 1;
            return;
        }
        // Only the exact request dates the answer.
        let Some(t) = self.q.w_sent.exact(seq) else {
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

    pub(super) fn on_io_done(&mut self, now: Millis, op: Op, result: OpResult) {
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
    pub(super) fn quorum_io(&mut self, now: Millis) {
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
            && self.state() != HaState::Releasing
        {
            Some(Op::ResumeIo {
                current: self.local.as_ref().map_or(0, |l| l.gens.current),
            })
        } else if self.q.suspended && self.state() == HaState::Releasing && !self.q.failing {
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
