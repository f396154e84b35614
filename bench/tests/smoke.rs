//! `nbd-bench --quick` end to end: real repd nodes, nbdkit and fio.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn require(tool: &str, package: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{tool} is not installed: apt-get install -y {package} (scripts/test-all.sh does it)"
    );
}

/// repd and repctl next to nbd-bench: build them with the same profile into
/// the same target dir (nbd-bench looks for them in its own directory).
fn build_repd(bench_exe: &Path) -> PathBuf {
    let profile_dir = bench_exe.parent().unwrap();
    let target_dir = profile_dir.parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut c = Command::new(cargo);
    c.args(["build", "-p", "ublk-target", "--bins", "--target-dir"])
        .arg(target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        c.arg("--release");
    }
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "building repd/repctl failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for b in ["repd", "repctl"] {
        assert!(
            profile_dir.join(b).is_file(),
            "{b} is not in {}",
            profile_dir.display()
        );
    }
    profile_dir.to_path_buf()
}

#[test]
fn quick_run_prints_the_tables_and_the_ratios() {
    require("fio", "fio");
    require("nbdkit", "nbdkit");
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_nbd-bench"));
    let bin_dir = build_repd(&exe);
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&tmp).unwrap();
    let t0 = Instant::now();
    // --runtime 2 keeps the test short: 10 fio runs of 1 + 2 s.
    let o = Command::new(&exe)
        .args(["--quick", "--runtime", "2", "--bin-dir"])
        .arg(&bin_dir)
        .arg("--dir")
        .arg(&tmp)
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
    assert!(
        !out.contains("protocol C / StandAlone (IOPS): -"),
        "both ratios computed"
    );
    for target in [
        "repd protocol C",
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
    // One peak-RSS line per repd (5 of them); whether they hold is repd's
    // business, not the benchmark's.
    let rss = out
        .lines()
        .filter(|l| l.starts_with("| repd") && l.contains(" 64.0 MiB |"))
        .count();
    assert_eq!(rss, 5, "one RSS line per repd");
    assert!(out.contains("all targets ran"));
    // Nothing is left behind in the temp dir.
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("nbd-bench-"))
        .collect();
    assert!(left.is_empty(), "temp dirs left behind: {left:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(120),
        "the quick run took {:?}",
        t0.elapsed()
    );
}
