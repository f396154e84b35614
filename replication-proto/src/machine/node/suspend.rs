//! Suspended I/O: completions and requests held (or failed) while the
//! node may not acknowledge writes, and the resume that lets them go.

use crate::machine::types::ErrorKind;
use bytes::Bytes;

use crate::machine::ids::AppId;
use crate::machine::types::{errno, Action, Event, SuspendMode};
use crate::meta::MetaFlags;

use super::state::*;
use super::Node;

impl Node {
    pub(super) fn complete(&mut self, id: AppId, result: Result<Option<Bytes>, i32>) {
        // Read data passes; an acknowledgement of a write or flush must not
        // leave a node that lost quorum (the other side may take over).
        match self.susp.mode {
            Some(SuspendMode::Hold) if !matches!(result, Ok(Some(_))) => {
                self.susp.held_out.push_back(HeldCompletion { id, result });
            }
            Some(SuspendMode::Fail) if !matches!(result, Ok(Some(_))) => {
                self.actions.push_back(Action::Complete {
                    id,
                    result: Err(errno::EIO),
                });
            }
            _ => self.actions.push_back(Action::Complete { id, result }),
        }
    }

    pub(super) fn suspend_io(&mut self, mode: SuspendMode) {
        self.susp.mode = Some(mode);
        // A resume still waiting for its superblock does not happen.
        self.susp.resume_pending = false;
        if mode == SuspendMode::Fail {
            self.fail_held();
        }
    }

    /// End everything held with EIO (io-error mode, or the node lets go).
    pub(super) fn fail_held(&mut self) {
        for ev in std::mem::take(&mut self.susp.held_in) {
            if let Event::AppWrite { id, .. } | Event::AppFlush { id } = ev {
                self.actions.push_back(Action::Complete {
                    id,
                    result: Err(errno::EIO),
                });
            }
        }
        for HeldCompletion { id, .. } in std::mem::take(&mut self.susp.held_out) {
            self.actions.push_back(Action::Complete {
                id,
                result: Err(errno::EIO),
            });
        }
    }

    pub(super) fn resume_io(&mut self) {
        if self.susp.mode.is_none() || self.susp.resume_pending {
            return;
        }
        // A Diskless node has no superblock to record the resume in (its
        // disk failed or was detached; an attached disk brings its own).
        if self.flags.has(MetaFlags::UNACKED_GEN) && !self.is_diskless() {
            // What is let through now is acknowledged in this generation:
            // the flag must be off on disk first, or a crash right after an
            // acknowledgement would rejoin as target and drop that write.
            self.flags.set(MetaFlags::UNACKED_GEN, false);
            self.susp.resume_pending = true;
            let token = self.meta_token();
            self.ops.meta.insert(token, MetaOp::ResumeSuper);
            self.actions.push_back(Action::WriteSuper {
                token,
                gens: self.gens,
                flags: self.flags,
                promoted_at_ms: self.promotion.at_ms,
            });
            return;
        }
        self.release_held();
    }

    /// End the suspension: held completions out, held requests in (in order).
    pub(super) fn release_held(&mut self) {
        self.susp.mode = None;
        for HeldCompletion { id, result } in std::mem::take(&mut self.susp.held_out) {
            self.actions.push_back(Action::Complete { id, result });
        }
        for ev in std::mem::take(&mut self.susp.held_in) {
            self.handle(self.now, ev);
        }
    }

    /// The superblock without UNACKED_GEN landed: let held I/O go.
    pub(super) fn resume_super_written(&mut self, result: Result<(), i32>) {
        if !std::mem::take(&mut self.susp.resume_pending) {
            // Suspended again or demoted meanwhile.
            return;
        }
        if result.is_ok() || self.is_diskless() {
            // Failed on a disk that is gone now (on-io-error = detach): no
            // superblock to record it in, as in `resume_io`.
            self.release_held();
        } else {
            self.flags.set(MetaFlags::UNACKED_GEN, true);
            self.error(
                ErrorKind::Metadata,
                "could not record the resume in the superblock: I/O stays frozen; \
                 resume again once the metadata disk works"
                    .into(),
            );
        }
    }
}
