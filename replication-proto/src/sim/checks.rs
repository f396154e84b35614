//! The invariants checked while the run lasts and once it has converged.

use std::fmt::Write as _;

use super::oracle::tag_of;
use super::scenario::{Kind, SbAuto};
use super::world::World;
use crate::machine::{Admin, ConnState, Node, Verb};
use crate::wire::{DiskState, Role};

impl World {
    /// Runs with the resync controller: counts the ticks of node `i` while
    /// it paces a resync, and those held at c-min-rate; a controller that
    /// aims above c-max-rate is a violation.
    pub(super) fn note_controller(&mut self, i: usize) {
        let p = self.sc.resync_control;
        if !p.enabled() {
            return;
        }
        let Some(st) = self.nodes[i].node.as_ref().map(Node::status) else {
            return;
        };
        let Some(rate) = st.sync_rate_target_bytes_per_s else {
            return;
        };
        self.report.controlled_ticks += 1;
        self.report.throttled_ticks += u64::from(st.sync_throttled);
        if rate > p.max_rate_bytes_per_s && self.fail.is_none() {
            self.fail = Some(format!(
                "resync controller aims at {rate} B/s above c-max-rate: {p:?}"
            ));
        }
    }

    /// Counts armed nodes that resumed; forgets those that gave up.
    pub(super) fn count_resumed(&mut self) {
        for i in 0..2 {
            if !self.resume_armed[i] {
                continue;
            }
            let Some(note) = self.nodes[i].node.as_ref().and_then(|n| n.status().resume) else {
                continue;
            };
            if note.starts_with("resumed") {
                self.report.resumed += 1;
                self.resume_armed[i] = false;
            } else if note.starts_with("not resumed") {
                self.resume_armed[i] = false;
            }
        }
    }

    pub(super) fn check_single_primary(&mut self) -> Result<(), String> {
        if self.sc.kind == Kind::SplitBrain {
            return Ok(());
        }
        let both = (0..2).all(|i| {
            self.nodes[i]
                .node
                .as_ref()
                .is_some_and(|n| n.role() == Role::Primary)
        });
        if both {
            return Err("two Primaries at once outside a split-brain scenario".into());
        }
        Ok(())
    }

    pub(super) fn describe(&self) -> String {
        let mut s = String::new();
        for i in 0..2 {
            match &self.nodes[i].node {
                Some(n) => {
                    let st = n.status();
                    let _ = write!(
                        s,
                        "[{} {:?} {:?} {:?}/{:?} oos={} app={} sb={} err={:?}] ",
                        st.node,
                        st.role,
                        st.connection,
                        st.disk,
                        st.peer_disk,
                        st.out_of_sync_bytes,
                        st.app_pending,
                        st.split_brain,
                        st.last_error
                    );
                }
                None => {
                    let _ = write!(s, "[{} down] ", self.name(i));
                }
            }
        }
        s
    }

    /// End phase: heal, bring everything up, wait until both are in sync.
    pub(super) fn converged(&mut self) -> Result<bool, String> {
        if self.sc.kind == Kind::SplitBrain && self.sb_phase == 1 {
            self.heal_split_brain();
            return Ok(false);
        }
        self.partition_until = self.partition_until.min(self.now);
        if self.nodes.iter().any(|n| n.node.is_none()) {
            return Ok(false);
        }
        if self.sc.kind == Kind::SplitBrain && self.sb_phase == 2 {
            self.resolve_split_brain()?;
            return Ok(false);
        }
        self.bring_up()?;
        let ok = (0..2).all(|i| {
            self.nodes[i].node.as_ref().is_some_and(|n| {
                let st = n.status();
                st.connection == ConnState::Connected
                    && st.disk == DiskState::UpToDate
                    && st.peer_disk == DiskState::UpToDate
                    && st.app_pending == 0
                    && st.local_pending == 0
                    && st.peer_pending == 0
                    && st.unacked == 0
            })
        }) && self.nodes.iter().all(|n| n.app.is_empty());
        Ok(ok)
    }

    /// Split-brain run, both Primary and apart: once the second one is
    /// promoted too, heal the partition and expect detection.
    fn heal_split_brain(&mut self) {
        if self.victim.is_none() {
            // The Secondary has not noticed the partition yet (on a slow
            // link, frames queued before it still arrive for a while):
            // wait until it has and is promoted too.
            self.split_brain_chaos();
            return;
        }
        // Let both write for a while, then heal and expect detection.
        self.sb_phase = 2;
        self.partition_until = self.now;
        self.log("partition healed".into());
    }

    /// Once both detected the split brain and are idle, the victim
    /// discards its data and both connect again.
    fn resolve_split_brain(&mut self) -> Result<(), String> {
        let sb = (0..2).all(|i| {
            self.nodes[i]
                .node
                .as_ref()
                .is_some_and(|n| n.split_brain() && n.conn() == ConnState::StandAlone)
        });
        if !sb || self.nodes.iter().any(|n| !n.app.is_empty()) {
            return Ok(());
        }
        self.report.split_brains += 1;
        if let Some(loser) = self.policy_loser() {
            return self.resolve_by_policy(loser);
        }
        let victim = self.victim.unwrap_or(1);
        let s = format!(
            "split brain detected on both; {} discards its data",
            self.name(victim)
        );
        self.log(s);
        // The data must not have been merged: nothing moved.
        self.oracle.discard_node_unprotected(victim);
        if !self.admin(victim, Admin::Verb(Verb::Secondary)) {
            return Err("victim could not be demoted".into());
        }
        self.admin(
            victim,
            Admin::Verb(Verb::Connect {
                discard_my_data: true,
            }),
        );
        self.admin(
            1 - victim,
            Admin::Verb(Verb::Connect {
                discard_my_data: false,
            }),
        );
        self.sb_phase = 3;
        Ok(())
    }

    /// Under discard-younger-primary / discard-older-primary, the node the
    /// policy must discard, by the promotion times the nodes keep; `None`
    /// for the manual runs, and where the times do not tell (the policy
    /// then falls back to discard-least-changes, which the unit tests
    /// cover): those recover by hand.
    fn policy_loser(&self) -> Option<usize> {
        let at = |i: usize| self.nodes[i].node.as_ref().map_or(0, Node::promoted_at_ms);
        let (a, b) = (at(0), at(1));
        if a == 0 || b == 0 || a == b {
            return None;
        }
        let younger = usize::from(b > a);
        match self.sc.sb_auto {
            SbAuto::Manual => None,
            SbAuto::Younger => Some(younger),
            SbAuto::Older => Some(1 - younger),
        }
    }

    /// Both demoted and connected again: the handshake (no Primary, after-sb-0pri)
    /// must resolve the split brain with `loser` as the target. Checked by
    /// the data: the oracle lets only the loser's own writes be lost.
    fn resolve_by_policy(&mut self, loser: usize) -> Result<(), String> {
        let s = format!(
            "split brain detected on both; both demoted and reconnected: {:?} must discard {}",
            self.sc.sb_auto,
            self.name(loser)
        );
        self.log(s);
        self.oracle.discard_node_unprotected(loser);
        for i in 0..2 {
            if !self.admin(i, Admin::Verb(Verb::Secondary)) {
                return Err(format!("{} could not be demoted", self.name(i)));
            }
        }
        for i in 0..2 {
            self.admin(
                i,
                Admin::Verb(Verb::Connect {
                    discard_my_data: false,
                }),
            );
        }
        self.sb_phase = 3;
        Ok(())
    }

    /// Everything up: StandAlone nodes connect, a Primary is chosen if
    /// none is left, frozen Primaries are resumed (as the agent does),
    /// paused resyncs released.
    fn bring_up(&mut self) -> Result<(), String> {
        for i in 0..2 {
            let st = self.nodes[i].node.as_ref().map(Node::status);
            if let Some(st) = st {
                if st.split_brain && self.sc.kind != Kind::SplitBrain {
                    return Err(format!(
                        "unexpected split brain on {}: {:?}",
                        st.node, st.last_error
                    ));
                }
                if st.connection == ConnState::StandAlone {
                    self.admin(
                        i,
                        Admin::Verb(Verb::Connect {
                            discard_my_data: false,
                        }),
                    );
                }
            }
        }
        self.repair_disks();
        if self.primary().is_none() {
            self.operator_failover();
        }
        for i in 0..2 {
            // The agent resumes a frozen Primary once things settle.
            let frozen = self.nodes[i].node.as_ref().and_then(|n| {
                (n.status().suspended.is_some() && n.role() == Role::Primary)
                    .then(|| n.gens().current)
            });
            if let Some(current) = frozen {
                self.admin(i, Admin::ResumeIoAt { current });
            }
            // And releases a resync the operator left paused.
            let paused = self.nodes[i]
                .node
                .as_ref()
                .is_some_and(|n| n.status().sync_paused_by_user);
            if paused {
                self.admin(i, Admin::Verb(Verb::ResumeSync));
            }
        }
        Ok(())
    }

    pub(super) fn final_checks(&mut self) -> Result<(), String> {
        let touched = self.nodes[0].disk.touched(&self.nodes[1].disk);
        for &b in &touched {
            let (a, c) = (self.nodes[0].disk.block(b), self.nodes[1].disk.block(b));
            if a != c {
                return Err(format!(
                    "after resync the data differ at block {b}: alpha has tag {}, beta tag {} ({})",
                    tag_of(&a),
                    tag_of(&c),
                    self.describe()
                ));
            }
            self.oracle
                .check(b, tag_of(&a))
                .map_err(|e| format!("acknowledged data lost: {e}"))?;
        }
        for i in 0..2 {
            let st = self.nodes[i].node.as_ref().map(Node::status);
            if let Some(st) = st {
                if st.out_of_sync_bytes != 0 {
                    return Err(format!(
                        "{} still counts {} bytes out of sync",
                        st.node, st.out_of_sync_bytes
                    ));
                }
            }
        }
        Ok(())
    }
}
