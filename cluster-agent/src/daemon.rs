//! The agent process around the core: UDP heartbeat sockets (one per path),
//! a worker that talks to the local repd over its control socket (status
//! polls every keepalive, promote, demote: in one thread, so a status never
//! overtakes the result of a command), a worker that runs the resource
//! chain and the fence command, and the agent's own control socket.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{SigSet, Signal};
use replication_proto::wire::Role;
use serde_json::{json, Value};
use ublk_target::control::ControlError;
use ublk_target::engine::{ControlCmd, NodeStatus};

use replication_proto::gen::Generations;

use crate::config::{AgentConfig, Link, NoQuorum, ResourceEntry};
use crate::control::{self, Incoming, Reply, Request};
use crate::core::{
    Action, BadPacket, Core, CoreConfig, Input, LocalState, Millis, Op, OpResult, OpsConfig,
    PingView,
};
use crate::resources::{self, Ctx};
use crate::wire::{self, DecodeError};

/// How the daemon is started.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: PathBuf,
    pub node: Option<String>,
    pub run_dir: PathBuf,
}

enum Msg {
    Packet {
        path: usize,
        data: Vec<u8>,
        from: SocketAddr,
    },
    Local(Option<LocalState>),
    Done {
        op: Op,
        result: OpResult,
    },
    Control(Incoming),
    Shutdown(String),
    Witness {
        data: Vec<u8>,
        from: SocketAddr,
    },
    /// What the ping nodes answered in the last round.
    Ping(PingView),
    /// repd's `split_brain` flag, with each status poll.
    SplitBrain(bool),
    /// The split-brain command ended.
    HookDone(String),
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The core's settings from the configuration.
#[must_use]
pub fn core_config(cfg: &AgentConfig) -> CoreConfig {
    let c = &cfg.cluster;
    CoreConfig {
        me: cfg.me.clone(),
        peer: cfg.peer.clone(),
        keepalive: ms(c.keepalive),
        warntime: ms(c.warntime),
        deadtime: ms(c.deadtime),
        initdead: ms(c.initdead),
        paths: cfg.links().len(),
        resources: c.resources.len(),
        fencing: c.fence_command.is_some(),
        auto_failback: c.auto_failback,
        preferred: c.preferred.clone(),
        failure_timeout: ms(c.failure_timeout),
        witness: c.witness.is_some(),
        no_quorum_fail: c.on_no_quorum == NoQuorum::IoError,
        ops: OpsConfig {
            on_stop_failure: c.ops.on_stop_failure,
            handover_grace: ms(c.deadtime).saturating_mul(5),
            ping_settle: ms(c.ops.ping_interval).saturating_add(ms(c.keepalive).saturating_mul(2)),
        },
    }
}

/// What the agent needs to know of `repctl status`.
#[must_use]
pub fn local_state(st: &NodeStatus) -> LocalState {
    let connected = st.peer_connected();
    LocalState {
        role: st.role,
        disk: st.disk,
        connected,
        peer_role: if connected { st.peer_role } else { None },
        peer_disk: st.peer_disk,
        gens: Generations {
            current: hex_gen(&st.generations.current),
            bitmap: hex_gen(&st.generations.bitmap),
            history: [
                hex_gen(&st.generations.history[0]),
                hex_gen(&st.generations.history[1]),
            ],
        },
        suspended: st.suspended.is_some(),
        freeze_armed: st.freeze_on_disconnect,
    }
}

fn hex_gen(s: &str) -> u64 {
    u64::from_str_radix(s, 16).unwrap_or(0)
}

/// Run the agent in the foreground until SIGTERM or SIGINT.
///
/// # Errors
/// Why it could not start (configuration, sockets).
pub fn run(opts: &Options) -> Result<(), String> {
    // Shutdown signals go to one thread; every thread started below inherits
    // the mask.
    let mut sigs = SigSet::empty();
    sigs.add(Signal::SIGTERM);
    sigs.add(Signal::SIGINT);
    sigs.thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;

    let cfg = AgentConfig::load(&opts.config, opts.node.as_deref()).map_err(|e| e.to_string())?;
    if !cfg.cluster.ops.ping_nodes.is_empty() {
        // Without the program every probe would fail and the node would give
        // up its role for want of a tool: refuse to start instead.
        let found = std::process::Command::new("ping")
            .arg("-V")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Err(
                "ping-nodes is set, but the `ping` program is not installed or does not run \
                 (apt-get install iputils-ping)"
                    .into(),
            );
        }
    }
    let resource = cfg.resource.resource.name.clone();
    let span = tracing::info_span!("agent", resource = %resource, node = %cfg.me);
    let _g = span.enter();
    let links = cfg.links();
    let device = cfg
        .resource
        .node(&cfg.me)
        .map(ublk_target::config::Node::device_path)
        .unwrap_or_default();
    let repd_sock = ublk_target::control::socket_path(&opts.run_dir, &resource, &cfg.me);
    let agent_sock = control::socket_path(&opts.run_dir, &resource, &cfg.me);

    let (tx, rx) = mpsc::channel::<Msg>();
    let mut sockets = Vec::with_capacity(links.len());
    for (k, l) in links.iter().enumerate() {
        let s = UdpSocket::bind(l.local).map_err(|e| {
            format!(
                "cannot bind heartbeat path {k} ({}) on {}: {e} (is the address local, and no other agent running?)",
                l.name, l.local
            )
        })?;
        let r = s
            .try_clone()
            .map_err(|e| format!("heartbeat socket {}: {e}", l.local))?;
        let tx = tx.clone();
        let span = span.clone();
        std::thread::Builder::new()
            .name(format!("hb-recv-{k}"))
            .spawn(move || {
                let _g = span.enter();
                receive(&r, k, &tx);
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        sockets.push(s);
    }

    // The witness is asked from an ephemeral port: its answers come back
    // there, and no configuration has to name it.
    let witness_sock = match cfg.cluster.witness {
        None => None,
        Some(w) => {
            let any: SocketAddr = if w.is_ipv4() {
                SocketAddr::from(([0, 0, 0, 0], 0))
            } else {
                SocketAddr::from(([0u16; 8], 0))
            };
            let s = UdpSocket::bind(any)
                .map_err(|e| format!("cannot open a socket toward the witness {w}: {e}"))?;
            let r = s.try_clone().map_err(|e| format!("witness socket: {e}"))?;
            let tx = tx.clone();
            let span = span.clone();
            std::thread::Builder::new()
                .name("witness-recv".into())
                .spawn(move || {
                    let _g = span.enter();
                    receive_witness(&r, &tx);
                })
                .map_err(|e| format!("cannot start a thread: {e}"))?;
            Some((s, w))
        }
    };

    let (ctl_tx, ctl_rx) = mpsc::channel::<Incoming>();
    control::serve(&agent_sock, ctl_tx)?;
    {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("agent-control-fwd".into())
            .spawn(move || {
                for inc in ctl_rx {
                    if tx.send(Msg::Control(inc)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
    }

    let (repd_tx, repd_rx) = mpsc::channel::<Op>();
    {
        let tx = tx.clone();
        let span = span.clone();
        let every = cfg.cluster.keepalive;
        let sock = repd_sock.clone();
        std::thread::Builder::new()
            .name("agent-repd".into())
            .spawn(move || {
                let _g = span.enter();
                repd_worker(&sock, every, &repd_rx, &tx);
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
    }

    let ctx = Ctx {
        resource: resource.clone(),
        node: cfg.me.clone(),
        peer: cfg.peer.clone(),
        device: device.clone(),
        wait_for_device: ublk_target::ublk::driver_present(),
    };
    if !cfg.cluster.ops.ping_nodes.is_empty() {
        let tx = tx.clone();
        let span = span.clone();
        let ops = cfg.cluster.ops.clone();
        std::thread::Builder::new()
            .name("agent-ping".into())
            .spawn(move || {
                let _g = span.enter();
                ping_worker(&ops, &tx);
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
    }
    let (exec_tx, exec_rx) = mpsc::channel::<Op>();
    {
        let tx = tx.clone();
        let span = span.clone();
        let chain = cfg.cluster.resources.clone();
        let hooks = Hooks {
            fence: cfg.cluster.fence_command.clone(),
            reboot: cfg.cluster.ops.reboot_command.clone(),
            timeout: cfg.cluster.fence_timeout,
        };
        let ctx = ctx.clone();
        std::thread::Builder::new()
            .name("agent-exec".into())
            .spawn(move || {
                let _g = span.enter();
                exec_worker(&chain, &hooks, &ctx, &exec_rx, &tx);
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
    }

    {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("agent-signals".into())
            .spawn(move || {
                if let Ok(sig) = sigs.wait() {
                    let _ = tx.send(Msg::Shutdown(format!("{sig:?}")));
                }
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
    }
    let tx_hook = tx;

    if let Some(w) = cfg.cluster.witness {
        tracing::info!(witness = %w, on_no_quorum = ?cfg.cluster.on_no_quorum, "quorum with a witness: 2 votes of 3; a Primary without quorum suspends its writes");
    }
    match &cfg.cluster.fence_command {
        Some(f) => tracing::info!(fence_command = %f, "a dead peer is fenced before this node promotes"),
        None => tracing::warn!("no fence-command: a dead peer is replaced on deadtime alone, as heartbeat does (a cut of every path causes a split brain)"),
    }

    let clock = Instant::now();
    let now = || Millis::from_ms(ms(clock.elapsed()));
    let incarnation: u64 = rand::random();
    let started_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(ms)
        .unwrap_or(0);
    let mut core = Core::new(core_config(&cfg), incarnation, started_ms, now());
    tracing::info!(
        incarnation = %format!("{incarnation:016x}"),
        paths = links.len(),
        resources = cfg.cluster.resources.len(),
        control = %agent_sock.display(),
        "cluster-agent running"
    );
    println!(
        "cluster-agent: resource {resource} node {} running; control socket {}",
        cfg.me,
        agent_sock.display()
    );
    let key = cfg.cluster.auth_key.clone();
    let mut bad_logged = 0u64;
    let mut sb = SplitBrainView::default();
    let reason = loop {
        core.handle(now(), Input::Tick);
        while let Some(a) = core.poll_action() {
            match a {
                Action::Send { path, beat } => {
                    let data = wire::encode(&key, &resource, &cfg.me, &beat);
                    if let (Some(s), Some(l)) = (sockets.get(path), links.get(path)) {
                        if let Err(e) = s.send_to(&data, l.peer) {
                            tracing::debug!(path, peer = %l.peer, "heartbeat not sent: {e}");
                        }
                    }
                }
                Action::AskWitness(req) => {
                    if let Some((s, w)) = &witness_sock {
                        let data = crate::witness::encode_request(&key, &resource, &cfg.me, &req);
                        if let Err(e) = s.send_to(&data, w) {
                            tracing::debug!(witness = %w, "witness request not sent: {e}");
                        }
                    }
                }
                Action::Run(op) => {
                    tracing::info!(?op, "running");
                    let sent = match op {
                        Op::Promote { .. }
                        | Op::Demote
                        | Op::SuspendIo { .. }
                        | Op::ResumeIo { .. }
                        | Op::ArmFreeze
                        | Op::Outdate => repd_tx.send(op).is_ok(),
                        _ => exec_tx.send(op).is_ok(),
                    };
                    if !sent {
                        break;
                    }
                }
                Action::Log { warn, text } => {
                    if warn {
                        tracing::warn!("{text}");
                    } else {
                        tracing::info!("{text}");
                    }
                }
            }
        }
        let wait = core
            .poll_timeout()
            .map_or(1000, |t| t.ms_since_or_zero(now()))
            .clamp(1, 1000);
        let msg = match rx.recv_timeout(Duration::from_millis(wait)) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break "every worker stopped".to_string(),
        };
        let input = match msg {
            Msg::Packet { path, data, from } => match wire::decode(&key, &data) {
                Ok(p) if p.resource == resource && p.node == cfg.peer => {
                    Input::Beat { path, beat: p.beat }
                }
                Ok(p) => {
                    log_bad(
                        &mut bad_logged,
                        path,
                        from,
                        &format!(
                            "heartbeat of resource {} node {} (expecting {resource} from {})",
                            p.resource, p.node, cfg.peer
                        ),
                    );
                    Input::BadPacket {
                        path,
                        kind: BadPacket::Foreign,
                    }
                }
                Err(e) => {
                    log_bad(&mut bad_logged, path, from, &e.to_string());
                    Input::BadPacket {
                        path,
                        kind: if e == DecodeError::BadMac {
                            BadPacket::BadMac
                        } else {
                            BadPacket::Malformed
                        },
                    }
                }
            },
            Msg::Witness { data, from } => match crate::witness::decode_reply(&key, &data) {
                Ok(p) if p.resource == resource && p.node == cfg.me => Input::Witness(p.body),
                Ok(p) => {
                    log_bad(
                        &mut bad_logged,
                        usize::MAX,
                        from,
                        &format!("witness answer for {} of {}", p.node, p.resource),
                    );
                    continue;
                }
                Err(e) => {
                    log_bad(&mut bad_logged, usize::MAX, from, &format!("witness: {e}"));
                    continue;
                }
            },
            Msg::Local(l) => Input::Local(l),
            Msg::Done { op, result } => {
                match &result {
                    OpResult::Ok => tracing::info!(?op, "done"),
                    other => tracing::info!(?op, result = ?other, "done"),
                }
                Input::Done { op, result }
            }
            Msg::Control(inc) => {
                let reply = match inc.request {
                    Request::Status => Reply {
                        ok: true,
                        error: None,
                        status: Some(status_json(&core, now(), &cfg, &links, &device, clock, &sb)),
                    },
                    Request::Switchover => match core.request_switchover(now()) {
                        Ok(why) => {
                            tracing::info!("{why}");
                            Reply {
                                ok: true,
                                error: None,
                                status: Some(status_json(
                                    &core,
                                    now(),
                                    &cfg,
                                    &links,
                                    &device,
                                    clock,
                                    &sb,
                                )),
                            }
                        }
                        Err(e) => {
                            tracing::warn!("switchover refused: {e}");
                            Reply {
                                ok: false,
                                error: Some(e),
                                status: None,
                            }
                        }
                    },
                };
                let _ = inc.reply.send(reply);
                continue;
            }
            Msg::Ping(view) => {
                core.set_ping(now(), Some(view));
                continue;
            }
            Msg::SplitBrain(flag) => {
                if flag && !sb.detected {
                    sb.detections += 1;
                    let role = core
                        .status(now())
                        .local
                        .map_or_else(|| "unknown".to_string(), |l| format!("{:?}", l.role));
                    let hook = cfg.cluster.ops.split_brain_command.clone();
                    core.note(
                        now(),
                        true,
                        format!(
                            "repd reports a split brain (local role {role}); {}",
                            if hook.is_some() {
                                "running split-brain-command"
                            } else {
                                "no split-brain-command configured: resolve it by hand \
                                 (repctl secondary; repctl connect --discard-my-data on the victim)"
                            }
                        ),
                    );
                    if let Some(cmd) = hook {
                        sb.hook_runs += 1;
                        spawn_split_brain_hook(
                            cmd,
                            cfg.cluster.fence_timeout,
                            &ctx,
                            role,
                            &tx_hook,
                        );
                    }
                } else if !flag && sb.detected {
                    core.note(now(), false, "repd no longer reports a split brain".into());
                }
                sb.detected = flag;
                continue;
            }
            Msg::HookDone(text) => {
                core.note(now(), !text.contains("exit 0"), text.clone());
                sb.last_hook = Some(text);
                continue;
            }
            Msg::Shutdown(sig) => break format!("signal {sig}"),
        };
        core.handle(now(), input);
    };
    tracing::info!(
        "stopping ({reason}); the device and the chain are left as they are: a restarted agent adopts them"
    );
    let _ = std::fs::remove_file(&agent_sock);
    Ok(())
}

fn log_bad(count: &mut u64, path: usize, from: SocketAddr, what: &str) {
    *count += 1;
    if *count <= 10 || count.is_power_of_two() {
        tracing::warn!(path, %from, dropped = *count, "dropped a packet: {what}");
    }
}

fn receive(s: &UdpSocket, path: usize, tx: &Sender<Msg>) {
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

fn receive_witness(s: &UdpSocket, tx: &Sender<Msg>) {
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

fn repd_worker(sock: &Path, every: Duration, rx: &Receiver<Op>, tx: &Sender<Msg>) {
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
        let msg = match ublk_target::control::request(
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

fn repd_op(sock: &Path, op: &Op) -> OpResult {
    let (cmd, what) = match op {
        Op::Promote { force } => (ControlCmd::Primary { force: *force }, "promote"),
        Op::Demote => (ControlCmd::Secondary, "demote"),
        Op::SuspendIo { fail } => (ControlCmd::SuspendIo { fail: *fail }, "suspend-io"),
        Op::ResumeIo { current } => (
            ControlCmd::ResumeIo {
                if_current: Some(format!("{current:016X}")),
            },
            "resume-io",
        ),
        Op::ArmFreeze => (
            ControlCmd::FreezeOnDisconnect { on: true },
            "freeze-on-disconnect",
        ),
        Op::Outdate => (ControlCmd::Outdate, "outdate"),
        other => return OpResult::Failed(format!("{other:?} is not a device operation")),
    };
    match ublk_target::control::request(sock, &cmd, Some(Duration::from_secs(60))) {
        Ok(r) if r.ok => match (&cmd, r.status.map(|s| s.role)) {
            (ControlCmd::Primary { .. }, Some(Role::Secondary)) => {
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
struct Hooks {
    fence: Option<String>,
    reboot: Option<String>,
    timeout: Duration,
}

/// What status shows of split brains.
#[derive(Debug, Default)]
struct SplitBrainView {
    /// repd's flag as last polled.
    detected: bool,
    /// Rising edges seen since the agent started.
    detections: u64,
    hook_runs: u64,
    last_hook: Option<String>,
}

fn spawn_split_brain_hook(
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
            let code = code.map_or_else(|| "no exit code".to_string(), |c| format!("exit {c}"));
            let out = out.trim();
            let text = if out.is_empty() {
                format!("split-brain-command: {code}")
            } else {
                format!("split-brain-command: {code}: {out}")
            };
            let _ = tx.send(Msg::HookDone(text));
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the split-brain-command: {e}");
    }
}

/// Probe every ping node each interval (ICMP echo through `ping`, so that no
/// raw socket is needed here); report how many answered within ping-dead.
fn ping_worker(ops: &crate::config::OpsSettings, tx: &Sender<Msg>) {
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

fn exec_worker(
    chain: &[ResourceEntry],
    hooks: &Hooks,
    ctx: &Ctx,
    rx: &Receiver<Op>,
    tx: &Sender<Msg>,
) {
    for op in rx {
        let result = match &op {
            Op::Start(i) | Op::Stop(i) => match chain.get(*i) {
                None => OpResult::Failed(format!("no resource {i}")),
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
            other => OpResult::Failed(format!("{other:?} is not a chain operation")),
        };
        if tx.send(Msg::Done { op, result }).is_err() {
            return;
        }
    }
}

fn status_json(
    core: &Core,
    now: Millis,
    cfg: &AgentConfig,
    links: &[Link],
    device: &Path,
    clock: Instant,
    sb: &SplitBrainView,
) -> Value {
    let st = core.status(now);
    let mut v = serde_json::to_value(&st).unwrap_or(Value::Null);
    let Some(obj) = v.as_object_mut() else {
        return v;
    };
    obj.insert("resource".into(), json!(cfg.resource.resource.name));
    obj.insert("pid".into(), json!(std::process::id()));
    obj.insert("uptime_ms".into(), json!(ms(clock.elapsed())));
    // With uptime_ms this puts the transitions (`at`, agent clock) on the
    // wall clock, for scripts that time a failover against their own events.
    obj.insert(
        "unix_ms".into(),
        json!(SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(ms)
            .unwrap_or(0)),
    );
    obj.insert("fence_command".into(), json!(cfg.cluster.fence_command));
    obj.insert(
        "witness".into(),
        json!(cfg.cluster.witness.map(|w| w.to_string())),
    );
    obj.insert(
        "on_no_quorum".into(),
        json!(match cfg.cluster.on_no_quorum {
            NoQuorum::SuspendIo => "suspend-io",
            NoQuorum::IoError => "io-error",
        }),
    );
    obj.insert("auto_failback".into(), json!(cfg.cluster.auto_failback));
    obj.insert(
        "split_brain".into(),
        json!({
            "detected": sb.detected,
            "detections": sb.detections,
            "hook": cfg.cluster.ops.split_brain_command,
            "hook_runs": sb.hook_runs,
            "last_hook": sb.last_hook,
        }),
    );
    obj.insert(
        "ping_nodes".into(),
        json!(cfg
            .cluster
            .ops
            .ping_nodes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()),
    );
    obj.insert("preferred".into(), json!(cfg.cluster.preferred));
    if let Some(paths) = obj.get_mut("paths").and_then(Value::as_array_mut) {
        for (p, l) in paths.iter_mut().zip(links) {
            if let Some(po) = p.as_object_mut() {
                po.insert("name".into(), json!(l.name));
                po.insert("local".into(), json!(l.local.to_string()));
                po.insert("peer".into(), json!(l.peer.to_string()));
            }
        }
    }
    let mut chain = vec![json!({
        "type": "device",
        "label": format!("device:{} ({})", device.display(), cfg.resource.resource.name),
        "state": if st.holds_role { "primary" } else { "secondary" },
    })];
    for (r, s) in cfg.cluster.resources.iter().zip(&st.resources) {
        chain.push(json!({
            "type": r.kind(),
            "label": r.label(),
            "state": s,
        }));
    }
    obj.insert("chain".into(), Value::Array(chain));
    v
}
