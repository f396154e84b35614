//! The node daemon's engine: one thread owns the replication state machine
//! and carries out its actions. It drives the local disk ring itself and
//! reads and writes the peer socket itself (readiness comes as polls on
//! that ring); everything else (the metadata writer, the peer listener and
//! dialer, the frontends, the control socket) talks to it through one
//! channel, so the state machine needs no locks and sees events in one
//! order.
//!
//! Here: the engine thread (`Runner`: its loop, inputs, and carrying out
//! the state machine's actions) and [`EngineHandle`], how other threads
//! reach it. Submodules:
//! - `peer/`: the peer's data connection (transport, framer, typed errors),
//!   read and written by the engine thread itself;
//! - `ping_conn`: the second connection that carries only pings;
//! - `meta`: the metadata writer thread (writes land in issue order);
//! - `admin`: control commands become admin commands, with the daemon's own
//!   checks and typed refusals;
//! - `users`: the registry of what makes the device in use, which every
//!   frontend registers with;
//! - `status`: the answer to `status`;
//! - `convert`: the resource file to the state machine's settings;
//! - `progress`: resync progress as /proc/drbd shows it;
//! - `latency`: per-request latency histograms (the metrics endpoint's).
//! - `resize`: `repctl resize` (this node's room, the metadata grow, the
//!   size the frontends show).
//! - `detach`: letting go of the disk when Diskless, and `attach`;
//! - `handlers`: the `[handlers]` commands (fence-peer, split-brain, ...),
//!   run on threads of their own; their exit codes come back as inputs.

mod adjust;
mod admin;
mod convert;
mod detach;
mod handlers;
pub mod latency;
mod meta;
mod peer;
mod ping_conn;
mod progress;
mod resize;
mod status;
mod tokens;
mod users;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rep_control::protocol::{ControlCmd, ControlReply, Counters, GenerationsHex, NodeStatus};
use replication_proto::machine::{
    Action, Admin, AppId, ConnState, Event, IoToken, MetaToken, Node, Payload, Status, Verb,
};
use replication_proto::meta::MetaFlags;
use replication_proto::time::Millis;
use replication_proto::wire::Role;

use crate::config::{Config, ResumeAfterCrash};
use crate::disk::{DiskOp, DiskOptions, DiskWaker, InlineDisk, LocalDisk};
use crate::frontend::{BlockBackend, IoRequest, IoResult, Reply, RoleWait};
use crate::md::{MdError, MetaDevice, MetaLocation};

pub use convert::node_config;
pub use users::{InUse, Registration, Users};

/// Everything the engine thread reacts to.
pub(crate) enum Input {
    App {
        req: IoRequest,
        reply: Reply,
        /// When the frontend received it (`stages`' `frontend_in`).
        received: std::time::Instant,
        /// For a read: the ublk request its data may land in (zero copy).
        zc: Option<crate::zerocopy::ZcDest>,
    },
    MetaDone {
        token: MetaToken,
        result: Result<(), i32>,
    },
    PeerStream {
        stream: std::net::TcpStream,
        outbound: bool,
        /// The TLS exporter value when the link runs over TLS.
        binding: Option<[u8; 32]>,
    },
    /// A ping connection: accepted (`for_conn` None) or dialed for the
    /// data connection `for_conn` (see `ping_conn`).
    PingStream {
        stream: std::net::TcpStream,
        for_conn: Option<u64>,
        binding: Option<[u8; 32]>,
    },
    /// A connection's TLS handshake failed (`[net] tls = "on"`): why.
    LinkRefused { why: String },
    Control {
        cmd: ControlCmd,
        reply: Sender<ControlReply>,
    },
    /// A handler (`handlers`) ended: its exit code, `None` when it did not
    /// exit by itself.
    HandlerDone {
        kind: handlers::Kind,
        exit: Option<i32>,
        timed_out: bool,
    },
    /// `repctl adjust` (see `adjust`).
    Adjust {
        path: std::path::PathBuf,
        reply: Sender<rep_control::protocol::AdjustReply>,
    },
    /// The metadata thread grew the metadata (`resize`), or could not.
    GrowDone {
        result: Result<replication_proto::machine::Grown, String>,
    },
    /// repd's lock on the disk, held by the engine from now on: released
    /// when the node goes Diskless, taken again by `attach` (`detach`).
    DiskLock(crate::disk_lock::DiskLock),
}

/// State shared with the frontends without a round trip to the engine.
#[derive(Default)]
struct Shared {
    primary: AtomicBool,
    data_bytes: AtomicU64,
    nbd_clients: AtomicU64,
    /// Counts changes of `primary` (and kicks), so the ublk manager can
    /// sleep until the role changes instead of polling it: a thread that
    /// wakes every few ms costs the I/O path real CPU in a TCG guest.
    role_changes: Mutex<u64>,
    role_changed: Condvar,
    /// What the frontends say makes the device in use: what `secondary`
    /// and `down` ask.
    users: Users,
    /// Counted by the engine thread, read by the metrics endpoint.
    latency: Arc<latency::Latencies>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("primary", &self.primary)
            .field("nbd_clients", &self.nbd_clients)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn bump_role_changes(&self) {
        let mut n = self
            .role_changes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *n = n.wrapping_add(1);
        drop(n);
        self.role_changed.notify_all();
    }
}

/// The engine's inbox. The engine thread sleeps in its disk ring's
/// `io_uring_enter`, not on the channel, so every send also wakes the
/// ring (one eventfd write per batch: none while the engine is busy).
#[derive(Clone)]
pub(crate) struct InputTx {
    tx: Sender<Input>,
    wake: DiskWaker,
}

impl InputTx {
    // Same contract as `mpsc::Sender::send`: a refused input comes back, so
    // a frontend can still answer its request.
    #[allow(clippy::result_large_err)]
    pub(crate) fn send(&self, input: Input) -> Result<(), mpsc::SendError<Input>> {
        self.tx.send(input)?;
        self.wake.wake();
        Ok(())
    }
}

/// A handle the frontends and the control socket use.
#[derive(Clone)]
pub struct EngineHandle {
    tx: InputTx,
    shared: Arc<Shared>,
    events: Arc<crate::events::Hub>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle").finish_non_exhaustive()
    }
}

impl EngineHandle {
    /// Send a control command and wait for the answer.
    pub fn control(&self, cmd: ControlCmd) -> Option<ControlReply> {
        let (tx, rx) = mpsc::channel();
        self.tx.send(Input::Control { cmd, reply: tx }).ok()?;
        rx.recv().ok()
    }

    /// `repctl adjust`: apply the resource file at `path` (see `adjust`).
    pub fn adjust(&self, path: std::path::PathBuf) -> Option<rep_control::protocol::AdjustReply> {
        let (tx, rx) = mpsc::channel();
        self.tx.send(Input::Adjust { path, reply: tx }).ok()?;
        rx.recv().ok()
    }

    /// How many NBD clients are connected (the NBD server reports it).
    pub fn set_nbd_clients(&self, n: usize) {
        self.shared.nbd_clients.store(n as u64, Ordering::Relaxed);
    }

    /// Where each frontend registers what makes the device in use (NBD
    /// clients, a mounted or open `/dev/ublkbN`): the one place
    /// `secondary`, `down` and a shutdown signal ask.
    pub fn users(&self) -> &Users {
        &self.shared.users
    }

    /// The per-request latency histograms (read without asking the engine).
    pub fn latencies(&self) -> &latency::Latencies {
        &self.shared.latency
    }

    /// The event stream (`repctl events`) the engine publishes to.
    pub fn events(&self) -> &crate::events::Hub {
        &self.events
    }

    /// Hands repd's disk lock to the engine, which releases it while the
    /// node is Diskless and takes it again on `attach`.
    pub fn hold_disk_lock(&self, lock: crate::disk_lock::DiskLock) {
        let _ = self.tx.send(Input::DiskLock(lock));
    }

    /// Ends every [`RoleWait::wait_role_change`] now, as a role change
    /// would (repd calls it when it stops the ublk manager).
    pub fn kick_role_waiters(&self) {
        self.shared.bump_role_changes();
    }
}

impl RoleWait for EngineHandle {
    fn role_changes(&self) -> u64 {
        *self
            .shared
            .role_changes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn wait_role_change(&self, seen: u64, timeout: Duration) {
        let n = self
            .shared
            .role_changes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Spurious wake-ups only shorten the nap: the caller looks again.
        let _ = self
            .shared
            .role_changed
            .wait_timeout_while(n, timeout, |n| *n == seen);
    }
}

impl BlockBackend for EngineHandle {
    fn size_bytes(&self) -> u64 {
        self.shared.data_bytes.load(Ordering::Relaxed)
    }
    fn writable(&self) -> bool {
        self.shared.primary.load(Ordering::Acquire)
    }
    fn submit(&self, req: IoRequest, reply: Reply) {
        self.submit_received(req, reply, std::time::Instant::now());
    }
    fn submit_received(&self, req: IoRequest, reply: Reply, received: std::time::Instant) {
        self.submit_app(req, reply, received, None);
    }
    fn submit_read_into(
        &self,
        offset: u64,
        len: u32,
        dst: crate::zerocopy::ZcDest,
        reply: Reply,
        received: std::time::Instant,
    ) {
        let req = IoRequest::Read { offset, len };
        self.submit_app(req, reply, received, Some(dst));
    }
    fn stages(&self) -> Option<Arc<crate::stages::Stages>> {
        let s = &self.shared.latency.stages;
        s.on().then(|| Arc::clone(s))
    }
}

impl EngineHandle {
    fn submit_app(
        &self,
        req: IoRequest,
        reply: Reply,
        received: std::time::Instant,
        zc: Option<crate::zerocopy::ZcDest>,
    ) {
        let app = Input::App {
            req,
            reply,
            received,
            zc,
        };
        if let Err(mpsc::SendError(Input::App { reply, .. })) = self.tx.send(app) {
            // The engine is gone (shutting down): nothing will write this.
            reply(Err(libc_errno::EIO));
        }
    }
}

mod libc_errno {
    pub const EIO: i32 = 5;
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Meta(#[from] MdError),
    #[error("{0}")]
    Disk(#[from] crate::disk::DiskError),
    #[error("{0}")]
    Settings(String),
    #[error("cannot listen for the peer on {addr}: {source} (is another repd running for this resource, or is the address not local?)")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

/// Options the daemon is started with.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Open the backing disk with O_DIRECT.
    pub direct: bool,
    /// Connect to the peer right away (like `drbdadm up`).
    pub connect: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            direct: true,
            connect: true,
        }
    }
}

/// A running engine: its handle and the thread to join.
#[derive(Debug)]
pub struct Engine {
    pub handle: EngineHandle,
    pub thread: std::thread::JoinHandle<()>,
}

struct Runner {
    node: Node,
    start: Instant,
    rx: Receiver<Input>,
    shared: Arc<Shared>,
    /// Driven by the engine thread itself: a write costs no hand-off to a
    /// disk thread and back, and one `io_uring_enter` submits a batch.
    disk: InlineDisk,
    meta: meta::MetaWriter,
    peer: peer::Transport,
    replies: HashMap<AppId, Reply>,
    /// Reads whose data lands in a ublk request when the local disk
    /// serves them (`crate::zerocopy`); at most one per reply.
    zc_reads: HashMap<AppId, crate::zerocopy::ZcDest>,
    next_app: u64,
    progress: progress::Tracker,
    peer_name: String,
    nbd_addr: Option<String>,
    /// The NBD export's exposure warning, for status (see `NbdAccess`).
    nbd_warning: Option<String>,
    down_waiters: Vec<Sender<ControlReply>>,
    /// A forced `down` that cut the NBD clients and waits for their
    /// requests in flight to end before it demotes; given up at the instant.
    forced_down: Option<(Sender<ControlReply>, Instant)>,
    /// FUA write-zeroes: the disk layer has no FUA for them, so a flush
    /// follows; own token -> (flush stage?, the state machine's token).
    fua_zeroes: HashMap<tokens::OwnToken, (bool, IoToken)>,
    own_tokens: tokens::OwnTokens,
    latency: latency::Tracker,
    handlers: handlers::Runner,
    span: tracing::Span,
    /// Where each turn's state changes go (`status::publish_events`).
    events: Arc<crate::events::Hub>,
    /// The running configuration `repctl adjust` compares with.
    running: adjust::Running,
    /// Where the metadata is, for `repctl resize`.
    grow: resize::Setup,
    /// This node in the resource file (its disk, for `attach`).
    me: crate::config::Node,
    /// Diskless: the disk is let go of (`detach`).
    disk_closed: bool,
    disk_lock: Option<crate::disk_lock::DiskLock>,
}

/// Start the engine for the local node of `cfg`.
pub fn start(
    cfg: &Config,
    node_name: Option<&str>,
    opts: &EngineOptions,
) -> Result<Engine, StartError> {
    let (me, peer_node) = cfg.local(node_name)?;
    cfg.check_local_disk(me)?;
    let (me, peer_node) = (me.clone(), peer_node.clone());
    let span = tracing::info_span!("repd", resource = %cfg.resource.name, node = %me.name);
    let _g = span.enter();

    let (md, state) = read_metadata(cfg, &me)?;
    let data_bytes = state.data_bytes;
    let mut ncfg = node_config(cfg, &me, &peer_node, data_bytes).map_err(StartError::Settings)?;
    let al_extents_on_disk = md.superblock().layout.al_extents;
    adjust::fit_al_extents(&mut ncfg, al_extents_on_disk, &cfg.path);
    let disk = open_disk(&me, data_bytes, opts)?;
    let (tx, rx) = mpsc::channel::<Input>();
    let tx = InputTx {
        tx,
        wake: disk.waker(),
    };
    let meta = meta::MetaWriter::start(md, tx.clone()).map_err(StartError::Thread)?;
    let tls = crate::tls::link::LinkTls::from_config(cfg, &me, &peer_node)
        .map_err(StartError::Settings)?;
    let peer = peer::Transport::start(&me, &peer_node, cfg.net.secret.as_bytes(), tls, tx.clone())?;

    let shared = Arc::new(Shared::default());
    shared.data_bytes.store(data_bytes, Ordering::Relaxed);
    let seed: u64 = rand::random();
    let mut node = Node::new(ncfg, state.persisted, Millis::ZERO, seed);
    // Promotions are stamped on the wall clock (discard-younger-primary).
    node.set_wall_clock_origin(convert::wall_clock_ms());
    let events = Arc::new(crate::events::Hub::new(&cfg.resource.name, &peer_node.name));
    let handle = EngineHandle {
        tx: tx.clone(),
        shared: shared.clone(),
        events: events.clone(),
    };
    let timing = latency::Tracker::new(shared.latency.clone());
    let mut runner = Runner {
        node,
        start: Instant::now(),
        rx,
        shared,
        disk,
        meta,
        peer,
        replies: HashMap::new(),
        zc_reads: HashMap::new(),
        next_app: 1,
        progress: progress::Tracker::default(),
        peer_name: peer_node.name.clone(),
        nbd_addr: me.nbd.map(|a| a.to_string()),
        nbd_warning: me.nbd.and_then(|a| me.nbd_access.exposure_warning(a)),
        down_waiters: Vec::new(),
        forced_down: None,
        fua_zeroes: HashMap::new(),
        own_tokens: tokens::OwnTokens::default(),
        latency: timing,
        handlers: handlers::Runner::new(cfg, &me, &peer_node, tx.clone()),
        span: span.clone(),
        events,
        running: adjust::Running {
            cfg: cfg.clone(),
            tx: tx.clone(),
        },
        grow: resize::Setup {
            location: MetaLocation::of(&me),
            al_extents: al_extents_on_disk,
        },
        me: me.clone(),
        disk_closed: false,
        disk_lock: None,
    };
    let before_target = runner.handlers.runs_before_resync_target();
    runner.node.set_before_resync_target(before_target);
    runner.first_commands(cfg, opts, state.crashed_primary);
    runner.publish_events();
    drop(_g);
    let thread = std::thread::Builder::new()
        .name("repd-engine".into())
        .spawn(move || runner.run())
        .map_err(StartError::Thread)?;
    Ok(Engine { handle, thread })
}

/// What the state machine starts from, read from the metadata.
struct Stored {
    persisted: replication_proto::machine::Persisted,
    data_bytes: u64,
    /// The last run ended while Primary (or an earlier one did and its
    /// activity log is not resynced yet).
    crashed_primary: bool,
}

/// Opens the node's metadata and reads what the state machine needs.
fn read_metadata(
    cfg: &Config,
    me: &crate::config::Node,
) -> Result<(MetaDevice, Stored), StartError> {
    let location = MetaLocation::of(me);
    let mut md = MetaDevice::open(&location, &cfg.resource.name, &me.name)?;
    let al = md.read_al()?;
    let (bitmap, bad_pages) = md.read_bitmap()?;
    if bad_pages > 0 {
        tracing::warn!(
            bad_pages,
            "bitmap pages failed their checksum and count as all dirty"
        );
    }
    let sb = md.superblock().clone();
    let stored = Stored {
        persisted: replication_proto::machine::Persisted {
            gens: sb.generations,
            flags: sb.flags,
            bitmap,
            al_seq: al.seq,
            al_extents: al.extents,
            promoted_at_ms: sb.promoted_at_ms,
        },
        data_bytes: sb.layout.data_bytes,
        crashed_primary: sb.flags.has(MetaFlags::PRIMARY_IND)
            || sb.flags.has(MetaFlags::CRASHED_PRIMARY),
    };
    Ok((md, stored))
}

/// Opens the backing disk, driven by the engine thread's own ring.
fn open_disk(
    me: &crate::config::Node,
    data_bytes: u64,
    opts: &EngineOptions,
) -> Result<InlineDisk, StartError> {
    let disk = LocalDisk::open(
        &me.disk,
        data_bytes,
        DiskOptions {
            direct: opts.direct,
            ..DiskOptions::default()
        },
    )?;
    if opts.direct && !disk.is_direct() {
        tracing::warn!(disk = %me.disk.display(), "O_DIRECT refused by the filesystem; using buffered I/O (flushes still make writes durable)");
    }
    Ok(disk.inline()?)
}

/// While this many disk ops are queued or in flight, the engine reads
/// nothing from the peer: a Data frame becomes one more disk op, and what
/// is left in the socket buffer makes TCP hold the peer back (the
/// back-pressure a blocked reader thread used to give).
const RX_PAUSE_DISK_OPS: usize = 256;

/// With at least this much write data queued for the peer in a turn, the
/// turn's local disk ops are submitted before the frames are encoded and
/// sent, so the disk works during the CRC pass and the send copy. Below
/// it the extra `io_uring_enter` costs more than the overlap gains.
const OVERLAP_MIN_BULK: usize = 64 * 1024;

impl Runner {
    /// What the daemon tells the state machine before its thread starts:
    /// `resume-after-crash = "always"`, then connect (like `drbdadm up`).
    fn first_commands(&mut self, cfg: &Config, opts: &EngineOptions, crashed_primary: bool) {
        if cfg.startup.resume_after_crash == ResumeAfterCrash::Always && crashed_primary {
            // Before the first connection, so that the handshake decides it.
            let now = Millis(self.now());
            if let Err(e) = self.node.admin(now, Admin::Verb(Verb::ResumeAfterCrash)) {
                tracing::warn!("resume-after-crash = \"always\": {e}");
            }
        }
        if opts.connect {
            let now = Millis(self.now());
            if let Err(e) = self.node.admin(
                now,
                Admin::Verb(Verb::Connect {
                    discard_my_data: false,
                }),
            ) {
                tracing::warn!("connect at start: {e}");
            }
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn run(mut self) {
        let span = self.span.clone();
        let _g = span.enter();
        tracing::info!("engine running");
        self.drain();
        let mut done = Vec::new();
        let mut polls = Vec::new();
        'run: loop {
            // Take everything queued, then act on timers; inputs that come
            // later wake the disk wait below.
            loop {
                match self.rx.try_recv() {
                    Ok(input) => self.input(input),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => break 'run,
                }
            }
            let now = Millis(self.now());
            self.node.handle(now, Event::Tick);
            self.drain();
            self.retry_forced_down();
            if self.node.is_down() {
                break;
            }
            let receive = self.disk.in_flight() < RX_PAUSE_DISK_OPS;
            let timeout = if receive && self.peer.rx_pending() {
                Duration::ZERO
            } else {
                self.node
                    .poll_timeout()
                    .map(|t| Duration::from_millis(t.as_ms().saturating_sub(self.now())))
                    .unwrap_or(Duration::from_secs(1))
                    .min(Duration::from_millis(200))
            };
            // Everything this turn sent to the peer, in one write.
            self.peer.follow_secret(&self.node.config().secret);
            self.peer.on_session(self.node.session());
            self.send_to_peer();
            if let Err(why) = self.peer.arm(&mut self.disk, receive) {
                self.peer_down(&why);
            }
            self.publish_events();
            // Submits the disk ops the inputs produced, sleeps until a disk
            // op completes, the peer socket is ready, an input arrives or a
            // timer is due.
            self.disk.wait(timeout, &mut done);
            for (token, result) in done.drain(..) {
                self.disk_done(token, result);
            }
            self.disk.take_polls(&mut polls);
            let (mut readable, mut ping) = (false, false);
            for ev in polls.drain(..) {
                match self.peer.on_poll(ev) {
                    peer::Ready::Readable => readable = true,
                    peer::Ready::Writable => self.send_to_peer(),
                    peer::Ready::Ping => ping = true,
                    peer::Ready::Stale => {}
                }
            }
            if ping {
                self.receive_ping();
                self.send_to_peer();
            }
            if (readable || self.peer.rx_pending()) && self.disk.in_flight() < RX_PAUSE_DISK_OPS {
                self.receive_from_peer();
            }
        }
        self.finish();
    }

    /// Encodes and sends what the turn queued for the peer.
    fn send_to_peer(&mut self) {
        if self.peer.bulk_queued() >= OVERLAP_MIN_BULK {
            self.disk.submit_now();
        }
        if let Err(why) = self.peer.flush() {
            self.peer_down(&why);
        }
    }

    /// Hands the frames the peer sent to the state machine, as many as
    /// this turn's budget allows.
    fn receive_from_peer(&mut self) {
        let mut budget = peer::RxBudget::per_turn();
        let now = Millis(self.now());
        loop {
            match self.peer.receive(&mut budget, &mut self.disk) {
                peer::Received::Frame(msg) => {
                    self.latency.frame(&msg);
                    self.node.handle(now, Event::Frame(msg));
                    self.drain();
                }
                peer::Received::Idle => break,
                peer::Received::Down(why) => {
                    self.peer_down(&why);
                    break;
                }
            }
        }
    }

    /// Pings and PingAcks from the ping connection: read whenever they
    /// come, even while the data connection is not read.
    fn receive_ping(&mut self) {
        let msgs = self.peer.receive_ping();
        let now = Millis(self.now());
        for m in msgs {
            self.node.handle(now, Event::Frame(m));
        }
        self.drain();
    }

    fn peer_down(&mut self, why: &peer::PeerError) {
        tracing::info!("peer connection down: {why}");
        // Our own finding, worth status's last_error (an EOF is not: the
        // peer said why before closing, or its node knows).
        if why.refused_a_frame() {
            self.node.note_link_error(&why.to_string());
        }
        self.peer.close();
        self.latency.peer_down();
        let now = Millis(self.now());
        self.node.handle(now, Event::TransportDown);
        self.drain();
    }

    fn finish(&mut self) {
        tracing::info!("engine stopping");
        self.peer.close();
        self.peer.stop();
        // Let the metadata writes the shutdown produced land.
        self.meta.stop();
        self.disk.shutdown();
        self.zc_reads.clear();
        for (_, r) in self.replies.drain() {
            r(Err(libc_errno::EIO));
        }
        self.publish_events();
        self.events.close();
        let st = self.status();
        for w in self.down_waiters.drain(..) {
            let _ = w.send(ControlReply {
                ok: true,
                error: None,
                refusal: None,
                status: Some(st.clone()),
            });
        }
    }

    fn input(&mut self, input: Input) {
        let now = Millis(self.now());
        match input {
            Input::App {
                req,
                reply,
                received,
                zc,
            } => {
                let id = AppId(self.next_app);
                self.next_app += 1;
                self.replies.insert(id, reply);
                if let Some(dst) = zc {
                    self.zc_reads.insert(id, dst);
                }
                self.latency.app(id, &req, received);
                let ev = match req {
                    IoRequest::Read { offset, len } => Event::AppRead { id, offset, len },
                    IoRequest::Write { offset, data, fua } => {
                        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
                        Event::AppWrite {
                            id,
                            offset,
                            payload: Payload::Data(data),
                            len,
                            fua,
                        }
                    }
                    IoRequest::Flush => Event::AppFlush { id },
                    IoRequest::Trim { offset, len } => Event::AppWrite {
                        id,
                        offset,
                        payload: Payload::Trim,
                        len,
                        fua: false,
                    },
                    IoRequest::WriteZeroes { offset, len, fua } => Event::AppWrite {
                        id,
                        offset,
                        payload: Payload::Zeroes,
                        len,
                        fua,
                    },
                };
                self.node.handle(now, ev);
            }
            Input::MetaDone { token, result } => {
                self.node.handle(now, Event::MetaDone { token, result })
            }
            Input::PeerStream {
                stream,
                outbound,
                binding,
            } => {
                if self.peer.adopt(stream, outbound) {
                    self.node.set_channel_binding(binding);
                    self.node.handle(now, Event::TransportUp);
                }
            }
            Input::PingStream {
                stream,
                for_conn,
                binding,
            } => {
                self.peer.adopt_ping(stream, for_conn, binding);
            }
            Input::LinkRefused { why } => self.node.note_link_error(&format!("TLS: {why}")),
            Input::Control { cmd, reply } => self.control(cmd, reply),
            Input::Adjust { path, reply } => {
                let _ = reply.send(self.adjust(&path));
            }
            Input::GrowDone { result } => self.grow_done(result),
            // Already Diskless (a disk that failed at once): not held.
            Input::DiskLock(lock) => {
                if !self.disk_closed {
                    self.disk_lock = Some(lock);
                }
            }
            Input::HandlerDone {
                kind,
                exit,
                timed_out,
            } => {
                self.handlers.record(kind, exit, timed_out);
                if kind == handlers::Kind::FencePeer {
                    self.node.handle(now, Event::FenceDone { exit });
                }
                if kind == handlers::Kind::BeforeResyncTarget {
                    let ok = exit == Some(0);
                    self.node.handle(now, Event::BeforeResyncTargetDone { ok });
                }
            }
        }
        self.drain();
    }

    fn disk_done(&mut self, raw: u64, result: IoResult) {
        let now = Millis(self.now());
        match tokens::DiskTag::of(raw) {
            tokens::DiskTag::Own(own) => {
                let Some((flushed, orig)) = self.fua_zeroes.remove(&own) else {
                    debug_assert!(false, "disk op {raw:#x} of the engine's own is unknown");
                    return;
                };
                if flushed || result.is_err() {
                    self.node.handle(
                        now,
                        Event::LocalDone {
                            token: orig,
                            result,
                        },
                    );
                } else {
                    let t = self.own_tokens.next();
                    self.fua_zeroes.insert(t, (true, orig));
                    self.disk.submit(t.raw(), DiskOp::Flush);
                }
            }
            tokens::DiskTag::Node(token) => {
                self.latency.local_done(token);
                self.node.handle(now, Event::LocalDone { token, result });
            }
        }
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(a) = self.node.poll_action() {
            self.act(a);
        }
        let primary = self.node.role() == Role::Primary;
        // Written only when it changes: drain runs several times per
        // request, and the frontends read this flag on every request.
        if self.shared.primary.load(Ordering::Acquire) != primary {
            self.shared.primary.store(primary, Ordering::Release);
            self.shared.bump_role_changes();
        }
        // Progress only matters (and status only costs) while syncing.
        let syncing = matches!(
            self.node.conn(),
            ConnState::SyncSource
                | ConnState::SyncTarget
                | ConnState::VerifySource
                | ConnState::VerifyTarget
        );
        if syncing || self.progress.current().is_some() {
            let now = self.now();
            if self.progress.due(now) {
                let st = self.node.status();
                self.progress.observe(now, &st);
            }
        }
    }

    fn act(&mut self, a: Action) {
        self.latency.action(&self.node, &a);
        if self.disk_closed {
            if let Action::LocalRead { token, .. }
            | Action::LocalWrite { token, .. }
            | Action::LocalFlush { token } = a
            {
                self.closed_disk_op(token);
                return;
            }
        }
        match a {
            Action::Connect => self.peer.set_wanted(true),
            Action::CloseConnection => {
                self.peer.set_wanted(false);
                self.peer.close();
            }
            Action::Send(m) => self.peer.send(m),
            Action::LocalRead { token, offset, len } => {
                let dst = self
                    .node
                    .app_of_local(token)
                    .and_then(|id| self.zc_reads.get(&id).cloned());
                let op = match dst {
                    Some(dst) => DiskOp::ReadInto { offset, len, dst },
                    None => DiskOp::Read { offset, len },
                };
                self.disk.submit(token.raw(), op)
            }
            Action::LocalWrite {
                token,
                offset,
                len,
                payload,
                fua,
            } => {
                let op = match payload {
                    Payload::Data(data) => DiskOp::Write { offset, data, fua },
                    Payload::Trim => DiskOp::Trim {
                        offset,
                        len: u64::from(len),
                    },
                    Payload::Zeroes if fua => {
                        let t = self.own_tokens.next();
                        self.fua_zeroes.insert(t, (false, token));
                        let len = u64::from(len);
                        self.disk
                            .submit(t.raw(), DiskOp::WriteZeroes { offset, len });
                        return;
                    }
                    Payload::Zeroes => DiskOp::WriteZeroes {
                        offset,
                        len: u64::from(len),
                    },
                };
                self.disk.submit(token.raw(), op);
            }
            Action::LocalFlush { token } => self.disk.submit(token.raw(), DiskOp::Flush),
            Action::WriteSuper {
                token,
                gens,
                flags,
                promoted_at_ms,
            } => self.meta.submit(
                token,
                meta::MetaOp::Super {
                    gens,
                    flags,
                    promoted_at_ms,
                },
            ),
            Action::WriteAl {
                token,
                seq,
                extents,
            } => self.meta.submit(token, meta::MetaOp::Al { seq, extents }),
            Action::WriteBitmap {
                token,
                first_word,
                words,
            } => {
                self.meta
                    .submit(token, meta::MetaOp::Bitmap { first_word, words });
            }
            Action::Complete { id, result } => {
                self.zc_reads.remove(&id);
                let reply = self.replies.remove(&id);
                // The state machine completes each request it was given
                // exactly once.
                debug_assert!(
                    reply.is_some(),
                    "request {id} completed twice or never submitted"
                );
                if let Some(r) = reply {
                    r(result);
                }
            }
            Action::Hook(h) => self.handlers.hook(&h),
            Action::GrowDisk {
                data_bytes,
                exact,
                assume_clean,
            } => self.grow_disk(data_bytes, exact, assume_clean),
            Action::SizeChanged { data_bytes } => self.size_changed(data_bytes),
            Action::CloseDisk => self.close_disk(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::md::CreateParams;

    /// One engine for node "alpha" of a two-node resource named `name`
    /// on a fresh 8 MiB file in `dir` (internal metadata), not connecting:
    /// what the engine's own tests drive through its control handle.
    pub(crate) fn start_alone(dir: &std::path::Path, name: &str) -> Engine {
        let disk = dir.join("alpha.img");
        std::fs::write(&disk, vec![0u8; 8 << 20]).expect("backing file");
        let text = format!(
            "[resource]\nname = \"{name}\"\n[net]\nsecret = \"s\"\n\
             [[node]]\nname = \"alpha\"\naddress = \"127.0.0.1:1\"\ndisk = \"{}\"\nmeta-disk = \"internal\"\ndevice = 0\n\
             [[node]]\nname = \"beta\"\naddress = \"127.0.0.1:2\"\ndisk = \"/nonexistent\"\nmeta-disk = \"internal\"\ndevice = 1\n",
            disk.display()
        );
        let cfg = Config::from_str_named(&text, format!("{name}.toml")).expect("config");
        let (me, _) = cfg.local(Some("alpha")).expect("alpha");
        MetaDevice::create(&CreateParams::from_config(&cfg, me), false).expect("create-md");
        let opts = EngineOptions {
            direct: false,
            connect: false,
        };
        start(&cfg, Some("alpha"), &opts).expect("engine")
    }

    /// The ublk manager sleeps in `wait_role_change` instead of polling
    /// the role: a promotion must end that sleep at once, and a sleep with
    /// nothing changing must last its timeout.
    #[test]
    fn a_promotion_wakes_whoever_waits_for_the_role() {
        let dir = tempfile::tempdir().expect("temp dir");
        let eng = start_alone(dir.path(), "rw");
        let h = eng.handle.clone();
        assert!(!h.writable());

        let seen = h.role_changes();
        let t0 = Instant::now();
        h.wait_role_change(seen, Duration::from_millis(300));
        assert!(
            t0.elapsed() >= Duration::from_millis(300),
            "woke with no change"
        );

        let seen = h.role_changes();
        let waiter = {
            let h = h.clone();
            std::thread::spawn(move || {
                let t0 = Instant::now();
                h.wait_role_change(seen, Duration::from_secs(60));
                (t0.elapsed(), h.writable())
            })
        };
        let reply = h
            .control(ControlCmd::Verb(Verb::Primary { force: true }))
            .expect("reply");
        assert!(reply.ok, "{:?}", reply.error);
        let (waited, writable) = waiter.join().expect("waiter");
        assert!(waited < Duration::from_secs(10), "waited {waited:?}");
        assert!(writable, "woken before the role changed");

        let _ = h.control(ControlCmd::Down { force: false });
        eng.thread.join().expect("engine thread");
    }
}
