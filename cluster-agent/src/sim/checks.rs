//! The invariants checked after every event and after the heal.

use super::*;

#[derive(Debug)]
pub(super) struct Expect {
    pub(super) node: usize,
    pub(super) crash_at: Millis,
    pub(super) deadline: Millis,
}

impl World {
    pub(super) fn note_unsafe(&mut self) {
        let cut = self.path_up.iter().all(|u| !u);
        let agent_dead = self.nodes.iter().any(|n| n.agent.is_none());
        if cut || agent_dead {
            self.last_unsafe = self.now;
        }
        if agent_dead {
            self.last_agent_dead = self.now;
        }
    }

    pub(super) fn expect_takeover(&mut self, dead: usize) {
        let s = 1 - dead;
        if self.sc.op_fail > 0.0 || self.sc.fence == FenceMode::Failing {
            return;
        }
        let dead_holds = self.nodes[dead]
            .agent
            .as_ref()
            .is_some_and(|a| a.state() == HaState::Holding)
            && self.nodes[dead].started.iter().all(|x| *x)
            && self.nodes[dead].role == Role::Primary;
        let survivor = &self.nodes[s];
        let ready = survivor.repd_up
            && survivor.disk == DiskState::UpToDate
            && survivor.role == Role::Secondary
            && survivor.agent.as_ref().is_some_and(|a| {
                a.state() == HaState::Idle
                    && a.pending().is_none()
                    && !a.cooling_down(self.now)
                    && !a.retry_pending(self.now)
                    && a.peer_alive() == Some(true)
            });
        // With a witness: it must be there for the survivor and count it,
        // and it votes a keepalive and two round trips after deadtime.
        let witness_ok = !self.sc.witness
            || (self.wlink_up[s]
                && self.witness.as_ref().is_some_and(|w| w.counts(NAMES[s]))
                && survivor
                    .agent
                    .as_ref()
                    .is_some_and(|a| a.has_quorum(self.now)));
        if dead_holds && ready && witness_ok {
            let mut fence = if self.sc.fence == FenceMode::None {
                0
            } else {
                self.sc.max_fence
            };
            if self.sc.witness {
                // Each lost request or answer costs a keepalive.
                let rounds = if self.sc.loss > 0.0 { 10 } else { 1 };
                fence += rounds * self.sc.keepalive + 4 * self.sc.max_delay + 2;
            }
            // Heartbeats already in flight when it died count as heard.
            let deadline = self.now
                + self.sc.max_delay
                + self.sc.deadtime
                + 1
                + fence
                + (self.sc.resources as u64 + 1) * self.sc.max_op;
            self.expect = Some(Expect {
                node: s,
                crash_at: self.now,
                deadline,
            });
        }
    }

    pub(super) fn check(&mut self) -> Result<(), Violation> {
        // Resources run only on a Primary.
        for n in 0..2 {
            let node = &self.nodes[n];
            if node.started.iter().any(|x| *x) && (node.role != Role::Primary || !node.repd_up) {
                return Err(self.violation(format!(
                    "{} runs resources {:?} on a {:?} device",
                    NAMES[n], node.started, node.role
                )));
            }
        }
        if self.sc.witness {
            return self.check_quorum();
        }
        let both = self
            .nodes
            .iter()
            .all(|n| n.repd_up && n.role == Role::Primary);
        if both {
            if self.sc.fence != FenceMode::None {
                return Err(self.violation(
                    "two Primaries at once although a fence command is configured".into(),
                ));
            }
            if self.double_since.is_none() {
                self.double_since = Some(self.now);
                self.report.double_primary_windows += 1;
                self.log("two Primaries (every path was cut: heartbeat without fencing)".into());
            }
            let bound = 2 * self.sc.keepalive
                + self.sc.max_delay
                + 2 * (self.sc.resources as u64 + 2) * self.sc.max_op;
            if self.now > self.last_unsafe + bound {
                return Err(self.violation(format!(
                    "two Primaries for {} ms after a path came back (bound {bound} ms)",
                    self.now - self.last_unsafe
                )));
            }
        } else {
            self.double_since = None;
        }
        self.check_expect()
    }

    pub(super) fn check_expect(&mut self) -> Result<(), Violation> {
        self.check_recovery()?;
        if let Some(e) = &self.expect {
            let s = &self.nodes[e.node];
            if s.role == Role::Primary && s.started.iter().all(|x| *x) {
                let took = self.now - e.crash_at;
                self.log(format!("{} took over in {took} ms", NAMES[e.node]));
                self.report.takeovers_checked += 1;
                self.report.max_takeover_ms = self.report.max_takeover_ms.max(took);
                self.expect = None;
            } else if self.now > e.deadline {
                return Err(self.violation(format!(
                    "{} did not replace the dead Primary within deadtime + tick + latencies ({} ms)",
                    NAMES[e.node],
                    e.deadline - e.crash_at
                )));
            }
        }
        Ok(())
    }

    /// With a witness: never two nodes accepting writes, and note what a
    /// node acknowledged alone.
    pub(super) fn check_quorum(&mut self) -> Result<(), Violation> {
        let accepting = |n: &SimNode| n.repd_up && n.role == Role::Primary && !n.suspended;
        // Without the freeze, only the agent suspends a Primary: a dead
        // agent (and one that just restarted) cannot.
        let exempt = self.sc.no_freeze && self.now < self.last_agent_dead + 2 * self.sc.deadtime;
        if self.nodes.iter().all(accepting) && !exempt {
            return Err(self.violation(
                "two nodes accept writes at once although a witness is configured".into(),
            ));
        }
        for n in 0..2 {
            let connected = self.connected;
            let node = &mut self.nodes[n];
            if accepting(node) && !connected {
                node.alone_gen = node.hist.last().copied();
            }
        }
        self.check_expect()
    }

    pub(super) fn final_check(&mut self) -> Result<(), Violation> {
        let holders: Vec<usize> = (0..2)
            .filter(|&n| self.nodes[n].role == Role::Primary)
            .collect();
        let usable = self.nodes.iter().any(|n| n.disk == DiskState::UpToDate);
        for n in 0..2 {
            if self.nodes[n].agent.is_none() {
                return Err(self.violation(format!("{} has no agent after the heal", NAMES[n])));
            }
        }
        if !usable {
            self.log("no UpToDate disk left: nobody can hold the resources".into());
            return Ok(());
        }
        if holders.len() != 1 {
            let why: Vec<String> = (0..2)
                .filter_map(|n| {
                    self.nodes[n]
                        .agent
                        .as_ref()
                        .map(|a| format!("{}: {}", NAMES[n], a.status(self.now).decision))
                })
                .collect();
            return Err(self.violation(format!(
                "after the heal {} nodes are Primary (want exactly one); {}",
                holders.len(),
                why.join("; ")
            )));
        }
        let h = holders[0];
        let states: Vec<HaState> = self
            .nodes
            .iter()
            .filter_map(|n| n.agent.as_ref().map(Core::state))
            .collect();
        if !self.nodes[h].started.iter().all(|x| *x)
            || self.nodes[h].killed.iter().any(|x| *x)
            || self.nodes[1 - h].started.iter().any(|x| *x)
            || states.get(h) != Some(&HaState::Holding)
            || states.get(1 - h) != Some(&HaState::Idle)
        {
            return Err(self.violation(format!(
                "after the heal: holder {} with {:?} (killed {:?}), other with {:?}, agents {states:?}",
                NAMES[h],
                self.nodes[h].started,
                self.nodes[h].killed,
                self.nodes[1 - h].started
            )));
        }
        self.check_failback(h)
    }

    /// With auto-failback, the preferred node holds after the heal (unless
    /// a switchover moved the resources away from it).
    fn check_failback(&mut self, h: usize) -> Result<(), Violation> {
        if self.sc.auto_failback {
            if let Some(p) = self.sc.preferred {
                // A switchover away from the preferred node is the operator's
                // choice: it does not ask for the resources back.
                let waived = self.nodes[p]
                    .agent
                    .as_ref()
                    .is_some_and(Core::switched_away);
                if self.nodes[p].disk == DiskState::UpToDate
                    && h != p
                    && !self.split_brain
                    && !waived
                {
                    return Err(self.violation(format!(
                        "auto-failback is on but {} holds instead of the preferred {}",
                        NAMES[h], NAMES[p]
                    )));
                }
                if h == p {
                    self.report.failbacks += 1;
                }
            }
        }
        Ok(())
    }
}
