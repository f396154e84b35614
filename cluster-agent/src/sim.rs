//! A seeded simulator of two agents: each drives a simulated repd (roles,
//! disk states, data generations, resync, split-brain detection) and a chain
//! of resources; heartbeats travel over two paths that lose, delay,
//! duplicate and partition; nodes crash whole (power loss) or only their
//! agent dies; packets are replayed and forged; the fence command STONITHs,
//! outdates, or fails. One `u64` seed decides everything, so a failing seed
//! replays exactly.
//!
//! Invariants checked after every event:
//! - with a fence command configured, two repds are never Primary at once;
//! - without one (heartbeat's behaviour), two Primaries exist only while
//!   every path is cut (or an agent is dead) and for a bounded time after
//!   (the loser of the fixed order releases);
//! - a resource runs only on a Primary, the chain starts left to right and
//!   stops right to left, and the device is never demoted under a running
//!   resource;
//! - a dead Primary is replaced (Primary, chain started) within deadtime +
//!   a tick + the fence and start latencies, when the survivor is eligible;
//! - after the faults heal, exactly one node holds the resources (the
//!   preferred one with auto-failback);
//! - with a witness (a third of the scenarios): two nodes never accept
//!   writes at once (a Primary that lost quorum is suspended before the
//!   other promotes), and no node is promoted without the writes the other
//!   acknowledged alone (the witness knows the newer generation);
//! - the core never panics.

// The simulator is a test harness: an out-of-range index is a bug in it.
#![allow(
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::needless_range_loop
)]

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use replication_proto::gen::Generations;
use replication_proto::wire::{DiskState, Role};

use crate::core::{
    Action, BadPacket, Beat, Core, CoreConfig, HaState, Input, LocalState, Millis, Op, OpResult,
};
use crate::witness::{self, Memory, Outcome, WitnessCore};

/// What the fence command does in a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceMode {
    /// No fence command configured (heartbeat's behaviour).
    None,
    /// Powers the peer off, exit 7 (5 when it is down already).
    Stonith,
    /// Marks a Secondary peer Outdated (exit 4); refuses a Primary (exit 6).
    Outdate,
    /// Always fails (exit 1).
    Failing,
}

/// One simulated run's settings (all drawn from the seed by [`Scenario::from_seed`]).
#[derive(Debug, Clone)]
pub struct Scenario {
    pub seed: u64,
    pub fence: FenceMode,
    pub auto_failback: bool,
    /// Index of the preferred node.
    pub preferred: Option<usize>,
    pub resources: usize,
    pub keepalive: u64,
    pub warntime: u64,
    pub deadtime: u64,
    pub initdead: u64,
    pub failure_timeout: u64,
    /// Per-packet loss probability on a working path.
    pub loss: f64,
    pub dup: f64,
    pub max_delay: u64,
    pub max_op: u64,
    pub max_fence: u64,
    /// Probability that a resource start or stop fails.
    pub op_fail: f64,
    pub resync: u64,
    /// How long faults are injected.
    pub fault_ms: u64,
    /// Mean time between faults.
    pub fault_every: u64,
    /// A witness on a third node, with its own link to each node.
    pub witness: bool,
    /// on-no-quorum = io-error.
    pub no_quorum_fail: bool,
    /// repd refuses freeze-on-disconnect (an older repd): the quorum lease
    /// alone must keep two nodes from accepting writes at once (writes
    /// acknowledged alone before the suspension may then be lost: not
    /// checked in these scenarios).
    pub no_freeze: bool,
}

impl Scenario {
    #[must_use]
    pub fn from_seed(seed: u64) -> Self {
        let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_a9e7);
        let keepalive = [100, 200][r.gen_range(0..2)];
        let deadtime = keepalive * r.gen_range(5..=12);
        let fence = match r.gen_range(0..8) {
            0..=2 => FenceMode::None,
            3..=4 => FenceMode::Stonith,
            5..=6 => FenceMode::Outdate,
            _ => FenceMode::Failing,
        };
        let preferred = match r.gen_range(0..3) {
            0 => None,
            k => Some(k - 1),
        };
        Scenario {
            seed,
            fence,
            auto_failback: preferred.is_some() && r.gen_bool(0.5),
            preferred,
            resources: r.gen_range(0..=3),
            keepalive,
            warntime: deadtime / 2,
            deadtime,
            initdead: deadtime * 2,
            failure_timeout: deadtime * 5,
            loss: [0.0, 0.02, 0.1][r.gen_range(0..3)],
            dup: 0.01,
            max_delay: keepalive / 4,
            max_op: r.gen_range(10..=150),
            max_fence: r.gen_range(50..=500),
            // Failing starts and stops only where a failed stop cannot
            // stretch a (heartbeat-style, unfenced) double Primary.
            op_fail: if fence != FenceMode::None && r.gen_bool(0.3) {
                0.15
            } else {
                0.0
            },
            resync: r.gen_range(100..=2000),
            fault_ms: 60_000,
            fault_every: r.gen_range(2_000..=6_000),
            // A stream of its own, so that the scenarios without a witness
            // stay what they were.
            witness: ChaCha8Rng::seed_from_u64(seed ^ 0x0077_1745).gen_bool(0.35),
            no_quorum_fail: ChaCha8Rng::seed_from_u64(seed ^ 0x0e10).gen_bool(0.3),
            no_freeze: ChaCha8Rng::seed_from_u64(seed ^ 0xf4ee).gen_bool(0.3),
        }
    }
}

/// What happened in a run (summed over seeds by the tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimReport {
    pub crashes: u64,
    pub agent_crashes: u64,
    pub partitions: u64,
    pub path_cuts: u64,
    pub promotions: u64,
    pub takeovers_checked: u64,
    pub max_takeover_ms: u64,
    pub fences: u64,
    pub failed_starts: u64,
    pub failed_stops: u64,
    pub double_primary_windows: u64,
    pub bad_mac: u64,
    pub replays: u64,
    pub failbacks: u64,
    /// Suspensions of a Primary's writes for lack of quorum.
    pub suspensions: u64,
    /// Promotions of a disconnected node with the witness's word.
    pub witness_takeovers: u64,
    /// Planned switchovers the holder accepted.
    pub switchovers: u64,
}

/// A broken invariant, with the end of the trace.
#[derive(Debug, Clone)]
pub struct Violation {
    pub seed: u64,
    pub at: Millis,
    pub what: String,
    pub trace: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {} violated an invariant at {} ms: {}",
            self.seed,
            self.at.as_ms(),
            self.what
        )?;
        writeln!(
            f,
            "replay: AGENT_SIM_SEED={} cargo test -p cluster-agent --test sim_seeds replay -- --nocapture",
            self.seed
        )?;
        for l in &self.trace {
            writeln!(f, "  {l}")?;
        }
        Ok(())
    }
}

const NAMES: [&str; 2] = ["alpha", "beta"];
const PATHS: usize = 2;
/// Sim time starts here on the "wall clock" (started_ms of agents).
const EPOCH_MS: u64 = 1_700_000_000_000;

#[derive(Debug, Clone)]
enum Fault {
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
}

#[derive(Debug, Clone)]
enum Ev {
    Tick(usize, u64),
    Deliver {
        to: usize,
        path: usize,
        beat: Beat,
    },
    Poll(usize, u64),
    OpDone(usize, u64, Op),
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
struct Item {
    at: Millis,
    id: u64,
    ev: Ev,
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

#[derive(Debug)]
struct SimNode {
    agent: Option<Core>,
    gen: u64,
    repd_up: bool,
    role: Role,
    disk: DiskState,
    /// Data generations, oldest first; the last is the current one.
    hist: Vec<u64>,
    started: Vec<bool>,
    next_tick: Option<Millis>,
    /// repd holds or fails new writes.
    suspended: bool,
    freeze_armed: bool,
    /// The generation under which this node accepted writes alone (not
    /// connected, not suspended): they exist only on its disk.
    alone_gen: Option<u64>,
}

#[derive(Debug)]
struct Expect {
    node: usize,
    crash_at: Millis,
    deadline: Millis,
}

struct World {
    sc: Scenario,
    rng: ChaCha8Rng,
    now: Millis,
    next_id: u64,
    queue: BinaryHeap<Item>,
    nodes: [SimNode; 2],
    path_up: [bool; PATHS],
    rep_up: bool,
    connected: bool,
    split_brain: bool,
    sync: Option<(usize, Millis)>,
    healed: bool,
    /// The last moment every path was cut or an agent was dead.
    last_unsafe: Millis,
    /// The last moment an agent was dead.
    last_agent_dead: Millis,
    double_since: Option<Millis>,
    expect: Option<Expect>,
    captured: Vec<(usize, usize, Beat)>,
    report: SimReport,
    trace: VecDeque<String>,
    trace_all: bool,
    next_gen_id: u64,
    witness: Option<WitnessCore>,
    /// What the witness keeps on disk across its crashes.
    witness_memory: Memory,
    wlink_up: [bool; 2],
}

/// Run the scenario of `seed`. `trace` prints every event.
///
/// # Errors
/// The first broken invariant.
pub fn run(seed: u64, trace: bool) -> Result<SimReport, Violation> {
    run_scenario(Scenario::from_seed(seed), trace)
}

/// Run one scenario.
///
/// # Errors
/// The first broken invariant.
pub fn run_scenario(sc: Scenario, trace: bool) -> Result<SimReport, Violation> {
    let mut w = World::new(sc, trace);
    w.run()
}

impl World {
    fn new(sc: Scenario, trace_all: bool) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(sc.seed);
        let node = |_| SimNode {
            agent: None,
            gen: 0,
            repd_up: true,
            role: Role::Secondary,
            disk: DiskState::UpToDate,
            hist: vec![1],
            started: vec![false; sc.resources],
            next_tick: None,
            suspended: false,
            freeze_armed: false,
            alone_gen: None,
        };
        let witness = sc.witness.then(|| {
            WitnessCore::new(
                [NAMES[0].into(), NAMES[1].into()],
                sc.deadtime,
                Memory::default(),
                1,
                Millis::ZERO,
            )
        });
        Self {
            nodes: [node(0), node(1)],
            sc,
            rng,
            now: Millis::ZERO,
            next_id: 0,
            queue: BinaryHeap::new(),
            path_up: [true; PATHS],
            rep_up: true,
            connected: false,
            split_brain: false,
            sync: None,
            healed: false,
            last_unsafe: Millis::ZERO,
            last_agent_dead: Millis::ZERO,
            double_since: None,
            expect: None,
            captured: Vec::new(),
            report: SimReport::default(),
            trace: VecDeque::new(),
            trace_all,
            next_gen_id: 100,
            witness,
            witness_memory: Memory::default(),
            wlink_up: [true; 2],
        }
    }

    fn log(&mut self, s: String) {
        let line = format!("{:>7} {s}", self.now.as_ms());
        if self.trace_all {
            println!("{line}");
        }
        if self.trace.len() == 60 {
            self.trace.pop_front();
        }
        self.trace.push_back(line);
    }

    fn violation(&self, what: String) -> Violation {
        Violation {
            seed: self.sc.seed,
            at: self.now,
            what,
            trace: self.trace.iter().cloned().collect(),
        }
    }

    fn push(&mut self, at: Millis, ev: Ev) {
        self.next_id += 1;
        self.queue.push(Item {
            at,
            id: self.next_id,
            ev,
        });
    }

    fn core_config(&self, n: usize) -> CoreConfig {
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
        }
    }

    fn start_agent(&mut self, n: usize) {
        let inc: u64 = self.rng.gen();
        let core = Core::new(
            self.core_config(n),
            inc,
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

    fn schedule_faults(&mut self) {
        let mut t = Millis::ZERO;
        loop {
            t += self
                .rng
                .gen_range(self.sc.fault_every / 2..=self.sc.fault_every * 3 / 2);
            if t.as_ms() >= self.sc.fault_ms {
                break;
            }
            let d = self.sc.deadtime;
            let dur =
                |r: &mut ChaCha8Rng, lo: f64, hi: f64| (d as f64 * r.gen_range(lo..hi)) as u64 + 1;
            match self.rng.gen_range(0..100) {
                0..=24 => {
                    let p = self.rng.gen_range(0..PATHS);
                    let len = dur(&mut self.rng, 0.2, 5.0);
                    self.push(t, Ev::Fault(Fault::PathDown(p)));
                    self.push(t + len, Ev::Fault(Fault::PathUp(p)));
                    if p == 0 && self.rng.gen_bool(0.5) {
                        self.push(t, Ev::Fault(Fault::RepDown));
                        self.push(t + len, Ev::Fault(Fault::RepUp));
                    }
                }
                25..=39 => {
                    let len = dur(&mut self.rng, 0.3, 4.0);
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
                    let len = dur(&mut self.rng, 0.3, 4.0);
                    self.push(t, Ev::Fault(Fault::RepDown));
                    self.push(t + len, Ev::Fault(Fault::RepUp));
                }
                48..=71 => {
                    let n = self.rng.gen_range(0..2);
                    let len = dur(&mut self.rng, 0.5, 6.0);
                    self.push(t, Ev::Fault(Fault::Crash(n)));
                    self.push(t + len, Ev::Fault(Fault::Restart(n)));
                }
                72..=83 => {
                    let n = self.rng.gen_range(0..2);
                    let len = dur(&mut self.rng, 0.1, 3.0);
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
            if self.sc.witness {
                let len = dur(&mut self.rng, 0.3, 4.0);
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
        }
        self.push(Millis::from_ms(self.sc.fault_ms), Ev::Heal);
    }

    fn settle_ms(&self) -> u64 {
        self.sc.initdead
            + self.sc.failure_timeout
            + 12 * self.sc.deadtime
            + self.sc.resync
            + 20 * self.sc.max_op
            + 2 * self.sc.max_fence
    }

    fn run(&mut self) -> Result<SimReport, Violation> {
        self.log(format!("scenario {:?}", self.sc));
        // Both repds up and connected, agents start a little apart.
        for n in 0..2 {
            let at = self.rng.gen_range(0..self.sc.initdead);
            self.push(Millis::from_ms(at), Ev::Fault(Fault::AgentRestart(n)));
        }
        self.schedule_faults();
        let end = Millis::from_ms(self.sc.fault_ms + self.settle_ms());
        while let Some(item) = self.queue.pop() {
            if item.at > end {
                break;
            }
            self.now = item.at;
            self.note_unsafe();
            self.event(item.ev)?;
            self.repd_step();
            self.note_unsafe();
            self.check()?;
        }
        self.now = end;
        self.final_check()?;
        for n in 0..2 {
            if let Some(a) = &self.nodes[n].agent {
                let c = a.counters();
                self.report.bad_mac += c.bad_mac;
                self.report.replays += c.replay;
            }
        }
        Ok(self.report.clone())
    }

    fn note_unsafe(&mut self) {
        let cut = self.path_up.iter().all(|u| !u);
        let agent_dead = self.nodes.iter().any(|n| n.agent.is_none());
        if cut || agent_dead {
            self.last_unsafe = self.now;
        }
        if agent_dead {
            self.last_agent_dead = self.now;
        }
    }

    fn event(&mut self, ev: Ev) -> Result<(), Violation> {
        match ev {
            Ev::Tick(n, g) => {
                let node = &mut self.nodes[n];
                if node.gen != g || node.agent.is_none() || node.next_tick != Some(self.now) {
                    return Ok(());
                }
                node.next_tick = None;
                self.feed(n, Input::Tick)?;
            }
            Ev::Deliver { to, path, beat } => {
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
            }
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
            Ev::Fault(f) => self.fault(f)?,
            Ev::Wake => {}
            Ev::ToWitness { from, req } => {
                let now = self.now;
                let Some(w) = self.witness.as_mut() else {
                    return Ok(());
                };
                let (outcome, changed) = w.handle(now, NAMES[from], &req);
                if changed {
                    self.witness_memory = w.memory().clone();
                }
                if let Outcome::Reply(reply) = outcome {
                    if self.wlink_up[from] && !self.rng.gen_bool(self.sc.loss) {
                        let d = self.rng.gen_range(0..=self.sc.max_delay);
                        self.push(now + d, Ev::FromWitness { to: from, reply });
                    }
                }
            }
            Ev::FromWitness { to, reply } => {
                if self.nodes[to].agent.is_some() {
                    self.feed(to, Input::Witness(reply))?;
                }
            }
            Ev::Heal => {
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
            }
        }
        Ok(())
    }

    fn fault(&mut self, f: Fault) -> Result<(), Violation> {
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
                        inc,
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
            Fault::Forge(n) => {
                if self.nodes[n].agent.is_some() {
                    let path = self.rng.gen_range(0..PATHS);
                    let kind = if self.rng.gen_bool(0.8) {
                        BadPacket::BadMac
                    } else {
                        BadPacket::Malformed
                    };
                    self.feed(n, Input::BadPacket { path, kind })?;
                }
            }
            Fault::Replay(n) => {
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
            }
            Fault::Switchover(n) => {
                let now = self.now;
                if let Some(agent) = self.nodes[n].agent.as_mut() {
                    match agent.request_switchover(now) {
                        Ok(_) => self.report.switchovers += 1,
                        Err(e) => self.log(format!("{}: switchover refused: {e}", NAMES[n])),
                    }
                    // Carry out what it started.
                    self.feed(n, Input::Tick)?;
                }
            }
        }
        Ok(())
    }

    fn expect_takeover(&mut self, dead: usize) {
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

    fn crash_node(&mut self, n: usize) {
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
        node.suspended = false;
        node.freeze_armed = false;
    }

    fn restart_node(&mut self, n: usize) {
        self.log(format!("{}: node restarts", NAMES[n]));
        self.nodes[n].repd_up = true;
        self.start_agent(n);
    }

    fn local_state(&self, n: usize) -> Option<LocalState> {
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
    fn repd_step(&mut self) {
        let up = self.nodes[0].repd_up && self.nodes[1].repd_up && self.rep_up;
        if !up {
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
            return;
        }
        if !self.connected && !self.split_brain {
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
                            self.log(
                                "repd: the newer data is on the Secondary: split brain".into(),
                            );
                        } else {
                            self.nodes[t].disk = DiskState::Inconsistent;
                            self.sync = Some((t, self.now + self.sc.resync));
                        }
                    }
                }
            }
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

    fn apply_op(&mut self, n: usize, op: &Op) -> Result<OpResult, Violation> {
        let other = 1 - n;
        Ok(match op {
            Op::Promote { force } => {
                let me = &self.nodes[n];
                if !me.repd_up {
                    OpResult::Failed("repd not running".into())
                } else if self.connected && self.nodes[other].role == Role::Primary {
                    OpResult::Failed("the peer is Primary".into())
                } else if me.disk == DiskState::UpToDate
                    || (me.disk == DiskState::Consistent && *force)
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
            }
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
            Op::Start(i) => {
                let i = *i;
                let node = &self.nodes[n];
                if i >= node.started.len() {
                    return Err(
                        self.violation(format!("start of resource {i} that does not exist"))
                    );
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
                    OpResult::Ok
                }
            }
            Op::Stop(i) => {
                let i = *i;
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
                    OpResult::Ok
                }
            }
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
            Op::Fence => {
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
        })
    }

    fn feed(&mut self, n: usize, input: Input) -> Result<(), Violation> {
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

    fn send(&mut self, from: usize, path: usize, beat: Beat) {
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

    fn check(&mut self) -> Result<(), Violation> {
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

    fn check_expect(&mut self) -> Result<(), Violation> {
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
    fn check_quorum(&mut self) -> Result<(), Violation> {
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

    fn final_check(&mut self) -> Result<(), Violation> {
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
            || self.nodes[1 - h].started.iter().any(|x| *x)
            || states.get(h) != Some(&HaState::Holding)
            || states.get(1 - h) != Some(&HaState::Idle)
        {
            return Err(self.violation(format!(
                "after the heal: holder {} with {:?}, other with {:?}, agents {states:?}",
                NAMES[h],
                self.nodes[h].started,
                self.nodes[1 - h].started
            )));
        }
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
