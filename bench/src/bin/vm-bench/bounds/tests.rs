//! Tests of vm-bench's bounds: the files the guest script writes, read and
//! printed.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;
use crate::report::{report, WORKLOADS};

/// A /proc/PID/stat line with utime and stime.
fn stat(pid: u32, comm: &str, utime: u64, stime: u64) -> String {
    format!("{pid} ({comm}) S 1 1 1 0 -1 4194560 10 0 0 0 {utime} {stime} 0 0 20 0 3 0 100 0 0")
}

/// A cpu_snap text: guest busy/idle ticks, the device's reads/writes, and
/// process/thread lines.
fn snap(busy: u64, idle: u64, reads: u64, writes: u64, lines: &[String]) -> String {
    format!(
        "cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ndisk {reads} 0 0 0 {writes} 0 0 0 0 0 0 0 0 0 0 0 0\n{}\n",
        lines.join("\n")
    )
}

fn fio_json(side: &str, p50_us: f64, clat_mean_us: f64) -> String {
    format!(
        r#"{{"jobs":[{{"error":0,"{side}":{{"iops":500.0,"bw_bytes":2048000,"clat_ns":{{"mean":{},"percentile":{{"50.000000":{},"99.000000":{}}}}}}}}}]}}"#,
        clat_mean_us * 1000.0,
        p50_us * 1000.0,
        p50_us * 3000.0
    )
}

fn latency_json(local_io_us: f64) -> String {
    let row = |stage: &str, mean: f64, seq: bool| {
        format!(
            r#"{{"kind":"write","stage":"{stage}","count":1000,"mean_us":{mean},"p50_us":{},"p99_us":{},"sequential":{seq}}}"#,
            mean * 0.9,
            mean * 3.0
        )
    };
    format!(
        r#"{{"ok":true,"resource":"r0","enabled":true,"seconds":10.0,"stages":[{},{},{},{},{},
        {{"kind":"read","stage":"local_io","count":3,"mean_us":5.0,"p50_us":5.0,"p99_us":5.0,"sequential":true}}]}}"#,
        row("frontend_in", 100.0, true),
        row("local_io", local_io_us, true),
        row("peer", 900.0, false),
        row("peer_after_local", 500.0, true),
        row("engine_other", 50.0, true),
    )
}

fn qd1() -> Run<'static> {
    Run {
        file: "randwrite-4k-qd1",
        side: "write",
        latency: true,
    }
}

#[test]
fn stage_table_takes_medians_and_sets_the_sum_against_fios_clat() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (r, local, clat) in [(1, 200.0, 1500.0), (2, 400.0, 1000.0), (3, 300.0, 2000.0)] {
        let stem = format!("ours.randwrite-4k-qd1.r{r}");
        std::fs::write(d.join(format!("{stem}.latency.json")), latency_json(local)).unwrap();
        std::fs::write(
            d.join(format!("{stem}.json")),
            fio_json("write", 900.0, clat),
        )
        .unwrap();
    }
    let text = stage_table(d, "ours", qd1(), 3).unwrap();
    assert!(text.contains("medians of 3 run(s)"), "{text}");
    // local_io's median of 200, 400, 300; p99 is 3 × the mean.
    let local = text.lines().find(|l| l.contains("local_io")).unwrap();
    assert!(local.contains("300.0") && local.contains("900.0"), "{text}");
    // peer overlaps local_io: shown, not summed.
    assert!(text.contains("(peer: beside local_io)"), "{text}");
    // 100 + 300 + 500 + 50 = 950 in repd; fio's mean clat median 1500.
    let sum = text
        .lines()
        .find(|l| l.contains("sum of the means"))
        .unwrap();
    assert!(sum.trim_end().ends_with("950.0"), "{text}");
    let out = text.lines().find(|l| l.contains("outside repd")).unwrap();
    assert!(
        out.contains("550.0") && out.contains("(37 % of it"),
        "{text}"
    );
    // Reads have their own kind; no breakdown at all is no table.
    assert!(stage_medians(&[latency_json(1.0)], "read").len() == 1);
    assert!(stage_table(d, "ours-b", qd1(), 3).is_none());
}

#[test]
fn cpu_per_io_splits_processes_and_kernel_threads() {
    let before = snap(
        1000,
        500,
        0,
        100,
        &[
            format!("proc alpha {}", stat(10, "repd", 100, 50)),
            format!("task alpha {}", stat(10, "repd", 1, 1)),
            format!("task alpha {}", stat(11, "ublk0-q0", 40, 20)),
            format!("task alpha {}", stat(12, "ublk0-q1", 40, 20)),
            format!("proc beta {}", stat(20, "repd", 10, 10)),
            format!("task kernel {}", stat(30, "drbd_w_r2", 5, 5)),
        ],
    );
    let after = snap(
        1600,
        600,
        0,
        10_100,
        &[
            format!("proc alpha {}", stat(10, "repd", 150, 150)),
            format!("task alpha {}", stat(10, "repd", 1, 1)),
            format!("task alpha {}", stat(11, "ublk0-q0", 80, 60)),
            format!("task alpha {}", stat(12, "ublk0-q1", 60, 40)),
            format!("task alpha {}", stat(13, "repd-peer", 20, 30)),
            format!("proc beta {}", stat(20, "repd", 60, 60)),
            format!("task kernel {}", stat(30, "drbd_w_r2", 15, 5)),
        ],
    );
    let a = parse_snap(&before).unwrap();
    let b = parse_snap(&after).unwrap();
    assert_eq!(b.ios, 10_100);
    let c = cpu_per_io(&a, &b).unwrap();
    assert_eq!(c.ios, 10_000);
    // 600 ticks of 10 ms over 10 000 I/Os: 600 µs each; busy 600 of 700.
    assert!((c.guest_us - 600.0).abs() < 1e-9, "{c:?}");
    assert!((c.busy_pct - 600.0 / 7.0).abs() < 1e-9, "{c:?}");
    // alpha 150 ticks (its own figure), beta 100, the kernel thread 10.
    let part = |n: &str| c.parts.iter().find(|p| p.0 == n).unwrap();
    assert!((part("alpha").1 - 150.0).abs() < 1e-9, "{c:?}");
    assert!((part("beta").1 - 100.0).abs() < 1e-9, "{c:?}");
    assert!((part("kernel").1 - 10.0).abs() < 1e-9, "{c:?}");
    assert!((c.own_us - 260.0).abs() < 1e-9, "{c:?}");
    // alpha's threads, busiest first: q0 80, peer 50 (new thread), q1 40.
    let names: Vec<&str> = part("alpha").2.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(names[..3], ["ublk0-q0", "repd-peer", "ublk0-q1"], "{c:?}");
    // No I/O in between: no figure; a broken line is an error.
    assert!(cpu_per_io(&b, &b).is_none());
    assert!(parse_snap("disk 1 2 3").is_err());
    assert!(parse_snap(&format!("{before}proc x 12 (repd\n")).is_err());
}

#[test]
fn report_prints_floors_stages_cpu_and_profiles() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for t in ["ours", "drbd-integrity"] {
        for w in &WORKLOADS {
            let p50 = if t == "ours" { 2000.0 } else { 1000.0 };
            std::fs::write(
                d.join(format!("{t}.{}.r1.json", w.file)),
                fio_json(w.side, p50, 2200.0),
            )
            .unwrap();
        }
        let lines = |u: u64, s: u64| {
            if t == "ours" {
                vec![format!("proc alpha {}", stat(10, "repd", u, s))]
            } else {
                vec![format!("task kernel {}", stat(30, "drbd_r_r3", u, s))]
            }
        };
        let w = "randwrite-4k-qd32";
        std::fs::write(
            d.join(format!("{t}.{w}.r1.cpu-before")),
            snap(0, 0, 0, 0, &lines(0, 0)),
        )
        .unwrap();
        std::fs::write(
            d.join(format!("{t}.{w}.r1.cpu-after")),
            snap(1000, 0, 0, 20_000, &lines(300, 100)),
        )
        .unwrap();
    }
    std::fs::write(
        d.join("ours.randwrite-4k-qd1.r1.latency.json"),
        latency_json(300.0),
    )
    .unwrap();
    std::fs::write(
        d.join("floor-local.randwrite-4k-qd1.r1.json"),
        fio_json("write", 150.0, 160.0),
    )
    .unwrap();
    std::fs::write(
        d.join("floor-rtt.r1.json"),
        r#"{"mean_us":260.0,"p50_us":250.0,"p99_us":900.0,"min_us":100.0}"#,
    )
    .unwrap();
    std::fs::write(
        d.join("perf.ours.comm.txt"),
        "    61.00%  repd\n    20.00%  fio\n",
    )
    .unwrap();
    std::fs::write(
        d.join("perf.ours.top.txt"),
        "    10.00%  ublk0-q0  repd  [.] crc32c::table\n",
    )
    .unwrap();
    let both = vec!["ours".to_owned(), "drbd-integrity".to_owned()];
    let (text, ok) = report(d, &both, "kernel x", 1);
    assert!(ok, "{text}");
    // Floors: 150 + 250 = 400 µs; ours 2000 = x5.00, DRBD 1000 = x2.50.
    assert!(text.contains("local write 150 us"), "{text}");
    assert!(text.contains("TCP round trip 250 us"), "{text}");
    assert!(
        text.contains("local + rtt = 400 us: ours 2000 us = x5.00, drbd-integrity 1000 us = x2.50"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == "RATIO ours/floor 4k-randwrite-qd1-p50 5.00"),
        "{text}"
    );
    assert!(
        text.contains("ours per stage in repd (write requests"),
        "{text}"
    );
    // CPU: 1000 ticks busy over 20 000 writes = 500 µs each; ours' repd
    // 400 ticks = 200 µs; DRBD's receiver the same.
    let row = |t: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(t) && l.contains("20000"))
            .unwrap()
            .to_owned()
    };
    assert!(
        row("ours").contains("500.0") && row("ours").contains("alpha 200.0"),
        "{text}"
    );
    assert!(
        row("drbd-integrity").contains("kernel 200.0 (drbd_r_r3 200.0)"),
        "{text}"
    );
    assert!(
        text.contains("Profile of ours, 4k random write QD32"),
        "{text}"
    );
    assert!(text.contains("[.] crc32c::table"), "{text}");
    // The RATIO lines still come last.
    let last = text.lines().last().unwrap();
    assert!(last.starts_with("RATIO "), "{text}");
}
