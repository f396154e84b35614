//! What an operator meets first (issue 16, items 2, 7 and 9): `down` with
//! NBD clients connected, SIGTERM under load, a second daemon or a
//! create-md on a disk a repd uses, and the messages that must point the
//! right way. Real repd processes, driven by repctl and real NBD clients.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use common::{require, Cluster, Opts};
use rep_control::protocol::{ClientCount, ControlCmd, InUseBy, Refusal, Verb};
use replication_proto::machine::AdminError;

fn stderr_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A qemu-io session on an NBD export that stays connected between
/// commands, as a long-running client (a VM, a mounted nbd device) does.
struct NbdSession {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl NbdSession {
    fn open(c: &Cluster, i: usize) -> Self {
        let mut child = c
            .cmd(i, "qemu-io")
            .args(["-f", "raw", &c.nbd_uri(i)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let (tx, lines) = mpsc::channel();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(l);
                }
            });
        }
        NbdSession {
            child,
            stdin,
            lines,
        }
    }

    /// Writes 4 KiB at `offset`; Ok with qemu-io's line, or Err with what
    /// it said instead (or that it said nothing).
    fn write(&mut self, offset: u64) -> Result<String, String> {
        if writeln!(self.stdin, "write -P 7 {offset} 4k").is_err() {
            return Err("qemu-io is gone".into());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains("wrote 4096/4096") => return Ok(l),
                Ok(l) if l.contains("failed") || l.contains("rror") => return Err(l),
                Ok(l) => seen.push(l),
                Err(_) => break,
            }
        }
        Err(format!("no answer; output: {seen:?}"))
    }
}

impl Drop for NbdSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

use rep_testkit::{gone, wait_gone};

/// alpha up and Primary (StandAlone: beta is never started).
fn primary_alpha() -> Cluster {
    require("qemu-io", "qemu-utils");
    let c = Cluster::new(Opts::default());
    c.up(0);
    c.ok(0, &["primary", "--force"]);
    c
}

#[test]
fn down_is_refused_while_nbd_clients_are_connected_and_force_cuts_them() {
    let c = primary_alpha();
    let mut s = NbdSession::open(&c, 0);
    s.write(0).unwrap();
    c.wait(0, "the client counted", 10, |st| st["nbd_clients"] == 1);
    let pid = c.pid(0);

    // `secondary` and `down` refuse alike, and say what helps.
    let o = c.repctl(0, &["secondary"]);
    assert!(!o.status.success());
    assert!(stderr_of(&o).contains("1 NBD client(s) connected"), "{o:?}");
    let o = c.repctl(0, &["down"]);
    let err = stderr_of(&o);
    assert!(!o.status.success(), "down cut a connected client: {err}");
    assert!(err.contains("1 NBD client(s) connected"), "{err}");
    assert!(err.contains("repctl down --force"), "{err}");
    let one_nbd_client = Refusal::InUse {
        by: InUseBy::Clients(vec![ClientCount {
            frontend: "NBD".into(),
            count: 1,
        }]),
    };
    for cmd in [
        ControlCmd::Verb(Verb::Secondary),
        ControlCmd::Down { force: false },
    ] {
        let r = c.control(0, &cmd);
        assert_eq!(r.refusal.as_ref(), Some(&one_nbd_client), "{cmd:?}: {r:?}");
    }
    // Nothing happened: the daemon runs, still Primary, the client writes on.
    assert!(!gone(pid));
    assert_eq!(c.status(0)["role"], "Primary");
    s.write(4096).unwrap();

    let o = c.repctl(0, &["down", "--force"]);
    assert!(o.status.success(), "down --force: {}", stderr_of(&o));
    wait_gone(pid, 10);
    let e = s.write(8192).expect_err("a write after down --force");
    println!("the cut client says: {e}");
    let log = std::fs::read_to_string(c.run_dir.join("r0.alpha.log")).unwrap();
    assert!(
        log.contains("forced down: disconnecting the NBD clients"),
        "{log}"
    );
    // In order: demoted, metadata clean.
    let md = c.ok(0, &["dump-md", "--json"]);
    assert!(!md.contains("PRIMARY_IND"), "{md}");
}

#[test]
fn sigterm_under_nbd_load_cuts_the_clients_and_stops_in_order() {
    let c = primary_alpha();
    // A client busy writing when systemd stops the daemon.
    let chunk = 64 * 1024u64;
    let n = c.data_bytes(0) / chunk;
    let mut args: Vec<String> = vec!["-f".into(), "raw".into(), c.nbd_uri(0)];
    for k in 0..n {
        args.push("-c".into());
        args.push(format!("write -P 9 {} {chunk}", k * chunk));
    }
    let client = c
        .cmd(0, "qemu-io")
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.wait(0, "the first writes", 20, |s| {
        s["stats"]["written_bytes"].as_u64().unwrap_or(0) >= 2 << 20
    });
    let pid = c.pid(0);
    assert!(Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    wait_gone(pid, 20);
    let out = client.wait_with_output().unwrap();
    let log = std::fs::read_to_string(c.run_dir.join("r0.alpha.log")).unwrap();
    assert!(
        log.contains("forced down: disconnecting the NBD clients"),
        "SIGTERM cut the clients without a word:\n{log}"
    );
    assert!(
        !log.contains("stopping anyway"),
        "the orderly shutdown was refused:\n{log}"
    );
    assert!(log.contains("stopped"), "{log}");
    for l in log.lines().filter(|l| l.contains("forced down")) {
        println!("{l}");
    }
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&format!(
            "wrote {chunk}/{chunk} bytes at offset {}",
            (n - 1) * chunk
        )),
        "the client finished before the signal: make the run longer"
    );
    let md = c.ok(0, &["dump-md", "--json"]);
    assert!(!md.contains("PRIMARY_IND"), "not demoted in order: {md}");
    assert!(md.contains("AL_CLEAN"), "activity log not clean: {md}");
}

/// A copy of the resource file that differs only in its ports.
fn config_with_other_ports(c: &Cluster) -> std::path::PathBuf {
    let text = std::fs::read_to_string(&c.config[0]).unwrap();
    let mut new = text.clone();
    for p in common::free_ports::<4>()
        .iter()
        .zip(text.match_indices("127.0.0.1:").map(|(k, _)| k))
    {
        let old: String = text[p.1 + 10..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        new = new.replacen(
            &format!("127.0.0.1:{old}\""),
            &format!("127.0.0.1:{}\"", p.0),
            1,
        );
    }
    assert_ne!(new, text);
    let path = c.dir.path().join("copy.toml");
    std::fs::write(&path, new).unwrap();
    path
}

/// Runs a repd that should refuse to start; fails (and kills it) if it is
/// still running after 10 s.
fn repd_must_refuse(args: &[&std::ffi::OsStr]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_repd"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a second repd started on the same disk (still running after 10 s)");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success());
    stderr_of(&o)
}

#[test]
fn a_second_repd_on_the_same_disk_is_refused_and_told_who_holds_it() {
    let c = Cluster::new(Opts::default());
    c.up(0);
    let pid = c.pid(0);
    let copy = config_with_other_ports(&c);
    let other_run = c.dir.path().join("other-run");
    let o = Command::new(env!("CARGO_BIN_EXE_repctl"))
        .arg("--config")
        .arg(&copy)
        .args(["--node", "alpha", "--run-dir"])
        .arg(&other_run)
        .arg("up")
        .output()
        .unwrap();
    let err = stderr_of(&o);
    assert!(!o.status.success(), "a second repd started on alpha's disk");
    assert!(err.contains("is in use"), "{err}");
    assert!(err.contains(&format!("locked by pid {pid}")), "{err}");
    // The same with repd itself, --standalone, another run directory.
    let run = c.dir.path().join("third-run");
    let err = repd_must_refuse(&[
        "--config".as_ref(),
        copy.as_ref(),
        "--node".as_ref(),
        "alpha".as_ref(),
        "--standalone".as_ref(),
        "--run-dir".as_ref(),
        run.as_ref(),
    ]);
    assert!(err.contains(&format!("locked by pid {pid}")), "{err}");
    // The first one goes on; once it is down the disk is free.
    assert_eq!(c.status(0)["pid"], pid);
    c.ok(0, &["down"]);
    c.up(0);
}

#[test]
fn create_md_while_repd_runs_is_refused() {
    let c = Cluster::new(Opts::default());
    c.up(0);
    c.ok(0, &["primary", "--force"]);
    let pid = c.pid(0);
    let before = c.status(0)["generations"].clone();
    let o = c.repctl(0, &["create-md", "--force"]);
    let err = stderr_of(&o);
    assert!(!o.status.success(), "create-md wrote under a running repd");
    assert!(err.contains(&format!("locked by pid {pid}")), "{err}");
    c.ok(0, &["down"]);
    let md: serde_json::Value = serde_json::from_str(&c.ok(0, &["dump-md", "--json"])).unwrap();
    assert_eq!(md["generations"], before, "the metadata changed");
    // Without a daemon it works.
    c.ok(0, &["create-md", "--force"]);
}

#[test]
fn repctl_without_permission_says_so_not_that_repd_is_not_running() {
    require("setpriv", "util-linux");
    let c = Cluster::new(Opts::default());
    c.up(0);
    // The resource file readable by anyone; the run directory stays root's.
    for p in [c.dir.path(), &c.config[0]] {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_repctl"))
        .arg("--config")
        .arg(&c.config[0])
        .args(["--node", "alpha", "--run-dir"])
        .arg(&c.run_dir)
        .arg("status")
        .output()
        .unwrap();
    let err = stderr_of(&o);
    assert!(!o.status.success());
    assert!(!err.contains("no repd is running"), "{err}");
    assert!(err.contains("permission denied"), "{err}");
    assert!(err.contains("as root"), "{err}");
}

#[test]
fn wait_connect_after_a_refused_handshake_says_to_fix_the_resource_file() {
    let c = Cluster::new(Opts::default());
    let text = std::fs::read_to_string(&c.config[0])
        .unwrap()
        .replace("secret = \"test-secret\"", "secret = \"other\"");
    let beta_cfg = c.dir.path().join("beta.toml");
    std::fs::write(&beta_cfg, text).unwrap();
    let mut c = c;
    c.config[1] = beta_cfg;
    c.up(0);
    c.up(1);
    c.wait(0, "refusal", 20, |s| {
        s["connection"] == "StandAlone" && !s["last_error"].is_null()
    });
    let o = c.repctl(0, &["wait-connect", "--timeout", "5"]);
    let err = stderr_of(&o);
    assert!(!o.status.success());
    assert!(!err.contains("run `repctl connect`"), "{err}");
    assert!(err.contains("secret"), "say what was refused: {err}");
    assert!(err.contains("resource files must agree"), "{err}");
}

#[test]
fn invalidate_on_a_primary_points_to_invalidate_remote() {
    let c = Cluster::new(Opts::default());
    c.up(0);
    c.ok(0, &["primary", "--force"]);
    let o = c.repctl(0, &["invalidate"]);
    let err = stderr_of(&o);
    assert!(!o.status.success());
    assert!(err.contains("repctl invalidate-remote"), "{err}");
    let r = c.control(0, &ControlCmd::Verb(Verb::Invalidate));
    assert_eq!(
        r.refusal,
        Some(Refusal::Machine(AdminError::PrimaryCannotInvalidate))
    );
}

#[test]
fn a_shrunk_disk_is_not_mistaken_for_a_fresh_one() {
    require("nbdcopy", "libnbd-bin");
    let c = Cluster::new(Opts::default());
    c.up(0);
    c.ok(0, &["primary", "--force"]);
    let bytes = usize::try_from(c.data_bytes(0)).unwrap();
    let src = common::random_file(c.dir.path(), "data.bin", bytes, 16);
    c.nbd_write(0, &src);
    c.ok(0, &["down"]);
    // The LV (here: the file) loses its last 4 MiB, metadata and all.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(c.img(0))
        .unwrap();
    f.set_len(c.disk_bytes - (4 << 20)).unwrap();
    drop(f);
    let o = c.repctl(0, &["up"]);
    let err = stderr_of(&o);
    assert!(!o.status.success());
    assert!(err.contains("seems to have been shrunk"), "{err}");
    assert!(err.contains("Do not run create-md"), "{err}");
    // Before the search (minutes on a large slow disk), the log said what
    // repd was doing and how to stop it.
    let log = c.log_tail(0);
    assert!(
        log.contains("looking below the end for the metadata of a disk that grew")
            && log.contains("a new disk needs `repctl create-md` instead"),
        "{log}"
    );
    // And create-md does not destroy the end of the data unless forced.
    let before = std::fs::read(c.img(0)).unwrap();
    let o = c.repctl(0, &["create-md"]);
    let err = stderr_of(&o);
    assert!(!o.status.success(), "create-md overwrote data");
    assert!(err.contains("holds data and no metadata"), "{err}");
    assert!(
        std::fs::read(c.img(0)).unwrap() == before,
        "the disk changed"
    );
    c.ok(0, &["create-md", "--force"]);
}

#[test]
fn a_failed_up_shows_only_its_own_log_lines() {
    let c = Cluster::new(Opts::default());
    // First failed start: the disk is missing.
    std::fs::remove_file(c.img(0)).unwrap();
    let o = c.repctl(0, &["up"]);
    assert!(!o.status.success());
    assert!(stderr_of(&o).contains("does not exist"), "{o:?}");
    // Second: the disk is back, without metadata.
    std::fs::File::create(c.img(0))
        .unwrap()
        .set_len(c.disk_bytes)
        .unwrap();
    let o = c.repctl(0, &["up"]);
    let err = stderr_of(&o);
    assert!(!o.status.success());
    assert!(err.contains("run create-md"), "{err}");
    assert!(
        !err.contains("does not exist"),
        "the earlier attempt's lines are shown too: {err}"
    );
}

/// A loop device over a file, detached when dropped.
struct Loop(String);

impl Loop {
    fn over(file: &std::path::Path) -> Self {
        let o = Command::new("losetup")
            .args(["--show", "-f"])
            .arg(file)
            .output()
            .unwrap();
        assert!(o.status.success(), "losetup: {}", stderr_of(&o));
        Loop(String::from_utf8_lossy(&o.stdout).trim().to_owned())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        // Lazy if still open: the kernel detaches it on the last close.
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn a_block_device_disk_is_claimed_exclusively() {
    require("losetup", "mount");
    let mut c = Cluster::new(Opts::default());
    // alpha's image (with its metadata) behind a loop device.
    let dev = Loop::over(&c.img(0));
    let text = std::fs::read_to_string(&c.config[0]).unwrap().replacen(
        &format!("disk = \"{}\"", c.img(0).display()),
        &format!("disk = \"{}\"", dev.0),
        1,
    );
    let cfg = c.dir.path().join("loop.toml");
    std::fs::write(&cfg, text).unwrap();
    c.config[0] = cfg;
    c.up(0);
    let pid = c.pid(0);
    let copy = config_with_other_ports(&c);
    let run = c.dir.path().join("other-run");
    let err = repd_must_refuse(&[
        "--config".as_ref(),
        copy.as_ref(),
        "--node".as_ref(),
        "alpha".as_ref(),
        "--standalone".as_ref(),
        "--run-dir".as_ref(),
        run.as_ref(),
    ]);
    println!("the second repd says: {err}");
    assert!(err.contains("claimed exclusively"), "{err}");
    assert!(err.contains(&format!("pid {pid}")), "{err}");
    let o = c.repctl(0, &["create-md", "--force"]);
    assert!(!o.status.success(), "create-md wrote under a running repd");
    assert!(stderr_of(&o).contains(&format!("pid {pid}")), "{o:?}");
    c.ok(0, &["down"]);
}

/// A repd that is still starting after 20 s (here a stand-in that logs a
/// line and sleeps): `repctl up` gives up waiting with its pid and the last
/// lines it logged, so the admin sees what it is doing.
#[test]
fn up_that_waits_too_long_shows_what_repd_is_doing() {
    let c = Cluster::new(Opts::default());
    let slow = c.dir.path().join("slow-repd");
    rep_testkit::write_exec(
        &slow,
        "#!/bin/sh\necho 'looking for the metadata of a grown disk (stand-in)'\nexec sleep 60\n",
    );
    let t0 = Instant::now();
    let o = c.repctl(0, &["up", "--repd", slow.to_str().unwrap()]);
    let err = stderr_of(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        t0.elapsed() >= Duration::from_secs(20),
        "{:?}",
        t0.elapsed()
    );
    assert!(
        err.contains("did not answer within 20 s")
            && err.contains("looking for the metadata of a grown disk (stand-in)"),
        "{err}"
    );
    let pid: i32 = err
        .split("(pid ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {err}"));
    let _ = Command::new("kill").arg(pid.to_string()).status();
}
