//! Issue 4's scenarios 1 and 2 in the VM, on a real /dev/ublkbN:
//! 1. mkfs.ext4 on the Primary's device, files with checksums, switch roles,
//!    the files match on the other node, e2fsck clean; a Secondary has no
//!    device (mkfs there fails);
//! 2. fio --verify=crc32c on the device, kill -9 of the Primary's repd in the
//!    middle, restart of repd alone (no `repctl primary`): the restarted repd
//!    resumes as Primary by itself and fio finishes with no error (ublk user
//!    recovery).
//!
//! 3. (both kernels) which read path the device took, ublk zero copy on
//!    6.17, the copy on 6.12, and reads of the device (1M and 4k direct,
//!    buffered) equal to the Primary's backing file.
//!
//! All are in `vm-tests/scenarios/ublk-smoke.sh`, which runs in the guest
//! with the repd/repctl built by this workspace ($REP_BIN, else the target
//! directory's release or debug build). It runs on both guest kernels: 6.12
//! (the default, where every scenario runs) and 6.17 (trixie-backports, whose
//! ublk_drv has the newer features).

use std::time::Duration;

use vm_tests::{run_scenario_on, Kernel, Scenario, ScenarioBins};

#[test]
fn ublk_device_filesystem_role_switch_and_recovery() {
    smoke(Kernel::V6_12);
}

#[test]
fn ublk_smoke_on_kernel_6_17() {
    smoke(Kernel::V6_17);
}

// The body of both tests: a failed check panics, as in a #[test].
#[allow(clippy::panic)]
fn smoke(kernel: Kernel) {
    let sc = Scenario {
        what: "the VM scenarios",
        script: "ublk-smoke.sh",
        env: &["UBLK_SMOKE_RECOVERY=1"],
        bins: ScenarioBins::Prebuilt,
        required: &["repd"],
        build_hint: "build ublk-target's binaries first",
        timeout: Duration::from_secs(2400),
        // The named checks below are what counts here.
        min_passes: 0,
    };
    // vm-setup.sh prepares both kernels (test-all.sh runs it); a checkout set
    // up before 6.17 came gets it here (idempotent: a second once it is there).
    if std::env::var("REP_VM_TESTS").as_deref() != Ok("0") {
        if let Err(e) = vm_tests::setup_kernel(kernel) {
            panic!("kernel {kernel}: {e}");
        }
    }
    let r = run_scenario_on(&sc, Some(kernel));
    let Some(r) = r.unwrap_or_else(|e| panic!("kernel {kernel}: {e}")) else {
        return;
    };
    assert!(
        r.stderr.contains(&format!("booting {}.", kernel.as_str())),
        "kernel {kernel}: vm-run.sh booted another kernel:\n{}",
        r.stderr
    );
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
        // Zero copy where the kernel has it (6.16+), the copy elsewhere.
        match kernel {
            Kernel::V6_12 => "read path: ublk zero copy off",
            Kernel::V6_17 => "read path: ublk zero copy on",
        },
        match kernel {
            Kernel::V6_12 => "read path",
            Kernel::V6_17 => "no zero-copy read fell back to a copy",
        },
        "reads of /dev/ublkb0 (1M and 4k direct, 64k buffered) match alpha's disk",
        "ublk frontend stages timed",
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
            "kernel {kernel}: no PASS line for {needle:?}; the scenario ended early?"
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
