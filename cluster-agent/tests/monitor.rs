//! The chain's monitors with real repd nodes in two network namespaces (the
//! rig of `failover.rs`): a service of the chain (a real process behind a
//! pid file) killed behind the agent's back is restarted in place, the
//! resources after a failed one restart with it in order, and at
//! migration-threshold the chain moves to the peer; `cluster-agent status`
//! shows the fail counts and the ban, `cluster-agent cleanup` lifts it.
//! Needs root, iproute2 and libnbd-bin (nbdcopy).

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{serial, write_exec, Cluster, Opts};
use serde_json::Value;

/// The LSB script of a real daemon (`sleep`, in its own session) with a
/// pid file; `status` says 0 while the process lives, 1 when it died and
/// left its pid file (LSB "dead and pid file exists"), 3 when stopped.
const DAEMON: &str = r#"#!/bin/sh
d=$(dirname "$0"); pf="$d/daemon.$REP_NODE.pid"
alive() { [ -e "$pf" ] && p=$(cat "$pf") && [ -e "/proc/$p/stat" ] && ! grep -q ') Z' "/proc/$p/stat"; }
case "$1" in
start) alive && exit 0
  echo "$REP_NODE start svc-daemon" >> "$d/chain.log"
  setsid sleep 100000 </dev/null >/dev/null 2>&1 &
  echo $! > "$pf";;
stop) echo "$REP_NODE stop svc-daemon" >> "$d/chain.log"
  [ -e "$pf" ] && kill -9 "$(cat "$pf")" 2>/dev/null; rm -f "$pf";;
status) [ -e "$pf" ] || exit 3; alive || exit 1;;
*) exit 2;;
esac
"#;

/// The daemon's pid on node `node`, when its pid file names a live process.
fn daemon_pid(c: &Cluster, node: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(c.path(&format!("daemon.{node}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    (!stat.contains(") Z")).then_some(pid)
}

fn kill9(pid: u32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

/// Kills what the daemon script started, whatever the test did.
struct Daemons(PathBuf);

impl Drop for Daemons {
    fn drop(&mut self) {
        for n in common::NODES {
            if let Ok(p) = std::fs::read_to_string(self.0.join(format!("daemon.{n}.pid"))) {
                kill9(p.trim().parse().unwrap_or(0));
            }
        }
    }
}

/// The test cluster with every resource monitored every 500 ms, the move at
/// the second failure, and the daemon at the end of the chain (chain index
/// 4: device, svc-a, svc-b, ip, svc-daemon).
fn cluster() -> (Cluster, Daemons) {
    let c = Cluster::new(Opts::default());
    let script = c.path("svc-daemon");
    write_exec(&script, DAEMON);
    let t = std::fs::read_to_string(&c.config).unwrap();
    let mut t = t.replacen(
        "[cluster]\n",
        "[cluster]\nmonitor-interval-ms = 500\nmonitor-timeout-ms = 5000\nmigration-threshold = 2\n",
        1,
    );
    t.push_str(&format!(
        "[[cluster.resource]]\ntype = \"service\"\nscript = \"{}\"\ntimeout-ms = 10000\n",
        script.display()
    ));
    std::fs::write(&c.config, t).unwrap();
    let d = Daemons(c.dir.path().to_owned());
    (c, d)
}

fn monitor(st: &Value, chain_index: usize) -> &Value {
    &st["chain"][chain_index]["monitor"]
}

/// The chain log's lines from `from` on.
fn log_since(c: &Cluster, from: usize) -> Vec<String> {
    c.chain_log().get(from..).unwrap_or_default().to_vec()
}

#[test]
fn a_killed_service_is_restarted_then_the_chain_moves_to_the_peer_at_migration_threshold() {
    let _g = serial();
    let (mut c, _daemons) = cluster();
    c.start(false);
    let first = c.wait_agent(0, "the daemon monitored on alpha", 10, |s| {
        monitor(s, 4)["last_result"] == "running"
    });
    assert_eq!(monitor(&first, 4)["failures"], 0, "{first:#}");
    assert_eq!(monitor(&first, 4)["threshold"], 2, "{first:#}");
    let pid = daemon_pid(&c, "alpha").expect("the daemon runs on alpha");

    // svc-a (second in the chain) dies: everything after it stops right to
    // left, then it and the rest start again; the device stays Primary.
    let from = c.chain_log().len();
    std::fs::remove_file(c.path("svc-a.alpha")).unwrap();
    let st = c.wait_agent(0, "svc-a restarted", 20, |s| {
        s["state"] == "Holding" && monitor(s, 1)["failures"] == 1
    });
    c.wait_agent(0, "the chain whole again", 20, |s| s["state"] == "Holding");
    assert_eq!(
        log_since(&c, from),
        [
            "alpha stop svc-daemon",
            "alpha stop svc-b",
            "alpha stop svc-a",
            "alpha start svc-a",
            "alpha start svc-b",
            "alpha start svc-daemon"
        ],
        "{st:#}"
    );
    assert_eq!(c.repd_status(0).unwrap()["role"], "Primary");
    let pid = daemon_pid(&c, "alpha")
        .filter(|p| *p != pid)
        .expect("a new daemon");

    // The daemon is killed behind the agent's back: restarted in place.
    let from = c.chain_log().len();
    kill9(pid);
    let st = c.wait_agent(0, "the daemon restarted, failcount 1", 20, |s| {
        s["state"] == "Holding"
            && monitor(s, 4)["failures"] == 1
            && monitor(s, 4)["last_result"] == "running"
    });
    assert_eq!(
        log_since(&c, from),
        ["alpha stop svc-daemon", "alpha start svc-daemon"]
    );
    let pid = daemon_pid(&c, "alpha")
        .filter(|p| *p != pid)
        .expect("a new daemon");
    assert!(st["ban"].is_null(), "{st:#}");
    let text = String::from_utf8_lossy(&c.agent_cmd(0, &["status"]).stdout).to_string();
    assert!(text.contains("failures 1/2"), "{text}");
    assert_eq!(c.agent_status(1).unwrap()["state"], "Idle");

    // Killed again: the second failure is the threshold, the chain moves.
    kill9(pid);
    let b = c.wait_agent(1, "beta holding", 30, |s| s["state"] == "Holding");
    let a = c.wait_agent(0, "alpha idle", 10, |s| s["state"] == "Idle");
    assert_eq!(c.repd_status(1).unwrap()["role"], "Primary");
    assert_eq!(c.repd_status(0).unwrap()["role"], "Secondary");
    assert!(daemon_pid(&c, "beta").is_some(), "{b:#}");
    assert!(daemon_pid(&c, "alpha").is_none());
    assert!(c.net.has_service_ip(1) && !c.net.has_service_ip(0));
    assert!(c.path("svc-a.beta").exists() && !c.path("svc-a.alpha").exists());
    let ban = &a["ban"];
    assert!(
        ban["reason"]
            .as_str()
            .unwrap()
            .contains("failed its monitor 2 time(s) here (migration-threshold 2)"),
        "{a:#}"
    );
    assert!(ban["left_ms"].as_u64().unwrap() > 0, "{a:#}");
    assert_eq!(monitor(&a, 4)["failures"], 2, "{a:#}");
    let text = String::from_utf8_lossy(&c.agent_cmd(0, &["status"]).stdout).to_string();
    assert!(text.contains("BANNED from the chain"), "{text}");
    println!("moved: {}", a["handover"]);

    // An operator clears it (crm_resource --cleanup).
    let o = c.agent_cmd(0, &["cleanup"]);
    assert!(o.status.success(), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("resource 3: 2 failure(s)") && out.contains("ban"),
        "{out}"
    );
    let a = c.agent_status(0).unwrap();
    assert!(a["ban"].is_null(), "{a:#}");
    assert_eq!(monitor(&a, 4)["failures"], 0, "{a:#}");
    let o = c.agent_cmd(0, &["cleanup", "9"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no resource 9"));
    // Beta keeps the chain (no auto-failback).
    assert_eq!(c.agent_status(1).unwrap()["state"], "Holding");
}
