//! The resync: bitmap exchange, the target's requests, the source's
//! answers, and the end of a resync on both sides.

use crate::machine::types::ErrorKind;
use crate::wire::DisconnectReason;
use bytes::Bytes;

use crate::gen::Generations;
use crate::machine::io::Span;
use crate::machine::types::{Action, ConnState, Hook, Payload};
use crate::meta::{MetaFlags, BM_BLOCK_SIZE};
use crate::wire::rle::{bitmap_messages, BitmapReceiver, Progress};
use crate::wire::{DiskState, Message};

use super::state::*;
use super::{Node, BITMAP_RUNS_PER_FRAME, MAX_IO, SYNC_REQ_BYTES};

impl Node {
    // ----- resync ------------------------------------------------------------

    /// Send our bitmap and wait for the peer's; the resync runs on their union.
    pub(super) fn start_sync(&mut self, role: SyncRole, full: bool) {
        if full {
            self.bitmap.set_all();
        }
        self.conn = if role == SyncRole::Source {
            ConnState::WFBitMapS
        } else {
            ConnState::WFBitMapT
        };
        if role == SyncRole::Source {
            // The target takes this generation when the resync starts.
            self.send(Message::Uuids { gens: self.gens });
        }
        let nbits = self.bitmap.nbits();
        for m in bitmap_messages(self.bitmap.words(), nbits, BITMAP_RUNS_PER_FRAME) {
            self.send(m);
        }
        self.sync = Some(Sync {
            phase: SyncPhase::Exchanging(BitmapReceiver::new(nbits)),
            ..Sync::new(role, SyncKind::Resync, self.link.epoch, self.now, 0)
        });
    }

    pub(super) fn on_bitmap(&mut self, m: &Message) {
        let Some(s) = self.sync.as_mut() else {
            self.protocol_error("bitmap outside a resync");
            return;
        };
        let SyncPhase::Exchanging(rx) = &mut s.phase else {
            self.protocol_error("bitmap after the exchange ended");
            return;
        };
        let mut words = self.bitmap.words().to_vec();
        match rx.receive_message(m, &mut words) {
            Err(e) => {
                let e = e.to_string();
                self.protocol_error(&format!("bad bitmap: {e}"));
            }
            Ok(Progress::More) => self.bitmap.or_words(&words),
            Ok(Progress::Done { .. }) => {
                self.bitmap.or_words(&words);
                self.bitmap_exchanged();
            }
        }
    }

    pub(super) fn bitmap_exchanged(&mut self) {
        let Some(role) = self.sync.as_ref().map(|s| s.role) else {
            debug_assert!(false, "bitmap exchange ended outside a resync");
            return;
        };
        let total = self.bitmap.count() * BM_BLOCK_SIZE;
        let epoch = self.link.epoch;
        if let Some(s) = self.sync.as_mut() {
            s.phase = SyncPhase::Running;
            s.total_bytes = total;
            s.last_refill = self.now;
            s.tokens = 0;
        }
        tracing::info!(?role, bytes = total, "resync starts");
        match role {
            SyncRole::Source => {
                self.conn = ConnState::SyncSource;
                self.peer_has_my_current = true;
                if let Some(p) = self.link.peer_mut() {
                    p.disk = DiskState::Inconsistent;
                }
                self.persist_bitmap_all(None);
            }
            SyncRole::Target => {
                self.conn = ConnState::SyncTarget;
                // Inconsistent and the full set of bits durable before the
                // first block is overwritten: a crash mid-sync must resume,
                // never pass for consistent.
                self.disk = DiskState::Inconsistent;
                self.flags.set(MetaFlags::CONSISTENT, false);
                self.flags.set(MetaFlags::WAS_UP_TO_DATE, false);
                // A crashed Primary that is the target now: its
                // activity-log extents are in the bitmap that is persisted
                // below, and its data is the source's from here on. Left
                // set, the flag would make this Inconsistent copy look like
                // the crashed Primary's good one if the source crashed too.
                self.flags.set(MetaFlags::CRASHED_PRIMARY, false);
                // Its own unacknowledged changes are being overwritten.
                self.flags.set(MetaFlags::UNACKED_GEN, false);
                // Take the source's generation now, marked Inconsistent: an
                // interrupted resync then resumes from the bitmap whatever
                // the source did meanwhile, and the source's generation
                // rules (it starts a new one when it goes on alone) apply.
                let src = self
                    .link
                    .peer()
                    .map_or(self.gens.current, |p| p.hello.gens.current);
                if src != self.gens.current {
                    self.gens.history = [self.gens.current, self.gens.history[0]];
                    self.gens.current = src;
                }
                self.gens.bitmap = 0;
                // The bitmap write, and the before-resync-target handler
                // if one runs (`before_target.rs`).
                let pending = 1 + self.before_resync_target(epoch);
                if let Some(s) = self.sync.as_mut() {
                    s.phase = SyncPhase::Persisting { pending };
                }
                let token = self.io_token();
                self.ops.flush.insert(token, FlushOp::SyncStart { epoch });
                self.actions.push_back(Action::LocalFlush { token });
            }
        }
    }

    /// Target side: ask for more blocks while the window and the rate allow.
    pub(super) fn pump_sync(&mut self) {
        self.refill();
        if self.pause.user {
            return;
        }
        let now = self.now;
        let data_bytes = self.cfg.data_bytes;
        let csums = self.cfg.csums
            && self
                .link
                .peer()
                .is_some_and(|p| p.hello.features & crate::wire::features::CSUM_RESYNC != 0);
        loop {
            let Some(s) = self.sync.as_mut() else { return };
            if s.is_verify() || s.role != SyncRole::Target || !matches!(s.phase, SyncPhase::Running)
            {
                return;
            }
            if !s.window.open(s.inflight.len()) {
                return;
            }
            let max_bits = SYNC_REQ_BYTES / BM_BLOCK_SIZE;
            let run = self.bitmap.next_run(s.cursor, max_bits).or_else(|| {
                if s.inflight.is_empty() {
                    s.cursor = 0;
                    self.bitmap.next_run(0, max_bits)
                } else {
                    None
                }
            });
            let Some((bit, count)) = run else {
                if s.inflight.is_empty() {
                    self.finish_target();
                }
                return;
            };
            let offset = bit * BM_BLOCK_SIZE;
            // The bitmap has one bit per block of the data: a marked block
            // starts inside it.
            debug_assert!(offset < data_bytes, "marked block at {offset} past the end");
            let len = (count * BM_BLOCK_SIZE).min(data_bytes.saturating_sub(offset));
            let span = Span::new(offset, len);
            if s.inflight.values().any(|x| x.overlaps(&span)) {
                return;
            }
            if s.tokens < len {
                return;
            }
            s.tokens -= len;
            s.cursor = bit + count;
            let id = s.next_id;
            s.next_id += 1;
            s.inflight.insert(id, span);
            s.requested_bytes = s.requested_bytes.saturating_add(len);
            s.window.sent(id, now);
            let epoch = s.epoch;
            let len32 = u32::try_from(len).unwrap_or(MAX_IO);
            if csums {
                self.submit_local(span, LocalOp::CsumRead { id, epoch });
            } else {
                self.send(Message::ResyncRequest {
                    id,
                    offset,
                    len: len32,
                });
            }
        }
    }

    pub(super) fn finish_target(&mut self) {
        let epoch = self.link.epoch;
        if let Some(s) = self.sync.as_mut() {
            if matches!(s.phase, SyncPhase::Finishing) {
                return;
            }
            s.phase = SyncPhase::Finishing;
        }
        let token = self.io_token();
        self.ops.flush.insert(token, FlushOp::SyncDone { epoch });
        self.actions.push_back(Action::LocalFlush { token });
    }

    pub(super) fn on_resync_request(
        &mut self,
        id: u64,
        offset: u64,
        len: u32,
        digest: Option<u32>,
    ) {
        if !self
            .sync
            .as_ref()
            .is_some_and(|s| s.role == SyncRole::Source && !s.is_verify())
        {
            self.protocol_error("resync request while not sync source");
            return;
        }
        if !self.valid_range(offset, u64::from(len)) || len > MAX_IO {
            self.protocol_error("resync request out of range");
            return;
        }
        if self.hold_resync_request(id, offset, len, digest) {
            return;
        }
        let epoch = self.link.epoch;
        self.recv.unacked += 1;
        self.submit_local(
            Span::new(offset, u64::from(len)),
            LocalOp::ResyncRead {
                id,
                epoch,
                peer_digest: digest,
            },
        );
    }

    pub(super) fn on_resync_data(&mut self, id: u64, offset: u64, data: Bytes) {
        let span = Span::new(offset, data.len() as u64);
        let ok = self
            .sync
            .as_ref()
            .is_some_and(|s| s.role == SyncRole::Target && s.inflight.get(&id) == Some(&span));
        if !ok {
            self.protocol_error("resync data nobody asked for");
            return;
        }
        self.sync_answered(id);
        self.stats.traffic.received_bytes += data.len() as u64;
        self.stats.traffic.resync_received_bytes += data.len() as u64;
        let epoch = self.link.epoch;
        let len = u32::try_from(data.len()).unwrap_or(MAX_IO);
        let token = self.io_token();
        if self
            .ops
            .io
            .submit(token, span, LocalOp::ResyncWrite { id, epoch })
        {
            self.stats.traffic.written_bytes += data.len() as u64;
            self.actions.push_back(Action::LocalWrite {
                token,
                offset,
                len,
                payload: Payload::Data(data),
                fua: false,
            });
        } else {
            self.ops.parked.insert(
                token,
                ParkedWrite {
                    offset,
                    len,
                    payload: Payload::Data(data),
                    fua: false,
                },
            );
        }
    }

    /// Target: the answer to resync request `id` arrived; the window
    /// aims at answers within a quarter of `timeout-ms`.
    pub(super) fn sync_answered(&mut self, id: u64) {
        let (now, target) = (self.now, (self.cfg.timeout_ms / 4).max(1));
        self.count_sync_answer(id);
        if let Some(s) = self.sync.as_mut() {
            s.window.answered(id, now, target);
        }
    }

    pub(super) fn on_in_sync(&mut self, id: u64, offset: u64, len: u32) {
        let span = Span::new(offset, u64::from(len));
        let ok = self
            .sync
            .as_ref()
            .is_some_and(|s| s.role == SyncRole::Target && s.inflight.get(&id) == Some(&span));
        if !ok {
            self.protocol_error("in-sync answer nobody asked for");
            return;
        }
        self.sync_answered(id);
        self.bitmap.clear_range(offset, u64::from(len));
        if let Some(s) = self.sync.as_mut() {
            s.inflight.remove(&id);
        }
        self.pump_sync();
    }

    pub(super) fn on_sync_done(&mut self) {
        let Some(s) = self.sync.as_ref() else {
            self.protocol_error("SyncDone outside a sync");
            return;
        };
        if s.is_verify() {
            // Verify target: the source finished.
            let oos = self.sync.take().map(|s| s.oos).unwrap_or_default();
            self.conn = ConnState::Connected;
            self.note_verify_end(&oos);
            return;
        }
        if s.role != SyncRole::Source {
            self.protocol_error("SyncDone sent to the sync target");
            return;
        }
        let left = self.bitmap.count();
        if left > 0 {
            tracing::warn!(
                left,
                "target finished with blocks still marked here; they stay out of sync"
            );
        }
        self.sync = None;
        self.conn = ConnState::Connected;
        if self.gens.bitmap != 0 {
            self.gens.history = [self.gens.bitmap, self.gens.history[0]];
            self.gens.bitmap = 0;
        }
        self.flags.set(MetaFlags::CRASHED_PRIMARY, false);
        self.peer_has_my_current = true;
        let became_up_to_date = self.disk == DiskState::Consistent;
        if became_up_to_date {
            // A crashed Primary that was the source (its peer was
            // Inconsistent): its copy is the reference now on both nodes.
            self.set_up_to_date();
        } else {
            self.persist_super(false);
        }
        self.persist_bitmap_all(None);
        if let Some(p) = self.link.peer_mut() {
            p.disk = DiskState::UpToDate;
            p.hello.gens = self.gens;
        }
        tracing::info!("resync finished as source");
        self.send(Message::Uuids { gens: self.gens });
        if became_up_to_date {
            // The peer still counts this disk Consistent (from the Hello).
            self.send(Message::State {
                role: self.role,
                disk: self.disk,
            });
        }
    }

    pub(super) fn on_peer_uuids(&mut self, gens: Generations) {
        // After a finished resync both share the current generation: take
        // the source's history too, so both remember the same past.
        let idle = self.sync.is_none() && self.conn == ConnState::Connected;
        if idle
            && gens.current == self.gens.current
            && self.disk == DiskState::UpToDate
            && self.gens != gens
        {
            self.gens = gens;
            self.persist_super(false);
        }
        if self.is_diskless()
            && (gens.current == self.gens.current || gens.bitmap == self.gens.current)
        {
            // Diskless: the peer's generations are this node's data's
            // (it moved on from the one both shared when the disk went).
            self.gens = gens;
        }
        if let Some(p) = self.link.peer_mut() {
            p.hello.gens = gens;
        }
    }

    /// Source: the block the target asked for was read; send it (or say it matches).
    pub(super) fn resync_read_done(
        &mut self,
        id: u64,
        epoch: u64,
        peer_digest: Option<u32>,
        span: Span,
        result: Result<Option<Bytes>, i32>,
    ) {
        let len32 = u32::try_from(span.len()).unwrap_or(MAX_IO);
        self.recv.answered(epoch, self.link.epoch);
        if epoch != self.link.epoch || !self.link.decided() {
            return;
        }
        match result {
            Ok(Some(d)) if d.len() as u64 == span.len() => {
                self.stats.traffic.read_bytes += d.len() as u64;
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
                self.error(
                    ErrorKind::LocalIo,
                    format!(
                        "local read of {} bytes at {} failed during resync",
                        span.len(),
                        span.start
                    ),
                );
                self.send(Message::ResyncNeg {
                    id,
                    offset: span.start,
                    len: len32,
                });
            }
        }
    }

    /// Target: resync data is on disk; the block is in sync.
    pub(super) fn resync_write_done(
        &mut self,
        id: u64,
        epoch: u64,
        span: Span,
        result: Result<Option<Bytes>, i32>,
    ) {
        let len32 = u32::try_from(span.len()).unwrap_or(MAX_IO);
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

    /// Target (csums): the local block was read; ask with its checksum.
    pub(super) fn csum_read_done(
        &mut self,
        id: u64,
        epoch: u64,
        span: Span,
        result: Result<Option<Bytes>, i32>,
    ) {
        let len32 = u32::try_from(span.len()).unwrap_or(MAX_IO);
        if epoch != self.link.epoch {
            return;
        }
        match result {
            Ok(Some(d)) if d.len() as u64 == span.len() => {
                self.stats.traffic.read_bytes += d.len() as u64;
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

    /// Target: every resynced block is durable; the target is UpToDate.
    pub(super) fn sync_done_flushed(&mut self, epoch: u64, result: Result<(), i32>) {
        if epoch == self.link.epoch && self.link.decided() {
            if result.is_ok() {
                // Every block is here and durable: UpToDate.
                self.sync = None;
                self.conn = ConnState::Connected;
                self.flags.set(MetaFlags::CRASHED_PRIMARY, false);
                self.set_up_to_date();
                self.persist_bitmap_all(None);
                tracing::info!("resync finished as target: UpToDate");
                self.actions
                    .push_back(Action::Hook(Hook::AfterResyncTarget));
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

    /// Target: earlier cleared bits are durable; persist the resync's start.
    pub(super) fn sync_start_flushed(&mut self, epoch: u64, result: Result<(), i32>) {
        if epoch != self.link.epoch || !self.link.decided() {
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
        let token = self.meta_token();
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

    /// A resync frame on a decided connection.
    pub(super) fn on_resync_frame(&mut self, m: Message) {
        match m {
            Message::ResyncRequest { id, offset, len } => {
                self.on_resync_request(id, offset, len, None);
            }
            Message::ChecksumRequest {
                id,
                offset,
                len,
                digest,
            } => self.on_resync_request(id, offset, len, Some(digest)),
            Message::ResyncData { id, offset, data } => self.on_resync_data(id, offset, data),
            Message::InSync { id, offset, len } => self.on_in_sync(id, offset, len),
            Message::ResyncNeg { offset, len, .. } => {
                self.fail_connection(
                    DisconnectReason::IoError,
                    format!(
                        "the sync source could not read {len} bytes at {offset}; resync stopped"
                    ),
                    false,
                );
            }
            Message::ResyncAck { offset, len, .. } => {
                if self
                    .sync
                    .as_ref()
                    .is_some_and(|s| s.role == SyncRole::Source && !s.is_verify())
                {
                    self.bitmap.clear_range(offset, u64::from(len));
                }
            }
            Message::SyncDone => self.on_sync_done(),
            _ => debug_assert!(false, "not a resync frame: {m:?}"),
        }
    }
}
