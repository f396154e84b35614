//! Issue 4's scenarios 1 and 2 in the VM, on a real /dev/ublkbN:
//! 1. mkfs.ext4 on the Primary's device, files with checksums, switch roles,
//!    the files match on the other node, e2fsck clean; a Secondary has no
//!    device (mkfs there fails);
//! 2. fio --verify=crc32c on the device, kill -9 of the Primary's repd in the
//!    middle, restart of repd alone (no `repctl primary`): the restarted repd
//!    resumes as Primary by itself and fio finishes with no error (ublk user
//!    recovery).
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
        // The named checks below are what counts here.
        min_passes: 0,
    });
    let Some(r) = r.unwrap_or_else(|e| panic!("{e}")) else {
        return;
    };
    // Each named check must have passed, not merely not failed.
    for needle in [
        "create-md and up on both nodes",
        "alpha is Primary (--force)",
        "UpToDate/UpToDate",
        "/dev/ublkb0 exists on alpha (Primary)",
        "/dev/ublkb1 does not exist (beta Secondary)",
        "mkfs.ext4 /dev/ublkb0",
        "files (",
        "secondary refused while mounted",
        "alpha Secondary: /dev/ublkb0 is gone",
        "beta Primary: /dev/ublkb1 appeared",
        "files on beta have the same checksums",
        "e2fsck -fn /dev/ublkb1 clean",
        "back to alpha Primary",
        "fio randwrite 4k qd32 64M verify=crc32c: ok",
        "/dev/ublkb0 survives the kill",
        "alpha resumed as Primary by itself after the restart",
        "alpha's log says it resumed as Primary after the crash",
        "alpha's log has no libublk control lines",
        "fio verify survived kill -9 + restart",
    ] {
        assert!(
            r.output
                .lines()
                .any(|l| l.starts_with("PASS: ") && l.contains(needle)),
            "no PASS line for {needle:?}; the scenario ended early?"
        );
    }
    // Scenario 2 restarts repd alone: nothing may have promoted alpha by hand.
    let script = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scenarios/ublk-smoke.sh"
    ))
    .unwrap_or_else(|e| panic!("ublk-smoke.sh: {e}"));
    let recovery = script
        .split("# ---------------------------------------------------------------- 6.")
        .nth(1)
        .unwrap_or_else(|| panic!("ublk-smoke.sh has no section 6"));
    assert!(
        !recovery.contains("rc alpha primary"),
        "scenario 2 must not run `repctl primary` after the restart"
    );
}
