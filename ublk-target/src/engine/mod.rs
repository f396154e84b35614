//! The node daemon's engine: one thread owns the replication state machine
//! and carries out its actions. It drives the local disk ring itself and
//! reads and writes the peer socket itself (readiness comes as polls on
//! that ring); everything else (the metadata writer, the peer listener and
//! dialer, the frontends, the control socket) talks to it through one
//! channel, so the state machine needs no locks and sees events in one
//! order.

mod convert;
mod meta;
mod peer;
mod ping_conn;
mod progress;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use replication_proto::machine::{
    Action, Admin, ConnState, Event, Node, Payload, Status, SuspendMode,
};
use replication_proto::meta::MetaFlags;
use replication_proto::time::Millis;
use replication_proto::wire::{DiskState, Role};
use serde::{Deserialize, Serialize};

use crate::config::{Config, ResumeAfterCrash};
use crate::disk::{DiskOp, DiskOptions, DiskWaker, InlineDisk, LocalDisk};
use crate::frontend::{BlockBackend, IoRequest, IoResult, Reply, RoleWait};
use crate::md::{MdError, MetaDevice, MetaLocation};

pub use convert::node_config;
pub use progress::SyncProgress;

/// Everything the engine thread reacts to.
pub(crate) enum Input {
    App {
        req: IoRequest,
        reply: Reply,
    },
    MetaDone {
        token: u64,
        result: Result<(), i32>,
    },
    PeerStream {
        stream: std::net::TcpStream,
        outbound: bool,
    },
    /// A ping connection: accepted (`for_conn` None) or dialed for the
    /// data connection `for_conn` (see `ping_conn`).
    PingStream {
        stream: std::net::TcpStream,
        for_conn: Option<u64>,
    },
    Control {
        cmd: ControlCmd,
        reply: Sender<ControlReply>,
    },
}

/// A command from `repctl` over the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum ControlCmd {
    Status,
    Primary {
        force: bool,
    },
    Secondary,
    Connect {
        discard_my_data: bool,
    },
    Disconnect,
    Invalidate,
    InvalidateRemote,
    Verify {
        repair: bool,
    },
    /// Stop the daemon in order. Refused while the device is in use (NBD
    /// clients connected, /dev/ublkbN open) unless `force`, which
    /// disconnects the NBD clients first (an open /dev/ublkbN still
    /// refuses: a mounted filesystem must not lose its disk).
    Down {
        #[serde(default)]
        force: bool,
    },
    /// Quorum lost (the cluster agent): hold (or with `fail`, fail with EIO)
    /// new writes and flushes until `resume-io`.
    SuspendIo {
        fail: bool,
    },
    /// With `if_current` (hex), only while that is still the data generation.
    ResumeIo {
        #[serde(default)]
        if_current: Option<String>,
    },
    /// Arm (or disarm) the freeze of a Primary's I/O when its peer is lost.
    FreezeOnDisconnect {
        on: bool,
    },
    /// drbdadm outdate: mark this (disconnected Secondary) node's data Outdated.
    Outdate,
    /// The last run ended while Primary and someone waits for the device:
    /// take the role back once that keeps one writer (repd sends it itself,
    /// see `startup.resume-after-crash`). Refused when the last run did not
    /// end as Primary.
    ResumeAfterCrash,
}

/// The answer to a [`ControlCmd`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlReply {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    #[serde(default)]
    pub status: Option<NodeStatus>,
}

/// What `repctl status --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub resource: String,
    pub node: String,
    pub peer: String,
    pub role: Role,
    pub peer_role: Option<Role>,
    pub connection: String,
    pub disk: DiskState,
    pub peer_disk: DiskState,
    pub protocol: String,
    pub out_of_sync_bytes: u64,
    pub split_brain: bool,
    pub last_error: Option<String>,
    /// When `last_error` happened: seconds since the Unix epoch, and its
    /// age in seconds when the status was taken. The error clears once the
    /// pair has been healthy again for a while (the log keeps it).
    #[serde(default)]
    pub last_error_at: Option<u64>,
    #[serde(default)]
    pub last_error_age_s: Option<u64>,
    pub sync: Option<SyncProgress>,
    pub generations: GenerationsHex,
    pub data_bytes: u64,
    /// /proc/drbd-style counters.
    pub counters: Counters,
    pub stats: StatsOut,
    pub nbd: Option<String>,
    pub nbd_clients: usize,
    pub pid: u32,
    /// New writes are held (`hold`) or failed (`fail`) after `suspend-io`.
    #[serde(default)]
    pub suspended: Option<SuspendMode>,
    #[serde(default)]
    pub freeze_on_disconnect: bool,
    /// The last run of this node ended while Primary and without its peer
    /// (DRBD's degraded cluster): `repctl wait-connect` then waits
    /// `degr-wfc-timeout` instead of `wfc-timeout`.
    #[serde(default)]
    pub degraded_at_start: bool,
    /// After a crash while Primary, once repd armed the resumption of the
    /// role: what it waits for, or what became of it.
    #[serde(default)]
    pub resume: Option<String>,
}

impl NodeStatus {
    /// Whether the peer is connected: the connection is established, idle
    /// or busy with a bitmap exchange, a resync or a verify.
    #[must_use]
    pub fn peer_connected(&self) -> bool {
        matches!(
            self.connection.as_str(),
            "Connected"
                | "SyncSource"
                | "SyncTarget"
                | "WFBitMapS"
                | "WFBitMapT"
                | "VerifySource"
                | "VerifyTarget"
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationsHex {
    pub current: String,
    pub bitmap: String,
    pub history: [String; 2],
}

/// The counters of /proc/drbd, named as there (KiB where DRBD uses KiB).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub ns: u64,
    pub nr: u64,
    pub dw: u64,
    pub dr: u64,
    pub al: u64,
    pub bm: u64,
    pub lo: u64,
    pub pe: u64,
    pub ua: u64,
    pub ap: u64,
    pub oos: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsOut {
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub resync_sent_bytes: u64,
    pub resync_received_bytes: u64,
    pub written_bytes: u64,
    pub read_bytes: u64,
    pub verified_bytes: u64,
    pub verify_out_of_sync_bytes: u64,
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
    /// The NBD server, as `secondary` and `down` see it (repd attaches it).
    nbd: Mutex<Option<NbdGate>>,
}

/// What the engine needs of the NBD server: how many clients are connected
/// now (not the count `status` shows, which is refreshed every 100 ms: a
/// client that just left must not refuse a `down`), and how to disconnect
/// them all (a forced `down`).
struct NbdGate {
    clients: Box<dyn Fn() -> usize + Send>,
    cut: Box<dyn Fn() + Send>,
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

    /// How many NBD clients are connected (the NBD server reports it).
    pub fn set_nbd_clients(&self, n: usize) {
        self.shared.nbd_clients.store(n as u64, Ordering::Relaxed);
    }

    /// Attach the NBD server: `clients` counts its connected clients now,
    /// `cut` disconnects them all (when `down --force` or SIGTERM stops the
    /// daemon while they are connected).
    pub fn attach_nbd(
        &self,
        clients: impl Fn() -> usize + Send + 'static,
        cut: impl Fn() + Send + 'static,
    ) {
        *self
            .shared
            .nbd
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(NbdGate {
            clients: Box::new(clients),
            cut: Box::new(cut),
        });
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
        if let Err(mpsc::SendError(Input::App { reply, .. })) =
            self.tx.send(Input::App { req, reply })
        {
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
    replies: HashMap<u64, Reply>,
    next_app: u64,
    progress: progress::Tracker,
    peer_name: String,
    nbd_addr: Option<String>,
    down_waiters: Vec<Sender<ControlReply>>,
    /// A forced `down` that cut the NBD clients and waits for their
    /// requests in flight to end before it demotes; given up at the instant.
    forced_down: Option<(Sender<ControlReply>, Instant)>,
    /// FUA write-zeroes: the disk layer has no FUA for them, so a flush
    /// follows; internal token -> (flush stage?, the state machine's token).
    fua_zeroes: HashMap<u64, (bool, u64)>,
    next_internal: u64,
    span: tracing::Span,
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

    let location = MetaLocation::of(&me);
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
    let data_bytes = sb.layout.data_bytes;
    let ncfg = node_config(cfg, &me, &peer_node, data_bytes).map_err(StartError::Settings)?;
    // The last run ended while Primary (or an earlier one did and its
    // activity log is not resynced yet).
    let crashed_primary =
        sb.flags.has(MetaFlags::PRIMARY_IND) || sb.flags.has(MetaFlags::CRASHED_PRIMARY);
    let persisted = replication_proto::machine::Persisted {
        gens: sb.generations,
        flags: sb.flags,
        bitmap,
        al_seq: al.seq,
        al_extents: al.extents,
    };

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
    let disk = disk.inline()?;
    let (tx, rx) = mpsc::channel::<Input>();
    let tx = InputTx {
        tx,
        wake: disk.waker(),
    };
    let meta = meta::MetaWriter::start(md, tx.clone()).map_err(StartError::Thread)?;
    let peer = peer::Transport::start(&me, &peer_node, cfg.net.secret.as_bytes(), tx.clone())?;

    let shared = Arc::new(Shared::default());
    shared.data_bytes.store(data_bytes, Ordering::Relaxed);
    let seed: u64 = rand::random();
    let node = Node::new(ncfg, persisted, Millis::ZERO, seed);
    let handle = EngineHandle {
        tx: tx.clone(),
        shared: shared.clone(),
    };
    let mut runner = Runner {
        node,
        start: Instant::now(),
        rx,
        shared,
        disk,
        meta,
        peer,
        replies: HashMap::new(),
        next_app: 1,
        progress: progress::Tracker::default(),
        peer_name: peer_node.name.clone(),
        nbd_addr: me.nbd.map(|a| a.to_string()),
        down_waiters: Vec::new(),
        forced_down: None,
        fua_zeroes: HashMap::new(),
        next_internal: INTERNAL_TOKEN,
        span: span.clone(),
    };
    if cfg.startup.resume_after_crash == ResumeAfterCrash::Always && crashed_primary {
        // Before the first connection, so that the handshake decides it.
        let now = Millis(runner.now());
        if let Err(e) = runner.node.admin(now, Admin::ResumeAfterCrash) {
            tracing::warn!("resume-after-crash = \"always\": {e}");
        }
    }
    if opts.connect {
        let now = Millis(runner.now());
        if let Err(e) = runner.node.admin(
            now,
            Admin::Connect {
                discard_my_data: false,
            },
        ) {
            tracing::warn!("connect at start: {e}");
        }
    }
    drop(_g);
    let thread = std::thread::Builder::new()
        .name("repd-engine".into())
        .spawn(move || runner.run())
        .map_err(StartError::Thread)?;
    Ok(Engine { handle, thread })
}

/// Disk tokens the engine makes itself live above the state machine's.
const INTERNAL_TOKEN: u64 = 1 << 62;

/// Why the device must not be taken from its users (see `Runner::in_use`).
struct InUse {
    why: String,
    nbd_clients: usize,
}

/// How long a client that just disconnected may take to leave the NBD
/// server's list before `secondary` or `down` counts it as connected.
const NBD_LEAVE_GRACE: Duration = Duration::from_millis(200);

/// How long a forced `down` waits for the requests of the NBD clients it
/// disconnected to end before it gives up (held requests never end).
const FORCED_DOWN_WAIT: Duration = Duration::from_secs(10);

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
    fn internal_token(&mut self) -> u64 {
        self.next_internal += 1;
        self.next_internal
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
            self.peer.on_session(self.node.session());
            self.send_to_peer();
            if let Err(why) = self.peer.arm(&mut self.disk, receive) {
                self.peer_down(&why);
            }
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

    fn peer_down(&mut self, why: &str) {
        tracing::info!("peer connection down: {why}");
        // Our own finding, worth status's last_error (an EOF is not: the
        // peer said why before closing, or its node knows).
        if peer::refused_a_frame(why) {
            self.node.note_link_error(why);
        }
        self.peer.close();
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
        for (_, r) in self.replies.drain() {
            r(Err(libc_errno::EIO));
        }
        let st = self.status();
        for w in self.down_waiters.drain(..) {
            let _ = w.send(ControlReply {
                ok: true,
                error: None,
                status: Some(st.clone()),
            });
        }
    }

    fn input(&mut self, input: Input) {
        let now = Millis(self.now());
        match input {
            Input::App { req, reply } => {
                let id = self.next_app;
                self.next_app += 1;
                self.replies.insert(id, reply);
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
            Input::PeerStream { stream, outbound } => {
                if self.peer.adopt(stream, outbound) {
                    self.node.handle(now, Event::TransportUp);
                }
            }
            Input::PingStream { stream, for_conn } => {
                self.peer.adopt_ping(stream, for_conn);
            }
            Input::Control { cmd, reply } => self.control(cmd, reply),
        }
        self.drain();
    }

    fn disk_done(&mut self, token: u64, result: IoResult) {
        let now = Millis(self.now());
        if let Some((flushed, orig)) = self.fua_zeroes.remove(&token) {
            if flushed || result.is_err() {
                self.node.handle(
                    now,
                    Event::LocalDone {
                        token: orig,
                        result,
                    },
                );
            } else {
                let t = self.internal_token();
                self.fua_zeroes.insert(t, (true, orig));
                self.disk.submit(t, DiskOp::Flush);
            }
        } else {
            self.node.handle(now, Event::LocalDone { token, result });
        }
        self.drain();
    }

    fn control(&mut self, cmd: ControlCmd, reply: Sender<ControlReply>) {
        let now = Millis(self.now());
        let admin = match &cmd {
            ControlCmd::Status => None,
            ControlCmd::Primary { force } => Some(Admin::Primary { force: *force }),
            ControlCmd::Secondary => {
                if let Some(u) = self.in_use(false) {
                    let why = if u.nbd_clients > 0 {
                        format!("{}; disconnect them first", u.why)
                    } else {
                        u.why
                    };
                    self.refuse(&reply, why);
                    return;
                }
                Some(Admin::Secondary)
            }
            ControlCmd::Connect { discard_my_data } => Some(Admin::Connect {
                discard_my_data: *discard_my_data,
            }),
            ControlCmd::Disconnect => Some(Admin::Disconnect),
            ControlCmd::Invalidate => Some(Admin::Invalidate),
            ControlCmd::InvalidateRemote => Some(Admin::InvalidateRemote),
            ControlCmd::Verify { repair } => Some(Admin::Verify { repair: *repair }),
            ControlCmd::Down { force } => {
                let clients = match self.in_use(*force) {
                    Some(u) => {
                        let hint = if u.nbd_clients > 0 && !*force {
                            "disconnect them, or `repctl down --force` to cut them (the node stays up)"
                        } else {
                            "the node stays up"
                        };
                        self.refuse(&reply, format!("{}; {hint}", u.why));
                        return;
                    }
                    None => self.nbd_clients(),
                };
                if *force && clients > 0 {
                    tracing::warn!(
                        clients,
                        "forced down: disconnecting the NBD clients (their next request fails)"
                    );
                    if let Some(gate) = self
                        .shared
                        .nbd
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .as_ref()
                    {
                        (gate.cut)();
                    }
                }
                Some(Admin::Down)
            }
            ControlCmd::SuspendIo { fail } => Some(Admin::SuspendIo {
                mode: if *fail {
                    SuspendMode::Fail
                } else {
                    SuspendMode::Hold
                },
            }),
            ControlCmd::ResumeIo { if_current: None } => Some(Admin::ResumeIo),
            ControlCmd::ResumeIo {
                if_current: Some(h),
            } => match u64::from_str_radix(h, 16) {
                Ok(current) => Some(Admin::ResumeIoAt { current }),
                Err(_) => {
                    let _ = reply.send(ControlReply {
                        ok: false,
                        error: Some(format!("resume-io: \"{h}\" is not a hex generation")),
                        status: Some(self.status()),
                    });
                    return;
                }
            },
            ControlCmd::FreezeOnDisconnect { on } => Some(Admin::FreezeOnDisconnect { on: *on }),
            ControlCmd::Outdate => Some(Admin::Outdate),
            ControlCmd::ResumeAfterCrash => Some(Admin::ResumeAfterCrash),
        };
        let result = match admin {
            None => Ok(()),
            Some(a) => {
                tracing::info!(command = ?a, "admin");
                self.node.admin(now, a).map_err(|e| e.to_string())
            }
        };
        self.drain();
        if let ControlCmd::Down { force } = cmd {
            if result.is_ok() {
                // Answered when the orderly shutdown finished.
                self.down_waiters.push(reply);
                return;
            }
            let pending = self.node.status().app_pending;
            if force && pending > 0 {
                // The cut clients' requests are still in the engine: demote
                // once they are done (`retry_forced_down`).
                tracing::info!(pending, "forced down: waiting for the requests in flight");
                self.forced_down = Some((reply, Instant::now() + FORCED_DOWN_WAIT));
                return;
            }
        }
        let st = self.status();
        let _ = reply.send(ControlReply {
            ok: result.is_ok(),
            error: result.err(),
            status: Some(st),
        });
    }

    /// NBD clients connected now. One that has just disconnected (an
    /// `nbdcopy` that exited a moment ago) may take a few ms to leave the
    /// server's list: a count above 0 is looked at again for up to
    /// [`NBD_LEAVE_GRACE`] (this only delays a refusal).
    fn nbd_clients(&self) -> usize {
        let gate = self
            .shared
            .nbd
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(gate) = gate.as_ref() else {
            return 0;
        };
        let t0 = Instant::now();
        loop {
            let n = (gate.clients)();
            if n == 0 || t0.elapsed() >= NBD_LEAVE_GRACE {
                return n;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Why the device must not be taken from its users now: NBD clients
    /// are connected (unless `cut_nbd`: a forced `down` disconnects them),
    /// or /dev/ublkbN is mounted or open. What both `secondary` and `down`
    /// refuse on; `None` when nothing uses the device.
    fn in_use(&self, cut_nbd: bool) -> Option<InUse> {
        if !cut_nbd {
            let clients = self.nbd_clients();
            if clients > 0 {
                return Some(InUse {
                    why: format!("the device is in use: {clients} NBD client(s) connected"),
                    nbd_clients: clients,
                });
            }
        }
        // The ublk device (/dev/ublkbN): mounted or open (checked off this
        // thread, which serves its I/O; None when none is served).
        crate::ublk::demotion_blocker().map(|why| InUse {
            why,
            nbd_clients: 0,
        })
    }

    fn refuse(&self, reply: &Sender<ControlReply>, why: String) {
        let _ = reply.send(ControlReply {
            ok: false,
            error: Some(why),
            status: Some(self.status()),
        });
    }

    /// A forced `down` waiting for the requests of the clients it cut:
    /// demote as soon as none is in flight, or give up at its deadline.
    fn retry_forced_down(&mut self) {
        let Some((_, deadline)) = &self.forced_down else {
            return;
        };
        let deadline = *deadline;
        let now = Millis(self.now());
        let result = self.node.admin(now, Admin::Down);
        if result.is_err() && Instant::now() < deadline {
            return;
        }
        let Some((reply, _)) = self.forced_down.take() else {
            return;
        };
        self.drain();
        match result {
            Ok(()) => self.down_waiters.push(reply),
            Err(e) => self.refuse(&reply, e.to_string()),
        }
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
        match a {
            Action::Connect => self.peer.set_wanted(true),
            Action::CloseConnection => {
                self.peer.set_wanted(false);
                self.peer.close();
            }
            Action::Send(m) => self.peer.send(m),
            Action::LocalRead { token, offset, len } => {
                self.disk.submit(token, DiskOp::Read { offset, len })
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
                        let t = self.internal_token();
                        self.fua_zeroes.insert(t, (false, token));
                        let len = u64::from(len);
                        self.disk.submit(t, DiskOp::WriteZeroes { offset, len });
                        return;
                    }
                    Payload::Zeroes => DiskOp::WriteZeroes {
                        offset,
                        len: u64::from(len),
                    },
                };
                self.disk.submit(token, op);
            }
            Action::LocalFlush { token } => self.disk.submit(token, DiskOp::Flush),
            Action::WriteSuper { token, gens, flags } => {
                self.meta.submit(token, meta::MetaOp::Super { gens, flags })
            }
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
                if let Some(r) = self.replies.remove(&id) {
                    r(result);
                }
            }
            Action::Hook(h) => tracing::warn!(hook = ?h, "handler"),
        }
    }

    fn status(&self) -> NodeStatus {
        let st: Status = self.node.status();
        let g = st.gens;
        let error_age_ms = st.last_error_at_ms.map(|at| self.now().saturating_sub(at));
        let hex = |x: u64| format!("{x:016X}");
        let cfg = self.node.config();
        NodeStatus {
            resource: st.resource.clone(),
            node: st.node.clone(),
            peer: self.peer_name.clone(),
            role: st.role,
            peer_role: st.peer_role,
            connection: format!("{:?}", st.connection),
            disk: st.disk,
            peer_disk: st.peer_disk,
            protocol: format!("{:?}", cfg.protocol),
            out_of_sync_bytes: st.out_of_sync_bytes,
            split_brain: st.split_brain,
            last_error: st.last_error.clone(),
            last_error_at: error_age_ms.map(|age| {
                let wall = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                wall.as_secs().saturating_sub(age / 1000)
            }),
            last_error_age_s: error_age_ms.map(|age| age / 1000),
            sync: self.progress.current(),
            generations: GenerationsHex {
                current: hex(g.current),
                bitmap: hex(g.bitmap),
                history: [hex(g.history[0]), hex(g.history[1])],
            },
            data_bytes: cfg.data_bytes,
            counters: Counters {
                ns: st.stats.sent_bytes / 1024,
                nr: st.stats.received_bytes / 1024,
                dw: st.stats.written_bytes / 1024,
                dr: st.stats.read_bytes / 1024,
                al: st.stats.al_writes,
                bm: st.stats.bm_writes,
                lo: st.local_pending,
                pe: st.peer_pending,
                ua: st.unacked,
                ap: st.app_pending,
                oos: st.out_of_sync_bytes / 1024,
            },
            stats: StatsOut {
                sent_bytes: st.stats.sent_bytes,
                received_bytes: st.stats.received_bytes,
                resync_sent_bytes: st.stats.resync_sent_bytes,
                resync_received_bytes: st.stats.resync_received_bytes,
                written_bytes: st.stats.written_bytes,
                read_bytes: st.stats.read_bytes,
                verified_bytes: st.stats.verified_bytes,
                verify_out_of_sync_bytes: st.stats.verify_out_of_sync_bytes,
            },
            nbd: self.nbd_addr.clone(),
            nbd_clients: usize::try_from(self.shared.nbd_clients.load(Ordering::Relaxed))
                .unwrap_or(0),
            pid: std::process::id(),
            suspended: st.suspended,
            freeze_on_disconnect: st.freeze_on_disconnect,
            degraded_at_start: st.degraded_at_start,
            resume: st.resume,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::md::CreateParams;

    /// The ublk manager sleeps in `wait_role_change` instead of polling
    /// the role: a promotion must end that sleep at once, and a sleep with
    /// nothing changing must last its timeout.
    #[test]
    fn a_promotion_wakes_whoever_waits_for_the_role() {
        let dir = tempfile::tempdir().expect("temp dir");
        let disk = dir.path().join("alpha.img");
        std::fs::write(&disk, vec![0u8; 8 << 20]).expect("backing file");
        let text = format!(
            "[resource]\nname = \"rw\"\n[net]\nsecret = \"s\"\n\
             [[node]]\nname = \"alpha\"\naddress = \"127.0.0.1:1\"\ndisk = \"{}\"\nmeta-disk = \"internal\"\ndevice = 0\n\
             [[node]]\nname = \"beta\"\naddress = \"127.0.0.1:2\"\ndisk = \"/nonexistent\"\nmeta-disk = \"internal\"\ndevice = 1\n",
            disk.display()
        );
        let cfg = Config::from_str_named(&text, "rw.toml").expect("config");
        let (me, _) = cfg.local(Some("alpha")).expect("alpha");
        MetaDevice::create(&CreateParams::from_config(&cfg, me), false).expect("create-md");
        let opts = EngineOptions {
            direct: false,
            connect: false,
        };
        let eng = start(&cfg, Some("alpha"), &opts).expect("engine");
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
            .control(ControlCmd::Primary { force: true })
            .expect("reply");
        assert!(reply.ok, "{:?}", reply.error);
        let (waited, writable) = waiter.join().expect("waiter");
        assert!(waited < Duration::from_secs(10), "waited {waited:?}");
        assert!(writable, "woken before the role changed");

        let _ = h.control(ControlCmd::Down { force: false });
        eng.thread.join().expect("engine thread");
    }
}
