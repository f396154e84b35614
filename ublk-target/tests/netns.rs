//! The same two-node scenarios with each node in its own network namespace,
//! joined by a veth pair: replication over a real (virtual) link, not
//! loopback. Needs root and iproute2, as on the CI machines.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{ip, require, Cluster, Netns};

#[test]
fn replication_across_two_network_namespaces() {
    require("nbdcopy", "libnbd-bin");
    let ns = Netns::new("r");
    let c = Cluster::new(ns.opts());
    c.up(0);
    c.up(1);
    c.ok(0, &["primary", "--force"]);
    c.wait_synced(60);
    // The whole user path of the loopback test, over the veth link.
    let src = common::random_file(c.dir.path(), "rand.bin", 32 << 20, 11);
    c.nbd_write(0, &src);
    c.nbd_reads_back(0, &src);
    c.wait(0, "nothing pending", 10, |s| s["counters"]["pe"] == 0);
    c.assert_identical();
    // The link goes down: alpha goes on alone and marks what beta misses.
    ip(&["-n", &ns.names[0], "link", "set", &ns.veth[0], "down"]);
    let o = c.client(
        0,
        "qemu-io",
        &["-f", "raw", &c.nbd_uri(0), "-c", "write -P 0x77 0 2M"],
    );
    assert!(
        o.status.success(),
        "writes go on while the peer is unreachable: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    c.wait(0, "peer dropped", 30, |s| {
        s["connection"] != "Connected" && s["out_of_sync_bytes"].as_u64().unwrap() >= 2 << 20
    });
    ip(&["-n", &ns.names[0], "link", "set", &ns.veth[0], "up"]);
    c.wait_synced(60);
    c.assert_identical();
    // A Secondary in the other namespace refuses I/O.
    assert!(!c.client(1, "nbdinfo", &[&c.nbd_uri(1)]).status.success());
}
