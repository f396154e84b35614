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
    // One peak-RSS line per repd (7 of them), and each repd holds the
    // limit the README and RESULTS state: 64 MiB + its bitmap. Checked from
    // the figures themselves, not only the table's own verdict.
    let rss: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("| repd") && l.contains(" 64.0 MiB |"))
        .collect();
    assert_eq!(rss.len(), 7, "one RSS line per repd");
    for line in rss {
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        // | target | node | VmHWM | bitmap | limit | holds |
        let (hwm, bitmap, holds) = (bytes(cols[3]), bytes(cols[4]), cols[6]);
        assert!(
            hwm <= (64 << 20) + bitmap && holds == "yes",
            "repd's peak RSS is over 64 MiB + bitmap: {line}"
        );
    }
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

/// "15.6 MiB", "32 KiB", "1.0 GiB", "512 B" (the benchmark's `human_bytes`)
/// back to bytes, as shown (the `holds` column catches what rounding hides).
fn bytes(text: &str) -> u64 {
    let (n, unit) = text
        .split_once(' ')
        .unwrap_or_else(|| panic!("not a size: {text:?}"));
    let n: f64 = n.parse().unwrap_or_else(|_| panic!("not a size: {text:?}"));
    let mult = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => panic!("unknown unit in {text:?}"),
    };
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let b = (n * mult).floor() as u64;
    b
}
