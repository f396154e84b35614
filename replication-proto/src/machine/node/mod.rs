//! One node of one resource: the replication state machine (sans-IO).
//!
//! Inputs go in through [`Node::handle`] (an [`Event`]) and [`Node::admin`]
//! (an [`Admin`] command); outputs come out of [`Node::poll_action`]; the
//! node says when it next needs time with [`Node::poll_timeout`]. See
//! [`Node`] for the contract a driver keeps.
//!
//! The module is split along the node's seams: `state` (bookkeeping types
//! and the named parts of the state), `output` (sends, metadata writes,
//! errors), `suspend`, `admin` (commands and roles), `connection`,
//! `handshake`, `fence` (fencing the peer), `resync`, `pause` (pause-sync), `skip_sync` (new-current-uuid
//! --clear-bitmap), `resize` (repctl resize, the size both nodes use), `promotion` (when it
//! became Primary), `diskless` (detach, attach, remote reads), `verify`, `app` (application
//! I/O on the Primary and its replication), `before_target` (the before-resync-target
//! handler), `rate_control` (the dynamic resync rate), `secondary` (the peer's writes), `completions`
//! (local operations finishing) and `timers`.

use std::collections::{HashMap, VecDeque};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::al::ActivityLog;
use super::bitmap::Bitmap;
use super::ids::AppId;
use super::resume::Resume;
use super::types::{
    errno, Action, Admin, AdminError, ConnState, ErrorKind, Event, NodeConfig, Persisted, Session,
    Stats, Status, SuspendMode,
};
use crate::gen::Generations;
use crate::meta::{MetaFlags, BM_BLOCK_SIZE};
use crate::time::Millis;
use crate::wire::{DiskState, Role};

/// Largest application or resync transfer in one frame.
pub const MAX_IO: u32 = 1 << 20;
/// Resync and verify request size.
const SYNC_REQ_BYTES: u64 = 128 * 1024;
/// Resync / verify requests in flight.
const SYNC_WINDOW: usize = 16;
/// Runs per bitmap frame.
const BITMAP_RUNS_PER_FRAME: usize = 4096;

mod admin;
mod app;
mod before_target;
mod completions;
mod connection;
mod diskless;
mod errors;
mod fence;
mod handshake;
mod output;
mod pause;
mod promotion;
mod rate_control;
mod reconfigure;
pub use reconfigure::Applies;
mod resize;
mod resync;
mod secondary;
mod skip_sync;
mod state;
mod suspend;
mod timers;
mod verify;

use state::*;

/// The state machine of one node of one resource.
///
/// Like quinn-proto's `Connection` it does no I/O and reads no clock: the
/// driver (repd's engine thread, the simulator, a test) feeds it and
/// carries out what it asks for.
///
/// # Contract for drivers
///
/// - **Time only moves forward.** Every call takes `now`, a [`Millis`] on
///   the driver's monotonic clock; the node keeps the largest it was given,
///   so an earlier `now` is treated as the latest one seen.
/// - **Ticks come no later than [`Node::poll_timeout`].** After each batch of
///   inputs, drain [`Node::poll_action`] and ask `poll_timeout` again; deliver
///   [`Event::Tick`] at or before the instant it returns (earlier is
///   harmless). `None` means no timer is armed.
/// - **Sends go out in order.** [`Action::Send`]s are frames for the current
///   connection, written in the order given (the peer applies replicated
///   writes in wire order). Frames issued before a `CloseConnection` or a
///   `TransportDown` belong to that connection and are not carried over to
///   the next one, which starts with this node's Hello.
/// - **Metadata writes land in issue order.** [`Action::WriteSuper`],
///   [`Action::WriteAl`] and [`Action::WriteBitmap`] are applied one after
///   the other, in the order issued, and each is answered with
///   [`Event::MetaDone`]. The node relies on it to persist before it sends
///   or acknowledges (a new generation before writes made alone, a
///   resync's bitmap before its first block, the superblock dropping
///   `UNACKED_GEN` before held acknowledgements go out).
/// - **Every token is answered once.** `LocalRead`/`LocalWrite`/`LocalFlush`
///   with [`Event::LocalDone`], metadata writes with [`Event::MetaDone`],
///   in any order among data operations (the node orders overlapping ones
///   itself, [`crate::machine::io`]).
/// - **Every application request is completed once**, by
///   [`Action::Complete`] with the id the application gave.
/// - **Logging**: the node logs without naming itself; the driver enters a
///   span naming the node around its calls.
#[derive(Debug)]
pub struct Node {
    cfg: NodeConfig,
    rng: ChaCha8Rng,
    /// The largest `now` a driver gave (time only moves forward).
    now: Millis,
    actions: VecDeque<Action>,

    // What the metadata holds (and the activity log in front of it).
    gens: Generations,
    flags: MetaFlags,
    bitmap: Bitmap,
    al: AlGate,

    role: Role,
    disk: DiskState,
    conn: ConnState,
    want_connect: bool,
    discard_my_data: bool,
    split_brain: bool,
    health: errors::Health,
    down: Down,
    /// The current connection and the peer it reached.
    link: Link,

    /// Application requests in flight, by the application's id.
    app: HashMap<AppId, AppReq>,
    /// Local data, flush and metadata operations in flight, by token.
    ops: Ops,
    /// Primary side of replication.
    repl: Replication,
    /// Secondary side: what the peer sent.
    recv: Receiving,
    sync: Option<Sync>,
    stats: Stats,
    /// The peer may hold this node's current generation (it was in sync, or
    /// a resync from here started). A Primary that goes on without the peer
    /// must then start a new generation, or the next handshake would see
    /// equal generations and miss the writes made alone.
    peer_has_my_current: bool,

    susp: Suspension,
    /// The last run ended while Primary without its peer (DRBD's "degraded
    /// cluster"): `repctl wait-connect` then waits `degr-wfc-timeout`, not
    /// `wfc-timeout`, since the peer is less likely to come back soon.
    degraded_at_start: bool,
    /// Resuming the role of a run that crashed while Primary (`resume.rs`).
    resume: Resume,
    /// `pause-sync`: the user holds the resync (`pause.rs`).
    pause: pause::SyncPause,
    /// How the last verify ended (`verify.rs`).
    last_verify: Option<super::types::VerifyNote>,
    /// Fencing the peer (`fence.rs`).
    fence: fence::Fence,
    /// Protocol and secret for the next connection (`reconfigure.rs`).
    next_connection: Option<(crate::wire::Protocol, Vec<u8>)>,
    /// `repctl resize` and the size agreed with the peer (`resize.rs`).
    resizing: resize::Resizing,
    /// The current connection's TLS exporter value, when it runs over TLS
    /// ([`Node::set_channel_binding`]).
    channel_binding: Option<[u8; 32]>,
    /// Diskless: closing the disk, remote reads (`diskless.rs`).
    det: diskless::Detach,
    /// When this node last became Primary (`promotion.rs`).
    promotion: promotion::Promotion,
    /// The before-resync-target handler (`before_target.rs`).
    before_target: before_target::BeforeTarget,
}

/// How long an error stays in status after its condition is gone.
pub const ERROR_LINGER_MS: u64 = 10_000;

impl Node {
    /// A node starting from its persisted metadata. `seed` feeds the random
    /// numbers (nonces, new generation UUIDs): the daemon passes real entropy,
    /// the simulator its seed.
    #[must_use]
    pub fn new(cfg: NodeConfig, p: Persisted, now: Millis, seed: u64) -> Self {
        let mut flags = p.flags;
        let degraded_at_start =
            flags.has(MetaFlags::PRIMARY_IND) && !flags.has(MetaFlags::CONNECTED_IND);
        let mut bitmap = Bitmap::from_words(cfg.data_bytes, &p.bitmap);
        if flags.has(MetaFlags::PEER_DISKLESS_DIRTY) {
            // Stopped while it tracked a Diskless peer's misses: the bits
            // since the last persisted bitmap are unknown.
            bitmap.set_all();
        }
        let resume = Resume::at_start(flags, p.gens.current);
        recover_after_crash(&mut flags, &mut bitmap, &p.al_extents);
        let disk = disk_at_start(flags);
        let al = ActivityLog::new(cfg.al_extents, p.al_seq, &p.al_extents);
        let mut n = Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            now,
            actions: VecDeque::new(),
            gens: p.gens,
            flags,
            bitmap,
            al: AlGate::new(al),
            role: Role::Secondary,
            disk,
            conn: ConnState::StandAlone,
            want_connect: false,
            discard_my_data: false,
            split_brain: false,
            health: errors::Health::default(),
            down: Down::default(),
            link: Link::new(),
            app: HashMap::new(),
            ops: Ops::default(),
            repl: Replication::new(now),
            recv: Receiving::default(),
            sync: None,
            stats: Stats::default(),
            // Unknown after a start: assume the worst.
            peer_has_my_current: true,
            susp: Suspension::default(),
            degraded_at_start,
            resume,
            pause: pause::SyncPause::default(),
            last_verify: None,
            fence: fence::Fence::default(),
            next_connection: None,
            resizing: resize::Resizing::default(),
            channel_binding: None,
            det: diskless::Detach::default(),
            promotion: promotion::Promotion::new(p.promoted_at_ms),
            before_target: before_target::BeforeTarget::default(),
            cfg,
        };
        n.persist_super(false);
        if n.flags.has(MetaFlags::CRASHED_PRIMARY) {
            n.persist_bitmap_all(None);
        }
        n
    }

    // ----- public accessors -------------------------------------------------

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    #[must_use]
    pub fn role(&self) -> Role {
        self.role
    }
    #[must_use]
    pub fn conn(&self) -> ConnState {
        self.conn
    }
    #[must_use]
    pub fn disk(&self) -> DiskState {
        self.disk
    }
    #[must_use]
    pub fn gens(&self) -> Generations {
        self.gens
    }
    #[must_use]
    pub fn flags(&self) -> MetaFlags {
        self.flags
    }
    #[must_use]
    pub fn bitmap_words(&self) -> &[u64] {
        self.bitmap.words()
    }
    #[must_use]
    pub fn split_brain(&self) -> bool {
        self.split_brain
    }
    /// An orderly `Down` finished: the driver may exit.
    #[must_use]
    pub fn is_down(&self) -> bool {
        self.down.done
    }
    #[must_use]
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }
    /// The current connection's handshake, once the peer answered this
    /// node's challenge: the driver binds a second transport connection
    /// (the ping connection, [`crate::wire::features::PING_CONN`]) to it.
    #[must_use]
    pub fn session(&self) -> Option<Session> {
        let p = self.link.decided_peer()?;
        self.connected_states().then_some(Session {
            epoch: self.link.epoch,
            own_nonce: self.link.my_nonce,
            peer_nonce: p.hello.nonce,
            features: self.cfg.features & p.hello.features,
        })
    }
    #[must_use]
    pub fn peer_disk(&self) -> DiskState {
        let disk = self
            .link
            .decided_peer()
            .map_or(DiskState::DUnknown, |p| p.disk);
        if disk == DiskState::DUnknown && self.flags.has(MetaFlags::PEER_OUTDATED) {
            // Fenced: known Outdated until a resync (DRBD's pdsk:Outdated).
            return DiskState::Outdated;
        }
        // Waiting for the bitmaps as the sync source: the peer is the target
        // and Inconsistent from the exchange on; show what it is about to be
        // (it still says UpToDate itself until then), not what it was.
        if self.conn == ConnState::WFBitMapS && disk != DiskState::DUnknown {
            return DiskState::Inconsistent;
        }
        disk
    }
    /// Application requests in flight.
    #[must_use]
    pub fn app_pending(&self) -> usize {
        self.app.len()
    }

    /// The application request a local read or write (an issued
    /// `LocalRead`/`LocalWrite` not yet `LocalDone`) serves, if any: a
    /// driver measures per-request latency with it.
    #[must_use]
    pub fn app_of_local(&self, token: super::ids::IoToken) -> Option<AppId> {
        match self.ops.io.get(token) {
            Some((_, LocalOp::AppWrite { id } | LocalOp::AppRead { id })) => Some(*id),
            _ => None,
        }
    }

    /// The application write that replicated write `seq` (a `Data` frame
    /// sent and not yet acknowledged) carries, if any.
    #[must_use]
    pub fn app_of_peer_write(&self, seq: u64) -> Option<AppId> {
        self.repl.pending.get(&seq).and_then(|r| r.app_id)
    }

    #[must_use]
    pub fn status(&self) -> Status {
        let (remaining, total) = match &self.sync {
            Some(s) if s.is_verify() => {
                // Both sides keep the cursor inside the data (pump_verify,
                // valid_range).
                debug_assert!(
                    s.cursor <= self.cfg.data_bytes,
                    "verify cursor past the end"
                );
                (self.cfg.data_bytes.saturating_sub(s.cursor), s.total_bytes)
            }
            Some(s) => (self.bitmap.count() * BM_BLOCK_SIZE, s.total_bytes),
            None => (0, 0),
        };
        let last_error = self.last_error();
        Status {
            resource: self.cfg.resource.clone(),
            node: self.cfg.node.clone(),
            role: self.role,
            peer_role: self.link.decided_peer().map(|p| p.role),
            connection: self.conn,
            disk: self.disk,
            peer_disk: self.peer_disk(),
            out_of_sync_bytes: self.bitmap.count() * BM_BLOCK_SIZE,
            split_brain: self.split_brain,
            last_error: last_error.as_ref().map(|e| e.message.clone()),
            last_error_at_ms: last_error.as_ref().map(|e| e.at_ms),
            errors: self.health.notes(),
            gens: self.gens,
            flags: self.flags,
            suspended: self.susp.mode,
            freeze_on_disconnect: self.susp.freeze_on_disconnect,
            degraded_at_start: self.degraded_at_start,
            fencing: self.fence_status(),
            resume: self.resume.note().map(str::to_owned),
            sync_paused_by_user: self.pause.user,
            last_verify: self.last_verify.clone(),
            data_bytes: self.cfg.data_bytes,
            size_note: self.resizing.note.clone(),
            sync_remaining_bytes: remaining,
            sync_total_bytes: total,
            sync_rate_target_bytes_per_s: self.sync_rate_target(),
            sync_throttled: self.sync_throttled(),
            local_pending: self.ops.io.len() as u64,
            peer_pending: self.repl.pending.len() as u64,
            unacked: self.recv.unacked,
            app_pending: self.app.len() as u64,
            stats: self.stats.clone(),
        }
    }

    /// When the caller must deliver `Event::Tick` at the latest.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Millis> {
        let mut t: Option<Millis> = None;
        let mut at = |x: Millis| t = Some(t.map_or(x, |y| y.min(x)));
        match &self.link.phase {
            LinkPhase::Down => {}
            LinkPhase::Handshake { started, .. } => at(*started + self.cfg.timeout_ms),
            LinkPhase::Decided {
                ping_sent: Some(s), ..
            } => at(*s + self.cfg.timeout_ms),
            LinkPhase::Decided {
                last_recv,
                ping_sent: None,
                ..
            } => at(*last_recv + self.cfg.ping_int_ms),
        }
        if self.link.decided() {
            if let Some((_, r)) = self.repl.pending.first_key_value() {
                at(r.sent_at + self.ko_ms());
            }
            if !self.repl.unflushed.is_empty() && self.repl.barriers.is_empty() {
                at(self.repl.last_data_sent + self.cfg.ping_int_ms);
            }
            if let Some(s) = &self.sync {
                if !matches!(s.phase, SyncPhase::Persisting { .. })
                    && (self.cfg.resync_rate != 0 || self.cfg.resync_control.enabled())
                {
                    at(self.now + 10);
                }
            }
        }
        t
    }

    fn ko_ms(&self) -> u64 {
        self.cfg
            .timeout_ms
            .saturating_mul(u64::from(self.cfg.ko_count.max(1)))
    }

    // ----- event entry points ------------------------------------------------

    pub fn handle(&mut self, now: Millis, ev: Event) {
        self.now = self.now.max(now);
        match ev {
            Event::TransportUp => self.on_transport_up(),
            Event::TransportDown => {
                if self.connected_states() {
                    self.connection_lost("connection to the peer lost");
                }
            }
            Event::Frame(m) => {
                if self.connected_states() {
                    self.link.heard(self.now);
                    self.on_frame(m);
                }
            }
            Event::AppRead { id, offset, len } => self.app_read(id, offset, len),
            Event::AppWrite { id, .. } | Event::AppFlush { id }
                if self.susp.mode.is_some() && self.role == Role::Primary =>
            {
                if self.susp.mode == Some(SuspendMode::Fail) {
                    self.complete(id, Err(errno::EIO));
                } else {
                    self.susp.held_in.push_back(ev);
                }
            }
            Event::AppWrite {
                id,
                offset,
                payload,
                len,
                fua,
            } => {
                self.app_write(id, offset, payload, len, fua);
            }
            Event::AppFlush { id } => self.app_flush(id),
            Event::LocalDone { token, result } => self.local_done(token, result),
            Event::MetaDone { token, result } => self.meta_done(token, result),
            Event::Tick => self.tick(),
            Event::FenceDone { exit } => self.fence_done(exit),
            Event::GrowDone { result } => self.grow_done(result),
            Event::BeforeResyncTargetDone { ok } => self.before_resync_target_done(ok),
        }
        self.maybe_resume();
        self.maybe_unfence();
    }

    pub fn admin(&mut self, now: Millis, cmd: Admin) -> Result<(), AdminError> {
        let r = self.admin_cmd(now, cmd);
        self.maybe_resume();
        r
    }

    /// The next connection's TLS channel binding (an exporter value both
    /// ends of one TLS session share), given by the driver right before
    /// `TransportUp`; `None` for plain TCP. The handshake MACs are keyed
    /// with the secret bound to it, so a relay that splices two TLS
    /// sessions cannot pass one side's answer to the other.
    pub fn set_channel_binding(&mut self, binding: Option<[u8; 32]>) {
        self.channel_binding = binding;
    }

    /// The key of this connection's handshake MACs.
    fn auth_secret(&self) -> std::borrow::Cow<'_, [u8]> {
        match &self.channel_binding {
            None => std::borrow::Cow::Borrowed(&self.cfg.secret),
            Some(b) => std::borrow::Cow::Owned(crate::wire::auth::bind_secret(&self.cfg.secret, b)),
        }
    }

    /// Records what the driver found wrong with the link (a frame that
    /// failed its checksum, say) as the node's last error, for status.
    pub fn note_link_error(&mut self, msg: &str) {
        self.error(ErrorKind::Connection, format!("connection dropped: {msg}"));
    }
}

/// Found Primary at start: the last run crashed while Primary. Every
/// extent in its activity log may differ from the peer. The run's role
/// and a clean AL are history either way.
fn recover_after_crash(flags: &mut MetaFlags, bitmap: &mut Bitmap, al_extents: &[u32]) {
    if flags.has(MetaFlags::PRIMARY_IND) || flags.has(MetaFlags::CRASHED_PRIMARY) {
        if flags.has(MetaFlags::PRIMARY_IND) {
            tracing::warn!(
                extents = al_extents.len(),
                "crashed while Primary: resyncing the activity log"
            );
        }
        flags.set(MetaFlags::CRASHED_PRIMARY, true);
        for &e in al_extents {
            bitmap.set_extent(e);
        }
    }
    flags.set(MetaFlags::PRIMARY_IND, false);
    flags.set(MetaFlags::AL_CLEAN, false);
}

/// The disk state the flags found at start stand for.
fn disk_at_start(flags: MetaFlags) -> DiskState {
    if flags.has(MetaFlags::CONSISTENT) {
        if flags.has(MetaFlags::CRASHED_PRIMARY) {
            // Consistent, but its volatile cache may have lost writes the
            // peer acknowledged: not UpToDate until the activity log is
            // resynced from the peer (or an admin forces it).
            DiskState::Consistent
        } else if flags.has(MetaFlags::WAS_UP_TO_DATE) {
            DiskState::UpToDate
        } else {
            DiskState::Outdated
        }
    } else {
        DiskState::Inconsistent
    }
}
