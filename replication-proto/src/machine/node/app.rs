//! Application I/O on the Primary: reads, writes through the activity
//! log, replication to the peer, acknowledgements, flushes and barriers.

use crate::machine::types::ErrorKind;
use std::collections::VecDeque;

use bytes::Bytes;

use crate::machine::al::AlPlan;
use crate::machine::ids::{AppId, IoToken};
use crate::machine::io::Span;
use crate::machine::types::{errno, Action, Payload};
use crate::meta::BM_BLOCK_SIZE;
use crate::wire::{data_flags, Message, Protocol, Role};

use super::state::*;
use super::{Node, MAX_IO};

impl Node {
    // ----- application I/O ---------------------------------------------------

    pub(super) fn valid_range(&self, offset: u64, len: u64) -> bool {
        len > 0
            && offset % 512 == 0
            && len % 512 == 0
            && offset
                .checked_add(len)
                .is_some_and(|e| e <= self.cfg.data_bytes)
    }

    pub(super) fn app_read(&mut self, id: AppId, offset: u64, len: u32) {
        if self.role != Role::Primary {
            self.complete(id, Err(errno::EROFS));
            return;
        }
        if !self.valid_range(offset, u64::from(len)) || len > MAX_IO || self.app.contains_key(&id) {
            self.complete(id, Err(errno::EINVAL));
            return;
        }
        self.app.insert(id, AppReq::Read);
        self.count_app_io(len);
        let span = Span::new(offset, u64::from(len));
        if self.is_diskless() {
            self.remote_read(id, span, false);
            return;
        }
        self.submit_local(span, LocalOp::AppRead { id });
    }

    pub(super) fn app_write(
        &mut self,
        id: AppId,
        offset: u64,
        payload: Payload,
        len: u32,
        fua: bool,
    ) {
        if self.role != Role::Primary || self.down.requested {
            self.complete(id, Err(errno::EROFS));
            return;
        }
        let bad_len = match &payload {
            Payload::Data(d) => d.len() != len as usize || len > MAX_IO,
            Payload::Trim | Payload::Zeroes => false,
        };
        if bad_len || !self.valid_range(offset, u64::from(len)) || self.app.contains_key(&id) {
            self.complete(id, Err(errno::EINVAL));
            return;
        }
        self.count_app_io(len);
        let span = Span::new(offset, u64::from(len));
        let extents = Extents {
            first: extent_of(offset),
            last: extent_of(span.end - 1),
        };
        if !self.al.log.is_hot(extents.first, extents.last) {
            self.stats.al_misses += 1;
        }
        self.app.insert(
            id,
            AppReq::Write {
                span,
                payload,
                fua,
                extents,
                queued: true,
                local_done: false,
                local_err: None,
                peer: PeerWait::None,
            },
        );
        if self.is_diskless() {
            self.diskless_start_write(id);
            return;
        }
        self.al.wait.push_back(id);
        self.process_al_wait();
    }

    /// Start queued writes whose extents are in the activity log; plan a
    /// transaction for the others.
    pub(super) fn process_al_wait(&mut self) {
        if self.is_diskless() {
            // No activity log without a disk: to the peer only.
            let waiting: Vec<AppId> = self.al.wait.drain(..).collect();
            for id in waiting {
                self.diskless_start_write(id);
            }
            return;
        }
        if self.al.super_gate > 0 {
            return;
        }
        let mut still = VecDeque::new();
        let mut wanted: Vec<u32> = Vec::new();
        let window = u64::from(self.cfg.max_buffers.max(64)) * BM_BLOCK_SIZE;
        while let Some(id) = self.al.wait.pop_front() {
            if self.repl.pending_bytes >= window && self.replicating() {
                // The WriteAcks wake this queue again.
                still.push_back(id);
                still.extend(self.al.wait.drain(..));
                break;
            }
            let Some(AppReq::Write {
                extents: Extents { first: a, last: b },
                ..
            }) = self.app.get(&id)
            else {
                continue;
            };
            let (a, b) = (*a, *b);
            // Concurrent application writes carry no order among
            // themselves, so a later write to a hot extent may pass one
            // waiting for the log.
            if self.al.log.try_acquire(a, b) {
                self.start_write(id);
            } else {
                wanted.extend(a..=b);
                still.push_back(id);
            }
        }
        self.al.wait = still;
        if !wanted.is_empty() && matches!(self.al.txn, AlTxn::Idle) {
            if let Some(plan) = self.al.log.plan(&wanted) {
                self.write_al_plan(plan);
            }
        }
    }

    pub(super) fn write_al_plan(&mut self, plan: AlPlan) {
        // One transaction at a time: a plan is only made when none is staged.
        debug_assert!(
            matches!(self.al.txn, AlTxn::Idle),
            "an activity-log transaction while another is staged"
        );
        // Bits of extents leaving the log must be durable first: after a
        // crash only the extents in the log are resynced wholesale.
        let mut pending = 0;
        if !plan.evicted.is_empty() {
            let token = self.io_token();
            self.ops.flush.insert(token, FlushOp::AlPreflush);
            self.actions.push_back(Action::LocalFlush { token });
            pending += 1;
        }
        for &e in &plan.evicted {
            let (first_word, words) = self.bitmap.extent_words(e);
            if words.is_empty() {
                continue;
            }
            let token = self.meta_token();
            self.ops.meta.insert(token, MetaOp::EvictBitmap);
            self.stats.bm_writes += 1;
            self.actions.push_back(Action::WriteBitmap {
                token,
                first_word,
                words,
            });
            pending += 1;
        }
        self.al.txn = AlTxn::Staging { plan, pending };
        if pending == 0 {
            self.emit_al();
        }
    }

    pub(super) fn emit_al(&mut self) {
        let AlTxn::Staging { plan, .. } = std::mem::replace(&mut self.al.txn, AlTxn::Writing)
        else {
            debug_assert!(false, "activity-log stage done without a plan");
            return;
        };
        let (seq, extents) = (plan.seq, plan.extents);
        let token = self.meta_token();
        self.ops.meta.insert(token, MetaOp::Al);
        self.stats.al_writes += 1;
        self.actions.push_back(Action::WriteAl {
            token,
            seq,
            extents,
        });
    }

    pub(super) fn start_write(&mut self, id: AppId) {
        let Some(AppReq::Write { span, queued, .. }) = self.app.get_mut(&id) else {
            debug_assert!(false, "starting write {id}, which is not in flight");
            return;
        };
        *queued = false;
        let span = *span;
        self.submit_local(span, LocalOp::AppWrite { id });
    }

    /// Queue a local operation in order; issue it if nothing overlaps.
    pub(super) fn submit_local(&mut self, span: Span, op: LocalOp) {
        let token = self.io_token();
        if self.ops.io.submit(token, span, op) {
            self.issue_local(token);
        }
    }

    /// The ordering queue let `token` start: emit its I/O (and, for an
    /// application write, its replication: both leave in the same order).
    pub(super) fn issue_local(&mut self, token: IoToken) {
        let Some((span, op)) = self.ops.io.get(token).cloned() else {
            debug_assert!(false, "issuing local op {token}, which is not queued");
            return;
        };
        let len = u32::try_from(span.len()).unwrap_or(MAX_IO);
        match op {
            LocalOp::AppWrite { id } => self.issue_app_write(token, id, span, len),
            LocalOp::AppRead { .. }
            | LocalOp::ResyncRead { .. }
            | LocalOp::CsumRead { .. }
            | LocalOp::VerifyRead { .. }
            | LocalOp::VerifyCompare { .. }
            | LocalOp::PeerRead { .. } => {
                self.actions.push_back(Action::LocalRead {
                    token,
                    offset: span.start,
                    len,
                });
            }
            LocalOp::PeerWrite { .. } | LocalOp::ResyncWrite { .. } | LocalOp::RepairWrite => {
                self.issue_parked_write(token);
            }
        }
    }

    /// An application write starts: to the peer (or into the bitmap when
    /// not replicating), then to the local disk.
    fn issue_app_write(&mut self, token: IoToken, id: AppId, span: Span, len: u32) {
        let Some(AppReq::Write {
            payload,
            fua,
            extents,
            ..
        }) = self.app.get(&id)
        else {
            // A started write stays in `app` until it completes.
            debug_assert!(false, "issuing write {id}, which is not in flight");
            return;
        };
        let (payload, fua, extents) = (payload.clone(), *fua, *extents);
        self.cancel_repairs(span);
        let wait = if self.replicating() {
            self.replicate_write(id, span, len, &payload, fua, extents)
        } else {
            self.bitmap.set_range(span.start, span.len());
            PeerWait::None
        };
        if let Some(AppReq::Write { peer, .. }) = self.app.get_mut(&id) {
            *peer = wait;
        }
        self.stats.traffic.written_bytes += span.len();
        self.actions.push_back(Action::LocalWrite {
            token,
            offset: span.start,
            len,
            payload,
            fua,
        });
    }

    /// Send application write `id` to the peer; returns what its
    /// completion waits for from the peer.
    pub(super) fn replicate_write(
        &mut self,
        id: AppId,
        span: Span,
        len: u32,
        payload: &Payload,
        fua: bool,
        extents: Extents,
    ) -> PeerWait {
        let seq = self.repl.next_seq;
        self.repl.next_seq += 1;
        // A Diskless node's write exists only on the peer: wait for its disk.
        let need_write_ack = fua || self.cfg.protocol == Protocol::C || self.is_diskless();
        let wait = if self.cfg.protocol == Protocol::A && !need_write_ack {
            PeerWait::Done
        } else {
            PeerWait::Sent {
                seq,
                need_write_ack,
            }
        };
        let (flags, data) = match payload {
            Payload::Data(d) => (0, d.clone()),
            Payload::Trim => (data_flags::TRIM, Bytes::new()),
            Payload::Zeroes => (data_flags::ZEROES, Bytes::new()),
        };
        let flags = flags | if fua { data_flags::FUA } else { 0 };
        self.al.log.add_ref(extents.first, extents.last);
        self.repl.pending_bytes += span.len();
        self.repl.pending.insert(
            seq,
            PeerReq {
                app_id: Some(id),
                span,
                extents,
                sent_at: self.now,
                recv_acked: false,
            },
        );
        self.repl.last_data_sent = self.now;
        self.send(Message::Data {
            seq,
            offset: span.start,
            len,
            flags,
            data,
        });
        wait
    }

    /// A peer or resync write that waited for an overlapping one starts.
    fn issue_parked_write(&mut self, token: IoToken) {
        let Some(ParkedWrite {
            offset,
            len,
            payload,
            fua,
        }) = self.ops.parked.remove(&token)
        else {
            // Issued at once when nothing overlapped, parked otherwise.
            debug_assert!(false, "unblocked write {token} has no parked payload");
            return;
        };
        self.stats.traffic.written_bytes += u64::from(len);
        self.actions.push_back(Action::LocalWrite {
            token,
            offset,
            len,
            payload,
            fua,
        });
    }

    pub(super) fn try_complete_write(&mut self, id: AppId) {
        let done = match self.app.get(&id) {
            Some(AppReq::Write {
                local_done: true,
                peer,
                local_err,
                ..
            }) => {
                let peer_ok = match peer {
                    PeerWait::None | PeerWait::Done | PeerWait::Lost => true,
                    PeerWait::Sent {
                        seq,
                        need_write_ack,
                    } => {
                        // Still pending? Then check what the protocol asks.
                        match self.repl.pending.get(seq) {
                            None => true,
                            Some(r) => !*need_write_ack && r.recv_acked,
                        }
                    }
                };
                if peer_ok {
                    Some(*local_err)
                } else {
                    None
                }
            }
            _ => None,
        };
        if let Some(err) = done {
            if let Some(AppReq::Write {
                extents: Extents { first: a, last: b },
                ..
            }) = self.app.remove(&id)
            {
                self.al.log.release(a, b);
            }
            self.complete(id, err.map_or(Ok(None), Err));
            self.process_al_wait();
            self.maybe_finish_down();
        }
    }

    pub(super) fn on_write_ack(&mut self, seq: u64, ok: bool) {
        let Some(r) = self.repl.pending.remove(&seq) else {
            self.protocol_error("ack for a write never sent");
            return;
        };
        self.al.log.release(r.extents.first, r.extents.last);
        // `pending_bytes` sums the spans in `pending` (both reset together).
        debug_assert!(
            self.repl.pending_bytes >= r.span.len(),
            "pending bytes underflow"
        );
        self.repl.pending_bytes = self.repl.pending_bytes.saturating_sub(r.span.len());
        self.process_al_wait();
        if ok {
            self.error_ended(ErrorKind::PeerIo);
            self.repl
                .unflushed
                .push_back(Unflushed { seq, span: r.span });
            if self.repl.unflushed.len() >= self.cfg.max_buffers as usize
                && self.repl.barriers.is_empty()
            {
                self.send_barrier(None);
            }
        } else {
            self.error(
                ErrorKind::PeerIo,
                format!(
                    "peer failed to write {} bytes at {}; marked out of sync",
                    r.span.len(),
                    r.span.start
                ),
            );
            self.bitmap.set_range(r.span.start, r.span.len());
        }
        let no_copy = !ok && self.is_diskless();
        if let Some(id) = r.app_id {
            if let Some(AppReq::Write {
                peer, local_err, ..
            }) = self.app.get_mut(&id)
            {
                *peer = PeerWait::Done;
                if no_copy {
                    // Diskless: the peer's copy was the only one.
                    *local_err = Some(errno::EIO);
                }
            }
            self.try_complete_write(id);
        }
    }

    pub(super) fn send_barrier(&mut self, app: Option<AppId>) {
        let id = self.repl.next_barrier;
        self.repl.next_barrier += 1;
        let bound = self.repl.next_seq - 1;
        self.repl.barriers.insert(
            id,
            SentBarrier {
                last_seq: bound,
                app,
            },
        );
        self.send(Message::Barrier { id });
    }

    pub(super) fn on_barrier_ack(&mut self, id: u64) {
        let Some(SentBarrier {
            last_seq: bound,
            app,
        }) = self.repl.barriers.remove(&id)
        else {
            self.protocol_error("ack for an unknown barrier");
            return;
        };
        self.repl.unflushed.retain(|u| u.seq > bound);
        if let Some(aid) = app {
            if let Some(AppReq::Flush { peer_done, .. }) = self.app.get_mut(&aid) {
                *peer_done = true;
            }
            self.try_complete_flush(aid);
        }
    }

    pub(super) fn app_flush(&mut self, id: AppId) {
        if self.role != Role::Primary {
            self.complete(id, Err(errno::EROFS));
            return;
        }
        if self.app.contains_key(&id) {
            self.complete(id, Err(errno::EINVAL));
            return;
        }
        if self.is_diskless() {
            self.diskless_flush(id);
            return;
        }
        let replicate = self.replicating();
        self.app.insert(
            id,
            AppReq::Flush {
                local_done: false,
                local_err: None,
                peer_done: !replicate,
            },
        );
        let token = self.io_token();
        self.ops.flush.insert(token, FlushOp::App { id });
        self.actions.push_back(Action::LocalFlush { token });
        if replicate {
            self.send_barrier(Some(id));
        }
    }

    pub(super) fn try_complete_flush(&mut self, id: AppId) {
        if let Some(AppReq::Flush {
            local_done: true,
            peer_done: true,
            local_err,
        }) = self.app.get(&id)
        {
            let err = *local_err;
            self.app.remove(&id);
            self.complete(id, err.map_or(Ok(None), Err));
            self.maybe_finish_down();
        }
    }

    /// A local application write finished: complete it once the peer agrees.
    pub(super) fn app_write_done(
        &mut self,
        id: AppId,
        span: Span,
        result: Result<Option<Bytes>, i32>,
    ) {
        if let Err(e) = &result {
            // on-io-error pass-on: the application gets the error,
            // while the peer may hold the new data and this disk
            // anything: the range is marked so that the next resync
            // makes both copies equal again.
            self.bitmap.set_range(span.start, span.len());
            self.local_io_failed(format!(
                "local write of {} bytes at {} failed (errno {e}): the range is marked \
                 out of sync",
                span.len(),
                span.start
            ));
        }
        // Detached: the peer's copy is the one that counts (a NegAck from
        // it still fails the request).
        let peer_has_it = self.is_diskless();
        if let Some(AppReq::Write {
            local_done,
            local_err,
            peer,
            ..
        }) = self.app.get_mut(&id)
        {
            *local_done = true;
            *local_err = result.err();
            if peer_has_it && matches!(peer, PeerWait::Sent { .. } | PeerWait::Done) {
                *local_err = None;
            }
        }
        self.try_complete_write(id);
    }

    pub(super) fn app_read_done(
        &mut self,
        id: AppId,
        span: Span,
        result: Result<Option<Bytes>, i32>,
    ) {
        if let Err(e) = &result {
            self.local_io_failed(format!(
                "local read of {} bytes at {} failed (errno {e})",
                span.len(),
                span.start
            ));
            if self.peer_serves() || self.is_diskless() {
                // Served by the peer; rewritten here unless detached.
                let repair = !self.is_diskless();
                self.remote_read(id, span, repair);
                return;
            }
        }
        self.app.remove(&id);
        if let Ok(Some(d)) = &result {
            self.stats.traffic.read_bytes += d.len() as u64;
        }
        let r = match result {
            Ok(Some(d)) if d.len() as u64 == span.len() => Ok(Some(d)),
            Ok(_) => Err(errno::EIO),
            Err(e) => Err(e),
        };
        self.complete(id, r);
    }

    /// An activity-log transaction landed: start the writes it admits.
    pub(super) fn al_written(&mut self, result: Result<(), i32>) {
        debug_assert!(
            matches!(self.al.txn, AlTxn::Writing),
            "an activity-log transaction landed that was not written"
        );
        self.al.txn = AlTxn::Idle;
        if result.is_ok() {
            self.al.log.committed();
        } else {
            self.al.log.failed();
            // Writes that needed it cannot proceed safely.
            let waiting: Vec<AppId> = self.al.wait.drain(..).collect();
            for id in waiting {
                self.app.remove(&id);
                self.complete(id, Err(errno::EIO));
            }
        }
        self.process_al_wait();
    }

    /// Protocol B: the peer received write `seq` (not yet on its disk).
    pub(super) fn on_recv_ack(&mut self, seq: u64) {
        if let Some(r) = self.repl.pending.get_mut(&seq) {
            r.recv_acked = true;
            if let Some(id) = r.app_id {
                self.try_complete_write(id);
            }
        }
    }
}
