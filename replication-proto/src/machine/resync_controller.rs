//! The dynamic resync rate controller (DRBD's `c-plan-ahead`,
//! `c-fill-target`, `c-delay-target`, `c-max-rate`, `c-min-rate`): the
//! settings ([`ResyncControl`]) and the sans-IO controller the sync target
//! steps every 100 ms of the node's own time.
//!
//! Why: a fixed `rate` is either too slow for an idle fast link or too
//! fast for a busy one. DRBD 8.4's controller aims at an amount of resync
//! data in flight (the fill target, or what arrives within the delay
//! target at the current speed) and spreads each correction over the
//! plan-ahead time, so the resync takes what the link has left; while
//! application I/O goes on it throttles the resync down to `c-min-rate`.
//!
//! Each step (`STEP_MS`), with `in` = resync bytes that arrived in the
//! step and `inflight` = bytes requested and not yet answered:
//! - `want` = the fill target, or `in` × delay-target steps (at least one
//!   request, so a resync that has not received anything yet starts);
//! - `correction` = `want` − `inflight` − what the plan already holds,
//!   spread evenly over the plan's `c-plan-ahead` steps;
//! - this step requests `in` + the plan's first slot (never below zero,
//!   never above `c-max-rate`'s share of a step);
//! - when the node saw more than 32 KiB of application I/O in a step
//!   (DRBD's 64 sectors) within the last second and `c-min-rate` is not 0,
//!   the step's rate is at most `c-min-rate` (0 disables the throttle, as
//!   in DRBD). The second of memory (DRBD looks at the last step only)
//!   keeps a slow application, a few writes per step, from letting the
//!   resync burst between its writes.
//!
//! The node turns the step's bytes into a rate for its token bucket, so the
//! requests are spread over the step instead of going out at once. The
//! fixed `rate` is only where the controller starts (as `resync-rate` in
//! DRBD 8.4 with the controller on).
//! Defaults follow DRBD 8.4.3 and later (`drbd_limits.h` in Linux), except
//! `c-plan-ahead`: 0 here (the fixed `rate` as before), 20 in DRBD.

use std::collections::VecDeque;

use crate::time::Millis;

/// One controller step: DRBD's `SLEEP_TIME` (a tenth of a second), the
/// unit of `c-plan-ahead` and `c-delay-target`.
pub const STEP_MS: u64 = 100;
/// Application I/O in one step above which the resync is throttled to
/// `c-min-rate` (DRBD: 64 sectors).
pub const APP_IO_THRESHOLD_BYTES: u64 = 32 * 1024;
/// Steps after the last one with application I/O that the throttle holds.
pub const APP_IO_HOLD_STEPS: u32 = 10;
/// `c-plan-ahead` limit (DRBD's: 30 s).
pub const PLAN_AHEAD_MAX_DS: u32 = 300;
/// `c-delay-target` limits (DRBD's: 0.1 s to 10 s).
pub const DELAY_TARGET_MIN_DS: u32 = 1;
pub const DELAY_TARGET_MAX_DS: u32 = 100;
/// `c-fill-target` limit (DRBD's 2^20 sectors: 512 MiB).
pub const FILL_TARGET_MAX_BYTES: u64 = 512 << 20;
/// `c-max-rate` limits (DRBD's: 250 KiB/s to 4 GiB/s); `c-min-rate` has the
/// same upper bound and may be 0.
pub const MAX_RATE_MIN_BYTES_PER_S: u64 = 250 << 10;
pub const RATE_MAX_BYTES_PER_S: u64 = 4 << 30;

/// The controller's settings (`[sync]` in the resource file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResyncControl {
    /// `c-plan-ahead`, in tenths of a second: how far ahead corrections
    /// are spread; 0 turns the controller off (the fixed `rate` applies).
    pub plan_ahead_ds: u32,
    /// `c-fill-target`: resync bytes in flight to aim for; 0 = aim at
    /// `c-delay-target` instead.
    pub fill_target_bytes: u64,
    /// `c-delay-target`, in tenths of a second: with no fill target, aim
    /// at what arrives in this time at the current speed.
    pub delay_target_ds: u32,
    /// `c-max-rate`: the controller never asks for more.
    pub max_rate_bytes_per_s: u64,
    /// `c-min-rate`: while application I/O goes on the resync is throttled
    /// down to this rate (0: never throttled).
    pub min_rate_bytes_per_s: u64,
}

impl Default for ResyncControl {
    fn default() -> Self {
        Self {
            plan_ahead_ds: 0,
            fill_target_bytes: 100 * 512,
            delay_target_ds: 10,
            max_rate_bytes_per_s: 100 << 20,
            min_rate_bytes_per_s: 250 << 10,
        }
    }
}

impl ResyncControl {
    /// Whether the controller runs (else the fixed `rate` does).
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.plan_ahead_ds != 0
    }

    /// Each setting within DRBD's bounds, and `c-min-rate` ≤ `c-max-rate`.
    ///
    /// # Errors
    /// The first key out of bounds (its resource-file name) and what to do.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let checks: [(&'static str, bool, String); 5] = [
            (
                "c-plan-ahead",
                self.plan_ahead_ds <= PLAN_AHEAD_MAX_DS,
                format!("{} is out of range; must be 0..={PLAN_AHEAD_MAX_DS} (tenths of a second; 0 = fixed rate)", self.plan_ahead_ds),
            ),
            (
                "c-delay-target",
                (DELAY_TARGET_MIN_DS..=DELAY_TARGET_MAX_DS).contains(&self.delay_target_ds),
                format!("{} is out of range; must be {DELAY_TARGET_MIN_DS}..={DELAY_TARGET_MAX_DS} (tenths of a second)", self.delay_target_ds),
            ),
            (
                "c-fill-target",
                self.fill_target_bytes <= FILL_TARGET_MAX_BYTES,
                format!("{} bytes is too large; at most 512M (0 = use c-delay-target)", self.fill_target_bytes),
            ),
            (
                "c-max-rate",
                (MAX_RATE_MIN_BYTES_PER_S..=RATE_MAX_BYTES_PER_S).contains(&self.max_rate_bytes_per_s),
                format!("{} bytes/s is out of range; must be 250K..=4G", self.max_rate_bytes_per_s),
            ),
            (
                "c-min-rate",
                self.min_rate_bytes_per_s <= self.max_rate_bytes_per_s,
                format!("{} bytes/s is above c-max-rate ({} bytes/s); lower it or raise c-max-rate (0 = no throttle)", self.min_rate_bytes_per_s, self.max_rate_bytes_per_s),
            ),
        ];
        match checks.into_iter().find(|(_, ok, _)| !ok) {
            Some((key, _, why)) => Err((key, why)),
            None => Ok(()),
        }
    }
}

/// What the controller is fed each time the node asks it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) now: Millis,
    /// Resync bytes received so far (a counter that only grows).
    pub(crate) received_bytes: u64,
    /// Resync bytes requested and not yet answered.
    pub(crate) inflight_bytes: u64,
    /// Application bytes this node saw so far (a counter that only grows).
    pub(crate) app_bytes: u64,
}

/// The controller of one resync (sync target side).
#[derive(Debug)]
pub(crate) struct Controller {
    /// Corrections planned for the coming steps (bytes per step).
    plan: VecDeque<i64>,
    plan_total: i64,
    last: Sample,
    /// The current rate: what the token bucket refills at.
    rate_bytes_per_s: u64,
    /// The last step was throttled by application I/O.
    throttled: bool,
    /// Steps since the last one with application I/O (saturating).
    quiet_steps: u32,
}

impl Controller {
    /// A controller whose first step comes `STEP_MS` after `start`; until
    /// then it runs at `initial_bytes_per_s` (DRBD starts from
    /// `resync-rate` too).
    pub(crate) fn new(start: Sample, initial_bytes_per_s: u64) -> Self {
        Self {
            plan: VecDeque::new(),
            plan_total: 0,
            last: start,
            rate_bytes_per_s: initial_bytes_per_s,
            throttled: false,
            quiet_steps: u32::MAX,
        }
    }

    pub(crate) fn rate_bytes_per_s(&self) -> u64 {
        self.rate_bytes_per_s
    }

    pub(crate) fn throttled(&self) -> bool {
        self.throttled
    }

    /// Take a step if one is due at `s.now`; `min_request_bytes` is one
    /// resync request (the least the delay-target aim asks for).
    pub(crate) fn poll(&mut self, p: &ResyncControl, s: Sample, min_request_bytes: u64) {
        let dt_ms = s.now - self.last.now;
        if dt_ms < STEP_MS {
            return;
        }
        // A late step (a driver that ticked late) counts as one step: the
        // bytes that came in are scaled to a step's worth.
        let per_step =
            |bytes: u64| i64::try_from(bytes.saturating_mul(STEP_MS) / dt_ms).unwrap_or(i64::MAX);
        let arrived = per_step(s.received_bytes.saturating_sub(self.last.received_bytes));
        let app = per_step(s.app_bytes.saturating_sub(self.last.app_bytes));
        self.last = s;
        let steps = p.plan_ahead_ds.clamp(1, PLAN_AHEAD_MAX_DS);
        self.plan.resize(steps as usize, 0);
        self.plan_total = self.plan.iter().sum();
        let want = if p.fill_target_bytes > 0 {
            i64::try_from(p.fill_target_bytes).unwrap_or(i64::MAX)
        } else {
            arrived
                .saturating_mul(i64::from(p.delay_target_ds))
                .max(i64::try_from(min_request_bytes).unwrap_or(0))
        };
        let inflight = i64::try_from(s.inflight_bytes).unwrap_or(i64::MAX);
        let correction = want
            .saturating_sub(inflight)
            .saturating_sub(self.plan_total);
        let per_slot = correction / i64::from(steps);
        for slot in &mut self.plan {
            *slot = slot.saturating_add(per_slot);
        }
        let now_slot = self.plan.pop_front().unwrap_or(0);
        self.plan.push_back(0);
        self.plan_total = self.plan.iter().sum();
        let step_bytes = u64::try_from(arrived.saturating_add(now_slot)).unwrap_or(0);
        let mut rate = step_bytes
            .saturating_mul(1000 / STEP_MS)
            .min(p.max_rate_bytes_per_s);
        self.quiet_steps = if u64::try_from(app).unwrap_or(0) > APP_IO_THRESHOLD_BYTES {
            0
        } else {
            self.quiet_steps.saturating_add(1)
        };
        self.throttled = p.min_rate_bytes_per_s != 0
            && self.quiet_steps < APP_IO_HOLD_STEPS
            && rate > p.min_rate_bytes_per_s;
        if self.throttled {
            rate = p.min_rate_bytes_per_s;
        }
        self.rate_bytes_per_s = rate;
    }
}

#[cfg(test)]
#[path = "resync_controller_tests.rs"]
mod tests;
