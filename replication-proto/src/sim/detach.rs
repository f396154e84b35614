//! Disk failures (`on-io-error = "detach"`): a node's disk starts failing
//! every data request, the node goes Diskless and goes on through its peer;
//! later the operator repairs or replaces the disk (a fresh one gets
//! `create-md`) and attaches it on a Secondary, which resyncs it.

use rand::Rng;

use super::disk::{SimDisk, SimMeta};
use super::world::{IoOp, World, BS};
use crate::machine::{Admin, Verb};
use crate::wire::{DiskState, Role};

impl World {
    /// A seed-drawn disk failure on either node (only in runs that
    /// configure `on-io-error = "detach"`).
    pub(super) fn disk_fail_chaos(&mut self) {
        if !self.cfgs[0].on_io_error_detach || self.disk_failures_left == 0 {
            return;
        }
        let i = self.rng.gen_range(0..2);
        // One disk at a time, and only while the peer holds a good copy
        // (two failed disks lose the data, which no replication survives).
        let healthy = (0..2).all(|k| {
            !self.nodes[k].failed
                && self.nodes[k].node.as_ref().is_some_and(|n| {
                    n.disk() == DiskState::UpToDate && n.peer_disk() == DiskState::UpToDate
                })
        });
        if !healthy {
            return;
        }
        self.disk_failures_left -= 1;
        self.nodes[i].failed = true;
        let s = format!("{} disk fails", self.name(i));
        self.log(s);
        self.report.disk_failures += 1;
    }

    /// In runs without `detach`: a block of the Primary's disk fails its
    /// next read (unless written first); the read is served by the peer
    /// and the block rewritten.
    pub(super) fn bad_block_chaos(&mut self) {
        if self.cfgs[0].on_io_error_detach {
            return;
        }
        let Some(p) = self.primary() else { return };
        let nblocks = self.sc.data_bytes / BS;
        let region = self.rng.gen_range(0..4u64) * (nblocks / 4);
        let b = region + self.rng.gen_range(0..512u64);
        self.nodes[p].bad_blocks.insert(b);
        self.report.bad_blocks += 1;
        let s = format!("{} block {b} fails reads", self.name(p));
        self.log(s);
    }

    /// Whether a disk request hits a bad block: reads of one fail, writes
    /// over one repair it.
    pub(super) fn bad_read(&mut self, i: usize, op: &IoOp) -> bool {
        let (offset, len, read) = match op {
            IoOp::Read { offset, len } => (*offset, *len, true),
            IoOp::Write { offset, len, .. } => (*offset, *len, false),
            IoOp::Flush => return false,
        };
        let (first, n) = (offset / BS, u64::from(len) / BS);
        let bad = &mut self.nodes[i].bad_blocks;
        if read {
            // Flaky, as dm-flakey makes it: the next read fails, then the
            // sector reads again (a block that never read again would be a
            // second fault once the peer is gone: no copy left).
            let hit: Vec<u64> = (first..first + n).filter(|b| bad.contains(b)).collect();
            for b in &hit {
                bad.remove(b);
            }
            !hit.is_empty()
        } else {
            for b in first..first + n {
                bad.remove(&b);
            }
            false
        }
    }

    /// The operator brings a Diskless node's disk back: a Primary is made
    /// Secondary first (once nothing is in flight, and during the end
    /// phase or by chance), then the disk is repaired (same contents) or
    /// replaced by a fresh one with new metadata, and attached.
    pub(super) fn repair_disks(&mut self) {
        for i in 0..2 {
            let Some(n) = self.nodes[i].node.as_ref() else {
                continue;
            };
            if n.disk() != DiskState::Diskless || !self.nodes[i].closed {
                continue;
            }
            if n.role() == Role::Primary {
                if !(self.ending || self.rng.gen_bool(0.05)) || !self.nodes[i].app.is_empty() {
                    continue;
                }
                if !self.admin(i, Admin::Verb(Verb::Secondary)) {
                    continue;
                }
            }
            if !self.ending && !self.rng.gen_bool(0.3) {
                continue;
            }
            self.nodes[i].failed = false;
            self.nodes[i].closed = false;
            if self.rng.gen_bool(0.5) {
                let nbits = self.sc.data_bytes / BS;
                self.nodes[i].disk = SimDisk::default();
                self.nodes[i].meta = SimMeta::fresh(nbits);
                let s = format!(
                    "{} gets a fresh disk (create-md) and attaches it",
                    self.name(i)
                );
                self.log(s);
            } else {
                let s = format!("{} attaches its repaired disk", self.name(i));
                self.log(s);
            }
            let p = self.nodes[i].meta.persisted();
            if self.admin(i, Admin::Attach(p)) {
                self.report.attaches += 1;
            }
        }
    }

    /// A disk failed or is detached: the other node holds the only copy.
    pub(super) fn any_disk_out(&self) -> bool {
        (0..2).any(|k| {
            self.nodes[k].failed
                || self.nodes[k]
                    .node
                    .as_ref()
                    .is_some_and(|n| n.disk() == DiskState::Diskless)
        })
    }

    /// `Action::CloseDisk`: the node let go of its disk.
    pub(super) fn disk_closed(&mut self, i: usize) {
        let s = format!("{} closes its disk", self.name(i));
        self.log(s);
        self.nodes[i].closed = true;
    }

    /// The `local-io-error` hook: a node that went Diskless on it lost
    /// what it acknowledged alone (the peer away): on this disk only, a
    /// second fault on top of the disk's, which replication cannot cover.
    /// Everything acknowledged while replicated must survive.
    pub(super) fn io_error_hook(&mut self, i: usize) {
        let diskless = self.nodes[i]
            .node
            .as_ref()
            .is_some_and(|n| n.disk() == DiskState::Diskless);
        if diskless {
            self.oracle.discard_node_unprotected(i);
        }
    }
}
