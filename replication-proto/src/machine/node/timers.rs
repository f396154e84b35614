//! Time: handshake and ping timeouts, ko-count, idle barriers, the resync
//! rate, and the orderly shutdown.

use crate::machine::types::{Action, ConnState};
use crate::meta::MetaFlags;
use crate::wire::disconnect;
use crate::wire::{DisconnectReason, Message};

use super::state::*;
use super::Node;

impl Node {
    // ----- time --------------------------------------------------------------

    pub(super) fn tick(&mut self) {
        self.age_errors();
        let now = self.now;
        debug_assert_eq!(
            self.conn == ConnState::Handshake,
            matches!(self.link.phase, LinkPhase::Handshake { .. }),
            "connection state and link phase disagree"
        );
        let (last_recv, ping_sent) = match &self.link.phase {
            LinkPhase::Down => return,
            LinkPhase::Handshake { started, .. } => {
                if now >= *started + self.cfg.timeout_ms {
                    self.fail_connection(
                        DisconnectReason::Timeout,
                        "handshake timed out".into(),
                        false,
                    );
                }
                return;
            }
            LinkPhase::Decided {
                last_recv,
                ping_sent,
                ..
            } => (*last_recv, *ping_sent),
        };
        if let Some(s) = ping_sent {
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
        } else if now >= last_recv + self.cfg.ping_int_ms {
            self.link.pinged(now);
            self.send(Message::Ping);
        }
        if let Some(sent) = self.oldest_remote_read() {
            if now >= sent + self.ko_ms() {
                let ms = self.ko_ms();
                self.fail_connection(
                    DisconnectReason::Timeout,
                    format!("peer did not answer a remote read within {ms} ms (timeout × ko-count); dropping it"),
                    false,
                );
                return;
            }
        }
        if let Some((_, r)) = self.repl.pending.first_key_value() {
            if now >= r.sent_at + self.ko_ms() {
                let ms = self.ko_ms();
                self.fail_connection(DisconnectReason::Timeout, format!("peer did not complete a write within {ms} ms (timeout × ko-count); dropping it"), false);
                return;
            }
        }
        if !self.repl.unflushed.is_empty()
            && self.repl.barriers.is_empty()
            && now >= self.repl.last_data_sent + self.cfg.ping_int_ms
        {
            self.send_barrier(None);
        }
        if self.sync.as_ref().is_some_and(|s| s.is_verify()) {
            self.pump_verify();
        } else {
            self.pump_sync();
        }
    }

    pub(super) fn maybe_finish_down(&mut self) {
        if !self.down.requested || self.down.done || !self.app.is_empty() || !self.ops.io.is_empty()
        {
            return;
        }
        if self.ops.flush.values().any(|f| matches!(f, FlushOp::Down)) {
            return;
        }
        let token = self.io_token();
        self.ops.flush.insert(token, FlushOp::Down);
        self.actions.push_back(Action::LocalFlush { token });
    }

    /// Orderly shutdown: everything is flushed; tell the peer, write the metadata.
    pub(super) fn down_flushed(&mut self) {
        if self.connected_states() {
            let msg = format!("{} shut down cleanly", self.cfg.node);
            self.send(disconnect(DisconnectReason::Shutdown, &msg));
            self.connection_lost("shutdown");
        }
        self.conn = ConnState::StandAlone;
        self.actions.push_back(Action::CloseConnection);
        self.flags
            .set(MetaFlags::AL_CLEAN, self.al.log.extents().is_empty());
        self.persist_super(false);
        self.persist_bitmap_all(None);
        self.down.done = true;
    }
}
