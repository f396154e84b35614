//! Online resize of `/dev/ublkbN` in the VM (`vm-tests/scenarios/online-resize.sh`):
//! both images grown, `repctl resize` while ext4 is mounted; on 6.17
//! (UPDATE_SIZE) the device grows live and `resize2fs` grows the mounted
//! filesystem; on 6.12 alpha's log says the device must be re-created, which
//! the next demote and promote does, then `resize2fs`. The files stay intact
//! and beta's copy checks clean.

use std::time::Duration;

use vm_tests::{run_scenario_on, Kernel, Scenario, ScenarioBins};

#[test]
fn online_resize_on_kernel_6_12_recreates_the_device() {
    resize(
        Kernel::V6_12,
        &[
            "old kernel: alpha's log says /dev/ublkb0 must be re-created",
            "re-created on demote/promote",
        ],
    );
}

#[test]
fn online_resize_on_kernel_6_17_grows_the_mounted_device() {
    resize(
        Kernel::V6_17,
        &["/dev/ublkb0 grew to", "while mounted (UPDATE_SIZE)"],
    );
}

// The body of both tests: a failed check panics, as in a #[test].
#[allow(clippy::panic)]
fn resize(kernel: Kernel, own: &[&str]) {
    let sc = Scenario {
        what: "the online resize scenario",
        script: "online-resize.sh",
        env: &[],
        bins: ScenarioBins::Prebuilt,
        required: &["repd", "repctl"],
        build_hint: "build ublk-target's binaries first",
        timeout: Duration::from_secs(1800),
        min_passes: 0,
    };
    if std::env::var("REP_VM_TESTS").as_deref() != Ok("0") {
        if let Err(e) = vm_tests::setup_kernel(kernel) {
            panic!("kernel {kernel}: {e}");
        }
    }
    let r = run_scenario_on(&sc, Some(kernel));
    let Some(r) = r.unwrap_or_else(|e| panic!("kernel {kernel}: {e}")) else {
        return;
    };
    for needle in [
        "two nodes up, alpha Primary",
        "ext4 mounted with",
        "repctl resize on beta: ",
        "both nodes hold",
        "resize2fs grew the mounted ext4",
        "40 MiB written into the grown filesystem",
        "the files are intact",
        "e2fsck -fn of beta's grown copy is clean",
    ]
    .iter()
    .chain(own)
    {
        assert!(
            r.output
                .lines()
                .any(|l| l.starts_with("PASS: ") && l.contains(needle)),
            "kernel {kernel}: no PASS line for {needle:?}:\n{}",
            r.output
        );
    }
}
