//! Online resize (`repctl resize`, DRBD's `drbdadm resize`) with two real
//! `repd` processes and real NBD clients (nbdinfo, qemu-io): both backing
//! files grown, the new size seen by a new client while an old one stays
//! connected and working, the new region replicated; a peer of a different
//! size connecting with the smaller size; repd killed (-9) at each step of
//! the metadata move, starting again with its data intact.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::io::Write as _;
use std::process::Stdio;

use common::{cluster, Cluster, Mode, Opts};

const GROWN: u64 = 96 << 20;

fn connected_pair(o: Opts) -> (Cluster, Option<common::Netns>) {
    let (c, ns) = cluster(Mode::Loopback, o);
    c.up(0);
    c.up(1);
    c.wait(1, "connected", 20, |s| s["connection"] == "Connected");
    c.ok(0, &["primary", "--force"]);
    c.wait_synced(60);
    (c, ns)
}

#[test]
fn resize_grows_both_nodes_online_and_replicates_the_new_region() {
    common::require("nbdinfo", "libnbd-bin");
    common::require("qemu-io", "qemu-utils");
    let (c, _ns) = connected_pair(Opts::default());
    let old = c.data_bytes(0);
    assert_eq!(c.nbdinfo_size(0), old);

    // Nothing grown yet: refused with what to do; shrinking is refused.
    let r = c.repctl(1, &["resize"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("grow both backing disks first"),
        "{err}"
    );
    let r = c.repctl(1, &["resize", "--size", "32M"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("cannot know how much"),
        "{err}"
    );

    // A client connected before the resize, kept open throughout.
    let mut held = c
        .cmd(0, "qemu-io")
        .args(["-f", "raw", &c.nbd_uri(0)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = held.stdin.take().unwrap();
    writeln!(stdin, "write -P 0x11 0 64k").unwrap();
    c.wait(0, "the held client's write", 20, |s| {
        s["stats"]["written_bytes"].as_u64().unwrap_or(0) >= 64 << 10
    });

    c.grow_img(0, GROWN);
    c.grow_img(1, GROWN);
    // On the Secondary: either node may run it.
    let out = c.ok(1, &["resize"]);
    assert!(out.contains("resized from"), "{out}");
    let new = c.data_bytes(1);
    assert!(new > old + (16 << 20), "{old} -> {new}");
    c.wait(0, "the Primary's new size", 20, |s| s["data_bytes"] == new);
    assert_eq!(c.nbdinfo_size(0), new, "a new client sees the new size");
    assert!(c.status(0)["size_note"]
        .as_str()
        .unwrap()
        .contains("resized to"));

    // The held client still works (within the size it negotiated).
    writeln!(stdin, "read -P 0x11 0 64k").unwrap();
    writeln!(stdin, "write -P 0x22 1M 64k").unwrap();
    writeln!(stdin, "quit").unwrap();
    drop(stdin);
    let out = held.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        !text.contains("fail") && text.contains("read 65536/65536"),
        "{text}"
    );

    // Data written in the new region replicates; the new region resyncs.
    let at = (old + (4 << 20)).to_string();
    c.qemu_io(0, &[&format!("write -P 0x33 {at} 64k")]);
    c.wait_synced(60);
    c.assert_identical();
    c.qemu_io(0, &[&format!("read -P 0x33 {at} 64k")]);

    // The new size is the metadata's: it survives a restart of both.
    c.ok(0, &["secondary"]);
    for i in 0..2 {
        c.ok(i, &["down"]);
    }
    c.up(0);
    c.up(1);
    c.wait(1, "connected again", 20, |s| s["connection"] == "Connected");
    assert_eq!(c.data_bytes(0), new);
    assert_eq!(c.data_bytes(1), new);
}

#[test]
fn a_peer_of_a_different_size_connects_with_the_smaller_size() {
    let (c, _ns) = cluster(Mode::Loopback, Opts::default());
    let small = {
        c.up(0);
        let n = c.data_bytes(0);
        c.ok(0, &["down"]);
        n
    };
    // beta's disk is larger: fresh metadata on the grown file.
    c.grow_img(1, GROWN);
    c.ok(1, &["create-md", "--force"]);
    c.up(0);
    c.up(1);
    c.wait(1, "connected", 20, |s| s["connection"] == "Connected");
    let st = c.status(1);
    assert_eq!(st["data_bytes"], small, "{st:#}");
    assert!(
        st["size_note"].as_str().unwrap().contains("smaller"),
        "{st:#}"
    );
    let text = c.ok(1, &["status"]);
    assert!(text.contains("smaller"), "{text}");
    c.ok(0, &["primary", "--force"]);
    c.wait_synced(60);
    c.assert_identical();
}

#[test]
fn repd_killed_at_each_step_of_the_metadata_move_starts_with_its_data() {
    common::require("qemu-io", "qemu-utils");
    let (c, _ns) = connected_pair(Opts::default());
    c.qemu_io(0, &["write -P 0x5a 1M 256k"]);
    c.wait_synced(30);
    c.ok(0, &["secondary"]);
    let old = c.data_bytes(1);
    for step in 1..=5u32 {
        // beta grows first (it answers alpha's Resize): stop it there.
        c.ok(1, &["down"]);
        let o = c
            .node(1)
            .command()
            .arg("up")
            .env("REP_TEST_RESIZE_STOP_AFTER_STEP", step.to_string())
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        c.wait(1, "connected", 20, |s| s["connection"] == "Connected");
        // Grown while running (a restart in between starts on the
        // metadata below the new end: see tests/maintenance.rs).
        c.grow_img(0, GROWN);
        c.grow_img(1, GROWN);
        let r = c.control(
            0,
            &rep_control::protocol::ControlCmd::Resize {
                size_bytes: None,
                assume_clean: false,
            },
        );
        if step < 5 {
            assert!(r.ok, "{r:?}");
            // The metadata thread parks after the step: let it get there.
            std::thread::sleep(std::time::Duration::from_millis(1500));
            c.kill9(1);
        } else {
            // The move ran to its end: a resize of the grown disk again.
            c.wait(0, "the resize", 30, |s| {
                s["data_bytes"].as_u64() != Some(old)
            });
            c.kill9(1);
        }
        c.up(1);
        c.wait(1, "beta back and connected", 30, |s| {
            s["connection"] != "StandAlone" && s["disk"] != "Diskless"
        });
        let size = c.data_bytes(1);
        println!("step {step}: beta starts with {size} bytes of data");
        assert!(size >= old, "step {step}");
        c.wait(1, "connected", 30, |s| s["connection"] == "Connected");
        c.wait_synced(60);
        if step < 4 {
            assert_eq!(c.status(1)["data_bytes"], old, "step {step}");
        }
    }
    c.ok(0, &["primary"]);
    c.qemu_io(0, &["read -P 0x5a 1M 256k"]);
    c.assert_identical();
}
