//! The simulator's scenario (drawn from one seed), its report, the
//! violation of an invariant with the replay command, and the entry
//! points that run a seed. Kept together so that the shared simulator
//! skeleton of `replication-proto` can take them over.

use std::fmt;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::World;
use crate::vocab::Millis;

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
    pub(super) fn violation(&self, what: String) -> Violation {
        Violation {
            seed: self.sc.seed,
            at: self.now,
            what,
            trace: self.trace.iter().cloned().collect(),
        }
    }
}
