//! outdate-peer over a heartbeat path, with real processes: when the
//! replication link breaks but a heartbeat path still works, the node that
//! holds the resources has the peer's agent mark the peer's disk Outdated
//! (`repctl outdate`), so that stale data is never promoted later.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{Cluster, Opts};
use rep_control::protocol::{ControlCmd, Refusal, Verb};
use replication_proto::machine::AdminError;
use replication_proto::wire::DiskState;

#[test]
fn a_lost_replication_link_outdates_the_secondary_over_the_other_path() {
    let mut c = Cluster::new(Opts {
        service_ip: false,
        ..Opts::default()
    });
    c.start(true);
    // Link 0 carries the replication link and heartbeat path 0; path 1
    // still works, so both agents stay alive to each other.
    c.net.link(0, false);
    let rb = c.wait_repd(1, "beta's disk Outdated", 30, |s| s["disk"] == "Outdated");
    assert_eq!(rb["role"], "Secondary");
    let sb = c.agent_status(1).unwrap();
    assert_eq!(sb["peer"]["alive"], true, "{}", c.debug());
    let events = sb["events"].to_string();
    assert!(events.contains("outdate-peer"), "{events}");
    let sa = c.wait_agent(0, "alpha sees beta Outdated", 10, |s| {
        s["peer"]["disk"] == "Outdated"
    });
    assert_eq!(sa["state"], "Holding");
    // An Outdated node refuses to become Primary without --force.
    let o = c.repctl(1, &["primary"]);
    assert!(!o.status.success());
    let r = c.repd_control(1, &ControlCmd::Verb(Verb::Primary { force: false }));
    assert_eq!(
        r.refusal,
        Some(Refusal::Machine(AdminError::NotUpToDate {
            disk: DiskState::Outdated
        })),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Even when the Primary dies now, beta does not take over with stale data.
    c.kill_everything(0);
    let sb = c.wait_agent(1, "alpha dead to beta", 20, |s| s["peer"]["alive"] == false);
    let decision = sb["decision"].as_str().unwrap_or_default();
    assert!(decision.contains("Outdated"), "{decision}");
    std::thread::sleep(std::time::Duration::from_millis(1000));
    assert_eq!(c.repd_status(1).unwrap()["role"], "Secondary");
}
