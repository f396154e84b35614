//! Issue 5's HA scenario in the VM, on real /dev/ublkbN devices: two nodes
//! in network namespaces, a cluster agent on each with the chain device ->
//! ext4 -> service IP; a planned switchover moves the filesystem and the
//! address with the data intact, and after a kill -9 of the Primary's repd
//! and agent the peer has ext4 mounted, the service IP up and a write
//! fsynced within deadtime + 1 s (issue 5's line; the scenario prints the
//! measured time).
//!
//! The scenario is `vm-tests/scenarios/ha-switchover.sh`; it runs in the
//! guest with the repd, repctl and cluster-agent of this workspace: $REP_BIN
//! (`scripts/test-all.sh` sets it to its release build), else a release
//! build made here in this test's target directory. Not the debug build of
//! a plain `cargo test`: the failover bound is a time, and unoptimised repd
//! under emulation spends seconds starting the device and replaying the
//! journal (a debug run measured 6.9 s against the 5 s bound, where release
//! builds took 4.3-5.2 s on the same shared host: the bound held in four of
//! five runs, see bench/RESULTS.md). `REP_VM_TESTS=0` skips it.

use std::path::PathBuf;
use std::time::Duration;

use vm_tests::{run_scenario, Scenario, ScenarioBins};

/// `cargo build --release` of the binaries into this test's target
/// directory; the folder holding them.
fn release_bins() -> PathBuf {
    let profile = rep_testkit::profile_dir();
    let target = profile.parent().expect("a target directory above the test");
    rep_testkit::build_bins(
        &target.join("release"),
        &["ublk-target", "cluster-agent"],
        &["repd", "repctl", "cluster-agent"],
    )
}

#[test]
fn switchover_and_failover_move_the_filesystem_and_the_service_ip() {
    let skip = std::env::var("REP_VM_TESTS").as_deref() == Ok("0");
    if !skip && std::env::var_os("REP_BIN").is_none() {
        let dir = release_bins();
        // One test in this binary: nothing else reads the environment.
        std::env::set_var("REP_BIN", dir);
    }
    let r = run_scenario(&Scenario {
        what: "the VM scenarios",
        script: "ha-switchover.sh",
        env: &[],
        bins: ScenarioBins::Prebuilt,
        required: &["repd", "repctl", "cluster-agent"],
        build_hint: "build the workspace's release binaries first \
            (cargo build --release -p ublk-target -p cluster-agent --bins)",
        timeout: Duration::from_secs(1800),
        min_passes: 20,
    });
    let Some(r) = r.unwrap_or_else(|e| panic!("{e}")) else {
        return;
    };
    for needle in [
        "switchover on alpha: done",
        "checksum matches on beta",
        "failover within deadtime + 1 s",
        "ALL PASS",
    ] {
        assert!(
            r.output.contains(needle),
            "the scenario did not report \"{needle}\""
        );
    }
}
