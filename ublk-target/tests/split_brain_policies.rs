//! after-sb-0pri `discard-younger-primary` / `discard-older-primary` with
//! real repd processes: a split brain made the way it happens (disconnect,
//! both Primary, both written), both restarted (the promotion times come
//! from the metadata), then connected: the policy picks the side whose data
//! survives, checked on both backing files.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::needless_range_loop
)]

mod common;

use std::io::{Read, Seek, SeekFrom};

use common::*;

fn qemu_write(c: &Cluster, i: usize, cmd: &str) {
    let o = c.client(i, "qemu-io", &["-f", "raw", &c.nbd_uri(i), "-c", cmd]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    c.wait(i, "the NBD client gone", 10, |s| s["nbd_clients"] == 0);
}

/// `len` bytes of node i's backing file at `offset`, all equal to `byte`?
fn all_bytes(c: &Cluster, i: usize, offset: u64, len: usize, byte: u8) -> bool {
    let mut f = std::fs::File::open(c.img(i)).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).unwrap();
    buf.iter().all(|&b| b == byte)
}

/// alpha promoted first (before the split), beta second (during it); both
/// write, both become Secondary and restart, then connect under `policy`.
/// Returns the cluster once the resync that resolved it is done.
fn split_brain_under(policy: &str) -> Cluster {
    require("qemu-io", "qemu-utils");
    let c = Cluster::new(Opts {
        disk_mib: 16,
        ..Opts::default()
    });
    let text = std::fs::read_to_string(&c.config[0]).unwrap()
        + &format!("[split-brain]\nafter-sb-0pri = \"{policy}\"\n");
    std::fs::write(&c.config[0], text).unwrap();
    c.up(0);
    c.up(1);
    c.ok(0, &["primary", "--force"]);
    c.wait_synced(60);
    c.ok(0, &["disconnect"]);
    c.ok(1, &["disconnect"]);
    // Promotion times are kept in milliseconds: make beta's later for sure.
    std::thread::sleep(std::time::Duration::from_millis(50));
    c.ok(1, &["primary"]);
    qemu_write(&c, 0, "write -P 0xa1 0 1M");
    qemu_write(&c, 1, "write -P 0xb2 4M 1M");
    for i in 0..2 {
        c.ok(i, &["secondary"]);
        c.ok(i, &["down"]);
    }
    c.up(0);
    c.up(1);
    c.wait_synced(60);
    for i in 0..2 {
        let st = c.status(i);
        assert_eq!(st["split_brain"], false, "{st:#}");
    }
    let log: String = NODES
        .iter()
        .map(|n| std::fs::read_to_string(c.run_dir.join(format!("r0.{n}.log"))).unwrap())
        .collect();
    assert!(
        log.contains(&format!("resolved automatically: {policy}")),
        "the resolution is not logged:\n{log}"
    );
    c
}

/// discard-younger-primary: beta became Primary last, its writes go; alpha's
/// stay, on both disks.
#[test]
fn discard_younger_primary_keeps_the_primary_from_before_the_split() {
    let c = split_brain_under("discard-younger-primary");
    for i in 0..2 {
        assert!(
            all_bytes(&c, i, 0, 1 << 20, 0xa1),
            "{}: alpha's write lost",
            NODES[i]
        );
        assert!(
            all_bytes(&c, i, 4 << 20, 1 << 20, 0),
            "{}: beta's write kept",
            NODES[i]
        );
    }
    c.assert_identical();
}

/// discard-older-primary: alpha became Primary first, its writes go.
#[test]
fn discard_older_primary_keeps_the_primary_promoted_during_the_split() {
    let c = split_brain_under("discard-older-primary");
    for i in 0..2 {
        assert!(
            all_bytes(&c, i, 0, 1 << 20, 0),
            "{}: alpha's write kept",
            NODES[i]
        );
        assert!(
            all_bytes(&c, i, 4 << 20, 1 << 20, 0xb2),
            "{}: beta's write lost",
            NODES[i]
        );
    }
    c.assert_identical();
}
