//! The decision core's planned and escalated operations, sans IO: two
//! `Core`s joined by a lossless link, each with a scripted repd and chain,
//! driven on a simulated clock. Switchover (and its refusals), ping nodes,
//! `on-stop-failure` (block, fence, reboot-hook), and the chain's monitors:
//! restart in place, migration-threshold, the ban, failure-timeout, cleanup.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::needless_range_loop
)]

use std::collections::VecDeque;

use cluster_agent::core::{
    Action, Core, CoreConfig, HaState, Incarnation, Input, LocalState, Millis, MonitorConfig,
    MonitorOutcome, Op, OpResult, OpsConfig, PingView, StopFailure,
};
use replication_proto::wire::{DiskState, Role};

const NAMES: [&str; 2] = ["alpha", "beta"];
const DEAD: u64 = 2000;
const RESOURCES: usize = 2;

struct Pair {
    cores: [Core; 2],
    role: [Role; 2],
    started: [[bool; RESOURCES]; 2],
    /// Node i's resource stops fail.
    stop_fails: [bool; 2],
    /// Node i is powered off (STONITH): no beats, no inputs.
    off: [bool; 2],
    /// Fence commands run, by node; the fence powers the peer off.
    fences: [u32; 2],
    reboot_hooks: [u32; 2],
    stop_attempts: [u32; 2],
    /// Every chain operation run, by node, in order.
    ops: Vec<(usize, Op)>,
    now: Millis,
}

/// The monitor of every resource, and failure-timeout.
#[derive(Clone, Copy)]
struct Mon {
    interval_ms: u64,
    threshold: u32,
    failure_timeout: u64,
}

const NO_MONITOR: Mon = Mon {
    interval_ms: 0,
    threshold: 0,
    failure_timeout: 10_000,
};

fn config(
    i: usize,
    fencing: bool,
    auto_failback: bool,
    on_stop_failure: StopFailure,
    mon: Mon,
) -> CoreConfig {
    CoreConfig {
        me: NAMES[i].into(),
        peer: NAMES[1 - i].into(),
        keepalive: 200,
        warntime: 1000,
        deadtime: DEAD,
        initdead: 4000,
        paths: 2,
        resources: RESOURCES,
        fencing,
        auto_failback,
        preferred: Some("alpha".into()),
        failure_timeout: mon.failure_timeout,
        witness: false,
        no_quorum_fail: false,
        ops: OpsConfig {
            on_stop_failure,
            handover_grace: 5 * DEAD,
            ping_settle: 1400,
        },
        monitors: vec![
            MonitorConfig {
                interval_ms: mon.interval_ms,
                threshold: mon.threshold,
            };
            RESOURCES
        ],
    }
}

impl Pair {
    fn new(fencing: bool, auto_failback: bool, on_stop_failure: StopFailure) -> Self {
        Self::with_monitor(fencing, auto_failback, on_stop_failure, NO_MONITOR)
    }

    fn with_monitor(
        fencing: bool,
        auto_failback: bool,
        on_stop_failure: StopFailure,
        mon: Mon,
    ) -> Self {
        let cores = [0, 1].map(|i| {
            Core::new(
                config(i, fencing, auto_failback, on_stop_failure, mon),
                Incarnation(100 + i as u64),
                1000 + i as u64,
                Millis::ZERO,
            )
        });
        Pair {
            cores,
            role: [Role::Secondary; 2],
            started: [[false; RESOURCES]; 2],
            stop_fails: [false; 2],
            off: [false; 2],
            fences: [0; 2],
            reboot_hooks: [0; 2],
            stop_attempts: [0; 2],
            ops: Vec::new(),
            now: Millis::ZERO,
        }
    }

    fn local(&self, i: usize) -> LocalState {
        let j = 1 - i;
        let connected = !self.off[j];
        LocalState {
            role: self.role[i],
            disk: DiskState::UpToDate,
            connected,
            peer_role: connected.then_some(self.role[j]),
            peer_disk: if connected {
                DiskState::UpToDate
            } else {
                DiskState::DUnknown
            },
            gens: Default::default(),
            suspended: false,
            freeze_armed: false,
        }
    }

    /// Carry out what node i asked for; returns the op's result.
    fn apply(&mut self, i: usize, op: &Op) -> OpResult {
        self.ops.push((i, op.clone()));
        match op {
            Op::Promote { .. } => {
                assert!(
                    self.role[1 - i] != Role::Primary || self.off[1 - i],
                    "{} promotes while {} is Primary",
                    NAMES[i],
                    NAMES[1 - i]
                );
                self.role[i] = Role::Primary;
                OpResult::Ok
            }
            Op::Demote => {
                assert!(
                    !self.started[i].iter().any(|s| *s),
                    "demoted under a running resource"
                );
                self.role[i] = Role::Secondary;
                OpResult::Ok
            }
            Op::Start(r) => {
                assert_eq!(self.role[i], Role::Primary, "start on a Secondary");
                self.started[i][*r] = true;
                OpResult::Ok
            }
            Op::Stop(r) => {
                self.stop_attempts[i] += 1;
                if self.stop_fails[i] && *r == RESOURCES - 1 {
                    return OpResult::Failed("still busy".into());
                }
                self.started[i][*r] = false;
                OpResult::Ok
            }
            Op::Fence => {
                self.fences[i] += 1;
                self.off[1 - i] = true;
                OpResult::FenceExit(Some(7), String::new())
            }
            Op::RebootHook => {
                self.reboot_hooks[i] += 1;
                OpResult::Ok
            }
            // Without a witness the core never asks for these.
            Op::SuspendIo { .. } | Op::ResumeIo { .. } | Op::ArmFreeze => {
                panic!("{} asked for {op:?} without a witness", NAMES[i])
            }
            // The repds here are always connected when the agents talk.
            Op::Outdate => OpResult::Failed("refused: connected".into()),
        }
    }

    fn feed(&mut self, i: usize, input: Input) {
        let mut queue = VecDeque::from([(i, input)]);
        while let Some((n, input)) = queue.pop_front() {
            if self.off[n] {
                continue;
            }
            self.cores[n].handle(self.now, input);
            while let Some(a) = self.cores[n].poll_action() {
                match a {
                    Action::Send { path, beat } => {
                        if !self.off[n] {
                            queue.push_back((1 - n, Input::Beat { path, beat }));
                        }
                    }
                    Action::Run(op) => {
                        let result = self.apply(n, &op);
                        queue.push_back((n, Input::Done { op, result }));
                    }
                    Action::Log { .. } => {}
                    Action::AskWitness(_) => panic!("no witness is configured"),
                    Action::Monitor { res, id } => {
                        let outcome = if self.started[n][res] {
                            MonitorOutcome::Running
                        } else {
                            MonitorOutcome::Stopped
                        };
                        queue.push_back((n, Input::MonitorResult { res, id, outcome }));
                    }
                }
            }
        }
    }

    fn run_for(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.now += 50;
            for i in 0..2 {
                if self.now.as_ms() % 200 == 0 {
                    let l = self.local(i);
                    self.feed(i, Input::Local(Some(l)));
                }
                self.feed(i, Input::Tick);
            }
        }
    }

    fn state(&self, i: usize) -> HaState {
        self.cores[i].state()
    }

    fn switchover(&mut self, i: usize) -> Result<String, String> {
        let r = self.cores[i].request_switchover(self.now);
        // Carry out what it started.
        self.feed(i, Input::Tick);
        r
    }

    fn settled_on_alpha(&mut self) {
        self.run_for(3000);
        assert_eq!(self.state(0), HaState::Holding);
        assert_eq!(self.state(1), HaState::Idle);
        assert_eq!(self.role, [Role::Primary, Role::Secondary]);
    }
}

#[test]
fn switchover_hands_over_and_is_not_undone_by_auto_failback() {
    let mut p = Pair::new(false, true, StopFailure::Block);
    p.settled_on_alpha();
    let e = p.switchover(1).unwrap_err();
    assert!(e.contains("alpha does"), "{e}");
    let why = p.switchover(0).unwrap();
    assert!(why.contains("switchover requested"), "{why}");
    p.run_for(1000);
    assert_eq!(p.state(1), HaState::Holding);
    assert_eq!(p.state(0), HaState::Idle);
    assert_eq!(p.role, [Role::Secondary, Role::Primary]);
    assert_eq!(p.started, [[false; RESOURCES], [true; RESOURCES]]);
    let st = p.cores[0].status(p.now);
    assert!(
        st.transitions
            .iter()
            .any(|t| t.to == HaState::Releasing && t.reason.contains("switchover requested")),
        "{:?}",
        st.transitions
    );
    // alpha is preferred with auto-failback, but it moved the resources away
    // on purpose: it does not ask for them back, even long after the grace.
    p.run_for(6 * DEAD);
    assert_eq!(p.state(1), HaState::Holding);
    assert_eq!(p.fences, [0, 0]);
    // Asked back: alpha holds again, and auto-failback is armed again.
    p.switchover(1).unwrap();
    p.run_for(1000);
    assert_eq!(p.state(0), HaState::Holding);
    assert_eq!(p.role, [Role::Primary, Role::Secondary]);
}

#[test]
fn switchover_is_refused_when_the_peer_cannot_take_over() {
    let mut p = Pair::new(false, false, StopFailure::Block);
    p.settled_on_alpha();
    // Beta cannot reach its ping nodes.
    p.cores[1].set_ping(
        p.now,
        Some(PingView {
            reachable: 0,
            configured: 1,
        }),
    );
    p.run_for(400);
    let e = p.switchover(0).unwrap_err();
    assert!(e.contains("ping nodes"), "{e}");
    p.cores[1].set_ping(
        p.now,
        Some(PingView {
            reachable: 1,
            configured: 1,
        }),
    );
    // Beta is gone.
    p.off[1] = true;
    p.run_for(DEAD + 500);
    let e = p.switchover(0).unwrap_err();
    assert!(e.contains("not alive"), "{e}");
    assert_eq!(p.state(0), HaState::Holding);
}

#[test]
fn a_holder_without_ping_nodes_hands_over_unless_the_peer_lost_them_too() {
    let mut p = Pair::new(false, false, StopFailure::Block);
    p.settled_on_alpha();
    let up = Some(PingView {
        reachable: 1,
        configured: 1,
    });
    let down = Some(PingView {
        reachable: 0,
        configured: 1,
    });
    // Both lost them (the ping node itself is down): alpha keeps the chain.
    p.cores[1].set_ping(p.now, down);
    p.cores[0].set_ping(p.now, down);
    p.run_for(3000);
    assert_eq!(p.state(0), HaState::Holding);
    assert!(p.cores[0].status(p.now).decision.contains("cannot take"));
    // Beta reaches it again: alpha hands over.
    p.cores[1].set_ping(p.now, up);
    p.run_for(1000);
    assert_eq!(p.state(1), HaState::Holding);
    assert_eq!(p.state(0), HaState::Idle);
    // Beta dies; alpha, still cut off, does not take over...
    p.off[1] = true;
    p.role[1] = Role::Secondary;
    p.started[1] = [false; RESOURCES];
    p.run_for(2 * DEAD);
    assert_eq!(p.state(0), HaState::Idle);
    assert!(
        p.cores[0].status(p.now).decision.contains("ping node"),
        "{}",
        p.cores[0].status(p.now).decision
    );
    // ...until its ping node answers.
    p.cores[0].set_ping(p.now, up);
    p.run_for(500);
    assert_eq!(p.state(0), HaState::Holding);
}

#[test]
fn a_failed_stop_blocks_then_finishes_the_switchover() {
    let mut p = Pair::new(false, false, StopFailure::Block);
    p.settled_on_alpha();
    p.stop_fails[0] = true;
    p.switchover(0).unwrap();
    p.run_for(3 * DEAD);
    assert_eq!(p.state(0), HaState::Releasing);
    assert_eq!(p.state(1), HaState::Idle);
    assert_eq!(p.role, [Role::Primary, Role::Secondary]);
    assert!(p.stop_attempts[0] >= 3, "retried every deadtime");
    assert_eq!(p.reboot_hooks, [0, 0]);
    assert_eq!(p.fences, [0, 0]);
    p.stop_fails[0] = false;
    p.run_for(DEAD + 500);
    assert_eq!(p.state(1), HaState::Holding);
}

#[test]
fn on_stop_failure_reboot_hook_runs_once_per_failure() {
    let mut p = Pair::new(false, false, StopFailure::RebootHook);
    p.settled_on_alpha();
    p.stop_fails[0] = true;
    p.switchover(0).unwrap();
    p.run_for(4 * DEAD);
    assert_eq!(p.reboot_hooks, [1, 0]);
    assert!(p.stop_attempts[0] >= 4);
    assert_eq!(p.state(0), HaState::Releasing);
    let st = p.cores[0].status(p.now);
    assert!(
        st.events.iter().any(|e| e.what.contains("reboot-command")),
        "{:?}",
        st.events
    );
}

#[test]
fn on_stop_failure_fence_makes_the_peer_fence_and_take_over() {
    let mut p = Pair::new(true, false, StopFailure::Fence);
    p.settled_on_alpha();
    p.stop_fails[0] = true;
    p.switchover(0).unwrap();
    p.run_for(500);
    // Beta fenced alpha on its request (the fence powers it off).
    assert_eq!(p.fences, [0, 1]);
    assert!(p.off[0]);
    // A power-off takes the role with it.
    p.role[0] = Role::Secondary;
    p.started[0] = [false; RESOURCES];
    p.run_for(DEAD + 1000);
    assert_eq!(p.state(1), HaState::Holding);
    assert_eq!(p.role[1], Role::Primary);
    assert!(p.fences[1] >= 2, "fenced again on the dead-peer path");
    let st = p.cores[1].status(p.now);
    assert!(
        st.transitions
            .iter()
            .any(|t| t.reason.contains("asks to be fenced")),
        "{:?}",
        st.transitions
    );
}

// ----- the chain's monitors ---------------------------------------------

const MON: Mon = Mon {
    interval_ms: 1000,
    threshold: 3,
    failure_timeout: 10_000,
};

/// alpha's chain operations since `from` in `p.ops`.
fn alpha_ops(p: &Pair, from: usize) -> Vec<Op> {
    p.ops[from..]
        .iter()
        .filter(|(n, _)| *n == 0)
        .map(|(_, op)| op.clone())
        .collect()
}

/// Kill alpha's resource `r` behind its agent's back and let the monitor
/// find it; returns alpha's operations that followed.
fn kill_on_alpha(p: &mut Pair, r: usize) -> Vec<Op> {
    let from = p.ops.len();
    p.started[0][r] = false;
    p.run_for(MON.interval_ms + 500);
    alpha_ops(p, from)
}

#[test]
fn a_killed_resource_is_restarted_in_place_with_those_after_it() {
    let mut p = Pair::with_monitor(false, false, StopFailure::Block, MON);
    p.settled_on_alpha();
    // The first resource dies: everything after it stops first (right to
    // left), then both start again (left to right); the device stays Primary.
    let ops = kill_on_alpha(&mut p, 0);
    assert_eq!(ops, [Op::Stop(1), Op::Stop(0), Op::Start(0), Op::Start(1)]);
    assert_eq!(p.state(0), HaState::Holding);
    assert_eq!(p.role, [Role::Primary, Role::Secondary]);
    assert_eq!(p.started[0], [true; RESOURCES]);
    let st = p.cores[0].status(p.now);
    assert_eq!(st.monitors[0].failures, 1);
    assert_eq!(st.monitors[1].failures, 0);
    assert_eq!(st.monitors[0].threshold, 3);
    assert_eq!(st.monitors[0].last_result, Some(MonitorOutcome::Running));
    assert!(st.ban.is_none());
    assert!(
        st.transitions
            .iter()
            .any(|t| t.reason.contains("resource 0 failed its monitor")),
        "{:?}",
        st.transitions
    );
    // The last resource: only it restarts.
    let ops = kill_on_alpha(&mut p, 1);
    assert_eq!(ops, [Op::Stop(1), Op::Start(1)]);
    let st = p.cores[0].status(p.now);
    assert_eq!((st.monitors[0].failures, st.monitors[1].failures), (1, 1));
    // Beta never moved.
    assert_eq!(p.state(1), HaState::Idle);
}

#[test]
fn at_migration_threshold_the_chain_moves_and_the_node_is_banned_until_failure_timeout() {
    let mon = Mon {
        threshold: 2,
        ..MON
    };
    let mut p = Pair::with_monitor(false, false, StopFailure::Block, mon);
    p.settled_on_alpha();
    assert_eq!(kill_on_alpha(&mut p, 1), [Op::Stop(1), Op::Start(1)]);
    // The second failure reaches the threshold: the whole chain stops,
    // alpha demotes, beta promotes and starts it.
    let ops = kill_on_alpha(&mut p, 1);
    assert_eq!(ops, [Op::Stop(1), Op::Stop(0), Op::Demote]);
    assert_eq!(p.state(1), HaState::Holding);
    assert_eq!(p.state(0), HaState::Idle);
    assert_eq!(p.role, [Role::Secondary, Role::Primary]);
    assert_eq!(p.started, [[false; RESOURCES], [true; RESOURCES]]);
    let st = p.cores[0].status(p.now);
    let ban = st.ban.expect("alpha is banned");
    assert!(
        ban.reason.contains("failed its monitor 2 time(s)"),
        "{ban:?}"
    );
    assert!(ban.left_ms.unwrap() > 8000, "{ban:?}");
    assert_eq!(st.monitors[1].failures, 2);
    // Beta's chain dies too: alpha is banned, so beta restarts in place.
    p.started[1][0] = false;
    p.run_for(1500);
    assert_eq!(p.state(1), HaState::Holding);
    assert_eq!(p.started[1], [true; RESOURCES]);
    // failure-timeout after the last failure: the ban and the count go.
    p.run_for(10_000);
    let st = p.cores[0].status(p.now);
    assert!(st.ban.is_none(), "{:?}", st.ban);
    assert_eq!(st.monitors[1].failures, 0);
    assert!(
        st.events.iter().any(|e| e.what.contains("forgotten")),
        "{:?}",
        st.events
    );
    assert!(p.cores[0].status(p.now).decision.contains("beta holds"));
}

#[test]
fn failures_are_forgotten_after_failure_timeout_without_one() {
    let mut p = Pair::with_monitor(false, false, StopFailure::Block, MON);
    p.settled_on_alpha();
    kill_on_alpha(&mut p, 0);
    kill_on_alpha(&mut p, 0);
    assert_eq!(p.cores[0].status(p.now).monitors[0].failures, 2);
    p.run_for(MON.failure_timeout);
    assert_eq!(p.cores[0].status(p.now).monitors[0].failures, 0);
    // So two more failures do not reach the threshold of 3.
    kill_on_alpha(&mut p, 0);
    kill_on_alpha(&mut p, 0);
    assert_eq!(p.state(0), HaState::Holding);
    assert_eq!(p.cores[0].status(p.now).monitors[0].failures, 2);
}

#[test]
fn at_the_threshold_with_no_peer_to_take_over_the_resource_restarts_in_place() {
    let mon = Mon {
        threshold: 1,
        ..MON
    };
    let mut p = Pair::with_monitor(false, false, StopFailure::Block, mon);
    p.settled_on_alpha();
    p.off[1] = true;
    p.run_for(DEAD + 500);
    let ops = kill_on_alpha(&mut p, 1);
    assert_eq!(ops, [Op::Stop(1), Op::Start(1)]);
    assert_eq!(p.state(0), HaState::Holding);
    let st = p.cores[0].status(p.now);
    assert!(st.ban.is_none());
    assert!(
        st.events
            .iter()
            .any(|e| e.what.contains("beta is not alive: restarting in place")),
        "{:?}",
        st.events
    );
}

#[test]
fn with_failure_timeout_0_only_cleanup_lifts_the_ban() {
    let mon = Mon {
        threshold: 1,
        failure_timeout: 0,
        ..MON
    };
    let mut p = Pair::with_monitor(false, false, StopFailure::Block, mon);
    p.settled_on_alpha();
    kill_on_alpha(&mut p, 0);
    assert_eq!(p.state(1), HaState::Holding);
    p.run_for(60_000);
    let st = p.cores[0].status(p.now);
    assert_eq!(st.ban.as_ref().map(|b| b.left_ms), Some(None));
    assert_eq!(st.monitors[0].failures, 1);
    assert!(p.cores[0].cooling_down(p.now));
    let e = p.cores[0].cleanup(p.now, Some(RESOURCES)).unwrap_err();
    assert!(e.contains("no resource 2"), "{e}");
    let what = p.cores[0].cleanup(p.now, None).unwrap();
    assert!(what.contains("resource 0: 1 failure(s)"), "{what}");
    assert!(what.contains("ban"), "{what}");
    let st = p.cores[0].status(p.now);
    assert!(st.ban.is_none());
    assert_eq!(st.monitors[0].failures, 0);
    // Eligible again: beta's chain now fails once and comes back to alpha.
    p.started[1][0] = false;
    p.run_for(MON.interval_ms + 1500);
    assert_eq!(p.state(0), HaState::Holding);
    assert_eq!(p.role, [Role::Primary, Role::Secondary]);
}
