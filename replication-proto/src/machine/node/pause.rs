//! `pause-sync` / `resume-sync` (DRBD's user pause, `resync-suspended:user`):
//! an operator holds a running resync and releases it later.
//!
//! No wire message: each node pauses on its own side, which stops the
//! resync whichever side it is. A paused SyncTarget sends no new requests
//! (the ones in flight are still answered and written); a paused
//! SyncSource keeps the requests that arrive unanswered until
//! `resume-sync`. The target's window bounds what the source holds; pings
//! keep the connection up meanwhile (no timer runs on resync requests).
//! The flag is the node's, not the connection's: like DRBD's user flag it
//! holds the next resync too, until `resume-sync`. The cost of no message:
//! only the node that paused shows it in status.

use crate::machine::types::AdminError;

use super::Node;

/// The most resync requests a paused source holds: a target keeps at most
/// `sync_window::MAX` in flight, so more is a protocol error.
const HELD_MAX: usize = 4 * crate::machine::sync_window::MAX;

/// One resync request held by a paused source.
#[derive(Debug)]
struct Held {
    epoch: u64,
    id: u64,
    offset: u64,
    len: u32,
    digest: Option<u32>,
}

/// The user's pause flag and what a paused source holds.
#[derive(Debug, Default)]
pub(super) struct SyncPause {
    pub(super) user: bool,
    held: Vec<Held>,
}

impl Node {
    pub(super) fn pause_sync(&mut self) -> Result<(), AdminError> {
        if self.pause.user {
            return Err(AdminError::SyncAlreadyPaused);
        }
        self.pause.user = true;
        tracing::info!("resync paused by the admin (resync-suspended:user)");
        Ok(())
    }

    pub(super) fn resume_sync(&mut self) -> Result<(), AdminError> {
        if !self.pause.user {
            return Err(AdminError::SyncNotPaused);
        }
        self.pause.user = false;
        tracing::info!("resync resumed by the admin");
        let epoch = self.link.epoch;
        for h in std::mem::take(&mut self.pause.held) {
            if h.epoch == epoch {
                self.on_resync_request(h.id, h.offset, h.len, h.digest);
            }
        }
        self.pump_sync();
        Ok(())
    }

    /// Source: keep a resync request while the user pause holds the
    /// resync; true if it was held (the caller answers it otherwise).
    pub(super) fn hold_resync_request(
        &mut self,
        id: u64,
        offset: u64,
        len: u32,
        digest: Option<u32>,
    ) -> bool {
        if !self.pause.user {
            return false;
        }
        let epoch = self.link.epoch;
        // Requests of an earlier connection will never be answered.
        self.pause.held.retain(|h| h.epoch == epoch);
        if self.pause.held.len() >= HELD_MAX {
            self.protocol_error("too many resync requests while the resync is paused");
            return true;
        }
        self.pause.held.push(Held {
            epoch,
            id,
            offset,
            len,
            digest,
        });
        true
    }
}
