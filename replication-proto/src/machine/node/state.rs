//! The Node's private bookkeeping types: requests in flight, local and
//! metadata operations, the resync and the peer as the handshake saw it.

use std::collections::HashMap;

use crate::machine::io::Span;
use crate::machine::sync_window::SyncWindow;
use crate::machine::types::Payload;
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
}

#[derive(Debug)]
pub(super) enum AppReq {
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
pub(super) enum LocalOp {
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
pub(super) enum FlushOp {
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

#[derive(Debug)]
pub(super) struct Sync {
    pub(super) role: SyncRole,
    pub(super) verify: bool,
    pub(super) epoch: u64,
    pub(super) receiver: Option<BitmapReceiver>,
    /// Metadata writes to finish before the target may ask for data.
    pub(super) persist_pending: u32,
    pub(super) cursor: u64,
    pub(super) inflight: HashMap<u64, Span>,
    /// Target, resync: how many requests may be in flight (verify keeps
    /// SYNC_WINDOW: its answers are small).
    pub(super) window: SyncWindow,
    pub(super) next_id: u64,
    pub(super) total_bytes: u64,
    pub(super) tokens: u64,
    pub(super) last_refill: Millis,
    /// Target: SyncDone sent, waiting for the source's UUIDs.
    pub(super) finishing: bool,
    pub(super) repair: bool,
    pub(super) found_oos: u64,
}

impl Sync {
    pub(super) fn new(
        role: SyncRole,
        verify: bool,
        epoch: u64,
        now: Millis,
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
pub(super) struct PeerInfo {
    pub(super) hello: Hello,
    pub(super) authed: bool,
    pub(super) role: Role,
    pub(super) disk: DiskState,
}

#[derive(Debug)]
pub(super) struct PeerReq {
    pub(super) app_id: Option<u64>,
    pub(super) span: Span,
    /// Activity-log extents held until the peer confirms the write.
    pub(super) extents: (u32, u32),
    pub(super) sent_at: Millis,
    pub(super) recv_acked: bool,
}

pub(super) fn extent_of(offset: u64) -> u32 {
    u32::try_from(offset / AL_EXTENT_SIZE).unwrap_or(u32::MAX)
}

pub(super) fn crc(data: &[u8]) -> u32 {
    crate::checksum::crc32c(data)
}
