//! Plumbing that turns decisions into actions: tokens, sends, metadata
//! writes, new generations.

use rand::RngCore;

use crate::gen::UUID_JUST_CREATED;
use crate::machine::ids::{IoToken, MetaToken};
use crate::machine::types::{Action, ConnState};
use crate::meta::MetaFlags;
use crate::wire::{Message, Role, MAX_STRING_LEN};

use super::state::*;
use super::Node;

impl Node {
    pub(super) fn io_token(&mut self) -> IoToken {
        self.ops.tokens.io()
    }

    pub(super) fn meta_token(&mut self) -> MetaToken {
        self.ops.tokens.meta()
    }

    pub(super) fn send(&mut self, m: Message) {
        // Disconnect frames are built by `wire::disconnect`, which cuts the
        // reason to what the wire carries (a longer one would not encode and
        // the peer would never learn why).
        debug_assert!(
            !matches!(&m, Message::Disconnect { message, .. } if message.len() > MAX_STRING_LEN),
            "a Disconnect reason longer than the wire allows: {m:?}"
        );
        match &m {
            Message::Data { data, .. } => self.stats.traffic.sent_bytes += data.len() as u64,
            Message::ResyncData { data, .. } => {
                self.stats.traffic.sent_bytes += data.len() as u64;
                self.stats.traffic.resync_sent_bytes += data.len() as u64;
            }
            _ => {}
        }
        self.actions.push_back(Action::Send(m));
    }

    /// Records durably whether the peer is connected (CONNECTED_IND), so
    /// the next start knows whether this node ran alone.
    pub(super) fn set_connected_ind(&mut self, on: bool) {
        if self.flags.has(MetaFlags::CONNECTED_IND) != on {
            self.flags.set(MetaFlags::CONNECTED_IND, on);
            self.persist_super(false);
        }
    }

    pub(super) fn persist_super(&mut self, gate: bool) {
        if self.is_diskless() {
            // No disk to write to (the peer keeps the generations).
            return;
        }
        let token = self.meta_token();
        if gate {
            self.al.super_gate += 1;
        }
        self.ops.meta.insert(token, MetaOp::Super { gate });
        self.actions.push_back(Action::WriteSuper {
            token,
            gens: self.gens,
            flags: self.flags,
        });
    }

    pub(super) fn persist_bitmap_all(&mut self, sync_epoch: Option<u64>) {
        if self.is_diskless() {
            return;
        }
        let token = self.meta_token();
        self.ops.meta.insert(token, MetaOp::Bitmap { sync_epoch });
        self.stats.bm_writes += 1;
        self.actions.push_back(Action::WriteBitmap {
            token,
            first_word: 0,
            words: self.bitmap.words().to_vec(),
        });
    }

    pub(super) fn new_uuid(&mut self) -> u64 {
        loop {
            // Low values are reserved (0 = none, 4 = just created).
            let u = self.rng.next_u64() & !1;
            if u > 16 {
                return u;
            }
        }
    }

    /// Start a new data generation: the bitmap counts changes from the old one.
    pub(super) fn rotate_for_disconnected_writes(&mut self) {
        if self.is_diskless() {
            // Its writes went to the peer only: no generation of its own.
            return;
        }
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
            let unacked = self.susp.mode.is_some();
            self.flags.set(MetaFlags::UNACKED_GEN, unacked);
            tracing::info!(
                current = format_args!("{:016X}", self.gens.current),
                unacknowledged = unacked,
                "new data generation"
            );
            self.persist_super(true);
        }
    }

    pub(super) fn replicating(&self) -> bool {
        self.role == Role::Primary
            && self.link.decided()
            // A Diskless peer keeps nothing: the bitmap does (DRBD's pdsk:Diskless).
            && self.link.decided_peer().map(|p| p.disk) != Some(crate::wire::DiskState::Diskless)
            && matches!(
                self.conn,
                ConnState::Connected
                    | ConnState::WFBitMapS
                    | ConnState::SyncSource
                    | ConnState::VerifySource
                    | ConnState::VerifyTarget
            )
    }

    pub(super) fn connected_states(&self) -> bool {
        !matches!(self.conn, ConnState::StandAlone | ConnState::Connecting)
    }
}
