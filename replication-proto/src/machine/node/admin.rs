//! Admin commands and the roles: promote, demote, outdate, and the
//! resumption of the role after a crash.

use crate::gen::UUID_JUST_CREATED;
use crate::machine::resume::{self};
use crate::machine::types::{Action, Admin, AdminError, ConnState, SuspendMode, Verb};
use crate::meta::MetaFlags;
use crate::time::Millis;
use crate::wire::{disconnect, DisconnectReason, DiskState, Message, Role};

use super::state::*;
use super::Node;

impl Node {
    pub(super) fn admin_cmd(&mut self, now: Millis, cmd: Admin) -> Result<(), AdminError> {
        self.now = self.now.max(now);
        if self.down.requested {
            return Err(AdminError::ShuttingDown);
        }
        let peer_diskless = self.link.decided_peer().map(|p| p.disk) == Some(DiskState::Diskless);
        if (self.is_diskless() || peer_diskless)
            && matches!(
                cmd,
                Admin::Verb(
                    Verb::Invalidate
                        | Verb::InvalidateRemote
                        | Verb::Verify { .. }
                        | Verb::Outdate
                        | Verb::NewCurrentUuid { .. }
                )
            )
        {
            return Err(if self.is_diskless() {
                AdminError::NeedsDisk
            } else {
                AdminError::PeerDiskless
            });
        }
        match cmd {
            Admin::Verb(Verb::Primary { force }) => self.promote(force),
            Admin::Verb(Verb::Secondary) => {
                self.resume.cancel("an admin made this node Secondary");
                self.demote()
            }
            Admin::Verb(Verb::Connect { discard_my_data }) => self.admin_connect(discard_my_data),
            Admin::Verb(Verb::Disconnect) => {
                self.admin_disconnect();
                Ok(())
            }
            Admin::Verb(Verb::Invalidate) => self.invalidate(),
            Admin::Verb(Verb::InvalidateRemote) => self.invalidate_remote(),
            Admin::Verb(Verb::Verify { repair }) => {
                if self.conn != ConnState::Connected {
                    return Err(AdminError::VerifyNeedsIdle);
                }
                self.start_verify(repair);
                Ok(())
            }
            Admin::SuspendIo { mode } => {
                self.suspend_io(mode);
                Ok(())
            }
            Admin::ResumeIo => {
                self.resume_io();
                Ok(())
            }
            Admin::ResumeIoAt { current } => {
                if self.gens.current != current {
                    return Err(AdminError::GenerationMoved {
                        now: self.gens.current,
                        expected: current,
                    });
                }
                self.resume_io();
                Ok(())
            }
            Admin::Verb(Verb::FreezeOnDisconnect { on }) => {
                self.susp.freeze_on_disconnect = on;
                Ok(())
            }
            Admin::Verb(Verb::Outdate) => self.outdate(),
            Admin::Verb(Verb::ResumeAfterCrash) => self.resume.arm(),
            Admin::Verb(Verb::PauseSync) => self.pause_sync(),
            Admin::Verb(Verb::ResumeSync) => self.resume_sync(),
            Admin::Verb(Verb::NewCurrentUuid { clear_bitmap }) => {
                self.new_current_uuid(clear_bitmap)
            }
            Admin::Verb(Verb::Detach) => self.admin_detach(),
            Admin::Attach(p) => self.admin_attach(p),
            Admin::Down => self.admin_down(),
        }
    }

    fn admin_connect(&mut self, discard_my_data: bool) -> Result<(), AdminError> {
        if self.conn != ConnState::StandAlone {
            return Err(AdminError::AlreadyConnected);
        }
        if discard_my_data && self.role == Role::Primary {
            return Err(AdminError::PrimaryCannotDiscard);
        }
        self.want_connect = true;
        self.discard_my_data = discard_my_data;
        self.split_brain = false;
        self.conn = ConnState::Connecting;
        self.actions.push_back(Action::Connect);
        Ok(())
    }

    fn admin_disconnect(&mut self) {
        if self.conn == ConnState::StandAlone {
            return;
        }
        self.want_connect = false;
        if self.connected_states() {
            let msg = format!("{} was disconnected by its admin", self.cfg.node);
            self.send(disconnect(DisconnectReason::Admin, &msg));
            self.connection_lost("disconnected by admin");
        }
        self.conn = ConnState::StandAlone;
        self.actions.push_back(Action::CloseConnection);
    }

    /// Throw this node's data away: resync all of it from the peer.
    fn invalidate(&mut self) -> Result<(), AdminError> {
        if self.role == Role::Primary {
            return Err(AdminError::PrimaryCannotInvalidate);
        }
        if self.sync.is_some() {
            return Err(AdminError::ResyncRunning);
        }
        let connected = self.conn == ConnState::Connected;
        if connected && !matches!(self.peer_disk(), DiskState::UpToDate) {
            return Err(AdminError::PeerHasNoUpToDateData);
        }
        self.bitmap.set_all();
        self.disk = DiskState::Inconsistent;
        self.flags.set(MetaFlags::CONSISTENT, false);
        self.flags.set(MetaFlags::WAS_UP_TO_DATE, false);
        self.persist_super(false);
        self.persist_bitmap_all(None);
        if connected {
            self.send(Message::StartSync {
                sender_is_source: false,
                full: true,
            });
            self.start_sync(SyncRole::Target, true);
        }
        Ok(())
    }

    /// Throw the peer's data away: resync all of it from here.
    fn invalidate_remote(&mut self) -> Result<(), AdminError> {
        if self.conn != ConnState::Connected {
            return Err(AdminError::InvalidateRemoteNeedsIdle);
        }
        if self.link.peer().is_some_and(|p| p.role == Role::Primary) {
            return Err(AdminError::PeerPrimaryCannotBeInvalidated);
        }
        if self.disk != DiskState::UpToDate {
            return Err(AdminError::DiskNotUpToDate);
        }
        self.bitmap.set_all();
        self.send(Message::StartSync {
            sender_is_source: true,
            full: true,
        });
        self.start_sync(SyncRole::Source, true);
        Ok(())
    }

    fn admin_down(&mut self) -> Result<(), AdminError> {
        self.resume.cancel("the node is shutting down");
        if self.role == Role::Primary {
            self.demote()?;
        }
        self.down.requested = true;
        self.want_connect = false;
        self.maybe_finish_down();
        Ok(())
    }

    // ----- roles -------------------------------------------------------------

    /// An armed resumption after a crash (see `resume.rs`): promote once
    /// that keeps one writer, give up once it never can.
    pub(super) fn maybe_resume(&mut self) {
        let Some(crashed_gen) = self.resume.armed_for() else {
            return;
        };
        if self.down.requested {
            return;
        }
        let facts = resume::Facts {
            role: self.role,
            disk: self.disk,
            conn: self.conn,
            decided: self.link.decided(),
            syncing: self.sync.is_some(),
            peer_role: self.link.peer().map(|p| p.role),
            current: self.gens.current,
            peer_current: self.link.peer().map(|p| p.hello.gens.current),
        };
        match resume::decide(crashed_gen, &facts) {
            resume::Step::Wait(why) => self.resume.wait(why),
            resume::Step::GiveUp(why) => self.resume.give_up(&why),
            resume::Step::Promote => match self.promote(false) {
                Ok(()) => self.resume.done(),
                Err(e) => self.resume.give_up(&e.to_string()),
            },
        }
    }

    pub(super) fn promote(&mut self, force: bool) -> Result<(), AdminError> {
        if self.role == Role::Primary {
            return Ok(());
        }
        if self
            .link
            .decided_peer()
            .is_some_and(|p| p.role == Role::Primary)
        {
            return Err(AdminError::PeerIsPrimary);
        }
        if self
            .sync
            .as_ref()
            .is_some_and(|s| s.role == SyncRole::Target)
        {
            return Err(AdminError::SyncTarget);
        }
        if self.is_diskless() {
            if !self.peer_serves() {
                return Err(AdminError::DisklessNeedsPeer);
            }
            // Its data is the peer's: nothing of its own to persist.
            self.role = Role::Primary;
            self.send(Message::State {
                role: Role::Primary,
                disk: self.disk,
            });
            return Ok(());
        }
        let mut start_full_sync = false;
        // A Primary acknowledges writes; the superblock written below (which
        // gates them) must not claim otherwise.
        self.flags.set(MetaFlags::UNACKED_GEN, false);
        if self.disk == DiskState::Consistent && force {
            // A crashed Primary whose peer is gone: its own data is the best
            // there is. The activity-log extents stay in the bitmap.
            self.flags.set(MetaFlags::CRASHED_PRIMARY, false);
            self.set_up_to_date();
        }
        if self.disk != DiskState::UpToDate {
            if !force {
                return Err(AdminError::NotUpToDate { disk: self.disk });
            }
            start_full_sync = self.force_new_generation();
        }
        self.role = Role::Primary;
        self.flags.set(MetaFlags::PRIMARY_IND, true);
        if !self.link.decided()
            || !matches!(
                self.conn,
                ConnState::Connected | ConnState::SyncSource | ConnState::WFBitMapS
            )
        {
            if self.susp.freeze_on_disconnect && self.susp.mode.is_none() {
                // Promoted alone: the same as losing the peer while Primary.
                self.susp.mode = Some(SuspendMode::Hold);
            }
            // The peer may be promoted elsewhere meanwhile: fence it.
            self.fence_peer_if_needed(self.link.decided_peer().map(|p| p.disk), true);
            self.rotate_for_disconnected_writes();
        }
        self.persist_super(true);
        if self.link.decided() {
            self.send(Message::State {
                role: self.role,
                disk: self.disk,
            });
        }
        if start_full_sync {
            self.send(Message::StartSync {
                sender_is_source: true,
                full: true,
            });
            self.start_sync(SyncRole::Source, true);
        }
        Ok(())
    }

    /// `primary --force` without UpToDate data: this node's data becomes a
    /// new generation everybody syncs from, in full. Returns whether that
    /// full sync starts now (connected and idle).
    fn force_new_generation(&mut self) -> bool {
        if self.gens.current != UUID_JUST_CREATED {
            self.gens.history = [self.gens.current, self.gens.history[0]];
        }
        self.gens.current = self.new_uuid();
        self.gens.bitmap = 0;
        self.flags.set(MetaFlags::CONSISTENT, true);
        self.flags.set(MetaFlags::WAS_UP_TO_DATE, true);
        self.flags.set(MetaFlags::CRASHED_PRIMARY, false);
        self.disk = DiskState::UpToDate;
        self.bitmap.set_all();
        self.persist_bitmap_all(None);
        let start_full_sync = self.conn == ConnState::Connected;
        if self.connected_states() && !start_full_sync {
            // Mid-handshake or mid-sync: start over with the new generation.
            self.fail_connection(
                DisconnectReason::Admin,
                "primary --force changed the data generation".into(),
                false,
            );
        }
        start_full_sync
    }

    pub(super) fn demote(&mut self) -> Result<(), AdminError> {
        if self.role == Role::Secondary {
            return Ok(());
        }
        if !self.app.is_empty() {
            return Err(AdminError::RequestsInFlight {
                count: self.app.len(),
            });
        }
        self.role = Role::Secondary;
        // Held requests never reach a Secondary's data (nor the peer's).
        self.fail_held();
        self.susp.mode = None;
        self.susp.resume_pending = false;
        self.flags.set(MetaFlags::PRIMARY_IND, false);
        self.flags.set(MetaFlags::CRASHED_PRIMARY, false);
        // A clean demotion empties the activity log, so a later crash of this
        // node does not resync extents it no longer writes.
        if let Some(plan) = self.al.log.plan_empty().filter(|_| !self.is_diskless()) {
            self.write_al_plan(plan);
        }
        self.persist_super(false);
        if self.link.decided() {
            self.send(Message::State {
                role: self.role,
                disk: self.disk,
            });
        }
        Ok(())
    }

    pub(super) fn outdate(&mut self) -> Result<(), AdminError> {
        if self.role == Role::Primary {
            return Err(AdminError::PrimaryCannotOutdate);
        }
        if self.connected_states() && self.conn != ConnState::Connecting {
            return Err(AdminError::ConnectedCannotOutdate);
        }
        if matches!(self.disk, DiskState::UpToDate | DiskState::Consistent) {
            tracing::info!("data marked Outdated");
            self.disk = DiskState::Outdated;
            self.flags.set(MetaFlags::WAS_UP_TO_DATE, false);
            self.flags.set(MetaFlags::CRASHED_PRIMARY, false);
            self.persist_super(false);
        }
        Ok(())
    }
}
