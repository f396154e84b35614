//! Planned and escalated operations of the agent, with real repd nodes in
//! two network namespaces (the same rig as `failover.rs`): a planned
//! switchover and back, a failed stop under each `on-stop-failure` policy,
//! the split-brain hook after a partition, and ping nodes (ipfail) behind a
//! third namespace acting as the network's gateway. Needs root, iproute2,
//! iputils-ping and libnbd-bin (nbdcopy).

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{ip, random_file, serial, Cluster, Net, Opts, NODES};
use serde_json::Value;

/// Add keys to the `[cluster]` table of the test cluster's resource file
/// (before the agents start; repd ignores the table).
fn cluster_keys(c: &Cluster, keys: &str) {
    let t = std::fs::read_to_string(&c.config).unwrap();
    let t = t.replacen("[cluster]\n", &format!("[cluster]\n{keys}\n"), 1);
    std::fs::write(&c.config, t).unwrap();
}

use rep_testkit::write_exec;

/// A service at the end of the chain whose stop fails while
/// `<dir>/stuck.<node>` exists (like a daemon that ignores SIGTERM).
fn add_stuck_service(c: &Cluster) {
    let script = c.path("svc-stuck");
    write_exec(
        &script,
        "#!/bin/sh\nd=$(dirname \"$0\")\n\
         case \"$1\" in\n\
         start) echo \"$REP_NODE start svc-stuck\" >> \"$d/chain.log\"; touch \"$d/svc-stuck.$REP_NODE\";;\n\
         stop) if [ -e \"$d/stuck.$REP_NODE\" ]; then echo \"$REP_NODE stop-fails svc-stuck\" >> \"$d/chain.log\"; echo 'svc-stuck: still busy' >&2; exit 1; fi\n\
         echo \"$REP_NODE stop svc-stuck\" >> \"$d/chain.log\"; rm -f \"$d/svc-stuck.$REP_NODE\";;\n\
         status) [ -e \"$d/svc-stuck.$REP_NODE\" ] || exit 3;;\n\
         *) exit 2;;\nesac\n",
    );
    let mut t = std::fs::read_to_string(&c.config).unwrap();
    t.push_str(&format!(
        "[[cluster.resource]]\ntype = \"service\"\nscript = \"{}\"\ntimeout-ms = 10000\n",
        script.display()
    ));
    std::fs::write(&c.config, t).unwrap();
}

fn reasons(st: &Value) -> Vec<String> {
    st["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| format!("{} -> {}: {}", t["from"], t["to"], t["reason"]))
        .collect()
}

fn events(st: &Value) -> Vec<String> {
    st["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["what"].as_str().unwrap().to_string())
        .collect()
}

/// The pids a simulated reboot or STONITH of node i kills: its repd and agent.
fn record_pids(c: &Cluster, i: usize) {
    let repd = c.repd_pid(i).unwrap();
    let agent = c.agents[i].as_ref().unwrap().id();
    std::fs::write(
        c.path(&format!("pids.{}", NODES[i])),
        format!("{repd} {agent}"),
    )
    .unwrap();
}

fn switchover(c: &Cluster, i: usize, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["switchover"];
    args.extend_from_slice(extra);
    c.agent_cmd(i, &args)
}

/// Starts the cluster, then a switchover whose stop fails on alpha (its
/// stuck service): the moment it was asked for and beta's status once
/// `what` (beta holding) came true.
fn stop_fails_on_switchover(c: &mut Cluster, what: &str) -> (Instant, Value) {
    c.start(false);
    record_pids(c, 0);
    std::fs::write(c.path("stuck.alpha"), "").unwrap();
    let t0 = Instant::now();
    let o = switchover(c, 0, &["--no-wait"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let b = c.wait_agent(1, what, 30, |s| s["state"] == "Holding");
    (t0, b)
}

#[test]
fn planned_switchover_moves_the_chain_and_back_without_failover_timers() {
    let _g = serial();
    let mut c = Cluster::new(Opts::default());
    c.start(false);
    // Only the holder accepts it.
    let o = switchover(&c, 1, &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("alpha does"), "{err}");
    // Data written on alpha before the switchover.
    let f = random_file(c.dir.path(), "before.bin", 1 << 20, 11);
    assert!(c.nbd_write(0, &f).status.success());

    let t0 = Instant::now();
    let o = switchover(&c, 0, &[]);
    let took = t0.elapsed();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{out}\n{}\n{}",
        String::from_utf8_lossy(&o.stderr),
        c.debug()
    );
    println!("{out}");
    println!(
        "switchover alpha -> beta: {} ms (deadtime {} ms)",
        took.as_millis(),
        c.opts.deadtime_ms
    );
    assert!(out.contains("switchover done"), "{out}");
    // No failover timer involved: well under deadtime.
    assert!(
        took < Duration::from_millis(c.opts.deadtime_ms),
        "switchover took {took:?}\n{}",
        c.debug()
    );
    let a = c.agent_status(0).unwrap();
    let b = c.agent_status(1).unwrap();
    assert_eq!(a["state"], "Idle", "{}", c.debug());
    assert_eq!(b["state"], "Holding", "{}", c.debug());
    assert!(
        reasons(&a)
            .iter()
            .any(|r| r.contains("\"Releasing\"") && r.contains("switchover requested")),
        "{:?}",
        reasons(&a)
    );
    assert!(
        a["handover"]
            .as_str()
            .unwrap()
            .contains("switchover requested"),
        "{a:#}"
    );
    for st in [&a, &b] {
        assert!(
            !reasons(st).iter().any(|r| r.contains("Fencing")),
            "{:?}",
            reasons(st)
        );
        assert!(
            !events(st).iter().any(|e| e.contains("dead")),
            "{:?}",
            events(st)
        );
    }
    assert_eq!(c.repd_status(0).unwrap()["role"], "Secondary");
    assert_eq!(c.repd_status(1).unwrap()["role"], "Primary");
    let log = c.chain_log();
    let tail: Vec<&str> = log.iter().rev().take(4).rev().map(String::as_str).collect();
    assert_eq!(
        tail,
        [
            "alpha stop svc-b",
            "alpha stop svc-a",
            "beta start svc-a",
            "beta start svc-b"
        ],
        "{log:?}"
    );
    assert!(!c.net.has_service_ip(0) && c.net.has_service_ip(1));
    // Writes go on through beta; alpha (preferred) does not take them back.
    let g = random_file(c.dir.path(), "after.bin", 1 << 20, 12);
    assert!(c.nbd_write(1, &g).status.success());
    std::thread::sleep(Duration::from_millis(2 * c.opts.deadtime_ms));
    assert_eq!(c.agent_status(1).unwrap()["state"], "Holding");
    assert_eq!(c.agent_status(0).unwrap()["state"], "Idle");

    // And back, asked on beta.
    let t0 = Instant::now();
    let o = switchover(&c, 1, &[]);
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stderr),
        c.debug()
    );
    println!("switchover beta -> alpha: {} ms", t0.elapsed().as_millis());
    c.wait_agent(0, "alpha holding", 10, |s| s["state"] == "Holding");
    assert!(c.net.has_service_ip(0) && !c.net.has_service_ip(1));
    c.wait_synced(30);
    c.assert_identical();
    // Nothing to hand over from an idle node, and the reason says so.
    let o = switchover(&c, 1, &[]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("alpha does"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn switchover_to_a_dead_peer_is_refused() {
    let _g = serial();
    let mut c = Cluster::new(Opts::default());
    c.start(true);
    let pid = c.repd_pid(1).unwrap();
    if let Some(mut a) = c.agents[1].take() {
        let _ = a.kill();
        let _ = a.wait();
    }
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    c.wait_agent(0, "beta dead", 10, |s| s["peer"]["alive"] == false);
    let o = switchover(&c, 0, &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not alive"), "{err}");
    let a = c.agent_status(0).unwrap();
    assert_eq!(a["state"], "Holding", "{a:#}");
}

#[test]
fn a_failed_stop_blocks_the_switchover_until_the_resource_stops() {
    let _g = serial();
    let mut c = Cluster::new(Opts::default());
    add_stuck_service(&c);
    c.start(false);
    std::fs::write(c.path("stuck.alpha"), "").unwrap();
    let o = switchover(&c, 0, &["--timeout", "20"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("stuck") && err.contains("svc-stuck"), "{err}");
    // on-stop-failure = "block" (the default): the role stays, the peer does
    // not take over under a resource that may still run.
    std::thread::sleep(Duration::from_millis(c.opts.deadtime_ms + 1000));
    let a = c.agent_status(0).unwrap();
    let b = c.agent_status(1).unwrap();
    assert_eq!(a["state"], "Releasing", "{}", c.debug());
    assert_eq!(a["on_stop_failure"], "block");
    assert!(
        a["stop_failed"].as_str().unwrap().contains("still busy"),
        "{a:#}"
    );
    assert_eq!(a["local"]["role"], "Primary");
    assert_eq!(b["state"], "Idle", "{}", c.debug());
    assert_eq!(c.repd_status(1).unwrap()["role"], "Secondary");
    // The readable status says it loudly.
    let text = String::from_utf8_lossy(&c.agent_cmd(0, &["status"]).stdout).into_owned();
    assert!(text.contains("STOP FAILED"), "{text}");
    // The stop works again: the retry (every deadtime) finishes the switchover.
    std::fs::remove_file(c.path("stuck.alpha")).unwrap();
    c.wait_agent(1, "beta holding", 15, |s| s["state"] == "Holding");
    c.wait_agent(0, "alpha idle", 5, |s| s["state"] == "Idle");
    let log = c.chain_log();
    let fails = log
        .iter()
        .filter(|l| *l == "alpha stop-fails svc-stuck")
        .count();
    assert!(fails >= 2, "the stop was retried: {log:?}");
    let from = log
        .iter()
        .rposition(|l| l == "alpha stop svc-stuck")
        .unwrap();
    assert_eq!(
        log[from..],
        [
            "alpha stop svc-stuck",
            "alpha stop svc-b",
            "alpha stop svc-a",
            "beta start svc-a",
            "beta start svc-b",
            "beta start svc-stuck"
        ],
        "{log:?}"
    );
}

#[test]
fn on_stop_failure_reboot_hook_runs_the_command_once_and_the_peer_takes_over() {
    let _g = serial();
    let mut c = Cluster::new(Opts::default());
    add_stuck_service(&c);
    // The "reboot": kill -9 of this node's repd and agent, like a power cycle.
    write_exec(
        &c.path("reboot.sh"),
        "#!/bin/sh\nd=$(dirname \"$0\")\n\
         echo \"$REP_NODE $REP_EVENT $REP_RESOURCE agent=$REP_AGENT_PID\" >> \"$d/reboot.log\"\n\
         kill -9 $(cat \"$d/pids.$REP_NODE\")\n",
    );
    cluster_keys(
        &c,
        &format!(
            "on-stop-failure = \"reboot-hook\"\nreboot-command = \"{}\"",
            c.path("reboot.sh").display()
        ),
    );
    let (t0, b) = stop_fails_on_switchover(&mut c, "beta holding after alpha's reboot");
    println!(
        "stop failed on alpha, reboot-command ran, beta holds after {} ms: {}",
        t0.elapsed().as_millis(),
        b["decision"]
    );
    let log = std::fs::read_to_string(c.path("reboot.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 1, "{log}");
    let agent = c.agents[0].as_ref().unwrap().id();
    assert_eq!(
        lines[0],
        format!("alpha stop-failure r0 agent={agent}"),
        "{log}"
    );
    assert!(c.agent_status(0).is_none(), "alpha's agent was rebooted");
    assert_eq!(c.repd_status(1).unwrap()["role"], "Primary");
}

#[test]
fn on_stop_failure_fence_makes_the_peer_fence_this_node_and_take_over() {
    let _g = serial();
    let mut c = Cluster::new(Opts {
        fence_code: Some(7),
        ..Opts::default()
    });
    add_stuck_service(&c);
    // STONITH: power off the peer (kill -9 of its repd and agent), exit 7.
    write_exec(
        &c.path("fence.sh"),
        "#!/bin/sh\nd=$(dirname \"$0\")\necho \"$REP_NODE fences $REP_PEER\" >> \"$d/fence.log\"\n\
         if [ -e \"$d/pids.$REP_PEER\" ]; then kill -9 $(cat \"$d/pids.$REP_PEER\"); rm -f \"$d/pids.$REP_PEER\"; fi\n\
         exit 7\n",
    );
    cluster_keys(&c, "on-stop-failure = \"fence\"");
    let (t0, b) = stop_fails_on_switchover(&mut c, "beta holding after fencing alpha");
    println!(
        "stop failed on alpha, beta fenced it on request and holds after {} ms",
        t0.elapsed().as_millis()
    );
    let fences = std::fs::read_to_string(c.path("fence.log")).unwrap();
    assert!(fences.starts_with("beta fences alpha\n"), "{fences}");
    assert!(
        reasons(&b)
            .iter()
            .any(|r| r.contains("asks to be fenced") && r.contains("Fencing")),
        "{:?}",
        reasons(&b)
    );
    assert!(c.agent_status(0).is_none(), "alpha was fenced");
    assert_eq!(c.repd_status(1).unwrap()["role"], "Primary");
    assert!(c.path("svc-stuck.beta").exists());
}

#[test]
fn a_split_brain_runs_the_split_brain_command_once_per_node() {
    let _g = serial();
    let mut c = Cluster::new(Opts::default());
    write_exec(
        &c.path("sb.sh"),
        "#!/bin/sh\nd=$(dirname \"$0\")\n\
         echo \"$REP_NODE $REP_EVENT $REP_RESOURCE peer=$REP_PEER\" >> \"$d/sb.log\"\n",
    );
    cluster_keys(
        &c,
        &format!("split-brain-command = \"{}\"", c.path("sb.sh").display()),
    );
    c.start(false);
    // Every path cut, no fence-command: beta takes over on deadtime alone
    // (heartbeat's behaviour) and both write: a split brain.
    c.net.link(0, false);
    c.net.link(1, false);
    c.wait_agent(1, "beta holding during the partition", 20, |s| {
        s["state"] == "Holding"
    });
    let f = random_file(c.dir.path(), "a.bin", 1 << 20, 21);
    assert!(c.nbd_write(0, &f).status.success());
    let g = random_file(c.dir.path(), "b.bin", 1 << 20, 22);
    assert!(c.nbd_write(1, &g).status.success());
    c.net.link(0, true);
    c.net.link(1, true);
    for i in 0..2 {
        c.wait_agent(i, "the split-brain hook ran", 40, |s| {
            s["split_brain"]["last_hook"]
                .as_str()
                .is_some_and(|h| h.contains("exit 0"))
        });
    }
    // The partition healed: the agents settle on one holder (alpha comes first).
    c.wait_agent(1, "beta released", 20, |s| s["state"] == "Idle");
    std::thread::sleep(Duration::from_millis(2000));
    let log = std::fs::read_to_string(c.path("sb.log")).unwrap();
    let mut lines: Vec<&str> = log.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            "alpha split-brain r0 peer=beta",
            "beta split-brain r0 peer=alpha"
        ],
        "{log}"
    );
    for i in 0..2 {
        let st = c.agent_status(i).unwrap();
        assert_eq!(st["split_brain"]["detected"], true, "{st:#}");
        assert_eq!(st["split_brain"]["detections"], 1, "{st:#}");
        assert_eq!(st["split_brain"]["hook_runs"], 1, "{st:#}");
        assert!(
            events(&st).iter().any(|e| e.contains("split brain")),
            "{:?}",
            events(&st)
        );
        let text = String::from_utf8_lossy(&c.agent_cmd(i, &["status"]).stdout).into_owned();
        assert!(text.contains("SPLIT BRAIN"), "{text}");
        assert_eq!(c.repd_status(i).unwrap()["split_brain"], true);
    }
    println!("split brain: the hook ran once on each node:\n{log}");
}

/// A third namespace standing for the rest of the network: a bridge with the
/// ping node's address, and one veth from each node (`gw0` there).
struct Gateway {
    ns: String,
    nodes: [String; 2],
    addr: String,
}

impl Gateway {
    fn new(net: &Net) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let ns = format!("cag{pid}-g{k}");
        rep_testkit::netns::add_netns(&ns);
        ip(&["-n", &ns, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &ns, "link", "set", "br0", "up"]);
        let subnet = format!("10.{}.{}", pid % 250, 200 + k);
        let addr = format!("{subnet}.254");
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "br0",
        ]);
        for i in 0..2 {
            let a = format!("cg{}{k}{i}a", pid % 1_000_000);
            let b = format!("cg{}{k}{i}b", pid % 1_000_000);
            ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
            ip(&["link", "set", &a, "netns", &net.ns[i]]);
            ip(&["-n", &net.ns[i], "link", "set", "dev", &a, "name", "gw0"]);
            ip(&[
                "-n",
                &net.ns[i],
                "addr",
                "add",
                &format!("{subnet}.{}/24", i + 1),
                "dev",
                "gw0",
            ]);
            ip(&["-n", &net.ns[i], "link", "set", "gw0", "up"]);
            ip(&["link", "set", &b, "netns", &ns]);
            ip(&["-n", &ns, "link", "set", &b, "master", "br0"]);
            ip(&["-n", &ns, "link", "set", &b, "up"]);
        }
        Gateway {
            ns,
            nodes: net.ns.clone(),
            addr,
        }
    }

    /// Cut node i off the network (its link to the gateway) or reconnect it.
    fn connect(&self, i: usize, up: bool) {
        ip(&[
            "-n",
            &self.nodes[i],
            "link",
            "set",
            "gw0",
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        rep_testkit::netns::del_netns(&self.ns);
    }
}

#[test]
fn losing_the_ping_nodes_hands_the_chain_over_and_blocks_a_takeover() {
    let _g = serial();
    common::require("ping", "iputils-ping");
    let mut c = Cluster::new(Opts::default());
    let gw = Gateway::new(&c.net);
    cluster_keys(
        &c,
        &format!(
            "ping-nodes = [\"{}\"]\nping-interval-ms = 300\nping-timeout-ms = 300\nping-dead-ms = 1000",
            gw.addr
        ),
    );
    c.start(false);
    for i in 0..2 {
        c.wait_agent(i, "the ping node answers", 10, |s| {
            s["ping"]["reachable"] == 1
        });
    }
    // alpha (holding) loses the network; beta still reaches the ping node.
    let t0 = Instant::now();
    gw.connect(0, false);
    let b = c.wait_agent(1, "beta holding", 20, |s| s["state"] == "Holding");
    println!(
        "alpha lost its ping node: beta holds {} ms later ({})",
        t0.elapsed().as_millis(),
        b["decision"]
    );
    let a = c.wait_agent(0, "alpha idle", 5, |s| s["state"] == "Idle");
    assert!(
        reasons(&a)
            .iter()
            .any(|r| r.contains("ping nodes") && r.contains("Releasing")),
        "{:?}",
        reasons(&a)
    );
    assert_eq!(a["ping"]["reachable"], 0, "{a:#}");
    assert!(!reasons(&b).iter().any(|r| r.contains("Fencing")));
    assert!(!c.net.has_service_ip(0) && c.net.has_service_ip(1));
    assert!(c.path("svc-a.beta").exists() && !c.path("svc-a.alpha").exists());
    let text = String::from_utf8_lossy(&c.agent_cmd(0, &["status"]).stdout).into_owned();
    assert!(text.contains("0 of 1 answer"), "{text}");

    // beta dies; alpha, still cut off, does not take over.
    c.kill_everything(1);
    std::thread::sleep(Duration::from_millis(c.opts.deadtime_ms + 2000));
    let a = c.agent_status(0).unwrap();
    assert_eq!(a["peer"]["alive"], false, "{a:#}");
    assert_eq!(a["state"], "Idle", "{}", c.debug());
    assert!(
        a["decision"].as_str().unwrap().contains("ping node"),
        "{a:#}"
    );
    assert_eq!(c.repd_status(0).unwrap()["role"], "Secondary");
    // Back on the network: it takes over.
    gw.connect(0, true);
    let t0 = Instant::now();
    c.wait_agent(0, "alpha holding once its ping node answers", 15, |s| {
        s["state"] == "Holding"
    });
    println!(
        "alpha reaches its ping node again: holds {} ms later",
        t0.elapsed().as_millis()
    );
    assert!(c.net.has_service_ip(0));
}
