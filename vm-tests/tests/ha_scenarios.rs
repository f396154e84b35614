//! Issue 5's HA scenario in the VM, on real /dev/ublkbN devices: two nodes
//! in network namespaces, a cluster agent on each with the chain device ->
//! ext4 -> service IP; a planned switchover moves the filesystem and the
//! address with the data intact, and a kill -9 of the Primary's repd and
//! agent is taken over within deadtime + 1 s.
//!
//! The scenario is `vm-tests/scenarios/ha-switchover.sh`; it runs in the
//! guest with the repd, repctl and cluster-agent of this workspace ($REP_BIN,
//! else built here into this test's target directory and profile).
//! `REP_VM_TESTS=0` skips it.

use std::time::Duration;

use vm_tests::{run_scenario, Scenario, ScenarioBins};

#[test]
fn switchover_and_failover_move_the_filesystem_and_the_service_ip() {
    let r = run_scenario(&Scenario {
        what: "the VM scenarios",
        script: "ha-switchover.sh",
        env: &[],
        bins: ScenarioBins::BuildHere,
        required: &["repd", "repctl", "cluster-agent"],
        build_hint: "build the workspace's binaries first",
        timeout: Duration::from_secs(1800),
        min_passes: 20,
    });
    let Some(r) = r.unwrap_or_else(|e| panic!("{e}")) else {
        return;
    };
    for needle in [
        "switchover on alpha: done",
        "checksum matches on beta",
        "within deadtime + 1 s",
        "ALL PASS",
    ] {
        assert!(
            r.output.contains(needle),
            "the scenario did not report \"{needle}\""
        );
    }
}
