//! The two checks the link-TLS suites (`tls.rs` with certificates,
//! `tls_psk.rs` with a pre-shared key) share, once their resource files
//! are written: the pattern replicated while the link is captured, and a
//! refused peer that gets no data.

use std::time::Duration;

use rep_testkit::link::{contains, pattern_file, wait_event, Capture, PATTERN};

use super::{Cluster, Netns, NODES};

/// Both nodes up, alpha Primary and in sync; the pattern written through
/// alpha's export while tcpdump captures the link. The data reached beta's
/// file and the disks are identical; with `tls_log` each node's log says
/// it (the link's kind of TLS) and that the ping connection, over its own
/// session, is up. Returns the capture.
pub fn replicate_captured(c: &Cluster, ns: &Netns, tls_log: Option<&str>) -> Vec<u8> {
    c.up(0);
    c.up(1);
    c.ok(0, &["primary", "--force"]);
    c.wait_synced(60);
    let cap = Capture::start(ns, c.dir.path().join("link.pcap"));
    let src = pattern_file(c.dir.path());
    c.nbd_write(0, &src);
    c.wait(0, "nothing pending", 20, |s| s["counters"]["pe"] == 0);
    let captured = cap.stop();
    let beta = std::fs::read(c.img(1)).unwrap();
    assert_eq!(&beta[..1 << 20], &std::fs::read(&src).unwrap()[..]);
    c.assert_identical();
    if let Some(tls_log) = tls_log {
        for (i, node) in NODES.iter().enumerate() {
            let log = std::fs::read_to_string(c.run_dir.join(format!("r0.{node}.log")))
                .unwrap_or_default();
            assert!(log.contains(tls_log), "{}", c.log_tail(i));
            assert!(log.contains("ping connection up"), "{}", c.log_tail(i));
        }
    }
    assert!(
        captured.len() > 1 << 19,
        "tcpdump captured the replication ({} bytes)",
        captured.len()
    );
    captured
}

/// Alpha and beta, started with the resource files already written, are
/// refused with the reasons `why[0]`, `why[1]` in their status and (with
/// `events`) in their event streams; alpha, Primary alone, writes, and
/// beta's data region does not change.
pub fn assert_refused(c: &Cluster, why: [&str; 2], events: bool) {
    let before = std::fs::read(c.img(1)).unwrap();
    c.up(0);
    c.up(1);
    for (i, why) in why.iter().enumerate() {
        c.wait(i, "the refusal's reason", 30, |s| {
            s["last_error"].as_str().is_some_and(|e| e.contains(why))
        });
        if events {
            wait_event(&c.node(i), why);
        }
    }
    c.ok(0, &["primary", "--force"]);
    let src = pattern_file(c.dir.path());
    c.nbd_write(0, &src);
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..2 {
        let st = c.status(i);
        assert_ne!(st["connection"], "Connected", "{st:#}");
    }
    // The data region (the metadata behind it records beta's own runs).
    let data = usize::try_from(c.data_bytes(1)).unwrap();
    let after = std::fs::read(c.img(1)).unwrap();
    assert!(
        before[..data] == after[..data],
        "no data reached the refused peer"
    );
    assert!(!contains(&after, PATTERN));
}
