//! The agent process around the core: UDP heartbeat sockets (one per path),
//! a worker that talks to the local repd over its control socket (status
//! polls every keepalive, promote, demote: in one thread, so a status never
//! overtakes the result of a command), a worker that runs the resource
//! chain and the fence command, and the agent's own control socket.
//!
//! Here: [`run`], which starts the sockets and threads and then drives the
//! core (`Agent`: tick, do its actions, feed it each message); in `workers`
//! the threads; in `status` what `cluster-agent status` shows.

mod status;
mod workers;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{SigSet, Signal};
use rep_control::protocol::NodeStatus;
use serde_json::Value;

use replication_proto::gen::Generations;

use self::status::{status_json, SplitBrainView};
use self::workers::{
    exec_worker, is_device_op, monitor_worker, ping_worker, receive, receive_witness, repd_worker,
    spawn_split_brain_hook, Hooks,
};
use crate::config::{AgentConfig, Link, NoQuorum};
use crate::control::{self, Incoming, Reply, Request};
use crate::core::{
    Action, BadPacket, Core, CoreConfig, Input, LocalState, MonitorConfig, MonitorOutcome, Op,
    OpResult, OpsConfig, PingView,
};
use crate::resources::Ctx;
use crate::vocab::{Incarnation, Millis};
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
    /// The split-brain command ended: whether it exited 0, and what to note.
    HookDone {
        succeeded: bool,
        text: String,
    },
    /// What monitor `id` of resource `res` found.
    Monitor {
        res: usize,
        id: u64,
        outcome: MonitorOutcome,
    },
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
        monitors: c
            .monitors
            .iter()
            .map(|m| MonitorConfig {
                interval_ms: ms(m.interval),
                threshold: m.threshold,
            })
            .collect(),
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
    check_ping_program(&cfg)?;
    let span = tracing::info_span!("agent", resource = %cfg.resource.resource.name, node = %cfg.me);
    let _g = span.enter();
    let mut agent = Agent::start(opts, cfg, sigs, &span)?;
    let reason = agent.run_loop();
    tracing::info!(
        "stopping ({reason}); the device and the chain are left as they are: a restarted agent adopts them"
    );
    let _ = std::fs::remove_file(&agent.agent_sock);
    Ok(())
}

/// With ping nodes, refuse to start when the `ping` program does not run.
fn check_ping_program(cfg: &AgentConfig) -> Result<(), String> {
    if cfg.cluster.ops.ping_nodes.is_empty() {
        return Ok(());
    }
    // Without the program every probe would fail and the node would give
    // up its role for want of a tool: refuse to start instead.
    let found = std::process::Command::new("ping")
        .arg("-V")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        Ok(())
    } else {
        Err(
            "ping-nodes is set, but the `ping` program is not installed or does not run \
             (apt-get install iputils-ping)"
                .into(),
        )
    }
}

/// Start a named thread.
fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), String> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(drop)
        .map_err(|e| format!("cannot start a thread: {e}"))
}

/// Bind one UDP socket per heartbeat path, each with a receiving thread.
fn bind_heartbeat_paths(
    links: &[Link],
    tx: &Sender<Msg>,
    span: &tracing::Span,
) -> Result<Vec<UdpSocket>, String> {
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
        spawn(&format!("hb-recv-{k}"), move || {
            let _g = span.enter();
            receive(&r, k, &tx);
        })?;
        sockets.push(s);
    }
    Ok(sockets)
}

/// The socket toward the witness, with its receiving thread. The witness
/// is asked from an ephemeral port: its answers come back there, and no
/// configuration has to name it.
fn open_witness_socket(
    witness: Option<SocketAddr>,
    tx: &Sender<Msg>,
    span: &tracing::Span,
) -> Result<Option<(UdpSocket, SocketAddr)>, String> {
    let Some(w) = witness else {
        return Ok(None);
    };
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
    spawn("witness-recv", move || {
        let _g = span.enter();
        receive_witness(&r, &tx);
    })?;
    Ok(Some((s, w)))
}

/// Serve the agent's control socket; its requests join the main channel.
fn serve_control(agent_sock: &Path, tx: &Sender<Msg>) -> Result<(), String> {
    let (ctl_tx, ctl_rx) = mpsc::channel::<Incoming>();
    control::serve(agent_sock, ctl_tx).map_err(|e| e.to_string())?;
    let tx = tx.clone();
    spawn("agent-control-fwd", move || {
        for inc in ctl_rx {
            if tx.send(Msg::Control(inc)).is_err() {
                return;
            }
        }
    })
}

/// Start the repd worker; device operations go to the returned sender.
fn start_repd_worker(
    repd_sock: PathBuf,
    every: Duration,
    tx: &Sender<Msg>,
    span: &tracing::Span,
) -> Result<Sender<Op>, String> {
    let (repd_tx, repd_rx) = mpsc::channel::<Op>();
    let tx = tx.clone();
    let span = span.clone();
    spawn("agent-repd", move || {
        let _g = span.enter();
        repd_worker(&repd_sock, every, &repd_rx, &tx);
    })?;
    Ok(repd_tx)
}

/// Start the ping worker when ping nodes are configured.
fn start_ping_worker(
    ops: &crate::config::OpsSettings,
    tx: &Sender<Msg>,
    span: &tracing::Span,
) -> Result<(), String> {
    if ops.ping_nodes.is_empty() {
        return Ok(());
    }
    let tx = tx.clone();
    let span = span.clone();
    let ops = ops.clone();
    spawn("agent-ping", move || {
        let _g = span.enter();
        ping_worker(&ops, &tx);
    })
}

/// Start the exec worker; chain operations and fencing go to the returned
/// sender.
fn start_exec_worker(
    cfg: &AgentConfig,
    ctx: &Ctx,
    tx: &Sender<Msg>,
    span: &tracing::Span,
) -> Result<Sender<Op>, String> {
    let (exec_tx, exec_rx) = mpsc::channel::<Op>();
    let tx = tx.clone();
    let span = span.clone();
    let chain = cfg.cluster.resources.clone();
    let hooks = Hooks {
        fence: cfg.cluster.fence_command.clone(),
        reboot: cfg.cluster.ops.reboot_command.clone(),
        timeout: cfg.cluster.fence_timeout,
    };
    let ctx = ctx.clone();
    spawn("agent-exec", move || {
        let _g = span.enter();
        exec_worker(&chain, &hooks, &ctx, &exec_rx, &tx);
    })?;
    Ok(exec_tx)
}

/// Start one monitor thread per resource of the chain; the core's monitor
/// requests go to the returned senders, by resource.
fn start_monitor_workers(
    cfg: &AgentConfig,
    ctx: &Ctx,
    tx: &Sender<Msg>,
    span: &tracing::Span,
) -> Result<Vec<Sender<u64>>, String> {
    let mut senders = Vec::new();
    for (res, (entry, settings)) in cfg
        .cluster
        .resources
        .iter()
        .zip(&cfg.cluster.monitors)
        .enumerate()
    {
        let (mon_tx, mon_rx) = mpsc::channel::<u64>();
        let (entry, settings, ctx, tx) = (entry.clone(), *settings, ctx.clone(), tx.clone());
        let span = span.clone();
        spawn(&format!("agent-monitor-{res}"), move || {
            let _g = span.enter();
            monitor_worker(res, &entry, settings, &ctx, &mon_rx, &tx);
        })?;
        senders.push(mon_tx);
    }
    Ok(senders)
}

/// A thread that waits for SIGTERM or SIGINT and asks the main loop to stop.
fn start_signal_thread(sigs: SigSet, tx: &Sender<Msg>) -> Result<(), String> {
    let tx = tx.clone();
    spawn("agent-signals", move || {
        if let Ok(sig) = sigs.wait() {
            let _ = tx.send(Msg::Shutdown(format!("{sig:?}")));
        }
    })
}

/// Say at start which policies guard a takeover.
fn log_policies(cfg: &AgentConfig) {
    if let Some(w) = cfg.cluster.witness {
        tracing::info!(witness = %w, on_no_quorum = ?cfg.cluster.on_no_quorum, "quorum with a witness: 2 votes of 3; a Primary without quorum suspends its writes");
    }
    match &cfg.cluster.fence_command {
        Some(f) => tracing::info!(fence_command = %f, "a dead peer is fenced before this node promotes"),
        None => tracing::warn!("no fence-command: a dead peer is replaced on deadtime alone, as heartbeat does (a cut of every path causes a split brain)"),
    }
}

/// The core, started now with a fresh incarnation, and the clock it runs on.
fn start_core(cfg: &AgentConfig, paths: usize, agent_sock: &Path) -> (Core, Instant) {
    let clock = Instant::now();
    let incarnation = Incarnation(rand::random());
    let started_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(ms)
        .unwrap_or(0);
    let core = Core::new(
        core_config(cfg),
        incarnation,
        started_ms,
        Millis::from_ms(ms(clock.elapsed())),
    );
    tracing::info!(
        incarnation = %format!("{incarnation:016x}"),
        paths,
        resources = cfg.cluster.resources.len(),
        control = %agent_sock.display(),
        "cluster-agent running"
    );
    println!(
        "cluster-agent: resource {} node {} running; control socket {}",
        cfg.resource.resource.name,
        cfg.me,
        agent_sock.display()
    );
    (core, clock)
}

/// The running agent: the core, its sockets and the workers' channels.
struct Agent {
    cfg: AgentConfig,
    resource: String,
    key: Vec<u8>,
    links: Vec<Link>,
    device: PathBuf,
    agent_sock: PathBuf,
    sockets: Vec<UdpSocket>,
    witness_sock: Option<(UdpSocket, SocketAddr)>,
    /// Every worker's messages.
    rx: Receiver<Msg>,
    /// For the split-brain hook's thread (and keeps the channel open).
    tx: Sender<Msg>,
    repd_tx: Sender<Op>,
    exec_tx: Sender<Op>,
    /// Each resource's monitor thread.
    monitor_tx: Vec<Sender<u64>>,
    ctx: Ctx,
    core: Core,
    clock: Instant,
    bad_logged: u64,
    sb: SplitBrainView,
}

/// What one message from a worker comes to.
enum Step {
    /// Feed this to the core.
    Input(Input),
    /// Handled here; nothing for the core.
    Handled,
    /// Stop the agent, for this reason.
    Stop(String),
}

impl Agent {
    /// Bind the sockets, start the workers and the core.
    fn start(
        opts: &Options,
        cfg: AgentConfig,
        sigs: SigSet,
        span: &tracing::Span,
    ) -> Result<Self, String> {
        let resource = cfg.resource.resource.name.clone();
        let links = cfg.links();
        let device = cfg
            .resource
            .node(&cfg.me)
            .map(rep_control::config::Node::device_path)
            .unwrap_or_default();
        let repd_sock = rep_control::client::socket_path(&opts.run_dir, &resource, &cfg.me);
        let agent_sock = control::socket_path(&opts.run_dir, &resource, &cfg.me);

        let (tx, rx) = mpsc::channel::<Msg>();
        let sockets = bind_heartbeat_paths(&links, &tx, span)?;
        let witness_sock = open_witness_socket(cfg.cluster.witness, &tx, span)?;
        serve_control(&agent_sock, &tx)?;
        let repd_tx = start_repd_worker(repd_sock, cfg.cluster.keepalive, &tx, span)?;
        let ctx = Ctx {
            resource: resource.clone(),
            node: cfg.me.clone(),
            peer: cfg.peer.clone(),
            device: device.clone(),
            wait_for_device: rep_control::device::driver_present(),
        };
        start_ping_worker(&cfg.cluster.ops, &tx, span)?;
        let exec_tx = start_exec_worker(&cfg, &ctx, &tx, span)?;
        let monitor_tx = start_monitor_workers(&cfg, &ctx, &tx, span)?;
        start_signal_thread(sigs, &tx)?;
        log_policies(&cfg);

        let (core, clock) = start_core(&cfg, links.len(), &agent_sock);
        Ok(Self {
            key: cfg.cluster.auth_key.clone(),
            cfg,
            resource,
            links,
            device,
            agent_sock,
            sockets,
            witness_sock,
            rx,
            tx,
            repd_tx,
            exec_tx,
            monitor_tx,
            ctx,
            core,
            clock,
            bad_logged: 0,
            sb: SplitBrainView::default(),
        })
    }

    /// The agent's clock: milliseconds since it started.
    fn now(&self) -> Millis {
        Millis::from_ms(ms(self.clock.elapsed()))
    }

    /// Tick the core, do what it asks, wait for the next message or its
    /// next wakeup; until a shutdown signal. Returns why it stopped.
    fn run_loop(&mut self) -> String {
        loop {
            self.core.handle(self.now(), Input::Tick);
            self.do_actions();
            // Ticks come no later than the core asks, and at least once a
            // second (the workers' news arrives as messages anyway).
            let wait = self
                .core
                .poll_timeout()
                .map_or(1000, |t| t.ms_since_or_zero(self.now()))
                .clamp(1, 1000);
            let msg = match self.rx.recv_timeout(Duration::from_millis(wait)) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return "every worker stopped".to_string(),
            };
            match self.on_msg(msg) {
                Step::Input(input) => self.core.handle(self.now(), input),
                Step::Handled => {}
                Step::Stop(reason) => return reason,
            }
        }
    }

    /// Do the core's actions in order: send, ask, run, log.
    fn do_actions(&mut self) {
        while let Some(a) = self.core.poll_action() {
            match a {
                Action::Send { path, beat } => {
                    let data = wire::encode(&self.key, &self.resource, &self.cfg.me, &beat);
                    if let (Some(s), Some(l)) = (self.sockets.get(path), self.links.get(path)) {
                        if let Err(e) = s.send_to(&data, l.peer) {
                            tracing::debug!(path, peer = %l.peer, "heartbeat not sent: {e}");
                        }
                    }
                }
                Action::AskWitness(req) => self.ask_witness(&req),
                Action::Monitor { res, id } => {
                    if self.monitor_tx.get(res).is_none_or(|m| m.send(id).is_err()) {
                        tracing::warn!(res, "no monitor thread for resource {res}");
                    }
                }
                Action::Run(op) => {
                    if !self.run_op(op) {
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
    }

    fn ask_witness(&self, req: &crate::witness::Request) {
        if let Some((s, w)) = &self.witness_sock {
            let data = crate::witness::encode_request(&self.key, &self.resource, &self.cfg.me, req);
            if let Err(e) = s.send_to(&data, w) {
                tracing::debug!(witness = %w, "witness request not sent: {e}");
            }
        }
    }

    /// Hand `op` to the worker that runs it; false when that worker is gone.
    fn run_op(&self, op: Op) -> bool {
        tracing::info!(?op, "running");
        if is_device_op(&op) {
            self.repd_tx.send(op).is_ok()
        } else {
            self.exec_tx.send(op).is_ok()
        }
    }

    /// One message from a worker.
    fn on_msg(&mut self, msg: Msg) -> Step {
        match msg {
            Msg::Packet { path, data, from } => Step::Input(self.on_packet(path, &data, from)),
            Msg::Witness { data, from } => self
                .on_witness_packet(&data, from)
                .map_or(Step::Handled, Step::Input),
            Msg::Local(l) => Step::Input(Input::Local(l)),
            Msg::Done { op, result } => {
                match &result {
                    OpResult::Ok => tracing::info!(?op, "done"),
                    other => tracing::info!(?op, result = ?other, "done"),
                }
                Step::Input(Input::Done { op, result })
            }
            Msg::Control(inc) => {
                let reply = self.on_control(&inc.request);
                let _ = inc.reply.send(reply);
                Step::Handled
            }
            Msg::Ping(view) => {
                self.core.set_ping(self.now(), Some(view));
                Step::Handled
            }
            Msg::SplitBrain(flag) => {
                self.on_split_brain(flag);
                Step::Handled
            }
            Msg::HookDone { succeeded, text } => {
                self.core.note(self.now(), !succeeded, text.clone());
                self.sb.last_hook = Some(text);
                Step::Handled
            }
            Msg::Monitor { res, id, outcome } => {
                Step::Input(Input::MonitorResult { res, id, outcome })
            }
            Msg::Shutdown(sig) => Step::Stop(format!("signal {sig}")),
        }
    }

    /// A heartbeat datagram: the peer's beat, or a bad packet the core counts.
    fn on_packet(&mut self, path: usize, data: &[u8], from: SocketAddr) -> Input {
        match wire::decode(&self.key, data) {
            Ok(p) if p.resource == self.resource && p.node == self.cfg.peer => {
                Input::Beat { path, beat: p.beat }
            }
            Ok(p) => {
                log_bad(
                    &mut self.bad_logged,
                    path,
                    from,
                    &format!(
                        "heartbeat of resource {} node {} (expecting {} from {})",
                        p.resource, p.node, self.resource, self.cfg.peer
                    ),
                );
                Input::BadPacket {
                    path,
                    kind: BadPacket::Foreign,
                }
            }
            Err(e) => {
                log_bad(&mut self.bad_logged, path, from, &e.to_string());
                Input::BadPacket {
                    path,
                    kind: if e == DecodeError::BadMac {
                        BadPacket::BadMac
                    } else {
                        BadPacket::Malformed
                    },
                }
            }
        }
    }

    /// A datagram from the witness: its answer to this node, or nothing.
    fn on_witness_packet(&mut self, data: &[u8], from: SocketAddr) -> Option<Input> {
        match crate::witness::decode_reply(&self.key, data) {
            Ok(p) if p.resource == self.resource && p.node == self.cfg.me => {
                Some(Input::Witness(p.body))
            }
            Ok(p) => {
                log_bad(
                    &mut self.bad_logged,
                    usize::MAX,
                    from,
                    &format!("witness answer for {} of {}", p.node, p.resource),
                );
                None
            }
            Err(e) => {
                log_bad(
                    &mut self.bad_logged,
                    usize::MAX,
                    from,
                    &format!("witness: {e}"),
                );
                None
            }
        }
    }

    /// A request on the agent's control socket.
    fn on_control(&mut self, request: &Request) -> Reply {
        match request {
            Request::Status => Reply {
                ok: true,
                error: None,
                status: Some(self.status()),
            },
            Request::Switchover => match self.core.request_switchover(self.now()) {
                Ok(why) => {
                    tracing::info!("{why}");
                    Reply {
                        ok: true,
                        error: None,
                        status: Some(self.status()),
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
            // What was cleared is the last event of the status.
            Request::Cleanup { resource } => match self.core.cleanup(self.now(), *resource) {
                Ok(what) => {
                    tracing::info!("{what}");
                    Reply {
                        ok: true,
                        error: None,
                        status: Some(self.status()),
                    }
                }
                Err(e) => Reply {
                    ok: false,
                    error: Some(e),
                    status: None,
                },
            },
        }
    }

    fn status(&self) -> Value {
        status_json(
            &self.core,
            self.now(),
            &self.cfg,
            &self.links,
            &self.device,
            self.clock,
            &self.sb,
        )
    }

    /// repd's split-brain flag with a status poll: note its edges, and run
    /// the split-brain command on a rising one.
    fn on_split_brain(&mut self, flag: bool) {
        if flag && !self.sb.detected {
            self.sb.detections += 1;
            let role = self
                .core
                .status(self.now())
                .local
                .map_or_else(|| "unknown".to_string(), |l| format!("{:?}", l.role));
            let hook = self.cfg.cluster.ops.split_brain_command.clone();
            self.core.note(
                self.now(),
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
                self.sb.hook_runs += 1;
                spawn_split_brain_hook(
                    cmd,
                    self.cfg.cluster.fence_timeout,
                    &self.ctx,
                    role,
                    &self.tx,
                );
            }
        } else if !flag && self.sb.detected {
            self.core.note(
                self.now(),
                false,
                "repd no longer reports a split brain".into(),
            );
        }
        self.sb.detected = flag;
    }
}

fn log_bad(count: &mut u64, path: usize, from: SocketAddr, what: &str) {
    *count += 1;
    if *count <= 10 || count.is_power_of_two() {
        tracing::warn!(path, %from, dropped = *count, "dropped a packet: {what}");
    }
}
