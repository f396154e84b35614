//! The simulated world: two nodes, their disks, the link, the application and
//! the operator, all on one event queue with simulated time.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt::Write as _;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::disk::{SimDisk, SimMeta};
use super::oracle::{block_for, tag_of, Oracle};
use crate::machine::{
    Action, Admin, ConnState, Event, Node, NodeConfig, Payload, SplitBrainPolicy,
};
use crate::meta::BM_BLOCK_SIZE;
use crate::time::Millis;
use crate::wire::{encoded_len, features, DiskState, Message, Protocol, Role};

const BS: u64 = BM_BLOCK_SIZE;
/// Simulated time is kept in microseconds; the nodes see milliseconds.
const MS: u64 = 1000;
/// One Data frame in this many has its data damaged on the link.
const DAMAGE_ONE_IN: u32 = 400;

/// What one seed exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Link resets, partitions, admin disconnects, verify, invalidate, a
    /// Secondary crash: no acknowledged write may be lost.
    Network,
    /// One crash (power loss) of the Primary, then failover or restart.
    PrimaryCrash,
    /// Both promoted while partitioned: must be detected, then recovered
    /// with discard-my-data.
    SplitBrain,
}

/// The link between the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Bandwidth of each direction; 0: unlimited (a frame takes only the
    /// latency). With a limit, a frame waits until every byte queued
    /// before it on its direction has left (the sender's socket buffer and
    /// a router's queue): the queueing that held pings behind resync data.
    pub bytes_per_ms: u64,
    /// Ping and PingAck travel on a connection of their own (the daemon's
    /// ping connection, [`features::PING_CONN`]), which waits for no bulk
    /// data, only for the latency. Without: they queue with the rest.
    pub ping_conn: bool,
}

impl Link {
    pub const UNLIMITED: Link = Link {
        bytes_per_ms: 0,
        ping_conn: true,
    };
}

#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub kind: Kind,
    pub protocol: Protocol,
    pub csums: bool,
    pub failover: bool,
    pub duration_ms: u64,
    pub data_bytes: u64,
    pub al_extents: u32,
    /// PrimaryCrash: both nodes freeze their I/O when they lose the peer
    /// while Primary (`freeze-on-disconnect`, as the cluster agent arms it);
    /// the Secondary stops answering for a while (a partition, a SIGSTOP),
    /// and the frozen Primary either crashes or is resumed (as the agent
    /// does once the witness knows its new generation).
    pub freeze: bool,
    /// PrimaryCrash with failover: the promoted survivor crashes too, while
    /// it is the sync source of the restarted first Primary.
    pub crash_sync_source: bool,
    /// Resync bytes per second (0 = unlimited); a limit keeps the resync
    /// running long enough for a crash to hit it.
    pub resync_rate: u64,
    pub link: Link,
    /// After `duration_ms`, how long the pair may take to converge.
    pub settle_ms: u64,
}

impl Scenario {
    #[must_use]
    pub fn from_seed(seed: u64) -> Self {
        let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0x5ce7_a710);
        let kind = match r.gen_range(0..10) {
            0..=4 => Kind::Network,
            5..=7 => Kind::PrimaryCrash,
            _ => Kind::SplitBrain,
        };
        let protocol = match r.gen_range(0..4) {
            0 => Protocol::A,
            1 => Protocol::B,
            _ => Protocol::C,
        };
        let csums = r.gen_bool(0.3);
        let failover = r.gen_bool(0.6);
        let duration_ms = r.gen_range(300..1500);
        let al_extents = r.gen_range(1..4);
        // Drawn from their own stream so the scenarios above stay the same
        // for every seed that existed before these were added.
        let mut x = ChaCha8Rng::seed_from_u64(seed ^ 0x1551_e016);
        let crash = kind == Kind::PrimaryCrash;
        let freeze = crash && x.gen_bool(0.3);
        let crash_sync_source = crash && failover && x.gen_bool(0.4);
        let resync_rate = if crash_sync_source {
            x.gen_range(8u64..48) << 20
        } else {
            0
        };
        Self {
            kind,
            protocol,
            csums,
            failover,
            duration_ms,
            data_bytes: 16 << 20,
            al_extents,
            freeze,
            crash_sync_source,
            resync_rate,
            // One seed in five on a slow link (2 to 16 MB/s against a
            // 60 ms timeout: the resync window alone queues 128 ms to 1 s),
            // with the ping connection the daemon has.
            link: if r.gen_ratio(1, 5) {
                Link {
                    bytes_per_ms: r.gen_range(2048..16384),
                    ping_conn: true,
                }
            } else {
                Link::UNLIMITED
            },
            settle_ms: 200_000,
        }
    }
}

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
}

#[derive(Debug, Clone)]
pub struct Violation {
    pub seed: u64,
    pub scenario: String,
    pub what: String,
    pub trace: Vec<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {} ({}) violated an invariant: {}",
            self.seed, self.scenario, self.what
        )?;
        writeln!(
            f,
            "replay: cargo run -p replication-proto --release --bin repsim -- --seed {} --trace",
            self.seed
        )?;
        for l in &self.trace {
            writeln!(f, "  {l}")?;
        }
        Ok(())
    }
}

#[derive(Debug)]
enum Ev {
    Tick(usize),
    Io {
        node: usize,
        inc: u64,
        token: u64,
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
}

#[derive(Debug)]
enum IoOp {
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
enum MetaW {
    Super(crate::gen::Generations, crate::meta::MetaFlags),
    Al(u64, Vec<u32>),
    Bitmap(u64, Vec<u64>),
}

#[derive(Debug)]
enum AppOp {
    Write { tag: u64, first: u64, n: u64 },
    Read { first: u64, n: u64 },
    Flush { upto: usize },
}

#[derive(Debug)]
struct SimNode {
    node: Option<Node>,
    disk: SimDisk,
    meta: SimMeta,
    meta_q: VecDeque<(u64, MetaW)>,
    meta_busy: bool,
    inc: u64,
    want: bool,
    conn: Option<u64>,
    next_tick: Option<u64>,
    app: HashMap<u64, AppOp>,
}

struct World {
    seed: u64,
    sc: Scenario,
    rng: ChaCha8Rng,
    now: u64,
    seq: u64,
    q: BinaryHeap<Reverse<(u64, u64, usize)>>,
    evs: HashMap<usize, Ev>,
    next_ev: usize,
    nodes: [SimNode; 2],
    cfgs: [NodeConfig; 2],
    conn_id: u64,
    live_conn: Option<u64>,
    last_deliver: [u64; 2],
    /// When the bulk data queued on each direction (to node i) has left
    /// the sender, with a bandwidth limit ([`Link`]).
    link_free: [u64; 2],
    /// Frames to node i on connection c scheduled after time t are lost:
    /// they were still in the crashed sender's socket buffer.
    cut: [Option<(u64, u64)>; 2],
    partition_until: u64,
    oracle: Oracle,
    next_tag: u64,
    next_app: u64,
    trace: VecDeque<String>,
    trace_all: bool,
    report: SimReport,
    ending: bool,
    crashes_left: u32,
    /// A crash is scheduled and has not happened yet: the frozen Primary it
    /// is meant for must not be resumed meanwhile.
    crash_pending: bool,
    /// The Primary whose peer was made to stop answering (freeze scenario).
    peer_stopped: Option<usize>,
    /// The Primary promoted by a failover completed a flush: what it holds
    /// is durable, so a second crash (of it) loses no protected write.
    flushed_since_failover: bool,
    sb_phase: u8,
    victim: Option<usize>,
    /// An operator's switchover in progress: this Primary takes no new
    /// requests, and once idle it is demoted and its link dropped at once.
    switchover: Option<usize>,
    fail: Option<String>,
    /// Arm `ResumeAfterCrash` on every restart (`run_resuming`): a crashed
    /// Primary takes its role back by itself when that keeps one writer.
    resume: bool,
    /// Armed and not yet seen resumed or given up, per node.
    resume_armed: [bool; 2],
}

fn cfg(name: &str, peer: &str, sc: &Scenario) -> NodeConfig {
    NodeConfig {
        resource: "r0".into(),
        node: name.into(),
        peer: peer.into(),
        protocol: sc.protocol,
        data_bytes: sc.data_bytes,
        secret: b"sim-secret".to_vec(),
        timeout_ms: 60,
        ping_int_ms: 20,
        ko_count: 4,
        max_buffers: 64,
        resync_rate: sc.resync_rate,
        csums: sc.csums,
        al_extents: sc.al_extents,
        split_brain: SplitBrainPolicy::default(),
        features: features::ALL,
    }
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
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.main()));
    w.report.sim_ms = w.now / MS;
    w.report.connections = w.conn_id;
    let r = match r {
        Ok(Ok(())) => Ok(w.report.clone()),
        Ok(Err(what)) => Err(w.violation(what)),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_default();
            Err(w.violation(format!("panic: {msg}")))
        }
    };
    (w.report.clone(), r)
}

impl World {
    fn violation(&self, what: String) -> Violation {
        Violation {
            seed: self.seed,
            scenario: format!("{:?}", self.sc),
            what,
            trace: self.trace.iter().cloned().collect(),
        }
    }

    fn log(&mut self, s: String) {
        let line = format!("{:>9.3}ms {s}", self.now as f64 / 1000.0);
        if self.trace_all {
            println!("{line}");
        }
        self.trace.push_back(line);
        if self.trace.len() > 60 {
            self.trace.pop_front();
        }
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        let id = self.next_ev;
        self.next_ev += 1;
        self.evs.insert(id, ev);
        self.q.push(Reverse((t, self.seq, id)));
    }

    fn lat(&mut self, lo: u64, hi: u64) -> u64 {
        self.rng.gen_range(lo..hi)
    }

    fn name(&self, i: usize) -> &str {
        &self.cfgs[i].node
    }

    fn nd(&mut self, i: usize) -> Option<&mut Node> {
        self.nodes[i].node.as_mut()
    }

    // ----- node plumbing -----------------------------------------------------

    fn start_node(&mut self, i: usize) {
        let p = self.nodes[i].meta.persisted();
        if self.trace_all {
            let s = format!(
                "{} starts from al={:?} flags={:?} gens={:x?} dirty={}",
                self.name(i),
                p.al_extents,
                p.flags,
                p.gens,
                p.bitmap.iter().map(|w| w.count_ones()).sum::<u32>()
            );
            self.log(s);
        }
        let seed = self.rng.gen();
        self.nodes[i].inc += 1;
        self.nodes[i].meta_q.clear();
        self.nodes[i].meta_busy = false;
        self.nodes[i].want = false;
        self.nodes[i].conn = None;
        self.nodes[i].next_tick = None;
        let _span = tracing::info_span!("node", name = %self.cfgs[i].node).entered();
        let now = Millis(self.now / MS);
        self.nodes[i].node = Some(Node::new(self.cfgs[i].clone(), p, now, seed));
        self.drain(i);
    }

    fn feed(&mut self, i: usize, ev: Event) {
        // The core logs without naming its node: the driver's span does.
        let _span = tracing::info_span!("node", name = %self.cfgs[i].node).entered();
        let now = Millis(self.now / MS);
        if let Some(n) = self.nd(i) {
            n.handle(now, ev);
        }
        self.drain(i);
    }

    fn admin(&mut self, i: usize, cmd: Admin) -> bool {
        // The core logs without naming its node: the driver's span does.
        let _span = tracing::info_span!("node", name = %self.cfgs[i].node).entered();
        let now = Millis(self.now / MS);
        let r = match self.nd(i) {
            Some(n) => n.admin(now, cmd.clone()),
            None => return false,
        };
        let s = format!("{} admin {:?}: {:?}", self.name(i), cmd, r);
        self.log(s);
        self.drain(i);
        r.is_ok()
    }

    fn drain(&mut self, i: usize) {
        loop {
            let Some(a) = self.nodes[i].node.as_mut().and_then(Node::poll_action) else {
                break;
            };
            self.act(i, a);
        }
        let t = self.nodes[i].node.as_ref().and_then(Node::poll_timeout);
        if let Some(t) = t {
            let t = (t.as_ms() * MS).max(self.now + 1);
            if self.nodes[i].next_tick.is_none_or(|x| t < x) {
                self.nodes[i].next_tick = Some(t);
                self.at(t, Ev::Tick(i));
            }
        }
    }

    fn act(&mut self, i: usize, a: Action) {
        let inc = self.nodes[i].inc;
        match a {
            Action::Connect => self.nodes[i].want = true,
            Action::CloseConnection => {
                self.nodes[i].want = false;
                if let Some(c) = self.nodes[i].conn.take() {
                    let other = 1 - i;
                    if self.live_conn == Some(c) {
                        self.live_conn = None;
                    }
                    let t = self.deliver_time(other, 50, 500);
                    self.at(t, Ev::Down { to: other, conn: c });
                }
            }
            Action::Send(m) => {
                if let Some(c) = self.nodes[i].conn {
                    let other = 1 - i;
                    if self.trace_all {
                        let s = format!("{} -> {}", self.name(i), short(&m));
                        self.log(s);
                    }
                    let t = self.send_time(other, &m);
                    self.at(
                        t,
                        Ev::Deliver {
                            to: other,
                            conn: c,
                            msg: m,
                        },
                    );
                }
            }
            Action::LocalRead { token, offset, len } => {
                let t = self.now + self.lat(5, 300);
                self.at(
                    t,
                    Ev::Io {
                        node: i,
                        inc,
                        token,
                        op: IoOp::Read { offset, len },
                    },
                );
            }
            Action::LocalWrite {
                token,
                offset,
                len,
                payload,
                fua,
            } => {
                let t = self.now + self.lat(5, 300);
                self.at(
                    t,
                    Ev::Io {
                        node: i,
                        inc,
                        token,
                        op: IoOp::Write {
                            offset,
                            len,
                            payload,
                            fua,
                        },
                    },
                );
            }
            Action::LocalFlush { token } => {
                let t = self.now + self.lat(50, 600);
                self.at(
                    t,
                    Ev::Io {
                        node: i,
                        inc,
                        token,
                        op: IoOp::Flush,
                    },
                );
            }
            Action::WriteSuper { token, gens, flags } => {
                self.meta_push(i, token, MetaW::Super(gens, flags))
            }
            Action::WriteAl {
                token,
                seq,
                extents,
            } => self.meta_push(i, token, MetaW::Al(seq, extents)),
            Action::WriteBitmap {
                token,
                first_word,
                words,
            } => {
                self.meta_push(i, token, MetaW::Bitmap(first_word, words));
            }
            Action::Complete { id, result } => self.app_done(i, id, result),
            Action::Hook(h) => {
                let s = format!("{} hook {:?}", self.name(i), h);
                self.log(s);
            }
        }
    }

    /// When frame `m` sent now reaches node `to`: after the bytes queued
    /// before it on that direction have left, at the link's bandwidth,
    /// unless it rides the ping connection ([`Link`]).
    fn send_time(&mut self, to: usize, m: &Message) -> u64 {
        let link = self.sc.link;
        if link.bytes_per_ms == 0 {
            return self.deliver_time(to, 20, 400);
        }
        if link.ping_conn && matches!(m, Message::Ping | Message::PingAck) {
            // A connection of its own: no bulk ahead of it, and the order
            // with the data connection's frames is not kept.
            let base = self.now.max(self.partition_until);
            return base + self.lat(20, 400);
        }
        let start = self.now.max(self.partition_until).max(self.link_free[to]);
        let bytes = encoded_len(m) as u64;
        self.link_free[to] = start + bytes * MS / link.bytes_per_ms;
        self.deliver_time(to, 20, 400)
    }

    /// FIFO per direction; held while partitioned, and behind the bytes
    /// queued on a link with a bandwidth limit.
    fn deliver_time(&mut self, to: usize, lo: u64, hi: u64) -> u64 {
        let base = self.now.max(self.partition_until).max(self.link_free[to]);
        let t = (base + self.lat(lo, hi)).max(self.last_deliver[to] + 1);
        self.last_deliver[to] = t;
        t
    }

    fn meta_push(&mut self, i: usize, token: u64, m: MetaW) {
        self.nodes[i].meta_q.push_back((token, m));
        if !self.nodes[i].meta_busy {
            self.nodes[i].meta_busy = true;
            let t = self.now + self.lat(20, 400);
            let inc = self.nodes[i].inc;
            self.at(t, Ev::Meta { node: i, inc });
        }
    }

    fn meta_complete(&mut self, i: usize) {
        let Some((token, m)) = self.nodes[i].meta_q.pop_front() else {
            self.nodes[i].meta_busy = false;
            return;
        };
        let meta = &mut self.nodes[i].meta;
        match m {
            MetaW::Super(g, f) => {
                meta.gens = g;
                meta.flags = f;
            }
            MetaW::Al(seq, e) => {
                meta.al_seq = seq;
                meta.al_extents = e;
            }
            MetaW::Bitmap(first, words) => meta.write_bitmap(first, &words),
        }
        if self.nodes[i].meta_q.is_empty() {
            self.nodes[i].meta_busy = false;
        } else {
            let t = self.now + self.lat(20, 400);
            let inc = self.nodes[i].inc;
            self.at(t, Ev::Meta { node: i, inc });
        }
        self.feed(
            i,
            Event::MetaDone {
                token,
                result: Ok(()),
            },
        );
    }

    // ----- the network -------------------------------------------------------

    fn maybe_connect(&mut self) {
        if self.live_conn.is_some() || self.now < self.partition_until {
            return;
        }
        let ready = |n: &SimNode| n.node.is_some() && n.want && n.conn.is_none();
        if ready(&self.nodes[0]) && ready(&self.nodes[1]) {
            self.conn_id += 1;
            let c = self.conn_id;
            self.live_conn = Some(c);
            self.nodes[0].conn = Some(c);
            self.nodes[1].conn = Some(c);
            self.last_deliver = [self.now, self.now];
            self.link_free = [self.now, self.now];
            self.log(format!("transport up #{c}"));
            self.feed(0, Event::TransportUp);
            self.feed(1, Event::TransportUp);
        }
    }

    fn reset_link(&mut self) {
        if let Some(c) = self.live_conn.take() {
            self.report.resets += 1;
            self.log(format!("link reset #{c}"));
            for to in 0..2 {
                let t = self.now + self.lat(10, 300);
                self.at(t, Ev::Down { to, conn: c });
            }
        }
    }

    /// Whether the link damages this frame: one write's data in
    /// [`DAMAGE_ONE_IN`], in the network scenario only, the one whose
    /// invariants hold under link faults (with a Primary crash on top, a
    /// failover without fencing may rightly end in a split brain).
    fn damages(&mut self, msg: &Message) -> bool {
        matches!(msg, Message::Data { data, .. } if !data.is_empty())
            && self.sc.kind == Kind::Network
            && self.rng.gen_range(0..DAMAGE_ONE_IN) == 0
    }

    /// What the driver does with a frame whose checksum fails: it never
    /// reaches the node, the receiver drops the connection at once (with
    /// every frame behind it), the sender notices a little later.
    fn refuse_damaged(&mut self, to: usize, conn: u64) {
        self.report.damaged += 1;
        let s = format!("{} refuses a damaged Data frame on #{conn}", self.name(to));
        self.log(s);
        if self.live_conn == Some(conn) {
            self.live_conn = None;
        }
        self.nodes[to].conn = None;
        self.feed(to, Event::TransportDown);
        let t = self.now + self.lat(10, 300);
        self.at(t, Ev::Down { to: 1 - to, conn });
    }

    // ----- the application ---------------------------------------------------

    fn primary(&self) -> Option<usize> {
        (0..2).find(|&i| {
            self.nodes[i]
                .node
                .as_ref()
                .is_some_and(|n| n.role() == Role::Primary)
        })
    }

    fn busy_blocks(&self, i: usize, first: u64, n: u64) -> bool {
        self.nodes[i].app.values().any(|op| match op {
            AppOp::Write { first: f, n: m, .. } | AppOp::Read { first: f, n: m } => {
                first < f + m && *f < first + n
            }
            AppOp::Flush { .. } => false,
        })
    }

    fn app_step(&mut self, i: usize) {
        if self.nodes[i].app.len() >= 8 {
            return;
        }
        let nblocks = self.sc.data_bytes / BS;
        let id = self.next_app;
        let r = self.rng.gen_range(0..100);
        // Hot spots in a few extents so the activity log has to evict.
        let n = self.rng.gen_range(1..=8u64);
        let region = self.rng.gen_range(0..4u64) * (nblocks / 4);
        let first = (region + self.rng.gen_range(0..512u64)).min(nblocks - n);
        if r < 12 {
            let upto = self.oracle.unflushed_len(i);
            self.next_app += 1;
            self.nodes[i].app.insert(id, AppOp::Flush { upto });
            self.feed(i, Event::AppFlush { id });
            return;
        }
        if self.busy_blocks(i, first, n) {
            return;
        }
        self.next_app += 1;
        let len = u32::try_from(n * BS).unwrap_or(0);
        if r < 30 {
            self.nodes[i].app.insert(id, AppOp::Read { first, n });
            self.feed(
                i,
                Event::AppRead {
                    id,
                    offset: first * BS,
                    len,
                },
            );
            return;
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        let payload = if r < 35 {
            Payload::Zeroes
        } else {
            let mut v = Vec::with_capacity(len as usize);
            for b in first..first + n {
                v.extend_from_slice(&block_for(tag, b));
            }
            Payload::Data(Bytes::from(v))
        };
        let tag = if matches!(payload, Payload::Zeroes) {
            0
        } else {
            tag
        };
        let fua = self.rng.gen_bool(0.1);
        self.oracle.issued(i, tag, first, n);
        self.nodes[i].app.insert(id, AppOp::Write { tag, first, n });
        self.feed(
            i,
            Event::AppWrite {
                id,
                offset: first * BS,
                payload,
                len,
                fua,
            },
        );
    }

    fn app_done(&mut self, i: usize, id: u64, result: Result<Option<Bytes>, i32>) {
        let Some(op) = self.nodes[i].app.remove(&id) else {
            return;
        };
        let st = self.nodes[i].node.as_ref().map(Node::status);
        match op {
            AppOp::Write { tag, first, n } => {
                if result.is_ok() {
                    let protected = st.is_some_and(|s| {
                        matches!(
                            s.connection,
                            ConnState::Connected
                                | ConnState::VerifySource
                                | ConnState::VerifyTarget
                        ) && s.peer_disk == DiskState::UpToDate
                            && self.sc.protocol != Protocol::A
                    });
                    self.report.writes_acked += 1;
                    if self.trace_all {
                        let s = format!(
                            "{} acked write tag={tag} blocks={first}+{n} protected={protected}",
                            self.name(i)
                        );
                        self.log(s);
                    }
                    self.oracle.acked(tag, first, n, protected);
                }
            }
            AppOp::Read { first, n } => {
                // While split, each side legitimately misses the other's writes.
                let split = self.sc.kind == Kind::SplitBrain && (1..3).contains(&self.sb_phase);
                if let (Ok(Some(d)), false) = (result, split) {
                    for k in 0..n {
                        let s = (k * BS) as usize;
                        let tag = d.get(s..s + 8).map_or(0, tag_of);
                        if let Err(e) = self.oracle.check(first + k, tag) {
                            let msg = format!("read on {} returned stale data: {e}", self.name(i));
                            self.log(msg.clone());
                            self.fail = Some(msg);
                        }
                    }
                    self.report.reads_checked += 1;
                }
            }
            AppOp::Flush { upto } => {
                if result.is_ok() {
                    if self.trace_all {
                        let s = format!(
                            "{} flush done, covers the writes acked before #{upto}",
                            self.name(i)
                        );
                        self.log(s);
                    }
                    self.oracle.flushed(i, upto);
                    self.flushed_since_failover = true;
                }
            }
        }
    }
}

// `fail` is kept apart so callbacks can report without threading Results.
impl World {
    fn main(&mut self) -> Result<(), String> {
        if self.trace_all {
            self.log(format!("{:?}", self.sc));
        }
        self.start_node(0);
        self.start_node(1);
        self.admin(
            0,
            Admin::Connect {
                discard_my_data: false,
            },
        );
        self.admin(
            1,
            Admin::Connect {
                discard_my_data: false,
            },
        );
        self.admin(0, Admin::Primary { force: true });
        // Armed once the first Primary is there, as the agent arms it; armed
        // before, that promotion alone would freeze at once.
        self.arm_freeze(0);
        self.arm_freeze(1);
        self.at(MS, Ev::Step);
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
            match ev {
                Ev::Tick(i) => {
                    if self.nodes[i].next_tick == Some(t) {
                        self.nodes[i].next_tick = None;
                        self.feed(i, Event::Tick);
                    }
                }
                Ev::Io {
                    node,
                    inc,
                    token,
                    op,
                } => {
                    if self.nodes[node].inc != inc || self.nodes[node].node.is_none() {
                        continue;
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
                Ev::Meta { node, inc } => {
                    if self.nodes[node].inc == inc && self.nodes[node].node.is_some() {
                        self.meta_complete(node);
                    }
                }
                Ev::Deliver { to, conn, msg } => {
                    let lost = self.cut[to].is_some_and(|(c, after)| c == conn && t > after);
                    if !lost && self.nodes[to].conn == Some(conn) && self.nodes[to].node.is_some() {
                        if self.trace_all {
                            let s = format!("{} <- {}", self.name(to), short(&msg));
                            self.log(s);
                        }
                        if self.damages(&msg) {
                            self.refuse_damaged(to, conn);
                        } else {
                            self.feed(to, Event::Frame(msg));
                        }
                    }
                }
                Ev::Down { to, conn } => {
                    if self.nodes[to].conn == Some(conn) {
                        self.nodes[to].conn = None;
                        self.feed(to, Event::TransportDown);
                    }
                }
                Ev::Crash(i) => {
                    self.crash_pending = false;
                    if self.nodes[i].node.is_some() {
                        self.crash(i);
                    }
                }
                Ev::Reconnect(i) => {
                    if self.nodes[i]
                        .node
                        .as_ref()
                        .is_some_and(|n| n.conn() == ConnState::StandAlone && !n.split_brain())
                    {
                        self.admin(
                            i,
                            Admin::Connect {
                                discard_my_data: false,
                            },
                        );
                    }
                }
                Ev::Restart(i) => {
                    let s = format!("{} restarts", self.name(i));
                    self.log(s);
                    self.start_node(i);
                    self.arm_freeze(i);
                    // Refused (and nothing armed) unless the last run
                    // ended while Primary.
                    self.resume_armed[i] = self.resume && self.admin(i, Admin::ResumeAfterCrash);
                    self.admin(
                        i,
                        Admin::Connect {
                            discard_my_data: false,
                        },
                    );
                }
                Ev::Step => {
                    self.count_resumed();
                    if self.now < end {
                        self.chaos();
                    } else {
                        self.ending = true;
                        if self.converged()? {
                            return self.final_checks();
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
                }
            }
        }
        Err("event queue ran dry".into())
    }

    /// Counts armed nodes that resumed; forgets those that gave up.
    fn count_resumed(&mut self) {
        for i in 0..2 {
            if !self.resume_armed[i] {
                continue;
            }
            let Some(note) = self.nodes[i].node.as_ref().and_then(|n| n.status().resume) else {
                continue;
            };
            if note.starts_with("resumed") {
                self.report.resumed += 1;
                self.resume_armed[i] = false;
            } else if note.starts_with("not resumed") {
                self.resume_armed[i] = false;
            }
        }
    }

    fn check_single_primary(&mut self) -> Result<(), String> {
        if self.sc.kind == Kind::SplitBrain {
            return Ok(());
        }
        let both = (0..2).all(|i| {
            self.nodes[i]
                .node
                .as_ref()
                .is_some_and(|n| n.role() == Role::Primary)
        });
        if both {
            return Err("two Primaries at once outside a split-brain scenario".into());
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        for i in 0..2 {
            match &self.nodes[i].node {
                Some(n) => {
                    let st = n.status();
                    let _ = write!(
                        s,
                        "[{} {:?} {:?} {:?}/{:?} oos={} app={} sb={} err={:?}] ",
                        st.node,
                        st.role,
                        st.connection,
                        st.disk,
                        st.peer_disk,
                        st.out_of_sync_bytes,
                        st.app_pending,
                        st.split_brain,
                        st.last_error
                    );
                }
                None => {
                    let _ = write!(s, "[{} down] ", self.name(i));
                }
            }
        }
        s
    }

    /// Faults and operator actions while the run lasts.
    fn chaos(&mut self) {
        let r = self.rng.gen_range(0..1000);
        match self.sc.kind {
            Kind::Network => {
                self.switchover_step();
                if r < 25 {
                    self.reset_link();
                } else if r < 40 && self.now >= self.partition_until {
                    let d = self.lat(20 * MS, 300 * MS);
                    self.partition_until = self.now + d;
                    self.log(format!("partition for {} ms", d / MS));
                } else if r < 45 {
                    let i = self.rng.gen_range(0..2);
                    if self.admin(i, Admin::Disconnect) {
                        let t = self.now + self.lat(10 * MS, 100 * MS);
                        self.at(t, Ev::Reconnect(i));
                    }
                } else if r < 52 {
                    let i = self.rng.gen_range(0..2);
                    self.admin(i, Admin::Verify { repair: true });
                } else if r < 55 {
                    if let Some(p) = self.primary() {
                        self.admin(1 - p, Admin::Invalidate);
                    }
                } else if r < 60 && self.crashes_left > 0 {
                    // A Secondary's power loss: the Primary keeps every write.
                    if let Some(p) = self.primary() {
                        self.crashes_left -= 1;
                        let t = self.now + self.lat(0, 2000);
                        self.at(t, Ev::Crash(1 - p));
                    }
                } else if r < 64 && self.switchover.is_none() {
                    if let Some(p) = self.primary() {
                        self.switchover = Some(p);
                        let s = format!("{} quiesces for a switchover", self.name(p));
                        self.log(s);
                    }
                }
            }
            Kind::PrimaryCrash => {
                let synced = self.primary().is_some_and(|p| {
                    self.nodes[p]
                        .node
                        .as_ref()
                        .is_some_and(|n| n.peer_disk() == DiskState::UpToDate)
                });
                if r < 40 && self.crashes_left > 0 && synced && !self.crash_pending {
                    if let Some(p) = self.primary() {
                        self.schedule_crash(p);
                    }
                }
                if self.sc.crash_sync_source {
                    self.crash_the_sync_source();
                }
                if self.sc.freeze {
                    self.freeze_chaos(r, synced);
                }
                self.operator_failover();
            }
            Kind::SplitBrain => self.split_brain_chaos(),
        }
    }

    /// A switchover as an operator does it by hand: the idle Primary is
    /// demoted and at once taken off the link (`secondary`, then `down` or
    /// `disconnect`), with writes the peer confirmed but has not flushed
    /// yet; the generations stay the same, and the next handshake must not
    /// leave those marks set (issue 16 item 5). Then a node is promoted.
    fn switchover_step(&mut self) {
        match self.switchover {
            Some(p) if self.nodes[p].app.is_empty() => {
                self.switchover = None;
                if self.admin(p, Admin::Secondary) && self.admin(p, Admin::Disconnect) {
                    let t = self.now + self.lat(10 * MS, 100 * MS);
                    self.at(t, Ev::Reconnect(p));
                }
            }
            Some(_) => {}
            // Promote once the pair is back together (a promotion while
            // apart would start a new generation and hide the case).
            None => {
                let together = self.nodes.iter().all(|n| {
                    n.node
                        .as_ref()
                        .is_some_and(|n| n.conn() == ConnState::Connected)
                });
                if together {
                    self.operator_failover();
                }
            }
        }
    }

    fn crash(&mut self, i: usize) {
        self.report.crashes += 1;
        let s = format!("{} loses power ({})", self.name(i), self.describe());
        self.log(s);
        let mut rng = ChaCha8Rng::seed_from_u64(self.rng.gen());
        self.nodes[i].disk.power_loss(&mut rng);
        // Metadata writes in flight: a prefix of them made it.
        let keep = self.rng.gen_range(0..=self.nodes[i].meta_q.len());
        let applied: Vec<(u64, MetaW)> = self.nodes[i].meta_q.drain(..keep).collect();
        for (_, m) in applied {
            let meta = &mut self.nodes[i].meta;
            match m {
                MetaW::Super(g, f) => {
                    meta.gens = g;
                    meta.flags = f;
                }
                MetaW::Al(s, e) => {
                    meta.al_seq = s;
                    meta.al_extents = e;
                }
                MetaW::Bitmap(f, w) => meta.write_bitmap(f, &w),
            }
        }
        self.oracle.power_loss(i);
        self.nodes[i].node = None;
        self.nodes[i].app.clear();
        self.nodes[i].inc += 1;
        if let Some(c) = self.nodes[i].conn.take() {
            if self.live_conn == Some(c) {
                self.live_conn = None;
            }
            // What the crashed node had sent: a prefix made it onto the wire.
            let last = self.last_deliver[1 - i].max(self.now);
            let after = self.rng.gen_range(self.now..=last);
            self.cut[1 - i] = Some((c, after));
            // Sometimes the peer hears a reset, sometimes only silence.
            if self.rng.gen_bool(0.5) {
                let t = self.now + self.lat(100, 2000);
                self.at(t, Ev::Down { to: 1 - i, conn: c });
            }
        }
        let t = self.now + self.lat(50 * MS, 400 * MS);
        self.at(t, Ev::Restart(i));
    }

    fn schedule_crash(&mut self, i: usize) {
        self.crashes_left -= 1;
        self.crash_pending = true;
        let t = self.now + self.lat(0, 2000);
        self.at(t, Ev::Crash(i));
    }

    /// `freeze-on-disconnect` on, as the cluster agent arms it (repd forgets
    /// it on a restart; the agent arms it again).
    fn arm_freeze(&mut self, i: usize) {
        if self.sc.freeze {
            self.admin(i, Admin::FreezeOnDisconnect { on: true });
        }
    }

    /// After a failover the old Primary came back and resyncs from the new
    /// one: crash the new Primary, the sync source, in the middle of it.
    /// Only once it flushed since its promotion: two power losses before any
    /// flush may rightly lose a write both caches held.
    fn crash_the_sync_source(&mut self) {
        if self.crashes_left == 0
            || self.crash_pending
            || self.report.failovers == 0
            || !self.flushed_since_failover
        {
            return;
        }
        let Some(p) = self.primary() else { return };
        let syncing = self.nodes[p]
            .node
            .as_ref()
            .is_some_and(|n| n.conn() == ConnState::SyncSource);
        if syncing {
            let s = format!("{} will crash while it is the sync source", self.name(p));
            self.log(s);
            self.schedule_crash(p);
        }
    }

    /// The Secondary stops answering for a while; the Primary, armed,
    /// freezes when its ping times out. A frozen Primary then crashes (the
    /// survivor takes over) or is resumed, as the agent does.
    fn freeze_chaos(&mut self, r: i32, synced: bool) {
        let Some(p) = self.primary() else { return };
        let (frozen, current) = match self.nodes[p].node.as_ref() {
            Some(n) => (n.status().suspended.is_some(), n.gens().current),
            None => return,
        };
        if frozen {
            if self.crash_pending {
                return;
            }
            // Frozen because its peer stopped answering: decide once whether
            // it crashes now (the survivor then takes over).
            if self.peer_stopped.take() == Some(p)
                && self.crashes_left > 0
                && self.rng.gen_bool(0.7)
            {
                let s = format!("{} will crash while frozen", self.name(p));
                self.log(s);
                self.schedule_crash(p);
            } else if self.rng.gen_bool(0.2) {
                self.admin(p, Admin::ResumeIoAt { current });
            }
            return;
        }
        if (900..930).contains(&r) && synced && self.now >= self.partition_until {
            let d = self.lat(100 * MS, 300 * MS);
            self.partition_until = self.now + d;
            self.peer_stopped = Some(p);
            let s = format!("{} stops answering for {} ms", self.name(1 - p), d / MS);
            self.log(s);
        }
    }

    /// The operator (or cluster manager) promotes the survivor of a crashed
    /// Primary once it noticed the loss and holds UpToDate data.
    fn operator_failover(&mut self) {
        if self.primary().is_some() {
            return;
        }
        for i in 0..2 {
            let ok = self.nodes[i].node.as_ref().is_some_and(|n| {
                n.disk() == DiskState::UpToDate
                    && !matches!(
                        n.conn(),
                        ConnState::Handshake | ConnState::WFBitMapT | ConnState::SyncTarget
                    )
            });
            let peer_down = self.nodes[1 - i].node.is_none();
            let peer_back = self.nodes[1 - i]
                .node
                .as_ref()
                .is_some_and(|n| n.disk() == DiskState::UpToDate);
            let noticed = self.nodes[i]
                .node
                .as_ref()
                .is_some_and(|n| n.conn() != ConnState::Connected)
                || !peer_down;
            let go =
                ok && noticed && ((peer_down && self.sc.failover) || (peer_back && !peer_down));
            if go && self.admin(i, Admin::Primary { force: false }) {
                if peer_down {
                    self.report.failovers += 1;
                    self.flushed_since_failover = false;
                }
                return;
            }
        }
    }

    fn split_brain_chaos(&mut self) {
        let synced = |w: &World| {
            (0..2).all(|i| {
                w.nodes[i].node.as_ref().is_some_and(|n| {
                    n.disk() == DiskState::UpToDate && n.conn() == ConnState::Connected
                })
            })
        };
        match self.sb_phase {
            0 if synced(self) && self.now > 50 * MS => {
                self.partition_until = self.now + 100_000 * MS;
                self.log("partition (long)".into());
                self.sb_phase = 1;
            }
            1 => {
                // Once the Secondary noticed, promote it too.
                if let Some(p) = self.primary() {
                    let s = 1 - p;
                    let noticed = self.nodes[s]
                        .node
                        .as_ref()
                        .is_some_and(|n| n.conn() == ConnState::Connecting);
                    if noticed
                        && self.nodes[s]
                            .node
                            .as_ref()
                            .is_some_and(|n| n.role() == Role::Secondary)
                    {
                        self.admin(s, Admin::Primary { force: false });
                        self.victim = Some(s);
                    }
                }
            }
            _ => {}
        }
    }

    /// End phase: heal, bring everything up, wait until both are in sync.
    fn converged(&mut self) -> Result<bool, String> {
        if self.sc.kind == Kind::SplitBrain && self.sb_phase == 1 && self.victim.is_none() {
            // The Secondary has not noticed the partition yet (on a slow
            // link, frames queued before it still arrive for a while):
            // wait until it has and is promoted too.
            self.split_brain_chaos();
            return Ok(false);
        }
        if self.sc.kind == Kind::SplitBrain && self.sb_phase == 1 {
            // Let both write for a while, then heal and expect detection.
            self.sb_phase = 2;
            self.partition_until = self.now;
            self.log("partition healed".into());
            return Ok(false);
        }
        self.partition_until = self.partition_until.min(self.now);
        if self.nodes.iter().any(|n| n.node.is_none()) {
            return Ok(false);
        }
        if self.sc.kind == Kind::SplitBrain && self.sb_phase == 2 {
            let sb = (0..2).all(|i| {
                self.nodes[i]
                    .node
                    .as_ref()
                    .is_some_and(|n| n.split_brain() && n.conn() == ConnState::StandAlone)
            });
            if !sb {
                return Ok(false);
            }
            if self.nodes.iter().any(|n| !n.app.is_empty()) {
                return Ok(false);
            }
            self.report.split_brains += 1;
            let victim = self.victim.unwrap_or(1);
            let s = format!(
                "split brain detected on both; {} discards its data",
                self.name(victim)
            );
            self.log(s);
            // The data must not have been merged: nothing moved.
            self.oracle.discard_node_unprotected(victim);
            if !self.admin(victim, Admin::Secondary) {
                return Err("victim could not be demoted".into());
            }
            self.admin(
                victim,
                Admin::Connect {
                    discard_my_data: true,
                },
            );
            self.admin(
                1 - victim,
                Admin::Connect {
                    discard_my_data: false,
                },
            );
            self.sb_phase = 3;
            return Ok(false);
        }
        for i in 0..2 {
            let st = self.nodes[i].node.as_ref().map(Node::status);
            if let Some(st) = st {
                if st.split_brain && self.sc.kind != Kind::SplitBrain {
                    return Err(format!(
                        "unexpected split brain on {}: {:?}",
                        st.node, st.last_error
                    ));
                }
                if st.connection == ConnState::StandAlone {
                    self.admin(
                        i,
                        Admin::Connect {
                            discard_my_data: false,
                        },
                    );
                }
            }
        }
        if self.primary().is_none() {
            self.operator_failover();
        }
        for i in 0..2 {
            // The agent resumes a frozen Primary once things settle.
            let frozen = self.nodes[i].node.as_ref().and_then(|n| {
                (n.status().suspended.is_some() && n.role() == Role::Primary)
                    .then(|| n.gens().current)
            });
            if let Some(current) = frozen {
                self.admin(i, Admin::ResumeIoAt { current });
            }
        }
        let ok = (0..2).all(|i| {
            self.nodes[i].node.as_ref().is_some_and(|n| {
                let st = n.status();
                st.connection == ConnState::Connected
                    && st.disk == DiskState::UpToDate
                    && st.peer_disk == DiskState::UpToDate
                    && st.app_pending == 0
                    && st.local_pending == 0
                    && st.peer_pending == 0
                    && st.unacked == 0
            })
        }) && self.nodes.iter().all(|n| n.app.is_empty());
        Ok(ok)
    }

    fn final_checks(&mut self) -> Result<(), String> {
        let touched = self.nodes[0].disk.touched(&self.nodes[1].disk);
        for &b in &touched {
            let (a, c) = (self.nodes[0].disk.block(b), self.nodes[1].disk.block(b));
            if a != c {
                return Err(format!(
                    "after resync the data differ at block {b}: alpha has tag {}, beta tag {} ({})",
                    tag_of(&a),
                    tag_of(&c),
                    self.describe()
                ));
            }
            self.oracle
                .check(b, tag_of(&a))
                .map_err(|e| format!("acknowledged data lost: {e}"))?;
        }
        for i in 0..2 {
            let st = self.nodes[i].node.as_ref().map(Node::status);
            if let Some(st) = st {
                if st.out_of_sync_bytes != 0 {
                    return Err(format!(
                        "{} still counts {} bytes out of sync",
                        st.node, st.out_of_sync_bytes
                    ));
                }
            }
        }
        Ok(())
    }
}

fn short(m: &Message) -> String {
    match m {
        Message::Data {
            seq, offset, len, ..
        } => format!("Data seq={seq} off={offset} len={len}"),
        Message::ResyncData { id, offset, data } => {
            format!("ResyncData id={id} off={offset} len={}", data.len())
        }
        Message::Bitmap {
            start_bit,
            runs,
            last,
            ..
        } => format!("Bitmap start={start_bit} runs={} last={last}", runs.len()),
        Message::Hello(h) => format!(
            "Hello {} {:?} {:?} gens={:x?}",
            h.node, h.role, h.disk, h.gens
        ),
        other => format!("{other:?}"),
    }
}
