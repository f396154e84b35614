//! The seeded simulator of two agents over a fixed range of seeds. A failure
//! prints the seed, its scenario and how to replay it with a full trace:
//! `cargo run -q -p cluster-agent --release --features sim --bin agentsim -- --seed N --trace`
//! (`agentsim --from A --seeds N` runs more seeds).

#![allow(clippy::unwrap_used, clippy::panic)]

use cluster_agent::sim::{self, SimReport};

fn run_range(from: u64, count: u64) -> SimReport {
    let mut total = SimReport::default();
    for seed in from..from + count {
        match sim::run(seed, false) {
            Ok(r) => total.add(&r),
            Err(v) => panic!("{v}"),
        }
    }
    total
}

#[test]
fn seeds_0_100() {
    let r = run_range(0, 100);
    println!("{r:?}");
}

#[test]
fn seeds_100_200() {
    let r = run_range(100, 100);
    println!("{r:?}");
}

/// The seeds must exercise every kind of fault, or the test proves little.
#[test]
fn seeds_cover_every_fault() {
    let r = run_range(200, 60);
    println!("{r:?}");
    assert!(r.crashes >= 30, "{r:?}");
    assert!(r.agent_crashes >= 10, "{r:?}");
    assert!(r.partitions >= 10, "{r:?}");
    assert!(r.takeovers_checked >= 10, "{r:?}");
    assert!(r.fences >= 10, "{r:?}");
    assert!(r.failed_starts >= 1 && r.failed_stops >= 1, "{r:?}");
    assert!(r.double_primary_windows >= 1, "{r:?}");
    assert!(r.bad_mac >= 5 && r.replays >= 5, "{r:?}");
    assert!(r.failbacks >= 1, "{r:?}");
    // Witness scenarios: Primaries that lost quorum, takeovers it allowed.
    assert!(r.suspensions >= 5, "{r:?}");
    assert!(r.witness_takeovers >= 5, "{r:?}");
    assert!(r.switchovers >= 3, "{r:?}");
}
