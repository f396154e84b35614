//! Maintenance results a user acts on, with two real `repd` processes and
//! `repctl` as a user runs it: the ranges `repctl verify` finds out of sync
//! (blocks of the Secondary's file changed behind its back) in the event
//! stream and in `repctl status --json`, its exit status, and a clean
//! verify after the resync; the `call resize` event on both nodes; a disk
//! grown while repd was stopped.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{cluster, Cluster, Mode, Opts};
use serde_json::{json, Value};

/// A `repctl events --now --json` process and the events it printed so
/// far.
struct Watcher {
    child: Child,
    events: Arc<Mutex<Vec<Value>>>,
}

impl Watcher {
    /// Returns once the stream is subscribed (its state printed up to
    /// `exists -`): a change the test makes next is in it.
    fn start(c: &Cluster, i: usize) -> Self {
        let mut child = c
            .node(i)
            .command()
            .args(["events", "--now", "--json"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let v: Value =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
                sink.lock().unwrap().push(v);
            }
        });
        let w = Watcher { child, events };
        let t0 = Instant::now();
        while !w
            .events
            .lock()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "exists" && e["object"] == "-")
        {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "repctl events --now printed no `exists -`"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        w
    }

    /// The `call OBJECT` events, once one satisfies `done`.
    fn calls_until(&self, object: &str, done: impl Fn(&Value) -> bool) -> Vec<Value> {
        let t0 = Instant::now();
        loop {
            let calls: Vec<Value> = self
                .events
                .lock()
                .unwrap()
                .iter()
                .filter(|e| e["kind"] == "call")
                .cloned()
                .collect();
            if calls.iter().any(|e| e["object"] == object && done(e)) {
                return calls;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "no `call {object}` event; got {calls:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn connected_pair() -> (Cluster, Option<common::Netns>) {
    let (c, ns) = cluster(Mode::Loopback, Opts::default());
    start_pair(&c);
    (c, ns)
}

fn start_pair(c: &Cluster) {
    c.up(0);
    c.up(1);
    c.wait(1, "connected", 20, |s| s["connection"] == "Connected");
    c.ok(0, &["primary", "--force"]);
    c.wait_synced(60);
}

/// alpha serves Prometheus metrics: its port.
fn alpha_metrics(c: &Cluster) -> u16 {
    let [port] = common::free_ports::<1>();
    let text = std::fs::read_to_string(&c.config[0]).unwrap();
    let (head, tail) = text.split_once("\n[[node]]\n").unwrap();
    let (alpha, beta) = tail.split_once("[[node]]").unwrap();
    let out = format!("{head}\n[[node]]\n{alpha}metrics = \"127.0.0.1:{port}\"\n[[node]]{beta}");
    std::fs::write(&c.config[0], out).unwrap();
    port
}

/// The value of the one sample of `family` in a scrape of `port`.
fn metric(port: u16, family: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{family}{{")))
        .unwrap_or_else(|| panic!("no {family} in\n{text}"));
    line.rsplit(' ').next().unwrap().to_owned()
}

/// Changes `len` bytes at `at` of node i's backing file behind repd's back.
fn corrupt(c: &Cluster, i: usize, at: u64, len: usize) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(c.img(i))
        .unwrap();
    f.write_all_at(&vec![0xee; len], at).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn verify_reports_the_ranges_it_found_in_events_and_status() {
    let (c, _ns) = cluster(Mode::Loopback, Opts::default());
    let port = alpha_metrics(&c);
    start_pair(&c);
    assert_eq!(
        metric(port, "rep_peerdevice_last_verify_timestamp_seconds"),
        "0"
    );
    let watchers = [Watcher::start(&c, 0), Watcher::start(&c, 1)];
    // Three ranges: two blocks across a 128 KiB chunk boundary (one
    // range), one block, three blocks.
    corrupt(&c, 1, (128 << 10) - 4096, 8192);
    corrupt(&c, 1, 1 << 20, 4096);
    corrupt(&c, 1, 8 << 20, 3 * 4096);
    let expected = json!([
        {"start": 126_976, "len_bytes": 8192},
        {"start": 1_048_576, "len_bytes": 4096},
        {"start": 8_388_608, "len_bytes": 12_288},
    ]);
    let out = c.repctl(0, &["verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text.contains("24K out of sync in 3 ranges")
            && text.contains("out of sync: start=126976 len_bytes=8192, start=1048576"),
        "{text}"
    );
    for (i, w) in watchers.iter().enumerate() {
        let v = c.wait(i, "the verify's result", 20, |s| {
            s["last_verify"]["range_count"] == 3
        })["last_verify"]
            .clone();
        assert_eq!(v["ranges"], expected, "node {i}: {v:#}");
        assert_eq!(v["out_of_sync_bytes"], 3 * 8192, "node {i}: {v:#}");
        assert_eq!(v["verified_bytes"], c.data_bytes(i), "node {i}: {v:#}");
        assert!(v["at"].as_u64().unwrap() > 1_700_000_000, "{v:#}");
        let calls = w.calls_until("verify", |e| e["ranges"] == 3);
        let ranges: Vec<Value> = calls
            .iter()
            .filter(|e| e["object"] == "out-of-sync")
            .map(|e| json!({"start": e["start-bytes"], "len_bytes": e["len-bytes"]}))
            .collect();
        assert_eq!(Value::from(ranges), expected, "node {i}: {calls:#?}");
        let done = calls.iter().find(|e| e["object"] == "verify").unwrap();
        assert_eq!(done["out-of-sync"], 3 * 8192, "{done}");
    }
    assert_eq!(
        metric(port, "rep_peerdevice_last_verify_outofsync_ranges"),
        "3"
    );
    assert_eq!(
        metric(port, "rep_peerdevice_last_verify_outofsync_bytes"),
        "24576"
    );

    // Fixed by a resync: the verify marked the blocks, a reconnect sends them.
    c.ok(0, &["disconnect"]);
    c.ok(0, &["connect"]);
    c.wait_synced(60);
    c.assert_identical();
    let out = c.repctl(0, &["verify"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    for (i, w) in watchers.iter().enumerate() {
        let v = c.wait(i, "the second verify's result", 20, |s| {
            s["last_verify"]["range_count"] == 0
        })["last_verify"]
            .clone();
        assert_eq!(v["out_of_sync_bytes"], 0, "{v:#}");
        assert_eq!(v["ranges"], json!([]), "{v:#}");
        w.calls_until("verify", |e| e["ranges"] == 0 && e["out-of-sync"] == 0);
        let text = c.ok(i, &["status"]);
        assert!(text.contains(", 0K out of sync\n"), "{text}");
    }
}

#[test]
fn resize_is_an_event_with_the_old_and_new_size_on_both_nodes() {
    common::require("nbdinfo", "libnbd-bin");
    let (c, _ns) = connected_pair();
    let watchers = [Watcher::start(&c, 0), Watcher::start(&c, 1)];
    let old = c.data_bytes(0);
    for i in 0..2 {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(c.img(i))
            .unwrap();
        f.set_len(96 << 20).unwrap();
    }
    c.ok(0, &["resize"]);
    let new = c.data_bytes(0);
    assert!(new > old, "{old} -> {new}");
    for (i, w) in watchers.iter().enumerate() {
        let calls = w.calls_until("resize", |e| e["new-size-bytes"] == new);
        let e = calls.iter().find(|e| e["object"] == "resize").unwrap();
        assert_eq!(e["old-size-bytes"], old, "node {i}: {e}");
        let text = c.ok(i, &["status"]);
        assert!(text.contains("  size: "), "{text}");
    }
}

/// DRBD's check-resize: both disks grown while repd was stopped; repd
/// starts on the metadata where it was (below the new end), serving the
/// old size with the data intact; `repctl resize` moves it to the new end.
#[test]
fn a_disk_grown_while_repd_was_stopped_starts_and_then_resizes() {
    common::require("nbdinfo", "libnbd-bin");
    common::require("qemu-io", "qemu-utils");
    let (c, _ns) = connected_pair();
    c.qemu_io(0, &["write -P 0x5a 1M 256k"]);
    c.wait_synced(30);
    let old = c.data_bytes(0);
    c.ok(0, &["secondary"]);
    for i in 0..2 {
        c.ok(i, &["down"]);
        c.grow_img(i, 96 << 20);
    }
    c.up(0);
    c.up(1);
    c.wait_synced(30);
    for i in 0..2 {
        assert_eq!(c.data_bytes(i), old, "node {i} serves the old size");
    }
    let log = std::fs::read_to_string(c.run_dir.join("r0.alpha.log")).unwrap();
    assert!(
        log.contains("internal metadata found below the end"),
        "{log}"
    );
    c.ok(0, &["primary"]);
    assert_eq!(c.nbdinfo_size(0), old);
    c.qemu_io(0, &["read -P 0x5a 1M 256k"]);

    c.ok(0, &["resize"]);
    let new = c.data_bytes(0);
    assert!(new > old + (16 << 20), "{old} -> {new}");
    assert_eq!(c.nbdinfo_size(0), new);
    c.qemu_io(0, &["read -P 0x5a 1M 256k"]);
    c.wait_synced(60);
    c.assert_identical();
    // The metadata is at the new end now: a restart finds it there.
    c.ok(0, &["secondary"]);
    for i in 0..2 {
        c.ok(i, &["down"]);
    }
    c.up(0);
    c.up(1);
    c.wait_synced(30);
    for i in 0..2 {
        assert_eq!(c.data_bytes(i), new, "node {i}");
    }
}

/// `on-io-error = "call-local-io-error"`: a metadata write that fails (the
/// test-only fault `REP_TEST_FAIL_META_WHILE_EXISTS`, a disk whose
/// metadata area went bad) runs the local-io-error handler too, once for
/// the episode, and status shows the metadata error.
#[test]
fn a_failed_metadata_write_runs_the_local_io_error_handler() {
    common::require("qemu-io", "qemu-utils");
    let (c, _ns) = cluster(Mode::Loopback, Opts::default());
    let calls = c.dir.path().join("calls");
    let script = c.dir.path().join("on-io-error");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho $DRBD_RESOURCE $REP_NODE >> {}\n",
            calls.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = std::fs::read_to_string(&c.config[0]).unwrap()
        + "[disk]\non-io-error = \"call-local-io-error\"\n"
        + &format!("[handlers]\nlocal-io-error = \"{}\"\n", script.display());
    std::fs::write(&c.config[0], text).unwrap();
    let fault = c.dir.path().join("fail-meta");
    let o = c
        .node(0)
        .command()
        .arg("up")
        .env("REP_TEST_FAIL_META_WHILE_EXISTS", &fault)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    c.up(1);
    c.wait(1, "connected", 20, |s| s["connection"] == "Connected");
    c.ok(0, &["primary", "--force"]);
    c.wait_synced(60);
    std::fs::write(&fault, b"").unwrap();
    // Extents not in the activity log yet: each write needs a transaction.
    for at in ["40M", "48M"] {
        let _ = c.client(
            0,
            "qemu-io",
            &[
                "-f",
                "raw",
                &c.nbd_uri(0),
                "-c",
                &format!("write -P 0x11 {at} 4k"),
            ],
        );
    }
    let st = c.wait(0, "the metadata error", 20, |s| {
        s["errors"].to_string().contains("etadata write failed")
    });
    let t0 = Instant::now();
    while std::fs::read_to_string(&calls)
        .unwrap_or_default()
        .is_empty()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no local-io-error call; status {st:#}\nlog {}",
            c.log_tail(0)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap(),
        "r0 alpha\n",
        "once for the episode"
    );
    std::fs::remove_file(&fault).unwrap();
}
