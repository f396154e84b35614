//! The controller against a modelled link: a FIFO of requests served at a
//! bandwidth after a round trip, stepped every millisecond.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::VecDeque;

use super::*;

const REQ: u64 = 128 * 1024;

/// A link that answers each request a round trip after it was sent, once
/// the bytes before it went through at `bw_bytes_per_ms`.
struct Model {
    ctl: Controller,
    p: ResyncControl,
    bw_bytes_per_ms: u64,
    rtt_ms: u64,
    now: u64,
    tokens: u64,
    /// (answered at ms, bytes) of requests in flight, in order.
    inflight: VecDeque<(u64, u64)>,
    link_free_at: u64,
    received: u64,
    app: u64,
    /// Application bytes per millisecond (0: idle).
    app_per_ms: u64,
}

impl Model {
    fn new(p: ResyncControl, bw_bytes_per_ms: u64, rtt_ms: u64) -> Self {
        Self {
            ctl: Controller::new(
                Sample {
                    now: Millis(0),
                    received_bytes: 0,
                    inflight_bytes: 0,
                    app_bytes: 0,
                },
                0,
            ),
            p,
            bw_bytes_per_ms,
            rtt_ms,
            now: 0,
            tokens: 0,
            inflight: VecDeque::new(),
            link_free_at: 0,
            received: 0,
            app: 0,
            app_per_ms: 0,
        }
    }

    fn inflight_bytes(&self) -> u64 {
        self.inflight.iter().map(|&(_, b)| b).sum()
    }

    /// Run `ms` milliseconds; the mean bytes in flight over them.
    fn run(&mut self, ms: u64) -> u64 {
        let mut sum = 0;
        for _ in 0..ms {
            self.now += 1;
            self.app += self.app_per_ms;
            while self.inflight.front().is_some_and(|&(at, _)| at <= self.now) {
                let (_, b) = self.inflight.pop_front().unwrap();
                self.received += b;
            }
            let s = Sample {
                now: Millis(self.now),
                received_bytes: self.received,
                inflight_bytes: self.inflight_bytes(),
                app_bytes: self.app,
            };
            self.ctl.poll(&self.p, s, REQ);
            let rate = self.ctl.rate_bytes_per_s();
            self.tokens = (self.tokens + rate / 1000).min(rate.max(REQ));
            while self.tokens >= REQ {
                self.tokens -= REQ;
                let start = self.link_free_at.max(self.now + self.rtt_ms / 2);
                self.link_free_at = start + REQ.div_ceil(self.bw_bytes_per_ms);
                self.inflight
                    .push_back((self.link_free_at + self.rtt_ms / 2, REQ));
            }
            sum += self.inflight_bytes();
        }
        sum / ms
    }

    /// Bytes per second received over the next `ms`.
    fn speed(&mut self, ms: u64) -> u64 {
        let before = self.received;
        self.run(ms);
        (self.received - before) * 1000 / ms
    }
}

fn on(
    fill_target_bytes: u64,
    max_rate_bytes_per_s: u64,
    min_rate_bytes_per_s: u64,
) -> ResyncControl {
    ResyncControl {
        plan_ahead_ds: 20,
        fill_target_bytes,
        delay_target_ds: 10,
        max_rate_bytes_per_s,
        min_rate_bytes_per_s,
    }
}

fn within(v: u64, target: u64, pct: u64) -> bool {
    v * 100 >= target * (100 - pct) && v * 100 <= target * (100 + pct)
}

/// An idle 1 GB/s link with a 1 ms round trip: the resync reaches
/// c-max-rate and stays there.
#[test]
fn an_idle_fast_link_converges_to_c_max_rate() {
    let max = 50 << 20;
    let mut m = Model::new(on(1 << 20, max, 4 << 20), 1 << 20, 1);
    // From 0, each step adds about c-fill-target / c-plan-ahead (as in
    // DRBD): 50 KiB per step here, some 6 s to 50 MiB/s.
    m.run(10_000);
    assert_eq!(m.ctl.rate_bytes_per_s(), max);
    let v = m.speed(3_000);
    assert!(within(v, max, 10), "{v} B/s against c-max-rate {max}");
    assert!(!m.ctl.throttled());
}

/// The same link with a steady application load: the resync runs at
/// c-min-rate (not below), and goes back to c-max-rate once the load ends.
#[test]
fn application_io_throttles_to_c_min_rate_and_no_lower() {
    let (max, min) = (50 << 20, 4 << 20);
    let mut m = Model::new(on(1 << 20, max, min), 1 << 20, 1);
    m.run(3_000);
    m.app_per_ms = 10 << 10;
    m.run(500);
    for _ in 0..30 {
        m.run(100);
        assert!(m.ctl.throttled());
        assert_eq!(m.ctl.rate_bytes_per_s(), min);
    }
    let v = m.speed(3_000);
    assert!(within(v, min, 10), "{v} B/s against c-min-rate {min}");
    // A slow application (one 40 KiB write every 300 ms) still holds it.
    m.app_per_ms = 0;
    for _ in 0..10 {
        m.app += 40 << 10;
        m.run(300);
        assert!(m.ctl.throttled());
    }
    m.app_per_ms = 0;
    m.run(12_000);
    let v = m.speed(2_000);
    assert!(
        within(v, max, 10),
        "{v} B/s after the load, c-max-rate {max}"
    );
}

/// c-min-rate 0 is DRBD's "no throttle": the load changes nothing.
#[test]
fn c_min_rate_zero_never_throttles() {
    let max = 50 << 20;
    let mut m = Model::new(on(1 << 20, max, 0), 1 << 20, 1);
    m.app_per_ms = 10 << 10;
    m.run(10_000);
    assert!(!m.ctl.throttled());
    assert_eq!(m.ctl.rate_bytes_per_s(), max);
}

/// A 10 MB/s link with a 5 ms round trip and c-max-rate far above it:
/// the controller keeps about c-fill-target in flight (without it the
/// queue would grow without bound) and still uses the link.
#[test]
fn a_slow_link_keeps_about_c_fill_target_in_flight() {
    let fill = 2 << 20;
    let bw = 10 << 10; // bytes per ms
    let mut m = Model::new(on(fill, 1 << 30, 0), bw, 5);
    m.run(20_000);
    let mean = m.run(10_000);
    assert!(
        within(mean, fill, 35),
        "{mean} bytes in flight, c-fill-target {fill}"
    );
    let v = m.speed(5_000);
    assert!(
        v >= bw * 1000 * 9 / 10,
        "{v} B/s on a {} B/s link",
        bw * 1000
    );
}

/// With no fill target the aim is c-delay-target's worth of arrivals.
#[test]
fn the_delay_target_bounds_in_flight_bytes_by_time() {
    let bw = 10 << 10;
    let mut p = on(0, 1 << 30, 0);
    p.delay_target_ds = 5; // half a second
    let mut m = Model::new(p, bw, 5);
    m.run(20_000);
    let mean = m.run(10_000);
    let aim = bw * 500;
    assert!(within(mean, aim, 40), "{mean} bytes in flight, aim {aim}");
    assert!(m.speed(5_000) >= bw * 1000 * 9 / 10);
}

#[test]
fn settings_out_of_bounds_name_their_key() {
    assert_eq!(ResyncControl::default().check(), Ok(()));
    assert!(!ResyncControl::default().enabled());
    let bad = |f: fn(&mut ResyncControl)| {
        let mut p = on(1 << 20, 100 << 20, 1 << 20);
        f(&mut p);
        p.check().unwrap_err().0
    };
    assert_eq!(bad(|p| p.plan_ahead_ds = 301), "c-plan-ahead");
    assert_eq!(bad(|p| p.delay_target_ds = 0), "c-delay-target");
    assert_eq!(bad(|p| p.fill_target_bytes = 1 << 40), "c-fill-target");
    assert_eq!(bad(|p| p.max_rate_bytes_per_s = 1000), "c-max-rate");
    assert_eq!(bad(|p| p.min_rate_bytes_per_s = 200 << 20), "c-min-rate");
}
