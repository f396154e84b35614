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

/// Up both, force node `p` Primary, wait for the initial full sync.
fn synced_pair(p: usize) -> Cluster {
    synced_pair_with(p, |_| {})
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

fn qemu_io(c: &Cluster, i: usize, cmds: &[&str]) {
    c.qemu_io(i, cmds);
    c.wait(i, "the NBD client gone", 10, |s| s["nbd_clients"] == 0);
}

fn full_log(c: &Cluster, i: usize) -> String {
    let p = c
        .run_dir
        .join(format!("{}.{}.log", c.resource, common::NODES[i]));
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Both detected the split brain, say so with the one recipe, and neither
/// failed to send its reason to the other.
fn assert_split_brain_reported(c: &Cluster) {
    for i in 0..2 {
        let st = c.wait(i, "split brain", 20, |s| s["split_brain"] == true);
        assert_eq!(st["connection"], "StandAlone", "{st:#}");
        let err = st["last_error"].as_str().unwrap_or_default();
        assert!(
            err.contains("split brain")
                && err.contains("repctl secondary")
                && err.contains("connect --discard-my-data")
                && !err.contains("invalidate"),
            "{}: {err}",
            common::NODES[i]
        );
        let log = full_log(c, i);
        assert!(
            !log.contains("cannot encode"),
            "{} could not send its reason:\n{log}",
            common::NODES[i]
        );
    }
}

/// Issue 16 item 6: the split-brain Disconnect (342 bytes of reason) could
/// not be encoded; every split brain logged `cannot encode Disconnect`.
#[test]
fn a_split_brain_disconnect_is_sent_with_its_reason() {
    tools();
    let c = synced_pair(0);
    c.ok(0, &["disconnect"]);
    c.ok(1, &["disconnect"]);
    c.ok(1, &["primary"]);
    qemu_io(&c, 0, &["write -P 0xa1 0 64k"]);
    qemu_io(&c, 1, &["write -P 0xb2 1M 64k"]);
    c.ok(0, &["connect"]);
    c.ok(1, &["connect"]);
    assert_split_brain_reported(&c);
}

/// Issue 16 item 9: a forced promotion during a split brain starts another
/// generation on the forced node; its detail used to ask for `invalidate`
/// while the summary said `secondary` + `connect --discard-my-data`, and
/// following either one found the split brain again, forever. The message
/// gives one recipe, and following it recovers.
#[test]
fn the_split_brain_recipe_recovers_after_a_forced_promotion() {
    tools();
    let c = synced_pair(0);
    c.ok(0, &["disconnect"]);
    c.ok(1, &["disconnect"]);
    // beta, cut off and outdated (as fencing would), is forced up anyway.
    c.ok(1, &["outdate"]);
    c.ok(1, &["primary", "--force"]);
    c.ok(1, &["resume-io"]);
    qemu_io(&c, 0, &["write -P 0xa1 0 64k"]);
    qemu_io(&c, 1, &["write -P 0xb2 1M 64k"]);
    c.ok(0, &["connect"]);
    c.ok(1, &["connect"]);
    assert_split_brain_reported(&c);
    // The recipe, word for word: beta is the victim.
    c.ok(1, &["secondary"]);
    c.ok(1, &["connect", "--discard-my-data"]);
    c.ok(0, &["connect"]);
    c.wait_synced(60);
    c.assert_identical();
    let img = std::fs::read(c.img(1)).unwrap();
    assert!(
        img[..64 << 10].iter().all(|&b| b == 0xa1),
        "alpha's change kept"
    );
    assert!(
        img[1 << 20..(1 << 20) + (64 << 10)]
            .iter()
            .all(|&b| b != 0xb2),
        "beta's change rolled back"
    );
    for i in 0..2 {
        let st = c.status(i);
        assert_eq!(st["split_brain"], false, "{st:#}");
        assert_eq!(st["out_of_sync_bytes"], 0, "{st:#}");
    }
}

fn text(c: &Cluster, i: usize) -> String {
    c.ok(i, &["status"])
}

/// Signals a repd by pid (a stopped repd cannot tell its pid).
use rep_testkit::signal;

/// Issue 16 item 9: "out-of-sync:0.0M" next to `oos:20`, and "(1 clients)".
#[test]
fn status_shows_small_out_of_sync_in_kib_and_one_client() {
    tools();
    let c = synced_pair(0);
    c.ok(1, &["down"]);
    c.wait(0, "peer gone", 10, |s| s["connection"] == "Connecting");
    qemu_io(&c, 0, &["write -P 0x44 0 20k"]);
    let t = text(&c, 0);
    assert!(t.contains("oos:20"), "{t}");
    assert!(t.contains("out-of-sync:20K"), "{t}");
    // A client that stays a while.
    let uri = c.nbd_uri(0);
    let mut child = c
        .cmd(0, "qemu-io")
        .args(["-f", "raw", &uri, "-c", "sleep 3000"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    c.wait(0, "one client", 10, |s| s["nbd_clients"] == 1);
    let t = text(&c, 0);
    assert!(t.contains("(1 client)"), "{t}");
    child.wait().unwrap();
}

/// Issue 16 item 9: during WFBitMapS after `invalidate-remote` the peer was
/// shown UpToDate; and `last error` never cleared nor said when it happened.
#[test]
fn peer_disk_is_inconsistent_while_waiting_for_bitmaps_and_errors_clear_when_healed() {
    tools();
    let c = synced_pair(0);
    // beta stops answering: alpha waits for its bitmap after invalidate-remote.
    let beta = c.pid(1);
    signal(beta, "-STOP");
    let o = c.repctl(0, &["invalidate-remote"]);
    let st = c.status(0);
    let t = text(&c, 0);
    // Silent long enough, beta costs the connection; the error says so.
    let lost = c.wait(0, "the lost peer reported", 20, |s| {
        !s["last_error"].is_null()
    });
    signal(beta, "-CONT");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(st["connection"], "WFBitMapS", "{st:#}");
    assert_eq!(st["peer_disk"], "Inconsistent", "{st:#}");
    assert!(t.contains("peer-disk:Inconsistent"), "{t}");
    assert!(lost["last_error_at"].as_u64().is_some(), "{lost:#}");
    assert!(lost["last_error_age_s"].as_u64().is_some(), "{lost:#}");
    c.wait_synced(60);
    let st = c.status(0);
    if !st["last_error"].is_null() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let at = st["last_error_at"].as_u64().unwrap();
        assert!(at <= now && now - at < 120, "{st:#}");
        let t = text(&c, 0);
        assert!(t.contains("last error (") && t.contains(" ago): "), "{t}");
    }
    // Healthy for a while: the error is history.
    let lingers = replication_proto::machine::ERROR_LINGER_MS / 1000;
    c.wait(0, "the error cleared", lingers + 20, |s| {
        s["last_error"].is_null() && s["last_error_at"].is_null()
    });
    c.assert_identical();
}

/// Issue 16 item 9: a Primary promoted with freeze-on-disconnect armed and
/// no peer is frozen at once (the fencing rule), and used to say only
/// "I/O SUSPENDED"; it now says why and what lets writes in.
#[test]
fn a_primary_promoted_alone_with_freeze_armed_says_why_it_is_frozen() {
    tools();
    let c = Cluster::new(Opts::default());
    c.up(0);
    c.ok(0, &["freeze-on-disconnect", "on"]);
    let out = c.ok(0, &["primary", "--force"]);
    assert!(
        out.contains("I/O FROZEN")
            && out.contains("freeze-on-disconnect is armed")
            && out.contains("repctl resume-io"),
        "{out}"
    );
    c.ok(0, &["resume-io"]);
    qemu_io(&c, 0, &["write -P 0x55 0 4k", "read -P 0x55 0 4k"]);
    assert!(!text(&c, 0).contains("FROZEN"));
}
