//! One node of one resource: the replication state machine.
//!
//! Events go in through [`Node::handle`] and [`Node::admin`]; actions come out
//! of [`Node::poll_action`]. `now` is whatever clock the caller keeps, in
//! milliseconds (the simulator's, or the daemon's monotonic clock).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use bytes::Bytes;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::al::{ActivityLog, AlPlan};
use super::bitmap::Bitmap;
use super::decide::{decide, Decision, View};
use super::io::{OrderedIo, Span};
use super::resume::{self, Resume};
use super::sync_window::SyncWindow;
use super::types::{
    errno, Action, Admin, AdminError, ConnState, Event, Hook, NodeConfig, Payload, Persisted,
    Session, Stats, Status, SuspendMode,
};
use crate::gen::{Generations, UUID_JUST_CREATED};
use crate::meta::{MetaFlags, AL_EXTENT_SIZE, BM_BLOCK_SIZE};
use crate::wire::auth::{auth_mac, verify_auth};
use crate::wire::rle::{bitmap_messages, BitmapReceiver, Progress};
use crate::wire::{
    data_flags, disconnect, DisconnectReason, DiskState, Hello, Message, Protocol, Role,
    MAX_STRING_LEN,
};

/// Largest application or resync transfer in one frame.
pub const MAX_IO: u32 = 1 << 20;
/// Resync and verify request size.
const SYNC_REQ_BYTES: u64 = 128 * 1024;
/// Resync / verify requests in flight.
const SYNC_WINDOW: usize = 16;
/// Runs per bitmap frame.
const BITMAP_RUNS_PER_FRAME: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerWait {
    /// Not replicated (no peer); nothing to wait for.
    None,
    /// Sent as `seq`; waiting for the ack the protocol asks for.
    Sent {
        seq: u64,
        need_write_ack: bool,
    },
    Done,
}

#[derive(Debug)]
enum AppReq {
    Write {
        span: Span,
        payload: Payload,
        fua: bool,
        extents: (u32, u32),
        /// Waiting for the activity log (not yet started).
        queued: bool,
        local_done: bool,
        local_err: Option<i32>,
        peer: PeerWait,
    },
    Read,
    Flush {
        local_done: bool,
        local_err: Option<i32>,
        peer_done: bool,
    },
}

#[derive(Debug, Clone)]
enum LocalOp {
    AppWrite {
        id: u64,
    },
    AppRead {
        id: u64,
    },
    PeerWrite {
        seq: u64,
        epoch: u64,
        recv_idx: u64,
    },
    /// Source side: read for a resync or checksum request.
    ResyncRead {
        id: u64,
        epoch: u64,
        peer_digest: Option<u32>,
    },
    /// Target side: resync data being written.
    ResyncWrite {
        id: u64,
        epoch: u64,
    },
    /// Target side: read to checksum before asking (csums resync).
    CsumRead {
        id: u64,
        epoch: u64,
    },
    /// Verify source: read to checksum.
    VerifyRead {
        id: u64,
        epoch: u64,
    },
    /// Verify target: read to compare with the source's checksum.
    VerifyCompare {
        id: u64,
        epoch: u64,
        digest: u32,
    },
}

#[derive(Debug, Clone, Copy)]
enum FlushOp {
    App {
        id: u64,
    },
    PeerBarrier {
        id: u64,
        epoch: u64,
    },
    SyncDone {
        epoch: u64,
    },
    /// Target, before persisting its bitmap at the start of a resync: bits
    /// it cleared earlier are only true once the data behind them is durable.
    SyncStart {
        epoch: u64,
    },
    Down,
    /// Before a transaction drops extents from the activity log, the data
    /// written to them must be on stable storage: afterwards a crash no
    /// longer resyncs them.
    AlPreflush,
}

#[derive(Debug, Clone)]
enum MetaOp {
    /// Superblock; `gate` writes wait for it.
    Super {
        gate: bool,
    },
    /// Bitmap words of extents leaving the activity log; the AL transaction
    /// follows once all of them are durable.
    EvictBitmap,
    /// The superblock without [`MetaFlags::UNACKED_GEN`]: a resume lets
    /// held requests in (and their acknowledgements out) once it is durable.
    ResumeSuper,
    Al,
    Bitmap {
        sync_epoch: Option<u64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncRole {
    Source,
    Target,
}

#[derive(Debug)]
struct Sync {
    role: SyncRole,
    verify: bool,
    epoch: u64,
    receiver: Option<BitmapReceiver>,
    /// Metadata writes to finish before the target may ask for data.
    persist_pending: u32,
    cursor: u64,
    inflight: HashMap<u64, Span>,
    /// Target, resync: how many requests may be in flight (verify keeps
    /// SYNC_WINDOW: its answers are small).
    window: SyncWindow,
    next_id: u64,
    total_bytes: u64,
    tokens: u64,
    last_refill: u64,
    /// Target: SyncDone sent, waiting for the source's UUIDs.
    finishing: bool,
    repair: bool,
    found_oos: u64,
}

impl Sync {
    fn new(
        role: SyncRole,
        verify: bool,
        epoch: u64,
        now: u64,
        total_bytes: u64,
        repair: bool,
    ) -> Self {
        Self {
            role,
            verify,
            epoch,
            receiver: None,
            persist_pending: 0,
            cursor: 0,
            inflight: HashMap::new(),
            window: SyncWindow::new(now),
            next_id: 1,
            total_bytes,
            tokens: 0,
            last_refill: now,
            finishing: false,
            repair,
            found_oos: 0,
        }
    }
}

#[derive(Debug, Clone)]
struct PeerInfo {
    hello: Hello,
    authed: bool,
    role: Role,
    disk: DiskState,
}

#[derive(Debug)]
struct PeerReq {
    app_id: Option<u64>,
    span: Span,
    /// Activity-log extents held until the peer confirms the write.
    extents: (u32, u32),
    sent_at: u64,
    recv_acked: bool,
}

/// The state machine of one node.
#[derive(Debug)]
pub struct Node {
    cfg: NodeConfig,
    rng: ChaCha8Rng,
    now: u64,
    actions: VecDeque<Action>,

    gens: Generations,
    flags: MetaFlags,
    bitmap: Bitmap,
    al: ActivityLog,
    al_stage_pending: u32,
    al_plan: Option<AlPlan>,

    role: Role,
    disk: DiskState,
    conn: ConnState,
    want_connect: bool,
    discard_my_data: bool,
    split_brain: bool,
    last_error: Option<String>,
    /// When `last_error` was set (node time, ms).
    last_error_at: u64,
    /// Since when the pair is healthy (see `clear_error_when_healthy`).
    healthy_since: Option<u64>,
    down_requested: bool,
    down_done: bool,

    epoch: u64,
    my_nonce: [u8; 32],
    peer: Option<PeerInfo>,
    decided: bool,
    last_recv: u64,
    ping_sent: Option<u64>,
    conn_started: u64,

    app: HashMap<u64, AppReq>,
    al_wait: VecDeque<u64>,
    super_gate: u32,
    io: OrderedIo<LocalOp>,
    flush_ops: HashMap<u64, FlushOp>,
    meta_ops: HashMap<u64, MetaOp>,
    next_token: u64,

    // Primary side of replication.
    next_seq: u64,
    peer_pending: BTreeMap<u64, PeerReq>,
    /// Bytes sent to the peer and not yet confirmed: new writes wait while
    /// this is above the window, so a slow peer slows the writer instead of
    /// piling data up in memory on both nodes (DRBD's max-buffers).
    peer_pending_bytes: u64,
    /// Acknowledged by the peer but not yet covered by a peer flush: if the
    /// peer loses power these may be gone there, so they go into the bitmap
    /// when the connection breaks.
    unflushed: VecDeque<(u64, Span)>,
    next_barrier: u64,
    barriers: BTreeMap<u64, (u64, Option<u64>)>,
    last_data_sent: u64,

    // Secondary side.
    recv_index: u64,
    recv_incomplete: BTreeSet<u64>,
    peer_barriers: VecDeque<(u64, u64)>,
    unacked: u64,

    /// Payloads of peer and resync writes waiting in the ordering queue.
    parked: HashMap<u64, (u64, u32, Payload, bool)>,
    sync: Option<Sync>,
    stats: Stats,
    /// The peer may hold this node's current generation (it was in sync, or
    /// a resync from here started). A Primary that goes on without the peer
    /// must then start a new generation, or the next handshake would see
    /// equal generations and miss the writes made alone.
    peer_has_my_current: bool,

    /// `SuspendIo`: what happens to new writes and flushes.
    suspended: Option<SuspendMode>,
    freeze_on_disconnect: bool,
    /// The last run ended while Primary without its peer (DRBD's "degraded
    /// cluster"): `repctl wait-connect` then waits `degr-wfc-timeout`, not
    /// `wfc-timeout`, since the peer is less likely to come back soon.
    degraded_at_start: bool,
    /// Held while suspended: new requests, and completions of requests
    /// that were in flight when the suspension began (in order).
    held_in: VecDeque<Event>,
    held_out: VecDeque<(u64, Result<Option<Bytes>, i32>)>,
    /// A resume waits for the superblock that drops `UNACKED_GEN`.
    resume_pending: bool,
    /// Resuming the role of a run that crashed while Primary (`resume.rs`).
    resume: Resume,
}

/// How long an error stays in status after its condition is gone.
pub const ERROR_LINGER_MS: u64 = 10_000;

fn extent_of(offset: u64) -> u32 {
    u32::try_from(offset / AL_EXTENT_SIZE).unwrap_or(u32::MAX)
}

fn crc(data: &[u8]) -> u32 {
    crate::checksum::crc32c(data)
}

impl Node {
    /// A node starting from its persisted metadata. `seed` feeds the random
    /// numbers (nonces, new generation UUIDs): the daemon passes real entropy,
    /// the simulator its seed.
    #[must_use]
    pub fn new(cfg: NodeConfig, p: Persisted, now: u64, seed: u64) -> Self {
        let mut flags = p.flags;
        let degraded_at_start =
            flags.has(MetaFlags::PRIMARY_IND) && !flags.has(MetaFlags::CONNECTED_IND);
        let mut bitmap = Bitmap::from_words(cfg.data_bytes, &p.bitmap);
        let resume = Resume::at_start(flags, p.gens.current);
        // Found Primary at start: the last run crashed while Primary. Every
        // extent in its activity log may differ from the peer.
        if flags.has(MetaFlags::PRIMARY_IND) || flags.has(MetaFlags::CRASHED_PRIMARY) {
            if flags.has(MetaFlags::PRIMARY_IND) {
                tracing::warn!(
                    extents = p.al_extents.len(),
                    "crashed while Primary: resyncing the activity log"
                );
            }
            flags.set(MetaFlags::CRASHED_PRIMARY, true);
            for &e in &p.al_extents {
                bitmap.set_extent(e);
            }
        }
        flags.set(MetaFlags::PRIMARY_IND, false);
        flags.set(MetaFlags::AL_CLEAN, false);
        let disk = if flags.has(MetaFlags::CONSISTENT) {
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
        };
        let al = ActivityLog::new(cfg.al_extents, p.al_seq, &p.al_extents);
        let mut n = Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            now,
            actions: VecDeque::new(),
            gens: p.gens,
            flags,
            bitmap,
            al,
            al_stage_pending: 0,
            al_plan: None,
            role: Role::Secondary,
            disk,
            conn: ConnState::StandAlone,
            want_connect: false,
            discard_my_data: false,
            split_brain: false,
            last_error: None,
            last_error_at: 0,
            healthy_since: None,
            down_requested: false,
            down_done: false,
            epoch: 0,
            my_nonce: [0; 32],
            peer: None,
            decided: false,
            last_recv: now,
            ping_sent: None,
            conn_started: now,
            app: HashMap::new(),
            al_wait: VecDeque::new(),
            super_gate: 0,
            io: OrderedIo::default(),
            flush_ops: HashMap::new(),
            meta_ops: HashMap::new(),
            next_token: 1,
            next_seq: 1,
            peer_pending: BTreeMap::new(),
            peer_pending_bytes: 0,
            unflushed: VecDeque::new(),
            next_barrier: 1,
            barriers: BTreeMap::new(),
            last_data_sent: now,
            recv_index: 0,
            recv_incomplete: BTreeSet::new(),
            peer_barriers: VecDeque::new(),
            unacked: 0,
            parked: HashMap::new(),
            sync: None,
            stats: Stats::default(),
            // Unknown after a start: assume the worst.
            peer_has_my_current: true,
            suspended: None,
            freeze_on_disconnect: false,
            degraded_at_start,
            held_in: VecDeque::new(),
            held_out: VecDeque::new(),
            resume_pending: false,
            resume,
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
        self.down_done
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
        let p = self.peer.as_ref().filter(|p| p.authed)?;
        self.connected_states().then_some(Session {
            epoch: self.epoch,
            own_nonce: self.my_nonce,
            peer_nonce: p.hello.nonce,
            features: self.cfg.features & p.hello.features,
        })
    }
    #[must_use]
    pub fn peer_disk(&self) -> DiskState {
        let disk = self
            .peer
            .as_ref()
            .filter(|_| self.decided)
            .map_or(DiskState::DUnknown, |p| p.disk);
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

    #[must_use]
    pub fn status(&self) -> Status {
        let (remaining, total) = match &self.sync {
            Some(s) if s.verify => (self.cfg.data_bytes.saturating_sub(s.cursor), s.total_bytes),
            Some(s) => (self.bitmap.count() * BM_BLOCK_SIZE, s.total_bytes),
            None => (0, 0),
        };
        Status {
            resource: self.cfg.resource.clone(),
            node: self.cfg.node.clone(),
            role: self.role,
            peer_role: self.peer.as_ref().filter(|_| self.decided).map(|p| p.role),
            connection: self.conn,
            disk: self.disk,
            peer_disk: self.peer_disk(),
            out_of_sync_bytes: self.bitmap.count() * BM_BLOCK_SIZE,
            split_brain: self.split_brain,
            last_error: self.last_error.clone(),
            last_error_at_ms: self.last_error.as_ref().map(|_| self.last_error_at),
            gens: self.gens,
            flags: self.flags,
            suspended: self.suspended,
            freeze_on_disconnect: self.freeze_on_disconnect,
            degraded_at_start: self.degraded_at_start,
            resume: self.resume.note().map(str::to_owned),
            sync_remaining_bytes: remaining,
            sync_total_bytes: total,
            local_pending: self.io.len() as u64,
            peer_pending: self.peer_pending.len() as u64,
            unacked: self.unacked,
            app_pending: self.app.len() as u64,
            stats: self.stats.clone(),
        }
    }

    /// When the caller must deliver `Event::Tick` at the latest.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<u64> {
        let mut t: Option<u64> = None;
        let mut at = |x: u64| t = Some(t.map_or(x, |y| y.min(x)));
        if self.conn == ConnState::Handshake {
            at(self.conn_started + self.cfg.timeout_ms);
        }
        if self.decided {
            match self.ping_sent {
                Some(s) => at(s + self.cfg.timeout_ms),
                None => at(self.last_recv + self.cfg.ping_int_ms),
            }
            if let Some((_, r)) = self.peer_pending.first_key_value() {
                at(r.sent_at + self.ko_ms());
            }
            if !self.unflushed.is_empty() && self.barriers.is_empty() {
                at(self.last_data_sent + self.cfg.ping_int_ms);
            }
            if let Some(s) = &self.sync {
                if s.persist_pending == 0 && self.cfg.resync_rate != 0 {
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

    // ----- plumbing ----------------------------------------------------------

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn send(&mut self, m: Message) {
        // Disconnect frames are built by `wire::disconnect`, which cuts the
        // reason to what the wire carries (a longer one would not encode and
        // the peer would never learn why).
        debug_assert!(
            !matches!(&m, Message::Disconnect { message, .. } if message.len() > MAX_STRING_LEN),
            "a Disconnect reason longer than the wire allows: {m:?}"
        );
        match &m {
            Message::Data { data, .. } => self.stats.sent_bytes += data.len() as u64,
            Message::ResyncData { data, .. } => {
                self.stats.sent_bytes += data.len() as u64;
                self.stats.resync_sent_bytes += data.len() as u64;
            }
            _ => {}
        }
        self.actions.push_back(Action::Send(m));
    }

    /// Records durably whether the peer is connected (CONNECTED_IND), so
    /// the next start knows whether this node ran alone.
    fn set_connected_ind(&mut self, on: bool) {
        if self.flags.has(MetaFlags::CONNECTED_IND) != on {
            self.flags.set(MetaFlags::CONNECTED_IND, on);
            self.persist_super(false);
        }
    }

    fn persist_super(&mut self, gate: bool) {
        let token = self.token();
        if gate {
            self.super_gate += 1;
        }
        self.meta_ops.insert(token, MetaOp::Super { gate });
        self.actions.push_back(Action::WriteSuper {
            token,
            gens: self.gens,
            flags: self.flags,
        });
    }

    fn persist_bitmap_all(&mut self, sync_epoch: Option<u64>) {
        let token = self.token();
        self.meta_ops.insert(token, MetaOp::Bitmap { sync_epoch });
        self.stats.bm_writes += 1;
        self.actions.push_back(Action::WriteBitmap {
            token,
            first_word: 0,
            words: self.bitmap.words().to_vec(),
        });
    }

    fn complete(&mut self, id: u64, result: Result<Option<Bytes>, i32>) {
        // Read data passes; an acknowledgement of a write or flush must not
        // leave a node that lost quorum (the other side may take over).
        match self.suspended {
            Some(SuspendMode::Hold) if !matches!(result, Ok(Some(_))) => {
                self.held_out.push_back((id, result));
            }
            Some(SuspendMode::Fail) if !matches!(result, Ok(Some(_))) => {
                self.actions.push_back(Action::Complete {
                    id,
                    result: Err(errno::EIO),
                });
            }
            _ => self.actions.push_back(Action::Complete { id, result }),
        }
    }

    fn suspend_io(&mut self, mode: SuspendMode) {
        self.suspended = Some(mode);
        // A resume still waiting for its superblock does not happen.
        self.resume_pending = false;
        if mode == SuspendMode::Fail {
            self.fail_held();
        }
    }

    /// End everything held with EIO (io-error mode, or the node lets go).
    fn fail_held(&mut self) {
        for ev in std::mem::take(&mut self.held_in) {
            if let Event::AppWrite { id, .. } | Event::AppFlush { id } = ev {
                self.actions.push_back(Action::Complete {
                    id,
                    result: Err(errno::EIO),
                });
            }
        }
        for (id, _) in std::mem::take(&mut self.held_out) {
            self.actions.push_back(Action::Complete {
                id,
                result: Err(errno::EIO),
            });
        }
    }

    fn resume_io(&mut self) {
        if self.suspended.is_none() || self.resume_pending {
            return;
        }
        if self.flags.has(MetaFlags::UNACKED_GEN) {
            // What is let through now is acknowledged in this generation:
            // the flag must be off on disk first, or a crash right after an
            // acknowledgement would rejoin as target and drop that write.
            self.flags.set(MetaFlags::UNACKED_GEN, false);
            self.resume_pending = true;
            let token = self.token();
            self.meta_ops.insert(token, MetaOp::ResumeSuper);
            self.actions.push_back(Action::WriteSuper {
                token,
                gens: self.gens,
                flags: self.flags,
            });
            return;
        }
        self.release_held();
    }

    /// End the suspension: held completions out, held requests in (in order).
    fn release_held(&mut self) {
        self.suspended = None;
        for (id, result) in std::mem::take(&mut self.held_out) {
            self.actions.push_back(Action::Complete { id, result });
        }
        for ev in std::mem::take(&mut self.held_in) {
            self.handle(self.now, ev);
        }
    }

    fn outdate(&mut self) -> Result<(), AdminError> {
        if self.role == Role::Primary {
            return Err(AdminError::Refused(
                "a Primary cannot outdate its own data; make it secondary first".into(),
            ));
        }
        if self.connected_states() && self.conn != ConnState::Connecting {
            return Err(AdminError::Refused(
                "connected to the peer, which keeps this data in sync; outdate a disconnected node"
                    .into(),
            ));
        }
        if matches!(self.disk, DiskState::UpToDate | DiskState::Consistent) {
            tracing::info!(node = %self.cfg.node, "data marked Outdated");
            self.disk = DiskState::Outdated;
            self.flags.set(MetaFlags::WAS_UP_TO_DATE, false);
            self.flags.set(MetaFlags::CRASHED_PRIMARY, false);
            self.persist_super(false);
        }
        Ok(())
    }

    /// Records what the driver found wrong with the link (a frame that
    /// failed its checksum, say) as the node's last error, for status.
    pub fn note_link_error(&mut self, msg: &str) {
        self.error(format!("connection dropped: {msg}"));
    }

    fn error(&mut self, msg: String) {
        tracing::warn!(node = %self.cfg.node, "{msg}");
        self.last_error = Some(msg);
        self.last_error_at = self.now;
    }

    /// An error describes a condition (a lost peer, a refusal, marked
    /// blocks); once the pair is healthy again (Connected, both UpToDate,
    /// nothing out of sync, no split brain, I/O not suspended) for
    /// [`ERROR_LINGER_MS`], it is history: status stops showing it (the log
    /// keeps it). The linger lets a look right after a quick heal still see
    /// why the link dropped.
    fn clear_error_when_healthy(&mut self) {
        let healthy = self.conn == ConnState::Connected
            && self.disk == DiskState::UpToDate
            && self.peer_disk() == DiskState::UpToDate
            && self.bitmap.count() == 0
            && !self.split_brain
            && self.suspended.is_none();
        if !healthy {
            self.healthy_since = None;
            return;
        }
        let since = *self.healthy_since.get_or_insert(self.now);
        if self.last_error.is_some() && self.now >= since.max(self.last_error_at) + ERROR_LINGER_MS
        {
            tracing::info!(node = %self.cfg.node, "healthy again: last error cleared");
            self.last_error = None;
        }
    }

    fn new_uuid(&mut self) -> u64 {
        loop {
            // Low values are reserved (0 = none, 4 = just created).
            let u = self.rng.next_u64() & !1;
            if u > 16 {
                return u;
            }
        }
    }

    /// Start a new data generation: the bitmap counts changes from the old one.
    fn rotate_for_disconnected_writes(&mut self) {
        if (self.gens.bitmap == 0 || self.peer_has_my_current)
            && self.gens.current != UUID_JUST_CREATED
        {
            if self.gens.bitmap != 0 {
                self.gens.history = [self.gens.bitmap, self.gens.history[0]];
            }
            self.peer_has_my_current = false;
            self.gens.bitmap = self.gens.current;
            self.gens.current = self.new_uuid();
            // The AL extents are in the bitmap now; the generations decide
            // the direction from here on.
            self.flags.set(MetaFlags::CRASHED_PRIMARY, false);
            // Frozen (freeze-on-disconnect, or suspended by the agent): no
            // write is acknowledged in the new generation until a resume,
            // so a peer that moved on meanwhile is not a split brain.
            let unacked = self.suspended.is_some();
            self.flags.set(MetaFlags::UNACKED_GEN, unacked);
            tracing::info!(node = %self.cfg.node, current = format_args!("{:016X}", self.gens.current), unacknowledged = unacked, "new data generation");
            self.persist_super(true);
        }
    }

    fn replicating(&self) -> bool {
        self.role == Role::Primary
            && self.decided
            && matches!(
                self.conn,
                ConnState::Connected
                    | ConnState::WFBitMapS
                    | ConnState::SyncSource
                    | ConnState::VerifySource
                    | ConnState::VerifyTarget
            )
    }

    fn connected_states(&self) -> bool {
        !matches!(self.conn, ConnState::StandAlone | ConnState::Connecting)
    }

    // ----- event entry points ------------------------------------------------

    pub fn handle(&mut self, now: u64, ev: Event) {
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
                    self.last_recv = self.now;
                    self.on_frame(m);
                }
            }
            Event::AppRead { id, offset, len } => self.app_read(id, offset, len),
            Event::AppWrite { id, .. } | Event::AppFlush { id }
                if self.suspended.is_some() && self.role == Role::Primary =>
            {
                if self.suspended == Some(SuspendMode::Fail) {
                    self.complete(id, Err(errno::EIO));
                } else {
                    self.held_in.push_back(ev);
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
        }
        self.maybe_resume();
    }

    pub fn admin(&mut self, now: u64, cmd: Admin) -> Result<(), AdminError> {
        let r = self.admin_cmd(now, cmd);
        self.maybe_resume();
        r
    }

    fn admin_cmd(&mut self, now: u64, cmd: Admin) -> Result<(), AdminError> {
        self.now = self.now.max(now);
        let refuse = |s: &str| Err(AdminError::Refused(s.to_string()));
        if self.down_requested {
            return refuse("the node is shutting down");
        }
        match cmd {
            Admin::Primary { force } => self.promote(force),
            Admin::Secondary => {
                self.resume.cancel("an admin made this node Secondary");
                self.demote()
            }
            Admin::Connect { discard_my_data } => {
                if self.conn != ConnState::StandAlone {
                    return refuse("already connecting or connected; disconnect first");
                }
                if discard_my_data && self.role == Role::Primary {
                    return refuse("a Primary cannot discard its data; make it secondary first");
                }
                self.want_connect = true;
                self.discard_my_data = discard_my_data;
                self.split_brain = false;
                self.conn = ConnState::Connecting;
                self.actions.push_back(Action::Connect);
                Ok(())
            }
            Admin::Disconnect => {
                if self.conn == ConnState::StandAlone {
                    return Ok(());
                }
                self.want_connect = false;
                if self.connected_states() {
                    let msg = format!("{} was disconnected by its admin", self.cfg.node);
                    self.send(disconnect(DisconnectReason::Admin, &msg));
                    self.connection_lost("disconnected by admin");
                }
                self.conn = ConnState::StandAlone;
                self.actions.push_back(Action::CloseConnection);
                Ok(())
            }
            Admin::Invalidate => {
                if self.role == Role::Primary {
                    return refuse(
                        "a Primary cannot invalidate its own data (it serves it). To resync the \
                         peer's data from this node, run `repctl invalidate-remote` here (or \
                         `repctl invalidate` on the peer); to resync this node from the peer, \
                         make it Secondary first",
                    );
                }
                if self.sync.is_some() {
                    return refuse("a resync or verify is running");
                }
                let connected = self.conn == ConnState::Connected;
                if connected && !matches!(self.peer_disk(), DiskState::UpToDate) {
                    return refuse("the peer has no UpToDate data to sync from");
                }
                self.bitmap.set_all();
                self.disk = DiskState::Inconsistent;
                self.flags.set(MetaFlags::CONSISTENT, false);
                self.flags.set(MetaFlags::WAS_UP_TO_DATE, false);
                self.persist_super(false);
                self.persist_bitmap_all(None);
                if connected {
                    self.send(Message::StartSync {
                        sender_is_source: false,
                        full: true,
                    });
                    self.start_sync(SyncRole::Target, true);
                }
                Ok(())
            }
            Admin::InvalidateRemote => {
                if self.conn != ConnState::Connected {
                    return refuse("not connected (or a resync is running); invalidate-remote needs an idle connection");
                }
                if self.peer.as_ref().is_some_and(|p| p.role == Role::Primary) {
                    return refuse("the peer is Primary; its data cannot be invalidated");
                }
                if self.disk != DiskState::UpToDate {
                    return refuse("this node's disk is not UpToDate");
                }
                self.bitmap.set_all();
                self.send(Message::StartSync {
                    sender_is_source: true,
                    full: true,
                });
                self.start_sync(SyncRole::Source, true);
                Ok(())
            }
            Admin::Verify { repair } => {
                if self.conn != ConnState::Connected {
                    return refuse("verify needs an idle connection (Connected, no resync)");
                }
                self.start_verify(repair);
                Ok(())
            }
            Admin::SuspendIo { mode } => {
                self.suspend_io(mode);
                Ok(())
            }
            Admin::ResumeIo => {
                self.resume_io();
                Ok(())
            }
            Admin::ResumeIoAt { current } => {
                if self.gens.current != current {
                    return refuse(&format!(
                        "the data generation is {:016X} now, not {current:016X}: \
                         the node froze again since (it lost its peer)",
                        self.gens.current
                    ));
                }
                self.resume_io();
                Ok(())
            }
            Admin::FreezeOnDisconnect { on } => {
                self.freeze_on_disconnect = on;
                Ok(())
            }
            Admin::Outdate => self.outdate(),
            Admin::ResumeAfterCrash => self.resume.arm(&self.cfg.node),
            Admin::Down => {
                self.resume.cancel("the node is shutting down");
                if self.role == Role::Primary {
                    self.demote()?;
                }
                self.down_requested = true;
                self.want_connect = false;
                self.maybe_finish_down();
                Ok(())
            }
        }
    }

    // ----- roles -------------------------------------------------------------

    /// An armed resumption after a crash (see `resume.rs`): promote once
    /// that keeps one writer, give up once it never can.
    fn maybe_resume(&mut self) {
        let Some(crashed_gen) = self.resume.armed_for() else {
            return;
        };
        if self.down_requested {
            return;
        }
        let facts = resume::Facts {
            role: self.role,
            disk: self.disk,
            conn: self.conn,
            decided: self.decided,
            syncing: self.sync.is_some(),
            peer_role: self.peer.as_ref().map(|p| p.role),
            current: self.gens.current,
            peer_current: self.peer.as_ref().map(|p| p.hello.gens.current),
        };
        match resume::decide(crashed_gen, &facts) {
            resume::Step::Wait(why) => self.resume.wait(&self.cfg.node, why),
            resume::Step::GiveUp(why) => self.resume.give_up(&self.cfg.node, &why),
            resume::Step::Promote => match self.promote(false) {
                Ok(()) => self.resume.done(&self.cfg.node),
                Err(e) => self.resume.give_up(&self.cfg.node, &e.to_string()),
            },
        }
    }

    fn promote(&mut self, force: bool) -> Result<(), AdminError> {
        if self.role == Role::Primary {
            return Ok(());
        }
        if self.decided && self.peer.as_ref().is_some_and(|p| p.role == Role::Primary) {
            return Err(AdminError::Refused(
                "the peer is Primary; only one Primary may accept writes (make it secondary first)"
                    .into(),
            ));
        }
        if self
            .sync
            .as_ref()
            .is_some_and(|s| s.role == SyncRole::Target)
        {
            return Err(AdminError::Refused(
                "this node is a sync target: its data is Inconsistent until the resync ends".into(),
            ));
        }
        let mut start_full_sync = false;
        // A Primary acknowledges writes; the superblock written below (which
        // gates them) must not claim otherwise.
        self.flags.set(MetaFlags::UNACKED_GEN, false);
        if self.disk == DiskState::Consistent && force {
            // A crashed Primary whose peer is gone: its own data is the best
            // there is. The activity-log extents stay in the bitmap.
            self.flags.set(MetaFlags::CRASHED_PRIMARY, false);
            self.set_up_to_date();
        }
        if self.disk != DiskState::UpToDate {
            if !force {
                return Err(AdminError::Refused(format!(
                    "need UpToDate data to become Primary, this disk is {:?}; \
                     `primary --force` declares this node's data the good copy \
                     (DRBD's --overwrite-data-of-peer)",
                    self.disk
                )));
            }
            // Forced: this node's data becomes a new generation everybody
            // syncs from, in full.
            if self.gens.current != UUID_JUST_CREATED {
                self.gens.history = [self.gens.current, self.gens.history[0]];
            }
            self.gens.current = self.new_uuid();
            self.gens.bitmap = 0;
            self.flags.set(MetaFlags::CONSISTENT, true);
            self.flags.set(MetaFlags::WAS_UP_TO_DATE, true);
            self.flags.set(MetaFlags::CRASHED_PRIMARY, false);
            self.disk = DiskState::UpToDate;
            self.bitmap.set_all();
            self.persist_bitmap_all(None);
            start_full_sync = self.conn == ConnState::Connected;
            if self.connected_states() && !start_full_sync {
                // Mid-handshake or mid-sync: start over with the new generation.
                self.fail_connection(
                    DisconnectReason::Admin,
                    "primary --force changed the data generation".into(),
                    false,
                );
            }
        }
        self.role = Role::Primary;
        self.flags.set(MetaFlags::PRIMARY_IND, true);
        if !self.decided
            || !matches!(
                self.conn,
                ConnState::Connected | ConnState::SyncSource | ConnState::WFBitMapS
            )
        {
            if self.freeze_on_disconnect && self.suspended.is_none() {
                // Promoted alone: the same as losing the peer while Primary.
                self.suspended = Some(SuspendMode::Hold);
            }
            self.rotate_for_disconnected_writes();
        }
        self.persist_super(true);
        if self.decided {
            self.send(Message::State {
                role: self.role,
                disk: self.disk,
            });
        }
        if start_full_sync {
            self.send(Message::StartSync {
                sender_is_source: true,
                full: true,
            });
            self.start_sync(SyncRole::Source, true);
        }
        Ok(())
    }

    fn demote(&mut self) -> Result<(), AdminError> {
        if self.role == Role::Secondary {
            return Ok(());
        }
        if !self.app.is_empty() {
            return Err(AdminError::Refused(format!(
                "{} application requests in flight; stop using the device first",
                self.app.len()
            )));
        }
        self.role = Role::Secondary;
        // Held requests never reach a Secondary's data (nor the peer's).
        self.fail_held();
        self.suspended = None;
        self.resume_pending = false;
        self.flags.set(MetaFlags::PRIMARY_IND, false);
        self.flags.set(MetaFlags::CRASHED_PRIMARY, false);
        // A clean demotion empties the activity log, so a later crash of this
        // node does not resync extents it no longer writes.
        if let Some(plan) = self.al.plan_empty() {
            self.write_al_plan(plan);
        }
        self.persist_super(false);
        if self.decided {
            self.send(Message::State {
                role: self.role,
                disk: self.disk,
            });
        }
        Ok(())
    }

    // ----- connection --------------------------------------------------------

    fn on_transport_up(&mut self) {
        if self.conn != ConnState::Connecting {
            self.actions.push_back(Action::CloseConnection);
            return;
        }
        self.epoch += 1;
        self.conn = ConnState::Handshake;
        self.conn_started = self.now;
        self.last_recv = self.now;
        self.ping_sent = None;
        self.peer = None;
        self.decided = false;
        self.rng.fill_bytes(&mut self.my_nonce);
        let hello = Hello {
            version: crate::wire::PROTOCOL_VERSION,
            resource: self.cfg.resource.clone(),
            node: self.cfg.node.clone(),
            data_bytes: self.cfg.data_bytes,
            protocol: self.cfg.protocol,
            role: self.role,
            disk: self.disk,
            gens: self.gens,
            meta_flags: self.flags.0,
            features: self.cfg.features,
            dirty_bits: self.bitmap.count(),
            nonce: self.my_nonce,
            discard_my_data: self.discard_my_data,
        };
        self.send(Message::Hello(hello));
    }

    /// End the connection with a reason the peer logs too. `standalone`: stop
    /// reconnecting (the condition needs an admin).
    fn fail_connection(&mut self, reason: DisconnectReason, msg: String, standalone: bool) {
        self.error(msg.clone());
        if self.connected_states() {
            self.send(disconnect(reason, &msg));
        }
        if standalone {
            self.want_connect = false;
        }
        self.connection_lost(&msg);
        if standalone {
            self.conn = ConnState::StandAlone;
            self.actions.push_back(Action::CloseConnection);
        }
    }

    /// The connection is gone (for whatever reason). Everything the peer may
    /// not hold goes into the bitmap.
    fn connection_lost(&mut self, why: &str) {
        if !self.connected_states() {
            return;
        }
        tracing::info!(node = %self.cfg.node, state = ?self.conn, "connection lost: {why}");
        let was_decided = self.decided;
        if self.freeze_on_disconnect
            && was_decided
            && self.role == Role::Primary
            && self.suspended.is_none()
        {
            // Before the writes the peer did not confirm complete below.
            tracing::warn!(node = %self.cfg.node, "peer lost: I/O frozen until resumed");
            self.suspended = Some(SuspendMode::Hold);
        }
        self.epoch += 1;
        self.decided = false;
        if was_decided {
            self.set_connected_ind(false);
        }
        self.peer = None;
        self.ping_sent = None;
        // Replicated writes the peer did not confirm, and confirmed ones it
        // may not have flushed.
        let pending = std::mem::take(&mut self.peer_pending);
        self.peer_pending_bytes = 0;
        for (_, r) in pending {
            self.bitmap.set_range(r.span.start, r.span.len());
            self.al.release(r.extents.0, r.extents.1);
            if let Some(id) = r.app_id {
                if let Some(AppReq::Write { peer, .. }) = self.app.get_mut(&id) {
                    *peer = PeerWait::Done;
                }
                self.try_complete_write(id);
            }
        }
        for (_, s) in std::mem::take(&mut self.unflushed) {
            self.bitmap.set_range(s.start, s.len());
        }
        for (_, (_, app)) in std::mem::take(&mut self.barriers) {
            if let Some(id) = app {
                if let Some(AppReq::Flush { peer_done, .. }) = self.app.get_mut(&id) {
                    *peer_done = true;
                }
                self.try_complete_flush(id);
            }
        }
        self.peer_barriers.clear();
        self.unacked = 0;
        if let Some(s) = self.sync.take() {
            if s.role == SyncRole::Target && !s.verify {
                tracing::info!(node = %self.cfg.node, left = self.bitmap.count(), "resync interrupted; it resumes on reconnect");
            }
        }
        if self.role == Role::Primary && was_decided {
            self.rotate_for_disconnected_writes();
        }
        if self.down_requested {
            self.conn = ConnState::StandAlone;
            self.maybe_finish_down();
        } else if self.want_connect {
            self.conn = ConnState::Connecting;
            self.actions.push_back(Action::CloseConnection);
            self.actions.push_back(Action::Connect);
        } else {
            self.conn = ConnState::StandAlone;
            self.actions.push_back(Action::CloseConnection);
        }
        // Writes that waited for extents the peer held may go now (after the
        // new generation, if any, is durable: the gate holds them till then).
        self.process_al_wait();
    }

    fn on_frame(&mut self, m: Message) {
        if let Message::Disconnect { reason, message } = &m {
            let msg = format!("peer disconnected: {reason:?}: {message}");
            let standalone = matches!(
                reason,
                DisconnectReason::AuthFailed
                    | DisconnectReason::WrongResource
                    | DisconnectReason::WrongSize
                    | DisconnectReason::UnsupportedVersion
                    | DisconnectReason::ConfigMismatch
                    | DisconnectReason::SplitBrain
                    | DisconnectReason::UnrelatedData
                    | DisconnectReason::NoGoodData
                    | DisconnectReason::BothPrimary
            );
            if *reason == DisconnectReason::Shutdown {
                // The peer flushed everything it received before saying so.
                self.unflushed.clear();
                tracing::info!(node = %self.cfg.node, "peer shut down cleanly");
            } else if *reason != DisconnectReason::Admin {
                self.error(msg.clone());
            }
            if *reason == DisconnectReason::SplitBrain {
                self.split_brain = true;
            }
            if standalone {
                self.want_connect = false;
            }
            self.connection_lost(&msg);
            return;
        }
        if !self.decided {
            self.on_handshake_frame(m);
            return;
        }
        match m {
            Message::Ping => self.send(Message::PingAck),
            Message::PingAck => self.ping_sent = None,
            Message::Data {
                seq,
                offset,
                len,
                flags,
                data,
            } => {
                self.on_peer_data(seq, offset, len, flags, data);
            }
            Message::RecvAck { seq } => {
                if let Some(r) = self.peer_pending.get_mut(&seq) {
                    r.recv_acked = true;
                    if let Some(id) = r.app_id {
                        self.try_complete_write(id);
                    }
                }
            }
            Message::WriteAck { seq } => self.on_write_ack(seq, true),
            Message::NegAck { seq } => self.on_write_ack(seq, false),
            Message::Barrier { id } => {
                self.peer_barriers.push_back((id, self.recv_index));
                self.check_peer_barriers();
            }
            Message::BarrierAck { id } => self.on_barrier_ack(id),
            Message::State { role, disk } => {
                if role == Role::Primary && self.role == Role::Primary {
                    self.fail_connection(
                        DisconnectReason::BothPrimary,
                        "both nodes are Primary".into(),
                        true,
                    );
                    return;
                }
                if let Some(p) = self.peer.as_mut() {
                    p.role = role;
                    p.disk = disk;
                }
            }
            Message::Uuids { gens } => self.on_peer_uuids(gens),
            Message::StartSync {
                sender_is_source,
                full,
            } => {
                if self.conn != ConnState::Connected {
                    self.protocol_error("StartSync while not idle");
                    return;
                }
                if sender_is_source && self.role == Role::Primary {
                    self.fail_connection(
                        DisconnectReason::ConfigMismatch,
                        "peer wants to overwrite the Primary's data; refused".into(),
                        true,
                    );
                    return;
                }
                if sender_is_source {
                    if full {
                        self.bitmap.set_all();
                    }
                    self.start_sync(SyncRole::Target, full);
                } else {
                    self.start_sync(SyncRole::Source, full);
                }
            }
            Message::Bitmap { .. } => self.on_bitmap(&m),
            Message::ResyncRequest { id, offset, len } => {
                self.on_resync_request(id, offset, len, None)
            }
            Message::ChecksumRequest {
                id,
                offset,
                len,
                digest,
            } => {
                self.on_resync_request(id, offset, len, Some(digest));
            }
            Message::ResyncData { id, offset, data } => self.on_resync_data(id, offset, data),
            Message::InSync { id, offset, len } => self.on_in_sync(id, offset, len),
            Message::ResyncNeg { offset, len, .. } => {
                self.fail_connection(
                    DisconnectReason::IoError,
                    format!(
                        "the sync source could not read {len} bytes at {offset}; resync stopped"
                    ),
                    false,
                );
            }
            Message::ResyncAck { offset, len, .. } => {
                if self
                    .sync
                    .as_ref()
                    .is_some_and(|s| s.role == SyncRole::Source && !s.verify)
                {
                    self.bitmap.clear_range(offset, u64::from(len));
                }
            }
            Message::VerifyRequest {
                id,
                offset,
                len,
                digest,
            } => self.on_verify_request(id, offset, len, digest),
            Message::VerifyReply {
                id,
                offset,
                len,
                in_sync,
            } => self.on_verify_reply(id, offset, len, in_sync),
            Message::OutOfSync { offset, len } => self.bitmap.set_range(offset, u64::from(len)),
            Message::SyncDone => self.on_sync_done(),
            Message::Hello(_) | Message::Auth { .. } => {
                self.protocol_error("handshake message on an established connection")
            }
            Message::Disconnect { .. } => {}
        }
    }

    fn protocol_error(&mut self, what: &str) {
        self.fail_connection(
            DisconnectReason::ProtocolError,
            format!("protocol error: {what}"),
            false,
        );
    }

    fn on_handshake_frame(&mut self, m: Message) {
        match m {
            Message::Hello(h) => {
                if self.peer.is_some() {
                    self.protocol_error("second Hello");
                    return;
                }
                let c = &self.cfg;
                let mismatch = if h.version != crate::wire::PROTOCOL_VERSION {
                    Some((
                        DisconnectReason::UnsupportedVersion,
                        format!(
                            "peer speaks protocol version {}, this node {}",
                            h.version,
                            crate::wire::PROTOCOL_VERSION
                        ),
                    ))
                } else if h.resource != c.resource {
                    Some((
                        DisconnectReason::WrongResource,
                        format!(
                            "peer serves resource '{}', this node '{}'",
                            h.resource, c.resource
                        ),
                    ))
                } else if h.node != c.peer {
                    Some((
                        DisconnectReason::ConfigMismatch,
                        format!(
                            "peer calls itself '{}', the config expects '{}'",
                            h.node, c.peer
                        ),
                    ))
                } else if h.data_bytes != c.data_bytes {
                    Some((
                        DisconnectReason::WrongSize,
                        format!(
                            "peer's data size is {} bytes, this node's {} bytes",
                            h.data_bytes, c.data_bytes
                        ),
                    ))
                } else if h.protocol != c.protocol {
                    Some((
                        DisconnectReason::ConfigMismatch,
                        format!(
                            "peer uses protocol {:?}, this node {:?}",
                            h.protocol, c.protocol
                        ),
                    ))
                } else {
                    None
                };
                if let Some((reason, msg)) = mismatch {
                    self.fail_connection(reason, format!("handshake refused: {msg}"), true);
                    return;
                }
                let mac = auth_mac(&self.cfg.secret, &h.nonce, &self.my_nonce, &self.cfg.node);
                let (role, disk) = (h.role, h.disk);
                self.peer = Some(PeerInfo {
                    hello: h,
                    authed: false,
                    role,
                    disk,
                });
                self.send(Message::Auth { mac });
            }
            Message::Auth { mac } => {
                let Some(p) = self.peer.as_mut() else {
                    self.protocol_error("Auth before Hello");
                    return;
                };
                if !verify_auth(
                    &self.cfg.secret,
                    &self.my_nonce,
                    &p.hello.nonce,
                    &p.hello.node,
                    &mac,
                ) {
                    self.fail_connection(
                        DisconnectReason::AuthFailed,
                        "handshake refused: the peer's answer to the challenge is wrong (different shared secret?)".into(),
                        true,
                    );
                    return;
                }
                p.authed = true;
                self.decide_sync();
            }
            _ => self.protocol_error("data before the handshake finished"),
        }
    }

    fn decide_sync(&mut self) {
        let Some(p) = self.peer.clone() else { return };
        if p.hello.role == Role::Primary && self.role == Role::Primary {
            // Two Primaries whose data diverged is a split brain; the
            // generations tell (below). Same generations cannot both be
            // Primary unless promoted while disconnected, which rotated them.
        }
        let me = View {
            node: &self.cfg.node,
            gens: self.gens,
            flags: self.flags,
            role: self.role,
            disk: self.disk,
            dirty_bits: self.bitmap.count(),
            discard_my_data: self.discard_my_data,
        };
        let peer = View {
            node: &p.hello.node,
            gens: p.hello.gens,
            flags: MetaFlags(p.hello.meta_flags),
            role: p.hello.role,
            disk: p.hello.disk,
            dirty_bits: p.hello.dirty_bits,
            discard_my_data: p.hello.discard_my_data,
        };
        let d = decide(&me, &peer, &self.cfg.split_brain);
        tracing::info!(node = %self.cfg.node, peer = %p.hello.node, decision = ?d, "sync handshake");
        self.discard_my_data = false;
        self.decided = true;
        self.set_connected_ind(true);
        match d {
            Decision::NoSync => {
                if self.role == Role::Primary && p.hello.role == Role::Primary {
                    self.fail_connection(DisconnectReason::BothPrimary, "both nodes are Primary".into(), true);
                    return;
                }
                self.conn = ConnState::Connected;
                let peer_consistent = matches!(p.hello.disk, DiskState::UpToDate | DiskState::Consistent | DiskState::Outdated);
                if matches!(self.disk, DiskState::Consistent | DiskState::Outdated) && peer_consistent {
                    self.set_up_to_date();
                }
                if let Some(pp) = self.peer.as_mut() {
                    if matches!(pp.disk, DiskState::Consistent | DiskState::Outdated) {
                        pp.disk = DiskState::UpToDate;
                    }
                }
                if self.gens.current == p.hello.gens.current {
                    // In sync: the bitmap generation is history now.
                    self.peer_has_my_current = true;
                    if self.gens.bitmap != 0 {
                        self.gens.history = [self.gens.bitmap, self.gens.history[0]];
                        self.gens.bitmap = 0;
                        self.persist_super(false);
                    }
                }
            }
            Decision::Source { full } => self.begin_sync_after_handshake(SyncRole::Source, full),
            Decision::Target { full } => self.begin_sync_after_handshake(SyncRole::Target, full),
            Decision::SplitBrainResolved { i_am_source, how } => {
                self.error(format!("split brain detected and resolved automatically: {how}"));
                let r = if i_am_source { SyncRole::Source } else { SyncRole::Target };
                self.begin_sync_after_handshake(r, false);
            }
            Decision::SplitBrain { detail, i_run_pri_lost_hook } => {
                self.split_brain = true;
                self.actions.push_back(Action::Hook(Hook::SplitBrain { detail: detail.clone() }));
                if i_run_pri_lost_hook {
                    self.actions.push_back(Action::Hook(Hook::PriLostAfterSb));
                }
                self.fail_connection(
                    DisconnectReason::SplitBrain,
                    format!(
                        "split brain: {detail}. Both nodes stay StandAlone. To recover, pick the \
                         victim whose changes are thrown away: on it run `repctl secondary` and \
                         `repctl connect --discard-my-data`; on the survivor run `repctl connect`"
                    ),
                    true,
                );
            }
            Decision::Unrelated => self.fail_connection(
                DisconnectReason::UnrelatedData,
                "the nodes' data share no generation (unrelated data); refusing to sync. \
                 Recreate the metadata of the node to overwrite (create-md --force) if this is intended"
                    .into(),
                true,
            ),
            Decision::NoGoodData { detail } => self.fail_connection(
                DisconnectReason::NoGoodData,
                format!("no node has good data to sync from: {detail}"),
                true,
            ),
        }
    }

    fn set_up_to_date(&mut self) {
        self.disk = DiskState::UpToDate;
        self.flags.set(MetaFlags::CONSISTENT, true);
        self.flags.set(MetaFlags::WAS_UP_TO_DATE, true);
        self.persist_super(false);
    }

    fn begin_sync_after_handshake(&mut self, role: SyncRole, full: bool) {
        if role == SyncRole::Target && self.role == Role::Primary {
            self.fail_connection(
                DisconnectReason::ConfigMismatch,
                "this Primary would have to become sync target (the peer has newer data); refusing. \
                 Make it secondary first"
                    .into(),
                true,
            );
            return;
        }
        if full {
            self.bitmap.set_all();
        }
        self.start_sync(role, full);
    }

    // ----- resync ------------------------------------------------------------

    /// Send our bitmap and wait for the peer's; the resync runs on their union.
    fn start_sync(&mut self, role: SyncRole, full: bool) {
        if full {
            self.bitmap.set_all();
        }
        self.conn = if role == SyncRole::Source {
            ConnState::WFBitMapS
        } else {
            ConnState::WFBitMapT
        };
        if role == SyncRole::Source {
            // The target takes this generation when the resync starts.
            self.send(Message::Uuids { gens: self.gens });
        }
        let nbits = self.bitmap.nbits();
        for m in bitmap_messages(self.bitmap.words(), nbits, BITMAP_RUNS_PER_FRAME) {
            self.send(m);
        }
        self.sync = Some(Sync {
            receiver: Some(BitmapReceiver::new(nbits)),
            ..Sync::new(role, false, self.epoch, self.now, 0, false)
        });
    }

    fn on_bitmap(&mut self, m: &Message) {
        let nbits = self.bitmap.nbits();
        let Some(s) = self.sync.as_mut() else {
            self.protocol_error("bitmap outside a resync");
            return;
        };
        let Some(rx) = s.receiver.as_mut() else {
            self.protocol_error("bitmap after the exchange ended");
            return;
        };
        let mut words = self.bitmap.words().to_vec();
        match rx.receive_message(m, &mut words) {
            Err(e) => {
                let e = e.to_string();
                self.protocol_error(&format!("bad bitmap: {e}"));
            }
            Ok(Progress::More) => self.bitmap.or_words(&words),
            Ok(Progress::Done { .. }) => {
                self.bitmap.or_words(&words);
                let _ = nbits;
                self.bitmap_exchanged();
            }
        }
    }

    fn bitmap_exchanged(&mut self) {
        let Some(role) = self.sync.as_ref().map(|s| s.role) else {
            return;
        };
        let total = self.bitmap.count() * BM_BLOCK_SIZE;
        let epoch = self.epoch;
        if let Some(s) = self.sync.as_mut() {
            s.receiver = None;
            s.total_bytes = total;
            s.last_refill = self.now;
            s.tokens = 0;
        }
        tracing::info!(node = %self.cfg.node, ?role, bytes = total, "resync starts");
        match role {
            SyncRole::Source => {
                self.conn = ConnState::SyncSource;
                self.peer_has_my_current = true;
                if let Some(p) = self.peer.as_mut() {
                    p.disk = DiskState::Inconsistent;
                }
                self.persist_bitmap_all(None);
            }
            SyncRole::Target => {
                self.conn = ConnState::SyncTarget;
                // Inconsistent and the full set of bits durable before the
                // first block is overwritten: a crash mid-sync must resume,
                // never pass for consistent.
                self.disk = DiskState::Inconsistent;
                self.flags.set(MetaFlags::CONSISTENT, false);
                self.flags.set(MetaFlags::WAS_UP_TO_DATE, false);
                // A crashed Primary that is the target now: its
                // activity-log extents are in the bitmap that is persisted
                // below, and its data is the source's from here on. Left
                // set, the flag would make this Inconsistent copy look like
                // the crashed Primary's good one if the source crashed too.
                self.flags.set(MetaFlags::CRASHED_PRIMARY, false);
                // Its own unacknowledged changes are being overwritten.
                self.flags.set(MetaFlags::UNACKED_GEN, false);
                // Take the source's generation now, marked Inconsistent: an
                // interrupted resync then resumes from the bitmap whatever
                // the source did meanwhile, and the source's generation
                // rules (it starts a new one when it goes on alone) apply.
                let src = self
                    .peer
                    .as_ref()
                    .map_or(self.gens.current, |p| p.hello.gens.current);
                if src != self.gens.current {
                    self.gens.history = [self.gens.current, self.gens.history[0]];
                    self.gens.current = src;
                }
                self.gens.bitmap = 0;
                if let Some(s) = self.sync.as_mut() {
                    s.persist_pending = 1;
                }
                let token = self.token();
                self.flush_ops.insert(token, FlushOp::SyncStart { epoch });
                self.actions.push_back(Action::LocalFlush { token });
            }
        }
    }

    fn refill(&mut self) {
        let rate = self.cfg.resync_rate;
        let now = self.now;
        if let Some(s) = self.sync.as_mut() {
            if rate == 0 {
                s.tokens = u64::MAX;
            } else {
                let dt = now.saturating_sub(s.last_refill);
                if dt > 0 {
                    s.tokens = s
                        .tokens
                        .saturating_add(rate.saturating_mul(dt) / 1000)
                        .min(rate.max(SYNC_REQ_BYTES));
                    s.last_refill = now;
                }
            }
        }
    }

    /// Target side: ask for more blocks while the window and the rate allow.
    fn pump_sync(&mut self) {
        self.refill();
        let now = self.now;
        let data_bytes = self.cfg.data_bytes;
        let csums = self.cfg.csums
            && self
                .peer
                .as_ref()
                .is_some_and(|p| p.hello.features & crate::wire::features::CSUM_RESYNC != 0);
        loop {
            let Some(s) = self.sync.as_mut() else { return };
            if s.verify
                || s.role != SyncRole::Target
                || s.receiver.is_some()
                || s.persist_pending > 0
                || s.finishing
            {
                return;
            }
            if !s.window.open(s.inflight.len()) {
                return;
            }
            let max_bits = SYNC_REQ_BYTES / BM_BLOCK_SIZE;
            let run = self.bitmap.next_run(s.cursor, max_bits).or_else(|| {
                if s.inflight.is_empty() {
                    s.cursor = 0;
                    self.bitmap.next_run(0, max_bits)
                } else {
                    None
                }
            });
            let Some((bit, count)) = run else {
                if s.inflight.is_empty() {
                    self.finish_target();
                }
                return;
            };
            let offset = bit * BM_BLOCK_SIZE;
            let len = (count * BM_BLOCK_SIZE).min(data_bytes.saturating_sub(offset));
            let span = Span::new(offset, len);
            if s.inflight.values().any(|x| x.overlaps(&span)) {
                return;
            }
            if s.tokens < len {
                return;
            }
            s.tokens -= len;
            s.cursor = bit + count;
            let id = s.next_id;
            s.next_id += 1;
            s.inflight.insert(id, span);
            s.window.sent(id, now);
            let epoch = s.epoch;
            let len32 = u32::try_from(len).unwrap_or(MAX_IO);
            if csums {
                self.submit_local(span, LocalOp::CsumRead { id, epoch });
            } else {
                self.send(Message::ResyncRequest {
                    id,
                    offset,
                    len: len32,
                });
            }
        }
    }

    fn finish_target(&mut self) {
        let epoch = self.epoch;
        if let Some(s) = self.sync.as_mut() {
            if s.finishing {
                return;
            }
            s.finishing = true;
        }
        let token = self.token();
        self.flush_ops.insert(token, FlushOp::SyncDone { epoch });
        self.actions.push_back(Action::LocalFlush { token });
    }

    fn on_resync_request(&mut self, id: u64, offset: u64, len: u32, digest: Option<u32>) {
        if !self
            .sync
            .as_ref()
            .is_some_and(|s| s.role == SyncRole::Source && !s.verify)
        {
            self.protocol_error("resync request while not sync source");
            return;
        }
        if !self.valid_range(offset, u64::from(len)) || len > MAX_IO {
            self.protocol_error("resync request out of range");
            return;
        }
        let epoch = self.epoch;
        self.unacked += 1;
        self.submit_local(
            Span::new(offset, u64::from(len)),
            LocalOp::ResyncRead {
                id,
                epoch,
                peer_digest: digest,
            },
        );
    }

    fn on_resync_data(&mut self, id: u64, offset: u64, data: Bytes) {
        let span = Span::new(offset, data.len() as u64);
        let ok = self
            .sync
            .as_ref()
            .is_some_and(|s| s.role == SyncRole::Target && s.inflight.get(&id) == Some(&span));
        if !ok {
            self.protocol_error("resync data nobody asked for");
            return;
        }
        self.sync_answered(id);
        self.stats.received_bytes += data.len() as u64;
        self.stats.resync_received_bytes += data.len() as u64;
        let epoch = self.epoch;
        let len = u32::try_from(data.len()).unwrap_or(MAX_IO);
        let token = self.token();
        if self
            .io
            .submit(token, span, LocalOp::ResyncWrite { id, epoch })
        {
            self.stats.written_bytes += data.len() as u64;
            self.actions.push_back(Action::LocalWrite {
                token,
                offset,
                len,
                payload: Payload::Data(data),
                fua: false,
            });
        } else {
            self.parked
                .insert(token, (offset, len, Payload::Data(data), false));
        }
    }

    /// Target: the answer to resync request `id` arrived; the window
    /// aims at answers within a quarter of `timeout-ms`.
    fn sync_answered(&mut self, id: u64) {
        let (now, target) = (self.now, (self.cfg.timeout_ms / 4).max(1));
        if let Some(s) = self.sync.as_mut() {
            s.window.answered(id, now, target);
        }
    }

    fn on_in_sync(&mut self, id: u64, offset: u64, len: u32) {
        let span = Span::new(offset, u64::from(len));
        let ok = self
            .sync
            .as_ref()
            .is_some_and(|s| s.role == SyncRole::Target && s.inflight.get(&id) == Some(&span));
        if !ok {
            self.protocol_error("in-sync answer nobody asked for");
            return;
        }
        self.sync_answered(id);
        self.bitmap.clear_range(offset, u64::from(len));
        if let Some(s) = self.sync.as_mut() {
            s.inflight.remove(&id);
        }
        self.pump_sync();
    }

    fn on_sync_done(&mut self) {
        let Some(s) = self.sync.as_ref() else {
            self.protocol_error("SyncDone outside a sync");
            return;
        };
        if s.verify {
            // Verify target: the source finished.
            self.sync = None;
            self.conn = ConnState::Connected;
            return;
        }
        if s.role != SyncRole::Source {
            self.protocol_error("SyncDone sent to the sync target");
            return;
        }
        let left = self.bitmap.count();
        if left > 0 {
            tracing::warn!(node = %self.cfg.node, left, "target finished with blocks still marked here; they stay out of sync");
        }
        self.sync = None;
        self.conn = ConnState::Connected;
        if self.gens.bitmap != 0 {
            self.gens.history = [self.gens.bitmap, self.gens.history[0]];
            self.gens.bitmap = 0;
        }
        self.flags.set(MetaFlags::CRASHED_PRIMARY, false);
        self.peer_has_my_current = true;
        let became_up_to_date = self.disk == DiskState::Consistent;
        if became_up_to_date {
            // A crashed Primary that was the source (its peer was
            // Inconsistent): its copy is the reference now on both nodes.
            self.set_up_to_date();
        } else {
            self.persist_super(false);
        }
        self.persist_bitmap_all(None);
        if let Some(p) = self.peer.as_mut() {
            p.disk = DiskState::UpToDate;
            p.hello.gens = self.gens;
        }
        tracing::info!(node = %self.cfg.node, "resync finished as source");
        self.send(Message::Uuids { gens: self.gens });
        if became_up_to_date {
            // The peer still counts this disk Consistent (from the Hello).
            self.send(Message::State {
                role: self.role,
                disk: self.disk,
            });
        }
    }

    fn on_peer_uuids(&mut self, gens: Generations) {
        // After a finished resync both share the current generation: take
        // the source's history too, so both remember the same past.
        let idle = self.sync.is_none() && self.conn == ConnState::Connected;
        if idle
            && gens.current == self.gens.current
            && self.disk == DiskState::UpToDate
            && self.gens != gens
        {
            self.gens = gens;
            self.persist_super(false);
        }
        if let Some(p) = self.peer.as_mut() {
            p.hello.gens = gens;
        }
    }

    // ----- verify ------------------------------------------------------------

    fn start_verify(&mut self, repair: bool) {
        self.conn = ConnState::VerifySource;
        self.sync = Some(Sync::new(
            SyncRole::Source,
            true,
            self.epoch,
            self.now,
            self.cfg.data_bytes,
            repair,
        ));
        self.stats.verified_bytes = 0;
        self.stats.verify_out_of_sync_bytes = 0;
        self.pump_verify();
    }

    fn pump_verify(&mut self) {
        self.refill();
        let data_bytes = self.cfg.data_bytes;
        loop {
            let Some(s) = self.sync.as_mut() else { return };
            if !s.verify || s.role != SyncRole::Source || s.finishing {
                return;
            }
            if s.cursor >= data_bytes {
                if s.inflight.is_empty() {
                    self.finish_verify();
                }
                return;
            }
            if s.inflight.len() >= SYNC_WINDOW {
                return;
            }
            let len = SYNC_REQ_BYTES.min(data_bytes - s.cursor);
            if s.tokens < len {
                return;
            }
            s.tokens -= len;
            let span = Span::new(s.cursor, len);
            s.cursor += len;
            let id = s.next_id;
            s.next_id += 1;
            s.inflight.insert(id, span);
            let epoch = s.epoch;
            self.submit_local(span, LocalOp::VerifyRead { id, epoch });
        }
    }

    fn finish_verify(&mut self) {
        let Some(s) = self.sync.take() else { return };
        self.conn = ConnState::Connected;
        self.send(Message::SyncDone);
        tracing::info!(node = %self.cfg.node, out_of_sync = s.found_oos, "verify finished");
        if s.found_oos > 0 {
            self.error(format!(
                "verify found {} bytes out of sync{}",
                s.found_oos,
                if s.repair {
                    "; resyncing them"
                } else {
                    "; run `repctl verify --repair` (or invalidate) to resync them"
                }
            ));
            if s.repair {
                let i_am_source = self.role == Role::Primary
                    || !self.peer.as_ref().is_some_and(|p| p.role == Role::Primary);
                if i_am_source {
                    self.send(Message::StartSync {
                        sender_is_source: true,
                        full: false,
                    });
                    self.start_sync(SyncRole::Source, false);
                } else {
                    self.send(Message::StartSync {
                        sender_is_source: false,
                        full: false,
                    });
                    self.start_sync(SyncRole::Target, false);
                }
            }
        }
    }

    fn on_verify_request(&mut self, id: u64, offset: u64, len: u32, digest: u32) {
        if self.conn == ConnState::Connected && self.sync.is_none() {
            self.conn = ConnState::VerifyTarget;
            self.sync = Some(Sync::new(
                SyncRole::Target,
                true,
                self.epoch,
                self.now,
                self.cfg.data_bytes,
                false,
            ));
        }
        if !self
            .sync
            .as_ref()
            .is_some_and(|s| s.verify && s.role == SyncRole::Target)
        {
            self.protocol_error("verify request while not verify target");
            return;
        }
        if !self.valid_range(offset, u64::from(len)) || len > MAX_IO {
            self.protocol_error("verify request out of range");
            return;
        }
        if let Some(s) = self.sync.as_mut() {
            s.cursor = s.cursor.max(offset + u64::from(len));
        }
        let epoch = self.epoch;
        self.unacked += 1;
        self.submit_local(
            Span::new(offset, u64::from(len)),
            LocalOp::VerifyCompare { id, epoch, digest },
        );
    }

    fn on_verify_reply(&mut self, id: u64, offset: u64, len: u32, in_sync: bool) {
        let span = Span::new(offset, u64::from(len));
        let ok = self.sync.as_ref().is_some_and(|s| {
            s.verify && s.role == SyncRole::Source && s.inflight.get(&id) == Some(&span)
        });
        if !ok {
            self.protocol_error("verify reply nobody asked for");
            return;
        }
        self.stats.verified_bytes += u64::from(len);
        if !in_sync {
            self.bitmap.set_range(offset, u64::from(len));
            self.stats.verify_out_of_sync_bytes += u64::from(len);
        }
        if let Some(s) = self.sync.as_mut() {
            s.inflight.remove(&id);
            if !in_sync {
                s.found_oos += u64::from(len);
            }
        }
        self.pump_verify();
    }

    // ----- application I/O ---------------------------------------------------

    fn valid_range(&self, offset: u64, len: u64) -> bool {
        len > 0
            && offset % 512 == 0
            && len % 512 == 0
            && offset
                .checked_add(len)
                .is_some_and(|e| e <= self.cfg.data_bytes)
    }

    fn app_read(&mut self, id: u64, offset: u64, len: u32) {
        if self.role != Role::Primary {
            self.complete(id, Err(errno::EROFS));
            return;
        }
        if !self.valid_range(offset, u64::from(len)) || len > MAX_IO || self.app.contains_key(&id) {
            self.complete(id, Err(errno::EINVAL));
            return;
        }
        self.app.insert(id, AppReq::Read);
        self.submit_local(Span::new(offset, u64::from(len)), LocalOp::AppRead { id });
    }

    fn app_write(&mut self, id: u64, offset: u64, payload: Payload, len: u32, fua: bool) {
        if self.role != Role::Primary || self.down_requested {
            self.complete(id, Err(errno::EROFS));
            return;
        }
        let bad_len = match &payload {
            Payload::Data(d) => d.len() != len as usize || len > MAX_IO,
            Payload::Trim | Payload::Zeroes => false,
        };
        if bad_len || !self.valid_range(offset, u64::from(len)) || self.app.contains_key(&id) {
            self.complete(id, Err(errno::EINVAL));
            return;
        }
        let span = Span::new(offset, u64::from(len));
        let extents = (extent_of(offset), extent_of(span.end - 1));
        self.app.insert(
            id,
            AppReq::Write {
                span,
                payload,
                fua,
                extents,
                queued: true,
                local_done: false,
                local_err: None,
                peer: PeerWait::None,
            },
        );
        self.al_wait.push_back(id);
        self.process_al_wait();
    }

    /// Start queued writes whose extents are in the activity log; plan a
    /// transaction for the others.
    fn process_al_wait(&mut self) {
        if self.super_gate > 0 {
            return;
        }
        let mut still = VecDeque::new();
        let mut wanted: Vec<u32> = Vec::new();
        let window = u64::from(self.cfg.max_buffers.max(64)) * BM_BLOCK_SIZE;
        while let Some(id) = self.al_wait.pop_front() {
            if self.peer_pending_bytes >= window && self.replicating() {
                // The WriteAcks wake this queue again.
                still.push_back(id);
                still.extend(self.al_wait.drain(..));
                break;
            }
            let Some(AppReq::Write {
                extents: (a, b), ..
            }) = self.app.get(&id)
            else {
                continue;
            };
            let (a, b) = (*a, *b);
            // Concurrent application writes carry no order among
            // themselves, so a later write to a hot extent may pass one
            // waiting for the log.
            if self.al.try_acquire(a, b) {
                self.start_write(id);
            } else {
                wanted.extend(a..=b);
                still.push_back(id);
            }
        }
        self.al_wait = still;
        if !wanted.is_empty() && self.al_stage_pending == 0 && self.al_plan.is_none() {
            if let Some(plan) = self.al.plan(&wanted) {
                self.write_al_plan(plan);
            }
        }
    }

    fn write_al_plan(&mut self, plan: AlPlan) {
        // Bits of extents leaving the log must be durable first: after a
        // crash only the extents in the log are resynced wholesale.
        let mut pending = 0;
        if !plan.evicted.is_empty() {
            let token = self.token();
            self.flush_ops.insert(token, FlushOp::AlPreflush);
            self.actions.push_back(Action::LocalFlush { token });
            pending += 1;
        }
        for &e in &plan.evicted {
            let (first_word, words) = self.bitmap.extent_words(e);
            if words.is_empty() {
                continue;
            }
            let token = self.token();
            self.meta_ops.insert(token, MetaOp::EvictBitmap);
            self.stats.bm_writes += 1;
            self.actions.push_back(Action::WriteBitmap {
                token,
                first_word,
                words,
            });
            pending += 1;
        }
        self.al_stage_pending = pending;
        self.al_plan = Some(plan);
        if pending == 0 {
            self.emit_al();
        }
    }

    fn emit_al(&mut self) {
        let Some(plan) = self.al_plan.as_ref() else {
            return;
        };
        let (seq, extents) = (plan.seq, plan.extents.clone());
        let token = self.token();
        self.meta_ops.insert(token, MetaOp::Al);
        self.stats.al_writes += 1;
        self.actions.push_back(Action::WriteAl {
            token,
            seq,
            extents,
        });
    }

    fn start_write(&mut self, id: u64) {
        let Some(AppReq::Write { span, queued, .. }) = self.app.get_mut(&id) else {
            return;
        };
        *queued = false;
        let span = *span;
        self.submit_local(span, LocalOp::AppWrite { id });
    }

    /// Queue a local operation in order; issue it if nothing overlaps.
    fn submit_local(&mut self, span: Span, op: LocalOp) {
        let token = self.token();
        if self.io.submit(token, span, op) {
            self.issue_local(token);
        }
    }

    /// The ordering queue let `token` start: emit its I/O (and, for an
    /// application write, its replication: both leave in the same order).
    fn issue_local(&mut self, token: u64) {
        let Some((span, op)) = self.io.get(token).cloned() else {
            return;
        };
        let len = u32::try_from(span.len()).unwrap_or(MAX_IO);
        match op {
            LocalOp::AppWrite { id } => {
                let replicate = self.replicating();
                let Some(AppReq::Write {
                    payload,
                    fua,
                    peer,
                    extents,
                    ..
                }) = self.app.get_mut(&id)
                else {
                    return;
                };
                let (payload, fua, extents) = (payload.clone(), *fua, *extents);
                if replicate {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    let need_write_ack = fua || self.cfg.protocol == Protocol::C;
                    *peer = if self.cfg.protocol == Protocol::A && !need_write_ack {
                        PeerWait::Done
                    } else {
                        PeerWait::Sent {
                            seq,
                            need_write_ack,
                        }
                    };
                    let (flags, data) = match &payload {
                        Payload::Data(d) => (0, d.clone()),
                        Payload::Trim => (data_flags::TRIM, Bytes::new()),
                        Payload::Zeroes => (data_flags::ZEROES, Bytes::new()),
                    };
                    let flags = flags | if fua { data_flags::FUA } else { 0 };
                    self.al.add_ref(extents.0, extents.1);
                    self.peer_pending_bytes += span.len();
                    self.peer_pending.insert(
                        seq,
                        PeerReq {
                            app_id: Some(id),
                            span,
                            extents,
                            sent_at: self.now,
                            recv_acked: false,
                        },
                    );
                    self.last_data_sent = self.now;
                    self.send(Message::Data {
                        seq,
                        offset: span.start,
                        len,
                        flags,
                        data,
                    });
                } else {
                    *peer = PeerWait::None;
                    self.bitmap.set_range(span.start, span.len());
                }
                self.stats.written_bytes += span.len();
                self.actions.push_back(Action::LocalWrite {
                    token,
                    offset: span.start,
                    len,
                    payload,
                    fua,
                });
            }
            LocalOp::AppRead { .. }
            | LocalOp::ResyncRead { .. }
            | LocalOp::CsumRead { .. }
            | LocalOp::VerifyRead { .. }
            | LocalOp::VerifyCompare { .. } => {
                self.actions.push_back(Action::LocalRead {
                    token,
                    offset: span.start,
                    len,
                });
            }
            LocalOp::PeerWrite { .. } | LocalOp::ResyncWrite { .. } => {
                if let Some((offset, len, payload, fua)) = self.parked.remove(&token) {
                    self.stats.written_bytes += u64::from(len);
                    self.actions.push_back(Action::LocalWrite {
                        token,
                        offset,
                        len,
                        payload,
                        fua,
                    });
                }
            }
        }
    }

    fn try_complete_write(&mut self, id: u64) {
        let done = match self.app.get(&id) {
            Some(AppReq::Write {
                local_done: true,
                peer,
                local_err,
                ..
            }) => {
                let peer_ok = match peer {
                    PeerWait::None | PeerWait::Done => true,
                    PeerWait::Sent {
                        seq,
                        need_write_ack,
                    } => {
                        // Still pending? Then check what the protocol asks.
                        match self.peer_pending.get(seq) {
                            None => true,
                            Some(r) => !*need_write_ack && r.recv_acked,
                        }
                    }
                };
                if peer_ok {
                    Some(*local_err)
                } else {
                    None
                }
            }
            _ => None,
        };
        if let Some(err) = done {
            if let Some(AppReq::Write {
                extents: (a, b), ..
            }) = self.app.remove(&id)
            {
                self.al.release(a, b);
            }
            self.complete(id, err.map_or(Ok(None), Err));
            self.process_al_wait();
            self.maybe_finish_down();
        }
    }

    fn on_write_ack(&mut self, seq: u64, ok: bool) {
        let Some(r) = self.peer_pending.remove(&seq) else {
            self.protocol_error("ack for a write never sent");
            return;
        };
        self.al.release(r.extents.0, r.extents.1);
        self.peer_pending_bytes = self.peer_pending_bytes.saturating_sub(r.span.len());
        self.process_al_wait();
        if ok {
            self.unflushed.push_back((seq, r.span));
            if self.unflushed.len() >= self.cfg.max_buffers as usize && self.barriers.is_empty() {
                self.send_barrier(None);
            }
        } else {
            self.error(format!(
                "peer failed to write {} bytes at {}; marked out of sync",
                r.span.len(),
                r.span.start
            ));
            self.bitmap.set_range(r.span.start, r.span.len());
        }
        if let Some(id) = r.app_id {
            if let Some(AppReq::Write { peer, .. }) = self.app.get_mut(&id) {
                *peer = PeerWait::Done;
            }
            self.try_complete_write(id);
        }
    }

    fn send_barrier(&mut self, app: Option<u64>) {
        let id = self.next_barrier;
        self.next_barrier += 1;
        let bound = self.next_seq - 1;
        self.barriers.insert(id, (bound, app));
        self.send(Message::Barrier { id });
    }

    fn on_barrier_ack(&mut self, id: u64) {
        let Some((bound, app)) = self.barriers.remove(&id) else {
            self.protocol_error("ack for an unknown barrier");
            return;
        };
        self.unflushed.retain(|(seq, _)| *seq > bound);
        if let Some(aid) = app {
            if let Some(AppReq::Flush { peer_done, .. }) = self.app.get_mut(&aid) {
                *peer_done = true;
            }
            self.try_complete_flush(aid);
        }
    }

    fn app_flush(&mut self, id: u64) {
        if self.role != Role::Primary {
            self.complete(id, Err(errno::EROFS));
            return;
        }
        if self.app.contains_key(&id) {
            self.complete(id, Err(errno::EINVAL));
            return;
        }
        let replicate = self.replicating();
        self.app.insert(
            id,
            AppReq::Flush {
                local_done: false,
                local_err: None,
                peer_done: !replicate,
            },
        );
        let token = self.token();
        self.flush_ops.insert(token, FlushOp::App { id });
        self.actions.push_back(Action::LocalFlush { token });
        if replicate {
            self.send_barrier(Some(id));
        }
    }

    fn try_complete_flush(&mut self, id: u64) {
        if let Some(AppReq::Flush {
            local_done: true,
            peer_done: true,
            local_err,
        }) = self.app.get(&id)
        {
            let err = *local_err;
            self.app.remove(&id);
            self.complete(id, err.map_or(Ok(None), Err));
            self.maybe_finish_down();
        }
    }

    // ----- peer writes (Secondary) -------------------------------------------

    fn on_peer_data(&mut self, seq: u64, offset: u64, len: u32, flags: u32, data: Bytes) {
        if self.role == Role::Primary {
            self.fail_connection(
                DisconnectReason::BothPrimary,
                "peer sent writes to a Primary".into(),
                true,
            );
            return;
        }
        if !self.valid_range(offset, u64::from(len)) {
            self.protocol_error("write out of range");
            return;
        }
        if self.cfg.protocol == Protocol::B {
            self.send(Message::RecvAck { seq });
        }
        self.stats.received_bytes += data.len() as u64;
        self.recv_index += 1;
        let recv_idx = self.recv_index;
        self.recv_incomplete.insert(recv_idx);
        self.unacked += 1;
        let payload = if flags & data_flags::TRIM != 0 {
            Payload::Trim
        } else if flags & data_flags::ZEROES != 0 {
            Payload::Zeroes
        } else {
            Payload::Data(data)
        };
        let fua = flags & data_flags::FUA != 0;
        let epoch = self.epoch;
        let token = self.token();
        let span = Span::new(offset, u64::from(len));
        if self.io.submit(
            token,
            span,
            LocalOp::PeerWrite {
                seq,
                epoch,
                recv_idx,
            },
        ) {
            self.stats.written_bytes += u64::from(len);
            self.actions.push_back(Action::LocalWrite {
                token,
                offset,
                len,
                payload,
                fua,
            });
        } else {
            self.parked.insert(token, (offset, len, payload, fua));
        }
    }

    fn check_peer_barriers(&mut self) {
        while let Some(&(id, mark)) = self.peer_barriers.front() {
            let ready = self.recv_incomplete.first().is_none_or(|&i| i > mark);
            if !ready {
                return;
            }
            self.peer_barriers.pop_front();
            let token = self.token();
            let epoch = self.epoch;
            self.flush_ops
                .insert(token, FlushOp::PeerBarrier { id, epoch });
            self.actions.push_back(Action::LocalFlush { token });
        }
    }

    // ----- completions -------------------------------------------------------

    fn local_done(&mut self, token: u64, result: Result<Option<Bytes>, i32>) {
        if let Some(f) = self.flush_ops.remove(&token) {
            self.flush_done(f, result.map(|_| ()));
            return;
        }
        let (done, started) = self.io.complete(token);
        let Some((span, op)) = done else { return };
        // The finished op's own effects (sends) go out before any op it
        // unblocked starts: the wire order must match the disk order.
        self.finish_local(span, op, result);
        for t in started {
            self.issue_local(t);
        }
        self.maybe_finish_down();
    }

    fn finish_local(&mut self, span: Span, op: LocalOp, result: Result<Option<Bytes>, i32>) {
        let len32 = u32::try_from(span.len()).unwrap_or(MAX_IO);
        match op {
            LocalOp::AppWrite { id } => {
                if let Err(e) = &result {
                    // on-io-error pass-on: the application gets the error,
                    // while the peer may hold the new data and this disk
                    // anything: the range is marked so that the next resync
                    // makes both copies equal again.
                    self.bitmap.set_range(span.start, span.len());
                    self.error(format!(
                        "local write of {} bytes at {} failed (errno {e}): the request \
                         failed, the range is marked out of sync",
                        span.len(),
                        span.start
                    ));
                }
                if let Some(AppReq::Write {
                    local_done,
                    local_err,
                    ..
                }) = self.app.get_mut(&id)
                {
                    *local_done = true;
                    *local_err = result.err();
                }
                self.try_complete_write(id);
            }
            LocalOp::AppRead { id } => {
                self.app.remove(&id);
                if let Ok(Some(d)) = &result {
                    self.stats.read_bytes += d.len() as u64;
                }
                let r = match result {
                    Ok(Some(d)) if d.len() as u64 == span.len() => Ok(Some(d)),
                    Ok(_) => Err(errno::EIO),
                    Err(e) => Err(e),
                };
                self.complete(id, r);
            }
            LocalOp::PeerWrite {
                seq,
                epoch,
                recv_idx,
            } => {
                self.recv_incomplete.remove(&recv_idx);
                self.unacked = self.unacked.saturating_sub(1);
                if epoch == self.epoch && self.decided {
                    if result.is_ok() {
                        self.send(Message::WriteAck { seq });
                    } else {
                        self.error(format!(
                            "local write of {} bytes at {} failed",
                            span.len(),
                            span.start
                        ));
                        self.send(Message::NegAck { seq });
                    }
                }
                self.check_peer_barriers();
            }
            LocalOp::ResyncRead {
                id,
                epoch,
                peer_digest,
            } => {
                self.unacked = self.unacked.saturating_sub(1);
                if epoch != self.epoch || !self.decided {
                    return;
                }
                match result {
                    Ok(Some(d)) if d.len() as u64 == span.len() => {
                        self.stats.read_bytes += d.len() as u64;
                        if peer_digest == Some(crc(&d)) {
                            self.bitmap.clear_range(span.start, span.len());
                            self.send(Message::InSync {
                                id,
                                offset: span.start,
                                len: len32,
                            });
                        } else {
                            self.send(Message::ResyncData {
                                id,
                                offset: span.start,
                                data: d,
                            });
                        }
                    }
                    _ => {
                        self.error(format!(
                            "local read of {} bytes at {} failed during resync",
                            span.len(),
                            span.start
                        ));
                        self.send(Message::ResyncNeg {
                            id,
                            offset: span.start,
                            len: len32,
                        });
                    }
                }
            }
            LocalOp::ResyncWrite { id, epoch } => {
                if epoch != self.epoch {
                    return;
                }
                if result.is_err() {
                    self.fail_connection(
                        DisconnectReason::IoError,
                        format!("local write failed during resync at {}", span.start),
                        false,
                    );
                    return;
                }
                self.bitmap.clear_range(span.start, span.len());
                if let Some(s) = self.sync.as_mut() {
                    s.inflight.remove(&id);
                }
                self.send(Message::ResyncAck {
                    id,
                    offset: span.start,
                    len: len32,
                });
                self.pump_sync();
            }
            LocalOp::CsumRead { id, epoch } => {
                if epoch != self.epoch {
                    return;
                }
                match result {
                    Ok(Some(d)) if d.len() as u64 == span.len() => {
                        self.stats.read_bytes += d.len() as u64;
                        self.send(Message::ChecksumRequest {
                            id,
                            offset: span.start,
                            len: len32,
                            digest: crc(&d),
                        });
                    }
                    // Unreadable here: ask for the data outright.
                    _ => self.send(Message::ResyncRequest {
                        id,
                        offset: span.start,
                        len: len32,
                    }),
                }
            }
            LocalOp::VerifyRead { id, epoch } => {
                if epoch != self.epoch {
                    return;
                }
                let digest = match result {
                    Ok(Some(d)) if d.len() as u64 == span.len() => {
                        self.stats.read_bytes += d.len() as u64;
                        crc(&d)
                    }
                    // An unreadable block verifies as different.
                    _ => !0,
                };
                self.send(Message::VerifyRequest {
                    id,
                    offset: span.start,
                    len: len32,
                    digest,
                });
            }
            LocalOp::VerifyCompare { id, epoch, digest } => {
                self.unacked = self.unacked.saturating_sub(1);
                if epoch != self.epoch {
                    return;
                }
                let in_sync = matches!(&result, Ok(Some(d)) if d.len() as u64 == span.len() && crc(d) == digest);
                if let Ok(Some(d)) = &result {
                    self.stats.read_bytes += d.len() as u64;
                }
                if !in_sync {
                    self.bitmap.set_range(span.start, span.len());
                }
                self.send(Message::VerifyReply {
                    id,
                    offset: span.start,
                    len: len32,
                    in_sync,
                });
            }
        }
    }

    fn flush_done(&mut self, f: FlushOp, result: Result<(), i32>) {
        match f {
            FlushOp::App { id } => {
                if let Some(AppReq::Flush {
                    local_done,
                    local_err,
                    ..
                }) = self.app.get_mut(&id)
                {
                    *local_done = true;
                    *local_err = result.err();
                }
                self.try_complete_flush(id);
            }
            FlushOp::PeerBarrier { id, epoch } => {
                if epoch == self.epoch && self.decided && result.is_ok() {
                    self.send(Message::BarrierAck { id });
                }
            }
            FlushOp::SyncDone { epoch } => {
                if epoch == self.epoch && self.decided {
                    if result.is_ok() {
                        // Every block is here and durable: UpToDate.
                        self.sync = None;
                        self.conn = ConnState::Connected;
                        self.flags.set(MetaFlags::CRASHED_PRIMARY, false);
                        self.set_up_to_date();
                        self.persist_bitmap_all(None);
                        tracing::info!(node = %self.cfg.node, "resync finished as target: UpToDate");
                        self.send(Message::SyncDone);
                        self.send(Message::State {
                            role: self.role,
                            disk: self.disk,
                        });
                    } else {
                        self.fail_connection(
                            DisconnectReason::IoError,
                            "local flush failed at the end of the resync".into(),
                            false,
                        );
                    }
                }
            }
            FlushOp::SyncStart { epoch } => {
                if epoch != self.epoch || !self.decided {
                    return;
                }
                if result.is_err() {
                    self.fail_connection(
                        DisconnectReason::IoError,
                        "local flush failed at the start of a resync".into(),
                        false,
                    );
                    return;
                }
                // The driver's metadata queue keeps order: the superblock
                // (Inconsistent, new generation) lands before the bitmap,
                // and the resync waits for the bitmap.
                self.persist_super(false);
                let token = self.token();
                self.meta_ops.insert(
                    token,
                    MetaOp::Bitmap {
                        sync_epoch: Some(epoch),
                    },
                );
                self.stats.bm_writes += 1;
                self.actions.push_back(Action::WriteBitmap {
                    token,
                    first_word: 0,
                    words: self.bitmap.words().to_vec(),
                });
            }
            FlushOp::AlPreflush => {
                if result.is_err() {
                    self.error("local flush before an activity-log transaction failed".into());
                }
                self.al_stage_pending = self.al_stage_pending.saturating_sub(1);
                if self.al_stage_pending == 0 {
                    self.emit_al();
                }
            }
            FlushOp::Down => {
                if self.connected_states() {
                    let msg = format!("{} shut down cleanly", self.cfg.node);
                    self.send(disconnect(DisconnectReason::Shutdown, &msg));
                    self.connection_lost("shutdown");
                }
                self.conn = ConnState::StandAlone;
                self.actions.push_back(Action::CloseConnection);
                self.flags
                    .set(MetaFlags::AL_CLEAN, self.al.extents().is_empty());
                self.persist_super(false);
                self.persist_bitmap_all(None);
                self.down_done = true;
            }
        }
    }

    fn meta_done(&mut self, token: u64, result: Result<(), i32>) {
        let Some(op) = self.meta_ops.remove(&token) else {
            return;
        };
        if let Err(e) = result {
            self.error(format!("metadata write failed (errno {e})"));
        }
        match op {
            MetaOp::Super { gate } => {
                if gate {
                    self.super_gate = self.super_gate.saturating_sub(1);
                    self.process_al_wait();
                }
            }
            MetaOp::ResumeSuper => {
                if !std::mem::take(&mut self.resume_pending) {
                    // Suspended again or demoted meanwhile.
                    return;
                }
                if result.is_ok() {
                    self.release_held();
                } else {
                    self.flags.set(MetaFlags::UNACKED_GEN, true);
                    self.error(
                        "could not record the resume in the superblock: I/O stays frozen; \
                         resume again once the metadata disk works"
                            .into(),
                    );
                }
            }
            MetaOp::EvictBitmap => {
                self.al_stage_pending = self.al_stage_pending.saturating_sub(1);
                if self.al_stage_pending == 0 {
                    self.emit_al();
                }
            }
            MetaOp::Al => {
                self.al_plan = None;
                if result.is_ok() {
                    self.al.committed();
                } else {
                    self.al.failed();
                    // Writes that needed it cannot proceed safely.
                    let waiting: Vec<u64> = self.al_wait.drain(..).collect();
                    for id in waiting {
                        self.app.remove(&id);
                        self.complete(id, Err(errno::EIO));
                    }
                }
                self.process_al_wait();
            }
            MetaOp::Bitmap { sync_epoch } => {
                if let Some(ep) = sync_epoch {
                    if ep == self.epoch {
                        if let Some(s) = self.sync.as_mut() {
                            s.persist_pending = s.persist_pending.saturating_sub(1);
                        }
                        self.pump_sync();
                    }
                }
            }
        }
    }

    // ----- time --------------------------------------------------------------

    fn tick(&mut self) {
        self.clear_error_when_healthy();
        let now = self.now;
        if self.conn == ConnState::Handshake && now >= self.conn_started + self.cfg.timeout_ms {
            self.fail_connection(
                DisconnectReason::Timeout,
                "handshake timed out".into(),
                false,
            );
            return;
        }
        if !self.decided {
            return;
        }
        if let Some(s) = self.ping_sent {
            if now >= s + self.cfg.timeout_ms {
                self.fail_connection(
                    DisconnectReason::Timeout,
                    format!(
                        "peer did not answer a ping within {} ms",
                        self.cfg.timeout_ms
                    ),
                    false,
                );
                return;
            }
        } else if now >= self.last_recv + self.cfg.ping_int_ms {
            self.ping_sent = Some(now);
            self.send(Message::Ping);
        }
        if let Some((_, r)) = self.peer_pending.first_key_value() {
            if now >= r.sent_at + self.ko_ms() {
                let ms = self.ko_ms();
                self.fail_connection(DisconnectReason::Timeout, format!("peer did not complete a write within {ms} ms (timeout × ko-count); dropping it"), false);
                return;
            }
        }
        if !self.unflushed.is_empty()
            && self.barriers.is_empty()
            && now >= self.last_data_sent + self.cfg.ping_int_ms
        {
            self.send_barrier(None);
        }
        if self.sync.as_ref().is_some_and(|s| s.verify) {
            self.pump_verify();
        } else {
            self.pump_sync();
        }
    }

    fn maybe_finish_down(&mut self) {
        if !self.down_requested || self.down_done || !self.app.is_empty() || !self.io.is_empty() {
            return;
        }
        if self.flush_ops.values().any(|f| matches!(f, FlushOp::Down)) {
            return;
        }
        let token = self.token();
        self.flush_ops.insert(token, FlushOp::Down);
        self.actions.push_back(Action::LocalFlush { token });
    }
}
