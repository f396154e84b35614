//! The agent with real repd nodes in two network namespaces joined by two
//! veth pairs (two heartbeat paths), the NBD export as the device, driven as
//! a user would. Needs root, iproute2 and libnbd-bin (nbdcopy).
//!
//! The scenarios run one at a time (a lock), so that the failover times
//! they print are not the 2 cores' scheduling noise.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

mod common;

use std::time::{Duration, Instant};

use cluster_agent::core::{Beat, Incarnation, Seq, WireState};
use common::{random_file, send_from_ns, serial, Cluster, Opts, HB_PORT, KEY, NODES};
use replication_proto::wire::{DiskState, Role};
use serde_json::Value;

/// Kill everything of alpha (the Primary) and measure until beta is Primary
/// with its chain started and its NBD export accepting a write.
fn kill_primary_and_measure(c: &mut Cluster) -> (Duration, Duration) {
    let probe = random_file(c.dir.path(), "probe.bin", 64 << 10, 3);
    let t0 = c.kill_everything(0);
    let mut holding = None;
    let mut serving = None;
    while holding.is_none() || serving.is_none() {
        if holding.is_none() {
            if let Some(st) = c.agent_status(1) {
                if st["state"] == "Holding" {
                    holding = Some(t0.elapsed());
                }
            }
        }
        if serving.is_none() && c.nbd_write(1, &probe).status.success() {
            serving = Some(t0.elapsed());
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no failover within 30 s\n{}",
            c.debug()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (holding.unwrap(), serving.unwrap())
}

fn transitions_to(st: &Value, to: &str) -> usize {
    st["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["to"] == to)
        .count()
}

#[test]
fn kill_9_of_the_primary_fails_over_within_deadtime() {
    let _g = serial();
    let mut c = Cluster::new(Opts {
        fence_code: Some(5),
        ..Opts::default()
    });
    // Both Secondary: the agents decide (alpha is preferred and claims).
    c.start(false);
    let st = c.agent_status(0).unwrap();
    assert!(
        st["decision"]
            .as_str()
            .unwrap()
            .contains("acknowledged the claim"),
        "{st:#}"
    );
    let dead = c.opts.deadtime_ms;
    let (holding, serving) = kill_primary_and_measure(&mut c);
    println!(
        "failover after kill -9 of the Primary's repd and agent (deadtime {dead} ms, fence exit 5): \
         beta Holding after {} ms, its NBD export took a write after {} ms",
        holding.as_millis(),
        serving.as_millis()
    );
    let limit = Duration::from_millis(dead + 1000);
    assert!(
        holding <= limit && serving <= limit,
        "failover took {holding:?} / {serving:?}, more than deadtime + 1 s\n{}",
        c.debug()
    );
    let st = c.agent_status(1).unwrap();
    assert_eq!(st["local"]["role"], "Primary", "{st:#}");
    assert!(c.path("svc-a.beta").exists() && c.path("svc-b.beta").exists());
    assert!(
        std::fs::read_to_string(c.path("fence.log"))
            .unwrap()
            .contains("beta fences alpha"),
        "the fence command ran before the promotion"
    );
    assert!(
        st["last_fence"].as_str().unwrap().contains("exit 5"),
        "{st:#}"
    );
    // The chain started left to right on beta.
    let log = c.chain_log();
    let beta: Vec<&String> = log.iter().filter(|l| l.starts_with("beta")).collect();
    // (its agent's start made sure nothing ran there: stops right to left)
    assert_eq!(
        beta,
        [
            "beta stop svc-b",
            "beta stop svc-a",
            "beta start svc-a",
            "beta start svc-b"
        ],
        "{log:?}"
    );
    assert_eq!(st["peer"]["alive"], false);
    assert_eq!(st["paths"][0]["up"], false);
    // The service address moved with the chain.
    assert!(c.net.has_service_ip(1), "{}", c.debug());
}

#[test]
fn cutting_one_of_two_paths_does_not_fail_over() {
    let _g = serial();
    let mut c = Cluster::new(Opts::default());
    // alpha is Primary before the agents start: its agent adopts it.
    c.start(true);
    let st = c.agent_status(0).unwrap();
    assert!(
        st["decision"].as_str().unwrap().contains("adopted"),
        "{st:#}"
    );
    let wait = Duration::from_millis(2 * c.opts.deadtime_ms + 500);
    for link in [1, 0] {
        c.net.link(link, false);
        std::thread::sleep(wait);
        for i in 0..2 {
            let st = c.agent_status(i).unwrap();
            assert_eq!(st["paths"][link]["up"], false, "{st:#}");
            assert_eq!(st["paths"][1 - link]["up"], true, "{st:#}");
            assert_eq!(st["peer"]["alive"], true, "{st:#}");
        }
        let a = c.agent_status(0).unwrap();
        let b = c.agent_status(1).unwrap();
        assert_eq!(a["state"], "Holding", "{}", c.debug());
        assert_eq!(b["state"], "Idle", "{}", c.debug());
        assert_eq!(transitions_to(&b, "Acquiring"), 0, "{b:#}");
        assert_eq!(transitions_to(&b, "Fencing"), 0, "{b:#}");
        if link == 0 {
            // The replication link is down too: alpha writes on alone.
            let f = random_file(c.dir.path(), "w.bin", 1 << 20, 9);
            let o = c.nbd_write(0, &f);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            assert_ne!(c.repd_status(1).unwrap()["connection"], "Connected");
        }
        println!(
            "link {link} down for {} ms: no failover; beta says: {}",
            wait.as_millis(),
            b["decision"]
        );
        c.net.link(link, true);
        for i in 0..2 {
            c.wait_agent(i, "both paths up", 10, |s| {
                s["paths"][0]["up"] == true && s["paths"][1]["up"] == true
            });
        }
    }
    c.wait_synced(60);
    c.assert_identical();
    let a = c.agent_status(0).unwrap();
    assert_eq!(a["state"], "Holding");
    assert_eq!(transitions_to(&a, "Releasing"), 0, "{a:#}");
}

#[test]
fn a_heartbeat_with_a_wrong_key_changes_nothing_and_is_counted() {
    let _g = serial();
    let mut c = Cluster::new(Opts::default());
    c.start(false);
    let before = c.agent_status(0).unwrap();
    let peer_inc =
        u64::from_str_radix(before["peer"]["incarnation"].as_str().unwrap(), 16).unwrap();
    // Forged: beta claims to hold everything, signed with the wrong key.
    let forged = Beat {
        path: 0,
        incarnation: Incarnation(peer_inc),
        started_ms: u64::MAX / 2,
        seq: Seq(u64::MAX / 2),
        ack: None,
        state: WireState::Holding,
        eligible: true,
        failback_request: true,
        repd_up: true,
        role: Some(Role::Primary),
        disk: Some(DiskState::UpToDate),
        connected: false,
        suspended: false,
        ping_lost: false,
        fence_me: false,
        outdate_request: false,
    };
    let wrong = cluster_agent::wire::encode(b"not-the-key", "r0", "beta", &forged);
    // Replayed: beta's own incarnation, an old sequence number, right key.
    let mut old = forged.clone();
    old.seq = Seq(1);
    old.state = WireState::Idle;
    let replay = cluster_agent::wire::encode(KEY.as_bytes(), "r0", "beta", &old);
    // An older run of beta (new incarnation id, earlier start), right key.
    let mut stale = old.clone();
    stale.incarnation = Incarnation(peer_inc ^ 1);
    stale.started_ms = 1;
    stale.seq = Seq(10);
    let stale = cluster_agent::wire::encode(KEY.as_bytes(), "r0", "beta", &stale);
    let garbage = b"GET / HTTP/1.0\r\n\r\n".to_vec();
    let to = format!("{}:{HB_PORT}", c.net.ips[0][0]).parse().unwrap();
    send_from_ns(
        &c.net.ns[1],
        to,
        vec![wrong.clone(), wrong, replay, stale, garbage],
    );
    let st = c.wait_agent(0, "the packets counted", 10, |s| {
        s["counters"]["bad_mac"].as_u64().unwrap() >= 2
            && s["counters"]["replay"].as_u64().unwrap() >= 2
            && s["counters"]["malformed"].as_u64().unwrap() >= 1
    });
    println!(
        "alpha's counters after the forged packets: {}",
        st["counters"]
    );
    // Nothing changed: still Holding, same transitions, same peer run.
    std::thread::sleep(Duration::from_millis(1000));
    let after = c.agent_status(0).unwrap();
    assert_eq!(after["state"], "Holding");
    assert_eq!(after["transitions"], before["transitions"], "{after:#}");
    assert_eq!(after["peer"]["incarnation"], before["peer"]["incarnation"]);
    assert_eq!(after["peer"]["state"], "Idle");
    assert_eq!(after["counters"]["peer_restarts"], 0);
    let b = c.agent_status(1).unwrap();
    assert_eq!(b["state"], "Idle");
    // The readable status shows the counters too.
    let text = String::from_utf8_lossy(&c.agent_cmd(0, &["status"]).stdout).into_owned();
    assert!(
        text.contains("bad-mac 2") || text.contains("bad-mac 3"),
        "{text}"
    );
    println!("{text}");
}

#[test]
fn a_failing_fence_command_blocks_the_promotion_and_status_says_why() {
    let _g = serial();
    let mut c = Cluster::new(Opts {
        fence_code: Some(1),
        ..Opts::default()
    });
    c.start(false);
    c.kill_everything(0);
    std::thread::sleep(Duration::from_millis(c.opts.deadtime_ms + 2000));
    let st = c.agent_status(1).unwrap();
    // Idle, or fencing again (it retries every deadtime).
    assert!(
        st["state"] == "Idle" || st["state"] == "Fencing",
        "{}",
        c.debug()
    );
    assert_eq!(st["local"]["role"], "Secondary", "{st:#}");
    assert_eq!(st["holds_role"], false);
    let decision = st["decision"].as_str().unwrap();
    assert!(
        decision.contains("fence")
            && decision.contains("exit 1")
            && decision.contains("not promoting"),
        "{decision}"
    );
    assert!(st["last_fence"].as_str().unwrap().contains("exit 1"));
    assert!(!c.path("svc-a.beta").exists());
    assert_eq!(c.repd_status(1).unwrap()["role"], "Secondary");
    let text = String::from_utf8_lossy(&c.agent_cmd(1, &["status"]).stdout).into_owned();
    println!("{text}");
    assert!(text.contains("exit 1"), "{text}");
    // The fence device comes back (exit 7 = STONITH done): the next attempt
    // (after deadtime) promotes.
    c.set_fence_code(7);
    let t0 = Instant::now();
    c.wait_agent(1, "takeover after the fence succeeds", 10, |s| {
        s["state"] == "Holding"
    });
    println!(
        "fence fixed: beta took over {} ms later",
        t0.elapsed().as_millis()
    );
    let calls = std::fs::read_to_string(c.path("fence.log")).unwrap();
    assert!(calls.lines().count() >= 2, "{calls}");
}

fn heal(auto_failback: bool) {
    let mut c = Cluster::new(Opts {
        auto_failback,
        ..Opts::default()
    });
    c.start(false);
    let (holding, serving) = kill_primary_and_measure(&mut c);
    println!(
        "failover without fencing (deadtime {} ms): Holding after {} ms, serving writes after {} ms",
        c.opts.deadtime_ms,
        holding.as_millis(),
        serving.as_millis()
    );
    let b = c.agent_status(1).unwrap();
    assert!(
        b["decision"].as_str().unwrap().contains("without fencing"),
        "{b:#}"
    );
    // Beta writes 1 MiB while alpha is gone.
    let f = random_file(c.dir.path(), "new.bin", 1 << 20, 5);
    let o = c.nbd_write(1, &f);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Alpha comes back: repd first, then its agent.
    c.up(0);
    let st = c.repd_status(0).unwrap();
    assert_eq!(st["role"], "Secondary", "{st:#}");
    c.start_agent(0);
    c.wait_synced(60);
    let st = c.repd_status(0).unwrap();
    let got = st["stats"]["resync_received_bytes"].as_u64().unwrap();
    let data = c.data_bytes();
    println!(
        "alpha rejoined and resynced {got} bytes of {data} (beta wrote 1 MiB while alpha was down)"
    );
    assert!(got > 0 && got < data / 4, "resynced {got} of {data}");
    if auto_failback {
        let t0 = Instant::now();
        c.wait_agent(0, "alpha holding again (auto-failback)", 20, |s| {
            s["state"] == "Holding"
        });
        println!(
            "auto-failback: alpha holds again {} ms after the resync",
            t0.elapsed().as_millis()
        );
        let b = c.wait_agent(1, "beta idle", 10, |s| s["state"] == "Idle");
        assert!(
            b["transitions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["reason"].as_str().unwrap().contains("auto-failback")),
            "{b:#}"
        );
        assert_eq!(c.repd_status(1).unwrap()["role"], "Secondary");
        assert_eq!(c.repd_status(0).unwrap()["role"], "Primary");
        // Stopped right to left on beta, then started left to right on alpha.
        let log = c.chain_log();
        let tail: Vec<&str> = log.iter().rev().take(4).rev().map(String::as_str).collect();
        assert_eq!(
            tail,
            [
                "beta stop svc-b",
                "beta stop svc-a",
                "alpha start svc-a",
                "alpha start svc-b"
            ],
            "{log:?}"
        );
        assert!(c.nbd_write(0, &f).status.success());
        assert!(c.net.has_service_ip(0) && !c.net.has_service_ip(1));
    } else {
        std::thread::sleep(Duration::from_millis(3 * c.opts.deadtime_ms));
        let a = c.agent_status(0).unwrap();
        let b = c.agent_status(1).unwrap();
        assert_eq!(a["state"], "Idle", "{}", c.debug());
        assert_eq!(b["state"], "Holding", "{}", c.debug());
        assert_eq!(a["peer"]["alive"], true);
        assert_eq!(c.repd_status(0).unwrap()["role"], "Secondary");
        println!("alpha stays Secondary: {}", a["decision"]);
        // alpha's agent made sure nothing of the chain runs there (its
        // services outlived the kill -9), and started nothing.
        assert!(!c.path("svc-a.alpha").exists() && !c.path("svc-b.alpha").exists());
        let log = c.chain_log();
        let starts = log.iter().filter(|l| l.starts_with("alpha start")).count();
        assert_eq!(starts, 2, "only the first start on alpha: {log:?}");
        let tail: Vec<&str> = log.iter().rev().take(2).rev().map(String::as_str).collect();
        assert_eq!(tail, ["alpha stop svc-b", "alpha stop svc-a"], "{log:?}");
        // The service address outlived the kill -9 on alpha; the restarted
        // agent removed it, so only beta has it.
        assert!(!c.net.has_service_ip(0) && c.net.has_service_ip(1));
    }
    c.assert_identical();
    let _ = NODES;
}

#[test]
fn heal_after_failover_rejoins_as_secondary_and_resyncs_only_what_changed() {
    let _g = serial();
    heal(false);
}

#[test]
fn auto_failback_moves_the_chain_back_to_the_preferred_node() {
    let _g = serial();
    heal(true);
}

#[test]
fn a_failed_start_stops_what_was_started_and_the_peer_takes_over() {
    let _g = serial();
    let mut c = Cluster::new(Opts::default());
    c.prepare(false);
    // svc-b cannot start on alpha (the preferred node, which claims first).
    std::fs::write(c.path("fail.svc-b.alpha"), "").unwrap();
    c.start_agent(0);
    c.start_agent(1);
    let b = c.wait_agent(1, "beta holding", 30, |s| s["state"] == "Holding");
    let a = c.wait_agent(0, "alpha idle", 10, |s| s["state"] == "Idle");
    println!(
        "beta took over after alpha's failed start: {}",
        b["decision"]
    );
    let log: Vec<String> = c
        .chain_log()
        .into_iter()
        .filter(|l| !l.contains(" stop ") || l.starts_with("alpha"))
        .collect();
    // alpha: svc-a started, svc-b failed; stopped right to left (the failed
    // one too); then beta started its chain.
    let from = log.iter().position(|l| l == "alpha start svc-a").unwrap();
    assert_eq!(
        log[from..],
        [
            "alpha start svc-a",
            "alpha start-fails svc-b",
            "alpha stop svc-b",
            "alpha stop svc-a",
            "beta start svc-a",
            "beta start svc-b"
        ],
        "{log:?}"
    );
    assert_eq!(c.repd_status(0).unwrap()["role"], "Secondary");
    assert_eq!(c.repd_status(1).unwrap()["role"], "Primary");
    assert!(!c.net.has_service_ip(0) && c.net.has_service_ip(1));
    assert!(a["failure_timeout_left_ms"].as_u64().unwrap() > 0, "{a:#}");
    let reasons: Vec<&str> = a["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("failed to start") && r.contains("cannot start here")),
        "{reasons:?}"
    );
    let chain = a["chain"].as_array().unwrap();
    assert!(
        chain[2]["state"].to_string().contains("cannot start here"),
        "{a:#}"
    );
}
