//! Time: handshake and ping timeouts, ko-count, idle barriers, the resync
//! rate, and the orderly shutdown.

use crate::machine::types::{Action, ConnState};
use crate::wire::{DisconnectReason, Message};

use super::state::*;
use super::Node;

impl Node {
    // ----- time --------------------------------------------------------------

    pub(super) fn tick(&mut self) {
        self.clear_error_when_healthy();
        let now = self.now;
        if self.conn == ConnState::Handshake && now >= self.conn_started + self.cfg.timeout_ms {
            self.fail_connection(
                DisconnectReason::Timeout,
                "handshake timed out".into(),
                false,
            );
            return;
        }
        if !self.decided {
            return;
        }
        if let Some(s) = self.ping_sent {
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
        } else if now >= self.last_recv + self.cfg.ping_int_ms {
            self.ping_sent = Some(now);
            self.send(Message::Ping);
        }
        if let Some((_, r)) = self.peer_pending.first_key_value() {
            if now >= r.sent_at + self.ko_ms() {
                let ms = self.ko_ms();
                self.fail_connection(DisconnectReason::Timeout, format!("peer did not complete a write within {ms} ms (timeout × ko-count); dropping it"), false);
                return;
            }
        }
        if !self.unflushed.is_empty()
            && self.barriers.is_empty()
            && now >= self.last_data_sent + self.cfg.ping_int_ms
        {
            self.send_barrier(None);
        }
        if self.sync.as_ref().is_some_and(|s| s.verify) {
            self.pump_verify();
        } else {
            self.pump_sync();
        }
    }

    pub(super) fn maybe_finish_down(&mut self) {
        if !self.down_requested || self.down_done || !self.app.is_empty() || !self.io.is_empty() {
            return;
        }
        if self.flush_ops.values().any(|f| matches!(f, FlushOp::Down)) {
            return;
        }
        let token = self.token();
        self.flush_ops.insert(token, FlushOp::Down);
        self.actions.push_back(Action::LocalFlush { token });
    }
}
