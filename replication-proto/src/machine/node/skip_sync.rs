//! `new-current-uuid --clear-bitmap` (DRBD's skip of the initial sync):
//! two fresh disks known identical (zeroed, or new thin volumes) become
//! UpToDate without moving data.
//!
//! Only from the state DRBD's guide names: connected, both Secondary, both
//! Inconsistent with no data generation yet (fresh `create-md`). This node
//! starts a new current generation with an empty bitmap, is UpToDate, and
//! sends it in `SkipSync`; the peer, still fresh, takes the same
//! generation and is UpToDate too. A crash in between is safe: the side
//! that has the generation is the sync source at the next handshake (a
//! full sync, as without the skip).

use crate::gen::{Generations, UUID_JUST_CREATED};
use crate::machine::types::{AdminError, ConnState};
use crate::wire::{features, DisconnectReason, DiskState, Message, Role};

use super::Node;

impl Node {
    /// Fresh: no data generation yet and nothing here to keep.
    fn fresh(&self) -> bool {
        self.gens.current == UUID_JUST_CREATED && self.disk == DiskState::Inconsistent
    }

    pub(super) fn new_current_uuid(&mut self, clear_bitmap: bool) -> Result<(), AdminError> {
        if !clear_bitmap {
            return Err(AdminError::NewUuidNeedsClearBitmap);
        }
        if self.conn != ConnState::Connected || self.sync.is_some() {
            return Err(AdminError::SkipSyncNeedsConnected);
        }
        let Some(peer) = self.link.decided_peer() else {
            return Err(AdminError::SkipSyncNeedsConnected);
        };
        if self.role == Role::Primary || peer.role == Role::Primary {
            return Err(AdminError::SkipSyncNeedsSecondaries);
        }
        let peer_fresh =
            peer.hello.gens.current == UUID_JUST_CREATED && peer.disk == DiskState::Inconsistent;
        if !self.fresh() || !peer_fresh {
            return Err(AdminError::SkipSyncNeedsFreshData);
        }
        if peer.hello.features & features::SKIP_SYNC == 0 {
            return Err(AdminError::PeerCannotSkipSync);
        }
        self.gens = Generations {
            current: self.new_uuid(),
            bitmap: 0,
            history: [0, 0],
        };
        // The peer takes these generations (or drops the connection, and
        // the next handshake tells the truth): what this node knows of the
        // peer must not stay the handshake's, or a Diskless node would
        // judge the peer unable to serve its data (`peer_serves`).
        let gens = self.gens;
        if let Some(p) = self.link.peer_mut() {
            p.hello.gens = gens;
        }
        self.take_skipped_sync();
        tracing::info!(
            current = format_args!("{:016X}", self.gens.current),
            "new current generation with a clear bitmap: UpToDate without the initial sync"
        );
        self.send(Message::SkipSync { gens: self.gens });
        Ok(())
    }

    /// Both sides: an empty bitmap, UpToDate, durable; the peer learns it.
    fn take_skipped_sync(&mut self) {
        self.bitmap.clear_range(0, self.cfg.data_bytes);
        self.peer_has_my_current = true;
        self.set_up_to_date();
        self.persist_bitmap_all(None);
        self.send(Message::State {
            role: self.role,
            disk: self.disk,
        });
    }

    /// The peer ran `new-current-uuid --clear-bitmap`.
    pub(super) fn on_skip_sync(&mut self, gens: Generations) {
        let idle = self.conn == ConnState::Connected && self.sync.is_none();
        if !idle || self.role == Role::Primary || !self.fresh() {
            // It raced with something that changed this node: the next
            // handshake decides (the peer's generation is the newer one).
            self.fail_connection(
                DisconnectReason::NoGoodData,
                "the peer asked to skip the initial sync, but this node is no longer a fresh \
                 idle Secondary; reconnecting to sync normally"
                    .into(),
                false,
            );
            return;
        }
        self.gens = gens;
        if let Some(p) = self.link.peer_mut() {
            p.hello.gens = gens;
            p.disk = DiskState::UpToDate;
        }
        self.take_skipped_sync();
        tracing::info!("the peer skipped the initial sync: UpToDate without moving data");
    }
}
