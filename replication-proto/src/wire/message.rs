//! The messages two nodes exchange. Encoding lives in [`super::codec`].

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::gen::Generations;

/// Version of the wire protocol this build speaks. Both sides must agree
/// exactly; the handshake refuses any other with a reason.
pub const PROTOCOL_VERSION: u16 = 1;

/// Replication protocol, as DRBD defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    /// Complete a write once it is on the local disk and handed to the network.
    A,
    /// Complete once local and the peer has *received* it.
    B,
    /// Complete once local and the peer has *written* it.
    C,
}

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    Primary,
    Secondary,
}

/// A disk's state, with DRBD's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DiskState {
    Diskless,
    Inconsistent,
    Outdated,
    DUnknown,
    Consistent,
    UpToDate,
}

/// Feature bits offered in the handshake; the connection uses the intersection.
pub mod features {
    /// Checksum-based resync (send only blocks whose checksums differ).
    pub const CSUM_RESYNC: u64 = 1 << 0;
    /// TRIM / WRITE_ZEROES replicated without payload.
    pub const TRIM: u64 = 1 << 1;
    /// Ping and PingAck travel on a second TCP connection of their own, so
    /// that they never wait behind bulk data (DRBD's meta socket). Frames
    /// are the same; the state machine does not see which connection
    /// carried them.
    pub const PING_CONN: u64 = 1 << 2;
    /// The peer understands `SkipSync` (`new-current-uuid --clear-bitmap`).
    pub const SKIP_SYNC: u64 = 1 << 3;
    /// The peer serves remote reads (`ReadRequest`, `ReadReply`, `ReadNeg`)
    /// and knows a Diskless peer (`on-io-error = "detach"`, `repctl detach`).
    pub const REMOTE_READ: u64 = 1 << 4;
    /// Every feature this build knows.
    pub const ALL: u64 = CSUM_RESYNC | TRIM | PING_CONN | SKIP_SYNC | REMOTE_READ;
}

/// Flags of a replicated write.
pub mod data_flags {
    /// Force unit access: durable on the peer before it acks.
    pub const FUA: u32 = 1 << 0;
    /// Discard the range; no payload.
    pub const TRIM: u32 = 1 << 1;
    /// Write zeroes over the range; no payload.
    pub const ZEROES: u32 = 1 << 2;
    /// Every flag this build knows; a frame with others is malformed.
    pub const ALL: u32 = FUA | TRIM | ZEROES;
}

/// First message on a connection, sent by both sides at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub resource: String,
    pub node: String,
    pub data_bytes: u64,
    pub protocol: Protocol,
    pub role: Role,
    pub disk: DiskState,
    pub gens: Generations,
    /// Persistent [`crate::meta::MetaFlags`] bits.
    pub meta_flags: u32,
    pub features: u64,
    /// Set bits in the sender's dirty bitmap (for after-sb "least changes").
    pub dirty_bits: u64,
    /// Random challenge the peer must answer with the shared secret.
    pub nonce: [u8; 32],
    /// Admin asked this side to discard its data on a split brain.
    pub discard_my_data: bool,
}

/// Why a connection ends. Both sides log it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DisconnectReason {
    /// Orderly shutdown; everything acknowledged before was flushed.
    Shutdown,
    /// Admin asked to disconnect.
    Admin,
    UnsupportedVersion,
    AuthFailed,
    WrongResource,
    WrongSize,
    /// The two configs disagree (protocol, node names).
    ConfigMismatch,
    SplitBrain,
    UnrelatedData,
    /// Both sides are Primary.
    BothPrimary,
    /// Neither side has good data to sync from.
    NoGoodData,
    /// The peer broke the protocol.
    ProtocolError,
    /// The peer did not answer in time.
    Timeout,
    /// A local disk failed.
    IoError,
}

/// One message on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    /// HMAC-SHA256 of the peer's challenge with the shared secret.
    Auth {
        mac: [u8; 32],
    },
    /// A replicated application write (or trim / write-zeroes, without payload).
    Data {
        seq: u64,
        offset: u64,
        len: u32,
        flags: u32,
        data: Bytes,
    },
    /// Protocol B: the peer received `seq`.
    RecvAck {
        seq: u64,
    },
    /// The peer wrote `seq` (protocol C completes on it; A and B use it to
    /// know what the peer holds).
    WriteAck {
        seq: u64,
    },
    /// The peer's local write of `seq` failed.
    NegAck {
        seq: u64,
    },
    /// Flush everything received before this, then answer with BarrierAck.
    Barrier {
        id: u64,
    },
    BarrierAck {
        id: u64,
    },
    Ping,
    PingAck,
    /// The sender's role or disk state changed.
    State {
        role: Role,
        disk: DiskState,
    },
    /// The sender's generation UUIDs changed (after a sync, or a new generation).
    Uuids {
        gens: Generations,
    },
    /// A run-length coded part of the sender's dirty bitmap: alternating runs
    /// of clear and set bits starting at `start_bit`, the first run of value
    /// `first_set`. `last` ends the exchange.
    Bitmap {
        start_bit: u64,
        first_set: bool,
        runs: Vec<u64>,
        last: bool,
    },
    /// SyncTarget asks for a block range.
    ResyncRequest {
        id: u64,
        offset: u64,
        len: u32,
    },
    /// SyncTarget asks for a range, sending its own crc32c of it; the source
    /// answers with data only if its checksum differs.
    ChecksumRequest {
        id: u64,
        offset: u64,
        len: u32,
        digest: u32,
    },
    /// SyncSource's data for a request.
    ResyncData {
        id: u64,
        offset: u64,
        data: Bytes,
    },
    /// SyncSource: the range already matches (checksum resync).
    InSync {
        id: u64,
        offset: u64,
        len: u32,
    },
    /// SyncSource could not read the range.
    ResyncNeg {
        id: u64,
        offset: u64,
        len: u32,
    },
    /// SyncTarget wrote a resync range; the source may clear its bits.
    ResyncAck {
        id: u64,
        offset: u64,
        len: u32,
    },
    /// VerifySource's checksum of a range; the target compares with its own.
    VerifyRequest {
        id: u64,
        offset: u64,
        len: u32,
        digest: u32,
    },
    VerifyReply {
        id: u64,
        offset: u64,
        len: u32,
        in_sync: bool,
    },
    /// The range differs between the nodes: mark it in the bitmap.
    OutOfSync {
        offset: u64,
        len: u32,
    },
    /// All planned resync/verify work is done.
    SyncDone,
    /// Start a resync on an established connection (after invalidate,
    /// invalidate-remote, primary --force or verify --repair). Both sides
    /// then exchange bitmaps as after a handshake.
    StartSync {
        sender_is_source: bool,
        full: bool,
    },
    /// Both disks are known identical (fresh, zeroed): take this new
    /// current generation and be UpToDate without a resync
    /// (`new-current-uuid --clear-bitmap`, DRBD's skip of the initial sync).
    /// Sent only to a peer with [`features::SKIP_SYNC`].
    SkipSync {
        gens: Generations,
    },
    /// A node without a usable local disk (Diskless, or a local read
    /// failed) asks the peer for a range. Sent only to a peer with
    /// [`features::REMOTE_READ`].
    ReadRequest {
        id: u64,
        offset: u64,
        len: u32,
    },
    /// The peer's data for a `ReadRequest`.
    ReadReply {
        id: u64,
        offset: u64,
        data: Bytes,
    },
    /// The peer could not read the range (or has no good data for it).
    ReadNeg {
        id: u64,
        offset: u64,
        len: u32,
    },
    Disconnect {
        reason: DisconnectReason,
        message: String,
    },
}
