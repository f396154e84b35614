//! The application on the Primary: writes, reads and flushes in flight,
//! and what their completions tell the oracle.

use bytes::Bytes;
use rand::Rng;

use super::oracle::{block_for, tag_of};
use super::scenario::Kind;
use super::world::{AppOp, World, BS};
use crate::machine::{AppId, ConnState, Event, Node, Payload};
use crate::wire::{DiskState, Protocol, Role};

impl World {
    pub(super) fn primary(&self) -> Option<usize> {
        (0..2).find(|&i| {
            self.nodes[i]
                .node
                .as_ref()
                .is_some_and(|n| n.role() == Role::Primary)
        })
    }

    pub(super) fn busy_blocks(&self, i: usize, first: u64, n: u64) -> bool {
        self.nodes[i].app.values().any(|op| match op {
            AppOp::Write { first: f, n: m, .. } | AppOp::Read { first: f, n: m } => {
                first < f + m && *f < first + n
            }
            AppOp::Flush { .. } => false,
        })
    }

    pub(super) fn app_step(&mut self, i: usize) {
        if self.nodes[i].app.len() >= 8 {
            return;
        }
        let nblocks = self.sc.data_bytes / BS;
        let id = AppId(self.next_app);
        let r = self.rng.gen_range(0..100);
        // Hot spots in a few extents so the activity log has to evict.
        let n = self.rng.gen_range(1..=8u64);
        let region = self.rng.gen_range(0..4u64) * (nblocks / 4);
        let first = (region + self.rng.gen_range(0..512u64)).min(nblocks - n);
        if r < 12 {
            let upto = self.oracle.unflushed_len(i);
            self.next_app += 1;
            self.nodes[i].app.insert(id, AppOp::Flush { upto });
            self.feed(i, Event::AppFlush { id });
            return;
        }
        if self.busy_blocks(i, first, n) {
            return;
        }
        self.next_app += 1;
        let len = u32::try_from(n * BS).unwrap_or(0);
        if r < 30 {
            self.nodes[i].app.insert(id, AppOp::Read { first, n });
            self.feed(
                i,
                Event::AppRead {
                    id,
                    offset: first * BS,
                    len,
                },
            );
            return;
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        let payload = if r < 35 {
            Payload::Zeroes
        } else {
            let mut v = Vec::with_capacity(len as usize);
            for b in first..first + n {
                v.extend_from_slice(&block_for(tag, b));
            }
            Payload::Data(Bytes::from(v))
        };
        let tag = if matches!(payload, Payload::Zeroes) {
            0
        } else {
            tag
        };
        let fua = self.rng.gen_bool(0.1);
        self.oracle.issued(i, tag, first, n);
        self.nodes[i].app.insert(id, AppOp::Write { tag, first, n });
        self.feed(
            i,
            Event::AppWrite {
                id,
                offset: first * BS,
                payload,
                len,
                fua,
            },
        );
    }

    pub(super) fn app_done(&mut self, i: usize, id: AppId, result: Result<Option<Bytes>, i32>) {
        let Some(op) = self.nodes[i].app.remove(&id) else {
            return;
        };
        let st = self.nodes[i].node.as_ref().map(Node::status);
        match op {
            AppOp::Write { tag, first, n } => {
                if result.is_ok() {
                    let protected = st.is_some_and(|s| {
                        matches!(
                            s.connection,
                            ConnState::Connected
                                | ConnState::VerifySource
                                | ConnState::VerifyTarget
                        ) && s.peer_disk == DiskState::UpToDate
                            && self.sc.protocol != Protocol::A
                            // Diskless: one copy, on the peer; safe once flushed.
                            && s.disk != DiskState::Diskless
                    });
                    self.report.writes_acked += 1;
                    if self.trace_all {
                        let s = format!(
                            "{} acked write tag={tag} blocks={first}+{n} protected={protected}",
                            self.name(i)
                        );
                        self.log(s);
                    }
                    self.oracle.acked(tag, first, n, protected);
                }
            }
            AppOp::Read { first, n } => {
                // While split, each side legitimately misses the other's writes.
                let split = self.sc.kind == Kind::SplitBrain && (1..3).contains(&self.sb_phase);
                if let (Ok(Some(d)), false) = (result, split) {
                    for k in 0..n {
                        let s = (k * BS) as usize;
                        let tag = d.get(s..s + 8).map_or(0, tag_of);
                        if let Err(e) = self.oracle.check(first + k, tag) {
                            let msg = format!("read on {} returned stale data: {e}", self.name(i));
                            self.log(msg.clone());
                            self.fail = Some(msg);
                        }
                    }
                    self.report.reads_checked += 1;
                }
            }
            AppOp::Flush { upto } => {
                if result.is_ok() {
                    if self.trace_all {
                        let s = format!(
                            "{} flush done, covers the writes acked before #{upto}",
                            self.name(i)
                        );
                        self.log(s);
                    }
                    self.oracle.flushed(i, upto);
                    self.flushed_since_failover = true;
                }
            }
        }
    }
}
