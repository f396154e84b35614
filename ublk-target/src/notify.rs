//! systemd's readiness protocol (sd_notify) for repd under `Type=notify`:
//! READY=1 once the control socket answers, STATUS= with the role and the
//! connection while it runs, STOPPING=1 when it shuts down.
//!
//! All of it does nothing unless systemd set NOTIFY_SOCKET (repd started by
//! `repctl up` or by hand). The messages go through the `sd-notify` crate (a
//! datagram to that socket, no libsystemd).

use std::path::Path;
use std::time::{Duration, Instant};

use rep_control::client;
use rep_control::protocol::{ControlCmd, NodeStatus};
use sd_notify::NotifyState;

use crate::engine::EngineHandle;

/// How long repd waits for its own control socket to answer before it
/// gives up on READY=1 (systemd's TimeoutStartSec then fails the start).
const READY_WAIT_MS: u64 = 30_000;
/// How often STATUS= follows the engine (sent only when it changed).
const STATUS_EVERY_MS: u64 = 1_000;
/// One control request may take this long (the engine answers in ms).
const REQUEST_TIMEOUT_MS: u64 = 5_000;

fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd (NOTIFY_SOCKET): {e}");
    }
}

/// Under systemd: a thread that says READY=1 as soon as `control_sock`
/// answers a `status` request (so `repctl` works once `systemctl start`
/// returns), then keeps STATUS= up to date until the engine stops.
pub fn start(control_sock: &Path, engine: EngineHandle) {
    if !enabled() {
        return;
    }
    let sock = control_sock.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("repd-notify".into())
        .spawn(move || run(&sock, &engine));
    if let Err(e) = spawned {
        tracing::error!(
            "cannot start the systemd notification thread: {e}; systemd will time out the start"
        );
    }
}

/// Under systemd: STOPPING=1 (repd shuts down; exit 0 follows unless it fails).
pub fn stopping() {
    if enabled() {
        send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }
}

fn run(sock: &Path, engine: &EngineHandle) {
    let Some(st) = wait_answer(sock) else {
        tracing::error!(
            "the control socket {} did not answer within {} s: not telling systemd READY",
            sock.display(),
            READY_WAIT_MS / 1000
        );
        return;
    };
    let mut last = status_line(&st);
    send(&[NotifyState::Ready, NotifyState::Status(&last)]);
    tracing::debug!("told systemd READY=1 ({last})");
    loop {
        std::thread::sleep(Duration::from_millis(STATUS_EVERY_MS));
        // None: the engine stopped (down), the process is about to end.
        let Some(st) = engine.control(ControlCmd::Status).and_then(|r| r.status) else {
            return;
        };
        let line = status_line(&st);
        if line != last {
            send(&[NotifyState::Status(&line)]);
            last = line;
        }
    }
}

/// Asks the control socket for the status, as `repctl status` would, until
/// it answers or `READY_WAIT_MS` passed.
fn wait_answer(sock: &Path) -> Option<NodeStatus> {
    let t0 = Instant::now();
    let timeout = Some(Duration::from_millis(REQUEST_TIMEOUT_MS));
    while t0.elapsed() < Duration::from_millis(READY_WAIT_MS) {
        if let Ok(r) = client::request(sock, &ControlCmd::Status, timeout) {
            if let Some(st) = r.status {
                return Some(st);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// `Secondary, Connected, UpToDate/UpToDate` (what `systemctl status` shows).
fn status_line(st: &NodeStatus) -> String {
    let mut s = format!(
        "{:?}, {}, {:?}/{:?}",
        st.role, st.connection, st.disk, st.peer_disk
    );
    if st.split_brain {
        s.push_str(", split brain");
    }
    s
}
