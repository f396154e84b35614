//! Resources that die behind the agent's back, and what the monitors
//! find: the chain must be whole again (restarted in place, or moved to
//! the peer at migration-threshold) within a bound.

use rand::Rng;

use super::*;

/// A kill and the moment by which the chain must run whole again.
#[derive(Debug)]
pub(super) struct ExpectRecovery {
    pub(super) kill_at: Millis,
    pub(super) deadline: Millis,
}

impl World {
    /// Resource `r` of node `n` dies, if that node holds the whole chain.
    pub(super) fn kill_resource(&mut self, n: usize, r: usize) {
        let holds = self.nodes[n]
            .agent
            .as_ref()
            .is_some_and(|a| a.state() == HaState::Holding && a.pending().is_none());
        let node = &mut self.nodes[n];
        if !holds || node.role != Role::Primary || !node.started.iter().all(|x| *x) {
            return;
        }
        // `started` stays the agent's doing (the order invariants check
        // it); the mark is what its monitor finds.
        node.killed[r] = true;
        self.report.kills += 1;
        // The peer may be banned itself (then nobody takes the chain until
        // failure-timeout), or the run lossy: no bound then.
        let peer_banned = self.nodes[1 - n]
            .agent
            .as_ref()
            .is_none_or(|a| a.cooling_down(self.now));
        if self.sc.loss == 0.0 && self.sc.op_fail == 0.0 && !self.sc.witness && !peer_banned {
            let res = self.sc.resources as u64;
            let bound = self.sc.monitor_interval
                + 2 * self.sc.deadtime
                + 6 * self.sc.keepalive
                + (2 * res + 4) * self.sc.max_op;
            self.expect_recovery = Some(ExpectRecovery {
                kill_at: self.now,
                deadline: self.now + bound,
            });
        }
    }

    /// What the monitor of resource `res` on node `n` finds: whether it
    /// runs, or (sometimes, before the heal) a failed monitor.
    pub(super) fn monitor_outcome(&mut self, n: usize, res: usize) -> MonitorOutcome {
        if !self.healed && self.rng.gen_bool(self.sc.monitor_fail) {
            self.report.failed_monitors += 1;
            return MonitorOutcome::Failed("simulated monitor timeout".into());
        }
        let node = &self.nodes[n];
        if node.started.get(res).copied().unwrap_or(false) && !node.killed[res] {
            MonitorOutcome::Running
        } else {
            MonitorOutcome::Stopped
        }
    }

    /// After a kill: the chain runs whole on some Primary by the deadline.
    pub(super) fn check_recovery(&mut self) -> Result<(), Violation> {
        let Some(e) = &self.expect_recovery else {
            return Ok(());
        };
        let whole = self.nodes.iter().any(|n| {
            n.repd_up
                && n.role == Role::Primary
                && n.started.iter().all(|x| *x)
                && !n.killed.iter().any(|x| *x)
        });
        if whole {
            let took = self.now - e.kill_at;
            self.report.recoveries_checked += 1;
            self.report.max_recovery_ms = self.report.max_recovery_ms.max(took);
            self.expect_recovery = None;
        } else if self.now > e.deadline {
            return Err(self.violation(format!(
                "a killed resource was neither restarted nor moved within {} ms",
                e.deadline - e.kill_at
            )));
        }
        Ok(())
    }
}
