//! The Node's private bookkeeping types: requests in flight, local and
//! metadata operations, the resync, the peer as the handshake saw it, and
//! the named groups of the Node's state.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use bytes::Bytes;

use crate::machine::al::{ActivityLog, AlPlan};
use crate::machine::ids::{AppId, IoToken, MetaToken, TokenSource};
use crate::machine::io::{OrderedIo, Span};
use crate::machine::sync_window::SyncWindow;
use crate::machine::types::{Event, Payload, SuspendMode};
use crate::meta::AL_EXTENT_SIZE;
use crate::time::Millis;
use crate::wire::rle::BitmapReceiver;
use crate::wire::{DiskState, Hello, Role};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PeerWait {
    /// Not replicated (no peer); nothing to wait for.
    None,
    /// Sent as `seq`; waiting for the ack the protocol asks for.
    Sent {
        seq: u64,
        need_write_ack: bool,
    },
    Done,
    /// The connection broke before the peer confirmed it.
    Lost,
}

#[derive(Debug)]
pub(super) enum AppReq {
    Write {
        span: Span,
        payload: Payload,
        fua: bool,
        extents: Extents,
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
pub(super) enum LocalOp {
    AppWrite {
        id: AppId,
    },
    AppRead {
        id: AppId,
    },
    /// The peer's remote read (`diskless.rs`).
    PeerRead {
        id: u64,
        epoch: u64,
    },
    /// Data read from the peer written over a block this disk failed to read.
    RepairWrite,
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
pub(super) enum FlushOp {
    App {
        id: AppId,
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
pub(super) enum MetaOp {
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
pub(super) enum SyncRole {
    Source,
    Target,
}

/// Where a resync or verify stands; each phase carries its own data.
#[derive(Debug)]
pub(super) enum SyncPhase {
    /// Resync: the bitmaps are being exchanged (the peer's is coming in).
    Exchanging(BitmapReceiver),
    /// Target: metadata writes (the resync's bitmap) to land before the
    /// first request: a crash mid-sync must resume, never pass for
    /// consistent; and the before-resync-target handler, if one runs.
    Persisting { pending: u32 },
    /// Requests flow (verify starts here).
    Running,
    /// Target: every block is here; SyncDone's flush is under way.
    Finishing,
}

/// What a [`Sync`] is for, with what only that kind keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SyncKind {
    /// A resync: the blocks the bitmap marks go from source to target.
    Resync,
    /// An online verify. The source counts the bytes it `found_oos` (out
    /// of sync) and resyncs them at the end if `repair`; the target keeps
    /// neither.
    Verify { repair: bool, found_oos: u64 },
}

/// A resync or verify with the peer, on the connection of `epoch`.
#[derive(Debug)]
pub(super) struct Sync {
    pub(super) role: SyncRole,
    pub(super) kind: SyncKind,
    pub(super) epoch: u64,
    pub(super) phase: SyncPhase,
    pub(super) cursor: u64,
    pub(super) inflight: HashMap<u64, Span>,
    /// Target, resync: how many requests may be in flight (verify keeps
    /// SYNC_WINDOW: its answers are small).
    pub(super) window: SyncWindow,
    pub(super) next_id: u64,
    pub(super) total_bytes: u64,
    pub(super) tokens: u64,
    pub(super) last_refill: Millis,
    /// Verify source: 4 KiB blocks of chunks that differed, still to be
    /// compared one by one (`verify.rs`), and the requests for them in
    /// flight.
    pub(super) refine: Vec<Span>,
    pub(super) refining: std::collections::HashSet<u64>,
    /// Verify: the blocks found out of sync, merged into ranges.
    pub(super) oos: crate::machine::verify_ranges::OosRanges,
    /// Target, resync: the dynamic rate controller while it is on, and the
    /// bytes requested and answered so far (`rate_control.rs`).
    pub(super) ctl: Option<crate::machine::resync_controller::Controller>,
    pub(super) requested_bytes: u64,
    pub(super) answered_bytes: u64,
}

impl Sync {
    pub(super) fn new(
        role: SyncRole,
        kind: SyncKind,
        epoch: u64,
        now: Millis,
        total_bytes: u64,
    ) -> Self {
        Self {
            role,
            kind,
            epoch,
            phase: SyncPhase::Running,
            cursor: 0,
            inflight: HashMap::new(),
            window: SyncWindow::new(now),
            next_id: 1,
            total_bytes,
            tokens: 0,
            last_refill: now,
            refine: Vec::new(),
            refining: std::collections::HashSet::new(),
            oos: crate::machine::verify_ranges::OosRanges::default(),
            ctl: None,
            requested_bytes: 0,
            answered_bytes: 0,
        }
    }

    /// A verify, not a resync.
    pub(super) fn is_verify(&self) -> bool {
        matches!(self.kind, SyncKind::Verify { .. })
    }

    /// Target: one of the metadata writes before the first request landed.
    pub(super) fn persisted_one(&mut self) {
        match &mut self.phase {
            SyncPhase::Persisting { pending } if *pending > 1 => *pending -= 1,
            SyncPhase::Persisting { .. } => self.phase = SyncPhase::Running,
            _ => debug_assert!(false, "resync bitmap or handler not counted"),
        }
    }
}

/// The peer as its Hello introduced it, with its role and disk kept up to
/// date since.
#[derive(Debug, Clone)]
pub(super) struct PeerInfo {
    pub(super) hello: Hello,
    pub(super) role: Role,
    pub(super) disk: DiskState,
    /// The peer's `PromotedAt` (0 until it comes, or from an older peer).
    pub(super) promoted_at_ms: u64,
}

#[derive(Debug)]
pub(super) struct PeerReq {
    pub(super) app_id: Option<AppId>,
    pub(super) span: Span,
    /// Activity-log extents held until the peer confirms the write.
    pub(super) extents: Extents,
    pub(super) sent_at: Millis,
    pub(super) recv_acked: bool,
}

pub(super) fn extent_of(offset: u64) -> u32 {
    u32::try_from(offset / AL_EXTENT_SIZE).unwrap_or(u32::MAX)
}

pub(super) fn crc(data: &[u8]) -> u32 {
    crate::checksum::crc32c(data)
}

/// The activity log and what gates application writes on metadata.
#[derive(Debug)]
pub(super) struct AlGate {
    pub(super) log: ActivityLog,
    /// The transaction under way, if any (one at a time).
    pub(super) txn: AlTxn,
    /// Writes waiting for their extents (application ids, in order).
    pub(super) wait: VecDeque<AppId>,
    /// Gating superblock writes in flight: new writes wait for them.
    pub(super) super_gate: u32,
}

impl AlGate {
    pub(super) fn new(log: ActivityLog) -> Self {
        Self {
            log,
            txn: AlTxn::Idle,
            wait: VecDeque::new(),
            super_gate: 0,
        }
    }
}

/// Where the activity log's transaction stands.
#[derive(Debug)]
pub(super) enum AlTxn {
    /// None under way: a new plan may be made.
    Idle,
    /// `plan` waits for `pending` writes (the preflush, evicted bitmap
    /// words) to land before it may be written.
    Staging { plan: AlPlan, pending: u32 },
    /// The transaction is being written.
    Writing,
}

/// An orderly shutdown (`Admin::Down`).
#[derive(Debug, Default)]
pub(super) struct Down {
    pub(super) requested: bool,
    /// Flushed, told the peer, metadata written: the driver may exit.
    pub(super) done: bool,
}

/// The current connection: counted by `epoch`, authenticated by the
/// nonces; the peer and the timers depend on how far it got (`phase`).
#[derive(Debug)]
pub(super) struct Link {
    /// Counts connections; work tagged with an older epoch is stale.
    pub(super) epoch: u64,
    pub(super) my_nonce: [u8; 32],
    pub(super) phase: LinkPhase,
}

/// How far the current connection got; each phase carries what only it
/// has.
#[derive(Debug)]
pub(super) enum LinkPhase {
    /// No connection (StandAlone, Connecting).
    Down,
    /// Hello and authentication (ConnState::Handshake); it times out
    /// `timeout_ms` after `started`. `peer` once its Hello came.
    Handshake {
        started: Millis,
        peer: Option<PeerInfo>,
    },
    /// The sync decision is made with the authenticated `peer`: the
    /// connection carries replication and resync, and pings keep it alive.
    Decided {
        peer: PeerInfo,
        /// When the last frame came in: a ping goes out after `ping_int_ms`
        /// of silence.
        last_recv: Millis,
        /// The ping not answered yet: the connection fails if the answer
        /// takes `timeout_ms`.
        ping_sent: Option<Millis>,
    },
}

impl Link {
    pub(super) fn new() -> Self {
        Self {
            epoch: 0,
            my_nonce: [0; 32],
            phase: LinkPhase::Down,
        }
    }

    /// The sync handshake is done on the current connection.
    pub(super) fn decided(&self) -> bool {
        matches!(self.phase, LinkPhase::Decided { .. })
    }

    /// The peer: its Hello came on this connection (during the handshake
    /// or after the decision).
    pub(super) fn peer(&self) -> Option<&PeerInfo> {
        match &self.phase {
            LinkPhase::Down => None,
            LinkPhase::Handshake { peer, .. } => peer.as_ref(),
            LinkPhase::Decided { peer, .. } => Some(peer),
        }
    }

    pub(super) fn peer_mut(&mut self) -> Option<&mut PeerInfo> {
        match &mut self.phase {
            LinkPhase::Down => None,
            LinkPhase::Handshake { peer, .. } => peer.as_mut(),
            LinkPhase::Decided { peer, .. } => Some(peer),
        }
    }

    /// The peer, once the sync decision is made with it (authenticated).
    pub(super) fn decided_peer(&self) -> Option<&PeerInfo> {
        match &self.phase {
            LinkPhase::Decided { peer, .. } => Some(peer),
            _ => None,
        }
    }

    /// A new transport connection: a new epoch, its handshake from `now`.
    pub(super) fn begin(&mut self, now: Millis) {
        self.epoch += 1;
        self.phase = LinkPhase::Handshake {
            started: now,
            peer: None,
        };
    }

    /// The peer's Hello came (the handshake checked there was none yet).
    pub(super) fn hello_received(&mut self, info: PeerInfo) {
        match &mut self.phase {
            LinkPhase::Handshake { peer, .. } => *peer = Some(info),
            other => debug_assert!(false, "a Hello outside the handshake: {other:?}"),
        }
    }

    /// The sync decision is made, on the frame that arrived `now`, with the
    /// peer whose Hello came.
    pub(super) fn decide(&mut self, now: Millis) {
        self.phase = match std::mem::replace(&mut self.phase, LinkPhase::Down) {
            LinkPhase::Handshake {
                peer: Some(peer), ..
            } => LinkPhase::Decided {
                peer,
                last_recv: now,
                ping_sent: None,
            },
            other => {
                debug_assert!(false, "sync decision without a Hello: {other:?}");
                other
            }
        };
    }

    /// The connection is gone: a new epoch, no peer.
    pub(super) fn lose(&mut self) {
        self.epoch += 1;
        self.phase = LinkPhase::Down;
    }

    /// A frame came in `now` (only pings after the decision look at it).
    pub(super) fn heard(&mut self, now: Millis) {
        if let LinkPhase::Decided { last_recv, .. } = &mut self.phase {
            *last_recv = now;
        }
    }

    /// A ping went out `now` (after the decision).
    pub(super) fn pinged(&mut self, now: Millis) {
        if let LinkPhase::Decided { ping_sent, .. } = &mut self.phase {
            *ping_sent = Some(now);
        }
    }

    /// The peer answered the ping (frames come after the decision only).
    pub(super) fn ping_answered(&mut self) {
        if let LinkPhase::Decided { ping_sent, .. } = &mut self.phase {
            *ping_sent = None;
        }
    }
}

/// Local operations in flight, by the token the driver hands back.
#[derive(Debug, Default)]
pub(super) struct Ops {
    /// Data operations, ordered by overlap.
    pub(super) io: OrderedIo<IoToken, LocalOp>,
    pub(super) flush: HashMap<IoToken, FlushOp>,
    pub(super) meta: HashMap<MetaToken, MetaOp>,
    pub(super) tokens: TokenSource,
    /// Payloads of peer and resync writes waiting in the ordering queue.
    pub(super) parked: HashMap<IoToken, ParkedWrite>,
}

/// A peer or resync write waiting for an overlapping one to finish.
#[derive(Debug)]
pub(super) struct ParkedWrite {
    pub(super) offset: u64,
    pub(super) len: u32,
    pub(super) payload: Payload,
    pub(super) fua: bool,
}

/// The Primary side of replication: writes sent to the peer, barriers.
#[derive(Debug)]
pub(super) struct Replication {
    pub(super) next_seq: u64,
    /// Sent and not yet confirmed, by sequence number.
    pub(super) pending: BTreeMap<u64, PeerReq>,
    /// Bytes sent to the peer and not yet confirmed: new writes wait while
    /// this is above the window, so a slow peer slows the writer instead of
    /// piling data up in memory on both nodes (DRBD's max-buffers).
    pub(super) pending_bytes: u64,
    /// Acknowledged by the peer but not yet covered by a peer flush: if the
    /// peer loses power these may be gone there, so they go into the bitmap
    /// when the connection breaks.
    pub(super) unflushed: VecDeque<Unflushed>,
    pub(super) next_barrier: u64,
    /// Barriers sent and not yet acknowledged, by barrier id.
    pub(super) barriers: BTreeMap<u64, SentBarrier>,
    pub(super) last_data_sent: Millis,
}

impl Replication {
    pub(super) fn new(now: Millis) -> Self {
        Self {
            next_seq: 1,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            unflushed: VecDeque::new(),
            next_barrier: 1,
            barriers: BTreeMap::new(),
            last_data_sent: now,
        }
    }
}

/// A write the peer acknowledged but has not flushed yet.
#[derive(Debug, Clone, Copy)]
pub(super) struct Unflushed {
    pub(super) seq: u64,
    pub(super) span: Span,
}

/// A barrier sent to the peer: its ack covers every write up to `last_seq`.
#[derive(Debug, Clone, Copy)]
pub(super) struct SentBarrier {
    pub(super) last_seq: u64,
    /// The application flush waiting for it, if any.
    pub(super) app: Option<AppId>,
}

/// The Secondary side: writes and barriers from the peer.
#[derive(Debug, Default)]
pub(super) struct Receiving {
    /// Counts the peer's writes in arrival order.
    pub(super) index: u64,
    /// Arrival indexes of the peer's writes not yet on disk.
    pub(super) incomplete: BTreeSet<u64>,
    pub(super) barriers: VecDeque<PeerBarrier>,
    /// ua: requests from the peer not yet answered.
    pub(super) unacked: u64,
}

impl Receiving {
    /// A request from the peer that arrived in `epoch` was answered (or
    /// dropped); `current` is the connection's epoch now.
    pub(super) fn answered(&mut self, epoch: u64, current: u64) {
        // A lost connection zeroed the count and moved the epoch on: a
        // request of an older connection no longer counts (decrementing
        // for it undercounted the requests of the new one).
        if epoch != current {
            return;
        }
        debug_assert!(self.unacked > 0, "unacked underflow (epoch {epoch})");
        self.unacked = self.unacked.saturating_sub(1);
    }
}

/// A barrier from the peer: flush once every write that arrived before it
/// (arrival index up to `after`) is on disk, then acknowledge.
#[derive(Debug, Clone, Copy)]
pub(super) struct PeerBarrier {
    pub(super) id: u64,
    pub(super) after: u64,
}

/// Suspended application I/O (`SuspendIo`, freeze-on-disconnect).
#[derive(Debug, Default)]
pub(super) struct Suspension {
    /// What happens to new writes and flushes; `None`: not suspended.
    pub(super) mode: Option<SuspendMode>,
    pub(super) freeze_on_disconnect: bool,
    /// Held while suspended: new requests, and completions of requests
    /// that were in flight when the suspension began (in order).
    pub(super) held_in: VecDeque<Event>,
    pub(super) held_out: VecDeque<HeldCompletion>,
    /// A resume waits for the superblock that drops `UNACKED_GEN`.
    pub(super) resume_pending: bool,
}

/// An application completion held while suspended.
#[derive(Debug)]
pub(super) struct HeldCompletion {
    pub(super) id: AppId,
    pub(super) result: Result<Option<Bytes>, i32>,
}

/// Activity-log extents a write covers, first to last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Extents {
    pub(super) first: u32,
    pub(super) last: u32,
}
