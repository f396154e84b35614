//! repd under systemd's `Type=notify` (rep@.service), as systemd sees it:
//! repd is started with NOTIFY_SOCKET pointing at a Unix datagram socket
//! this test made, like systemd's, and the test reads what arrives there.
//! READY=1 must come only once the control socket answers, STATUS= must
//! follow the connection, STOPPING=1 must come at `repctl down` and at
//! SIGTERM, and the exit codes must be what `Restart=on-failure` needs: 0
//! for a stop that was asked for, non-zero for a failure. The node name
//! comes from REP_NODE, as the unit's EnvironmentFile gives it.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, Opts, NODES};
use rep_control::client::{request, socket_path};
use rep_control::protocol::ControlCmd;

/// systemd's side of the protocol: a datagram socket and what came in.
struct Manager {
    sock: UnixDatagram,
    path: PathBuf,
}

impl Manager {
    fn new(dir: &Path, name: &str) -> Self {
        let path = dir.join(format!("{name}.notify"));
        let sock = UnixDatagram::bind(&path).unwrap();
        Self { sock, path }
    }

    /// The next datagram within `secs`, or None.
    fn next(&self, secs: u64) -> Option<String> {
        self.sock
            .set_read_timeout(Some(Duration::from_secs(secs)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = self.sock.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Datagrams until one has `line` (a whole line), within `secs`.
    fn until(&self, line: &str, secs: u64) -> String {
        let t0 = Instant::now();
        let mut seen = Vec::new();
        while t0.elapsed() < Duration::from_secs(secs) {
            if let Some(msg) = self.next(1) {
                if msg.lines().any(|l| l == line) {
                    return msg;
                }
                seen.push(msg);
            }
        }
        panic!("no {line} within {secs} s; got {seen:?}");
    }
}

/// repd for node `i` of `c`, started the way rep@.service starts it.
fn repd(c: &Cluster, i: usize, notify: &Path) -> Child {
    let log = std::fs::File::create(c.dir.path().join(format!("{}.stderr", NODES[i]))).unwrap();
    Command::new(env!("CARGO_BIN_EXE_repd"))
        .arg("--config")
        .arg(&c.config[i])
        .arg("--run-dir")
        .arg(&c.run_dir)
        .env("REP_NODE", NODES[i])
        .env("NOTIFY_SOCKET", notify)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn exit_within(child: &mut Child, secs: u64) -> ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if t0.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            panic!("repd did not exit within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(c: &Cluster, i: usize) -> String {
    std::fs::read_to_string(c.dir.path().join(format!("{}.stderr", NODES[i]))).unwrap_or_default()
}

/// READY=1 once `status` answers on the control socket, with a STATUS=
/// that says the role; the socket must answer at the moment READY arrives.
fn wait_ready(c: &Cluster, i: usize, m: &Manager) -> String {
    let msg = m
        .next(60)
        .unwrap_or_else(|| panic!("no notification within 60 s\n{}", stderr_of(c, i)));
    assert!(
        msg.lines().any(|l| l == "READY=1"),
        "the first notification is not READY=1: {msg:?}"
    );
    let sock = socket_path(&c.run_dir, &c.resource, NODES[i]);
    let answer = request(&sock, &ControlCmd::Status, Some(Duration::from_secs(5)));
    assert!(
        answer.as_ref().is_ok_and(|r| r.ok),
        "READY=1 arrived but the control socket does not answer: {answer:?}"
    );
    assert!(msg.contains("STATUS=Secondary, "), "{msg:?}");
    msg
}

#[test]
fn repd_notifies_ready_once_its_socket_answers_then_status_and_stopping() {
    let c = Cluster::new(Opts::default());
    let (ma, mb) = (
        Manager::new(c.dir.path(), "alpha"),
        Manager::new(c.dir.path(), "beta"),
    );
    let mut a = repd(&c, 0, &ma.path);
    let first = wait_ready(&c, 0, &ma);
    println!("alpha: {first:?}");
    let mut b = repd(&c, 1, &mb.path);
    wait_ready(&c, 1, &mb);
    // The peers connect: STATUS= follows (one update per second at most).
    let connected = ma.until("STATUS=Secondary, Connected, Inconsistent/Inconsistent", 30);
    println!("alpha: {connected:?}");

    // `repctl down` (not asked by systemd): STOPPING=1, exit 0, so that
    // Restart=on-failure leaves it stopped.
    c.ok(0, &["down"]);
    ma.until("STOPPING=1", 10);
    let st = exit_within(&mut a, 30);
    assert!(
        st.success(),
        "repd after `repctl down`: {st}\n{}",
        stderr_of(&c, 0)
    );

    // SIGTERM (`systemctl stop`): the same.
    rep_testkit::signal(b.id(), "-TERM");
    mb.until("STOPPING=1", 30);
    let st = exit_within(&mut b, 30);
    assert!(
        st.success(),
        "repd after SIGTERM: {st}\n{}",
        stderr_of(&c, 1)
    );
}

#[test]
fn repd_that_cannot_start_exits_non_zero_and_never_says_ready() {
    let c = Cluster::new(Opts::default());
    let m = Manager::new(c.dir.path(), "alpha");
    // The node name of the environment file is not in the resource file.
    let mut child = Command::new(env!("CARGO_BIN_EXE_repd"))
        .arg("--config")
        .arg(&c.config[0])
        .arg("--run-dir")
        .arg(&c.run_dir)
        .env("REP_NODE", "gamma")
        .env("NOTIFY_SOCKET", &m.path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let st = exit_within(&mut child, 30);
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!st.success(), "repd with an unknown node exited 0");
    assert!(err.contains("gamma"), "the error names the node: {err}");
    assert_eq!(
        m.next(1),
        None,
        "a repd that failed said something to systemd"
    );
}
