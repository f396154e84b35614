//! What `repctl status` tells a user, and whether it stays true: out-of-sync
//! bits that must clear, the reason of a split brain on both sides, errors
//! that clear when their condition is gone. Two real `repd` processes driven
//! with `repctl` and real NBD clients, as in `two_nodes.rs`.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

mod common;

use common::{random_file, require, Cluster, Opts};

fn tools() {
    require("nbdcopy", "libnbd-bin");
    require("qemu-io", "qemu-utils");
}

/// Up both with the resource file edited first, force node `p` Primary,
/// wait for the initial full sync.
fn synced_pair_with(p: usize, edit: impl Fn(&mut String)) -> Cluster {
    let c = Cluster::new(Opts::default());
    let mut text = std::fs::read_to_string(&c.config[0]).unwrap();
    edit(&mut text);
    std::fs::write(&c.config[0], text).unwrap();
    c.up(0);
    c.up(1);
    c.ok(p, &["primary", "--force"]);
    c.wait_synced(60);
    c
}

/// Issue 16 item 5: writes the peer confirmed but never flushed (the client
/// sent no flush) are marked out of sync when the connection goes; both
/// nodes keep the same generation, and the handshake used to say NoSync and
/// leave the bits set forever (`oos:20` on a Connected UpToDate pair).
#[test]
fn unflushed_writes_marked_at_down_are_resynced_not_left_out_of_sync() {
    tools();
    // The default ping interval (1 s): the Primary sends its own barrier
    // only after that long without data, so `down` right after the writes
    // finds them confirmed by the peer but not flushed there.
    let c = synced_pair_with(1, |t| {
        *t = t.replace("ping-int-ms = 300", "ping-int-ms = 1000");
    });
    // Five 4 KiB writes and no flush: nbdcopy flushes only when asked
    // (`--flush`); qemu-io always flushes when it closes the image.
    let src = random_file(c.dir.path(), "five.bin", 5 * 4096, 5);
    let o = c.client(
        1,
        "nbdcopy",
        &[
            "--request-size=4096",
            "--connections=1",
            "--synchronous",
            src.to_str().unwrap(),
            &c.nbd_uri(1),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // At once, as a user at a shell would: `secondary` is refused until
    // the server has seen the client go.
    let t0 = std::time::Instant::now();
    while !c.repctl(1, &["secondary"]).status.success() {
        assert!(t0.elapsed().as_secs() < 10, "secondary refused for 10 s");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    c.ok(1, &["down"]);
    println!(
        "secondary and down {} ms after the writes",
        t0.elapsed().as_millis()
    );
    c.ok(1, &["up"]);
    c.ok(1, &["wait-connect"]);

    c.wait_synced(30);
    for i in 0..2 {
        c.wait(i, "no out-of-sync bytes", 20, |s| {
            s["connection"] == "Connected"
                && s["out_of_sync_bytes"] == 0
                && s["counters"]["oos"] == 0
        });
    }
    c.assert_identical();
    let img = std::fs::read(c.img(0)).unwrap();
    let want = std::fs::read(&src).unwrap();
    assert!(
        img[..want.len()] == want[..],
        "the writes are missing on alpha"
    );
    // And it stays so across another disconnect/connect.
    c.ok(1, &["disconnect"]);
    c.ok(1, &["connect"]);
    c.wait_synced(30);
    for i in 0..2 {
        let st = c.status(i);
        assert_eq!(st["out_of_sync_bytes"], 0, "{st:#}");
    }
}
