//! `repctl adjust` on two real repd processes: the resync rate of a running
//! sync changes (measured before and after), a change a running node cannot
//! make is refused with the reason and nothing applied, and a new protocol
//! takes effect at the next connection.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss
)]

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Opts};

const MIB: f64 = 1_048_576.0;

/// The resync rate node 1 (the SyncTarget) sees, in bytes per second, as
/// the fall of its out-of-sync bytes over `secs` seconds.
fn measured_rate(c: &Cluster, secs: u64) -> f64 {
    let oos = |c: &Cluster| c.status(1)["out_of_sync_bytes"].as_u64().unwrap();
    let (t0, a) = (Instant::now(), oos(c));
    std::thread::sleep(Duration::from_secs(secs));
    let b = oos(c);
    let dt = t0.elapsed().as_secs_f64();
    assert!(
        b > 0,
        "the resync ended inside the window: make the disk larger"
    );
    (a - b) as f64 / dt
}

/// Rewrite the shared resource file: `from` becomes `to`.
fn edit(c: &Cluster, from: &str, to: &str) {
    let text = std::fs::read_to_string(&c.config[0]).unwrap();
    assert!(text.contains(from), "{from:?} not in the file:\n{text}");
    std::fs::write(&c.config[0], text.replacen(from, to, 1)).unwrap();
}

fn adjust_both(c: &Cluster) -> [String; 2] {
    [c.ok(0, &["adjust"]), c.ok(1, &["adjust"])]
}

fn assert_within(rate: f64, want_mib: f64) {
    let want = want_mib * MIB;
    assert!(
        (rate - want).abs() <= want * 0.10,
        "measured {:.2} MiB/s, want {want_mib} MiB/s +-10%",
        rate / MIB
    );
}

#[test]
fn adjust_changes_a_running_resync_rate_refuses_what_it_cannot_and_defers_the_protocol() {
    let c = Cluster::new(Opts {
        rate: "4M",
        disk_mib: 160,
        ..Opts::default()
    });
    c.up(0);
    c.up(1);
    c.ok(0, &["primary", "--force"]);
    c.wait(1, "the initial resync", 30, |s| {
        s["connection"] == "SyncTarget"
    });
    // Past the start, where the limiter may hold a second's worth.
    std::thread::sleep(Duration::from_secs(2));
    let before = measured_rate(&c, 6);

    edit(&c, "rate = \"4M\"", "rate = \"8M\"");
    let out = adjust_both(&c);
    for o in &out {
        assert!(o.contains("r0: sync.rate 4M -> 8M (now)"), "{o}");
    }
    std::thread::sleep(Duration::from_secs(1));
    let after = measured_rate(&c, 6);
    eprintln!(
        "resync rate: {:.2} MiB/s at 4M, {:.2} MiB/s at 8M",
        before / MIB,
        after / MIB
    );
    assert_within(before, 4.0);
    assert_within(after, 8.0);

    // Nothing changed: said so, exit 0.
    assert_eq!(c.ok(0, &["adjust"]).trim(), "r0: no changes");

    // A disk path cannot change under a running node: refused with the
    // reason, exit 1, and the rate in the same edit not applied either.
    let img = c.img(1).display().to_string();
    edit(&c, &img, &format!("{img}.new"));
    edit(&c, "rate = \"8M\"", "rate = \"0\"");
    let o = c.repctl(1, &["adjust"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    );
    assert_eq!(o.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("r0: node.beta.disk ") && stdout.contains("cannot change while running"),
        "{stdout}"
    );
    assert!(
        stderr.contains("nothing applied") && stderr.contains("repctl down r0"),
        "{stderr}"
    );
    let still = measured_rate(&c, 4);
    assert_within(still, 8.0);
    edit(&c, &format!("{img}.new"), &img);

    // Unlimited: the resync finishes.
    for o in adjust_both(&c) {
        assert!(o.contains("sync.rate 8M -> 0 (now)"), "{o}");
    }
    c.wait_synced(60);

    // The protocol and the secret wait for the next connection.
    edit(&c, "protocol = \"C\"", "protocol = \"B\"");
    edit(&c, "secret = \"test-secret\"", "secret = \"new-secret\"");
    for o in adjust_both(&c) {
        assert!(
            o.contains("resource.protocol C -> B (at the next connection)"),
            "{o}"
        );
        assert!(
            o.contains("net.secret (old) -> (new) (at the next connection)"),
            "{o}"
        );
    }
    assert_eq!(c.status(0)["protocol"], "C");
    let pings = [ping_ups(&c, 0), ping_ups(&c, 1)];
    c.ok(0, &["disconnect"]);
    c.ok(0, &["connect"]);
    c.wait_synced(30);
    for i in 0..2 {
        assert_eq!(c.status(i)["protocol"], "B");
    }
    // The ping connection comes back under the new settings too.
    let t0 = Instant::now();
    while (0..2).any(|i| ping_ups(&c, i) <= pings[i]) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no ping connection with the new secret:\n{}",
            c.log_tail(0)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How often node i's log says its ping connection came up.
fn ping_ups(c: &Cluster, i: usize) -> usize {
    let p = c.run_dir.join(format!("r0.{}.log", common::NODES[i]));
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .matches("ping connection up")
        .count()
}

/// `[net] fencing` changes on a running node: adjusted from dont-care to
/// resource-only (with a fence-peer handler), the Primary runs the handler
/// the next time it loses its peer, and status shows the new policy.
#[test]
fn adjust_changes_fencing_on_a_running_node() {
    let c = Cluster::new(Opts {
        disk_mib: 16,
        ..Opts::default()
    });
    c.up(0);
    c.up(1);
    c.ok(0, &["primary", "--force"]);
    c.wait_synced(60);
    let fenced = c.dir.path().join("fenced");
    edit(
        &c,
        "ko-count = 4\n",
        "ko-count = 4\nfencing = \"resource-only\"\n",
    );
    let text = std::fs::read_to_string(&c.config[0]).unwrap()
        + &format!(
            "[handlers]\nfence-peer = \"/bin/sh -c 'echo $REP_NODE >> {}; exit 4'\"\n",
            fenced.display()
        );
    std::fs::write(&c.config[0], text).unwrap();
    for o in adjust_both(&c) {
        assert!(
            o.contains("r0: net.fencing dont-care -> resource-only (now)"),
            "{o}"
        );
    }
    let text = c.ok(0, &["status"]);
    assert!(text.contains("fencing resource-only"), "{text}");
    c.kill9(1);
    let t0 = Instant::now();
    while std::fs::read_to_string(&fenced).unwrap_or_default() != "alpha\n" {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "alpha ran no fence-peer handler after losing beta:\n{}",
            c.log_tail(0)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c.wait(0, "the peer fenced", 20, |s| {
        s["fencing"]["peer_fenced"] == true
    });
}
