//! Issue 4's scenarios 1 and 2 in the VM, on a real /dev/ublkbN:
//! 1. mkfs.ext4 on the Primary's device, files with checksums, switch roles,
//!    the files match on the other node, e2fsck clean; a Secondary has no
//!    device (mkfs there fails);
//! 2. fio --verify=crc32c on the device, kill -9 of the Primary's repd in the
//!    middle, restart: fio finishes with no error (ublk user recovery).
//!
//! Both are in `vm-tests/scenarios/ublk-smoke.sh`, which runs in the guest
//! with the repd/repctl built by this workspace ($REP_BIN, else the target
//! directory's release or debug build).

use std::time::Duration;

use vm_tests::{run_scenario, Scenario, ScenarioBins};

#[test]
fn ublk_device_filesystem_role_switch_and_recovery() {
    let r = run_scenario(&Scenario {
        what: "the VM scenarios",
        script: "ublk-smoke.sh",
        env: &["UBLK_SMOKE_RECOVERY=1"],
        bins: ScenarioBins::Prebuilt,
        required: &["repd"],
        build_hint: "build ublk-target's binaries first",
        timeout: Duration::from_secs(2400),
        min_passes: 15,
    });
    let Some(r) = r.unwrap_or_else(|e| panic!("{e}")) else {
        return;
    };
    for needle in ["e2fsck", "fio", "recovery"] {
        assert!(
            r.output.to_lowercase().contains(needle),
            "the scenario did not report on {needle}"
        );
    }
}
