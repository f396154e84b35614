//! Per-request latency histograms (the Prometheus endpoint's
//! `rep_device_request_seconds`, `rep_device_local_completion_seconds` and
//! `rep_peerdevice_completion_seconds`), measured on the engine thread.
//!
//! Every time is counted from the moment the engine takes an application
//! request in (`Input::App`), so the three histograms compare:
//! - request: until the request is answered (`Action::Complete`), what the
//!   application waits;
//! - local: until the local disk finished the request's read or write
//!   (`LocalDone` of its token; the activity-log wait included);
//! - peer: until the peer acknowledged the replicated write (`WriteAck` or
//!   `NegAck` of its `Data` frame; written, in every protocol).
//!
//! The engine thread records into [`Tracker`] and counts into
//! [`Latencies`], whose buckets are atomics, so a scrape reads them from
//! another thread without asking (or ever blocking) the engine. Nothing is
//! timed until [`Latencies::enable`] (repd calls it when it serves
//! metrics): without an endpoint the write path pays one relaxed load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use replication_proto::machine::{Action, AppId, IoToken, Node};
use replication_proto::wire::Message;

use crate::frontend::IoRequest;

/// Upper bounds of the buckets, in microseconds: 100 µs to 10 s, about
/// three per decade (Prometheus' usual 1-2.5-5 steps).
pub const BUCKET_BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];
const BUCKETS: usize = BUCKET_BOUNDS_US.len() + 1;

/// At most this many requests are timed at once per map; more (a driver
/// bug that never answers) are simply not timed, instead of growing.
const MAX_TRACKED: usize = 1 << 16;

/// One histogram: counts per bucket (the last is above the largest bound)
/// and the sum, in atomics.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

/// A histogram as read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Per bound of [`BUCKET_BOUNDS_US`]: observations at or below it
    /// (cumulative, as the exposition format wants).
    pub cumulative: [u64; BUCKET_BOUNDS_US.len()],
    /// All observations (the `+Inf` bucket and `_count`).
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BUCKET_BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BUCKET_BOUNDS_US.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    #[must_use]
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = [0; BUCKET_BOUNDS_US.len()];
        let mut total = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            total = total.saturating_add(b.load(Ordering::Relaxed));
            if let Some(c) = cumulative.get_mut(i) {
                *c = total;
            }
        }
        #[allow(clippy::cast_precision_loss)] // µs sums stay far below 2^52
        let sum_seconds = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        HistogramSnapshot {
            cumulative,
            count: total,
            sum_seconds,
        }
    }
}

/// What kind of application request was timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    /// Writes, trims and write-zeroes.
    Write,
    Flush,
}

/// Every histogram of the engine, shared with the metrics endpoint.
#[derive(Debug, Default)]
pub struct Latencies {
    enabled: AtomicBool,
    pub request_read: Histogram,
    pub request_write: Histogram,
    pub request_flush: Histogram,
    pub local_read: Histogram,
    pub local_write: Histogram,
    pub peer_write: Histogram,
}

impl Latencies {
    /// Start timing requests (from the next one on).
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    fn request(&self, op: Op) -> &Histogram {
        match op {
            Op::Read => &self.request_read,
            Op::Write => &self.request_write,
            Op::Flush => &self.request_flush,
        }
    }
}

/// The engine thread's side: when each request in flight came in.
#[derive(Debug)]
pub(super) struct Tracker {
    hist: Arc<Latencies>,
    apps: HashMap<AppId, (Instant, Op)>,
    local: HashMap<IoToken, (Instant, Op)>,
    peer: HashMap<u64, Instant>,
}

impl Tracker {
    pub(super) fn new(hist: Arc<Latencies>) -> Self {
        Self {
            hist,
            apps: HashMap::new(),
            local: HashMap::new(),
            peer: HashMap::new(),
        }
    }

    /// An application request came in as `id`.
    pub(super) fn app(&mut self, id: AppId, req: &IoRequest) {
        let op = match req {
            IoRequest::Read { .. } => Op::Read,
            IoRequest::Flush => Op::Flush,
            IoRequest::Write { .. } | IoRequest::Trim { .. } | IoRequest::WriteZeroes { .. } => {
                Op::Write
            }
        };
        if self.hist.enabled.load(Ordering::Relaxed) && self.apps.len() < MAX_TRACKED {
            self.apps.insert(id, (Instant::now(), op));
        }
    }

    /// The state machine asks for `a`: local I/O and `Data` frames of an
    /// application request start their clocks, its completion stops one.
    pub(super) fn action(&mut self, node: &Node, a: &Action) {
        if matches!(a, Action::CloseConnection) {
            // Writes in flight on it get no ack now (sequence numbers are
            // never reused, so a stale one would only sit here).
            self.peer_down();
        }
        if self.apps.is_empty() {
            // Nothing timed (not enabled, or nothing in flight).
            return;
        }
        match a {
            Action::LocalRead { token, .. } | Action::LocalWrite { token, .. } => {
                let started = node.app_of_local(*token).and_then(|id| self.apps.get(&id));
                if let Some(&at) = started {
                    if self.local.len() < MAX_TRACKED {
                        self.local.insert(*token, at);
                    }
                }
            }
            Action::Send(Message::Data { seq, .. }) => {
                let started = node
                    .app_of_peer_write(*seq)
                    .and_then(|id| self.apps.get(&id));
                if let Some(&(at, _)) = started {
                    if self.peer.len() < MAX_TRACKED {
                        self.peer.insert(*seq, at);
                    }
                }
            }
            Action::Complete { id, .. } => {
                if let Some((at, op)) = self.apps.remove(id) {
                    self.hist.request(op).observe(at.elapsed());
                }
            }
            _ => {}
        }
    }

    /// The local disk finished `token`.
    pub(super) fn local_done(&mut self, token: IoToken) {
        if self.local.is_empty() {
            return;
        }
        if let Some((at, op)) = self.local.remove(&token) {
            let h = match op {
                Op::Read => &self.hist.local_read,
                Op::Write | Op::Flush => &self.hist.local_write,
            };
            h.observe(at.elapsed());
        }
    }

    /// A frame from the peer: the acknowledgement of a write stops its clock.
    pub(super) fn frame(&mut self, m: &Message) {
        if self.peer.is_empty() {
            return;
        }
        if let Message::WriteAck { seq } | Message::NegAck { seq } = m {
            if let Some(at) = self.peer.remove(seq) {
                self.hist.peer_write.observe(at.elapsed());
            }
        }
    }

    /// The connection is gone: its sequence numbers mean nothing any more.
    pub(super) fn peer_down(&mut self) {
        self.peer.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::BlockBackend;
    use rep_control::protocol::ControlCmd;
    use replication_proto::machine::Verb;

    /// One request through a real engine (alone, Primary), answered.
    fn one(h: &crate::engine::EngineHandle, req: IoRequest) {
        let (tx, rx) = std::sync::mpsc::channel();
        h.submit(req, Box::new(move |r| tx.send(r.is_ok()).unwrap()));
        assert!(rx.recv_timeout(Duration::from_secs(30)).unwrap());
    }

    /// The engine times nothing until enabled; then a write and a read
    /// each count once in their request and local-completion histograms
    /// (no peer: nothing in the peer's).
    #[test]
    fn the_engine_times_requests_once_enabled() {
        let dir = tempfile::tempdir().unwrap();
        let eng = crate::engine::tests::start_alone(dir.path(), "lat");
        let h = eng.handle.clone();
        let reply = h.control(ControlCmd::Verb(Verb::Primary { force: true }));
        assert!(reply.unwrap().ok);
        let write = || IoRequest::Write {
            offset: 0,
            data: bytes::Bytes::from(vec![7u8; 4096]),
            fua: false,
        };
        one(&h, write());
        let l = h.latencies();
        assert_eq!(l.request_write.snapshot().count, 0);
        l.enable();
        one(&h, write());
        one(
            &h,
            IoRequest::Read {
                offset: 0,
                len: 4096,
            },
        );
        one(&h, IoRequest::Flush);
        assert_eq!(l.request_write.snapshot().count, 1);
        assert_eq!(l.local_write.snapshot().count, 1);
        assert_eq!(l.request_read.snapshot().count, 1);
        assert_eq!(l.local_read.snapshot().count, 1);
        assert_eq!(l.request_flush.snapshot().count, 1);
        assert_eq!(l.peer_write.snapshot().count, 0);
        assert!(l.request_write.snapshot().sum_seconds > 0.0);
        let _ = h.control(ControlCmd::Down { force: false });
        eng.thread.join().unwrap();
    }

    #[test]
    fn buckets_are_cumulative_and_count_everything() {
        let h = Histogram::default();
        for us in [50, 100, 101, 3_000, 20_000_000] {
            h.observe(Duration::from_micros(us));
        }
        let s = h.snapshot();
        assert_eq!(s.count, 5);
        // <= 100 µs: two; <= 250 µs: three; <= 5 ms: four; 20 s only in +Inf.
        assert_eq!(s.cumulative[0], 2);
        assert_eq!(s.cumulative[1], 3);
        assert_eq!(s.cumulative[5], 4);
        assert_eq!(s.cumulative[15], 4);
        assert!(s.cumulative.windows(2).all(|w| w[0] <= w[1]));
        assert!(
            (s.sum_seconds - 20.003_251).abs() < 1e-9,
            "{}",
            s.sum_seconds
        );
    }
}
