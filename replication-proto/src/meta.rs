//! What the state machine needs persisted, independent of the on-disk layout
//! (which lives in `ublk-target`).

use serde::{Deserialize, Serialize};

/// Granularity of the dirty bitmap: one bit covers this many bytes.
pub const BM_BLOCK_SIZE: u64 = 4096;
/// Granularity of the activity log: one extent covers this many bytes.
pub const AL_EXTENT_SIZE: u64 = 4 << 20;
/// Bitmap bits per activity-log extent.
pub const BITS_PER_EXTENT: u64 = AL_EXTENT_SIZE / BM_BLOCK_SIZE;

/// Persistent flags, kept in the superblock next to the generation UUIDs.
/// The names follow DRBD's MDF_* flags where they mean the same thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct MetaFlags(pub u32);

impl MetaFlags {
    /// The data is consistent (not in the middle of being a sync target).
    pub const CONSISTENT: u32 = 1 << 0;
    /// The data was UpToDate when last known (not Outdated).
    pub const WAS_UP_TO_DATE: u32 = 1 << 1;
    /// The node is Primary right now; found set at attach time it means the
    /// Primary crashed.
    pub const PRIMARY_IND: u32 = 1 << 2;
    /// The node was connected to its peer when this was written.
    pub const CONNECTED_IND: u32 = 1 << 3;
    /// A full sync is pending (set by invalidate before the bits are set).
    pub const FULL_SYNC: u32 = 1 << 4;
    /// The peer's disk is known to be Outdated (it cannot become Primary).
    pub const PEER_OUTDATED: u32 = 1 << 5;
    /// This node crashed while Primary and has not resynced its activity log.
    pub const CRASHED_PRIMARY: u32 = 1 << 6;
    /// The activity log is clean: the node shut down cleanly.
    pub const AL_CLEAN: u32 = 1 << 7;
    /// The current generation was started by a Primary whose I/O was
    /// suspended (frozen) when it lost its peer, and it has acknowledged no
    /// write in it since: what it wrote alone (requests that were in flight)
    /// was never promised to anyone. It rejoins a peer that moved on from
    /// the same generation as sync target instead of as a split brain.
    /// Cleared, durably, before the first acknowledgement (on resume).
    pub const UNACKED_GEN: u32 = 1 << 8;
    /// The peer is Diskless and this node marks in its bitmap what the
    /// peer's disk misses; the bitmap on disk may be behind. Found at start,
    /// the whole bitmap is set (the peer's disk then resyncs fully).
    pub const PEER_DISKLESS_DIRTY: u32 = 1 << 9;

    #[must_use]
    pub fn has(self, flag: u32) -> bool {
        self.0 & flag != 0
    }
    pub fn set(&mut self, flag: u32, on: bool) {
        if on {
            self.0 |= flag;
        } else {
            self.0 &= !flag;
        }
    }
}
