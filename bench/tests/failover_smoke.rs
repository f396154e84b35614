//! `failover-bench --runs 2` end to end: real repd and cluster-agent nodes
//! in network namespaces (needs root, iproute2, libnbd-bin). Checks that it
//! runs, prints every run and the summary, and leaves nothing behind; the
//! figures themselves are for bench/RESULTS.md, not for a test.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{build_next_to, leftovers, require, tmp_dir};

#[test]
fn two_runs_print_each_failover_and_the_median() {
    if !nix::unistd::geteuid().is_root() {
        panic!("failover-bench needs root (network namespaces)");
    }
    require("ip", "iproute2");
    require("nbdcopy", "libnbd-bin");
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_failover-bench"));
    let bin_dir = build_next_to(
        &exe,
        &["ublk-target", "cluster-agent"],
        &["repd", "repctl", "cluster-agent"],
    );
    let tmp = tmp_dir();
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
    let left = leftovers(&tmp, "failover-bench-");
    assert!(left.is_empty(), "temp dirs left behind: {left:?}");
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&ns.stdout).contains(&format!("fob{pid}")),
        "namespaces left behind: {}",
        String::from_utf8_lossy(&ns.stdout)
    );
}
