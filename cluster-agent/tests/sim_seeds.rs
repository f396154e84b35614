//! The seeded simulator of two agents over a fixed range of seeds. A failure
//! prints the seed and how to replay it with a full trace:
//! `AGENT_SIM_SEED=N cargo test -p cluster-agent --test sim_seeds replay -- --nocapture`.

#![allow(clippy::unwrap_used, clippy::panic)]

use cluster_agent::sim::{self, SimReport};

fn run_range(from: u64, count: u64) -> SimReport {
    let mut total = SimReport::default();
    for seed in from..from + count {
        match sim::run(seed, false) {
            Ok(r) => add(&mut total, &r),
            Err(v) => panic!("{v}"),
        }
    }
    total
}

fn add(t: &mut SimReport, r: &SimReport) {
    t.crashes += r.crashes;
    t.agent_crashes += r.agent_crashes;
    t.partitions += r.partitions;
    t.path_cuts += r.path_cuts;
    t.promotions += r.promotions;
    t.takeovers_checked += r.takeovers_checked;
    t.max_takeover_ms = t.max_takeover_ms.max(r.max_takeover_ms);
    t.fences += r.fences;
    t.failed_starts += r.failed_starts;
    t.failed_stops += r.failed_stops;
    t.double_primary_windows += r.double_primary_windows;
    t.bad_mac += r.bad_mac;
    t.replays += r.replays;
    t.failbacks += r.failbacks;
    t.suspensions += r.suspensions;
    t.witness_takeovers += r.witness_takeovers;
    t.switchovers += r.switchovers;
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

/// Replay one seed with a full trace: `AGENT_SIM_SEED=N ... replay -- --nocapture`.
#[test]
fn replay() {
    let Ok(seed) = std::env::var("AGENT_SIM_SEED") else {
        return;
    };
    let seed: u64 = seed.parse().unwrap();
    match sim::run(seed, true) {
        Ok(r) => println!("{r:?}"),
        Err(v) => panic!("{v}"),
    }
}

/// More seeds: `AGENT_SIM_FROM=1000 AGENT_SIM_COUNT=5000 cargo test --release -p cluster-agent --test sim_seeds many -- --nocapture`.
#[test]
fn many() {
    let (Ok(from), Ok(count)) = (
        std::env::var("AGENT_SIM_FROM"),
        std::env::var("AGENT_SIM_COUNT"),
    ) else {
        return;
    };
    let r = run_range(from.parse().unwrap(), count.parse().unwrap());
    println!("{r:?}");
}
