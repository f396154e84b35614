//! `repctl events`, the event stream, driven the way a user would: two
//! watchers with `--now --json` on a node while the test promotes, syncs,
//! disconnects, writes, resyncs, verifies and switches roles; and a
//! watcher that never reads while the Primary writes.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{primary_disk_on_small_tmpfs, random_file, require, Cluster, Opts, NODES};
use rep_control::events::Event;
use rep_control::protocol::{ControlCmd, Verb};
use serde_json::Value;

fn tools() {
    require("nbdcopy", "libnbd-bin");
    require("qemu-io", "qemu-utils");
}

/// A `repctl events` process and the lines it printed so far.
struct Watcher {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn start(c: &Cluster, i: usize, args: &[&str]) -> Self {
        let mut cmd = c.node(i).command();
        cmd.arg("events").args(args).stdout(Stdio::piped());
        Self::from_command(cmd)
    }

    /// `repctl events --now --json` once its stream is subscribed (its
    /// state printed up to `exists -`): a change made after this returns
    /// is in it, which a watcher still starting could miss.
    fn subscribed(c: &Cluster, i: usize) -> Self {
        let w = Self::start(c, i, &["--now", "--json"]);
        w.wait_for("the end of the state", |e| is(e, "exists", "-", &[]));
        w
    }

    fn from_command(mut cmd: std::process::Command) -> Self {
        let mut child = cmd.spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                l.lock().unwrap().push(line);
            }
        });
        Watcher {
            child,
            lines,
            reader: Some(reader),
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn events(&self) -> Vec<Value> {
        self.lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// Waits until a printed event satisfies `f`.
    fn wait_for(&self, what: &str, f: impl Fn(&Value) -> bool) {
        self.wait_for_from(0, what, f);
    }

    /// Waits until an event printed after the first `from` satisfies `f`.
    fn wait_for_from(&self, from: usize, what: &str, f: impl Fn(&Value) -> bool) {
        let t0 = Instant::now();
        while !self.events().iter().skip(from).any(&f) {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "no event for {what}; got:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to end (repd stopped); its exit status.
    fn finish(mut self) -> (bool, Vec<String>) {
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "repctl events did not end after repd stopped"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        (status.success(), self.lines())
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kind object` plus, for each `(key, value)`, that field.
fn is(e: &Value, kind: &str, object: &str, fields: &[(&str, &str)]) -> bool {
    e["kind"] == kind
        && e["object"] == object
        && fields
            .iter()
            .all(|(k, v)| e[*k].as_str().is_some_and(|x| x == *v))
}

/// The position of the first event at or after `from` that satisfies `f`.
fn find_from(events: &[Value], from: usize, what: &str, f: impl Fn(&Value) -> bool) -> usize {
    events
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, e)| f(e))
        .map(|(i, _)| i)
        .unwrap_or_else(|| {
            let rest: Vec<String> = events.iter().skip(from).map(Value::to_string).collect();
            panic!(
                "no {what} after event {from}; from there:\n{}",
                rest.join("\n")
            )
        })
}

/// The `exists` lines say what `status --json` says.
fn assert_state_matches_status(events: &[Value], st: &Value) {
    let of = |object: &str| {
        events
            .iter()
            .find(|e| e["kind"] == "exists" && e["object"] == object)
            .unwrap_or_else(|| panic!("no exists {object}"))
            .clone()
    };
    assert_eq!(of("resource")["role"], st["role"]);
    assert_eq!(of("device")["disk"], st["disk"]);
    let conn = of("connection");
    assert_eq!(conn["connection"], st["connection"]);
    assert_eq!(conn["conn-name"], st["peer"]);
    let peer_role = st["peer_role"].as_str().unwrap_or("Unknown");
    assert_eq!(conn["role"], peer_role);
    assert_eq!(of("peer-device")["peer-disk"], st["peer_disk"]);
    for e in events {
        assert!(e["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{e}");
        assert_eq!(e["name"], st["resource"]);
    }
}

fn qemu_write(c: &Cluster, i: usize, cmd: &str) {
    let o = c.client(i, "qemu-io", &["-f", "raw", &c.nbd_uri(i), "-c", cmd]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    c.wait(i, "the NBD client gone", 10, |s| s["nbd_clients"] == 0);
}

/// Two watchers on alpha see the same lines: the state first, then each
/// change while the test promotes, syncs, disconnects, writes alone,
/// reconnects (a resync), verifies and switches roles; and when alpha
/// stops, `destroy` lines and exit 0.
#[test]
fn two_watchers_see_every_change_in_order() {
    tools();
    let c = Cluster::new(Opts {
        disk_mib: 16,
        ..Opts::default()
    });
    c.up(0);
    c.up(1);
    for i in 0..2 {
        c.wait(i, "connected", 20, |s| s["connection"] == "Connected");
    }
    let st = c.status(0);
    let w1 = Watcher::start(&c, 0, &["--now", "--json"]);
    let w2 = Watcher::start(&c, 0, &["--now", "--json"]);
    let text = Watcher::start(&c, 0, &["--now", "--timestamps"]);
    let end_of_state = |e: &Value| is(e, "exists", "-", &[]);
    w1.wait_for("the end of the state", end_of_state);
    w2.wait_for("the end of the state", end_of_state);
    while !text.lines().iter().any(|l| l.ends_with(" exists -")) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let state = w1.events();
    let n_state = state.iter().position(end_of_state).unwrap();
    assert_state_matches_status(&state[..n_state], &st);

    c.ok(0, &["primary", "--force"]);
    c.wait_synced(60);
    c.ok(0, &["disconnect"]);
    c.wait(0, "StandAlone", 20, |s| s["connection"] == "StandAlone");
    qemu_write(&c, 0, "write -P 0x5a 1M 2M");
    c.ok(0, &["connect"]);
    c.wait_synced(60);
    c.ok(0, &["verify"]);
    c.ok(0, &["secondary"]);
    c.ok(1, &["primary"]);
    c.wait(0, "the peer Primary", 20, |s| s["peer_role"] == "Primary");
    w1.wait_for("the peer's promotion", |e| {
        is(e, "change", "connection", &[("role", "Primary")])
    });
    c.ok(1, &["secondary"]);
    c.ok(0, &["down"]);

    let (ok1, l1) = w1.finish();
    let (ok2, l2) = w2.finish();
    let (ok3, l3) = text.finish();
    assert!(
        ok1 && ok2 && ok3,
        "repctl events failed:\n{}",
        l1.join("\n")
    );
    // The same changes, byte for byte, after each one's own state.
    let changes = |l: &[String]| -> Vec<String> {
        let at = l
            .iter()
            .position(|x| x.contains(r#""object":"-""#))
            .unwrap();
        l[at + 1..].to_vec()
    };
    assert_eq!(changes(&l1), changes(&l2));
    // The text watcher printed the same events, as events2-like lines.
    let at = l3.iter().position(|x| x.ends_with(" exists -")).unwrap();
    let as_text: Vec<String> = changes(&l1)
        .iter()
        .map(|l| serde_json::from_str::<Event>(l).unwrap().text(true))
        .collect();
    assert_eq!(l3[at + 1..], as_text[..]);
    assert!(as_text
        .iter()
        .any(|l| l.ends_with("change resource name:r0 role:Primary")));

    assert_changes_in_order(&w1_events(&l1), n_state);
}

/// The changes the scenario makes, in order, after the state's `n_state` lines.
fn assert_changes_in_order(ev: &[Value], n_state: usize) {
    let mut at = n_state;
    let mut step = |what: &str, f: &dyn Fn(&Value) -> bool| {
        at = find_from(ev, at + 1, what, f);
    };
    step("the promotion", &|e| {
        is(e, "change", "resource", &[("role", "Primary")])
    });
    step("the initial sync", &|e| {
        is(e, "change", "peer-device", &[("replication", "SyncSource")])
    });
    step("the end of the sync", &|e| {
        is(e, "change", "peer-device", &[("peer-disk", "UpToDate")])
    });
    step("the disconnect", &|e| {
        is(e, "change", "connection", &[("connection", "StandAlone")])
    });
    step("the resync", &|e| {
        is(e, "change", "peer-device", &[("replication", "SyncSource")])
    });
    step("the end of the resync", &|e| {
        is(
            e,
            "change",
            "peer-device",
            &[("replication", "Established")],
        )
    });
    step("the verify", &|e| {
        is(
            e,
            "change",
            "peer-device",
            &[("replication", "VerifySource")],
        )
    });
    step("the verify result", &|e| {
        is(e, "call", "verify", &[("conn-name", NODES[1])]) && e["out-of-sync"] == 0
    });
    step("the demotion", &|e| {
        is(e, "change", "resource", &[("role", "Secondary")])
    });
    step("the peer's promotion", &|e| {
        is(e, "change", "connection", &[("role", "Primary")])
    });
    step("the peer's demotion", &|e| {
        is(e, "change", "connection", &[("role", "Secondary")])
    });
    step("the stop", &|e| is(e, "destroy", "resource", &[]));
    assert_eq!(at, ev.len() - 1, "lines after destroy resource");
}

fn w1_events(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A split brain is a `call split-brain` line and an `error` object of
/// its kind, which status shows as `last_error`; after the recovery the
/// error ends (`ended`) and, the linger later, is destroyed: it clears
/// with its condition.
#[test]
fn a_split_brain_is_reported_and_its_error_clears_after_the_recovery() {
    tools();
    let c = Cluster::new(Opts {
        disk_mib: 16,
        ..Opts::default()
    });
    c.up(0);
    c.up(1);
    c.ok(0, &["primary", "--force"]);
    c.wait_synced(60);
    let w = Watcher::subscribed(&c, 1);
    c.ok(0, &["disconnect"]);
    c.ok(1, &["disconnect"]);
    c.ok(1, &["primary"]);
    qemu_write(&c, 0, "write -P 0xa1 0 1M");
    qemu_write(&c, 1, "write -P 0xb2 2M 1M");
    c.ok(0, &["connect"]);
    c.ok(1, &["connect"]);
    let st = c.wait(1, "split brain", 20, |s| s["split_brain"] == true);
    w.wait_for("the split brain", |e| is(e, "call", "split-brain", &[]));
    w.wait_for("its error", |e| {
        is(e, "create", "error", &[("error", "split-brain")])
            && e["message"].as_str() == st["last_error"].as_str()
    });
    let errors = st["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e["kind"] == "split-brain" && e["ended"] == false),
        "{st:#}"
    );
    c.ok(1, &["secondary"]);
    c.ok(1, &["connect", "--discard-my-data"]);
    c.ok(0, &["connect"]);
    c.wait_synced(60);
    w.wait_for("the error's end", |e| {
        is(e, "change", "error", &[("error", "split-brain")]) && e["ended"] == true
    });
    let linger = replication_proto::machine::ERROR_LINGER_MS / 1000;
    c.wait(1, "the error cleared", linger + 20, |s| {
        s["errors"]
            .as_array()
            .is_some_and(|e| e.iter().all(|e| e["kind"] != "split-brain"))
    });
    w.wait_for("the error destroyed", |e| {
        is(e, "destroy", "error", &[("error", "split-brain")])
    });
}

/// A local write that fails is an `error` object of kind `local-io`; once
/// the disk has room and a write succeeds, its condition ended.
#[test]
fn a_failed_local_write_is_an_error_until_a_write_succeeds() {
    tools();
    let c = Cluster::new(Opts::default());
    let small = primary_disk_on_small_tmpfs(&c);
    c.up(0);
    c.up(1);
    c.ok(0, &["primary", "--force"]);
    c.wait_synced(60);
    let w = Watcher::subscribed(&c, 0);
    let src = random_file(c.dir.path(), "big.bin", 32 << 20, 7);
    let o = c.client(0, "nbdcopy", &[src.to_str().unwrap(), &c.nbd_uri(0)]);
    assert!(!o.status.success(), "writes into a full disk succeeded");
    w.wait_for("the I/O error", |e| {
        is(e, "create", "error", &[("error", "local-io")])
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("local write"))
    });
    let st = c.status(0);
    assert!(
        st["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "local-io"),
        "{st:#}"
    );
    // One more write that fails, so that the error's condition lasts now.
    let o = c.client(
        0,
        "qemu-io",
        &["-f", "raw", &c.nbd_uri(0), "-c", "write 44M 64k"],
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("write failed"),
        "a write into the full disk succeeded: {o:?}"
    );
    c.wait(0, "the NBD client gone", 10, |s| s["nbd_clients"] == 0);
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=200m"])
        .arg(&small.0)
        .status()
        .unwrap();
    assert!(grown.success());
    // Let the failed write's lines come in, then one that succeeds.
    std::thread::sleep(Duration::from_millis(500));
    let before = w.events().len();
    qemu_write(&c, 0, "write -P 0x11 30M 64k");
    w.wait_for_from(before, "the error's end", |e| {
        is(e, "change", "error", &[("error", "local-io")]) && e["ended"] == true
    });
}

/// `repctl events` with no resource named watches every resource of the
/// config directory (`drbdsetup events2 all`): both states, one `exists -`,
/// then the changes of each under its own name; it ends well when both
/// stop.
#[test]
fn events_without_a_resource_merges_every_resource() {
    let shared = common::target_tmp().join(format!("events-run-{}", std::process::id()));
    let mk = |r| Opts {
        resource: r,
        run_dir: Some(shared.clone()),
        disk_mib: 16,
        ..Opts::default()
    };
    let (r0, r1) = (Cluster::new(mk("r0")), Cluster::new(mk("r1")));
    let config_dir = r0.dir.path().join("etc-rep");
    std::fs::create_dir(&config_dir).unwrap();
    for c in [&r0, &r1] {
        std::fs::copy(
            &c.config[0],
            config_dir.join(format!("{}.toml", c.resource)),
        )
        .unwrap();
        c.up(0);
    }
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_repctl"));
    cmd.arg("--config-dir")
        .arg(&config_dir)
        .args(["--node", NODES[0], "--run-dir"])
        .arg(&shared)
        .args(["events", "--now"])
        .stdout(Stdio::piped());
    let w = Watcher::from_command(cmd);
    while !w.lines().iter().any(|l| l == "exists -") {
        std::thread::sleep(Duration::from_millis(50));
    }
    r1.ok(0, &["primary", "--force"]);
    r0.ok(0, &["down"]);
    r1.ok(0, &["secondary"]);
    r1.ok(0, &["down"]);
    let (ok, lines) = w.finish();
    let text = lines.join("\n");
    assert!(ok, "{text}");
    let sep = lines.iter().position(|l| l == "exists -").unwrap();
    assert_eq!(
        lines.iter().filter(|l| *l == "exists -").count(),
        1,
        "{text}"
    );
    for r in ["r0", "r1"] {
        let state = format!("exists resource name:{r} role:Secondary");
        assert!(lines[..sep].iter().any(|l| l.starts_with(&state)), "{text}");
        let stop = format!("destroy resource name:{r}");
        assert!(lines[sep..].contains(&stop), "{text}");
    }
    let promoted: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("role:Primary"))
        .collect();
    assert_eq!(promoted, ["change resource name:r1 role:Primary"], "{text}");
    let _ = std::fs::remove_dir_all(&shared);
}

/// A watcher that never reads: the Primary's writes complete while it
/// falls behind, it is cut off (and says so once read), and status still
/// answers.
#[test]
fn a_watcher_that_stops_reading_does_not_hold_up_writes() {
    tools();
    let c = Cluster::new(Opts {
        disk_mib: 16,
        ..Opts::default()
    });
    c.up(0);
    c.up(1);
    c.ok(0, &["primary", "--force"]);
    c.wait_synced(60);
    let sock = rep_control::client::socket_path(&c.run_dir, &c.resource, NODES[0]);
    let mut stalled = UnixStream::connect(&sock).unwrap();
    writeln!(stalled, r#"{{"cmd":"events","now":true}}"#).unwrap();
    // Events on alpha, many: beta drops and restores the connection over
    // and over while alpha writes (each reconnect a resync).
    let cut = Arc::new(AtomicBool::new(false));
    let flapper = {
        let (cut, run_dir, resource) = (cut.clone(), c.run_dir.clone(), c.resource.clone());
        std::thread::spawn(move || flap_until(&run_dir, &resource, &cut))
    };
    let log = c.run_dir.join(format!("{}.{}.log", c.resource, NODES[0]));
    let src = random_file(c.dir.path(), "w.bin", 4 << 20, 3);
    let t0 = Instant::now();
    let mut writes = 0;
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("event watcher fell behind")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "the stalled watcher was never cut off after {writes} writes; log:\n{}",
            c.log_tail(0)
        );
        write_within(&c, &src, 60);
        writes += 1;
    }
    cut.store(true, Ordering::SeqCst);
    let cycles = flapper.join().unwrap();
    eprintln!("cut off after {cycles} reconnects and {writes} writes");
    // Writes go on, status answers.
    write_within(&c, &src, 60);
    assert_eq!(c.status(0)["role"], "Primary");
    // Read what it held: whole lines, the last one saying it lost events,
    // then the end of the stream.
    stalled
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut text = String::new();
    stalled.read_to_string(&mut text).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() > 2, "{text}");
    assert!(lines[0].contains(r#""ok":true"#), "{}", lines[0]);
    for l in &lines[1..] {
        let _: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
    }
    let last: Value = serde_json::from_str(lines[lines.len() - 1]).unwrap();
    assert!(
        is(&last, "call", "lost-events", &[]),
        "after {cycles} reconnects and {writes} writes, last line: {last}"
    );
    c.wait_synced(60);
}

/// `src` through alpha's export with nbdcopy; fails if that takes more
/// than `secs` (a repd that waited for the watcher would never finish).
fn write_within(c: &Cluster, src: &std::path::Path, secs: u64) {
    let o = c.client(
        0,
        "timeout",
        &[
            &secs.to_string(),
            "nbdcopy",
            src.to_str().unwrap(),
            &c.nbd_uri(0),
        ],
    );
    assert!(
        o.status.success(),
        "nbdcopy did not complete within {secs} s: {:?} {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
}

/// beta disconnects and connects again until `stop`, each time waiting
/// for the connection; how many times.
fn flap_until(run_dir: &std::path::Path, resource: &str, stop: &AtomicBool) -> usize {
    let sock = rep_control::client::socket_path(run_dir, resource, NODES[1]);
    let ask = |cmd: ControlCmd| {
        rep_control::client::request(&sock, &cmd, Some(Duration::from_secs(30))).unwrap()
    };
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        ask(ControlCmd::Verb(Verb::Disconnect));
        ask(ControlCmd::Verb(Verb::Connect {
            discard_my_data: false,
        }));
        let t0 = Instant::now();
        while ask(ControlCmd::Status)
            .status
            .is_none_or(|s| s.connection != "Connected")
            && t0.elapsed() < Duration::from_secs(20)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        n += 1;
    }
    n
}
