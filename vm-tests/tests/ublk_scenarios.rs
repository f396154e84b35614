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

use std::path::PathBuf;
use std::time::Duration;

use vm_tests::{run_in_vm_with, VmConfig};

fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("REP_BIN") {
        return PathBuf::from(d);
    }
    // target/<profile>/deps/this-test -> target/<profile>
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .to_path_buf();
    let release = profile_dir.parent().map(|t| t.join("release"));
    match release {
        Some(r) if r.join("repd").exists() && r.join("repctl").exists() => r,
        _ => profile_dir,
    }
}

#[test]
fn ublk_device_filesystem_role_switch_and_recovery() {
    if std::env::var("REP_VM_TESTS").as_deref() == Ok("0") {
        eprintln!("REP_VM_TESTS=0: NOT running the VM scenarios");
        return;
    }
    let bin = bin_dir();
    assert!(
        bin.join("repd").exists(),
        "no repd in {}: build ublk-target's binaries first",
        bin.display()
    );
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/ublk-smoke.sh");
    let cmd = format!(
        "REP_BIN='{}' UBLK_SMOKE_RECOVERY=1 bash '{}'",
        bin.display(),
        script.display()
    );
    let r = run_in_vm_with(
        &cmd,
        &VmConfig {
            timeout: Duration::from_secs(2400),
            ..VmConfig::default()
        },
    )
    .expect("the VM harness ran");
    println!("{}", r.output);
    eprintln!("{}", r.stderr);
    let passes = r.output.lines().filter(|l| l.starts_with("PASS")).count();
    let fails: Vec<&str> = r.output.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        fails.is_empty(),
        "failed checks in the guest:\n{}",
        fails.join("\n")
    );
    assert_eq!(r.status, 0, "scenario exit status");
    assert!(
        passes >= 15,
        "only {passes} checks passed; the scenario ended early"
    );
    for needle in ["e2fsck", "fio", "recovery"] {
        assert!(
            r.output.to_lowercase().contains(needle),
            "the scenario did not report on {needle}"
        );
    }
}
