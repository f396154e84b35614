//! Issue 4's scenarios 3 and 4 and two device fixes in the VM, on real
//! /dev/ublkbN (`vm-tests/scenarios/ublk-failures.sh`, one boot):
//! 3. power loss of the Primary during an fsync workload on ext4: beta is
//!    promoted, every file whose fsync returned is there with its checksum,
//!    e2fsck clean; alpha comes back, resyncs, shows the same files; verify
//!    finds both copies equal;
//! 4. the Secondary has no device: mkfs.ext4 on it exits non-zero and its
//!    data region is unchanged;
//! fix a: a device left by a dead repd stays quiesced while the restarted
//!    repd is Secondary and is removed once the data moved to another
//!    generation;
//! fix b: `repctl down` is refused while the device is mounted.
//!
//! It runs the repd/repctl built by this workspace ($REP_BIN, else the
//! target directory's release build if there is one, else the debug build).

use std::time::Duration;

use vm_tests::{run_scenario, Scenario, ScenarioBins};

#[test]
fn power_loss_secondary_mkfs_and_device_fixes() {
    let r = run_scenario(&Scenario {
        what: "the VM scenarios 3 and 4",
        script: "ublk-failures.sh",
        // 128 MiB images: the initial sync and the resyncs are the slow part under TCG.
        env: &["UBLK_FAIL_SIZE=128M"],
        bins: ScenarioBins::Prebuilt,
        required: &["repd", "repctl"],
        build_hint: "build ublk-target's binaries first",
        timeout: Duration::from_secs(2400),
        // The named checks below are what counts here.
        min_passes: 0,
    });
    let Some(r) = r.unwrap_or_else(|e| panic!("{e}")) else {
        return;
    };
    // Each named check must have passed, not merely not failed.
    for needle in [
        "scenario 4: mkfs.ext4 /dev/ublkb1 on the Secondary exits non-zero",
        "scenario 4: beta's data region unchanged",
        "scenario 3: all",
        "scenario 3: e2fsck -fn /dev/ublkb1 clean",
        "scenario 3: alpha shows all",
        "scenario 3: e2fsck -fn /dev/ublkb0 on alpha clean",
        "repctl verify: both copies equal",
        "fix a: alpha restarted Secondary",
        "fix a: the stale /dev/ublkb0 is removed",
        "fix a: the held read failed",
        "fix b: repctl down refused",
        "fix b: alpha still up and Primary",
    ] {
        assert!(
            r.output
                .lines()
                .any(|l| l.starts_with("PASS: ") && l.contains(needle)),
            "no PASS line for {needle:?}; the scenario ended early?"
        );
    }
    let _ = r.remove_work_dir();
}
