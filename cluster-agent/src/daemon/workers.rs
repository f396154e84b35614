//! The agent's worker threads: heartbeat and witness receivers, the repd
//! worker (status polls and device operations, in one thread so that a
//! status never overtakes a command's result), the ping worker, the exec
//! worker (the chain, fencing, the reboot hook) and the split-brain hook.

use std::net::UdpSocket;
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use rep_control::client::ControlError;
use rep_control::protocol::{ControlCmd, Verb};
use replication_proto::wire::Role;

use super::{local_state, Msg};
use crate::config::{MonitorSettings, ResourceEntry};
use crate::core::{Op, OpResult, PingView};
use crate::resources::{self, Ctx};
use crate::wire;

pub(super) fn receive(s: &UdpSocket, path: usize, tx: &Sender<Msg>) {
    let mut buf = vec![0u8; wire::MAX_PACKET + 64];
    loop {
        match s.recv_from(&mut buf) {
            Ok((n, from)) => {
                let data = buf.get(..n).unwrap_or_default().to_vec();
                if tx.send(Msg::Packet { path, data, from }).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                // ICMP errors (port unreachable while the peer is down) show
                // up here on Linux; they say nothing the silence does not.
                tracing::trace!(path, "heartbeat receive: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

pub(super) fn receive_witness(s: &UdpSocket, tx: &Sender<Msg>) {
    let mut buf = vec![0u8; crate::witness::MAX_PACKET];
    loop {
        match s.recv_from(&mut buf) {
            Ok((n, from)) => {
                let data = buf.get(..n).unwrap_or_default().to_vec();
                if tx.send(Msg::Witness { data, from }).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::trace!("witness receive: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

pub(super) fn repd_worker(sock: &Path, every: Duration, rx: &Receiver<Op>, tx: &Sender<Msg>) {
    loop {
        match rx.recv_timeout(every) {
            Ok(op) => {
                let result = repd_op(sock, &op);
                if tx.send(Msg::Done { op, result }).is_err() {
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let msg = match rep_control::client::request(
            sock,
            &ControlCmd::Status,
            Some(Duration::from_secs(2)),
        ) {
            Ok(r) => r.status.map(|st| {
                let _ = tx.send(Msg::SplitBrain(st.split_brain));
                Msg::Local(Some(local_state(&st)))
            }),
            Err(ControlError::NotRunning { .. }) => Some(Msg::Local(None)),
            Err(e) => {
                // Slow or odd answer: keep the last known state.
                tracing::debug!("repd status: {e}");
                None
            }
        };
        if let Some(m) = msg {
            if tx.send(m).is_err() {
                return;
            }
        }
    }
}

/// Whether `op` is repd's to do (the repd worker), not the exec worker's.
pub(super) fn is_device_op(op: &Op) -> bool {
    matches!(
        op,
        Op::Promote { .. }
            | Op::Demote
            | Op::SuspendIo { .. }
            | Op::ResumeIo { .. }
            | Op::ArmFreeze
            | Op::Outdate
    )
}

fn repd_op(sock: &Path, op: &Op) -> OpResult {
    let (cmd, what) = match op {
        Op::Promote { force } => (ControlCmd::Verb(Verb::Primary { force: *force }), "promote"),
        Op::Demote => (ControlCmd::Verb(Verb::Secondary), "demote"),
        Op::SuspendIo { fail } => (ControlCmd::SuspendIo { fail: *fail }, "suspend-io"),
        Op::ResumeIo { current } => (
            ControlCmd::ResumeIo {
                if_current: Some(format!("{current:016X}")),
            },
            "resume-io",
        ),
        Op::ArmFreeze => (
            ControlCmd::Verb(Verb::FreezeOnDisconnect { on: true }),
            "freeze-on-disconnect",
        ),
        Op::Outdate => (ControlCmd::Verb(Verb::Outdate), "outdate"),
        other => {
            debug_assert!(false, "{other:?} routed to the repd worker");
            return OpResult::Failed(format!("{other:?} is not a device operation"));
        }
    };
    match rep_control::client::request(sock, &cmd, Some(Duration::from_secs(60))) {
        Ok(r) if r.ok => match (&cmd, r.status.map(|s| s.role)) {
            (ControlCmd::Verb(Verb::Primary { .. }), Some(Role::Secondary)) => {
                OpResult::Failed(format!("{what}: repd answered ok but is still Secondary"))
            }
            _ => OpResult::Ok,
        },
        Ok(r) => OpResult::Failed(format!(
            "{what} refused by repd: {}",
            r.error.unwrap_or_else(|| "no reason given".into())
        )),
        // A repd that does not run is not Primary: the demotion holds.
        Err(ControlError::NotRunning { .. }) if matches!(op, Op::Demote) => OpResult::Ok,
        Err(e) => OpResult::Failed(format!("{what}: {e}")),
    }
}

/// The commands the exec worker runs besides the chain.
pub(super) struct Hooks {
    pub(super) fence: Option<String>,
    pub(super) reboot: Option<String>,
    pub(super) timeout: Duration,
}

pub(super) fn spawn_split_brain_hook(
    cmd: String,
    timeout: Duration,
    ctx: &Ctx,
    role: String,
    tx: &Sender<Msg>,
) {
    let ctx = ctx.clone();
    let tx = tx.clone();
    // Its own thread: a slow handler must not hold up the chain or fencing.
    let spawned = std::thread::Builder::new()
        .name("split-brain-hook".into())
        .spawn(move || {
            let (code, out) = resources::hook(
                &cmd,
                timeout,
                &ctx,
                &[("REP_ROLE", role), ("REP_EVENT", "split-brain".into())],
            );
            let succeeded = code == Some(0);
            let code = code.map_or_else(|| "no exit code".to_string(), |c| format!("exit {c}"));
            let out = out.trim();
            let text = if out.is_empty() {
                format!("split-brain-command: {code}")
            } else {
                format!("split-brain-command: {code}: {out}")
            };
            let _ = tx.send(Msg::HookDone { succeeded, text });
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the split-brain-command: {e}");
    }
}

/// Probe every ping node each interval (ICMP echo through `ping`, so that no
/// raw socket is needed here); report how many answered within ping-dead.
pub(super) fn ping_worker(ops: &crate::config::OpsSettings, tx: &Sender<Msg>) {
    let mut last_ok: Vec<Option<Instant>> = vec![None; ops.ping_nodes.len()];
    let started = Instant::now();
    let wait_s = ops.ping_timeout.as_secs_f64().max(0.001);
    loop {
        let round = Instant::now();
        let handles: Vec<_> = ops
            .ping_nodes
            .iter()
            .map(|ip| {
                let mut c = std::process::Command::new("ping");
                c.args(["-n", "-q", "-c", "1", "-W", &format!("{wait_s:.3}")])
                    .arg(ip.to_string())
                    .stdin(std::process::Stdio::null());
                let limit = ops.ping_timeout + Duration::from_millis(500);
                std::thread::spawn(move || resources::run(c, limit))
            })
            .collect();
        for (k, h) in handles.into_iter().enumerate() {
            let answered = match h.join() {
                Ok(Ok(e)) => e.code == Some(0),
                Ok(Err(e)) => {
                    tracing::warn!("ping: {e}");
                    false
                }
                Err(_) => false,
            };
            if answered {
                if let Some(t) = last_ok.get_mut(k) {
                    *t = Some(Instant::now());
                }
            }
        }
        let now = Instant::now();
        let reachable = last_ok
            .iter()
            .filter(|t| t.is_some_and(|t| now.duration_since(t) < ops.ping_dead))
            .count();
        // Before ping-dead has passed, a node never heard is not lost yet.
        let young = now.duration_since(started) < ops.ping_dead;
        if !(young && reachable == 0) {
            let view = PingView {
                reachable,
                configured: ops.ping_nodes.len(),
            };
            if tx.send(Msg::Ping(view)).is_err() {
                return;
            }
        }
        let spent = round.elapsed();
        std::thread::sleep(ops.ping_interval.saturating_sub(spent));
    }
}

pub(super) fn exec_worker(
    chain: &[ResourceEntry],
    hooks: &Hooks,
    ctx: &Ctx,
    rx: &Receiver<Op>,
    tx: &Sender<Msg>,
) {
    for op in rx {
        let result = match &op {
            Op::Start(i) | Op::Stop(i) => match chain.get(*i) {
                None => {
                    debug_assert!(false, "the core asked for resource {i}, not in the chain");
                    OpResult::Failed(format!("no resource {i}"))
                }
                Some(r) => {
                    let res = if matches!(op, Op::Start(_)) {
                        resources::start(r, ctx)
                    } else {
                        resources::stop(r, ctx)
                    };
                    match res {
                        Ok(()) => OpResult::Ok,
                        Err(e) => OpResult::Failed(e),
                    }
                }
            },
            Op::Fence => match &hooks.fence {
                Some(cmd) => {
                    let (code, out) = resources::fence(cmd, hooks.timeout, ctx);
                    OpResult::FenceExit(code, out)
                }
                None => OpResult::Failed("no fence-command configured".into()),
            },
            Op::RebootHook => match &hooks.reboot {
                Some(cmd) => {
                    let extra = [
                        ("REP_EVENT", "stop-failure".to_string()),
                        ("REP_AGENT_PID", std::process::id().to_string()),
                    ];
                    match resources::hook(cmd, hooks.timeout, ctx, &extra) {
                        (Some(0), _) => OpResult::Ok,
                        (code, out) => OpResult::Failed(format!(
                            "reboot-command: {}: {out}",
                            code.map_or_else(|| "no exit code".into(), |c| format!("exit {c}"))
                        )),
                    }
                }
                None => OpResult::Failed("no reboot-command configured".into()),
            },
            other => {
                debug_assert!(false, "{other:?} routed to the exec worker");
                OpResult::Failed(format!("{other:?} is not a chain operation"))
            }
        };
        if tx.send(Msg::Done { op, result }).is_err() {
            return;
        }
    }
}

/// Run resource `res`'s monitors, one at a time, as the core asks (by id);
/// each within the resource's monitor timeout, beside the chain's
/// operations (a hung `status` delays only this resource's next check).
pub(super) fn monitor_worker(
    res: usize,
    entry: &ResourceEntry,
    settings: MonitorSettings,
    ctx: &Ctx,
    rx: &Receiver<u64>,
    tx: &Sender<Msg>,
) {
    for id in rx {
        let outcome = resources::monitor(entry, ctx, settings.timeout);
        tracing::debug!(res, ?outcome, "monitor");
        if tx.send(Msg::Monitor { res, id, outcome }).is_err() {
            return;
        }
    }
}
