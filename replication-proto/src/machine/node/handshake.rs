//! The handshake: Hello, authentication, and the sync decision.

use crate::machine::decide::{decide, Decision, View};
use crate::machine::types::ErrorKind;
use crate::machine::types::{Action, ConnState, Hook};
use crate::meta::MetaFlags;
use crate::wire::auth::{auth_mac, verify_auth};
use crate::wire::{DisconnectReason, DiskState, Hello, Message, Role};

use super::state::*;
use super::Node;

impl Node {
    pub(super) fn on_handshake_frame(&mut self, m: Message) {
        match m {
            Message::Hello(h) => self.on_hello(h),
            Message::Auth { mac } => self.on_auth(&mac),
            _ => self.protocol_error("data before the handshake finished"),
        }
    }

    /// The peer's Hello: check it fits, answer its challenge.
    fn on_hello(&mut self, h: Hello) {
        if self.link.peer().is_some() {
            self.protocol_error("second Hello");
            return;
        }
        let mismatch = self.hello_mismatch(&h);
        if let Some((reason, msg)) = mismatch {
            self.fail_connection(reason, format!("handshake refused: {msg}"), true);
            return;
        }
        let mac = auth_mac(
            &self.cfg.secret,
            &h.nonce,
            &self.link.my_nonce,
            &self.cfg.node,
        );
        let (role, disk) = (h.role, h.disk);
        self.link.hello_received(PeerInfo {
            hello: h,
            role,
            disk,
        });
        self.send(Message::Auth { mac });
    }

    /// Why the peer's Hello does not fit this node's configuration, if it
    /// does not.
    fn hello_mismatch(&self, h: &Hello) -> Option<(DisconnectReason, String)> {
        let c = &self.cfg;
        if h.version != crate::wire::PROTOCOL_VERSION {
            Some((
                DisconnectReason::UnsupportedVersion,
                format!(
                    "peer speaks protocol version {}, this node {}",
                    h.version,
                    crate::wire::PROTOCOL_VERSION
                ),
            ))
        } else if h.resource != c.resource {
            Some((
                DisconnectReason::WrongResource,
                format!(
                    "peer serves resource '{}', this node '{}'",
                    h.resource, c.resource
                ),
            ))
        } else if h.node != c.peer {
            Some((
                DisconnectReason::ConfigMismatch,
                format!(
                    "peer calls itself '{}', the config expects '{}'",
                    h.node, c.peer
                ),
            ))
        } else if h.data_bytes != c.data_bytes {
            Some((
                DisconnectReason::WrongSize,
                format!(
                    "peer's data size is {} bytes, this node's {} bytes",
                    h.data_bytes, c.data_bytes
                ),
            ))
        } else if h.protocol != c.protocol {
            Some((
                DisconnectReason::ConfigMismatch,
                format!(
                    "peer uses protocol {:?}, this node {:?}",
                    h.protocol, c.protocol
                ),
            ))
        } else {
            None
        }
    }

    /// The peer's answer to this node's challenge: authenticated, decide.
    fn on_auth(&mut self, mac: &[u8; 32]) {
        let Some(p) = self.link.peer() else {
            self.protocol_error("Auth before Hello");
            return;
        };
        if !verify_auth(
            &self.cfg.secret,
            &self.link.my_nonce,
            &p.hello.nonce,
            &p.hello.node,
            mac,
        ) {
            self.fail_connection(
                DisconnectReason::AuthFailed,
                "handshake refused: the peer's answer to the challenge is wrong (different shared secret?)".into(),
                true,
            );
            return;
        }
        self.decide_sync();
    }

    /// Authenticated: decide who syncs from whom, and act on it.
    ///
    /// Two Primaries whose data diverged is a split brain; the generations
    /// tell. Same generations cannot both be Primary unless promoted while
    /// disconnected, which rotated them.
    pub(super) fn decide_sync(&mut self) {
        let Some(p) = self.link.peer().cloned() else {
            debug_assert!(false, "deciding without the peer's Hello");
            return;
        };
        if self.is_diskless() || p.hello.disk == DiskState::Diskless {
            self.discard_my_data = false;
            self.link.decide(self.now);
            self.set_connected_ind(true);
            self.connected_diskless(&p.hello);
            return;
        }
        let d = self.decision(&p.hello);
        tracing::info!(peer = %p.hello.node, decision = ?d, "sync handshake");
        self.discard_my_data = false;
        self.link.decide(self.now);
        self.set_connected_ind(true);
        self.peer_has_disk_again();
        if matches!(
            d,
            Decision::SplitBrainResolved { .. } | Decision::SplitBrain { .. }
        ) {
            self.actions
                .push_back(Action::Hook(Hook::InitialSplitBrain));
        }
        match d {
            Decision::NoSync => self.connected_without_sync(&p.hello),
            Decision::Source { full } => self.begin_sync_after_handshake(SyncRole::Source, full),
            Decision::Target { full } => self.begin_sync_after_handshake(SyncRole::Target, full),
            Decision::SplitBrainResolved { i_am_source, how } => {
                self.error(ErrorKind::SplitBrain, format!("split brain detected and resolved automatically: {how}"));
                let r = if i_am_source { SyncRole::Source } else { SyncRole::Target };
                self.begin_sync_after_handshake(r, false);
            }
            Decision::SplitBrain { detail, i_run_pri_lost_hook } => {
                self.split_brain_found(detail, i_run_pri_lost_hook);
            }
            Decision::Unrelated => self.fail_connection(
                DisconnectReason::UnrelatedData,
                "the nodes' data share no generation (unrelated data); refusing to sync. \
                 Recreate the metadata of the node to overwrite (create-md --force) if this is intended"
                    .into(),
                true,
            ),
            Decision::NoGoodData { detail } => self.fail_connection(
                DisconnectReason::NoGoodData,
                format!("no node has good data to sync from: {detail}"),
                true,
            ),
        }
    }

    /// The sync decision between this node and the peer that sent `hello`.
    fn decision(&self, hello: &Hello) -> Decision {
        let me = View {
            node: &self.cfg.node,
            gens: self.gens,
            flags: self.flags,
            role: self.role,
            disk: self.disk,
            dirty_bits: self.bitmap.count(),
            discard_my_data: self.discard_my_data,
        };
        let peer = View {
            node: &hello.node,
            gens: hello.gens,
            flags: MetaFlags(hello.meta_flags),
            role: hello.role,
            disk: hello.disk,
            dirty_bits: hello.dirty_bits,
            discard_my_data: hello.discard_my_data,
        };
        decide(&me, &peer, &self.cfg.split_brain)
    }

    /// Nothing to sync: Connected, and both sides agree on the data.
    fn connected_without_sync(&mut self, hello: &Hello) {
        if self.role == Role::Primary && hello.role == Role::Primary {
            self.fail_connection(
                DisconnectReason::BothPrimary,
                "both nodes are Primary".into(),
                true,
            );
            return;
        }
        self.conn = ConnState::Connected;
        let peer_consistent = matches!(
            hello.disk,
            DiskState::UpToDate | DiskState::Consistent | DiskState::Outdated
        );
        if matches!(self.disk, DiskState::Consistent | DiskState::Outdated) && peer_consistent {
            self.set_up_to_date();
        }
        if let Some(pp) = self.link.peer_mut() {
            if matches!(pp.disk, DiskState::Consistent | DiskState::Outdated) {
                pp.disk = DiskState::UpToDate;
            }
        }
        if self.gens.current == hello.gens.current {
            // In sync: the bitmap generation is history now.
            self.peer_has_my_current = true;
            if self.gens.bitmap != 0 {
                self.gens.history = [self.gens.bitmap, self.gens.history[0]];
                self.gens.bitmap = 0;
                self.persist_super(false);
            }
        }
    }

    /// One side is Diskless: nothing to sync; the one with a disk holds
    /// the only copy (`diskless.rs`).
    fn connected_diskless(&mut self, hello: &Hello) {
        tracing::info!(peer = %hello.node, me = ?self.disk, peer_disk = ?hello.disk, "handshake with a Diskless side: no resync");
        if self.role == Role::Primary && hello.role == Role::Primary {
            self.fail_connection(
                DisconnectReason::BothPrimary,
                "both nodes are Primary".into(),
                true,
            );
            return;
        }
        self.conn = ConnState::Connected;
        // A Diskless peer on this node's generation reads and writes
        // through it; one that moved on alone (it wrote, then lost its disk)
        // cannot (`peer_serves`), and its disk coming back is compared
        // with this one as it is.
        if hello.disk == DiskState::Diskless && hello.gens.current == self.gens.current {
            self.peer_went_diskless();
        }
    }

    /// The data diverged and no policy resolves it: both stay StandAlone.
    fn split_brain_found(&mut self, detail: String, i_run_pri_lost_hook: bool) {
        self.split_brain = true;
        self.actions.push_back(Action::Hook(Hook::SplitBrain {
            detail: detail.clone(),
        }));
        if i_run_pri_lost_hook {
            self.actions.push_back(Action::Hook(Hook::PriLostAfterSb));
        }
        self.fail_connection(
            DisconnectReason::SplitBrain,
            format!(
                "split brain: {detail}. Both nodes stay StandAlone. To recover, pick the \
                 victim whose changes are thrown away: on it run `repctl secondary` and \
                 `repctl connect --discard-my-data`; on the survivor run `repctl connect`"
            ),
            true,
        );
    }

    pub(super) fn set_up_to_date(&mut self) {
        self.disk = DiskState::UpToDate;
        self.flags.set(MetaFlags::CONSISTENT, true);
        self.flags.set(MetaFlags::WAS_UP_TO_DATE, true);
        self.persist_super(false);
    }

    pub(super) fn begin_sync_after_handshake(&mut self, role: SyncRole, full: bool) {
        if role == SyncRole::Target && self.role == Role::Primary {
            self.fail_connection(
                DisconnectReason::ConfigMismatch,
                "this Primary would have to become sync target (the peer has newer data); refusing. \
                 Make it secondary first"
                    .into(),
                true,
            );
            return;
        }
        if full {
            self.bitmap.set_all();
        }
        self.start_sync(role, full);
    }
}
