//! Issue 18's systemd restart scenario, in a Debian 12 guest that boots
//! systemd as PID 1 (`scripts/vm-systemd-image.sh`, `scripts/vm-systemd-run.sh`):
//! the package from `scripts/package.sh` is installed with `dpkg -i`,
//! `rep@r0` is enabled, its repd is killed with SIGKILL under a mounted ext4
//! with writers running; systemd restarts it, the new repd resumes as Primary
//! by itself, the writers and the filesystem carry on; `systemctl stop` is a
//! clean stop. The script is `vm-tests/scenarios/systemd-restart.sh`.
//!
//! `REP_VM_TESTS=0` skips it (and says so). The first run builds the guest
//! image (debootstrap, ~2–4 min; cached beside the kernel afterwards).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vm_tests::systemd::{run_in_systemd_vm, SystemdVmConfig};

/// The target directory this test was built into (`target/<profile>/deps/`).
fn target_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("test executable path: {e}"))?;
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("no target dir above {}", exe.display()))
}

/// `bash scripts/package.sh` into this target directory; the `.deb` it made.
fn build_package() -> Result<PathBuf, String> {
    let target = target_dir()?;
    let st = Command::new("bash")
        .arg(vm_tests::repo_root().join("scripts/package.sh"))
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(vm_tests::repo_root())
        .status()
        .map_err(|e| format!("bash scripts/package.sh: {e}"))?;
    if !st.success() {
        return Err(format!("scripts/package.sh failed: {st}"));
    }
    let deb = target.join(format!(
        "debian/rep_{}_amd64.deb",
        env!("CARGO_PKG_VERSION")
    ));
    if !deb.is_file() {
        return Err(format!("scripts/package.sh made no {}", deb.display()));
    }
    Ok(deb)
}

#[test]
fn systemd_restarts_a_killed_repd_and_the_filesystem_carries_on() {
    if std::env::var("REP_VM_TESTS").as_deref() == Ok("0") {
        eprintln!("REP_VM_TESTS=0: NOT running the systemd restart scenario");
        return;
    }
    let deb = build_package().unwrap_or_else(|e| panic!("{e}"));
    let scenarios = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let r = run_in_systemd_vm(
        "bash scenarios/systemd-restart.sh",
        &SystemdVmConfig {
            copy: vec![scenarios, deb],
            timeout: Duration::from_secs(2400),
            ..SystemdVmConfig::default()
        },
    )
    .unwrap_or_else(|e| panic!("the systemd VM did not run: {e}"));
    println!("{}", r.output);
    println!(
        "VM run took {} s, image and boot included",
        r.elapsed.as_secs()
    );
    let fails: Vec<&str> = r.output.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        fails.is_empty(),
        "failed checks in the guest:\n{}",
        fails.join("\n")
    );
    assert_eq!(r.status, 0, "scenario exit status; stderr:\n{}", r.stderr);
    for needle in [
        "PID 1 is systemd",
        "dpkg -i rep_",
        "man repctl, man repd, man 5 rep.toml work",
        "systemd knows rep@r0.service",
        "systemd-analyze verify rep@r0.service",
        "/dev/ublk-control",
        "systemctl enable --now rep@r0.service: active",
        "alpha Primary, UpToDate/UpToDate",
        "ext4 on /dev/ublkb0 mounted",
        "systemd restarted repd: NRestarts 0 -> 1",
        "/dev/ublkb0 survived the kill",
        "resumed as Primary by itself",
        "fio randwrite --verify=crc32c",
        "the file writer never failed",
        "is still mounted and writable",
        "logged files verify",
        "status=9/KILL",
        "resumed as Primary after the crash",
        "systemctl stop rep@r0.service: repd exited 0",
    ] {
        assert!(
            r.output
                .lines()
                .any(|l| l.starts_with("PASS: ") && l.contains(needle)),
            "no PASS line for {needle:?}; the scenario ended early?"
        );
    }
    // The restart must be systemd's and the resume repd's own: nothing in the
    // script promotes alpha after the kill.
    let script = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/systemd-restart.sh"),
    )
    .unwrap_or_else(|e| panic!("systemd-restart.sh: {e}"));
    let after_kill = script
        .split("# ---------------------------------------------------------------- 4.")
        .nth(1)
        .unwrap_or_else(|| panic!("systemd-restart.sh has no section 4"));
    for forbidden in [
        "repctl",
        "rc alpha primary",
        "rc alpha up",
        "systemctl start",
        "systemctl restart",
    ] {
        assert!(
            !after_kill.contains(forbidden),
            "section 4 of systemd-restart.sh must not run {forbidden:?}"
        );
    }
}
