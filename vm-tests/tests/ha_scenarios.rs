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

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use vm_tests::{repo_root, run_in_vm_with, VmConfig};

/// The directory with repd, repctl and cluster-agent.
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
    let target = profile_dir.parent().expect("target dir").to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut c = Command::new(cargo);
    c.args([
        "build",
        "-q",
        "-p",
        "ublk-target",
        "-p",
        "cluster-agent",
        "--bins",
    ])
    .env("CARGO_TARGET_DIR", &target)
    .current_dir(repo_root());
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        c.arg("--release");
    }
    let o = c.output().expect("cargo runs");
    assert!(
        o.status.success(),
        "building repd, repctl and cluster-agent failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    profile_dir
}

#[test]
fn switchover_and_failover_move_the_filesystem_and_the_service_ip() {
    if std::env::var("REP_VM_TESTS").as_deref() == Ok("0") {
        eprintln!("REP_VM_TESTS=0: NOT running the VM scenarios");
        return;
    }
    let bin = bin_dir();
    for b in ["repd", "repctl", "cluster-agent"] {
        assert!(
            bin.join(b).exists(),
            "no {b} in {}: build the workspace's binaries first",
            bin.display()
        );
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/ha-switchover.sh");
    let cmd = format!("REP_BIN='{}' bash '{}'", bin.display(), script.display());
    let r = run_in_vm_with(
        &cmd,
        &VmConfig {
            timeout: Duration::from_secs(1800),
            ..VmConfig::default()
        },
    )
    .expect("the VM harness ran");
    println!("{}", r.output);
    eprintln!("{}", r.stderr);
    println!("VM run took {} s, boot included", r.elapsed.as_secs());
    let fails: Vec<&str> = r.output.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        fails.is_empty(),
        "failed checks in the guest:\n{}",
        fails.join("\n")
    );
    assert_eq!(r.status, 0, "scenario exit status");
    let passes = r.output.lines().filter(|l| l.starts_with("PASS")).count();
    assert!(
        passes >= 20,
        "only {passes} checks passed; the scenario ended early"
    );
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
