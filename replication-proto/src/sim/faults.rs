//! The fault schedule: link resets, partitions, crashes with power loss,
//! freezes, split brains, and the operator's failovers and switchovers.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::scenario::Kind;
use super::world::{Ev, MetaW, World, MS};
use crate::machine::{Admin, ConnState, MetaToken, Verb};
use crate::wire::{DiskState, Role};

impl World {
    /// Faults and operator actions while the run lasts.
    pub(super) fn chaos(&mut self) {
        let r: u32 = self.rng.gen_range(0..1000);
        match self.sc.kind {
            Kind::Network => self.network_chaos(r),
            Kind::PrimaryCrash => self.crash_chaos(r),
            Kind::SplitBrain => self.split_brain_chaos(),
        }
    }

    /// Network runs: link faults, admin disconnects, verify, invalidate, a
    /// Secondary's crash, switchovers, pause/resume-sync; `r` (0..1000) picks at most one.
    fn network_chaos(&mut self, r: u32) {
        self.switchover_step();
        // Each fault takes its slice of 0..1000 by its rate; the
        // operator's verify, invalidate and switchover keep theirs.
        let rt = self.sc.rates;
        let reset = rt.reset_pm;
        let partition = reset + rt.partition_pm;
        let disconnect = partition + rt.disconnect_pm;
        let verify = disconnect + 7;
        let invalidate = verify + 3;
        let crash = invalidate + rt.secondary_crash_pm;
        let switchover = crash + 4;
        let pause_sync = switchover + 4;
        let disk_fail = pause_sync + 10;
        if r < reset {
            self.reset_link();
        } else if r < partition && self.now >= self.partition_until {
            let d = self.lat(20 * MS, 300 * MS);
            self.partition_until = self.now + d;
            self.log(format!("partition for {} ms", d / MS));
        } else if r < disconnect {
            let i = self.rng.gen_range(0..2);
            if self.admin(i, Admin::Verb(Verb::Disconnect)) {
                let t = self.now + self.lat(10 * MS, 100 * MS);
                self.at(t, Ev::Reconnect(i));
            }
        } else if r < verify {
            let i = self.rng.gen_range(0..2);
            self.admin(i, Admin::Verb(Verb::Verify { repair: true }));
        } else if r < invalidate && !self.any_disk_out() {
            // (Invalidating the one node with a disk would throw away the
            // only copy: an operator's mistake, not a fault to survive.)
            if let Some(p) = self.primary() {
                self.admin(1 - p, Admin::Verb(Verb::Invalidate));
            }
        } else if r < crash && self.crashes_left > 0 {
            // A Secondary's power loss: the Primary keeps every write.
            if let Some(p) = self.primary() {
                self.crashes_left -= 1;
                let t = self.now + self.lat(0, 2000);
                self.at(t, Ev::Crash(1 - p));
            }
        } else if r < switchover && self.switchover.is_none() {
            if let Some(p) = self.primary() {
                self.switchover = Some(p);
                let s = format!("{} quiesces for a switchover", self.name(p));
                self.log(s);
            }
        } else if r < pause_sync {
            // The operator holds the resync on one node, or releases it.
            let i = self.rng.gen_range(0..2);
            if !self.admin(i, Admin::Verb(Verb::PauseSync)) {
                self.admin(i, Admin::Verb(Verb::ResumeSync));
            }
        } else if r < disk_fail {
            self.disk_fail_chaos();
            self.bad_block_chaos();
        }
        self.repair_disks();
    }

    /// PrimaryCrash runs: the synced Primary crashes (once, or twice with a
    /// crash of the sync source), freezes, and the operator fails over.
    fn crash_chaos(&mut self, r: u32) {
        let synced = self.primary().is_some_and(|p| {
            self.nodes[p]
                .node
                .as_ref()
                .is_some_and(|n| n.peer_disk() == DiskState::UpToDate)
        });
        if r < self.sc.rates.primary_crash_pm
            && self.crashes_left > 0
            && synced
            && !self.crash_pending
        {
            if let Some(p) = self.primary() {
                self.schedule_crash(p);
            }
        }
        if self.sc.crash_sync_source {
            self.crash_the_sync_source();
        }
        if self.sc.freeze {
            self.freeze_chaos(r, synced);
        }
        self.operator_failover();
    }

    /// A switchover as an operator does it by hand: the idle Primary is
    /// demoted and at once taken off the link (`secondary`, then `down` or
    /// `disconnect`), with writes the peer confirmed but has not flushed
    /// yet; the generations stay the same, and the next handshake must not
    /// leave those marks set (issue 16 item 5). Then a node is promoted.
    pub(super) fn switchover_step(&mut self) {
        match self.switchover {
            Some(p) if self.nodes[p].app.is_empty() => {
                self.switchover = None;
                if self.admin(p, Admin::Verb(Verb::Secondary))
                    && self.admin(p, Admin::Verb(Verb::Disconnect))
                {
                    let t = self.now + self.lat(10 * MS, 100 * MS);
                    self.at(t, Ev::Reconnect(p));
                }
            }
            Some(_) => {}
            // Promote once the pair is back together (a promotion while
            // apart would start a new generation and hide the case).
            None => {
                let together = self.nodes.iter().all(|n| {
                    n.node
                        .as_ref()
                        .is_some_and(|n| n.conn() == ConnState::Connected)
                });
                if together {
                    self.operator_failover();
                }
            }
        }
    }

    pub(super) fn crash(&mut self, i: usize) {
        self.report.crashes += 1;
        let s = format!("{} loses power ({})", self.name(i), self.describe());
        self.log(s);
        let mut rng = ChaCha8Rng::seed_from_u64(self.rng.gen());
        self.nodes[i]
            .disk
            .power_loss(&mut rng, self.sc.rates.cache_survives);
        // Metadata writes in flight: a prefix of them made it.
        let keep = self.rng.gen_range(0..=self.nodes[i].meta_q.len());
        let applied: Vec<(MetaToken, MetaW)> = self.nodes[i].meta_q.drain(..keep).collect();
        for (_, m) in applied {
            let meta = &mut self.nodes[i].meta;
            match m {
                MetaW::Super(g, f) => {
                    meta.gens = g;
                    meta.flags = f;
                }
                MetaW::Al(s, e) => {
                    meta.al_seq = s;
                    meta.al_extents = e;
                }
                MetaW::Bitmap(f, w) => meta.write_bitmap(f, &w),
            }
        }
        self.oracle.power_loss(i);
        if self.nodes[1 - i]
            .node
            .as_ref()
            .is_some_and(|n| n.disk() == DiskState::Diskless)
        {
            // A Diskless peer's writes lived in this node's cache only.
            self.oracle.power_loss(1 - i);
        }
        self.nodes[i].node = None;
        self.nodes[i].app.clear();
        self.nodes[i].inc += 1;
        if let Some(c) = self.nodes[i].conn.take() {
            if self.live_conn == Some(c) {
                self.live_conn = None;
            }
            // What the crashed node had sent: a prefix made it onto the wire.
            let last = self.last_deliver[1 - i].max(self.now);
            let after = self.rng.gen_range(self.now..=last);
            self.cut[1 - i] = Some((c, after));
            // Sometimes the peer hears a reset, sometimes only silence.
            if self.rng.gen_bool(0.5) {
                let t = self.now + self.lat(100, 2000);
                self.at(t, Ev::Down { to: 1 - i, conn: c });
            }
        }
        let t = self.now + self.lat(50 * MS, 400 * MS);
        self.at(t, Ev::Restart(i));
    }

    pub(super) fn schedule_crash(&mut self, i: usize) {
        self.crashes_left -= 1;
        self.crash_pending = true;
        let t = self.now + self.lat(0, 2000);
        self.at(t, Ev::Crash(i));
    }

    /// `freeze-on-disconnect` on, as the cluster agent arms it (repd forgets
    /// it on a restart; the agent arms it again).
    pub(super) fn arm_freeze(&mut self, i: usize) {
        if self.sc.freeze {
            self.admin(i, Admin::Verb(Verb::FreezeOnDisconnect { on: true }));
        }
    }

    /// After a failover the old Primary came back and resyncs from the new
    /// one: crash the new Primary, the sync source, in the middle of it.
    /// Only once it flushed since its promotion: two power losses before any
    /// flush may rightly lose a write both caches held.
    pub(super) fn crash_the_sync_source(&mut self) {
        if self.crashes_left == 0
            || self.crash_pending
            || self.report.failovers == 0
            || !self.flushed_since_failover
        {
            return;
        }
        let Some(p) = self.primary() else { return };
        let syncing = self.nodes[p]
            .node
            .as_ref()
            .is_some_and(|n| n.conn() == ConnState::SyncSource);
        if syncing {
            let s = format!("{} will crash while it is the sync source", self.name(p));
            self.log(s);
            self.schedule_crash(p);
        }
    }

    /// The Secondary stops answering for a while; the Primary, armed,
    /// freezes when its ping times out. A frozen Primary then crashes (the
    /// survivor takes over) or is resumed, as the agent does.
    pub(super) fn freeze_chaos(&mut self, r: u32, synced: bool) {
        let Some(p) = self.primary() else { return };
        let (frozen, current) = match self.nodes[p].node.as_ref() {
            Some(n) => (n.status().suspended.is_some(), n.gens().current),
            None => return,
        };
        if frozen {
            if self.crash_pending {
                return;
            }
            // Frozen because its peer stopped answering: decide once whether
            // it crashes now (the survivor then takes over).
            if self.peer_stopped.take() == Some(p)
                && self.crashes_left > 0
                && self.rng.gen_bool(0.7)
            {
                let s = format!("{} will crash while frozen", self.name(p));
                self.log(s);
                self.schedule_crash(p);
            } else if self.rng.gen_bool(0.2) {
                self.admin(p, Admin::ResumeIoAt { current });
            }
            return;
        }
        if (900..930).contains(&r) && synced && self.now >= self.partition_until {
            let d = self.lat(100 * MS, 300 * MS);
            self.partition_until = self.now + d;
            self.peer_stopped = Some(p);
            let s = format!("{} stops answering for {} ms", self.name(1 - p), d / MS);
            self.log(s);
        }
    }

    /// The operator (or cluster manager) promotes the survivor of a crashed
    /// Primary once it noticed the loss and holds UpToDate data.
    pub(super) fn operator_failover(&mut self) {
        if self.primary().is_some() {
            return;
        }
        for i in 0..2 {
            let ok = self.nodes[i].node.as_ref().is_some_and(|n| {
                n.disk() == DiskState::UpToDate
                    && !matches!(
                        n.conn(),
                        ConnState::Handshake | ConnState::WFBitMapT | ConnState::SyncTarget
                    )
            });
            let peer_down = self.nodes[1 - i].node.is_none();
            let peer_back = self.nodes[1 - i]
                .node
                .as_ref()
                .is_some_and(|n| n.disk() == DiskState::UpToDate);
            let noticed = self.nodes[i]
                .node
                .as_ref()
                .is_some_and(|n| n.conn() != ConnState::Connected)
                || !peer_down;
            let go =
                ok && noticed && ((peer_down && self.sc.failover) || (peer_back && !peer_down));
            if go && self.admin(i, Admin::Verb(Verb::Primary { force: false })) {
                if peer_down {
                    self.report.failovers += 1;
                    self.flushed_since_failover = false;
                }
                return;
            }
        }
    }

    pub(super) fn split_brain_chaos(&mut self) {
        let synced = |w: &World| {
            (0..2).all(|i| {
                w.nodes[i].node.as_ref().is_some_and(|n| {
                    n.disk() == DiskState::UpToDate && n.conn() == ConnState::Connected
                })
            })
        };
        match self.sb_phase {
            0 if synced(self) && self.now > 50 * MS => {
                self.partition_until = self.now + 100_000 * MS;
                self.log("partition (long)".into());
                self.sb_phase = 1;
            }
            1 => {
                // Once the Secondary noticed, promote it too.
                if let Some(p) = self.primary() {
                    let s = 1 - p;
                    let noticed = self.nodes[s]
                        .node
                        .as_ref()
                        .is_some_and(|n| n.conn() == ConnState::Connecting);
                    if noticed
                        && self.nodes[s]
                            .node
                            .as_ref()
                            .is_some_and(|n| n.role() == Role::Secondary)
                    {
                        self.admin(s, Admin::Verb(Verb::Primary { force: false }));
                        self.victim = Some(s);
                    }
                }
            }
            _ => {}
        }
    }
}
