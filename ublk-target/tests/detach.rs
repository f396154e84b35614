//! Diskless by hand, with two real `repd` processes, `repctl` and a real
//! NBD client (nbdcopy): `repctl detach` on the Primary under writes, the
//! I/O going on through the peer, `repctl attach` of the same disk (only
//! what changed is resynced), and of a fresh disk after `repctl create-md`
//! (resynced in full). Failing a disk for real (`on-io-error = "detach"`)
//! needs device-mapper, which the VM tests have.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{cluster, Cluster, Mode, Opts};

fn synced_pair() -> (Cluster, Option<common::Netns>) {
    common::require("nbdcopy", "libnbd-bin");
    let (c, ns) = cluster(Mode::Loopback, Opts::default());
    c.up(0);
    c.up(1);
    c.wait(1, "connected", 20, |s| s["connection"] == "Connected");
    c.ok(0, &["primary", "--force"]);
    c.wait_synced(60);
    (c, ns)
}

fn received(c: &Cluster, i: usize) -> u64 {
    c.status(i)["stats"]["resync_received_bytes"]
        .as_u64()
        .unwrap()
}

#[test]
fn detach_on_the_primary_under_writes_then_attach_of_the_same_disk() {
    let (c, _ns) = synced_pair();
    let first = common::random_file(c.dir.path(), "first.bin", 4 << 20, 1);
    c.nbd_write(0, &first);
    let second = common::random_file(c.dir.path(), "second.bin", 16 << 20, 2);
    std::thread::scope(|s| {
        let writer = s.spawn(|| c.nbd_write(0, &second));
        std::thread::sleep(std::time::Duration::from_millis(200));
        c.ok(0, &["detach"]);
        writer.join().unwrap();
    });
    let st = c.status(0);
    assert_eq!(
        (&st["disk"], &st["peer_disk"]),
        (&"Diskless".into(), &"UpToDate".into()),
        "{st:#}"
    );
    let text = c.ok(0, &["status"]);
    assert!(text.contains("Diskless"), "{text}");
    let again = c.repctl(0, &["detach"]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("Diskless already"),
        "{again:?}"
    );
    // Reads come from the peer: what the writer wrote, all of it.
    c.nbd_reads_back(0, &second);
    // The same disk back, on a Secondary: only what changed moves.
    let primary = c.repctl(0, &["attach"]);
    assert!(
        String::from_utf8_lossy(&primary.stderr).contains("secondary"),
        "{primary:?}"
    );
    c.ok(0, &["secondary"]);
    let before = received(&c, 0);
    c.ok(0, &["attach"]);
    c.wait_synced(60);
    assert_eq!(c.status(0)["disk"], "UpToDate");
    let moved = received(&c, 0) - before;
    assert!(
        moved > 0 && moved < c.data_bytes(0),
        "only what changed while detached is resynced: {moved}"
    );
    c.assert_identical();
    c.ok(0, &["primary"]);
    c.nbd_reads_back(0, &second);
}

#[test]
fn a_fresh_disk_needs_create_md_then_attach_resyncs_it_in_full() {
    let (c, _ns) = synced_pair();
    let data = common::random_file(c.dir.path(), "data.bin", 8 << 20, 3);
    c.nbd_write(0, &data);
    c.ok(1, &["detach"]);
    assert_eq!(c.status(0)["peer_disk"], "Diskless");
    // Writes on the Primary go on while the peer has no disk.
    let more = common::random_file(c.dir.path(), "more.bin", 2 << 20, 4);
    c.nbd_write(0, &more);
    // A new disk in place of the old one (same file, zeroed).
    let len = std::fs::metadata(c.img(1)).unwrap().len();
    let img = std::fs::OpenOptions::new()
        .write(true)
        .open(c.img(1))
        .unwrap();
    img.set_len(0).unwrap();
    img.set_len(len).unwrap();
    drop(img);
    let bare = c.repctl(1, &["attach"]);
    assert!(!bare.status.success(), "no metadata: refused");
    assert!(
        String::from_utf8_lossy(&bare.stderr).contains("create-md"),
        "{bare:?}"
    );
    // repd let go of the disk lock while Diskless: create-md may run.
    c.ok(1, &["create-md"]);
    let before = received(&c, 1);
    c.ok(1, &["attach"]);
    c.wait_synced(120);
    assert_eq!(received(&c, 1) - before, c.data_bytes(1), "a full resync");
    c.assert_identical();
}
