//! The simulated repd of each node and its replication link: roles, disk
//! states, data generations, resync and split-brain detection, and the
//! operations the agents run on it (with their invariants).

use rand::Rng;

use replication_proto::gen::Generations;

use super::*;

impl World {
    pub(super) fn crash_node(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        node.agent = None;
        node.gen += 1;
        node.repd_up = false;
        if node.role == Role::Primary {
            // A crashed Primary comes back Consistent until it resynced.
            node.disk = match node.disk {
                DiskState::UpToDate => DiskState::Consistent,
                d => d,
            };
        }
        node.role = Role::Secondary;
        node.started.iter_mut().for_each(|x| *x = false);
        node.killed.iter_mut().for_each(|x| *x = false);
        node.suspended = false;
        node.freeze_armed = false;
    }

    pub(super) fn restart_node(&mut self, n: usize) {
        self.log(format!("{}: node restarts", NAMES[n]));
        self.nodes[n].repd_up = true;
        self.start_agent(n);
    }

    pub(super) fn local_state(&self, n: usize) -> Option<LocalState> {
        let me = &self.nodes[n];
        let peer = &self.nodes[1 - n];
        me.repd_up.then(|| LocalState {
            role: me.role,
            disk: me.disk,
            connected: self.connected,
            peer_role: self.connected.then_some(peer.role),
            peer_disk: if self.connected {
                peer.disk
            } else {
                DiskState::DUnknown
            },
            gens: {
                let h = |k: usize| {
                    me.hist
                        .len()
                        .checked_sub(k + 1)
                        .and_then(|i| me.hist.get(i))
                        .copied()
                        .unwrap_or(0)
                };
                Generations {
                    current: h(0),
                    bitmap: h(1),
                    history: [h(2), h(3)],
                }
            },
            suspended: me.suspended,
            freeze_armed: me.freeze_armed,
        })
    }

    /// The replication link: connect, decide the resync, finish it.
    pub(super) fn repd_step(&mut self) {
        let up = self.nodes[0].repd_up && self.nodes[1].repd_up && self.rep_up;
        if !up {
            self.repd_disconnect();
            return;
        }
        if !self.connected && !self.split_brain {
            self.repd_connect();
        }
        if let Some((t, until)) = self.sync {
            if self.now >= until {
                let h = self.nodes[1 - t].hist.clone();
                self.nodes[t].hist = h;
                self.nodes[t].disk = DiskState::UpToDate;
                self.sync = None;
                self.log(format!("repd: {} resynced", NAMES[t]));
            } else {
                self.push(until, Ev::Wake);
            }
        }
        if self.connected && self.sync.is_none() {
            // Connected and idle: the same data on both sides.
            for n in 0..2 {
                let other = 1 - n;
                if self.nodes[n].disk == DiskState::Outdated
                    && self.nodes[other].disk == DiskState::UpToDate
                {
                    self.nodes[n].disk = DiskState::Inconsistent;
                    self.sync = Some((n, self.now + self.sc.resync));
                }
            }
        }
    }

    fn repd_disconnect(&mut self) {
        if self.connected {
            self.log("repd: disconnected".into());
            if self.sc.witness {
                // A Primary that loses its peer starts a new generation
                // and, armed, freezes before acknowledging anything alone.
                for n in 0..2 {
                    if self.nodes[n].repd_up && self.nodes[n].role == Role::Primary {
                        let id = self.next_gen_id;
                        self.next_gen_id += 1;
                        let node = &mut self.nodes[n];
                        node.hist.push(id);
                        if node.freeze_armed {
                            node.suspended = true;
                        }
                        self.log(format!("repd: {} alone, new generation {id}", NAMES[n]));
                    }
                }
            }
        }
        self.connected = false;
        self.sync = None;
    }

    /// The handshake: who has the newer data, or a split brain.
    fn repd_connect(&mut self) {
        let (a, b) = (&self.nodes[0], &self.nodes[1]);
        let (ca, cb) = (*a.hist.last().unwrap_or(&0), *b.hist.last().unwrap_or(&0));
        let source = if a.role == Role::Primary && b.role == Role::Primary {
            None
        } else if ca == cb {
            match (a.disk, b.disk) {
                (DiskState::UpToDate, DiskState::UpToDate) => Some(None),
                (DiskState::UpToDate, _) => Some(Some(0)),
                (_, DiskState::UpToDate) => Some(Some(1)),
                _ => Some(None),
            }
        } else if a.hist.contains(&cb) {
            Some(Some(0))
        } else if b.hist.contains(&ca) {
            Some(Some(1))
        } else {
            None
        };
        match source {
            None => {
                self.split_brain = true;
                self.log("repd: split brain detected; staying StandAlone".into());
            }
            Some(src) => {
                self.connected = true;
                self.log(format!("repd: connected, sync source {src:?}"));
                if let Some(s) = src {
                    let t = 1 - s;
                    if self.nodes[t].role == Role::Primary {
                        // A Primary never becomes a sync target here: that is
                        // a split brain for the core to refuse.
                        self.split_brain = true;
                        self.connected = false;
                        self.log("repd: the newer data is on the Secondary: split brain".into());
                    } else {
                        self.nodes[t].disk = DiskState::Inconsistent;
                        self.sync = Some((t, self.now + self.sc.resync));
                    }
                }
            }
        }
    }

    pub(super) fn apply_op(&mut self, n: usize, op: &Op) -> Result<OpResult, Violation> {
        Ok(match op {
            Op::Promote { force } => self.apply_promote(n, *force)?,
            Op::Demote => {
                if self.nodes[n].started.iter().any(|x| *x) {
                    return Err(self.violation(format!(
                        "{} demoted with resources still running: {:?}",
                        NAMES[n], self.nodes[n].started
                    )));
                }
                self.nodes[n].role = Role::Secondary;
                self.nodes[n].suspended = false;
                OpResult::Ok
            }
            Op::Start(i) => self.apply_start(n, *i)?,
            Op::Stop(i) => self.apply_stop(n, *i)?,
            Op::SuspendIo { .. } | Op::ResumeIo { .. } | Op::ArmFreeze
                if !self.nodes[n].repd_up =>
            {
                OpResult::Failed("repd not running".into())
            }
            Op::SuspendIo { .. } => {
                if self.nodes[n].role == Role::Primary && !self.nodes[n].suspended {
                    self.report.suspensions += 1;
                }
                self.nodes[n].suspended = true;
                OpResult::Ok
            }
            Op::ResumeIo { current } if self.nodes[n].hist.last() != Some(current) => {
                OpResult::Failed("refused: the node froze again since".into())
            }
            Op::ResumeIo { .. } => {
                self.nodes[n].suspended = false;
                OpResult::Ok
            }
            Op::ArmFreeze if self.sc.no_freeze => {
                OpResult::Failed("bad request: unknown variant `freeze-on-disconnect`".into())
            }
            Op::ArmFreeze => {
                self.nodes[n].freeze_armed = true;
                OpResult::Ok
            }
            // on-stop-failure stays "block" in the simulator.
            Op::RebootHook => OpResult::Ok,
            Op::Outdate => {
                let connected = self.connected;
                let me = &mut self.nodes[n];
                if connected || me.role == Role::Primary {
                    OpResult::Failed("refused: connected or Primary".into())
                } else {
                    if matches!(me.disk, DiskState::UpToDate | DiskState::Consistent) {
                        me.disk = DiskState::Outdated;
                    }
                    OpResult::Ok
                }
            }
            Op::Fence => self.apply_fence(n),
        })
    }

    fn apply_promote(&mut self, n: usize, force: bool) -> Result<OpResult, Violation> {
        let other = 1 - n;
        Ok({
            let me = &self.nodes[n];
            if !me.repd_up {
                OpResult::Failed("repd not running".into())
            } else if self.connected && self.nodes[other].role == Role::Primary {
                OpResult::Failed("the peer is Primary".into())
            } else if me.disk == DiskState::UpToDate || (me.disk == DiskState::Consistent && force)
            {
                let connected = self.connected;
                if self.sc.witness && !self.sc.no_freeze {
                    if let Some(g) = self.nodes[other].alone_gen {
                        if !self.nodes[n].hist.contains(&g) {
                            return Err(self.violation(format!(
                            "{} promoted without the writes {} acknowledged alone (generation {g})",
                            NAMES[n], NAMES[other]
                        )));
                        }
                    }
                    if !connected {
                        self.report.witness_takeovers += 1;
                    }
                }
                let id = self.next_gen_id;
                self.next_gen_id += 1;
                let me = &mut self.nodes[n];
                me.role = Role::Primary;
                me.disk = DiskState::UpToDate;
                if !connected {
                    me.hist.push(id);
                    if me.freeze_armed {
                        me.suspended = true;
                    }
                }
                self.report.promotions += 1;
                OpResult::Ok
            } else {
                OpResult::Failed(format!("need UpToDate data, disk is {:?}", me.disk))
            }
        })
    }

    fn apply_start(&mut self, n: usize, i: usize) -> Result<OpResult, Violation> {
        Ok({
            let node = &self.nodes[n];
            if i >= node.started.len() {
                return Err(self.violation(format!("start of resource {i} that does not exist")));
            }
            if node.role != Role::Primary {
                return Err(self.violation(format!(
                    "{} starts resource {i} on a {:?} device",
                    NAMES[n], node.role
                )));
            }
            if !node.started[..i].iter().all(|x| *x) {
                return Err(self.violation(format!(
                    "{} starts resource {i} before its predecessors: {:?}",
                    NAMES[n], node.started
                )));
            }
            if self.rng.gen_bool(self.sc.op_fail) {
                self.report.failed_starts += 1;
                OpResult::Failed("simulated start failure".into())
            } else {
                self.nodes[n].started[i] = true;
                self.nodes[n].killed[i] = false;
                OpResult::Ok
            }
        })
    }

    fn apply_stop(&mut self, n: usize, i: usize) -> Result<OpResult, Violation> {
        Ok({
            let node = &self.nodes[n];
            if i >= node.started.len() {
                return Err(self.violation(format!("stop of resource {i} that does not exist")));
            }
            if node.started[i + 1..].iter().any(|x| *x) {
                return Err(self.violation(format!(
                    "{} stops resource {i} before its successors: {:?}",
                    NAMES[n], node.started
                )));
            }
            if self.rng.gen_bool(self.sc.op_fail) {
                self.report.failed_stops += 1;
                OpResult::Failed("simulated stop failure".into())
            } else {
                self.nodes[n].started[i] = false;
                self.nodes[n].killed[i] = false;
                OpResult::Ok
            }
        })
    }

    fn apply_fence(&mut self, n: usize) -> OpResult {
        let other = 1 - n;
        self.report.fences += 1;
        let code = if !self.nodes[other].repd_up {
            if self.rng.gen_bool(0.5) {
                5
            } else {
                7
            }
        } else {
            match self.sc.fence {
                FenceMode::None | FenceMode::Failing => 1,
                FenceMode::Stonith => {
                    self.log(format!("{}: STONITH of {}", NAMES[n], NAMES[other]));
                    self.report.crashes += 1;
                    self.crash_node(other);
                    let back = self.now + self.sc.deadtime * self.rng.gen_range(1..5);
                    self.push(back, Ev::Fault(Fault::Restart(other)));
                    7
                }
                FenceMode::Outdate => {
                    if self.nodes[other].role == Role::Primary {
                        6
                    } else {
                        if matches!(
                            self.nodes[other].disk,
                            DiskState::UpToDate | DiskState::Consistent
                        ) {
                            self.nodes[other].disk = DiskState::Outdated;
                        }
                        4
                    }
                }
            }
        };
        OpResult::FenceExit(Some(code), String::new())
    }
}
