//! `nbd-bench --quick` end to end: real repd nodes, nbdkit and fio.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{build_next_to, leftovers, require, tmp_dir};

#[test]
fn quick_run_prints_the_tables_and_the_ratios() {
    require("fio", "fio");
    require("nbdkit", "nbdkit");
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_nbd-bench"));
    // nbd-bench looks for repd and repctl in its own directory.
    let bin_dir = build_next_to(&exe, &["ublk-target"], &["repd", "repctl"]);
    let tmp = tmp_dir();
    // The Secondary of one more pair goes here (another disk, or tmpfs, in
    // a real run); any directory exercises the option.
    let peer = tmp.join("peer-side");
    let t0 = Instant::now();
    // --runtime 2 keeps the test short: 10 fio runs of 1 + 2 s.
    let o = Command::new(&exe)
        .args(["--quick", "--runtime", "2", "--bin-dir"])
        .arg(&bin_dir)
        .arg("--dir")
        .arg(&tmp)
        .arg("--peer-dir")
        .arg(&peer)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    println!("{out}\n{err}\n(took {:?})", t0.elapsed());
    assert!(
        o.status.success(),
        "nbd-bench --quick failed:\n{out}\n{err}"
    );
    assert_eq!(
        out.matches("protocol C / StandAlone (IOPS): ").count(),
        2,
        "one ratio line per workload"
    );
    assert_eq!(out.matches("protocol A / StandAlone (IOPS): ").count(), 2);
    assert_eq!(
        out.matches("protocol C, peer on --peer-dir / StandAlone (IOPS): ")
            .count(),
        2
    );
    assert!(!out.contains("peer on --peer-dir / StandAlone (IOPS): -"));
    assert!(
        !out.contains("protocol C / StandAlone (IOPS): -"),
        "both ratios computed"
    );
    for target in [
        "repd protocol C",
        "repd C, --peer-dir",
        "repd protocol A",
        "repd StandAlone",
        "nbdkit file",
        "nbdkit file cache=none",
    ] {
        assert!(
            out.contains(&format!("| {target:<22} |")),
            "table row for {target}"
        );
    }
    // One peak-RSS line per repd (7 of them); whether they hold is repd's
    // business, not the benchmark's.
    let rss = out
        .lines()
        .filter(|l| l.starts_with("| repd") && l.contains(" 64.0 MiB |"))
        .count();
    assert_eq!(rss, 7, "one RSS line per repd");
    assert!(out.contains("all targets ran"));
    // Nothing is left behind in the temp dir.
    let left = leftovers(&tmp, "nbd-bench-");
    assert!(left.is_empty(), "temp dirs left behind: {left:?}");
    let left = leftovers(&peer, "nbd-bench-peer-");
    assert!(left.is_empty(), "peer temp dirs left behind: {left:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(120),
        "the quick run took {:?}",
        t0.elapsed()
    );
}
