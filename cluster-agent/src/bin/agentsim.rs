//! Run the seeded simulator of two agents over many seeds, or replay one
//! (feature `sim`).
//!
//! ```text
//! agentsim --seeds 5000            # seeds 0..5000
//! agentsim --from 1000 --seeds 100 # seeds 1000..1100
//! agentsim --seed 42 --trace       # replay one seed, printing every event
//! agentsim --seeds 20 --verbose    # each seed's scenario and fault rates, and its report
//! ```
//!
//! From the workspace: `cargo run -q -p cluster-agent --release --features sim --bin agentsim -- ARGS`.

use std::process::ExitCode;

use cluster_agent::sim::AgentSim;
use replication_proto::simkit;

const USAGE: &str = "usage: agentsim [--from N] [--seeds COUNT] | --seed N [--trace] [--verbose]
Runs the simulator of two agents (simulated repds, lossy heartbeat paths,
crashes, fence commands, a witness in a third of the seeds) for each seed and
checks its invariants; prints the first failing seed with its scenario, fault
rates and a replay command.
--verbose prints each seed's scenario (its fault rates included) and report.";

fn main() -> ExitCode {
    simkit::main("agentsim", USAGE, &[], |_| AgentSim)
}
