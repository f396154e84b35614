//! The simulated world: two nodes, their disks, the link, the application and
//! the operator, all on one event queue with simulated time. This module
//! holds the state and the event loop; the nodes' plumbing, the link, the
//! application, the faults and the checks are `impl World` blocks in the
//! sibling modules.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::disk::{SimDisk, SimMeta};
use super::oracle::Oracle;
use super::scenario::{cfg, Kind, Link, Rates, Scenario};
use crate::machine::{
    Admin, AppId, ConnState, Event, IoToken, MetaToken, Node, NodeConfig, Payload, Verb,
};
use crate::meta::BM_BLOCK_SIZE;
use crate::simkit::{panic_message, replay_command, Violation};
use crate::time::Millis;
use crate::wire::{Message, Protocol};

pub(super) const BS: u64 = BM_BLOCK_SIZE;
/// Simulated time is kept in microseconds; the nodes see milliseconds.
pub(super) const MS: u64 = 1000;

#[derive(Debug, Clone, Default)]
pub struct SimReport {
    pub sim_ms: u64,
    pub writes_acked: u64,
    pub reads_checked: u64,
    pub crashes: u32,
    pub failovers: u32,
    pub resets: u32,
    pub split_brains: u32,
    /// Transport connections made (1: the first one never dropped).
    pub connections: u64,
    /// Data frames the link damaged; the receiver's frame checksum refuses
    /// them and drops the connection.
    pub damaged: u32,
    /// Restarted crashed Primaries that resumed the role by themselves
    /// (`run_resuming`).
    pub resumed: u32,
    /// Fence-peer handlers run (fencing runs: a Primary lost its peer, or
    /// was promoted without it).
    pub fences: u32,
    /// Disks that failed (`on-io-error = "detach"` runs) and disks attached
    /// again afterwards.
    pub disk_failures: u32,
    pub attaches: u32,
    /// Blocks that failed reads (runs without detach), served by the peer.
    pub bad_blocks: u32,
    /// Runs with the resync controller on; its ticks during a resync that
    /// it paced, and those of them held at c-min-rate by application I/O.
    pub controlled_runs: u32,
    pub controlled_ticks: u64,
    pub throttled_ticks: u64,
}

#[derive(Debug)]
pub(super) enum Ev {
    Tick(usize),
    Io {
        node: usize,
        inc: u64,
        token: IoToken,
        op: IoOp,
    },
    Meta {
        node: usize,
        inc: u64,
    },
    Deliver {
        to: usize,
        conn: u64,
        msg: Message,
    },
    Down {
        to: usize,
        conn: u64,
    },
    Step,
    Restart(usize),
    Reconnect(usize),
    /// Power loss at an arbitrary moment, not on a step boundary.
    Crash(usize),
    /// The before-resync-target handler of node `node` ended.
    BeforeTargetDone {
        node: usize,
        inc: u64,
        ok: bool,
    },
    /// The fence-peer handler of node `node` (incarnation `inc`) ended.
    FenceDone {
        node: usize,
        inc: u64,
        exit: Option<i32>,
    },
}

#[derive(Debug)]
pub(super) enum IoOp {
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        len: u32,
        payload: Payload,
        fua: bool,
    },
    Flush,
}

#[derive(Debug)]
pub(super) enum MetaW {
    Super(crate::gen::Generations, crate::meta::MetaFlags, u64),
    Al(u64, Vec<u32>),
    Bitmap(u64, Vec<u64>),
}

#[derive(Debug)]
pub(super) enum AppOp {
    Write { tag: u64, first: u64, n: u64 },
    Read { first: u64, n: u64 },
    Flush { upto: usize },
}

#[derive(Debug)]
pub(super) struct SimNode {
    pub(super) node: Option<Node>,
    pub(super) disk: SimDisk,
    pub(super) meta: SimMeta,
    pub(super) meta_q: VecDeque<(MetaToken, MetaW)>,
    pub(super) meta_busy: bool,
    pub(super) inc: u64,
    pub(super) want: bool,
    pub(super) conn: Option<u64>,
    pub(super) next_tick: Option<u64>,
    pub(super) app: HashMap<AppId, AppOp>,
    /// The disk fails every data request (`detach.rs`).
    pub(super) failed: bool,
    /// The node closed its disk (`Action::CloseDisk`).
    pub(super) closed: bool,
    /// Blocks that fail every read until written again (`detach.rs`).
    pub(super) bad_blocks: std::collections::HashSet<u64>,
}

pub(super) struct World {
    pub(super) seed: u64,
    pub(super) sc: Scenario,
    pub(super) rng: ChaCha8Rng,
    pub(super) now: u64,
    pub(super) seq: u64,
    pub(super) q: BinaryHeap<Reverse<(u64, u64, usize)>>,
    pub(super) evs: HashMap<usize, Ev>,
    pub(super) next_ev: usize,
    pub(super) nodes: [SimNode; 2],
    pub(super) cfgs: [NodeConfig; 2],
    pub(super) conn_id: u64,
    pub(super) live_conn: Option<u64>,
    pub(super) last_deliver: [u64; 2],
    /// When the bulk data queued on each direction (to node i) has left
    /// the sender, with a bandwidth limit ([`Link`]).
    pub(super) link_free: [u64; 2],
    /// Frames to node i on connection c scheduled after time t are lost:
    /// they were still in the crashed sender's socket buffer.
    pub(super) cut: [Option<(u64, u64)>; 2],
    pub(super) partition_until: u64,
    pub(super) oracle: Oracle,
    pub(super) next_tag: u64,
    pub(super) next_app: u64,
    pub(super) trace: VecDeque<String>,
    pub(super) trace_all: bool,
    pub(super) report: SimReport,
    pub(super) ending: bool,
    pub(super) crashes_left: u32,
    pub(super) disk_failures_left: u32,
    /// A crash is scheduled and has not happened yet: the frozen Primary it
    /// is meant for must not be resumed meanwhile.
    pub(super) crash_pending: bool,
    /// The Primary whose peer was made to stop answering (freeze scenario).
    pub(super) peer_stopped: Option<usize>,
    /// The Primary promoted by a failover completed a flush: what it holds
    /// is durable, so a second crash (of it) loses no protected write.
    pub(super) flushed_since_failover: bool,
    pub(super) sb_phase: u8,
    pub(super) victim: Option<usize>,
    /// An operator's switchover in progress: this Primary takes no new
    /// requests, and once idle it is demoted and its link dropped at once.
    pub(super) switchover: Option<usize>,
    pub(super) fail: Option<String>,
    /// Arm `ResumeAfterCrash` on every restart (`run_resuming`): a crashed
    /// Primary takes its role back by itself when that keeps one writer.
    pub(super) resume: bool,
    /// Armed and not yet seen resumed or given up, per node.
    pub(super) resume_armed: [bool; 2],
}

/// Run one seed. `trace` keeps every line (for replay) instead of the last few.
pub fn run(seed: u64, trace: bool) -> Result<SimReport, Violation> {
    run_scenario(seed, Scenario::from_seed(seed), trace, false).1
}

/// [`run`], with every restarted node armed to resume the Primary role of a
/// run that crashed while Primary (what repd does when the kernel still
/// holds its device): the same seeds, checked against the same invariants
/// (one Primary, no acknowledged write lost) with self-promotions added.
pub fn run_resuming(seed: u64, trace: bool) -> Result<SimReport, Violation> {
    run_scenario(seed, Scenario::from_seed(seed), trace, true).1
}

/// The slow link of issue 16 (item 8), scaled to the simulator's timing
/// (timeout 60 ms, ping interval 20 ms): a full sync of the whole data area,
/// no faults, no writes, over a link of `bytes_per_ms`. At 1024 B/ms one
/// 128 KiB resync frame takes 128 ms, twice the timeout, as 2 MiB of
/// resync window took 8.4 s at 2 Mbit/s against `timeout-ms = 1000`: a
/// ping queued behind resync data (`ping_conn` false) times out again and
/// again, whatever the resync window. The report counts the connections;
/// the error says what went wrong, if anything (the pair did not converge
/// within 60 s).
pub fn slow_link_resync(bytes_per_ms: u64, ping_conn: bool) -> (SimReport, Result<(), Violation>) {
    let sc = Scenario {
        kind: Kind::Network,
        sb_auto: super::scenario::SbAuto::Manual,
        before_target: false,
        protocol: Protocol::C,
        csums: false,
        failover: false,
        duration_ms: 0,
        data_bytes: 16 << 20,
        al_extents: 3,
        link: Link {
            bytes_per_ms,
            ping_conn,
        },
        settle_ms: 60_000,
        freeze: false,
        crash_sync_source: false,
        resync_rate: 0,
        resync_control: crate::machine::ResyncControl::default(),
        fencing: crate::machine::Fencing::DontCare,
        rates: Rates::FIXED,
        detach: false,
    };
    let (report, r) = run_scenario(1, sc, false, false);
    (report, r.map(|_| ()))
}

fn run_scenario(
    seed: u64,
    sc: Scenario,
    trace: bool,
    resume: bool,
) -> (SimReport, Result<SimReport, Violation>) {
    let nbits = sc.data_bytes / BS;
    let mk = || SimNode {
        node: None,
        disk: SimDisk::default(),
        meta: SimMeta::fresh(nbits),
        meta_q: VecDeque::new(),
        meta_busy: false,
        inc: 0,
        want: false,
        conn: None,
        next_tick: None,
        app: HashMap::new(),
        failed: false,
        closed: false,
        bad_blocks: std::collections::HashSet::new(),
    };
    let mut w = World {
        seed,
        sc,
        rng: ChaCha8Rng::seed_from_u64(seed),
        now: 0,
        seq: 0,
        q: BinaryHeap::new(),
        evs: HashMap::new(),
        next_ev: 0,
        nodes: [mk(), mk()],
        cfgs: [cfg("alpha", "beta", &sc), cfg("beta", "alpha", &sc)],
        conn_id: 0,
        live_conn: None,
        last_deliver: [0, 0],
        link_free: [0, 0],
        cut: [None, None],
        partition_until: 0,
        oracle: Oracle::default(),
        next_tag: 1,
        next_app: 1,
        trace: VecDeque::new(),
        trace_all: trace,
        report: SimReport::default(),
        ending: false,
        crashes_left: 1 + u32::from(sc.crash_sync_source),
        disk_failures_left: 2,
        crash_pending: false,
        peer_stopped: None,
        flushed_since_failover: false,
        sb_phase: 0,
        victim: None,
        switchover: None,
        fail: None,
        resume,
        resume_armed: [false; 2],
    };
    w.report.controlled_runs = u32::from(sc.resync_control.enabled());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.main()));
    w.report.sim_ms = w.now / MS;
    w.report.connections = w.conn_id;
    let r = match r {
        Ok(Ok(())) => Ok(w.report.clone()),
        Ok(Err(what)) => Err(w.violation(what)),
        Err(p) => Err(w.violation(format!("panic: {}", panic_message(p.as_ref())))),
    };
    (w.report.clone(), r)
}

impl World {
    pub(super) fn violation(&self, what: String) -> Violation {
        let flags: &[&str] = if self.resume {
            &["--resume-after-crash"]
        } else {
            &[]
        };
        Violation {
            seed: self.seed,
            at: Millis::from_ms(self.now / MS),
            what,
            scenario: format!("{:?}", self.sc),
            replay: replay_command("replication-proto", "repsim", self.seed, flags),
            trace: self.trace.iter().cloned().collect(),
        }
    }

    pub(super) fn log(&mut self, s: String) {
        let line = format!("{:>9.3}ms {s}", self.now as f64 / 1000.0);
        if self.trace_all {
            println!("{line}");
        }
        self.trace.push_back(line);
        if self.trace.len() > 60 {
            self.trace.pop_front();
        }
    }

    pub(super) fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        let id = self.next_ev;
        self.next_ev += 1;
        self.evs.insert(id, ev);
        self.q.push(Reverse((t, self.seq, id)));
    }

    pub(super) fn lat(&mut self, lo: u64, hi: u64) -> u64 {
        self.rng.gen_range(lo..hi)
    }

    pub(super) fn name(&self, i: usize) -> &str {
        &self.cfgs[i].node
    }

    pub(super) fn nd(&mut self, i: usize) -> Option<&mut Node> {
        self.nodes[i].node.as_mut()
    }
}

// `fail` is kept apart so callbacks can report without threading Results.
impl World {
    fn main(&mut self) -> Result<(), String> {
        self.begin();
        let end = self.sc.duration_ms * MS;
        let deadline = end + self.sc.settle_ms * MS;
        while let Some(Reverse((t, _, id))) = self.q.pop() {
            self.now = t;
            if let Some(f) = self.fail.take() {
                return Err(f);
            }
            if t > deadline {
                return Err(format!("did not converge: {}", self.describe()));
            }
            let Some(ev) = self.evs.remove(&id) else {
                continue;
            };
            if self.event(t, end, ev)? {
                return Ok(());
            }
        }
        Err("event queue ran dry".into())
    }

    /// Both nodes up and connecting, the first one Primary, the first step
    /// scheduled.
    fn begin(&mut self) {
        if self.trace_all {
            self.log(format!("{:?}", self.sc));
        }
        self.start_node(0);
        self.start_node(1);
        self.admin(
            0,
            Admin::Verb(Verb::Connect {
                discard_my_data: false,
            }),
        );
        self.admin(
            1,
            Admin::Verb(Verb::Connect {
                discard_my_data: false,
            }),
        );
        self.admin(0, Admin::Verb(Verb::Primary { force: true }));
        // Armed once the first Primary is there, as the agent arms it; armed
        // before, that promotion alone would freeze at once.
        self.arm_freeze(0);
        self.arm_freeze(1);
        self.at(MS, Ev::Step);
    }

    /// Handles one event at time `t`; `Ok(true)` once the run converged and
    /// passed its final checks.
    fn event(&mut self, t: u64, end: u64, ev: Ev) -> Result<bool, String> {
        match ev {
            Ev::Tick(i) => {
                if self.nodes[i].next_tick == Some(t) {
                    self.nodes[i].next_tick = None;
                    self.feed(i, Event::Tick);
                    self.note_controller(i);
                }
            }
            Ev::Io {
                node,
                inc,
                token,
                op,
            } => self.io_done(node, inc, token, op),
            Ev::Meta { node, inc } => {
                if self.nodes[node].inc == inc && self.nodes[node].node.is_some() {
                    self.meta_complete(node);
                }
            }
            Ev::Deliver { to, conn, msg } => self.deliver(t, to, conn, msg),
            Ev::Down { to, conn } => {
                if self.nodes[to].conn == Some(conn) {
                    self.nodes[to].conn = None;
                    self.feed(to, Event::TransportDown);
                }
            }
            Ev::Crash(i) => {
                self.crash_pending = false;
                // A power loss on top of the peer's failed disk is a second
                // fault (the writes only this node's cache held are gone).
                if self.nodes[i].node.is_some() && !self.any_disk_out() {
                    self.crash(i);
                }
            }
            Ev::Reconnect(i) => self.reconnect(i),
            Ev::Restart(i) => self.restart(i),
            Ev::FenceDone { node, inc, exit } => {
                if self.nodes[node].inc == inc && self.nodes[node].node.is_some() {
                    self.feed(node, Event::FenceDone { exit });
                }
            }
            Ev::BeforeTargetDone { node, inc, ok } => {
                if self.nodes[node].inc == inc && self.nodes[node].node.is_some() {
                    self.feed(node, Event::BeforeResyncTargetDone { ok });
                }
            }
            Ev::Step => return self.step(end),
        }
        Ok(false)
    }

    /// A disk request completes (unless its node crashed since).
    fn io_done(&mut self, node: usize, inc: u64, token: IoToken, op: IoOp) {
        if self.nodes[node].inc != inc || self.nodes[node].node.is_none() {
            return;
        }
        if self.nodes[node].failed || self.nodes[node].closed {
            self.feed(
                node,
                Event::LocalDone {
                    token,
                    result: Err(5),
                },
            );
            return;
        }
        if self.bad_read(node, &op) {
            self.feed(
                node,
                Event::LocalDone {
                    token,
                    result: Err(5),
                },
            );
            return;
        }
        let d = &mut self.nodes[node].disk;
        let result = match op {
            IoOp::Read { offset, len } => Ok(Some(d.read(offset, len))),
            IoOp::Write {
                offset,
                len,
                payload,
                fua,
            } => {
                d.write(offset, len, &payload, fua);
                Ok(None)
            }
            IoOp::Flush => {
                d.flush();
                Ok(None)
            }
        };
        self.feed(node, Event::LocalDone { token, result });
    }

    /// An admin disconnect is followed by a connect, unless a split brain
    /// left the node StandAlone on purpose.
    fn reconnect(&mut self, i: usize) {
        if self.nodes[i]
            .node
            .as_ref()
            .is_some_and(|n| n.conn() == ConnState::StandAlone && !n.split_brain())
        {
            self.admin(
                i,
                Admin::Verb(Verb::Connect {
                    discard_my_data: false,
                }),
            );
        }
    }

    /// A crashed node comes back, as repd and the agent bring it up.
    fn restart(&mut self, i: usize) {
        let s = format!("{} restarts", self.name(i));
        self.log(s);
        self.start_node(i);
        self.arm_freeze(i);
        // Refused (and nothing armed) unless the last run
        // ended while Primary.
        self.resume_armed[i] = self.resume && self.admin(i, Admin::Verb(Verb::ResumeAfterCrash));
        self.admin(
            i,
            Admin::Verb(Verb::Connect {
                discard_my_data: false,
            }),
        );
    }

    /// The run's heartbeat: faults and writes while it lasts, then the
    /// end phase; `Ok(true)` once converged and checked.
    fn step(&mut self, end: u64) -> Result<bool, String> {
        self.count_resumed();
        if self.now < end {
            self.chaos();
        } else {
            self.ending = true;
            if self.converged()? {
                self.final_checks()?;
                return Ok(true);
            }
        }
        if let Some(p) = self.primary() {
            if !self.ending
                && (self.sc.kind != Kind::SplitBrain || self.sb_phase < 2)
                && self.switchover != Some(p)
            {
                // Bursts keep several requests in flight.
                for _ in 0..self.rng.gen_range(1..=4) {
                    self.app_step(p);
                }
                if self.sc.kind == Kind::SplitBrain && self.sb_phase == 1 {
                    // Both Primary: the other one writes too.
                    self.app_step(1 - p);
                }
            }
        }
        self.maybe_connect();
        self.check_single_primary()?;
        let t = self.now + self.lat(200, 2000);
        self.at(t, Ev::Step);
        Ok(false)
    }
}
