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
//! timed until [`Latencies::enable`] (repd calls it at start unless
//! `--no-latency-stats`); until then the write path pays one relaxed load.
//! The same timelines feed the per-stage breakdown (`crate::stages`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use replication_proto::machine::{Action, AppId, IoToken, Node};
use replication_proto::wire::Message;

use crate::frontend::IoRequest;
use crate::stages::{Kind, Stage, Stages};

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

/// What kind of application request was timed (the request histograms
/// count trims and write-zeroes as writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    /// Writes, trims and write-zeroes.
    Write,
    Flush,
}

impl From<Kind> for Op {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Read => Op::Read,
            Kind::Flush => Op::Flush,
            Kind::Write | Kind::Discard | Kind::WriteZeroes => Op::Write,
        }
    }
}

/// Every histogram of the engine, shared with the metrics endpoint.
#[derive(Debug, Default)]
pub struct Latencies {
    pub request_read: Histogram,
    pub request_write: Histogram,
    pub request_flush: Histogram,
    pub local_read: Histogram,
    pub local_write: Histogram,
    pub peer_write: Histogram,
    /// The per-stage breakdown (`crate::stages`); its switch is the one
    /// of every histogram here.
    pub stages: Arc<Stages>,
}

impl Latencies {
    /// Start timing requests (from the next one on).
    pub fn enable(&self) {
        self.stages.set_on(true);
    }

    fn enabled(&self) -> bool {
        self.stages.on()
    }

    fn request(&self, op: Op) -> &Histogram {
        match op {
            Op::Read => &self.request_read,
            Op::Write => &self.request_write,
            Op::Flush => &self.request_flush,
        }
    }
}

/// One request's way through the engine, as far as it got.
#[derive(Debug)]
struct Timeline {
    kind: Kind,
    /// When the engine took it in.
    arrived: Instant,
    /// Its local read or write issued (first) and completed (last).
    issued: Option<Instant>,
    local_done: Option<Instant>,
    /// A `Data` frame was sent for it; the peer's ack, once it came.
    replicated: bool,
    acked: Option<Instant>,
}

/// A replicated write in flight to the peer.
#[derive(Debug)]
struct InFlight {
    id: AppId,
    kind: Kind,
    arrived: Instant,
    sent: Instant,
}

/// The engine thread's side: when each request in flight came in.
#[derive(Debug)]
pub(super) struct Tracker {
    hist: Arc<Latencies>,
    apps: HashMap<AppId, Timeline>,
    local: HashMap<IoToken, AppId>,
    peer: HashMap<u64, InFlight>,
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

    /// An application request came in as `id`; the frontend received it
    /// at `received`.
    pub(super) fn app(&mut self, id: AppId, req: &IoRequest, received: Instant) {
        if !self.hist.enabled() || self.apps.len() >= MAX_TRACKED {
            return;
        }
        let kind = req.kind();
        let arrived = Instant::now();
        let st = &self.hist.stages;
        st.observe(
            kind,
            Stage::FrontendIn,
            arrived.saturating_duration_since(received),
        );
        self.apps.insert(
            id,
            Timeline {
                kind,
                arrived,
                issued: None,
                local_done: None,
                replicated: false,
                acked: None,
            },
        );
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
                let Some(id) = node.app_of_local(*token) else {
                    return;
                };
                if let Some(t) = self.apps.get_mut(&id) {
                    t.issued.get_or_insert_with(Instant::now);
                    if self.local.len() < MAX_TRACKED {
                        self.local.insert(*token, id);
                    }
                }
            }
            Action::Send(Message::Data { seq, .. }) => {
                let Some(id) = node.app_of_peer_write(*seq) else {
                    return;
                };
                if let Some(t) = self.apps.get_mut(&id) {
                    t.replicated = true;
                    if self.peer.len() < MAX_TRACKED {
                        let (kind, arrived, sent) = (t.kind, t.arrived, Instant::now());
                        self.peer.insert(
                            *seq,
                            InFlight {
                                id,
                                kind,
                                arrived,
                                sent,
                            },
                        );
                    }
                }
            }
            Action::Complete { id, .. } => {
                if let Some(t) = self.apps.remove(id) {
                    self.complete(&t);
                }
            }
            _ => {}
        }
    }

    /// Request `t` is answered now: its request histogram and the stages
    /// inside the engine, which add up to its time here.
    fn complete(&self, t: &Timeline) {
        let now = Instant::now();
        let total = now.saturating_duration_since(t.arrived);
        self.hist.request(t.kind.into()).observe(total);
        let st = &self.hist.stages;
        let mut named = Duration::ZERO;
        if let (Some(issued), Some(done)) = (t.issued, t.local_done) {
            let al = issued.saturating_duration_since(t.arrived);
            let local = done.saturating_duration_since(issued);
            st.observe(t.kind, Stage::AlWait, al);
            st.observe(t.kind, Stage::LocalIo, local);
            named = al + local;
            if t.replicated {
                // Protocol A and B answer before the ack: then it adds 0.
                let after = t
                    .acked
                    .map_or(Duration::ZERO, |a| a.saturating_duration_since(done));
                st.observe(t.kind, Stage::PeerAfterLocal, after);
                named += after;
            }
        }
        st.observe(t.kind, Stage::EngineOther, total.saturating_sub(named));
    }

    /// The local disk finished `token`.
    pub(super) fn local_done(&mut self, token: IoToken) {
        if self.local.is_empty() {
            return;
        }
        if let Some(id) = self.local.remove(&token) {
            if let Some(t) = self.apps.get_mut(&id) {
                let now = Instant::now();
                t.local_done = Some(now);
                let h = match t.kind {
                    Kind::Read => &self.hist.local_read,
                    _ => &self.hist.local_write,
                };
                h.observe(now.saturating_duration_since(t.arrived));
            }
        }
    }

    /// A frame from the peer: the acknowledgement of a write stops its clock.
    pub(super) fn frame(&mut self, m: &Message) {
        if self.peer.is_empty() {
            return;
        }
        if let Message::WriteAck { seq } | Message::NegAck { seq } = m {
            if let Some(w) = self.peer.remove(seq) {
                let now = Instant::now();
                self.hist
                    .peer_write
                    .observe(now.saturating_duration_since(w.arrived));
                let peer = now.saturating_duration_since(w.sent);
                self.hist.stages.observe(w.kind, Stage::Peer, peer);
                if let Some(t) = self.apps.get_mut(&w.id) {
                    t.acked = Some(now);
                }
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
