//! The operator's hold on a resync, with two real `repd` processes and
//! `repctl`, as a user runs it: `pause-sync` / `resume-sync` (DRBD's
//! `drbdadm pause-sync` / `resume-sync`), and the skip of the initial
//! sync (`new-current-uuid --clear-bitmap`).

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{cluster, Cluster, Mode, Opts};

fn oos(c: &Cluster, i: usize) -> u64 {
    c.status(i)["out_of_sync_bytes"].as_u64().unwrap()
}

/// Pause on node `who`: the target's out-of-sync bytes stop shrinking
/// (sampled twice, seconds apart); status says so; resume: they shrink.
fn hold_and_release(c: &Cluster, who: usize) {
    c.ok(who, &["pause-sync"]);
    let st = c.status(who);
    assert_eq!(st["sync_paused"], true, "{st:#}");
    let text = c.ok(who, &["status"]);
    assert!(text.contains("resync-suspended:user"), "{text}");
    let again = c.repctl(who, &["pause-sync"]);
    assert!(!again.status.success(), "a second pause-sync is refused");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already paused"),
        "{again:?}"
    );
    // What was in flight lands; then nothing moves.
    std::thread::sleep(Duration::from_millis(1000));
    let first = oos(c, 1);
    std::thread::sleep(Duration::from_millis(2500));
    let second = oos(c, 1);
    assert!(first > 0, "the resync ended before it was paused");
    assert_eq!(first, second, "paused on node {who}, the resync went on");
    assert_eq!(c.status(1)["connection"], "SyncTarget");
    c.ok(who, &["resume-sync"]);
    assert_eq!(c.status(who)["sync_paused"], false);
    c.wait(1, "the resync going on after resume-sync", 20, |s| {
        s["out_of_sync_bytes"].as_u64().unwrap() < second
    });
}

#[test]
fn pause_sync_and_resume_sync_hold_and_release_a_running_resync() {
    let (c, _ns) = cluster(
        Mode::Loopback,
        Opts {
            rate: "4M",
            ..Opts::default()
        },
    );
    c.up(0);
    c.up(1);
    c.wait(1, "connected", 20, |s| s["connection"] == "Connected");
    let not_paused = c.repctl(1, &["resume-sync"]);
    assert!(!not_paused.status.success());
    assert!(
        String::from_utf8_lossy(&not_paused.stderr).contains("not paused"),
        "{not_paused:?}"
    );
    // A full sync of 64 MiB at 4 MiB/s: about 16 s.
    c.ok(0, &["primary", "--force"]);
    c.wait(1, "resync under way", 20, |s| {
        s["connection"] == "SyncTarget"
    });
    hold_and_release(&c, 1);
    hold_and_release(&c, 0);
    c.wait_synced(60);
    assert_eq!(oos(&c, 1), 0);
    c.assert_identical();
    // A verify now finds nothing: exit 0, and both nodes keep its result.
    c.ok(1, &["verify"]);
    for i in 0..2 {
        let st = c.status(i);
        let v = &st["last_verify"];
        assert_eq!(
            v["verified_bytes"].as_u64(),
            Some(c.data_bytes(i)),
            "{st:#}"
        );
        assert_eq!(v["out_of_sync_bytes"], 0, "{st:#}");
        assert!(v["age_s"].as_u64().unwrap() < 60, "{st:#}");
        let text = c.ok(i, &["status"]);
        assert!(text.contains("last verify ("), "{text}");
    }
}

/// `new-current-uuid --clear-bitmap` on two fresh zeroed disks: both
/// UpToDate at once, no data moved; then the pair replicates, and a
/// switchover reads back what the first Primary wrote.
#[test]
fn new_current_uuid_clear_bitmap_skips_the_initial_sync_of_zeroed_disks() {
    common::require("nbdcopy", "libnbd-bin");
    let (c, _ns) = cluster(Mode::Loopback, Opts::default());
    let alone = c.repctl(0, &["new-current-uuid", "--clear-bitmap"]);
    assert!(!alone.status.success(), "refused without repd: {alone:?}");
    c.up(0);
    let not_connected = c.repctl(0, &["new-current-uuid", "--clear-bitmap"]);
    assert!(
        String::from_utf8_lossy(&not_connected.stderr).contains("connected"),
        "{not_connected:?}"
    );
    c.up(1);
    for i in 0..2 {
        c.wait(i, "connected", 20, |s| s["connection"] == "Connected");
        assert_eq!(c.status(i)["disk"], "Inconsistent");
    }
    c.ok(0, &["new-current-uuid", "--clear-bitmap"]);
    c.wait_synced(10);
    for i in 0..2 {
        let st = c.status(i);
        assert_eq!(st["out_of_sync_bytes"], 0, "{st:#}");
        assert_eq!(
            st["stats"]["resync_sent_bytes"], 0,
            "no data may move: {st:#}"
        );
        assert_eq!(st["stats"]["resync_received_bytes"], 0, "{st:#}");
        assert_eq!(st["generations"], c.status(1 - i)["generations"]);
    }
    c.assert_identical();
    // Not fresh any more: refused, saying what to use instead.
    let again = c.repctl(1, &["new-current-uuid", "--clear-bitmap"]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("invalidate-remote"),
        "{again:?}"
    );
    // A plain promotion (the data is UpToDate), writes, a switchover.
    c.ok(0, &["primary"]);
    let src = common::random_file(c.dir.path(), "rand.bin", 4 << 20, 11);
    c.nbd_write(0, &src);
    c.wait(0, "nothing pending", 10, |s| {
        s["counters"]["pe"] == 0 && s["out_of_sync_bytes"] == 0
    });
    let primary = c.repctl(1, &["new-current-uuid", "--clear-bitmap"]);
    assert!(
        String::from_utf8_lossy(&primary.stderr).contains("Secondary"),
        "{primary:?}"
    );
    c.ok(0, &["secondary"]);
    c.ok(1, &["primary"]);
    c.nbd_reads_back(1, &src);
    assert_eq!(c.status(1)["stats"]["resync_received_bytes"], 0);
}
