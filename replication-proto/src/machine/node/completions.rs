//! Completions of local data, flush and metadata operations.

use crate::machine::types::ErrorKind;
use bytes::Bytes;

use crate::machine::ids::{AppId, IoToken, MetaToken};
use crate::machine::io::Span;
use crate::wire::Message;

use super::state::*;
use super::Node;

impl Node {
    // ----- completions -------------------------------------------------------

    pub(super) fn local_done(&mut self, token: IoToken, result: Result<Option<Bytes>, i32>) {
        if let Some(f) = self.ops.flush.remove(&token) {
            self.detach_on_error(&result);
            self.flush_done(f, result.map(|_| ()));
            self.maybe_close_disk();
            return;
        }
        let (done, started) = self.ops.io.complete(token);
        let Some((span, op)) = done else { return };
        self.detach_on_error(&result);
        // The finished op's own effects (sends) go out before any op it
        // unblocked starts: the wire order must match the disk order.
        self.finish_local(span, op, result);
        for t in started {
            self.issue_local(t);
        }
        self.maybe_finish_down();
        self.maybe_close_disk();
    }

    /// A data operation finished: its own step, by kind.
    pub(super) fn finish_local(
        &mut self,
        span: Span,
        op: LocalOp,
        result: Result<Option<Bytes>, i32>,
    ) {
        let write = matches!(
            op,
            LocalOp::AppWrite { .. }
                | LocalOp::PeerWrite { .. }
                | LocalOp::ResyncWrite { .. }
                | LocalOp::RepairWrite
        );
        if write && result.is_ok() {
            self.error_ended(ErrorKind::LocalIo);
        }
        match op {
            LocalOp::AppWrite { id } => self.app_write_done(id, span, result),
            LocalOp::AppRead { id } => self.app_read_done(id, span, result),
            LocalOp::PeerRead { id, epoch } => self.peer_read_done(id, epoch, span, result),
            LocalOp::RepairWrite => self.repair_write_done(span, result),
            LocalOp::PeerWrite {
                seq,
                epoch,
                recv_idx,
            } => self.peer_write_done(seq, epoch, recv_idx, span, result),
            LocalOp::ResyncRead {
                id,
                epoch,
                peer_digest,
            } => self.resync_read_done(id, epoch, peer_digest, span, result),
            LocalOp::ResyncWrite { id, epoch } => self.resync_write_done(id, epoch, span, result),
            LocalOp::CsumRead { id, epoch } => self.csum_read_done(id, epoch, span, result),
            LocalOp::VerifyRead { id, epoch } => self.verify_read_done(id, epoch, span, result),
            LocalOp::VerifyCompare { id, epoch, digest } => {
                self.verify_compare_done(id, epoch, digest, span, result);
            }
        }
    }

    pub(super) fn flush_done(&mut self, f: FlushOp, result: Result<(), i32>) {
        match f {
            FlushOp::App { id } => self.app_flush_done(id, result),
            FlushOp::PeerBarrier { id, epoch } => {
                if epoch == self.link.epoch && self.link.decided() && result.is_ok() {
                    self.send(Message::BarrierAck { id });
                }
            }
            FlushOp::SyncDone { epoch } => self.sync_done_flushed(epoch, result),
            FlushOp::SyncStart { epoch } => self.sync_start_flushed(epoch, result),
            FlushOp::AlPreflush => {
                if result.is_err() {
                    self.error(
                        ErrorKind::LocalIo,
                        "local flush before an activity-log transaction failed".into(),
                    );
                }
                self.al_stage_done();
            }
            FlushOp::Down => self.down_flushed(),
        }
    }

    pub(super) fn meta_done(&mut self, token: MetaToken, result: Result<(), i32>) {
        // Detach first (on-io-error = detach): a failed activity-log write
        // is usually the first sign of a dead disk, and the writes waiting
        // for it must then go to the peer, not fail with EIO.
        if result.is_err() {
            self.detach_on_error(&Err(crate::machine::types::errno::EIO));
        }
        self.meta_op_done(token, result);
        self.maybe_close_disk();
    }

    fn meta_op_done(&mut self, token: MetaToken, result: Result<(), i32>) {
        let Some(op) = self.ops.meta.remove(&token) else {
            return;
        };
        match result {
            Err(e) => self.error(
                ErrorKind::Metadata,
                format!("metadata write failed (errno {e})"),
            ),
            Ok(()) => self.error_ended(ErrorKind::Metadata),
        }
        match op {
            MetaOp::Super { gate } => {
                if gate {
                    debug_assert!(self.al.super_gate > 0, "gating superblock not counted");
                    self.al.super_gate = self.al.super_gate.saturating_sub(1);
                    self.process_al_wait();
                }
            }
            MetaOp::ResumeSuper => self.resume_super_written(result),
            MetaOp::EvictBitmap => self.al_stage_done(),
            MetaOp::Al => self.al_written(result),
            MetaOp::Bitmap { sync_epoch } => {
                if let Some(ep) = sync_epoch {
                    if ep == self.link.epoch {
                        if let Some(s) = self.sync.as_mut() {
                            s.persisted_one();
                        }
                        self.pump_sync();
                    }
                }
            }
        }
    }

    /// One of the writes an activity-log transaction waits for landed.
    fn al_stage_done(&mut self) {
        let AlTxn::Staging { pending, .. } = &mut self.al.txn else {
            debug_assert!(false, "activity-log stage done without a plan");
            return;
        };
        debug_assert!(*pending > 0, "activity-log stage not counted");
        *pending = pending.saturating_sub(1);
        if *pending == 0 {
            self.emit_al();
        }
    }

    pub(super) fn app_flush_done(&mut self, id: AppId, result: Result<(), i32>) {
        if let Some(AppReq::Flush {
            local_done,
            local_err,
            ..
        }) = self.app.get_mut(&id)
        {
            *local_done = true;
            *local_err = result.err();
        }
        self.try_complete_flush(id);
    }
}
