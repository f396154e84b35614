//! Monitoring the chain (Pacemaker's recurring monitor): each resource's
//! check at its interval while this node holds the chain, the fail counts,
//! the restart in place (the failed resource and everything after it), the
//! move to the peer at `migration-threshold`, and the ban that keeps this
//! node from taking the chain back until failure-timeout passes or an
//! operator runs `cluster-agent cleanup`.

use serde::{Deserialize, Serialize};

use super::*;

/// One resource's monitor.
#[derive(Debug, Clone, Default)]
pub(super) struct MonState {
    /// The next monitor is due then (`None`: not scheduled).
    next_at: Option<Millis>,
    /// The monitor running now, by id.
    in_flight: Option<u64>,
    last: Option<(Millis, MonitorOutcome)>,
    /// Failures on this node since the last expiry or cleanup.
    failures: u32,
    last_failure: Option<Millis>,
}

/// Every resource's monitor.
#[derive(Debug, Default)]
pub(super) struct Monitors {
    res: Vec<MonState>,
    next_id: u64,
}

impl Monitors {
    pub(super) fn new(resources: usize) -> Self {
        Self {
            res: vec![MonState::default(); resources],
            next_id: 1,
        }
    }
}

/// Why this node may not take the chain, and until when (`None`: until
/// `cluster-agent cleanup`, with failure-timeout 0).
#[derive(Debug, Clone)]
pub(super) struct Ban {
    pub(super) until: Option<Millis>,
    pub(super) why: String,
}

/// What `cluster-agent status` shows of one resource's monitor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorStatus {
    /// 0: not monitored.
    pub interval_ms: u64,
    /// migration-threshold (0: never moves).
    pub threshold: u32,
    pub failures: u32,
    pub last_ms_ago: Option<u64>,
    pub last_result: Option<MonitorOutcome>,
    pub last_failure_ms_ago: Option<u64>,
    /// A monitor runs now.
    pub running: bool,
}

/// What `cluster-agent status` shows of the ban.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanStatus {
    pub reason: String,
    /// `None`: until `cluster-agent cleanup` (failure-timeout 0).
    pub left_ms: Option<u64>,
}

impl Core {
    fn monitor_cfg(&self, i: usize) -> MonitorConfig {
        self.cfg.monitors.get(i).copied().unwrap_or(MonitorConfig {
            interval_ms: 0,
            threshold: 0,
        })
    }

    /// Keep this node from taking the chain for failure-timeout (0: until
    /// `cluster-agent cleanup`).
    pub(super) fn ban(&mut self, now: Millis, why: String) {
        let until = (self.cfg.failure_timeout > 0).then(|| now.plus_ms(self.cfg.failure_timeout));
        self.timers.ban = Some(Ban { until, why });
    }

    /// The ban in force now, if any.
    pub(super) fn banned(&self, now: Millis) -> Option<&Ban> {
        self.timers
            .ban
            .as_ref()
            .filter(|b| b.until.is_none_or(|t| now < t))
    }

    /// The ban's words for `eligible` and the status.
    pub(super) fn ban_text(&self, now: Millis) -> Option<String> {
        self.banned(now).map(|b| match b.until {
            Some(t) => format!("{}; failure-timeout runs {} ms more", b.why, t - now),
            None => format!(
                "{}; failure-timeout is 0: until `cluster-agent cleanup`",
                b.why
            ),
        })
    }

    /// The moments a monitor or an expiry is due (for `poll_timeout`).
    pub(super) fn monitor_deadlines(&self) -> Option<Millis> {
        let ft = self.cfg.failure_timeout;
        self.mon
            .res
            .iter()
            .flat_map(|m| {
                let expiry = m
                    .last_failure
                    .filter(|_| m.failures > 0 && ft > 0)
                    .map(|t| t.plus_ms(ft));
                [m.next_at, expiry]
            })
            .flatten()
            .min()
    }

    /// Forget fail counts whose last failure is failure-timeout old, and a
    /// ban that ran out.
    pub(super) fn expire_failures(&mut self, now: Millis) {
        if self
            .timers
            .ban
            .as_ref()
            .is_some_and(|b| b.until.is_some_and(|t| now >= t))
        {
            self.timers.ban = None;
            self.event(now, false, "failure-timeout over: eligible again".into());
        }
        let ft = self.cfg.failure_timeout;
        if ft == 0 {
            return;
        }
        for i in 0..self.mon.res.len() {
            let Some(m) = self.mon.res.get_mut(i) else {
                continue;
            };
            let old = m.last_failure.is_some_and(|t| now >= t.plus_ms(ft));
            if m.failures > 0 && old {
                let n = m.failures;
                m.failures = 0;
                m.last_failure = None;
                self.event(
                    now,
                    false,
                    format!("resource {i}: {n} monitor failure(s) forgotten after failure-timeout ({ft} ms)"),
                );
            }
        }
    }

    /// While holding, start each monitor that is due; otherwise forget
    /// those in flight (their results are ignored) and the schedule.
    pub(super) fn schedule_monitors(&mut self, now: Millis) {
        let holding = self.state() == HaState::Holding && self.pending.is_none();
        for i in 0..self.mon.res.len() {
            let interval = self.monitor_cfg(i).interval_ms;
            let id = self.mon.next_id;
            let Some(m) = self.mon.res.get_mut(i) else {
                continue;
            };
            if !holding || interval == 0 {
                m.next_at = None;
                m.in_flight = None;
                continue;
            }
            if m.in_flight.is_some() {
                continue;
            }
            match m.next_at {
                None => m.next_at = Some(now.plus_ms(interval)),
                Some(t) if now >= t => {
                    m.next_at = None;
                    m.in_flight = Some(id);
                    self.mon.next_id += 1;
                    self.actions.push_back(Action::Monitor { res: i, id });
                }
                Some(_) => {}
            }
        }
    }

    /// A monitor's result: count a failure, then restart in place or move.
    pub(super) fn on_monitor(&mut self, now: Millis, res: usize, id: u64, outcome: MonitorOutcome) {
        let interval = self.monitor_cfg(res).interval_ms;
        let Some(m) = self.mon.res.get_mut(res) else {
            return;
        };
        if m.in_flight != Some(id) {
            return;
        }
        m.in_flight = None;
        m.next_at = Some(now.plus_ms(interval));
        m.last = Some((now, outcome.clone()));
        let what = match outcome {
            MonitorOutcome::Running => return,
            MonitorOutcome::Stopped => "it does not run".to_string(),
            MonitorOutcome::Failed(e) => e,
        };
        m.failures = m.failures.saturating_add(1);
        m.last_failure = Some(now);
        let n = m.failures;
        let threshold = self.monitor_cfg(res).threshold;
        let of = if threshold == 0 {
            format!("failure {n}; migration-threshold 0: never moves")
        } else {
            format!("failure {n} of migration-threshold {threshold}")
        };
        let text = format!("resource {res} failed its monitor ({what}): {of}");
        self.event(now, true, text.clone());
        if self.state() != HaState::Holding || self.pending.is_some() {
            return;
        }
        if threshold > 0 && n >= threshold {
            match self.handover_refusal() {
                None => {
                    self.ban(
                        now,
                        format!(
                            "resource {res} failed its monitor {n} time(s) here (migration-threshold {threshold})"
                        ),
                    );
                    self.begin_handover(
                        now,
                        format!("{text}: moving the chain to {}", self.cfg.peer),
                    );
                    return;
                }
                Some(why) => {
                    self.event(
                        now,
                        true,
                        format!("migration-threshold reached, but {why}: restarting in place"),
                    );
                }
            }
        }
        self.begin_restart(now, res, text);
    }

    /// Stop the chain right to left down to resource `k` (those after it
    /// run on top of it), then start `k` and the rest again, left to right;
    /// the device stays Primary.
    fn begin_restart(&mut self, now: Millis, k: usize, why: String) {
        let phase = Phase::Releasing {
            left: self.res.len(),
            rollback: false,
            handover: false,
            restart_from: Some(k),
        };
        self.set_state(
            now,
            phase,
            format!("{why}: restarting resource {k} and those after it in place"),
        );
        self.continue_release(now);
    }

    /// `cluster-agent cleanup` (`crm_resource --cleanup`): forget the fail
    /// counts of resource `which` (all: `None`) and the ban, and monitor
    /// them again at once. Returns what was cleared.
    ///
    /// # Errors
    /// A resource that is not in the chain.
    pub fn cleanup(&mut self, now: Millis, which: Option<usize>) -> Result<String, String> {
        self.advance(now);
        let n = self.res.len();
        if which.is_some_and(|k| k >= n) {
            return Err(format!(
                "the chain has {n} resource(s) after the device (0 to {}): no resource {}",
                n.saturating_sub(1),
                which.unwrap_or_default()
            ));
        }
        let mut cleared = Vec::new();
        let holding = self.state() == HaState::Holding;
        for i in (0..n).filter(|i| which.is_none_or(|k| k == *i)) {
            if let Some(m) = self.mon.res.get_mut(i) {
                if m.failures > 0 {
                    cleared.push(format!("resource {i}: {} failure(s)", m.failures));
                }
                m.failures = 0;
                m.last_failure = None;
                if holding && m.in_flight.is_none() && m.next_at.is_some() {
                    m.next_at = Some(now);
                }
            }
            if let Some(r) = self.res.get_mut(i) {
                if matches!(r, ResState::StartFailed(_)) {
                    cleared.push(format!("resource {i}: failed start"));
                    *r = ResState::Stopped;
                }
            }
        }
        if let Some(b) = self.timers.ban.take() {
            cleared.push(format!("ban ({})", b.why));
        }
        let text = if cleared.is_empty() {
            "cleanup: nothing to clear".to_string()
        } else {
            format!("cleanup: cleared {}", cleared.join(", "))
        };
        self.event(now, false, text.clone());
        self.evaluate(now);
        Ok(text)
    }

    pub(super) fn monitor_status(&self, now: Millis) -> Vec<MonitorStatus> {
        self.mon
            .res
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let c = self.monitor_cfg(i);
                MonitorStatus {
                    interval_ms: c.interval_ms,
                    threshold: c.threshold,
                    failures: m.failures,
                    last_ms_ago: m.last.as_ref().map(|(t, _)| now.ms_since(*t)),
                    last_result: m.last.as_ref().map(|(_, o)| o.clone()),
                    last_failure_ms_ago: m.last_failure.map(|t| now.ms_since(t)),
                    running: m.in_flight.is_some(),
                }
            })
            .collect()
    }

    pub(super) fn ban_status(&self, now: Millis) -> Option<BanStatus> {
        self.banned(now).map(|b| BanStatus {
            reason: b.why.clone(),
            left_ms: b.until.map(|t| t - now),
        })
    }
}
