//! Run the seeded simulator over many seeds, or replay one (feature `sim`).
//!
//! ```text
//! repsim --seeds 10000            # seeds 0..10000
//! repsim --from 5000 --seeds 100  # seeds 5000..5100
//! repsim --seed 1234 --trace      # replay one seed, printing every event
//! repsim --seeds 20 --verbose     # each seed's scenario and fault rates, and its report
//! repsim --seeds 10000 --resume-after-crash   # restarted Primaries resume by themselves
//! ```
//!
//! From the workspace: `cargo run -q -p replication-proto --release --features sim --bin repsim -- ARGS`.

use std::ops::Range;
use std::process::ExitCode;

use replication_proto::sim::{self, Scenario, SimReport};
use replication_proto::simkit::{self, Simulator, Violation};

const RESUME: &str = "--resume-after-crash";

const USAGE: &str = "usage: repsim [--from N] [--seeds COUNT] | --seed N [--trace] [--verbose] [--resume-after-crash]
Runs the two-node simulator for each seed and checks its invariants;
prints the first failing seed with its scenario, fault rates and a replay command.
--verbose prints each seed's scenario (its fault rates included) and report.
--resume-after-crash arms every restarted node to take back the Primary
role of a run that crashed while Primary (repd's resume-after-crash).";

/// The two-node simulator, as `simkit` runs it.
struct Repsim {
    resume: bool,
}

impl Simulator for Repsim {
    type Report = SimReport;

    fn name(&self) -> &'static str {
        "repsim"
    }

    fn describe(&self, seed: u64) -> String {
        format!("{:?}", Scenario::from_seed(seed))
    }

    fn run(&self, seed: u64, trace: bool) -> Result<SimReport, Violation> {
        if self.resume {
            sim::run_resuming(seed, trace)
        } else {
            sim::run(seed, trace)
        }
    }

    fn add(&self, t: &mut SimReport, r: &SimReport) {
        t.writes_acked += r.writes_acked;
        t.crashes += r.crashes;
        t.split_brains += r.split_brains;
        t.failovers += r.failovers;
        t.resets += r.resets;
        t.damaged += r.damaged;
        t.resumed += r.resumed;
        t.fences += r.fences;
        t.disk_failures += r.disk_failures;
        t.attaches += r.attaches;
        t.bad_blocks += r.bad_blocks;
        t.controlled_runs += r.controlled_runs;
        t.controlled_ticks += r.controlled_ticks;
        t.throttled_ticks += r.throttled_ticks;
    }

    fn summary(&self, t: &SimReport, seeds: &Range<u64>) -> String {
        format!(
            "repsim: {} seeds from {}: {} acknowledged writes, {} crashes, {} failovers, \
             {} link resets, {} split brains detected, {} writes damaged on the link, \
             {} crashed Primaries resumed by themselves, {} fence-peer handlers run, \
             {} disks failed (detach) and {} attached again, {} bad blocks, \
             {} runs with the resync controller ({} ticks paced, {} throttled by application I/O); \
             no invariant violated",
            seeds.end - seeds.start,
            seeds.start,
            t.writes_acked,
            t.crashes,
            t.failovers,
            t.resets,
            t.split_brains,
            t.damaged,
            t.resumed,
            t.fences,
            t.disk_failures,
            t.attaches,
            t.bad_blocks,
            t.controlled_runs,
            t.controlled_ticks,
            t.throttled_ticks
        )
    }
}

fn main() -> ExitCode {
    simkit::main("repsim", USAGE, &[RESUME], |args| Repsim {
        resume: args.has(RESUME),
    })
}
