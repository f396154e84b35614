//! `failover-bench --runs 2` end to end: real repd and cluster-agent nodes
//! in network namespaces (needs root, iproute2, libnbd-bin). Checks that it
//! runs, prints every run and the summary, and leaves nothing behind; the
//! figures themselves are for bench/RESULTS.md, not for a test.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::Command;

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

/// repd, repctl and cluster-agent next to failover-bench: built with the same
/// profile into the same target dir.
fn build_nodes(bench_exe: &Path) -> PathBuf {
    let profile_dir = bench_exe.parent().unwrap();
    let target_dir = profile_dir.parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut c = Command::new(cargo);
    c.args([
        "build",
        "-p",
        "ublk-target",
        "-p",
        "cluster-agent",
        "--bins",
        "--target-dir",
    ])
    .arg(target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        c.arg("--release");
    }
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "building repd/repctl/cluster-agent failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    profile_dir.to_path_buf()
}

#[test]
fn two_runs_print_each_failover_and_the_median() {
    if !nix::unistd::geteuid().is_root() {
        panic!("failover-bench needs root (network namespaces)");
    }
    require("ip", "iproute2");
    require("nbdcopy", "libnbd-bin");
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_failover-bench"));
    let bin_dir = build_nodes(&exe);
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&tmp).unwrap();
    let child = Command::new(&exe)
        .args(["--runs", "2", "--bin-dir"])
        .arg(&bin_dir)
        .arg("--dir")
        .arg(&tmp)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let o = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    println!("{out}\n{err}");
    assert!(o.status.success(), "failover-bench failed:\n{out}\n{err}");
    // Both directions: alpha first, then beta (the runs alternate).
    assert!(
        out.contains("run 1: kill -9 of alpha -> beta Holding after"),
        "{out}"
    );
    assert!(
        out.contains("run 2: kill -9 of beta -> alpha Holding after"),
        "{out}"
    );
    assert!(out.contains("failover time over 2 runs"), "{out}");
    assert!(out.contains("median / target (3000 ms) = "), "{out}");
    assert!(out.contains("median / deadtime (2000 ms) = "), "{out}");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("failover-bench-")
        })
        .collect();
    assert!(left.is_empty(), "temp dirs left behind: {left:?}");
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&ns.stdout).contains(&format!("fob{pid}")),
        "namespaces left behind: {}",
        String::from_utf8_lossy(&ns.stdout)
    );
}
