//! Fencing the peer (`[net] fencing`, `[handlers] fence-peer` and
//! `unfence-peer`) with real repd processes in two network namespaces: the
//! replication link is cut (the veth goes down; the control sockets, the
//! "other path", still work) under a write through the NBD export.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A fence-peer handler for the test: records its environment, waits for
/// the test to write the exit code into `release`, and on 4 outdates the
/// peer over the control socket (the other path DRBD's outdate-peer takes).
fn fence_script(dir: &Path, c: &Cluster) -> String {
    let d = dir.display();
    format!(
        "#!/bin/sh\nd={d}\nenv | grep -E '^(DRBD|REP)_' | sort > \"$d/fence-peer.env\"\n\
         echo run >> \"$d/fence-peer.calls\"\ni=0\n\
         while [ ! -e \"$d/release\" ]; do sleep 0.1; i=$((i+1)); [ $i -gt 900 ] && exit 1; done\n\
         code=$(cat \"$d/release\"); rm -f \"$d/release\"\n\
         if [ \"$code\" = 4 ]; then {repctl} --config \"$DRBD_CONF\" --node \"$DRBD_PEER\" \
         --run-dir {run} outdate || exit 1; fi\nexit \"$code\"\n",
        repctl = env!("CARGO_BIN_EXE_repctl"),
        run = c.run_dir.display(),
    )
}

fn write_exec(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A netns pair with resource-and-stonith fencing and the test's handlers,
/// alpha Primary and in sync.
fn fenced_pair() -> (Cluster, Netns) {
    require("qemu-io", "qemu-utils");
    let ns = Netns::new("f");
    let c = Cluster::new(ns.opts());
    let dir = c.dir.path();
    write_exec(&dir.join("fence-peer"), &fence_script(dir, &c));
    write_exec(
        &dir.join("unfence-peer"),
        &format!(
            "#!/bin/sh\nenv | grep -E '^(DRBD|REP)_' | sort > {}/unfence-peer.env\n",
            dir.display()
        ),
    );
    let text = std::fs::read_to_string(&c.config[0]).unwrap();
    let text = text.replace("[net]\n", "[net]\nfencing = \"resource-and-stonith\"\n")
        + &format!(
            "[handlers]\nfence-peer = \"{0}/fence-peer\"\nunfence-peer = \"{0}/unfence-peer\"\n\
             timeout-ms = 120000\n",
            dir.display()
        );
    std::fs::write(&c.config[0], text).unwrap();
    c.up(0);
    c.up(1);
    // Connected first: promoted alone, alpha would fence beta right away.
    c.wait(0, "Connected", 30, |s| s["connection"] == "Connected");
    c.ok(0, &["primary", "--force"]);
    c.wait_synced(60);
    (c, ns)
}

fn link(ns: &Netns, up: bool) {
    let state = if up { "up" } else { "down" };
    ip(&["-n", &ns.names[0], "link", "set", &ns.veth[0], state]);
}

/// A 64 KiB write of `byte` at `offset` through alpha's export, in the
/// background.
fn background_write(c: &Cluster, byte: u8, offset: u64) -> Child {
    c.cmd(0, "qemu-io")
        .args([
            "-f",
            "raw",
            &c.nbd_uri(0),
            "-c",
            &format!("write -P {byte:#x} {offset} 64k"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The write still waits after a while (it is held, not slow).
fn still_held(child: &mut Child, secs: u64) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the write completed while the peer was not fenced"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn completes(child: Child) {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("wrote"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Cuts the link under a write and waits until alpha runs its handler
/// with the write held.
fn cut_under_a_write(c: &Cluster, ns: &Netns, byte: u8) -> Child {
    let _ = std::fs::remove_file(c.dir.path().join("fence-peer.env"));
    link(ns, false);
    let child = background_write(c, byte, 0);
    let st = c.wait(0, "the fence-peer handler running", 30, |s| {
        s["fencing"]["running"] == true && s["suspended"] == "hold"
    });
    assert_eq!(st["fencing"]["frozen"], true, "{st:#}");
    child
}

#[test]
fn the_primary_fences_the_peer_before_it_writes_alone() {
    let (c, ns) = fenced_pair();
    let dir = c.dir.path();

    // The handler fails (exit 1): the write stays held; resume-io lets it go.
    let mut child = cut_under_a_write(&c, &ns, 0x11);
    still_held(&mut child, 2);
    std::fs::write(dir.join("release"), "1").unwrap();
    let st = c.wait(0, "the handler's failure", 30, |s| {
        s["fencing"]["running"] == false
    });
    assert_eq!(st["fencing"]["last_exit"], 1, "{st:#}");
    assert_eq!(st["fencing"]["peer_fenced"], false, "{st:#}");
    assert!(
        st["last_error"].as_str().unwrap().contains("exit 1"),
        "{st:#}"
    );
    still_held(&mut child, 1);
    c.ok(0, &["resume-io"]);
    completes(child);
    let env = std::fs::read_to_string(dir.join("fence-peer.env"))
        .unwrap_or_else(|e| panic!("{e}; alpha's log:\n{}", c.log_tail(0)));
    for want in [
        "DRBD_RESOURCE=r0",
        "DRBD_PEER=beta",
        "DRBD_MINOR=0",
        "REP_HANDLER=fence-peer",
        "REP_NODE=alpha",
    ] {
        assert!(env.lines().any(|l| l == want), "{want} missing:\n{env}");
    }
    link(&ns, true);
    c.wait_synced(60);
    assert!(
        !dir.join("unfence-peer.env").exists(),
        "unfenced a peer never fenced"
    );

    // The handler outdates the peer and exits 4: the write completes.
    let mut child = cut_under_a_write(&c, &ns, 0x22);
    still_held(&mut child, 1);
    std::fs::write(dir.join("release"), "4").unwrap();
    completes(child);
    let st = c.status(0);
    assert_eq!(st["fencing"]["peer_fenced"], true, "{st:#}");
    assert_eq!(st["fencing"]["last_outcome"], "peer-outdated", "{st:#}");
    assert_eq!(st["peer_disk"], "Outdated", "{st:#}");
    assert_eq!(st["suspended"], serde_json::Value::Null, "{st:#}");
    let text = c.ok(0, &["status"]);
    assert!(
        text.contains("fencing resource-and-stonith: peer fenced"),
        "{text}"
    );

    // The fenced peer refuses a promotion until it has resynced.
    let st = c.status(1);
    assert_eq!(st["disk"], "Outdated", "{st:#}");
    let o = c.repctl(1, &["primary"]);
    assert!(!o.status.success(), "the fenced node was promoted");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("Outdated"), "{err}");
    link(&ns, true);
    c.wait_synced(60);
    c.assert_identical();
    let st = c.wait(0, "unfenced", 10, |s| s["fencing"]["peer_fenced"] == false);
    assert_eq!(st["fencing"]["policy"], "resource-and-stonith");
    let env = std::fs::read_to_string(dir.join("unfence-peer.env")).unwrap();
    assert!(
        env.lines().any(|l| l == "REP_HANDLER=unfence-peer"),
        "{env}"
    );
    c.ok(0, &["secondary"]);
    c.ok(1, &["primary"]);
    let calls = std::fs::read_to_string(dir.join("fence-peer.calls")).unwrap();
    assert_eq!(calls.lines().count(), 2, "one handler per cut");
}
