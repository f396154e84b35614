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
//! - a resource killed behind the agent's back (monitored) runs again
//!   within a bound: restarted in place, or the whole chain on the peer
//!   after migration-threshold failures (lossless runs without a witness);
//! - the core never panics.
//!
//! # Modules
//! - `scenario`: the scenario drawn from the seed (its fault rates
//!   included), the report, [`run`] and [`run_scenario`], and [`AgentSim`]:
//!   the simulator as `replication_proto::simkit` runs it, whose
//!   [`Violation`] ends in the replay command
//!   `cargo run -q -p cluster-agent --release --features sim --bin agentsim -- --seed N --trace`;
//! - `events`: the event queue and the faults;
//! - `agents`: starting an agent, feeding it, carrying out its actions;
//! - `repd`: the simulated repd, its replication link and operations;
//! - `checks`: the invariants;
//! - `monitor`: resources killed behind the agent's back, monitor results.

// The simulator is a test harness: an out-of-range index is a bug in it.
#![allow(
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::needless_range_loop
)]

use std::collections::{BinaryHeap, VecDeque};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use replication_proto::wire::{DiskState, Role};

use crate::core::{
    Action, BadPacket, Beat, Core, CoreConfig, HaState, Incarnation, Input, LocalState, Millis,
    MonitorOutcome, Op, OpResult,
};
use crate::witness::{self, Memory, WitnessCore};

mod agents;
mod checks;
mod events;
mod monitor;
mod repd;
mod scenario;

pub use replication_proto::simkit::Violation;
pub use scenario::{run, run_scenario, AgentSim, FenceMode, Scenario, SimReport};

use checks::Expect;
use events::{Ev, Fault, Item};

const NAMES: [&str; 2] = ["alpha", "beta"];
const PATHS: usize = 2;
/// Sim time starts here on the "wall clock" (started_ms of agents).
const EPOCH_MS: u64 = 1_700_000_000_000;

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
    /// Started, but dead behind the agent's back (its monitor says so);
    /// the next stop or start of it clears the mark.
    killed: Vec<bool>,
    next_tick: Option<Millis>,
    /// repd holds or fails new writes.
    suspended: bool,
    freeze_armed: bool,
    /// The generation under which this node accepted writes alone (not
    /// connected, not suspended): they exist only on its disk.
    alone_gen: Option<u64>,
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
    expect_recovery: Option<monitor::ExpectRecovery>,
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
            killed: vec![false; sc.resources],
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
                Incarnation(1),
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
            expect_recovery: None,
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

    fn push(&mut self, at: Millis, ev: Ev) {
        self.next_id += 1;
        self.queue.push(Item {
            at,
            id: self.next_id,
            ev,
        });
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
}
