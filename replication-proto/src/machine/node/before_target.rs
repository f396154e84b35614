//! DRBD's `before-resync-target` handler (the snapshot-before-resync use):
//! on the node that becomes SyncTarget, after the bitmaps are exchanged and
//! before the first block is requested, the driver runs the handler
//! ([`Hook::BeforeResyncTarget`]) and answers with
//! [`crate::machine::Event::BeforeResyncTargetDone`]. A failure drops the connection, and
//! this node stays StandAlone until an admin connects it again (DRBD drops
//! the connection too).
//!
//! What the target persists does not wait for the handler: at the decision
//! (`bitmap_exchanged`) it takes the source's generation, marks itself
//! Inconsistent and persists that with the bitmap, as without a handler.
//! Replicated application writes land on it from then on, so waiting with
//! the old generation and the Consistent flag on disk would let a crash
//! during the handler leave a copy that passes for consistent but holds
//! some of the new generation's writes. The handler only holds the first
//! resync request: it counts as one more thing the `Persisting` phase
//! waits for, so no block of the resync is overwritten before it ended.

use crate::machine::types::{Action, Hook};
use crate::wire::DisconnectReason;

use super::state::SyncPhase;
use super::Node;

/// Whether the handler is configured, and the resync waiting for it.
#[derive(Debug, Default)]
pub(super) struct BeforeTarget {
    /// The driver runs a `before-resync-target` handler.
    pub(super) armed: bool,
    /// The connection (link epoch) whose resync waits for the handler.
    waiting: Option<u64>,
}

impl Node {
    /// Whether the driver runs a `before-resync-target` handler: if so, a
    /// resync as target waits for [`crate::machine::Event::BeforeResyncTargetDone`] before
    /// its first request. Changeable at any time (`repctl adjust`); a
    /// resync already waiting keeps waiting for its answer.
    pub fn set_before_resync_target(&mut self, on: bool) {
        self.before_target.armed = on;
    }

    /// Target, at the decision: the number of things the first request
    /// waits for besides the bitmap (1 if the handler runs, which is asked
    /// for here).
    pub(super) fn before_resync_target(&mut self, epoch: u64) -> u32 {
        if !self.before_target.armed {
            return 0;
        }
        self.before_target.waiting = Some(epoch);
        self.actions
            .push_back(Action::Hook(Hook::BeforeResyncTarget));
        1
    }

    /// The handler ended. Answers for a connection that is gone are
    /// dropped: the resync of a later connection asks again.
    pub(super) fn before_resync_target_done(&mut self, ok: bool) {
        let Some(epoch) = self.before_target.waiting.take() else {
            return;
        };
        let waiting = self
            .sync
            .as_ref()
            .is_some_and(|s| matches!(s.phase, SyncPhase::Persisting { .. }));
        if epoch != self.link.epoch || !self.link.decided() || !waiting {
            return;
        }
        if ok {
            if let Some(s) = self.sync.as_mut() {
                s.persisted_one();
            }
            self.pump_sync();
        } else {
            self.fail_connection(
                DisconnectReason::Admin,
                "the before-resync-target handler failed: the resync does not start and this \
                 node stays StandAlone (as DRBD drops the connection); fix the handler (or what \
                 it snapshots), then `repctl connect`"
                    .into(),
                true,
            );
        }
    }
}
