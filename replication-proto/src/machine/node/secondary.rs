//! The Secondary side: writes and barriers from the peer.

use crate::machine::types::ErrorKind;
use bytes::Bytes;

use crate::machine::io::Span;
use crate::machine::types::{Action, Payload};
use crate::wire::{data_flags, DisconnectReason, Message, Protocol, Role};

use super::state::*;
use super::Node;

impl Node {
    // ----- peer writes (Secondary) -------------------------------------------

    pub(super) fn on_peer_data(
        &mut self,
        seq: u64,
        offset: u64,
        len: u32,
        flags: u32,
        data: Bytes,
    ) {
        if self.role == Role::Primary {
            self.fail_connection(
                DisconnectReason::BothPrimary,
                "peer sent writes to a Primary".into(),
                true,
            );
            return;
        }
        if !self.valid_range(offset, u64::from(len)) {
            self.protocol_error("write out of range");
            return;
        }
        if self.cfg.protocol == Protocol::B {
            self.send(Message::RecvAck { seq });
        }
        if self.link.decided_peer().map(|p| p.disk) == Some(crate::wire::DiskState::Diskless) {
            // The peer's disk misses this write (`diskless.rs`).
            self.bitmap.set_range(offset, u64::from(len));
        }
        self.stats.traffic.received_bytes += data.len() as u64;
        self.count_app_io(len);
        self.recv.index += 1;
        let recv_idx = self.recv.index;
        self.recv.incomplete.insert(recv_idx);
        self.recv.unacked += 1;
        let payload = if flags & data_flags::TRIM != 0 {
            Payload::Trim
        } else if flags & data_flags::ZEROES != 0 {
            Payload::Zeroes
        } else {
            Payload::Data(data)
        };
        let fua = flags & data_flags::FUA != 0;
        let epoch = self.link.epoch;
        let token = self.io_token();
        let span = Span::new(offset, u64::from(len));
        if self.ops.io.submit(
            token,
            span,
            LocalOp::PeerWrite {
                seq,
                epoch,
                recv_idx,
            },
        ) {
            self.stats.traffic.written_bytes += u64::from(len);
            self.actions.push_back(Action::LocalWrite {
                token,
                offset,
                len,
                payload,
                fua,
            });
        } else {
            self.ops.parked.insert(
                token,
                ParkedWrite {
                    offset,
                    len,
                    payload,
                    fua,
                },
            );
        }
    }

    pub(super) fn check_peer_barriers(&mut self) {
        while let Some(&PeerBarrier { id, after: mark }) = self.recv.barriers.front() {
            let ready = self.recv.incomplete.first().is_none_or(|&i| i > mark);
            if !ready {
                return;
            }
            self.recv.barriers.pop_front();
            let token = self.io_token();
            let epoch = self.link.epoch;
            self.ops
                .flush
                .insert(token, FlushOp::PeerBarrier { id, epoch });
            self.actions.push_back(Action::LocalFlush { token });
        }
    }

    /// A write from the peer is on disk (or failed): acknowledge it.
    pub(super) fn peer_write_done(
        &mut self,
        seq: u64,
        epoch: u64,
        recv_idx: u64,
        span: Span,
        result: Result<Option<Bytes>, i32>,
    ) {
        self.recv.incomplete.remove(&recv_idx);
        self.recv.answered(epoch, self.link.epoch);
        if epoch == self.link.epoch && self.link.decided() {
            if result.is_ok() {
                self.send(Message::WriteAck { seq });
            } else {
                self.error(
                    ErrorKind::LocalIo,
                    format!(
                        "local write of {} bytes at {} failed",
                        span.len(),
                        span.start
                    ),
                );
                self.send(Message::NegAck { seq });
            }
        }
        self.check_peer_barriers();
    }

    /// A barrier from the peer: flush once every write before it is down.
    pub(super) fn on_peer_barrier(&mut self, id: u64) {
        self.recv.barriers.push_back(PeerBarrier {
            id,
            after: self.recv.index,
        });
        self.check_peer_barriers();
    }
}
