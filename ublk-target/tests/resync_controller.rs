//! The dynamic resync rate controller on two real repd processes (DRBD's
//! c-plan-ahead, c-fill-target, c-max-rate, c-min-rate): with no
//! application I/O the resync runs at about c-max-rate; with a steady QD1
//! write load through the Primary's NBD export (fio, a real client) it
//! drops to about c-min-rate, still progresses, and the writes' p99
//! latency stays within a bound of the same writes with no resync, all
//! measured in the same run; `repctl adjust` lowers c-max-rate on the
//! running resync. A controller that does nothing keeps the resync at
//! c-max-rate under the load, and fails the second check.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss
)]

mod common;

use std::time::{Duration, Instant};

use common::fio::fio_qd1_randwrite;
use common::{Cluster, Opts};

const MIB: f64 = 1_048_576.0;
/// c-max-rate and c-min-rate of the test, MiB/s.
const MAX_MIB: f64 = 12.0;
const MIN_MIB: f64 = 1.0;

/// Resync bytes node 1 (the SyncTarget) received, per second, over `secs`.
fn resync_rate(c: &Cluster, secs: u64) -> f64 {
    let got = |c: &Cluster| {
        c.status(1)["stats"]["resync_received_bytes"]
            .as_u64()
            .unwrap()
    };
    let (t0, a) = (Instant::now(), got(c));
    std::thread::sleep(Duration::from_secs(secs));
    let b = got(c);
    let dt = t0.elapsed().as_secs_f64();
    assert_eq!(
        c.status(1)["connection"],
        "SyncTarget",
        "the resync ended inside the window: make the disk larger"
    );
    (b - a) as f64 / dt
}

/// fio's 4 KiB random writes at QD1 through node 0's export for `secs`:
/// the p99 completion latency in µs and the writes done.
fn fio_qd1(c: &Cluster, secs: u64) -> (f64, u64) {
    let runtime = format!("--runtime={secs}");
    let w = fio_qd1_randwrite(c, &[], &["--time_based", &runtime]);
    let p99_ns = w["clat_ns"]["percentile"]["99.000000"].as_f64().unwrap();
    (p99_ns / 1e3, w["total_ios"].as_u64().unwrap())
}

#[test]
fn the_controller_uses_an_idle_link_and_yields_to_application_writes() {
    let c = Cluster::new(Opts {
        disk_mib: 192,
        ..Opts::default()
    });
    let text = std::fs::read_to_string(&c.config[0]).unwrap();
    let with = text.replacen(
        "al-extents = 61\n",
        &format!(
            "al-extents = 61\nc-plan-ahead = 10\nc-fill-target = \"4M\"\nc-max-rate = \"{MAX_MIB}M\"\nc-min-rate = \"{MIN_MIB}M\"\n"
        )
        .replace(".0M", "M"),
        1,
    );
    assert_ne!(with, text);
    std::fs::write(&c.config[0], with).unwrap();
    c.up(0);
    c.up(1);
    c.ok(0, &["primary", "--force"]);
    c.wait(1, "the initial resync", 30, |s| {
        s["connection"] == "SyncTarget"
    });

    // Idle: the controller runs at c-max-rate, and says so.
    std::thread::sleep(Duration::from_secs(2));
    let idle = resync_rate(&c, 4);
    let s = c.status(1);
    assert_eq!(
        s["sync"]["rate_target_bytes_per_s"].as_u64(),
        Some((MAX_MIB * MIB) as u64),
        "{s}"
    );
    let text = c.ok(1, &["status"]);
    assert!(
        text.contains("want: 12288 K/sec (resync controller)"),
        "{text}"
    );

    // A steady QD1 write load on the Primary: the target sees the
    // replicated writes and throttles the resync to c-min-rate.
    let (busy, (p99_busy_us, ios_busy)) = std::thread::scope(|sc| {
        let fio = sc.spawn(|| fio_qd1(&c, 8));
        c.wait(1, "the resync throttled by the writes", 5, |s| {
            s["sync"]["throttled"] == true
        });
        std::thread::sleep(Duration::from_secs(1));
        let rate = resync_rate(&c, 4);
        (rate, fio.join().unwrap())
    });
    // `repctl adjust` lowers c-max-rate on the running resync.
    let text = std::fs::read_to_string(&c.config[0]).unwrap();
    std::fs::write(
        &c.config[0],
        text.replacen("c-max-rate = \"12M\"", "c-max-rate = \"6M\"", 1),
    )
    .unwrap();
    for i in 0..2 {
        let out = c.ok(i, &["adjust"]);
        assert!(out.contains("r0: sync.c-max-rate 12M -> 6M (now)"), "{out}");
    }
    std::thread::sleep(Duration::from_millis(1500));
    let adjusted = resync_rate(&c, 3);
    let s = c.status(1);
    assert_eq!(
        s["sync"]["rate_target_bytes_per_s"].as_u64(),
        Some(6 << 20),
        "{s}"
    );
    c.wait_synced(120);
    // The same writes with no resync: the reference latency.
    let (p99_idle_us, ios_idle) = fio_qd1(&c, 5);
    eprintln!(
        "resync {:.2} MiB/s idle, {:.2} MiB/s under writes, {:.2} MiB/s at c-max-rate 6M; \
         fio p99 {p99_busy_us:.0} µs \
         ({ios_busy} writes) during the resync, {p99_idle_us:.0} µs ({ios_idle}) without",
        idle / MIB,
        busy / MIB,
        adjusted / MIB
    );
    // Idle: c-max-rate, or somewhat less on a loaded machine (the window
    // of requests in flight narrows when answers are slow), never more.
    assert!(
        (MAX_MIB * MIB * 0.6..=MAX_MIB * MIB * 1.15).contains(&idle),
        "idle resync at {:.2} MiB/s, c-max-rate {MAX_MIB} MiB/s",
        idle / MIB
    );
    // Under writes: at or above c-min-rate (a little under for the
    // measuring), and far below the idle rate of the same run: a
    // controller that ignores the writes stays there.
    assert!(
        busy >= MIN_MIB * MIB * 0.8 && busy <= idle * 0.35,
        "resync under writes at {:.2} MiB/s (idle {:.2}): want about c-min-rate {MIN_MIB} MiB/s",
        busy / MIB,
        idle / MIB
    );
    assert!(
        adjusted <= 6.0 * MIB * 1.15 && adjusted >= idle * 0.5 * 0.6,
        "after adjust to c-max-rate 6M: {:.2} MiB/s (idle at 12M: {:.2})",
        adjusted / MIB,
        idle / MIB
    );
    assert!(ios_busy > 100 && ios_idle > 100);
    assert!(
        p99_busy_us <= p99_idle_us * 4.0 + 3000.0,
        "p99 {p99_busy_us:.0} µs during the throttled resync, {p99_idle_us:.0} µs without: \
         more than 4x + 3 ms"
    );
    c.assert_identical();
}
