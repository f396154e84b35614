//! The resource chain: the promotion, the starts left to right, the stops
//! right to left and the demotion, driven by the operations' results.

use serde::{Deserialize, Serialize};

use replication_proto::wire::{DiskState, Role};

use super::io::result_text;
use super::*;

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

impl Core {
    pub(super) fn on_local(&mut self, now: Millis, l: Option<LocalState>) {
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
        if first && !primary && !self.res.is_empty() && self.state() == HaState::Idle {
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

    pub(super) fn on_done(&mut self, now: Millis, op: Op, result: OpResult) {
        if self.pending.as_ref() != Some(&op) {
            return;
        }
        self.pending = None;
        match (self.state(), op, result) {
            (HaState::Fencing, Op::Fence, r) => self.fence_done(now, r),
            (HaState::Acquiring, Op::Promote { .. }, r) => self.promote_done(now, r),
            (HaState::Acquiring, Op::Start(i), r) => self.start_done(now, i, r),
            (HaState::Releasing, Op::Stop(i), r) => self.stop_done(now, i, r),
            (HaState::Releasing, Op::Demote, r) => self.demote_done(now, r),
            (_, Op::RebootHook, r) => self.reboot_hook_done(now, &r),
            (_, Op::Outdate, r) => self.outdate_done(now, r),
            (state, op, r) => {
                // An operation runs only in its state (see `debug_check`).
                debug_assert!(false, "the result of {op:?} in state {state:?}");
                self.log(
                    true,
                    format!("ignoring the result of {op:?} in state {state:?}: {r:?}"),
                );
            }
        }
    }

    fn promote_done(&mut self, now: Millis, r: OpResult) {
        if r == OpResult::Ok {
            self.promoted = true;
            self.phase.set_step(1);
            // The next status poll says so too; until then, believe it.
            if let Some(l) = &mut self.local {
                l.role = Role::Primary;
            }
            return;
        }
        let why = result_text(&r);
        self.timers.retry_at = Some(now.plus_ms(self.cfg.deadtime));
        // Not eligible meanwhile, so that the peer may take over.
        self.timers.promote_failed = Some((now.plus_ms(self.cfg.deadtime), why.clone()));
        self.set_state(now, Phase::Idle, format!("promotion refused: {why}"));
        self.hist.decision = format!("the promotion failed ({why}); trying again after deadtime");
    }

    fn start_done(&mut self, now: Millis, i: usize, r: OpResult) {
        if r == OpResult::Ok {
            if let Some(r) = self.res.get_mut(i) {
                *r = ResState::Started;
            }
            self.phase.set_step(i + 2);
            return;
        }
        let why = result_text(&r);
        if let Some(s) = self.res.get_mut(i) {
            *s = ResState::StartFailed(why.clone());
        }
        // Stop it too (a failed start may have half started), and
        // everything that may run, right to left.
        self.set_state(
            now,
            Phase::Releasing {
                left: self.res.len(),
                rollback: true,
                handover: false,
                restart_from: None,
            },
            format!("resource {i} failed to start ({why}): stopping what was started and releasing the role"),
        );
    }

    fn stop_done(&mut self, now: Millis, i: usize, r: OpResult) {
        if r == OpResult::Ok {
            if let Some(r) = self.res.get_mut(i) {
                // A failed start stays visible (stopped, but why).
                if !matches!(r, ResState::StartFailed(_)) {
                    *r = ResState::Stopped;
                }
            }
            self.ho.stop_failed = None;
            self.ho.escalated = false;
            self.phase.set_step(i);
            return;
        }
        let why = result_text(&r);
        if let Some(s) = self.res.get_mut(i) {
            *s = ResState::StopFailed(why.clone());
        }
        let text = format!(
            "resource {i} failed to stop ({why}): keeping the role so the peer does not take over under it; retrying every deadtime"
        );
        self.log(true, text.clone());
        self.ho.stop_failed = Some(text);
        self.timers.retry_at = Some(now.plus_ms(self.cfg.deadtime));
        self.escalate_stop_failure(now, i, &why);
    }

    fn demote_done(&mut self, now: Millis, r: OpResult) {
        if r == OpResult::Ok {
            self.promoted = false;
            // A demotion ends repd's suspension (held writes fail).
            self.q.suspended = false;
            self.q.failing = false;
            if let Some(l) = &mut self.local {
                l.role = Role::Secondary;
            }
            let reason = if self.phase.rollback() {
                self.ban_failed_start(now);
                match self.cfg.failure_timeout {
                    0 => "released after a failed start; not taking over until `cluster-agent cleanup` \
                          (failure-timeout 0)"
                        .to_string(),
                    ft => format!(
                        "released after a failed start; not taking over for failure-timeout ({ft} ms)"
                    ),
                }
            } else if let Some(r) = self.handover_done(now) {
                r
            } else {
                "chain stopped and device demoted".to_string()
            };
            self.set_state(now, Phase::Idle, reason);
            return;
        }
        let why = result_text(&r);
        self.log(true, format!("demotion refused: {why}; retrying"));
        self.hist.decision = format!("releasing: the demotion was refused ({why}); retrying");
        self.timers.retry_at = Some(now.plus_ms(self.cfg.keepalive.saturating_mul(5)));
    }

    fn outdate_done(&mut self, now: Millis, r: OpResult) {
        if r == OpResult::Ok {
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
            return;
        }
        self.log(
            true,
            format!(
                "outdate-peer: `repctl outdate` failed: {}; trying again",
                result_text(&r)
            ),
        );
        self.timers.retry_at = Some(now.plus_ms(self.cfg.keepalive));
    }

    pub(super) fn fence_done(&mut self, now: Millis, r: OpResult) {
        let (code, text) = fence_outcome(r);
        self.last_fence = Some(text.clone());
        let ok = matches!(code, Some(4 | 5 | 7));
        if matches!(self.phase, Phase::Fencing { on_request: true }) {
            self.fence_on_request_done(now, code, text);
            return;
        }
        if !ok {
            self.timers.retry_at = Some(now.plus_ms(self.cfg.deadtime));
            self.set_state(
                now,
                Phase::Idle,
                format!("{text}: not promoting without a successful fence"),
            );
            self.hist.decision = format!(
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
                Phase::Idle,
                format!("{text}, but the peer came back and is not idle: not promoting"),
            );
            return;
        }
        match self.eligible(now) {
            Ok(force) => {
                self.set_state(
                    now,
                    Phase::Acquiring { step: 0, force },
                    format!("peer dead and {text}: promoting"),
                );
                self.hist.decision = format!("took over: peer dead for deadtime, {text}");
            }
            Err(why) => {
                self.set_state(
                    now,
                    Phase::Idle,
                    format!("{text}, but no longer eligible: {why}"),
                );
            }
        }
    }

    pub(super) fn continue_acquire(&mut self, now: Millis) {
        let n = self.res.len();
        let step = self.phase.step();
        if step == 0 {
            let force = matches!(self.phase, Phase::Acquiring { force: true, .. });
            self.run(Op::Promote { force });
        } else if step <= n {
            let i = step - 1;
            if let Some(r) = self.res.get_mut(i) {
                *r = ResState::Starting;
            }
            self.run(Op::Start(i));
        } else {
            self.ho.no_failback = false;
            self.set_state(
                now,
                Phase::Holding,
                format!("Primary with all {n} resource(s) started"),
            );
        }
    }

    pub(super) fn begin_release(&mut self, now: Millis, reason: String) {
        self.begin_release_as(now, reason, false);
    }

    /// Stop the chain right to left and demote; `handover`: a planned one.
    pub(super) fn begin_release_as(&mut self, now: Millis, reason: String, handover: bool) {
        let left = self.res.len();
        let phase = Phase::Releasing {
            left,
            rollback: false,
            handover,
            restart_from: None,
        };
        self.set_state(now, phase, reason);
        self.continue_release(now);
    }

    pub(super) fn continue_release(&mut self, now: Millis) {
        if self.pending.is_some() || self.q.io_pending.is_some() {
            return;
        }
        let left = self.phase.step();
        let floor = self.phase.restart_from().unwrap_or(0);
        if left > floor {
            let i = left - 1;
            if matches!(self.res.get(i), Some(ResState::Stopped)) {
                // Never started: nothing to stop.
                self.phase.set_step(i);
                self.continue_release(now);
                return;
            }
            if let Some(r) = self.res.get_mut(i) {
                if !matches!(r, ResState::StartFailed(_)) {
                    *r = ResState::Stopping;
                }
            }
            self.run(Op::Stop(i));
        } else if let Some(k) = self.phase.restart_from() {
            self.restart_stopped(now, k);
        } else if self.promoted || self.local.as_ref().is_some_and(|l| l.role == Role::Primary) {
            self.run(Op::Demote);
        } else {
            let reason = if self.phase.rollback() {
                self.ban_failed_start(now);
                "released after a failed start".to_string()
            } else if let Some(r) = self.handover_done(now) {
                r
            } else {
                "chain stopped".to_string()
            };
            self.set_state(now, Phase::Idle, reason);
        }
    }

    /// A restart in place stopped everything down to resource `k`: start
    /// it and those after it again, if the device is still Primary.
    fn restart_stopped(&mut self, now: Millis, k: usize) {
        if self.local.as_ref().is_some_and(|l| l.role == Role::Primary) {
            self.set_state(
                now,
                Phase::Acquiring {
                    step: k + 1,
                    force: false,
                },
                format!("resources {k} and after stopped: starting them again"),
            );
        } else {
            // The device went away meanwhile: release all of it.
            self.phase = Phase::Releasing {
                left: k,
                rollback: false,
                handover: false,
                restart_from: None,
            };
            self.continue_release(now);
        }
    }

    fn ban_failed_start(&mut self, now: Millis) {
        let failed: Vec<String> = self
            .res
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, ResState::StartFailed(_)))
            .map(|(i, _)| i.to_string())
            .collect();
        self.ban(
            now,
            format!("resource {} failed to start here", failed.join(", ")),
        );
    }

    pub(super) fn run(&mut self, op: Op) {
        self.pending = Some(op.clone());
        self.actions.push_back(Action::Run(op));
    }
}

/// The fence command's exit code and what it means, in words (DRBD's
/// fence-peer exit codes).
fn fence_outcome(r: OpResult) -> (Option<i32>, String) {
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
    (code, text)
}
