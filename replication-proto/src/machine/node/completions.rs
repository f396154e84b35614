//! Completions of local data, flush and metadata operations.

use bytes::Bytes;

use crate::machine::io::Span;
use crate::machine::types::{errno, Action, ConnState};
use crate::meta::MetaFlags;
use crate::wire::{disconnect, DisconnectReason, Message};

use super::state::*;
use super::{Node, MAX_IO};

impl Node {
    // ----- completions -------------------------------------------------------

    pub(super) fn local_done(&mut self, token: u64, result: Result<Option<Bytes>, i32>) {
        if let Some(f) = self.ops.flush.remove(&token) {
            self.flush_done(f, result.map(|_| ()));
            return;
        }
        let (done, started) = self.ops.io.complete(token);
        let Some((span, op)) = done else { return };
        // The finished op's own effects (sends) go out before any op it
        // unblocked starts: the wire order must match the disk order.
        self.finish_local(span, op, result);
        for t in started {
            self.issue_local(t);
        }
        self.maybe_finish_down();
    }

    pub(super) fn finish_local(
        &mut self,
        span: Span,
        op: LocalOp,
        result: Result<Option<Bytes>, i32>,
    ) {
        let len32 = u32::try_from(span.len()).unwrap_or(MAX_IO);
        match op {
            LocalOp::AppWrite { id } => {
                if let Err(e) = &result {
                    // on-io-error pass-on: the application gets the error,
                    // while the peer may hold the new data and this disk
                    // anything: the range is marked so that the next resync
                    // makes both copies equal again.
                    self.bitmap.set_range(span.start, span.len());
                    self.error(format!(
                        "local write of {} bytes at {} failed (errno {e}): the request \
                         failed, the range is marked out of sync",
                        span.len(),
                        span.start
                    ));
                }
                if let Some(AppReq::Write {
                    local_done,
                    local_err,
                    ..
                }) = self.app.get_mut(&id)
                {
                    *local_done = true;
                    *local_err = result.err();
                }
                self.try_complete_write(id);
            }
            LocalOp::AppRead { id } => {
                self.app.remove(&id);
                if let Ok(Some(d)) = &result {
                    self.stats.read_bytes += d.len() as u64;
                }
                let r = match result {
                    Ok(Some(d)) if d.len() as u64 == span.len() => Ok(Some(d)),
                    Ok(_) => Err(errno::EIO),
                    Err(e) => Err(e),
                };
                self.complete(id, r);
            }
            LocalOp::PeerWrite {
                seq,
                epoch,
                recv_idx,
            } => {
                self.recv.incomplete.remove(&recv_idx);
                self.recv.unacked = self.recv.unacked.saturating_sub(1);
                if epoch == self.link.epoch && self.link.decided {
                    if result.is_ok() {
                        self.send(Message::WriteAck { seq });
                    } else {
                        self.error(format!(
                            "local write of {} bytes at {} failed",
                            span.len(),
                            span.start
                        ));
                        self.send(Message::NegAck { seq });
                    }
                }
                self.check_peer_barriers();
            }
            LocalOp::ResyncRead {
                id,
                epoch,
                peer_digest,
            } => {
                self.recv.unacked = self.recv.unacked.saturating_sub(1);
                if epoch != self.link.epoch || !self.link.decided {
                    return;
                }
                match result {
                    Ok(Some(d)) if d.len() as u64 == span.len() => {
                        self.stats.read_bytes += d.len() as u64;
                        if peer_digest == Some(crc(&d)) {
                            self.bitmap.clear_range(span.start, span.len());
                            self.send(Message::InSync {
                                id,
                                offset: span.start,
                                len: len32,
                            });
                        } else {
                            self.send(Message::ResyncData {
                                id,
                                offset: span.start,
                                data: d,
                            });
                        }
                    }
                    _ => {
                        self.error(format!(
                            "local read of {} bytes at {} failed during resync",
                            span.len(),
                            span.start
                        ));
                        self.send(Message::ResyncNeg {
                            id,
                            offset: span.start,
                            len: len32,
                        });
                    }
                }
            }
            LocalOp::ResyncWrite { id, epoch } => {
                if epoch != self.link.epoch {
                    return;
                }
                if result.is_err() {
                    self.fail_connection(
                        DisconnectReason::IoError,
                        format!("local write failed during resync at {}", span.start),
                        false,
                    );
                    return;
                }
                self.bitmap.clear_range(span.start, span.len());
                if let Some(s) = self.sync.as_mut() {
                    s.inflight.remove(&id);
                }
                self.send(Message::ResyncAck {
                    id,
                    offset: span.start,
                    len: len32,
                });
                self.pump_sync();
            }
            LocalOp::CsumRead { id, epoch } => {
                if epoch != self.link.epoch {
                    return;
                }
                match result {
                    Ok(Some(d)) if d.len() as u64 == span.len() => {
                        self.stats.read_bytes += d.len() as u64;
                        self.send(Message::ChecksumRequest {
                            id,
                            offset: span.start,
                            len: len32,
                            digest: crc(&d),
                        });
                    }
                    // Unreadable here: ask for the data outright.
                    _ => self.send(Message::ResyncRequest {
                        id,
                        offset: span.start,
                        len: len32,
                    }),
                }
            }
            LocalOp::VerifyRead { id, epoch } => {
                if epoch != self.link.epoch {
                    return;
                }
                let digest = match result {
                    Ok(Some(d)) if d.len() as u64 == span.len() => {
                        self.stats.read_bytes += d.len() as u64;
                        crc(&d)
                    }
                    // An unreadable block verifies as different.
                    _ => !0,
                };
                self.send(Message::VerifyRequest {
                    id,
                    offset: span.start,
                    len: len32,
                    digest,
                });
            }
            LocalOp::VerifyCompare { id, epoch, digest } => {
                self.recv.unacked = self.recv.unacked.saturating_sub(1);
                if epoch != self.link.epoch {
                    return;
                }
                let in_sync = matches!(&result, Ok(Some(d)) if d.len() as u64 == span.len() && crc(d) == digest);
                if let Ok(Some(d)) = &result {
                    self.stats.read_bytes += d.len() as u64;
                }
                if !in_sync {
                    self.bitmap.set_range(span.start, span.len());
                }
                self.send(Message::VerifyReply {
                    id,
                    offset: span.start,
                    len: len32,
                    in_sync,
                });
            }
        }
    }

    pub(super) fn flush_done(&mut self, f: FlushOp, result: Result<(), i32>) {
        match f {
            FlushOp::App { id } => {
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
            FlushOp::PeerBarrier { id, epoch } => {
                if epoch == self.link.epoch && self.link.decided && result.is_ok() {
                    self.send(Message::BarrierAck { id });
                }
            }
            FlushOp::SyncDone { epoch } => {
                if epoch == self.link.epoch && self.link.decided {
                    if result.is_ok() {
                        // Every block is here and durable: UpToDate.
                        self.sync = None;
                        self.conn = ConnState::Connected;
                        self.flags.set(MetaFlags::CRASHED_PRIMARY, false);
                        self.set_up_to_date();
                        self.persist_bitmap_all(None);
                        tracing::info!(node = %self.cfg.node, "resync finished as target: UpToDate");
                        self.send(Message::SyncDone);
                        self.send(Message::State {
                            role: self.role,
                            disk: self.disk,
                        });
                    } else {
                        self.fail_connection(
                            DisconnectReason::IoError,
                            "local flush failed at the end of the resync".into(),
                            false,
                        );
                    }
                }
            }
            FlushOp::SyncStart { epoch } => {
                if epoch != self.link.epoch || !self.link.decided {
                    return;
                }
                if result.is_err() {
                    self.fail_connection(
                        DisconnectReason::IoError,
                        "local flush failed at the start of a resync".into(),
                        false,
                    );
                    return;
                }
                // The driver's metadata queue keeps order: the superblock
                // (Inconsistent, new generation) lands before the bitmap,
                // and the resync waits for the bitmap.
                self.persist_super(false);
                let token = self.token();
                self.ops.meta.insert(
                    token,
                    MetaOp::Bitmap {
                        sync_epoch: Some(epoch),
                    },
                );
                self.stats.bm_writes += 1;
                self.actions.push_back(Action::WriteBitmap {
                    token,
                    first_word: 0,
                    words: self.bitmap.words().to_vec(),
                });
            }
            FlushOp::AlPreflush => {
                if result.is_err() {
                    self.error("local flush before an activity-log transaction failed".into());
                }
                self.al.stage_pending = self.al.stage_pending.saturating_sub(1);
                if self.al.stage_pending == 0 {
                    self.emit_al();
                }
            }
            FlushOp::Down => {
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
    }

    pub(super) fn meta_done(&mut self, token: u64, result: Result<(), i32>) {
        let Some(op) = self.ops.meta.remove(&token) else {
            return;
        };
        if let Err(e) = result {
            self.error(format!("metadata write failed (errno {e})"));
        }
        match op {
            MetaOp::Super { gate } => {
                if gate {
                    self.al.super_gate = self.al.super_gate.saturating_sub(1);
                    self.process_al_wait();
                }
            }
            MetaOp::ResumeSuper => {
                if !std::mem::take(&mut self.susp.resume_pending) {
                    // Suspended again or demoted meanwhile.
                    return;
                }
                if result.is_ok() {
                    self.release_held();
                } else {
                    self.flags.set(MetaFlags::UNACKED_GEN, true);
                    self.error(
                        "could not record the resume in the superblock: I/O stays frozen; \
                         resume again once the metadata disk works"
                            .into(),
                    );
                }
            }
            MetaOp::EvictBitmap => {
                self.al.stage_pending = self.al.stage_pending.saturating_sub(1);
                if self.al.stage_pending == 0 {
                    self.emit_al();
                }
            }
            MetaOp::Al => {
                self.al.plan = None;
                if result.is_ok() {
                    self.al.log.committed();
                } else {
                    self.al.log.failed();
                    // Writes that needed it cannot proceed safely.
                    let waiting: Vec<u64> = self.al.wait.drain(..).collect();
                    for id in waiting {
                        self.app.remove(&id);
                        self.complete(id, Err(errno::EIO));
                    }
                }
                self.process_al_wait();
            }
            MetaOp::Bitmap { sync_epoch } => {
                if let Some(ep) = sync_epoch {
                    if ep == self.link.epoch {
                        if let Some(s) = self.sync.as_mut() {
                            s.persist_pending = s.persist_pending.saturating_sub(1);
                        }
                        self.pump_sync();
                    }
                }
            }
        }
    }
}
