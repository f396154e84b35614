//! `nbd-bench --floors`: the host figures against their floors end with one
//! `RATIO <what> <workload> <value>` line per ratio, each with a number.

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{build_next_to, require, tmp_dir};

#[test]
fn nbd_bench_floors_prints_every_ratio_with_a_value() {
    require("fio", "fio");
    require("nbdkit", "nbdkit");
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_nbd-bench"));
    let bin_dir = build_next_to(
        &exe,
        &["ublk-target"],
        &["repd", "repctl", "floor-pair", "tcp-rtt"],
    );
    let o = Command::new(&exe)
        .args(["--floors", "--quick", "--size", "64M", "--runtime", "1"])
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--dir")
        .arg(tmp_dir())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    println!("{out}\n{err}");
    assert!(
        o.status.success(),
        "nbd-bench --floors failed:\n{out}\n{err}"
    );
    assert!(out.contains("tcp-rtt 4 KiB out, 32 B back: mean "), "{out}");
    let ratios: Vec<&str> = out.lines().filter(|l| l.starts_with("RATIO ")).collect();
    let want = [
        "RATIO protoC-added/tcp-rtt qd1-4k ",
        "RATIO protoC-added/tcp-rtt qd1-4k-p50 ",
        "RATIO repd-cpu/floor-cpu 4k-qd32 ",
        "RATIO repd-cpu/floor-cpu 1m-qd4 ",
        "RATIO stats-on/stats-off qd1-4k ",
        "RATIO stats-on/stats-off-cpu 4k-qd32 ",
        "RATIO stats-on/stats-off-cpu 1m-qd4 ",
    ];
    assert_eq!(ratios.len(), want.len(), "{ratios:?}");
    for (line, prefix) in ratios.iter().zip(want) {
        let value = line
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("{line:?}"));
        // The added latency may come out negative on a noisy machine; the
        // others are positive. Each is a number, never "-".
        assert!(value.parse::<f64>().is_ok(), "{line:?}");
    }
    // --floors is its own set of targets.
    let bad = Command::new(&exe)
        .args(["--floors", "--targets", "standalone"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}
