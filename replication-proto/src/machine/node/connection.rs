//! The connection: transport up and down, frames dispatched by state,
//! and what a lost peer leaves in the bitmap.

use crate::machine::types::ErrorKind;
use rand::RngCore;

use crate::machine::types::{Action, ConnState, SuspendMode};
use crate::wire::{disconnect, DisconnectReason, DiskState, Hello, Message, Role};

use super::state::*;
use super::Node;

impl Node {
    // ----- connection --------------------------------------------------------

    pub(super) fn on_transport_up(&mut self) {
        if self.conn != ConnState::Connecting {
            self.actions.push_back(Action::CloseConnection);
            return;
        }
        self.conn = ConnState::Handshake;
        self.take_next_connection_settings();
        self.link.begin(self.now);
        self.rng.fill_bytes(&mut self.link.my_nonce);
        let hello = Hello {
            version: crate::wire::PROTOCOL_VERSION,
            resource: self.cfg.resource.clone(),
            node: self.cfg.node.clone(),
            data_bytes: self.cfg.data_bytes,
            protocol: self.cfg.protocol,
            role: self.role,
            disk: self.disk,
            gens: self.gens,
            meta_flags: self.flags.0,
            features: self.cfg.features,
            dirty_bits: self.bitmap.count(),
            nonce: self.link.my_nonce,
            discard_my_data: self.discard_my_data,
        };
        self.send(Message::Hello(hello));
    }

    /// End the connection with a reason the peer logs too. `standalone`: stop
    /// reconnecting (the condition needs an admin).
    pub(super) fn fail_connection(
        &mut self,
        reason: DisconnectReason,
        msg: String,
        standalone: bool,
    ) {
        let kind = if reason == DisconnectReason::SplitBrain {
            ErrorKind::SplitBrain
        } else {
            ErrorKind::Connection
        };
        self.error(kind, msg.clone());
        if self.connected_states() {
            self.send(disconnect(reason, &msg));
        }
        if standalone {
            self.want_connect = false;
        }
        self.connection_lost(&msg);
        if standalone {
            self.conn = ConnState::StandAlone;
            self.actions.push_back(Action::CloseConnection);
        }
    }

    /// The connection is gone (for whatever reason). Everything the peer may
    /// not hold goes into the bitmap.
    pub(super) fn connection_lost(&mut self, why: &str) {
        if !self.connected_states() {
            return;
        }
        tracing::info!(state = ?self.conn, "connection lost: {why}");
        let was_decided = self.link.decided();
        if self.susp.freeze_on_disconnect
            && was_decided
            && self.role == Role::Primary
            && self.susp.mode.is_none()
        {
            // Before the writes the peer did not confirm complete below.
            tracing::warn!("peer lost: I/O frozen until resumed");
            self.susp.mode = Some(SuspendMode::Hold);
        }
        if was_decided {
            let peer_disk = self.link.decided_peer().map(|p| p.disk);
            self.fence_peer_if_needed(peer_disk, false);
        }
        self.link.lose();
        if was_decided {
            self.set_connected_ind(false);
        }
        self.forget_peer_writes();
        self.fail_remote_reads();
        self.recv.barriers.clear();
        self.recv.unacked = 0;
        if let Some(s) = self.sync.take() {
            if s.role == SyncRole::Target && !s.is_verify() {
                tracing::info!(
                    left = self.bitmap.count(),
                    "resync interrupted; it resumes on reconnect"
                );
            }
        }
        if self.role == Role::Primary && was_decided {
            self.rotate_for_disconnected_writes();
        }
        if self.down.requested {
            self.conn = ConnState::StandAlone;
            self.maybe_finish_down();
        } else if self.want_connect {
            self.conn = ConnState::Connecting;
            self.actions.push_back(Action::CloseConnection);
            self.actions.push_back(Action::Connect);
        } else {
            self.conn = ConnState::StandAlone;
            self.actions.push_back(Action::CloseConnection);
        }
        // Writes that waited for extents the peer held may go now (after the
        // new generation, if any, is durable: the gate holds them till then).
        self.process_al_wait();
    }

    /// The peer is gone: replicated writes it did not confirm, and confirmed
    /// ones it may not have flushed, go into the bitmap; the requests that
    /// waited for it complete without it.
    fn forget_peer_writes(&mut self) {
        let pending = std::mem::take(&mut self.repl.pending);
        self.repl.pending_bytes = 0;
        let no_copy = self.is_diskless();
        for (_, r) in pending {
            self.bitmap.set_range(r.span.start, r.span.len());
            self.al.log.release(r.extents.first, r.extents.last);
            if let Some(id) = r.app_id {
                if let Some(AppReq::Write {
                    peer, local_err, ..
                }) = self.app.get_mut(&id)
                {
                    *peer = PeerWait::Lost;
                    if no_copy {
                        // Diskless: the peer's copy was the only one.
                        *local_err = Some(crate::machine::types::errno::EIO);
                    }
                }
                self.try_complete_write(id);
            }
        }
        for u in std::mem::take(&mut self.repl.unflushed) {
            self.bitmap.set_range(u.span.start, u.span.len());
        }
        for b in std::mem::take(&mut self.repl.barriers).into_values() {
            if let Some(id) = b.app {
                if let Some(AppReq::Flush { peer_done, .. }) = self.app.get_mut(&id) {
                    *peer_done = true;
                }
                self.try_complete_flush(id);
            }
        }
    }

    /// A frame on the current connection: a Disconnect ends it in any
    /// state; before the sync decision the handshake takes it; after, it
    /// goes to the step for its kind.
    pub(super) fn on_frame(&mut self, m: Message) {
        if let Message::Disconnect { reason, message } = &m {
            self.on_peer_disconnect(*reason, message);
            return;
        }
        if !self.link.decided() {
            self.on_handshake_frame(m);
            return;
        }
        match m {
            Message::Ping => self.send(Message::PingAck),
            Message::PingAck => self.link.ping_answered(),
            Message::Data {
                seq,
                offset,
                len,
                flags,
                data,
            } => self.on_peer_data(seq, offset, len, flags, data),
            Message::RecvAck { seq } => self.on_recv_ack(seq),
            Message::WriteAck { seq } => self.on_write_ack(seq, true),
            Message::NegAck { seq } => self.on_write_ack(seq, false),
            Message::Barrier { id } => self.on_peer_barrier(id),
            Message::BarrierAck { id } => self.on_barrier_ack(id),
            Message::State { role, disk } => self.on_peer_state(role, disk),
            Message::Uuids { gens } => self.on_peer_uuids(gens),
            Message::SkipSync { gens } => self.on_skip_sync(gens),
            Message::StartSync {
                sender_is_source,
                full,
            } => self.on_start_sync(sender_is_source, full),
            Message::Bitmap { .. } => self.on_bitmap(&m),
            Message::ResyncRequest { .. }
            | Message::ChecksumRequest { .. }
            | Message::ResyncData { .. }
            | Message::InSync { .. }
            | Message::ResyncNeg { .. }
            | Message::ResyncAck { .. }
            | Message::SyncDone => self.on_resync_frame(m),
            Message::VerifyRequest {
                id,
                offset,
                len,
                digest,
            } => self.on_verify_request(id, offset, len, digest),
            Message::VerifyReply {
                id,
                offset,
                len,
                in_sync,
            } => self.on_verify_reply(id, offset, len, in_sync),
            Message::OutOfSync { offset, len } => self.bitmap.set_range(offset, u64::from(len)),
            Message::ReadRequest { id, offset, len } => self.on_read_request(id, offset, len),
            Message::ReadReply { id, data, .. } => self.on_read_reply(id, Ok(data)),
            Message::ReadNeg { id, .. } => self.on_read_reply(id, Err(())),
            Message::Hello(_) | Message::Auth { .. } => {
                self.protocol_error("handshake message on an established connection");
            }
            Message::Disconnect { .. } => {}
        }
    }

    /// The peer closed the connection and said why.
    fn on_peer_disconnect(&mut self, reason: DisconnectReason, message: &str) {
        let msg = format!("peer disconnected: {reason:?}: {message}");
        // These need an admin: reconnecting would only fail the same way.
        let standalone = matches!(
            reason,
            DisconnectReason::AuthFailed
                | DisconnectReason::WrongResource
                | DisconnectReason::WrongSize
                | DisconnectReason::UnsupportedVersion
                | DisconnectReason::ConfigMismatch
                | DisconnectReason::SplitBrain
                | DisconnectReason::UnrelatedData
                | DisconnectReason::NoGoodData
                | DisconnectReason::BothPrimary
        );
        if reason == DisconnectReason::Shutdown {
            // The peer flushed everything it received before saying so.
            self.repl.unflushed.clear();
            tracing::info!("peer shut down cleanly");
        } else if reason == DisconnectReason::SplitBrain {
            self.error(ErrorKind::SplitBrain, msg.clone());
        } else if reason != DisconnectReason::Admin {
            self.error(ErrorKind::Connection, msg.clone());
        }
        if reason == DisconnectReason::SplitBrain {
            self.split_brain = true;
        }
        if standalone {
            self.want_connect = false;
        }
        self.connection_lost(&msg);
    }

    /// The peer's role or disk changed.
    fn on_peer_state(&mut self, role: Role, disk: DiskState) {
        if role == Role::Primary && self.role == Role::Primary {
            self.fail_connection(
                DisconnectReason::BothPrimary,
                "both nodes are Primary".into(),
                true,
            );
            return;
        }
        let was = self.link.peer().map(|p| p.disk);
        if let Some(p) = self.link.peer_mut() {
            p.role = role;
            p.disk = disk;
        }
        if disk == DiskState::Diskless && was != Some(DiskState::Diskless) {
            self.peer_went_diskless();
        }
    }

    /// The peer asks to start a resync (invalidate, invalidate-remote,
    /// verify --repair) from an idle connection.
    fn on_start_sync(&mut self, sender_is_source: bool, full: bool) {
        let peer_diskless = self.link.decided_peer().map(|p| p.disk) == Some(DiskState::Diskless);
        if self.conn != ConnState::Connected || self.is_diskless() || peer_diskless {
            self.protocol_error("StartSync while not idle");
            return;
        }
        if sender_is_source && self.role == Role::Primary {
            self.fail_connection(
                DisconnectReason::ConfigMismatch,
                "peer wants to overwrite the Primary's data; refused".into(),
                true,
            );
            return;
        }
        if sender_is_source {
            if full {
                self.bitmap.set_all();
            }
            self.start_sync(SyncRole::Target, full);
        } else {
            self.start_sync(SyncRole::Source, full);
        }
    }

    pub(super) fn protocol_error(&mut self, what: &str) {
        self.fail_connection(
            DisconnectReason::ProtocolError,
            format!("protocol error: {what}"),
            false,
        );
    }
}
