//! The latency breakdown (`repctl status --latency`, the metrics'
//! `rep_device_stage_seconds`): per request kind, how long requests spend in
//! each stage between the frontend and the disks, counted into histograms
//! whose buckets are atomics.
//!
//! Who measures what (each stage is one duration per request):
//! - `frontend_in`: the frontend received the request (the NBD reader
//!   parsed its header; the ublk queue fetched it) until the engine took it
//!   in: the write payload read off the socket, the in-flight limit, the
//!   channel to the engine thread and the wait for its turn;
//! - `al_wait`: the engine took it in until the local read or write was
//!   issued: for writes to a cold extent the activity-log transaction;
//! - `local_io`: the local disk's read or write;
//! - `peer`: the replicated write's `Data` frame sent until the peer's
//!   `WriteAck`: the network both ways, the peer's receive, its write and
//!   its ack, measured on the Primary alone (the peer's own write time is
//!   not on the wire); it runs beside `local_io`, so it does not add up
//!   with the others;
//! - `peer_after_local`: the part of `peer` after the local write ended
//!   (0 when the ack came first): what the peer adds to the request;
//! - `engine_other`: the rest of the engine's time (the state machine's
//!   completion; for a flush all of it: its local flush and the peer's
//!   barrier are not split);
//! - `frontend_out`: the engine answered until the reply was written to
//!   the client's socket (NBD only: the ublk queue's completion is not
//!   timed).
//!
//! Per request the stages other than `peer` follow one another, so their
//! means add up to the mean time a request spends in repd.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rep_control::protocol::{LatencyReply, StageLatency};

/// What kind of request was timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Read,
        Kind::Write,
        Kind::Flush,
        Kind::Discard,
        Kind::WriteZeroes,
    ];

    /// The `op` label and the name `repctl status --latency` prints.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Kind::Read => "read",
            Kind::Write => "write",
            Kind::Flush => "flush",
            Kind::Discard => "discard",
            Kind::WriteZeroes => "write_zeroes",
        }
    }
}

/// One stage of a request's way through repd (see the module's comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    FrontendIn,
    AlWait,
    LocalIo,
    Peer,
    PeerAfterLocal,
    EngineOther,
    FrontendOut,
}

impl Stage {
    /// In the order a request passes them.
    pub const ALL: [Stage; 7] = [
        Stage::FrontendIn,
        Stage::AlWait,
        Stage::LocalIo,
        Stage::Peer,
        Stage::PeerAfterLocal,
        Stage::EngineOther,
        Stage::FrontendOut,
    ];

    /// The `stage` label and the name `repctl status --latency` prints.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Stage::FrontendIn => "frontend_in",
            Stage::AlWait => "al_wait",
            Stage::LocalIo => "local_io",
            Stage::Peer => "peer",
            Stage::PeerAfterLocal => "peer_after_local",
            Stage::EngineOther => "engine_other",
            Stage::FrontendOut => "frontend_out",
        }
    }

    /// Whether the stage follows the others in a request (all but `peer`,
    /// which overlaps `local_io`): the ones whose means add up.
    #[must_use]
    pub fn sequential(self) -> bool {
        self != Stage::Peer
    }
}

/// Mantissas of the bucket bounds in each decade: eight steps, so a
/// quantile read between two bounds is off by a quarter at most.
const MANTISSAS: [u64; 8] = [100, 150, 200, 300, 400, 500, 600, 800];
/// Decades from 1 µs (100 × 10 ns) up to 10 s, and the 10 s bound itself.
const DECADES: usize = 7;
const BOUNDS: usize = DECADES * MANTISSAS.len() + 1;

/// Upper bounds of the buckets in nanoseconds, 1 µs to 10 s.
pub const BUCKET_BOUNDS_NS: [u64; BOUNDS] = bounds();

// Evaluated at compile time only: an index out of range fails the build.
#[allow(clippy::indexing_slicing)]
const fn bounds() -> [u64; BOUNDS] {
    let mut out = [0u64; BOUNDS];
    let mut scale = 10u64;
    let mut d = 0;
    while d < DECADES {
        let mut m = 0;
        while m < MANTISSAS.len() {
            out[d * MANTISSAS.len() + m] = MANTISSAS[m] * scale;
            m += 1;
        }
        scale *= 10;
        d += 1;
    }
    out[BOUNDS - 1] = 100 * scale;
    out
}

/// Whether bound `ns` is one the metrics endpoint exposes (1-2-5 steps,
/// Prometheus' usual): fewer series, and every one is also a fine bound.
#[must_use]
pub fn exposed_bound(ns: u64) -> bool {
    let mut m = ns;
    while m >= 1_000 && m % 10 == 0 {
        m /= 10;
    }
    matches!(m, 100 | 200 | 500)
}

/// One histogram: counts per bucket (the last above 10 s) and the sum.
#[derive(Debug)]
struct Hist {
    buckets: [AtomicU64; BOUNDS + 1],
    sum_ns: AtomicU64,
}

impl Default for Hist {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

/// A histogram read at one moment: counts per bucket, not cumulative.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub counts: [u64; BOUNDS + 1],
    pub sum_ns: u64,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            counts: [0; BOUNDS + 1],
            sum_ns: 0,
        }
    }
}

impl Hist {
    fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKET_BOUNDS_NS.partition_point(|&b| b < ns);
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            counts: std::array::from_fn(|i| {
                self.buckets.get(i).map_or(0, |b| b.load(Ordering::Relaxed))
            }),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}

impl Snapshot {
    #[must_use]
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// What was counted since `base` (an earlier snapshot of the same one).
    #[must_use]
    pub fn since(&self, base: &Snapshot) -> Snapshot {
        Snapshot {
            counts: std::array::from_fn(|i| {
                let now = self.counts.get(i).copied().unwrap_or(0);
                now.saturating_sub(base.counts.get(i).copied().unwrap_or(0))
            }),
            sum_ns: self.sum_ns.saturating_sub(base.sum_ns),
        }
    }

    /// Mean in microseconds, `None` with nothing counted.
    #[must_use]
    pub fn mean_us(&self) -> Option<f64> {
        let n = self.count();
        #[allow(clippy::cast_precision_loss)] // ns sums stay far below 2^52
        (n > 0).then(|| self.sum_ns as f64 / n as f64 / 1e3)
    }

    /// Quantile `q` (0 to 1) in microseconds, read linearly inside its
    /// bucket as Prometheus' `histogram_quantile` does; above 10 s it
    /// says 10 s.
    #[must_use]
    #[allow(clippy::cast_precision_loss)] // counts and bounds stay far below 2^52
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * n as f64;
        let mut below = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            if c > 0 && (below + c) as f64 >= rank {
                let lo = i
                    .checked_sub(1)
                    .and_then(|j| BUCKET_BOUNDS_NS.get(j))
                    .copied()
                    .unwrap_or(0);
                let Some(&hi) = BUCKET_BOUNDS_NS.get(i) else {
                    return Some(lo as f64 / 1e3);
                };
                let within = ((rank - below as f64) / c as f64).clamp(0.0, 1.0);
                return Some((lo as f64 + within * (hi - lo) as f64) / 1e3);
            }
            below += c;
        }
        None
    }
}

/// Every stage's histogram per kind, shared by the engine, the frontends,
/// the control socket and the metrics endpoint.
#[derive(Debug)]
pub struct Stages {
    on: AtomicBool,
    hist: [[Hist; Stage::ALL.len()]; Kind::ALL.len()],
    /// What `repctl status --latency --reset` last saw (subtracted from
    /// what it shows; the metrics' counters never go back), and when.
    base: Mutex<(Vec<Snapshot>, Instant)>,
}

impl Default for Stages {
    fn default() -> Self {
        Self {
            on: AtomicBool::new(false),
            hist: std::array::from_fn(|_| std::array::from_fn(|_| Hist::default())),
            base: Mutex::new((Vec::new(), Instant::now())),
        }
    }
}

/// One row of a report: a kind's stage since the start or the last reset.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub kind: Kind,
    pub stage: Stage,
    pub snap: Snapshot,
}

impl Stages {
    /// Whether requests are timed (repd turns it on unless told not to).
    #[must_use]
    pub fn on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    pub(crate) fn set_on(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
    }

    pub fn observe(&self, kind: Kind, stage: Stage, d: Duration) {
        let h = self
            .hist
            .get(kind as usize)
            .and_then(|k| k.get(stage as usize));
        if let Some(h) = h {
            h.observe(d);
        }
    }

    /// Every kind's every stage as counted since repd started.
    #[must_use]
    pub fn totals(&self) -> Vec<Row> {
        let mut rows = Vec::with_capacity(Kind::ALL.len() * Stage::ALL.len());
        for kind in Kind::ALL {
            for stage in Stage::ALL {
                let snap = self
                    .hist
                    .get(kind as usize)
                    .and_then(|k| k.get(stage as usize))
                    .map(Hist::snapshot)
                    .unwrap_or_default();
                rows.push(Row { kind, stage, snap });
            }
        }
        rows
    }

    /// What was counted since the start or the last reset, and the seconds
    /// that covers; with `reset`, counting starts anew after this.
    pub fn since_reset(&self, reset: bool) -> (Vec<Row>, f64) {
        let mut base = self.base.lock().unwrap_or_else(PoisonError::into_inner);
        let mut rows = self.totals();
        let now_totals: Vec<Snapshot> = rows.iter().map(|r| r.snap.clone()).collect();
        for (r, b) in rows.iter_mut().zip(base.0.iter()) {
            r.snap = r.snap.since(b);
        }
        let secs = base.1.elapsed().as_secs_f64();
        if reset {
            *base = (now_totals, Instant::now());
        }
        (rows, secs)
    }
}

/// The answer to `repctl status --latency [--reset]`: every kind's stage
/// that counted a request since the start or the last reset.
#[must_use]
pub fn reply(stages: &Stages, reset: bool) -> LatencyReply {
    let (rows, seconds) = stages.since_reset(reset);
    let stages_out = rows
        .iter()
        .filter_map(|r| {
            Some(StageLatency {
                kind: r.kind.name().into(),
                stage: r.stage.name().into(),
                count: r.snap.count(),
                mean_us: r.snap.mean_us()?,
                p50_us: r.snap.quantile_us(0.5)?,
                p99_us: r.snap.quantile_us(0.99)?,
                sequential: r.stage.sequential(),
            })
        })
        .collect();
    LatencyReply {
        ok: true,
        resource: String::new(),
        error: None,
        enabled: stages.on(),
        seconds,
        stages: stages_out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_rise_from_one_microsecond_to_ten_seconds() {
        assert_eq!(BUCKET_BOUNDS_NS[0], 1_000);
        assert_eq!(BUCKET_BOUNDS_NS[BOUNDS - 1], 10_000_000_000);
        assert!(BUCKET_BOUNDS_NS.windows(2).all(|w| w[0] < w[1]));
        let exposed: Vec<u64> = BUCKET_BOUNDS_NS
            .iter()
            .copied()
            .filter(|&b| exposed_bound(b))
            .collect();
        assert_eq!(exposed.len(), 22);
        assert_eq!(&exposed[..4], &[1_000, 2_000, 5_000, 10_000]);
    }

    #[test]
    fn quantiles_and_means_follow_what_was_counted() {
        let s = Stages::default();
        for us in 1..=100u64 {
            s.observe(Kind::Write, Stage::LocalIo, Duration::from_micros(us));
        }
        s.observe(Kind::Read, Stage::Peer, Duration::from_secs(20));
        let rows = s.totals();
        let w = rows
            .iter()
            .find(|r| r.kind == Kind::Write && r.stage == Stage::LocalIo)
            .unwrap();
        assert_eq!(w.snap.count(), 100);
        assert!((w.snap.mean_us().unwrap() - 50.5).abs() < 1e-9);
        let p50 = w.snap.quantile_us(0.5).unwrap();
        assert!((40.0..=60.0).contains(&p50), "{p50}");
        let p99 = w.snap.quantile_us(0.99).unwrap();
        assert!((80.0..=100.0).contains(&p99), "{p99}");
        let r = rows
            .iter()
            .find(|r| r.kind == Kind::Read && r.stage == Stage::Peer)
            .unwrap();
        assert_eq!(r.snap.quantile_us(0.5), Some(10_000_000.0));
    }

    #[test]
    fn a_reset_starts_the_report_anew_and_keeps_the_totals() {
        let s = Stages::default();
        s.observe(Kind::Flush, Stage::EngineOther, Duration::from_micros(5));
        let (rows, _) = s.since_reset(true);
        assert_eq!(rows.iter().map(|r| r.snap.count()).sum::<u64>(), 1);
        s.observe(Kind::Flush, Stage::EngineOther, Duration::from_micros(7));
        let (rows, _) = s.since_reset(false);
        let n: u64 = rows.iter().map(|r| r.snap.count()).sum();
        assert_eq!(n, 1);
        let f = rows.iter().find(|r| r.snap.count() == 1).unwrap();
        assert_eq!(f.snap.sum_ns, 7_000);
        let total: u64 = s.totals().iter().map(|r| r.snap.count()).sum();
        assert_eq!(total, 2);
    }
}
