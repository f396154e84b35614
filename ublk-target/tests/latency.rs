//! The latency breakdown (`repctl status --latency`) of a real protocol C
//! pair, checked against a real client's own clock: fio's nbd engine
//! writing 4 KiB at queue depth 1 through the Primary's NBD export.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_precision_loss
)]

mod common;

use common::fio::fio_qd1_randwrite;
use common::{require, Cluster, Opts};
use serde_json::Value;

/// Writes fio issues; each is one sample of every write stage.
const WRITES: u64 = 3000;

/// The SCHED_FIFO priority fio and the Primary's repd run at (see
/// `realtime`).
const REALTIME: &str = "10";

/// Every thread of `pid` to SCHED_FIFO: the threads it starts later (the
/// NBD connection's reader and writer) inherit it.
///
/// Why: what is outside the stages is mostly wake-ups (repd's NBD reader
/// from its `read`, fio from its `poll`). On a quiet machine each is a few
/// µs, but on a shared 2-core machine with twenty runnable tasks (other
/// builds) each waits for a core for hundreds of µs, and fio's figure would
/// hold more of the machine's queue than of repd. Real-time priority lets
/// the request's own threads run when they wake, as on a quiet machine;
/// both sides of the comparison see the same requests.
fn realtime(pid: u32) {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    for t in tasks {
        let tid = t.unwrap().file_name().into_string().unwrap();
        let o = std::process::Command::new("chrt")
            .args(["--fifo", "--pid", REALTIME, &tid])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        // A thread may end between the listing and chrt (nothing to raise).
        assert!(
            o.status.success() || err.contains("No such process"),
            "chrt: {err}"
        );
    }
}

/// fio's mean completion latency of `WRITES` 4 KiB random writes at QD1, in
/// µs, and how many it completed.
fn fio_qd1_writes(c: &Cluster) -> (f64, u64) {
    let ios = format!("--number_ios={WRITES}");
    let w = fio_qd1_randwrite(c, &["chrt", "--fifo", REALTIME], &[&ios]);
    let clat_us = w["clat_ns"]["mean"].as_f64().unwrap() / 1e3;
    (clat_us, w["total_ios"].as_u64().unwrap())
}

/// The means of the write stages in repd's breakdown, by stage name.
fn write_stages(c: &Cluster) -> Vec<(String, u64, f64)> {
    let v: Value = serde_json::from_str(&c.ok(0, &["status", "--latency", "--json"])).unwrap();
    assert_eq!(v["enabled"], true, "{v}");
    v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "write")
        .map(|s| {
            let name = s["stage"].as_str().unwrap().to_owned();
            (
                name,
                s["count"].as_u64().unwrap(),
                s["mean_us"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The stages that follow one another (all but `peer`, which runs beside
/// `local_io`) add up to the time a write spends in repd: from the NBD
/// reader having the request's header until its reply is on the socket.
/// fio's completion latency adds what is outside repd: fio and libnbd
/// sending the request and reaping the reply, the kernel's loopback TCP
/// both ways, and the wake-up of repd's reader thread from its `read`.
/// On loopback these are a few µs each against hundreds for the write, so
/// the two means agree within 10 % (with fio and the Primary at real-time
/// priority, so the machine's other load does not stretch the wake-ups:
/// see `realtime`).
#[test]
fn stage_means_add_up_to_fios_completion_latency() {
    require("fio", "fio");
    let c = Cluster::new(Opts {
        disk_mib: 32,
        ..Opts::default()
    });
    c.up(0);
    c.up(1);
    c.ok(0, &["primary", "--force"]);
    c.wait_synced(60);
    realtime(c.pid(0));
    // A first pass warms the activity log's extents (16 MiB, 4 of them),
    // then the reset makes the figures cover the second pass alone.
    let _ = fio_qd1_writes(&c);
    let text = c.ok(0, &["status", "--latency", "--reset"]);
    assert!(text.contains("write") && text.contains("in repd"), "{text}");
    let (clat_us, ios) = fio_qd1_writes(&c);
    assert_eq!(ios, WRITES);
    let stages = write_stages(&c);
    let names: Vec<&str> = stages.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "frontend_in",
            "al_wait",
            "local_io",
            "peer",
            "peer_after_local",
            "engine_other",
            "frontend_out"
        ],
        "{stages:?}"
    );
    for (name, count, _) in &stages {
        assert_eq!(*count, WRITES, "stage {name}: {stages:?}");
    }
    let mean = |n: &str| stages.iter().find(|s| s.0 == n).unwrap().2;
    let sum: f64 = stages.iter().filter(|s| s.0 != "peer").map(|s| s.2).sum();
    eprintln!(
        "QD1 4k writes: fio clat mean {clat_us:.1} µs, sum of repd's stage means {sum:.1} µs \
         ({:+.1} %): {stages:?}",
        (sum - clat_us) / clat_us * 100.0
    );
    assert!(
        (sum - clat_us).abs() <= 0.10 * clat_us,
        "stage means sum to {sum:.1} µs, fio's mean completion latency is {clat_us:.1} µs"
    );
    // Protocol C: the peer's round trip is in every write, and the
    // engine's unnamed rest is small beside the named stages.
    assert!(mean("peer") > 0.0 && mean("local_io") > 0.0);
    assert!(
        mean("engine_other") < 0.25 * sum,
        "engine_other {:.1} µs of {sum:.1}",
        mean("engine_other")
    );
    eprintln!("{}", c.ok(0, &["status", "--latency"]));
    // The text form and a reset: nothing counted since.
    c.ok(0, &["status", "--latency", "--reset"]);
    let after = c.ok(0, &["status", "--latency"]);
    assert!(after.contains("no requests since"), "{after}");
}
