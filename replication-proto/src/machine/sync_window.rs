//! How many resync requests a SyncTarget keeps in flight: enough to fill
//! a fast link, few enough that a slow link does not queue seconds of
//! resync data ahead of the application's writes.
//!
//! Why: the data connection is one queue. With a fixed window of 16 ×
//! 128 KiB, 2 MiB of ResyncData sat in front of every replicated write; at
//! 2 Mbit/s that is 8.4 s, longer than `timeout × ko-count` with
//! `timeout-ms = 1000`, so a single write during the resync dropped the
//! connection (issue 16, item 8). DRBD's resync controller (c-plan-ahead,
//! c-fill-target) bounds what is in flight for the same reason.
//!
//! Rule (additive increase, multiplicative decrease on the answer's
//! latency, measured in the state machine's own time): each answer that
//! came within the target latency (a quarter of `timeout-ms`) opens the
//! window by one, up to [`MAX`]; one that came later halves it, at most
//! once per round trip (only answers to requests sent after the last cut
//! count), down to one. On a fast link answers take milliseconds and the
//! window stays at its maximum; on a slow one a request waits behind at
//! most about a quarter of `timeout-ms` of resync data.

use std::collections::HashMap;

use crate::time::Millis;

/// The largest window: requests in flight on a fast link.
pub(crate) const MAX: usize = 16;
/// Where a resync starts: the link's speed is not known yet.
const START: usize = 2;

#[derive(Debug)]
pub(crate) struct SyncWindow {
    window: usize,
    /// Request id -> when it was sent (ms).
    sent_at: HashMap<u64, Millis>,
    /// When the window was last halved.
    cut_at: Millis,
}

impl SyncWindow {
    pub(crate) fn new(now: Millis) -> Self {
        Self {
            window: START,
            sent_at: HashMap::new(),
            cut_at: now,
        }
    }

    /// Whether another request may go out with `inflight` outstanding.
    pub(crate) fn open(&self, inflight: usize) -> bool {
        inflight < self.window
    }

    pub(crate) fn sent(&mut self, id: u64, now: Millis) {
        self.sent_at.insert(id, now);
    }

    /// The answer to request `id` arrived at `now`; `target_ms` is the
    /// latency the window aims to stay under.
    pub(crate) fn answered(&mut self, id: u64, now: Millis, target_ms: u64) {
        let Some(sent) = self.sent_at.remove(&id) else {
            return;
        };
        if now - sent <= target_ms {
            self.window = (self.window + 1).min(MAX);
        } else if sent >= self.cut_at {
            self.window = (self.window / 2).max(1);
            self.cut_at = now;
        }
    }

    #[cfg(test)]
    pub(crate) fn size(&self) -> usize {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers in 5 ms with a 250 ms target: the window opens to MAX.
    #[test]
    fn a_fast_link_opens_the_window() {
        let mut w = SyncWindow::new(Millis(0));
        for id in 0..100 {
            w.sent(id, Millis(id * 10));
            w.answered(id, Millis(id * 10 + 5), 250);
        }
        assert_eq!(w.size(), MAX);
    }

    /// Answers that take 600 ms (a 128 KiB frame at 2 Mbit/s) with a
    /// 250 ms target: the window closes to one and stays there; answers to
    /// requests sent before a cut do not cut again.
    #[test]
    fn a_slow_link_closes_it_once_per_round_trip() {
        let mut w = SyncWindow::new(Millis(0));
        for id in 0..MAX as u64 {
            w.sent(id, Millis(0));
        }
        w.answered(0, Millis(600), 250);
        assert_eq!(w.size(), 1);
        // Sent before that cut: no second cut (and no growth).
        w.answered(1, Millis(1200), 250);
        assert_eq!(w.size(), 1);
        w.sent(100, Millis(1300));
        w.answered(100, Millis(1900), 250);
        assert_eq!(w.size(), 1);
        // An unknown id changes nothing.
        w.answered(12345, Millis(2000), 250);
        assert_eq!(w.size(), 1);
        assert!(w.open(0));
        assert!(!w.open(1));
    }
}
