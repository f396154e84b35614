//! Resync progress as /proc/drbd shows it: percent, speed, time left.

use std::collections::VecDeque;

use rep_control::protocol::SyncProgress;
use replication_proto::machine::{ConnState, Status};

/// Keeps a short window of (time, bytes left) to measure the speed.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    window: VecDeque<(u64, u64)>,
    current: Option<SyncProgress>,
    last: u64,
}

impl Tracker {
    /// Sample at most every 50 ms.
    pub(crate) fn due(&mut self, now_ms: u64) -> bool {
        if self.current.is_none() || now_ms >= self.last + 50 {
            self.last = now_ms;
            true
        } else {
            false
        }
    }

    pub(crate) fn observe(&mut self, now_ms: u64, st: &Status) {
        let kind = match st.connection {
            ConnState::SyncSource | ConnState::SyncTarget => "resync",
            ConnState::VerifySource | ConnState::VerifyTarget => "verify",
            _ => {
                self.window.clear();
                self.current = None;
                return;
            }
        };
        let (left, total) = (st.sync_remaining_bytes, st.sync_total_bytes.max(1));
        if self.window.back().is_none_or(|&(t, _)| now_ms >= t + 100) {
            self.window.push_back((now_ms, left));
        }
        while self.window.len() > 2
            && self
                .window
                .front()
                .is_some_and(|&(t, _)| now_ms > t + 10_000)
        {
            self.window.pop_front();
        }
        let speed = match (self.window.front(), self.window.back()) {
            (Some(&(t0, l0)), Some(&(t1, l1))) if t1 > t0 && l0 > l1 => {
                (l0 - l1) * 1000 / (t1 - t0)
            }
            _ => 0,
        };
        let done = total.saturating_sub(left);
        self.current = Some(SyncProgress {
            kind: kind.into(),
            percent: (done as f64 * 1000.0 / total as f64).round() / 10.0,
            eta_s: (speed > 0).then(|| left / speed),
            bytes_per_s: speed,
            remaining_bytes: left,
            total_bytes: total,
            rate_target_bytes_per_s: st.sync_rate_target_bytes_per_s,
            throttled: st.sync_throttled,
        });
    }

    pub(crate) fn current(&self) -> Option<SyncProgress> {
        self.current.clone()
    }
}
