//! The agents: their settings, their start, and feeding a core an input
//! and carrying out its actions (heartbeats, operations, witness requests).

use rand::Rng;

use super::*;

impl World {
    pub(super) fn core_config(&self, n: usize) -> CoreConfig {
        CoreConfig {
            me: NAMES[n].into(),
            peer: NAMES[1 - n].into(),
            keepalive: self.sc.keepalive,
            warntime: self.sc.warntime,
            deadtime: self.sc.deadtime,
            initdead: self.sc.initdead,
            paths: PATHS,
            resources: self.sc.resources,
            fencing: self.sc.fence != FenceMode::None,
            auto_failback: self.sc.auto_failback,
            preferred: self.sc.preferred.map(|p| NAMES[p].to_string()),
            failure_timeout: self.sc.failure_timeout,
            // As the daemon sets them; on-stop-failure stays "block".
            ops: crate::core::OpsConfig {
                handover_grace: self.sc.deadtime * 5,
                ping_settle: self.sc.keepalive * 2 + 1000,
                ..crate::core::OpsConfig::default()
            },
            witness: self.sc.witness,
            no_quorum_fail: self.sc.no_quorum_fail,
            monitors: vec![
                crate::core::MonitorConfig {
                    interval_ms: self.sc.monitor_interval,
                    threshold: self.sc.migration_threshold,
                };
                self.sc.resources
            ],
        }
    }

    pub(super) fn start_agent(&mut self, n: usize) {
        let inc: u64 = self.rng.gen();
        let core = Core::new(
            self.core_config(n),
            Incarnation(inc),
            EPOCH_MS + self.now.as_ms(),
            self.now,
        );
        let node = &mut self.nodes[n];
        node.gen += 1;
        node.agent = Some(core);
        node.next_tick = None;
        let g = node.gen;
        self.log(format!("{}: agent starts ({inc:016x})", NAMES[n]));
        self.push(self.now, Ev::Poll(n, g));
        self.push(self.now, Ev::Tick(n, g));
    }

    pub(super) fn feed(&mut self, n: usize, input: Input) -> Result<(), Violation> {
        let now = self.now;
        let Some(agent) = self.nodes[n].agent.as_mut() else {
            return Ok(());
        };
        agent.handle(now, input);
        let mut actions = Vec::new();
        while let Some(a) = agent.poll_action() {
            actions.push(a);
        }
        let wake = agent.poll_timeout().unwrap_or(Millis::NEVER).max(now + 1);
        let g = self.nodes[n].gen;
        for a in actions {
            match a {
                Action::Send { path, beat } => self.send(n, path, beat),
                Action::Run(op) => {
                    let lat = match op {
                        Op::Fence => self.rng.gen_range(1..=self.sc.max_fence),
                        _ => self.rng.gen_range(1..=self.sc.max_op),
                    };
                    self.log(format!("{}: run {op:?}", NAMES[n]));
                    self.push(now + lat, Ev::OpDone(n, g, op));
                }
                Action::Log { text, .. } => self.log(format!("{}: {text}", NAMES[n])),
                Action::Monitor { res, id } => {
                    let lat = self.rng.gen_range(1..=self.sc.max_op);
                    self.push(now + lat, Ev::MonitorDone(n, g, res, id));
                }
                Action::AskWitness(req) => {
                    if self.wlink_up[n]
                        && self.witness.is_some()
                        && !self.rng.gen_bool(self.sc.loss)
                    {
                        let d = self.rng.gen_range(0..=self.sc.max_delay);
                        self.push(now + d, Ev::ToWitness { from: n, req });
                    }
                }
            }
        }
        let node = &mut self.nodes[n];
        if node.next_tick.is_none_or(|t| wake < t || t <= now) {
            node.next_tick = Some(wake);
            self.push(wake, Ev::Tick(n, g));
        }
        Ok(())
    }

    pub(super) fn send(&mut self, from: usize, path: usize, beat: Beat) {
        if !self.path_up[path] || self.rng.gen_bool(self.sc.loss) {
            return;
        }
        let to = 1 - from;
        let copies = if self.rng.gen_bool(self.sc.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let d = self.rng.gen_range(0..=self.sc.max_delay);
            self.push(
                self.now + d,
                Ev::Deliver {
                    to,
                    path,
                    beat: beat.clone(),
                },
            );
        }
    }
}
