//! The simulator's scenario (drawn from one seed, its fault rates
//! included), its report, the entry points that run a seed, and the
//! simulator as the shared skeleton ([`replication_proto::simkit`]) runs
//! it: its [`Violation`] and replay command, the binary `agentsim`.

use std::ops::Range;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use replication_proto::simkit::{panic_message, replay_command, Simulator, Violation};

use super::World;

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

/// One simulated run's settings, all drawn from the seed by
/// [`Scenario::from_seed`], the fault rates included (loss, duplication,
/// delay, operation and fence latencies, failing operations, the fault
/// interval): its `Debug` line is the scenario a failure and `--verbose`
/// print.
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
    /// Each resource's monitor interval (0: not monitored).
    pub monitor_interval: u64,
    pub migration_threshold: u32,
    /// Probability that a monitor fails (times out) although the resource runs.
    pub monitor_fail: f64,
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
            monitor_interval: [0, 300, 1000, 3000][r.gen_range(0..4)],
            migration_threshold: r.gen_range(0..=3),
            monitor_fail: [0.0, 0.01][r.gen_range(0..2)],
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
    /// Resources killed behind the agent's back.
    pub kills: u64,
    /// Monitors that failed although the resource ran.
    pub failed_monitors: u64,
    /// Kills after which the chain was whole again in time (timed).
    pub recoveries_checked: u64,
    pub max_recovery_ms: u64,
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
    // A core that panics is a violation of this seed, reported with its
    // trace and replay line like any other.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.run())) {
        Ok(r) => r,
        Err(p) => Err(w.violation(format!("panic: {}", panic_message(p.as_ref())))),
    }
}

impl World {
    pub(super) fn violation(&self, what: String) -> Violation {
        Violation {
            seed: self.sc.seed,
            at: self.now,
            what,
            scenario: format!("{:?}", self.sc),
            replay: replay_command("cluster-agent", "agentsim", self.sc.seed, &[]),
            trace: self.trace.iter().cloned().collect(),
        }
    }
}

impl SimReport {
    /// Adds one run's counts to a total (the longest takeover is the
    /// longest of both).
    pub fn add(&mut self, r: &SimReport) {
        self.crashes += r.crashes;
        self.agent_crashes += r.agent_crashes;
        self.partitions += r.partitions;
        self.path_cuts += r.path_cuts;
        self.promotions += r.promotions;
        self.takeovers_checked += r.takeovers_checked;
        self.max_takeover_ms = self.max_takeover_ms.max(r.max_takeover_ms);
        self.fences += r.fences;
        self.failed_starts += r.failed_starts;
        self.failed_stops += r.failed_stops;
        self.double_primary_windows += r.double_primary_windows;
        self.bad_mac += r.bad_mac;
        self.replays += r.replays;
        self.failbacks += r.failbacks;
        self.suspensions += r.suspensions;
        self.witness_takeovers += r.witness_takeovers;
        self.switchovers += r.switchovers;
        self.kills += r.kills;
        self.failed_monitors += r.failed_monitors;
        self.recoveries_checked += r.recoveries_checked;
        self.max_recovery_ms = self.max_recovery_ms.max(r.max_recovery_ms);
    }
}

/// The two-agent simulator, as [`replication_proto::simkit`] runs it (the
/// binary `agentsim`).
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentSim;

impl Simulator for AgentSim {
    type Report = SimReport;

    fn name(&self) -> &'static str {
        "agentsim"
    }

    fn describe(&self, seed: u64) -> String {
        format!("{:?}", Scenario::from_seed(seed))
    }

    fn run(&self, seed: u64, trace: bool) -> Result<SimReport, Violation> {
        run(seed, trace)
    }

    fn add(&self, total: &mut SimReport, one: &SimReport) {
        total.add(one);
    }

    fn summary(&self, t: &SimReport, seeds: &Range<u64>) -> String {
        format!(
            "agentsim: {} seeds from {}: {} node crashes, {} agent crashes, {} partitions, \
             {} path cuts, {} promotions, {} fences, {} failed starts, {} failed stops, \
             {} takeovers timed (longest {} ms), {} unfenced double-Primary windows, \
             {} heartbeats with a bad MAC and {} replays dropped, {} failbacks, \
             {} suspensions for lack of quorum, {} takeovers on the witness's word, \
             {} switchovers, {} resources killed ({} recoveries timed, longest {} ms), \
             {} failed monitors; no invariant violated",
            seeds.end - seeds.start,
            seeds.start,
            t.crashes,
            t.agent_crashes,
            t.partitions,
            t.path_cuts,
            t.promotions,
            t.fences,
            t.failed_starts,
            t.failed_stops,
            t.takeovers_checked,
            t.max_takeover_ms,
            t.double_primary_windows,
            t.bad_mac,
            t.replays,
            t.failbacks,
            t.suspensions,
            t.witness_takeovers,
            t.switchovers,
            t.kills,
            t.recoveries_checked,
            t.max_recovery_ms,
            t.failed_monitors
        )
    }
}
