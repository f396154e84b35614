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

/// `repctl events` on node `i` until a change line contains `want` (10 s
/// at most). `during` runs once the stream is subscribed (`--now` prints
/// the state and `exists -` first): a change made before that would not
/// be in it, as CI saw when the `repctl events` process started slowly.
fn events_show(c: &Cluster, i: usize, want: &str, during: impl FnOnce()) {
    use std::io::{BufRead, BufReader};
    let mut cmd = c.node(i).command();
    cmd.args(["events", "--now"])
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut state = Vec::new();
    while !state.iter().any(|l: &String| l == "exists -") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => state.push(l),
            Err(_) => panic!(
                "no `exists -` from events --now; got:\n{}",
                state.join("\n")
            ),
        }
    }
    during();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains(want)) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(_) => panic!("no event line with {want}; got:\n{}", seen.join("\n")),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    drop(rx);
    let _ = reader.join();
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
        // The event stream shows the disk going.
        events_show(&c, 0, "disk:Diskless", || {
            c.ok(0, &["detach"]);
        });
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

/// alpha's disk as a loop device over a sparse copy of its image on a
/// small tmpfs: once the tmpfs is full, a write to a part of the image not
/// yet allocated (a blank activity-log slot) fails in the loop device with
/// EIO, as a dying disk fails it. Removing the filler repairs the disk.
struct LoopDisk {
    mount: std::path::PathBuf,
    dev: String,
}

impl LoopDisk {
    fn under(c: &Cluster) -> Self {
        use std::process::Command;
        let run = |cmd: &mut Command| {
            let o = cmd.output().unwrap();
            assert!(o.status.success(), "{cmd:?}: {o:?}");
            String::from_utf8_lossy(&o.stdout).trim().to_owned()
        };
        let mount = c.dir.path().join("small");
        std::fs::create_dir(&mount).unwrap();
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "rep-test-loop"])
            .arg(&mount));
        let moved = mount.join("alpha.img");
        run(Command::new("cp")
            .arg("--sparse=always")
            .arg(c.img(0))
            .arg(&moved));
        // Buffered (no --direct-io): the loop device writes into the tmpfs
        // file, which fails with ENOSPC once the tmpfs is full.
        let dev = run(Command::new("losetup").args(["-f", "--show"]).arg(&moved));
        let disk = LoopDisk { mount, dev };
        std::fs::remove_file(c.img(0)).unwrap();
        std::os::unix::fs::symlink(&disk.dev, c.img(0)).unwrap();
        disk
    }

    /// Fills the tmpfs: from now on a write that needs a new page fails.
    fn fill(&self) {
        let _ = std::process::Command::new("dd")
            .args(["if=/dev/zero", "bs=64k", "status=none"])
            .arg(format!("of={}", self.mount.join("filler").display()))
            .status();
    }

    fn repair(&self) {
        std::fs::remove_file(self.mount.join("filler")).unwrap();
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.dev])
            .status();
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mount)
            .status();
    }
}

/// A disk that really fails under `on-io-error = "detach"`: the Primary's
/// activity-log write fails in the kernel's write-back (EIO from the loop
/// device), the node goes Diskless and the application's write succeeds
/// through the peer. Once the disk is repaired, `attach` takes it back and
/// the resync completes: the kernel reports the old write-back error once
/// more, to the data descriptor repd kept open, and attach must clear it
/// (before, the first flush of the resync failed and detached the disk
/// again, as in the VM with device-mapper).
#[test]
fn a_disk_that_failed_in_write_back_attaches_again_once_repaired() {
    common::require("losetup", "mount");
    common::require("qemu-io", "qemu-utils");
    let c = Cluster::new(common::Opts::default());
    let text =
        std::fs::read_to_string(&c.config[0]).unwrap() + "[disk]\non-io-error = \"detach\"\n";
    std::fs::write(&c.config[0], text).unwrap();
    let disk = LoopDisk::under(&c);
    c.up(0);
    c.up(1);
    c.ok(0, &["primary", "--force"]);
    c.wait_synced(60);
    let first = common::random_file(c.dir.path(), "first.bin", 4 << 20, 5);
    c.nbd_write(0, &first);
    disk.fill();
    // A new activity-log extent: its slot is a hole of the sparse image.
    let o = c.client(
        0,
        "qemu-io",
        &["-f", "raw", &c.nbd_uri(0), "-c", "write -P 0x22 40M 1M"],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && !out.contains("failed"),
        "the write failed to the application: {o:?}"
    );
    c.wait(0, "Diskless", 20, |s| s["disk"] == "Diskless");
    // The write-back failure this test is about, not a failed O_DIRECT write.
    let log = std::fs::read_to_string(c.run_dir.join("r0.alpha.log")).unwrap();
    assert!(log.contains("metadata write failed"), "{log}");
    disk.repair();
    c.ok(0, &["secondary"]);
    c.ok(0, &["attach"]);
    c.wait_synced(60);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let st = c.status(0);
    assert_eq!(
        (&st["disk"], &st["peer_disk"]),
        (&"UpToDate".into(), &"UpToDate".into()),
        "{st:#}\n{}",
        c.log_tail(0)
    );
    c.assert_identical();
}
