//! Boots the VM once and checks, inside the guest, what the project relies on:
//! ublk_drv loads and /dev/ublk-control exists; network namespaces with a veth
//! pair work (two nodes in one guest); a file written to $VM_WORK is on the host
//! afterwards; O_DIRECT works on $VM_SCRATCH (where backing images go); the
//! guest's exit status comes back to the host.
//!
//! One boot takes 15–30 s under TCG (minutes on a busy host). Set
//! REP_VM_TESTS=0 to skip (said loudly); otherwise a missing setup is installed
//! by scripts/vm-setup.sh (root) and a failure fails the test.

use std::time::Duration;

use vm_tests::{run_in_vm_with, VmConfig, EXIT_HARNESS};

/// The guest script: one `CHECK name ok|FAIL ...` line per check, then exits 7
/// so the test also proves the exit status comes through.
const CHECKS: &str = r#"
check() { # name, command...
  local name=$1; shift
  local out t0=$EPOCHREALTIME
  if out=$("$@" 2>&1); then
    echo "CHECK $name ok ($(elapsed "$t0") s)"
  else
    echo "CHECK $name FAIL ($(elapsed "$t0") s): $(echo "$out" | tail -n 5 | tr '\n' ' ')"
  fi
}
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
info() { # name, command...: for information only
  local name=$1; shift
  local out t0=$EPOCHREALTIME
  if out=$("$@" 2>&1); then r=ok; else r=no; fi
  echo "INFO $name $r ($(elapsed "$t0") s) $(echo "$out" | head -n 1)"
}
echo "INFO kernel $(uname -r)"

check ublk_modprobe modprobe ublk_drv
check ublk_control test -c /dev/ublk-control
check ublk_loaded grep -q '^ublk_drv ' /proc/modules

# `set -e` does not work in a function run as an `if` condition: chain with &&.
netns() {
  ip netns add vmt-a &&
  ip netns add vmt-b &&
  ip link add vmt-va type veth peer name vmt-vb &&
  ip link set vmt-va netns vmt-a &&
  ip link set vmt-vb netns vmt-b &&
  ip -n vmt-a addr add 10.77.0.1/24 dev vmt-va &&
  ip -n vmt-b addr add 10.77.0.2/24 dev vmt-vb &&
  ip -n vmt-a link set lo up &&
  ip -n vmt-b link set lo up &&
  ip -n vmt-a link set vmt-va up &&
  ip -n vmt-b link set vmt-vb up &&
  ip netns exec vmt-a ping -c 1 -W 5 10.77.0.2 &&
  ip netns exec vmt-b ping -c 1 -W 5 10.77.0.1 &&
  ip netns del vmt-a &&
  ip netns del vmt-b
}
check netns_veth netns

check work_write sh -c 'echo "written-in-guest $(uname -r)" > "$VM_WORK/from-guest.txt"'

odirect() { # folder, MiB
  dd if=/dev/urandom of="$1/odirect.src" bs=1M count="$2" status=none &&
  dd if="$1/odirect.src" of="$1/odirect.img" bs=1M oflag=direct conv=fsync status=none &&
  dd if="$1/odirect.img" of="$1/odirect.back" bs=1M iflag=direct status=none &&
  cmp "$1/odirect.src" "$1/odirect.back" &&
  rm -f "$1"/odirect.*
}
check odirect_scratch odirect "$VM_SCRATCH" 8
# For information only.
info odirect_9p odirect "$VM_WORK" 1
rm -f "$VM_WORK"/odirect.*
info drbd sh -c 'modprobe drbd && head -n 1 /proc/drbd'
info scratch sh -c 'df -h "$VM_SCRATCH" | tail -n 1'
info rublk sh -c 'command -v rublk'
echo "INFO guest-uptime $(cut -d" " -f1 /proc/uptime)"
exit 7
"#;

const EXPECTED: &[&str] = &[
    "ublk_modprobe",
    "ublk_control",
    "ublk_loaded",
    "netns_veth",
    "work_write",
    "odirect_scratch",
];

#[test]
fn guest_has_what_the_project_needs() {
    let Some(vmlinuz) = kernel_or_skip() else {
        return;
    };
    eprintln!("vm-tests: kernel image {}", vmlinuz.display());

    let cfg = VmConfig {
        timeout: Duration::from_secs(1500),
        ..VmConfig::default()
    };
    let r = match run_in_vm_with(CHECKS, &cfg) {
        Ok(r) => r,
        Err(e) => panic!("vm-run.sh could not be run: {e}"),
    };
    eprintln!("vm-tests: the VM run took {:.1} s", r.elapsed.as_secs_f64());
    assert_ne!(
        r.status,
        EXIT_HARNESS,
        "harness failure.\nstderr:\n{}\nconsole (end):\n{}",
        r.stderr,
        tail(&r.console_log(), 40)
    );
    for name in EXPECTED {
        let ok = format!("CHECK {name} ok ");
        assert!(
            r.output.lines().any(|l| l.starts_with(&ok)),
            "check {name} did not pass in the guest.\nstdout:\n{}\nstderr:\n{}",
            r.output,
            r.stderr
        );
    }
    assert_eq!(
        r.status, 7,
        "the guest's exit status (7) did not come back.\nstderr:\n{}",
        r.stderr
    );

    let written = std::fs::read_to_string(r.work_dir.join("from-guest.txt"))
        .unwrap_or_else(|e| format!("<unreadable: {e}>"));
    assert!(
        written.starts_with("written-in-guest 6.12."),
        "file written to $VM_WORK in the guest is not on the host: {written:?}"
    );
    let _ = r.remove_work_dir();
}

/// No VM needed: the harness refuses bad usage with status 125 before booting.
#[test]
fn bad_usage_is_a_harness_failure() {
    let out = std::process::Command::new("bash")
        .arg(vm_tests::run_script())
        .arg("--no-such-option")
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => panic!("cannot run vm-run.sh: {e}"),
    };
    assert_eq!(out.status.code(), Some(EXIT_HARNESS));
    let out = std::process::Command::new("bash")
        .arg(vm_tests::run_script())
        .arg("--help")
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => panic!("cannot run vm-run.sh: {e}"),
    };
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("VM_WORK"));
}

/// The kernel image the VM boots (set up if missing), or `None` when
/// `REP_VM_TESTS=0` skips the VM tests (said loudly).
// A failed setup fails the test that asked.
#[allow(clippy::panic)]
fn kernel_or_skip() -> Option<std::path::PathBuf> {
    if std::env::var("REP_VM_TESTS").is_ok_and(|v| v == "0") {
        eprintln!("\n!!! vm-tests SKIPPED: REP_VM_TESTS=0 (nothing was checked in a VM) !!!\n");
        return None;
    }
    match vm_tests::setup() {
        Ok(p) => Some(p),
        Err(e) => panic!("VM setup failed: {e}"),
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines
        .get(lines.len().saturating_sub(n)..)
        .unwrap_or_default()
        .join("\n")
}

/// No VM needed: when the guest kernel oopses while it boots (an int3 from
/// live code patching under TCG, seen in CI), nothing of CMD ran, so the
/// harness boots again, up to three times, and says so. A stand-in for vng
/// plays the kernel: it oopses `oopses` times, then "runs" CMD.
#[test]
fn a_kernel_that_oopses_while_booting_is_booted_again() {
    let Some(vmlinuz) = kernel_or_skip() else {
        return;
    };
    // std only, like the harness: a fresh folder of our own.
    let dir = std::env::temp_dir().join(format!("vm-oops-test.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("cannot create {}: {e}", dir.display());
    }
    let exe = dir.join("vng");
    let count = dir.join("boots");
    let script = format!(
        r#"#!/bin/bash
n=$(cat '{count}' 2>/dev/null || echo 0); n=$((n + 1)); echo $n >'{count}'
for a in "$@"; do case "$a" in --rwdir=*) work=${{a#--rwdir=}} ;; esac; done
if [ "$n" -le "$OOPSES" ]; then
  echo "[    2.254990] Oops: int3: 0000 [#2] PREEMPT SMP NOPTI" >&2
  echo "[    2.255448] Kernel panic - not syncing: Fatal exception in interrupt" >&2
  exit 255
fi
echo "=== vm-run: CMD starts" >&2
echo 0 >"$work/.vm/status"
"#,
        count = count.display()
    );
    if let Err(e) = std::fs::write(&exe, script) {
        panic!("cannot write {}: {e}", exe.display());
    }
    // vm-run runs REP_VM_VNG with vng's arguments: the stand-in, executable.
    {
        use std::os::unix::fs::PermissionsExt;
        if let Err(e) = std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)) {
            panic!("chmod: {e}");
        }
    }
    let run = |oopses: u32| {
        let _ = std::fs::remove_file(&count);
        let out = std::process::Command::new("bash")
            .arg(vm_tests::run_script())
            .args(["--timeout", "60", "--work"])
            .arg(dir.join("work"))
            .args(["--", "true"])
            .env("REP_VM_VNG", &exe)
            .env("REP_VM_VMLINUZ", &vmlinuz)
            .env("OOPSES", oopses.to_string())
            .output();
        let out = match out {
            Ok(o) => o,
            Err(e) => panic!("cannot run vm-run.sh: {e}"),
        };
        let boots = std::fs::read_to_string(&count).unwrap_or_default();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            boots.trim().to_owned(),
        )
    };
    let (code, err, boots) = run(1);
    assert_eq!(code, Some(0), "one oops, then CMD ran:\n{err}");
    assert_eq!(boots, "2", "{err}");
    assert!(err.contains("booting again (2 of 3)"), "{err}");
    assert!(err.contains("Oops: int3"), "the reason is shown:\n{err}");

    let (code, err, boots) = run(9);
    assert_eq!(
        code,
        Some(EXIT_HARNESS),
        "three oopses are a harness failure:\n{err}"
    );
    assert_eq!(boots, "3", "{err}");
    assert!(err.contains("the kernel panicked"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
