//! Quorum with a witness, with real processes: repd and cluster-agent on two
//! nodes and `cluster-agent --witness` on a third, each in its own network
//! namespace, joined by veth pairs; a writer on each node writes through its
//! node's NBD export and notes when every write was acknowledged.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{random_file, Cluster, Opts, NODES};

/// Writes `file` through node i's NBD export over and over, one write at a
/// time; records the moment each was acknowledged (on this host's clock,
/// shared by both writers). A write that does not come back is abandoned
/// when the writer stops.
struct Writer {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Instant>>>,
    /// Writes that came back with an error.
    fails: Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(ns: &str, uri: String, file: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let fails = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, a, f, ns) = (stop.clone(), acks.clone(), fails.clone(), ns.to_string());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let mut child = Command::new("ip")
                    .args(["netns", "exec", &ns, "nbdcopy"])
                    .arg(&file)
                    .arg(&uri)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                let ok = loop {
                    if let Some(st) = child.try_wait().unwrap() {
                        break st.success();
                    }
                    if s.load(Ordering::Relaxed) {
                        let _ = child.kill();
                        let _ = child.wait();
                        break false;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                };
                if ok {
                    a.lock().unwrap().push(Instant::now());
                } else {
                    if !s.load(Ordering::Relaxed) {
                        f.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        Writer {
            stop,
            acks,
            fails,
            thread: Some(thread),
        }
    }

    fn count(&self) -> usize {
        self.acks.lock().unwrap().len()
    }

    fn failed(&self) -> usize {
        self.fails.load(Ordering::Relaxed)
    }

    fn finish(mut self) -> Vec<Instant> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.acks.lock().unwrap().clone()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Both nodes and the witness started (no service IP), alpha Primary.
fn witnessed(opts: Opts) -> Cluster {
    let mut c = Cluster::new(Opts {
        witness: true,
        service_ip: false,
        ..opts
    });
    c.start_witness();
    c.start(true);
    c
}

/// A writer on alpha's export, once its first five writes were acknowledged.
fn acked_writer(c: &Cluster, file: PathBuf) -> Writer {
    let wa = Writer::start(&c.net.ns[0], c.nbd_uri(0), file);
    wait_for(
        "alpha's writer to get acks",
        20,
        || wa.count() >= 5,
        || c.debug(),
    );
    wa
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool, debug: impl Fn() -> String) {
    common::poll(
        what,
        secs,
        Duration::from_millis(20),
        || f().then_some(()),
        debug,
    );
}

#[test]
fn isolated_primary_suspends_before_the_witness_lets_the_peer_take_over() {
    let c = witnessed(Opts::default());
    for i in 0..2 {
        let st = c.wait_agent(i, "quorum with the witness", 20, |s| {
            s["quorum"]["has_quorum"] == true
                && s["quorum"]["witness_reachable"] == true
                && s["quorum"]["votes"] == 3
        });
        assert_eq!(st["quorum"]["io_suspended"], false);
    }
    // The readable status says it too.
    let text = String::from_utf8(c.agent_cmd(0, &["status"]).stdout).unwrap();
    assert!(text.contains("quorum:   yes (3 of 3 votes"), "{text}");
    assert!(text.contains("reachable"), "{text}");
    // And so does the witness's own status: both nodes heard within deadtime.
    let ws = c
        .witness_status()
        .expect("the witness answers status --json");
    assert_eq!(ws["role"], "witness", "{ws}");
    assert_eq!(ws["dropped_packets"], 0, "{ws}");
    let heard: Vec<(String, u64)> = ws["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap_or_default().to_owned(),
                n["last_heard_ms_ago"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect();
    assert_eq!(heard.len(), 2, "{ws}");
    assert!(heard.iter().all(|(_, ms)| *ms < 2000), "{ws}");
    let wtext = String::from_utf8(c.witness_cmd(false).stdout).unwrap();
    assert!(
        wtext.contains("witness of r0") && wtext.contains("alpha") && wtext.contains("heard"),
        "{wtext}"
    );

    let file = random_file(c.dir.path(), "block", 4096, 7);
    let wa = Writer::start(&c.net.ns[0], c.nbd_uri(0), file.clone());
    let wb = Writer::start(&c.net.ns[1], c.nbd_uri(1), file);
    wait_for(
        "alpha's writer to get acks",
        20,
        || wa.count() >= 5,
        || c.debug(),
    );
    assert_eq!(
        wb.count(),
        0,
        "beta's export accepted a write while Secondary"
    );

    // alpha loses both heartbeat paths (and the replication link with the
    // first) and the witness; the witness still sees beta.
    let cut = Instant::now();
    c.net.link(0, false);
    c.net.link(1, false);
    c.net.witness_link(0, false);

    let st = c.wait_agent(1, "beta to take over", 30, |s| {
        s["state"] == "Holding" && s["holds_role"] == true
    });
    let decision = st["decision"].as_str().unwrap_or_default().to_string();
    assert!(decision.contains("witness"), "{decision}");
    wait_for(
        "beta's writer to get acks",
        20,
        || wb.count() >= 3,
        || c.debug(),
    );
    let asked = Instant::now();
    let sa = c.wait_agent(0, "alpha suspended without quorum", 5, |s| {
        s["quorum"]["io_suspended"] == true
    });
    // When the agent saw quorum go (its clock, mapped onto ours).
    let lost = sa["events"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["what"].as_str().unwrap_or("").starts_with("quorum lost"))
        .map(|e| {
            let ago = sa["uptime_ms"].as_u64().unwrap() - e["at"].as_u64().unwrap();
            asked.checked_sub(Duration::from_millis(ago)).unwrap()
        });
    assert_eq!(sa["quorum"]["has_quorum"], false, "{sa}");
    assert_eq!(sa["quorum"]["witness_reachable"], false, "{sa}");
    let repd_a = c.repd_status(0).unwrap();
    assert_eq!(repd_a["suspended"], "hold", "{repd_a}");
    assert_eq!(repd_a["role"], "Primary", "{repd_a}");
    std::thread::sleep(Duration::from_millis(500));
    let a_before = wa.count();
    let acks_a = wa.finish();
    let acks_b = wb.finish();
    let last_a = *acks_a.last().unwrap();
    let first_b = *acks_b.first().unwrap();
    eprintln!(
        "alpha: {} writes acked, the last {} ms after the cut; beta: {} writes acked, the first {} ms after the cut",
        acks_a.len(),
        last_a.saturating_duration_since(cut).as_millis(),
        acks_b.len(),
        first_b.saturating_duration_since(cut).as_millis(),
    );
    if let Some(l) = lost {
        eprintln!(
            "alpha's agent saw quorum lost {} ms after the cut (deadtime 2000 ms)",
            l.saturating_duration_since(cut).as_millis()
        );
        assert!(l < first_b, "beta acked a write before alpha lost quorum");
    }
    assert!(
        last_a < first_b,
        "alpha acked a write {} ms after beta's first: two nodes accepted writes at once\n{}",
        last_a.saturating_duration_since(first_b).as_millis(),
        c.debug()
    );
    assert_eq!(
        acks_a.len(),
        a_before,
        "alpha acked a write while suspended"
    );
    // The witness remembers alpha as Outdated (it granted beta's takeover).
    let mem = c.witness_memory();
    let why = mem["nodes"]["alpha"]["outdated"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("beta was granted"), "{mem}");
    assert!(c.witness_log().contains("vote granted"));
    // The witness's status shows the vote it gave beta, alpha silent and
    // remembered Outdated.
    let ws = c
        .witness_status()
        .expect("the witness answers status --json");
    let node = |name: &str| {
        ws["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(node("beta")["last_vote"]["granted"], true, "{ws}");
    assert!(node("alpha")["outdated"].is_string(), "{ws}");
    assert!(
        node("alpha")["last_heard_ms_ago"]
            .as_u64()
            .unwrap_or(u64::MAX)
            >= 2000,
        "{ws}"
    );

    // The paths heal: alpha hears that beta took over and lets go (its held
    // writes fail); beta keeps the resources although alpha is preferred.
    c.net.witness_link(0, true);
    c.net.link(0, true);
    c.net.link(1, true);
    let sa = c.wait_agent(0, "alpha released", 30, |s| {
        s["state"] == "Idle" && s["holds_role"] == false
    });
    assert_eq!(sa["quorum"]["io_suspended"], false, "{sa}");
    let says = sa["quorum"]["witness_says"].as_str().unwrap_or_default();
    assert!(says.contains("Outdated"), "{sa}");
    c.wait_repd(0, "alpha Secondary", 10, |s| s["role"] == "Secondary");
    let sb = c.agent_status(1).unwrap();
    assert_eq!(sb["state"], "Holding", "{}", c.debug());
    assert!(!c.path("svc-a.alpha").exists() && c.path("svc-a.beta").exists());
    eprintln!(
        "{}",
        NODES.join(" and ") + " settled: beta holds, alpha released"
    );
}

#[test]
fn a_primary_that_lost_its_peer_writes_on_only_once_the_witness_knows_and_the_stale_peer_never_takes_over(
) {
    let c = witnessed(Opts::default());
    c.wait_repd(0, "alpha frozen on disconnect armed", 10, |s| {
        s["freeze_on_disconnect"] == true
    });
    let beta_gen = c.repd_status(1).unwrap()["generations"]["current"]
        .as_str()
        .unwrap()
        .to_string();
    let file = random_file(c.dir.path(), "block", 4096, 9);
    let wa = acked_writer(&c, file);

    // The replication link (and heartbeat path 0) breaks; path 1 and the
    // witness still work. alpha's repd freezes when it notices, starts a
    // new data generation, and writes on once the witness acknowledged it.
    let cut = Instant::now();
    c.net.link(0, false);
    let ra = c.wait_repd(0, "alpha alone with a new generation", 20, |s| {
        s["connection"] != "Connected" && s["generations"]["bitmap"] == beta_gen.as_str()
    });
    let alpha_gen = ra["generations"]["current"].as_str().unwrap().to_string();
    let n = wa.count();
    wait_for(
        "alpha's writes to go on",
        20,
        || wa.count() >= n + 5,
        || c.debug(),
    );
    let mem = c.witness_memory();
    let remembered = mem["nodes"]["alpha"]["gens"]["current"].as_u64().unwrap();
    assert_eq!(format!("{remembered:016X}"), alpha_gen, "{mem}");
    let sa = c.agent_status(0).unwrap();
    assert_eq!(sa["state"], "Holding", "{}", c.debug());
    assert_eq!(sa["quorum"]["io_suspended"], false, "{sa}");
    assert!(
        c.agent_log(0).contains("resumed") || c.agent_log(0).contains("ResumeIo"),
        "{}",
        c.agent_log(0)
    );
    eprintln!(
        "alpha wrote on alone {} ms after the cut",
        cut.elapsed().as_millis()
    );

    // Meanwhile path 1 carried alpha's outdate-peer request: beta's disk
    // is Outdated.
    c.wait_repd(1, "beta Outdated", 10, |s| s["disk"] == "Outdated");
    // Now alpha is cut off from everything. beta's data is older than what
    // the witness saw of alpha (and Outdated): it must not take over
    // (alpha's writes made alone would be lost).
    c.net.link(1, false);
    c.net.witness_link(0, false);
    c.wait_agent(0, "alpha suspended", 10, |s| {
        s["quorum"]["io_suspended"] == true
    });
    let sb = c.wait_agent(1, "beta refused by the witness", 20, |s| {
        s["peer"]["alive"] == false
            && s["quorum"]["witness_says"]
                .as_str()
                .is_some_and(|w| w.contains("older") || w.contains("Outdated"))
    });
    std::thread::sleep(Duration::from_millis(3000));
    let sb2 = c.agent_status(1).unwrap();
    assert_eq!(sb2["holds_role"], false, "{}", c.debug());
    assert_eq!(sb2["state"], "Idle", "{}", c.debug());
    let decision = sb2["decision"].as_str().unwrap_or_default();
    assert!(
        decision.contains("no quorum") && decision.contains("the witness"),
        "{decision}\n{sb}"
    );
    // The witness saw alpha's newer generation, whose predecessor is beta's
    // current one, before alpha wrote alone: beta's data is older either way
    // (which of the two reasons the witness names first depends on timing).
    let mem = c.witness_memory();
    let bitmap = mem["nodes"]["alpha"]["gens"]["bitmap"].as_u64().unwrap();
    assert_eq!(format!("{bitmap:016X}"), beta_gen, "{mem}");
    assert_eq!(c.repd_status(1).unwrap()["role"], "Secondary");
    drop(wa);
}

#[test]
fn a_short_loss_of_quorum_holds_writes_and_resumes_them() {
    let c = witnessed(Opts {
        deadtime_ms: 4000,
        ..Opts::default()
    });
    c.wait_agent(0, "quorum", 20, |s| s["quorum"]["votes"] == 3);
    let file = random_file(c.dir.path(), "block", 4096, 11);
    let wa = acked_writer(&c, file);
    // alpha loses everything for less than deadtime.
    let lo_cut = Instant::now();
    c.net.link(0, false);
    c.net.link(1, false);
    c.net.witness_link(0, false);
    let sa = c.wait_agent(0, "alpha suspended", 10, |s| {
        s["quorum"]["io_suspended"] == true
    });
    assert_eq!(sa["state"], "Holding");
    let held_at = wa.count();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(wa.count(), held_at, "acked while suspended");
    // Back well within deadtime: nobody took over, the writes resume (once
    // the witness knows alpha's new data generation: its repd lost the
    // replication link too).
    c.net.link(0, true);
    c.net.link(1, true);
    c.net.witness_link(0, true);
    c.wait_agent(0, "alpha resumed", 10, |s| {
        s["quorum"]["io_suspended"] == false
    });
    eprintln!(
        "quorum was lost and back within {} ms",
        lo_cut.elapsed().as_millis()
    );
    wait_for(
        "alpha's writes to go on",
        20,
        || wa.count() >= held_at + 5,
        || c.debug(),
    );
    let sb = c.agent_status(1).unwrap();
    assert_eq!(sb["holds_role"], false, "{}", c.debug());
    let sa = c.agent_status(0).unwrap();
    assert_eq!(sa["state"], "Holding", "{}", c.debug());
    assert!(c.agent_log(0).contains("quorum back: writes resumed"));
    drop(wa);
}

/// The repd verbs the agent uses, by hand: `repctl suspend-io [--fail]`
/// and `resume-io`, seen by an NBD client.
#[test]
fn repctl_suspend_io_holds_or_fails_writes_and_resume_io_lets_them_in() {
    let mut c = Cluster::new(Opts {
        service_ip: false,
        ..Opts::default()
    });
    c.prepare(true);
    let file = random_file(c.dir.path(), "block", 4096, 13);
    assert!(c.nbd_write(0, &file).status.success());
    c.repctl_ok(0, &["suspend-io"]);
    let out = c.repctl_ok(0, &["status"]);
    assert!(out.contains("I/O SUSPENDED"), "{out}");
    let wa = Writer::start(&c.net.ns[0], c.nbd_uri(0), file.clone());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(wa.count(), 0, "a write was acknowledged while suspended");
    c.repctl_ok(0, &["resume-io"]);
    wait_for(
        "the held write to complete",
        10,
        || wa.count() >= 3,
        || c.debug(),
    );
    drop(wa);
    c.repctl_ok(0, &["suspend-io", "--fail"]);
    assert_eq!(c.repd_status(0).unwrap()["suspended"], "fail");
    let o = c.nbd_write(0, &file);
    assert!(!o.status.success(), "a write succeeded in io-error mode");
    c.repctl_ok(0, &["resume-io"]);
    assert!(c.nbd_write(0, &file).status.success());
    assert_eq!(
        c.repd_status(0).unwrap()["suspended"],
        serde_json::Value::Null
    );
}

#[test]
fn with_on_no_quorum_io_error_the_isolated_primary_fails_writes() {
    let c = witnessed(Opts {
        on_no_quorum: Some("io-error"),
        ..Opts::default()
    });
    c.wait_agent(0, "quorum", 20, |s| s["quorum"]["votes"] == 3);
    let st = c.agent_status(0).unwrap();
    assert_eq!(st["on_no_quorum"], "io-error");
    let file = random_file(c.dir.path(), "block", 4096, 17);
    let wa = acked_writer(&c, file);
    assert_eq!(wa.failed(), 0);
    c.net.link(0, false);
    c.net.link(1, false);
    c.net.witness_link(0, false);
    c.wait_repd(0, "alpha failing writes", 10, |s| s["suspended"] == "fail");
    let acked = wa.count();
    // The client gets errors (and no hang): held writes and new ones.
    wait_for(
        "alpha's writes to fail",
        10,
        || wa.failed() >= 3,
        || c.debug(),
    );
    c.wait_agent(1, "beta to take over", 30, |s| s["holds_role"] == true);
    let acks = wa.finish();
    assert_eq!(acks.len(), acked, "alpha acked a write while failing them");
}
