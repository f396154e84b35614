//! Resuming the Primary role after a crash of the daemon alone.
//!
//! When only the node daemon dies (`kill -9`, a bug) while Primary, the
//! kernel may still hold the device and its I/O (ublk user recovery): the
//! applications wait, and the restarted daemon should carry on where the
//! dead one stopped, without an operator. It starts Secondary with
//! Consistent data (its activity-log extents may differ from the peer) and
//! resyncs those extents. Once *armed* (the driver knows whether anyone
//! waits for the device), the node promotes itself when, and only when,
//! doing so keeps one writer:
//!
//! - connected, the activity-log resync done (UpToDate, no resync under
//!   way), the peer Secondary, and both on the generation the dead daemon
//!   served: promote. The peer cannot have written meanwhile (it would have
//!   started a new generation), so this node simply continues.
//! - the peer is Primary, or the data moved to another generation (the
//!   peer was promoted meanwhile, wrote, maybe was demoted again, and this
//!   node resynced its writes): give up. The peer's writes are the newer
//!   ones; the old device's held I/O belongs to data that no longer exists.
//! - the peer cannot be reached: wait. It may have been promoted while this
//!   node was dead, and nothing here can tell; promoting alone could make
//!   two writers. `primary --force` resumes without it (an operator who
//!   knows the peer is down), an admin `secondary` gives up.
//!
//! The decision is [`decide`], a pure function of what the node knows.

use crate::meta::MetaFlags;
use crate::wire::{DiskState, Role};

use super::types::{AdminError, ConnState};

/// A node's resumption state.
#[derive(Debug, Clone, Default)]
pub(super) struct Resume {
    /// The generation the last run served when it ended while Primary:
    /// what a resumption continues. `None`: it did not end as Primary.
    crashed_gen: Option<u64>,
    armed: bool,
    /// What it waits for, or what became of it (status).
    note: Option<String>,
}

impl Resume {
    /// From the superblock found at start: PRIMARY_IND (the last run was
    /// Primary) or CRASHED_PRIMARY (an earlier one was, and its activity
    /// log is not resynced yet, so its device may still be waiting).
    pub fn at_start(flags: MetaFlags, current: u64) -> Self {
        let crashed = flags.has(MetaFlags::PRIMARY_IND) || flags.has(MetaFlags::CRASHED_PRIMARY);
        Self {
            crashed_gen: crashed.then_some(current),
            ..Self::default()
        }
    }

    pub fn arm(&mut self) -> Result<(), AdminError> {
        if self.crashed_gen.is_none() {
            return Err(AdminError::NoRoleToResume);
        }
        if !self.armed {
            tracing::info!("armed: resuming as Primary once that keeps one writer");
        }
        self.armed = true;
        Ok(())
    }

    /// The generation to continue, while armed.
    pub fn armed_for(&self) -> Option<u64> {
        self.crashed_gen.filter(|_| self.armed)
    }

    pub fn note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    pub fn wait(&mut self, why: &str) {
        if self.note.as_deref() != Some(why) {
            tracing::info!("resume as Primary: {why}");
            self.note = Some(why.to_owned());
        }
    }

    pub fn give_up(&mut self, why: &str) {
        tracing::warn!("not resuming as Primary: {why}");
        self.note = Some(format!("not resumed: {why}"));
        self.armed = false;
    }

    pub fn cancel(&mut self, why: &str) {
        if self.armed {
            self.note = Some(format!("not resumed: {why}"));
            self.armed = false;
        }
    }

    pub fn done(&mut self) {
        tracing::info!(
            "resumed as Primary after the crash of the last run (activity log resynced, peer \
             Secondary on the same generation)"
        );
        self.note = Some("resumed as Primary after a crash".into());
        self.armed = false;
    }
}

/// What the node knows when it decides (see [`decide`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Facts {
    pub role: Role,
    pub disk: DiskState,
    pub conn: ConnState,
    /// The handshake is done: `peer_role` and `peer_current` are the peer's word.
    pub decided: bool,
    /// A resync or verify is under way.
    pub syncing: bool,
    pub peer_role: Option<Role>,
    pub current: u64,
    pub peer_current: Option<u64>,
}

/// What to do about an armed resumption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    /// Not yet; why (for status).
    Wait(&'static str),
    Promote,
    /// Never for this crash; why (logged and shown in status).
    GiveUp(String),
}

/// Wait reason while the peer is not connected.
pub(super) const WAIT_PEER: &str =
    "waiting for the peer: it may have been promoted while this node \
     was down, so resuming alone could make a second writer (`repctl primary --force` resumes \
     without it; `repctl secondary` gives up)";
const WAIT_SYNC: &str = "waiting for the activity-log resync from the peer";

/// Decides an armed resumption of the role held when the last run crashed
/// in generation `crashed_gen`.
pub(super) fn decide(crashed_gen: u64, f: &Facts) -> Step {
    if f.role == Role::Primary {
        return Step::GiveUp("already Primary: promoted by an admin".into());
    }
    if f.decided && f.peer_role == Some(Role::Primary) {
        return Step::GiveUp(
            "the peer is Primary: it was promoted while this node was down; \
             staying Secondary so that only one node writes"
                .into(),
        );
    }
    if f.current != crashed_gen {
        return Step::GiveUp(format!(
            "the data moved from generation {crashed_gen:016X} to {:016X} (the peer was \
             Primary and wrote while this node was down): the held I/O belongs to data that \
             no longer exists",
            f.current
        ));
    }
    let connected = f.decided
        && matches!(
            f.conn,
            ConnState::Connected
                | ConnState::SyncSource
                | ConnState::SyncTarget
                | ConnState::WFBitMapS
                | ConnState::WFBitMapT
                | ConnState::VerifySource
                | ConnState::VerifyTarget
        );
    if !connected {
        return Step::Wait(WAIT_PEER);
    }
    if f.syncing || f.conn != ConnState::Connected || f.disk != DiskState::UpToDate {
        return Step::Wait(WAIT_SYNC);
    }
    if f.peer_current != Some(f.current) {
        // The peer's generation comes with its next Uuids message.
        return Step::Wait(WAIT_SYNC);
    }
    Step::Promote
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 0xA0;

    fn synced() -> Facts {
        Facts {
            role: Role::Secondary,
            disk: DiskState::UpToDate,
            conn: ConnState::Connected,
            decided: true,
            syncing: false,
            peer_role: Some(Role::Secondary),
            current: G,
            peer_current: Some(G),
        }
    }

    #[test]
    fn promotes_only_when_synced_with_a_secondary_peer_of_the_same_generation() {
        assert_eq!(decide(G, &synced()), Step::Promote);
        let syncing = Facts {
            conn: ConnState::SyncTarget,
            disk: DiskState::Inconsistent,
            syncing: true,
            ..synced()
        };
        assert_eq!(decide(G, &syncing), Step::Wait(WAIT_SYNC));
        let consistent = Facts {
            disk: DiskState::Consistent,
            ..synced()
        };
        assert_eq!(decide(G, &consistent), Step::Wait(WAIT_SYNC));
        let other_peer_gen = Facts {
            peer_current: Some(0xB0),
            ..synced()
        };
        assert_eq!(decide(G, &other_peer_gen), Step::Wait(WAIT_SYNC));
    }

    #[test]
    fn waits_without_the_peer() {
        for conn in [
            ConnState::StandAlone,
            ConnState::Connecting,
            ConnState::Handshake,
        ] {
            let f = Facts {
                conn,
                decided: false,
                disk: DiskState::Consistent,
                peer_role: None,
                peer_current: None,
                ..synced()
            };
            assert_eq!(decide(G, &f), Step::Wait(WAIT_PEER), "{conn:?}");
        }
    }

    #[test]
    fn gives_up_when_the_peer_was_promoted_or_the_data_moved_on() {
        let peer_primary = Facts {
            peer_role: Some(Role::Primary),
            conn: ConnState::SyncTarget,
            syncing: true,
            ..synced()
        };
        assert!(
            matches!(decide(G, &peer_primary), Step::GiveUp(w) if w.contains("peer is Primary"))
        );
        let moved = Facts {
            current: 0xC0,
            peer_current: Some(0xC0),
            ..synced()
        };
        assert!(matches!(decide(G, &moved), Step::GiveUp(w) if w.contains("moved")));
        let promoted = Facts {
            role: Role::Primary,
            ..synced()
        };
        assert!(matches!(decide(G, &promoted), Step::GiveUp(_)));
    }
}
