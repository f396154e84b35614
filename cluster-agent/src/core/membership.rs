//! Membership: which paths hear the peer, whether it is alive, which run
//! of it (incarnation) we believe, and the heartbeats we send.

use replication_proto::wire::DiskState;

use super::*;

#[derive(Debug, Clone, Default)]
pub(super) struct PathView {
    pub(super) max_seq: Seq,
    pub(super) last_heard: Option<Millis>,
    pub(super) received: u64,
    pub(super) up: bool,
    pub(super) late: bool,
}

#[derive(Debug, Clone, Default)]
pub(super) struct PeerView {
    /// The peer's current run.
    pub(super) run: Option<PeerRun>,
    pub(super) last_valid: Option<Millis>,
    pub(super) max_seq: Seq,
    pub(super) latest: Option<Beat>,
    pub(super) alive: Option<bool>,
}

/// One run of the peer's agent: its random incarnation and the wall clock
/// of its start, which orders restarts.
#[derive(Debug, Clone, Copy)]
pub(super) struct PeerRun {
    pub(super) incarnation: Incarnation,
    pub(super) started_ms: u64,
}

/// The heartbeats we send: one per path every keepalive, or at once when
/// something the peer waits for changed.
#[derive(Debug)]
pub(super) struct Sender {
    /// The last sequence number sent (over all paths).
    pub(super) seq: Seq,
    pub(super) next_send: Millis,
    pub(super) send_now: bool,
}

impl Sender {
    pub(super) fn new(now: Millis) -> Self {
        Self {
            seq: Seq::ZERO,
            next_send: now,
            send_now: true,
        }
    }
}

impl Core {
    pub(super) fn on_beat(&mut self, now: Millis, path: usize, beat: Beat) {
        if path >= self.paths.len() || usize::from(beat.path) != path {
            // Sent for another path: recorded elsewhere, or misconfigured.
            self.hist.counters.malformed += 1;
            return;
        }
        if !self.accept_incarnation(now, &beat) {
            return;
        }
        let Some(pv) = self.paths.get_mut(path) else {
            return;
        };
        if beat.seq <= pv.max_seq {
            self.hist.counters.replay += 1;
            return;
        }
        pv.max_seq = beat.seq;
        pv.last_heard = Some(now);
        let lease = self.cfg.deadtime / 2;
        if let Some(BeatId { incarnation, seq }) = beat.ack {
            if incarnation == self.incarnation {
                if let Some(t) = self.q.hb_sent.covering(seq) {
                    self.q.peer_until = self.q.peer_until.max(t + lease);
                }
            }
        }
        pv.received += 1;
        self.hist.counters.received += 1;
        self.peer.last_valid = Some(now);
        self.note_latest(beat);
    }

    /// Whether the beat comes from the peer's current run; a newer run
    /// (a restart) replaces it, an older one is a replay.
    fn accept_incarnation(&mut self, now: Millis, beat: &Beat) -> bool {
        match self.peer.run {
            Some(run) if run.incarnation == beat.incarnation => {}
            Some(PeerRun {
                started_ms: started,
                ..
            }) => {
                let silent = self
                    .peer
                    .last_valid
                    .is_none_or(|t| now.ms_since(t) >= self.cfg.deadtime);
                if beat.started_ms <= started && !silent {
                    // An older run of the peer (a replay), or a clock that went
                    // back: believed only once the current run went silent.
                    self.hist.counters.replay += 1;
                    return false;
                }
                self.hist.counters.peer_restarts += 1;
                self.event(
                    now,
                    false,
                    format!(
                        "peer {} restarted (new incarnation {:016x})",
                        self.cfg.peer, beat.incarnation
                    ),
                );
                self.new_incarnation(beat);
            }
            None => self.new_incarnation(beat),
        }
        true
    }

    /// The newest beat of the peer: what it says now.
    fn note_latest(&mut self, beat: Beat) {
        if beat.seq > self.peer.max_seq {
            self.peer.max_seq = beat.seq;
            let changed = self.peer.latest.as_ref().is_none_or(|old| {
                old.state != beat.state
                    || old.eligible != beat.eligible
                    || old.failback_request != beat.failback_request
            });
            if changed {
                // Answer at once: a claim waits for our acknowledgement.
                self.tx.send_now = true;
            }
            if beat.disk.is_some_and(|d| d != DiskState::Outdated) {
                // The peer's own word replaces what the fence said.
                self.fence_outdated_peer = false;
            }
            self.peer.latest = Some(beat);
        }
    }

    pub(super) fn new_incarnation(&mut self, beat: &Beat) {
        self.peer.run = Some(PeerRun {
            incarnation: beat.incarnation,
            started_ms: beat.started_ms,
        });
        self.peer.max_seq = Seq::ZERO;
        self.peer.latest = None;
        for p in &mut self.paths {
            p.max_seq = Seq::ZERO;
        }
    }

    pub(super) fn update_membership(&mut self, now: Millis) {
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
            self.tx.send_now = true;
        }
    }

    pub(super) fn maybe_send(&mut self, now: Millis) {
        if !self.tx.send_now && now < self.tx.next_send {
            return;
        }
        self.tx.send_now = false;
        self.tx.next_send = now.plus_ms(self.cfg.keepalive);
        let eligible = self.eligible(now).is_ok() && !self.yielding(now);
        let failback_request = self.ready_for_failback(now);
        let ping_lost = self.ping_lost();
        let fence_me =
            self.ho.stop_failed.is_some() && self.cfg.ops.on_stop_failure == StopFailure::Fence;
        let outdate_request = self.wants_peer_outdated();
        let ack = self
            .peer
            .run
            .filter(|_| self.peer.max_seq > Seq::ZERO)
            .map(|run| BeatId {
                incarnation: run.incarnation,
                seq: self.peer.max_seq,
            });
        for path in 0..self.paths.len() {
            self.tx.seq = self.tx.seq.next();
            let beat = Beat {
                path: u8::try_from(path).unwrap_or(u8::MAX),
                incarnation: self.incarnation,
                started_ms: self.started_ms,
                seq: self.tx.seq,
                ack,
                state: self.state().wire(),
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
            self.q.hb_sent.record(self.tx.seq, now);
            self.hist.counters.sent += 1;
            self.actions.push_back(Action::Send { path, beat });
        }
        self.q.hb_sent.forget_older(now, self.cfg.deadtime);
        if self.cfg.witness {
            self.ask_witness(now);
        }
    }
}
