//! Fencing the peer (DRBD's `fencing` and its `fence-peer` and
//! `unfence-peer` handlers): a Primary that loses a peer whose data may
//! still be taken for current asks the driver to fence it, holding writes
//! meanwhile under `resource-and-stonith`; the handler's exit code decides
//! whether it writes on alone. Once a resync made both UpToDate again, the
//! fencing is undone.

use crate::machine::fencing::{FenceOutcome, FenceStatus, Fencing};
use crate::machine::types::{Action, ConnState, ErrorKind, Hook, SuspendMode};
use crate::meta::MetaFlags;
use crate::wire::{DiskState, Role};

use super::Node;

/// The fencing the node started and what became of it.
#[derive(Debug, Default)]
pub(super) struct Fence {
    /// A fence-peer handler runs (its `FenceDone` is due).
    running: bool,
    /// The fencing froze I/O (resource-and-stonith); a successful handler
    /// lets it go.
    froze: bool,
    last_exit: Option<i32>,
    last_outcome: Option<FenceOutcome>,
}

impl Node {
    /// The Primary is about to go on without its peer (the connection is
    /// lost, or it was promoted alone): fence a peer whose data may still
    /// be current. Call it before the writes the peer did not confirm
    /// complete, so that resource-and-stonith holds their acknowledgements.
    /// `peer_disk`: the peer's disk as last heard (`None`: not heard since
    /// this node started). `promoting`: a promotion without the peer, which
    /// holds writes under either policy (DRBD refuses such a promotion until
    /// the peer is fenced; here the node is Primary, its writes held).
    pub(super) fn fence_peer_if_needed(&mut self, peer_disk: Option<DiskState>, promoting: bool) {
        if self.cfg.fencing == Fencing::DontCare
            || self.role != Role::Primary
            || self.flags.has(MetaFlags::PEER_OUTDATED)
        {
            return;
        }
        // An Inconsistent or Outdated peer cannot be promoted with its data:
        // nothing to fence (DRBD fences only a peer disk of DUnknown or better).
        if matches!(
            peer_disk,
            Some(DiskState::Inconsistent | DiskState::Outdated | DiskState::Diskless)
        ) {
            return;
        }
        if (self.cfg.fencing == Fencing::ResourceAndStonith || promoting)
            && self.susp.mode.is_none()
        {
            tracing::warn!("peer lost: I/O frozen until the fence-peer handler fences it");
            self.susp.mode = Some(SuspendMode::Hold);
            self.susp.resume_pending = false;
            self.fence.froze = true;
        }
        if !self.fence.running {
            tracing::info!("running the fence-peer handler");
            self.fence.running = true;
            self.actions.push_back(Action::Hook(Hook::FencePeer));
        }
    }

    /// The fence-peer handler ended with `exit`.
    pub(super) fn fence_done(&mut self, exit: Option<i32>) {
        if !std::mem::take(&mut self.fence.running) {
            return;
        }
        let outcome = FenceOutcome::of(exit);
        self.fence.last_exit = exit;
        self.fence.last_outcome = Some(outcome);
        let froze = std::mem::take(&mut self.fence.froze);
        if outcome.peer_fenced() {
            tracing::info!(?exit, ?outcome, "fence-peer: the peer is fenced");
            self.flags.set(MetaFlags::PEER_OUTDATED, true);
            self.persist_super(false);
            if froze && self.susp.mode == Some(SuspendMode::Hold) && !self.susp.freeze_on_disconnect
            {
                self.resume_io();
            }
            return;
        }
        let what = match outcome {
            FenceOutcome::PeerPrimary => "the peer is Primary (exit 6)".to_owned(),
            FenceOutcome::Failed(Some(code)) => format!("it failed (exit {code})"),
            _ => "it timed out, was killed or could not start".to_owned(),
        };
        let frozen = self.susp.mode.is_some() && self.role == Role::Primary;
        let then = if frozen {
            "I/O stays frozen; once the peer is known fenced (outdated, down or shot), \
             `repctl resume-io` lets it go"
        } else {
            "the peer is not known fenced"
        };
        self.fence.froze = froze && frozen;
        self.error(
            ErrorKind::Fencing,
            format!("fence-peer handler: {what}: {then}"),
        );
    }

    /// The peer is back (the connection decided, this node the Primary it
    /// replicates from): what the fencing held may go, replicated. A
    /// handler still running answers into the record only.
    fn maybe_thaw(&mut self) {
        if self.fence.froze
            && self.susp.mode == Some(SuspendMode::Hold)
            && !self.susp.freeze_on_disconnect
            && self.link.decided()
            && matches!(
                self.conn,
                ConnState::Connected | ConnState::SyncSource | ConnState::WFBitMapS
            )
        {
            tracing::info!("the peer is back: I/O held for fencing goes on");
            self.fence.froze = false;
            self.resume_io();
        }
    }

    /// Both sides UpToDate and connected again: the peer is no longer
    /// outdated; undo the fencing (the unfence-peer handler).
    pub(super) fn maybe_unfence(&mut self) {
        self.maybe_thaw();
        if !self.flags.has(MetaFlags::PEER_OUTDATED)
            || self.conn != ConnState::Connected
            || self.disk != DiskState::UpToDate
            || self
                .link
                .decided_peer()
                .is_none_or(|p| p.disk != DiskState::UpToDate)
        {
            return;
        }
        tracing::info!("the peer is UpToDate again: unfencing it");
        self.flags.set(MetaFlags::PEER_OUTDATED, false);
        self.persist_super(false);
        if self.cfg.fencing != Fencing::DontCare {
            self.actions.push_back(Action::Hook(Hook::UnfencePeer));
        }
    }

    pub(super) fn fence_status(&self) -> FenceStatus {
        FenceStatus {
            policy: self.cfg.fencing,
            running: self.fence.running,
            frozen: self.fence.froze && self.susp.mode.is_some(),
            peer_fenced: self.flags.has(MetaFlags::PEER_OUTDATED),
            last_exit: self.fence.last_exit,
            last_outcome: self.fence.last_outcome,
        }
    }
}
