//! Online verify: the source reads and checksums, the target compares.

use crate::machine::io::Span;
use crate::machine::types::ConnState;
use crate::machine::types::ErrorKind;
use crate::meta::BM_BLOCK_SIZE;
use crate::wire::{Message, Role};
use bytes::Bytes;

use super::state::*;
use super::{Node, MAX_IO, SYNC_REQ_BYTES, SYNC_WINDOW};

impl Node {
    // ----- verify ------------------------------------------------------------

    pub(super) fn start_verify(&mut self, repair: bool) {
        self.conn = ConnState::VerifySource;
        self.sync = Some(Sync::new(
            SyncRole::Source,
            SyncKind::Verify {
                repair,
                found_oos: 0,
            },
            self.link.epoch,
            self.now,
            self.cfg.data_bytes,
        ));
        self.stats.traffic.verified_bytes = 0;
        self.stats.traffic.verify_out_of_sync_bytes = 0;
        self.pump_verify();
    }

    pub(super) fn pump_verify(&mut self) {
        self.refill();
        let data_bytes = self.cfg.data_bytes;
        loop {
            let Some(s) = self.sync.as_mut() else { return };
            if !s.is_verify()
                || s.role != SyncRole::Source
                || matches!(s.phase, SyncPhase::Finishing)
            {
                return;
            }
            if s.cursor >= data_bytes && s.refine.is_empty() {
                if s.inflight.is_empty() {
                    self.finish_verify();
                }
                return;
            }
            if s.inflight.len() >= SYNC_WINDOW {
                return;
            }
            let id = s.next_id;
            // The 4 KiB blocks of a chunk that differed first: they were
            // paid for with the chunk's tokens.
            let span = if let Some(span) = s.refine.pop() {
                s.refining.insert(id);
                span
            } else {
                let len = SYNC_REQ_BYTES.min(data_bytes - s.cursor);
                if s.tokens < len {
                    return;
                }
                s.tokens -= len;
                let span = Span::new(s.cursor, len);
                s.cursor += len;
                span
            };
            s.next_id += 1;
            s.inflight.insert(id, span);
            let epoch = s.epoch;
            self.submit_local(span, LocalOp::VerifyRead { id, epoch });
        }
    }

    pub(super) fn finish_verify(&mut self) {
        let Some(s) = self.sync.take() else { return };
        let (repair, found_oos) = match s.kind {
            SyncKind::Verify { repair, found_oos } => (repair, found_oos),
            SyncKind::Resync => {
                debug_assert!(false, "a resync finishing as a verify");
                (false, 0)
            }
        };
        self.conn = ConnState::Connected;
        self.send(Message::SyncDone);
        tracing::info!(
            out_of_sync = found_oos,
            ranges = s.oos.count(),
            "verify finished"
        );
        self.note_verify_end(&s.oos);
        if found_oos > 0 {
            self.error(
                ErrorKind::Verify,
                format!(
                    "verify found {} bytes out of sync{}",
                    found_oos,
                    if repair {
                        "; resyncing them"
                    } else {
                        "; run `repctl verify --repair` (or invalidate) to resync them"
                    }
                ),
            );
            if repair {
                let i_am_source = self.role == Role::Primary
                    || !self.link.peer().is_some_and(|p| p.role == Role::Primary);
                if i_am_source {
                    self.send(Message::StartSync {
                        sender_is_source: true,
                        full: false,
                    });
                    self.start_sync(SyncRole::Source, false);
                } else {
                    self.send(Message::StartSync {
                        sender_is_source: false,
                        full: false,
                    });
                    self.start_sync(SyncRole::Target, false);
                }
            }
        }
    }

    pub(super) fn on_verify_request(&mut self, id: u64, offset: u64, len: u32, digest: u32) {
        if self.conn == ConnState::Connected && self.sync.is_none() {
            self.conn = ConnState::VerifyTarget;
            self.sync = Some(Sync::new(
                SyncRole::Target,
                SyncKind::Verify {
                    repair: false,
                    found_oos: 0,
                },
                self.link.epoch,
                self.now,
                self.cfg.data_bytes,
            ));
            // The target counts what it compared and found too.
            self.stats.traffic.verified_bytes = 0;
            self.stats.traffic.verify_out_of_sync_bytes = 0;
        }
        if !self
            .sync
            .as_ref()
            .is_some_and(|s| s.is_verify() && s.role == SyncRole::Target)
        {
            self.protocol_error("verify request while not verify target");
            return;
        }
        if !self.valid_range(offset, u64::from(len)) || len > MAX_IO {
            self.protocol_error("verify request out of range");
            return;
        }
        if let Some(s) = self.sync.as_mut() {
            s.cursor = s.cursor.max(offset + u64::from(len));
        }
        let epoch = self.link.epoch;
        self.recv.unacked += 1;
        self.submit_local(
            Span::new(offset, u64::from(len)),
            LocalOp::VerifyCompare { id, epoch, digest },
        );
    }

    pub(super) fn on_verify_reply(&mut self, id: u64, offset: u64, len: u32, in_sync: bool) {
        let span = Span::new(offset, u64::from(len));
        let ok = self.sync.as_ref().is_some_and(|s| {
            s.is_verify() && s.role == SyncRole::Source && s.inflight.get(&id) == Some(&span)
        });
        if !ok {
            self.protocol_error("verify reply nobody asked for");
            return;
        }
        let refined = self.sync.as_mut().is_some_and(|s| {
            s.inflight.remove(&id);
            s.refining.remove(&id)
        });
        if !refined {
            self.stats.traffic.verified_bytes += u64::from(len);
        }
        if !in_sync && u64::from(len) > BM_BLOCK_SIZE {
            // Which 4 KiB blocks differ: compare each on its own (the
            // digest covers the whole chunk). Listed from the end: `pop`
            // takes them in disk order.
            if let Some(s) = self.sync.as_mut() {
                let blocks = u64::from(len).div_ceil(BM_BLOCK_SIZE);
                s.refine.extend((0..blocks).rev().map(|i| {
                    let start = offset + i * BM_BLOCK_SIZE;
                    Span::new(start, BM_BLOCK_SIZE.min(offset + u64::from(len) - start))
                }));
            }
        } else if !in_sync {
            tracing::warn!(start = offset, len_bytes = len, "verify: range out of sync");
            self.bitmap.set_range(offset, u64::from(len));
            self.stats.traffic.verify_out_of_sync_bytes += u64::from(len);
            if let Some(s) = self.sync.as_mut() {
                s.oos.add(offset, u64::from(len));
                if let SyncKind::Verify { found_oos, .. } = &mut s.kind {
                    *found_oos += u64::from(len);
                }
            }
        }
        self.pump_verify();
    }

    /// Verify source: the block was read; send its checksum.
    pub(super) fn verify_read_done(
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
        let digest = match result {
            Ok(Some(d)) if d.len() as u64 == span.len() => {
                self.stats.traffic.read_bytes += d.len() as u64;
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

    /// Verify target: the block was read; compare and answer.
    pub(super) fn verify_compare_done(
        &mut self,
        id: u64,
        epoch: u64,
        digest: u32,
        span: Span,
        result: Result<Option<Bytes>, i32>,
    ) {
        let len32 = u32::try_from(span.len()).unwrap_or(MAX_IO);
        self.recv.answered(epoch, self.link.epoch);
        if epoch != self.link.epoch {
            return;
        }
        let in_sync =
            matches!(&result, Ok(Some(d)) if d.len() as u64 == span.len() && crc(d) == digest);
        if let Ok(Some(d)) = &result {
            self.stats.traffic.read_bytes += d.len() as u64;
        }
        // A chunk that differs is compared again block by block (the
        // source asks for each 4 KiB block): those mark, count and log,
        // at 4 KiB resolution. The only chunk of 4 KiB that is not such a
        // block is one at the end of the disk.
        let chunk_at_end =
            span.start % SYNC_REQ_BYTES == 0 && span.start + span.len() == self.cfg.data_bytes;
        let block = span.len() <= BM_BLOCK_SIZE;
        if !block || chunk_at_end {
            self.stats.traffic.verified_bytes += span.len();
        }
        if !in_sync && block {
            self.bitmap.set_range(span.start, span.len());
            self.stats.traffic.verify_out_of_sync_bytes += span.len();
            if let Some(s) = self.sync.as_mut() {
                s.oos.add(span.start, span.len());
            }
            tracing::warn!(
                start = span.start,
                len_bytes = span.len(),
                "verify: range out of sync"
            );
        }
        self.send(Message::VerifyReply {
            id,
            offset: span.start,
            len: len32,
            in_sync,
        });
    }

    /// A verify ended (this node was its source or target): status keeps
    /// what it compared and found (the ranges merged), and when.
    pub(super) fn note_verify_end(&mut self, oos: &crate::machine::verify_ranges::OosRanges) {
        self.last_verify = Some(crate::machine::types::VerifyNote {
            at_ms: self.now.0,
            verified_bytes: self.stats.traffic.verified_bytes,
            out_of_sync_bytes: self.stats.traffic.verify_out_of_sync_bytes,
            range_count: oos.count(),
            ranges: oos.listed(),
        });
    }
}
