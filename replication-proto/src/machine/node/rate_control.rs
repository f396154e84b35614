//! The sync target's resync rate: the fixed `rate`, or the dynamic
//! controller (`machine/resync_controller.rs`) while `c-plan-ahead` is not
//! 0, fed with what this node sees: resync answers, requests in flight,
//! application I/O.

use super::state::*;
use super::{Node, SYNC_REQ_BYTES};
use crate::machine::resync_controller::{Controller, Sample};

impl Node {
    /// Refill the resync's token bucket up to now, at the controller's rate
    /// (stepped first) or the fixed `rate` (0 = unlimited).
    pub(super) fn refill(&mut self) {
        self.step_rate_controller();
        let fixed = self.cfg.resync_rate;
        let now = self.now;
        let Some(s) = self.sync.as_mut() else { return };
        let rate = match &s.ctl {
            Some(c) => c.rate_bytes_per_s(),
            None if fixed == 0 => {
                s.tokens = u64::MAX;
                return;
            }
            None => fixed,
        };
        let dt = now - s.last_refill;
        if dt > 0 {
            s.tokens = s
                .tokens
                .saturating_add(rate.saturating_mul(dt) / 1000)
                .min(rate.max(SYNC_REQ_BYTES));
            s.last_refill = now;
        }
    }

    /// Start, step or stop the controller of a running resync (target).
    fn step_rate_controller(&mut self) {
        let p = self.cfg.resync_control;
        let sample_at = |s: &Sync, app_bytes: u64, now| Sample {
            now,
            received_bytes: s.answered_bytes,
            inflight_bytes: s.requested_bytes.saturating_sub(s.answered_bytes),
            app_bytes,
        };
        let (now, app) = (self.now, self.stats.app_bytes);
        // Where the controller starts: the fixed rate, within c-max-rate.
        let initial = match self.cfg.resync_rate {
            0 => p.max_rate_bytes_per_s,
            r => r.min(p.max_rate_bytes_per_s),
        };
        let Some(s) = self.sync.as_mut() else { return };
        let runs = !s.is_verify()
            && s.role == SyncRole::Target
            && matches!(s.phase, SyncPhase::Running)
            && p.enabled();
        if !runs {
            s.ctl = None;
            return;
        }
        let sample = sample_at(s, app, now);
        match &mut s.ctl {
            Some(c) => c.poll(&p, sample, SYNC_REQ_BYTES),
            None => s.ctl = Some(Controller::new(sample, initial)),
        }
    }

    /// Application I/O this node saw (c-min-rate watches it): its own
    /// reads and writes, and the peer's replicated writes.
    pub(super) fn count_app_io(&mut self, len: u32) {
        self.stats.app_bytes = self.stats.app_bytes.saturating_add(u64::from(len));
    }

    /// Target: the answer to request `id` came (data or in-sync).
    pub(super) fn count_sync_answer(&mut self, id: u64) {
        if let Some(s) = self.sync.as_mut() {
            if let Some(span) = s.inflight.get(&id) {
                s.answered_bytes = s.answered_bytes.saturating_add(span.len());
            }
        }
    }

    /// The rate the controller aims at (sync target, controller on).
    pub(super) fn sync_rate_target(&self) -> Option<u64> {
        let s = self.sync.as_ref()?;
        s.ctl.as_ref().map(Controller::rate_bytes_per_s)
    }

    /// Whether application I/O holds the resync at c-min-rate now.
    pub(super) fn sync_throttled(&self) -> bool {
        self.sync
            .as_ref()
            .and_then(|s| s.ctl.as_ref())
            .is_some_and(Controller::throttled)
    }
}
