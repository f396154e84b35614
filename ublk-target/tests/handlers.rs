//! The `[handlers]` commands other than fencing (see `fencing.rs`) with
//! real repd processes: each test's handler script appends its name and
//! DRBD's environment to a file, as an admin's notify script would.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn tools() {
    require("qemu-io", "qemu-utils");
}

fn write_exec(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The handler the tests configure: its environment (DRBD_*, REP_*) in
/// `NAME.NODE.env`, written whole (by a rename) before it appends its call
/// line "NAME NODE RESOURCE PEER MINOR" to `calls`, so a test that saw the
/// call line reads the whole environment (CI once read it half-written).
fn recorder(dir: &Path) -> String {
    let d = dir.display();
    let script = dir.join("record");
    write_exec(
        &script,
        &format!(
            "#!/bin/sh\nenv | grep -E '^(DRBD|REP)_' | sort > {d}/$1.$REP_NODE.env.tmp\n\
             mv {d}/$1.$REP_NODE.env.tmp {d}/$1.$REP_NODE.env\n\
             echo \"$1 $REP_NODE $DRBD_RESOURCE $DRBD_PEER $DRBD_MINOR\" >> {d}/calls\n"
        ),
    );
    script.display().to_string()
}

fn calls(c: &Cluster) -> Vec<String> {
    std::fs::read_to_string(c.dir.path().join("calls"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn wait_call(c: &Cluster, line: &str, secs: u64) {
    let t0 = Instant::now();
    while !calls(c).iter().any(|l| l == line) {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "no `{line}` handler call in {secs} s; calls: {:?}",
            calls(c)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn qemu_write(c: &Cluster, i: usize, cmd: &str) {
    let o = c.client(i, "qemu-io", &["-f", "raw", &c.nbd_uri(i), "-c", cmd]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    c.wait(i, "the NBD client gone", 10, |s| s["nbd_clients"] == 0);
}

/// Both nodes Primary and written while disconnected; on reconnect the
/// after-sb-2pri policy `call-pri-lost-after-sb` (after-sb-0pri
/// `discard-least-changes`) picks beta, a Primary, as the victim: beta runs
/// pri-lost-after-sb, and as no policy may roll a Primary back, both run
/// split-brain and stay StandAlone; both ran initial-split-brain at the
/// handshake. Each handler sees DRBD's environment;
/// status shows how each ended.
#[test]
fn split_brain_and_pri_lost_after_sb_run_with_drbds_environment() {
    tools();
    let c = Cluster::new(Opts {
        disk_mib: 16,
        ..Opts::default()
    });
    let rec = recorder(c.dir.path());
    let text = std::fs::read_to_string(&c.config[0]).unwrap()
        + "[split-brain]\nafter-sb-0pri = \"discard-least-changes\"\n\
           after-sb-2pri = \"call-pri-lost-after-sb\"\n"
        + &format!(
            "[handlers]\nsplit-brain = \"{rec} split-brain\"\n\
             initial-split-brain = \"{rec} initial-split-brain\"\n\
             pri-lost-after-sb = \"{rec} pri-lost-after-sb\"\n"
        );
    std::fs::write(&c.config[0], text).unwrap();
    make_split_brain(&c);
    wait_call(&c, "initial-split-brain alpha r0 beta 0", 20);
    wait_call(&c, "initial-split-brain beta r0 alpha 1", 20);
    wait_call(&c, "split-brain alpha r0 beta 0", 20);
    wait_call(&c, "split-brain beta r0 alpha 1", 20);
    wait_call(&c, "pri-lost-after-sb beta r0 alpha 1", 20);
    assert!(
        !calls(&c)
            .iter()
            .any(|l| l.starts_with("pri-lost-after-sb alpha")),
        "alpha won: {:?}",
        calls(&c)
    );
    let env = std::fs::read_to_string(c.dir.path().join("split-brain.beta.env")).unwrap();
    for want in [
        "DRBD_RESOURCE=r0",
        "DRBD_PEER=alpha",
        "DRBD_MINOR=1",
        "DRBD_VOLUME=0",
        "REP_HANDLER=split-brain",
    ] {
        assert!(env.lines().any(|l| l == want), "{want} not in\n{env}");
    }
    let conf = format!("DRBD_CONF={}", c.config[1].display());
    assert!(env.lines().any(|l| l == conf), "{conf} not in\n{env}");
    let st = c.wait(1, "handler runs in status", 20, |s| {
        s["handlers"].as_array().is_some_and(|h| h.len() == 3)
    });
    for h in st["handlers"].as_array().unwrap() {
        assert_eq!(h["exit"], 0, "{st:#}");
        assert_eq!(h["timed_out"], false, "{st:#}");
    }
    let text = c.ok(1, &["status"]);
    assert!(text.contains("handler pri-lost-after-sb: exit 0"), "{text}");
}

/// Both Primary, alpha writes 2 MiB and beta 1 MiB while disconnected,
/// then they reconnect: a split brain.
fn make_split_brain(c: &Cluster) {
    c.up(0);
    c.up(1);
    c.ok(0, &["primary", "--force"]);
    c.wait_synced(60);
    c.ok(0, &["disconnect"]);
    c.ok(1, &["disconnect"]);
    c.ok(1, &["primary"]);
    qemu_write(c, 0, "write -P 0xa1 0 2M");
    qemu_write(c, 1, "write -P 0xb2 4M 1M");
    c.ok(0, &["connect"]);
    c.ok(1, &["connect"]);
    for i in 0..2 {
        c.wait(i, "split brain", 20, |s| s["split_brain"] == true);
    }
}

/// A split-brain handler that hangs (a `sleep` it waits for) is killed
/// with its process group at `timeout-ms` and reported in status and in
/// the event stream.
#[test]
fn a_hanging_handler_is_killed_at_the_timeout_and_reported() {
    tools();
    let c = Cluster::new(Opts {
        disk_mib: 16,
        ..Opts::default()
    });
    let d = c.dir.path().display().to_string();
    let text = std::fs::read_to_string(&c.config[0]).unwrap()
        + &format!(
            "[handlers]\nsplit-brain = \"/bin/sh -c 'sleep 60 & echo $! > {d}/sleep.$REP_NODE; wait'\"\n\
             timeout-ms = 3000\n"
        );
    std::fs::write(&c.config[0], text).unwrap();
    make_split_brain(&c);
    // The handler hangs for 3 s: watch alpha's event stream meanwhile.
    let log = c.dir.path().join("events.log");
    let mut watcher = c
        .node(0)
        .command()
        .arg("events")
        .stdout(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let st = c.wait(0, "the handler killed", 20, |s| {
        s["handlers"]
            .as_array()
            .is_some_and(|h| h.iter().any(|h| h["name"] == "split-brain"))
    });
    let h = &st["handlers"][0];
    assert_eq!(h["timed_out"], true, "{st:#}");
    assert_eq!(h["exit"], serde_json::Value::Null, "{st:#}");
    let text = c.ok(0, &["status"]);
    assert!(
        text.contains("handler split-brain: KILLED at timeout-ms"),
        "{text}"
    );
    let line = "call handler name:r0 conn-name:beta exit:timed-out handler:split-brain";
    let t0 = Instant::now();
    while !std::fs::read_to_string(&log).unwrap().contains(line) {
        assert!(t0.elapsed() < Duration::from_secs(10), "no `{line}` event");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = watcher.kill();
    let _ = watcher.wait();
    // The whole group went: the handler's own child too.
    let pid = std::fs::read_to_string(c.dir.path().join("sleep.alpha")).unwrap();
    let proc_dir = format!("/proc/{}", pid.trim());
    let t0 = Instant::now();
    while Path::new(&proc_dir).exists() {
        let stat = std::fs::read_to_string(format!("{proc_dir}/stat")).unwrap_or_default();
        if stat.contains(") Z ") {
            break; // killed, waiting for init to reap it
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the handler's sleep lives on"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The initial sync makes beta, its target, run after-resync-target; then
/// alpha's disk fills up and, under `on-io-error = "call-local-io-error"`,
/// alpha runs local-io-error (once for the episode of failed writes).
#[test]
fn after_resync_target_and_local_io_error_run_when_drbd_runs_them() {
    tools();
    let c = Cluster::new(Opts::default());
    let rec = recorder(c.dir.path());
    let text = std::fs::read_to_string(&c.config[0]).unwrap()
        + "[disk]\non-io-error = \"call-local-io-error\"\n"
        + &format!(
            "[handlers]\nlocal-io-error = \"{rec} local-io-error\"\n\
             after-resync-target = \"{rec} after-resync-target\"\n"
        );
    std::fs::write(&c.config[0], text).unwrap();
    let _small = primary_disk_on_small_tmpfs(&c);
    c.up(0);
    c.up(1);
    c.ok(0, &["primary", "--force"]);
    c.wait_synced(60);
    wait_call(&c, "after-resync-target beta r0 alpha 1", 20);
    let o = c.client(
        0,
        "qemu-io",
        &["-f", "raw", &c.nbd_uri(0), "-c", "write -P 0x11 0 40M"],
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("write failed"),
        "a write into the full disk succeeded: {o:?}"
    );
    wait_call(&c, "local-io-error alpha r0 beta 0", 20);
    let env = std::fs::read_to_string(c.dir.path().join("local-io-error.alpha.env")).unwrap();
    for want in [
        "DRBD_RESOURCE=r0",
        "DRBD_PEER=beta",
        "REP_HANDLER=local-io-error",
    ] {
        assert!(env.lines().any(|l| l == want), "{want} not in\n{env}");
    }
    let backing = format!("DRBD_BACKING_DEV={}", c.img(0).display());
    assert!(env.lines().any(|l| l == backing), "{backing} not in\n{env}");
    let st = c.status(0);
    assert!(
        st["handlers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "local-io-error" && h["exit"] == 0),
        "{st:#}"
    );
    assert!(
        !calls(&c)
            .iter()
            .any(|l| l.starts_with("after-resync-target alpha")),
        "alpha was the sync source: {:?}",
        calls(&c)
    );
}

/// beta, the initial sync's target, runs before-resync-target before the
/// first block moves. While the handler fails (a marker file stands for a
/// snapshot that cannot be made) the resync does not start: beta drops the
/// connection and stays StandAlone with everything still out of sync. Once
/// it succeeds, `repctl connect` runs it again and the resync completes
/// (after-resync-target then follows it).
#[test]
fn before_resync_target_holds_the_resync_and_its_failure_drops_the_connection() {
    tools();
    let c = Cluster::new(Opts {
        disk_mib: 16,
        ..Opts::default()
    });
    let rec = recorder(c.dir.path());
    let fail = c.dir.path().join("fail");
    std::fs::write(&fail, "").unwrap();
    let text = std::fs::read_to_string(&c.config[0]).unwrap()
        + &format!(
            "[handlers]\nbefore-resync-target = \"{rec} before-resync-target && test ! -e {}\"\n\
             after-resync-target = \"{rec} after-resync-target\"\n",
            fail.display()
        );
    std::fs::write(&c.config[0], text).unwrap();
    c.up(0);
    c.up(1);
    c.ok(0, &["primary", "--force"]);
    wait_call(&c, "before-resync-target beta r0 alpha 1", 20);
    let st = c.wait(1, "StandAlone after the failed handler", 20, |s| {
        s["connection"] == "StandAlone"
    });
    assert_eq!(st["disk"], "Inconsistent", "{st:#}");
    assert_eq!(
        st["out_of_sync_bytes"].as_u64(),
        Some(c.data_bytes(1)),
        "blocks moved before the handler said yes: {st:#}"
    );
    assert!(
        st["handlers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "before-resync-target" && h["exit"] == 1),
        "{st:#}"
    );
    let env = std::fs::read_to_string(c.dir.path().join("before-resync-target.beta.env")).unwrap();
    for want in [
        "DRBD_RESOURCE=r0",
        "DRBD_PEER=alpha",
        "REP_HANDLER=before-resync-target",
    ] {
        assert!(env.lines().any(|l| l == want), "{want} not in\n{env}");
    }
    std::fs::remove_file(&fail).unwrap();
    c.ok(1, &["connect"]);
    c.wait_synced(60);
    wait_call(&c, "after-resync-target beta r0 alpha 1", 20);
    let runs: Vec<String> = calls(&c)
        .into_iter()
        .filter(|l| l.contains("resync-target"))
        .collect();
    assert_eq!(
        runs,
        [
            "before-resync-target beta r0 alpha 1",
            "before-resync-target beta r0 alpha 1",
            "after-resync-target beta r0 alpha 1",
        ],
        "alpha, the source, runs neither"
    );
    c.assert_identical();
}
