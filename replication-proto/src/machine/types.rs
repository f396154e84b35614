//! What goes in and out of the state machine.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::decide::SplitBrainPolicy;
use super::fencing::{FenceStatus, Fencing};
use super::ids::{AppId, IoToken, MetaToken};
use crate::gen::Generations;
use crate::meta::MetaFlags;
use crate::wire::{DiskState, Message, Protocol, Role};

/// Error numbers handed back to the application, as positive errno values.
pub mod errno {
    pub const EIO: i32 = 5;
    pub const EINVAL: i32 = 22;
    pub const EROFS: i32 = 30;
    pub const ENOSPC: i32 = 28;
}

/// Static settings of one node of one resource.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub resource: String,
    pub node: String,
    pub peer: String,
    pub protocol: Protocol,
    pub data_bytes: u64,
    pub secret: Vec<u8>,
    pub timeout_ms: u64,
    pub ping_int_ms: u64,
    pub ko_count: u32,
    pub max_buffers: u32,
    /// Resync bytes per second; 0 = unlimited.
    pub resync_rate: u64,
    /// The dynamic resync rate controller; off (`plan_ahead_ds` 0) means
    /// `resync_rate` applies.
    pub resync_control: super::ResyncControl,
    /// Checksum-based resync.
    pub csums: bool,
    pub al_extents: u32,
    pub split_brain: SplitBrainPolicy,
    /// Feature bits this node offers.
    pub features: u64,
    /// What a Primary does when it loses the peer (`[net] fencing`).
    pub fencing: Fencing,
    /// `[disk] on-io-error = "detach"`: a local I/O error drops the disk
    /// (Diskless) instead of failing the request.
    pub on_io_error_detach: bool,
}

/// An authenticated connection's handshake, as [`crate::machine::Node::session`]
/// gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// Counts connections: a new one is a new session.
    pub epoch: u64,
    /// The nonce in this node's Hello, and in the peer's.
    pub own_nonce: [u8; 32],
    pub peer_nonce: [u8; 32],
    /// Features both sides offered.
    pub features: u64,
}

/// What the node loaded from its metadata at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persisted {
    pub gens: Generations,
    pub flags: MetaFlags,
    /// Dirty bitmap words, 1 bit per 4 KiB.
    pub bitmap: Vec<u64>,
    pub al_seq: u64,
    pub al_extents: Vec<u32>,
    /// When the node last became Primary (wall-clock ms, 0: never or
    /// metadata written before this was kept).
    pub promoted_at_ms: u64,
}

/// Connection states, with DRBD's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConnState {
    StandAlone,
    /// Waiting for / trying to reach the peer (DRBD's WFConnection).
    Connecting,
    /// Exchanging Hello and authentication (DRBD's WFReportParams).
    Handshake,
    /// Waiting for the peer's bitmap before a resync (WFBitMapS / WFBitMapT).
    WFBitMapS,
    WFBitMapT,
    Connected,
    SyncSource,
    SyncTarget,
    VerifySource,
    VerifyTarget,
    /// Orderly shutdown under way.
    Disconnecting,
}

/// Content of a local write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Data(Bytes),
    Trim,
    Zeroes,
}

/// An input to [`crate::machine::Node::handle`]. The driver keeps the
/// contract on [`crate::machine::Node`]: each token of an [`Action`] comes
/// back once as `LocalDone` or `MetaDone`, metadata writes complete in the
/// order issued, and `Tick` comes no later than `poll_timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The driver established a transport connection to the peer.
    TransportUp,
    /// The transport connection broke (or the driver closed it).
    TransportDown,
    /// A frame arrived on the current connection.
    Frame(Message),
    AppRead {
        id: AppId,
        offset: u64,
        len: u32,
    },
    AppWrite {
        id: AppId,
        offset: u64,
        payload: Payload,
        len: u32,
        fua: bool,
    },
    AppFlush {
        id: AppId,
    },
    /// A local data operation finished; reads carry their data.
    LocalDone {
        token: IoToken,
        result: Result<Option<Bytes>, i32>,
    },
    /// A metadata write (superblock, AL, bitmap) finished.
    MetaDone {
        token: MetaToken,
        result: Result<(), i32>,
    },
    /// Time passed; the driver calls this no later than `poll_timeout`.
    Tick,
    /// The fence-peer handler ([`Hook::FencePeer`]) ended: its exit code,
    /// `None` when it was killed by a signal, timed out or could not start.
    FenceDone {
        exit: Option<i32>,
    },
    /// The driver's answer to [`Action::GrowDisk`]: the metadata now holds
    /// `Ok(data_bytes)` of data, of which `dirty_from..dirty_to` (bytes)
    /// is marked out of sync; or why it could not grow.
    GrowDone {
        result: Result<Grown, String>,
    },
    /// The before-resync-target handler ([`Hook::BeforeResyncTarget`])
    /// ended: `ok` when it exited 0.
    BeforeResyncTargetDone {
        ok: bool,
    },
}

/// What a grow of the local metadata did ([`Event::GrowDone`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grown {
    pub data_bytes: u64,
    pub dirty_from: u64,
    pub dirty_to: u64,
}

/// Hooks the driver runs on the node's behalf (DRBD's handlers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hook {
    /// A split brain found at the handshake, before any `after-sb-*`
    /// policy tried to resolve it (DRBD's `initial-split-brain`).
    InitialSplitBrain,
    /// A split brain no policy resolved: the connection goes StandAlone.
    SplitBrain { detail: String },
    /// A policy picked this Primary as the split brain's victim.
    PriLostAfterSb,
    /// The local disk failed an I/O: the first of an episode (until a
    /// local I/O succeeds again). The driver runs DRBD's `local-io-error`
    /// handler if its `on-io-error` policy says so.
    LocalIoError,
    /// Fence the peer (keep it from promotion): answered by
    /// [`Event::FenceDone`]. One runs at a time.
    FencePeer,
    /// The peer is UpToDate again after a resync: undo the fencing.
    UnfencePeer,
    /// A resync as SyncTarget finished: this node is UpToDate again
    /// (DRBD's `after-resync-target`).
    AfterResyncTarget,
    /// A resync as SyncTarget is about to start (bitmaps exchanged, the
    /// source's generation taken and persisted, nothing requested yet):
    /// answered by [`Event::BeforeResyncTargetDone`]. Asked only of a node
    /// told it runs the handler (`Node::set_before_resync_target`).
    BeforeResyncTarget,
}

/// An output of [`crate::machine::Node::poll_action`], to carry out in the
/// order given: sends in order on the current connection, metadata writes
/// applied in issue order (the node persists before it sends where that
/// matters), data operations in any order (the node already ordered the
/// overlapping ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start connecting to the peer (and accepting from it) until told otherwise.
    Connect,
    /// Close the current transport connection, if any, and stop connecting.
    CloseConnection,
    Send(Message),
    LocalRead {
        token: IoToken,
        offset: u64,
        len: u32,
    },
    LocalWrite {
        token: IoToken,
        offset: u64,
        len: u32,
        payload: Payload,
        fua: bool,
    },
    LocalFlush {
        token: IoToken,
    },
    WriteSuper {
        token: MetaToken,
        gens: Generations,
        flags: MetaFlags,
        /// When the node last became Primary (wall-clock ms, 0: never).
        promoted_at_ms: u64,
    },
    WriteAl {
        token: MetaToken,
        seq: u64,
        extents: Vec<u32>,
    },
    WriteBitmap {
        token: MetaToken,
        first_word: u64,
        words: Vec<u64>,
    },
    /// Finish an application request: Ok(data) for reads, Ok(None) otherwise,
    /// or a positive errno.
    Complete {
        id: AppId,
        result: Result<Option<Bytes>, i32>,
    },
    Hook(Hook),
    /// `repctl resize`: grow the local metadata (and move it, if internal)
    /// to `data_bytes`, or if not `exact` to as much of it as the disk has
    /// room for; answered by [`Event::GrowDone`]. Grows only; one at a time.
    GrowDisk {
        data_bytes: u64,
        exact: bool,
        assume_clean: bool,
    },
    /// The size the frontends may expose changed (a resize finished on both
    /// nodes, or a smaller peer connected).
    SizeChanged {
        data_bytes: u64,
    },
    /// The node went Diskless and no local operation is in flight: close
    /// the backing disk (and its metadata, and release its lock). Local
    /// operations issued after this (none are planned) are answered EIO.
    CloseDisk,
}

/// The operator verbs the control socket and the state machine share:
/// `repctl` (or the cluster agent) sends one to repd as a control command,
/// repd hands it on as [`Admin::Verb`]. One list, so both say the same thing;
/// the serde form is the control socket's JSON (`{"cmd":"primary","force":true}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Verb {
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
    /// Armed, a Primary that loses its peer (or is promoted without one)
    /// suspends (holds) I/O at once,
    /// including the acknowledgements of the writes the peer did not
    /// confirm, until `ResumeIo` (DRBD's `fencing resource-only` freeze): the
    /// cluster agent resumes only once the witness knows the new data
    /// generation, so a write acknowledged alone is never lost to a takeover.
    FreezeOnDisconnect {
        on: bool,
    },
    /// Mark this node's data Outdated (drbdadm outdate): it then refuses
    /// `primary` without `--force`. Only on a Secondary that is not
    /// connected (connected, the peer keeps it in sync).
    Outdate,
    /// The last run of this node ended while Primary (a crash of the
    /// daemon) and someone still waits for its device (the kernel holds
    /// its I/O): promote by itself once that keeps one writer, i.e. once the
    /// activity-log resync made it UpToDate while connected to a Secondary
    /// peer on the same data generation; give up if the peer is Primary or
    /// the data moved to another generation; wait while the peer is away.
    /// Refused when the last run did not end as Primary.
    ResumeAfterCrash,
    /// Hold the resync (drbdadm pause-sync, DRBD's user flag): a target
    /// asks for no more blocks, a source answers no more requests, until
    /// `ResumeSync`. Holds the next resync too when none runs.
    PauseSync,
    /// Release what `PauseSync` held (drbdadm resume-sync).
    ResumeSync,
    /// Skip the initial sync of two fresh disks known identical (drbdadm
    /// new-current-uuid --clear-bitmap): connected, both Secondary, both
    /// Inconsistent with no data generation; both become UpToDate on a new
    /// generation. Only with `clear_bitmap`.
    NewCurrentUuid {
        clear_bitmap: bool,
    },
    /// Drop the local disk and go on Diskless, reading and writing through
    /// the peer (drbdadm detach). A Primary needs its peer connected and
    /// UpToDate.
    Detach,
}

/// Admin commands: the operator's [`Verb`]s, and what only the daemon
/// driving the machine asks of it (shutdown, quorum's suspend and resume).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admin {
    /// An operator verb (see [`Verb`]).
    Verb(Verb),
    /// Orderly shutdown: flush, tell the peer, close.
    Down,
    /// Stop accepting new application writes and flushes (DRBD 9's
    /// `on-no-quorum`): `Hold` keeps them, and the completions of writes
    /// already in flight, until `ResumeIo`; `Fail` ends all of them with EIO.
    /// Reads go on: they change nothing.
    SuspendIo { mode: SuspendMode },
    /// Let held requests in (in their order) and deliver held completions.
    ResumeIo,
    /// `ResumeIo`, but only while the current data generation is still
    /// `current`: a resume decided before the node froze on a disconnect
    /// (which starts a new generation) must not undo the freeze.
    ResumeIoAt { current: u64 },
    /// `repctl resize`: grow both nodes to `size_bytes` (or the largest both
    /// disks have room for; `room_bytes` is this node's, measured by the
    /// driver), the new region resynced unless `assume_clean`.
    Resize {
        room_bytes: u64,
        size_bytes: Option<u64>,
        assume_clean: bool,
    },
    /// `repctl attach`: the driver re-opened the disk of a Diskless node
    /// and read its metadata. Only on a Secondary; the node reconnects and
    /// the handshake decides the resync.
    Attach(Persisted),
}

impl From<Verb> for Admin {
    fn from(verb: Verb) -> Self {
        Self::Verb(verb)
    }
}

/// What a suspended node does with new application I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SuspendMode {
    /// Hold it until resumed (the client waits, per its own timeouts).
    Hold,
    /// Fail it with EIO.
    Fail,
}

/// Why an admin command was refused. The texts are what `repctl` prints;
/// callers branch on the variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum AdminError {
    /// `Down` was requested: the node takes no more commands.
    #[error("refused: the node is shutting down")]
    ShuttingDown,
    /// `connect` while not StandAlone.
    #[error("refused: already connecting or connected; disconnect first")]
    AlreadyConnected,
    /// `connect --discard-my-data` on a Primary.
    #[error("refused: a Primary cannot discard its data; make it secondary first")]
    PrimaryCannotDiscard,
    /// `invalidate` on a Primary.
    #[error(
        "refused: a Primary cannot invalidate its own data (it serves it). To resync the \
         peer's data from this node, run `repctl invalidate-remote` here (or \
         `repctl invalidate` on the peer); to resync this node from the peer, \
         make it Secondary first"
    )]
    PrimaryCannotInvalidate,
    /// `invalidate` while a resync or verify runs.
    #[error("refused: a resync or verify is running")]
    ResyncRunning,
    /// `invalidate` while connected to a peer without UpToDate data.
    #[error("refused: the peer has no UpToDate data to sync from")]
    PeerHasNoUpToDateData,
    /// `invalidate-remote` while not Connected and idle.
    #[error(
        "refused: not connected (or a resync is running); invalidate-remote needs an idle connection"
    )]
    InvalidateRemoteNeedsIdle,
    /// `invalidate-remote` while the peer is Primary.
    #[error("refused: the peer is Primary; its data cannot be invalidated")]
    PeerPrimaryCannotBeInvalidated,
    /// `invalidate-remote` without UpToDate data here.
    #[error("refused: this node's disk is not UpToDate")]
    DiskNotUpToDate,
    /// `verify` while not Connected and idle.
    #[error("refused: verify needs an idle connection (Connected, no resync)")]
    VerifyNeedsIdle,
    /// `pause-sync` while already paused.
    #[error("refused: the resync is already paused; `repctl resume-sync` releases it")]
    SyncAlreadyPaused,
    /// `resume-sync` while not paused.
    #[error("refused: the resync is not paused (by `repctl pause-sync` on this node)")]
    SyncNotPaused,
    /// `new-current-uuid` without `--clear-bitmap`.
    #[error(
        "refused: only `new-current-uuid --clear-bitmap` (skip the initial sync of fresh \
         identical disks) is supported"
    )]
    NewUuidNeedsClearBitmap,
    /// `new-current-uuid --clear-bitmap` while not Connected and idle.
    #[error(
        "refused: skipping the initial sync needs both nodes connected and no resync running; \
         run `repctl up` on both and wait for Connected (`repctl wait-connect`)"
    )]
    SkipSyncNeedsConnected,
    /// `new-current-uuid --clear-bitmap` with a Primary.
    #[error(
        "refused: skipping the initial sync needs both nodes Secondary; run `repctl secondary`"
    )]
    SkipSyncNeedsSecondaries,
    /// `new-current-uuid --clear-bitmap` on data that is not fresh.
    #[error(
        "refused: skipping the initial sync needs both disks fresh (Inconsistent, no data \
         generation: just after `create-md`); this pair has data. To make the peer a copy of \
         this node use `repctl invalidate-remote`; to check both are the same use \
         `repctl verify`"
    )]
    SkipSyncNeedsFreshData,
    /// The peer's repd does not know `SkipSync`.
    #[error(
        "refused: the peer's repd is too old to skip the initial sync; upgrade it, or sync \
         with `repctl primary --force`"
    )]
    PeerCannotSkipSync,
    /// `resize` while not Connected and idle with both disks UpToDate.
    #[error(
        "refused: resize needs both nodes connected, both disks UpToDate and no resync or \
         other resize running (both nodes grow together, as with drbdadm resize)"
    )]
    ResizeNeedsConnected,
    /// The peer's repd does not know `Resize`.
    #[error("refused: the peer's repd is too old to resize online; upgrade it")]
    PeerCannotResize,
    /// `resize` to the current size, or with no room on this node.
    #[error(
        "refused: nothing to grow: the data is {current} bytes and this node's disk has room \
         for {room}; grow both backing disks first (lvextend, truncate -s), then resize"
    )]
    NothingToGrow { current: u64, room: u64 },
    /// `resize --size` larger than this node's disk allows.
    #[error("refused: --size {size} does not fit this node's disk, which has room for {room} bytes of data")]
    NoRoom { size: u64, room: u64 },
    /// `resize --size` below the current size.
    #[error(
        "refused: shrinking ({current} to {size} bytes) is not supported: repd cannot know how \
         much of the device a filesystem uses. DRBD shrinks with `drbdadm resize --size` and \
         trusts the admin to have shrunk the filesystem first (what lies past the new end is \
         lost); here, copy the data to a smaller resource instead"
    )]
    ShrinkRefused { current: u64, size: u64 },
    /// `ResumeIoAt` for a generation that is no longer current.
    #[error(
        "refused: the data generation is {now:016X} now, not {expected:016X}: \
         the node froze again since (it lost its peer)"
    )]
    GenerationMoved { now: u64, expected: u64 },
    /// `detach` on a node that is Diskless already.
    #[error("refused: this node is Diskless already; `repctl attach` brings its disk back")]
    AlreadyDiskless,
    /// `detach` of a Primary whose peer cannot serve its I/O.
    #[error(
        "refused: a Primary can detach its disk only while connected to a peer that is \
         UpToDate (and serves remote reads); without it every request would fail"
    )]
    DetachNeedsPeer,
    /// `attach` on a node with a disk (or one still closing).
    #[error("refused: this node is not Diskless (or its disk is still being closed)")]
    NotDiskless,
    /// `attach` on a Primary.
    #[error(
        "refused: attach a disk on a Secondary (the resync makes it the target); run \
         `repctl secondary` first"
    )]
    AttachNeedsSecondary,
    /// A verb that needs the local disk, on a Diskless node.
    #[error("refused: this node is Diskless; `repctl attach` its disk first")]
    NeedsDisk,
    /// A verb that needs both disks while the peer is Diskless.
    #[error("refused: the peer is Diskless (its disk failed or was detached); `repctl attach` it there first")]
    PeerDiskless,
    /// `primary` on a Diskless node whose peer cannot serve.
    #[error(
        "refused: a Diskless node can be Primary only while connected to an UpToDate peer \
         on its data generation"
    )]
    DisklessNeedsPeer,
    /// `outdate` on a Primary.
    #[error("refused: a Primary cannot outdate its own data; make it secondary first")]
    PrimaryCannotOutdate,
    /// `outdate` while connected.
    #[error(
        "refused: connected to the peer, which keeps this data in sync; outdate a disconnected node"
    )]
    ConnectedCannotOutdate,
    /// `primary` while the peer is Primary.
    #[error(
        "refused: the peer is Primary; only one Primary may accept writes (make it secondary first)"
    )]
    PeerIsPrimary,
    /// `primary` on a sync target.
    #[error("refused: this node is a sync target: its data is Inconsistent until the resync ends")]
    SyncTarget,
    /// `primary` without `--force` and without UpToDate data.
    #[error(
        "refused: need UpToDate data to become Primary, this disk is {disk:?}; \
         `primary --force` declares this node's data the good copy \
         (DRBD's --overwrite-data-of-peer)"
    )]
    NotUpToDate { disk: DiskState },
    /// `secondary` while application requests are in flight.
    #[error("refused: {count} application requests in flight; stop using the device first")]
    RequestsInFlight { count: usize },
    /// `ResumeAfterCrash` when the last run did not end as Primary.
    #[error(
        "refused: the last run of this node did not end as Primary: there is no role to resume"
    )]
    NoRoleToResume,
}

/// The bytes a node moved, in the spirit of /proc/drbd's ns/nr/dw/dr: what
/// `repctl status --json` shows as `stats` (the control protocol carries this
/// struct as it is).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// ns: bytes sent to the peer (replication and resync).
    pub sent_bytes: u64,
    /// nr: bytes received from the peer.
    pub received_bytes: u64,
    pub resync_sent_bytes: u64,
    pub resync_received_bytes: u64,
    /// dw: bytes written to the local disk.
    pub written_bytes: u64,
    /// dr: bytes read from the local disk.
    pub read_bytes: u64,
    pub verified_bytes: u64,
    pub verify_out_of_sync_bytes: u64,
}

/// Counters in the spirit of /proc/drbd.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// The bytes moved (ns, nr, dw, dr, resync and verify).
    #[serde(flatten)]
    pub traffic: Traffic,
    /// al: activity-log transactions written.
    pub al_writes: u64,
    /// bm: bitmap writes.
    pub bm_writes: u64,
    /// Application writes that found an extent outside the activity log
    /// when they came in and so waited for a transaction (DRBD's AL misses).
    #[serde(default)]
    pub al_misses: u64,
    /// Application bytes this node saw: its own reads and writes, and the
    /// peer's replicated writes (what `c-min-rate` watches).
    #[serde(default)]
    pub app_bytes: u64,
}

/// What an error is about; each kind's condition ends its own way, and
/// status keeps the last error of each kind until then (plus
/// [`crate::machine::ERROR_LINGER_MS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The connection failed or was refused; ends once a connection is
    /// established again (handshake done).
    Connection,
    /// A split brain (found, or resolved automatically); ends once
    /// connected with nothing out of sync and no split brain.
    SplitBrain,
    /// A local read, write or flush failed; ends with the next local write
    /// that succeeds.
    LocalIo,
    /// The peer failed to write a replicated write; ends with the next one
    /// it writes.
    PeerIo,
    /// A metadata write failed; ends with the next one that succeeds.
    Metadata,
    /// A verify found blocks out of sync; ends once connected with nothing
    /// out of sync (after the repair, a resync, an invalidate).
    Verify,
    /// The fence-peer handler failed (or timed out, or said the peer is
    /// Primary): the peer is not known fenced. Ends once it is (a later
    /// handler said so, or the peer was marked Outdated) or the peer is
    /// connected again.
    Fencing,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 7] = [
        Self::Connection,
        Self::SplitBrain,
        Self::LocalIo,
        Self::PeerIo,
        Self::Metadata,
        Self::Verify,
        Self::Fencing,
    ];

    /// The kebab-case name (as in JSON).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Connection => "connection",
            Self::SplitBrain => "split-brain",
            Self::LocalIo => "local-io",
            Self::PeerIo => "peer-io",
            Self::Metadata => "metadata",
            Self::Verify => "verify",
            Self::Fencing => "fencing",
        }
    }
}

/// The last error of one kind, as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorNote {
    pub kind: ErrorKind,
    pub message: String,
    /// When it happened, in the node's clock (ms).
    pub at_ms: u64,
    /// Errors of this kind since its condition began.
    pub count: u64,
    /// Its condition ended; it is forgotten after the linger.
    pub ended: bool,
}

/// How the last online verify this node took part in ended (as source or
/// target): what it compared and found, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyNote {
    /// When it ended, in the node's clock (ms).
    pub at_ms: u64,
    pub verified_bytes: u64,
    pub out_of_sync_bytes: u64,
    /// How many ranges of adjacent 4 KiB blocks differed (see
    /// [`super::verify_ranges`] for the bound).
    #[serde(default)]
    pub range_count: u64,
    /// The first [`super::VERIFY_RANGES_LISTED`] of them, in disk order.
    #[serde(default)]
    pub ranges: Vec<super::VerifyRange>,
}

/// A snapshot of the node for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub resource: String,
    pub node: String,
    pub role: Role,
    pub peer_role: Option<Role>,
    pub connection: ConnState,
    pub disk: DiskState,
    pub peer_disk: DiskState,
    pub out_of_sync_bytes: u64,
    pub split_brain: bool,
    /// The newest of `errors`.
    pub last_error: Option<String>,
    /// When `last_error` was set, in the node's clock (ms).
    pub last_error_at_ms: Option<u64>,
    /// The last error of each kind whose condition lasts (or ended less
    /// than the linger ago), in [`ErrorKind::ALL`]'s order.
    pub errors: Vec<ErrorNote>,
    pub gens: Generations,
    pub flags: MetaFlags,
    /// New application writes are suspended (held or failed).
    pub suspended: Option<SuspendMode>,
    /// `FreezeOnDisconnect` is armed.
    pub freeze_on_disconnect: bool,
    /// The last run ended while Primary and without the peer.
    pub degraded_at_start: bool,
    /// Fencing the peer: policy, handler, result.
    pub fencing: FenceStatus,
    /// The resumption of the role after a crash, once armed: what it waits
    /// for, or what became of it.
    pub resume: Option<String>,
    /// `pause-sync` holds the resync (DRBD's `resync-suspended:user`).
    #[serde(default)]
    pub sync_paused_by_user: bool,
    /// The last verify that ended on this connection or an earlier one.
    #[serde(default)]
    pub last_verify: Option<VerifyNote>,
    /// The size in use (the smaller of the two nodes' when connected).
    pub data_bytes: u64,
    /// The last resize's outcome, or the size agreed with a peer of a
    /// different size (`repctl resize`).
    pub size_note: Option<String>,
    /// Resync / verify progress: bytes still to go and total planned.
    pub sync_remaining_bytes: u64,
    pub sync_total_bytes: u64,
    /// Sync target with the resync controller on: the rate it aims at now.
    #[serde(default)]
    pub sync_rate_target_bytes_per_s: Option<u64>,
    /// ... and whether application I/O holds it at `c-min-rate`.
    #[serde(default)]
    pub sync_throttled: bool,
    /// lo: local operations in flight.
    pub local_pending: u64,
    /// pe: requests sent to the peer not yet answered.
    pub peer_pending: u64,
    /// ua: requests from the peer not yet answered.
    pub unacked: u64,
    /// ap: application requests in flight.
    pub app_pending: u64,
    pub stats: Stats,
}
