//! Issue 20's disk-failure scenarios in the VM, on real /dev/ublkbN over
//! backing disks that really fail: device-mapper devices whose table the
//! scenario swaps at run time (`vm-tests/scenarios/lib.sh`'s `dm_disk`,
//! `dm_error`, `dm_bad_blocks`, `dm_linear`), one boot per scenario:
//! - `ublk-disk-io-error.sh`: `on-io-error = "call-local-io-error"` under
//!   fio on the Primary: the write fails to fio, the `local-io-error`
//!   handler runs once with DRBD's environment, status and `repctl events`
//!   report the error, a healed disk writes again; `pass-on`: the write to
//!   a bad block fails with EIO and the handler does not run; a verify
//!   afterwards finds both copies equal.
//! - `ublk-disk-detach.sh`: seed article 001's `on-io-error detach` setup
//!   (imported by `repctl import-drbd-conf`) starts; the Primary's whole
//!   disk dies under `fio --verify`, fio ends without an error, status shows
//!   `Diskless/UpToDate`, events and the `local-io-error` handler report
//!   it; `create-md` + `attach` of a fresh disk resyncs it fully and the
//!   disks are byte-identical; then, under `call-local-io-error` (detach
//!   drops the disk on a read error too), a block that fails reads
//!   (dm-flakey `error_reads`, its content lost) is served from the peer
//!   without an error and rewritten on the Primary's disk. Two bugs kept it
//!   ignored until session 14: fio got EIO when the whole disk died (the
//!   failed activity-log write failed the writes waiting on it before the
//!   node detached), and the attached fresh disk failed its first resync
//!   flush with the write-back error the kernel kept from the dead disk
//!   (`ublk-target/src/disk/writeback.rs`).
//!
//! The tests here run one after the other (one VM at a time: the guest is
//! slow under TCG and the machine is shared). They run the repd/repctl
//! built by this workspace ($REP_BIN, else the target directory's release
//! build if there is one, else the debug build).

use std::sync::Mutex;
use std::time::Duration;

use vm_tests::{run_scenario, Scenario, ScenarioBins};

/// One VM at a time.
static VM: Mutex<()> = Mutex::new(());

/// Runs `script`, then checks that each of `needles` is in a `PASS:` line.
fn scenario(what: &str, script: &str, needles: &[&str]) -> Result<(), String> {
    let _one = VM.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let r = run_scenario(&Scenario {
        what,
        script,
        env: &["DISK_FAIL_SIZE=64M"],
        bins: ScenarioBins::Prebuilt,
        required: &["repd", "repctl"],
        build_hint: "build ublk-target's binaries first",
        timeout: Duration::from_secs(1500),
        // The named checks below are what counts here.
        min_passes: 0,
    });
    let Some(r) = r.map_err(|e| e.to_string())? else {
        return Ok(());
    };
    for needle in needles {
        if !r
            .output
            .lines()
            .any(|l| l.starts_with("PASS: ") && l.contains(needle))
        {
            return Err(format!(
                "no PASS line for {needle:?}; the scenario ended early?"
            ));
        }
    }
    let _ = r.remove_work_dir();
    Ok(())
}

#[test]
fn a_failing_disk_runs_local_io_error_and_pass_on_fails_the_write() {
    let r = scenario(
        "the VM disk-failure scenario (call-local-io-error, pass-on)",
        "ublk-disk-io-error.sh",
        &[
            "call-local-io-error: fio's write fails with the disk's error",
            "the local-io-error handler ran on alpha",
            "the handler's environment names the resource",
            "status: a local-io error, not ended",
            "status: the local-io-error handler's run, exit 0",
            "events: create error name:r0 error:local-io",
            "events: call handler ... handler:local-io-error",
            "healed disk: a write on /dev/ublkb0 succeeds again",
            "status: the local-io error ended",
            "pass-on: the write to a bad block fails to the application",
            "pass-on: events: the local-io error",
            "pass-on: the local-io-error handler did not run",
            "repctl verify after the failures",
        ],
    );
    if let Err(e) = r {
        panic!("{e}");
    }
}

#[test]
fn a_dead_disk_detaches_under_fio_and_a_fresh_disk_attaches_and_a_bad_block_is_repaired() {
    let r = scenario(
        "the VM disk-failure scenario (detach, attach, read repair)",
        "ublk-disk-detach.sh",
        &[
            "seed 001 imported with on-io-error = \"detach\"",
            "seed 001's on-io-error detach setup starts",
            "fio --verify on /dev/ublkb0 ran through the disk failure without an error",
            "status: Diskless/UpToDate",
            "events: ",
            "the local-io-error handler ran",
            "events: call handler ... handler:local-io-error",
            "diskless Primary: fio --verify",
            "after attach of the fresh disk: UpToDate/UpToDate",
            "the fresh disk was resynced fully",
            "the data regions of both disks are byte-identical",
            "a read of the bad block on /dev/ublkb0 returns the right data",
            "stays attached (UpToDate) after the read error",
            "holds the right data again: repaired from the peer",
            "repctl verify: ",
        ],
    );
    if let Err(e) = r {
        panic!("{e}");
    }
}
