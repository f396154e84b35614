//! Diskless (DRBD's `on-io-error detach`, `drbdadm detach`/`attach`): a
//! node whose backing disk failed or was detached by hand goes on without
//! it, reading from and writing to its peer only, and remote reads (which
//! also repair a local read error on an attached Primary).
//!
//! Going Diskless while connected, the node sends `OutOfSync` for every
//! extent of its activity log (what may not be on its own disk) and then
//! `State { disk: Diskless }`. The peer, now the only copy, starts a new
//! data generation and marks in its bitmap everything it writes from then
//! on, so a disk that comes back (`attach`) resyncs what it missed; a crash
//! of the peer while it tracks that (meta flag `PEER_DISKLESS_DIRTY`) makes
//! the next resync a full one. A Diskless node never writes metadata; the
//! driver closes the disk when told (`Action::CloseDisk`), once every local
//! operation in flight came back.

use bytes::Bytes;

use crate::machine::ids::AppId;
use crate::machine::io::Span;
use crate::machine::types::{errno, Action, AdminError, ConnState, ErrorKind, Payload, Persisted};
use crate::meta::{MetaFlags, AL_EXTENT_SIZE};
use crate::wire::{disconnect, features, DisconnectReason, DiskState, Message, Role};

use super::state::*;
use super::{Node, MAX_IO};

/// Remote reads in flight at most; beyond it a read fails with EIO (the
/// frontends bound their requests far below this).
const MAX_REMOTE_READS: usize = 4096;

/// A read sent to the peer.
#[derive(Debug)]
pub(super) struct RemoteRead {
    app: AppId,
    span: Span,
    /// Write the answer back to the local disk (a local read error on an
    /// attached node); cleared when an application write overlaps it.
    repair: bool,
    sent_at: crate::time::Millis,
}

/// What the Diskless part of the node keeps.
#[derive(Debug, Default)]
pub(super) struct Detach {
    /// Gone Diskless; the disk is closed once nothing is in flight.
    closing: bool,
    next_read: u64,
    pub(super) reads: std::collections::BTreeMap<u64, RemoteRead>,
}

impl Node {
    #[must_use]
    pub(super) fn is_diskless(&self) -> bool {
        self.disk == DiskState::Diskless
    }

    /// The peer holds good data this node may read and write through: the
    /// connection is up, the peer UpToDate on this node's generation, and
    /// its repd serves remote reads.
    pub(super) fn peer_serves(&self) -> bool {
        let Some(p) = self.link.decided_peer() else {
            return false;
        };
        p.disk == DiskState::UpToDate
            && p.hello.features & self.cfg.features & features::REMOTE_READ != 0
            && (!self.is_diskless() || p.hello.gens.current == self.gens.current)
            && matches!(self.conn, ConnState::Connected)
    }

    /// A local I/O failed: recorded (the `local-io-error` hook), and under
    /// `on-io-error = "detach"` the disk is dropped.
    pub(super) fn local_io_failed(&mut self, msg: String) {
        self.error(ErrorKind::LocalIo, msg);
        if self.cfg.on_io_error_detach && !self.is_diskless() {
            self.go_diskless("a local I/O error (on-io-error = detach)");
        }
    }

    /// Any local data or flush operation failed: under `on-io-error =
    /// "detach"` the disk goes before the operation's own step runs, so
    /// that step already sees the node Diskless (an application write the
    /// peer holds then succeeds, a read goes to the peer).
    pub(super) fn detach_on_error(&mut self, result: &Result<Option<Bytes>, i32>) {
        if let Err(e) = result {
            if self.cfg.on_io_error_detach && !self.is_diskless() {
                self.error(
                    ErrorKind::LocalIo,
                    format!("local I/O failed (errno {e}): detaching the disk"),
                );
                self.go_diskless("a local I/O error (on-io-error = detach)");
            }
        }
    }

    /// `repctl detach`.
    pub(super) fn admin_detach(&mut self) -> Result<(), AdminError> {
        if self.is_diskless() {
            return Err(AdminError::AlreadyDiskless);
        }
        if self.sync.is_some() {
            return Err(AdminError::ResyncRunning);
        }
        if self.role == Role::Primary && !self.peer_serves() {
            return Err(AdminError::DetachNeedsPeer);
        }
        self.go_diskless("detached by the admin");
        Ok(())
    }

    /// Drop the local disk: from now on reads and writes go to the peer.
    pub(super) fn go_diskless(&mut self, why: &str) {
        tracing::warn!("local disk detached ({why}): Diskless");
        let tell_peer = self.link.decided();
        let peer_ok = self.peer_serves();
        let peer_knows = self
            .link
            .decided_peer()
            .is_some_and(|p| p.hello.features & self.cfg.features & features::REMOTE_READ != 0);
        let al_extents = self.al.log.extents();
        self.disk = DiskState::Diskless;
        self.det.closing = true;
        if tell_peer {
            if self.sync.is_some() || !peer_knows || !peer_ok && self.role == Role::Primary {
                // A resync cannot go on without this disk; a peer that
                // cannot serve is better reconnected (it learns Diskless
                // from the handshake, which refuses an older repd: that one
                // is told ConfigMismatch and stops). A peer that serves
                // remote reads is told IoError: ConfigMismatch would leave
                // it StandAlone, away from the Diskless node it serves.
                let reason = if peer_knows {
                    DisconnectReason::IoError
                } else {
                    DisconnectReason::ConfigMismatch
                };
                self.fail_connection(
                    reason,
                    format!("the local disk was detached ({why})"),
                    false,
                );
            } else {
                for e in al_extents {
                    self.send(Message::OutOfSync {
                        offset: u64::from(e) * AL_EXTENT_SIZE,
                        len: u32::try_from(AL_EXTENT_SIZE).unwrap_or(u32::MAX),
                    });
                }
                self.send(Message::State {
                    role: self.role,
                    disk: DiskState::Diskless,
                });
                if self.role == Role::Primary {
                    // The peer holds the only copy now: have it flush what
                    // it acknowledged, so a power loss there loses nothing.
                    self.send_barrier(None);
                }
            }
        }
        // Writes still waiting for the activity log go to the peer only.
        let waiting: Vec<AppId> = self.al.wait.drain(..).collect();
        for id in waiting {
            self.diskless_start_write(id);
        }
        self.maybe_close_disk();
    }

    /// Ask the driver to close the disk once no local operation is out.
    pub(super) fn maybe_close_disk(&mut self) {
        if self.det.closing
            && self.ops.io.is_empty()
            && self.ops.flush.is_empty()
            && self.ops.meta.is_empty()
        {
            self.det.closing = false;
            self.actions.push_back(Action::CloseDisk);
        }
    }

    /// An application write on a Diskless Primary: to the peer only,
    /// complete on its `WriteAck`; EIO when no peer can take it.
    pub(super) fn diskless_start_write(&mut self, id: AppId) {
        let Some(AppReq::Write {
            span,
            payload,
            fua,
            extents,
            queued,
            local_done,
            ..
        }) = self.app.get_mut(&id)
        else {
            return;
        };
        *queued = false;
        *local_done = true;
        let (span, payload, fua, extents) = (*span, payload.clone(), *fua, *extents);
        if !(self.replicating() && self.peer_serves()) {
            self.app.remove(&id);
            self.complete(id, Err(errno::EIO));
            return;
        }
        let len = u32::try_from(span.len()).unwrap_or(MAX_IO);
        // The reference `try_complete_write` releases (the activity log's
        // own `try_acquire` never ran: nothing is written here).
        self.al.log.add_ref(extents.first, extents.last);
        self.cancel_repairs(span);
        // Sent FUA whatever the application asked: the peer's disk is the
        // only copy, and a write it holds only in its volatile cache would
        // be out of reach of every bitmap once this node attaches a disk and
        // resyncs from it (the resync clears this node's marks while the
        // peer's cache still holds the only copy); a power loss of the peer
        // then left the two disks different, both UpToDate (repsim seed 835
        // after the session-13 merges).
        let _ = fua;
        let wait = self.replicate_write(id, span, len, &payload, true, extents);
        if let Some(AppReq::Write { peer, .. }) = self.app.get_mut(&id) {
            *peer = wait;
        }
        self.try_complete_write(id);
    }

    /// A flush on a Diskless Primary: a barrier to the peer only.
    pub(super) fn diskless_flush(&mut self, id: AppId) {
        if !(self.replicating() && self.peer_serves()) {
            self.complete(id, Err(errno::EIO));
            return;
        }
        self.app.insert(
            id,
            AppReq::Flush {
                local_done: true,
                local_err: None,
                peer_done: false,
            },
        );
        self.send_barrier(Some(id));
    }

    /// Read `span` from the peer for request `id` (already in `app`), or
    /// fail it with EIO when no peer can serve it.
    pub(super) fn remote_read(&mut self, id: AppId, span: Span, repair: bool) {
        if !self.peer_serves() || self.det.reads.len() >= MAX_REMOTE_READS {
            self.app.remove(&id);
            self.complete(id, Err(errno::EIO));
            return;
        }
        self.det.next_read += 1;
        let rid = self.det.next_read;
        self.det.reads.insert(
            rid,
            RemoteRead {
                app: id,
                span,
                repair,
                sent_at: self.now,
            },
        );
        self.send(Message::ReadRequest {
            id: rid,
            offset: span.start,
            len: u32::try_from(span.len()).unwrap_or(MAX_IO),
        });
    }

    /// An application write overlapping a read being repaired: the
    /// peer's answer may predate it, so it must not be written back.
    pub(super) fn cancel_repairs(&mut self, span: Span) {
        for r in self.det.reads.values_mut() {
            if r.span.start < span.end && span.start < r.span.end {
                r.repair = false;
            }
        }
    }

    /// The peer's answer to a remote read.
    pub(super) fn on_read_reply(&mut self, rid: u64, result: Result<Bytes, ()>) {
        let Some(r) = self.det.reads.remove(&rid) else {
            self.protocol_error("read reply for a read never sent");
            return;
        };
        self.app.remove(&r.app);
        match result {
            Ok(d) if d.len() as u64 == r.span.len() => {
                self.stats.traffic.read_bytes += d.len() as u64;
                if r.repair && !self.is_diskless() {
                    self.repair_write(r.span, d.clone());
                }
                self.complete(r.app, Ok(Some(d)));
            }
            Ok(_) => {
                self.complete(r.app, Err(errno::EIO));
                self.protocol_error("read reply of the wrong length");
            }
            Err(()) => self.complete(r.app, Err(errno::EIO)),
        }
    }

    /// Write what the peer read back over a block this disk failed to read.
    fn repair_write(&mut self, span: Span, data: Bytes) {
        let token = self.io_token();
        let len = u32::try_from(span.len()).unwrap_or(MAX_IO);
        let payload = Payload::Data(data);
        if self.ops.io.submit(token, span, LocalOp::RepairWrite) {
            self.actions.push_back(Action::LocalWrite {
                token,
                offset: span.start,
                len,
                payload,
                fua: false,
            });
        } else {
            self.ops.parked.insert(
                token,
                ParkedWrite {
                    offset: span.start,
                    len,
                    payload,
                    fua: false,
                },
            );
        }
    }

    pub(super) fn repair_write_done(&mut self, span: Span, result: Result<Option<Bytes>, i32>) {
        match result {
            Ok(_) => tracing::info!(
                offset = span.start,
                len = span.len(),
                "read error repaired from the peer"
            ),
            Err(e) => {
                // pass-on: the next resync rewrites it.
                self.bitmap.set_range(span.start, span.len());
                self.local_io_failed(format!(
                    "rewriting {} bytes at {} read from the peer failed (errno {e})",
                    span.len(),
                    span.start
                ));
            }
        }
    }

    /// The peer asks for a range (it is Diskless, or its read failed).
    pub(super) fn on_read_request(&mut self, id: u64, offset: u64, len: u32) {
        if !self.valid_range(offset, u64::from(len)) || len > MAX_IO {
            self.protocol_error("read request out of range");
            return;
        }
        if self.disk != DiskState::UpToDate {
            self.send(Message::ReadNeg { id, offset, len });
            return;
        }
        let epoch = self.link.epoch;
        self.submit_local(
            Span::new(offset, u64::from(len)),
            LocalOp::PeerRead { id, epoch },
        );
    }

    pub(super) fn peer_read_done(
        &mut self,
        id: u64,
        epoch: u64,
        span: Span,
        result: Result<Option<Bytes>, i32>,
    ) {
        let len = u32::try_from(span.len()).unwrap_or(MAX_IO);
        let reply = match result {
            Ok(Some(data)) if data.len() as u64 == span.len() => Message::ReadReply {
                id,
                offset: span.start,
                data,
            },
            Ok(_) => Message::ReadNeg {
                id,
                offset: span.start,
                len,
            },
            Err(e) => {
                self.local_io_failed(format!(
                    "local read of {len} bytes at {} for the peer failed (errno {e})",
                    span.start
                ));
                Message::ReadNeg {
                    id,
                    offset: span.start,
                    len,
                }
            }
        };
        if epoch == self.link.epoch && self.link.decided() {
            self.send(reply);
        }
    }

    /// The connection is gone: remote reads fail.
    pub(super) fn fail_remote_reads(&mut self) {
        for (_, r) in std::mem::take(&mut self.det.reads) {
            self.app.remove(&r.app);
            self.complete(r.app, Err(errno::EIO));
        }
    }

    /// When the oldest remote read was sent.
    pub(super) fn oldest_remote_read(&self) -> Option<crate::time::Millis> {
        self.det.reads.values().map(|r| r.sent_at).min()
    }

    /// The peer went Diskless (its `State`, or its Hello): this node holds
    /// the only copy. A new generation, and its writes from now on in the
    /// bitmap, so the peer's disk coming back resyncs what it missed.
    pub(super) fn peer_went_diskless(&mut self) {
        if self.is_diskless() {
            return;
        }
        if self.sync.is_some() {
            // IoError: both sides reconnect (ConfigMismatch would leave the
            // Diskless peer StandAlone, away from the only good data).
            self.fail_connection(
                DisconnectReason::IoError,
                "the peer detached its disk during a resync".into(),
                false,
            );
            return;
        }
        if !self.flags.has(MetaFlags::PEER_DISKLESS_DIRTY) {
            tracing::warn!("the peer is Diskless: this node holds the only copy");
            self.flags.set(MetaFlags::PEER_DISKLESS_DIRTY, true);
            self.peer_has_my_current = true;
            self.rotate_for_disconnected_writes();
            self.persist_super(false);
            self.send(Message::Uuids { gens: self.gens });
        }
    }

    /// The peer is back with a disk: its bitmap exchange or resync takes
    /// over what `PEER_DISKLESS_DIRTY` protected; the bits are made durable
    /// before the flag goes.
    pub(super) fn peer_has_disk_again(&mut self) {
        if self.flags.has(MetaFlags::PEER_DISKLESS_DIRTY) && !self.is_diskless() {
            self.persist_bitmap_all(None);
            self.flags.set(MetaFlags::PEER_DISKLESS_DIRTY, false);
            self.persist_super(false);
        }
    }

    /// `repctl attach`: the driver opened the disk again and read its
    /// metadata; a Diskless Secondary takes it, and reconnects so that the
    /// handshake decides the resync (full for a fresh disk).
    pub(super) fn admin_attach(&mut self, p: Persisted) -> Result<(), AdminError> {
        if !self.is_diskless() || self.det.closing {
            return Err(AdminError::NotDiskless);
        }
        if self.role == Role::Primary {
            return Err(AdminError::AttachNeedsSecondary);
        }
        // A node started on that metadata (crash recovery and all); only
        // the disk's part is taken, the rest of this node stays.
        let mut n = Node::new(self.cfg.clone(), p, self.now, 0);
        self.gens = n.gens;
        self.flags = n.flags;
        std::mem::swap(&mut self.bitmap, &mut n.bitmap);
        std::mem::swap(&mut self.al, &mut n.al);
        self.disk = n.disk;
        tracing::info!(disk = ?self.disk, "local disk attached");
        self.persist_super(false);
        if self.connected_states() {
            self.send(disconnect(
                DisconnectReason::Admin,
                "the peer attached its disk: reconnecting to resync",
            ));
            self.connection_lost("disk attached: reconnecting to resync");
        }
        Ok(())
    }
}
