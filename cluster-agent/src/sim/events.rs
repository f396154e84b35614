//! The event queue and the faults: what happens when, drawn from the seed.

use std::cmp::Ordering;

use rand::Rng;

use super::*;

#[derive(Debug, Clone)]
pub(super) enum Fault {
    PathDown(usize),
    PathUp(usize),
    RepDown,
    RepUp,
    Crash(usize),
    Restart(usize),
    AgentCrash(usize),
    AgentRestart(usize),
    Forge(usize),
    Replay(usize),
    WitnessLink(usize, bool),
    WitnessCrash,
    WitnessRestart,
    /// `cluster-agent switchover` asked on node n (refused unless it holds).
    Switchover(usize),
    /// Resource r of node n dies behind the agent's back (kill -9 of a
    /// service; only while that node holds the whole chain).
    Kill(usize, usize),
}

#[derive(Debug, Clone)]
pub(super) enum Ev {
    Tick(usize, u64),
    Deliver {
        to: usize,
        path: usize,
        beat: Beat,
    },
    Poll(usize, u64),
    OpDone(usize, u64, Op),
    /// The monitor (id) of resource r on node n answers.
    MonitorDone(usize, u64, usize, u64),
    Fault(Fault),
    Heal,
    /// Nothing but a moment for the replication link to move on.
    Wake,
    ToWitness {
        from: usize,
        req: witness::Request,
    },
    FromWitness {
        to: usize,
        reply: witness::Reply,
    },
}

#[derive(Debug)]
pub(super) struct Item {
    pub(super) at: Millis,
    pub(super) id: u64,
    pub(super) ev: Ev,
}

impl PartialEq for Item {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.id) == (o.at, o.id)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Item {
    fn cmp(&self, o: &Self) -> Ordering {
        // Reversed: the heap pops the earliest.
        (o.at, o.id).cmp(&(self.at, self.id))
    }
}

impl World {
    pub(super) fn schedule_faults(&mut self) {
        let mut t = Millis::ZERO;
        loop {
            t += self
                .rng
                .gen_range(self.sc.fault_every / 2..=self.sc.fault_every * 3 / 2);
            if t.as_ms() >= self.sc.fault_ms {
                break;
            }
            self.schedule_fault(t);
            if self.sc.witness {
                self.schedule_witness_fault(t);
            }
            if self.sc.monitor_interval > 0 && self.sc.resources > 0 && self.rng.gen_bool(0.5) {
                let n = self.rng.gen_range(0..2);
                let r = self.rng.gen_range(0..self.sc.resources);
                let at = t + self.rng.gen_range(0..self.sc.fault_every / 2);
                self.push(at, Ev::Fault(Fault::Kill(n, r)));
            }
        }
        self.push(Millis::from_ms(self.sc.fault_ms), Ev::Heal);
    }

    /// How long a fault lasts: between `lo` and `hi` deadtimes.
    fn fault_len(&mut self, lo: f64, hi: f64) -> u64 {
        (self.sc.deadtime as f64 * self.rng.gen_range(lo..hi)) as u64 + 1
    }

    /// One fault of the paths, the replication link, a node or its agent,
    /// the heartbeats' authentication, or an operator's switchover.
    fn schedule_fault(&mut self, t: Millis) {
        match self.rng.gen_range(0..100) {
            0..=24 => {
                let p = self.rng.gen_range(0..PATHS);
                let len = self.fault_len(0.2, 5.0);
                self.push(t, Ev::Fault(Fault::PathDown(p)));
                self.push(t + len, Ev::Fault(Fault::PathUp(p)));
                if p == 0 && self.rng.gen_bool(0.5) {
                    self.push(t, Ev::Fault(Fault::RepDown));
                    self.push(t + len, Ev::Fault(Fault::RepUp));
                }
            }
            25..=39 => {
                let len = self.fault_len(0.3, 4.0);
                for p in 0..PATHS {
                    self.push(t, Ev::Fault(Fault::PathDown(p)));
                    self.push(t + len, Ev::Fault(Fault::PathUp(p)));
                }
                if self.rng.gen_bool(0.6) {
                    self.push(t, Ev::Fault(Fault::RepDown));
                    self.push(t + len, Ev::Fault(Fault::RepUp));
                }
            }
            40..=47 => {
                let len = self.fault_len(0.3, 4.0);
                self.push(t, Ev::Fault(Fault::RepDown));
                self.push(t + len, Ev::Fault(Fault::RepUp));
            }
            48..=71 => {
                let n = self.rng.gen_range(0..2);
                let len = self.fault_len(0.5, 6.0);
                self.push(t, Ev::Fault(Fault::Crash(n)));
                self.push(t + len, Ev::Fault(Fault::Restart(n)));
            }
            72..=83 => {
                let n = self.rng.gen_range(0..2);
                let len = self.fault_len(0.1, 3.0);
                self.push(t, Ev::Fault(Fault::AgentCrash(n)));
                self.push(t + len, Ev::Fault(Fault::AgentRestart(n)));
            }
            84..=91 => {
                let n = self.rng.gen_range(0..2);
                self.push(t, Ev::Fault(Fault::Forge(n)));
            }
            92..=95 => {
                let n = self.rng.gen_range(0..2);
                self.push(t, Ev::Fault(Fault::Replay(n)));
            }
            _ => {
                let n = self.rng.gen_range(0..2);
                self.push(t, Ev::Fault(Fault::Switchover(n)));
            }
        }
    }

    /// With a witness, one of its faults besides.
    fn schedule_witness_fault(&mut self, t: Millis) {
        let len = self.fault_len(0.3, 4.0);
        match self.rng.gen_range(0..100) {
            // One node cut from everything: the peer and the witness.
            0..=24 => {
                let n = self.rng.gen_range(0..2);
                for p in 0..PATHS {
                    self.push(t, Ev::Fault(Fault::PathDown(p)));
                    self.push(t + len, Ev::Fault(Fault::PathUp(p)));
                }
                self.push(t, Ev::Fault(Fault::RepDown));
                self.push(t + len, Ev::Fault(Fault::RepUp));
                self.push(t, Ev::Fault(Fault::WitnessLink(n, false)));
                self.push(t + len, Ev::Fault(Fault::WitnessLink(n, true)));
            }
            25..=49 => {
                let n = self.rng.gen_range(0..2);
                self.push(t, Ev::Fault(Fault::WitnessLink(n, false)));
                self.push(t + len, Ev::Fault(Fault::WitnessLink(n, true)));
            }
            50..=54 => {
                self.push(t, Ev::Fault(Fault::WitnessCrash));
                self.push(t + len, Ev::Fault(Fault::WitnessRestart));
            }
            _ => {}
        }
    }

    pub(super) fn event(&mut self, ev: Ev) -> Result<(), Violation> {
        match ev {
            Ev::Tick(n, g) => {
                let node = &mut self.nodes[n];
                if node.gen != g || node.agent.is_none() || node.next_tick != Some(self.now) {
                    return Ok(());
                }
                node.next_tick = None;
                self.feed(n, Input::Tick)?;
            }
            Ev::Deliver { to, path, beat } => self.deliver(to, path, beat)?,
            Ev::Poll(n, g) => {
                if self.nodes[n].gen != g || self.nodes[n].agent.is_none() {
                    return Ok(());
                }
                let l = self.local_state(n);
                self.feed(n, Input::Local(l))?;
                self.push(self.now + self.sc.keepalive, Ev::Poll(n, g));
            }
            Ev::OpDone(n, g, op) => {
                if self.nodes[n].gen != g || self.nodes[n].agent.is_none() {
                    return Ok(());
                }
                let result = self.apply_op(n, &op)?;
                self.log(format!("{}: {op:?} -> {result:?}", NAMES[n]));
                self.feed(n, Input::Done { op, result })?;
            }
            Ev::MonitorDone(n, g, res, id) => {
                if self.nodes[n].gen != g || self.nodes[n].agent.is_none() {
                    return Ok(());
                }
                let outcome = self.monitor_outcome(n, res);
                self.log(format!("{}: monitor {res} -> {outcome:?}", NAMES[n]));
                self.feed(n, Input::MonitorResult { res, id, outcome })?;
            }
            Ev::Fault(f) => self.fault(f)?,
            Ev::Wake => {}
            Ev::ToWitness { from, req } => self.witness_request(from, &req),
            Ev::FromWitness { to, reply } => {
                if self.nodes[to].agent.is_some() {
                    self.feed(to, Input::Witness(reply))?;
                }
            }
            Ev::Heal => self.heal()?,
        }
        Ok(())
    }

    pub(super) fn fault(&mut self, f: Fault) -> Result<(), Violation> {
        if self.healed
            && !matches!(
                f,
                Fault::Restart(_) | Fault::AgentRestart(_) | Fault::WitnessRestart
            )
        {
            return Ok(());
        }
        // Any fault may delay a pending takeover beyond its bound.
        if !matches!(f, Fault::Forge(_) | Fault::Replay(_)) {
            self.expect = None;
            self.expect_recovery = None;
        }
        self.log(format!("fault {f:?}"));
        match f {
            Fault::PathDown(p) => {
                if self.path_up[p] {
                    self.report.path_cuts += 1;
                }
                self.path_up[p] = false;
                if self.path_up.iter().all(|u| !u) {
                    self.report.partitions += 1;
                }
            }
            Fault::PathUp(p) => self.path_up[p] = true,
            Fault::WitnessLink(n, up) => self.wlink_up[n] = up,
            Fault::WitnessCrash => self.witness = None,
            Fault::WitnessRestart => {
                if self.witness.is_none() {
                    let inc: u64 = self.rng.gen();
                    self.witness = Some(WitnessCore::new(
                        [NAMES[0].into(), NAMES[1].into()],
                        self.sc.deadtime,
                        self.witness_memory.clone(),
                        Incarnation(inc),
                        self.now,
                    ));
                }
            }
            Fault::RepDown => self.rep_up = false,
            Fault::RepUp => self.rep_up = true,
            Fault::Crash(n) => {
                if self.nodes[n].repd_up {
                    self.report.crashes += 1;
                    self.expect_takeover(n);
                    self.crash_node(n);
                }
            }
            Fault::Restart(n) => {
                if !self.nodes[n].repd_up {
                    self.restart_node(n);
                }
            }
            Fault::AgentCrash(n) => {
                if self.nodes[n].agent.is_some() {
                    self.report.agent_crashes += 1;
                    self.nodes[n].agent = None;
                    self.nodes[n].gen += 1;
                }
            }
            Fault::AgentRestart(n) => {
                if self.nodes[n].repd_up && self.nodes[n].agent.is_none() {
                    self.start_agent(n);
                }
            }
            Fault::Forge(n) => self.forge(n)?,
            Fault::Replay(n) => self.replay(n)?,
            Fault::Switchover(n) => self.switchover(n)?,
            Fault::Kill(n, r) => self.kill_resource(n, r),
        }
        Ok(())
    }

    fn deliver(&mut self, to: usize, path: usize, beat: Beat) -> Result<(), Violation> {
        if self.nodes[to].agent.is_some() {
            if self.captured.len() < 64 || self.rng.gen_bool(0.01) {
                let k = self.captured.len().min(63);
                if k < self.captured.len() {
                    self.captured[k] = (to, path, beat.clone());
                } else {
                    self.captured.push((to, path, beat.clone()));
                }
            }
            self.feed(to, Input::Beat { path, beat })?;
        }
        Ok(())
    }

    fn witness_request(&mut self, from: usize, req: &witness::Request) {
        let now = self.now;
        let Some(w) = self.witness.as_mut() else {
            return;
        };
        w.handle(
            now,
            witness::Input::Request {
                node: NAMES[from].into(),
                req: req.clone(),
            },
        );
        while let Some(a) = self.witness.as_mut().and_then(WitnessCore::poll_action) {
            match a {
                witness::Action::Persist(m) => self.witness_memory = m,
                witness::Action::Reply { reply, .. } => {
                    if self.wlink_up[from] && !self.rng.gen_bool(self.sc.loss) {
                        let d = self.rng.gen_range(0..=self.sc.max_delay);
                        self.push(now + d, Ev::FromWitness { to: from, reply });
                    }
                }
                witness::Action::Dropped { .. } => {}
            }
        }
    }

    /// Every link up, every node running: the run settles.
    fn heal(&mut self) -> Result<(), Violation> {
        self.log("heal: every link up, every node running".into());
        self.healed = true;
        self.sc.op_fail = 0.0;
        self.sc.loss = 0.0;
        self.path_up = [true; PATHS];
        self.rep_up = true;
        self.wlink_up = [true; 2];
        if self.sc.witness && self.witness.is_none() {
            self.fault(Fault::WitnessRestart)?;
        }
        for n in 0..2 {
            if !self.nodes[n].repd_up {
                // The dead node is back: nothing to replace any more.
                self.expect = None;
                self.restart_node(n);
            } else if self.nodes[n].agent.is_none() {
                self.start_agent(n);
            }
        }
        Ok(())
    }

    /// A packet with a bad MAC or malformed, on a random path.
    fn forge(&mut self, n: usize) -> Result<(), Violation> {
        if self.nodes[n].agent.is_some() {
            let path = self.rng.gen_range(0..PATHS);
            let kind = if self.rng.gen_bool(0.8) {
                BadPacket::BadMac
            } else {
                BadPacket::Malformed
            };
            self.feed(n, Input::BadPacket { path, kind })?;
        }
        Ok(())
    }

    /// A heartbeat captured earlier, delivered again.
    fn replay(&mut self, n: usize) -> Result<(), Violation> {
        let old: Vec<(usize, Beat)> = self
            .captured
            .iter()
            .filter(|(to, _, _)| *to == n)
            .map(|(_, p, b)| (*p, b.clone()))
            .collect();
        if !old.is_empty() && self.nodes[n].agent.is_some() {
            let (path, beat) = old[self.rng.gen_range(0..old.len())].clone();
            self.feed(n, Input::Beat { path, beat })?;
        }
        Ok(())
    }

    /// `cluster-agent switchover` asked on node n.
    fn switchover(&mut self, n: usize) -> Result<(), Violation> {
        let now = self.now;
        if let Some(agent) = self.nodes[n].agent.as_mut() {
            match agent.request_switchover(now) {
                Ok(_) => self.report.switchovers += 1,
                Err(e) => self.log(format!("{}: switchover refused: {e}", NAMES[n])),
            }
            // Carry out what it started.
            self.feed(n, Input::Tick)?;
        }
        Ok(())
    }
}
