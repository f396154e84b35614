//! What one seed exercises: the kind of run, the link, the node settings.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::machine::{NodeConfig, SplitBrainPolicy};
use crate::wire::{features, Protocol};

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

pub(super) fn cfg(name: &str, peer: &str, sc: &Scenario) -> NodeConfig {
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
