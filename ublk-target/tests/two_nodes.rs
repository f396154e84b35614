//! Two real `repd` processes driven with `repctl` and real NBD clients
//! (nbdcopy, qemu-io), the way a user would: every scenario runs once on
//! loopback and once with the nodes in two network namespaces joined by veth.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

mod common;

use std::time::Duration;

use common::{cluster, random_file, require, Cluster, Mode, Netns, Opts};
use rep_control::protocol::{ControlCmd, Refusal, Verb};
use replication_proto::machine::AdminError;

/// One test per mode for each scenario.
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        $(mod $name {
            #[test]
            fn loopback() {
                super::$name(super::Mode::Loopback);
            }
            #[test]
            fn netns() {
                super::$name(super::Mode::Netns);
            }
        })*
    };
}

both!(
    initial_sync_then_writes_reach_both_disks,
    resync_moves_only_what_changed,
    kill_9_of_the_primary_loses_no_acknowledged_write,
    split_brain_is_detected_and_recovered_with_discard_my_data,
    wrong_secret_is_refused_with_a_reason_on_both_sides,
    different_resource_is_refused_with_a_reason_on_both_sides,
    a_primary_refuses_a_smaller_peer_with_a_reason_on_both_sides,
    a_secondary_refuses_io,
);

fn tools() {
    require("nbdcopy", "libnbd-bin");
    require("nbdinfo", "libnbd-bin");
    require("qemu-io", "qemu-utils");
}

/// Up both, force alpha Primary, wait for the initial full sync.
fn synced_pair(mode: Mode, o: Opts) -> (Cluster, Option<Netns>) {
    let (c, ns) = cluster(mode, o);
    c.up(0);
    c.up(1);
    c.ok(0, &["primary", "--force"]);
    c.wait_synced(60);
    (c, ns)
}

fn qemu_io(c: &Cluster, i: usize, cmds: &[String]) -> std::process::Output {
    let uri = c.nbd_uri(i);
    let mut args: Vec<String> = vec!["-f".into(), "raw".into(), uri];
    for cmd in cmds {
        args.push("-c".into());
        args.push(cmd.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = c.client(i, "qemu-io", &args);
    // The server sees the client's socket close a moment after the client
    // exits; until then the export counts as in use, and `secondary`
    // refuses (as DRBD does while the device is open).
    c.wait(i, "the NBD client gone", 10, |s| s["nbd_clients"] == 0);
    out
}

pub fn initial_sync_and_replication(c: &Cluster) {
    // 32 MiB of random data through the export with a real client.
    let src = random_file(c.dir.path(), "rand.bin", 32 << 20, 7);
    c.nbd_write(0, &src);
    c.nbd_reads_back(0, &src);
    c.wait(0, "nothing pending", 10, |s| {
        s["counters"]["pe"] == 0 && s["out_of_sync_bytes"] == 0
    });
    c.assert_identical();
    // Write-zeroes with FUA and a discard replicate too, without payload.
    let o = qemu_io(
        c,
        0,
        &[
            "write -z -f 1M 1M".into(),
            "discard 4M 1M".into(),
            "read -P 0 1M 1M".into(),
            "read -P 0 4M 1M".into(),
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && !out.contains("Pattern verification failed"),
        "{out}"
    );
    c.wait(0, "nothing pending", 10, |s| s["counters"]["pe"] == 0);
    c.assert_identical();
    let st = c.status(1);
    assert_eq!(st["role"], "Secondary");
    assert_eq!(st["disk"], "UpToDate");
}

fn initial_sync_then_writes_reach_both_disks(mode: Mode) {
    tools();
    let (c, _ns) = synced_pair(mode, Opts::default());
    let st = c.status(0);
    assert_eq!(st["role"], "Primary");
    assert_eq!(st["peer_role"], "Secondary");
    initial_sync_and_replication(&c);
}

fn resync_moves_only_what_changed(mode: Mode) {
    tools();
    let (c, _ns) = synced_pair(mode, Opts::default());
    c.ok(1, &["down"]);
    c.wait(0, "peer gone", 10, |s| s["connection"] == "Connecting");
    let before = c.status(0)["stats"]["resync_sent_bytes"].as_u64().unwrap();
    let o = qemu_io(&c, 0, &["write -P 0x5a 8M 4M".into()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let st = c.status(0);
    assert_eq!(st["out_of_sync_bytes"], 4 << 20, "{st:#}");
    c.up(1);
    c.wait_synced(60);
    let sent = c.status(0)["stats"]["resync_sent_bytes"].as_u64().unwrap() - before;
    println!("resync after 4 MiB written while the peer was down: {sent} bytes");
    assert!(
        sent <= (4u64 << 20) * 105 / 100,
        "resync sent {sent} bytes for a 4 MiB change"
    );
    assert!(sent >= 4 << 20);
    c.assert_identical();
}

fn kill_9_of_the_primary_loses_no_acknowledged_write(mode: Mode) {
    tools();
    let (c, _ns) = synced_pair(mode, Opts::default());
    let chunk = 64 * 1024u64;
    // As many writes as the device holds, so that the kill lands mid-run
    // however fast this machine is.
    let n = c.data_bytes(0) / chunk;
    let cmds: Vec<String> = (0..n)
        .map(|k| format!("write -P {} {} {}", k % 250 + 1, k * chunk, chunk))
        .collect();
    let uri = c.nbd_uri(0);
    let mut args: Vec<String> = vec!["-f".into(), "raw".into(), uri];
    for cmd in &cmds {
        args.push("-c".into());
        args.push(cmd.clone());
    }
    let child = c
        .cmd(0, "qemu-io")
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kill once some writes are through, not after a fixed sleep: a fast
    // run could otherwise finish before the kill.
    c.wait(0, "the first writes", 20, |s| {
        s["stats"]["written_bytes"].as_u64().unwrap_or(0) >= 2 << 20
    });
    c.kill9(0);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let acked: Vec<u64> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("wrote 65536/65536 bytes at offset "))
        .map(|off| off.trim().parse::<u64>().unwrap() / chunk)
        .collect();
    println!("{} writes acknowledged before the kill", acked.len());
    assert!(
        !acked.is_empty(),
        "no write completed before the kill; stdout: {stdout}"
    );
    assert!(
        acked.len() < cmds.len(),
        "the kill came after the last write; make the run longer"
    );
    // Beta notices; alpha comes back and resyncs its activity log from beta.
    c.wait(1, "alpha gone", 20, |s| s["connection"] == "Connecting");
    c.up(0);
    let st = c.status(0);
    if st["connection"] != "Connected" {
        assert_ne!(
            st["disk"], "UpToDate",
            "a crashed Primary is not UpToDate before its resync: {st:#}"
        );
        let o = c.repctl(0, &["primary"]);
        if o.status.success() {
            // Only if the resync finished in between.
            let st = c.status(0);
            assert!(
                st["stats"]["resync_received_bytes"].as_u64().unwrap() > 0,
                "promoted before its resync: {st:#}"
            );
        }
    }
    c.wait_synced(60);
    let got = c.status(0)["stats"]["resync_received_bytes"]
        .as_u64()
        .unwrap();
    // The crashed Primary resynced its activity-log extents from the peer,
    // and only those: qemu-io writes one request at a time from offset 0,
    // so the extents touched are those of the acknowledged writes, plus at
    // most the one of the write in flight at the kill; the AL (al-extents =
    // 61 extents of 4 MiB in the test config) holds all of them (no
    // eviction on a 64 MiB disk). A full resync, or one that missed an
    // extent written, falls outside.
    const EXTENT: u64 = 4 << 20;
    const AL_EXTENTS: u64 = 61;
    let data = c.data_bytes(0);
    let end_acked = (acked.iter().max().unwrap() + 1) * chunk;
    let lo = ((end_acked - 1) / EXTENT + 1) * EXTENT;
    let hi = ((end_acked + chunk - 1) / EXTENT + 1).min(AL_EXTENTS) * EXTENT;
    let (lo, hi) = (lo.min(data), hi.min(data));
    println!("resynced {got} bytes after the crash; the activity log implies {lo}..={hi}");
    assert!(
        (lo..=hi).contains(&got),
        "the crashed Primary resynced {got} bytes; its activity log implies {lo}..={hi} \
         (acknowledged writes end at {end_acked}, extents of {EXTENT} bytes)"
    );
    c.assert_identical();
    let img = std::fs::read(c.img(1)).unwrap();
    for k in acked {
        let pat = (k % 250 + 1) as u8;
        let s = (k * chunk) as usize;
        assert!(
            img[s..s + chunk as usize].iter().all(|&b| b == pat),
            "acknowledged write #{k} is missing on beta"
        );
    }
    // The old Primary can take over again now that it is UpToDate.
    c.ok(0, &["primary"]);
}

fn split_brain_is_detected_and_recovered_with_discard_my_data(mode: Mode) {
    tools();
    let (c, _ns) = synced_pair(mode, Opts::default());
    c.ok(0, &["disconnect"]);
    c.ok(1, &["disconnect"]);
    c.ok(1, &["primary"]);
    assert!(qemu_io(&c, 0, &["write -P 0xa1 0 1M".into()])
        .status
        .success());
    assert!(qemu_io(&c, 1, &["write -P 0xb2 2M 1M".into()])
        .status
        .success());
    c.ok(0, &["connect"]);
    c.ok(1, &["connect"]);
    for i in 0..2 {
        let st = c.wait(i, "split brain", 20, |s| s["split_brain"] == true);
        assert_eq!(st["connection"], "StandAlone", "{st:#}");
        assert!(
            st["last_error"]
                .as_str()
                .unwrap()
                .contains("discard-my-data"),
            "{st:#}"
        );
    }
    // Recovery as DRBD users know it: beta is the victim.
    c.ok(1, &["secondary"]);
    c.ok(1, &["connect", "--discard-my-data"]);
    c.ok(0, &["connect"]);
    c.wait_synced(60);
    c.assert_identical();
    let img = std::fs::read(c.img(1)).unwrap();
    assert!(
        img[..1 << 20].iter().all(|&b| b == 0xa1),
        "alpha's change must survive"
    );
    assert!(
        img[2 << 20..3 << 20].iter().all(|&b| b != 0xb2),
        "beta's change must be rolled back"
    );
    assert_eq!(c.status(1)["split_brain"], false);
}

fn refused(mode: Mode, bad: impl Fn(&mut String), needle: &str, recreate_md: bool) {
    let (c, _ns) = cluster(mode, Opts::default());
    // beta gets its own, different config file.
    let mut text = std::fs::read_to_string(&c.config[0]).unwrap();
    bad(&mut text);
    let beta_cfg = c.dir.path().join("beta.toml");
    std::fs::write(&beta_cfg, text).unwrap();
    let mut c = c;
    c.config[1] = beta_cfg;
    if recreate_md {
        c.ok(1, &["create-md", "--force"]);
    }
    c.up(0);
    c.up(1);
    for i in 0..2 {
        let st = c.wait(i, "refusal", 20, |s| {
            s["connection"] == "StandAlone" && !s["last_error"].is_null()
        });
        let err = st["last_error"].as_str().unwrap();
        assert!(err.contains(needle), "{}: {err}", common::NODES[i]);
        assert_eq!(st["stats"]["sent_bytes"], 0, "no data may move");
        assert_eq!(st["stats"]["resync_sent_bytes"], 0, "no data may move");
    }
}

fn wrong_secret_is_refused_with_a_reason_on_both_sides(mode: Mode) {
    refused(
        mode,
        |t| *t = t.replace("secret = \"test-secret\"", "secret = \"other\""),
        "secret",
        false,
    );
}

fn different_resource_is_refused_with_a_reason_on_both_sides(mode: Mode) {
    refused(
        mode,
        |t| *t = t.replacen("name = \"r0\"", "name = \"r1\"", 1),
        "resource",
        true,
    );
}

/// Peers of different sizes connect with the smaller size
/// (`tests/resize.rs`), except that a Primary refuses a smaller peer: its
/// device would shrink under its users.
fn a_primary_refuses_a_smaller_peer_with_a_reason_on_both_sides(mode: Mode) {
    let (c, _ns) = cluster(mode, Opts::default());
    // Grow beta's disk and recreate its metadata: a larger data size.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(c.img(1))
        .unwrap();
    f.set_len(c.disk_bytes + (8 << 20)).unwrap();
    c.ok(1, &["create-md", "--force"]);
    c.up(1);
    c.ok(1, &["primary", "--force"]);
    c.up(0);
    for i in 0..2 {
        let st = c.wait(i, "refusal", 20, |s| {
            s["connection"] != "Connected" && !s["last_error"].is_null()
        });
        let err = st["last_error"].as_str().unwrap();
        assert!(err.contains("size") || err.contains("smaller"), "{err}");
        assert_eq!(st["stats"]["sent_bytes"], 0);
    }
}

fn a_secondary_refuses_io(mode: Mode) {
    tools();
    let (c, _ns) = synced_pair(mode, Opts::default());
    let mut nbdinfo = c.cmd(1, "nbdinfo");
    let o = nbdinfo
        .env("LIBNBD_DEBUG", "1")
        .arg(c.nbd_uri(1))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("Secondary"),
        "the server should say why: {err}"
    );
    // mkfs-like writes fail.
    let o = qemu_io(&c, 1, &["write -P 0x11 0 64k".into()]);
    assert!(
        !o.status.success() || String::from_utf8_lossy(&o.stdout).contains("error"),
        "a write to the Secondary must fail"
    );
    // And the Primary cannot be demoted while the device is in use... but can
    // when idle; then it refuses I/O too.
    c.ok(0, &["secondary"]);
    assert!(!c.client(0, "nbdinfo", &[&c.nbd_uri(0)]).status.success());
}

#[test]
fn verify_finds_and_repairs_a_corrupted_block() {
    tools();
    let (c, _ns) = synced_pair(Mode::Loopback, Opts::default());
    assert!(qemu_io(&c, 0, &["write -P 0x33 0 4M".into()])
        .status
        .success());
    c.wait(0, "nothing pending", 10, |s| s["counters"]["pe"] == 0);
    // Corrupt beta's copy behind replication's back.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(c.img(1))
            .unwrap();
        f.write_all_at(&[0xee; 4096], 1 << 20).unwrap();
        f.sync_all().unwrap();
    }
    // Differences found and not repaired: exit status 1, saying what to do.
    let o = c.repctl(0, &["verify"]);
    assert!(!o.status.success(), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("out of sync"), "{out}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("verify --repair"),
        "{o:?}"
    );
    // At 4 KiB resolution: just the damaged block, on both nodes, named
    // (start, length in bytes) in both logs.
    for i in 0..2 {
        let st = c.status(i);
        assert_eq!(
            st["stats"]["verify_out_of_sync_bytes"].as_u64(),
            Some(4096),
            "{st:#}"
        );
        let log = std::fs::read_to_string(c.run_dir.join(format!("r0.{}.log", common::NODES[i])))
            .unwrap();
        assert!(
            log.contains("verify: range out of sync start=1048576 len_bytes=4096"),
            "{log}"
        );
    }
    let out = c.ok(0, &["verify", "--repair"]);
    println!("{out}");
    c.wait_synced(30);
    c.assert_identical();
    let out = c.ok(1, &["verify"]);
    assert!(out.contains(" 0 bytes out of sync"), "{out}");
}

#[test]
fn invalidate_and_invalidate_remote_resync_everything() {
    tools();
    let (c, _ns) = synced_pair(Mode::Loopback, Opts::default());
    let before = c.status(0)["stats"]["resync_sent_bytes"].as_u64().unwrap();
    c.ok(1, &["invalidate"]);
    c.wait_synced(60);
    let data = c.data_bytes(0);
    let sent = c.status(0)["stats"]["resync_sent_bytes"].as_u64().unwrap() - before;
    assert_eq!(sent, data, "invalidate resyncs the whole device");
    c.ok(0, &["invalidate-remote"]);
    c.wait_synced(60);
    let sent = c.status(0)["stats"]["resync_sent_bytes"].as_u64().unwrap() - before;
    assert_eq!(sent, 2 * data);
    c.assert_identical();
}

#[test]
fn status_json_has_the_documented_fields() {
    let c = Cluster::new(Opts::default());
    c.up(0);
    let st = c.status(0);
    for k in [
        "resource",
        "node",
        "role",
        "peer_role",
        "connection",
        "disk",
        "peer_disk",
        "out_of_sync_bytes",
        "split_brain",
        "last_error",
        "sync",
        "stats",
    ] {
        assert!(st.get(k).is_some(), "status --json lacks {k}: {st:#}");
    }
    for k in [
        "sent_bytes",
        "received_bytes",
        "resync_sent_bytes",
        "resync_received_bytes",
        "written_bytes",
        "read_bytes",
    ] {
        assert!(st["stats"].get(k).is_some(), "stats lacks {k}");
    }
    let text = c.ok(0, &["status"]);
    assert!(text.contains("ns:") && text.contains("oos:"), "{text}");
    // Commands that need the peer say what is wrong and fail.
    let o = c.repctl(0, &["verify"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("repctl: error:"));
    let r = c.control(0, &ControlCmd::Verb(Verb::Verify { repair: false }));
    assert_eq!(
        r.refusal,
        Some(Refusal::Machine(AdminError::VerifyNeedsIdle))
    );
    // The daemon of a node that is not running: a clear error.
    let o = c.repctl(1, &["status"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("repctl up"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn checksum_resync_sends_only_blocks_that_differ() {
    tools();
    let (c, _ns) = synced_pair(
        Mode::Loopback,
        Opts {
            csums: true,
            ..Opts::default()
        },
    );
    assert!(qemu_io(&c, 0, &["write -P 0x44 0 4M".into()])
        .status
        .success());
    c.wait(0, "nothing pending", 10, |s| s["counters"]["pe"] == 0);
    c.ok(1, &["down"]);
    c.wait(0, "peer gone", 10, |s| s["connection"] == "Connecting");
    // Rewrite the same bytes (marked, but equal) and change 1 MiB for real.
    assert!(qemu_io(
        &c,
        0,
        &["write -P 0x44 0 4M".into(), "write -P 0x55 8M 1M".into()]
    )
    .status
    .success());
    assert_eq!(c.status(0)["out_of_sync_bytes"], 5 << 20);
    let before = c.status(0)["stats"]["resync_sent_bytes"].as_u64().unwrap();
    c.up(1);
    c.wait_synced(60);
    let sent = c.status(0)["stats"]["resync_sent_bytes"].as_u64().unwrap() - before;
    println!("checksum resync: {sent} bytes sent for 5 MiB marked, 1 MiB changed");
    assert!(sent <= (1 << 20) + (128 << 10), "sent {sent}");
    c.assert_identical();
}

#[test]
fn several_resources_on_one_host() {
    tools();
    let shared = common::target_tmp().join(format!("shared-run-{}", std::process::id()));
    let mk = |r| Opts {
        resource: r,
        run_dir: Some(shared.clone()),
        ..Opts::default()
    };
    let (a, _n1) = synced_pair(Mode::Loopback, mk("r0"));
    let (b, _n2) = synced_pair(Mode::Loopback, mk("r1"));
    assert!(qemu_io(&a, 0, &["write -P 0x01 0 1M".into()])
        .status
        .success());
    assert!(qemu_io(&b, 0, &["write -P 0x02 0 1M".into()])
        .status
        .success());
    for c in [&a, &b] {
        c.wait(0, "nothing pending", 10, |s| s["counters"]["pe"] == 0);
        c.assert_identical();
    }
    assert_eq!(a.status(0)["resource"], "r0");
    assert_eq!(b.status(0)["resource"], "r1");
    let socks: Vec<_> = std::fs::read_dir(&shared)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "sock"))
        .collect();
    assert_eq!(socks.len(), 4, "one control socket per resource and node");
}

#[test]
fn resync_progress_shows_percent_speed_and_eta() {
    tools();
    let (c, _ns) = cluster(
        Mode::Loopback,
        Opts {
            rate: "8M",
            ..Opts::default()
        },
    );
    c.up(0);
    c.up(1);
    // Both up and connected first, so that the clock below starts when the
    // resync does.
    c.wait(1, "connected", 20, |s| s["connection"] == "Connected");
    let t0 = std::time::Instant::now();
    c.ok(0, &["primary", "--force"]);
    let st = c.wait(1, "resync under way", 20, |s| {
        s["sync"].is_object() && s["sync"]["bytes_per_s"].as_u64().unwrap_or(0) > 0
    });
    let p = st["sync"]["percent"].as_f64().unwrap();
    assert!((0.0..100.0).contains(&p), "{st:#}");
    assert!(st["sync"]["eta_s"].as_u64().is_some(), "{st:#}");
    let speed = st["sync"]["bytes_per_s"].as_u64().unwrap();
    assert!(speed < 16 << 20, "rate 8M but {speed} B/s");
    let text = c.ok(1, &["status"]);
    // The bar: "[>...." below 5 %, "[==>..." on; full only when done.
    assert!(
        text.contains("finish:")
            && text.contains("speed:")
            && (text.contains("[=") || text.contains("[>"))
            && !text.contains("[====================]"),
        "{text}"
    );
    c.wait_synced(60);
    // The whole resync, at 8 MiB/s: not faster than the limit allows (it
    // started before `t0`, so this bound is loose), and not much slower
    // either (a limiter that throttles to half the rate or worse fails;
    // loopback moves this in well under a second unthrottled).
    let took = t0.elapsed().as_secs_f64();
    let moved = c.status(1)["stats"]["resync_received_bytes"]
        .as_u64()
        .unwrap();
    assert!(moved >= c.data_bytes(1), "full sync moved {moved} bytes");
    #[allow(clippy::cast_precision_loss)]
    let avg = moved as f64 / took;
    println!("resync of {moved} bytes at rate 8M: {took:.1} s, {avg:.0} B/s");
    let rate = f64::from(8u32 << 20);
    assert!(
        avg >= rate * 0.5 && avg <= rate * 1.25,
        "rate 8M: the resync of {moved} bytes took {took:.1} s = {avg:.0} B/s"
    );
}

/// `repctl wait-connect` with the config's [startup] timeouts, as a boot
/// script runs it after `repctl up`.
#[test]
fn wait_connect_waits_wfc_timeout_or_degr_wfc_timeout() {
    use std::time::{Duration, Instant};
    let c = Cluster::new(Opts::default());
    let mut text = std::fs::read_to_string(&c.config[0]).unwrap();
    text.push_str("[startup]\nwfc-timeout = 3\ndegr-wfc-timeout = 1\n");
    std::fs::write(&c.config[0], text).unwrap();
    let fails_after = |secs: u64, needle: &str| {
        let t0 = Instant::now();
        let o = c.repctl(0, &["wait-connect"]);
        let took = t0.elapsed();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "wait-connect succeeded alone");
        assert!(err.contains(needle), "stderr: {err}");
        assert!(
            took >= Duration::from_secs(secs) && took < Duration::from_secs(secs + 5),
            "gave up after {took:?}, not {secs} s"
        );
    };

    // Alone after a fresh start: wfc-timeout.
    c.up(0);
    assert_eq!(c.status(0)["degraded_at_start"], false);
    fails_after(3, "did not connect within 3 s (wfc-timeout)");

    // The peer comes up while it waits: it returns once connected.
    let mut w = c.cmd(0, env!("CARGO_BIN_EXE_repctl"));
    w.arg("--config")
        .arg(&c.config[0])
        .args(["--node", "alpha", "--run-dir"])
        .arg(&c.run_dir)
        .args(["wait-connect", "--timeout", "60"]);
    let waiter = w.output_async();
    c.up(1);
    let o = waiter.join().unwrap();
    assert!(
        o.status.success(),
        "wait-connect failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("Connected"));
    c.ok(0, &["primary", "--force"]);
    c.wait_synced(60);

    // A Primary that crashes while connected was not degraded.
    assert!(c.ok(0, &["dump-md", "--json"]).contains("CONNECTED_IND"));
    c.kill9(0);
    c.up(0);
    assert_eq!(c.status(0)["degraded_at_start"], false);
    c.wait_synced(60);
    c.ok(0, &["primary"]);

    // A Primary that ran alone and then crashed: degr-wfc-timeout.
    c.ok(1, &["down"]);
    c.wait(0, "the peer gone", 10, |s| s["connection"] != "Connected");
    // On disk before the crash: the superblock says the peer is gone.
    let t0 = Instant::now();
    while c.ok(0, &["dump-md", "--json"]).contains("CONNECTED_IND") {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "CONNECTED_IND never cleared"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    c.kill9(0);
    c.up(0);
    assert_eq!(c.status(0)["degraded_at_start"], true);
    fails_after(1, "did not connect within 1 s (degr-wfc-timeout");
    // --timeout overrides both.
    let t0 = Instant::now();
    assert!(!c
        .repctl(0, &["wait-connect", "--timeout", "2"])
        .status
        .success());
    assert!(t0.elapsed() >= Duration::from_secs(2));

    // StandAlone never connects by itself: no waiting.
    c.ok(0, &["disconnect"]);
    let t0 = Instant::now();
    let o = c.repctl(0, &["wait-connect", "--timeout", "60"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("StandAlone"));
    assert!(t0.elapsed() < Duration::from_secs(5));
}

/// `Command::output` on a thread, so the test can act while it runs.
trait OutputAsync {
    fn output_async(&mut self) -> std::thread::JoinHandle<std::process::Output>;
}

impl OutputAsync for std::process::Command {
    fn output_async(&mut self) -> std::thread::JoinHandle<std::process::Output> {
        let child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::spawn(move || child.wait_with_output().unwrap())
    }
}

/// on-io-error pass-on with a real disk error: the Primary's backing file
/// sits on a small tmpfs that fills up (ENOSPC) while a client writes.
#[test]
fn a_full_primary_disk_fails_the_writes_and_marks_them_for_resync() {
    use std::process::Command;
    tools();
    let c = Cluster::new(Opts::default());
    // alpha's image on a 24 MiB tmpfs: its data region sparse (holes take
    // no space until written), its metadata at the end written for real.
    let small = c.dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "rep-test-full"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(mounted.success(), "cannot mount a tmpfs (run as root)");
    struct Umount(std::path::PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _umount = Umount(small.clone());
    let img = c.img(0);
    let moved = small.join("alpha.img");
    let ok = Command::new("cp")
        .arg("--sparse=always")
        .arg(&img)
        .arg(&moved)
        .status()
        .unwrap();
    assert!(ok.success());
    let md_tail = 8u64 << 20;
    let skip = (c.disk_bytes - md_tail) >> 20;
    let ok = Command::new("dd")
        .arg(format!("if={}", img.display()))
        .arg(format!("of={}", moved.display()))
        .args(["bs=1M", &format!("skip={skip}"), &format!("seek={skip}")])
        .args(["conv=notrunc", "status=none"])
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::remove_file(&img).unwrap();
    std::os::unix::fs::symlink(&moved, &img).unwrap();

    c.up(0);
    c.up(1);
    c.ok(0, &["primary", "--force"]);
    c.wait_synced(60);
    // 32 MiB of data into ~16 MiB of room: the writes past it fail.
    let src = random_file(c.dir.path(), "big.bin", 32 << 20, 7);
    let o = c.client(0, "nbdcopy", &[src.to_str().unwrap(), &c.nbd_uri(0)]);
    assert!(!o.status.success(), "writes into a full disk succeeded");
    let st = c.wait(0, "the failed writes marked", 10, |s| {
        s["out_of_sync_bytes"].as_u64().unwrap_or(0) > 0
    });
    let err = st["last_error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("marked out of sync"), "last_error: {err}");
    assert_eq!(st["role"], "Primary", "still serving: {st:#}");
    // Room again (the admin grew the filesystem); the next connection
    // resyncs the marked ranges and both copies are equal.
    let grown = Command::new("mount")
        .args(["-o", "remount,size=200m"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(grown.success());
    c.ok(0, &["disconnect"]);
    c.ok(0, &["connect"]);
    c.wait_synced(60);
    c.wait(0, "nothing out of sync", 30, |s| {
        s["out_of_sync_bytes"] == 0
    });
    c.assert_identical();
}

/// Waits until both nodes are Connected and UpToDate, failing at once (with
/// the reason) if either gave up: StandAlone is final without an operator.
fn converges_without_an_operator(c: &Cluster, secs: u64) {
    for i in 0..2 {
        c.wait(i, "Connected UpToDate/UpToDate", secs, |s| {
            assert!(
                s["connection"] != "StandAlone",
                "gave up and needs an operator: {s:#}"
            );
            s["connection"] == "Connected"
                && s["disk"] == "UpToDate"
                && s["peer_disk"] == "UpToDate"
        });
    }
}

use rep_testkit::signal;

/// issue 16 item 3: alpha Primary crashes, beta is promoted and writes,
/// alpha comes back and resyncs from beta (rate-limited), beta crashes while
/// alpha is its SyncTarget, beta comes back. beta holds the only consistent
/// copy: it must be the source and the pair converge by itself.
#[test]
fn a_crash_of_the_new_primary_while_it_resyncs_the_old_one_converges() {
    tools();
    let (c, _ns) = synced_pair(Mode::Loopback, Opts::default());
    let o = qemu_io(&c, 0, &["write -P 0xa1 0 8M".into()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    c.wait(0, "nothing pending", 10, |s| s["counters"]["pe"] == 0);
    c.kill9(0);
    c.wait(1, "alpha gone", 20, |s| s["connection"] == "Connecting");
    c.ok(1, &["primary"]);
    let o = qemu_io(&c, 1, &["write -P 0xb2 32M 8M".into()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // From now on resyncs take a while, as in the report.
    let text = std::fs::read_to_string(&c.config[0]).unwrap();
    std::fs::write(&c.config[0], text.replace("rate = \"0\"", "rate = \"4M\"")).unwrap();
    c.up(0);
    let st = c.wait(0, "alpha resyncing from beta", 20, |s| {
        s["connection"] == "SyncTarget" && s["stats"]["resync_received_bytes"].as_u64() > Some(0)
    });
    assert!(
        st["out_of_sync_bytes"].as_u64().unwrap() >= 4 << 20,
        "the resync should still have a while to go: {st:#}"
    );
    c.kill9(1);
    c.wait(0, "beta gone", 20, |s| s["connection"] != "SyncTarget");
    assert_eq!(c.status(0)["disk"], "Inconsistent");
    c.up(1);
    converges_without_an_operator(&c, 60);
    c.assert_identical();
    let img = std::fs::read(c.img(0)).unwrap();
    assert!(
        img[32 << 20..40 << 20].iter().all(|&b| b == 0xb2),
        "beta's writes did not reach alpha"
    );
    assert!(img[..8 << 20].iter().all(|&b| b == 0xa1));
    assert!(c.status(0)["out_of_sync_bytes"] == 0);
}

/// issue 16 item 4: both armed with freeze-on-disconnect; beta stops
/// answering (SIGSTOP); a write to alpha is held by the freeze, never
/// acknowledged; alpha is killed; beta resumes, is promoted (and resumed, as
/// the agent does); alpha comes back. Nothing alpha acknowledged is missing
/// on beta: it must rejoin as sync target, not as a split brain.
#[test]
fn a_frozen_primary_killed_with_a_held_write_rejoins_without_a_split_brain() {
    tools();
    let (c, _ns) = synced_pair(Mode::Loopback, Opts::default());
    for i in 0..2 {
        c.ok(i, &["freeze-on-disconnect", "on"]);
    }
    let beta = c.pid(1);
    signal(beta, "-STOP");
    let child = c
        .cmd(0, "qemu-io")
        .args(["-f", "raw", &c.nbd_uri(0), "-c", "write -P 0x66 0 64k"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let st = c.wait(0, "alpha frozen", 30, |s| s["suspended"] == "hold");
    assert_ne!(st["connection"], "Connected", "{st:#}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    c.kill9(0);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("wrote"),
        "acknowledged while frozen: {stdout}"
    );
    signal(beta, "-CONT");
    c.wait(1, "alpha gone", 20, |s| s["connection"] == "Connecting");
    c.ok(1, &["primary"]);
    c.ok(1, &["resume-io"]);
    let o = qemu_io(&c, 1, &["write -P 0xb2 1M 64k".into()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    c.up(0);
    converges_without_an_operator(&c, 60);
    for i in 0..2 {
        assert_eq!(c.status(i)["split_brain"], false);
    }
    c.assert_identical();
    let img = std::fs::read(c.img(0)).unwrap();
    // The held write was never acknowledged: it may be there or not (beta
    // may have read it from its socket after SIGCONT), on both alike.
    assert!(img[..64 << 10].iter().all(|&b| b == 0 || b == 0x66));
    assert!(img[1 << 20..(1 << 20) + (64 << 10)]
        .iter()
        .all(|&b| b == 0xb2));
}

// ---- resuming the Primary role after a crash of repd alone (issue 16, item 1)
//
// On a real /dev/ublkbN the trigger is the device the kernel still holds
// (`resume-after-crash = "held-device"`, the default; the VM scenario 2
// tests it). The host has no ublk, so these tests set `"always"`, which
// arms the same decision without a held device, and check each case.

/// A synced pair whose resource file says `extra` too, alpha Primary; a
/// file written through alpha's export.
fn crashed_primary(extra: &str) -> (Cluster, std::path::PathBuf) {
    tools();
    let c = Cluster::new(Opts::default());
    let mut text = std::fs::read_to_string(&c.config[0]).unwrap();
    text.push_str(extra);
    std::fs::write(&c.config[0], text).unwrap();
    c.up(0);
    c.up(1);
    c.ok(0, &["primary", "--force"]);
    c.wait_synced(60);
    let src = random_file(c.dir.path(), "before.bin", 3 << 20, 16);
    c.nbd_write(0, &src);
    c.kill9(0);
    c.wait(1, "alpha gone", 20, |s| s["connection"] == "Connecting");
    (c, src)
}

const ALWAYS: &str = "[startup]\nresume-after-crash = \"always\"\n";

#[test]
fn a_restarted_primary_resumes_by_itself_after_its_activity_log_resync() {
    let (c, src) = crashed_primary(ALWAYS);
    c.up(0);
    let st = c.wait(0, "Primary again", 60, |s| s["role"] == "Primary");
    assert_eq!(st["disk"], "UpToDate", "{st:#}");
    assert_eq!(st["resume"], "resumed as Primary after a crash", "{st:#}");
    assert!(
        st["stats"]["resync_received_bytes"].as_u64().unwrap() >= 4 << 20,
        "resumed before resyncing its activity log: {st:#}"
    );
    assert_eq!(c.status(1)["role"], "Secondary");
    // Its export serves again, the same data, and writes replicate.
    c.nbd_reads_back(0, &src);
    let after = random_file(c.dir.path(), "after.bin", 2 << 20, 17);
    c.nbd_write(0, &after);
    c.wait_synced(30);
    // repd counts NBD clients every 100 ms: let it see nbdcopy gone.
    c.wait(0, "no NBD client", 10, |s| s["nbd_clients"] == 0);
    c.ok(0, &["secondary"]);
    c.assert_identical();
}

#[test]
fn a_restarted_primary_does_not_resume_when_the_peer_was_promoted_meanwhile() {
    let (c, _) = crashed_primary(ALWAYS);
    c.ok(1, &["primary"]);
    let newer = random_file(c.dir.path(), "newer.bin", 1 << 20, 18);
    c.nbd_write(1, &newer);
    c.up(0);
    c.wait_synced(60);
    // Give a wrong resumption time to happen.
    std::thread::sleep(Duration::from_secs(2));
    let st = c.status(0);
    assert_eq!(st["role"], "Secondary", "{st:#}");
    let note = st["resume"].as_str().unwrap_or_default();
    assert!(
        note.contains("not resumed") && note.contains("peer is Primary"),
        "{st:#}"
    );
    assert_eq!(c.status(1)["role"], "Primary");
    c.nbd_reads_back(1, &newer);
    // Still one writer when the peer lets go: alpha does not take over.
    c.wait(1, "no NBD client", 10, |s| s["nbd_clients"] == 0);
    c.ok(1, &["secondary"]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(c.status(0)["role"], "Secondary");
    c.assert_identical();
}

#[test]
fn a_restarted_primary_waits_while_the_peer_is_unreachable() {
    let (c, _) = crashed_primary(ALWAYS);
    c.ok(1, &["down"]);
    c.up(0);
    std::thread::sleep(Duration::from_secs(3));
    let st = c.status(0);
    assert_eq!(st["role"], "Secondary", "{st:#}");
    assert_eq!(st["disk"], "Consistent", "{st:#}");
    let note = st["resume"].as_str().unwrap_or_default();
    assert!(note.contains("waiting for the peer"), "{st:#}");
    // `repctl status` says it too, not only --json.
    let text = c.ok(0, &["status"]);
    assert!(text.contains(&format!("after a crash: {note}")), "{text}");
    // The peer comes back, Secondary, same generation: alpha resumes.
    c.up(1);
    let st = c.wait(0, "Primary again", 60, |s| s["role"] == "Primary");
    assert_eq!(st["resume"], "resumed as Primary after a crash", "{st:#}");
    c.wait_synced(30);
}

#[test]
fn with_a_cluster_table_the_agent_decides_and_repd_does_not_resume() {
    let (c, _) = crashed_primary("[cluster]\nauth-key = \"k\"\n");
    c.up(0);
    c.wait_synced(60);
    std::thread::sleep(Duration::from_secs(2));
    let st = c.status(0);
    assert_eq!(st["role"], "Secondary", "{st:#}");
    assert!(st["resume"].is_null(), "{st:#}");
    // And the combination that would let both decide is refused.
    let mut text = std::fs::read_to_string(&c.config[0]).unwrap();
    text.push_str("[startup]\nresume-after-crash = \"always\"\n");
    std::fs::write(&c.config[0], text).unwrap();
    let o = c.repctl(0, &["status"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("cluster agent decides"),
        "{err}"
    );
}
